//! The audit trail can be trusted: records survive SIGKILL once their response
//! was sent, the hash chain exposes changed, removed and reordered records
//! (across restarts and rotation), and a sink that cannot be written makes
//! mutating calls fail closed.

mod common;

use std::path::Path;
use std::process::Command;

use ark_gateway::mock_upstream::{MockOptions, MockUpstream};
use common::process::{GatewayProcess, BIN};
use common::*;
use tokio::net::TcpListener;

fn verify(files: &[&Path]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn requests(addr: std::net::SocketAddr, n: usize) {
    for i in 0..n {
        let token = if i % 3 == 0 {
            "Bearer token-beta"
        } else {
            "Bearer token-alpha"
        };
        let reply = request(addr, "GET", TASKS, &[("Authorization", token)], b"").await;
        assert_eq!(reply.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_sigkill_and_the_chain_continues_after_restart() {
    let mock = MockUpstream::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        MockOptions::new(UPSTREAM_KEY),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        config_text(&mock.base_url(), dir.path(), "", &default_tenants()),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");

    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    requests(gateway.addr, 25).await;
    gateway.signal("KILL");
    tokio::task::block_in_place(|| gateway.wait());
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        lines.lines().count(),
        25,
        "a record whose response was sent was lost to SIGKILL"
    );
    let (ok, report) = verify(&[&audit]);
    assert!(ok, "{report}");

    let gateway = GatewayProcess::spawn(&config, &[("TEST_ARK_KEY", UPSTREAM_KEY)]);
    requests(gateway.addr, 5).await;
    gateway.signal("TERM");
    assert_eq!(tokio::task::block_in_place(|| gateway.wait()).0, Some(0));
    let (ok, report) = verify(&[&audit]);
    assert!(ok && report.contains("30 records"), "{report}");
    let seqs: Vec<u64> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_first_changed_removed_or_reordered_record() {
    let mut env = TestEnv::start().await;
    requests(env.addr, 10).await;
    env.stop_gateway().await;
    let audit = env.audit_path();
    let original = std::fs::read_to_string(&audit).unwrap();
    assert!(verify(&[&audit]).0);
    let lines: Vec<&str> = original.lines().collect();
    let write = |lines: &[String]| std::fs::write(&audit, lines.join("\n") + "\n").unwrap();
    let mut owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();

    owned[4] = owned[4].replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
    write(&owned);
    let (ok, report) = verify(&[&audit]);
    assert!(!ok && report.contains(":5 (seq 5): record was changed"), "{report}");

    let mut removed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    removed.remove(6);
    write(&removed);
    let (ok, report) = verify(&[&audit]);
    assert!(!ok && report.contains(":7 (seq 8): records were removed"), "{report}");

    let mut reordered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    reordered.swap(2, 3);
    write(&reordered);
    let (ok, report) = verify(&[&audit]);
    assert!(!ok && report.contains(":3 (seq 4)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_chain() {
    let mut env = TestEnv::start().await;
    env.config_text = env
        .config_text
        .replace("sink = \"file\"", "sink = \"file\"\nrotate_bytes = 3000");
    env.restart_gateway().await;
    requests(env.addr, 30).await;
    env.stop_gateway().await;
    let mut files: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("audit.jsonl."))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "no rotation happened");
    files.push(env.audit_path());
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, report) = verify(&refs);
    assert!(ok && report.contains("30 records"), "{report}");
    // A later file alone still verifies, and says where it continues from.
    let (ok, report) = verify(&[refs[1]]);
    assert!(ok && report.contains("continues a chain"), "{report}");
    // Dropping a rotated file from the middle breaks the chain.
    if files.len() >= 3 {
        let gap: Vec<&Path> = refs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, p)| *p)
            .collect();
        assert!(!verify(&gap).0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_mutating_calls_closed_and_reads_by_policy() {
    for (on_failure, read_status) in [("deny", 503), ("allow", 200)] {
        let mut env = TestEnv::start().await;
        let audit = env.audit_path().display().to_string();
        env.config_text = env.config_text.replace(
            &format!("path = \"{audit}\""),
            &format!("path = \"/dev/full\"\non_failure = \"{on_failure}\""),
        );
        env.restart_gateway().await;
        // The first record cannot be written: the sink is now known broken.
        assert_eq!(env.call("GET", TASKS, Some(ALPHA), None).await.status, 200);
        let before = env.upstream_count();
        let create = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
        assert_eq!(create.status, 503, "{}", create.text());
        assert_eq!(create.error_code(), "ServiceUnavailable");
        let delete = env
            .call("DELETE", &format!("{TASKS}/cgt-static-alpha-1"), Some(ALPHA), None)
            .await;
        assert_eq!(delete.status, 503);
        assert_eq!(
            env.call("GET", TASKS, Some(ALPHA), None).await.status,
            read_status,
            "on_failure = {on_failure}"
        );
        let forwarded = env.upstream()[before..].iter().filter(|r| r.method != "GET").count();
        assert_eq!(forwarded, 0, "a mutating call went out unaudited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_audit_file_fails_mutating_calls_closed() {
    let env = TestEnv::start().await;
    let own = env.create(ALPHA).await;
    std::fs::remove_file(env.audit_path()).unwrap();
    let before = env.upstream_count();
    let delete = env.call("DELETE", &format!("{TASKS}/{own}"), Some(ALPHA), None).await;
    assert_eq!(delete.status, 503, "{}", delete.text());
    let create = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
    assert_eq!(create.status, 503);
    assert_eq!(
        env.upstream_count(),
        before,
        "a mutating call went out with no audit file"
    );
}
