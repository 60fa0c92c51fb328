//! Tenants as the running gateway sees them: the validated config plus the
//! state that must be built once and shared (the rate limiter).

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{OperationSet, TaskGrants, TenantConfig, TenantName};
use crate::rate_limit::TenantLimiter;

/// One tenant's policy and limiter.
#[derive(Debug)]
pub struct TenantPolicy {
    pub name: TenantName,
    token_sha256: [u8; 32],
    pub operations: OperationSet,
    pub models: Option<BTreeSet<String>>,
    pub grants: TaskGrants,
    pub limiter: TenantLimiter,
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
    pub fn from_config(config: &TenantConfig) -> Self {
        Self(Arc::new(TenantPolicy {
            name: config.name.clone(),
            token_sha256: config.token_sha256,
            operations: config.operations,
            models: config.models.clone(),
            grants: config.task_ids.clone(),
            limiter: TenantLimiter::new(&config.rate_limit),
        }))
    }
}

/// Every tenant, looked up by token.
#[derive(Debug, Default)]
pub struct TenantDirectory {
    tenants: Vec<Tenant>,
}

/// SHA-256 of a token, as stored in `token_sha256`.
pub fn token_sha256(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TenantDirectory {
    pub fn from_config(tenants: &[TenantConfig]) -> Self {
        Self {
            tenants: tenants.iter().map(Tenant::from_config).collect(),
        }
    }

    /// Finds the tenant whose token hashes to the stored digest. Every tenant
    /// is compared, in constant time, so timing says nothing about near misses.
    pub fn authenticate(&self, token: &[u8]) -> Option<Tenant> {
        let digest = token_sha256(token);
        let mut found = None;
        for tenant in &self.tenants {
            if bool::from(digest.ct_eq(&tenant.token_sha256)) {
                found = Some(tenant.clone());
            }
        }
        found
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }
}
