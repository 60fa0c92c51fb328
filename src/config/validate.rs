//! Raw → validated. Every check pushes a [`ConfigProblem`] naming its key and
//! carries on, so `ark-gateway check` shows the whole list in one run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::raw::{RawBudget, RawConfig, RawPricing, RawRateLimit, RawTenant};
use super::*;
use crate::route::{is_task_id, Operation, TaskId};
use crate::secret::ArkApiKey;

/// One thing wrong with the configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found; never empty.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn single(key: &str, message: String) -> Self {
        Self {
            problems: vec![ConfigProblem {
                key: key.to_string(),
                message,
            }],
        }
    }

    /// A syntax or shape error. toml's own `Display` quotes the offending
    /// source line, which may hold a secret pasted where it does not belong,
    /// so only the position and the message are kept, with quoted string
    /// values removed from it.
    pub(super) fn parse(err: toml::de::Error, text: &str) -> Self {
        let position = err.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        let message = redact_string_values(err.message().trim());
        Self::single("(syntax)", format!("{}{message}", position.unwrap_or_default()))
    }

    /// True when some problem concerns `key` (used by tests).
    pub fn mentions(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }
}

/// serde reports a wrongly typed value as `invalid type: string "…"`: drop the value.
fn redact_string_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        let after = &rest[at + "string \"".len()..];
        rest = after.find('"').map_or("", |end| &after[end + 1..]);
    }
    out.push_str(rest);
    out
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const MIB: i64 = 1024 * 1024;
pub(super) const DEFAULT_STORE_PATH: &str = "data/ark-gateway.redb";
pub(super) const DEFAULT_RETENTION: &str = "30d";
pub(super) const DEFAULT_USAGE_RETENTION: &str = "400d";

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: &str) -> Duration {
        let text = raw.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.push(key, "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.push(key, format!("{text:?} is not a duration like \"30s\" or \"5m\": {e}"));
                Duration::from_secs(1)
            }
        }
    }

    fn addr(&mut self, key: &str, raw: Option<&str>, default: &str) -> SocketAddr {
        let text = raw.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.push(
                key,
                format!("{text:?} is not an IP:port address like \"127.0.0.1:8080\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn positive(&mut self, key: &str, raw: Option<i64>, default: i64, max: i64) -> usize {
        let value = raw.unwrap_or(default);
        if value < 1 || value > max {
            self.push(key, format!("{value} is out of range (1 to {max})"));
            return 1;
        }
        value as usize
    }
}

pub(super) fn validate(raw: RawConfig, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let mut p = Problems::default();

    let server = ServerConfig {
        listen: p.addr("server.listen", raw.server.listen.as_deref(), DEFAULT_LISTEN),
        max_body_bytes: p.positive("server.max_body_bytes", raw.server.max_body_bytes, MIB, 64 * MIB),
        request_timeout: p.duration("server.request_timeout", raw.server.request_timeout.as_deref(), "60s"),
        header_read_timeout: p.duration(
            "server.header_read_timeout",
            raw.server.header_read_timeout.as_deref(),
            "10s",
        ),
        shutdown_grace: p.duration("server.shutdown_grace", raw.server.shutdown_grace.as_deref(), "30s"),
        workers: NonZeroUsize::new(p.positive(
            "server.workers",
            raw.server.workers,
            std::thread::available_parallelism().map_or(1, |n| n.get()) as i64,
            1024,
        ))
        .unwrap_or(NonZeroUsize::MIN),
        tls: raw.server.tls.and_then(|tls| validate_tls(&mut p, tls)),
    };
    let admin = AdminConfig {
        listen: p.addr("admin.listen", raw.admin.listen.as_deref(), DEFAULT_ADMIN_LISTEN),
        token_sha256: raw.admin.token_sha256.as_deref().and_then(|hex_text| {
            let parsed = parse_sha256_hex(hex_text);
            if parsed.is_none() {
                p.push(
                    "admin.token_sha256",
                    "must be 64 hexadecimal characters (a SHA-256 digest; see `ark-gateway hash-token`)",
                );
            }
            parsed
        }),
        metrics_public: raw.admin.metrics_public,
    };

    let up = raw.upstream;
    let base_url = validate_base_url(&mut p, up.base_url.as_deref(), up.allow_insecure_http);
    let api_key = load_api_key(&mut p, up.api_key_env.as_deref(), up.api_key_file.as_deref(), env);
    let extra_roots = match up.ca_file.as_deref() {
        None => Vec::new(),
        Some(path) => load_ca_file(&mut p, path),
    };
    let max_concurrent = p.positive("upstream.max_concurrent", up.max_concurrent, 64, 1_000_000);
    let upstream = UpstreamConfig {
        connect_timeout: p.duration("upstream.connect_timeout", up.connect_timeout.as_deref(), "5s"),
        timeout: p.duration("upstream.timeout", up.timeout.as_deref(), "60s"),
        max_concurrent: NonZeroUsize::new(max_concurrent).unwrap_or(NonZeroUsize::MIN),
        max_response_bytes: p.positive(
            "upstream.max_response_bytes",
            up.max_response_bytes,
            16 * MIB,
            1024 * MIB,
        ),
        allow_insecure_http: up.allow_insecure_http,
        extra_roots,
        requests_per_minute: up.requests_per_minute.and_then(|rpm| {
            let rate = u32::try_from(rpm).ok().and_then(NonZeroU32::new);
            if rate.is_none() {
                p.push(
                    "upstream.requests_per_minute",
                    format!("{rpm} must be a whole number from 1 to {}", u32::MAX),
                );
            }
            let default_burst = NonZeroU32::new(rate?.get().div_ceil(60)).unwrap_or(NonZeroU32::MIN);
            let burst = match up.requests_burst {
                None => default_burst,
                Some(b) => match u32::try_from(b).ok().and_then(NonZeroU32::new) {
                    Some(b) => b,
                    None => {
                        p.push(
                            "upstream.requests_burst",
                            format!("{b} must be a whole number from 1 to {}", u32::MAX),
                        );
                        default_burst
                    }
                },
            };
            Some(RateLimitConfig {
                per: RatePeriod::Minute,
                rate: rate?,
                burst,
            })
        }),
        protocols: match up.protocols.as_deref() {
            None => UpstreamProtocols::default(),
            Some(list) => {
                let mut protocols = UpstreamProtocols {
                    http2: false,
                    http1: false,
                };
                for name in list {
                    match name.as_str() {
                        "h2" => protocols.http2 = true,
                        "http/1.1" => protocols.http1 = true,
                        other => p.push(
                            "upstream.protocols",
                            format!("{other:?} is not one of \"h2\", \"http/1.1\""),
                        ),
                    }
                }
                if !protocols.http1 && !protocols.http2 {
                    p.push("upstream.protocols", "must offer \"h2\", \"http/1.1\" or both");
                    UpstreamProtocols::default()
                } else {
                    if !protocols.http1 && base_url.as_ref().is_some_and(|u| u.scheme_str() == Some("http")) {
                        p.push(
                            "upstream.protocols",
                            "an http:// upstream speaks HTTP/1.1 (h2 is negotiated by TLS ALPN): add \"http/1.1\"",
                        );
                    }
                    protocols
                }
            }
        },
        route: match &base_url {
            Some(base) => upstream_route(
                &mut p,
                base,
                up.proxy.as_deref(),
                up.proxy_credentials_file.as_deref(),
                env,
            ),
            None => UpstreamRoute::Direct(String::new()),
        },
        max_active_tasks: up
            .max_active_tasks
            .map(|n| p.positive("upstream.max_active_tasks", Some(n), 1, 1_000_000_000) as u64),
        base_url: base_url.unwrap_or_else(|| Uri::from_static("https://invalid.invalid")),
        api_key: match api_key {
            Some(key) => key,
            None => ArkApiKey::from_secret_text("invalid").expect("constant key is valid"),
        },
    };

    let redis_url = |p: &mut Problems, key: &str, url: Option<&str>| -> Option<RedisUrl> {
        match url {
            None => {
                p.push(key, "is required with the redis backend");
                None
            }
            Some(url) => RedisUrl::parse(url).map_err(|e| p.push(key, e)).ok(),
        }
    };
    let store_backend = match raw.store.backend.as_deref().unwrap_or("redb") {
        "redb" => {
            if raw.store.url.is_some() {
                p.push("store.url", "only applies when store.backend = \"redis\"");
            }
            StoreBackend::Redb
        }
        "redis" => {
            redis_url(&mut p, "store.url", raw.store.url.as_deref()).map_or(StoreBackend::Redb, StoreBackend::Redis)
        }
        other => {
            p.push("store.backend", format!("{other:?} is not one of \"redb\", \"redis\""));
            StoreBackend::Redb
        }
    };
    let rate_limit = match raw.rate_limit.backend.as_deref().unwrap_or("local") {
        "local" => RateLimitBackend::Local,
        "redis" => {
            // Defaults to the store's Redis.
            let url = raw.rate_limit.url.as_deref().or(raw.store.url.as_deref());
            redis_url(&mut p, "rate_limit.url", url).map_or(RateLimitBackend::Local, RateLimitBackend::Redis)
        }
        other => {
            p.push(
                "rate_limit.backend",
                format!("{other:?} is not one of \"local\", \"redis\""),
            );
            RateLimitBackend::Local
        }
    };
    let store = StoreConfig {
        backend: store_backend,
        key_prefix: raw
            .store
            .key_prefix
            .clone()
            .unwrap_or_else(|| "ark-gateway:".to_string()),
        path: PathBuf::from(raw.store.path.as_deref().unwrap_or(DEFAULT_STORE_PATH)),
        retention: p.duration("store.retention", raw.store.retention.as_deref(), DEFAULT_RETENTION),
        usage_retention: p.duration(
            "store.usage_retention",
            raw.store.usage_retention.as_deref(),
            DEFAULT_USAGE_RETENTION,
        ),
    };

    let audit = AuditConfig {
        sink: match (raw.audit.sink.as_deref().unwrap_or("stdout"), raw.audit.path) {
            ("stdout", None) => AuditSinkConfig::Stdout,
            ("stdout", Some(_)) => {
                p.push("audit.path", "only applies when audit.sink = \"file\"");
                AuditSinkConfig::Stdout
            }
            ("file", Some(path)) if !path.is_empty() => AuditSinkConfig::File(PathBuf::from(path)),
            ("file", _) => {
                p.push("audit.path", "is required when audit.sink = \"file\"");
                AuditSinkConfig::Stdout
            }
            (other, _) => {
                p.push("audit.sink", format!("{other:?} is not one of \"stdout\", \"file\""));
                AuditSinkConfig::Stdout
            }
        },
        fsync: match raw.audit.fsync.as_deref().unwrap_or("interval") {
            "always" => FsyncPolicy::Always,
            "interval" => {
                FsyncPolicy::Interval(p.duration("audit.fsync_interval", raw.audit.fsync_interval.as_deref(), "1s"))
            }
            other => {
                p.push(
                    "audit.fsync",
                    format!("{other:?} is not one of \"always\", \"interval\""),
                );
                FsyncPolicy::Always
            }
        },
        rotate_bytes: raw
            .audit
            .rotate_bytes
            .map(|n| p.positive("audit.rotate_bytes", Some(n), 0, i64::MAX) as u64),
        on_failure: match raw.audit.on_failure.as_deref().unwrap_or("deny") {
            "deny" => OnAuditFailure::Deny,
            "allow" => OnAuditFailure::Allow,
            other => {
                p.push(
                    "audit.on_failure",
                    format!("{other:?} is not one of \"deny\", \"allow\""),
                );
                OnAuditFailure::Deny
            }
        },
    };

    let pricing = validate_pricing(&mut p, raw.pricing);
    let mut warnings = Vec::new();
    let tenants = validate_tenants(&mut p, raw.tenants, &mut warnings);
    for (i, t) in tenants.iter().enumerate() {
        if !t.budget.has_cost() {
            continue;
        }
        let unpriced: Vec<&str> = match &t.models {
            None if pricing.default_per_million_tokens.is_none() => vec!["(any model)"],
            None => Vec::new(),
            Some(models) => models
                .iter()
                .filter(|m| pricing.price_of(m).is_none())
                .map(String::as_str)
                .collect(),
        };
        if !unpriced.is_empty() {
            p.push(
                format!("tenant[{i}].budget"),
                format!(
                    "a cost budget needs a price for every model the tenant may use: {} has none \
                     (add [[pricing.model]] entries or pricing.default_per_million_tokens)",
                    unpriced.join(", ")
                ),
            );
        }
    }
    let governed = pricing.configured
        || upstream.max_active_tasks.is_some()
        || tenants
            .iter()
            .any(|t| !t.budget.is_empty() || t.max_active_tasks.is_some());
    let log = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push("log.format", format!("{other:?} is not one of \"text\", \"json\""));
            LogFormat::Text
        }
    };
    let reconcile = ReconcileConfig {
        enabled: raw.reconcile.enabled.unwrap_or(governed),
        interval: p.duration("reconcile.interval", raw.reconcile.interval.as_deref(), "15s"),
        max_requests_per_minute: NonZeroU32::new(p.positive(
            "reconcile.max_requests_per_minute",
            raw.reconcile.max_requests_per_minute,
            60,
            1_000_000,
        ) as u32)
        .unwrap_or(NonZeroU32::MIN),
    };
    if server.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
        for (i, t) in tenants.iter().enumerate() {
            if t.client_cert_san.is_some() {
                p.push(
                    format!("tenant[{i}].client_cert_san"),
                    "needs server.tls.client_ca: client certificates are only verified with mutual TLS",
                );
            }
        }
    }

    if p.0.is_empty() {
        Ok(Config {
            server,
            admin,
            upstream,
            store,
            audit,
            rate_limit,
            pricing,
            reconcile,
            log,
            tenants,
            warnings,
        })
    } else {
        Err(ConfigError { problems: p.0 })
    }
}

fn validate_tls(p: &mut Problems, raw: super::raw::RawTls) -> Option<ServerTls> {
    use rustls_pki_types::PrivateKeyDer;
    let certs = |p: &mut Problems, key: &str, path: Option<&str>| -> Option<Vec<CertificateDer<'static>>> {
        let Some(path) = path else {
            p.push(key, "is required");
            return None;
        };
        match CertificateDer::pem_file_iter(path).map(|it| it.collect::<Result<Vec<_>, _>>()) {
            Ok(Ok(certs)) if !certs.is_empty() => Some(certs),
            Ok(Ok(_)) => {
                p.push(key, format!("{path} holds no PEM certificate"));
                None
            }
            Ok(Err(e)) | Err(e) => {
                p.push(key, format!("cannot read certificates from {path}: {e}"));
                None
            }
        }
    };
    let cert_chain = certs(p, "server.tls.cert", raw.cert.as_deref());
    let key = match raw.key.as_deref() {
        None => {
            p.push("server.tls.key", "is required");
            None
        }
        Some(path) => match PrivateKeyDer::from_pem_file(path) {
            Ok(key) => Some(key),
            // The error names the file, never its content.
            Err(e) => {
                p.push(
                    "server.tls.key",
                    format!("cannot read a PEM private key from {path}: {e}"),
                );
                None
            }
        },
    };
    let client_ca = match raw.client_ca.as_deref() {
        None => Some(None),
        Some(path) => certs(p, "server.tls.client_ca", Some(path)).map(Some),
    };
    Some(ServerTls {
        cert_chain: cert_chain?,
        key: Arc::new(key?),
        client_ca: client_ca?,
    })
}

fn validate_base_url(p: &mut Problems, raw: Option<&str>, allow_insecure_http: bool) -> Option<Uri> {
    const KEY: &str = "upstream.base_url";
    let Some(text) = raw else {
        p.push(
            KEY,
            "is required (Ark's is \"https://ark.cn-beijing.volces.com/api/v3\")",
        );
        return None;
    };
    let Ok(uri) = text.parse::<Uri>() else {
        p.push(KEY, format!("{text:?} is not a URL"));
        return None;
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        p.push(KEY, format!("{text:?} must be an absolute URL with scheme and host"));
        return None;
    };
    match scheme {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            p.push(
                KEY,
                "is http:// but the Ark key must travel over TLS; set upstream.allow_insecure_http = true only for a local mock",
            );
            return None;
        }
        other => {
            p.push(KEY, format!("scheme {other:?} is not http or https"));
            return None;
        }
    }
    if uri.query().is_some() || authority.as_str().contains('@') {
        p.push(KEY, "must not carry a query or user information");
        return None;
    }
    let path = uri.path().trim_end_matches('/');
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(if path.is_empty() { "/" } else { path })
        .build()
        .ok()
        .map(|uri| {
            // Keep "no trailing slash" as an invariant: an empty path means the host root.
            if path.is_empty() {
                format!("{scheme}://{authority}").parse().unwrap_or(uri)
            } else {
                uri
            }
        })
}

/// `upstream.proxy` (with `upstream.proxy_credentials_file`), else the
/// environment the way curl reads it: `https_proxy`/`HTTPS_PROXY` for an https
/// upstream, `http_proxy` (lower case only) for http, `all_proxy`/`ALL_PROXY`
/// for either, unless `no_proxy`/`NO_PROXY` names the upstream's host.
fn upstream_route(
    p: &mut Problems,
    base: &Uri,
    proxy: Option<&str>,
    credentials_file: Option<&str>,
    env: EnvLookup<'_>,
) -> UpstreamRoute {
    const KEY: &str = "upstream.proxy";
    const FILE_KEY: &str = "upstream.proxy_credentials_file";
    let credential = credentials_file.and_then(|path| match std::fs::read_to_string(path) {
        Ok(text) => crate::secret::ProxyCredential::from_secret_text(&text)
            .map_err(|e| p.push(FILE_KEY, format!("{path}: {e}")))
            .ok(),
        Err(e) => {
            p.push(FILE_KEY, format!("cannot read {path}: {}", e.kind()));
            None
        }
    });
    if let Some(text) = proxy {
        return match proxy_address(text) {
            Ok((address, None)) => UpstreamRoute::Proxy(UpstreamProxy {
                address,
                credential,
                source: KEY,
            }),
            Ok((_, Some(_))) => {
                p.push(
                    KEY,
                    "must not hold credentials: put `user:password` in upstream.proxy_credentials_file",
                );
                UpstreamRoute::Direct(String::new())
            }
            Err(why) => {
                p.push(KEY, why);
                UpstreamRoute::Direct(String::new())
            }
        };
    }
    if credentials_file.is_some() {
        p.push(FILE_KEY, "only applies with upstream.proxy");
    }
    let first = |names: &[&'static str]| {
        names
            .iter()
            .find_map(|&name| env(name).filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
    };
    let https = base.scheme_str() == Some("https");
    let chosen = if https {
        first(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"])
    } else {
        first(&["http_proxy", "all_proxy", "ALL_PROXY"])
    };
    let Some((name, value)) = chosen else {
        let looked = if https { "https_proxy" } else { "http_proxy" };
        return UpstreamRoute::Direct(format!("upstream.proxy and {looked} are not set"));
    };
    let host = base
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    // A loopback upstream (a local mock, an egress sidecar) is never sent to
    // an environment's proxy, as Go's and most clients' proxy rules do.
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return UpstreamRoute::Direct(format!("{host} is a loopback address, so {name} does not apply"));
    }
    if let Some((no_name, list)) = first(&["no_proxy", "NO_PROXY"]) {
        let matcher = hyper_util::client::proxy::matcher::Matcher::builder()
            .https("http://proxy.invalid")
            .http("http://proxy.invalid")
            .no(list)
            .build();
        if matcher.intercept(base).is_none() {
            return UpstreamRoute::Direct(format!("{no_name} names {host}, so {name} does not apply"));
        }
    }
    match proxy_address(&value) {
        Ok((address, user_info)) => UpstreamRoute::Proxy(UpstreamProxy {
            address,
            credential: user_info.map(crate::secret::ProxyCredential::from_header),
            source: name,
        }),
        Err(why) => {
            // The value may hold credentials: only its problem is reported.
            p.push(KEY, format!("the environment variable {name}: {why}"));
            UpstreamRoute::Direct(String::new())
        }
    }
}

/// An `http://host[:port]` proxy URL (port 1080 if none, as curl) and, where
/// it holds user info, that as a `Basic` header value. A reason never quotes
/// the URL, which may hold a password.
fn proxy_address(text: &str) -> Result<(Uri, Option<http::HeaderValue>), String> {
    let text = text.trim();
    // curl takes a bare `host:port` as http.
    let text = match text.contains("://") {
        true => text.to_string(),
        false => format!("http://{text}"),
    };
    let uri: Uri = text
        .parse()
        .map_err(|_| "is not a URL (expected http://host:port)".to_string())?;
    if uri.scheme_str() != Some("http") {
        return Err("must be an http:// proxy URL (the tunnel to Ark carries TLS of its own)".into());
    }
    let authority = uri.authority().ok_or("has no host")?;
    let host = authority.host();
    if host.is_empty() {
        return Err("has no host".into());
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err("must have no path or query".into());
    }
    let user_info = authority.as_str().rsplit_once('@').map(|(info, _)| info.to_string());
    let port = uri.port_u16().unwrap_or(1080);
    let address: Uri = format!("http://{host}:{port}")
        .parse()
        .map_err(|_| "has no valid host".to_string())?;
    let user_info = match user_info {
        None => None,
        Some(info) => {
            let decoded = |part: &str| {
                percent_encoding::percent_decode_str(part)
                    .decode_utf8()
                    .map(|text| text.into_owned())
                    .map_err(|_| "has user info that is not valid percent-encoded UTF-8".to_string())
            };
            let (user, password) = info.split_once(':').unwrap_or((&info, ""));
            let line = format!("{}:{}", decoded(user)?, decoded(password)?);
            let credential = crate::secret::ProxyCredential::from_secret_text(&line).map_err(|e| e.to_string())?;
            Some(credential.authorization_header())
        }
    };
    Ok((address, user_info))
}

fn load_api_key(p: &mut Problems, env_name: Option<&str>, file: Option<&str>, env: EnvLookup<'_>) -> Option<ArkApiKey> {
    let (key, text) = match (env_name, file) {
        (Some(_), Some(_)) => {
            p.push(
                "upstream.api_key_env",
                "set either api_key_env or api_key_file, not both",
            );
            return None;
        }
        (None, None) => {
            p.push(
                "upstream.api_key_env",
                "the Ark key is required: set api_key_env or api_key_file (never the key itself)",
            );
            return None;
        }
        (Some(name), None) => match env(name) {
            Some(value) => ("upstream.api_key_env", value),
            None => {
                p.push(
                    "upstream.api_key_env",
                    format!("environment variable {name} is not set"),
                );
                return None;
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) => ("upstream.api_key_file", text),
            Err(e) => {
                p.push("upstream.api_key_file", format!("cannot read {path}: {}", e.kind()));
                return None;
            }
        },
    };
    match ArkApiKey::from_secret_text(&text) {
        Ok(k) => Some(k),
        Err(e) => {
            // The error text never contains the key.
            p.push(key, format!("the key {e}"));
            None
        }
    }
}

fn load_ca_file(p: &mut Problems, path: &str) -> Vec<CertificateDer<'static>> {
    const KEY: &str = "upstream.ca_file";
    let iter = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter,
        Err(e) => {
            p.push(KEY, format!("cannot read {path}: {e}"));
            return Vec::new();
        }
    };
    match iter.collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => {
            p.push(KEY, format!("{path} holds no PEM certificate"));
            Vec::new()
        }
        Err(e) => {
            p.push(KEY, format!("{path} is not valid PEM: {e}"));
            Vec::new()
        }
    }
}

fn duplicate_digest(first: usize, this: usize) -> String {
    if first == this {
        "is the same digest as another token of this tenant: tokens must differ".to_string()
    } else {
        format!("is the same digest as a token of tenant[{first}]: tokens must differ")
    }
}

/// An RFC 3339 time with `Z` or a `±HH:MM` offset, as Unix ms.
fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let (base, offset_s): (String, i64) = match text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        Some(base) => (base.to_string(), 0),
        None => {
            let split = text.len().checked_sub(6)?;
            let (base, offset) = (text.get(..split)?, text.get(split..)?);
            let sign = match offset.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = offset[1..].split_once(':')?;
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if h > 23 || m > 59 || offset[1..].len() != 5 {
                return None;
            }
            (base.to_string(), sign * (h * 3600 + m * 60))
        }
    };
    let t = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    u64::try_from(ms - offset_s * 1000).ok()
}

fn validate_tenants(p: &mut Problems, raw: Vec<RawTenant>, warnings: &mut Vec<ConfigProblem>) -> Vec<TenantConfig> {
    if raw.is_empty() {
        p.push("tenant", "at least one [[tenant]] is required");
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut hashes: HashMap<[u8; 32], usize> = HashMap::new();
    let mut sans: HashMap<String, usize> = HashMap::new();
    let mut tenants = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("tenant[{i}].{field}");
        let name = match t.name.as_deref() {
            None => {
                p.push(key("name"), "is required");
                None
            }
            Some(raw_name) => match TenantName::parse(raw_name) {
                None => {
                    p.push(
                        key("name"),
                        format!("{raw_name:?} must be 1-64 of letters, digits, '-', '_', '.'"),
                    );
                    None
                }
                Some(name) => {
                    if let Some(first) = names.insert(raw_name.to_string(), i) {
                        p.push(key("name"), format!("{raw_name:?} is also the name of tenant[{first}]"));
                    }
                    Some(name)
                }
            },
        };
        let client_cert_san = match t.client_cert_san {
            Some(san) if san.is_empty() || rustls_pki_types::ServerName::try_from(san.as_str()).is_err() => {
                p.push(
                    key("client_cert_san"),
                    format!("{san:?} is not a DNS name or IP address"),
                );
                None
            }
            Some(san) => {
                if let Some(first) = sans.insert(san.to_ascii_lowercase(), i) {
                    p.push(key("client_cert_san"), format!("is the same as tenant[{first}]'s"));
                }
                Some(san)
            }
            None => None,
        };
        let mut tokens = Vec::new();
        if let Some(hex_text) = t.token_sha256.as_deref() {
            match parse_sha256_hex(hex_text) {
                None => p.push(
                    key("token_sha256"),
                    "must be 64 hexadecimal characters (a SHA-256 digest)",
                ),
                Some(hash) => {
                    if let Some(first) = hashes.insert(hash, i) {
                        p.push(key("token_sha256"), duplicate_digest(first, i));
                    }
                    tokens.push(TokenConfig {
                        sha256: hash,
                        name: None,
                        expires_ms: None,
                    });
                }
            }
        }
        let mut token_names = HashSet::new();
        let has_tokens_key = t.tokens.is_some();
        for (j, token) in t.tokens.into_iter().flatten().enumerate() {
            let tkey = |field: &str| format!("tenant[{i}].tokens[{j}].{field}");
            let sha256 = match token.sha256.as_deref().map(parse_sha256_hex) {
                None => {
                    p.push(tkey("sha256"), "is required (see `ark-gateway hash-token`)");
                    None
                }
                Some(None) => {
                    p.push(tkey("sha256"), "must be 64 hexadecimal characters (a SHA-256 digest)");
                    None
                }
                Some(Some(hash)) => {
                    if let Some(first) = hashes.insert(hash, i) {
                        p.push(tkey("sha256"), duplicate_digest(first, i));
                    }
                    Some(hash)
                }
            };
            let name = match token.name {
                None => {
                    p.push(tkey("name"), "is required: it names the token in the audit trail");
                    None
                }
                Some(name) if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) => {
                    p.push(tkey("name"), "must be 1-64 visible ASCII characters");
                    None
                }
                Some(name) => {
                    if !token_names.insert(name.clone()) {
                        p.push(tkey("name"), format!("{name:?} names another token of this tenant"));
                    }
                    Some(name)
                }
            };
            let expires_ms = token.expires.as_deref().and_then(|text| match parse_rfc3339_ms(text) {
                Some(ms) => Some(ms),
                None => {
                    p.push(
                        tkey("expires"),
                        format!(
                            "{text:?} is not an RFC 3339 time with `Z` or an offset, like \"2027-06-30T00:00:00Z\""
                        ),
                    );
                    None
                }
            });
            if expires_ms.is_some_and(|ms| ms <= crate::ledger::now_ms()) {
                warnings.push(ConfigProblem {
                    key: tkey("expires"),
                    message: "has passed: the token is refused (401) until it is removed or extended".into(),
                });
            }
            if let (Some(sha256), Some(name)) = (sha256, name) {
                tokens.push(TokenConfig {
                    sha256,
                    name: Some(name),
                    expires_ms,
                });
            }
        }
        let token_sha256 = if tokens.is_empty() && client_cert_san.is_none() {
            if t.token_sha256.is_none() && !has_tokens_key {
                p.push(
                    key("token_sha256"),
                    "is required (see `ark-gateway hash-token`), unless `tokens` or client_cert_san identifies the tenant",
                );
            }
            None
        } else {
            Some(tokens)
        };
        let operations = match t.operations {
            None => {
                p.push(
                    key("operations"),
                    "is required: a list of \"create\", \"get\", \"list\", \"delete\"",
                );
                OperationSet::default()
            }
            Some(list) => {
                let mut set = OperationSet::default();
                for op in &list {
                    match Operation::parse(op) {
                        Some(op) => set.insert(op),
                        None => p.push(
                            key("operations"),
                            format!("{op:?} is not one of \"create\", \"get\", \"list\", \"delete\""),
                        ),
                    }
                }
                if list.is_empty() {
                    p.push(key("operations"), "must name at least one operation");
                }
                set
            }
        };
        let models = match t.models {
            None => None,
            Some(list) if list.is_empty() => {
                p.push(
                    key("models"),
                    "is empty, so no create could succeed; remove the key to allow every model",
                );
                None
            }
            Some(list) => Some(list.into_iter().collect::<BTreeSet<_>>()),
        };
        let task_ids = validate_grants(p, &key("task_ids"), t.task_ids);
        let max_active_tasks = t
            .max_active_tasks
            .map(|n| p.positive(&key("max_active_tasks"), Some(n), 1, 1_000_000_000) as u64);
        let budget = t
            .budget
            .map(|b| validate_budget(p, &key("budget"), b))
            .unwrap_or_default();
        let callback_hosts = t.callback_hosts.map(|entries| {
            if entries.is_empty() {
                p.push(
                    key("callback_hosts"),
                    "is empty, so every create with a callback_url would be refused; remove the key to allow any",
                );
            }
            CallbackHosts(
                entries
                    .iter()
                    .filter_map(|entry| {
                        let parsed = CallbackHosts::parse_entry(entry);
                        if parsed.is_none() {
                            p.push(
                                key("callback_hosts"),
                                format!("{entry:?} is not a host, `host:port` or `*.suffix`"),
                            );
                        }
                        parsed
                    })
                    .collect(),
            )
        });
        let rate_limit = validate_rate_limit(p, &key("rate_limit"), t.rate_limit);
        if let (Some(name), Some(tokens), Some(rate_limit)) = (name, token_sha256, rate_limit) {
            tenants.push(TenantConfig {
                name,
                tokens,
                client_cert_san,
                operations,
                models,
                task_ids,
                rate_limit,
                max_active_tasks,
                budget,
                callback_hosts,
            });
        }
    }
    tenants
}

fn validate_budget(p: &mut Problems, key: &str, raw: RawBudget) -> BudgetConfig {
    let tokens = |p: &mut Problems, field: &str, value: Option<i64>| {
        value.map(|n| p.positive(&format!("{key}.{field}"), Some(n), 1, i64::MAX) as u64)
    };
    let cost = |p: &mut Problems, field: &str, value: Option<f64>| {
        value.filter(|c| {
            let ok = c.is_finite() && *c > 0.0;
            if !ok {
                p.push(format!("{key}.{field}"), format!("{c} must be a positive amount"));
            }
            ok
        })
    };
    BudgetConfig {
        daily_tokens: tokens(p, "daily_tokens", raw.daily_tokens),
        monthly_tokens: tokens(p, "monthly_tokens", raw.monthly_tokens),
        daily_cost: cost(p, "daily_cost", raw.daily_cost),
        monthly_cost: cost(p, "monthly_cost", raw.monthly_cost),
    }
}

fn validate_price(p: &mut Problems, key: &str, value: Option<f64>) -> Option<f64> {
    value.filter(|v| {
        let ok = v.is_finite() && *v >= 0.0;
        if !ok {
            p.push(key, format!("{v} must be a price of zero or more"));
        }
        ok
    })
}

fn validate_pricing(p: &mut Problems, raw: Option<RawPricing>) -> PricingConfig {
    let Some(raw) = raw else {
        return PricingConfig::default();
    };
    let currency = raw.currency.unwrap_or_else(|| "CNY".to_string());
    if currency.is_empty() || currency.len() > 8 || !currency.bytes().all(|b| b.is_ascii_alphanumeric()) {
        p.push("pricing.currency", "must be a currency code such as \"CNY\" or \"USD\"");
    }
    let mut models = BTreeMap::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        let key = |field: &str| format!("pricing.model[{i}].{field}");
        let Some(model) = m.model.filter(|m| !m.is_empty()) else {
            p.push(key("model"), "is required");
            continue;
        };
        let price = ModelPrice {
            per_million_tokens: validate_price(p, &key("per_million_tokens"), m.per_million_tokens),
            reserve_tokens: m
                .reserve_tokens
                .map(|n| p.positive(&key("reserve_tokens"), Some(n), 1, i64::MAX) as u64),
            frames_per_second: p.positive(
                &key("frames_per_second"),
                m.frames_per_second,
                i64::from(DEFAULT_FRAMES_PER_SECOND),
                240,
            ) as u32,
        };
        if models.insert(model.clone(), price).is_some() {
            p.push(key("model"), format!("{model:?} is priced twice"));
        }
    }
    PricingConfig {
        currency,
        default_reserve_tokens: p.positive(
            "pricing.default_reserve_tokens",
            raw.default_reserve_tokens,
            DEFAULT_RESERVE_TOKENS as i64,
            i64::MAX,
        ) as u64,
        default_per_million_tokens: validate_price(
            p,
            "pricing.default_per_million_tokens",
            raw.default_per_million_tokens,
        ),
        models,
        configured: true,
    }
}

fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok()).then_some(out)
}

fn validate_grants(p: &mut Problems, key: &str, raw: Vec<String>) -> TaskGrants {
    let mut grants = TaskGrants::default();
    let mut seen = HashSet::new();
    for entry in raw {
        if !seen.insert(entry.clone()) {
            p.push(key, format!("{entry:?} is listed twice"));
            continue;
        }
        match entry.strip_suffix('*') {
            Some("") => p.push(
                key,
                "\"*\" alone would grant every task of every tenant; name ids or prefixes such as \"cgt-2025*\"",
            ),
            Some(prefix) if is_task_id(prefix) => grants.prefixes.push(prefix.to_string()),
            Some(_) => p.push(
                key,
                format!("{entry:?}: a prefix grant is task-id characters followed by one '*'"),
            ),
            None => match TaskId::parse(&entry) {
                Some(id) => {
                    grants.exact.insert(id);
                }
                None => p.push(
                    key,
                    format!(
                        "{entry:?} is not a task id (1-128 of letters, digits, '-', '_') or a prefix ending in '*'"
                    ),
                ),
            },
        }
    }
    grants
}

fn validate_rate_limit(p: &mut Problems, key: &str, raw: Option<RawRateLimit>) -> Option<RateLimitConfig> {
    let Some(raw) = raw else {
        p.push(key, "is required, e.g. { per_second = 5, burst = 10 }");
        return None;
    };
    let positive = |p: &mut Problems, field: &str, value: i64| -> Option<NonZeroU32> {
        let v = u32::try_from(value).ok().and_then(NonZeroU32::new);
        if v.is_none() {
            p.push(
                format!("{key}.{field}"),
                format!("{value} must be a whole number from 1 to {}", u32::MAX),
            );
        }
        v
    };
    let (per, rate) = match (raw.per_second, raw.per_minute) {
        (Some(n), None) => (RatePeriod::Second, positive(p, "per_second", n)?),
        (None, Some(n)) => (RatePeriod::Minute, positive(p, "per_minute", n)?),
        _ => {
            p.push(key, "set exactly one of per_second or per_minute");
            return None;
        }
    };
    let burst = match raw.burst {
        None => rate,
        Some(b) => positive(p, "burst", b)?,
    };
    Some(RateLimitConfig { per, rate, burst })
}

#[cfg(test)]
mod rfc3339_tests {
    use super::parse_rfc3339_ms;

    #[test]
    fn times_with_z_or_an_offset_are_read() {
        let z = parse_rfc3339_ms("2027-06-30T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2027-06-30T08:00:00+08:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2027-06-29T19:30:00-04:30"), Some(z));
        assert_eq!(parse_rfc3339_ms("2027-06-30T00:00:00.500Z"), Some(z + 500));
        for bad in [
            "2027-06-30",
            "2027-06-30T00:00:00",
            "2027-06-30T00:00:00+8:00",
            "tomorrow",
            "2027-06-30T00:00:00+24:00",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_give_the_position_but_never_the_value() {
        let text = "[upstream]\nbase_url = \"https://x\"\napi_key = [\"sk-secret-1\"\n";
        let shown = crate::config::Config::from_toml_str(text, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(shown.contains("line 3, column 25"), "{shown}");
        assert!(!shown.contains("sk-secret-1"), "{shown}");
        let text = "[upstream]\nbase_url = \"https://x\"\nmax_concurrent = \"sk-secret-2\"\n";
        let shown = crate::config::Config::from_toml_str(text, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(shown.contains("max_concurrent") || shown.contains("line 3"), "{shown}");
        assert!(!shown.contains("sk-secret-2"), "{shown}");
    }

    #[test]
    fn an_inline_key_is_told_where_it_belongs_and_never_shown() {
        let text = "[upstream]\nbase_url = \"https://x\"\napi_key = \"sk-secret-1\"\n";
        let err = crate::config::Config::from_toml_str(text, &|_| None).unwrap_err();
        let shown = err.to_string();
        assert!(err.mentions("upstream.api_key"), "{shown}");
        assert!(shown.contains("upstream.api_key_file"), "{shown}");
        assert!(!shown.contains("sk-secret-1"), "{shown}");
    }

    #[test]
    fn unknown_keys_are_reported_with_every_other_problem_and_a_suggestion() {
        let text = "[server]\nlistn = \"127.0.0.1:1\"\nworkers = 0\n\n[upstream]\nbase_url = \"https://x\"\napi_key_env = \"K\"\n\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"00\"\nrate_limit = { per_second = 1, brust = 2 }\n";
        let err = crate::config::Config::from_toml_str(text, &|name| (name == "K").then(|| "key".into())).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("server.listn: unknown key; did you mean `listen`?"),
            "{shown}"
        );
        assert!(
            shown.contains("tenant[0].rate_limit.brust: unknown key; did you mean `burst`?"),
            "{shown}"
        );
        // The validation problems of the known keys are reported in the same run.
        assert!(err.mentions("server.workers"), "{shown}");
        assert!(err.problems.len() >= 4, "{shown}");
    }

    #[test]
    fn redaction_removes_every_quoted_value() {
        assert_eq!(
            redact_string_values(r#"invalid type: string "abc", expected i64; string "d""#),
            "invalid type: a string, expected i64; a string"
        );
    }

    fn route_of(base: &str, upstream_extra: &str, env: &[(&str, &str)]) -> Result<UpstreamRoute, String> {
        let text = format!(
            "[upstream]\nbase_url = \"{base}\"\napi_key_env = \"K\"\nallow_insecure_http = true\n{upstream_extra}\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\noperations = [\"get\"]\nrate_limit = {{ per_second = 1 }}\n"
        );
        let lookup = |name: &str| {
            (name == "K")
                .then(|| "sk-1".to_string())
                .or_else(|| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
        };
        crate::config::Config::from_toml_str(&text, &lookup)
            .map(|c| c.upstream.route)
            .map_err(|e| e.to_string())
    }

    fn proxied(route: Result<UpstreamRoute, String>) -> (String, &'static str, bool) {
        match route {
            Ok(UpstreamRoute::Proxy(p)) => (p.address.to_string(), p.source, p.credential.is_some()),
            other => panic!("expected a proxy: {other:?}"),
        }
    }

    #[test]
    fn the_proxy_key_wins_and_never_holds_credentials() {
        let ark = "https://ark.example/api/v3";
        let env = [("https_proxy", "http://env-proxy:3128")];
        assert_eq!(
            proxied(route_of(ark, "proxy = \"http://egress.internal:3128\"", &env)),
            ("http://egress.internal:3128/".into(), "upstream.proxy", false)
        );
        assert_eq!(
            proxied(route_of(ark, "proxy = \"egress:8080\"", &[])).0,
            "http://egress:8080/"
        );
        assert_eq!(
            proxied(route_of(ark, "proxy = \"http://egress\"", &[])).0,
            "http://egress:1080/"
        );
        let inline = route_of(ark, "proxy = \"http://user:pw-canary@egress:3128\"", &[]).unwrap_err();
        assert!(
            inline.contains("upstream.proxy") && inline.contains("proxy_credentials_file"),
            "{inline}"
        );
        assert!(!inline.contains("canary"), "{inline}");
        for bad in [
            "https://egress:3128",
            "socks5://egress:1080",
            "http://egress:3128/path",
            "http://",
        ] {
            let e = route_of(ark, &format!("proxy = \"{bad}\""), &[]).unwrap_err();
            assert!(e.contains("upstream.proxy"), "{bad}: {e}");
        }
    }

    #[test]
    fn proxy_credentials_come_from_a_file_and_only_with_a_proxy() {
        let ark = "https://ark.example/api/v3";
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "egress:pw-canary\n").unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "pw-canary-without-user\n").unwrap();
        let with = |file: &std::path::Path| {
            format!(
                "proxy = \"http://egress:3128\"\nproxy_credentials_file = \"{}\"",
                file.display()
            )
        };
        assert!(proxied(route_of(ark, &with(&good), &[])).2);
        let e = route_of(ark, &with(&bad), &[]).unwrap_err();
        assert!(
            e.contains("upstream.proxy_credentials_file") && !e.contains("canary"),
            "{e}"
        );
        let e = route_of(ark, &with(&dir.path().join("missing")), &[]).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let e = route_of(ark, &format!("proxy_credentials_file = \"{}\"", good.display()), &[]).unwrap_err();
        assert!(e.contains("only applies with upstream.proxy"), "{e}");
    }

    #[test]
    fn without_the_key_the_environment_is_read_as_curl_reads_it() {
        let ark = "https://ark.example/api/v3";
        let http = "http://mock.internal:8080/api/v3";
        // https: the lower-case name first, then the upper-case one, then all_proxy.
        let both = [("https_proxy", "http://lower:1"), ("HTTPS_PROXY", "http://upper:2")];
        assert_eq!(
            proxied(route_of(ark, "", &both)),
            ("http://lower:1/".into(), "https_proxy", false)
        );
        assert_eq!(proxied(route_of(ark, "", &both[1..])).1, "HTTPS_PROXY");
        assert_eq!(
            proxied(route_of(ark, "", &[("ALL_PROXY", "http://all:3")])).1,
            "ALL_PROXY"
        );
        // http: only the lower-case http_proxy (HTTP_PROXY can be set by a CGI request header).
        assert_eq!(
            proxied(route_of(http, "", &[("http_proxy", "http://p:4")])).1,
            "http_proxy"
        );
        assert!(matches!(
            route_of(http, "", &[("HTTP_PROXY", "http://p:4")]),
            Ok(UpstreamRoute::Direct(_))
        ));
        assert!(matches!(
            route_of(http, "", &[("https_proxy", "http://p:4")]),
            Ok(UpstreamRoute::Direct(_))
        ));
        // User info in an environment proxy URL is its credential.
        assert!(proxied(route_of(ark, "", &[("https_proxy", "http://u:p%40ss@p:5")])).2);
        // no_proxy by domain suffix, and loopback never proxied.
        for no in ["ark.example", ".example", "*", "other.test, example"] {
            let env = [("https_proxy", "http://p:6"), ("no_proxy", no)];
            match route_of(ark, "", &env) {
                Ok(UpstreamRoute::Direct(why)) => assert!(why.contains("no_proxy"), "{why}"),
                other => panic!("no_proxy = {no}: {other:?}"),
            }
        }
        let env = [("https_proxy", "http://p:6"), ("NO_PROXY", "notark.example")];
        assert_eq!(proxied(route_of(ark, "", &env)).1, "https_proxy");
        let local = [("http_proxy", "http://p:7")];
        for base in [
            "http://127.0.0.1:9/api/v3",
            "http://localhost:9/api/v3",
            "http://[::1]:9/api/v3",
        ] {
            assert!(
                matches!(route_of(base, "", &local), Ok(UpstreamRoute::Direct(_))),
                "{base}"
            );
        }
        match route_of(ark, "", &[]) {
            Ok(UpstreamRoute::Direct(why)) => assert!(why.contains("https_proxy are not set"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A bad value in the environment is reported without its text.
        let e = route_of(ark, "", &[("https_proxy", "https://u:pw-canary@p:8")]).unwrap_err();
        assert!(e.contains("https_proxy") && !e.contains("canary"), "{e}");
    }

    #[test]
    fn the_log_format_is_text_or_json() {
        let base = "[upstream]\nbase_url = \"https://x\"\napi_key_env = \"K\"\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\noperations = [\"get\"]\nrate_limit = { per_second = 1 }\n";
        let env = |name: &str| (name == "K").then(|| "k".to_string());
        let format = |extra: &str| crate::config::Config::from_toml_str(&format!("{base}{extra}"), &env).map(|c| c.log);
        assert_eq!(format("").unwrap(), LogFormat::Text);
        assert_eq!(format("[log]\nformat = \"json\"\n").unwrap(), LogFormat::Json);
        let e = format("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(e.contains("log.format"), "{e}");
    }
}
