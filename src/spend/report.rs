//! The usage report: what `/usage` (admin), `/gateway/v1/usage` (a tenant,
//! its own rows only) and `ark-gateway usage` answer, from the ledger's
//! aggregates and counts, in JSON or CSV.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{micros_to_amount, parse_day, Day, UsageCounts, Window};
use crate::config::{BudgetConfig, PricingConfig};
use crate::error::GatewayError;
use crate::ledger::{Ledger, LedgerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// `from`, `to` (inclusive), `tenant`, `group`, `format`.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub from: Day,
    pub to: Day,
    pub tenant: Option<String>,
    pub group: Group,
    pub format: Format,
}

/// The longest range a report covers (a little over the default retention).
const MAX_DAYS: u64 = 800;

impl UsageQuery {
    /// Parses a query string; defaults: this UTC month up to today, by day, JSON.
    pub fn parse(query: Option<&str>, now_ms: u64) -> Result<Self, GatewayError> {
        let today = Day::of_ms(now_ms);
        let mut q = Self {
            from: today.first_of_month(),
            to: today,
            tenant: None,
            group: Group::Day,
            format: Format::Json,
        };
        let bad = |param: &str, reason: &'static str| GatewayError::InvalidQuery {
            param: param.to_string(),
            reason,
        };
        let mut seen = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if seen.contains(&key) {
                return Err(bad(&key, "given more than once"));
            }
            match &*key {
                "from" => q.from = parse_day(&value).ok_or_else(|| bad("from", "expected YYYY-MM-DD"))?,
                "to" => q.to = parse_day(&value).ok_or_else(|| bad("to", "expected YYYY-MM-DD"))?,
                "tenant" => q.tenant = Some(value.to_string()),
                "group" => {
                    q.group = match &*value {
                        "day" => Group::Day,
                        "month" => Group::Month,
                        _ => return Err(bad("group", "expected day or month")),
                    }
                }
                "format" => {
                    q.format = match &*value {
                        "json" => Format::Json,
                        "csv" => Format::Csv,
                        _ => return Err(bad("format", "expected json or csv")),
                    }
                }
                _ => return Err(bad(&key, "unknown parameter")),
            }
            seen.push(key);
        }
        if q.from > q.to {
            return Err(bad("from", "must not be after `to`"));
        }
        if q.to.0 - q.from.0 > MAX_DAYS {
            return Err(bad("from", "the range is longer than 800 days"));
        }
        Ok(q)
    }
}

/// A configured tenant, as the report describes it now.
pub struct TenantView<'a> {
    pub name: &'a str,
    pub max_active_tasks: Option<u64>,
    pub budget: &'a BudgetConfig,
}

impl<'a> From<&'a crate::config::TenantConfig> for TenantView<'a> {
    fn from(t: &'a crate::config::TenantConfig) -> Self {
        Self {
            name: t.name.as_str(),
            max_active_tasks: t.max_active_tasks,
            budget: &t.budget,
        }
    }
}

/// A running gateway's tenant carries the same settings as its config.
impl<'a> From<&'a crate::tenant::TenantPolicy> for TenantView<'a> {
    fn from(t: &'a crate::tenant::TenantPolicy) -> Self {
        Self {
            name: t.name.as_str(),
            max_active_tasks: t.max_active_tasks,
            budget: &t.budget,
        }
    }
}

fn amount(window: Window, value: u64) -> Value {
    if window.is_cost() {
        json!(micros_to_amount(value))
    } else {
        json!(value)
    }
}

/// Builds the report (JSON value). `tenants` are the ones described in
/// `tenants[]`; rows are limited to `query.tenant` when given.
pub async fn build(
    ledger: &dyn Ledger,
    pricing: &PricingConfig,
    tenants: &[TenantView<'_>],
    query: &UsageQuery,
    now_ms: u64,
) -> Result<Value, LedgerError> {
    let rows = ledger.usage_rows(query.tenant.as_deref(), query.from, query.to).await?;
    let mut grouped: BTreeMap<(String, String, String), UsageCounts> = BTreeMap::new();
    for row in rows {
        let period = match query.group {
            Group::Day => row.day.clone(),
            Group::Month => row.day[..7].to_string(),
        };
        grouped
            .entry((row.tenant, row.model, period))
            .or_default()
            .add(&row.counts);
    }
    let rows: Vec<Value> = grouped
        .into_iter()
        .map(|((tenant, model, period), c)| {
            json!({
                "tenant": tenant, "model": model, "period": period,
                "created": c.created, "succeeded": c.succeeded, "failed": c.failed,
                "cancelled": c.cancelled, "expired": c.expired, "tokens": c.tokens,
                "cost": micros_to_amount(c.cost_micros), "estimated": c.estimated,
            })
        })
        .collect();
    let mut described = Vec::new();
    for t in tenants {
        if query.tenant.as_deref().is_some_and(|want| want != t.name) {
            continue;
        }
        let counts = ledger.tenant_counts(t.name, now_ms).await?;
        let windows: Vec<Value> = Window::ALL
            .into_iter()
            .map(|w| {
                let totals = if w.is_daily() { &counts.day } else { &counts.month };
                let (used, reserved) = if w.is_cost() {
                    (totals.used_cost_micros, totals.reserved_cost_micros)
                } else {
                    (totals.used_tokens, totals.reserved_tokens)
                };
                json!({
                    "window": w.as_str(),
                    "limit": w.limit(t.budget).map(|l| amount(w, l)),
                    "used": amount(w, used),
                    "reserved": amount(w, reserved),
                    "resets_at": humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(w.resets_at_ms(now_ms))
                    ).to_string(),
                })
            })
            .collect();
        described.push(json!({
            "tenant": t.name,
            "active_tasks": counts.active,
            "max_active_tasks": t.max_active_tasks,
            "windows": windows,
        }));
    }
    Ok(json!({"currency": pricing.currency, "rows": rows, "tenants": described}))
}

/// The report's body and content type in the asked format.
pub fn render(report: &Value, format: Format) -> (&'static str, String) {
    match format {
        Format::Json => ("application/json", report.to_string()),
        Format::Csv => ("text/csv; charset=utf-8", csv(report)),
    }
}

const CSV_COLUMNS: [&str; 11] = [
    "tenant",
    "model",
    "period",
    "created",
    "succeeded",
    "failed",
    "cancelled",
    "expired",
    "tokens",
    "cost",
    "estimated",
];

fn csv(report: &Value) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    for row in report["rows"].as_array().into_iter().flatten() {
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match &row[*c] {
                Value::String(s) => csv_cell(s),
                other => other.to_string(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Quotes a cell when it needs it; a leading formula character is defused.
fn csv_cell(s: &str) -> String {
    let s = match s.chars().next() {
        Some('=' | '+' | '-' | '@') => format!("'{s}"),
        _ => s.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Answers a usage request under `snapshot`: every configured tenant, or
/// `only` this one (a tenant asking for its own, whatever `tenant=` says).
pub(crate) async fn answer(
    ledger: &dyn Ledger,
    snapshot: &crate::reload::Snapshot,
    raw_query: Option<&str>,
    only: Option<&str>,
) -> Result<crate::error::GatewayResponse, GatewayError> {
    let now = crate::ledger::now_ms();
    let mut query = UsageQuery::parse(raw_query, now)?;
    if let Some(only) = only {
        if query.tenant.as_deref().is_some_and(|asked| asked != only) {
            return Err(GatewayError::InvalidQuery {
                param: "tenant".into(),
                reason: "a tenant sees only its own usage",
            });
        }
        query.tenant = Some(only.to_string());
    }
    let tenants: Vec<TenantView<'_>> = snapshot.tenants.iter().map(|t| TenantView::from(&**t)).collect();
    let report = build(ledger, &snapshot.spend.pricing, &tenants, &query, now)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "ledger read failed; no usage report");
            GatewayError::LedgerUnavailable
        })?;
    let (content_type, body) = render(&report, query.format);
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    Ok(response)
}

/// The report for `ark-gateway usage` when no gateway serves the store.
pub async fn for_config(
    ledger: &dyn Ledger,
    config: &crate::config::Config,
    raw_query: Option<&str>,
) -> Result<(Value, Format), String> {
    let now = crate::ledger::now_ms();
    let query = UsageQuery::parse(raw_query, now).map_err(|e| e.to_string())?;
    let tenants: Vec<TenantView<'_>> = config.tenants.iter().map(TenantView::from).collect();
    let report = build(ledger, &config.pricing, &tenants, &query, now)
        .await
        .map_err(|e| e.to_string())?;
    Ok((report, query.format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_has_defaults_and_refuses_what_it_cannot_read() {
        let now = parse_day("2026-12-02").unwrap().start_ms() + 5;
        let q = UsageQuery::parse(None, now).unwrap();
        assert_eq!(
            (q.from.label(), q.to.label()),
            ("2026-12-01".into(), "2026-12-02".into())
        );
        assert_eq!((q.group, q.format), (Group::Day, Format::Json));
        let q = UsageQuery::parse(
            Some("from=2026-01-01&to=2026-01-31&group=month&format=csv&tenant=a"),
            now,
        )
        .unwrap();
        assert_eq!(
            (q.group, q.format, q.tenant.as_deref()),
            (Group::Month, Format::Csv, Some("a"))
        );
        for bad in [
            "from=2026-13-01",
            "group=week",
            "format=xml",
            "x=1",
            "from=2026-02-02&to=2026-02-01",
            "to=2026-01-01&to=2026-01-02",
        ] {
            assert!(UsageQuery::parse(Some(bad), now).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
    }
}
