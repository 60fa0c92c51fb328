//! Rejections are raised where they happen as [`GatewayError`] and turned into
//! HTTP here, in one place: Ark-shaped JSON so that the official SDKs raise
//! their usual exceptions, the right status, and `Retry-After` /
//! `x-should-retry` where a client needs them. (`x-request-id` is added by the
//! request-id layer, which sits outside this one.)

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::route::Operation;

/// Every response the stack produces has a fully buffered body.
pub type GatewayResponse = Response<Full<Bytes>>;

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("Missing Authorization header: send `Authorization: Bearer <your gateway token>`.")]
    MissingCredential,
    #[error("Malformed Authorization header: expected `Bearer <token>`.")]
    MalformedCredential,
    #[error("More than one Authorization header was sent.")]
    RepeatedCredential,
    #[error("The API key is not valid for this gateway.")]
    UnknownCredential,
    #[error("The client certificate and the API key identify different tenants.")]
    ConflictingCredentials,
    #[error("This tenant may not perform the {0} operation.")]
    OperationNotAllowed(Operation),
    #[error("This tenant may not create tasks with the requested model.")]
    ModelNotAllowed,
    #[error("The task does not exist or is not accessible to this tenant.")]
    TaskNotGranted,
    #[error("The Idempotency-Key header must be 1-255 visible ASCII characters.")]
    InvalidIdempotencyKey,
    #[error(
        "A create with this Idempotency-Key is in flight or has an unknown outcome; list your tasks, or use a new key."
    )]
    IdempotencyConflict,
    #[error("The requested resource does not exist on this gateway.")]
    NoRoute,
    #[error("The method is not allowed for this path (allowed: {allow}).")]
    MethodNotAllowed { allow: &'static str },
    #[error("Absolute-form request targets are not accepted; send the path only.")]
    AbsoluteFormTarget,
    #[error("The HTTP/2 pseudo-header {0} is not accepted (user info, or a scheme other than http/https).")]
    InvalidPseudoHeader(&'static str),
    #[error("The task id must be 1-128 letters, digits, '-' or '_'.")]
    InvalidTaskId,
    #[error("The query parameter {param} is invalid: {reason}")]
    InvalidQuery { param: String, reason: &'static str },
    #[error("The request body is invalid: {0}")]
    InvalidBody(&'static str),
    #[error("The request parameter `model` is missing.")]
    MissingModel,
    #[error("The request body exceeds {limit} bytes.")]
    BodyTooLarge { limit: usize },
    #[error("The request body was not received in time.")]
    ClientBodyTimeout,
    #[error("The request body could not be read.")]
    ClientBodyError,
    #[error("This tenant's rate limit is exhausted; retry after {} s.", retry_after_secs(*.retry_after))]
    TenantRateLimited { retry_after: Duration },
    #[error("Too many requests are in flight to the upstream service; retry shortly.")]
    UpstreamBusy,
    #[error("The shared upstream quota is exhausted; retry after {} s.", retry_after_secs(*.retry_after))]
    UpstreamQuotaExceeded { retry_after: Duration },
    #[error("The rate limiter is unavailable; the request was not forwarded.")]
    RateLimiterUnavailable,
    #[error("The upstream service could not be reached ({kind}).")]
    UpstreamUnavailable { kind: UpstreamFailure, fate_unknown: bool },
    #[error("The upstream service did not answer in time.")]
    UpstreamTimeout { fate_unknown: bool },
    #[error("The task ledger is unavailable; the request was not forwarded.")]
    LedgerUnavailable,
    #[error("The task was created upstream but its ownership could not be recorded; do not retry, ask the gateway operators to grant it.")]
    OwnershipNotRecorded,
    #[error("The audit trail cannot be written; the request was not forwarded.")]
    AuditUnavailable,
}

/// What went wrong on the way to Ark (a label-safe, fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("connect")]
    Connect,
    #[error("protocol")]
    Protocol,
    #[error("response too large")]
    ResponseTooLarge,
    #[error("bad request")]
    BadRequest,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Protocol => "protocol",
            Self::ResponseTooLarge => "response_too_large",
            Self::BadRequest => "request_build",
        }
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    // Whole seconds, rounded up, never 0: `Retry-After: 0` invites a hot loop.
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            MissingCredential
            | MalformedCredential
            | RepeatedCredential
            | UnknownCredential
            | ConflictingCredentials => StatusCode::UNAUTHORIZED,
            OperationNotAllowed(_) | ModelNotAllowed | TaskNotGranted => StatusCode::FORBIDDEN,
            NoRoute => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AbsoluteFormTarget
            | InvalidPseudoHeader(_)
            | InvalidTaskId
            | InvalidQuery { .. }
            | InvalidBody(_)
            | MissingModel
            | ClientBodyError
            | InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            IdempotencyConflict => StatusCode::CONFLICT,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            TenantRateLimited { .. } | UpstreamBusy | UpstreamQuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            LedgerUnavailable | OwnershipNotRecorded | AuditUnavailable | RateLimiterUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Ark's `code` field.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingCredential
            | MalformedCredential
            | RepeatedCredential
            | UnknownCredential
            | ConflictingCredentials => "AuthenticationError",
            OperationNotAllowed(_) | ModelNotAllowed | TaskNotGranted => "AccessDenied",
            NoRoute => "NotFound",
            MethodNotAllowed { .. } => "MethodNotAllowed",
            MissingModel => "MissingParameter",
            AbsoluteFormTarget
            | InvalidPseudoHeader(_)
            | InvalidTaskId
            | InvalidQuery { .. }
            | InvalidBody(_)
            | ClientBodyError
            | InvalidIdempotencyKey => "InvalidParameter",
            IdempotencyConflict => "IdempotencyKeyConflict",
            BodyTooLarge { .. } => "RequestTooLarge",
            ClientBodyTimeout => "RequestTimeout",
            TenantRateLimited { .. } | UpstreamBusy | UpstreamQuotaExceeded { .. } => "RateLimitExceeded",
            UpstreamUnavailable { .. } => "UpstreamUnavailable",
            UpstreamTimeout { .. } => "UpstreamTimeout",
            LedgerUnavailable | OwnershipNotRecorded | AuditUnavailable | RateLimiterUnavailable => {
                "ServiceUnavailable"
            }
        }
    }

    /// Ark's `type` field.
    fn error_type(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::REQUEST_TIMEOUT => "RequestTimeout",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLarge",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            StatusCode::BAD_GATEWAY => "BadGateway",
            StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
            _ => "ServiceUnavailable",
        }
    }

    /// Ark's `param` field: the parameter at fault, where there is one.
    fn param(&self) -> &str {
        use GatewayError::*;
        match self {
            TaskNotGranted | InvalidTaskId => "id",
            ModelNotAllowed | MissingModel => "model",
            InvalidQuery { param, .. } => param,
            InvalidPseudoHeader(name) => name,
            InvalidIdempotencyKey | IdempotencyConflict => "Idempotency-Key",
            _ => "",
        }
    }

    /// A short, label-safe reason for the audit record and metrics.
    pub fn reason(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingCredential => "credential_missing",
            MalformedCredential => "credential_malformed",
            RepeatedCredential => "credential_repeated",
            UnknownCredential => "credential_unknown",
            ConflictingCredentials => "credential_conflict",
            OperationNotAllowed(_) => "operation_not_allowed",
            ModelNotAllowed => "model_not_allowed",
            TaskNotGranted => "task_not_granted",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            IdempotencyConflict => "idempotency_conflict",
            NoRoute => "no_route",
            MethodNotAllowed { .. } => "method_not_allowed",
            AbsoluteFormTarget => "absolute_form_target",
            InvalidPseudoHeader(_) => "invalid_pseudo_header",
            InvalidTaskId => "invalid_task_id",
            InvalidQuery { .. } => "invalid_query",
            InvalidBody(_) => "invalid_body",
            MissingModel => "missing_model",
            BodyTooLarge { .. } => "body_too_large",
            ClientBodyTimeout => "client_body_timeout",
            ClientBodyError => "client_body_error",
            TenantRateLimited { .. } => "tenant_rate_limited",
            UpstreamBusy => "upstream_concurrency_limited",
            UpstreamQuotaExceeded { .. } => "upstream_quota_exceeded",
            RateLimiterUnavailable => "rate_limiter_unavailable",
            UpstreamUnavailable { kind, .. } => match kind {
                UpstreamFailure::Connect => "upstream_connect_failed",
                UpstreamFailure::Protocol => "upstream_protocol_error",
                UpstreamFailure::ResponseTooLarge => "upstream_response_too_large",
                UpstreamFailure::BadRequest => "upstream_request_build_failed",
            },
            UpstreamTimeout { .. } => "upstream_timeout",
            LedgerUnavailable => "ledger_unavailable",
            OwnershipNotRecorded => "ownership_not_recorded",
            AuditUnavailable => "audit_unavailable",
        }
    }

    /// Denials are the policy saying no; upstream failures happened after an allow.
    pub fn is_denial(&self) -> bool {
        !matches!(
            self,
            GatewayError::UpstreamUnavailable { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::OwnershipNotRecorded
        )
    }

    /// The Ark-shaped response for this rejection.
    pub fn to_response(&self) -> GatewayResponse {
        let body = serde_json::json!({
            "error": {
                "code": self.code(),
                "message": self.to_string(),
                "param": self.param(),
                "type": self.error_type(),
            }
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            GatewayError::TenantRateLimited { retry_after } | GatewayError::UpstreamQuotaExceeded { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(*retry_after)));
            }
            GatewayError::UpstreamBusy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            // A create that may have reached Ark must not be retried by the SDK:
            // a second attempt would create (and bill) a second task.
            GatewayError::UpstreamUnavailable { fate_unknown: true, .. }
            | GatewayError::UpstreamTimeout { fate_unknown: true }
            | GatewayError::OwnershipNotRecorded
            | GatewayError::IdempotencyConflict => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        response
    }
}

/// The layer that turns the stack's `Result` into HTTP: after it, nothing fails.
#[derive(Debug, Clone, Default)]
pub struct RescueLayer;

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner, not_ready: None }
    }
}

#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
    /// A readiness failure, answered on the next call instead of dropping the connection.
    not_ready: Option<std::sync::Arc<GatewayError>>,
}

impl<S, Req> tower::Service<Req> for Rescue<S>
where
    S: tower::Service<Req, Response = GatewayResponse, Error = GatewayError>,
{
    type Response = GatewayResponse;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<GatewayResponse, Infallible>>,
        futures_util::future::Map<
            S::Future,
            fn(Result<GatewayResponse, GatewayError>) -> Result<GatewayResponse, Infallible>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx).map(|ready| {
            if let Err(e) = ready {
                self.not_ready = Some(std::sync::Arc::new(e));
            }
            Ok(())
        })
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use futures_util::FutureExt;
        if let Some(e) = self.not_ready.take() {
            return futures_util::future::Either::Left(std::future::ready(Ok(e.to_response())));
        }
        futures_util::future::Either::Right(self.inner.call(req).map(rescue as fn(_) -> _))
    }
}

/// The one conversion from a rejection to HTTP.
pub fn rescue(result: Result<GatewayResponse, GatewayError>) -> Result<GatewayResponse, Infallible> {
    Ok(result.unwrap_or_else(|e| e.to_response()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json_of(response: GatewayResponse) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_are_ark_shaped() {
        let response = GatewayError::TaskNotGranted.to_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let json = json_of(response).await;
        assert_eq!(json["error"]["code"], "AccessDenied");
        assert_eq!(json["error"]["type"], "Forbidden");
        assert_eq!(json["error"]["param"], "id");
        assert!(json["error"]["message"].as_str().unwrap().contains("not accessible"));
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let cases = [
            (Duration::from_millis(1), "1"),
            (Duration::from_millis(1500), "2"),
            (Duration::ZERO, "1"),
            (Duration::from_secs(7), "7"),
        ];
        for (wait, expected) in cases {
            let response = GatewayError::TenantRateLimited { retry_after: wait }.to_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], expected, "{wait:?}");
        }
    }

    #[test]
    fn unknown_fate_creates_tell_the_sdk_not_to_retry() {
        let response = GatewayError::UpstreamTimeout { fate_unknown: true }.to_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()["x-should-retry"], "false");
        let response = GatewayError::UpstreamUnavailable {
            kind: UpstreamFailure::Connect,
            fate_unknown: false,
        }
        .to_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(response.headers().get("x-should-retry").is_none());
    }

    #[test]
    fn upstream_failures_are_5xx_never_4xx() {
        for e in [
            GatewayError::UpstreamUnavailable {
                kind: UpstreamFailure::Protocol,
                fate_unknown: true,
            },
            GatewayError::UpstreamUnavailable {
                kind: UpstreamFailure::ResponseTooLarge,
                fate_unknown: false,
            },
            GatewayError::UpstreamTimeout { fate_unknown: false },
        ] {
            assert!(e.status().is_server_error(), "{e:?}");
            assert!(!e.is_denial());
        }
    }
}
