//! The validated spend settings: prices, budgets, active-task quotas, the
//! reconciler and callback hosts. Validation lives with the rest in `validate`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

/// `[pricing]`: what a token costs and how much a create reserves.
#[derive(Debug, Clone, PartialEq)]
pub struct PricingConfig {
    pub currency: String,
    /// The reservation when a model has none and no estimate applies.
    pub default_reserve_tokens: u64,
    /// The price of a model not listed.
    pub default_per_million_tokens: Option<f64>,
    pub models: BTreeMap<String, ModelPrice>,
    /// Whether `[pricing]` was written (it switches the reconciler on).
    pub configured: bool,
}

impl Default for PricingConfig {
    fn default() -> Self {
        Self {
            currency: "CNY".to_string(),
            default_reserve_tokens: DEFAULT_RESERVE_TOKENS,
            default_per_million_tokens: None,
            models: BTreeMap::new(),
            configured: false,
        }
    }
}

pub const DEFAULT_RESERVE_TOKENS: u64 = 250_000;
/// Ark's frame rate for the Seedance models (API.md).
pub const DEFAULT_FRAMES_PER_SECOND: u32 = 24;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    pub per_million_tokens: Option<f64>,
    /// A fixed reservation per task, instead of the estimate from the body.
    pub reserve_tokens: Option<u64>,
    pub frames_per_second: u32,
}

impl PricingConfig {
    /// The price per million tokens of `model`, if any is configured.
    pub fn price_of(&self, model: &str) -> Option<f64> {
        self.models
            .get(model)
            .and_then(|m| m.per_million_tokens)
            .or(self.default_per_million_tokens)
    }
}

/// A tenant's `budget`: limits per UTC day and month, in tokens and in cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetConfig {
    pub daily_tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
    pub daily_cost: Option<f64>,
    pub monthly_cost: Option<f64>,
}

impl BudgetConfig {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn has_cost(&self) -> bool {
        self.daily_cost.is_some() || self.monthly_cost.is_some()
    }
}

/// `[reconcile]`: the background task that asks Ark about unfinished tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// `reconcile.enabled`, or implied by pricing, a budget or a quota.
    pub enabled: bool,
    pub interval: Duration,
    pub max_requests_per_minute: NonZeroU32,
}

/// One `callback_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `hooks.example` (lowercase, no trailing dot).
    Exact { host: String, port: u16 },
    /// `*.example`: any subdomain, not `example` itself (stored as `.example`).
    Suffix { suffix: String, port: u16 },
}

/// A tenant's allowed callback hosts; `None` on the tenant: any `callback_url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackHosts(pub Vec<HostPattern>);

impl CallbackHosts {
    /// Parses an entry: `host`, `host:port`, `*.suffix`, `*.suffix:port`.
    pub fn parse_entry(entry: &str) -> Option<HostPattern> {
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok().filter(|p| *p != 0)?),
            None => (entry, 443),
        };
        let host = normalise_host(host)?;
        match host.strip_prefix("*.") {
            Some(suffix) if valid_hostname(suffix) => Some(HostPattern::Suffix {
                suffix: format!(".{suffix}"),
                port,
            }),
            Some(_) => None,
            None if valid_hostname(&host) => Some(HostPattern::Exact { host, port }),
            None => None,
        }
    }

    /// Whether `url` is an `https://` URL, without user info, on one of the hosts.
    pub fn allows(&self, url: &str) -> bool {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return false;
        };
        if uri.scheme_str().map(str::to_ascii_lowercase).as_deref() != Some("https") {
            return false;
        }
        let Some(authority) = uri.authority() else { return false };
        if authority.as_str().contains('@') {
            return false;
        }
        let Some(host) = normalise_host(authority.host()) else {
            return false;
        };
        let port = authority.port_u16().unwrap_or(443);
        self.0.iter().any(|pattern| match pattern {
            HostPattern::Exact { host: h, port: p } => *h == host && *p == port,
            HostPattern::Suffix { suffix, port: p } => {
                *p == port && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        })
    }
}

fn normalise_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> CallbackHosts {
        CallbackHosts(entries.iter().map(|e| CallbackHosts::parse_entry(e).unwrap()).collect())
    }

    #[test]
    fn callback_urls_are_matched_by_scheme_host_port_and_user_info() {
        let allowed = hosts(&["hooks.video-team.example", "*.cb.example", "alt.example:8443"]);
        for ok in [
            "https://hooks.video-team.example/ark",
            "https://HOOKS.video-team.example./ark",
            "https://hooks.video-team.example:443/x",
            "https://a.cb.example/x",
            "https://a.b.cb.example/x",
            "https://alt.example:8443/x",
        ] {
            assert!(allowed.allows(ok), "{ok}");
        }
        for refused in [
            "http://hooks.video-team.example/ark",
            "https://hooks.video-team.example:8443/ark",
            "https://evil.example/ark",
            "https://cb.example/x",
            "https://xcb.example/x",
            "https://user:pw@hooks.video-team.example/ark",
            "https://user@hooks.video-team.example/ark",
            "https://alt.example/x",
            "https://hooks.video-team.example.evil.example/",
            "not a url",
            "",
        ] {
            assert!(!allowed.allows(refused), "{refused}");
        }
    }

    #[test]
    fn entries_are_checked() {
        for bad in ["", "*.", "*", "a..b", "host:0", "host:x", "user@host", "https://host"] {
            assert!(CallbackHosts::parse_entry(bad).is_none(), "{bad}");
        }
        assert_eq!(
            CallbackHosts::parse_entry("Hooks.Example."),
            Some(HostPattern::Exact {
                host: "hooks.example".into(),
                port: 443
            })
        );
    }
}
