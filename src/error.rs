//! Why the gateway answered a request itself: [`GatewayError`], raised where
//! the decision is made, and the one table that says how each is answered
//! (status, Ark's `code` and `type`, the audit reason, `param`, and the
//! headers a client needs: `Retry-After`, `x-should-retry`, `Allow`). The
//! rescue layer renders every rejection from it.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::route::Operation;

/// Every response the stack produces has a fully buffered body.
pub(crate) type GatewayResponse = Response<Full<Bytes>>;

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
    #[error("The API key has expired; ask the gateway's operators for its replacement.")]
    ExpiredCredential,
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
    #[error("The upstream service could not be reached through the egress proxy {proxy}: {why}.")]
    UpstreamProxyFailed {
        proxy: std::sync::Arc<str>,
        why: &'static str,
    },
    #[error("The upstream service did not answer in time.")]
    UpstreamTimeout { fate_unknown: bool },
    #[error("The task ledger is unavailable; the request was not forwarded.")]
    LedgerUnavailable,
    #[error("The task was created upstream but its ownership could not be recorded; do not retry, ask the gateway operators to grant it.")]
    OwnershipNotRecorded,
    #[error("The audit trail cannot be written; the request was not forwarded.")]
    AuditUnavailable,
    #[error("callback_url must be an https:// URL on one of this tenant's allowed callback hosts.")]
    CallbackNotAllowed,
    #[error(
        "This tenant (or the account) has as many queued and running tasks as its quota allows; \
         try again when one has finished."
    )]
    ActiveTaskQuota { retry_after: Duration },
    #[error("This create would exceed the tenant's {} budget; it resets in {} s.", .window.as_str(), retry_after_secs(*.retry_after))]
    BudgetExceeded {
        window: crate::spend::Window,
        retry_after: Duration,
    },
    #[error("This endpoint needs an admin token: set admin.token_sha256 in the gateway's config.")]
    AdminTokenNotConfigured,
    #[error("The usage page needs the admin token: give it as the password (any user name), or send `Authorization: Bearer <admin token>`.")]
    AdminPageCredentialRequired,
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
    #[error("proxy")]
    Proxy,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Protocol => "protocol",
            Self::ResponseTooLarge => "response_too_large",
            Self::BadRequest => "request_build",
            Self::Proxy => "proxy",
        }
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    // Whole seconds, rounded up, never 0: `Retry-After: 0` invites a hot loop.
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Headers a rejection carries besides `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    None,
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    RetryAfter(Duration),
    /// `x-should-retry: false`: a retry could create (and bill) a second
    /// task, or cannot help.
    NoRetry,
    /// `Allow`, for a known path with another method.
    Allow(&'static str),
    /// Both `Retry-After` and `x-should-retry: false`: the SDK's quick
    /// retries cannot help; the application decides when to come back.
    RetryLater(Duration),
    /// `WWW-Authenticate: Basic`, so a browser asks for the password.
    BasicChallenge,
}

/// One row of the table.
struct Row<'a> {
    status: StatusCode,
    code: &'static str,
    reason: &'static str,
    param: &'a str,
    headers: Headers,
}

impl GatewayError {
    /// The table: how each rejection is answered and audited.
    fn row(&self) -> Row<'_> {
        use GatewayError::*;
        use Headers::*;
        let row = |status, code, reason, param, headers| Row {
            status,
            code,
            reason,
            param,
            headers,
        };
        const BAD: StatusCode = StatusCode::BAD_REQUEST;
        const AUTH: StatusCode = StatusCode::UNAUTHORIZED;
        const DENY: StatusCode = StatusCode::FORBIDDEN;
        const BUSY: StatusCode = StatusCode::TOO_MANY_REQUESTS;
        const DOWN: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
        match self {
            MissingCredential => row(AUTH, "AuthenticationError", "credential_missing", "", None),
            MalformedCredential => row(AUTH, "AuthenticationError", "credential_malformed", "", None),
            RepeatedCredential => row(AUTH, "AuthenticationError", "credential_repeated", "", None),
            UnknownCredential => row(AUTH, "AuthenticationError", "credential_unknown", "", None),
            ExpiredCredential => row(AUTH, "AuthenticationError", "credential_expired", "", None),
            ConflictingCredentials => row(AUTH, "AuthenticationError", "credential_conflict", "", None),
            OperationNotAllowed(_) => row(DENY, "AccessDenied", "operation_not_allowed", "", None),
            ModelNotAllowed => row(DENY, "AccessDenied", "model_not_allowed", "model", None),
            TaskNotGranted => row(DENY, "AccessDenied", "task_not_granted", "id", None),
            InvalidIdempotencyKey => row(
                BAD,
                "InvalidParameter",
                "invalid_idempotency_key",
                "Idempotency-Key",
                None,
            ),
            IdempotencyConflict => row(
                StatusCode::CONFLICT,
                "IdempotencyKeyConflict",
                "idempotency_conflict",
                "Idempotency-Key",
                NoRetry,
            ),
            NoRoute => row(StatusCode::NOT_FOUND, "NotFound", "no_route", "", None),
            MethodNotAllowed { allow } => row(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method_not_allowed",
                "",
                Allow(allow),
            ),
            AbsoluteFormTarget => row(BAD, "InvalidParameter", "absolute_form_target", "", None),
            InvalidPseudoHeader(name) => row(BAD, "InvalidParameter", "invalid_pseudo_header", name, None),
            InvalidTaskId => row(BAD, "InvalidParameter", "invalid_task_id", "id", None),
            InvalidQuery { param, .. } => row(BAD, "InvalidParameter", "invalid_query", param, None),
            InvalidBody(_) => row(BAD, "InvalidParameter", "invalid_body", "", None),
            MissingModel => row(BAD, "MissingParameter", "missing_model", "model", None),
            BodyTooLarge { .. } => row(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLarge",
                "body_too_large",
                "",
                None,
            ),
            ClientBodyTimeout => row(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                "client_body_timeout",
                "",
                None,
            ),
            ClientBodyError => row(BAD, "InvalidParameter", "client_body_error", "", None),
            TenantRateLimited { retry_after } => row(
                BUSY,
                "RateLimitExceeded",
                "tenant_rate_limited",
                "",
                RetryAfter(*retry_after),
            ),
            UpstreamBusy => row(
                BUSY,
                "RateLimitExceeded",
                "upstream_concurrency_limited",
                "",
                RetryAfter(Duration::from_secs(1)),
            ),
            UpstreamQuotaExceeded { retry_after } => row(
                BUSY,
                "RateLimitExceeded",
                "upstream_quota_exceeded",
                "",
                RetryAfter(*retry_after),
            ),
            RateLimiterUnavailable => row(DOWN, "ServiceUnavailable", "rate_limiter_unavailable", "", None),
            UpstreamUnavailable { kind, fate_unknown } => row(
                StatusCode::BAD_GATEWAY,
                "UpstreamUnavailable",
                match kind {
                    UpstreamFailure::Connect => "upstream_connect_failed",
                    UpstreamFailure::Protocol => "upstream_protocol_error",
                    UpstreamFailure::ResponseTooLarge => "upstream_response_too_large",
                    UpstreamFailure::BadRequest => "upstream_request_build_failed",
                    UpstreamFailure::Proxy => "upstream_proxy_failed",
                },
                "",
                // A create that may have reached Ark must not be retried by the
                // SDK: a second attempt would create (and bill) a second task.
                if *fate_unknown { NoRetry } else { None },
            ),
            // Nothing was sent: the connection never reached Ark.
            UpstreamProxyFailed { .. } => row(
                StatusCode::BAD_GATEWAY,
                "UpstreamUnavailable",
                "upstream_proxy_failed",
                "",
                None,
            ),
            UpstreamTimeout { fate_unknown } => row(
                StatusCode::GATEWAY_TIMEOUT,
                "UpstreamTimeout",
                "upstream_timeout",
                "",
                if *fate_unknown { NoRetry } else { None },
            ),
            LedgerUnavailable => row(DOWN, "ServiceUnavailable", "ledger_unavailable", "", None),
            OwnershipNotRecorded => row(DOWN, "ServiceUnavailable", "ownership_not_recorded", "", NoRetry),
            AuditUnavailable => row(DOWN, "ServiceUnavailable", "audit_unavailable", "", None),
            CallbackNotAllowed => row(DENY, "AccessDenied", "callback_not_allowed", "callback_url", None),
            ActiveTaskQuota { retry_after } => row(
                BUSY,
                "QuotaExceeded",
                "active_task_quota",
                "max_active_tasks",
                RetryLater(*retry_after),
            ),
            BudgetExceeded { window, retry_after } => row(
                BUSY,
                "BudgetExceeded",
                "budget_exceeded",
                window.param(),
                RetryLater(*retry_after),
            ),
            AdminTokenNotConfigured => row(DENY, "AccessDenied", "admin_token_not_configured", "", None),
            AdminPageCredentialRequired => row(
                StatusCode::UNAUTHORIZED,
                "AuthenticationError",
                "admin_credential_required",
                "",
                BasicChallenge,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    /// Ark's `code` field.
    pub fn code(&self) -> &'static str {
        self.row().code
    }

    /// A short, label-safe reason for the audit record and metrics.
    pub fn reason(&self) -> &'static str {
        self.row().reason
    }

    /// Ark's `type` field, which follows from the status.
    fn error_type(status: StatusCode) -> &'static str {
        match status {
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

    /// Denials are the policy saying no; upstream failures happened after an allow.
    pub fn is_denial(&self) -> bool {
        !matches!(
            self,
            GatewayError::UpstreamUnavailable { .. }
                | GatewayError::UpstreamProxyFailed { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::OwnershipNotRecorded
        )
    }

    /// The Ark-shaped response for this rejection, from its row of the table.
    pub fn to_response(&self) -> GatewayResponse {
        let row = self.row();
        let body = serde_json::json!({
            "error": {
                "code": row.code,
                "message": self.to_string(),
                "param": row.param,
                "type": Self::error_type(row.status),
            }
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = row.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match row.headers {
            Headers::None => {}
            Headers::RetryAfter(wait) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
            }
            Headers::NoRetry => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            Headers::Allow(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Headers::BasicChallenge => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"ark-gateway admin\", charset=\"UTF-8\""),
                );
            }
            Headers::RetryLater(wait) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
        }
        response
    }
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
