use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;

use super::dial::Dial;
use super::pool::UpstreamPool;
use crate::config::{UpstreamConfig, UpstreamRoute};

/// Builds one worker's connection pool: webpki roots plus `upstream.ca_file`,
/// connect time-out, the egress proxy if any, and HTTPS only unless
/// `allow_insecure_http` (a local mock).
pub fn build_pool(config: &UpstreamConfig) -> Result<UpstreamPool, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &config.extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let dial = Dial::new(
        http,
        match &config.route {
            UpstreamRoute::Proxy(proxy) => Some(proxy),
            UpstreamRoute::Direct(_) => None,
        },
    );
    let builder = HttpsConnectorBuilder::new().with_tls_config(tls);
    let builder = if config.allow_insecure_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    // The ALPN offer follows `upstream.protocols`: pinning HTTP/1.1 is for
    // middleboxes that break HTTP/2.
    let connector = match (config.protocols.http2, config.protocols.http1) {
        (true, true) => builder.enable_http1().enable_http2().wrap_connector(dial),
        (true, false) => builder.enable_http2().wrap_connector(dial),
        _ => builder.enable_http1().wrap_connector(dial),
    };
    // Shorter than the usual server-side keep-alive time-outs (60 s and more),
    // so that the pool rarely offers a connection the upstream is about to close.
    Ok(UpstreamPool::new(
        connector,
        &config.base_url,
        Duration::from_secs(30),
        256,
    ))
}
