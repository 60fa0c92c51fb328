//! Property tests for the request-target parser and the task policy: for
//! arbitrary input, what is forwarded is one of the four routes, and the id
//! is exactly one the caller may use. Every target is routed twice: as an
//! HTTP/1.1 request line and as an HTTP/2 `:path`, with the same outcome.

use std::collections::HashSet;

use ark_gateway::config::TaskGrants;
use ark_gateway::forward::{upstream_target, upstream_uri};
use ark_gateway::policy::{ListQuery, UpstreamQuery};
use ark_gateway::route::{is_task_id, route, Operation, TaskId, TASKS_PATH};
use http::{Method, Uri, Version};
use proptest::prelude::*;

const BASE: &str = "https://ark.example/api/v3";

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::HEAD),
    ]
}

/// Targets that look like attacks on the tasks path: the real prefix followed
/// by a mix of id characters and every kind of separator and escape.
fn hostile_targets() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[A-Za-z0-9_-]{1,12}",
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("%5C".to_string()),
        Just("%00".to_string()),
        Just(";".to_string()),
        Just("?".to_string()),
        Just("#".to_string()),
        Just("//".to_string()),
        Just("%".to_string()),
        Just("=".to_string()),
    ];
    (prop::collection::vec(piece, 0..8), any::<bool>())
        .prop_map(|(pieces, slash)| format!("{TASKS_PATH}{}{}", if slash { "/" } else { "" }, pieces.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_route_to_one_of_four_paths_or_are_refused(method in methods(), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(uri) = Uri::try_from(bytes.as_slice()) {
            route_over_http1(&method, &uri)?;
        }
        route_over_http2(&method, &bytes)?;
    }

    #[test]
    fn hostile_task_paths_forward_exactly_the_parsed_id(method in methods(), target in hostile_targets()) {
        if let Ok(uri) = Uri::try_from(target.as_str()) {
            route_over_http1(&method, &uri)?;
        }
        route_over_http2(&method, target.as_bytes())?;
    }

    #[test]
    fn grants_allow_exactly_the_granted_ids(
        exact in prop::collection::hash_set("[a-z0-9-]{1,10}", 0..6),
        prefixes in prop::collection::vec("[a-z0-9-]{1,4}", 0..3),
        probe in "[a-z0-9-]{1,12}",
    ) {
        let grants = TaskGrants {
            exact: exact.iter().map(|id| TaskId::parse(id).unwrap()).collect::<HashSet<_>>(),
            prefixes: prefixes.clone(),
        };
        let id = TaskId::parse(&probe).unwrap();
        let expected = exact.contains(&probe) || prefixes.iter().any(|p| probe.starts_with(p.as_str()));
        prop_assert_eq!(grants.allows(&id), expected);
    }

    #[test]
    fn list_queries_send_upstream_exactly_the_chosen_ids(query in "[a-z_.=&%0-9A-Z]{0,120}", own in prop::collection::vec("[a-z0-9-]{1,20}", 1..5)) {
        if let Ok(parsed) = ListQuery::parse(Some(&query)) {
            let chosen: Vec<TaskId> = own.iter().map(|id| TaskId::parse(id).unwrap()).collect();
            let upstream = parsed.upstream_query(&chosen, parsed.page_num(), parsed.page_size());
            let uri = upstream_uri(BASE, None, Some(&UpstreamQuery(upstream.clone()))).unwrap();
            prop_assert_eq!(uri.path(), "/api/v3/contents/generations/tasks");
            let reparsed = ListQuery::parse(uri.query()).unwrap();
            let mut unique: Vec<TaskId> = Vec::new();
            for id in &chosen {
                if !unique.contains(id) {
                    unique.push(id.clone());
                }
            }
            prop_assert_eq!(reparsed.task_ids.unwrap(), unique);
        }
    }
}

fn route_over_http1(method: &Method, uri: &Uri) -> Result<(), TestCaseError> {
    if let Ok(routed) = route(method, uri, Version::HTTP_11) {
        check_route(method, uri, routed.operation, routed.task_id.as_ref())?;
    }
    Ok(())
}

/// `path` as the `:path` of an HTTP/2 request (hyper folds `:scheme` and
/// `:authority` into the URI): routed exactly as the same origin-form target
/// in a request line, and checked like it.
fn route_over_http2(method: &Method, path: &[u8]) -> Result<(), TestCaseError> {
    let Ok(h2) = Uri::builder()
        .scheme("https")
        .authority("gateway.local:8443")
        .path_and_query(path)
        .build()
    else {
        return Ok(());
    };
    let over_h2 = route(method, &h2, Version::HTTP_2);
    if let Ok(origin) = Uri::try_from(path) {
        if origin.scheme().is_none() && origin.authority().is_none() {
            let over_h1 = route(method, &origin, Version::HTTP_11);
            prop_assert_eq!(format!("{over_h2:?}"), format!("{over_h1:?}"));
        }
    }
    if let Ok(routed) = over_h2 {
        check_route(method, &h2, routed.operation, routed.task_id.as_ref())?;
    }
    Ok(())
}

fn check_route(method: &Method, uri: &Uri, operation: Operation, id: Option<&TaskId>) -> Result<(), TestCaseError> {
    // What goes upstream is what the facts spell, whether the client's own
    // target is reused or a target is built (query-less routes; the list's
    // query is always built).
    if operation != Operation::List {
        let sent = upstream_target(uri.clone(), "/api/v3", id, None).unwrap();
        prop_assert_eq!(sent, upstream_uri("/api/v3", id, None).unwrap());
    }
    match (operation, id) {
        (Operation::Create, None) => prop_assert!(method == Method::POST && uri.path() == TASKS_PATH),
        (Operation::List, None) => prop_assert!(method == Method::GET && uri.path() == TASKS_PATH),
        (Operation::Get | Operation::Delete, Some(id)) => {
            prop_assert!(is_task_id(id.as_str()));
            prop_assert_eq!(uri.path(), format!("{TASKS_PATH}/{id}"));
            let upstream = upstream_uri(BASE, Some(id), None).unwrap();
            prop_assert_eq!(upstream.path(), format!("/api/v3/contents/generations/tasks/{id}"));
            prop_assert!(upstream.query().is_none());
        }
        other => prop_assert!(false, "impossible route {other:?}"),
    }
    Ok(())
}
