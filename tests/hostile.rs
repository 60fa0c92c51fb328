//! Hostile clients. Every case is refused, or provably reaches only the
//! caller's own task; none reaches another tenant's; the gateway keeps serving.

mod common;

use std::time::Duration;

use common::h2::{literal, raw_request, request_block, RawAnswer};
use common::process::GatewayProcess;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Creates one task for alpha (the caller) and one for beta (the target).
async fn setup() -> (TestEnv, String, String) {
    let env = TestEnv::start().await;
    let own = env.create(ALPHA).await;
    let other = env.create(BETA).await;
    (env, own, other)
}

/// Sends raw bytes and returns the status line's code (0 if no HTTP answer).
async fn raw_status(env: &TestEnv, raw: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    std::str::from_utf8(&buf)
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// No request naming `other` ever reached the upstream, and the gateway still serves.
async fn assert_contained(env: &TestEnv, own: &str, other: &str) {
    for r in env.upstream() {
        assert!(
            !r.path_and_query.contains(other),
            "reached the upstream: {}",
            r.path_and_query
        );
        assert!(!r.body.contains(other));
    }
    let reply = env.call("GET", &format!("{TASKS}/{own}"), Some(ALPHA), None).await;
    assert_eq!(reply.status, 200, "the gateway stopped serving");
}

/// Request targets that try to reach `other` from a caller that owns `own`.
fn confusing_targets(own: &str, other: &str) -> Vec<Vec<u8>> {
    let encoded_letter = other.replacen('c', "%63", 1);
    let long_id = format!("{other}{}", "a".repeat(200));
    let long_path = format!("{TASKS}/{}", "x".repeat(70_000));
    vec![
        format!("{TASKS}/{other}/").into(),
        format!("/{TASKS}/{other}").into(),
        format!("{TASKS}//{other}").into(),
        format!("{TASKS}/../tasks/{other}").into(),
        format!("{TASKS}/./{other}").into(),
        format!("{TASKS}/{own}/../{other}").into(),
        format!("{TASKS}/%2e%2e/tasks/{other}").into(),
        format!("{TASKS}/{own}%2F..%2F{other}").into(),
        format!("{TASKS}%2F{other}").into(),
        format!("{TASKS}/{own}%5C..%5C{other}").into(),
        format!("{TASKS}/{other}%00").into(),
        format!("{TASKS}/{other};jsessionid=1").into(),
        format!("/API/V3/CONTENTS/GENERATIONS/TASKS/{other}").into(),
        format!("{TASKS}/{encoded_letter}").into(),
        format!("http://other.example{TASKS}/{other}").into(),
        format!("{TASKS}/{long_id}").into(),
        long_path.into_bytes(),
        [format!("{TASKS}/").as_bytes(), b"\xff\xfe", other.as_bytes()].concat(),
        [format!("{TASKS}/").as_bytes(), b"\x00", other.as_bytes()].concat(),
        [format!("{TASKS}/").as_bytes(), b"\x1b[2J", other.as_bytes()].concat(),
        format!("{TASKS}/{other}#frag").into(),
        format!("{TASKS}/{own}?id=../{other}").into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_confusion_never_reaches_another_tenants_task() {
    let (env, own, other) = setup().await;
    let targets = confusing_targets(&own, &other);
    for target in &targets {
        for method in ["GET", "DELETE"] {
            let raw = [
                format!("{method} ").as_bytes(),
                target,
                format!(" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            ]
            .concat();
            let status = raw_status(&env, &raw).await;
            let shown = String::from_utf8_lossy(&target[..target.len().min(120)]).into_owned();
            // The one case that may succeed is the caller's own task (the query is not part of the id).
            if status == 200 {
                assert!(
                    target.starts_with(format!("{TASKS}/{own}?").as_bytes()),
                    "{method} {shown} succeeded"
                );
            } else {
                assert!(
                    (400..500).contains(&status) || status == 0,
                    "{method} {shown}: {status}"
                );
            }
        }
    }
    // A Host header naming another host changes nothing: the upstream is configured.
    let raw = format!("GET {TASKS}/{other} HTTP/1.1\r\nHost: ark.cn-beijing.volces.com\r\nAuthorization: Bearer {ALPHA}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(&env, raw.as_bytes()).await, 403);
    assert_contained(&env, &own, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_confusion_over_http2_never_reaches_another_tenants_task() {
    let (env, own, other) = setup().await;
    let auth = format!("Bearer {ALPHA}");
    for target in confusing_targets(&own, &other) {
        for method in ["GET", "DELETE"] {
            // The target goes into `:path` byte for byte, whatever it holds.
            let block = request_block(method, &target, &[("authorization", &auth)]);
            let answer = raw_request(env.addr, &block).await;
            let shown = String::from_utf8_lossy(&target[..target.len().min(120)]).into_owned();
            if answer == RawAnswer::Ok {
                assert!(
                    target.starts_with(format!("{TASKS}/{own}?").as_bytes()),
                    "{method} {shown} succeeded over HTTP/2"
                );
            }
        }
    }
    // The caller's own task is served over the same raw frames: the refusals above are the targets'.
    let own_block = request_block("GET", format!("{TASKS}/{own}").as_bytes(), &[("authorization", &auth)]);
    assert_eq!(raw_request(env.addr, &own_block).await, RawAnswer::Ok);
    // `:authority` naming Ark, or another host, changes nothing: the upstream is configured.
    let auth_block = |authority: &[u8]| {
        [
            literal(b":method", b"GET"),
            literal(b":scheme", b"https"),
            literal(b":authority", authority),
            literal(b":path", format!("{TASKS}/{other}").as_bytes()),
            literal(b"authorization", auth.as_bytes()),
        ]
        .concat()
    };
    for authority in [
        &b"ark.cn-beijing.volces.com"[..],
        b"beta:token-beta@gateway.local",
        b"127.0.0.1:1",
    ] {
        let answer = raw_request(env.addr, &auth_block(authority)).await;
        assert_ne!(answer, RawAnswer::Ok, "{}", String::from_utf8_lossy(authority));
    }
    assert_contained(&env, &own, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_specific_and_malformed_headers_are_refused() {
    let (env, own, other) = setup().await;
    let before = env.upstream_count();
    let auth = format!("Bearer {ALPHA}");
    let path = format!("{TASKS}/{own}");
    // RFC 9113 §8.2: these make a request malformed; none may be served.
    for extra in [
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("te", "gzip"),
        ("Authorization", auth.as_str()),
    ] {
        let block = request_block("GET", path.as_bytes(), &[("authorization", &auth), extra]);
        let answer = raw_request(env.addr, &block).await;
        assert_ne!(answer, RawAnswer::Ok, "served with {extra:?}");
    }
    // The same request without them is served (the refusals above are theirs).
    let block = request_block("GET", path.as_bytes(), &[("authorization", &auth), ("te", "trailers")]);
    assert_eq!(raw_request(env.addr, &block).await, RawAnswer::Ok);
    assert_eq!(
        env.upstream_count(),
        before + 1,
        "only the well-formed request was forwarded"
    );
    assert_contained(&env, &own, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_tricks_are_refused() {
    let (env, own, other) = setup().await;
    let before = env.upstream_count();
    let cases: Vec<Vec<u8>> = vec![
        format!("GET {TASKS}/{own}?api_key={ALPHA} HTTP/1.1\r\nHost: x\r\n").into(),
        format!("GET {TASKS}/{own}?token={ALPHA}&Authorization=Bearer%20{ALPHA} HTTP/1.1\r\nHost: x\r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-\nalpha\r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\r\n {ALPHA}\r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\x00\r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\nAuthorization: Bearer {ALPHA}\r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization:Bearer  \r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {ALPHA}\r\n").into(),
        format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n", "t".repeat(20_000)).into(),
    ];
    for case in cases {
        let raw = [case.as_slice(), b"Connection: close\r\n\r\n"].concat();
        let status = raw_status(&env, &raw).await;
        assert!(
            (400..500).contains(&status),
            "{:?}: {status}",
            String::from_utf8_lossy(&raw[..raw.len().min(150)])
        );
    }
    assert_eq!(
        env.upstream_count(),
        before,
        "a request with a bad credential reached the upstream"
    );
    assert_contained(&env, &own, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_and_framing_tricks_reach_nothing_they_should_not() {
    let (env, own, other) = setup().await;
    let smuggled = format!("GET {TASKS}/{other} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BETA}\r\n\r\n");
    let chunk = |body: &str| format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let cases: Vec<String> = vec![
        // Content-Length and Transfer-Encoding together.
        format!("POST {TASKS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ALPHA}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{}{smuggled}", chunk(CREATE_BODY)),
        // Two different Content-Lengths.
        format!("POST {TASKS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ALPHA}\r\nContent-Length: 10\r\nContent-Length: {}\r\n\r\n{CREATE_BODY}{smuggled}", CREATE_BODY.len()),
        // Bad chunk sizes.
        format!("POST {TASKS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{CREATE_BODY}\r\n0\r\n\r\n"),
        format!("POST {TASKS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        format!("POST {TASKS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ALPHA}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{}", chunk(CREATE_BODY)),
    ];
    for case in &cases {
        let status = raw_status(&env, case.as_bytes()).await;
        assert!(status == 0 || status < 500, "{status}");
    }
    // Whatever was created came from alpha's body only; beta's request was never run as alpha.
    for r in env.upstream() {
        assert!(!r.path_and_query.contains(&other));
    }

    // HTTP/1.0 works, and closes.
    let raw = format!("GET {TASKS}/{own} HTTP/1.0\r\nAuthorization: Bearer {ALPHA}\r\n\r\n");
    assert_eq!(raw_status(&env, raw.as_bytes()).await, 200);

    // Pipelined requests are each authorised on their own.
    let raw = format!(
        "GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\n\r\nGET {TASKS}/{other} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "403"], "{text}");

    // Expect: 100-continue gets its interim answer and the create goes through.
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    let head = format!(
        "POST {TASKS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        CREATE_BODY.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    stream.write_all(CREATE_BODY.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("200 OK"));

    // 64 KB of headers: 431, not forwarded.
    let before = env.upstream_count();
    let mut raw = format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\n");
    for i in 0..1100 {
        raw.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(50)));
    }
    raw.push_str("Connection: close\r\n\r\n");
    assert_eq!(raw_status(&env, raw.as_bytes()).await, 431);
    assert_eq!(env.upstream_count(), before);
    assert_contained(&env, &own, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_a_malformed_pseudo_header_is_reset() {
    let (env, own, other) = setup().await;
    let before = env.upstream_count();
    let path = format!("{TASKS}/{other}");
    for block in [
        // A regular header before a pseudo-header.
        [
            vec![0x82, 0x86],
            literal(b"authorization", format!("Bearer {ALPHA}").as_bytes()),
            literal(b":path", path.as_bytes()),
        ]
        .concat(),
        // An unknown pseudo-header.
        [
            vec![0x82, 0x86],
            literal(b":path", path.as_bytes()),
            literal(b":tenant", b"beta"),
            literal(b"authorization", format!("Bearer {ALPHA}").as_bytes()),
        ]
        .concat(),
        // No :path at all.
        [
            vec![0x82, 0x86],
            literal(b"authorization", format!("Bearer {ALPHA}").as_bytes()),
        ]
        .concat(),
    ] {
        let answer = raw_request(env.addr, &block).await;
        assert_ne!(answer, RawAnswer::Ok, "a malformed HTTP/2 request was answered 200");
    }
    assert_eq!(env.upstream_count(), before);
    assert_contained(&env, &own, &other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_connection_is_closed_while_others_are_served() {
    let mut env = TestEnv::start().await;
    env.config_text = env.config_text.replace(
        "request_timeout = \"5s\"",
        "request_timeout = \"5s\"\nheader_read_timeout = \"1s\"",
    );
    env.restart_gateway().await;
    let own = env.create(ALPHA).await;
    let mut slow = TcpStream::connect(env.addr).await.unwrap();
    slow.write_all(format!("GET {TASKS}/{own} HTTP/1.1\r\nHost: x\r\nAuthor").as_bytes())
        .await
        .unwrap();
    // Others are served meanwhile.
    assert_eq!(
        env.call("GET", &format!("{TASKS}/{own}"), Some(ALPHA), None)
            .await
            .status,
        200
    );
    // The slow one is closed by the header-read time-out (408 or a plain close).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the slowloris connection was never closed");
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_memory_bounded_and_service_up() {
    use ark_gateway::mock_upstream::{MockOptions, MockUpstream};
    let mock = MockUpstream::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions::new(UPSTREAM_KEY),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config_text(&mock.base_url(), dir.path(), "", &default_tenants())).unwrap();
    let gateway = GatewayProcess::spawn(&path, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    let addr = gateway.addr;
    let before = rss_kib(gateway.child.id());
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        idle.push(TcpStream::connect(addr).await.expect("connect an idle client"));
    }
    // New clients are still served while the idle ones stay open.
    let reply = request(addr, "GET", TASKS, &[("Authorization", "Bearer token-alpha")], b"").await;
    assert_eq!(reply.status, 200);
    let after = rss_kib(gateway.child.id());
    assert_eq!(idle.len(), 10_000);
    // Bounded: a few KB per idle connection, far from a leak (the release
    // build's figure is measured by the benchmark).
    assert!(
        after - before < 200 * 1024,
        "10,000 idle connections cost {} KiB",
        after - before
    );
    drop(idle);
    gateway.signal("TERM");
    assert_eq!(gateway.wait().0, Some(0));
}
