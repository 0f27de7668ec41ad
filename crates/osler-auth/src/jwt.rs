//! SMART Backend Services client assertions (HL7 SMART App Launch 2.2, "Backend Services";
//! RFC 7523): a JWT signed ES384 or RS384 by the client's registered key, with `iss` = `sub`
//! = the client id, `aud` = the token endpoint's URL, `exp` at most five minutes ahead and a
//! `jti` the server has not seen (the replay check is the caller's, against its store).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature;
use serde_json::Value;

/// The longest an assertion may be valid for (SMART: `exp` no more than five minutes ahead).
pub const MAX_LIFETIME_S: i64 = 300;

/// Why an assertion is refused (the token endpoint answers `invalid_client`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT (header.payload.signature, base64url)")]
    Shape,
    #[error("alg {0:?} is not accepted; sign with ES384 or RS384")]
    Alg(String),
    #[error("no registered key of this client verifies the signature")]
    Signature,
    #[error("claim {0}: {1}")]
    Claim(&'static str, String),
}

/// The claims that matter, once the signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub client_id: String,
    pub jti: String,
    pub exp_s: i64,
}

fn part(s: &str) -> Result<Vec<u8>, JwtError> {
    B64URL.decode(s).map_err(|_| JwtError::Shape)
}

/// The `iss` an assertion claims, unverified: to find the client's keys.
pub fn issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let v: Value = serde_json::from_slice(&part(payload).ok()?).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// Verifies `jwt` against the client's JWKS (`{"keys": [...]}`, EC P-384 or RSA public keys)
/// and the claims against `token_url` and the time `now_s`.
pub fn verify(jwt: &str, jwks: &str, token_url: &str, now_s: i64) -> Result<Assertion, JwtError> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let header: Value = serde_json::from_slice(&part(h)?).map_err(|_| JwtError::Shape)?;
    let alg = header["alg"].as_str().unwrap_or("").to_owned();
    if alg != "ES384" && alg != "RS384" {
        return Err(JwtError::Alg(alg));
    }
    let kid = header["kid"].as_str();
    let sig = part(s)?;
    let signed = format!("{h}.{p}");
    let keys: Value = serde_json::from_str(jwks).map_err(|_| JwtError::Signature)?;
    let verified = keys["keys"].as_array().into_iter().flatten().any(|k| {
        if kid.is_some() && k["kid"].as_str() != kid {
            return false;
        }
        verify_with(k, &alg, signed.as_bytes(), &sig)
    });
    if !verified {
        return Err(JwtError::Signature);
    }
    let claims: Value = serde_json::from_slice(&part(p)?).map_err(|_| JwtError::Shape)?;
    let text = |c: &'static str| -> Result<String, JwtError> {
        claims[c]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| JwtError::Claim(c, "missing".into()))
    };
    let iss = text("iss")?;
    if text("sub")? != iss {
        return Err(JwtError::Claim(
            "sub",
            "must equal iss (the client id)".into(),
        ));
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == token_url,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(token_url)),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtError::Claim(
            "aud",
            format!("must be this token endpoint, {token_url}"),
        ));
    }
    let exp = claims["exp"]
        .as_i64()
        .ok_or_else(|| JwtError::Claim("exp", "missing".into()))?;
    if exp <= now_s {
        return Err(JwtError::Claim("exp", "the assertion has expired".into()));
    }
    if exp > now_s + MAX_LIFETIME_S {
        return Err(JwtError::Claim(
            "exp",
            format!("at most {MAX_LIFETIME_S} s ahead"),
        ));
    }
    let jti = text("jti")?;
    if jti.is_empty() || jti.len() > 256 {
        return Err(JwtError::Claim("jti", "1 to 256 characters".into()));
    }
    Ok(Assertion {
        client_id: iss,
        jti,
        exp_s: exp,
    })
}

fn verify_with(key: &Value, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    let b = |k: &str| key[k].as_str().and_then(|v| B64URL.decode(v).ok());
    match (alg, key["kty"].as_str()) {
        ("ES384", Some("EC")) if key["crv"] == "P-384" => {
            let (Some(x), Some(y)) = (b("x"), b("y")) else {
                return false;
            };
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                .verify(msg, sig)
                .is_ok()
        }
        ("RS384", Some("RSA")) => {
            let (Some(n), Some(e)) = (b("n"), b("e")) else {
                return false;
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA384, msg, sig)
                .is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn key() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let pt = kp.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1",
            "x": B64URL.encode(&pt[1..49]), "y": B64URL.encode(&pt[49..97])}]});
        (kp, jwks.to_string())
    }

    fn sign(kp: &EcdsaKeyPair, claims: Value) -> String {
        let h = B64URL.encode(br#"{"alg":"ES384","typ":"JWT","kid":"k1"}"#);
        let p = B64URL.encode(claims.to_string());
        let sig = kp
            .sign(&SystemRandom::new(), format!("{h}.{p}").as_bytes())
            .unwrap();
        format!("{h}.{p}.{}", B64URL.encode(sig.as_ref()))
    }

    const URL: &str = "https://hub/auth/token";

    fn claims(exp: i64) -> Value {
        serde_json::json!({"iss": "c1", "sub": "c1", "aud": URL, "exp": exp, "jti": "j1"})
    }

    #[test]
    fn a_signed_assertion_verifies_and_a_forged_one_does_not() {
        let (kp, jwks) = key();
        let (other, _) = key();
        let now = 1_800_000_000;
        let jwt = sign(&kp, claims(now + 120));
        assert_eq!(verify(&jwt, &jwks, URL, now).unwrap().client_id, "c1");
        assert_eq!(issuer(&jwt).as_deref(), Some("c1"));
        assert_eq!(
            verify(&sign(&other, claims(now + 120)), &jwks, URL, now),
            Err(JwtError::Signature)
        );
        // A payload changed after signing.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        parts[1] = B64URL.encode(
            serde_json::json!({"iss": "c2", "sub": "c2", "aud": URL, "exp": now + 60, "jti": "x"})
                .to_string(),
        );
        assert_eq!(
            verify(&parts.join("."), &jwks, URL, now),
            Err(JwtError::Signature)
        );
        // alg none and HS256 are refused before anything else.
        let none = format!("{}.{}.", B64URL.encode(br#"{"alg":"none"}"#), parts[1]);
        assert!(matches!(
            verify(&none, &jwks, URL, now),
            Err(JwtError::Alg(_))
        ));
    }

    #[test]
    fn claims_are_checked() {
        let (kp, jwks) = key();
        let now = 1_800_000_000;
        assert!(matches!(
            verify(&sign(&kp, claims(now - 1)), &jwks, URL, now),
            Err(JwtError::Claim("exp", _))
        ));
        assert!(matches!(
            verify(&sign(&kp, claims(now + 301)), &jwks, URL, now),
            Err(JwtError::Claim("exp", _))
        ));
        let mut c = claims(now + 60);
        c["aud"] = "https://elsewhere/token".into();
        assert!(matches!(
            verify(&sign(&kp, c), &jwks, URL, now),
            Err(JwtError::Claim("aud", _))
        ));
        let mut c = claims(now + 60);
        c["sub"] = "someone".into();
        assert!(matches!(
            verify(&sign(&kp, c), &jwks, URL, now),
            Err(JwtError::Claim("sub", _))
        ));
    }

    /// A 2048-bit RSA key made for this test only (`openssl genpkey -algorithm RSA`, as a PKCS#1
    /// RSAPrivateKey in DER): ring verifies RSA but cannot generate keys.
    const RSA_TEST_KEY: &str = "MIIEpAIBAAKCAQEAso1SjHcQxWDH36IYNVOv6PBElBPEw76gZ+MfmrGIQX28uOHsngTIX7O0rGf1SSR213BeXQZtPH1o2aDjbvplXQrZEcknpoDxv2rhkyhlbi1sJT5AlMazVgLd34Me5jFHlkdMZBxuR78L6hK5gbMcAv8AUaOdfEfvkYFiHigoGMOgFp//Egp/t9ExyOFE8cY0R7QRzRTe8oSrgMmRNttIlBmTC58g+WYRxQIH8KlOPibAawnlBNiiVgZyuLyK6vXBWhTooL1BuIU8OaqkGw2p5YSoZcctlDpR4TqdAaYn1ijpt2Ihw7kLkBALgqLlHtQQKYb1IrhLQoXHeueI8UtynQIDAQABAoIBABzbteAut6Q0dzmQOPoYKOdXkLiff/7kht0jmrkQQTssjQhouNX1ZJlV3I689/+2srUxW98MfzKhUQVTo/liORMnrLEw4jAJc96B8iwsVvB5dkWIC+dqkhOwakHfhGqkw7Lomn0tEdnraTaPiNy19oIOyvNm+WOGkOmN5YOFmVgfCMCeHBSUHUM9UKxFDbDNZ2g1jmdDRbmjNH9QmRivvUBbBas+kKZqBgQWoj6hpQ1hUJhg8rvghJ5yPHdjCAQhEC2Qm5jjBPFyxoqtfaY/dwqgM2uKE78TETrgjpOO40g8RgNqoq9gt3f9Puk1QQ2irb1jo/KnvGVTZnN5aW2sbBUCgYEA6YUo5KY6wwYnvGrnu2AYHQg5z+opCUm+wulC/h9x3qQjHGcmoStQafvffy41RvXqWc1lPNWjfEmDhzi4JzdXml693AKbgVI4FQE2dq8Guwy24m8G2/kRc6T73Ba99KRSxDF8YR+3VmKK+iBXEj5D5+pQ55LFn4ZSvokMfq4cBB8CgYEAw72JIdDvfXwpy39NM4yP5j5mIFpisfkFoR8RZWgAVs0+AmsKdoRMWKGi1AmuJSErv9hPnRZXHAD0T+3RgVQHnahiEPCgwK+3OolHwYpbDmidvdE85mxsIziucOa29ObP9iTxNsR8xNy3LfTI+kY/A8ZurfPyylrk52C6QQKJ0cMCgYBGKZ82zAc9z5yizRAhSWcVWgJcyQNZahHp6EIbroD9Hx35i7icljIMFgR55v1U+9BU+RSg6aO8VS4ys8UI62Tj2fF7qEDm4zg8f2fI0x/XlaNhd3B9KWGn+HtADok2dyTzE9dGK0xfpS4SpyLiNVkb1lhGq9+65ZX4756UdWWviwKBgQCnn5le7ykYYgr8rNC1E2trtgYJML4SQPn0J8HjAHRB4VN4CKiWI+epgwoI4R1TyJtJl/ldwfLpFVwjUrq2MPqwpbENZrOTLycPJt7fPBeMOETVd+jaPwFADFs+biVBhqOS28IBr7RVddocreKqiRuPpQ/FQgKqDbq29luqLn1NtwKBgQDhVcmwlwvL0iHey3SRE9p6sQ/bP5liucj7H0Mij8unwQmAgizAXmiNn8kOp3sdyffI2afEAxuj6gRD1NNrOxxkh/IYG5UDGg3idYDiMQuQIZ0w0x0uTjZj2PtK4aEON4EGKqmzne2dHsRcTQ32oyGoy1r+8sa3jk26tgUxnstisA==";

    #[test]
    fn an_rs384_assertion_verifies_and_a_tampered_one_does_not() {
        use base64::engine::general_purpose::STANDARD;
        let der = STANDARD.decode(RSA_TEST_KEY).unwrap();
        let kp = ring::signature::RsaKeyPair::from_der(&der).unwrap();
        let public = ring::signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "n": B64URL.encode(&public.n), "e": B64URL.encode(&public.e)}]})
            .to_string();
        let now = 1_800_000_000;
        let h = B64URL.encode(br#"{"alg":"RS384","typ":"JWT"}"#);
        let p = B64URL.encode(claims(now + 60).to_string());
        let mut sig = vec![0u8; kp.public().modulus_len()];
        kp.sign(
            &ring::signature::RSA_PKCS1_SHA384,
            &SystemRandom::new(),
            format!("{h}.{p}").as_bytes(),
            &mut sig,
        )
        .unwrap();
        let jwt = format!("{h}.{p}.{}", B64URL.encode(&sig));
        assert_eq!(verify(&jwt, &jwks, URL, now).unwrap().client_id, "c1");
        sig[10] ^= 1;
        let forged = format!("{h}.{p}.{}", B64URL.encode(&sig));
        assert_eq!(verify(&forged, &jwks, URL, now), Err(JwtError::Signature));
        // An RS384 header against an EC key set (or the reverse) verifies nothing.
        let (_, ec_jwks) = key();
        assert_eq!(verify(&jwt, &ec_jwks, URL, now), Err(JwtError::Signature));
    }
}
