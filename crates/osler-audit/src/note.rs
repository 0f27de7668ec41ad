//! Checkpoints (C2SP tlog-checkpoint) signed as C2SP signed notes with Ed25519.
//!
//! A checkpoint's text is three lines: the log's origin, the tree size in decimal and the root
//! hash in base64. A signed note is that text, a blank line, and one line per signature:
//! `— <key name> base64(key id[4] ‖ signature)`, where the key id is the first four bytes of
//! SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key) (0x01: the Ed25519 algorithm byte). A
//! verifier key is written `<name>+<key id hex>+base64(0x01 ‖ public key)`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

const ALG_ED25519: u8 = 0x01;
const DASH: &str = "\u{2014}";

/// Why a note or a key is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("not a verifier key: {0}")]
    Key(String),
    #[error("not a signed note: {0}")]
    Shape(String),
    #[error("no signature by {0} verifies")]
    Signature(String),
    #[error("not a checkpoint: {0}")]
    Checkpoint(String),
}

/// The key's four-byte id.
pub fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A log's name: its origin line and its key name, derived from its public key so that two
/// hubs never share one.
pub fn origin(public: &VerifyingKey) -> String {
    let d = Sha256::digest(public.as_bytes());
    let hex: String = d[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("osler.audit/{hex}")
}

/// The verifier key text for `public`.
pub fn verifier_key(public: &VerifyingKey) -> String {
    let name = origin(public);
    let id = key_id(&name, public);
    let mut k = vec![ALG_ED25519];
    k.extend_from_slice(public.as_bytes());
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}+{hex}+{}", B64.encode(k))
}

/// A parsed verifier key.
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    pub name: String,
    pub id: [u8; 4],
    pub key: VerifyingKey,
}

pub fn parse_verifier_key(text: &str) -> Result<NoteVerifier, NoteError> {
    let bad = |why: &str| NoteError::Key(why.to_owned());
    let mut parts = text.trim().splitn(3, '+');
    let (Some(name), Some(hex), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected name+keyid+base64key"));
    };
    let raw = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
    if raw.len() != 33 || raw[0] != ALG_ED25519 {
        return Err(bad("not an Ed25519 key"));
    }
    let bytes: [u8; 32] = raw[1..].try_into().map_err(|_| bad("not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 point"))?;
    let id = key_id(name, &key);
    let expect: String = id.iter().map(|b| format!("{b:02x}")).collect();
    if hex != expect {
        return Err(bad("the key id does not match the key"));
    }
    Ok(NoteVerifier {
        name: name.to_owned(),
        id,
        key,
    })
}

/// The text of a checkpoint (each line ends in a newline).
pub fn checkpoint_text(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// The signature line's base64 part for `text` (key id ‖ signature).
pub fn sign(key: &SigningKey, text: &str) -> String {
    let public = key.verifying_key();
    let name = origin(&public);
    let sig = key.sign(text.as_bytes());
    let mut b = key_id(&name, &public).to_vec();
    b.extend_from_slice(&sig.to_bytes());
    B64.encode(b)
}

/// A whole signed note: text, blank line, signature line.
pub fn signed_note(key: &SigningKey, text: &str) -> String {
    let name = origin(&key.verifying_key());
    format!("{text}\n{DASH} {name} {}\n", sign(key, text))
}

/// Whether `sig` (the base64 part of a signature line) is `verifier`'s over `text`.
pub fn verify_signature(verifier: &NoteVerifier, text: &str, sig: &str) -> bool {
    let Ok(raw) = B64.decode(sig) else {
        return false;
    };
    if raw.len() != 68 || raw[..4] != verifier.id {
        return false;
    }
    let Ok(sig) = Signature::from_slice(&raw[4..]) else {
        return false;
    };
    verifier.key.verify(text.as_bytes(), &sig).is_ok()
}

/// A verified checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Opens a signed note holding a checkpoint: splits text and signatures, checks that one
/// signature is `verifier`'s, and parses the checkpoint.
pub fn open_checkpoint(verifier: &NoteVerifier, note: &str) -> Result<Checkpoint, NoteError> {
    let (text, sigs) = note
        .split_once("\n\n")
        .ok_or_else(|| NoteError::Shape("no blank line before the signatures".into()))?;
    let text = format!("{text}\n");
    let prefix = format!("{DASH} {} ", verifier.name);
    let ok = sigs
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .any(|s| verify_signature(verifier, &text, s));
    if !ok {
        return Err(NoteError::Signature(verifier.name.clone()));
    }
    let mut lines = text.lines();
    let bad = |why: &str| NoteError::Checkpoint(why.to_owned());
    let origin = lines
        .next()
        .ok_or_else(|| bad("no origin line"))?
        .to_owned();
    if origin != verifier.name {
        return Err(bad("the origin is not this log's"));
    }
    let size = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| bad("no tree size"))?;
    let root: Hash = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| bad("no root hash"))?;
    Ok(Checkpoint { origin, size, root })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_not_another() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let other = SigningKey::from_bytes(&[10u8; 32]);
        let v = parse_verifier_key(&verifier_key(&key.verifying_key())).unwrap();
        let text = checkpoint_text(&v.name, 5, &[1u8; 32]);
        let note = signed_note(&key, &text);
        assert!(note.contains("\n\n\u{2014} osler.audit/"));
        let c = open_checkpoint(&v, &note).unwrap();
        assert_eq!((c.size, c.root), (5, [1u8; 32]));
        let forged = signed_note(&other, &text);
        assert!(open_checkpoint(&v, &forged).is_err());
        let altered = note.replacen("\n5\n", "\n6\n", 1);
        assert!(matches!(
            open_checkpoint(&v, &altered),
            Err(NoteError::Signature(_))
        ));
    }

    #[test]
    fn a_verifier_key_with_a_wrong_id_is_refused() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let text = verifier_key(&key.verifying_key());
        let mut parts: Vec<&str> = text.split('+').collect();
        parts[1] = "00000000";
        assert!(parse_verifier_key(&parts.join("+")).is_err());
    }
}
