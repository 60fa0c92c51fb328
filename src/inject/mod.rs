//! Turns the tenant's request into the gateway's own request to Ark: drops
//! connection-specific and gateway-owned headers, then sets the real key as a
//! sensitive `Authorization` header. It sits just before forwarding so that
//! the key is attached as late as possible and no other layer ever holds a
//! request that carries it.

mod layer;
mod service;

pub(crate) use layer::InjectCredentialLayer;
pub(crate) use service::InjectCredentialService;

use http::header::{HeaderMap, HeaderName};

use crate::hop::strip_hop_by_hop_and;

/// Headers that describe the tenant's connection or the gateway's own
/// contract and so must not reach Ark. `Accept-Encoding` is dropped because the
/// gateway reads Ark's JSON (the created task id, list pages) and therefore
/// asks for it uncompressed.
fn not_forwarded(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "host"
            | "content-length"
            | "accept-encoding"
            | "expect"
            | "cookie"
            | "idempotency-key"
            | "x-request-id"
    )
}

/// Prepares the outbound header set (before the key is added).
pub(crate) fn outbound_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop_and(headers, not_forwarded);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderValue};

    #[test]
    fn tenant_credential_and_connection_headers_do_not_survive() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer tenant-token"));
        h.insert(header::HOST, HeaderValue::from_static("gateway:8080"));
        h.insert(header::CONNECTION, HeaderValue::from_static("x-client-request-id"));
        h.insert("x-client-request-id", HeaderValue::from_static("abc"));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("ark-sdk"));
        outbound_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "user-agent"]);
    }

    #[test]
    fn every_gateway_owned_header_is_dropped_with_all_its_values() {
        let mut h = HeaderMap::new();
        for name in [
            "authorization",
            "host",
            "content-length",
            "accept-encoding",
            "expect",
            "cookie",
            "idempotency-key",
            "x-request-id",
        ] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static("1"));
            h.append(HeaderName::from_static(name), HeaderValue::from_static("2"));
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-client-request-id", HeaderValue::from_static("abc"));
        outbound_headers(&mut h);
        let mut left: Vec<_> = h.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        left.sort();
        assert_eq!(
            left,
            [("content-type", "application/json"), ("x-client-request-id", "abc")]
        );
    }
}
