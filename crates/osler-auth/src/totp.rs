//! Time-based one-time passwords (RFC 6238 on RFC 4226): HMAC-SHA-1, 30-second steps, six
//! digits, a 160-bit secret. A code is accepted for the current step or one step either side
//! (clock drift), and never for a step at or before the last one accepted (RFC 6238 §5.2: a
//! code cannot be replayed, not even within its own 30 seconds).

use ring::hmac;

pub const STEP_S: i64 = 30;
pub const DIGITS: u32 = 6;
/// Steps of drift accepted on either side.
pub const DRIFT: i64 = 1;

/// The code for `step` (RFC 4226 §5.3 dynamic truncation).
pub fn code_at(secret: &[u8], step: i64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &(step as u64).to_be_bytes());
    let h = mac.as_ref();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 10u32.pow(digits)
}

/// The step a Unix time (seconds) falls in.
pub fn step_of(unix_s: i64) -> i64 {
    unix_s.div_euclid(STEP_S)
}

/// The step `code` is valid for at `unix_s`, if it is one and that step is after
/// `last_step` (the last one this account used): the caller stores it as the new last step.
pub fn verify(secret: &[u8], code: &str, unix_s: i64, last_step: Option<i64>) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let now = step_of(unix_s);
    // Every candidate is computed, so that the time taken does not say which one matched.
    let mut found = None;
    for step in now - DRIFT..=now + DRIFT {
        if code_at(secret, step, DIGITS) == want
            && last_step.is_none_or(|l| step > l)
            && found.is_none()
        {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding: how authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = buf << 8 | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[(buf >> bits & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[(buf << (5 - bits) & 31) as usize] as char);
    }
    out
}

/// The bytes of an RFC 4648 base32 secret (case, spaces and padding ignored), or `None` for
/// a character outside the alphabet.
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u32 - 'A' as u32,
            c @ '2'..='7' => c as u32 - '2' as u32 + 26,
            _ => return None,
        };
        buf = (buf << 5 | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits & 255) as u8);
        }
    }
    Some(out)
}

/// The `otpauth://` URI an authenticator app scans (Key Uri Format).
pub fn uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_S}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits, the ASCII secret "12345678901234567890").
    #[test]
    fn the_rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code_at(secret, step_of(t), 8), want, "T={t}");
        }
    }

    #[test]
    fn one_step_of_drift_and_no_replay() {
        let secret = [42u8; 20];
        let t = 1_800_000_000;
        let code = |s: i64| format!("{:06}", code_at(&secret, s, 6));
        let now = step_of(t);
        assert_eq!(verify(&secret, &code(now), t, None), Some(now));
        assert_eq!(verify(&secret, &code(now - 1), t, None), Some(now - 1));
        assert_eq!(verify(&secret, &code(now + 1), t, None), Some(now + 1));
        assert_eq!(verify(&secret, &code(now - 2), t, None), None);
        // The same step twice: refused, even within its 30 seconds.
        assert_eq!(verify(&secret, &code(now), t, Some(now)), None);
        assert_eq!(verify(&secret, &code(now - 1), t, Some(now - 1)), None);
        assert_eq!(verify(&secret, "12345", t, None), None);
        assert_eq!(verify(&secret, "abcdef", t, None), None);
    }

    #[test]
    fn base32_and_the_uri_follow_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(from_base32("MZXW6YTBOI").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(
            from_base32("mzxw 6ytb oi==").as_deref(),
            Some(&b"foobar"[..])
        );
        assert_eq!(from_base32(&base32(&[7u8; 20])), Some(vec![7u8; 20]));
        assert_eq!(from_base32("MZ1"), None);
        let u = uri("Osler", "dr ann", &[0u8; 20]);
        assert!(
            u.starts_with("otpauth://totp/Osler:dr%20ann?secret=AAAAAAAA"),
            "{u}"
        );
    }
}
