//! What a reload can change, swapped atomically (arc-swap): tenants, grants,
//! limits, models, the Ark key and the request limits. Each request takes one
//! [`Snapshot`] when it is authenticated and keeps it to the end, so an
//! in-flight request finishes under the configuration it started with and a
//! key rotation never sends a half-read key.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::policy::PolicyLimits;
use crate::secret::ArkApiKey;
use crate::tenant::TenantDirectory;

/// One generation of the reloadable configuration.
#[derive(Debug)]
pub struct Snapshot {
    pub tenants: TenantDirectory,
    pub api_key: ArkApiKey,
    pub limits: PolicyLimits,
    /// Prices and the account's active-task quota (tenants carry their own limits).
    pub spend: Arc<SpendSettings>,
    pub generation: u64,
}

/// What a create's admission needs besides the tenant.
#[derive(Debug)]
pub struct SpendSettings {
    pub pricing: crate::config::PricingConfig,
    pub account_max_active: Option<u64>,
    /// How long a create in flight holds its slot (`upstream.timeout` plus a margin).
    pub lease: Duration,
}

impl Snapshot {
    pub fn from_config(config: &Config, previous: Option<&Snapshot>) -> Self {
        let empty = TenantDirectory::default();
        Self {
            tenants: TenantDirectory::from_config_reusing(&config.tenants, previous.map_or(&empty, |p| &p.tenants)),
            api_key: config.upstream.api_key.clone(),
            limits: PolicyLimits {
                max_body_bytes: config.server.max_body_bytes,
                request_timeout: config.server.request_timeout,
            },
            spend: Arc::new(SpendSettings {
                pricing: config.pricing.clone(),
                account_max_active: config.upstream.max_active_tasks,
                lease: config.upstream.timeout + Duration::from_secs(30),
            }),
            generation: previous.map_or(1, |p| p.generation + 1),
        }
    }
}

/// The live configuration, shared by the layers that read it.
pub(crate) type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Environment lookup usable from a background task.
pub(crate) type SharedEnv = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Re-reads the config file and swaps the snapshot if, and only if, it is valid.
pub(crate) struct Reloader {
    path: PathBuf,
    env: SharedEnv,
    shared: SharedSnapshot,
    /// The file the process started with, to warn about settings a reload cannot change.
    started_with: toml::Table,
    metrics: Arc<Metrics>,
    /// Fingerprints of the files as last loaded (by SIGHUP, the watcher or at
    /// start), so the watcher reloads exactly when the files differ from the
    /// running configuration.
    loaded: Mutex<Vec<Option<[u8; 32]>>>,
    /// `upstream.api_key_file` as last read: it changes only with the config
    /// file, so a watcher tick reads and hashes the files but parses nothing.
    key_file: Mutex<Option<PathBuf>>,
}

/// The file's keys and values as written, if it parses, without the tenants
/// (all of whose settings reload): kept for the life of the process.
fn read_table(path: &std::path::Path) -> Option<toml::Table> {
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    table.remove("tenant");
    Some(table)
}

fn fingerprint(files: &[PathBuf]) -> Vec<Option<[u8; 32]>> {
    files
        .iter()
        .map(|f| std::fs::read(f).ok().map(|bytes| crate::tenant::token_sha256(&bytes)))
        .collect()
}

impl Reloader {
    pub(crate) fn new(path: PathBuf, env: SharedEnv, shared: SharedSnapshot, metrics: Arc<Metrics>) -> Self {
        let started_with = read_table(&path).unwrap_or_default();
        let reloader = Self {
            path,
            env,
            shared,
            started_with,
            metrics,
            loaded: Mutex::new(Vec::new()),
            key_file: Mutex::new(None),
        };
        reloader.read_key_file();
        *reloader.loaded.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint(&reloader.watched_files());
        reloader
    }

    /// Loads, validates and swaps. An invalid file is rejected with the same
    /// messages as `check`, and the running configuration stays.
    pub(crate) fn reload(&self) -> Result<u64, ConfigError> {
        self.read_key_file();
        // Recorded before reading, so a failed attempt is not retried until the files change again.
        *self.loaded.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint(&self.watched_files());
        let env = self.env.clone();
        let config = match Config::load_with_env(&self.path, &move |name| env(name)) {
            Ok(config) => config,
            Err(e) => {
                self.metrics.config_reload(false);
                for problem in &e.problems {
                    tracing::error!(problem = %problem, "config reload rejected; the running config stays");
                }
                return Err(e);
            }
        };
        if let Some(now) = read_table(&self.path) {
            for setting in crate::config::restart_only_changes(&self.started_with, &now) {
                tracing::warn!(setting, "changed in the file, but only takes effect after a restart");
            }
        }
        let previous = self.shared.load();
        let next = Arc::new(Snapshot::from_config(&config, Some(&previous)));
        let generation = next.generation;
        self.shared.store(next);
        self.metrics.config_reload(true);
        tracing::info!(generation, tenants = config.tenants.len(), "config reloaded");
        Ok(generation)
    }

    /// Files whose change triggers a reload: the config, and the key file if any.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.key_file.lock().unwrap_or_else(PoisonError::into_inner).clone());
        files
    }

    /// Reads which key file the config names.
    fn read_key_file(&self) {
        let named = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| crate::config::parse_raw(&text).ok())
            .and_then(|(raw, _)| raw.upstream.api_key_file)
            .map(PathBuf::from);
        *self.key_file.lock().unwrap_or_else(PoisonError::into_inner) = named;
    }

    /// Polls the watched files' contents and reloads when they differ from
    /// what was last loaded. Content, not mtime, is compared: Kubernetes swaps
    /// ConfigMaps through symlinks, and editors may keep the mtime.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = fingerprint(&self.watched_files());
            let changed = now != *self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            if changed {
                tracing::info!("config or key file changed on disk");
                let _ = self.reload();
            }
        }
    }
}
