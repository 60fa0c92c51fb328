//! Identity that scales: tokens found by digest (10,000 tenants load and
//! authenticate), several named tokens per tenant, expiry, and the token's
//! name (never the token) in the audit record.

mod common;

use common::*;

fn tenant(name: &str, tokens: &str) -> String {
    format!(
        "\n[[tenant]]\nname = \"{name}\"\noperations = [\"create\", \"get\", \"list\", \"delete\"]\nrate_limit = {{ per_second = 1000, burst = 1000 }}\n{tokens}\n"
    )
}

#[tokio::test]
async fn ten_thousand_tenants_load_and_the_last_one_authenticates() {
    let mut tenants = String::new();
    for n in 0..10_000 {
        tenants.push_str(&tenant(
            &format!("team-{n}"),
            &format!("token_sha256 = \"{}\"", sha256_hex(&format!("token-{n}"))),
        ));
    }
    let mut env = TestEnv::start_with(Options {
        tenants,
        ..Options::default()
    })
    .await;
    let id = env.create("token-9999").await;
    assert_eq!(
        env.call("GET", &format!("{TASKS}/{id}"), Some("token-9999"), None)
            .await
            .status,
        200
    );
    // Another team's token: its own tenant, not the owner.
    assert_eq!(
        env.call("GET", &format!("{TASKS}/{id}"), Some("token-0"), None)
            .await
            .status,
        403
    );
    assert_eq!(env.call("GET", TASKS, Some("token-10000"), None).await.status, 401);
    let records = env.finish().await;
    assert!(records.iter().any(|r| r.tenant.as_deref() == Some("team-9999")));
}

#[tokio::test]
async fn a_tenant_rotates_through_named_tokens_and_an_expired_one_is_refused() {
    let tokens = format!(
        "token_sha256 = \"{}\"\ntokens = [{{ sha256 = \"{}\", name = \"ci\", expires = \"2999-01-01T00:00:00Z\" }}, {{ sha256 = \"{}\", name = \"retired\", expires = \"2020-01-01T00:00:00+01:00\" }}]",
        sha256_hex("token-unnamed"),
        sha256_hex("token-ci"),
        sha256_hex("token-retired")
    );
    let mut env = TestEnv::start_with(Options {
        tenants: tenant("rotating", &tokens),
        ..Options::default()
    })
    .await;
    let id = env.create("token-unnamed").await;
    // Every live token of the tenant reaches the tenant's tasks.
    assert_eq!(
        env.call("GET", &format!("{TASKS}/{id}"), Some("token-ci"), None)
            .await
            .status,
        200
    );
    let expired = env
        .call("GET", &format!("{TASKS}/{id}"), Some("token-retired"), None)
        .await;
    assert_eq!(expired.status, 401);
    assert_eq!(expired.error_code(), "AuthenticationError");
    assert!(expired.text().contains("expired"), "{}", expired.text());
    let before = env.upstream_count();
    assert_eq!(env.call("GET", TASKS, Some("token-retired"), None).await.status, 401);
    assert_eq!(env.upstream_count(), before, "an expired token reaches nothing");
    let records = env.finish().await;
    let names: Vec<Option<&str>> = records.iter().map(|r| r.token_name.as_deref()).collect();
    assert_eq!(
        names,
        vec![None, Some("ci"), None, None],
        "the token's name, never the token"
    );
    assert_eq!(records[2].reason, "credential_expired");
    let audit = std::fs::read_to_string(env.audit_path()).unwrap();
    assert!(!audit.contains("token-ci") && !audit.contains("token-unnamed"));
}
