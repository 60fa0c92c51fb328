//! The tamper-evident chain of audit lines.
//!
//! Each line is `{"hash":"<sha256 hex>",<body>` where the body is the rest of
//! the JSON object (it carries `seq` and `prev_hash`) and the hash is the
//! SHA-256 of `{` + body, byte for byte: verification needs no canonical JSON.
//! `prev_hash` names the previous record's hash, across restarts and across
//! rotated files; the first record ever names [`GENESIS`].

use std::fmt;
use std::io::BufRead;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `prev_hash` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const PREFIX: &str = "{\"hash\":\"";

/// Where the chain stands: the last record's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// Appends the line for a serialized record (a JSON object without the chain
/// fields) as the record after `head`, and moves `head` on to it. Nothing is
/// allocated: the hash is taken over the pieces of the line where they are.
pub fn seal_into(out: &mut Vec<u8>, head: &mut ChainHead, record: &[u8]) {
    debug_assert_eq!(record.first(), Some(&b'{'));
    let seq = head.seq + 1;
    let mut digits = [0u8; 20];
    // The hashed object: `{"seq":N,"prev_hash":"…",` + the rest of the record.
    let object: [&[u8]; 6] = [
        b"{\"seq\":",
        super::decimal(seq, &mut digits),
        b",\"prev_hash\":\"",
        head.hash.as_bytes(),
        b"\",",
        &record[1..],
    ];
    let mut hasher = Sha256::new();
    for piece in object {
        hasher.update(piece);
    }
    let mut hex = [0u8; 64];
    hex::encode_to_slice(hasher.finalize(), &mut hex).expect("a SHA-256 is 64 hex digits");
    // The line: `{"hash":"…",` + the object without its opening brace.
    out.reserve(PREFIX.len() + hex.len() + 2 + object.iter().map(|p| p.len()).sum::<usize>());
    out.extend_from_slice(PREFIX.as_bytes());
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&object[0][1..]);
    for piece in &object[1..] {
        out.extend_from_slice(piece);
    }
    out.push(b'\n');
    head.seq = seq;
    head.hash.clear();
    head.hash.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
}

#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev_hash: String,
}

/// Splits a line into (claimed hash, recomputed hash, link fields).
fn open(line: &str) -> Option<(String, String, Link)> {
    let rest = line.strip_prefix(PREFIX)?;
    let (claimed, body) = (rest.get(..64)?, rest.get(64..)?.strip_prefix("\",")?);
    let object = format!("{{{body}");
    let actual = hex::encode(Sha256::digest(object.as_bytes()));
    let link: Link = serde_json::from_str(&object).ok()?;
    Some((claimed.to_string(), actual, link))
}

/// The head of an existing chain (its last complete line), to continue it.
pub fn head_of(text: &str) -> Option<ChainHead> {
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let (claimed, _, link) = open(last)?;
    Some(ChainHead {
        seq: link.seq,
        hash: claimed,
    })
}

/// What `ark-gateway audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The whole chain holds.
    Intact {
        records: u64,
        head: ChainHead,
        starts_after: Option<u64>,
    },
    /// The first record that does not fit, and how.
    Broken {
        file: String,
        line: usize,
        seq: Option<u64>,
        problem: Problem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotARecord,
    Changed,
    Removed { expected_seq: u64 },
    Reordered { expected_seq: u64 },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Intact {
                records,
                head,
                starts_after,
            } => {
                write!(
                    f,
                    "ok: {records} records, chain intact, last seq {} hash {}",
                    head.seq, head.hash
                )?;
                if let Some(seq) = starts_after {
                    write!(
                        f,
                        " (continues a chain whose earlier records, up to seq {seq}, are in older files)"
                    )?;
                }
                Ok(())
            }
            Finding::Broken {
                file,
                line,
                seq,
                problem,
            } => {
                let at = match seq {
                    Some(seq) => format!("{file}:{line} (seq {seq})"),
                    None => format!("{file}:{line}"),
                };
                match problem {
                    Problem::NotARecord => write!(f, "{at}: not an audit record (truncated or edited)"),
                    Problem::Changed => write!(f, "{at}: record was changed"),
                    Problem::Removed { expected_seq } => {
                        write!(
                            f,
                            "{at}: records were removed before this one (expected seq {expected_seq})"
                        )
                    }
                    Problem::Reordered { expected_seq } => {
                        write!(
                            f,
                            "{at}: records were reordered or duplicated (expected seq {expected_seq})"
                        )
                    }
                }
            }
        }
    }
}

/// Verifies one chain spread over the given files, oldest first.
pub fn verify_files(files: Vec<(String, Box<dyn BufRead>)>) -> std::io::Result<Finding> {
    let mut head: Option<ChainHead> = None;
    let mut starts_after = None;
    let mut records = 0;
    for (name, reader) in files {
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let broken = |seq, problem| Finding::Broken {
                file: name.clone(),
                line: i + 1,
                seq,
                problem,
            };
            let Some((claimed, actual, link)) = open(&line) else {
                return Ok(broken(None, Problem::NotARecord));
            };
            if claimed != actual {
                return Ok(broken(Some(link.seq), Problem::Changed));
            }
            match &head {
                None if link.seq == 1 && link.prev_hash != GENESIS => {
                    return Ok(broken(Some(link.seq), Problem::Changed));
                }
                None => {
                    if link.seq > 1 {
                        starts_after = Some(link.seq - 1);
                    }
                }
                Some(prev) => {
                    let expected_seq = prev.seq + 1;
                    if link.seq > expected_seq {
                        return Ok(broken(Some(link.seq), Problem::Removed { expected_seq }));
                    }
                    if link.seq < expected_seq {
                        return Ok(broken(Some(link.seq), Problem::Reordered { expected_seq }));
                    }
                    if link.prev_hash != prev.hash {
                        // The previous record was replaced by a forged one.
                        return Ok(broken(Some(prev.seq), Problem::Changed));
                    }
                }
            }
            records += 1;
            head = Some(ChainHead {
                seq: link.seq,
                hash: claimed,
            });
        }
    }
    Ok(Finding::Intact {
        records,
        head: head.unwrap_or_else(ChainHead::genesis),
        starts_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<String> {
        let mut head = ChainHead::genesis();
        (1..=n)
            .map(|_| {
                let mut line = Vec::new();
                seal_into(&mut line, &mut head, br#"{"status":200}"#);
                String::from_utf8(line).unwrap()
            })
            .collect()
    }

    fn check(lines: &[String]) -> Finding {
        let text = lines.concat();
        verify_files(vec![(
            "audit.jsonl".into(),
            Box::new(std::io::Cursor::new(text.into_bytes())),
        )])
        .unwrap()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let lines = chain(5);
        match check(&lines) {
            Finding::Intact {
                records,
                head,
                starts_after,
            } => {
                assert_eq!((records, head.seq, starts_after), (5, 5, None));
            }
            other => panic!("{other}"),
        }
        assert_eq!(head_of(&lines.concat()).unwrap().seq, 5);
    }

    #[test]
    fn changes_removals_and_reorders_are_found_at_the_first_bad_record() {
        let mut changed = chain(5);
        changed[2] = changed[2].replace("\"status\":200", "\"status\":403");
        assert!(matches!(
            check(&changed),
            Finding::Broken {
                line: 3,
                problem: Problem::Changed,
                ..
            }
        ));

        let mut removed = chain(5);
        removed.remove(1);
        assert!(matches!(
            check(&removed),
            Finding::Broken {
                line: 2,
                problem: Problem::Removed { expected_seq: 2 },
                ..
            }
        ));

        let mut reordered = chain(5);
        reordered.swap(2, 3);
        assert!(matches!(
            check(&reordered),
            Finding::Broken {
                line: 3,
                problem: Problem::Removed { .. },
                ..
            }
        ));
        let mut duplicated = chain(3);
        duplicated.push(duplicated[1].clone());
        assert!(matches!(
            check(&duplicated),
            Finding::Broken {
                line: 4,
                problem: Problem::Reordered { .. },
                ..
            }
        ));

        let mut truncated = chain(3);
        truncated[1].truncate(40);
        truncated[1].push('\n');
        assert!(matches!(
            check(&truncated),
            Finding::Broken {
                line: 2,
                problem: Problem::NotARecord,
                ..
            }
        ));
    }

    /// Appends `{"hash":"<sha256 of object>",` + the rest of `object`: what a
    /// forger who recomputes the hash of a changed record would write.
    fn seal_object(out: &mut Vec<u8>, object: &[u8]) {
        out.extend_from_slice(PREFIX.as_bytes());
        out.extend_from_slice(hex::encode(Sha256::digest(object)).as_bytes());
        out.extend_from_slice(b"\",");
        out.extend_from_slice(&object[1..]);
        out.push(b'\n');
    }

    #[test]
    fn sealed_lines_carry_seq_and_link_and_hash_their_own_bytes() {
        let mut head = ChainHead {
            seq: 9,
            hash: "ab".repeat(32),
        };
        let mut line = Vec::new();
        seal_into(&mut line, &mut head, br#"{"status":200}"#);
        let line = String::from_utf8(line).unwrap();
        let object = format!("{{\"seq\":10,\"prev_hash\":\"{}\",\"status\":200}}", "ab".repeat(32));
        let hash = hex::encode(Sha256::digest(object.as_bytes()));
        assert_eq!(line, format!("{{\"hash\":\"{hash}\",{}\n", &object[1..]));
        assert_eq!(head, ChainHead { seq: 10, hash });
    }

    #[test]
    fn a_forged_record_with_a_recomputed_hash_breaks_the_next_link() {
        let mut lines = chain(4);
        let forged_body = lines[1].replace("\"status\":200", "\"status\":201");
        let object = format!("{{{}", &forged_body[PREFIX.len() + 66..forged_body.len() - 1]);
        let mut forged = Vec::new();
        seal_object(&mut forged, object.as_bytes());
        lines[1] = String::from_utf8(forged).unwrap();
        assert!(matches!(
            check(&lines),
            Finding::Broken {
                seq: Some(2),
                problem: Problem::Changed,
                ..
            }
        ));
    }
}
