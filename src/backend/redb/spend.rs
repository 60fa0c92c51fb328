//! The spend counts in the redb file, written in the same transactions as
//! the task records they derive from, so a crash can never separate them:
//! active slots per tenant (and the account), used and reserved totals per
//! tenant and period, usage aggregates per tenant, day and model, and the
//! set of tasks not yet seen to end.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::unavailable;
use crate::ledger::{LedgerError, TaskRecord};
use crate::spend::transition;
use crate::spend::*;

/// Marks what the file holds: 1 once records from before the mirror were adopted.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("spend_meta");
/// tenant → active slots; the empty name is the whole account.
pub(super) const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active_slots");
/// (tenant, `2026-12-02` or `2026-12`) → [`WindowTotals`] (JSON).
pub(super) const WINDOWS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("budget_windows");
/// (tenant, day, model) → [`UsageCounts`] (JSON).
pub(super) const USAGE: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("usage_by_day");
/// task id → created_ms: tasks the reconciler still asks about.
pub(super) const OPEN: TableDefinition<&str, u64> = TableDefinition::new("open_tasks");

const ACCOUNT: &str = "";

pub(super) fn open_tables(txn: &WriteTransaction) -> Result<(), LedgerError> {
    txn.open_table(ACTIVE).map_err(unavailable)?;
    txn.open_table(WINDOWS).map_err(unavailable)?;
    txn.open_table(USAGE).map_err(unavailable)?;
    txn.open_table(OPEN).map_err(unavailable)?;
    txn.open_table(META).map_err(unavailable)?;
    Ok(())
}

/// Once per file: tasks recorded before the mirror existed (no status, not
/// settled, not cancelled or deleted) join the open set, so the reconciler
/// asks Ark about them like any other.
pub(super) fn adopt_unmirrored(txn: &WriteTransaction) -> Result<(), LedgerError> {
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    if meta.get("mirror").map_err(unavailable)?.is_some() {
        return Ok(());
    }
    let tasks = txn.open_table(super::TASKS).map_err(unavailable)?;
    let mut open = txn.open_table(OPEN).map_err(unavailable)?;
    for entry in tasks.iter().map_err(unavailable)? {
        let (_, v) = entry.map_err(unavailable)?;
        let Ok(record) = serde_json::from_slice::<TaskRecord>(v.value()) else {
            continue;
        };
        if record.spend.status.is_none() && !record.spend.settled && record.state == crate::ledger::TaskState::Active {
            open.insert(record.task_id.as_str(), record.created_ms)
                .map_err(unavailable)?;
        }
    }
    meta.insert("mirror", 1).map_err(unavailable)?;
    Ok(())
}

fn active(txn: &WriteTransaction, tenant: &str) -> Result<u64, LedgerError> {
    let table = txn.open_table(ACTIVE).map_err(unavailable)?;
    let value = table.get(tenant).map_err(unavailable)?;
    Ok(value.map_or(0, |v| v.value()))
}

fn add_active(txn: &WriteTransaction, tenant: &str, delta: i64) -> Result<(), LedgerError> {
    for name in [tenant, ACCOUNT] {
        let now = active(txn, name)?;
        let mut table = txn.open_table(ACTIVE).map_err(unavailable)?;
        table
            .insert(name, now.saturating_add_signed(delta))
            .map_err(unavailable)?;
    }
    Ok(())
}

fn totals(txn: &WriteTransaction, tenant: &str, period: &str) -> Result<WindowTotals, LedgerError> {
    let table = txn.open_table(WINDOWS).map_err(unavailable)?;
    let value = table.get((tenant, period)).map_err(unavailable)?;
    Ok(value
        .and_then(|v| serde_json::from_slice(v.value()).ok())
        .unwrap_or_default())
}

fn update_totals(
    txn: &WriteTransaction,
    tenant: &str,
    period: &str,
    change: impl Fn(&mut WindowTotals),
) -> Result<(), LedgerError> {
    let mut t = totals(txn, tenant, period)?;
    change(&mut t);
    let mut table = txn.open_table(WINDOWS).map_err(unavailable)?;
    table
        .insert((tenant, period), serde_json::to_vec(&t).expect("serializes").as_slice())
        .map_err(unavailable)?;
    Ok(())
}

fn add_usage(
    txn: &WriteTransaction,
    tenant: &str,
    day: &str,
    model: &str,
    add: &UsageCounts,
) -> Result<(), LedgerError> {
    let mut table = txn.open_table(USAGE).map_err(unavailable)?;
    let mut counts: UsageCounts = table
        .get((tenant, day, model))
        .map_err(unavailable)?
        .and_then(|v| serde_json::from_slice(v.value()).ok())
        .unwrap_or_default();
    counts.add(add);
    table
        .insert(
            (tenant, day, model),
            serde_json::to_vec(&counts).expect("serializes").as_slice(),
        )
        .map_err(unavailable)?;
    Ok(())
}

/// Checks an admission against the counts and, if it fits, holds it.
pub(super) fn admit(
    txn: &WriteTransaction,
    tenant: &str,
    admission: &Admission,
) -> Result<Option<Refusal>, LedgerError> {
    let day = totals(txn, tenant, &admission.day)?;
    let month = totals(txn, tenant, &admission.month)?;
    if let Some(refusal) = admission.refusal(active(txn, tenant)?, active(txn, ACCOUNT)?, &day, &month) {
        return Ok(Some(refusal));
    }
    add_active(txn, tenant, 1)?;
    reserve(txn, tenant, &Hold::of(admission), true)?;
    Ok(None)
}

fn reserve(txn: &WriteTransaction, tenant: &str, held: &Hold, add: bool) -> Result<(), LedgerError> {
    for period in [&held.day, &held.month] {
        update_totals(txn, tenant, period, |t| {
            if add {
                t.reserved_tokens += held.reserved_tokens;
                t.reserved_cost_micros += held.reserved_cost_micros;
            } else {
                t.reserved_tokens = t.reserved_tokens.saturating_sub(held.reserved_tokens);
                t.reserved_cost_micros = t.reserved_cost_micros.saturating_sub(held.reserved_cost_micros);
            }
        })?;
    }
    Ok(())
}

/// Gives back what an intent held (its create produced no owned task).
pub(super) fn release(txn: &WriteTransaction, tenant: &str, held: &Hold) -> Result<(), LedgerError> {
    add_active(txn, tenant, -1)?;
    reserve(txn, tenant, held, false)
}

/// A created task takes over its intent's slot and reservation.
pub(super) fn created(txn: &WriteTransaction, record: &TaskRecord) -> Result<(), LedgerError> {
    let day = day_of(record.created_ms);
    let model = record.model.as_deref().unwrap_or("");
    add_usage(
        txn,
        &record.tenant,
        &day,
        model,
        &UsageCounts {
            created: 1,
            ..UsageCounts::default()
        },
    )?;
    let mut open = txn.open_table(OPEN).map_err(unavailable)?;
    open.insert(record.task_id.as_str(), record.created_ms)
        .map_err(unavailable)?;
    Ok(())
}

/// Applies an observation to a record (and the counts); returns the
/// settlement if the task ended now. `None` in the first place: nothing changed.
pub(super) fn apply_observation(
    txn: &WriteTransaction,
    record: &mut TaskRecord,
    observation: Observation,
) -> Result<Option<Option<Settlement>>, LedgerError> {
    let Some(change) = transition(record, observation) else {
        return Ok(None);
    };
    if change.take_slot {
        add_active(txn, &record.tenant, 1)?;
    }
    if let Some(settlement) = &change.settlement {
        let held = Hold {
            reserved_tokens: record.spend.reserved_tokens,
            reserved_cost_micros: record.spend.reserved_cost_micros,
            day: day_of(record.created_ms),
            month: month_of(record.created_ms),
        };
        reserve(txn, &record.tenant, &held, false)?;
        for period in [&held.day, &held.month] {
            update_totals(txn, &record.tenant, period, |t| {
                t.used_tokens += settlement.tokens;
                t.used_cost_micros += settlement.cost_micros;
            })?;
        }
        add_usage(
            txn,
            &record.tenant,
            &held.day,
            &settlement.model,
            &UsageCounts::of_settlement(settlement),
        )?;
        if change.free_slot {
            add_active(txn, &record.tenant, -1)?;
        }
        let mut open = txn.open_table(OPEN).map_err(unavailable)?;
        open.remove(record.task_id.as_str()).map_err(unavailable)?;
    }
    record.spend = change.next;
    Ok(Some(change.settlement))
}

/// Drops usage aggregates of days before `before_day`, and budget windows
/// that ended long ago. Returns how many aggregates went.
pub(super) fn sweep_usage(txn: &WriteTransaction, before_day: &str) -> Result<usize, LedgerError> {
    let mut usage = txn.open_table(USAGE).map_err(unavailable)?;
    let before = usage.len().map_err(unavailable)?;
    usage.retain(|(_, day, _), _| day >= before_day).map_err(unavailable)?;
    let removed = (before - usage.len().map_err(unavailable)?) as usize;
    let mut windows = txn.open_table(WINDOWS).map_err(unavailable)?;
    // Windows are a day or a month: keep anything of the last ~3 months.
    let keep_from = month_of(parse_day(before_day).map_or(0, Day::start_ms).max(now_cutoff()));
    windows
        .retain(|(_, period), _| period.get(..7).is_some_and(|m| m >= keep_from.as_str()))
        .map_err(unavailable)?;
    Ok(removed)
}

fn now_cutoff() -> u64 {
    crate::ledger::now_ms().saturating_sub(93 * 86_400_000)
}
