//! Tenants as the running gateway sees them: the validated config plus the
//! state that must be built once and shared (the rate limiter).

use std::collections::BTreeSet;
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
    token_sha256: Option<[u8; 32]>,
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
            token_sha256: config.token_sha256,
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
}

/// SHA-256 of a token, as stored in `token_sha256`.
pub fn token_sha256(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TenantDirectory {
    /// Builds the directory for a new configuration. A tenant that keeps its
    /// name and its rate limit keeps its limiter, so a reload neither refills
    /// nor empties anyone's bucket.
    pub fn from_config_reusing(tenants: &[TenantConfig], previous: &TenantDirectory) -> Self {
        Self {
            tenants: tenants
                .iter()
                .map(|config| {
                    let limiter = previous
                        .tenants
                        .iter()
                        .find(|old| old.name == config.name && old.rate_limit == config.rate_limit)
                        .map(|old| old.limiter.clone())
                        .unwrap_or_else(|| Arc::new(TenantLimiter::new(&config.rate_limit)));
                    Tenant::from_config(config, limiter)
                })
                .collect(),
        }
    }

    /// Finds the tenant whose token hashes to the stored digest. Every tenant
    /// is compared, in constant time, so timing says nothing about near misses.
    pub fn authenticate(&self, token: &[u8]) -> Option<Tenant> {
        let digest = token_sha256(token);
        let mut found = None;
        for tenant in &self.tenants {
            if let Some(stored) = &tenant.token_sha256 {
                if bool::from(digest.ct_eq(stored)) {
                    found = Some(tenant.clone());
                }
            }
        }
        found
    }

    /// The tenant whose `client_cert_san` the (already verified) client
    /// certificate is valid for.
    pub fn by_client_certificate(&self, cert: &CertificateDer<'_>) -> Option<Tenant> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        self.tenants
            .iter()
            .find(|t| {
                t.client_cert_san
                    .as_ref()
                    .is_some_and(|san| cert.verify_is_valid_for_subject_name(san).is_ok())
            })
            .cloned()
    }
}
