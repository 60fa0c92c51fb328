//! `/ui` on the admin listener: one server-rendered page per gateway with,
//! for each team, active tasks against its quota, tokens and cost today and
//! this month against its budget, its denials of the last hour by reason, and
//! its latest tasks. No script, no external asset: bars are inline SVG, and a
//! `<meta refresh>` reloads it. The numbers are the usage report's own
//! (`spend::report::build`, the same ledger reads as `/usage`).

use std::fmt::Write;

use crate::ledger::Ledger;
use crate::reload::Snapshot;
use crate::spend::report::{self, TenantView, UsageQuery};

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 15;
/// Latest tasks shown per team, from the last day.
const LATEST_TASKS: usize = 10;
const LATEST_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// The page's HTML, or the ledger's error.
pub(crate) async fn page(
    ledger: &dyn Ledger,
    snapshot: &Snapshot,
    rejections: &[(String, &'static str, u64)],
) -> Result<String, crate::ledger::LedgerError> {
    let now = crate::ledger::now_ms();
    // The default query: this month, every tenant, by day.
    let query = UsageQuery::parse(None, now).expect("the default usage query is valid");
    let tenants: Vec<TenantView<'_>> = snapshot.tenants.iter().map(|t| TenantView::from(&**t)).collect();
    let usage = report::build(ledger, &snapshot.spend.pricing, &tenants, &query, now).await?;
    let currency = usage["currency"].as_str().unwrap_or("");
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>ark-gateway usage</title><style>{STYLE}</style></head><body>\
         <h1>ark-gateway usage</h1><p class=\"note\">Refreshes every {REFRESH_SECS} s. Tasks and spend are \
         the shared counts of every replica (tokens and cost: used plus what running tasks reserve); \
         denials are this replica's, last hour.</p>"
    );
    for tenant in usage["tenants"].as_array().into_iter().flatten() {
        let name = tenant["tenant"].as_str().unwrap_or("");
        let _ = write!(
            html,
            "<section class=\"team\" data-tenant=\"{0}\"><h2>{0}</h2>",
            escape(name)
        );
        let active = tenant["active_tasks"].as_u64().unwrap_or(0);
        html.push_str("<table class=\"gauges\">");
        meter(
            &mut html,
            "active tasks",
            "active_tasks",
            active as f64,
            tenant["max_active_tasks"].as_u64().map(|n| n as f64),
            "",
        );
        for window in tenant["windows"].as_array().into_iter().flatten() {
            let key = window["window"].as_str().unwrap_or("");
            let used = window["used"].as_f64().unwrap_or(0.0);
            let reserved = window["reserved"].as_f64().unwrap_or(0.0);
            let unit = if key.ends_with("cost") { currency } else { "tokens" };
            let label = match key {
                "daily_tokens" => "tokens today",
                "monthly_tokens" => "tokens this month",
                "daily_cost" => "cost today",
                "monthly_cost" => "cost this month",
                other => other,
            };
            meter(&mut html, label, key, used + reserved, window["limit"].as_f64(), unit);
        }
        html.push_str("</table>");

        html.push_str("<h3>Denied, last hour</h3>");
        let denied: Vec<_> = rejections.iter().filter(|(t, _, _)| t == name).collect();
        if denied.is_empty() {
            html.push_str("<p class=\"none\">none</p>");
        } else {
            html.push_str("<table class=\"denied\"><tr><th>reason</th><th>requests</th></tr>");
            for (_, reason, n) in denied {
                let _ = write!(html, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", escape(reason));
            }
            html.push_str("</table>");
        }

        html.push_str("<h3>Latest tasks</h3>");
        let since = now.saturating_sub(LATEST_WINDOW_MS);
        // A store that pages reads only the newest few; otherwise the day's tasks.
        let tasks = match ledger.owned_page(name, since, 0, LATEST_TASKS).await? {
            Some(page) => page.tasks,
            None => {
                let mut tasks = ledger.owned_tasks(name, since).await?;
                tasks.truncate(LATEST_TASKS);
                tasks
            }
        };
        if tasks.is_empty() {
            html.push_str("<p class=\"none\">none in the last 24 h</p>");
        } else {
            html.push_str("<table class=\"tasks\"><tr><th>task</th><th>model</th><th>status</th><th>created</th></tr>");
            for task in tasks {
                let created = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(task.created_ms),
                );
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code></td><td>{}</td><td class=\"status\">{}</td><td>{created}</td></tr>",
                    escape(&task.task_id),
                    escape(task.model.as_deref().unwrap_or("")),
                    task.status.map_or("unknown", |s| s.as_str()),
                );
            }
            html.push_str("</table>");
        }
        html.push_str("</section>");
    }
    html.push_str("</body></html>\n");
    Ok(html)
}

/// One row: the label, a bar of `value` against `limit` (none without a
/// limit), and the numbers.
fn meter(html: &mut String, label: &str, key: &str, value: f64, limit: Option<f64>, unit: &str) {
    let number = |n: f64| match n.fract() == 0.0 {
        true => format!("{n:.0}"),
        false => format!("{n:.2}"),
    };
    let unit = match unit {
        "" => String::new(),
        unit => format!(" {unit}"),
    };
    let shown = match limit {
        Some(limit) => format!("{} / {}{unit}", number(value), number(limit)),
        None => format!("{}{unit} (no limit)", number(value)),
    };
    let _ = write!(html, "<tr data-metric=\"{key}\"><th>{}</th><td>", escape(label));
    if let Some(limit) = limit {
        let share = if limit > 0.0 {
            (value / limit).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let class = match share {
            s if s >= 1.0 => "full",
            s if s >= 0.8 => "near",
            _ => "ok",
        };
        let _ = write!(
            html,
            "<svg width=\"240\" height=\"14\" role=\"img\" aria-label=\"{pct:.0}%\">\
             <rect width=\"240\" height=\"14\" class=\"track\"/>\
             <rect width=\"{w:.1}\" height=\"14\" class=\"{class}\"/></svg>",
            pct = share * 100.0,
            w = share * 240.0,
        );
    }
    let _ = write!(html, "</td><td class=\"value\">{}</td></tr>", escape(&shown));
}

/// Text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}.note{color:#666}section.team{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}\
h2{margin:0 0 .5em}h3{font-size:1em;margin:1em 0 .3em}table{border-collapse:collapse}\
th,td{text-align:left;padding:.2em .8em .2em 0}td.n,td.value{font-variant-numeric:tabular-nums}\
.track{fill:#eee}.ok{fill:#3a7}.near{fill:#e90}.full{fill:#d33}.none{color:#888}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_meter_shows_its_share_and_numbers() {
        let mut html = String::new();
        meter(&mut html, "tokens today", "daily_tokens", 90.0, Some(100.0), "tokens");
        assert!(
            html.contains("aria-label=\"90%\"") && html.contains("class=\"near\""),
            "{html}"
        );
        assert!(html.contains("90 / 100 tokens"), "{html}");
        let mut html = String::new();
        meter(&mut html, "active tasks", "active_tasks", 3.0, None, "");
        assert!(!html.contains("<svg") && html.contains("3 (no limit)"), "{html}");
    }
}
