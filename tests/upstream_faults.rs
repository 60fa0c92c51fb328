//! Upstream failures become defined, Ark-shaped 5xx answers (or Ark's own
//! answer, passed through), each audited, and the gateway recovers as soon as
//! the upstream does.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Read the request, then never answer.
    Hang,
    /// Answer with bytes that are not HTTP.
    Garbage,
    /// Send half a response head, then close.
    ResetMidResponse,
    /// Send a head promising 100 bytes, then stall after 10.
    StallBody,
    /// A well-formed answer with this status and body.
    Answer(u16, &'static str, &'static str),
    /// Close the connection after reading the request (an idle keep-alive
    /// closed by the server as the request arrives), then answer from now on.
    CloseOnceThenAnswer(&'static str),
}

/// A raw upstream whose behaviour a test switches; it reports each request it reads.
struct ScriptedUpstream {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    seen: mpsc::UnboundedReceiver<String>,
}

impl ScriptedUpstream {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let (tx, seen) = mpsc::unbounded_channel();
        let shared = mode.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mode = shared.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut read = 0;
                    // Read until the end of the head (the gateway's bodies here are small and sent with it).
                    loop {
                        let Ok(n) = stream.read(&mut buf[read..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        read += n;
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..read])
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(head);
                    let current = {
                        let mut mode = mode.lock().unwrap();
                        let current = *mode;
                        if let Mode::CloseOnceThenAnswer(body) = current {
                            *mode = Mode::Answer(200, "", body);
                        }
                        current
                    };
                    match current {
                        Mode::CloseOnceThenAnswer(_) => drop(stream),
                        Mode::Hang => std::future::pending::<()>().await,
                        Mode::Garbage => {
                            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.0\r\n\r\n").await;
                        }
                        Mode::ResetMidResponse => {
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: applic").await;
                        }
                        Mode::StallBody => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"id\":\"cg")
                                .await;
                            std::future::pending::<()>().await;
                        }
                        Mode::Answer(status, extra_headers, body) => {
                            let response = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nx-request-id: ark-req-1\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = stream.write_all(response.as_bytes()).await;
                        }
                    }
                });
            }
        });
        Self { addr, mode, seen }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn base_url(&self) -> String {
        format!("http://{}/api/v3", self.addr)
    }
}

const OK_TASK: &str = r#"{"id":"cgt-static-alpha-1","status":"queued"}"#;

async fn env_for(base_url: String, upstream_extra: &str) -> TestEnv {
    TestEnv::start_with(Options {
        base_url: Some(base_url),
        upstream_extra: upstream_extra.to_string(),
        ..Options::default()
    })
    .await
}

const GRANTED: &str = "/api/v3/contents/generations/tasks/cgt-static-alpha-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_502_and_recovers() {
    // A port that was bound and released: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut env = env_for(format!("http://{closed}/api/v3"), "").await;
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.error_code(), "UpstreamUnavailable");
    assert!(
        reply.header("x-should-retry").is_none(),
        "nothing was sent, so a retry is safe"
    );
    let create = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(create.status, 502);
    assert!(
        create.header("x-should-retry").is_none(),
        "a create that never connected may be retried"
    );
    let audit = env.finish().await;
    assert!(audit
        .iter()
        .all(|r| r.reason == "upstream_connect_failed" && r.status == 502));
    assert_eq!(audit.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_504_and_unknown_fate_creates_must_not_be_retried() {
    let mut upstream = ScriptedUpstream::start(Mode::Hang).await;
    let mut env = env_for(upstream.base_url(), "timeout = \"1s\"").await;
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.error_code(), "UpstreamTimeout");
    assert!(reply.header("x-should-retry").is_none());
    let create = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(create.status, 504);
    assert_eq!(
        create.header("x-should-retry"),
        Some("false"),
        "the create may have reached Ark"
    );
    assert!(upstream.seen.recv().await.is_some());

    // A body that stalls mid-way is a time-out too.
    upstream.set(Mode::StallBody);
    assert_eq!(env.call("GET", GRANTED, Some(ALPHA), None).await.status, 504);

    // Healthy again: the next request succeeds.
    upstream.set(Mode::Answer(200, "", OK_TASK));
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-request-id"), Some("ark-req-1"));
    let audit = env.finish().await;
    assert_eq!(audit.iter().filter(|r| r.reason == "upstream_timeout").count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_responses_are_502() {
    let upstream = ScriptedUpstream::start(Mode::Garbage).await;
    let env = env_for(upstream.base_url(), "timeout = \"5s\"").await;
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.error_code(), "UpstreamUnavailable");
    upstream.set(Mode::ResetMidResponse);
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let create = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(create.status, 502);
    assert_eq!(create.header("x-should-retry"), Some("false"));
    // A 200 create without an id cannot be owned: 502, not a silent success.
    upstream.set(Mode::Answer(200, "", "{}"));
    let reply = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(reply.status, 502);
    upstream.set(Mode::Answer(200, "", OK_TASK));
    assert_eq!(env.call("GET", GRANTED, Some(ALPHA), None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arks_own_errors_pass_through_unchanged() {
    let ark_429 = r#"{"error":{"code":"RateLimitExceeded.EndpointRPMExceeded","message":"slow down","param":"","type":"TooManyRequests"}}"#;
    let upstream = ScriptedUpstream::start(Mode::Answer(429, "Retry-After: 7\r\n", ark_429)).await;
    let env = env_for(upstream.base_url(), "").await;
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.text(), ark_429);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("x-request-id"), Some("ark-req-1"));
    let ark_503 = r#"{"error":{"code":"ServerOverloaded","message":"busy","param":"","type":""}}"#;
    upstream.set(Mode::Answer(503, "", ark_503));
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), ark_503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_in_flight_limit_refuses_instead_of_queueing() {
    let mut upstream = ScriptedUpstream::start(Mode::Hang).await;
    let env = env_for(upstream.base_url(), "max_concurrent = 1\ntimeout = \"30s\"").await;
    let addr = env.addr;
    let first =
        tokio::spawn(
            async move { request(addr, "GET", GRANTED, &[("Authorization", "Bearer token-alpha")], b"").await },
        );
    // Wait until the first request is really at the upstream, holding the one slot.
    upstream.seen.recv().await.unwrap();
    // A policy denial is answered as usual while the one slot is taken...
    let second = env.call("GET", GRANTED, Some(BETA), None).await;
    assert_eq!(second.status, 403);
    // ...and an allowed request finds no slot: refused at once, not queued.
    let second = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.error_code(), "RateLimitExceeded");
    assert_eq!(second.header("retry-after"), Some("1"));
    assert!(
        upstream.seen.try_recv().is_err(),
        "the refused request reached the upstream"
    );
    first.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_survives_a_closed_pooled_connection_but_a_create_is_never_resent() {
    let mut upstream = ScriptedUpstream::start(Mode::CloseOnceThenAnswer(OK_TASK)).await;
    let env = env_for(upstream.base_url(), "").await;
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 200, "the read was not retried: {}", reply.text());
    assert_eq!(upstream.seen.recv().await.unwrap().split(' ').next(), Some("GET"));
    assert_eq!(upstream.seen.recv().await.unwrap().split(' ').next(), Some("GET"));

    upstream.set(Mode::CloseOnceThenAnswer(r#"{"id":"cgt-created-1"}"#));
    let create = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(create.status, 502);
    assert_eq!(create.header("x-should-retry"), Some("false"));
    assert_eq!(upstream.seen.recv().await.unwrap().split(' ').next(), Some("POST"));
    assert!(upstream.seen.try_recv().is_err(), "the create was sent twice");
    let metrics = request(env.admin_addr, "GET", "/metrics", &[], b"").await.text();
    assert!(
        metrics.contains("ark_gateway_upstream_in_flight 0"),
        "a connection slot leaked:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_502_and_a_read_is_not_asked_again() {
    let mut upstream = ScriptedUpstream::start(Mode::Answer(200, "", OK_TASK)).await;
    let mut env = env_for(upstream.base_url(), "max_response_bytes = 10").await;
    let reply = env.call("GET", GRANTED, Some(ALPHA), None).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.error_code(), "UpstreamUnavailable");
    assert_eq!(upstream.seen.recv().await.unwrap().split(' ').next(), Some("GET"));
    assert!(
        upstream.seen.try_recv().is_err(),
        "an answer over the limit was asked for twice"
    );
    let audit = env.finish().await;
    assert_eq!(audit.last().unwrap().reason, "upstream_response_too_large");
}

/// The mock upstream serving TLS as Ark does (ALPN h2 and http/1.1), the
/// gateway trusting its CA through `upstream.ca_file`: HTTP/2 by default,
/// HTTP/1.1 when `upstream.protocols` pins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_is_reached_over_h2_or_the_pinned_http1() {
    let pki = common::tls::pki();
    for (protocols, version) in [
        ("", "HTTP/2.0"),
        ("protocols = [\"http/1.1\"]", "HTTP/1.1"),
        ("protocols = [\"h2\"]", "HTTP/2.0"),
    ] {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = ca_dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let mut mock = ark_gateway::mock_upstream::MockOptions::new(UPSTREAM_KEY);
        mock.queued_for = std::time::Duration::from_secs(3600);
        mock.tls = Some(ark_gateway::mock_upstream::MockTls {
            cert_pem: pki.server_cert.clone(),
            key_pem: pki.server_key.clone(),
        });
        let env = TestEnv::start_with(Options {
            mock,
            upstream_extra: format!("ca_file = \"{}\"\n{protocols}", ca.display()),
            ..Options::default()
        })
        .await;
        assert!(env.mock.base_url().starts_with("https://"));
        let id = env.create(ALPHA).await;
        assert_eq!(
            env.call("GET", &format!("{TASKS}/{id}"), Some(ALPHA), None)
                .await
                .status,
            200
        );
        let seen: Vec<String> = env.upstream().into_iter().map(|r| r.version).collect();
        assert_eq!(seen, vec![version.to_string(); 2], "{protocols}");
    }
}

#[test]
fn an_h2_only_offer_needs_a_tls_upstream() {
    let text = format!(
        "[upstream]\nbase_url = \"http://127.0.0.1:9/api/v3\"\napi_key_env = \"K\"\nallow_insecure_http = true\nprotocols = [\"h2\"]\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"{}\"\noperations = [\"get\"]\nrate_limit = {{ per_second = 1 }}\n",
        "0".repeat(64)
    );
    let err = ark_gateway::config::Config::from_toml_str(&text, &|name| (name == "K").then(|| "k".into())).unwrap_err();
    assert!(err.mentions("upstream.protocols"), "{err}");
    let bad = text.replace("[\"h2\"]", "[\"h3\"]");
    assert!(
        ark_gateway::config::Config::from_toml_str(&bad, &|name| (name == "K").then(|| "k".into()))
            .unwrap_err()
            .mentions("upstream.protocols")
    );
}
