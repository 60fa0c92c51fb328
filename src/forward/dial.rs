//! The TCP leg of an upstream connection: straight to Ark, or through an
//! egress proxy's `CONNECT` tunnel (hyper-util's `Tunnel`), with TLS to Ark
//! inside it, so the proxy sees only the host name and encrypted bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::config::UpstreamProxy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials the upstream, directly or through the proxy.
#[derive(Clone)]
pub(crate) enum Dial {
    Direct(HttpConnector),
    Tunnel {
        tunnel: Tunnel<HttpConnector>,
        proxy: Arc<str>,
    },
}

impl Dial {
    pub(crate) fn new(http: HttpConnector, proxy: Option<&UpstreamProxy>) -> Self {
        match proxy {
            None => Self::Direct(http),
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.address.clone(), http);
                if let Some(credential) = &proxy.credential {
                    tunnel = tunnel.with_auth(credential.authorization_header());
                }
                Self::Tunnel {
                    tunnel,
                    proxy: proxy.host_port().into(),
                }
            }
        }
    }
}

/// The proxy would not carry the connection. Names the proxy's address,
/// never its credentials.
#[derive(Debug, thiserror::Error)]
#[error("egress proxy {proxy}: {why}")]
pub struct ProxyError {
    pub proxy: Arc<str>,
    pub why: &'static str,
}

/// What went wrong, in words for the tenant and the operator. hyper-util
/// does not export its error type, only its fixed texts.
fn why(e: &impl std::fmt::Display) -> &'static str {
    let text = e.to_string();
    if text.contains("underlying connection") {
        "cannot connect to the proxy"
    } else if text.contains("authorization required") {
        "the proxy asks for credentials (407)"
    } else if text.contains("unsuccessful") {
        "the proxy refused the tunnel"
    } else if text.contains("too long") {
        "the proxy's answer is too long"
    } else {
        "the proxy closed the connection"
    }
}

impl Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Direct(http) => http.poll_ready(cx).map_err(Into::into),
            Self::Tunnel { tunnel, proxy } => tunnel.poll_ready(cx).map_err(|e| {
                Box::new(ProxyError {
                    proxy: proxy.clone(),
                    why: why(&e),
                }) as BoxError
            }),
        }
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        match self {
            Self::Direct(http) => {
                let connecting = http.call(target);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Self::Tunnel { tunnel, proxy } => {
                // `CONNECT host:port`: the tunnel would assume 443 where the
                // URL names no port, also for http.
                let target = with_port(target);
                let connecting = tunnel.call(target);
                let proxy = proxy.clone();
                Box::pin(async move {
                    connecting.await.map_err(|e| {
                        tracing::debug!(error = %e, "egress proxy tunnel failed");
                        Box::new(ProxyError { proxy, why: why(&e) }) as BoxError
                    })
                })
            }
        }
    }
}

/// The target with its scheme's default port spelled out.
fn with_port(target: Uri) -> Uri {
    if target.port().is_some() {
        return target;
    }
    let port = if target.scheme_str() == Some("http") { 80 } else { 443 };
    let Some(host) = target.host() else { return target };
    let rebuilt = Uri::builder()
        .scheme(target.scheme_str().unwrap_or("https"))
        .authority(format!("{host}:{port}"))
        .path_and_query("/")
        .build();
    rebuilt.unwrap_or(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_target_always_names_its_port() {
        assert_eq!(
            with_port("https://ark.example/".parse().unwrap()),
            "https://ark.example:443/"
        );
        assert_eq!(
            with_port("http://mock.local/".parse().unwrap()),
            "http://mock.local:80/"
        );
        assert_eq!(
            with_port("https://ark.example:8443/".parse().unwrap()),
            "https://ark.example:8443/"
        );
    }
}
