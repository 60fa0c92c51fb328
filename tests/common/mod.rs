//! Shared test harness: a mock Ark upstream and a gateway on 127.0.0.1:0, a raw
//! HTTP/1.1 client (so that odd request targets reach the gateway unchanged),
//! and the audit records of a finished run.
#![allow(dead_code)]

pub mod h2;
pub mod process;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ark_gateway::audit::{AuditRecord, AuditSink};
use ark_gateway::config::Config;
use ark_gateway::gateway::{start_with, GatewayParts, RunningGateway};
use ark_gateway::ledger::{BeginOutcome, CreateFate, CreateIntent, Ledger, RedbLedger, StoreFaults};
use ark_gateway::mock_upstream::{MockOptions, MockUpstream, ReceivedRequest};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const UPSTREAM_KEY: &str = "sk-test-upstream-key-0001";
pub const ALPHA: &str = "token-alpha";
pub const BETA: &str = "token-beta";
pub const READER: &str = "token-reader";
pub const LIMITED: &str = "token-limited";
pub const TASKS: &str = "/api/v3/contents/generations/tasks";
pub const CREATE_BODY: &str = r#"{"model":"model-a","content":[{"type":"text","text":"a kite"}]}"#;

pub fn sha256_hex(token: &str) -> String {
    hex::encode(ark_gateway::tenant::token_sha256(token.as_bytes()))
}

/// The default tenants: alpha (everything, two models, static grants), beta
/// (everything), reader (get and list only), limited (1 per minute, burst 2).
pub fn default_tenants() -> String {
    format!(
        r#"
[[tenant]]
name = "alpha"
token_sha256 = "{alpha}"
operations = ["create", "get", "list", "delete"]
models = ["model-a", "model-b"]
task_ids = ["cgt-static-alpha-1", "cgt-alphaprefix*"]
rate_limit = {{ per_second = 1000, burst = 1000 }}

[[tenant]]
name = "beta"
token_sha256 = "{beta}"
operations = ["create", "get", "list", "delete"]
rate_limit = {{ per_second = 1000, burst = 1000 }}

[[tenant]]
name = "reader"
token_sha256 = "{reader}"
operations = ["get", "list"]
task_ids = ["cgt-static-reader-1"]
rate_limit = {{ per_second = 1000, burst = 1000 }}

[[tenant]]
name = "limited"
token_sha256 = "{limited}"
operations = ["create", "get", "list", "delete"]
rate_limit = {{ per_minute = 1, burst = 2 }}
"#,
        alpha = sha256_hex(ALPHA),
        beta = sha256_hex(BETA),
        reader = sha256_hex(READER),
        limited = sha256_hex(LIMITED),
    )
}

/// A config for a gateway in `dir` in front of `base_url`.
pub fn config_text(base_url: &str, dir: &Path, upstream_extra: &str, tenants: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 4096
request_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[upstream]
base_url = "{base_url}"
api_key_env = "TEST_ARK_KEY"
allow_insecure_http = true
connect_timeout = "2s"
{upstream_extra}

[store]
path = "{store}"

[audit]
sink = "file"
path = "{audit}"
{tenants}
"#,
        store = dir.join("ledger.redb").display(),
        audit = dir.join("audit.jsonl").display(),
    )
}

pub fn test_env(name: &str) -> Option<String> {
    (name == "TEST_ARK_KEY").then(|| UPSTREAM_KEY.to_string())
}

pub fn parse_config(text: &str) -> Config {
    Config::from_toml_str(text, &test_env).unwrap_or_else(|e| panic!("test config is invalid:\n{e}"))
}

pub struct Options {
    pub mock: MockOptions,
    pub upstream_extra: String,
    pub tenants: String,
    /// Point the gateway here instead of at the mock (for fault tests).
    pub base_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        let mut mock = MockOptions::new(UPSTREAM_KEY);
        // Tasks stay queued unless a test says otherwise, so a DELETE cancels.
        mock.queued_for = Duration::from_secs(3600);
        Self {
            mock,
            upstream_extra: String::new(),
            tenants: default_tenants(),
            base_url: None,
        }
    }
}

pub struct TestEnv {
    pub mock: MockUpstream,
    pub gateway: Option<RunningGateway>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub faults: StoreFaults,
    pub config_text: String,
    pub admin_addr: SocketAddr,
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The Ark error code of a gateway or Ark error.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// Sends raw bytes and reads the whole answer (the request must close the connection).
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    stream.write_all(raw).await.expect("write the request");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    parse_reply(&buf)
}

pub fn parse_reply(buf: &[u8]) -> Reply {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    send_raw(addr, &bytes).await
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let mock_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = MockUpstream::start(mock_listener, options.mock).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base_url = options.base_url.unwrap_or_else(|| mock.base_url());
        let config_text = config_text(&base_url, dir.path(), &options.upstream_extra, &options.tenants);
        let faults = StoreFaults::default();
        let mut env = TestEnv {
            mock,
            gateway: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            faults,
            config_text,
            admin_addr: "127.0.0.1:0".parse().unwrap(),
        };
        env.start_gateway().await;
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// Replaces the config file (a reload picks it up).
    pub fn write_config(&mut self, text: String) {
        self.config_text = text;
        std::fs::write(self.config_path(), &self.config_text).unwrap();
    }

    pub fn gateway(&self) -> &RunningGateway {
        self.gateway.as_ref().expect("the gateway is running")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    pub async fn start_gateway(&mut self) {
        std::fs::write(self.config_path(), &self.config_text).unwrap();
        let config = parse_config(&self.config_text);
        let audit = AuditSink::start(&config.audit).unwrap();
        let ledger = RedbLedger::open_with_faults(&config.store.path, self.faults.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = start_with(GatewayParts {
            config,
            listener,
            admin_listener: Some(admin_listener),
            audit,
            ledger: Arc::new(ledger),
            metrics: Arc::new(ark_gateway::metrics::Metrics::new()),
            store_redis: None,
            config_path: Some(self.config_path()),
            env: Arc::new(test_env),
        })
        .unwrap();
        self.addr = gateway.addr();
        self.admin_addr = gateway.admin_addr().unwrap();
        self.gateway = Some(gateway);
    }

    /// Drains and stops the gateway (flushing the audit file). The ledger file
    /// is released once its writer thread notices, so a restart retries opening.
    pub async fn stop_gateway(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }

    pub async fn restart_gateway(&mut self) {
        self.stop_gateway().await;
        self.start_gateway().await;
    }

    pub async fn call(&self, method: &str, target: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        request(self.addr, method, target, &headers, body.unwrap_or("").as_bytes()).await
    }

    pub async fn create(&self, token: &str) -> String {
        let reply = self.call("POST", TASKS, Some(token), Some(CREATE_BODY)).await;
        assert_eq!(reply.status, 200, "create: {}", reply.text());
        reply.json()["id"].as_str().unwrap().to_string()
    }

    /// Requests the upstream received (the mock's own record).
    pub fn upstream(&self) -> Vec<ReceivedRequest> {
        self.mock.received()
    }

    pub fn upstream_count(&self) -> usize {
        self.mock.received().len()
    }

    /// Stops the gateway and returns every audit record written.
    pub async fn finish(&mut self) -> Vec<AuditRecord> {
        self.stop_gateway().await;
        read_audit(&self.audit_path())
    }
}

/// The task ids of a list answer, in order.
pub fn ids_of(json: &Value) -> Vec<String> {
    json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn read_audit(path: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// An admission of 100 tokens at `at_ms`, under a daily limit of 250 and a monthly one of 400.
pub fn admission_at(at_ms: u64) -> ark_gateway::spend::Admission {
    use ark_gateway::spend::{day_of, month_of, Admission, Window};
    Admission {
        model: "model-a".into(),
        reserved_tokens: 100,
        reserved_cost_micros: 0,
        per_million_tokens: None,
        day: day_of(at_ms),
        month: month_of(at_ms),
        tenant_max_active: None,
        account_max_active: None,
        limits: vec![(Window::DailyTokens, 250), (Window::MonthlyTokens, 400)],
        // In flight for the whole scenario.
        lease_until_ms: at_ms + 90 * 86_400_000,
    }
}

/// Reservations against daily and monthly windows, with a fake clock (each
/// create says when it happens): the same on every backend.
pub async fn budget_window_scenario(ledger: &dyn Ledger) {
    use ark_gateway::spend::{parse_day, Refusal, Window};
    let intent = |id: &str, tenant: &str, _key: Option<&str>, at_ms: u64| CreateIntent {
        intent_id: id.to_string(),
        tenant: tenant.to_string(),
        idempotency_key: None,
        at_ms,
        admission: None,
    };
    // A fake clock: each create says when it happens.
    let last_second_of = |day: &str| parse_day(day).unwrap().start_ms() + 86_399_999;
    let first_ms_of = |day: &str| parse_day(day).unwrap().start_ms();
    let mut n = 0;
    let mut begin = |at_ms: u64| {
        n += 1;
        let mut it = intent(&format!("i{n}"), "alpha", None, at_ms);
        it.admission = Some(admission_at(at_ms));
        it
    };
    let day1 = last_second_of("2026-11-28");
    for _ in 0..2 {
        assert_eq!(ledger.begin_create(begin(day1)).await.unwrap(), BeginOutcome::Begun);
    }
    assert_eq!(
        ledger.begin_create(begin(day1)).await.unwrap(),
        BeginOutcome::Refused(Refusal::Budget(Window::DailyTokens))
    );
    // One millisecond later it is a new UTC day: the daily window is empty again.
    let day2 = first_ms_of("2026-11-29");
    let day3 = first_ms_of("2026-11-30");
    let held = begin(day2);
    assert_eq!(ledger.begin_create(held.clone()).await.unwrap(), BeginOutcome::Begun);
    // The month now holds 300 + 100 = 400: equal to its limit is allowed, more is not.
    assert_eq!(ledger.begin_create(begin(day3)).await.unwrap(), BeginOutcome::Begun);
    assert_eq!(
        ledger.begin_create(begin(day3)).await.unwrap(),
        BeginOutcome::Refused(Refusal::Budget(Window::MonthlyTokens))
    );
    // A create Ark refused gives its reservation back.
    ledger.abandon_create(held, CreateFate::Failed).await.unwrap();
    assert_eq!(ledger.begin_create(begin(day2)).await.unwrap(), BeginOutcome::Begun);
    // A new month starts empty.
    let next_month = first_ms_of("2026-12-01");
    assert_eq!(
        ledger.begin_create(begin(next_month)).await.unwrap(),
        BeginOutcome::Begun
    );
    let counts = ledger.tenant_counts("alpha", next_month).await.unwrap();
    assert_eq!(
        (counts.month.reserved_tokens, counts.day.reserved_tokens, counts.active),
        (100, 100, 5)
    );
}
