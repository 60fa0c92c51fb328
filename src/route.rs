//! The four task routes, parsed once from the request target into typed facts.
//!
//! Only these paths exist; anything else is refused before any policy runs. The
//! raw path is matched byte for byte: hyper hands over the request target
//! undecoded, and we never decode it, so `%2e%2e`, `%2F` and friends are simply
//! characters that are not allowed in a task id.
//!
//! HTTP/1.1 carries the target in the request line, where only the origin form
//! (`/api/v3/...`) is accepted. HTTP/2 carries it in `:path`, with the scheme
//! and authority in their own pseudo-headers (which hyper folds into the URI):
//! the same path rules apply to `:path`; `:scheme` must be `http` or `https`,
//! and `:authority` is accepted whatever host it names (like HTTP/1.1's `Host`,
//! it is never forwarded: the upstream authority is the configured one) unless
//! it carries user info, which RFC 9113 §8.3.1 forbids.

use std::fmt;
use std::sync::Arc;

use http::{Method, Uri, Version};

use crate::error::GatewayError;

/// The tenant's own usage report, the one path the gateway answers itself.
pub const USAGE_PATH: &str = "/gateway/v1/usage";
/// The path prefix tenants call, identical to Ark's.
pub const TASKS_PATH: &str = "/api/v3/contents/generations/tasks";
/// The same path relative to `upstream.base_url` (which ends in `/api/v3`).
pub const UPSTREAM_TASKS_PATH: &str = "/contents/generations/tasks";
/// Longest task id accepted.
pub const MAX_TASK_ID_LEN: usize = 128;

/// What a request asks Ark to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Create,
    Get,
    List,
    Delete,
    /// `GET /gateway/v1/usage`: the tenant's own usage, answered by the
    /// gateway itself (never forwarded; needs no operation permission).
    Usage,
}

impl Operation {
    /// The operations a tenant may be granted (`usage` needs no grant).
    pub const ALL: [Operation; 4] = [Self::Create, Self::Get, Self::List, Self::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::List => "list",
            Self::Delete => "delete",
            Self::Usage => "usage",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// A bit for [`crate::config::OperationSet`].
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task id that passed [`TaskId::parse`]: 1 to 128 of `[A-Za-z0-9_-]`.
/// The id that was authorised is, byte for byte, the id that is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Arc<str>);

impl TaskId {
    pub fn parse(raw: &str) -> Option<Self> {
        is_task_id(raw).then(|| Self(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The character set and length rule for task ids (also used for grants).
pub fn is_task_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_TASK_ID_LEN
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The result of routing: which operation, and on which task for get/delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub operation: Operation,
    pub task_id: Option<TaskId>,
}

/// Maps a method and request target onto one of the four routes.
pub fn route(method: &Method, uri: &Uri, version: Version) -> Result<Route, GatewayError> {
    if version == Version::HTTP_2 {
        check_pseudo_headers(uri)?;
    } else if uri.scheme().is_some() || uri.authority().is_some() {
        // A sidecar is not a forward proxy: absolute-form request lines
        // (`GET http://other/api/v3/...`) are refused rather than interpreted.
        return Err(GatewayError::AbsoluteFormTarget);
    }
    route_path(method, uri.path())
}

/// `:scheme` and `:authority` of an HTTP/2 request (the target is `:path`).
fn check_pseudo_headers(uri: &Uri) -> Result<(), GatewayError> {
    if uri
        .scheme_str()
        .is_some_and(|scheme| scheme != "http" && scheme != "https")
    {
        return Err(GatewayError::InvalidPseudoHeader(":scheme"));
    }
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(GatewayError::InvalidPseudoHeader(":authority"));
    }
    Ok(())
}

/// The path rules, the same for a request line and `:path`.
fn route_path(method: &Method, path: &str) -> Result<Route, GatewayError> {
    if path == USAGE_PATH {
        return match *method {
            Method::GET => Ok(Route {
                operation: Operation::Usage,
                task_id: None,
            }),
            _ => Err(GatewayError::MethodNotAllowed { allow: "GET" }),
        };
    }
    if path == TASKS_PATH {
        return match *method {
            Method::POST => Ok(Route {
                operation: Operation::Create,
                task_id: None,
            }),
            Method::GET => Ok(Route {
                operation: Operation::List,
                task_id: None,
            }),
            _ => Err(GatewayError::MethodNotAllowed { allow: "GET, POST" }),
        };
    }
    let Some(rest) = path.strip_prefix(TASKS_PATH).and_then(|rest| rest.strip_prefix('/')) else {
        return Err(GatewayError::NoRoute);
    };
    // Deeper paths (`{id}/extra`, at any depth) are not routes: Ark answers
    // an unknown path with 404, and so does the gateway. `{id}/` stays a
    // malformed id.
    if rest.split_once('/').is_some_and(|(_, deeper)| !deeper.is_empty()) {
        return Err(GatewayError::NoRoute);
    }
    // Exactly one segment of the id alphabet: this refuses empty segments,
    // trailing slashes, dot segments, percent-escapes, `;` parameters and
    // anything longer than 128 bytes.
    let task_id = TaskId::parse(rest).ok_or(GatewayError::InvalidTaskId)?;
    let operation = match *method {
        Method::GET => Operation::Get,
        Method::DELETE => Operation::Delete,
        _ => return Err(GatewayError::MethodNotAllowed { allow: "GET, DELETE" }),
    };
    Ok(Route {
        operation,
        task_id: Some(task_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_of(method: Method, target: &str) -> Result<Route, GatewayError> {
        let h1 = route(&method, &target.parse::<Uri>().unwrap(), Version::HTTP_11);
        // The same target as an HTTP/2 `:path` routes the same way.
        if let Ok(h2) = h2_uri("https", "gateway.local:8443", target) {
            let over_h2 = route(&method, &h2, Version::HTTP_2);
            assert_eq!(format!("{over_h2:?}"), format!("{h1:?}"), "{method} {target} over h2");
        }
        h1
    }

    /// The URI hyper builds from an HTTP/2 request's pseudo-headers.
    fn h2_uri(scheme: &str, authority: &str, path: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
    }

    #[test]
    fn the_four_routes() {
        let create = route_of(Method::POST, TASKS_PATH).unwrap();
        assert_eq!((create.operation, create.task_id), (Operation::Create, None));
        let list = route_of(Method::GET, &format!("{TASKS_PATH}?page_num=2")).unwrap();
        assert_eq!(list.operation, Operation::List);
        let get = route_of(Method::GET, &format!("{TASKS_PATH}/cgt-20250331175019-68d9t")).unwrap();
        assert_eq!(get.operation, Operation::Get);
        assert_eq!(get.task_id.unwrap().as_str(), "cgt-20250331175019-68d9t");
        let delete = route_of(Method::DELETE, &format!("{TASKS_PATH}/abc_DEF-1")).unwrap();
        assert_eq!(delete.operation, Operation::Delete);
    }

    #[test]
    fn other_methods_on_known_paths_are_405() {
        for (method, path) in [
            (Method::PUT, TASKS_PATH.to_string()),
            (Method::DELETE, TASKS_PATH.to_string()),
            (Method::POST, format!("{TASKS_PATH}/cgt-1")),
            (Method::PATCH, format!("{TASKS_PATH}/cgt-1")),
        ] {
            assert!(
                matches!(
                    route_of(method.clone(), &path),
                    Err(GatewayError::MethodNotAllowed { .. })
                ),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/api/v3/chat/completions",
            "/API/V3/contents/generations/tasks",
            "//api/v3/contents/generations/tasks",
            "/api/v3/contents/generations/taskss",
            "/api/v3/contents/generations",
            "/api/v3/contents/generations/tasks/cgt-1/extra",
            "/api/v3/contents/generations/tasks/cgt-1/a/b/c",
            "/api/v3/contents/generations/tasks/cgt-1/extra/",
            "/api/v3/contents/generations/tasks//cgt-1",
            "/api/v3/contents/generations/tasks/../tasks/cgt-1",
            "/api/v3/contents/generations/tasks/%2e%2e/x",
        ] {
            assert!(
                matches!(route_of(Method::GET, path), Err(GatewayError::NoRoute)),
                "{path}"
            );
        }
    }

    #[test]
    fn deeper_paths_under_a_task_are_404_whatever_the_method() {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::PUT] {
            for path in ["cgt-1/extra", "cgt-1/a/b", "bad%2Fid/x"] {
                let target = format!("{TASKS_PATH}/{path}");
                let routed = route_of(method.clone(), &target);
                assert!(
                    matches!(routed, Err(GatewayError::NoRoute)),
                    "{method} {target}: {routed:?}"
                );
            }
        }
    }

    #[test]
    fn malformed_ids_are_400() {
        let long = "a".repeat(MAX_TASK_ID_LEN + 1);
        for id in [
            "",
            "cgt-1/",
            "..",
            ".",
            "%2e%2e",
            "cgt%2D1",
            "a%2Fb",
            "a%5Cb",
            "cgt-1;v=1",
            "cgt-1.json",
            long.as_str(),
        ] {
            let target = format!("{TASKS_PATH}/{id}");
            assert!(
                matches!(route_of(Method::GET, &target), Err(GatewayError::InvalidTaskId)),
                "{target}"
            );
        }
        let longest = "a".repeat(MAX_TASK_ID_LEN);
        assert!(route_of(Method::GET, &format!("{TASKS_PATH}/{longest}")).is_ok());
    }

    #[test]
    fn absolute_form_is_refused_on_http1() {
        for version in [Version::HTTP_10, Version::HTTP_11] {
            let uri: Uri = format!("http://other.example{TASKS_PATH}/cgt-1").parse().unwrap();
            let err = route(&Method::GET, &uri, version).unwrap_err();
            assert!(matches!(err, GatewayError::AbsoluteFormTarget), "{version:?}");
        }
    }

    #[test]
    fn http2_is_routed_by_its_path_whatever_authority_it_names() {
        for (scheme, authority) in [
            ("https", "gateway.local:8443"),
            ("http", "127.0.0.1:8080"),
            ("https", "ark.cn-beijing.volces.com"),
            ("http", "[::1]:9"),
        ] {
            let uri = h2_uri(scheme, authority, &format!("{TASKS_PATH}/cgt-1")).unwrap();
            let routed = route(&Method::GET, &uri, Version::HTTP_2).unwrap();
            assert_eq!(routed.operation, Operation::Get, "{scheme}://{authority}");
            assert_eq!(routed.task_id.unwrap().as_str(), "cgt-1");
        }
        // A request without `:authority` (a `Host` header instead) routes too.
        let uri: Uri = TASKS_PATH.parse().unwrap();
        assert_eq!(
            route(&Method::POST, &uri, Version::HTTP_2).unwrap().operation,
            Operation::Create
        );
    }

    #[test]
    fn http2_user_info_and_foreign_schemes_are_refused() {
        let path = format!("{TASKS_PATH}/cgt-1");
        let with_user = h2_uri("https", "tenant:secret@gateway.local", &path).unwrap();
        let err = route(&Method::GET, &with_user, Version::HTTP_2).unwrap_err();
        assert!(
            matches!(err, GatewayError::InvalidPseudoHeader(":authority")),
            "{err:?}"
        );
        let ftp = h2_uri("ftp", "gateway.local", &path).unwrap();
        let err = route(&Method::GET, &ftp, Version::HTTP_2).unwrap_err();
        assert!(matches!(err, GatewayError::InvalidPseudoHeader(":scheme")), "{err:?}");
    }
}
