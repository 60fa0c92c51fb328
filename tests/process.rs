//! The `ark-gateway` binary as operators run it: `check`, `hash-token`,
//! `tasks`, a whole session with a canary key, and SIGKILL during creates.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use ark_gateway::mock_upstream::{MockOptions, MockUpstream};
use common::process::{GatewayProcess, BIN};
use common::*;
use tokio::net::TcpListener;

fn write_config(dir: &Path, base_url: &str, audit_stdout: bool) -> std::path::PathBuf {
    let mut text = config_text(base_url, dir, "", &default_tenants());
    if audit_stdout {
        text = text.replace("sink = \"file\"", "sink = \"stdout\"");
        text = text.replace(&format!("path = \"{}\"", dir.join("audit.jsonl").display()), "");
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `[log] format = "json"`: every diagnostic line is one JSON object, and a
/// line logged inside a request names its request id and trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_and_trace_ids() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the forward logs a warning inside the request.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut text = config_text(&format!("http://{gone}/api/v3"), dir.path(), "", &default_tenants());
    text.push_str("\n[log]\nformat = \"json\"\n");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY), ("RUST_LOG", "info")]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let auth = format!("Bearer {ALPHA}");
    let headers = [("Authorization", auth.as_str()), ("traceparent", traceparent.as_str())];
    let failed = request(gateway.addr, "POST", TASKS, &headers, CREATE_BODY.as_bytes()).await;
    assert_eq!(failed.status, 502);
    let request_id = failed.header("x-gateway-request-id").unwrap().to_string();
    gateway.signal("TERM");
    let (code, _, stderr) = gateway.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    let warning = lines
        .iter()
        .find(|l| l["message"] == "upstream request failed")
        .unwrap_or_else(|| panic!("no upstream warning:\n{stderr}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["kind"], "connect");
    assert_eq!(warning["request_id"], request_id.as_str());
    assert_eq!(warning["trace_id"], trace);
    // Lines outside any request have no ids.
    let ready = lines.iter().find(|l| l["message"] == "tenant listener ready").unwrap();
    assert!(ready.get("request_id").is_none());
}

#[test]
fn check_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "nowhere"
request_timeout = "soon"

[upstream]
base_url = "http://ark.example/api/v3"
api_key_env = "SURELY_NOT_SET_ARK_KEY"

[[tenant]]
name = "a"
token_sha256 = "abc"
operations = ["create", "fly"]
rate_limit = { per_second = 0 }

[[tenant]]
name = "a"
token_sha256 = "abc"
operations = ["get"]
task_ids = ["*", "ok-1", "bad/id"]
rate_limit = { per_second = 1, per_minute = 1 }
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen:",
        "server.request_timeout:",
        "upstream.base_url:",
        "upstream.api_key_env:",
        "tenant[0].token_sha256:",
        "tenant[0].operations:",
        "tenant[0].rate_limit.per_second:",
        "tenant[1].name:",
        "tenant[1].task_ids:",
        "tenant[1].rate_limit:",
    ] {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
    // An unknown key is refused by name.
    std::fs::write(&path, "[upstream]\nbase_url = \"https://x\"\napi_key = \"sk-inline\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api_key"), "{stderr}");
    assert!(!stderr.contains("sk-inline"), "the inline key was echoed: {stderr}");
    // The shipped demo config is valid.
    let out = Command::new(BIN)
        .args(["check", "--config", "config/demo.toml"])
        .env("ARK_GATEWAY_DEMO_KEY", "demo")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hash_token_prints_the_sha256_of_stdin() {
    let mut child = Command::new(BIN)
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"team-token-123\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sha256_hex("team-token-123")
    );
}

const CANARY: &str = "sk-CANARY-3f9a1c7e5b2d4a6c8e0f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_never_shows_the_key_anywhere() {
    let mut options = MockOptions::new(CANARY);
    options.queued_for = std::time::Duration::from_secs(3600);
    let mock = MockUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mock.base_url(), true);
    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", CANARY), ("RUST_LOG", "trace")]);
    let addr = gateway.addr;
    let call = |method: &'static str, target: String, token: Option<&'static str>, body: &'static str| async move {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("X-Client-Request-Id", "client-1")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        request(addr, method, &target, &headers, body.as_bytes()).await
    };
    let mut replies = Vec::new();
    let created = call("POST", TASKS.to_string(), Some(ALPHA), CREATE_BODY).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    replies.push(created);
    for (method, target, token, body) in [
        ("GET", format!("{TASKS}/{id}"), Some(ALPHA), ""),
        ("GET", format!("{TASKS}?page_size=3"), Some(ALPHA), ""),
        ("GET", format!("{TASKS}/{id}"), Some(BETA), ""),
        ("GET", format!("{TASKS}/{id}"), None, ""),
        ("GET", format!("{TASKS}/{id}"), Some("wrong-token"), ""),
        ("POST", TASKS.to_string(), Some(ALPHA), "{\"model\":\"model-z\"}"),
        ("GET", "/api/v3/other".to_string(), Some(ALPHA), ""),
        ("GET", format!("{TASKS}/cgt-static-alpha-1"), Some(ALPHA), ""),
        ("DELETE", format!("{TASKS}/{id}"), Some(ALPHA), ""),
        ("DELETE", format!("{TASKS}/{id}"), Some(ALPHA), ""),
    ] {
        replies.push(call(method, target, token, body).await);
    }
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 401, 401, 403, 404, 404, 200, 400]);
    let metrics = request(gateway.admin_addr.unwrap(), "GET", "/metrics", &[], b"").await;
    assert!(metrics.text().contains("ark_gateway_requests_total"));
    assert!(!metrics.text().contains(CANARY), "the key is in the metrics");
    let ready = request(gateway.admin_addr.unwrap(), "GET", "/readyz", &[], b"").await;
    assert!(!ready.text().contains(CANARY));
    gateway.signal("TERM");
    let (code, stdout, stderr) = gateway.wait();
    assert_eq!(code, Some(0), "SIGTERM drains and exits 0:\n{stderr}");

    // The key was used upstream (so this test can see it if it leaks)...
    assert!(mock
        .received()
        .iter()
        .all(|r| r.header("authorization") == Some(format!("Bearer {CANARY}").as_str())));
    // ...and appears in no response, audit record or log line at any level.
    assert!(
        stderr.lines().count() > 20,
        "trace logging produced too little to be a real check"
    );
    for reply in &replies {
        assert!(!reply.text().contains(CANARY));
        assert!(reply.headers.iter().all(|(_, v)| !v.contains(CANARY)));
    }
    assert!(!stdout.contains(CANARY), "the key is in the audit stream");
    assert!(!stderr.contains(CANARY), "the key is in the log");
    assert!(!stderr.contains("canary") && !stderr.contains("CANARY"));
    // Tenant tokens are not logged either.
    assert!(!stderr.contains(ALPHA) && !stdout.contains(ALPHA));
    // Every request has its audit record, flushed by the drain.
    assert_eq!(stdout.lines().count(), replies.len(), "audit:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_creates_loses_no_owned_id() {
    let mut options = MockOptions::new(UPSTREAM_KEY);
    options.queued_for = std::time::Duration::from_secs(3600);
    let mock = MockUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mock.base_url(), false);
    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    let addr = gateway.addr;

    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
    let enough_tx = Arc::new(Mutex::new(Some(enough_tx)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let received = received.clone();
        let enough_tx = enough_tx.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..200 {
                let auth = format!("Bearer {ALPHA}");
                let reply = match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => request(addr, "POST", TASKS, &[("Authorization", &auth)], CREATE_BODY.as_bytes()).await,
                    Err(_) => return,
                };
                if reply.status != 200 {
                    continue;
                }
                let mut ids = received.lock().unwrap();
                ids.push(reply.json()["id"].as_str().unwrap().to_string());
                if ids.len() >= 60 {
                    if let Some(tx) = enough_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
            }
        }));
    }
    enough_rx.await.unwrap();
    gateway.signal("KILL");
    let (code, _, _) = gateway.wait();
    assert_eq!(code, None, "killed by a signal");
    for client in clients {
        let _ = client.await; // in-flight requests fail with the gateway gone
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 60);

    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    for id in &received {
        let target = format!("{TASKS}/{id}");
        let reply = request(
            gateway.addr,
            "GET",
            &target,
            &[("Authorization", "Bearer token-alpha")],
            b"",
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "{id} was received by a client but is not owned after the crash: {}",
            reply.text()
        );
        let reply = request(
            gateway.addr,
            "GET",
            &target,
            &[("Authorization", "Bearer token-beta")],
            b"",
        )
        .await;
        assert_eq!(reply.status, 403);
    }
    gateway.signal("TERM");
    assert_eq!(gateway.wait().0, Some(0));

    // The admin CLI sees the same ownership, and can grant and revoke.
    let tasks = |args: &[&str]| {
        Command::new(BIN)
            .arg("tasks")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = tasks(&["list", "--tenant", "alpha"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(received.iter().all(|id| listed.contains(id.as_str())));

    // The counts after the crash: every owned (queued) task holds its slot
    // and its reservation, once; creates cut off mid-flight hold nothing.
    let owned = listed.lines().count() as u64;
    let out = Command::new(BIN)
        .args(["usage", "--format", "json", "--tenant", "alpha", "--config"])
        .arg(&config)
        .env("TEST_ARK_KEY", UPSTREAM_KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alpha = &report["tenants"][0];
    assert_eq!(alpha["active_tasks"], owned, "{report}");
    let reserve = ark_gateway::spend::reserve_tokens(&Default::default(), "model-a", CREATE_BODY.as_bytes());
    let daily = alpha["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == "daily_tokens")
        .unwrap();
    assert_eq!(daily["reserved"], owned * reserve, "{report}");
    assert_eq!(report["rows"][0]["created"], owned, "{report}");
    let out = tasks(&["grant", "--tenant", "beta", &received[0]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tasks(&["list", "--tenant", "beta"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = tasks(&["revoke", &received[1]]);
    assert!(out.status.success());
    let out = tasks(&["grant", "--tenant", "nobody", &received[2]]);
    assert!(!out.status.success(), "granting to an unknown tenant must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_cli_refuses_a_ledger_in_use() {
    let mock = MockUpstream::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions::new(UPSTREAM_KEY),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mock.base_url(), false);
    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    let out = Command::new(BIN)
        .args(["tasks", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a running gateway"));
    gateway.signal("TERM");
    assert_eq!(gateway.wait().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_upstream_serves_tls_with_h2_and_http1() {
    use std::io::BufRead;
    let pki = common::tls::pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("mock.pem"), dir.path().join("mock.key"));
    std::fs::write(&cert, &pki.server_cert).unwrap();
    std::fs::write(&key, &pki.server_key).unwrap();
    let mut mock = Command::new(BIN)
        .args([
            "mock-upstream",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "k",
            "--tls-cert",
        ])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(mock.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{line}");
    let addr: std::net::SocketAddr = url["https://".len()..].split('/').next().unwrap().parse().unwrap();
    for (offer, expected) in [
        (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(pki.client_config(None, offer)));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(expected));
    }
    let _ = mock.kill();
    let _ = mock.wait();
}
