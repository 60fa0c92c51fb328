//! The ownership ledger through the gateway: ownership survives restarts,
//! a failing store refuses creates before anything reaches Ark, retried
//! creates with an Idempotency-Key reach Ark once, and lists page correctly
//! over more tasks than one upstream call may name.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use ark_gateway::ledger::{
    BeginOutcome, CreateFate, CreateIntent, Ledger, RedbLedger, SweepBefore, TaskRecord, TaskSource, TaskState,
};
use common::*;

fn task(id: &str) -> String {
    format!("{TASKS}/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_survives_a_restart() {
    let mut env = TestEnv::start().await;
    let alphas = env.create(ALPHA).await;
    let betas = env.create(BETA).await;
    env.restart_gateway().await;
    assert_eq!(env.call("GET", &task(&alphas), Some(ALPHA), None).await.status, 200);
    assert_eq!(env.call("GET", &task(&betas), Some(BETA), None).await.status, 200);
    assert_eq!(env.call("GET", &task(&alphas), Some(BETA), None).await.status, 403);
    assert_eq!(env.call("GET", TASKS, Some(ALPHA), None).await.json()["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_refuses_creates_before_forwarding() {
    let mut env = TestEnv::start().await;
    let owned = env.create(ALPHA).await;
    let before = env.upstream_count();
    env.faults.fail_writes(true);
    for _ in 0..3 {
        let reply = env.call("POST", TASKS, Some(ALPHA), Some(CREATE_BODY)).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(reply.error_code(), "ServiceUnavailable");
    }
    assert_eq!(
        env.upstream_count(),
        before,
        "a create reached Ark although its owner could not be recorded"
    );
    // Reads of existing ownership still work, and still refuse strangers.
    assert_eq!(env.call("GET", &task(&owned), Some(ALPHA), None).await.status, 200);
    assert_eq!(env.call("GET", &task(&owned), Some(BETA), None).await.status, 403);
    let audit = env.finish().await;
    assert_eq!(audit.iter().filter(|r| r.reason == "ledger_unavailable").count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_creates_with_an_idempotency_key_reach_ark_once() {
    let env = TestEnv::start().await;
    let send = |token: &'static str, key: &'static str, body: &'static str| {
        let addr = env.addr;
        async move {
            let auth = format!("Bearer {token}");
            request(
                addr,
                "POST",
                TASKS,
                &[("Authorization", &auth), ("Idempotency-Key", key)],
                body.as_bytes(),
            )
            .await
        }
    };
    let first = send(ALPHA, "retry-1", CREATE_BODY).await;
    let second = send(ALPHA, "retry-1", CREATE_BODY).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(first.json()["id"], second.json()["id"]);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    let creates = || env.upstream().iter().filter(|r| r.method == "POST").count();
    assert_eq!(creates(), 1, "the retried create reached Ark again");
    // The same key from another tenant is another tenant's key.
    let other = send(BETA, "retry-1", CREATE_BODY).await;
    assert_ne!(other.json()["id"], first.json()["id"]);
    assert_eq!(creates(), 2);
    // Ark refusing a create frees the key for a corrected retry.
    let refused = send(ALPHA, "retry-2", r#"{"model":"model-a"}"#).await;
    assert_eq!(refused.status, 400, "the mock requires content: {}", refused.text());
    let fixed = send(ALPHA, "retry-2", CREATE_BODY).await;
    assert_eq!(fixed.status, 200, "{}", fixed.text());
    assert_eq!(creates(), 4);
    let bad = request(
        env.addr,
        "POST",
        TASKS,
        &[("Authorization", "Bearer token-alpha"), ("Idempotency-Key", "")],
        CREATE_BODY.as_bytes(),
    )
    .await;
    assert_eq!(bad.status, 400);
}

async fn create_many(env: &TestEnv, token: &'static str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for batch in 0..n.div_ceil(25) {
        let mut joins = Vec::new();
        for _ in 0..25.min(n - batch * 25) {
            let addr = env.addr;
            joins.push(tokio::spawn(async move {
                let auth = format!("Bearer {token}");
                let reply = request(addr, "POST", TASKS, &[("Authorization", &auth)], CREATE_BODY.as_bytes()).await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                reply.json()["id"].as_str().unwrap().to_string()
            }));
        }
        for j in joins {
            ids.push(j.await.unwrap());
        }
    }
    ids
}

/// A tenant without static grants, listing with no filter: the ledger's
/// counts give the total and the page, and Ark is asked about the page only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_unfiltered_list_is_counted_and_paged_by_the_ledger() {
    let env = TestEnv::start().await;
    let betas = create_many(&env, BETA, 130).await;
    let cancelled = &betas[..3];
    for id in cancelled {
        assert_eq!(env.call("DELETE", &task(id), Some(BETA), None).await.status, 200);
    }
    let mut seen = Vec::new();
    let mut created = Vec::new();
    for (page, size) in [(1, 50), (2, 50), (3, 50), (4, 50)] {
        let before = env.upstream_count();
        let json = env
            .call(
                "GET",
                &format!("{TASKS}?page_size={size}&page_num={page}"),
                Some(BETA),
                None,
            )
            .await
            .json();
        assert_eq!(json["total"], 130, "page {page}: cancelled tasks are still listed");
        let ids = ids_of(&json);
        assert_eq!(ids.len(), [50, 50, 30, 0][page - 1], "page {page}");
        let calls = env.upstream_count() - before;
        assert_eq!(calls, usize::from(!ids.is_empty()), "page {page}: upstream calls");
        for item in json["items"].as_array().unwrap() {
            created.push(item["created_at"].as_u64().unwrap());
        }
        seen.extend(ids);
    }
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        betas.iter().collect::<HashSet<_>>(),
        "the pages hold each task once"
    );
    assert_eq!(seen.len(), 130);
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first across pages");
    let alpha = env
        .call("GET", &format!("{TASKS}?page_size=100"), Some(ALPHA), None)
        .await
        .json();
    assert!(
        ids_of(&alpha).iter().all(|id| !betas.contains(id)),
        "another tenant sees none of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_correctly_beyond_one_upstream_call() {
    let env = TestEnv::start().await;
    let alphas = create_many(&env, ALPHA, 230).await;
    let betas = create_many(&env, BETA, 7).await;
    let all_alpha: HashSet<&String> = alphas.iter().collect();

    // No filter Ark must decide: the ledger counts and pages.
    let mut seen = Vec::new();
    for page in 1..=3 {
        let json = env
            .call(
                "GET",
                &format!("{TASKS}?page_size=100&page_num={page}"),
                Some(ALPHA),
                None,
            )
            .await
            .json();
        assert_eq!(json["total"], 230, "page {page}");
        seen.extend(ids_of(&json));
    }
    assert_eq!(seen.len(), 230);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        all_alpha,
        "pages hold each of alpha's tasks once"
    );

    // Cancel some, then filter by status: planned from the mirror, so the
    // upstream is asked only about the page's own tasks.
    for id in &alphas[..12] {
        assert_eq!(env.call("DELETE", &task(id), Some(ALPHA), None).await.status, 200);
    }
    let before = env.upstream_count();
    let cancelled = env
        .call(
            "GET",
            &format!("{TASKS}?filter.status=cancelled&page_size=5"),
            Some(ALPHA),
            None,
        )
        .await
        .json();
    assert_eq!(cancelled["total"], 12);
    assert_eq!(ids_of(&cancelled).len(), 5);
    // One for alpha's static grant (only Ark knows it), one for the page.
    assert_eq!(
        env.upstream_count() - before,
        2,
        "upstream calls for a page of 230 tasks"
    );
    let queued_p3 = env
        .call(
            "GET",
            &format!("{TASKS}?filter.status=queued&page_size=100&page_num=3"),
            Some(ALPHA),
            None,
        )
        .await
        .json();
    assert_eq!(queued_p3["total"], 218);
    assert_eq!(ids_of(&queued_p3).len(), 18);
    assert!(ids_of(&queued_p3).iter().all(|id| all_alpha.contains(id)));

    // Beta never sees alpha's tasks, however it pages.
    let beta = env
        .call("GET", &format!("{TASKS}?page_size=500"), Some(BETA), None)
        .await
        .json();
    assert_eq!(beta["total"], 7);
    assert_eq!(
        ids_of(&beta).iter().collect::<HashSet<_>>(),
        betas.iter().collect::<HashSet<_>>()
    );

    // Every upstream URL stayed bounded.
    for r in env.upstream() {
        let n = r.path_and_query.matches("filter.task_ids=").count();
        assert!(n <= 100, "an upstream list named {n} ids");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_record_whether_they_cancelled_or_deleted() {
    // Tasks finish at once here, so a DELETE deletes the record.
    let mut options = Options::default();
    options.mock.queued_for = Duration::ZERO;
    options.mock.running_for = Duration::ZERO;
    let mut env = TestEnv::start_with(options).await;
    let finished = env.create(ALPHA).await;
    assert_eq!(
        env.call("DELETE", &task(&finished), Some(ALPHA), None).await.status,
        200
    );
    assert_eq!(
        env.call("GET", TASKS, Some(ALPHA), None).await.json()["total"],
        0,
        "a deleted task is not listed"
    );
    // Still the tenant's: a get is forwarded and Ark says it is gone.
    assert_eq!(env.call("GET", &task(&finished), Some(ALPHA), None).await.status, 404);
    assert_eq!(env.call("GET", &task(&finished), Some(BETA), None).await.status, 403);
    env.stop_gateway().await;
    let ledger = RedbLedger::open(&env.dir.path().join("ledger.redb")).unwrap();
    let records = ledger.all_tasks(Some("alpha")).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].state, TaskState::Deleted);
    drop(ledger);

    let mut env = TestEnv::start().await; // tasks stay queued: DELETE cancels
    let queued = env.create(ALPHA).await;
    assert_eq!(env.call("DELETE", &task(&queued), Some(ALPHA), None).await.status, 200);
    env.stop_gateway().await;
    let ledger = RedbLedger::open(&env.dir.path().join("ledger.redb")).unwrap();
    assert_eq!(
        ledger.owner_of(&queued).await.unwrap().unwrap().state,
        TaskState::Cancelled
    );
}

fn record(id: &str, tenant: &str, created_ms: u64) -> TaskRecord {
    TaskRecord {
        task_id: id.to_string(),
        tenant: tenant.to_string(),
        model: Some("model-a".into()),
        created_ms,
        client_request_id: None,
        state: TaskState::Active,
        source: TaskSource::Created,
        spend: Default::default(),
    }
}

fn intent(id: &str, tenant: &str, key: Option<&str>, at_ms: u64) -> CreateIntent {
    CreateIntent {
        intent_id: id.to_string(),
        tenant: tenant.to_string(),
        idempotency_key: key.map(str::to_string),
        at_ms,
        admission: None,
    }
}

#[tokio::test]
async fn the_sweep_drops_expired_entries_and_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
    for (i, created) in [(1, 1_000u64), (2, 2_000), (3, 50_000)] {
        let id = format!("cgt-{i}");
        let it = intent(&format!("i{i}"), "alpha", Some(&format!("k{i}")), created);
        assert_eq!(ledger.begin_create(it.clone()).await.unwrap(), BeginOutcome::Begun);
        ledger.complete_create(it, record(&id, "alpha", created)).await.unwrap();
    }
    let report = ledger.sweep(sweep_before(10_000, 10_000)).await.unwrap();
    assert_eq!((report.tasks, report.idempotency_keys), (2, 2));
    let left: Vec<_> = ledger
        .owned_tasks("alpha", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(left, ["cgt-3"]);
    assert!(ledger.owner_of("cgt-1").await.unwrap().is_none());
    assert_eq!(ledger.task_count().unwrap(), 1);
}

/// A ledger in `dir` where `tenant` created `task_id` at 1,000 ms.
async fn ledger_with_task(dir: &std::path::Path, task_id: &str, tenant: &str) -> RedbLedger {
    let ledger = RedbLedger::open(&dir.join("l.redb")).unwrap();
    let it = intent("i1", tenant, None, 1_000);
    assert_eq!(ledger.begin_create(it.clone()).await.unwrap(), BeginOutcome::Begun);
    ledger
        .complete_create(it, record(task_id, tenant, 1_000))
        .await
        .unwrap();
    ledger
}

#[tokio::test]
async fn is_owner_answers_for_the_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_with_task(dir.path(), "cgt-own", "alpha").await;
    assert!(ledger.is_owner("cgt-own", "alpha").await.unwrap());
    assert!(!ledger.is_owner("cgt-own", "beta").await.unwrap());
    // A tenant whose name is a prefix of the owner's is not the owner.
    assert!(!ledger.is_owner("cgt-own", "alph").await.unwrap());
    assert!(!ledger.is_owner("cgt-unknown", "alpha").await.unwrap());
    ledger.revoke(&["cgt-own".to_string()]).await.unwrap();
    assert!(!ledger.is_owner("cgt-own", "alpha").await.unwrap());
}

/// The embedded ledger remembers owners it has read; every write that can
/// change an owner (a grant to another tenant, a revoke, the sweep) must be
/// seen by the very next check.
#[tokio::test]
async fn owner_checks_follow_grants_and_sweeps_after_a_cached_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = ledger_with_task(dir.path(), "cgt-moved", "alpha").await;
    for _ in 0..2 {
        assert!(ledger.is_owner("cgt-moved", "alpha").await.unwrap());
        assert!(!ledger.is_owner("cgt-moved", "beta").await.unwrap());
    }
    ledger.grant("beta", &["cgt-moved".to_string()], 2_000).await.unwrap();
    assert!(
        !ledger.is_owner("cgt-moved", "alpha").await.unwrap(),
        "a stale owner answered"
    );
    assert!(ledger.is_owner("cgt-moved", "beta").await.unwrap());
    // The grant kept the task's creation time; the sweep drops it.
    ledger.sweep(sweep_before(10_000, 10_000)).await.unwrap();
    assert!(
        !ledger.is_owner("cgt-moved", "beta").await.unwrap(),
        "a swept task is still owned"
    );
}

#[tokio::test]
async fn idempotency_outcomes_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
    let a = intent("r1", "alpha", Some("k"), 1_000);
    assert_eq!(ledger.begin_create(a.clone()).await.unwrap(), BeginOutcome::Begun);
    // In flight: a second attempt conflicts instead of creating again.
    assert_eq!(
        ledger
            .begin_create(intent("r2", "alpha", Some("k"), 1_001))
            .await
            .unwrap(),
        BeginOutcome::Conflict
    );
    // Unknown fate keeps the key blocked.
    ledger.abandon_create(a, CreateFate::Unknown).await.unwrap();
    assert_eq!(
        ledger
            .begin_create(intent("r3", "alpha", Some("k"), 1_002))
            .await
            .unwrap(),
        BeginOutcome::Conflict
    );
    // A failed create releases its key.
    let b = intent("r4", "alpha", Some("k2"), 1_003);
    ledger.begin_create(b.clone()).await.unwrap();
    ledger.abandon_create(b, CreateFate::Failed).await.unwrap();
    assert_eq!(
        ledger
            .begin_create(intent("r5", "alpha", Some("k2"), 1_004))
            .await
            .unwrap(),
        BeginOutcome::Begun
    );
    // Past the 24 h window the key is new again.
    let later = 1_002 + 24 * 3600 * 1000 + 1;
    assert_eq!(
        ledger
            .begin_create(intent("r6", "alpha", Some("k"), later))
            .await
            .unwrap(),
        BeginOutcome::Begun
    );
    assert_eq!(ledger.unsettled_creates().unwrap().len(), 2, "r5 and r6 are still open");
}

#[tokio::test]
async fn budget_windows_reset_at_utc_day_and_month_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
    budget_window_scenario(&ledger).await;
}

#[tokio::test]
async fn records_from_before_the_mirror_are_reconciled_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    {
        // A file as the gateway wrote it before the mirror: records without `spend`.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut tasks = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("tasks"))
                .unwrap();
            for (id, state) in [("cgt-old-active", "active"), ("cgt-old-deleted", "deleted")] {
                let json = format!(
                    r#"{{"task_id":"{id}","tenant":"alpha","model":"model-a","created_ms":1000,"client_request_id":null,"state":"{state}","source":"created"}}"#
                );
                tasks.insert(id, json.as_bytes()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let ledger = RedbLedger::open(&path).unwrap();
    let record = ledger.owner_of("cgt-old-active").await.unwrap().unwrap();
    assert_eq!(record.spend.status, None, "an unknown status");
    assert_eq!(ledger.open_tasks(10).await.unwrap(), vec!["cgt-old-active".to_string()]);
    // Seen running: it takes a slot; seen ended: it frees it and is counted.
    use ark_gateway::spend::{ArkStatus, Observation};
    let seen = |status| Observation::Seen {
        status,
        tokens: None,
        updated_at: None,
    };
    ledger
        .observe("cgt-old-active", seen(ArkStatus::Running))
        .await
        .unwrap();
    assert_eq!(ledger.tenant_counts("alpha", 1000).await.unwrap().active, 1);
    let settled = ledger
        .observe(
            "cgt-old-active",
            Observation::Seen {
                status: ArkStatus::Succeeded,
                tokens: Some(500),
                updated_at: Some(2),
            },
        )
        .await
        .unwrap()
        .expect("settled");
    assert_eq!(settled.tokens, 500);
    assert_eq!(ledger.tenant_counts("alpha", 1000).await.unwrap().active, 0);
    assert!(ledger.open_tasks(10).await.unwrap().is_empty());
    // Adopted once: a reopen does not add them again.
    drop(ledger);
    let ledger = RedbLedger::open(&path).unwrap();
    assert!(ledger.open_tasks(10).await.unwrap().is_empty());
    // They joined the creation-time index too: the sweep finds them.
    let swept = ledger.sweep(sweep_before(2_000, 0)).await.unwrap();
    assert_eq!(swept.tasks, 2);
    assert_eq!(ledger.task_count().unwrap(), 0);
}

#[tokio::test]
async fn the_retention_sweep_works_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = RedbLedger::open(&dir.path().join("l.redb")).unwrap();
    let old: Vec<String> = (0..2_500).map(|n| format!("cgt-old-{n}")).collect();
    let young: Vec<String> = (0..10).map(|n| format!("cgt-young-{n}")).collect();
    ledger.grant("alpha", &old, 1_000).await.unwrap();
    ledger.grant("alpha", &young, 9_000).await.unwrap();
    let report = ledger.sweep(sweep_before(5_000, 0)).await.unwrap();
    assert_eq!(report.tasks, 2_500);
    let batch = ark_gateway::backend::redb::SWEEP_BATCH;
    assert_eq!(
        report.batches,
        2_500usize.div_ceil(batch) + usize::from(2_500 % batch == 0)
    );
    assert!(
        report.batches > 1,
        "one transaction would hold the writer for the whole sweep"
    );
    assert_eq!(ledger.task_count().unwrap(), 10);
    assert!(ledger.owner_of("cgt-old-7").await.unwrap().is_none());
    assert!(ledger.owner_of("cgt-young-7").await.unwrap().is_some());
}

/// Tasks created before `tasks_ms` and keys older than `keys_ms` go; usage stays.
fn sweep_before(tasks_ms: u64, keys_ms: u64) -> SweepBefore {
    SweepBefore {
        tasks_ms,
        keys_ms,
        usage_ms: 0,
    }
}
