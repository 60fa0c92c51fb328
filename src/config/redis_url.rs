//! A Redis URL, checked at load; its `Debug`/`Display` never show a password.

use std::fmt;

/// A Redis URL whose `Debug`/`Display` hide any password it carries.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
            return Err("must start with redis://, rediss:// (TLS) or redis+unix://".into());
        }
        redis::Client::open(url).map_err(|e| format!("is not a usable Redis URL: {:?}", e.kind()))?;
        Ok(Self(url.to_string()))
    }

    /// The URL itself, password included: only for connecting.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://[redacted]@{host}"),
                None => self.0.clone(),
            },
            None => "[redacted]".into(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
