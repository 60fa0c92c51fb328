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
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
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
        "/metrics" => {
            if let Ok(n) = state.ledger.task_count() {
                state.metrics.set_ledger_tasks(n);
            }
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
