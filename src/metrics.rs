//! Prometheus metrics (prometheus-client). Labels are a fixed, small set:
//! tenant names from the config, operations, decisions, status codes and
//! failure kinds. No label ever carries a token, a key or a task id.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::TenantName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// Shared with the tenant's name: no allocation per request.
    tenant: Arc<str>,
    operation: &'static str,
    decision: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantModel {
    tenant: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantWindow {
    tenant: String,
    window: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantReason {
    tenant: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    upstream_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    rate_limited: Family<TenantLabel, Counter>,
    upstream_in_flight: Gauge,
    upstream_errors: Family<KindLabel, Counter>,
    ledger_tasks: Gauge<i64, AtomicI64>,
    reloads: Family<ResultLabel, Counter>,
    redis_up: Gauge,
    redis_outages: Counter,
    tokens: Family<TenantModel, Counter>,
    cost: Family<TenantModel, Counter<f64, AtomicU64>>,
    active_tasks: Family<TenantLabel, Gauge>,
    budget_remaining: Family<TenantWindow, Gauge<f64, AtomicU64>>,
    budget_limit: Family<TenantWindow, Gauge<f64, AtomicU64>>,
    active_tasks_limit: Family<TenantLabel, Gauge>,
    account_active_tasks: Gauge,
    account_active_tasks_limit: Gauge,
    component_up: Family<ComponentLabel, Gauge>,
    ready: Gauge,
    quota_rejections: Family<TenantReason, Counter>,
    reconcile_runs: Family<ResultLabel, Counter>,
    reconcile_lag: Gauge<f64, AtomicU64>,
    /// The tenant label of requests that were not authenticated.
    unauthenticated: Arc<str>,
    /// Denials of the last hour, for the usage page.
    recent_rejections: RecentRejections,
}

/// A tenant's denials by reason over the last hour, in one-minute buckets
/// (this replica's). Written only when a request is denied.
#[derive(Debug, Default)]
pub struct RecentRejections {
    buckets: Mutex<std::collections::HashMap<(Arc<str>, &'static str), MinuteCounts>>,
}

/// (minute, count) for each minute of an hour, indexed by minute % 60.
type MinuteCounts = [(u64, u32); 60];

impl RecentRejections {
    pub fn record(&self, tenant: &TenantName, reason: &'static str, minute: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let slots = buckets.entry((tenant.shared(), reason)).or_insert([(0, 0); 60]);
        let slot = &mut slots[(minute % 60) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }

    /// (tenant, reason, count) over the 60 minutes up to `minute`, sorted;
    /// entries with nothing left in the hour are dropped.
    pub fn last_hour(&self, minute: u64) -> Vec<(String, &'static str, u64)> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        buckets.retain(|(tenant, reason), slots| {
            let n: u64 = slots
                .iter()
                .filter(|(m, _)| *m + 60 > minute && *m <= minute)
                .map(|(_, n)| u64::from(*n))
                .sum();
            if n > 0 {
                out.push((tenant.to_string(), *reason, n));
            }
            n > 0
        });
        out.sort();
        out
    }
}

/// Minutes since the Unix epoch.
pub fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ark_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by tenant, operation, decision and status",
            requests.clone(),
        );
        let request_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Whole-request latency as the gateway saw it",
            request_duration.clone(),
        );
        let upstream_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "upstream_duration_seconds",
            "Latency of the upstream (Ark) exchange",
            upstream_duration.clone(),
        );
        let rate_limited = Family::<TenantLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a tenant's rate limit",
            rate_limited.clone(),
        );
        let upstream_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "Requests in flight to Ark",
            upstream_in_flight.clone(),
        );
        let upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by kind",
            upstream_errors.clone(),
        );
        let ledger_tasks = Gauge::<i64, AtomicI64>::default();
        registry.register("ledger_tasks", "Ownership records in the ledger", ledger_tasks.clone());
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("config_reloads", "Configuration reloads by result", reloads.clone());
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 while the shared Redis answers (Redis backends only)",
            redis_up.clone(),
        );
        let redis_outages = Counter::default();
        registry.register(
            "redis_outages",
            "Redis outages seen (counted once per outage)",
            redis_outages.clone(),
        );
        let tokens = Family::<TenantModel, Counter>::default();
        registry.register(
            "tokens",
            "Tokens of settled tasks, by tenant and model (counted by the process that settled them)",
            tokens.clone(),
        );
        let cost = Family::<TenantModel, Counter<f64, AtomicU64>>::default();
        registry.register(
            "cost",
            "Cost of settled tasks in the pricing currency, by tenant and model",
            cost.clone(),
        );
        let active_tasks = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "active_tasks",
            "Queued and running tasks (and creates in flight) per tenant: the shared count",
            active_tasks.clone(),
        );
        let budget_remaining = Family::<TenantWindow, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_remaining",
            "What is left of each budget window (limit - used - reserved), in tokens or currency",
            budget_remaining.clone(),
        );
        let budget_limit = Family::<TenantWindow, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "budget_limit",
            "Each configured budget window's limit, in tokens or currency (beside budget_remaining)",
            budget_limit.clone(),
        );
        let active_tasks_limit = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "active_tasks_limit",
            "A tenant's max_active_tasks, where set",
            active_tasks_limit.clone(),
        );
        let account_active_tasks = Gauge::default();
        registry.register(
            "account_active_tasks",
            "Queued and running tasks of the whole Ark account (all tenants, all replicas)",
            account_active_tasks.clone(),
        );
        let account_active_tasks_limit = Gauge::default();
        registry.register(
            "account_active_tasks_limit",
            "upstream.max_active_tasks, where set",
            account_active_tasks_limit.clone(),
        );
        let component_up = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "component_up",
            "1 while a dependency works (ledger, rate_limiter, upstream, audit), else 0; read at each scrape",
            component_up.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 while /readyz would answer 200, else 0", ready.clone());
        let quota_rejections = Family::<TenantReason, Counter>::default();
        registry.register(
            "quota_rejections",
            "Creates refused by an active-task quota or a budget",
            quota_rejections.clone(),
        );
        let reconcile_runs = Family::<ResultLabel, Counter>::default();
        registry.register("reconcile_runs", "Reconciler passes by result", reconcile_runs.clone());
        let reconcile_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "reconcile_lag_seconds",
            "Seconds since the reconciler last finished a pass over every unfinished task",
            reconcile_lag.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Build information", build.clone());
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            rate_limited,
            upstream_in_flight,
            upstream_errors,
            ledger_tasks,
            reloads,
            redis_up,
            redis_outages,
            tokens,
            cost,
            active_tasks,
            budget_remaining,
            budget_limit,
            active_tasks_limit,
            account_active_tasks,
            account_active_tasks_limit,
            component_up,
            ready,
            quota_rejections,
            reconcile_runs,
            reconcile_lag,
            unauthenticated: Arc::from("-"),
            recent_rejections: RecentRejections::default(),
        }
    }

    fn request_counter(
        &self,
        tenant: Option<&TenantName>,
        operation: &'static str,
        allowed: bool,
        status: u16,
    ) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant.map_or_else(|| self.unauthenticated.clone(), TenantName::shared),
                operation,
                decision: if allowed { "allow" } else { "deny" },
                status,
            })
            .clone()
    }

    pub fn rate_limited(&self, tenant: &TenantName) {
        self.rate_limited
            .get_or_create(&TenantLabel {
                tenant: tenant.shared(),
            })
            .inc();
    }

    pub fn recent_rejections(&self) -> &RecentRejections {
        &self.recent_rejections
    }

    pub fn config_reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn redis_outage(&self) {
        self.redis_outages.inc();
        self.redis_up.set(0);
    }

    pub fn settled(&self, s: &crate::spend::Settlement) {
        let labels = TenantModel {
            tenant: s.tenant.clone(),
            model: s.model.clone(),
        };
        self.tokens.get_or_create(&labels).inc_by(s.tokens);
        self.cost
            .get_or_create(&labels)
            .inc_by(crate::spend::micros_to_amount(s.cost_micros));
    }

    pub fn quota_rejection(&self, tenant: &TenantName, reason: &'static str) {
        self.quota_rejections
            .get_or_create(&TenantReason {
                tenant: tenant.to_string(),
                reason,
            })
            .inc();
    }

    pub fn set_active_tasks(&self, tenant: &TenantName, n: u64) {
        self.active_tasks
            .get_or_create(&TenantLabel {
                tenant: tenant.shared(),
            })
            .set(n.min(i64::MAX as u64) as i64);
    }

    pub fn set_budget_remaining(&self, tenant: &TenantName, window: &'static str, remaining: f64) {
        self.budget_remaining
            .get_or_create(&TenantWindow {
                tenant: tenant.to_string(),
                window,
            })
            .set(remaining);
    }

    pub fn set_budget_limit(&self, tenant: &TenantName, window: &'static str, limit: f64) {
        self.budget_limit
            .get_or_create(&TenantWindow {
                tenant: tenant.to_string(),
                window,
            })
            .set(limit);
    }

    pub fn set_active_tasks_limit(&self, tenant: &TenantName, limit: u64) {
        self.active_tasks_limit
            .get_or_create(&TenantLabel {
                tenant: tenant.shared(),
            })
            .set(limit.min(i64::MAX as u64) as i64);
    }

    /// The account's active tasks, and its cap where one is set.
    pub fn set_account_active_tasks(&self, active: u64, limit: Option<u64>) {
        self.account_active_tasks.set(active.min(i64::MAX as u64) as i64);
        self.account_active_tasks_limit
            .set(limit.map_or(0, |l| l.min(i64::MAX as u64) as i64));
    }

    /// Readiness and each dependency's state, as `/readyz` found them.
    pub fn set_components(&self, components: &[(&'static str, bool)], ready: bool) {
        for (component, up) in components {
            self.component_up
                .get_or_create(&ComponentLabel { component })
                .set(i64::from(*up));
        }
        self.ready.set(i64::from(ready));
    }

    pub fn reconcile_run(&self, result: &'static str) {
        self.reconcile_runs.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn set_reconcile_lag(&self, seconds: f64) {
        self.reconcile_lag.set(seconds);
    }

    pub fn set_ledger_tasks(&self, n: u64) {
        self.ledger_tasks.set(n.min(i64::MAX as u64) as i64);
    }

    /// A handle for one worker thread (see [`WorkerMetrics`]).
    pub fn for_worker(self: &Arc<Self>) -> Arc<WorkerMetrics> {
        Arc::new(WorkerMetrics {
            shared: self.clone(),
            handles: Mutex::default(),
        })
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Most label sets a worker keeps a handle for, per metric; past that, a
/// request looks its metric up in the shared family as before.
const MAX_HANDLES: usize = 64;

/// One worker's way to the per-request metrics. A metric family is a map
/// behind a read-write lock shared by every worker, keyed by a hash of the
/// labels: looking a metric up per request costs the hash and a write to the
/// lock's shared cache line. A worker instead keeps the handles it already
/// looked up (they share the family's own values, so the exposition is the
/// same) behind a lock of its own, and its own reference count.
pub struct WorkerMetrics {
    shared: Arc<Metrics>,
    handles: Mutex<Handles>,
}

/// tenant, operation, allowed, status: the labels of `requests_total`.
type RequestKey = (Option<TenantName>, &'static str, bool, u16);

#[derive(Default)]
struct Handles {
    requests: Vec<(RequestKey, Counter)>,
    request_duration: Vec<(&'static str, Histogram)>,
    upstream_duration: Vec<(&'static str, Histogram)>,
}

/// Applies `act` to the cached handle whose key `is_key` accepts, or else to
/// a new one (kept while there is room). The handle is used in place, not
/// cloned: a clone would write the metric's reference count, which every
/// worker's handle shares. The key is built only for a new handle.
fn with_handle<K, M>(
    cache: &mut Vec<(K, M)>,
    is_key: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    make: impl FnOnce(&K) -> M,
    act: impl FnOnce(&M),
) {
    if let Some((_, metric)) = cache.iter().find(|(k, _)| is_key(k)) {
        return act(metric);
    }
    let key = key();
    let metric = make(&key);
    act(&metric);
    if cache.len() < MAX_HANDLES {
        cache.push((key, metric));
    }
}

/// Observes `elapsed` in the operation's histogram of `family`.
fn histogram(
    cache: &mut Vec<(&'static str, Histogram)>,
    family: &Family<OperationLabel, Histogram, fn() -> Histogram>,
    operation: &'static str,
    elapsed: Duration,
) {
    with_handle(
        cache,
        |o| *o == operation,
        || operation,
        |&operation| family.get_or_create(&OperationLabel { operation }).clone(),
        |histogram| histogram.observe(elapsed.as_secs_f64()),
    );
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    fn handles(&self) -> std::sync::MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One finished request (called once per request, by the audit layer).
    pub fn request(
        &self,
        tenant: Option<&TenantName>,
        operation: Option<&'static str>,
        allowed: bool,
        status: u16,
        elapsed: Duration,
    ) {
        let operation = operation.unwrap_or("none");
        let shared = &self.shared;
        let handles = &mut *self.handles();
        let tenant_name = tenant.map(TenantName::as_str);
        with_handle(
            &mut handles.requests,
            |(t, o, a, s)| {
                t.as_ref().map(TenantName::as_str) == tenant_name && *o == operation && *a == allowed && *s == status
            },
            || (tenant.cloned(), operation, allowed, status),
            |(tenant, operation, allowed, status)| {
                shared.request_counter(tenant.as_ref(), operation, *allowed, *status)
            },
            |counter| {
                counter.inc();
            },
        );
        histogram(
            &mut handles.request_duration,
            &shared.request_duration,
            operation,
            elapsed,
        );
    }

    pub fn rate_limited(&self, tenant: &TenantName) {
        self.shared.rate_limited(tenant);
    }

    /// A tenant's request was denied (for the usage page's last hour).
    pub fn rejected(&self, tenant: &TenantName, reason: &'static str) {
        self.shared.recent_rejections.record(tenant, reason, minute_now());
    }

    pub fn upstream_started(&self) {
        self.shared.upstream_in_flight.inc();
    }

    pub fn upstream_finished(&self, operation: Option<&'static str>, elapsed: Duration, error: Option<&'static str>) {
        let shared = &self.shared;
        shared.upstream_in_flight.dec();
        let operation = operation.unwrap_or("none");
        histogram(
            &mut self.handles().upstream_duration,
            &shared.upstream_duration,
            operation,
            elapsed,
        );
        if let Some(kind) = error {
            shared.upstream_errors.get_or_create(&KindLabel { kind }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, starts: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(starts)).unwrap_or("")
    }

    /// Workers count through handles they keep; the exposition is the one
    /// shared family, whoever counted, and stays right past the handle limit.
    #[test]
    fn worker_handles_count_into_the_shared_families() {
        let metrics = Arc::new(Metrics::new());
        let (a, b) = (metrics.for_worker(), metrics.for_worker());
        let alpha = TenantName::parse("alpha").unwrap();
        for _ in 0..3 {
            a.request(Some(&alpha), Some("get"), true, 200, Duration::from_millis(1));
        }
        b.request(Some(&alpha), Some("get"), true, 200, Duration::from_millis(1));
        b.request(None, None, false, 401, Duration::from_millis(1));
        for status in 0..(MAX_HANDLES as u16 + 10) {
            a.request(Some(&alpha), Some("list"), true, 300 + status, Duration::from_millis(1));
        }
        a.upstream_started();
        a.upstream_finished(Some("get"), Duration::from_millis(2), Some("timeout"));
        b.upstream_started();
        b.upstream_finished(Some("get"), Duration::from_millis(2), None);
        let text = metrics.encode();
        assert!(
            line(
                &text,
                r#"ark_gateway_requests_total{tenant="alpha",operation="get",decision="allow",status="200"}"#
            )
            .ends_with(" 4"),
            "{text}"
        );
        assert!(line(
            &text,
            r#"ark_gateway_requests_total{tenant="-",operation="none",decision="deny",status="401"}"#
        )
        .ends_with(" 1"));
        let last = MAX_HANDLES as u16 + 9 + 300;
        assert!(line(
            &text,
            &format!(
                r#"ark_gateway_requests_total{{tenant="alpha",operation="list",decision="allow",status="{last}"}}"#
            )
        )
        .ends_with(" 1"));
        assert!(line(&text, r#"ark_gateway_request_duration_seconds_count{operation="get"}"#).ends_with(" 4"));
        assert!(line(&text, r#"ark_gateway_upstream_duration_seconds_count{operation="get"}"#).ends_with(" 2"));
        assert!(line(&text, r#"ark_gateway_upstream_errors_total{kind="timeout"}"#).ends_with(" 1"));
        assert!(line(&text, "ark_gateway_upstream_in_flight").ends_with(" 0"));
    }

    #[test]
    fn recent_rejections_keep_one_hour_by_minute() {
        let recent = RecentRejections::default();
        let (a, b) = (TenantName::parse("a").unwrap(), TenantName::parse("b").unwrap());
        recent.record(&a, "rate_limited", 1000);
        recent.record(&a, "rate_limited", 1000);
        recent.record(&a, "task_not_granted", 1030);
        recent.record(&b, "budget_exceeded", 1059);
        assert_eq!(
            recent.last_hour(1059),
            [
                ("a".to_string(), "rate_limited", 2),
                ("a".to_string(), "task_not_granted", 1),
                ("b".to_string(), "budget_exceeded", 1)
            ]
        );
        // Minute 1000 has left the hour; a reused bucket starts from zero.
        assert_eq!(recent.last_hour(1060).len(), 2);
        recent.record(&a, "rate_limited", 1060);
        assert_eq!(recent.last_hour(1060)[0], ("a".to_string(), "rate_limited", 1));
        assert!(recent.last_hour(1200).is_empty());
    }
}
