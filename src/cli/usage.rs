//! `ark-gateway usage`: the usage report, from the gateway serving the store
//! (its admin API) or, when none does, from the store itself.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ark_gateway::config::{Config, StoreBackend};
use ark_gateway::ledger::{Ledger, LedgerError, RedbLedger, RedisLedger};
use serde_json::Value;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(long, default_value = "config/ark-gateway.toml")]
    config: PathBuf,
    /// First day, YYYY-MM-DD (default: the first of this UTC month).
    #[arg(long)]
    from: Option<String>,
    /// Last day, inclusive (default: today, UTC).
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// day or month.
    #[arg(long, default_value = "day")]
    group: String,
    /// table, csv or json.
    #[arg(long, default_value = "table")]
    format: String,
    /// File holding the admin token (else `ARK_GATEWAY_ADMIN_TOKEN`), to ask a running gateway.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The running gateway's admin address, where it is not `admin.listen`
    /// (a port 0 in the config, or a wildcard address).
    #[arg(long)]
    admin_addr: Option<std::net::SocketAddr>,
}

pub(super) fn run(args: Args) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}:\n{e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [("from", &args.from), ("to", &args.to), ("tenant", &args.tenant)] {
        if let Some(value) = value {
            query.append_pair(key, value);
        }
    }
    query.append_pair("group", &args.group);
    let format = args.format.as_str();
    if !matches!(format, "table" | "csv" | "json") {
        eprintln!("--format must be table, csv or json");
        return ExitCode::FAILURE;
    }
    query.append_pair("format", if format == "csv" { "csv" } else { "json" });
    let query = query.finish();
    let runtime = super::runtime();
    let local = runtime.block_on(async {
        let ledger: Box<dyn Ledger> = match &config.store.backend {
            StoreBackend::Redis(url) => {
                let metrics = std::sync::Arc::new(ark_gateway::metrics::Metrics::new());
                let redis = ark_gateway::backend::redis::Redis::connect(url, &config.store.key_prefix, metrics)
                    .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
                Box::new(
                    RedisLedger::new(redis, config.store.retention).with_usage_retention(config.store.usage_retention),
                )
            }
            StoreBackend::Redb => Box::new(RedbLedger::open(&config.store.path)?),
        };
        Ok::<_, LedgerError>(ark_gateway::spend::report::for_config(&*ledger, &config, Some(&query)).await)
    });
    let body = match local {
        Ok(Ok((report, ark_gateway::spend::report::Format::Csv))) => {
            ark_gateway::spend::report::render(&report, ark_gateway::spend::report::Format::Csv).1
        }
        Ok(Ok((report, _))) => report.to_string(),
        Ok(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        // A gateway holds the file: ask it.
        Err(LedgerError::InUse) => match ask_gateway(
            args.admin_addr.unwrap_or(config.admin.listen),
            &args.admin_token_file,
            &query,
        ) {
            Ok(body) => body,
            Err(e) => {
                eprintln!(
                    "{} is in use by a running gateway, and its admin API did not answer: {e}",
                    config.store.path.display()
                );
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("the store is unavailable: {e}");
            return ExitCode::FAILURE;
        }
    };
    match format {
        "table" => match serde_json::from_str::<Value>(&body) {
            Ok(report) => print!("{}", table(&report)),
            Err(_) => print!("{body}"),
        },
        _ => print!("{body}"),
    }
    ExitCode::SUCCESS
}

/// `GET /usage` on the config's admin listener, with the admin token.
fn ask_gateway(addr: std::net::SocketAddr, token_file: &Option<PathBuf>, query: &str) -> Result<String, String> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        None => std::env::var("ARK_GATEWAY_ADMIN_TOKEN")
            .map_err(|_| "set ARK_GATEWAY_ADMIN_TOKEN or --admin-token-file".to_string())?,
    };
    let token = token.trim();
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /usage?{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("a malformed answer")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok(body.to_string())
}

fn table(report: &Value) -> String {
    let mut out = format!(
        "{:<20} {:<36} {:<10} {:>7} {:>9} {:>6} {:>9} {:>7} {:>12} {:>12}\n",
        "tenant", "model", "period", "created", "succeeded", "failed", "cancelled", "expired", "tokens", "cost"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{:<20} {:<36} {:<10} {:>7} {:>9} {:>6} {:>9} {:>7} {:>12} {:>12.2}\n",
            s("tenant"),
            s("model"),
            s("period"),
            n("created"),
            n("succeeded"),
            n("failed"),
            n("cancelled"),
            n("expired"),
            n("tokens"),
            r["cost"].as_f64().unwrap_or(0.0)
        ));
    }
    out.push_str(&format!("\ncurrency: {}\n", report["currency"].as_str().unwrap_or("")));
    for t in report["tenants"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}: {} active (max {})\n",
            t["tenant"].as_str().unwrap_or(""),
            t["active_tasks"],
            t["max_active_tasks"]
        ));
        for w in t["windows"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<15} limit {:>14} used {:>14} reserved {:>14} resets {}\n",
                w["window"].as_str().unwrap_or(""),
                w["limit"].to_string(),
                w["used"].to_string(),
                w["reserved"].to_string(),
                w["resets_at"].as_str().unwrap_or("")
            ));
        }
    }
    out
}
