//! W3C trace context end to end: the tenant's trace continued toward Ark with
//! the gateway's span as parent, the trace id returned and audited for every
//! request (denied ones too), and a new, unsampled trace for anything invalid.

mod common;

use common::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// (trace id, span id, flags) of a `traceparent` the gateway wrote.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00");
    assert!(fields[1..]
        .iter()
        .all(|f| f.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
    (fields[1].into(), fields[2].into(), fields[3].into())
}

async fn call_with(
    env: &TestEnv,
    method: &str,
    target: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        all.push(("Authorization", a));
    }
    request(env.addr, method, target, &all, body.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_trace_is_continued_to_ark_returned_and_audited() {
    let mut env = TestEnv::start().await;
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    let headers = [("traceparent", sampled.as_str()), ("tracestate", "vendor=abc,other=1")];
    let created = call_with(&env, "POST", TASKS, Some(ALPHA), &headers, CREATE_BODY).await;
    assert_eq!(created.status, 200);
    let id = created.json()["id"].as_str().unwrap().to_string();

    // Ark got the same trace, the gateway's span as parent, the flag and the state as sent.
    let sent = &env.upstream()[0];
    let (trace, span, flags) = parts(sent.header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(span, PARENT);
    assert_eq!(sent.header("tracestate"), Some("vendor=abc,other=1"));
    // The tenant gets the same trace and span back.
    let (back_trace, back_span, _) = parts(created.header("traceparent").unwrap());
    assert_eq!((back_trace.as_str(), back_span.as_str()), (TRACE, span.as_str()));

    // Unsampled stays unsampled; each request has a span of its own.
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let got = call_with(
        &env,
        "GET",
        &format!("{TASKS}/{id}"),
        Some(ALPHA),
        &[("traceparent", &unsampled)],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    let (_, second_span, flags) = parts(env.upstream()[1].header("traceparent").unwrap());
    assert_eq!(flags, "00");
    assert_ne!(second_span, span);

    // Denied requests (401, 403) carry and record the trace too, and never left.
    let denied = call_with(
        &env,
        "GET",
        &format!("{TASKS}/{id}"),
        None,
        &[("traceparent", &sampled)],
        "",
    )
    .await;
    assert_eq!(denied.status, 401);
    assert_eq!(parts(denied.header("traceparent").unwrap()).0, TRACE);
    let other = call_with(
        &env,
        "GET",
        &format!("{TASKS}/{id}"),
        Some(BETA),
        &[("traceparent", &sampled)],
        "",
    )
    .await;
    assert_eq!(other.status, 403);
    assert_eq!(env.upstream_count(), 2);

    let audit = env.finish().await;
    assert_eq!(audit.len(), 4);
    assert!(audit.iter().all(|r| r.trace_id.as_deref() == Some(TRACE)), "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_or_invalid_trace_starts_a_new_unsampled_one_without_state() {
    let mut env = TestEnv::start().await;
    let invalid = [
        None,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string()),
        Some(format!("00-{TRACE}-0000000000000000-01")),
        Some(format!("00-{}-{PARENT}-01", TRACE.to_uppercase())),
        Some(format!("ff-{TRACE}-{PARENT}-01")),
        Some("not a traceparent".to_string()),
    ];
    let mut traces = Vec::new();
    for (i, value) in invalid.iter().enumerate() {
        let mut headers = vec![("tracestate", "vendor=stale")];
        if let Some(v) = value {
            headers.push(("traceparent", v.as_str()));
        }
        let created = call_with(&env, "POST", TASKS, Some(ALPHA), &headers, CREATE_BODY).await;
        assert_eq!(created.status, 200, "{value:?}");
        let sent = &env.upstream()[i];
        let (trace, _, flags) = parts(sent.header("traceparent").unwrap());
        assert_ne!(trace, TRACE, "{value:?}");
        assert_ne!(trace, "0".repeat(32));
        assert_eq!(flags, "00", "a new trace is not sampled: {value:?}");
        assert_eq!(
            sent.header("tracestate"),
            None,
            "state of a trace not continued: {value:?}"
        );
        assert_eq!(parts(created.header("traceparent").unwrap()).0, trace);
        traces.push(trace);
    }
    let audit = env.finish().await;
    let audited: Vec<String> = audit.iter().map(|r| r.trace_id.clone().unwrap()).collect();
    assert_eq!(audited, traces);
    let mut distinct = traces.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), traces.len(), "every new trace has its own id");
}
