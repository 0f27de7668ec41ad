//! The exported log and its verification by anyone holding the public key.
//!
//! The export is JSON lines. The first is the head: `{"log": "osler-audit-v1", "key":
//! verifier key, "checkpoint": the signed note of the whole tree}`. Then one line per entry,
//! in order: `{"size": n, "signature": base64, "entry": the AuditEvent}`, where `size` is the
//! tree's size once the entry is in, `signature` the signature line of that tree's checkpoint,
//! and the entry's bytes exactly as they were hashed.

use serde_json::value::RawValue;

use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::note::{self, NoteVerifier};

pub const FORMAT: &str = "osler-audit-v1";

/// The head line of an export.
pub fn head_line(verifier_key: &str, head_note: &str) -> String {
    serde_json::json!({"log": FORMAT, "key": verifier_key, "checkpoint": head_note}).to_string()
}

/// One entry line of an export. `entry` must be one JSON value (the stored AuditEvent).
pub fn entry_line(size: u64, signature: &str, entry: &str) -> String {
    format!(
        "{{\"size\":{size},\"signature\":{},\"entry\":{entry}}}",
        serde_json::Value::from(signature)
    )
}

/// The first thing wrong with a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Bad {
    #[error("the head line: {0}")]
    Head(String),
    /// Entry `n` (1-based: the tree's size with it) is not what was signed.
    #[error("entry {entry}: {why}")]
    Entry { entry: u64, why: String },
    #[error("truncated: {0}")]
    Truncated(String),
}

/// What a verified log holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    pub root: Hash,
}

#[derive(serde::Deserialize)]
struct Head {
    log: String,
    checkpoint: String,
}

#[derive(serde::Deserialize)]
struct Line<'a> {
    size: u64,
    signature: String,
    #[serde(borrow)]
    entry: &'a RawValue,
}

/// Verifies an exported log against the pinned key: every entry in its place and unchanged,
/// nothing missing at the end, and, with `kept` (a checkpoint note fetched earlier), that the
/// log still extends what was seen then.
pub fn verify(export: &str, key: &NoteVerifier, kept: Option<&str>) -> Result<Verified, Bad> {
    let mut lines = export.lines();
    let head: Head = lines
        .next()
        .ok_or_else(|| Bad::Head("the log is empty".into()))
        .and_then(|l| serde_json::from_str(l).map_err(|e| Bad::Head(e.to_string())))?;
    if head.log != FORMAT {
        return Err(Bad::Head(format!(
            "format {:?}, expected {FORMAT}",
            head.log
        )));
    }
    let head =
        note::open_checkpoint(key, &head.checkpoint).map_err(|e| Bad::Head(e.to_string()))?;
    let kept = kept
        .map(|k| note::open_checkpoint(key, k))
        .transpose()
        .map_err(|e| Bad::Head(format!("the kept checkpoint: {e}")))?;
    let mut tree = Frontier::default();
    let mut root_at_head = None;
    for (i, text) in lines.enumerate() {
        let n = i as u64 + 1;
        let line: Line = serde_json::from_str(text).map_err(|e| Bad::Entry {
            entry: n,
            why: format!("not an entry line ({e})"),
        })?;
        if line.size != n {
            return Err(Bad::Entry {
                entry: n,
                why: format!(
                    "the entry signed as number {} stands at number {n}: entries before it were removed, inserted or moved",
                    line.size
                ),
            });
        }
        tree.push(leaf_hash(line.entry.get().as_bytes()));
        let root = tree.root();
        let text = note::checkpoint_text(&key.name, n, &root);
        if !note::verify_signature(key, &text, &line.signature) {
            return Err(Bad::Entry {
                entry: n,
                why: "does not match the checkpoint signed with it: it was altered".into(),
            });
        }
        if let Some(k) = &kept
            && k.size == n
            && k.root != root
        {
            return Err(Bad::Entry {
                entry: n,
                why: "the log forked: the checkpoint kept at this size has another root".into(),
            });
        }
        if n == head.size {
            root_at_head = Some(root);
        }
    }
    let entries = tree.size();
    if entries < head.size {
        return Err(Bad::Truncated(format!(
            "the head checkpoint covers {} entries, the log holds {entries}",
            head.size
        )));
    }
    if let Some(k) = &kept
        && k.size > entries
    {
        return Err(Bad::Truncated(format!(
            "a checkpoint kept earlier covers {} entries, the log holds {entries}",
            k.size
        )));
    }
    if entries > head.size {
        return Err(Bad::Entry {
            entry: head.size + 1,
            why: "the log goes on past its head checkpoint".into(),
        });
    }
    let root = root_at_head.unwrap_or_else(crate::merkle::empty_root);
    if root != head.root {
        return Err(Bad::Head(
            "the head checkpoint's root is not the entries' root".into(),
        ));
    }
    Ok(Verified { entries, root })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn log(n: u64) -> (String, NoteVerifier, SigningKey) {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let vk = note::verifier_key(&key.verifying_key());
        let v = note::parse_verifier_key(&vk).unwrap();
        let mut tree = Frontier::default();
        let mut body = String::new();
        for i in 1..=n {
            let entry = format!("{{\"resourceType\":\"AuditEvent\",\"n\":{i}}}");
            tree.push(leaf_hash(entry.as_bytes()));
            let sig = note::sign(&key, &note::checkpoint_text(&v.name, i, &tree.root()));
            body.push_str(&entry_line(i, &sig, &entry));
            body.push('\n');
        }
        let head = note::signed_note(&key, &note::checkpoint_text(&v.name, n, &tree.root()));
        (format!("{}\n{body}", head_line(&vk, &head)), v, key)
    }

    #[test]
    fn an_untouched_log_verifies() {
        let (text, v, _) = log(9);
        assert_eq!(verify(&text, &v, None).unwrap().entries, 9);
        let (empty, v0, _) = log(0);
        assert_eq!(verify(&empty, &v0, None).unwrap().entries, 0);
    }

    #[test]
    fn every_single_changed_byte_of_an_entry_line_is_caught() {
        let (text, v, _) = log(5);
        let start = text.find('\n').unwrap() + 1;
        for pos in start..text.len() {
            if text.as_bytes()[pos] == b'\n' {
                continue;
            }
            let mut b = text.clone().into_bytes();
            b[pos] ^= 0x01;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            assert!(verify(&t, &v, None).is_err(), "flip at {pos} undetected");
        }
    }

    #[test]
    fn deletion_swap_insertion_and_truncation_name_the_first_bad_entry() {
        let (text, v, key) = log(6);
        let lines: Vec<&str> = text.lines().collect();
        let join = |l: Vec<&str>| l.join("\n") + "\n";
        let mut del = lines.clone();
        del.remove(3);
        assert!(matches!(
            verify(&join(del), &v, None),
            Err(Bad::Entry { entry: 3, .. })
        ));
        let mut swap = lines.clone();
        swap.swap(2, 4);
        assert!(matches!(
            verify(&join(swap), &v, None),
            Err(Bad::Entry { entry: 2, .. })
        ));
        let mut cut = lines.clone();
        cut.truncate(4);
        assert!(matches!(
            verify(&join(cut), &v, None),
            Err(Bad::Truncated(_))
        ));
        // An inserted line, even one signed by another key, is named where it stands.
        let other = SigningKey::from_bytes(&[4u8; 32]);
        let forged = entry_line(3, &note::sign(&other, "x"), "{}");
        let mut ins = lines.clone();
        ins.insert(3, &forged);
        assert!(matches!(
            verify(&join(ins), &v, None),
            Err(Bad::Entry { entry: 3, .. })
        ));
        // Truncation that rewrites the head is caught by a checkpoint kept from before.
        let (short, _, _) = log(4);
        let kept = serde_json::from_str::<serde_json::Value>(lines[0]).unwrap()["checkpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(verify(&short, &v, None).is_ok());
        assert!(matches!(
            verify(&short, &v, Some(&kept)),
            Err(Bad::Truncated(_))
        ));
        let _ = key;
    }

    #[test]
    fn a_log_under_another_key_is_refused_at_its_head() {
        let (text, _, _) = log(3);
        let other = SigningKey::from_bytes(&[5u8; 32]);
        let v = note::parse_verifier_key(&note::verifier_key(&other.verifying_key())).unwrap();
        assert!(matches!(verify(&text, &v, None), Err(Bad::Head(_))));
    }
}
