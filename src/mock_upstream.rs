//! A simulated Ark tasks API with the semantics of `shared/ark/API.md`:
//! tasks go queued → running → succeeded over configurable times, DELETE acts
//! by status as in the provider's table, errors are Ark-shaped, and every
//! response carries `x-request-id`. It records every request it receives so a
//! test can prove what did (and did not) reach the upstream.
//!
//! Besides the Ark paths it serves `GET /_mock/requests` (the record, as JSON)
//! for tests that run it as a separate process.
//!
//! It shares no code with the gateway it stands in for (not its server, its
//! list-query parser, its task statuses or its ordering): a stand-in that
//! reused the code under test could not catch that code's bugs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinSet;

const TASKS: &str = "/api/v3/contents/generations/tasks";

/// How the simulated tasks behave.
#[derive(Debug, Clone)]
pub struct MockOptions {
    pub api_key: String,
    /// Time a new task stays queued.
    pub queued_for: Duration,
    /// Time it then runs before it succeeds.
    pub running_for: Duration,
    /// Added before every answer on the Ark paths (a slow upstream).
    pub delay: Duration,
    /// Keep a copy of every request (tests); off for benchmarks.
    pub record: bool,
    /// Serve TLS (ALPN `h2` and `http/1.1`), as Ark does, instead of plain HTTP.
    pub tls: Option<MockTls>,
}

/// The mock's certificate chain and key (PEM), for `--tls-cert` / `--tls-key`.
#[derive(Debug, Clone)]
pub struct MockTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl MockTls {
    fn acceptor(&self) -> std::io::Result<tokio_rustls::TlsAcceptor> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| invalid(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl MockOptions {
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            queued_for: Duration::from_secs(2),
            running_for: Duration::from_secs(3),
            delay: Duration::ZERO,
            record: true,
            tls: None,
        }
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedRequest {
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct MockTask {
    id: String,
    model: String,
    service_tier: String,
    created: Instant,
    created_at: i64,
    cancelled_at: Option<i64>,
    /// Set by `POST /_mock/tasks/{id}`: a status, and the usage it reports.
    forced: Option<(TaskStatus, Option<u64>)>,
}

/// Tasks by id, in shards: growing one map of millions of tasks (the
/// benchmarks fill ten million) would hold every request for the seconds a
/// rehash takes; a shard's rehash is short and holds only that shard.
struct Tasks {
    shards: Box<[Mutex<HashMap<String, MockTask>>]>,
}

const TASK_SHARDS: usize = 64;

impl Tasks {
    fn new() -> Self {
        Self {
            shards: (0..TASK_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn index(id: &str) -> usize {
        // FNV-1a: any spread will do, and ids are not attacker-chosen here.
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % TASK_SHARDS as u64) as usize
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<String, MockTask>> {
        self.shards[Self::index(id)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard, locked in index order: no other call holds more than one,
    /// so two lists cannot deadlock each other or a single-shard call.
    fn all(&self) -> Vec<std::sync::MutexGuard<'_, HashMap<String, MockTask>>> {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }
}

struct State {
    options: MockOptions,
    tasks: Tasks,
    received: Mutex<Vec<ReceivedRequest>>,
    /// How many requests were received; lets tests wait without sleeping.
    received_count: tokio::sync::watch::Sender<usize>,
    counter: AtomicU64,
    seed: u64,
}

/// A running mock.
pub struct MockUpstream {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A simulated task's status, as Ark spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl TaskStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A list call's parameters, read the way Ark documents them.
#[derive(Default)]
struct ListParams {
    page_num: usize,
    page_size: usize,
    status: Option<String>,
    model: Option<String>,
    service_tier: Option<String>,
    task_ids: Option<Vec<String>>,
}

impl ListParams {
    fn parse(query: Option<&str>) -> Option<Self> {
        let mut params = ListParams {
            page_num: 1,
            page_size: 10,
            ..Default::default()
        };
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let page = || value.parse::<usize>().ok().filter(|n| (1..=500).contains(n));
            match &*name {
                "page_num" => params.page_num = page()?,
                "page_size" => params.page_size = page()?,
                "filter.status" => params.status = Some(value.into_owned()),
                "filter.model" => params.model = Some(value.into_owned()),
                "filter.service_tier" => params.service_tier = Some(value.into_owned()),
                "filter.task_ids" => params.task_ids.get_or_insert_with(Vec::new).push(value.into_owned()),
                _ => return None,
            }
        }
        Some(params)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl MockTask {
    fn status(&self, options: &MockOptions) -> TaskStatus {
        if self.cancelled_at.is_some() {
            return TaskStatus::Cancelled;
        }
        if let Some((status, _)) = self.forced {
            return status;
        }
        let age = self.created.elapsed();
        if age < options.queued_for {
            TaskStatus::Queued
        } else if age < options.queued_for + options.running_for {
            TaskStatus::Running
        } else {
            TaskStatus::Succeeded
        }
    }

    fn to_json(&self, options: &MockOptions) -> Value {
        let status = self.status(options);
        let mut task = json!({
            "id": self.id,
            "model": self.model,
            "status": status.as_str(),
            "created_at": self.created_at,
            "updated_at": self.cancelled_at.unwrap_or(self.created_at),
            "seed": 42,
            "resolution": "720p",
            "ratio": "16:9",
            "duration": 5,
            "framespersecond": 24,
            "service_tier": self.service_tier,
            "execution_expires_after": 172800,
        });
        if status == TaskStatus::Succeeded {
            task["content"] = json!({"video_url": format!("https://ark-mock.invalid/{}.mp4", self.id)});
        }
        let usage = match self.forced {
            Some((_, usage)) => usage,
            None => (status == TaskStatus::Succeeded).then_some(108_900),
        };
        if let Some(tokens) = usage {
            task["usage"] = json!({"completion_tokens": tokens, "total_tokens": tokens});
        }
        task
    }
}

impl State {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Ark's request ids look like `0217…`; ours only need to be unique.
    fn request_id(&self) -> String {
        format!("0217{:012x}{:08x}", self.seed & 0xffff_ffff_ffff, self.next())
    }

    /// `cgt-YYYYMMDDhhmmss-xxxxx`, as Ark's ids look.
    fn task_id(&self) -> String {
        let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let mut x = self.seed ^ self.next().wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = (0..5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % 36) as usize] as char
            })
            .collect();
        format!("cgt-{stamp}-{suffix}")
    }
}

fn error(status: StatusCode, code: &str, message: &str, param: &str, request_id: &str) -> (StatusCode, Value) {
    let kind = match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::NOT_FOUND => "NotFound",
        _ => "InternalServiceError",
    };
    (
        status,
        json!({"error": {"code": code, "message": format!("{message} Request id: {request_id}"), "param": param, "type": kind}}),
    )
}

async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();

    if let (&Method::POST, Some(id)) = (&parts.method, parts.uri.path().strip_prefix("/_mock/tasks/")) {
        return control(&state, id, &body);
    }
    if parts.method == Method::GET && parts.uri.path() == "/_mock/requests" {
        let received = state.received.lock().unwrap_or_else(PoisonError::into_inner).clone();
        return respond(StatusCode::OK, json!(received), None);
    }
    if state.options.record {
        state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ReceivedRequest {
                method: parts.method.to_string(),
                version: format!("{:?}", parts.version),
                path_and_query,
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
    }
    state.received_count.send_modify(|n| *n += 1);
    if !state.options.delay.is_zero() {
        tokio::time::sleep(state.options.delay).await;
    }

    let request_id = state.request_id();
    let expected = format!("Bearer {}", state.options.api_key);
    let (status, value) = if parts.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) != Some(expected.as_bytes())
    {
        error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "The API key or AK/SK in the request is missing or invalid.",
            "",
            &request_id,
        )
    } else {
        route(
            &state,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &body,
            &request_id,
        )
    };
    respond(status, value, Some(&request_id))
}

/// `POST /_mock/tasks/{id}` with `{"status": "...", "total_tokens": N}`: the
/// task reports that status and usage from now on (`"total_tokens": null`:
/// none); `{"status": "gone"}`: the mock forgets the task, as Ark does.
fn control(state: &State, id: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(command) = serde_json::from_slice::<Value>(body) else {
        return respond(StatusCode::BAD_REQUEST, json!({"error": "expected JSON"}), None);
    };
    let mut tasks = state.tasks.shard(id);
    let status = command["status"].as_str().unwrap_or("");
    if status == "gone" {
        let found = tasks.remove(id).is_some();
        return respond(StatusCode::OK, json!({"removed": found}), None);
    }
    let (Some(status), Some(task)) = (TaskStatus::parse(status), tasks.get_mut(id)) else {
        return respond(StatusCode::NOT_FOUND, json!({"error": "unknown task or status"}), None);
    };
    task.forced = Some((status, command["total_tokens"].as_u64()));
    respond(StatusCode::OK, json!({"id": id, "status": status.as_str()}), None)
}

fn respond(status: StatusCode, value: Value, request_id: Option<&str>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

fn route(
    state: &State,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    rid: &str,
) -> (StatusCode, Value) {
    let opts = &state.options;
    if path == TASKS {
        return match *method {
            Method::POST => create(state, body, rid),
            Method::GET => list(state, query, rid),
            _ => error(StatusCode::NOT_FOUND, "NotFound", "Unknown path.", "", rid),
        };
    }
    let Some(id) = path.strip_prefix(TASKS).and_then(|r| r.strip_prefix('/')) else {
        return error(StatusCode::NOT_FOUND, "NotFound", "Unknown path.", "", rid);
    };
    let mut tasks = state.tasks.shard(id);
    let Some(task) = tasks.get_mut(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The specified task {id} is not found."),
            "id",
            rid,
        );
    };
    match *method {
        Method::GET => (StatusCode::OK, task.to_json(opts)),
        Method::DELETE => match task.status(opts) {
            TaskStatus::Queued => {
                task.cancelled_at = Some(unix_now());
                (StatusCode::OK, json!({}))
            }
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Expired => {
                tasks.remove(id);
                (StatusCode::OK, json!({}))
            }
            status @ (TaskStatus::Running | TaskStatus::Cancelled) => error(
                StatusCode::BAD_REQUEST,
                "InvalidAction.TaskStatus",
                &format!("A task in status {status} can be neither cancelled nor deleted."),
                "id",
                rid,
            ),
        },
        _ => error(StatusCode::NOT_FOUND, "NotFound", "Unknown path.", "", rid),
    }
}

fn create(state: &State, body: &[u8], rid: &str) -> (StatusCode, Value) {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "The request body is not a JSON object.",
            "",
            rid,
        );
    };
    let Some(model) = fields.get("model").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            "The parameter `model` is missing.",
            "model",
            rid,
        );
    };
    if !fields.get("content").is_some_and(Value::is_array) {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            "The parameter `content` is missing.",
            "content",
            rid,
        );
    }
    let service_tier = fields.get("service_tier").and_then(Value::as_str).unwrap_or("default");
    let (id, mut tasks) = loop {
        let id = state.task_id();
        let tasks = state.tasks.shard(&id);
        if !tasks.contains_key(&id) {
            break (id, tasks);
        }
    };
    tasks.insert(
        id.clone(),
        MockTask {
            id: id.clone(),
            model: model.to_string(),
            service_tier: service_tier.to_string(),
            created: Instant::now(),
            created_at: unix_now(),
            cancelled_at: None,
            forced: None,
        },
    );
    (StatusCode::OK, json!({"id": id}))
}

fn list(state: &State, query: Option<&str>, rid: &str) -> (StatusCode, Value) {
    let Some(q) = ListParams::parse(query) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "A list parameter is invalid.",
            "",
            rid,
        );
    };
    let opts = &state.options;
    // Ids looked up, not searched for, so that a list by ids costs the same
    // whatever the account holds (benchmarks keep millions of tasks here).
    let shards = state.tasks.all();
    let candidates: Vec<&MockTask> = match &q.task_ids {
        Some(ids) => {
            let unique: std::collections::HashSet<&String> = ids.iter().collect();
            unique
                .into_iter()
                .filter_map(|id| shards[Tasks::index(id)].get(id))
                .collect()
        }
        None => shards.iter().flat_map(|shard| shard.values()).collect(),
    };
    let mut matching: Vec<&MockTask> = candidates
        .into_iter()
        .filter(|t| q.status.as_ref().is_none_or(|s| t.status(opts).as_str() == s))
        .filter(|t| q.model.as_ref().is_none_or(|m| &t.model == m))
        .filter(|t| q.service_tier.as_ref().is_none_or(|s| &t.service_tier == s))
        .collect();
    // Newest first; the id breaks ties so that pages are stable.
    matching.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip((q.page_num - 1) * q.page_size)
        .take(q.page_size)
        .map(|t| t.to_json(opts))
        .collect();
    (StatusCode::OK, json!({"total": total, "items": page}))
}

/// Accepts and serves HTTP/1.1 and HTTP/2 (h2c, or ALPN under TLS) until
/// `stopped` resolves; then every connection is dropped.
async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (builder, state, tls) = (builder.clone(), state.clone(), tls.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(state, req).await) }
            });
            match tls {
                None => drop(builder.serve_connection(TokioIo::new(stream), service).await),
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        drop(builder.serve_connection(TokioIo::new(stream), service).await);
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

impl MockUpstream {
    /// Serves on `listener` in the background.
    pub fn start(listener: TcpListener, options: MockOptions) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let state = Arc::new(State {
            options: options.clone(),
            tasks: Tasks::new(),
            received: Mutex::new(Vec::new()),
            received_count: tokio::sync::watch::channel(0).0,
            counter: AtomicU64::new(1),
            seed: u64::from_le_bytes(seed) | 1,
        });
        let tls = options.tls.as_ref().map(MockTls::acceptor).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, tls, state.clone(), stopped));
        Ok(Self {
            addr,
            scheme,
            state,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure as `upstream.base_url`.
    pub fn base_url(&self) -> String {
        format!("{}://{}/api/v3", self.scheme, self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` requests were received in all.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut count = self.state.received_count.subscribe();
        let _ = count.wait_for(|received| *received >= n).await;
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}
