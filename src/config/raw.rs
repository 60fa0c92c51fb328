//! The configuration file exactly as written. Every table denies unknown keys,
//! and fields whose meaning needs checking (durations, addresses, URLs) stay
//! strings here so that validation can report all of their problems at once.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub rate_limit: RawRateLimitBackend,
    #[serde(default)]
    pub pricing: Option<RawPricing>,
    #[serde(default)]
    pub reconcile: RawReconcile,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<RawTenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub request_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub workers: Option<i64>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_sha256: Option<String>,
    #[serde(default)]
    pub metrics_public: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub max_concurrent: Option<i64>,
    pub max_response_bytes: Option<i64>,
    #[serde(default)]
    pub allow_insecure_http: bool,
    pub ca_file: Option<String>,
    pub requests_per_minute: Option<i64>,
    pub requests_burst: Option<i64>,
    pub max_active_tasks: Option<i64>,
    pub protocols: Option<Vec<String>>,
    pub proxy: Option<String>,
    pub proxy_credentials_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimitBackend {
    pub backend: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub path: Option<String>,
    pub retention: Option<String>,
    pub usage_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub sink: Option<String>,
    pub fsync: Option<String>,
    pub fsync_interval: Option<String>,
    pub rotate_bytes: Option<i64>,
    pub on_failure: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: Option<String>,
    pub token_sha256: Option<String>,
    pub tokens: Option<Vec<RawToken>>,
    pub client_cert_san: Option<String>,
    pub operations: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub task_ids: Vec<String>,
    pub rate_limit: Option<RawRateLimit>,
    pub max_active_tasks: Option<i64>,
    pub budget: Option<RawBudget>,
    pub callback_hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub sha256: Option<String>,
    pub name: Option<String>,
    pub expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub daily_tokens: Option<i64>,
    pub monthly_tokens: Option<i64>,
    pub daily_cost: Option<f64>,
    pub monthly_cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    pub currency: Option<String>,
    pub default_reserve_tokens: Option<i64>,
    pub default_per_million_tokens: Option<f64>,
    #[serde(default, rename = "model")]
    pub models: Vec<RawModelPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelPrice {
    pub model: Option<String>,
    pub per_million_tokens: Option<f64>,
    pub reserve_tokens: Option<i64>,
    pub frames_per_second: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconcile {
    pub enabled: Option<bool>,
    pub interval: Option<String>,
    pub max_requests_per_minute: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub per_second: Option<i64>,
    pub per_minute: Option<i64>,
    pub burst: Option<i64>,
}
