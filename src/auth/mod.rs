//! Authenticates the calling tenant by its bearer token, inserts the
//! [`crate::tenant::Tenant`] extension, and removes the tenant's credential so
//! that no later layer, log or upstream request can see it.

mod layer;
mod service;

pub(crate) use layer::AuthLayer;
pub(crate) use service::AuthService;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::GatewayError;

/// Longest token accepted; longer headers are malformed, not hashed.
pub(crate) const MAX_TOKEN_LEN: usize = 4096;

/// Extracts the bearer token: exactly one `Authorization` header, scheme
/// `Bearer` (any case, RFC 9110), one or more spaces, then a non-empty token68.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&[u8], GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(GatewayError::MissingCredential)?;
    if values.next().is_some() {
        return Err(GatewayError::RepeatedCredential);
    }
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at(
        bytes
            .iter()
            .position(|&b| b == b' ')
            .ok_or(GatewayError::MalformedCredential)?,
    );
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(GatewayError::MalformedCredential);
    }
    let token = rest.trim_ascii_start();
    let is_token68 = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.iter().all(is_token68) {
        return Err(GatewayError::MalformedCredential);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn accepts_bearer_in_any_case_with_spaces_before_the_token() {
        for value in [&b"Bearer tok-1"[..], b"bearer tok-1", b"BEARER   tok-1"] {
            assert_eq!(bearer_token(&headers(&[value])).unwrap(), b"tok-1");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert!(matches!(
            bearer_token(&headers(&[])),
            Err(GatewayError::MissingCredential)
        ));
        assert!(matches!(
            bearer_token(&headers(&[b"Bearer a", b"Bearer b"])),
            Err(GatewayError::RepeatedCredential)
        ));
        let long = [b"Bearer ".as_slice(), &vec![b'a'; MAX_TOKEN_LEN + 1]].concat();
        for value in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic dXNlcjpwYXNz",
            b"Bearertok",
            b"Bearer tok en",
            b"Bearer tok-1 ",
            b"Bearer tok\tx",
            b"Token tok-1",
            &long,
        ] {
            assert!(
                matches!(bearer_token(&headers(&[value])), Err(GatewayError::MalformedCredential)),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
