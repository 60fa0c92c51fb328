//! The floor under the gateway, for the benchmark: the same workers, accept
//! loop, hyper server, upstream pool and allocator as `ark-gateway run`, with
//! no layer at all (no auth, limits, policy, audit, metrics or request ids).
//! Each request is forwarded as it came, with the key header set. The
//! benchmark runs it beside the gateway: the difference is what the policy
//! costs, the floor itself is what hyper + tokio cost. Not a product: it
//! checks nothing, so it is an example, never part of the binary.
//!
//!     cargo run --release --example passthrough -- CONFIG.toml

use std::convert::Infallible;
use std::sync::Arc;

use ark_gateway::request_body::RequestBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

use ark_gateway::config::Config;
use ark_gateway::forward::build_pool;

// The gateway's allocator, so that the floor differs from it only by the layers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: passthrough CONFIG.toml")?;
    let config = Config::load(path.as_ref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
        println!("passthrough listening addr={}", listener.local_addr()?);
        let key = config.upstream.api_key.authorization_header();
        let mut services = Vec::new();
        for _ in 0..config.server.workers.get() {
            let pool = Arc::new(build_pool(&config.upstream)?);
            let key = key.clone();
            let limit = config.upstream.max_response_bytes;
            services.push(tower::service_fn(move |req: Request<RequestBody>| {
                let (pool, key) = (pool.clone(), key.clone());
                async move {
                    let (mut parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    parts.headers.insert(http::header::AUTHORIZATION, key);
                    parts.headers.remove(http::header::HOST);
                    let answer = match pool.exchange(Request::from_parts(parts, Full::new(body)), limit).await {
                        Ok((parts, body)) => Response::from_parts(parts, Full::new(body)),
                        Err(_) => {
                            let mut bad = Response::new(Full::new(Bytes::new()));
                            *bad.status_mut() = http::StatusCode::BAD_GATEWAY;
                            bad
                        }
                    };
                    Ok::<_, Infallible>(answer)
                }
            }));
        }
        let (_stop, stop) = tokio::sync::watch::channel(false);
        let workers = ark_gateway::server::spawn_workers(listener, None, services, &config.server, stop)?;
        for worker in workers {
            let _ = worker.finished.await;
        }
        Ok(())
    })
}
