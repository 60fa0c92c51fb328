//! One worker's connections to Ark, on hyper's connection API.
//!
//! Each worker thread owns one pool, so a request, its upstream connection
//! and that connection's task all live on one thread: no lock is contended,
//! no wake-up crosses threads, and no task is spawned per request.
//! HTTP/1.1 connections are reused last-in first-out, so
//! a small hot set carries the load; with HTTP/2 (ALPN) one connection is
//! shared by the worker's requests.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::response::Parts;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection;

use super::dial::Dial;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why an exchange with Ark failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No connection could be made (DNS, TCP, TLS): nothing was sent.
    #[error("cannot connect to the upstream: {0}")]
    Connect(BoxError),
    /// The connection broke or the answer was not valid HTTP.
    #[error("upstream exchange failed: {0}")]
    Protocol(BoxError),
    /// The egress proxy would not carry the connection: nothing was sent.
    #[error("{0}")]
    Proxy(super::ProxyError),
    /// The answer's body was over `upstream.max_response_bytes`.
    #[error("upstream response over the size limit")]
    ResponseTooLarge { status: http::StatusCode },
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

struct Idle {
    sender: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

/// A worker's pool of upstream connections.
pub struct UpstreamPool {
    connector: HttpsConnector<Dial>,
    /// Scheme and authority of the upstream: what a request in origin form
    /// (the forwarding path sends those) is connected to, and completed
    /// with for HTTP/2.
    origin: (Scheme, Authority),
    /// `Host` for HTTP/1.1 requests, from the base URL.
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    http2: Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl UpstreamPool {
    pub(crate) fn new(connector: HttpsConnector<Dial>, base: &Uri, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            connector,
            origin: (
                base.scheme().cloned().unwrap_or(Scheme::HTTPS),
                base.authority()
                    .cloned()
                    .unwrap_or_else(|| Authority::from_static("localhost")),
            ),
            host: host_header(base),
            idle: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            idle_timeout,
            max_idle,
        }
    }

    /// Sends `req` (its target in origin form, or an absolute URI of this
    /// upstream) and reads the whole answer, at most
    /// `max_response_bytes` of body. A request that a reused connection
    /// refused before writing any of it (closed meanwhile) is sent once more
    /// on a new connection, whatever its method: it never reached Ark.
    pub async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        max_response_bytes: usize,
    ) -> Result<(Parts, Bytes), ExchangeError> {
        let (mut sender, reused) = self.checkout().await?;
        // `send` rewrites the target for HTTP/1.1; a refused request gets it back.
        let target = req.uri().clone();
        let response = match self.send(&mut sender, req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(mut req) if reused => {
                    tracing::debug!(error = %e.error(), "pooled upstream connection closed before sending; new connection");
                    *req.uri_mut() = target;
                    req.headers_mut().remove(HOST);
                    sender = self.connect().await?;
                    Box::pin(self.send(&mut sender, req))
                        .await
                        .map_err(|e| ExchangeError::Protocol(e.into_error().into()))?
                }
                _ => return Err(ExchangeError::Protocol(e.into_error().into())),
            },
        };
        let (parts, body) = response.into_parts();
        let body =
            Limited::new(body, max_response_bytes)
                .collect()
                .await
                .map_err(|e| match e.is::<LengthLimitError>() {
                    true => ExchangeError::ResponseTooLarge { status: parts.status },
                    false => ExchangeError::Protocol(e),
                })?;
        let body = body.to_bytes();
        tracing::trace!(
            status = parts.status.as_u16(),
            body_bytes = body.len(),
            "upstream answered"
        );
        self.checkin(sender);
        Ok((parts, body))
    }

    async fn send(
        &self,
        sender: &mut Sender,
        mut req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
        match sender {
            Sender::Http1(sender) => {
                // HTTP/1.1 wants the origin form and a Host header.
                if req.uri().authority().is_some() {
                    let origin = req
                        .uri()
                        .path_and_query()
                        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
                    *req.uri_mut() = origin;
                }
                req.headers_mut().insert(HOST, self.host.clone());
                sender.try_send_request(req).await
            }
            Sender::Http2(sender) => {
                // HTTP/2 wants the scheme and authority as pseudo-headers.
                if req.uri().authority().is_none() {
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(self.origin.0.clone());
                    parts.authority = Some(self.origin.1.clone());
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    match Uri::from_parts(parts) {
                        Ok(uri) => *req.uri_mut() = uri,
                        Err(e) => tracing::debug!(error = %e, "cannot complete the upstream target"),
                    }
                }
                sender.try_send_request(req).await
            }
        }
    }

    /// An idle connection that is still open (most recently used first), the
    /// shared HTTP/2 connection, or a new one. The flag says whether it was reused.
    async fn checkout(&self) -> Result<(Sender, bool), ExchangeError> {
        let shared = self.http2.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(mut sender) = shared {
            if sender.ready().await.is_ok() {
                return Ok((Sender::Http2(sender), true));
            }
        }
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some(Idle { mut sender, since }) = idle else { break };
            // Older than the idle time-out: the upstream may be closing it.
            if since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Waits only for the connection's own task to take note that the
            // previous answer was read to the end; fails if it was closed.
            if sender.ready().await.is_ok() {
                tracing::trace!("reusing a pooled upstream connection");
                return Ok((Sender::Http1(sender), true));
            }
            tracing::trace!("pooled upstream connection was closed; dropped");
        }
        Ok((self.connect().await?, false))
    }

    fn checkin(&self, sender: Sender) {
        match sender {
            Sender::Http1(sender) if !sender.is_closed() => {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < self.max_idle {
                    idle.push(Idle {
                        sender,
                        since: Instant::now(),
                    });
                }
            }
            Sender::Http1(_) => {}
            Sender::Http2(sender) => {
                if !sender.is_closed() {
                    let mut shared = self.http2.lock().unwrap_or_else(PoisonError::into_inner);
                    if shared.as_ref().is_none_or(|s| s.is_closed()) {
                        *shared = Some(sender);
                    }
                }
            }
        }
    }

    /// Connects (TCP, then TLS with ALPN unless plain HTTP is allowed) and
    /// starts the connection's task on this worker's runtime. Boxed: the
    /// connect and handshake states are large and rarely needed, and would
    /// otherwise make every request's future (allocated and moved per
    /// request) several kilobytes larger.
    fn connect(&self) -> BoxFuture<'_, Result<Sender, ExchangeError>> {
        Box::pin(self.connect_now())
    }

    async fn connect_now(&self) -> Result<Sender, ExchangeError> {
        let (scheme, authority) = self.origin.clone();
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| ExchangeError::Connect(Box::new(e)))?;
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|e| match e.downcast::<super::ProxyError>() {
                Ok(proxy) => ExchangeError::Proxy(*proxy),
                Err(e) => ExchangeError::Connect(e),
            })?;
        let http2 = io.connected().is_negotiated_h2();
        tracing::debug!(http2, "connected to the upstream");
        if http2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| ExchangeError::Connect(Box::new(e)))?;
            drive(connection);
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| ExchangeError::Connect(Box::new(e)))?;
            drive(connection);
            Ok(Sender::Http1(sender))
        }
    }
}

/// Runs a connection's task on this worker's runtime until the connection ends.
fn drive(connection: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
}

/// `host[:port]`, the port only where it is not the scheme's default.
fn host_header(base: &Uri) -> HeaderValue {
    let default_port = match base.scheme() {
        Some(s) if *s == Scheme::HTTPS => Some(443),
        Some(s) if *s == Scheme::HTTP => Some(80),
        _ => None,
    };
    let text = match (base.host(), base.port_u16()) {
        (Some(host), Some(port)) if Some(port) != default_port => format!("{host}:{port}"),
        (Some(host), _) => host.to_string(),
        (None, _) => String::new(),
    };
    HeaderValue::try_from(text)
        .or_else(|_| HeaderValue::try_from(base.authority().map_or("", Authority::as_str)))
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Config;

    /// A minimal HTTP/1.1 upstream: counts connections, keeps every request
    /// head, answers `ok` and keeps the connection unless the path says `close`.
    async fn upstream() -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v3", listener.local_addr().unwrap());
        let (connections, heads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (count, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 1024];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let close = head.lines().next().unwrap_or_default().contains("close");
                            seen.lock().unwrap().push(head);
                            let answer: &[u8] = if close {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            };
                            if conn.write_all(answer).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (base, connections, heads)
    }

    fn pool_for(base: &str) -> UpstreamPool {
        let text = format!("[upstream]\nbase_url = \"{base}\"\napi_key_env = \"K\"\nallow_insecure_http = true\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"{}\"\noperations = [\"get\"]\nrate_limit = {{ per_second = 1 }}\n", "0".repeat(64));
        let config = Config::from_toml_str(&text, &|name| (name == "K").then(|| "k".into())).unwrap();
        crate::forward::build_pool(&config.upstream).unwrap()
    }

    fn get(base: &str, path: &str) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = format!("{base}{path}").parse().unwrap();
        req
    }

    #[tokio::test]
    async fn connections_are_reused_and_requests_sent_in_origin_form_with_host() {
        let (base, connections, heads) = upstream().await;
        let pool = pool_for(&base);
        for _ in 0..3 {
            let (parts, body) = pool.exchange(get(&base, "/tasks/a?x=1"), 1024).await.unwrap();
            assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection, reused");
        let authority = base
            .trim_start_matches("http://")
            .trim_end_matches("/api/v3")
            .to_string();
        for head in heads.lock().unwrap().iter() {
            assert!(head.starts_with("GET /api/v3/tasks/a?x=1 HTTP/1.1\r\n"), "{head}");
            assert!(
                head.to_ascii_lowercase().contains(&format!("\r\nhost: {authority}")),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (base, connections, _) = upstream().await;
        let pool = pool_for(&base);
        pool.exchange(get(&base, "/close"), 1024).await.unwrap();
        let (parts, _) = pool.exchange(get(&base, "/after"), 1024).await.unwrap();
        assert_eq!(parts.status.as_u16(), 200);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn answers_over_the_limit_are_refused() {
        let (base, _, _) = upstream().await;
        let pool = pool_for(&base);
        let err = pool.exchange(get(&base, "/big"), 1).await.unwrap_err();
        assert!(
            matches!(err, ExchangeError::ResponseTooLarge { status } if status == 200),
            "{err}"
        );
    }

    /// A TLS upstream offering `alpn`, answering with the request's version,
    /// target and Host; returns its base URL, a CA file trusting it, and
    /// the number of connections it accepted.
    async fn tls_upstream(dir: &std::path::Path, alpn: &[&[u8]]) -> (String, std::path::PathBuf, Arc<AtomicUsize>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://localhost:{}/api/v3", listener.local_addr().unwrap().port());
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let host = req.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("-");
                        let text = format!("{:?} {} {host}", req.version(), req.uri());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(text))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (base, ca_file, connections)
    }

    fn tls_pool_for(base: &str, ca_file: &std::path::Path) -> UpstreamPool {
        let text = format!("[upstream]\nbase_url = \"{base}\"\napi_key_env = \"K\"\nca_file = \"{}\"\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"{}\"\noperations = [\"get\"]\nrate_limit = {{ per_second = 1 }}\n", ca_file.display(), "0".repeat(64));
        let config = Config::from_toml_str(&text, &|name| (name == "K").then(|| "k".into())).unwrap();
        crate::forward::build_pool(&config.upstream).unwrap()
    }

    #[tokio::test]
    async fn over_tls_http2_is_negotiated_and_one_connection_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (base, ca_file, connections) = tls_upstream(dir.path(), &[b"h2", b"http/1.1"]).await;
        let pool = tls_pool_for(&base, &ca_file);
        let mut answers = Vec::new();
        // The forwarding path sends the origin form; the pool completes it.
        for request in [
            get(&base, "/tasks/a"),
            get("/api/v3", "/tasks/a"),
            get(&base, "/tasks/a"),
        ] {
            let (parts, body) = pool.exchange(request, 1024).await.unwrap();
            assert_eq!(parts.status.as_u16(), 200);
            answers.push(String::from_utf8(body.to_vec()).unwrap());
        }
        let port = base
            .trim_start_matches("https://localhost:")
            .trim_end_matches("/api/v3");
        let expected = format!("HTTP/2.0 https://localhost:{port}/api/v3/tasks/a -");
        assert!(answers.iter().all(|a| *a == expected), "{answers:?}");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn over_tls_http1_is_used_when_the_upstream_offers_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let (base, ca_file, connections) = tls_upstream(dir.path(), &[b"http/1.1"]).await;
        let pool = tls_pool_for(&base, &ca_file);
        for request in [get("/api/v3", "/tasks/a"), get(&base, "/tasks/a")] {
            let (_, body) = pool.exchange(request, 1024).await.unwrap();
            let port = base
                .trim_start_matches("https://localhost:")
                .trim_end_matches("/api/v3");
            assert_eq!(body, format!("HTTP/1.1 /api/v3/tasks/a localhost:{port}"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    /// The log lines of everything on this thread, for the canary test.
    #[derive(Clone, Default)]
    struct CapturedLog(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for CapturedLog {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// HTTP/2 to Ark is what TLS usually negotiates, and h2 logs frames at
    /// trace level: the key must appear in none of it (the process-level
    /// canary test runs over plain HTTP/1.1 only).
    #[tokio::test]
    async fn over_http2_at_trace_level_the_key_reaches_no_log_line() {
        const CANARY: &str = "sk-canary-h2-7f3a9c";
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // This test's runtime is single-threaded: client and upstream tasks log here.
        let _logging = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let (base, ca_file, _) = tls_upstream(dir.path(), &[b"h2"]).await;
        let pool = tls_pool_for(&base, &ca_file);
        for _ in 0..2 {
            let mut req = get(&base, "/tasks/a");
            let mut key = HeaderValue::from_str(&format!("Bearer {CANARY}")).unwrap();
            key.set_sensitive(true);
            req.headers_mut().insert(http::header::AUTHORIZATION, key);
            let (parts, body) = pool.exchange(req, 1024).await.unwrap();
            assert_eq!(parts.status.as_u16(), 200);
            assert!(body.starts_with(b"HTTP/2.0"), "{body:?}");
        }
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.lines().count() > 20,
            "trace logging produced too little to be a real check:\n{text}"
        );
        assert!(!text.contains(CANARY), "the key is in a trace line");
    }

    #[tokio::test]
    async fn an_untrusted_upstream_certificate_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let (base, _, _) = tls_upstream(dir.path(), &[b"h2"]).await;
        let other = tempfile::tempdir().unwrap();
        let (_, unrelated_ca, _) = tls_upstream(other.path(), &[b"h2"]).await;
        let err = tls_pool_for(&base, &unrelated_ca)
            .exchange(get(&base, "/tasks/a"), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, ExchangeError::Connect(_)), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/api/v3", listener.local_addr().unwrap());
        drop(listener);
        let err = pool_for(&base).exchange(get(&base, "/x"), 1024).await.unwrap_err();
        assert!(matches!(err, ExchangeError::Connect(_)), "{err}");
    }

    #[test]
    fn host_header_keeps_only_non_default_ports() {
        let host = |u: &str| host_header(&u.parse().unwrap());
        assert_eq!(
            host("https://ark.cn-beijing.volces.com/api/v3"),
            "ark.cn-beijing.volces.com"
        );
        assert_eq!(host("https://ark.example:443/api/v3"), "ark.example");
        assert_eq!(host("https://ark.example:8443/api/v3"), "ark.example:8443");
        assert_eq!(host("http://127.0.0.1:9800/api/v3"), "127.0.0.1:9800");
        assert_eq!(host("http://127.0.0.1/api/v3"), "127.0.0.1");
    }
}
