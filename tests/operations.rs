//! Operating the gateway as a sidecar: admin endpoints and metrics, hot
//! reload (under load, by SIGHUP and by file change), key rotation, drain on
//! SIGTERM, and inbound TLS / mTLS with certificates generated here.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ark_gateway::mock_upstream::{MockOptions, MockUpstream};
use common::process::GatewayProcess;
use common::tls::{pki, Pki};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn admin(env: &TestEnv, path: &str) -> Reply {
    request(env.admin_addr, "GET", path, &[], b"").await
}

/// One `[[tenant]]` block per tenant, so tests can add and remove tenants.
fn tenant_block(name: &str, token: &str, limit: &str) -> String {
    format!(
        "\n[[tenant]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\noperations = [\"create\", \"get\", \"list\", \"delete\"]\nrate_limit = {limit}\n",
        sha256_hex(token)
    )
}

fn without_tenant(tenants: &str, name: &str) -> String {
    tenants
        .split("\n[[tenant]]")
        .filter(|block| !block.contains(&format!("name = \"{name}\"")))
        .collect::<Vec<_>>()
        .join("\n[[tenant]]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_kind_of_request_and_hold_no_secret() {
    let env = TestEnv::start().await;
    let id = env.create(ALPHA).await;
    env.call("GET", &format!("{TASKS}/{id}"), Some(ALPHA), None).await;
    env.call("GET", &format!("{TASKS}/{id}"), Some(BETA), None).await; // 403
    env.call("GET", TASKS, Some("nobody"), None).await; // 401
    for _ in 0..3 {
        env.call("GET", TASKS, Some(LIMITED), None).await; // 200, 200, 429
    }
    let metrics = admin(&env, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for expected in [
        r#"ark_gateway_requests_total{tenant="alpha",operation="create",decision="allow",status="200"} 1"#,
        r#"ark_gateway_requests_total{tenant="alpha",operation="get",decision="allow",status="200"} 1"#,
        r#"ark_gateway_requests_total{tenant="beta",operation="get",decision="deny",status="403"} 1"#,
        r#"ark_gateway_requests_total{tenant="-",operation="none",decision="deny",status="401"} 1"#,
        r#"ark_gateway_requests_total{tenant="limited",operation="none",decision="deny",status="429"} 1"#,
        r#"ark_gateway_rate_limited_total{tenant="limited"} 1"#,
        r#"ark_gateway_ledger_tasks 1"#,
        r#"ark_gateway_upstream_in_flight 0"#,
        r#"ark_gateway_build_info{version=""#,
        r#"ark_gateway_request_duration_seconds_count{operation="create"} 1"#,
        r#"ark_gateway_upstream_duration_seconds_count{operation="get"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
    for secret in [UPSTREAM_KEY, ALPHA, BETA, LIMITED, id.as_str()] {
        assert!(!text.contains(secret), "{secret} appears in the metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let env = TestEnv::start().await;
    assert_eq!(admin(&env, "/healthz").await.status, 200);
    // A request that reached the upstream proves it reachable.
    env.call("GET", TASKS, Some(ALPHA), None).await;
    let ready = admin(&env, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["checks"]["ledger"], true);
    env.gateway().health().start_draining();
    let draining = admin(&env, "/readyz").await;
    assert_eq!(draining.status, 503);
    assert_eq!(draining.json()["checks"]["not_draining"], false);
    assert_eq!(admin(&env, "/nothing").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_applies_good_configs_and_rejects_bad_ones() {
    let mut env = TestEnv::start().await;
    let own = env.create(ALPHA).await;
    let base = env.config_text.split("\n[[tenant]]").next().unwrap().to_string();
    let tenants = default_tenants();

    // Clients that must never fail while the config changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (stop, failures, successes, addr, own) =
            (stop.clone(), failures.clone(), successes.clone(), env.addr, own.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = request(
                    addr,
                    "GET",
                    &format!("{TASKS}/{own}"),
                    &[("Authorization", "Bearer token-alpha")],
                    b"",
                )
                .await;
                if reply.status == 200 {
                    successes.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // 1. A tenant is added.
    let epsilon = tenant_block("epsilon", "token-epsilon", "{ per_second = 100 }");
    assert_eq!(env.call("GET", TASKS, Some("token-epsilon"), None).await.status, 401);
    env.write_config(format!("{base}{tenants}{epsilon}"));
    env.gateway().reload().unwrap();
    assert_eq!(env.call("GET", TASKS, Some("token-epsilon"), None).await.status, 200);

    // 2. A tenant is removed.
    env.write_config(format!("{base}{}{epsilon}", without_tenant(&tenants, "beta")));
    env.gateway().reload().unwrap();
    assert_eq!(env.call("GET", TASKS, Some(BETA), None).await.status, 401);

    // 3. A limiter survives a reload that keeps its limit, and is replaced when it changes.
    for _ in 0..2 {
        assert_eq!(env.call("GET", TASKS, Some(LIMITED), None).await.status, 200);
    }
    assert_eq!(env.call("GET", TASKS, Some(LIMITED), None).await.status, 429);
    env.gateway().reload().unwrap();
    assert_eq!(
        env.call("GET", TASKS, Some(LIMITED), None).await.status,
        429,
        "the reload refilled an unchanged bucket"
    );
    let raised = env
        .config_text
        .replace("{ per_minute = 1, burst = 2 }", "{ per_minute = 1, burst = 5 }");
    env.write_config(raised);
    env.gateway().reload().unwrap();
    assert_eq!(
        env.call("GET", TASKS, Some(LIMITED), None).await.status,
        200,
        "the new limit is in force"
    );

    // 4. An invalid file is rejected, with check's messages; the old config keeps serving.
    let good = env.config_text.clone();
    env.write_config(format!(
        "{good}\n[[tenant]]\nname = \"broken\"\ntoken_sha256 = \"xyz\"\n"
    ));
    let err = env.gateway().reload().unwrap_err();
    assert!(err.mentions("tenant[4].token_sha256"), "{err}");
    assert_eq!(env.call("GET", TASKS, Some("token-epsilon"), None).await.status, 200);
    assert_eq!(env.call("GET", TASKS, Some(BETA), None).await.status, 401);

    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests that should have succeeded failed during reloads"
    );
    assert!(successes.load(Ordering::Relaxed) > 0);
    let metrics = admin(&env, "/metrics").await.text();
    assert!(
        metrics.contains(r#"ark_gateway_config_reloads_total{result="ok"} 4"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ark_gateway_config_reloads_total{result="failed"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_file_is_picked_up_by_reload() {
    let mut env = TestEnv::start().await;
    let key_file = env.dir.path().join("ark-key");
    std::fs::write(&key_file, format!("{UPSTREAM_KEY}\n")).unwrap();
    let text = env.config_text.replace(
        "api_key_env = \"TEST_ARK_KEY\"",
        &format!("api_key_file = \"{}\"", key_file.display()),
    );
    env.config_text = text;
    env.restart_gateway().await;
    assert_eq!(env.call("GET", TASKS, Some(ALPHA), None).await.status, 200);

    std::fs::write(&key_file, "sk-rotated-key-0002\n").unwrap();
    env.gateway().reload().unwrap();
    let reply = env.call("GET", TASKS, Some(ALPHA), None).await;
    // The mock still expects the old key, so Ark's own 401 passes through...
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), "AuthenticationError");
    // ...and what it received was the whole new key.
    let last = env.upstream().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer sk-rotated-key-0002"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_changed_on_disk_is_picked_up_without_a_signal() {
    let mock = MockUpstream::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions::new(UPSTREAM_KEY),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("ark-key");
    std::fs::write(&key_file, format!("{UPSTREAM_KEY}\n")).unwrap();
    let config = dir.path().join("gateway.toml");
    let text = config_text(&mock.base_url(), dir.path(), "", &default_tenants()).replace(
        "api_key_env = \"TEST_ARK_KEY\"",
        &format!("api_key_file = \"{}\"", key_file.display()),
    );
    std::fs::write(&config, text).unwrap();
    let mut gateway = GatewayProcess::spawn(&config, &[]);
    let alpha = [("Authorization", "Bearer token-alpha")];
    assert_eq!(request(gateway.addr, "GET", TASKS, &alpha, b"").await.status, 200);

    // Only the key file changes; the watcher notices its content.
    std::fs::write(&key_file, "sk-rotated-key-0002\n").unwrap();
    tokio::task::block_in_place(|| gateway.wait_for_log("config reloaded"));
    // The mock still expects the old key: Ark's own 401 passes through, and
    // what it received was the new key.
    assert_eq!(request(gateway.addr, "GET", TASKS, &alpha, b"").await.status, 401);
    let last = mock.received().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer sk-rotated-key-0002"));
    gateway.signal("TERM");
    assert_eq!(tokio::task::block_in_place(|| gateway.wait()).0, Some(0));
}

fn write_process_config(dir: &Path, base_url: &str, tenants: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config_text(base_url, dir, "", tenants)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut options = MockOptions::new(UPSTREAM_KEY);
    options.delay = Duration::from_millis(1500);
    let mock = MockUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_process_config(dir.path(), &mock.base_url(), &default_tenants());
    let mut gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    let addr = gateway.addr;
    let admin_addr = gateway.admin_addr.unwrap();

    let slow: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(
                async move { request(addr, "GET", TASKS, &[("Authorization", "Bearer token-alpha")], b"").await },
            )
        })
        .collect();
    mock.wait_for_requests(5).await;
    gateway.signal("TERM");
    tokio::task::block_in_place(|| gateway.wait_for_log("draining"));

    // New connections are refused. (A connect can still succeed by accident on
    // loopback: the port re-bound by a parallel test, or a TCP self-connect;
    // what matters is that the gateway answers nothing on it.)
    if let Ok(mut late) = TcpStream::connect(addr).await {
        let raw =
            format!("GET {TASKS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALPHA}\r\nConnection: close\r\n\r\n");
        let _ = late.write_all(raw.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), late.read_to_end(&mut answer)).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "a new connection was served while draining"
        );
    }
    let ready = request(admin_addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503, "not ready while draining");
    for reply in slow {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status, 200, "an in-flight request was cut: {}", reply.text());
    }
    let (code, _, stderr) = tokio::task::block_in_place(|| gateway.wait());
    assert_eq!(code, Some(0), "{stderr}");
    let audit = read_audit(&dir.path().join("audit.jsonl"));
    assert_eq!(audit.len(), 5, "every drained request is audited");
    assert!(audit.iter().all(|r| r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_the_running_process() {
    let mock = MockUpstream::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions::new(UPSTREAM_KEY),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tenants = default_tenants();
    let config = write_process_config(dir.path(), &mock.base_url(), &tenants);
    let mut gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    let epsilon = |addr| async move {
        request(addr, "GET", TASKS, &[("Authorization", "Bearer token-epsilon")], b"")
            .await
            .status
    };
    assert_eq!(epsilon(gateway.addr).await, 401);

    // SIGHUP.
    let added = format!(
        "{tenants}{}",
        tenant_block("epsilon", "token-epsilon", "{ per_second = 100 }")
    );
    std::fs::write(&config, config_text(&mock.base_url(), dir.path(), "", &added)).unwrap();
    gateway.signal("HUP");
    tokio::task::block_in_place(|| gateway.wait_for_log("config reloaded"));
    assert_eq!(epsilon(gateway.addr).await, 200);

    // A change on disk, with no signal. (Writing the file before the SIGHUP
    // above may also have woken the watcher, so one more "reloaded" line
    // can be stale: wait for reloads until the new rule shows, at most three.)
    std::fs::write(&config, config_text(&mock.base_url(), dir.path(), "", &tenants)).unwrap();
    let mut status = 0;
    for _ in 0..3 {
        tokio::task::block_in_place(|| gateway.wait_for_log("config reloaded"));
        status = epsilon(gateway.addr).await;
        if status == 401 {
            break;
        }
    }
    assert_eq!(status, 401, "the change on disk was not applied");

    // A broken file on disk: rejected, the old config serves on.
    std::fs::write(&config, "this is not toml [").unwrap();
    tokio::task::block_in_place(|| gateway.wait_for_log("config reload rejected"));
    let alpha = request(
        gateway.addr,
        "GET",
        TASKS,
        &[("Authorization", "Bearer token-alpha")],
        b"",
    )
    .await;
    assert_eq!(alpha.status, 200);
    gateway.signal("TERM");
    assert_eq!(tokio::task::block_in_place(|| gateway.wait()).0, Some(0));
}

/// One HTTP/1.1 request over TLS; `None` when the TLS session cannot be set up.
/// The server certificate, its key and the CA, written into `dir`.
fn write_pki(pki: &Pki, dir: &std::path::Path) -> (String, String, String) {
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    (
        file("server.pem", &pki.server_cert),
        file("server.key", &pki.server_key),
        file("ca.pem", &pki.ca_pem),
    )
}

async fn tls_request(
    addr: std::net::SocketAddr,
    pki: &Pki,
    client: Option<&(String, String)>,
    token: Option<&str>,
) -> Option<Reply> {
    use rustls_pki_types::ServerName;
    let config = pki.client_config(client, &[]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!("GET {TASKS} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
    tls.write_all(raw.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    (!buf.is_empty()).then(|| parse_reply(&buf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_identify_tenants() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = write_pki(&pki, dir.path());

    // TLS only: tokens identify tenants.
    let tls_only = format!(
        "\n[server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n{}",
        default_tenants()
    );
    let env = TestEnv::start_with(Options {
        tenants: tls_only,
        ..Options::default()
    })
    .await;
    let reply = tls_request(env.addr, &pki, None, Some(ALPHA)).await.expect("TLS works");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut plain = TcpStream::connect(env.addr).await.unwrap();
    plain
        .write_all(format!("GET {TASKS} HTTP/1.1\r\nAuthorization: Bearer {ALPHA}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP must not be served on a TLS listener"
    );
    drop(env);

    // Mutual TLS: a client certificate may identify the tenant instead of a token.
    let certified = "\n[[tenant]]\nname = \"certified\"\nclient_cert_san = \"svc-a.tenants.internal\"\noperations = [\"list\"]\nrate_limit = { per_second = 100 }\n";
    let mtls = format!(
        "\n[server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n{}{certified}",
        default_tenants()
    );
    let mut env = TestEnv::start_with(Options {
        tenants: mtls,
        ..Options::default()
    })
    .await;
    let by_cert = tls_request(env.addr, &pki, Some(&pki.client_a), None).await.unwrap();
    assert_eq!(by_cert.status, 200, "{}", by_cert.text());
    let conflict = tls_request(env.addr, &pki, Some(&pki.client_a), Some(BETA))
        .await
        .unwrap();
    assert_eq!(conflict.status, 401, "a certificate and a token of different tenants");
    let by_token = tls_request(env.addr, &pki, Some(&pki.client_other), Some(ALPHA))
        .await
        .unwrap();
    assert_eq!(by_token.status, 200, "an unnamed certificate still allows a token");
    let nobody = tls_request(env.addr, &pki, Some(&pki.client_other), None)
        .await
        .unwrap();
    assert_eq!(nobody.status, 401);
    assert!(
        tls_request(env.addr, &pki, None, Some(ALPHA)).await.is_none(),
        "a client without a certificate must not get through mTLS"
    );
    let audit = env.finish().await;
    assert!(audit
        .iter()
        .any(|r| r.tenant.as_deref() == Some("certified") && r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_finds_its_tenant_among_thousands_by_san() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = write_pki(&pki, dir.path());
    let mut tenants = format!("\n[server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n");
    for n in 0..2_000 {
        tenants.push_str(&format!(
            "\n[[tenant]]\nname = \"svc-{n}\"\nclient_cert_san = \"svc-{n}.tenants.internal\"\noperations = [\"list\"]\nrate_limit = {{ per_second = 100 }}\n"
        ));
    }
    // The certificate's name, written with other case: names compare without case.
    tenants.push_str("\n[[tenant]]\nname = \"last\"\nclient_cert_san = \"SVC-A.Tenants.Internal\"\noperations = [\"list\"]\nrate_limit = { per_second = 100 }\n");
    let mut env = TestEnv::start_with(Options {
        tenants,
        ..Options::default()
    })
    .await;
    let by_cert = tls_request(env.addr, &pki, Some(&pki.client_a), None).await.unwrap();
    assert_eq!(by_cert.status, 200, "{}", by_cert.text());
    let unknown = tls_request(env.addr, &pki, Some(&pki.client_other), None)
        .await
        .unwrap();
    assert_eq!(unknown.status, 401, "a certificate no tenant names");
    let audit = env.finish().await;
    assert_eq!(audit[0].tenant.as_deref(), Some("last"));
}
