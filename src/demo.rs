//! `ark-gateway demo`: the mock upstream and the gateway on loopback, with
//! the two public demo tenants of `config/demo.toml`, and copy-paste snippets.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::audit::AuditSink;
use crate::config::{Config, ConfigError};
use std::sync::Arc;

use crate::gateway::{start_with, GatewayParts, RunningGateway, StartError};
use crate::ledger::RedbLedger;
use crate::mock_upstream::{MockOptions, MockUpstream};

pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
pub const DEMO_TENANTS: [(&str, &str); 2] = [
    ("video-team", "demo-token-video-team"),
    ("ads-team", "demo-token-ads-team"),
];
const DEMO_KEY_ENV: &str = "ARK_GATEWAY_DEMO_KEY";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the built-in demo config is invalid:\n{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Starts the mock and the gateway (on `listen`), returning both.
pub async fn start(listen: SocketAddr) -> Result<(MockUpstream, RunningGateway), DemoError> {
    let mut key = [0u8; 16];
    let _ = getrandom::fill(&mut key);
    let upstream_key = format!("demo-upstream-{}", hex::encode(key));
    let mock_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Bind(SocketAddr::from(([127, 0, 0, 1], 0)), e))?;
    let mock = MockUpstream::start(mock_listener, MockOptions::new(upstream_key.clone()))
        .map_err(|e| DemoError::Bind(SocketAddr::from(([127, 0, 0, 1], 0)), e))?;

    let env = move |name: &str| (name == DEMO_KEY_ENV).then(|| upstream_key.clone());
    let mut config = Config::from_toml_str(DEMO_CONFIG, &env)?;
    config.upstream.base_url = mock.base_url().parse().expect("the mock's URL is valid");
    config.server.listen = listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| DemoError::Bind(listen, e))?;
    // The probes and metrics, as in a real deployment; the demo runs without
    // them rather than not at all when the port is taken.
    let admin_listener = match TcpListener::bind(config.admin.listen).await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!(addr = %config.admin.listen, error = %e, "admin listener not started");
            None
        }
    };
    let audit = AuditSink::start(&config.audit).map_err(StartError::Audit)?;
    let ledger = Arc::new(RedbLedger::open(&config.store.path).map_err(StartError::Ledger)?);
    let gateway = start_with(GatewayParts {
        config,
        listener,
        admin_listener,
        audit,
        ledger,
        metrics: Arc::new(crate::metrics::Metrics::new()),
        store_redis: None,
        config_path: None,
        env: Arc::new(crate::config::process_env),
    })?;
    Ok((mock, gateway))
}

/// The snippets printed for each demo tenant.
pub fn instructions(gateway: SocketAddr, admin: Option<SocketAddr>) -> String {
    let base = format!("http://{gateway}/api/v3");
    let mut out = format!(
        "ark-gateway demo: gateway on http://{gateway}, mock Ark upstream behind it.\n\
         Audit records follow on stdout; diagnostics go to stderr. Ctrl-C stops.\n"
    );
    if let Some(admin) = admin {
        out.push_str(&format!(
            "Probes: http://{admin}/readyz. Usage and metrics, with the demo admin token:\n\
             curl -s -H 'Authorization: Bearer demo-admin-token' http://{admin}/usage\n\
             curl -s -H 'Authorization: Bearer demo-admin-token' http://{admin}/metrics\n"
        ));
    }
    for (tenant, token) in DEMO_TENANTS {
        out.push_str(&format!(
            "\n--- tenant {tenant} (token {token}) ---\n\
             curl -s -X POST {base}/contents/generations/tasks \\\n  \
               -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n  \
               -d '{{\"model\":\"doubao-seedance-1-0-pro-250528\",\"content\":[{{\"type\":\"text\",\"text\":\"a red kite over the sea\"}}]}}'\n\
             curl -s {base}/contents/generations/tasks/$ID -H 'Authorization: Bearer {token}'\n\
             curl -s -X DELETE {base}/contents/generations/tasks/$ID -H 'Authorization: Bearer {token}'\n\
             curl -s http://{gateway}/gateway/v1/usage -H 'Authorization: Bearer {token}'\n\
             \n\
             # pip install volcengine-ark-runtime\n\
             from volcenginesdkarkruntime import Ark\n\
             client = Ark(base_url=\"{base}\", api_key=\"{token}\")\n\
             task = client.content_generation.tasks.create(\n    \
                 model=\"doubao-seedance-1-0-pro-250528\",\n    \
                 content=[{{\"type\": \"text\", \"text\": \"a red kite over the sea\"}}])\n\
             print(client.content_generation.tasks.get(task_id=task.id).status)\n"
        ));
    }
    out
}
