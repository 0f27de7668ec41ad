//! Passwords: Argon2id with at least the OWASP Password Storage Cheat Sheet's parameters
//! (m = 19 MiB, t = 2, p = 1), in the PHC string format; and the ASVS 5.0 rules for choosing
//! one (at least 8 characters, at most 128 so that a long passphrase fits; no composition
//! rules; refused when it is a common password or built from the account's name).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory in KiB, iterations, lanes: OWASP's first Argon2id configuration.
const M_KIB: u32 = 19 * 1024;
const T: u32 = 2;
const P: u32 = 1;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

fn argon() -> Argon2<'static> {
    // The parameters are constants within Argon2's limits: building them cannot fail.
    let params = Params::new(M_KIB, T, P, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "a password needs at least {MIN_LEN} characters (15 or more is better: a passphrase of a few words)"
    )]
    TooShort,
    #[error("a password may have at most {MAX_LEN} characters")]
    TooLong,
    #[error(
        "this password is among the most common ones; choose another (a few unrelated words work well)"
    )]
    Common,
    #[error("the password must not contain the account's name")]
    HasName,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Passwords every guessing list starts with, and patterns any attacker tries first. Written
/// here (not copied from any list): digits runs, keyboard rows, the words people reach for.
const COMMON: &[&str] = &[
    "password",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "password1",
    "password123",
    "qwerty",
    "qwertyuiop",
    "qwertz",
    "azerty",
    "asdfghjkl",
    "zxcvbnm",
    "letmein",
    "welcome",
    "welcome1",
    "iloveyou",
    "admin",
    "administrator",
    "changeme",
    "default",
    "secret",
    "monkey",
    "dragon",
    "football",
    "baseball",
    "sunshine",
    "princess",
    "trustno1",
    "master",
    "superman",
    "batman",
    "starwars",
    "whatever",
    "shadow",
    "michael",
    "jennifer",
    "hospital",
    "doctor",
    "nurse",
    "clinic",
    "patient",
    "health",
    "medical",
    "osler",
    "summer",
    "winter",
    "spring",
    "autumn",
    "abc123",
    "abcdef",
    "abcdefgh",
    "1q2w3e4r",
    "1qaz2wsx",
    "zaq12wsx",
    "q1w2e3r4",
];

fn is_common(p: &str) -> bool {
    let lower = p.to_lowercase();
    // Trailing digits and punctuation do not make a common word uncommon.
    let stem = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    if COMMON.contains(&lower.as_str()) || (stem.len() >= 4 && COMMON.contains(&stem)) {
        return true;
    }
    let chars: Vec<char> = lower.chars().collect();
    // One character repeated, or a run such as 12345678 / abcdefgh / 87654321.
    let same = chars.windows(2).all(|w| w[0] == w[1]);
    let up = chars.windows(2).all(|w| w[1] as u32 == w[0] as u32 + 1);
    let down = chars.windows(2).all(|w| w[0] as u32 == w[1] as u32 + 1);
    // A short block repeated (abcabcabc, 12121212).
    let repeated = (1..=chars.len() / 2)
        .any(|k| chars.len().is_multiple_of(k) && chars.chunks(k).all(|c| c == &chars[..k]));
    same || up || down || repeated
}

/// Checks a new password against the rules.
pub fn check(password: &str, account: &str) -> Result<(), PasswordError> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if n > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    if is_common(password) {
        return Err(PasswordError::Common);
    }
    if account.chars().count() >= 3 && password.to_lowercase().contains(&account.to_lowercase()) {
        return Err(PasswordError::HasName);
    }
    Ok(())
}

/// The PHC string of a new password's Argon2id hash, with a salt from `salt` (16 random
/// bytes, given by the caller: this crate does no IO).
pub fn hash(password: &str, salt: &[u8; 16]) -> Result<String, PasswordError> {
    let salt = SaltString::encode_b64(salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    argon()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches a stored PHC string (in constant time for the comparison; the
/// hash costs the same for any password).
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A stored hash to verify against when the account does not exist, so that an unknown name
/// costs the same time as a wrong password.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("no account has this password", &[7u8; 16]).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_the_owasp_parameters_and_verify() {
        let h = hash("correct horse battery staple", &[1u8; 16]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse battery staple", &h));
        assert!(!verify("correct horse battery stapl", &h));
        assert!(!verify("x", "not a phc string"));
        assert!(!verify("no account has this password!", decoy()));
    }

    #[test]
    fn weak_passwords_are_refused_with_why() {
        assert_eq!(check("short", "ann"), Err(PasswordError::TooShort));
        assert_eq!(check(&"x".repeat(129), "ann"), Err(PasswordError::TooLong));
        for p in [
            "password",
            "Password123!",
            "12345678",
            "87654321",
            "aaaaaaaa",
            "abcabcabc",
            "qwertyuiop",
            "Hospital2026",
        ] {
            assert_eq!(check(p, "ann"), Err(PasswordError::Common), "{p}");
        }
        assert_eq!(
            check("dr-annika-2026!x", "annika"),
            Err(PasswordError::HasName)
        );
        assert_eq!(check("plum tractor violin", "ann"), Ok(()));
    }
}
