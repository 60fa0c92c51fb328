//! Spend governance: what a task is expected to cost when it is created, what
//! it did cost when it ends, and the limits a create is checked against.
//!
//! A create *reserves* its expected tokens (and their cost) in the windows of
//! the day and month it was created in, and holds an *active slot*; when the
//! task is seen to end (a relayed get or list, the reconciler, a delete), it
//! is *settled* exactly once: the reservation is replaced by Ark's own usage
//! and the slot is freed. The arithmetic is here; the ledger backends keep
//! the counts, atomically, next to the task records.

mod estimate;
mod period;

use serde::{Deserialize, Serialize};

pub mod reconcile;
pub mod report;

pub use estimate::reserve_tokens;
pub use period::{day_of, month_of, next_day_start_ms, next_month_start_ms, parse_day, Day};

/// A task's status as Ark reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArkStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl ArkStatus {
    pub const ALL: [ArkStatus; 6] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Queued or running: holds an active slot.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// What the ledger knows of a task's spend, kept in its record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpend {
    /// Last status seen; `None` until Ark was first asked (records older than the mirror).
    #[serde(default)]
    pub status: Option<ArkStatus>,
    /// Ark's `usage.total_tokens` (else `completion_tokens`), once reported.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Ark's `updated_at` (Unix seconds).
    #[serde(default)]
    pub updated_at: Option<u64>,
    /// Tokens reserved at create (released when settled).
    #[serde(default)]
    pub reserved_tokens: u64,
    /// The cost reserved at create, in millionths of the currency.
    #[serde(default)]
    pub reserved_cost_micros: u64,
    /// The model's price when the task was created (per million tokens).
    #[serde(default)]
    pub per_million_tokens: Option<f64>,
    /// Whether the task holds an active slot in the counts.
    #[serde(default)]
    pub holds_slot: bool,
    /// Settled: its final tokens and cost are in the counts.
    #[serde(default)]
    pub settled: bool,
}

/// What one relayed Ark answer (or the reconciler) says about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    Seen {
        status: ArkStatus,
        tokens: Option<u64>,
        updated_at: Option<u64>,
    },
    /// Ark no longer knows the task (404 on get, absent from an id-filtered list).
    Gone,
    /// A successful DELETE: cancelled if it was queued, deleted if it had ended.
    Deleted,
}

/// The fields of an Ark task object the mirror reads, borrowed from the body.
#[derive(Deserialize)]
pub(crate) struct TaskProbe<'a> {
    #[serde(borrow)]
    pub(crate) id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
    usage: Option<UsageProbe>,
    updated_at: Option<u64>,
}

#[derive(Deserialize)]
struct UsageProbe {
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl TaskProbe<'_> {
    pub(crate) fn observation(&self) -> Option<Observation> {
        Some(Observation::Seen {
            status: ArkStatus::parse(self.status.as_deref()?)?,
            tokens: self.usage.as_ref().and_then(|u| u.total_tokens.or(u.completion_tokens)),
            updated_at: self.updated_at,
        })
    }
}

/// Records what Ark said about a task; counts a settlement in the metrics.
/// A ledger that cannot be written is logged: the answer still goes out,
/// and the reconciler (or the next answer) brings the mirror up to date.
pub(crate) async fn record(
    ledger: &dyn crate::ledger::Ledger,
    metrics: &crate::metrics::Metrics,
    task_id: &str,
    observation: Observation,
) {
    match ledger.observe(task_id, observation).await {
        Ok(Some(settlement)) => metrics.settled(&settlement),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, task_id, "could not record the task's status in the ledger"),
    }
}

/// Records every task object of a list answer (`{"items": [...]}`).
pub(crate) async fn record_list(
    ledger: &dyn crate::ledger::Ledger,
    metrics: &crate::metrics::Metrics,
    body: &[u8],
) -> Vec<String> {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(borrow, default)]
        items: Vec<TaskProbe<'a>>,
    }
    let Ok(page) = serde_json::from_slice::<Page>(body) else {
        return Vec::new();
    };
    let mut seen = Vec::with_capacity(page.items.len());
    for item in &page.items {
        let (Some(id), Some(observation)) = (item.id.as_deref(), item.observation()) else {
            continue;
        };
        record(ledger, metrics, id, observation).await;
        seen.push(id.to_string());
    }
    seen
}

/// Reads the observation out of a task object (a get's body, a list item).
pub fn observe_task_json(body: &[u8]) -> Option<Observation> {
    serde_json::from_slice::<TaskProbe>(body).ok()?.observation()
}

/// A budget window; its name is the `param` of a refusal (`budget.<window>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    DailyTokens,
    MonthlyTokens,
    DailyCost,
    MonthlyCost,
}

impl Window {
    pub const ALL: [Window; 4] = [
        Window::DailyTokens,
        Window::MonthlyTokens,
        Window::DailyCost,
        Window::MonthlyCost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DailyTokens => "daily_tokens",
            Self::MonthlyTokens => "monthly_tokens",
            Self::DailyCost => "daily_cost",
            Self::MonthlyCost => "monthly_cost",
        }
    }

    pub fn param(self) -> &'static str {
        match self {
            Self::DailyTokens => "budget.daily_tokens",
            Self::MonthlyTokens => "budget.monthly_tokens",
            Self::DailyCost => "budget.daily_cost",
            Self::MonthlyCost => "budget.monthly_cost",
        }
    }

    pub fn is_daily(self) -> bool {
        matches!(self, Self::DailyTokens | Self::DailyCost)
    }

    pub fn is_cost(self) -> bool {
        matches!(self, Self::DailyCost | Self::MonthlyCost)
    }

    /// When the window containing `now_ms` ends.
    pub fn resets_at_ms(self, now_ms: u64) -> u64 {
        if self.is_daily() {
            next_day_start_ms(now_ms)
        } else {
            next_month_start_ms(now_ms)
        }
    }

    /// The limit of this window in a budget, in tokens or cost micros.
    pub fn limit(self, budget: &crate::config::BudgetConfig) -> Option<u64> {
        match self {
            Self::DailyTokens => budget.daily_tokens,
            Self::MonthlyTokens => budget.monthly_tokens,
            Self::DailyCost => budget.daily_cost.map(cost_micros_of),
            Self::MonthlyCost => budget.monthly_cost.map(cost_micros_of),
        }
    }
}

/// An amount of currency in millionths (counts are kept as integers).
pub fn cost_micros_of(amount: f64) -> u64 {
    (amount * 1_000_000.0).round().max(0.0) as u64
}

/// Cost of `tokens` at `per_million_tokens`, in millionths of the currency.
pub fn token_cost_micros(tokens: u64, per_million_tokens: Option<f64>) -> u64 {
    per_million_tokens.map_or(0, |price| (tokens as f64 * price).round().max(0.0) as u64)
}

pub fn micros_to_amount(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// Used and reserved amounts of one tenant in one period (a day or a month).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowTotals {
    pub used_tokens: u64,
    pub reserved_tokens: u64,
    pub used_cost_micros: u64,
    pub reserved_cost_micros: u64,
}

impl WindowTotals {
    /// Used + reserved, in the unit of `window`.
    pub fn committed(&self, window: Window) -> u64 {
        if window.is_cost() {
            self.used_cost_micros + self.reserved_cost_micros
        } else {
            self.used_tokens + self.reserved_tokens
        }
    }
}

/// What a create asks the ledger to hold, checked atomically with the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub model: String,
    pub reserved_tokens: u64,
    pub reserved_cost_micros: u64,
    pub per_million_tokens: Option<f64>,
    /// The create's day and month (`2026-12-02`, `2026-12`).
    pub day: String,
    pub month: String,
    pub tenant_max_active: Option<u64>,
    pub account_max_active: Option<u64>,
    /// Budget limits that apply: (window, limit in tokens or cost micros).
    pub limits: Vec<(Window, u64)>,
    /// Until when an unfinished create holds its slot (Unix ms).
    pub lease_until_ms: u64,
}

impl Admission {
    /// The first limit this admission would break, given the current counts.
    pub fn refusal(
        &self,
        tenant_active: u64,
        account_active: u64,
        day: &WindowTotals,
        month: &WindowTotals,
    ) -> Option<Refusal> {
        if self.tenant_max_active.is_some_and(|max| tenant_active + 1 > max) {
            return Some(Refusal::ActiveTasks);
        }
        if self.account_max_active.is_some_and(|max| account_active + 1 > max) {
            return Some(Refusal::ActiveTasks);
        }
        for (window, limit) in &self.limits {
            let totals = if window.is_daily() { day } else { month };
            let this = if window.is_cost() {
                self.reserved_cost_micros
            } else {
                self.reserved_tokens
            };
            if totals.committed(*window) + this > *limit {
                return Some(Refusal::Budget(*window));
            }
        }
        None
    }
}

/// What a create in flight holds (kept in its intent, so that whoever gives
/// it back, this process or another replica, knows how much).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reserved_tokens: u64,
    pub reserved_cost_micros: u64,
    pub day: String,
    pub month: String,
}

impl Hold {
    pub fn of(admission: &Admission) -> Self {
        Self {
            reserved_tokens: admission.reserved_tokens,
            reserved_cost_micros: admission.reserved_cost_micros,
            day: admission.day.clone(),
            month: admission.month.clone(),
        }
    }
}

/// Why a create was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ActiveTasks,
    Budget(Window),
}

/// The settlement of a task that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub tenant: String,
    pub model: String,
    pub status: ArkStatus,
    pub tokens: u64,
    pub cost_micros: u64,
    /// A succeeded task that reported no usage: its reservation is its cost.
    pub estimated: bool,
}

/// The tokens a task that ended counts for, and whether that is an estimate.
pub fn final_tokens(status: ArkStatus, reported: Option<u64>, reserved: u64) -> (u64, bool) {
    match (status, reported) {
        (_, Some(tokens)) => (tokens, false),
        (ArkStatus::Succeeded, None) => (reserved, true),
        (_, None) => (0, false),
    }
}

/// What an observation does to a task: its new spend, and what changes in the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub next: TaskSpend,
    /// A task from before the mirror, first seen queued or running, takes a slot.
    pub take_slot: bool,
    /// It ended now: its slot (if it held one) is freed.
    pub free_slot: bool,
    /// It ended now: what it counts for (settled exactly once).
    pub settlement: Option<Settlement>,
}

/// Whether `observation` changes anything for a task whose spend is `spend`
/// (the check on every relayed answer, before any write). A settled task is
/// counted once: later answers do not change what was counted.
pub fn changes(spend: &TaskSpend, observation: Observation) -> bool {
    let ended = spend.status.is_some_and(|s| !s.is_active());
    match observation {
        Observation::Seen { status, tokens, .. } => {
            !spend.settled && (spend.status != Some(status) || spend.tokens != tokens.or(spend.tokens))
        }
        Observation::Gone | Observation::Deleted => !(ended || spend.settled),
    }
}

/// The effect of `observation` on `record`, or `None` when it changes nothing
/// (the common case: an answer that repeats what the mirror knows).
pub fn transition(record: &crate::ledger::TaskRecord, observation: Observation) -> Option<Transition> {
    let spend = &record.spend;
    if !changes(spend, observation) {
        return None;
    }
    let mut next = spend.clone();
    match observation {
        Observation::Seen {
            status,
            tokens,
            updated_at,
        } => {
            next.status = Some(status);
            next.tokens = tokens.or(spend.tokens);
            next.updated_at = updated_at.or(spend.updated_at);
        }
        Observation::Gone => next.status = Some(ArkStatus::Expired),
        Observation::Deleted => next.status = Some(ArkStatus::Cancelled),
    }
    let status = next.status.unwrap_or(ArkStatus::Expired);
    let take_slot = !spend.holds_slot && status.is_active();
    next.holds_slot |= take_slot;
    if status.is_active() {
        return Some(Transition {
            next,
            take_slot,
            free_slot: false,
            settlement: None,
        });
    }
    let (tokens, estimated) = final_tokens(status, next.tokens, spend.reserved_tokens);
    let settlement = Settlement {
        tenant: record.tenant.clone(),
        model: record.model.clone().unwrap_or_default(),
        status,
        tokens,
        cost_micros: token_cost_micros(tokens, spend.per_million_tokens),
        estimated,
    };
    let free_slot = next.holds_slot;
    next.holds_slot = false;
    next.settled = true;
    Some(Transition {
        next,
        take_slot: false,
        free_slot,
        settlement: Some(settlement),
    })
}

/// Per tenant, model and day: what the usage report shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounts {
    pub created: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    pub tokens: u64,
    pub cost_micros: u64,
    /// Settled tasks whose tokens are their reservation (no usage reported).
    pub estimated: u64,
}

impl UsageCounts {
    pub fn add(&mut self, other: &UsageCounts) {
        self.created += other.created;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.expired += other.expired;
        self.tokens += other.tokens;
        self.cost_micros += other.cost_micros;
        self.estimated += other.estimated;
    }

    /// The counts one settlement adds.
    pub fn of_settlement(s: &Settlement) -> Self {
        let mut counts = Self {
            tokens: s.tokens,
            cost_micros: s.cost_micros,
            estimated: u64::from(s.estimated),
            ..Self::default()
        };
        match s.status {
            ArkStatus::Succeeded => counts.succeeded = 1,
            ArkStatus::Failed => counts.failed = 1,
            ArkStatus::Cancelled => counts.cancelled = 1,
            ArkStatus::Expired | ArkStatus::Queued | ArkStatus::Running => counts.expired = 1,
        }
        counts
    }
}

/// One row of the usage aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    pub model: String,
    pub day: String,
    pub counts: UsageCounts,
}

/// A tenant's counts now: active slots and its current day and month.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantCounts {
    pub active: u64,
    pub day: WindowTotals,
    pub month: WindowTotals,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_a_task_object() {
        let body = br#"{"id":"cgt-1","status":"succeeded","usage":{"completion_tokens":108900,"total_tokens":108900},"updated_at":5}"#;
        assert_eq!(
            observe_task_json(body),
            Some(Observation::Seen {
                status: ArkStatus::Succeeded,
                tokens: Some(108_900),
                updated_at: Some(5)
            })
        );
        let only_completion = br#"{"status":"failed","usage":{"completion_tokens":7}}"#;
        assert!(matches!(
            observe_task_json(only_completion),
            Some(Observation::Seen { tokens: Some(7), .. })
        ));
        assert_eq!(observe_task_json(br#"{"status":"weird"}"#), None);
        assert_eq!(observe_task_json(b"not json"), None);
    }

    #[test]
    fn final_tokens_follow_the_settlement_rules() {
        assert_eq!(final_tokens(ArkStatus::Succeeded, Some(10), 99), (10, false));
        assert_eq!(final_tokens(ArkStatus::Succeeded, None, 99), (99, true));
        assert_eq!(final_tokens(ArkStatus::Failed, None, 99), (0, false));
        assert_eq!(final_tokens(ArkStatus::Cancelled, Some(3), 99), (3, false));
        assert_eq!(final_tokens(ArkStatus::Expired, None, 99), (0, false));
    }

    #[test]
    fn a_limit_may_be_reached_but_not_passed() {
        let admission = Admission {
            model: "m".into(),
            reserved_tokens: 10,
            reserved_cost_micros: 0,
            per_million_tokens: None,
            day: "2026-12-02".into(),
            month: "2026-12".into(),
            tenant_max_active: Some(2),
            account_max_active: None,
            limits: vec![(Window::DailyTokens, 30)],
            lease_until_ms: 0,
        };
        let day = |used, reserved| WindowTotals {
            used_tokens: used,
            reserved_tokens: reserved,
            ..Default::default()
        };
        assert_eq!(admission.refusal(0, 0, &day(10, 10), &day(0, 0)), None);
        assert_eq!(
            admission.refusal(0, 0, &day(10, 11), &day(0, 0)),
            Some(Refusal::Budget(Window::DailyTokens))
        );
        assert_eq!(admission.refusal(1, 1, &day(0, 0), &day(0, 0)), None);
        assert_eq!(
            admission.refusal(2, 2, &day(0, 0), &day(0, 0)),
            Some(Refusal::ActiveTasks)
        );
    }
}
