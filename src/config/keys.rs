//! The config file's keys, read off the raw types themselves: a serde
//! deserializer that records every field it is asked for. Unknown-key
//! detection, the list of keys a reload cannot change, and the test that
//! `docs/configuration.md` documents every key all use this one list, so
//! none of them can drift from what is parsed.

use std::cell::RefCell;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::raw::RawConfig;
use super::ConfigProblem;

/// A key's place and the shape of its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Table,
    TableArray,
    String,
    Integer,
    Float,
    Bool,
    StringArray,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::TableArray => "array of tables",
            Self::String => "string",
            Self::Integer => "integer",
            Self::Float => "number",
            Self::Bool => "boolean",
            Self::StringArray => "array of strings",
        }
    }
}

/// One key, as a dotted path (`tenant.rate_limit.burst`; array elements share one path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub path: String,
    pub kind: KeyKind,
}

/// Keys whose change a reload applies; every other key needs a restart.
/// (The key file's content reloads too.)
pub(super) const RELOADABLE: &[&str] = &[
    "tenant",
    "pricing",
    "upstream.max_active_tasks",
    "upstream.api_key_env",
    "upstream.api_key_file",
    "server.max_body_bytes",
    "server.request_timeout",
];

/// Whether a change of `path` is applied by a reload.
pub fn reloads(path: &str) -> bool {
    RELOADABLE
        .iter()
        .any(|r| path == *r || path.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')))
}

/// Every key of the config file, in declaration order.
pub fn known_keys() -> &'static [Key] {
    static KEYS: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = RefCell::new(Vec::new());
        RawConfig::deserialize(Recorder {
            path: String::new(),
            in_array: false,
            keys: &keys,
        })
        .expect("the raw config types are made of tables, strings, integers, booleans and arrays");
        keys.into_inner()
    })
}

fn kind_of(path: &str) -> Option<KeyKind> {
    known_keys().iter().find(|k| k.path == path).map(|k| k.kind)
}

/// Keys that look like a secret pasted inline, and where the secret belongs instead.
fn secret_hint(path: &str) -> Option<&'static str> {
    let name = path.rsplit('.').next().unwrap_or(path);
    let secretish = matches!(
        name,
        "api_key" | "key" | "token" | "secret" | "password" | "admin_token"
    );
    match () {
        _ if !secretish || path == "server.tls.key" => None,
        _ if path.starts_with("tenant.") => Some(
            "never put a tenant's token in the config: store only its SHA-256 in `token_sha256` \
             (`ark-gateway hash-token` prints it)",
        ),
        _ => Some(
            "never put a secret in the config file: the Ark key belongs in a file named by \
             `upstream.api_key_file` or an environment variable named by `upstream.api_key_env`",
        ),
    }
}

/// The known key nearest to an unknown `path` among its siblings, if close enough.
fn suggestion(path: &str) -> Option<&'static str> {
    let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
    known_keys()
        .iter()
        .filter_map(|k| {
            let (p, n) = k.path.rsplit_once('.').unwrap_or(("", k.path.as_str()));
            (p == parent).then_some((edit_distance(name, n), n))
        })
        .filter(|(d, n)| *d <= (n.len() / 3).max(2))
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The keys whose values differ between two versions of the file and that
/// only a restart applies, in the order of [`known_keys`].
pub fn restart_only_changes(old: &toml::Table, new: &toml::Table) -> Vec<&'static str> {
    known_keys()
        .iter()
        .filter(|k| !matches!(k.kind, KeyKind::Table | KeyKind::TableArray) && !reloads(&k.path))
        .filter(|k| lookup(old, &k.path) != lookup(new, &k.path))
        .map(|k| k.path.as_str())
        .collect()
}

/// The value at a dotted path of plain tables (not inside an array of tables).
fn lookup<'t>(table: &'t toml::Table, path: &str) -> Option<&'t toml::Value> {
    let (first, rest) = path.split_once('.').map_or((path, None), |(f, r)| (f, Some(r)));
    let value = table.get(first)?;
    match (rest, value) {
        (None, value) => Some(value),
        (Some(rest), toml::Value::Table(inner)) => lookup(inner, rest),
        (Some(_), _) => None,
    }
}

/// Removes every unknown key from `table` and reports each, with the nearest
/// known key or, for a secret, where it belongs. Shapes are left to serde.
pub(super) fn remove_unknown(table: &mut toml::Table) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    walk(table, "", "", &mut problems);
    problems
}

fn walk(table: &mut toml::Table, prefix: &str, shown: &str, problems: &mut Vec<ConfigProblem>) {
    let join = |base: &str, name: &str| match base {
        "" => name.to_string(),
        _ => format!("{base}.{name}"),
    };
    let mut unknown = Vec::new();
    for (name, value) in table.iter_mut() {
        let (path, shown) = (join(prefix, name), join(shown, name));
        match (kind_of(&path), value) {
            (None, _) => {
                let message = match (secret_hint(&path), suggestion(&path)) {
                    (Some(hint), _) => hint.to_string(),
                    (None, Some(near)) => format!("unknown key; did you mean `{near}`?"),
                    (None, None) => "unknown key".to_string(),
                };
                problems.push(ConfigProblem { key: shown, message });
                unknown.push(name.clone());
            }
            (Some(KeyKind::Table), toml::Value::Table(inner)) => walk(inner, &path, &shown, problems),
            (Some(KeyKind::TableArray), toml::Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        walk(inner, &path, &format!("{shown}[{i}]"), problems);
                    }
                }
            }
            _ => {}
        }
    }
    for name in unknown {
        table.remove(&name);
    }
}

/// Records the fields serde asks for, and answers each with an empty value.
struct Recorder<'a> {
    path: String,
    /// An array's element: the array is recorded by the element's shape.
    in_array: bool,
    keys: &'a RefCell<Vec<Key>>,
}

impl Recorder<'_> {
    fn record(&self, scalar: KeyKind) {
        let kind = match (self.in_array, scalar) {
            (true, KeyKind::Table) => KeyKind::TableArray,
            (true, _) => KeyKind::StringArray,
            (false, kind) => kind,
        };
        if !self.path.is_empty() {
            self.keys.borrow_mut().push(Key {
                path: self.path.clone(),
                kind,
            });
        }
    }
}

type Error = de::value::Error;

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::custom(format!(
            "{}: a shape the key list cannot read",
            self.path
        )))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.record(KeyKind::Table);
        visitor.visit_map(Fields {
            fields,
            next: 0,
            prefix: self.path,
            keys: self.keys,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(Recorder { in_array: true, ..self })))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(KeyKind::String);
        visitor.visit_str("")
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(KeyKind::Integer);
        visitor.visit_i64(0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(KeyKind::Float);
        visitor.visit_f64(0.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.record(KeyKind::Bool);
        visitor.visit_bool(false)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u64 u128 f32 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct map enum identifier ignored_any
    }
}

struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    prefix: String,
    keys: &'a RefCell<Vec<Key>>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = match self.prefix.as_str() {
            "" => field.to_string(),
            prefix => format!("{prefix}.{field}"),
        };
        seed.deserialize(Recorder {
            path,
            in_array: false,
            keys: self.keys,
        })
    }
}

struct OneElement<'a>(Option<Recorder<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|recorder| seed.deserialize(recorder)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(path: &str) -> Option<KeyKind> {
        kind_of(path)
    }

    #[test]
    fn nested_keys_are_read_off_the_types() {
        assert_eq!(kind("server.listen"), Some(KeyKind::String));
        assert_eq!(kind("server.tls"), Some(KeyKind::Table));
        assert_eq!(kind("server.tls.cert"), Some(KeyKind::String));
        assert_eq!(kind("tenant"), Some(KeyKind::TableArray));
        assert_eq!(kind("tenant.rate_limit.burst"), Some(KeyKind::Integer));
        assert_eq!(kind("tenant.operations"), Some(KeyKind::StringArray));
        assert_eq!(kind("upstream.allow_insecure_http"), Some(KeyKind::Bool));
        assert_eq!(kind("tenants"), None, "the serde name, not the field name");
    }

    #[test]
    fn near_misses_get_a_suggestion_and_secrets_a_pointer() {
        assert_eq!(suggestion("server.listn"), Some("listen"));
        assert_eq!(suggestion("tenant.rate_limit.brust"), Some("burst"));
        assert_eq!(suggestion("server.zzzzzz"), None);
        assert!(secret_hint("upstream.api_key").unwrap().contains("api_key_file"));
        assert!(secret_hint("tenant.token").unwrap().contains("token_sha256"));
        assert_eq!(secret_hint("server.tls.key"), None);
    }

    #[test]
    fn every_restart_only_key_that_changed_is_named() {
        let old: toml::Table = toml::from_str(
            "[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 10\n[store]\nbackend = \"redb\"\n[audit]\nfsync = \"always\"\n",
        )
        .unwrap();
        let new: toml::Table = toml::from_str(
            "[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 20\n[store]\nbackend = \"redis\"\n[rate_limit]\nbackend = \"redis\"\n[audit]\non_failure = \"fail_closed\"\n",
        )
        .unwrap();
        assert_eq!(
            restart_only_changes(&old, &new),
            ["store.backend", "audit.fsync", "audit.on_failure", "rate_limit.backend"]
        );
        assert!(restart_only_changes(&old, &old).is_empty());
    }

    #[test]
    fn reloadable_keys_are_exactly_the_tenants_the_key_and_request_limits() {
        assert!(reloads("tenant.rate_limit.burst"));
        assert!(reloads("upstream.api_key_file"));
        assert!(!reloads("upstream.api_key_filex"));
        assert!(!reloads("store.backend"));
        assert!(!reloads("audit.fsync"));
        for key in RELOADABLE {
            assert!(kind_of(key).is_some(), "{key} is not a key");
        }
    }
}
