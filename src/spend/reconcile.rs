//! The reconciler: every `reconcile.interval` it asks Ark about the owned
//! tasks not yet seen to end, 100 ids per list call, so slots free and usage
//! settles even for a tenant that never polls. It spends at most
//! `reconcile.max_requests_per_minute` calls in any 60 s (one replica at a
//! time holds the lease), takes each call from the shared Ark quota like any
//! request, backs off on Ark errors, and sends only the gateway's key.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::config::ReconcileConfig;
use crate::error::{GatewayError, GatewayResponse};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::policy::{ListQuery, UpstreamQuery};
use crate::route::{Operation, TaskId, TASKS_PATH};
use crate::spend::Observation;

/// Ark's page is 10 by default: the reconciler asks for 100 at once.
pub const IDS_PER_CALL: usize = 100;
const WINDOW: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// At most `max` calls in any sliding 60 s.
#[derive(Debug)]
pub struct CallBudget {
    max: usize,
    sent: VecDeque<Instant>,
}

impl CallBudget {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            sent: VecDeque::new(),
        }
    }

    /// How long to wait at `now` before the next call may go.
    pub fn wait(&mut self, now: Instant) -> Duration {
        while self.sent.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            self.sent.pop_front();
        }
        match self.sent.len() < self.max {
            true => Duration::ZERO,
            false => (self.sent[0] + WINDOW).saturating_duration_since(now),
        }
    }

    pub fn spend(&mut self, now: Instant) {
        self.sent.push_back(now);
    }
}

/// Takes one request from the shared Ark quota, or says how long to wait.
pub type QuotaCheck = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), Duration>> + Send + Sync>;

pub struct Reconciler<S> {
    pub ledger: Arc<dyn Ledger>,
    pub upstream: S,
    pub metrics: Arc<Metrics>,
    pub config: ReconcileConfig,
    pub quota: QuotaCheck,
    /// This replica's name in the lease.
    pub holder: String,
}

impl<S> Reconciler<S>
where
    S: Service<Request<Bytes>, Response = GatewayResponse, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    pub async fn run(self) {
        let mut budget = CallBudget::new(self.config.max_requests_per_minute.get() as usize);
        let mut backoff = Duration::ZERO;
        let mut last_full_pass = Instant::now();
        loop {
            tokio::time::sleep(self.config.interval + backoff).await;
            let lease = (self.config.interval * 4).max(Duration::from_secs(60));
            match self.ledger.reconcile_lease(&self.holder, lease).await {
                Ok(true) => {}
                Ok(false) => {
                    self.metrics.reconcile_run("standby");
                    last_full_pass = Instant::now();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciler: the ledger is unavailable; retrying later");
                    self.metrics.reconcile_run("error");
                    continue;
                }
            }
            match self.pass(&mut budget).await {
                Ok(()) => {
                    backoff = Duration::ZERO;
                    last_full_pass = Instant::now();
                    self.metrics.reconcile_run("ok");
                }
                Err(e) => {
                    backoff = (backoff * 2).clamp(self.config.interval, MAX_BACKOFF);
                    tracing::warn!(error = %e, backoff = ?backoff, "reconciler: Ark did not answer; backing off");
                    self.metrics.reconcile_run("error");
                }
            }
            self.metrics.set_reconcile_lag(last_full_pass.elapsed().as_secs_f64());
        }
    }

    /// One pass over every open task (as many calls as the budget allows).
    async fn pass(&self, budget: &mut CallBudget) -> Result<(), String> {
        let limit = IDS_PER_CALL * self.config.max_requests_per_minute.get() as usize;
        let ids = self.ledger.open_tasks(limit).await.map_err(|e| e.to_string())?;
        for chunk in ids.chunks(IDS_PER_CALL) {
            loop {
                let wait = budget.wait(Instant::now());
                if wait.is_zero() {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            while let Err(wait) = (self.quota)().await {
                tokio::time::sleep(wait).await;
            }
            budget.spend(Instant::now());
            self.ask(chunk).await?;
        }
        Ok(())
    }

    async fn ask(&self, chunk: &[String]) -> Result<(), String> {
        let ids: Vec<TaskId> = chunk.iter().filter_map(|id| TaskId::parse(id)).collect();
        let query = ListQuery::parse(None)
            .expect("the empty query is valid")
            .upstream_query(&ids, 1, IDS_PER_CALL as u32);
        let mut req = Request::new(Bytes::new());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = TASKS_PATH.parse().expect("a constant path");
        req.extensions_mut().insert(Operation::List);
        req.extensions_mut().insert(UpstreamQuery(query));
        let response = self.upstream.clone().oneshot(req).await.map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("list answered {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let seen: HashSet<String> = super::record_list(&*self.ledger, &self.metrics, &body)
            .await
            .into_iter()
            .collect();
        // Asked by id and not listed: Ark no longer knows the task.
        for id in chunk.iter().filter(|id| !seen.contains(*id)) {
            super::record(&*self.ledger, &self.metrics, id, Observation::Gone).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_max_calls_in_any_sixty_seconds() {
        let start = Instant::now();
        let mut budget = CallBudget::new(3);
        for i in 0..3 {
            let at = start + Duration::from_secs(i);
            assert_eq!(budget.wait(at), Duration::ZERO);
            budget.spend(at);
        }
        assert_eq!(budget.wait(start + Duration::from_secs(10)), Duration::from_secs(50));
        assert_eq!(budget.wait(start + Duration::from_secs(60)), Duration::ZERO);
        budget.spend(start + Duration::from_secs(60));
        assert_eq!(budget.wait(start + Duration::from_secs(60)), Duration::from_secs(1));
    }
}
