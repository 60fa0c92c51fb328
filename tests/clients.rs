//! Real HTTP/2 clients that tenants use, not hand-written frames: curl (HTTP/2
//! over TLS by ALPN, and plain-text HTTP/2 with prior knowledge) and Java's
//! built-in `java.net.http.HttpClient`. `scripts/test.sh` installs both.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::tls::pki;
use common::*;

/// Runs a command to its end off the runtime's threads; (exit ok, stdout, stderr).
async fn run(mut command: Command) -> (bool, String, String) {
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (scripts/test.sh installs it)"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `curl` with `args`, printing `<http_version> <status>` after the body.
fn curl(args: &[&str], token: &str) -> Command {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json"])
        .args(args);
    command
}

async fn curl_status(args: &[&str], token: &str) -> String {
    let (ok, out, err) = run(curl(args, token)).await;
    assert!(ok, "curl {args:?} failed: {err}");
    out
}

/// A TLS gateway; the CA's PEM file is in the returned directory.
async fn tls_gateway() -> (TestEnv, tempfile::TempDir, PathBuf) {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let env = TestEnv::start_with(Options {
        tenants: format!("{}{}", pki.server_tls_section(dir.path()), default_tenants()),
        ..Options::default()
    })
    .await;
    let ca = dir.path().join("ca.pem");
    (env, dir, ca)
}

fn large_body(dir: &Path) -> String {
    let path = dir.join("large.json");
    std::fs::write(&path, vec![b'x'; 3 * 1024 * 1024]).unwrap();
    format!("@{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_with_tls_and_with_prior_knowledge() {
    let (tls, dir, ca) = tls_gateway().await;
    let plain = TestEnv::start().await;
    let ca = ca.display().to_string();
    let large = large_body(dir.path());
    let secure = format!("https://localhost:{}{TASKS}", tls.addr.port());
    let clear = format!("http://{}{TASKS}", plain.addr);
    let over_tls = ["--http2", "--cacert", ca.as_str()];
    let prior = ["--http2-prior-knowledge"];
    for (flags, url) in [(&over_tls[..], &secure), (&prior[..], &clear)] {
        let with = |more: &[&str]| -> Vec<String> {
            flags
                .iter()
                .chain(more)
                .map(|s| s.to_string())
                .chain([url.clone()])
                .collect()
        };
        let args = with(&["-d", CREATE_BODY]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl_status(&args, ALPHA).await, "2 200", "create with {flags:?}");
        let args = with(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(curl_status(&args, BETA).await, "2 200", "list with {flags:?}");
        // An early refusal while curl is still uploading 3 MB: every one arrives.
        let args = with(&["--data-binary", &large]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for round in 0..10 {
            assert_eq!(
                curl_status(&args, "not-a-token").await,
                "2 401",
                "round {round} with {flags:?}"
            );
            assert_eq!(curl_status(&args, ALPHA).await, "2 413", "round {round} with {flags:?}");
        }
    }
    // Over TLS, curl offers h2 and falls back to HTTP/1.1 only when asked.
    let args = ["--http1.1", "--cacert", ca.as_str(), secure.as_str()];
    assert_eq!(curl_status(&args, ALPHA).await, "1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_http_client_negotiates_http2_and_gets_every_answer() {
    let (env, _dir, ca) = tls_gateway().await;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java/Http2Client.java");
    let mut command = Command::new("java");
    command
        .arg(source)
        .arg(format!("https://localhost:{}/api/v3", env.addr.port()))
        .arg(ca)
        .arg(ALPHA)
        .arg(BETA);
    let (ok, out, err) = run(command).await;
    assert!(ok && out.trim_end().ends_with("ok"), "java: {out}{err}");
    let creates = env.upstream().iter().filter(|r| r.method == "POST").count();
    assert_eq!(creates, 1, "only the one allowed create reached Ark");
}
