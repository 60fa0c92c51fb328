//! HTTP/2 clients for the tests: the `h2` crate (which shows stream resets
//! and flow control, so a test can tell a clean end from a reset), over
//! plain TCP with prior knowledge or over TLS with ALPN; and raw frames, for
//! `:path` values that no URI type would hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::Pki;
use super::Reply;

/// One HTTP/2 connection to the gateway.
#[derive(Clone)]
pub struct H2Client {
    send: SendRequest<Bytes>,
    /// The scheme the client puts in `:scheme`.
    scheme: &'static str,
    addr: SocketAddr,
}

/// A request as it is being sent: its body stream and its answer to come.
pub struct Sending {
    pub body: h2::SendStream<Bytes>,
    pub response: h2::client::ResponseFuture,
}

async fn handshake<T>(io: T, scheme: &'static str, addr: SocketAddr) -> H2Client
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    H2Client { send, scheme, addr }
}

impl H2Client {
    /// Plain-text HTTP/2 with prior knowledge (`h2c`).
    pub async fn h2c(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect to the gateway");
        handshake(tcp, "http", addr).await
    }

    /// HTTP/2 over TLS, negotiated by ALPN (the test fails if the server picks anything else).
    pub async fn tls(addr: SocketAddr, pki: &Pki) -> Self {
        let config = pki.client_config(None, &[b"h2", b"http/1.1"]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect to the gateway");
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose HTTP/2");
        handshake(tls, "https", addr).await
    }

    /// Starts a request; the body is sent by the caller.
    pub async fn start(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Sending {
        let uri = format!("{}://{}{path}", self.scheme, self.addr);
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut send = self.send.clone().ready().await.expect("connection ready for a stream");
        let (response, body) = send
            .send_request(request.body(()).unwrap(), false)
            .expect("send the request head");
        Sending { body, response }
    }

    /// One whole request: head, the body in one DATA frame (if any), the answer.
    pub async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut sending = self.start(method, path, headers).await;
        send_all(&mut sending.body, body, body.len().max(1))
            .await
            .expect("send the body");
        read_reply(sending.response).await
    }

    /// A request with `Authorization: Bearer token` and a JSON body.
    pub async fn call_as(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> Reply {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        self.call(method, path, &headers, body.unwrap_or("").as_bytes()).await
    }
}

/// Sends `body` in DATA frames of at most `chunk` bytes as flow control
/// allows, then ends the stream. An error is a reset (or a dead connection).
pub async fn send_all(stream: &mut h2::SendStream<Bytes>, body: &[u8], chunk: usize) -> Result<(), String> {
    let mut rest = Bytes::copy_from_slice(body);
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len().min(chunk));
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(granted)) => granted,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the stream was closed".into()),
        };
        stream
            .send_data(rest.split_to(granted.min(rest.len())), false)
            .map_err(|e| e.to_string())?;
    }
    stream.send_data(Bytes::new(), true).map_err(|e| e.to_string())
}

/// The answer to a request, read to its end.
pub async fn read_reply(response: h2::client::ResponseFuture) -> Reply {
    let response = response.await.expect("an HTTP/2 answer");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the answer's body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Reply {
        status,
        headers,
        body: bytes,
    }
}

/// How the gateway answered a raw HTTP/2 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawAnswer {
    /// `:status: 200`.
    Ok,
    /// Any other status.
    Refused,
    /// The stream was reset or the connection closed without an answer.
    Reset,
}

/// An HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1), first byte's
/// high bits zero.
fn hpack_integer(out: &mut Vec<u8>, mut value: usize, prefix: u32) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK literal header field without indexing, with a literal name.
pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_integer(&mut out, name.len(), 7);
    out.extend_from_slice(name);
    hpack_integer(&mut out, value.len(), 7);
    out.extend_from_slice(value);
    out
}

/// The header block of a request: its pseudo-headers, then `headers`, byte for byte.
pub fn request_block(method: &str, path: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = literal(b":method", method.as_bytes());
    block.extend(literal(b":scheme", b"http"));
    block.extend(literal(b":authority", b"gateway.local"));
    block.extend(literal(b":path", path));
    for (name, value) in headers {
        block.extend(literal(name.as_bytes(), value.as_bytes()));
    }
    block
}

/// Opens a plain-text HTTP/2 connection and sends one request with `block` as
/// its header block (split into CONTINUATION frames where it must be) and
/// no body; `None` if the gateway closed the connection first.
pub async fn open_raw(addr: SocketAddr, block: &[u8]) -> Option<TcpStream> {
    const MAX_FRAME: usize = 16_384;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let pieces: Vec<&[u8]> = if block.is_empty() {
        vec![&[]]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() { 0x4 } else { 0 }; // END_HEADERS
        out.extend(match i {
            0 => frame(0x1, 0x1 | last, 1, piece), // HEADERS, END_STREAM
            _ => frame(0x9, last, 1, piece),       // CONTINUATION
        });
    }
    stream.write_all(&out).await.ok()?;
    Some(stream)
}

/// Sends one request as [`open_raw`] does and reports how stream 1 was answered.
pub async fn raw_request(addr: SocketAddr, block: &[u8]) -> RawAnswer {
    let Some(mut stream) = open_raw(addr, block).await else {
        return RawAnswer::Reset;
    };
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return RawAnswer::Reset,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = ((buf[at] as usize) << 16) | ((buf[at + 1] as usize) << 8) | buf[at + 2] as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            let kind = buf[at + 3];
            let id = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]) & 0x7fff_ffff;
            match kind {
                // HPACK static index 8 (0x88) is `:status: 200`; anything else is another status.
                0x1 if id == 1 => {
                    return match buf.get(at + 9) {
                        Some(0x88) => RawAnswer::Ok,
                        _ => RawAnswer::Refused,
                    }
                }
                0x3 if id == 1 => return RawAnswer::Reset,
                0x7 => return RawAnswer::Reset,
                _ => {}
            }
            at += 9 + len;
        }
    }
}
