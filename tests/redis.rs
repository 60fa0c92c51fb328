//! Several replicas on one Redis: shared rate limits, shared ownership, and
//! fail-closed behaviour through a Redis outage. Each test starts its own
//! `redis-server` on a unix socket in a temporary directory (no ports).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ark_gateway::audit::AuditSink;
use ark_gateway::gateway::{open_ledger, start_with, GatewayParts, RunningGateway};
use ark_gateway::metrics::Metrics;
use ark_gateway::mock_upstream::{MockOptions, MockUpstream};
use common::*;
use tokio::net::TcpListener;

struct RedisServer {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl RedisServer {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed by the test command");
        let server = Self {
            child,
            socket,
            dir: dir.to_path_buf(),
        };
        server.wait_until_ready();
        server
    }

    /// Waits (bounded) until the server answers PING on its socket.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come up");
    }

    /// How many times the server ran `command` (INFO commandstats).
    fn calls(&self, command: &str) -> u64 {
        let needle = format!("cmdstat_{command}:calls=");
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|line| line.strip_prefix(needle.as_str()))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// One redis-cli command's output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The one key matching `pattern`.
    fn key_like(&self, pattern: &str) -> String {
        let keys = self.cli(&["--scan", "--pattern", pattern]);
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 1, "one key matches {pattern}: {keys:?}");
        keys[0].to_string()
    }

    /// The time to live of the one key matching `pattern`, in ms (-1: none).
    fn ttl_ms_of(&self, pattern: &str) -> i64 {
        self.cli(&["PTTL", &self.key_like(pattern)]).parse().unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }

    fn restart(&mut self) {
        self.kill();
        *self = RedisServer::start(&self.dir.clone());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Replica {
    gateway: Option<RunningGateway>,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn tenants() -> String {
    format!(
        "{}\n[[tenant]]\nname = \"twenty\"\ntoken_sha256 = \"{}\"\noperations = [\"list\"]\nrate_limit = {{ per_second = 20, burst = 1 }}\n",
        default_tenants(),
        sha256_hex("token-twenty")
    )
}

async fn replica(base_url: &str, redis_url: &str) -> Replica {
    replica_with(base_url, redis_url, "", &tenants()).await
}

async fn replica_with(base_url: &str, redis_url: &str, upstream_extra: &str, tenants: &str) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        base_url,
        dir.path(),
        upstream_extra,
        &format!("\n[rate_limit]\nbackend = \"redis\"\n{tenants}"),
    );
    let store = format!("path = \"{}\"", dir.path().join("ledger.redb").display());
    let text = text.replace(
        &store,
        &format!("backend = \"redis\"\nurl = \"{redis_url}\"\nkey_prefix = \"t:\""),
    );
    let config = parse_config(&text);
    let metrics = Arc::new(Metrics::new());
    let (ledger, store_redis) = open_ledger(&config, &metrics).unwrap();
    let gateway = start_with(GatewayParts {
        audit: AuditSink::start(&config.audit).unwrap(),
        config,
        listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin_listener: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        ledger,
        metrics,
        store_redis,
        config_path: None,
        env: Arc::new(test_env),
    })
    .unwrap();
    Replica {
        addr: gateway.addr(),
        admin: gateway.admin_addr().unwrap(),
        gateway: Some(gateway),
        _dir: dir,
    }
}

async fn mock() -> MockUpstream {
    let mut options = MockOptions::new(UPSTREAM_KEY);
    options.queued_for = Duration::from_secs(3600);
    options.record = false;
    MockUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap()
}

async fn call(addr: std::net::SocketAddr, method: &str, target: &str, token: &str, body: &str) -> Reply {
    let auth = format!("Bearer {token}");
    request(
        addr,
        method,
        target,
        &[("Authorization", auth.as_str())],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mock = mock().await;
    let replicas = [
        replica(&mock.base_url(), &redis.url()).await,
        replica(&mock.base_url(), &redis.url()).await,
        replica(&mock.base_url(), &redis.url()).await,
    ];
    let allowed = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut clients = Vec::new();
    for r in &replicas {
        for _ in 0..3 {
            let (addr, allowed, refused) = (r.addr, allowed.clone(), refused.clone());
            clients.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    match call(addr, "GET", TASKS, "token-twenty", "").await.status {
                        200 => allowed.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected status {other}"),
                    };
                }
            }));
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    let allowed = allowed.load(Ordering::Relaxed);
    assert!(
        refused.load(Ordering::Relaxed) > allowed,
        "the clients did not push past the limit"
    );
    // 20/s for 10 s across all three, plus the burst of 1: 201, within 10%.
    assert!(
        (180..=220).contains(&allowed),
        "{allowed} allowed in 10 s at 20/s over three replicas"
    );
    // The buckets stay out of the append-only file: no fsync per check.
    let mut aof = Vec::new();
    for file in std::fs::read_dir(dir.path().join("appendonlydir")).unwrap() {
        aof.extend(std::fs::read(file.unwrap().path()).unwrap());
    }
    let aof = String::from_utf8_lossy(&aof);
    assert!(!aof.contains("rl:tenant:"), "a rate-limit bucket reached the AOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_on_one_replica_is_owned_on_all() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mock = mock().await;
    let r1 = replica(&mock.base_url(), &redis.url()).await;
    let r2 = replica(&mock.base_url(), &redis.url()).await;
    let r3 = replica(&mock.base_url(), &redis.url()).await;
    let created = call(r1.addr, "POST", TASKS, ALPHA, CREATE_BODY).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let listed = call(r3.addr, "GET", TASKS, ALPHA, "").await.json();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert_eq!(
        call(r3.addr, "GET", &format!("{TASKS}/{id}"), ALPHA, "").await.status,
        200
    );
    for r in [&r1, &r2, &r3] {
        assert_eq!(
            call(r.addr, "GET", &format!("{TASKS}/{id}"), BETA, "").await.status,
            403
        );
        assert_eq!(
            call(r.addr, "DELETE", &format!("{TASKS}/{id}"), BETA, "").await.status,
            403
        );
        assert_eq!(call(r.addr, "GET", TASKS, BETA, "").await.json()["total"], 0);
    }
    assert_eq!(
        call(r3.addr, "DELETE", &format!("{TASKS}/{id}"), ALPHA, "")
            .await
            .status,
        200
    );
    // An Idempotency-Key is shared too: a retry on another replica does not create again.
    let auth = format!("Bearer {ALPHA}");
    let headers = [("Authorization", auth.as_str()), ("Idempotency-Key", "across-replicas")];
    let first = request(r1.addr, "POST", TASKS, &headers, CREATE_BODY.as_bytes()).await;
    let again = request(r2.addr, "POST", TASKS, &headers, CREATE_BODY.as_bytes()).await;
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_and_service_resumes_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let mock = mock().await;
    let mut r = replica(&mock.base_url(), &redis.url()).await;
    let created = call(r.addr, "POST", TASKS, ALPHA, CREATE_BODY).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    let own = format!("{TASKS}/{id}");

    redis.kill();
    for _ in 0..3 {
        for (method, target, body) in [
            ("GET", own.as_str(), ""),
            ("GET", TASKS, ""),
            ("POST", TASKS, CREATE_BODY),
        ] {
            let reply = call(r.addr, method, target, ALPHA, body).await;
            assert_eq!(reply.status, 503, "{method} {target}: {}", reply.text());
            assert_eq!(reply.error_code(), "ServiceUnavailable");
        }
    }
    let ready = request(r.admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503);
    let metrics = request(r.admin, "GET", "/metrics", &[], b"").await.text();
    assert!(
        metrics.contains("ark_gateway_redis_outages_total 1\n"),
        "one outage, counted once:\n{metrics}"
    );
    assert!(metrics.contains("ark_gateway_redis_up 0"));

    redis.restart();
    // The connection manager reconnects in the background; wait (bounded) for readiness.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if request(r.admin, "GET", "/readyz", &[], b"").await.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not recover after redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = call(r.addr, "GET", &own, ALPHA, "").await;
    assert_eq!(
        reply.status,
        200,
        "ownership from before the outage was lost: {}",
        reply.text()
    );
    assert_eq!(call(r.addr, "GET", &own, BETA, "").await.status, 403);
    r.gateway.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_outcomes_in_the_redis_ledger() {
    use ark_gateway::backend::redis::Redis;
    use ark_gateway::config::RedisUrl;
    use ark_gateway::ledger::now_ms;
    use ark_gateway::ledger::{
        BeginOutcome, CreateFate, CreateIntent, Ledger, RedisLedger, TaskRecord, TaskSource, TaskState,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let redis = Redis::connect(&RedisUrl::parse(&server.url()).unwrap(), "l:", Arc::new(Metrics::new())).unwrap();
    let ledger = RedisLedger::new(redis, Duration::from_secs(3600));
    let intent = |id: &str, key: &str| CreateIntent {
        intent_id: id.into(),
        tenant: "alpha".into(),
        idempotency_key: Some(key.into()),
        at_ms: now_ms(),
        admission: None,
    };
    // In flight, then an unknown outcome: the key stays blocked.
    assert_eq!(
        ledger.begin_create(intent("r1", "k")).await.unwrap(),
        BeginOutcome::Begun
    );
    assert_eq!(
        ledger.begin_create(intent("r2", "k")).await.unwrap(),
        BeginOutcome::Conflict
    );
    ledger
        .abandon_create(intent("r1", "k"), CreateFate::Unknown)
        .await
        .unwrap();
    assert_eq!(
        ledger.begin_create(intent("r3", "k")).await.unwrap(),
        BeginOutcome::Conflict
    );
    // A failed create frees its key.
    assert_eq!(
        ledger.begin_create(intent("r4", "k2")).await.unwrap(),
        BeginOutcome::Begun
    );
    ledger
        .abandon_create(intent("r4", "k2"), CreateFate::Failed)
        .await
        .unwrap();
    assert_eq!(
        ledger.begin_create(intent("r5", "k2")).await.unwrap(),
        BeginOutcome::Begun
    );
    // A completed create replays its task, and the record is owned.
    let record = TaskRecord {
        task_id: "cgt-r5".into(),
        tenant: "alpha".into(),
        model: Some("m".into()),
        created_ms: now_ms(),
        client_request_id: None,
        state: TaskState::Active,
        source: TaskSource::Created,
        spend: Default::default(),
    };
    ledger.complete_create(intent("r5", "k2"), record).await.unwrap();
    assert_eq!(
        ledger.begin_create(intent("r6", "k2")).await.unwrap(),
        BeginOutcome::Replay {
            task_id: "cgt-r5".into()
        }
    );
    assert_eq!(ledger.owner_of("cgt-r5").await.unwrap().unwrap().tenant, "alpha");
    assert_eq!(ledger.owned_tasks("alpha", 0).await.unwrap().len(), 1);
}

/// Usage counts live for `store.usage_retention`, not for the task records'
/// retention: a tenant's spend must still be reportable after its tasks are
/// gone. Both the count of a create and the settlement that adds its tokens
/// leave the day's usage key with the usage TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_live_for_the_usage_retention_not_the_task_retention() {
    use ark_gateway::ledger::{CreateIntent, Ledger, TaskRecord, TaskSource, TaskState};
    use ark_gateway::spend::{ArkStatus, Observation};
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let usage_retention = Duration::from_secs(400 * 24 * 3600);
    let ledger = redis_ledger(&server, "u:").with_usage_retention(usage_retention);
    let at = ark_gateway::ledger::now_ms();
    let intent = CreateIntent {
        intent_id: "r1".into(),
        tenant: "alpha".into(),
        idempotency_key: None,
        at_ms: at,
        admission: None,
    };
    let record = TaskRecord {
        task_id: "cgt-usage".into(),
        tenant: "alpha".into(),
        model: Some("m".into()),
        created_ms: at,
        client_request_id: None,
        state: TaskState::Active,
        source: TaskSource::Created,
        spend: Default::default(),
    };
    ledger.begin_create(intent.clone()).await.unwrap();
    ledger.complete_create(intent, record).await.unwrap();
    let usage = "u:usage:alpha:*";
    let within = |ttl: i64| {
        let want = usage_retention.as_millis() as i64;
        ttl > want - 60_000 && ttl <= want
    };
    let created = server.ttl_ms_of(usage);
    assert!(within(created), "after the create: {created} ms");
    let record_ttl = server.ttl_ms_of("u:task:cgt-usage");
    assert!(
        (1..=3_600_000).contains(&record_ttl),
        "the record keeps the task retention: {record_ttl} ms"
    );

    let seen = Observation::Seen {
        status: ArkStatus::Succeeded,
        tokens: Some(1_000),
        updated_at: None,
    };
    assert!(
        ledger.observe("cgt-usage", seen).await.unwrap().is_some(),
        "the task settles"
    );
    let settled = server.ttl_ms_of(usage);
    assert!(within(settled), "after the settlement: {settled} ms");
    let tokens = server.cli(&["HGET", &server.key_like(usage), "m|tokens"]);
    assert_eq!(tokens, "1000", "the settlement's tokens are counted");
}

/// capped: 4 active tasks; budgeted: 350,000 tokens a day at 100,000 per
/// create; the account: 8 active tasks in all.
fn governed_tenants() -> String {
    let tenant = |name: &str, token: &str, extra: &str| {
        format!(
            "\n[[tenant]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\noperations = [\"create\", \"get\", \"list\", \"delete\"]\nrate_limit = {{ per_second = 1000, burst = 1000 }}\n{extra}\n",
            sha256_hex(token)
        )
    };
    format!(
        "\n[pricing]\n[[pricing.model]]\nmodel = \"model-a\"\nper_million_tokens = 10.0\nreserve_tokens = 100000\n{}{}{}",
        tenant("capped", ALPHA, "max_active_tasks = 4"),
        tenant("budgeted", BETA, "budget = { daily_tokens = 350000 }"),
        tenant("other", READER, ""),
    )
}

async fn create_everywhere(replicas: &[Replica], token: &'static str, per_replica: usize) -> (usize, usize) {
    let mut calls = Vec::new();
    for r in replicas {
        for _ in 0..per_replica {
            let addr = r.addr;
            calls.push(tokio::spawn(async move {
                call(addr, "POST", TASKS, token, CREATE_BODY).await
            }));
        }
    }
    let (mut admitted, mut refused) = (0, 0);
    for c in calls {
        let reply = c.await.unwrap();
        match reply.status {
            200 => admitted += 1,
            429 => {
                assert!(
                    matches!(reply.error_code().as_str(), "QuotaExceeded" | "BudgetExceeded"),
                    "{}",
                    reply.text()
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    (admitted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_budgets_are_exact_across_three_replicas_and_settle_once() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut options = MockOptions::new(UPSTREAM_KEY);
    options.queued_for = Duration::from_secs(3600);
    let mock = MockUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
    let extra = "max_active_tasks = 8";
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica_with(&mock.base_url(), &redis.url(), extra, &governed_tenants()).await);
    }
    assert_eq!(
        create_everywhere(&replicas, ALPHA, 5).await,
        (4, 11),
        "the tenant quota"
    );
    assert_eq!(create_everywhere(&replicas, BETA, 5).await, (3, 12), "the daily budget");
    assert_eq!(
        create_everywhere(&replicas, READER, 3).await,
        (1, 8),
        "the account's quota"
    );
    let creates = mock.received().iter().filter(|r| r.method == "POST").count();
    assert_eq!(creates, 8, "refused creates never reach Ark");

    // One of capped's tasks ends; every replica sees it, by get and by list.
    let listed = call(replicas[0].addr, "GET", TASKS, ALPHA, "").await.json();
    let id = listed["items"][0]["id"].as_str().unwrap().to_string();
    let control = serde_json::json!({"status": "succeeded", "total_tokens": 10_000}).to_string();
    request(
        mock.addr(),
        "POST",
        &format!("/_mock/tasks/{id}"),
        &[],
        control.as_bytes(),
    )
    .await;
    let mut seen = Vec::new();
    for r in &replicas {
        let (addr, path) = (r.addr, format!("{TASKS}/{id}"));
        seen.push(tokio::spawn(
            async move { call(addr, "GET", &path, ALPHA, "").await.status },
        ));
        seen.push(tokio::spawn(
            async move { call(addr, "GET", TASKS, ALPHA, "").await.status },
        ));
    }
    for s in seen {
        assert_eq!(s.await.unwrap(), 200);
    }
    // Every replica reports the same: one settlement, one freed slot.
    let mut reports = Vec::new();
    for r in &replicas {
        let reply = call(r.addr, "GET", "/gateway/v1/usage", ALPHA, "").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reports.push(reply.json());
    }
    assert!(reports.iter().all(|r| *r == reports[0]), "{reports:?}");
    let row = &reports[0]["rows"][0];
    assert_eq!(
        (row["succeeded"].as_u64(), row["tokens"].as_u64()),
        (Some(1), Some(10_000))
    );
    assert_eq!(reports[0]["tenants"][0]["active_tasks"], 3);
    // The freed slot is usable from any replica, exactly once.
    assert_eq!(create_everywhere(&replicas, ALPHA, 2).await, (1, 5));
    stop_all(&mut replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_windows_reset_at_utc_day_and_month_boundaries_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let ledger = redis_ledger(&server, "w:");
    budget_window_scenario(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_replica_died_gives_its_hold_back_when_the_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let ledger = redis_ledger(&server, "d:");
    use ark_gateway::ledger::Ledger;
    let at = ark_gateway::ledger::now_ms();
    let begin = |id: &str, at_ms: u64, lease_ms: u64| {
        let mut admission = admission_at(at_ms);
        admission.tenant_max_active = Some(1);
        admission.lease_until_ms = at_ms + lease_ms;
        ark_gateway::ledger::CreateIntent {
            intent_id: id.into(),
            tenant: "alpha".into(),
            idempotency_key: None,
            at_ms,
            admission: Some(admission),
        }
    };
    // A replica holds the one slot, then dies before it completes or abandons.
    assert_eq!(
        ledger.begin_create(begin("dead", at, 1_000)).await.unwrap(),
        ark_gateway::ledger::BeginOutcome::Begun
    );
    assert!(matches!(
        ledger.begin_create(begin("early", at + 500, 1_000)).await.unwrap(),
        ark_gateway::ledger::BeginOutcome::Refused(_)
    ));
    // After its lease, the next create finds the slot and the reservation given back.
    assert_eq!(
        ledger.begin_create(begin("later", at + 1_001, 1_000)).await.unwrap(),
        ark_gateway::ledger::BeginOutcome::Begun
    );
    let counts = ledger.tenant_counts("alpha", at).await.unwrap();
    assert_eq!((counts.active, counts.day.reserved_tokens), (1, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_caller_leaves_a_fifth_of_the_shared_quota_to_tenants() {
    use std::num::NonZeroU32;
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let redis = connect(&server, "q:");
    let limiter = ark_gateway::backend::redis::RedisLimiter::new(redis);
    let limit = ark_gateway::config::RateLimitConfig {
        per: ark_gateway::config::RatePeriod::Minute,
        rate: NonZeroU32::new(10).unwrap(),
        burst: NonZeroU32::new(10).unwrap(),
    };
    let mut background = 0;
    while limiter.check_leaving("upstream", &limit, 2).await.unwrap().is_ok() {
        background += 1;
        assert!(background <= 10);
    }
    assert_eq!(background, 8, "two cells are left to tenants");
    assert!(limiter.check("upstream", &limit).await.unwrap().is_ok());
    assert!(limiter.check("upstream", &limit).await.unwrap().is_ok());
    assert!(limiter.check("upstream", &limit).await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_reconciles_within_the_accounts_request_budget() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut options = MockOptions::new(UPSTREAM_KEY);
    options.queued_for = Duration::from_secs(3600);
    let mock = MockUpstream::start(TcpListener::bind("127.0.0.1:0").await.unwrap(), options).unwrap();
    let extra = "\n[reconcile]\ninterval = \"50ms\"\nmax_requests_per_minute = 2\n";
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica_with(&mock.base_url(), &redis.url(), extra, &governed_tenants()).await);
    }
    let created = call(replicas[0].addr, "POST", TASKS, ALPHA, CREATE_BODY).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    // A second task stays queued: every pass has something to ask about.
    assert_eq!(
        call(replicas[0].addr, "POST", TASKS, ALPHA, CREATE_BODY).await.status,
        200
    );
    let control = serde_json::json!({"status": "succeeded", "total_tokens": 7_000}).to_string();
    request(
        mock.addr(),
        "POST",
        &format!("/_mock/tasks/{id}"),
        &[],
        control.as_bytes(),
    )
    .await;
    // Nobody polls: the lease holder settles it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = call(replicas[2].addr, "GET", "/gateway/v1/usage", ALPHA, "")
            .await
            .json();
        if report["rows"][0]["succeeded"] == 1 {
            assert_eq!(report["rows"][0]["tokens"], 7_000);
            assert_eq!(report["tenants"][0]["active_tasks"], 1, "the queued one holds its slot");
            break;
        }
        assert!(Instant::now() < deadline, "never settled: {report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait until the two other replicas have each passed a turn standing by.
    let mut standing_by = 0;
    while standing_by < 2 {
        standing_by = 0;
        for r in &replicas {
            let metrics = request(r.admin, "GET", "/metrics", &[], b"").await.text();
            standing_by += usize::from(metrics.contains("ark_gateway_reconcile_runs_total{result=\"standby\"}"));
        }
        assert!(Instant::now() < deadline, "the other replicas never stood by");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lists = mock
        .received()
        .iter()
        .filter(|r| r.method == "GET" && r.path_and_query.contains("filter.task_ids"))
        .count();
    assert!(
        (1..=2).contains(&lists),
        "{lists} reconciler calls: the budget is the account's, not each replica's"
    );
    stop_all(&mut replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_task_gives_back_its_slot_and_leaves_the_reconcilers_set() {
    use ark_gateway::ledger::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let ledger = redis_ledger(&server, "v:");
    let at = ark_gateway::ledger::now_ms();
    let mut intent = ark_gateway::ledger::CreateIntent {
        intent_id: "i1".into(),
        tenant: "alpha".into(),
        idempotency_key: None,
        at_ms: at,
        admission: Some(admission_at(at)),
    };
    intent.admission.as_mut().unwrap().tenant_max_active = Some(1);
    assert_eq!(
        ledger.begin_create(intent.clone()).await.unwrap(),
        ark_gateway::ledger::BeginOutcome::Begun
    );
    let record = ark_gateway::ledger::TaskRecord {
        task_id: "cgt-revoked".into(),
        tenant: "alpha".into(),
        model: Some("model-a".into()),
        created_ms: at,
        client_request_id: None,
        state: ark_gateway::ledger::TaskState::Active,
        source: ark_gateway::ledger::TaskSource::Created,
        spend: ark_gateway::spend::TaskSpend {
            status: Some(ark_gateway::spend::ArkStatus::Queued),
            reserved_tokens: 100,
            holds_slot: true,
            ..Default::default()
        },
    };
    ledger.complete_create(intent, record).await.unwrap();
    assert_eq!(ledger.open_tasks(10).await.unwrap(), vec!["cgt-revoked".to_string()]);
    assert_eq!(ledger.tenant_counts("alpha", at).await.unwrap().active, 1);
    assert_eq!(ledger.revoke(&["cgt-revoked".to_string()]).await.unwrap(), 1);
    let counts = ledger.tenant_counts("alpha", at).await.unwrap();
    assert_eq!((counts.active, counts.day.reserved_tokens), (0, 0));
    assert!(ledger.open_tasks(10).await.unwrap().is_empty());
}

/// Two replicas' ledgers with owner caches: a grant or revoke made through
/// one holds on the other once Redis has confirmed it there (and within
/// `STALE_AFTER` regardless, unit-tested in `tracking`); an owner both know
/// is answered from memory, without a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_revoked_on_one_replica_stops_working_on_another_once_redis_confirms() {
    use ark_gateway::ledger::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let one = redis_ledger(&server, "c:").with_owner_cache();
    let two = redis_ledger(&server, "c:").with_owner_cache();
    let ids = ["cgt-granted".to_string(), "cgt-moved".to_string()];
    let at = ark_gateway::ledger::now_ms();
    assert_eq!(one.grant("beta", &ids, at).await.unwrap(), 2);
    let confirmed = |ledger| tokio::time::timeout(Duration::from_secs(20), ledger);
    confirmed(two.owners_confirmed()).await.expect("tracking comes up");
    for id in &ids {
        assert!(two.is_owner(id, "beta").await.unwrap());
    }
    let reads = server.calls("get");
    for id in &ids {
        assert!(two.is_owner(id, "beta").await.unwrap());
        assert!(!two.is_owner(id, "alpha").await.unwrap());
    }
    assert_eq!(server.calls("get"), reads, "known owners are answered from memory");

    assert_eq!(one.revoke(&ids[..1]).await.unwrap(), 1);
    assert_eq!(one.grant("alpha", &ids[1..], at).await.unwrap(), 1);
    confirmed(two.owners_confirmed()).await.expect("tracking stays up");
    assert!(
        !two.is_owner(&ids[0], "beta").await.unwrap(),
        "the revoke holds on the other replica"
    );
    assert!(
        !two.is_owner(&ids[1], "beta").await.unwrap(),
        "so does the grant to another tenant"
    );
    assert!(two.is_owner(&ids[1], "alpha").await.unwrap());

    // A replica's own revoke holds for it on its next check.
    assert!(two.is_owner(&ids[1], "alpha").await.unwrap());
    assert_eq!(two.revoke(&ids[1..]).await.unwrap(), 1);
    assert!(!two.is_owner(&ids[1], "alpha").await.unwrap());
}

/// A connection to the test's redis-server, under its own key prefix.
fn connect(server: &RedisServer, prefix: &str) -> Arc<ark_gateway::backend::redis::Redis> {
    let url = ark_gateway::config::RedisUrl::parse(&server.url()).unwrap();
    ark_gateway::backend::redis::Redis::connect(&url, prefix, Arc::new(Metrics::new())).unwrap()
}

async fn stop_all(replicas: &mut [Replica]) {
    for r in replicas {
        if let Some(g) = r.gateway.take() {
            g.shutdown().await;
        }
    }
}

/// A Redis ledger on the test's redis-server, with an hour's retention.
fn redis_ledger(server: &RedisServer, prefix: &str) -> ark_gateway::ledger::RedisLedger {
    ark_gateway::ledger::RedisLedger::new(connect(server, prefix), Duration::from_secs(3600))
}
