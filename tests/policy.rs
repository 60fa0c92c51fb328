//! Every policy rule over real TCP, with the mock upstream's record proving
//! that each denied request never left the gateway.

mod common;

use ark_gateway::audit::Decision;
use common::*;

fn task(id: &str) -> String {
    format!("{TASKS}/{id}")
}

/// Asserts an Ark-shaped gateway error with the given status and code.
fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.text());
    let json = reply.json();
    assert_eq!(json["error"]["code"], code, "body: {json}");
    assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(json["error"]["type"].is_string());
    assert!(json["error"]["param"].is_string());
    let id = reply
        .header("x-request-id")
        .expect("x-request-id on every gateway error");
    assert_eq!(Some(id), reply.header("x-gateway-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_never_forwarded() {
    let mut env = TestEnv::start().await;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "missing"),
        (vec![("Authorization", "Basic dXNlcjpwYXNz")], "basic"),
        (vec![("Authorization", "Bearer ")], "empty token"),
        (vec![("Authorization", "Bearer not-a-tenant")], "unknown token"),
        (vec![("Authorization", "Bearer token-alpha x")], "token with a space"),
        (
            vec![
                ("Authorization", "Bearer token-alpha"),
                ("Authorization", "Bearer token-beta"),
            ],
            "two headers",
        ),
    ];
    for (headers, what) in &cases {
        let reply = request(env.addr, "GET", &task("cgt-static-alpha-1"), headers, b"").await;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text());
        assert_error(&reply, 401, "AuthenticationError");
        assert!(!reply.text().contains("token-alpha"), "{what}: the token is echoed");
    }
    let long = format!("Bearer {}", "a".repeat(10_000));
    let reply = request(
        env.addr,
        "GET",
        &task("cgt-static-alpha-1"),
        &[("Authorization", &long)],
        b"",
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        env.upstream_count(),
        0,
        "a request without a valid credential reached the upstream"
    );

    // Lower-case scheme is accepted (RFC 9110), and the tenant token is
    // replaced by the real key upstream.
    let reply = request(
        env.addr,
        "GET",
        &task("cgt-static-alpha-1"),
        &[("authorization", "bearer token-alpha")],
        b"",
    )
    .await;
    assert_eq!(
        reply.status,
        404,
        "forwarded; the mock does not know the id: {}",
        reply.text()
    );
    let received = env.upstream();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert!(received[0].headers.iter().all(|(_, v)| !v.contains("token-alpha")));

    let audit = env.finish().await;
    assert_eq!(audit.len(), cases.len() + 2, "one audit record per request");
    assert!(audit[..cases.len() + 1]
        .iter()
        .all(|r| r.decision == Decision::Deny && r.status == 401));
    // The peer address (rendered once per connection) and the time (its
    // seconds rendered once per second) are each request's own.
    for record in &audit {
        let addr: std::net::SocketAddr = record.remote_addr.as_deref().expect("remote_addr").parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        assert_eq!(record.ts.len(), 24, "{}", record.ts);
        assert!(humantime::parse_rfc3339(&record.ts).is_ok(), "{}", record.ts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_models_and_bodies_are_enforced_before_forwarding() {
    let env = TestEnv::start().await;
    // reader may not create or delete.
    let reply = env.call("POST", TASKS, Some(READER), Some(CREATE_BODY)).await;
    assert_error(&reply, 403, "AccessDenied");
    let reply = env
        .call("DELETE", &task("cgt-static-reader-1"), Some(READER), None)
        .await;
    assert_error(&reply, 403, "AccessDenied");
    // alpha may create only its two models.
    let body = r#"{"model":"model-z","content":[]}"#;
    let reply = env.call("POST", TASKS, Some(ALPHA), Some(body)).await;
    assert_error(&reply, 403, "AccessDenied");
    assert_eq!(reply.json()["error"]["param"], "model");
    // A repeated model key cannot smuggle a second model past the check.
    let body = r#"{"model":"model-a","model":"model-z","content":[]}"#;
    assert_error(
        &env.call("POST", TASKS, Some(ALPHA), Some(body)).await,
        400,
        "InvalidParameter",
    );
    // Bodies that are not JSON objects, or lack a model.
    for body in ["not json", "[\"model-a\"]", "{\"content\":[]}", "{\"model\":7}", ""] {
        let reply = env.call("POST", TASKS, Some(BETA), Some(body)).await;
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.text());
    }
    assert_error(
        &env.call("POST", TASKS, Some(BETA), Some("{\"content\":[]}")).await,
        400,
        "MissingParameter",
    );
    // Over max_body_bytes (4096 in the test config): 413, declared or not.
    let big = format!(
        r#"{{"model":"model-a","content":[{{"type":"text","text":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    assert_error(
        &env.call("POST", TASKS, Some(ALPHA), Some(&big)).await,
        413,
        "RequestTooLarge",
    );
    let chunked = format!(
        "POST {TASKS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    assert_error(&send_raw(env.addr, chunked.as_bytes()).await, 413, "RequestTooLarge");
    assert_eq!(env.upstream_count(), 0, "a refused create reached the upstream");

    // The allowed create is forwarded byte for byte.
    let id = env.create(ALPHA).await;
    assert!(id.starts_with("cgt-"));
    let received = env.upstream();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, CREATE_BODY);
    assert_eq!(received[0].path_and_query, "/api/v3/contents/generations/tasks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reaches_only_its_own_and_granted_tasks() {
    let mut env = TestEnv::start().await;
    let alphas = env.create(ALPHA).await;
    let betas = env.create(BETA).await;
    let before = env.upstream_count();

    for (method, token, id) in [
        ("GET", BETA, &alphas),
        ("DELETE", BETA, &alphas),
        ("GET", ALPHA, &betas),
        ("DELETE", ALPHA, &betas),
        ("GET", READER, &alphas),
        ("GET", ALPHA, &"cgt-static-reader-1".to_string()),
        ("GET", BETA, &"cgt-alphaprefix-42".to_string()),
        ("GET", ALPHA, &"cgt-never-created".to_string()),
    ] {
        let reply = env.call(method, &task(id), Some(token), None).await;
        assert_error(&reply, 403, "AccessDenied");
        assert_eq!(reply.json()["error"]["param"], "id");
    }
    assert_eq!(
        env.upstream_count(),
        before,
        "a denied task request reached the upstream"
    );

    // Own tasks and static grants (exact and prefix) are forwarded, with the
    // authorised id byte for byte in the upstream path.
    let reply = env.call("GET", &task(&alphas), Some(ALPHA), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["id"], alphas.as_str());
    for granted in ["cgt-static-alpha-1", "cgt-alphaprefix-42"] {
        let reply = env.call("GET", &task(granted), Some(ALPHA), None).await;
        assert_eq!(
            reply.status,
            404,
            "forwarded, and Ark's own 404 passes through: {}",
            reply.text()
        );
        assert_eq!(reply.error_code(), "ResourceNotFound");
        let last = env.upstream().pop().unwrap();
        assert_eq!(last.path_and_query, task(granted));
    }
    // Ark's refusal of a DELETE passes through unchanged: cancel twice.
    assert_eq!(env.call("DELETE", &task(&alphas), Some(ALPHA), None).await.status, 200);
    let refused = env.call("DELETE", &task(&alphas), Some(ALPHA), None).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.error_code(), "InvalidAction.TaskStatus");
    assert!(
        refused.header("x-request-id").unwrap().starts_with("0217"),
        "Ark's request id is passed back"
    );
    assert!(refused.header("x-gateway-request-id").is_some());

    let audit = env.finish().await;
    let denied: Vec<_> = audit.iter().filter(|r| r.reason == "task_not_granted").collect();
    assert_eq!(denied.len(), 8);
    assert!(denied
        .iter()
        .all(|r| r.task_id.is_some() && r.tenant.is_some() && r.upstream_status.is_none()));
    let created = audit.iter().find(|r| r.operation.as_deref() == Some("create")).unwrap();
    assert_eq!(
        created.task_id.as_deref(),
        Some(alphas.as_str()),
        "the audit names the created task"
    );
    assert_eq!(created.upstream_status, Some(200));
    assert!(created.upstream_request_id.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_ids_are_refused_locally() {
    let env = TestEnv::start().await;
    let cases = [
        ("GET", "/", 404, "NotFound"),
        ("GET", "/api/v3/chat/completions", 404, "NotFound"),
        ("GET", "/API/V3/contents/generations/tasks", 404, "NotFound"),
        ("GET", "//api/v3/contents/generations/tasks", 404, "NotFound"),
        ("PUT", TASKS, 405, "MethodNotAllowed"),
        (
            "PATCH",
            "/api/v3/contents/generations/tasks/cgt-static-alpha-1",
            405,
            "MethodNotAllowed",
        ),
        ("GET", "/api/v3/contents/generations/tasks/", 400, "InvalidParameter"),
        (
            "GET",
            "/api/v3/contents/generations/tasks/cgt-static-alpha-1/",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            // More than one segment below the collection: not a route.
            "/api/v3/contents/generations/tasks/../tasks/cgt-static-alpha-1",
            404,
            "NotFound",
        ),
        (
            "GET",
            "/api/v3/contents/generations/tasks/%2e%2e",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            "/api/v3/contents/generations/tasks/cgt-static-alpha%2D1",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            "/api/v3/contents/generations/tasks/cgt-static-alpha-1;x=1",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            "/api/v3/contents/generations/tasks/a%2Fb",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            "/api/v3/contents/generations/tasks?filter.status=bogus",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            "/api/v3/contents/generations/tasks?api_key=x",
            400,
            "InvalidParameter",
        ),
        (
            "GET",
            "http://other.example/api/v3/contents/generations/tasks/cgt-static-alpha-1",
            400,
            "InvalidParameter",
        ),
    ];
    for (method, target, status, code) in cases {
        let reply = env.call(method, target, Some(ALPHA), None).await;
        assert_eq!(reply.status, status, "{method} {target}: {}", reply.text());
        assert_error(&reply, status, code);
    }
    let reply = env.call("PUT", TASKS, Some(ALPHA), None).await;
    assert_eq!(reply.header("allow"), Some("GET, POST"));
    let long = format!("{TASKS}/{}", "a".repeat(129));
    assert_eq!(env.call("GET", &long, Some(ALPHA), None).await.status, 400);
    assert_eq!(env.upstream_count(), 0, "a refused route reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_only_the_callers_tasks() {
    let env = TestEnv::start().await;
    let mut alphas = Vec::new();
    for _ in 0..3 {
        alphas.push(env.create(ALPHA).await);
    }
    let betas = vec![env.create(BETA).await, env.create(BETA).await];

    let reply = env
        .call("GET", &format!("{TASKS}?page_size=2"), Some(ALPHA), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    // alpha owns 3 tasks; its static grant cgt-static-alpha-1 does not exist upstream.
    assert_eq!(json["total"], 3);
    assert_eq!(json["items"].as_array().unwrap().len(), 2);
    let page2 = env
        .call("GET", &format!("{TASKS}?page_size=2&page_num=2"), Some(ALPHA), None)
        .await
        .json();
    let mut seen: Vec<String> = ids_of(&json).into_iter().chain(ids_of(&page2)).collect();
    seen.sort();
    let mut expected = alphas.clone();
    expected.sort();
    assert_eq!(seen, expected, "two pages hold exactly alpha's tasks");

    let beta_list = env.call("GET", TASKS, Some(BETA), None).await.json();
    assert_eq!(beta_list["total"], 2);
    let mut beta_ids = ids_of(&beta_list);
    beta_ids.sort();
    let mut expected = betas.clone();
    expected.sort();
    assert_eq!(beta_ids, expected);

    // Asking for another tenant's ids filters to nothing, without asking Ark.
    let before = env.upstream_count();
    let target = format!("{TASKS}?filter.task_ids={}&filter.task_ids={}", betas[0], betas[1]);
    let reply = env.call("GET", &target, Some(ALPHA), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["total"], 0);
    assert_eq!(env.upstream_count(), before);
    // Mixed: only the caller's id survives, and only it is sent upstream.
    let target = format!("{TASKS}?filter.task_ids={}&filter.task_ids={}", betas[0], alphas[0]);
    let reply = env.call("GET", &target, Some(ALPHA), None).await.json();
    assert_eq!(ids_of(&reply), vec![alphas[0].clone()]);
    let sent = env.upstream().pop().unwrap().path_and_query;
    assert!(sent.contains(&alphas[0]) && !sent.contains(&betas[0]), "{sent}");
    // A tenant with no tasks gets an empty list, not someone else's.
    let reply = env.call("GET", TASKS, Some(LIMITED), None).await;
    assert_eq!(reply.json()["total"], 0);
    // Unfiltered lists are always narrowed to the caller's ids upstream.
    let list_calls: Vec<_> = env
        .upstream()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path_and_query.starts_with(&format!("{TASKS}?")))
        .collect();
    assert!(list_calls.iter().all(|r| r.path_and_query.contains("filter.task_ids=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_and_do_not_forward() {
    let mut env = TestEnv::start().await;
    // limited: 1 per minute with a burst of 2.
    for _ in 0..2 {
        let reply = env.call("GET", TASKS, Some(LIMITED), None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let before = env.upstream_count();
    let reply = env.call("POST", TASKS, Some(LIMITED), Some(CREATE_BODY)).await;
    assert_error(&reply, 429, "RateLimitExceeded");
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(env.upstream_count(), before);
    // Other tenants are unaffected.
    assert_eq!(env.call("GET", TASKS, Some(BETA), None).await.status, 200);
    let audit = env.finish().await;
    assert_eq!(audit.iter().filter(|r| r.reason == "tenant_rate_limited").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_cleaned_both_ways() {
    let env = TestEnv::start().await;
    let id = env.create(ALPHA).await;
    let reply = request(
        env.addr,
        "GET",
        &task(&id),
        &[
            ("Authorization", "Bearer token-alpha"),
            ("Connection", "close, X-Hop-Secret"),
            ("X-Hop-Secret", "must-not-pass"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic abc"),
            ("Accept-Encoding", "gzip"),
            ("X-Request-Id", "client-chosen"),
            ("X-Client-Request-Id", "client-req-123"),
            ("User-Agent", "ark-test"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = env.upstream().pop().unwrap();
    for name in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "accept-encoding",
        "x-request-id",
        "connection",
    ] {
        assert!(sent.header(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(sent.header("x-client-request-id"), Some("client-req-123"));
    assert_eq!(sent.header("user-agent"), Some("ark-test"));
    assert_ne!(reply.header("x-gateway-request-id"), Some("client-chosen"));
    assert!(reply.header("keep-alive").is_none() && reply.header("transfer-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_below_a_task_is_not_found_and_not_forwarded() {
    let env = TestEnv::start().await;
    let own = env.create(ALPHA).await;
    let before = env.upstream_count();
    for (method, path) in [
        ("GET", format!("{TASKS}/{own}/extra")),
        ("DELETE", format!("{TASKS}/{own}/a/b/c")),
        ("POST", format!("{TASKS}/{own}/cancel")),
    ] {
        let reply = env.call(method, &path, Some(ALPHA), None).await;
        assert_eq!(reply.status, 404, "{method} {path}");
        assert_eq!(reply.error_code(), "NotFound");
        assert_eq!(reply.json()["error"]["type"], "NotFound");
    }
    // A trailing slash is still a malformed id.
    let reply = env.call("GET", &format!("{TASKS}/{own}/"), Some(ALPHA), None).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (400, "InvalidParameter"));
    assert_eq!(env.upstream_count(), before, "a path that is not a route was forwarded");
}
