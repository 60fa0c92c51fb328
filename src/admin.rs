//! The admin listener (loopback by default): `/healthz`, `/readyz`, `/metrics`.
//! Separate from the tenant listener so that probes and scrapes never compete
//! with tenant traffic or pass through tenant authentication.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::error::GatewayError;
use crate::ledger::{now_ms, Ledger};
use crate::metrics::Metrics;

/// When the upstream was last seen answering, and whether the gateway drains.
#[derive(Debug, Default)]
pub struct Health {
    upstream_ok_ms: AtomicU64,
    draining: AtomicBool,
}

/// How recent an upstream answer (or probe) must be for `/readyz`.
pub(crate) const UPSTREAM_FRESHNESS: Duration = Duration::from_secs(30);
/// How often the prober checks the upstream when traffic has not.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(10);

impl Health {
    pub fn upstream_answered(&self) {
        self.upstream_ok_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn upstream_fresh(&self) -> bool {
        self.upstream_answered_within(UPSTREAM_FRESHNESS)
    }

    fn upstream_answered_within(&self, window: Duration) -> bool {
        now_ms().saturating_sub(self.upstream_ok_ms.load(Ordering::Relaxed)) <= window.as_millis() as u64
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Keeps `Health` current when no tenant traffic does: a TCP connect to the
/// upstream host (no request, so the key is never used for probing).
pub(crate) async fn probe_upstream(health: Arc<Health>, base_url: Uri, connect_timeout: Duration) {
    let host = base_url.host().unwrap_or("localhost").to_string();
    let port = base_url
        .port_u16()
        .unwrap_or(if base_url.scheme_str() == Some("http") { 80 } else { 443 });
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    loop {
        ticks.tick().await;
        // Tenant traffic that reached Ark recently already proves it reachable.
        if health.upstream_answered_within(PROBE_EVERY) {
            continue;
        }
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => health.upstream_answered(),
            Ok(Err(e)) => tracing::debug!(error = %e, "upstream probe failed"),
            Err(_) => tracing::debug!("upstream probe timed out"),
        }
    }
}

/// What the admin endpoints read.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub ledger: Arc<dyn Ledger>,
    /// The rate limiter's Redis, when limits are shared.
    pub limiter_redis: Option<Arc<crate::backend::redis::Redis>>,
    /// The live configuration (tenants, budgets, prices), for `/usage` and the spend gauges.
    pub shared: crate::reload::SharedSnapshot,
    /// Whether the audit trail still writes (a metric, not a readiness check:
    /// reads go on while it fails, per `audit.on_failure`).
    pub audit: crate::audit::AuditHealth,
    /// `admin.token_sha256`.
    pub token_sha256: Option<[u8; 32]>,
    pub metrics_public: bool,
}

/// Whether the request carries the admin token, as `Authorization: Bearer
/// <token>` (scripts) or as the password of Basic auth with any user name
/// (a browser), compared in constant time by digest.
fn has_admin_token<B>(req: &Request<B>, expected: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    let token = if let Some(token) = value.strip_prefix(b"Bearer ") {
        token.to_vec()
    } else if let Some(encoded) = value.strip_prefix(b"Basic ") {
        use base64::Engine;
        let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        match pair.iter().position(|&b| b == b':') {
            Some(colon) => pair[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(crate::tenant::token_sha256(&token).ct_eq(expected))
}

/// Who may see a path: the probes are open to anyone (kubelet has no token);
/// `/metrics` too while no token is set or it is made public; the rest needs
/// the token, and `/usage` needs one to be configured at all.
fn refused<B>(state: &AdminState, req: &Request<B>) -> Option<GatewayError> {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz") {
        return None;
    }
    match &state.token_sha256 {
        None if matches!(path, "/usage" | "/ui") => Some(GatewayError::AdminTokenNotConfigured),
        None => None,
        // A browser asks for the password only when challenged (`WWW-Authenticate: Basic`).
        Some(token) if path == "/ui" && !has_admin_token(req, token) => Some(GatewayError::AdminPageCredentialRequired),
        Some(_) if path == "/metrics" && state.metrics_public => None,
        Some(token) if has_admin_token(req, token) => None,
        Some(_) if req.headers().contains_key(header::AUTHORIZATION) => Some(GatewayError::UnknownCredential),
        Some(_) => Some(GatewayError::MissingCredential),
    }
}

/// `/readyz`'s checks, in order, and whether all pass.
async fn readiness(state: &AdminState) -> ([(&'static str, bool); 5], bool) {
    let ledger = state.ledger.check().await;
    let limiter = match &state.limiter_redis {
        Some(redis) => redis.ping().await,
        None => true,
    };
    let checks = [
        ("config", true),
        ("ledger", ledger.is_ok()),
        ("rate_limiter", limiter),
        ("upstream", state.health.upstream_fresh()),
        ("not_draining", !state.health.draining()),
    ];
    let ready = checks.iter().all(|(_, ok)| *ok);
    (checks, ready)
}

/// Sets the gauges of shared state (active tasks, budget left) from the ledger.
async fn refresh_spend_gauges(state: &AdminState) {
    let snapshot = state.shared.load_full();
    let now = now_ms();
    if let Ok(active) = state.ledger.account_active().await {
        state
            .metrics
            .set_account_active_tasks(active, snapshot.spend.account_max_active);
    }
    for tenant in snapshot.tenants.iter() {
        let Ok(counts) = state.ledger.tenant_counts(tenant.name.as_str(), now).await else {
            return;
        };
        state.metrics.set_active_tasks(&tenant.name, counts.active);
        if let Some(limit) = tenant.max_active_tasks {
            state.metrics.set_active_tasks_limit(&tenant.name, limit);
        }
        for window in crate::spend::Window::ALL {
            let Some(limit) = window.limit(&tenant.budget) else {
                continue;
            };
            let as_amount = |n: u64| match window.is_cost() {
                true => crate::spend::micros_to_amount(n),
                false => n as f64,
            };
            state
                .metrics
                .set_budget_limit(&tenant.name, window.as_str(), as_amount(limit));
            let totals = if window.is_daily() { &counts.day } else { &counts.month };
            let left = limit.saturating_sub(totals.committed(window));
            let left = if window.is_cost() {
                crate::spend::micros_to_amount(left)
            } else {
                left as f64
            };
            state.metrics.set_budget_remaining(&tenant.name, window.as_str(), left);
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) async fn handle<B>(state: AdminState, req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()));
    }
    if let Some(refusal) = refused(&state, &req) {
        return Ok(refusal.to_response());
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (checks, ready) = readiness(&state).await;
            let body = serde_json::json!({
                "ready": ready,
                "checks": checks
                    .iter()
                    .map(|(name, ok)| (name.to_string(), serde_json::Value::Bool(*ok)))
                    .collect::<serde_json::Map<_, _>>(),
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "application/json", body.to_string())
        }
        "/usage" => {
            let snapshot = state.shared.load_full();
            match crate::spend::report::answer(&*state.ledger, &snapshot, req.uri().query(), None).await {
                Ok(response) => response,
                Err(e) => e.to_response(),
            }
        }
        "/ui" => {
            let snapshot = state.shared.load_full();
            let rejections = state
                .metrics
                .recent_rejections()
                .last_hour(crate::metrics::minute_now());
            match crate::ui::page(&*state.ledger, &snapshot, &rejections).await {
                Ok(html) => {
                    let mut page = text(StatusCode::OK, "text/html; charset=utf-8", html);
                    // Inline styles only, nothing from elsewhere, never framed.
                    let headers = page.headers_mut();
                    headers.insert(
                        header::CONTENT_SECURITY_POLICY,
                        HeaderValue::from_static(
                            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                        ),
                    );
                    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    page
                }
                Err(e) => {
                    tracing::error!(error = %e, "ledger read failed; no usage page");
                    GatewayError::LedgerUnavailable.to_response()
                }
            }
        }
        "/metrics" => {
            if let Ok(n) = state.ledger.task_count() {
                state.metrics.set_ledger_tasks(n);
            }
            refresh_spend_gauges(&state).await;
            let (checks, ready) = readiness(&state).await;
            state.metrics.set_components(
                &[
                    ("ledger", checks[1].1),
                    ("rate_limiter", checks[2].1),
                    ("upstream", checks[3].1),
                    ("audit", state.audit.healthy()),
                ],
                ready,
            );
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.encode(),
            )
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// The admin service for [`crate::server::serve`].
pub(crate) fn service(
    state: AdminState,
) -> impl tower::Service<
    Request<crate::request_body::RequestBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |req: Request<crate::request_body::RequestBody>| handle(state.clone(), req))
}
