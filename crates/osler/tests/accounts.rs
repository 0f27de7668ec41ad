//! People and programs signing in, against a real hub over TLS: enrolment with a second
//! factor, login, rotating refresh tokens, throttled guessing, care-team compartments, and
//! SMART backend services with signed JWT assertions.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use common::*;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

fn public(url: &str, body: Value) -> Answer {
    send(
        "POST",
        url,
        &body.to_string(),
        &[("Authorization", ""), ("Content-Type", "application/json")],
    )
}

fn form(url: &str, body: &str) -> Answer {
    send(
        "POST",
        url,
        body,
        &[
            ("Authorization", ""),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
    )
}

fn as_bearer(method: &str, url: &str, token: &str) -> Answer {
    send(
        method,
        url,
        "",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

#[test]
fn enrolment_login_second_factor_and_refresh_rotation() {
    let dir = TempDir::new("accounts");
    let hub = Hub::start(&dir.0);
    let root = hub.root();
    // Weak passwords are refused with the reason, and the code is not spent by a refusal.
    let code = osler(&[
        "hub",
        "user",
        "add",
        "--data",
        dir.0.to_str().unwrap(),
        "--name",
        "dr-ines",
        "--role",
        "clinician",
        "--practitioner",
        "ines",
    ])
    .trim()
    .to_owned();
    for (pw, says) in [
        ("short", "at least 8"),
        ("Password123", "common"),
        ("dr-ines-secret-pass", "name"),
    ] {
        let a = public(
            &format!("{root}/auth/enrol"),
            json!({"code": code, "password": pw}),
        );
        assert_eq!(a.status, 400, "{pw}");
        assert!(
            a.json()["error_description"]
                .as_str()
                .unwrap()
                .contains(says),
            "{pw}: {}",
            a.text
        );
    }
    let password = "lantern orchard seventeen";
    let a = public(
        &format!("{root}/auth/enrol"),
        json!({"code": code, "password": password}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert!(
        v["second_factor"]["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    assert_eq!(v["recovery_codes"].as_array().unwrap().len(), 10);
    // A code works once.
    let again = public(
        &format!("{root}/auth/enrol"),
        json!({"code": code, "password": password}),
    );
    assert_eq!(again.status, 400);
    let p = Person {
        name: "dr-ines".into(),
        password: password.into(),
        secret: Some(base32_decode(
            v["second_factor"]["secret"].as_str().unwrap(),
        )),
        recovery: v["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect(),
    };
    let secret = p.secret.clone().unwrap();

    // The password alone gives no access token, only the second step.
    let step1 = public(
        &format!("{root}/auth/login"),
        json!({"name": p.name, "password": p.password}),
    )
    .json();
    assert_eq!(step1["second_factor_required"], true);
    assert!(step1.get("access_token").is_none());
    let mfa = step1["mfa_token"].as_str().unwrap().to_owned();
    assert_eq!(
        as_bearer("GET", &format!("{}/Patient", hub.base), &mfa).status,
        401,
        "an mfa token is no bearer token"
    );
    // A wrong code is refused; the right one opens.
    let wrong = public(
        &format!("{root}/auth/second-factor"),
        json!({"mfa_token": mfa, "code": "000000"}),
    );
    assert_eq!(wrong.status, 401);
    let code_now = totp(&secret, 0);
    let t = public(
        &format!("{root}/auth/second-factor"),
        json!({"mfa_token": mfa, "code": code_now}),
    )
    .json();
    let access = t["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(t["expires_in"], 900);
    assert_eq!(
        as_bearer("GET", &format!("{}/Practitioner", hub.base), &access).status,
        200
    );
    // The same code again, in a new login within its 30 seconds: refused (RFC 6238 §5.2).
    let mfa2 = public(
        &format!("{root}/auth/login"),
        json!({"name": p.name, "password": p.password}),
    )
    .json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let replay = public(
        &format!("{root}/auth/second-factor"),
        json!({"mfa_token": mfa2, "code": code_now}),
    );
    assert_eq!(replay.status, 401, "{}", replay.text);
    // A recovery code works, once.
    let rc = &p.recovery[0];
    let ok = public(
        &format!("{root}/auth/second-factor"),
        json!({"mfa_token": mfa2, "recovery_code": rc}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
    let mfa3 = public(
        &format!("{root}/auth/login"),
        json!({"name": p.name, "password": p.password}),
    )
    .json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let reused = public(
        &format!("{root}/auth/second-factor"),
        json!({"mfa_token": mfa3, "recovery_code": rc}),
    );
    assert_eq!(reused.status, 401);

    // Refresh rotation: a refresh token gives a new pair and is spent.
    let r1 = form(
        &format!("{root}/auth/token"),
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .json();
    let access2 = r1["access_token"].as_str().expect("rotated").to_owned();
    assert_ne!(r1["refresh_token"], refresh.as_str());
    assert_eq!(
        as_bearer("GET", &format!("{}/Practitioner", hub.base), &access2).status,
        200
    );
    // Its reuse (a stolen copy) revokes the whole family: the new access token too.
    let stolen = form(
        &format!("{root}/auth/token"),
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    );
    assert_eq!(stolen.status, 401);
    assert!(stolen.text.contains("revoked"), "{}", stolen.text);
    assert_eq!(
        as_bearer("GET", &format!("{}/Practitioner", hub.base), &access2).status,
        401
    );
    assert_eq!(
        as_bearer("GET", &format!("{}/Practitioner", hub.base), &access).status,
        401
    );
    let newer = r1["refresh_token"].as_str().unwrap();
    assert_eq!(
        form(
            &format!("{root}/auth/token"),
            &format!("grant_type=refresh_token&refresh_token={newer}")
        )
        .status,
        401
    );

    // Every step is in the audit log, read by an administrator.
    let admin_code = osler(&[
        "hub",
        "user",
        "add",
        "--data",
        dir.0.to_str().unwrap(),
        "--name",
        "root",
        "--role",
        "admin",
    ]);
    let e = public(
        &format!("{root}/auth/enrol"),
        json!({"code": admin_code.trim(), "password": "copper kettle meadow"}),
    )
    .json();
    let admin = Person {
        name: "root".into(),
        password: "copper kettle meadow".into(),
        secret: Some(base32_decode(
            e["second_factor"]["secret"].as_str().unwrap(),
        )),
        recovery: Vec::new(),
    };
    let at = login(&hub, &admin)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = as_bearer("GET", &format!("{}/AuditEvent?_count=200", hub.base), &at).json();
    let codes: Vec<String> = events["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["resource"]["subtype"][0]["code"].as_str().unwrap_or(""),
                e["resource"]["outcome"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        "enrol:0",
        "110122:0",
        "second-factor:4",
        "recovery-code:0",
        "token-refresh:0",
        "refresh-reuse:4",
    ] {
        assert!(codes.iter().any(|c| c == want), "{want} not in {codes:?}");
    }
}

#[test]
fn guessing_is_throttled_the_same_for_unknown_names_and_never_locks_the_owner_out() {
    let dir = TempDir::new("throttle");
    let hub = Hub::start(&dir.0);
    let root = hub.root();
    let p = enrol_person(&hub, &dir.0, "nurse-ola", "patient", Some("ola"));
    let wrong = |name: &str| {
        public(
            &format!("{root}/auth/login"),
            json!({"name": name, "password": "not the password at all"}),
        )
    };
    // An unknown name and a wrong password: the same answer.
    let (a, b) = (wrong("nobody-here"), wrong("nurse-ola"));
    assert_eq!((a.status, a.text.clone()), (b.status, b.text.clone()));
    assert_eq!(a.status, 401);
    // Three failures, then each next attempt from this address must wait, known name or not.
    wrong("nurse-ola");
    wrong("nurse-ola");
    let slowed = wrong("nurse-ola");
    assert_eq!(slowed.status, 429, "{}", slowed.text);
    assert!(slowed.header("retry-after").is_some());
    for _ in 0..3 {
        wrong("nobody-here");
    }
    assert_eq!(wrong("nobody-here").status, 429);
    // Even the right password waits its turn from this address...
    let right = public(
        &format!("{root}/auth/login"),
        json!({"name": p.name, "password": p.password}),
    );
    assert_eq!(right.status, 429);
    // ...and works once the wait is over: a delay, never a lockout.
    let opened = wait_for(Duration::from_secs(10), || {
        let a = public(
            &format!("{root}/auth/login"),
            json!({"name": p.name, "password": p.password}),
        );
        (a.status == 200).then(|| a.json())
    })
    .expect("the owner gets in after the wait");
    // A patient has no second factor: tokens at once, bound to their Patient.
    assert_eq!(opened["patient"], "ola");
    assert!(opened["access_token"].as_str().is_some());
}

#[test]
fn a_clinician_sees_the_patients_of_their_care_teams_and_no_others() {
    let dir = TempDir::new("care-team");
    let hub = Hub::start(&dir.0);
    let b = &hub.base;
    for (path, body) in [
        ("Patient/p1", json!({"resourceType": "Patient"})),
        ("Patient/p2", json!({"resourceType": "Patient"})),
        ("Practitioner/ines", json!({"resourceType": "Practitioner"})),
        (
            "CareTeam/ward-1",
            json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": "Practitioner/ines"}}]}),
        ),
    ] {
        let a = send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]);
        assert_eq!(a.status, 201, "{path}: {}", a.text);
    }
    for p in ["p1", "p2"] {
        let o = observation(p, "8867-4", 72.0, "/min", &minutes_ago(3));
        assert_eq!(
            post(&format!("{b}/Observation"), &o.to_string()).status,
            201
        );
    }
    let ines = enrol_person(&hub, &dir.0, "dr-ines", "clinician", Some("ines"));
    let t = login(&hub, &ines)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen =
        |q: &str| as_bearer("GET", &format!("{b}/Observation?{q}"), &t).json()["total"].clone();
    assert_eq!(seen("patient=p1"), 1);
    assert_eq!(seen("patient=p2"), 0);
    assert_eq!(as_bearer("GET", &format!("{b}/Patient/p2"), &t).status, 404);
    // A clinician may set a threshold for their patient, not write the registry.
    let plan = send(
        "PUT",
        &format!("{}/plans/p1/hr-high", hub.root()),
        &json!({"threshold": 125, "reason": "runner", "author": "Practitioner/ines"}).to_string(),
        &[("Authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(plan.status, 200, "{}", plan.text);
    let reg = send(
        "PUT",
        &format!("{b}/Patient/p1"),
        &json!({"resourceType": "Patient", "active": false}).to_string(),
        &[("Authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(reg.status, 403);
    // p2 joins the team: the clinician sees them at once, with the same token.
    let team = json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": "Patient/p2"},
        "participant": [{"member": {"reference": "Practitioner/ines"}}]});
    assert_eq!(
        send(
            "PUT",
            &format!("{b}/CareTeam/ward-2"),
            &team.to_string(),
            &[]
        )
        .status,
        201
    );
    assert_eq!(seen("patient=p2"), 1);
    // Ended (inactive), the team gives access no more.
    let ended = json!({"resourceType": "CareTeam", "status": "inactive",
        "subject": {"reference": "Patient/p2"},
        "participant": [{"member": {"reference": "Practitioner/ines"}}]});
    assert_eq!(
        send(
            "PUT",
            &format!("{b}/CareTeam/ward-2"),
            &ended.to_string(),
            &[]
        )
        .status,
        200
    );
    assert_eq!(seen("patient=p2"), 0);
}

fn es384_client() -> (EcdsaKeyPair, Value) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let pt = kp.public_key().as_ref();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", "alg": "ES384",
        "x": B64URL.encode(&pt[1..49]), "y": B64URL.encode(&pt[49..97])}]});
    (kp, jwks)
}

fn assertion(kp: &EcdsaKeyPair, aud: &str, jti: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let h = B64URL.encode(br#"{"alg":"ES384","typ":"JWT","kid":"k1"}"#);
    let p = B64URL.encode(
        json!({"iss": "lab-sync", "sub": "lab-sync", "aud": aud, "exp": now + exp_in, "jti": jti})
            .to_string(),
    );
    let sig = kp
        .sign(&SystemRandom::new(), format!("{h}.{p}").as_bytes())
        .unwrap();
    format!("{h}.{p}.{}", B64URL.encode(sig.as_ref()))
}

#[test]
fn backend_services_sign_in_with_a_key_and_replays_and_forgeries_are_refused() {
    let dir = TempDir::new("backend");
    let hub = Hub::start(&dir.0);
    let root = hub.root();
    let cfg = send(
        "GET",
        &format!("{root}/.well-known/smart-configuration"),
        "",
        &[("Authorization", "")],
    )
    .json();
    let token_url = cfg["token_endpoint"].as_str().unwrap().to_owned();
    assert!(
        cfg["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "client-confidential-asymmetric")
    );
    let (kp, jwks) = es384_client();
    let jwks_file = dir.0.join("lab-sync.jwks");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    osler(&[
        "hub",
        "client",
        "add",
        "--data",
        dir.0.to_str().unwrap(),
        "--id",
        "lab-sync",
        "--jwks",
        jwks_file.to_str().unwrap(),
        "--scope",
        "system/Observation.rs",
    ]);
    let ask = |jwt: &str, scope: &str| {
        form(
            &token_url,
            &format!(
                "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}&scope={}",
                scope.replace('/', "%2F")
            ),
        )
    };
    let jwt = assertion(&kp, &token_url, "once-1", 120);
    let ok = ask(&jwt, "system/Observation.rs");
    assert_eq!(ok.status, 200, "{}", ok.text);
    let t = ok.json();
    assert_eq!(t["expires_in"], 300);
    assert!(t.get("refresh_token").is_none());
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(
        as_bearer(
            "GET",
            &format!("{}/Observation?code=8867-4", hub.base),
            access
        )
        .status,
        200
    );
    assert_eq!(
        as_bearer("GET", &format!("{}/Patient", hub.base), access).status,
        403
    );
    // The same assertion again: its jti was seen.
    let replay = ask(&jwt, "system/Observation.rs");
    assert_eq!(replay.status, 401);
    assert!(replay.text.contains("jti"), "{}", replay.text);
    // Signed by another key: forged.
    let (other, _) = es384_client();
    let forged = ask(
        &assertion(&other, &token_url, "once-2", 120),
        "system/Observation.rs",
    );
    assert_eq!(forged.status, 401);
    assert!(forged.text.contains("signature"), "{}", forged.text);
    // For another audience, expired, too long-lived, or a scope not registered.
    assert_eq!(
        ask(
            &assertion(&kp, "https://elsewhere/token", "once-3", 120),
            "system/Observation.rs"
        )
        .status,
        401
    );
    assert_eq!(
        ask(
            &assertion(&kp, &token_url, "once-4", -5),
            "system/Observation.rs"
        )
        .status,
        401
    );
    assert_eq!(
        ask(
            &assertion(&kp, &token_url, "once-5", 900),
            "system/Observation.rs"
        )
        .status,
        401
    );
    let wider = ask(
        &assertion(&kp, &token_url, "once-6", 120),
        "system/Patient.rs",
    );
    assert_eq!(wider.status, 400);
    assert_eq!(wider.json()["error"], "invalid_scope");
}
