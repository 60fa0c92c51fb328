//! The upstream reached through a real egress proxy (Debian's tinyproxy,
//! started by each test): `CONNECT` with TLS to the mock inside the tunnel,
//! credentials from a file, and each way the proxy can fail becoming a 502
//! that names the proxy and never reached the upstream.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A tinyproxy on 127.0.0.1, stopped on drop.
struct Tinyproxy {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Tinyproxy {
    /// tinyproxy needs a port in its config (0 is refused): a free one is
    /// taken from the kernel, and another tried if it was gone meanwhile.
    async fn start(dir: &Path, extra: &str) -> Self {
        for attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.join(format!("tinyproxy-{attempt}.log"));
            let conf = dir.join(format!("tinyproxy-{attempt}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nLogLevel Connect\nLogFile \"{}\"\n{extra}\n",
                    log.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tinyproxy is installed by the test command (scripts/test.sh)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            // Ready when it accepts; gone if it could not bind.
            for _ in 0..500 {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Self { child, addr, log };
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tinyproxy did not start");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS mock upstream (Ark's shape) and a gateway trusting its CA, with these
/// `[upstream]` lines.
async fn gateway_behind(proxy_lines: &str, ca_dir: &Path) -> TestEnv {
    let pki = common::tls::pki();
    let ca = ca_dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mut options = Options::default();
    options.mock.tls = Some(ark_gateway::mock_upstream::MockTls {
        cert_pem: pki.server_cert.clone(),
        key_pem: pki.server_key.clone(),
    });
    options.upstream_extra = format!("ca_file = \"{}\"\n{proxy_lines}", ca.display());
    TestEnv::start_with(options).await
}

async fn proxy_errors(env: &TestEnv) -> String {
    let text = request(env.admin_addr, "GET", "/metrics", &[], b"").await.text();
    text.lines()
        .find(|l| l.starts_with("ark_gateway_upstream_errors_total{kind=\"proxy\"}"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_tunnelled_through_the_proxy_with_tls_inside() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Tinyproxy::start(dir.path(), "").await;
    let mut env = gateway_behind(&format!("proxy = \"http://{}\"", proxy.addr), dir.path()).await;
    let id = env.create(ALPHA).await;
    let got = env.call("GET", &format!("{TASKS}/{id}"), Some(ALPHA), None).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // The upstream got the key; the proxy saw a tunnel to the upstream's
    // address and, TLS inside, never the key.
    let seen = env.upstream();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {UPSTREAM_KEY}")[..])));
    let log = proxy.log();
    let upstream = env.mock.base_url();
    let upstream = upstream.trim_start_matches("https://").trim_end_matches("/api/v3");
    assert!(log.contains(&format!("CONNECT {upstream}")), "tinyproxy log:\n{log}");
    assert!(!log.contains(UPSTREAM_KEY) && !log.contains(ALPHA));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_come_from_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Tinyproxy::start(dir.path(), "BasicAuth egress pw-canary-42").await;
    let credentials = dir.path().join("proxy-credentials");
    std::fs::write(&credentials, "egress:pw-canary-42\n").unwrap();

    // Without credentials: 407, a 502 naming the proxy, nothing reached the upstream.
    let mut env = gateway_behind(&format!("proxy = \"http://{}\"", proxy.addr), dir.path()).await;
    let refused = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.error_code(), "UpstreamUnavailable");
    let message = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&proxy.addr.to_string()) && message.contains("407"),
        "{message}"
    );
    assert_eq!(env.upstream_count(), 0);
    assert!(proxy_errors(&env).await.ends_with(" 1"), "{}", proxy_errors(&env).await);
    let audit = env.finish().await;
    assert_eq!(audit.last().unwrap().reason, "upstream_proxy_failed");

    let mut env = gateway_behind(
        &format!(
            "proxy = \"http://{}\"\nproxy_credentials_file = \"{}\"",
            proxy.addr,
            credentials.display()
        ),
        dir.path(),
    )
    .await;
    let id = env.create(ALPHA).await;
    assert!(!id.is_empty());
    // The proxy's password went to the proxy only: never to the upstream.
    let seen = env.upstream();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].headers.iter().all(|(_, v)| !v.contains("pw-canary")),
        "{:?}",
        seen[0].headers
    );
    let audit = env.finish().await;
    let written = std::fs::read_to_string(env.audit_path()).unwrap();
    assert!(!written.contains("pw-canary") && !written.contains("ZWdyZXNz"));
    assert_eq!(audit.last().unwrap().reason, "forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_the_port_or_is_down_is_a_502_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Only port 443 may be tunnelled to: the mock's port is refused.
    let proxy = Tinyproxy::start(dir.path(), "ConnectPort 443").await;
    let mut env = gateway_behind(&format!("proxy = \"http://{}\"", proxy.addr), dir.path()).await;
    let refused = env
        .call("GET", &format!("{TASKS}?page_num=1&page_size=10"), Some(ALPHA), None)
        .await;
    let created = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    for reply in [&refused, &created] {
        assert_eq!(reply.status, 502, "{}", reply.text());
        let message = reply.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(&proxy.addr.to_string()) && message.contains("refused the tunnel"),
            "{message}"
        );
        // Nothing was sent, so the SDK may retry.
        assert!(reply.header("x-should-retry").is_none());
    }
    assert_eq!(env.upstream_count(), 0);
    assert!(proxy.log().contains("CONNECT"));
    env.finish().await;

    // Nothing listens there.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut env = gateway_behind(&format!("proxy = \"http://{gone}\""), dir.path()).await;
    let down = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(down.status, 502);
    let message = down.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&gone.to_string()) && message.contains("cannot connect to the proxy"),
        "{message}"
    );
    assert!(proxy_errors(&env).await.ends_with(" 1"));
    assert_eq!(env.upstream_count(), 0);
    env.finish().await;
}
