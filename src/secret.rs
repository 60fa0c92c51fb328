//! The upstream Ark key. It exists in memory only as a sensitive `HeaderValue`
//! inside [`ArkApiKey`], whose `Debug` and `Display` print `[redacted]`, so no
//! log line, error or metric can carry it by accident.

use std::fmt;

use http::HeaderValue;

/// The real Ark API key, ready to be sent as `Authorization: Bearer …`.
#[derive(Clone)]
pub struct ArkApiKey {
    authorization: HeaderValue,
}

/// Why a key could not be turned into a header. Never carries the key itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArkApiKeyError {
    #[error("is empty")]
    Empty,
    #[error("contains characters that cannot appear in an HTTP header (for example a newline in the middle)")]
    NotHeaderSafe,
}

impl ArkApiKey {
    /// Builds the key from the raw text of a file or environment variable.
    /// Surrounding white space (a trailing newline in a mounted secret) is removed.
    pub fn from_secret_text(text: &str) -> Result<Self, ArkApiKeyError> {
        let key = text.trim();
        if key.is_empty() {
            return Err(ArkApiKeyError::Empty);
        }
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| ArkApiKeyError::NotHeaderSafe)?;
        // Marked sensitive so that hyper/h2 never index it in HPACK tables and
        // `HeaderValue`'s own Debug prints `Sensitive`.
        authorization.set_sensitive(true);
        Ok(Self { authorization })
    }

    /// The `Authorization` header value to send upstream (already sensitive).
    pub fn authorization_header(&self) -> HeaderValue {
        self.authorization.clone()
    }
}

impl fmt::Debug for ArkApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ArkApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key = ArkApiKey::from_secret_text("sk-canary-123\n").unwrap();
        assert_eq!(format!("{key:?}"), "[redacted]");
        assert_eq!(format!("{key}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(key.clone())), "Some([redacted])");
    }

    #[test]
    fn header_is_bearer_and_sensitive() {
        let key = ArkApiKey::from_secret_text("  sk-canary-123 \n").unwrap();
        let header = key.authorization_header();
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().unwrap(), "Bearer sk-canary-123");
        assert!(!format!("{header:?}").contains("canary"));
    }

    #[test]
    fn empty_or_broken_keys_are_refused_without_echoing_them() {
        assert_eq!(ArkApiKey::from_secret_text(" \n").unwrap_err(), ArkApiKeyError::Empty);
        let err = ArkApiKey::from_secret_text("sk-a\nsk-b").unwrap_err();
        assert_eq!(err, ArkApiKeyError::NotHeaderSafe);
        assert!(!err.to_string().contains("sk-"));
    }
}
