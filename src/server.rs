//! Accepts connections and serves a service on each, HTTP/1.1 or HTTP/2
//! (prior knowledge, or ALPN under TLS), until asked to drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::config::{ServerConfig, ServerTls};
use crate::request_body::RequestBody;

/// The peer address of the tenant's connection, as a request extension. Its
/// text (for the audit record) is rendered once per connection, not per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAddr {
    pub addr: SocketAddr,
    text: Arc<str>,
}

impl RemoteAddr {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            text: addr.to_string().into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The client certificate of an mTLS connection (already verified against
/// `server.tls.client_ca` by rustls), as a request extension. Its names are
/// read once per connection, and the tenant they identify is resolved once
/// per connection and configuration generation, not per request.
#[derive(Debug, Clone)]
pub struct PeerCertificate(Arc<PeerIdentity>);

#[derive(Debug)]
struct PeerIdentity {
    der: CertificateDer<'static>,
    /// The certificate's DNS names, lowercase.
    dns_names: Vec<String>,
    /// (snapshot generation, the tenant found under it).
    resolved: std::sync::Mutex<Option<(u64, Option<crate::tenant::Tenant>)>>,
}

impl PeerCertificate {
    pub fn new(der: CertificateDer<'static>) -> Self {
        let dns_names = webpki::EndEntityCert::try_from(&der)
            .map(|cert| cert.valid_dns_names().map(str::to_ascii_lowercase).collect())
            .unwrap_or_default();
        Self(Arc::new(PeerIdentity {
            der,
            dns_names,
            resolved: std::sync::Mutex::new(None),
        }))
    }

    /// The tenant this certificate identifies under `snapshot`.
    pub(crate) fn tenant(&self, snapshot: &crate::reload::Snapshot) -> Option<crate::tenant::Tenant> {
        let mut resolved = self
            .0
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*resolved {
            Some((generation, tenant)) if *generation == snapshot.generation => tenant.clone(),
            _ => {
                let tenant = snapshot.tenants.by_client_certificate(&self.0.der, &self.0.dns_names);
                *resolved = Some((snapshot.generation, tenant.clone()));
                tenant
            }
        }
    }
}

/// What a listener serves: a service over the tenant's request body that
/// never fails (rejections are responses by then) and can be cloned per
/// connection.
pub trait TenantService:
    Service<Request<RequestBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> TenantService for S where
    S: Service<Request<RequestBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// Largest request head accepted (request line + headers); hyper answers 431 beyond.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long no request may have been in flight on a worker, once it drains,
/// before its remaining connections are closed. HTTP/2's graceful close
/// waits for the client to answer a PING after the first GOAWAY; an idle
/// client that is not reading its socket (a synchronous one between calls)
/// never does, and would hold the drain for all of `shutdown_grace`.
const QUIET_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// Requests being handled on one worker (its connections share one thread).
#[derive(Default)]
struct InFlight(AtomicUsize);

/// One request in flight, until its response was produced.
struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// Resolves once no request has been in flight for [`QUIET_BEFORE_CLOSE`]
    /// (which also leaves the last response time to be written out).
    async fn quiet(&self) {
        const CHECK: Duration = Duration::from_millis(100);
        let mut quiet_for = Duration::ZERO;
        while quiet_for < QUIET_BEFORE_CLOSE {
            tokio::time::sleep(CHECK).await;
            quiet_for = match self.0.load(Ordering::Relaxed) {
                0 => quiet_for + CHECK,
                _ => Duration::ZERO,
            };
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds the rustls acceptor for `server.tls`.
pub fn tls_acceptor(tls: &ServerTls) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca.clone())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A worker thread started by [`spawn_workers`].
pub struct Worker {
    /// Resolves once the worker's copy of the listening socket is closed.
    pub stopped_accepting: oneshot::Receiver<()>,
    /// Resolves once the worker's runtime, and every connection on it, is gone.
    pub finished: oneshot::Receiver<()>,
}

/// An accepted connection on its way to another worker.
type HandOff = (std::net::TcpStream, SocketAddr);

/// Spreads accepted connections over the workers, round robin. Whichever
/// worker wakes first accepts (a busy one accepts a whole burst before an idle
/// one even wakes), so connections are dealt out rather than kept: one
/// cross-thread hand-off per connection, none per request.
struct Dealer {
    index: usize,
    next: Arc<AtomicUsize>,
    workers: Arc<[mpsc::UnboundedSender<HandOff>]>,
    inbox: mpsc::UnboundedReceiver<HandOff>,
}

impl Dealer {
    /// Keeps the connection (`Some`) or hands it to the worker whose turn it is.
    fn deal(&self, stream: TcpStream, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        if turn == self.index {
            return Some((stream, peer));
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a connection over; closed");
                return None;
            }
        };
        match self.workers[turn].send((stream, peer)) {
            Ok(()) => None,
            // That worker is gone (it stopped, or its thread died): serve it here.
            Err(mpsc::error::SendError((stream, peer))) => match TcpStream::from_std(stream) {
                Ok(stream) => Some((stream, peer)),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot take a connection back; closed");
                    None
                }
            },
        }
    }
}

/// Serves `listener` on one thread per service in `services`, each running a
/// single-threaded runtime that accepts from the shared listening socket and
/// drives its connections (and its upstream pool) to the end. Connections
/// are dealt out round robin; a request is then handled start to finish on
/// one thread: no work-stealing wake-ups and no cross-thread hand-offs on the
/// request path. When `stop` turns true each worker drains as [`serve`] does.
pub fn spawn_workers<S>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    services: Vec<S>,
    config: &ServerConfig,
    stop: watch::Receiver<bool>,
) -> io::Result<Vec<Worker>>
where
    S: TenantService,
{
    let listener = listener.into_std()?;
    let (senders, mut inboxes): (Vec<_>, Vec<_>) = services.iter().map(|_| mpsc::unbounded_channel()).unzip();
    let workers: Arc<[mpsc::UnboundedSender<HandOff>]> = senders.into();
    let next = Arc::new(AtomicUsize::new(0));
    let mut done = Vec::with_capacity(services.len());
    for (index, service) in services.into_iter().enumerate() {
        let dealer = Dealer {
            index,
            next: next.clone(),
            workers: workers.clone(),
            inbox: inboxes.remove(0),
        };
        let listener = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (finished, finished_rx) = oneshot::channel();
        let (closed, closed_rx) = oneshot::channel();
        let (tls, config, mut stop) = (tls.clone(), config.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("ark-gateway-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let shutdown = async move {
                                let _ = stop.wait_for(|stopping| *stopping).await;
                            };
                            let stopped_accepting = move || {
                                let _ = closed.send(());
                            };
                            serve_dealt(
                                listener,
                                Some(dealer),
                                tls,
                                service,
                                &config,
                                shutdown,
                                stopped_accepting,
                            )
                            .await
                        }
                        Err(e) => tracing::error!(error = %e, worker = index, "worker cannot listen"),
                    }
                });
                // Pooled upstream connections and any straggling tasks end
                // with the runtime, before the worker reports it is done.
                drop(runtime);
                let _ = finished.send(());
            })?;
        done.push(Worker {
            stopped_accepting: closed_rx,
            finished: finished_rx,
        });
    }
    Ok(done)
}

/// Serves until `shutdown` resolves, then stops accepting (and calls
/// `stopped_accepting` once the listening socket is closed) and lets in-flight
/// requests finish for up to `shutdown_grace`. When this returns, every
/// connection task (and so every clone of the service) is gone.
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
    stopped_accepting: impl FnOnce(),
) where
    S: TenantService,
{
    serve_dealt(listener, None, tls, service, config, shutdown, stopped_accepting).await
}

/// [`serve`], as one of several workers sharing the listener.
async fn serve_dealt<S>(
    listener: TcpListener,
    mut dealer: Option<Dealer>,
    tls: Option<TlsAcceptor>,
    service: S,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
    stopped_accepting: impl FnOnce(),
) where
    S: TenantService,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let in_flight = Arc::new(InFlight::default());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            // Shutdown first: once asked to stop, not one more connection is taken.
            biased;
            () = &mut shutdown => break,
            Some((stream, peer)) = async { dealer.as_mut()?.inbox.recv().await } => {
                match TcpStream::from_std(stream) {
                    Ok(stream) => (stream, peer),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot take a handed-over connection; closed");
                        continue;
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match &dealer {
                    Some(dealer) => match dealer.deal(stream, peer) {
                        Some(pair) => pair,
                        None => continue,
                    },
                    None => (stream, peer),
                },
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tracing::trace!(peer = %peer, "connection accepted");
        let service = service.clone();
        let builder = builder.clone();
        let in_flight = in_flight.clone();
        // Taken before the handshake, so a drain that starts meanwhile still reaches it.
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = config.header_read_timeout;
        connections.spawn(async move {
            // An idle new connection costs only its socket until the client
            // sends something: hyper allocates its buffers on the first poll,
            // which would make 10,000 idle connections cost ~100 MB.
            match tokio::time::timeout(handshake_timeout, stream.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return tracing::debug!(peer = %peer, "connection sent nothing in time; closed"),
            }
            // The connection's state (hyper, TLS) is boxed and allocated only
            // now: a task's size is its future's largest state, and an inline
            // hyper connection would make every idle socket cost ~10 KB.
            let connection: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
                None => Box::pin(serve_connection(
                    builder, watcher, stream, peer, None, service, in_flight,
                )),
                Some(acceptor) => Box::pin(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, peer = %peer, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|c| PeerCertificate::new(c.clone().into_owned()));
                    serve_connection(builder, watcher, stream, peer, cert, service, in_flight).await
                }),
            };
            connection.await;
        });
    }
    drop(listener);
    stopped_accepting();
    tracing::debug!(
        in_flight_connections = graceful.count(),
        "listener closed; connections draining"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = in_flight.quiet() => tracing::info!("no request in flight; idle connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!(grace = ?config.shutdown_grace, "grace period over; closing remaining connections");
        }
    }
    connections.shutdown().await;
}

async fn serve_connection<I, S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    io: I,
    peer: SocketAddr,
    cert: Option<PeerCertificate>,
    service: S,
    in_flight: Arc<InFlight>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: TenantService,
{
    // One stack per connection, called in place: cloning every layer for
    // every request would touch each shared handle's reference count, cache
    // lines that all workers write. The lock is never contended (requests
    // are dispatched one at a time by the connection's own task).
    let service = std::sync::Mutex::new(service);
    let remote = RemoteAddr::new(peer);
    let per_request = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(RequestBody::new);
        req.extensions_mut().insert(remote.clone());
        if let Some(cert) = &cert {
            req.extensions_mut().insert(cert.clone());
        }
        let mut stack = service.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let guard = in_flight.enter();
        // The stack is always ready (capacity is refused in `call`, not
        // waited for); were it ever not, a clone is driven to readiness.
        let answer = match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(req)),
            _ => Either::Right(stack.clone().oneshot(req)),
        };
        answer.inspect(move |_| drop(guard))
    });
    let connection = builder.serve_connection(TokioIo::new(io), per_request);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Answers with the name of the thread that served the request.
    async fn thread_name(_req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
        let name = std::thread::current().name().unwrap_or_default().to_string();
        Ok(Response::new(Full::new(Bytes::from(name))))
    }

    #[tokio::test]
    async fn a_connection_for_a_worker_that_is_gone_is_served_by_the_dealer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (to_self, inbox) = mpsc::unbounded_channel();
        let (to_other, mut other_inbox) = mpsc::unbounded_channel();
        let dealer = Dealer {
            index: 0,
            // Every deal below is worker 1's turn.
            next: Arc::new(AtomicUsize::new(1)),
            workers: vec![to_self, to_other].into(),
            inbox,
        };
        let accept = || async {
            let _client = TcpStream::connect(addr).await.unwrap();
            listener.accept().await.unwrap()
        };
        let (stream, peer) = accept().await;
        assert!(dealer.deal(stream, peer).is_none(), "worker 1 is alive: handed over");
        assert_eq!(other_inbox.recv().await.unwrap().1, peer);
        drop(other_inbox);
        dealer.next.store(1, Ordering::Relaxed);
        let (stream, peer) = accept().await;
        let kept = dealer.deal(stream, peer).expect("worker 1 is gone: kept here");
        assert_eq!(kept.1, peer);
    }

    #[tokio::test]
    async fn connections_are_dealt_to_the_workers_in_turn() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServerConfig {
            listen: addr,
            max_body_bytes: 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            workers: NonZeroUsize::new(2).unwrap(),
            tls: None,
        };
        let services = vec![tower::service_fn(thread_name); 2];
        let (stop, stopping) = watch::channel(false);
        let workers = spawn_workers(listener, None, services, &config, stopping).unwrap();
        let mut served = Vec::new();
        for _ in 0..4 {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).await.unwrap();
            served.push(answer.rsplit("\r\n\r\n").next().unwrap().to_string());
        }
        // Whichever worker accepted, each connection was served by the worker whose turn it was.
        assert_eq!(
            served,
            [
                "ark-gateway-worker-0",
                "ark-gateway-worker-1",
                "ark-gateway-worker-0",
                "ark-gateway-worker-1"
            ]
        );
        stop.send(true).unwrap();
        for worker in workers {
            worker.stopped_accepting.await.unwrap();
            worker.finished.await.unwrap();
        }
    }
}
