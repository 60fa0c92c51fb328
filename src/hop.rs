//! Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection and must not
//! cross the gateway in either direction, nor may any header that a
//! `Connection` header nominates.

use http::header::{self, HeaderMap, HeaderName};

/// Always hop-by-hop, whether or not `Connection` names them. One string
/// match per header present: cheaper than comparing each header with every
/// name of a list, or than a hash lookup per name.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers and every header that `Connection` nominates.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_hop_by_hop_and(headers, |_| false);
}

/// [`strip_hop_by_hop`], and every header for which `also` holds, in the
/// same pass over the headers.
pub(crate) fn strip_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // Most header sets hold at most a few of these: no allocation for those.
    let mut present: [Option<HeaderName>; 4] = Default::default();
    let mut more = Vec::new();
    let mut nominates = false;
    for (i, name) in headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || also(name))
        .enumerate()
    {
        nominates |= name == header::CONNECTION;
        match present.get_mut(i) {
            Some(slot) => *slot = Some(name.clone()),
            None => more.push(name.clone()),
        }
    }
    if nominates {
        let nominated: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in nominated {
            headers.remove(name);
        }
    }
    for name in present.into_iter().flatten().chain(more) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn removes_the_fixed_set() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("x-client-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "x-client-request-id"]);
    }

    #[test]
    fn removes_headers_nominated_by_connection() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("connection", " x-other "),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn every_value_of_a_repeated_hop_header_goes() {
        let mut h = map(&[
            ("transfer-encoding", "gzip"),
            ("accept", "*/*"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(left, [("accept", "*/*")]);
    }

    #[test]
    fn tolerates_garbage_in_connection() {
        let mut h = map(&[("connection", ",, ,"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
