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

/// The egress proxy's credentials (`upstream.proxy_credentials_file`, or the
/// user info of a proxy URL from the environment), ready to be sent as
/// `Proxy-Authorization: Basic …` on `CONNECT`. Printed as `[redacted]`.
#[derive(Clone)]
pub struct ProxyCredential {
    authorization: HeaderValue,
}

impl ProxyCredential {
    /// From one `user:password` line (surrounding white space removed).
    pub fn from_secret_text(text: &str) -> Result<Self, ProxyCredentialError> {
        let line = text.trim();
        let (user, _) = line.split_once(':').ok_or(ProxyCredentialError::NoColon)?;
        if user.is_empty() || line.contains(['\n', '\r']) {
            return Err(ProxyCredentialError::NoColon);
        }
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(line);
        let mut authorization =
            HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| ProxyCredentialError::NoColon)?;
        authorization.set_sensitive(true);
        Ok(Self { authorization })
    }

    /// An already encoded `Proxy-Authorization` value (kept sensitive).
    pub(crate) fn from_header(mut authorization: HeaderValue) -> Self {
        authorization.set_sensitive(true);
        Self { authorization }
    }

    pub(crate) fn authorization_header(&self) -> HeaderValue {
        self.authorization.clone()
    }
}

/// Why proxy credentials were refused. Never carries them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyCredentialError {
    #[error("must be one line `user:password` (a non-empty user name, a colon, the password)")]
    NoColon,
}

impl fmt::Debug for ProxyCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ProxyCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_credentials_are_basic_sensitive_and_redacted() {
        let credential = ProxyCredential::from_secret_text("egress:s3cret-canary\n").unwrap();
        assert_eq!(format!("{credential:?} {credential}"), "[redacted] [redacted]");
        let header = credential.authorization_header();
        assert!(header.is_sensitive());
        // base64("egress:s3cret-canary")
        assert_eq!(header.to_str().unwrap(), "Basic ZWdyZXNzOnMzY3JldC1jYW5hcnk=");
        for bad in ["", "no-colon", ":password-only", "a:b\nc:d"] {
            let e = ProxyCredential::from_secret_text(bad).unwrap_err();
            assert!(!e.to_string().contains("canary"));
        }
    }

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
