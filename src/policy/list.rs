//! List: which tasks a tenant may see, how the answer is planned (a pure
//! function of the candidates and the query, tested without HTTP), and
//! carrying the plan out against Ark.

use std::collections::HashMap;

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;

use super::list_query::IDS_PER_UPSTREAM_CALL;
use super::service::{copy_parts, json_response, upstream_request, Upstream};
use super::{ListQuery, UpstreamQuery};
use crate::audit::AuditNote;
use crate::error::{GatewayError, GatewayResponse, UpstreamFailure};
use crate::ledger::{now_ms, Ledger, LIST_WINDOW};
use crate::route::{Operation, TaskId};
use crate::spend::ArkStatus;
use crate::tenant::Tenant;

/// A task a list may show. `created_ms` is set for tasks the ledger holds
/// (whose existence and creation time the gateway knows); static grants from
/// the config have neither, and only Ark can say whether they exist.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) id: TaskId,
    pub(super) model: Option<String>,
    pub(super) created_ms: Option<u64>,
    /// The mirror's status, for tasks the ledger holds and has seen.
    pub(super) status: Option<ArkStatus>,
}

/// A list the ledger cannot answer is refused: without it, the gateway
/// cannot tell which tasks are the tenant's.
fn refuse_list(e: crate::ledger::LedgerError) -> GatewayError {
    tracing::error!(error = %e, "ledger read failed; refusing list");
    GatewayError::LedgerUnavailable
}

/// The tasks a list may show, newest first: those the tenant created through
/// the gateway (within Ark's list window), then its exact static grants. With
/// `filter.task_ids`, only those of the given ids the tenant may see.
pub(super) async fn list_candidates(
    ledger: &dyn Ledger,
    tenant: &Tenant,
    query: &ListQuery,
) -> Result<Vec<Candidate>, GatewayError> {
    let since = now_ms().saturating_sub(LIST_WINDOW.as_millis() as u64);
    let owned = ledger
        .owned_tasks(tenant.name.as_str(), since)
        .await
        .map_err(refuse_list)?;
    let mut candidates: Vec<Candidate> = owned
        .into_iter()
        .filter_map(|t| {
            Some(Candidate {
                id: TaskId::parse(&t.task_id)?,
                model: t.model,
                created_ms: Some(t.created_ms),
                status: t.status,
            })
        })
        .collect();
    let mut granted: Vec<&TaskId> = tenant.grants.exact.iter().collect();
    granted.sort();
    for id in granted {
        if !candidates.iter().any(|c| &c.id == id) {
            candidates.push(Candidate {
                id: id.clone(),
                model: None,
                created_ms: None,
                status: None,
            });
        }
    }
    if let Some(wanted) = &query.task_ids {
        let known: HashMap<&TaskId, &Candidate> = candidates.iter().map(|c| (&c.id, c)).collect();
        let mut narrowed = Vec::with_capacity(wanted.len());
        for id in wanted {
            if let Some(c) = known.get(id) {
                narrowed.push((*c).clone());
            } else if tenant.grants.allows(id) {
                narrowed.push(Candidate {
                    id: id.clone(),
                    model: None,
                    created_ms: None,
                    status: None,
                });
            } else if let Ok(Some(record)) = ledger.owner_of(id.as_str()).await {
                // Owned, but older than the window or deleted: Ark decides.
                if record.tenant == tenant.name.as_str() {
                    narrowed.push(Candidate {
                        id: id.clone(),
                        model: record.model,
                        created_ms: None,
                        status: None,
                    });
                }
            }
        }
        candidates = narrowed;
    }
    if let Some(model) = &query.model {
        // Known models are filtered here; unknown ones (grants) are left to Ark.
        candidates.retain(|c| c.model.as_ref().is_none_or(|m| m == model));
    }
    Ok(candidates)
}

/// The page as the ledger counts it, for a list that is the ledger's alone
/// (no filter, no static grants) and too long for one upstream call: the
/// ledger's counts give the total and the page's tasks without reading the
/// whole window. `None`: plan from [`list_candidates`].
pub(super) async fn counted_page(
    ledger: &dyn Ledger,
    tenant: &Tenant,
    query: &ListQuery,
) -> Result<Option<CountedPage>, GatewayError> {
    if query.filters() || !tenant.grants.exact.is_empty() {
        return Ok(None);
    }
    let since = now_ms().saturating_sub(LIST_WINDOW.as_millis() as u64);
    let page = ledger
        .owned_page(
            tenant.name.as_str(),
            since,
            query.page_start(),
            query.page_size() as usize,
        )
        .await
        .map_err(refuse_list)?;
    Ok(page
        .filter(|page| page.total > IDS_PER_UPSTREAM_CALL)
        .map(|page| CountedPage {
            total: page.total,
            entries: page
                .tasks
                .iter()
                .filter_map(|t| TaskId::parse(&t.task_id))
                .map(|id| (id, None))
                .collect(),
        }))
}

/// How a list is answered. Never more than [`IDS_PER_UPSTREAM_CALL`] ids go
/// into one upstream URL.
#[derive(Debug, PartialEq)]
pub(super) enum ListPlan {
    /// Nothing the tenant may see: `{"total": 0, "items": []}`, answered here.
    Empty,
    /// Up to [`IDS_PER_UPSTREAM_CALL`] ids: one call with the client's paging
    /// and filters; Ark filters, counts and pages, and its answer passes through.
    OneCall(Vec<TaskId>),
    /// More, with a filter only Ark can decide (service tier): all ids are
    /// asked for in chunks; the gateway merges, counts and pages. Cost grows
    /// with the tenant's task count.
    AskArkForAll(Vec<TaskId>),
    /// More, with no such filter: the ledger's tasks (newest first, with
    /// their creation time) are counted and ordered here; Ark is asked about
    /// `remote` (static grants, and tasks of unknown model under a model
    /// filter), and then only about the requested page's tasks.
    CountHere {
        local: Vec<(u64, TaskId)>,
        remote: Vec<TaskId>,
    },
    /// Counted and paged by the ledger ([`counted_page`]): Ark is asked only
    /// about the page's tasks.
    Counted(CountedPage),
}

/// Decides how to answer a list over `candidates`.
pub(super) fn plan(candidates: Vec<Candidate>, query: &ListQuery) -> ListPlan {
    if candidates.is_empty() {
        return ListPlan::Empty;
    }
    if candidates.len() <= IDS_PER_UPSTREAM_CALL {
        return ListPlan::OneCall(candidates.into_iter().map(|c| c.id).collect());
    }
    if query.service_tier.is_some() {
        return ListPlan::AskArkForAll(candidates.into_iter().map(|c| c.id).collect());
    }
    // Known to the ledger (with a model filter, of a known model; with a
    // status filter, of a status the mirror knows): counted here. The
    // mirror's status of an unfinished task may lag Ark's by a reconcile
    // interval (docs/spend.md).
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for c in candidates {
        let known_model = query.model.is_none() || c.model.is_some();
        match (c.created_ms, query.status, c.status) {
            (Some(created_ms), None, _) if known_model => local.push((created_ms, c.id)),
            (Some(created_ms), Some(wanted), Some(status)) if known_model => {
                if status == wanted {
                    local.push((created_ms, c.id));
                }
            }
            _ => remote.push(c.id),
        }
    }
    ListPlan::CountHere { local, remote }
}

/// One page of a [`ListPlan::CountHere`] list, once Ark has said which of
/// the remote tasks exist (`fetched`, with their items).
#[derive(Debug, PartialEq)]
pub(super) struct CountedPage {
    pub(super) total: usize,
    /// The page's tasks, newest first, with their item where Ark already sent it.
    pub(super) entries: Vec<(TaskId, Option<Value>)>,
}

impl CountedPage {
    /// The page's tasks Ark still has to be asked about.
    pub(super) fn missing(&self) -> Vec<TaskId> {
        self.entries
            .iter()
            .filter(|(_, item)| item.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Merges the ledger's tasks with the fetched remote ones, newest first (ties
/// by id, so pages are stable), and cuts the page at `start`, `size`.
pub(super) fn count_here(local: Vec<(u64, TaskId)>, fetched: Vec<Value>, start: usize, size: usize) -> CountedPage {
    let mut merged: Vec<(u64, TaskId, Option<Value>)> =
        local.into_iter().map(|(created, id)| (created, id, None)).collect();
    for item in fetched {
        let created_ms = item.get("created_at").and_then(Value::as_u64).unwrap_or(0) * 1000;
        if let Some(id) = item.get("id").and_then(Value::as_str).and_then(TaskId::parse) {
            merged.push((created_ms, id, Some(item)));
        }
    }
    merged.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    CountedPage {
        total: merged.len(),
        entries: merged
            .into_iter()
            .skip(start)
            .take(size)
            .map(|(_, id, item)| (id, item))
            .collect(),
    }
}

/// Carries out `plan`.
pub(super) async fn list<S: Upstream>(
    inner: S,
    parts: Parts,
    query: &ListQuery,
    plan: ListPlan,
    note: &AuditNote,
) -> Result<GatewayResponse, GatewayError> {
    let page_size = query.page_size() as usize;
    let start = query.page_start();
    match plan {
        ListPlan::Empty => {
            note.record(|facts| facts.answered_locally = true);
            Ok(json_response(&serde_json::json!({"total": 0, "items": []})))
        }
        ListPlan::OneCall(ids) => {
            let upstream = UpstreamQuery(query.upstream_query(&ids, query.page_num(), query.page_size()));
            inner
                .oneshot(upstream_request(
                    parts,
                    Operation::List,
                    None,
                    Some(upstream),
                    Bytes::new(),
                ))
                .await
        }
        ListPlan::AskArkForAll(ids) => {
            let mut items = match fetch_items(inner, &parts, query, ids).await? {
                Ok(items) => items,
                Err(refusal) => return Ok(refusal),
            };
            sort_newest_first(&mut items);
            let total = items.len();
            let page: Vec<_> = items.into_iter().skip(start).take(page_size).collect();
            Ok(json_response(&serde_json::json!({"total": total, "items": page})))
        }
        ListPlan::CountHere { local, remote } => {
            let fetched = match remote.is_empty() {
                true => Vec::new(),
                false => match fetch_items(inner.clone(), &parts, query, remote).await? {
                    Ok(items) => items,
                    Err(refusal) => return Ok(refusal),
                },
            };
            answer_page(inner, &parts, query, count_here(local, fetched, start, page_size)).await
        }
        ListPlan::Counted(page) => answer_page(inner, &parts, query, page).await,
    }
}

/// Fills in the page's items Ark has not sent yet, and answers it.
async fn answer_page<S: Upstream>(
    inner: S,
    parts: &Parts,
    query: &ListQuery,
    page: CountedPage,
) -> Result<GatewayResponse, GatewayError> {
    let missing = page.missing();
    let mut found: HashMap<String, Value> = HashMap::new();
    if !missing.is_empty() {
        let items = match fetch_items(inner, parts, query, missing).await? {
            Ok(items) => items,
            Err(refusal) => return Ok(refusal),
        };
        for item in items {
            if let Some(id) = item.get("id").and_then(Value::as_str) {
                found.insert(id.to_string(), item.clone());
            }
        }
    }
    // A task the ledger holds but Ark no longer lists (deleted
    // elsewhere, expired) leaves a gap in its page (docs/architecture.md).
    let items: Vec<_> = page
        .entries
        .into_iter()
        .filter_map(|(id, item)| item.or_else(|| found.remove(id.as_str())))
        .collect();
    Ok(json_response(&serde_json::json!({"total": page.total, "items": items})))
}

#[derive(Deserialize)]
struct UpstreamPage {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

/// Asks Ark for `ids` (with the query's filters) in bounded chunks. The outer
/// error is a failure; the inner `Err` is Ark's own refusal, to pass through.
async fn fetch_items<S: Upstream>(
    inner: S,
    parts: &Parts,
    query: &ListQuery,
    ids: Vec<TaskId>,
) -> Result<Result<Vec<serde_json::Value>, GatewayResponse>, GatewayError> {
    let mut items = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_UPSTREAM_CALL) {
        let upstream = UpstreamQuery(query.upstream_query(chunk, 1, chunk.len() as u32));
        let request = upstream_request(copy_parts(parts), Operation::List, None, Some(upstream), Bytes::new());
        let response = inner.clone().oneshot(request).await?;
        if response.status() != StatusCode::OK {
            return Ok(Err(response));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let page: UpstreamPage = serde_json::from_slice(&body).map_err(|_| GatewayError::UpstreamUnavailable {
            kind: UpstreamFailure::Protocol,
            fate_unknown: false,
        })?;
        items.extend(page.items);
    }
    Ok(Ok(items))
}

/// Ark lists newest first; ties are broken by id so pages are stable.
fn sort_newest_first(items: &mut [serde_json::Value]) {
    fn key(v: &serde_json::Value) -> (i64, &str) {
        (
            v.get("created_at").and_then(|c| c.as_i64()).unwrap_or(0),
            v.get("id").and_then(|i| i.as_str()).unwrap_or(""),
        )
    }
    items.sort_by(|a, b| key(b).cmp(&key(a)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> TaskId {
        TaskId::parse(&format!("cgt-{n:05}")).unwrap()
    }

    fn owned(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: id(i),
                model: Some("m".into()),
                created_ms: Some(i as u64 * 1000),
                status: Some(if i % 2 == 0 {
                    ArkStatus::Queued
                } else {
                    ArkStatus::Running
                }),
            })
            .collect()
    }

    fn granted(i: usize) -> Candidate {
        Candidate {
            id: id(i),
            model: None,
            created_ms: None,
            status: None,
        }
    }

    fn query(text: &str) -> ListQuery {
        ListQuery::parse(Some(text)).unwrap()
    }

    #[test]
    fn small_lists_are_one_call_and_empty_ones_none() {
        assert_eq!(plan(Vec::new(), &query("")), ListPlan::Empty);
        let ListPlan::OneCall(ids) = plan(owned(IDS_PER_UPSTREAM_CALL), &query("filter.status=queued")) else {
            panic!("one call")
        };
        assert_eq!(ids.len(), IDS_PER_UPSTREAM_CALL);
    }

    #[test]
    fn a_filter_only_ark_decides_asks_for_every_id_in_bounded_chunks() {
        let ListPlan::AskArkForAll(ids) = plan(owned(250), &query("filter.service_tier=flex")) else {
            panic!("all ids asked of Ark")
        };
        assert_eq!(ids.len(), 250);
        assert_eq!(ids.chunks(IDS_PER_UPSTREAM_CALL).count(), 3, "upstream calls");
    }

    #[test]
    fn a_status_filter_is_planned_from_the_mirror_whatever_the_task_count() {
        for n in [250, 25_000] {
            let mut candidates = owned(n);
            candidates[1].status = None; // never seen since the mirror began: Ark decides
            candidates.push(granted(900_000));
            let ListPlan::CountHere { local, remote } = plan(candidates, &query("filter.status=running")) else {
                panic!("counted here")
            };
            // The odd ones run; one of them is unknown to the mirror.
            assert_eq!(local.len(), n / 2 - 1);
            assert_eq!(remote, vec![id(1), id(900_000)], "only what the mirror cannot tell");
        }
    }

    #[test]
    fn without_such_a_filter_the_ledger_counts_and_only_grants_go_to_ark() {
        let mut candidates = owned(150);
        candidates.push(granted(900));
        let ListPlan::CountHere { local, remote } = plan(candidates, &query("page_size=10")) else {
            panic!("counted here")
        };
        assert_eq!((local.len(), remote), (150, vec![id(900)]));
        // Under a model filter, a task of unknown model is Ark's to decide.
        let mut candidates = owned(150);
        candidates[0].model = None;
        let ListPlan::CountHere { local, remote } = plan(candidates, &query("filter.model=m")) else {
            panic!("counted here")
        };
        assert_eq!((local.len(), remote), (149, vec![id(0)]));
    }

    #[test]
    fn a_counted_page_is_cut_from_the_merged_order_and_fetches_only_its_own_tasks() {
        let local: Vec<(u64, TaskId)> = (0..150).map(|i| (i as u64 * 1000, id(i))).collect();
        // A grant Ark knows, created in the same second as task 141: the id breaks the tie.
        let grant = serde_json::json!({"id": "cgt-00900", "created_at": 141, "status": "queued"});
        let page = count_here(local, vec![grant.clone()], 5, 5);
        assert_eq!(page.total, 151);
        let ids: Vec<&str> = page.entries.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["cgt-00144", "cgt-00143", "cgt-00142", "cgt-00900", "cgt-00141"]);
        assert_eq!(page.entries[3].1.as_ref(), Some(&grant), "already fetched");
        assert_eq!(page.missing().len(), 4, "only the page's own tasks are asked for");
        // Past the end: an empty page, the total unchanged.
        let past = count_here(vec![(1, id(1))], Vec::new(), 10, 10);
        assert_eq!((past.total, past.entries.len()), (1, 0));
    }
}
