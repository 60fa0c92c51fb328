//! Reading and checking a create body.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;

use crate::error::GatewayError;
use crate::tenant::Tenant;

/// Reads at most `limit` bytes of body within `timeout`. A declared length over
/// the limit is refused before a byte is read.
pub async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize, timeout: Duration) -> Result<Bytes, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(GatewayError::ClientBodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(GatewayError::BodyTooLarge { limit }),
        Ok(Err(_)) => Err(GatewayError::ClientBodyError),
    }
}

/// The part of a create body the policy looks at. Deserialising into a
/// struct (not a map) makes a repeated `model` key an error rather than a
/// silent "last one wins" that Ark might read differently.
#[derive(Deserialize)]
struct CreateProbe {
    model: Option<String>,
}

/// Checks that the body is a JSON object with a string `model` the tenant may
/// use, and returns that model.
pub fn check_create_body(body: &[u8], tenant: &Tenant) -> Result<String, GatewayError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(GatewayError::InvalidBody("expected a JSON object"));
    }
    let probe: CreateProbe = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            GatewayError::InvalidBody("`model` must be given once, as a string")
        } else {
            GatewayError::InvalidBody("not valid JSON")
        }
    })?;
    let model = probe
        .model
        .filter(|m| !m.is_empty())
        .ok_or(GatewayError::MissingModel)?;
    match &tenant.models {
        Some(allowed) if !allowed.contains(&model) => Err(GatewayError::ModelNotAllowed),
        _ => Ok(model),
    }
}

/// The optional `Idempotency-Key`: 1-255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let visible = |b: &u8| b.is_ascii_graphic();
    if values.next().is_some() || bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(visible) {
        return Err(GatewayError::InvalidIdempotencyKey);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}
