//! `docs/configuration.md` documents every key the gateway parses, with
//! whether a reload applies it: the key list is read off the config types,
//! so a key added to them without a row in the reference fails here.

use std::collections::HashMap;

use ark_gateway::config::{known_keys, reloads, KeyKind};

/// `key → reloads` from the reference's tables (rows of the form `| `key` | type | default | yes/no | … |`).
fn documented() -> HashMap<String, String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((key.to_string(), cells.get(4)?.to_string()))
        })
        .collect()
}

#[test]
fn every_key_is_documented_with_whether_it_reloads() {
    let documented = documented();
    let mut missing = Vec::new();
    for key in known_keys() {
        // Top-level tables are the document's sections.
        if key.kind == KeyKind::Table && !key.path.contains('.') {
            continue;
        }
        match documented.get(&key.path) {
            None => missing.push(key.path.clone()),
            Some(reload) => {
                let expected = if reloads(&key.path) { "yes" } else { "no" };
                assert_eq!(reload, expected, "{}: the reloads column", key.path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys without a row in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn the_reference_documents_no_key_that_does_not_exist() {
    let known: Vec<&str> = known_keys().iter().map(|k| k.path.as_str()).collect();
    let stale: Vec<String> = documented()
        .into_keys()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    assert!(stale.is_empty(), "rows for keys the gateway does not parse: {stale:?}");
}
