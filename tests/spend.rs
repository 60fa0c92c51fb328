//! Spend governance end to end, over real TCP, against the mock upstream
//! (which a test drives with `POST /_mock/tasks/{id}`): active-task quotas,
//! budgets reserved then settled once, the reconciler, usage reports, the
//! admin token and callback hosts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// alpha: quota 3, a daily token budget; beta: no limits. model-a reserves 100,000 tokens.
fn governed_tenants(extra_alpha: &str) -> String {
    format!(
        r#"
[pricing]
currency = "CNY"
default_per_million_tokens = 5.0
[[pricing.model]]
model = "model-a"
per_million_tokens = 10.0
reserve_tokens = 100000

[[tenant]]
name = "alpha"
token_sha256 = "{alpha}"
operations = ["create", "get", "list", "delete"]
models = ["model-a", "model-b"]
rate_limit = {{ per_second = 1000, burst = 1000 }}
max_active_tasks = 3
{extra_alpha}

[[tenant]]
name = "beta"
token_sha256 = "{beta}"
operations = ["create", "get", "list", "delete"]
rate_limit = {{ per_second = 1000, burst = 1000 }}
"#,
        alpha = sha256_hex(ALPHA),
        beta = sha256_hex(BETA),
    )
}

const ADMIN_TOKEN: &str = "admin-token-for-tests";

async fn governed(extra_alpha: &str, upstream_extra: &str) -> TestEnv {
    let options = Options {
        tenants: governed_tenants(extra_alpha),
        upstream_extra: upstream_extra.to_string(),
        ..Options::default()
    };
    let mut env = TestEnv::start_with(options).await;
    // The admin token goes into the [admin] table the base config writes.
    let text = env.config_text.replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_sha256 = \"{}\"",
            sha256_hex(ADMIN_TOKEN)
        ),
        1,
    );
    env.config_text = text;
    env.restart_gateway().await;
    env
}

/// Makes the mock report `status` (and usage) for a task from now on.
async fn set_task(env: &TestEnv, id: &str, status: &str, tokens: Option<u64>) {
    let body = json!({"status": status, "total_tokens": tokens}).to_string();
    let reply = request(
        env.mock.addr(),
        "POST",
        &format!("/_mock/tasks/{id}"),
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "mock control: {}", reply.text());
}

async fn admin_metrics(env: &TestEnv) -> String {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let reply = request(env.admin_addr, "GET", "/metrics", &[("Authorization", &auth)], b"").await;
    assert_eq!(reply.status, 200);
    reply.text()
}

async fn admin_usage(env: &TestEnv, query: &str) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let reply = request(
        env.admin_addr,
        "GET",
        &format!("/usage?{query}"),
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "/usage: {}", reply.text());
    reply.json()
}

fn tenant_view<'a>(report: &'a Value, tenant: &str) -> &'a Value {
    report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == tenant)
        .unwrap_or_else(|| panic!("{tenant} in {report}"))
}

/// The first usage row of `tenant` in a report.
fn usage_row<'a>(report: &'a Value, tenant: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == tenant)
        .unwrap_or_else(|| panic!("a row of {tenant} in {report}"))
}

fn window<'a>(tenant: &'a Value, name: &str) -> &'a Value {
    tenant["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == name)
        .unwrap()
}

fn creates_upstream(env: &TestEnv) -> usize {
    env.upstream().iter().filter(|r| r.method == "POST").count()
}

async fn create_reply(env: &TestEnv, token: &str, body: &str) -> Reply {
    env.call("POST", TASKS, Some(token), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_against_a_quota_put_exactly_the_free_slots_upstream() {
    let env = governed("", "").await;
    let addr = env.addr;
    let mut calls = Vec::new();
    for _ in 0..12 {
        calls.push(tokio::spawn(async move {
            let auth = format!("Bearer {ALPHA}");
            request(
                addr,
                "POST",
                TASKS,
                &[("Authorization", &auth), ("Content-Type", "application/json")],
                CREATE_BODY.as_bytes(),
            )
            .await
        }));
    }
    let mut admitted = 0;
    for call in calls {
        let reply = call.await.unwrap();
        match reply.status {
            200 => admitted += 1,
            429 => {
                let error = &reply.json()["error"];
                assert_eq!(error["code"], "QuotaExceeded");
                assert_eq!(error["type"], "TooManyRequests");
                assert_eq!(error["param"], "max_active_tasks");
                assert_eq!(reply.header("x-should-retry"), Some("false"));
                assert!(reply.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    assert_eq!(admitted, 3, "exactly the quota is admitted");
    assert_eq!(creates_upstream(&env), 3, "refused creates never reach Ark");
    let report = admin_usage(&env, "").await;
    assert_eq!(tenant_view(&report, "alpha")["active_tasks"], 3);
    assert_eq!(tenant_view(&report, "alpha")["max_active_tasks"], 3);
    // Another tenant is not held back by alpha's quota.
    env.create(BETA).await;
}

#[tokio::test]
async fn a_slot_frees_on_cancel_on_a_finished_get_and_when_ark_refuses_the_create() {
    let env = governed("", "").await;
    let first = env.create(ALPHA).await;
    let second = env.create(ALPHA).await;
    // Ark refuses (no `content`): the slot is given back at once.
    let refused = create_reply(&env, ALPHA, r#"{"model":"model-a"}"#).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let third = env.create(ALPHA).await;
    assert_eq!(
        create_reply(&env, ALPHA, CREATE_BODY).await.status,
        429,
        "3 of 3 active"
    );
    // A cancel (DELETE of a queued task) frees its slot.
    assert_eq!(
        env.call("DELETE", &format!("{TASKS}/{first}"), Some(ALPHA), None)
            .await
            .status,
        200
    );
    let fourth = env.create(ALPHA).await;
    assert_eq!(create_reply(&env, ALPHA, CREATE_BODY).await.status, 429);
    // A get that sees the task finished frees its slot.
    set_task(&env, &second, "failed", None).await;
    assert_eq!(
        env.call("GET", &format!("{TASKS}/{second}"), Some(ALPHA), None)
            .await
            .status,
        200
    );
    env.create(ALPHA).await;
    let report = admin_usage(&env, "").await;
    assert_eq!(tenant_view(&report, "alpha")["active_tasks"], 3);
    let rows = report["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["tenant"] == "alpha" && r["model"] == "model-a")
        .unwrap();
    assert_eq!(
        (
            row["created"].as_u64(),
            row["cancelled"].as_u64(),
            row["failed"].as_u64()
        ),
        (Some(5), Some(1), Some(1))
    );
    let _ = (third, fourth);
}

#[tokio::test]
async fn a_budget_reserves_refuses_settles_once_and_admits_again() {
    let env = governed("budget = { daily_tokens = 250000 }", "").await;
    let first = env.create(ALPHA).await;
    env.create(ALPHA).await;
    // 200,000 reserved: one more 100,000 would pass 250,000.
    let refused = create_reply(&env, ALPHA, CREATE_BODY).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    let error = &refused.json()["error"];
    assert_eq!(
        (error["code"].as_str(), error["param"].as_str()),
        (Some("BudgetExceeded"), Some("budget.daily_tokens"))
    );
    assert_eq!(refused.header("x-should-retry"), Some("false"));
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=86_400).contains(&retry_after),
        "seconds until the day ends: {retry_after}"
    );
    assert_eq!(creates_upstream(&env), 2);
    // Ark reports 20,000 tokens: the reservation is replaced by them.
    set_task(&env, &first, "succeeded", Some(20_000)).await;
    let task = format!("{TASKS}/{first}");
    assert_eq!(env.call("GET", &task, Some(ALPHA), None).await.status, 200);
    // Seen again by a get and a list: counted once.
    assert_eq!(env.call("GET", &task, Some(ALPHA), None).await.status, 200);
    assert_eq!(env.call("GET", TASKS, Some(ALPHA), None).await.status, 200);
    let report = admin_usage(&env, "").await;
    let daily = window(tenant_view(&report, "alpha"), "daily_tokens");
    assert_eq!(
        (
            daily["limit"].as_u64(),
            daily["used"].as_u64(),
            daily["reserved"].as_u64()
        ),
        (Some(250_000), Some(20_000), Some(100_000))
    );
    let row = usage_row(&report, "alpha").clone();
    assert_eq!(
        (row["succeeded"].as_u64(), row["tokens"].as_u64()),
        (Some(1), Some(20_000))
    );
    assert!(
        (row["cost"].as_f64().unwrap() - 0.2).abs() < 1e-9,
        "20,000 tokens at 10 per million: {row}"
    );
    let metrics = admin_metrics(&env).await;
    for line in [
        "ark_gateway_tokens_total{tenant=\"alpha\",model=\"model-a\"} 20000",
        "ark_gateway_cost_total{tenant=\"alpha\",model=\"model-a\"} 0.2",
        "ark_gateway_quota_rejections_total{tenant=\"alpha\",reason=\"budget_exceeded\"} 1",
        "ark_gateway_budget_remaining{tenant=\"alpha\",window=\"daily_tokens\"} 130000",
        "ark_gateway_active_tasks{tenant=\"alpha\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    // 20,000 + 100,000 + 100,000 fits.
    env.create(ALPHA).await;
    // A delete of the finished task keeps its counts.
    assert_eq!(env.call("DELETE", &task, Some(ALPHA), None).await.status, 200);
    let after = admin_usage(&env, "").await;
    let row = usage_row(&after, "alpha");
    assert_eq!(
        (row["succeeded"].as_u64(), row["tokens"].as_u64()),
        (Some(1), Some(20_000))
    );
}

#[tokio::test]
async fn deleting_a_finished_task_first_learns_its_usage() {
    let env = governed("", "").await;
    let id = env.create(ALPHA).await;
    set_task(&env, &id, "succeeded", Some(33_000)).await;
    // The tenant never polled: the delete asks Ark first.
    assert_eq!(
        env.call("DELETE", &format!("{TASKS}/{id}"), Some(ALPHA), None)
            .await
            .status,
        200
    );
    let report = admin_usage(&env, "").await;
    let row = usage_row(&report, "alpha");
    assert_eq!(
        (row["succeeded"].as_u64(), row["tokens"].as_u64()),
        (Some(1), Some(33_000))
    );
    assert_eq!(tenant_view(&report, "alpha")["active_tasks"], 0);
}

#[tokio::test]
async fn the_reconciler_frees_a_slot_nobody_polls_within_its_request_budget() {
    let env = governed("", "[reconcile]\ninterval = \"50ms\"\nmax_requests_per_minute = 3\n").await;
    let id = env.create(ALPHA).await;
    set_task(&env, &id, "succeeded", Some(5_000)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = admin_usage(&env, "").await;
        if tenant_view(&report, "alpha")["active_tasks"] == 0 {
            let row = usage_row(&report, "alpha");
            assert_eq!(row["tokens"], 5_000);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reconciler never settled the task: {report}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Seen again by the tenant (get and list) after the reconciler settled it: counted once.
    assert_eq!(
        env.call("GET", &format!("{TASKS}/{id}"), Some(ALPHA), None)
            .await
            .status,
        200
    );
    assert_eq!(env.call("GET", TASKS, Some(ALPHA), None).await.status, 200);
    let report = admin_usage(&env, "").await;
    let row = usage_row(&report, "alpha");
    assert_eq!(
        (row["succeeded"].as_u64(), row["tokens"].as_u64()),
        (Some(1), Some(5_000))
    );
    let lists: Vec<_> = env
        .upstream()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path_and_query.contains("page_size=100&filter.task_ids"))
        .collect();
    assert!(!lists.is_empty());
    for list in &lists {
        assert!(
            list.path_and_query.contains("filter.task_ids="),
            "{}",
            list.path_and_query
        );
        assert!(list.path_and_query.contains("page_size=100"), "{}", list.path_and_query);
        let auth = list
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            auth,
            Some(format!("Bearer {UPSTREAM_KEY}").as_str()),
            "never a tenant's token"
        );
    }
    // Well inside a minute: at most its budget of calls.
    assert!(lists.len() <= 3, "{} list calls", lists.len());
    let metrics = admin_metrics(&env).await;
    assert!(
        metrics.contains("ark_gateway_reconcile_runs_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("ark_gateway_reconcile_lag_seconds"), "{metrics}");
}

#[tokio::test]
async fn usage_reports_agree_and_a_tenant_sees_only_its_own() {
    let mut env = governed("budget = { monthly_cost = 100.0 }", "").await;
    let a = env.create(ALPHA).await;
    set_task(&env, &a, "succeeded", Some(1_000_000)).await;
    env.call("GET", &format!("{TASKS}/{a}"), Some(ALPHA), None).await;
    let b = env.create(BETA).await;
    set_task(&env, &b, "succeeded", Some(2_000)).await;
    env.call("GET", &format!("{TASKS}/{b}"), Some(BETA), None).await;
    let admin = admin_usage(&env, "").await;
    let own = env.call("GET", "/gateway/v1/usage", Some(ALPHA), None).await;
    assert_eq!(own.status, 200, "{}", own.text());
    let own = own.json();
    let alpha_rows: Vec<&Value> = admin["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tenant"] == "alpha")
        .collect();
    assert_eq!(own["rows"].as_array().unwrap().iter().collect::<Vec<_>>(), alpha_rows);
    assert_eq!(own["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(own["tenants"][0], *tenant_view(&admin, "alpha"));
    let cost = window(&own["tenants"][0], "monthly_cost");
    assert_eq!(
        (cost["limit"].as_f64(), cost["used"].as_f64()),
        (Some(100.0), Some(10.0))
    );
    // beta sees its own row, never alpha's, and cannot ask for alpha's.
    let theirs = env.call("GET", "/gateway/v1/usage", Some(BETA), None).await.json();
    assert!(
        theirs["rows"].as_array().unwrap().iter().all(|r| r["tenant"] == "beta"),
        "{theirs}"
    );
    assert!(theirs.to_string().find("alpha").is_none(), "{theirs}");
    let prying = env
        .call("GET", "/gateway/v1/usage?tenant=alpha", Some(BETA), None)
        .await;
    assert_eq!(prying.status, 400);
    // CSV: a header line and the rows.
    let csv = env
        .call("GET", "/gateway/v1/usage?format=csv&group=month", Some(ALPHA), None)
        .await;
    let text = csv.text();
    assert!(
        text.starts_with("tenant,model,period,created,succeeded,failed,cancelled,expired,tokens,cost"),
        "{text}"
    );
    assert!(text.lines().nth(1).unwrap().starts_with("alpha,model-a,"), "{text}");
    // The usage path is never forwarded, and is audited as `usage`.
    assert!(env.upstream().iter().all(|r| !r.path_and_query.contains("usage")));
    let records = env.finish().await;
    let usage: Vec<_> = records
        .iter()
        .filter(|r| r.operation.as_deref() == Some("usage"))
        .collect();
    assert_eq!(usage.len(), 4, "every /gateway/v1/usage call is audited");
    assert!(usage.iter().all(|r| r.upstream_status.is_none()));
    assert_eq!(usage.iter().filter(|r| r.status == 400).count(), 1);
}

#[tokio::test]
async fn the_admin_listener_needs_its_token_except_for_probes() {
    let env = governed("", "").await;
    let get = |path: &'static str, auth: Option<String>| {
        let addr = env.admin_addr;
        async move {
            let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
            request(addr, "GET", path, &headers, b"").await
        }
    };
    assert_eq!(get("/healthz", None).await.status, 200);
    assert_ne!(get("/readyz", None).await.status, 401);
    for path in ["/usage", "/metrics"] {
        let reply = get(path, None).await;
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(reply.json()["error"]["code"], "AuthenticationError");
        assert_eq!(get(path, Some("Bearer wrong".into())).await.status, 401, "{path}");
        assert_eq!(
            get(path, Some(format!("Bearer {ADMIN_TOKEN}"))).await.status,
            200,
            "{path}"
        );
    }
    let metrics = get("/metrics", Some(format!("Bearer {ADMIN_TOKEN}"))).await.text();
    assert!(
        metrics.contains("ark_gateway_active_tasks{tenant=\"alpha\"}"),
        "{metrics}"
    );
    // Without an admin token configured: /metrics open, /usage refused with a reason.
    let plain = TestEnv::start().await;
    let usage = request(plain.admin_addr, "GET", "/usage", &[], b"").await;
    assert_eq!(usage.status, 403);
    assert!(usage.text().contains("admin.token_sha256"), "{}", usage.text());
    assert_eq!(request(plain.admin_addr, "GET", "/metrics", &[], b"").await.status, 200);
}

#[tokio::test]
async fn callback_urls_must_name_an_allowed_https_host() {
    let env = governed("callback_hosts = [\"hooks.alpha.example\", \"*.cb.example\"]", "").await;
    let body = |url: &str| {
        json!({"model": "model-a", "content": [{"type": "text", "text": "x"}], "callback_url": url}).to_string()
    };
    for bad in [
        "http://hooks.alpha.example/x",
        "https://evil.example/x",
        "https://u:p@hooks.alpha.example/",
        "https://cb.example/",
    ] {
        let reply = create_reply(&env, ALPHA, &body(bad)).await;
        assert_eq!(reply.status, 403, "{bad}");
        assert_eq!(reply.json()["error"]["param"], "callback_url");
    }
    assert_eq!(creates_upstream(&env), 0, "refused callbacks are never forwarded");
    assert_eq!(
        create_reply(&env, ALPHA, &body("https://hooks.alpha.example/ark"))
            .await
            .status,
        200
    );
    assert_eq!(
        create_reply(&env, ALPHA, &body("https://a.cb.example/ark"))
            .await
            .status,
        200
    );
    // beta has no list: its callback_url is forwarded as before.
    assert_eq!(
        create_reply(&env, BETA, &body("http://anything.example/")).await.status,
        200
    );
}

#[tokio::test]
async fn counts_survive_a_restart() {
    let mut env = governed("budget = { daily_tokens = 10000000 }", "").await;
    env.create(ALPHA).await;
    env.create(ALPHA).await;
    let before = admin_usage(&env, "").await;
    env.restart_gateway().await;
    let after = admin_usage(&env, "").await;
    assert_eq!(tenant_view(&after, "alpha"), tenant_view(&before, "alpha"));
    assert_eq!(tenant_view(&after, "alpha")["active_tasks"], 2);
    assert_eq!(
        window(tenant_view(&after, "alpha"), "daily_tokens")["reserved"],
        200_000
    );
}

#[tokio::test]
async fn a_replay_is_answered_before_the_quota_and_a_lowered_quota_applies_at_once() {
    let mut env = governed("", "").await;
    let auth = format!("Bearer {ALPHA}");
    let keyed = [("Authorization", auth.as_str()), ("Idempotency-Key", "replay-me")];
    let first = request(env.addr, "POST", TASKS, &keyed, CREATE_BODY.as_bytes()).await;
    assert_eq!(first.status, 200);
    env.create(ALPHA).await;
    env.create(ALPHA).await;
    assert_eq!(create_reply(&env, ALPHA, CREATE_BODY).await.status, 429, "3 of 3");
    // The same key creates nothing, so the full quota does not refuse it.
    let again = request(env.addr, "POST", TASKS, &keyed, CREATE_BODY.as_bytes()).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // A reload lowers beta's quota from none to 1: its next create past it is refused.
    env.create(BETA).await;
    let lowered = env
        .config_text
        .replacen("name = \"beta\"\n", "name = \"beta\"\nmax_active_tasks = 1\n", 1);
    env.write_config(lowered);
    env.gateway().reload().unwrap();
    let refused = create_reply(&env, BETA, CREATE_BODY).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.error_code(), "QuotaExceeded");
}
