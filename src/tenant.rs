//! Tenants as the running gateway sees them: the validated config plus the
//! state that must be built once and shared (the rate limiter).

use std::collections::{BTreeSet, HashMap};
use std::ops::Deref;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{BudgetConfig, CallbackHosts, OperationSet, RateLimitConfig, TaskGrants, TenantConfig, TenantName};
use crate::rate_limit::TenantLimiter;

/// One tenant's policy and limiter.
#[derive(Debug)]
pub struct TenantPolicy {
    pub name: TenantName,
    client_cert_san: Option<ServerName<'static>>,
    pub operations: OperationSet,
    pub models: Option<BTreeSet<String>>,
    pub grants: TaskGrants,
    pub rate_limit: RateLimitConfig,
    pub max_active_tasks: Option<u64>,
    pub budget: BudgetConfig,
    pub callback_hosts: Option<CallbackHosts>,
    /// Shared with the next configuration when a reload keeps this tenant's limit.
    pub limiter: Arc<TenantLimiter>,
}

/// The authenticated caller, as a request extension.
#[derive(Debug, Clone)]
pub struct Tenant(Arc<TenantPolicy>);

impl Deref for Tenant {
    type Target = TenantPolicy;

    fn deref(&self) -> &TenantPolicy {
        &self.0
    }
}

impl Tenant {
    fn from_config(config: &TenantConfig, limiter: Arc<TenantLimiter>) -> Self {
        Self(Arc::new(TenantPolicy {
            name: config.name.clone(),
            client_cert_san: config
                .client_cert_san
                .as_deref()
                .and_then(|san| ServerName::try_from(san.to_string()).ok()),
            operations: config.operations,
            models: config.models.clone(),
            grants: config.task_ids.clone(),
            rate_limit: config.rate_limit,
            max_active_tasks: config.max_active_tasks,
            budget: config.budget,
            callback_hosts: config.callback_hosts.clone(),
            limiter,
        }))
    }
}

impl TenantDirectory {
    /// Every tenant, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }
}

/// Every tenant, looked up by token or client certificate.
#[derive(Debug, Default)]
pub struct TenantDirectory {
    tenants: Vec<Tenant>,
    /// Token digest → its tenant (an index into `tenants`), name and expiry:
    /// a lookup costs the same with 10 tenants or 10,000.
    by_digest: HashMap<[u8; 32], TokenEntry>,
    /// Lowercase DNS `client_cert_san` → tenant index.
    by_dns_san: HashMap<String, usize>,
    /// Tenants identified by an IP-address SAN (few; checked against the certificate).
    ip_san_tenants: Vec<usize>,
}

#[derive(Debug)]
struct TokenEntry {
    digest: [u8; 32],
    tenant: usize,
    name: Option<Arc<str>>,
    expires_ms: Option<u64>,
}

/// Who a token belongs to.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub tenant: Tenant,
    /// The token's `name` (`None` for `token_sha256`), for the audit record.
    pub token_name: Option<Arc<str>>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
}

/// SHA-256 of a token, as stored in `token_sha256`.
pub fn token_sha256(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TenantDirectory {
    /// Builds the directory for a new configuration. A tenant that keeps its
    /// name and its rate limit keeps its limiter, so a reload neither refills
    /// nor empties anyone's bucket.
    pub fn from_config_reusing(configs: &[TenantConfig], previous: &TenantDirectory) -> Self {
        let previous: HashMap<&TenantName, &Tenant> = previous.tenants.iter().map(|t| (&t.name, t)).collect();
        let mut tenants = Vec::with_capacity(configs.len());
        let mut by_digest = HashMap::new();
        let (mut by_dns_san, mut ip_san_tenants) = (HashMap::new(), Vec::new());
        for (index, config) in configs.iter().enumerate() {
            let limiter = previous
                .get(&config.name)
                .filter(|old| old.rate_limit == config.rate_limit)
                .map(|old| old.limiter.clone())
                .unwrap_or_else(|| Arc::new(TenantLimiter::new(&config.rate_limit)));
            tenants.push(Tenant::from_config(config, limiter));
            match config.client_cert_san.as_deref().map(ServerName::try_from) {
                Some(Ok(ServerName::DnsName(name))) => {
                    by_dns_san.insert(name.as_ref().to_ascii_lowercase(), index);
                }
                Some(Ok(_)) => ip_san_tenants.push(index),
                _ => {}
            }
            for token in &config.tokens {
                by_digest.insert(
                    token.sha256,
                    TokenEntry {
                        digest: token.sha256,
                        tenant: index,
                        name: token.name.as_deref().map(Arc::from),
                        expires_ms: token.expires_ms,
                    },
                );
            }
        }
        Self {
            tenants,
            by_digest,
            by_dns_san,
            ip_san_tenants,
        }
    }

    /// Finds the tenant of a token by its digest; the one candidate's digest
    /// is compared in constant time.
    pub fn authenticate(&self, token: &[u8]) -> Result<Authenticated, TokenRefusal> {
        self.authenticate_at(token, crate::ledger::now_ms())
    }

    pub fn authenticate_at(&self, token: &[u8], now_ms: u64) -> Result<Authenticated, TokenRefusal> {
        let digest = token_sha256(token);
        let entry = self.by_digest.get(&digest).ok_or(TokenRefusal::Unknown)?;
        if !bool::from(digest.ct_eq(&entry.digest)) {
            return Err(TokenRefusal::Unknown);
        }
        if entry.expires_ms.is_some_and(|expires| now_ms >= expires) {
            return Err(TokenRefusal::Expired);
        }
        Ok(Authenticated {
            tenant: self.tenants[entry.tenant].clone(),
            token_name: entry.name.clone(),
        })
    }

    /// The tenant whose `client_cert_san` the (already verified) client
    /// certificate carries: a DNS name through the index (exact names,
    /// without case), an IP address by asking the certificate.
    pub fn by_client_certificate(&self, cert: &CertificateDer<'_>, dns_names: &[String]) -> Option<Tenant> {
        if let Some(&index) = dns_names.iter().find_map(|name| self.by_dns_san.get(name.as_str())) {
            return Some(self.tenants[index].clone());
        }
        if self.ip_san_tenants.is_empty() {
            return None;
        }
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        self.ip_san_tenants
            .iter()
            .map(|&index| &self.tenants[index])
            .find(|t| {
                t.client_cert_san
                    .as_ref()
                    .is_some_and(|san| cert.verify_is_valid_for_subject_name(san).is_ok())
            })
            .cloned()
    }
}
