use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use tower::Service;

use super::{ExchangeError, UpstreamPool};
use crate::admin::Health;
use crate::audit::AuditNote;
use crate::config::UpstreamConfig;
use crate::error::{GatewayError, GatewayResponse, UpstreamFailure};
use crate::hop::strip_hop_by_hop;
use crate::metrics::{Metrics, WorkerMetrics};
use crate::policy::UpstreamQuery;
use crate::route::{Operation, TaskId, UPSTREAM_TASKS_PATH};

/// Sends requests to Ark. Cheap to clone: everything is shared.
#[derive(Clone)]
pub struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    /// Behind the `Arc` so that cloning the stack per request does not clone
    /// the client (and its connector) per request. One client per worker
    /// thread: its pooled connections are driven by that worker's runtime, so
    /// a request never waits on a connection task living on another thread.
    client: UpstreamPool,
    /// The path of `upstream.base_url`, no trailing slash: requests go to the
    /// pool in origin form (the pool knows where it connects), so no
    /// absolute URI is built and parsed per request.
    base_path: String,
    timeout: Duration,
    max_response_bytes: usize,
    /// `upstream.max_concurrent`, shared by every worker.
    slots: Arc<Slots>,
    /// This worker's handles on the shared metrics.
    metrics: Arc<WorkerMetrics>,
    shared_metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Forward {
    pub fn new(client: UpstreamPool, config: &UpstreamConfig, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                base_path: config.base_url.path().trim_end_matches('/').to_string(),
                timeout: config.timeout,
                max_response_bytes: config.max_response_bytes,
                slots: Arc::new(Slots::new(config.max_concurrent.get())),
                metrics: metrics.for_worker(),
                shared_metrics: metrics,
                health,
            }),
        }
    }

    /// The same upstream and the same in-flight slots, through another client
    /// (another worker's pool).
    pub fn with_client(&self, client: UpstreamPool) -> Self {
        let s = &self.shared;
        Self {
            shared: Arc::new(Shared {
                client,
                base_path: s.base_path.clone(),
                timeout: s.timeout,
                max_response_bytes: s.max_response_bytes,
                slots: s.slots.clone(),
                metrics: s.shared_metrics.for_worker(),
                shared_metrics: s.shared_metrics.clone(),
                health: s.health.clone(),
            }),
        }
    }
}

/// The `upstream.max_concurrent` slots: taken or refused, never waited for,
/// so a counter does what a semaphore would, without its lock on release.
struct Slots {
    in_use: AtomicUsize,
    max: usize,
}

/// A taken slot; given back when dropped.
struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(max: usize) -> Self {
        Self {
            in_use: AtomicUsize::new(0),
            max,
        }
    }

    fn try_take(&self) -> Option<Slot<'_>> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The failure's kind, for the metric label, the log and the error.
fn failure_kind(e: &ExchangeError) -> UpstreamFailure {
    match e {
        ExchangeError::Connect(_) => UpstreamFailure::Connect,
        ExchangeError::Protocol(_) => UpstreamFailure::Protocol,
        ExchangeError::ResponseTooLarge { .. } => UpstreamFailure::ResponseTooLarge,
        ExchangeError::Proxy(_) => UpstreamFailure::Proxy,
    }
}

/// The upstream URL (`base` is a base URL, or only its path for the origin
/// form), built from the typed facts the policy attached.
pub fn upstream_uri(base: &str, task_id: Option<&TaskId>, query: Option<&UpstreamQuery>) -> Result<Uri, http::Error> {
    let mut url = String::with_capacity(base.len() + 64 + query.map_or(0, |q| q.0.len()));
    url.push_str(base);
    url.push_str(UPSTREAM_TASKS_PATH);
    if let Some(id) = task_id {
        url.push('/');
        url.push_str(id.as_str());
    }
    if let Some(query) = query {
        url.push('?');
        url.push_str(&query.0);
    }
    Ok(Uri::try_from(url)?)
}

/// The upstream target for a request whose own target is `inbound`. Where
/// that is already, byte for byte, the origin-form target [`upstream_uri`]
/// would build from the policy's facts (the usual case: the client and the
/// base URL share the `/api/v3` prefix, and a task call has no query), it is
/// used as it is: no string is built and no URI parsed per request. Anything
/// else (another prefix, any query, an absolute form) is built from the facts,
/// so what is sent is never more than what the policy read.
pub fn upstream_target(
    inbound: Uri,
    base_path: &str,
    task_id: Option<&TaskId>,
    query: Option<&UpstreamQuery>,
) -> Result<Uri, http::Error> {
    let spelled = || {
        let rest = inbound
            .path()
            .strip_prefix(base_path)?
            .strip_prefix(UPSTREAM_TASKS_PATH)?;
        Some(match task_id {
            Some(id) => rest.strip_prefix('/') == Some(id.as_str()),
            None => rest.is_empty(),
        })
    };
    let reusable = query.is_none()
        && inbound.scheme().is_none()
        && inbound.authority().is_none()
        && inbound.query().is_none()
        && spelled() == Some(true);
    if reusable {
        return Ok(inbound);
    }
    upstream_uri(base_path, task_id, query)
}

impl Service<Request<Bytes>> for Forward {
    type Response = GatewayResponse;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<GatewayResponse, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool never pushes back; capacity is the `upstream.max_concurrent`
        // slots, which refuse rather than wait, so they are taken in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(_slot) = shared.slots.try_take() else {
                return Err(GatewayError::UpstreamBusy);
            };
            let (parts, body) = req.into_parts();
            let operation = parts.extensions.get::<Operation>().copied();
            // A create that may have reached Ark has an unknown fate on failure.
            let is_create = operation == Some(Operation::Create);
            let uri = upstream_target(
                parts.uri,
                &shared.base_path,
                parts.extensions.get::<TaskId>(),
                parts.extensions.get::<UpstreamQuery>(),
            )
            .map_err(|_| GatewayError::UpstreamUnavailable {
                kind: UpstreamFailure::BadRequest,
                fate_unknown: false,
            })?;
            let note = parts.extensions.get::<AuditNote>().cloned();
            let mut outbound = Request::new(Full::new(body));
            *outbound.method_mut() = parts.method;
            *outbound.uri_mut() = uri;
            *outbound.headers_mut() = parts.headers;

            // Reads may be sent twice: a pooled connection that the upstream
            // closed while idle fails the first attempt without any effect.
            // Creates and deletes never are.
            let retryable = matches!(operation, Some(Operation::Get | Operation::List));
            let exchange = async {
                let first = retryable.then(|| clone_request(&outbound));
                let answer = match (shared.client.exchange(outbound, shared.max_response_bytes).await, first) {
                    // Not after a connect failure (nothing was sent; the
                    // next try would fail alike) nor an oversized answer.
                    (Err(e @ ExchangeError::Protocol(_)), Some(again)) => {
                        tracing::debug!(error = %e, "upstream connection failed; retrying the read once");
                        // Boxed: a second exchange state inline would double
                        // the size of every request's future.
                        Box::pin(shared.client.exchange(again, shared.max_response_bytes)).await
                    }
                    (result, _) => result,
                };
                answer.map_err(|e| {
                    let kind = failure_kind(&e);
                    match &e {
                        ExchangeError::ResponseTooLarge { status } => tracing::warn!(
                            kind = kind.as_str(),
                            status = status.as_u16(),
                            "reading the upstream response failed"
                        ),
                        _ => tracing::warn!(kind = kind.as_str(), error = %e, "upstream request failed"),
                    }
                    if let ExchangeError::Proxy(proxy) = e {
                        return GatewayError::UpstreamProxyFailed {
                            proxy: proxy.proxy,
                            why: proxy.why,
                        };
                    }
                    GatewayError::UpstreamUnavailable {
                        kind,
                        // Nothing was sent if the connection never came up.
                        fate_unknown: is_create && kind != UpstreamFailure::Connect,
                    }
                })
            };
            let started = std::time::Instant::now();
            shared.metrics.upstream_started();
            let outcome = tokio::time::timeout(shared.timeout, exchange).await;
            let operation_label = operation.map(Operation::as_str);
            let (mut parts, body) = match outcome {
                Ok(Ok(answer)) => {
                    shared.health.upstream_answered();
                    shared
                        .metrics
                        .upstream_finished(operation_label, started.elapsed(), None);
                    answer
                }
                Ok(Err(e)) => {
                    let kind = match &e {
                        GatewayError::UpstreamUnavailable { kind, .. } => kind.as_str(),
                        GatewayError::UpstreamProxyFailed { .. } => UpstreamFailure::Proxy.as_str(),
                        _ => "other",
                    };
                    shared
                        .metrics
                        .upstream_finished(operation_label, started.elapsed(), Some(kind));
                    return Err(e);
                }
                Err(_) => {
                    shared
                        .metrics
                        .upstream_finished(operation_label, started.elapsed(), Some("timeout"));
                    tracing::warn!(timeout = ?shared.timeout, "upstream did not answer in time");
                    return Err(GatewayError::UpstreamTimeout {
                        fate_unknown: is_create,
                    });
                }
            };
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            if let Some(note) = note {
                let upstream_request_id = crate::audit::recorded_id(&parts.headers, &crate::audit::X_REQUEST_ID);
                note.record(|facts| {
                    facts.upstream_status = Some(parts.status.as_u16());
                    facts.upstream_request_id = upstream_request_id;
                });
            }
            Ok(Response::from_parts(parts, Full::new(body)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_at_the_limit_and_given_back_on_drop() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none(), "a third slot of two");
        drop(a);
        let c = slots.try_take().expect("a slot given back is free again");
        drop((b, c));
        assert_eq!(slots.in_use.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn upstream_uri_appends_the_route_to_the_base() {
        let id = TaskId::parse("cgt-20250331175019-68d9t").unwrap();
        let uri = upstream_uri("https://ark.example/api/v3", Some(&id), None).unwrap();
        assert_eq!(
            uri,
            "https://ark.example/api/v3/contents/generations/tasks/cgt-20250331175019-68d9t"
        );
        let q = UpstreamQuery("page_num=1&filter.task_ids=a".into());
        let uri = upstream_uri("http://127.0.0.1:9/api/v3", None, Some(&q)).unwrap();
        assert_eq!(
            uri,
            "http://127.0.0.1:9/api/v3/contents/generations/tasks?page_num=1&filter.task_ids=a"
        );
        // The forwarding path passes only the base URL's path: the origin form.
        let uri = upstream_uri("/api/v3", Some(&id), Some(&q)).unwrap();
        assert_eq!(uri.authority(), None);
        assert_eq!(
            uri,
            "/api/v3/contents/generations/tasks/cgt-20250331175019-68d9t?page_num=1&filter.task_ids=a"
        );
        assert_eq!(upstream_uri("", None, None).unwrap(), "/contents/generations/tasks");
    }

    #[test]
    fn the_client_target_is_sent_only_where_it_is_the_one_built_from_the_facts() {
        let id = TaskId::parse("cgt-20250331175019-68d9t").unwrap();
        let other = TaskId::parse("cgt-20250331175019-zzzzz").unwrap();
        let list = UpstreamQuery("page_num=1".into());
        let tasks = "/api/v3/contents/generations/tasks";
        let one = "/api/v3/contents/generations/tasks/cgt-20250331175019-68d9t";
        let (with_query, empty_query, slash) = (format!("{one}?x=1"), format!("{one}?"), format!("{one}/"));
        let other_prefix = one.replace("/api/v3", "/v9");
        let absolute = format!("http://evil.example{one}");
        let listed = format!("{tasks}?page_num=1");
        let cases: [(&str, &str, Option<&TaskId>, Option<&UpstreamQuery>); 12] = [
            // Reusable: exactly the built target.
            (one, "/api/v3", Some(&id), None),
            (tasks, "/api/v3", None, None),
            // Built: the client's target differs from the facts in some way.
            (one, "/api/v3", Some(&other), None),
            (one, "/api/v3", None, None),
            (tasks, "/api/v3", Some(&id), None),
            (&with_query, "/api/v3", Some(&id), None),
            (&empty_query, "/api/v3", Some(&id), None),
            (&slash, "/api/v3", Some(&id), None),
            (&other_prefix, "/api/v3", Some(&id), None),
            (one, "", Some(&id), None),
            (&absolute, "/api/v3", Some(&id), None),
            (&listed, "/api/v3", None, Some(&list)),
        ];
        for (i, (inbound, base, task_id, query)) in cases.into_iter().enumerate() {
            let inbound_uri = Uri::try_from(inbound).unwrap();
            let inbound_path = inbound_uri.path().as_ptr();
            let sent = upstream_target(inbound_uri, base, task_id, query).unwrap();
            let built = upstream_uri(base, task_id, query).unwrap();
            assert_eq!(sent, built, "client target {inbound}, base {base:?}");
            assert_eq!(sent.authority(), None, "origin form: {inbound}");
            // The first two are the client's own target, not a copy.
            assert_eq!(sent.path().as_ptr() == inbound_path, i < 2, "reused: {inbound}");
        }
    }
}
