//! Opaque bearer tokens: 256 random bits, base64url, with a prefix that says what they are
//! (so a secret scanner can recognise a leaked one). The hub keeps only their SHA-256: a copy
//! of the database gives nobody a working token.

use base64::Engine;
use sha2::{Digest, Sha256};

/// The prefix of every access token.
pub const ACCESS_PREFIX: &str = "osl_at_";
/// The prefix of every refresh token.
pub const REFRESH_PREFIX: &str = "osl_rt_";

/// A new token's secret text from 32 random bytes (the caller supplies randomness: this
/// crate does no IO).
pub fn secret(prefix: &str, random: &[u8; 32]) -> String {
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// What the hub stores and looks a token up by.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A lifetime such as `90s`, `15m`, `12h`, `30d`, in milliseconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).filter(|&v| v > 0)
}
