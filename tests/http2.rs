//! HTTP/2 clients get what HTTP/1.1 clients get: the four calls, tenant
//! isolation, one audit record per request, limits per request, body limits
//! on streamed DATA frames, and every early refusal as its answer, on
//! plain-text HTTP/2 (prior knowledge) and on TLS with ALPN.

mod common;

use std::collections::HashSet;

use common::h2::{read_reply, send_all, H2Client};
use common::tls::pki;
use common::*;

/// A tenant that may make one request a minute, for the 429 cases.
fn tenants_with_one_a_minute() -> String {
    format!(
        "{}\n[[tenant]]\nname = \"scarce\"\ntoken_sha256 = \"{}\"\noperations = [\"create\", \"get\", \"list\", \"delete\"]\nrate_limit = {{ per_minute = 1, burst = 1 }}\n",
        default_tenants(),
        sha256_hex(SCARCE)
    )
}

const SCARCE: &str = "token-scarce";

/// A gateway on plain text and one on TLS with `tenants`, and a client for each.
async fn both_listeners(tenants: &str) -> (Vec<(TestEnv, H2Client, &'static str)>, tempfile::TempDir) {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let plain = TestEnv::start_with(Options {
        tenants: tenants.to_string(),
        ..Options::default()
    })
    .await;
    let tls = TestEnv::start_with(Options {
        tenants: format!("{}{tenants}", pki.server_tls_section(dir.path())),
        ..Options::default()
    })
    .await;
    let (plain_client, tls_client) = (H2Client::h2c(plain.addr).await, H2Client::tls(tls.addr, &pki).await);
    (
        vec![(plain, plain_client, "h2c"), (tls, tls_client, "h2 over TLS")],
        dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_calls_over_h2c_and_tls_keep_tenants_apart() {
    let (envs, _certificates) = both_listeners(&default_tenants()).await;
    for (mut env, h2, over) in envs {
        let created = h2.call_as("POST", TASKS, ALPHA, Some(CREATE_BODY)).await;
        assert_eq!(created.status, 200, "create over h2 ({over}): {}", created.text());
        assert!(
            created.header("x-gateway-request-id").is_some(),
            "the gateway's request id"
        );
        let id = created.json()["id"].as_str().unwrap().to_string();
        let got = h2.call_as("GET", &format!("{TASKS}/{id}"), ALPHA, None).await;
        assert_eq!((got.status, got.json()["id"].as_str()), (200, Some(id.as_str())));
        let listed = h2.call_as("GET", &format!("{TASKS}?page_size=10"), ALPHA, None).await;
        assert_eq!(listed.status, 200);
        assert!(ids_of(&listed.json()).contains(&id));

        // Another tenant, on the same connection: refused, never forwarded, Ark-shaped.
        let upstream_before = env.upstream_count();
        for method in ["GET", "DELETE"] {
            let denied = h2.call_as(method, &format!("{TASKS}/{id}"), BETA, None).await;
            assert_eq!(denied.status, 403, "{method} as beta");
            assert_eq!(denied.error_code(), "AccessDenied");
        }
        let beta_list = h2.call_as("GET", TASKS, BETA, None).await;
        assert!(
            !ids_of(&beta_list.json()).contains(&id),
            "beta's list shows alpha's task"
        );
        assert!(
            env.upstream()[upstream_before..]
                .iter()
                .all(|r| !r.path_and_query.contains(&id)),
            "a request of beta's naming alpha's task reached Ark"
        );
        let bad = h2.call_as("GET", &format!("{TASKS}/{id}"), "not-a-token", None).await;
        assert_eq!((bad.status, bad.error_code().as_str()), (401, "AuthenticationError"));
        let deleted = h2.call_as("DELETE", &format!("{TASKS}/{id}"), ALPHA, None).await;
        assert_eq!(deleted.status, 200, "{}", deleted.text());

        // Many concurrent streams on one connection: each is its own request.
        let gets: Vec<_> = (0..40)
            .map(|_| {
                let h2 = h2.clone();
                let path = format!("{TASKS}/{id}");
                tokio::spawn(async move { h2.call_as("GET", &path, ALPHA, None).await })
            })
            .collect();
        let mut request_ids = HashSet::new();
        for get in gets {
            let reply = get.await.unwrap();
            assert_eq!(reply.status, 200);
            request_ids.insert(reply.header("x-gateway-request-id").unwrap().to_string());
        }
        assert_eq!(request_ids.len(), 40, "every stream has its own request id");

        // One audit record per request: 3 + 2 + 1 + 1 + 1 + 40.
        let audit = env.finish().await;
        assert_eq!(audit.len(), 48, "audit records over h2 ({over})");
        for request_id in &request_ids {
            assert_eq!(
                audit.iter().filter(|r| &r.request_id == request_id).count(),
                1,
                "request {request_id}"
            );
        }
        assert_eq!(
            audit
                .iter()
                .filter(|r| r.tenant.as_deref() == Some("beta") && r.status == 403)
                .count(),
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_streams_not_connections() {
    let env = TestEnv::start().await;
    let h2 = H2Client::h2c(env.addr).await;
    // `limited` has a burst of 2: the third request on the same connection is refused.
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(h2.call_as("GET", TASKS, LIMITED, None).await.status);
        }
        out
    };
    assert_eq!(statuses, [200, 200, 429]);
    let refused = h2.call_as("GET", TASKS, LIMITED, None).await;
    assert_eq!(refused.error_code(), "RateLimitExceeded");
    assert!(refused
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    // Another tenant on the same connection is not affected.
    assert_eq!(h2.call_as("GET", TASKS, ALPHA, None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_limited_on_streamed_data_frames() {
    let env = TestEnv::start().await;
    let h2 = H2Client::h2c(env.addr).await;
    let before = env.upstream_count();
    // No content-length: 5,000 bytes in 500-byte frames against a 4,096-byte limit.
    let mut body = CREATE_BODY.as_bytes().to_vec();
    body.resize(5000, b' ');
    let auth = format!("Bearer {ALPHA}");
    let mut sending = h2.start("POST", TASKS, &[("authorization", &auth)]).await;
    let _ = send_all(&mut sending.body, &body, 500).await;
    let reply = read_reply(sending.response).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.error_code(), "RequestTooLarge");
    assert_eq!(env.upstream_count(), before, "an oversized body was forwarded");

    // At the limit, in small frames and without content-length: forwarded whole.
    let mut exact = CREATE_BODY.as_bytes().to_vec();
    exact.resize(4096, b' ');
    let mut sending = h2.start("POST", TASKS, &[("authorization", &auth)]).await;
    send_all(&mut sending.body, &exact, 100).await.unwrap();
    let reply = read_reply(sending.response).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(env.upstream().last().unwrap().body.len(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_cookies_te_and_expect_are_handled_and_never_forwarded() {
    let env = TestEnv::start().await;
    let h2 = H2Client::h2c(env.addr).await;
    let auth = format!("Bearer {ALPHA}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        // HTTP/2 may split cookies across fields; the gateway forwards none.
        ("cookie", "session=alpha"),
        ("cookie", "theme=dark"),
        ("te", "trailers"),
        // hyper's HTTP/2 server sends no 100 Continue; the client sends its body anyway.
        ("expect", "100-continue"),
        ("x-client-request-id", "h2-client-1"),
    ];
    let mut sending = h2.start("POST", TASKS, &headers).await;
    sending
        .body
        .send_data(bytes::Bytes::from_static(CREATE_BODY.as_bytes()), false)
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-trailer-secret", "from-the-tenant".parse().unwrap());
    sending.body.send_trailers(trailers).unwrap();
    let reply = read_reply(sending.response).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let received = env.upstream().pop().unwrap();
    assert_eq!(received.body, CREATE_BODY, "the body as sent, without its trailers");
    for name in ["cookie", "te", "expect", "x-trailer-secret"] {
        assert!(received.header(name).is_none(), "{name} reached Ark");
    }
    // `:authority` named the gateway; Ark sees its own configured authority.
    let upstream_authority = env.mock.base_url().split('/').nth(2).unwrap().to_string();
    assert_eq!(received.header("host"), Some(upstream_authority.as_str()));
    assert_eq!(received.header("x-client-request-id"), Some("h2-client-1"));
    assert_eq!(
        received.header("authorization"),
        Some(&*format!("Bearer {UPSTREAM_KEY}"))
    );
}

/// Sends the first part of a 1 MiB body, waits for the answer the gateway
/// gives before reading it, then sends the rest and ends the stream. The
/// answer must arrive and the stream must stay open until the client is done.
async fn early_refusal(h2: &H2Client, token: &str, extra: &[(&str, &str)]) -> Result<u16, String> {
    const BODY: usize = 1024 * 1024;
    let auth = format!("Bearer {token}");
    let length = BODY.to_string();
    let mut headers = vec![("authorization", auth.as_str()), ("content-length", length.as_str())];
    headers.extend_from_slice(extra);
    let mut sending = h2.start("POST", TASKS, &headers).await;
    let body = vec![b'x'; BODY];
    let (first, rest) = body.split_at(32 * 1024);
    sending
        .body
        .send_data(bytes::Bytes::copy_from_slice(first), false)
        .map_err(|e| format!("first DATA frame: {e}"))?;
    let reply = read_reply(sending.response).await;
    send_all(&mut sending.body, rest, 16 * 1024).await.map_err(|e| {
        format!(
            "stream reset while the client was still sending ({}): {e}",
            reply.status
        )
    })?;
    Ok(reply.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_clients_still_sending_over_h2c_and_tls() {
    let (envs, _certificates) = both_listeners(&tenants_with_one_a_minute()).await;
    for (env, h2, kind) in &envs {
        // Spend the scarce tenant's one request.
        assert_eq!(h2.call_as("GET", TASKS, SCARCE, None).await.status, 200);
        let before = env.upstream_count();
        for round in 0..10 {
            for (token, expected, code) in [
                ("not-a-token", 401, "AuthenticationError"),
                (READER, 403, "AccessDenied"),
                (ALPHA, 413, "RequestTooLarge"),
                (SCARCE, 429, "RateLimitExceeded"),
            ] {
                let status = early_refusal(h2, token, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{kind} round {round}, expected {expected}: {e}"));
                assert_eq!(status, expected, "{kind} round {round} ({code})");
            }
        }
        assert_eq!(env.upstream_count(), before, "an early refusal was forwarded");
        // The connection is still good after forty refusals.
        assert_eq!(h2.call_as("GET", TASKS, ALPHA, None).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_early_refusals_keep_the_connection_usable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start().await;
    let mut stream = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let body = vec![b'x'; 256 * 1024];
    // A refusal before the body is read, then a request on the same connection.
    let head = format!(
        "POST {TASKS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let next = format!("GET {TASKS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\nConnection: close\r\n\r\n");
    stream.write_all(next.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["401", "200"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_that_is_not_reading_does_not_hold_the_drain() {
    let mut env = TestEnv::start().await;
    // A grace period no test waits out: the drain must end because nothing is in flight.
    let text = env.config_text.replace(
        "request_timeout = \"5s\"",
        "request_timeout = \"5s\"\nshutdown_grace = \"1h\"",
    );
    env.write_config(text);
    env.restart_gateway().await;
    // One request on a raw connection, then the client reads nothing more
    // (so it never answers the PING that HTTP/2's graceful close waits for).
    let block = common::h2::request_block(
        "GET",
        TASKS.as_bytes(),
        &[("authorization", &format!("Bearer {ALPHA}"))],
    );
    let idle = common::h2::open_raw(env.addr, &block)
        .await
        .expect("the request was sent");
    // A second client whose request is answered shows the first was served too.
    assert_eq!(
        H2Client::h2c(env.addr)
            .await
            .call_as("GET", TASKS, ALPHA, None)
            .await
            .status,
        200
    );
    let drained = tokio::time::timeout(std::time::Duration::from_secs(120), env.stop_gateway()).await;
    assert!(drained.is_ok(), "the drain waited on an idle HTTP/2 connection");
    drop(idle);
}
