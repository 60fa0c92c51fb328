//! Request-target parsing: whatever the bytes, routing never panics, and a
//! route it accepts names one of the four task paths with an id of the safe
//! alphabet, which is forwarded byte for byte, or is a GET of the tenant's
//! usage, which is never forwarded. The bytes are an HTTP/1.1
//! request target or, by the selector byte, an HTTP/2 `:path`.
#![no_main]

use ark_gateway::route::{is_task_id, route, Operation, TASKS_PATH, USAGE_PATH};
use http::{Method, Uri, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, target)) = data.split_first() else { return };
    let method = [Method::GET, Method::POST, Method::DELETE, Method::PUT][usize::from(selector % 4)].clone();
    let (uri, version) = if selector & 4 == 0 {
        let Ok(uri) = Uri::try_from(target) else { return };
        (uri, Version::HTTP_11)
    } else {
        // hyper folds `:scheme` and `:authority` into an HTTP/2 request's URI.
        let built = Uri::builder().scheme("https").authority("gateway.local").path_and_query(target).build();
        let Ok(uri) = built else { return };
        (uri, Version::HTTP_2)
    };
    if let Ok(routed) = route(&method, &uri, version) {
        match routed.task_id {
            None if routed.operation == Operation::Usage => {
                assert_eq!(method, Method::GET);
                assert_eq!(uri.path(), USAGE_PATH);
            }
            None => assert_eq!(uri.path(), TASKS_PATH),
            Some(id) => {
                assert!(is_task_id(id.as_str()));
                assert_eq!(uri.path(), format!("{TASKS_PATH}/{id}"));
                let upstream = ark_gateway::forward::upstream_uri("https://ark.example/api/v3", Some(&id), None).unwrap();
                assert_eq!(upstream.path(), format!("/api/v3/contents/generations/tasks/{id}"));
            }
        }
    }
});
