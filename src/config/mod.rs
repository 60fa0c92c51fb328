//! Configuration: TOML is read into [`raw`] types, then validated once into
//! types that cannot hold bad values. Validation walks the whole file and
//! reports every problem, each with the key it concerns.

mod keys;
pub mod raw;
mod redis_url;
mod spend;
mod validate;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use rustls_pki_types::CertificateDer;

use crate::route::{Operation, TaskId};
use crate::secret::ArkApiKey;

pub use keys::{known_keys, reloads, restart_only_changes, Key, KeyKind};
pub use redis_url::RedisUrl;
pub use spend::{
    BudgetConfig, CallbackHosts, HostPattern, ModelPrice, PricingConfig, ReconcileConfig, DEFAULT_FRAMES_PER_SECOND,
    DEFAULT_RESERVE_TOKENS,
};
pub use validate::{ConfigError, ConfigProblem};

/// Where the process looks up `upstream.api_key_env`. Production passes the
/// real environment; the demo and tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The real process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub rate_limit: RateLimitBackend,
    pub pricing: PricingConfig,
    pub reconcile: ReconcileConfig,
    pub log: LogFormat,
    pub tenants: Vec<TenantConfig>,
    /// Accepted, but worth a look (`check` prints them): a token already expired.
    pub warnings: Vec<ConfigProblem>,
}

/// One of a tenant's tokens, by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub sha256: [u8; 32],
    /// `None` for `token_sha256`; the audit record's `token_name`.
    pub name: Option<String>,
    /// Unix ms after which the token is refused.
    pub expires_ms: Option<u64>,
}

/// Where per-tenant and global rate-limit state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    /// In this process (limits hold per replica).
    Local,
    /// Shared by every replica using this Redis.
    Redis(RedisUrl),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Threads serving tenants, each with its own single-threaded runtime,
    /// connections and upstream pool (default: one per core).
    pub workers: NonZeroUsize,
    /// Inbound TLS; `None` serves plain HTTP (the sidecar's loopback default).
    pub tls: Option<ServerTls>,
}

/// Inbound TLS material, parsed and checked at load.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Arc<rustls_pki_types::PrivateKeyDer<'static>>,
    /// With a client CA, every client must present a certificate it signed (mTLS).
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.cert_chain.len())
            .field("key", &"[redacted]")
            .field("mtls", &self.client_ca.is_some())
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// SHA-256 of the admin token: with it, everything but the probes needs `Bearer <token>`.
    pub token_sha256: Option<[u8; 32]>,
    /// `/metrics` without the token even when one is set.
    pub metrics_public: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `scheme://authority/path` without a trailing slash, e.g. `https://ark…/api/v3`.
    pub base_url: Uri,
    pub api_key: ArkApiKey,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_concurrent: NonZeroUsize,
    pub max_response_bytes: usize,
    pub allow_insecure_http: bool,
    /// Extra trust anchors (PEM) besides the webpki roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The shared Ark quota: requests per minute toward Ark across all tenants
    /// (and, with the Redis rate-limit backend, across all replicas).
    pub requests_per_minute: Option<RateLimitConfig>,
    /// Queued or running tasks the whole account may have (all tenants, all replicas).
    pub max_active_tasks: Option<u64>,
    /// The ALPN offer to a TLS upstream (`upstream.protocols`).
    pub protocols: UpstreamProtocols,
    /// Directly, or tunnelled through an egress proxy.
    pub route: UpstreamRoute,
}

/// How connections to Ark are made.
#[derive(Debug, Clone)]
pub enum UpstreamRoute {
    /// Straight to Ark; the text says why no proxy applies (for the start log).
    Direct(String),
    Proxy(UpstreamProxy),
}

/// An HTTP proxy that tunnels every upstream connection with `CONNECT`.
#[derive(Debug, Clone)]
pub struct UpstreamProxy {
    /// `http://host:port`, never with credentials: safe to log and to name in errors.
    pub address: Uri,
    pub credential: Option<crate::secret::ProxyCredential>,
    /// Where it came from: `upstream.proxy` or the environment variable's name.
    pub source: &'static str,
}

impl UpstreamProxy {
    /// `host:port`, for messages.
    pub fn host_port(&self) -> String {
        self.address.authority().map_or_else(String::new, |a| a.to_string())
    }
}

/// The diagnostic log's format (`[log] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which HTTP versions the gateway offers Ark (ALPN); at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamProtocols {
    pub http2: bool,
    pub http1: bool,
}

impl Default for UpstreamProtocols {
    fn default() -> Self {
        Self {
            http2: true,
            http1: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub path: PathBuf,
    pub retention: Duration,
    /// How long per-day usage aggregates are kept (chargeback history).
    pub usage_retention: Duration,
    /// Prefix of every Redis key the gateway writes.
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// One redb file at `store.path`.
    Redb,
    /// Redis, shared by replicas.
    Redis(RedisUrl),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSinkConfig {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub sink: AuditSinkConfig,
    pub fsync: FsyncPolicy,
    /// Rotate the file when it reaches this size (the chain continues in the new file).
    pub rotate_bytes: Option<u64>,
    /// What reads do while the sink cannot be written (mutating calls always fail closed).
    pub on_failure: OnAuditFailure,
}

/// When audit records reach the disk (they always reach the kernel before the response is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync before the responses of each written batch are released.
    Always,
    /// fdatasync at most this often (and at rotation and shutdown).
    Interval(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAuditFailure {
    Deny,
    Allow,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: AuditSinkConfig::Stdout,
            fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
            rotate_bytes: None,
            on_failure: OnAuditFailure::Deny,
        }
    }
}

/// A tenant's name: 1 to 64 of `[A-Za-z0-9._-]`, safe in logs and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(Arc<str>);

impl TenantName {
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        ok.then(|| Self(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (a reference count, no copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operations a tenant may perform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationSet(u8);

impl OperationSet {
    pub fn insert(&mut self, op: Operation) {
        self.0 |= op.bit();
    }

    pub fn contains(self, op: Operation) -> bool {
        self.0 & op.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Operation> for OperationSet {
    fn from_iter<I: IntoIterator<Item = Operation>>(iter: I) -> Self {
        let mut set = Self::default();
        for op in iter {
            set.insert(op);
        }
        set
    }
}

/// Static task grants: exact ids and `prefix*` patterns.
#[derive(Debug, Clone, Default)]
pub struct TaskGrants {
    pub exact: HashSet<TaskId>,
    pub prefixes: Vec<String>,
}

impl TaskGrants {
    pub fn allows(&self, id: &TaskId) -> bool {
        self.exact.contains(id) || self.prefixes.iter().any(|p| id.as_str().starts_with(p.as_str()))
    }
}

/// A rate: `rate` requests per `per` (second or minute), with `burst` allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub per: RatePeriod,
    pub rate: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatePeriod {
    Second,
    Minute,
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: TenantName,
    /// `token_sha256` (unnamed) and `tokens`: empty for a tenant identified
    /// only by its client certificate.
    pub tokens: Vec<TokenConfig>,
    /// A DNS (or IP) subject alternative name of the tenant's client certificate.
    pub client_cert_san: Option<String>,
    pub operations: OperationSet,
    /// `None`: every model may be used for create.
    pub models: Option<BTreeSet<String>>,
    pub task_ids: TaskGrants,
    pub rate_limit: RateLimitConfig,
    /// Queued or running tasks this tenant may have.
    pub max_active_tasks: Option<u64>,
    pub budget: BudgetConfig,
    /// `None`: any `callback_url` is forwarded.
    pub callback_hosts: Option<CallbackHosts>,
}

impl Config {
    /// Parses and validates TOML text. `env` resolves `upstream.api_key_env`.
    pub fn from_toml_str(text: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let (raw, unknown) = parse_raw(text)?;
        match validate::validate(raw, env) {
            Ok(config) if unknown.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError { problems: unknown }),
            Err(mut e) => {
                e.problems.splice(0..0, unknown);
                Err(e)
            }
        }
    }

    /// Reads, parses and validates a config file with the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, &process_env)
    }

    /// Reads, parses and validates a config file.
    pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single("(file)", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text, env)
    }
}

/// The file as written, with its unknown keys removed and reported (each with
/// the nearest known key, or where a pasted secret belongs), so that they
/// are listed together with every other problem rather than stopping at the first.
pub(crate) fn parse_raw(text: &str) -> Result<(raw::RawConfig, Vec<ConfigProblem>), ConfigError> {
    use serde::Deserialize;
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::parse(e, text))?;
    let unknown = keys::remove_unknown(&mut table);
    // The text is parsed once; only a shape error in a file where nothing was
    // removed is parsed again from the text, so that it keeps its line and column.
    match raw::RawConfig::deserialize(toml::Value::Table(table)) {
        Ok(raw) => Ok((raw, unknown)),
        Err(e) => {
            let e = match unknown.is_empty() {
                true => toml::from_str::<raw::RawConfig>(text).err().unwrap_or(e),
                false => e,
            };
            let mut problems = unknown;
            problems.extend(ConfigError::parse(e, text).problems);
            Err(ConfigError { problems })
        }
    }
}

/// What the admin CLI needs from a config file, without validating the rest
/// (an operator managing the ledger need not hold the Ark key).
#[derive(Debug, Clone)]
pub struct StoreView {
    pub store_path: PathBuf,
    /// `Some` when `store.backend = "redis"`: (url, key prefix).
    pub redis: Option<(RedisUrl, String)>,
    /// `store.retention`: how long a Redis ownership record lives.
    pub retention: Duration,
    pub tenant_names: Vec<String>,
}

impl StoreView {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::single("(file)", format!("cannot read {}: {e}", path.display())))?;
        let (raw, _unknown) = parse_raw(&text)?;
        let redis = match (raw.store.backend.as_deref(), raw.store.url.as_deref()) {
            (Some("redis"), Some(url)) => Some((
                RedisUrl::parse(url).map_err(|e| ConfigError::single("store.url", e))?,
                raw.store
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| "ark-gateway:".to_string()),
            )),
            _ => None,
        };
        let retention = raw.store.retention.as_deref().unwrap_or(validate::DEFAULT_RETENTION);
        let retention = humantime::parse_duration(retention)
            .map_err(|e| ConfigError::single("store.retention", format!("{retention:?} is not a duration: {e}")))?;
        Ok(Self {
            redis,
            retention,
            store_path: PathBuf::from(raw.store.path.as_deref().unwrap_or(validate::DEFAULT_STORE_PATH)),
            tenant_names: raw.tenants.into_iter().filter_map(|t| t.name).collect(),
        })
    }
}
