//! The authorization server's public face: SMART discovery and token revocation (RFC 7009).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_audit::{Action, Outcome, Record};
use osler_auth::Policy;
use serde_json::json;

use crate::access::Routes;
use crate::access::record_later;
use crate::body::read_body;
use crate::fhir_api::base_url;
use crate::tls::Peer;
use crate::{AppState, now_ms};

pub(crate) fn routes() -> Routes {
    Routes::new()
        .get(
            "/.well-known/smart-configuration",
            Policy::Public,
            smart_configuration,
        )
        .get(
            "/fhir/.well-known/smart-configuration",
            Policy::Public,
            smart_configuration,
        )
        // Whoever holds a token may end it: the token in the body is the credential.
        .post("/auth/revoke", Policy::Public, revoke)
        // The credentials are in the bodies: a code, a password, a second factor, a refresh
        // token or a signed assertion.
        .post("/auth/enrol", Policy::Public, enrol)
        .post("/auth/login", Policy::Public, login)
        .post("/auth/second-factor", Policy::Public, second_factor)
        .post("/auth/token", Policy::Public, token)
}

async fn smart_configuration(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let fhir = base_url(&state, &headers);
    let root = fhir.trim_end_matches("/fhir");
    axum::Json(json!({
        "issuer": root,
        "token_endpoint": format!("{root}/auth/token"),
        "revocation_endpoint": format!("{root}/auth/revoke"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
        "grant_types_supported": ["client_credentials", "refresh_token"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/Observation.rs", "patient/*.rs", "user/*.cruds"],
        "capabilities": ["permission-v2", "permission-patient", "permission-user", "client-confidential-asymmetric"],
        "code_challenge_methods_supported": [],
    }))
    .into_response()
}

/// RFC 7009: `token=…` form-encoded; the answer is 200 whether or not the token was known
/// (§2.2), so that revocation reveals nothing.
async fn revoke(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(bytes) = read_body(&headers, body, 8 * 1024).await else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let token = text.split('&').find_map(|kv| kv.strip_prefix("token="));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_request", "error_description": "token= is required"}),
            ),
        )
            .into_response();
    };
    let hash = osler_auth::token::hash(token);
    let store = state.store.clone();
    let known = tokio::task::spawn_blocking(move || store.token(&hash))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    if let Some(t) = known {
        let entry = osler_fhir::audit::entry_text(&Record {
            recorded_ms: now_ms(),
            event: "token-revoke".into(),
            action: Action::Delete,
            outcome: Outcome::Success,
            outcome_text: None,
            who: t.subject.clone(),
            role: Some(t.role.clone()),
            network: Some(peer.ip().to_string()),
            patient: t.patient.clone(),
            what: Some(format!("token {}", t.id)),
            query: None,
        });
        if state
            .store
            .revoke_token(hash, now_ms(), vec![entry])
            .await
            .is_err()
        {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": "temporarily_unavailable"})),
            )
                .into_response();
        }
    }
    StatusCode::OK.into_response()
}

// ---- People: enrolment, login with a second factor, rotating refresh tokens ----

/// An access token lives a quarter of an hour; a refresh token a shift (8 h), and is spent
/// each time it is used; the password step of a login holds five minutes for the second.
const ACCESS_MS: i64 = 15 * 60_000;
const REFRESH_MS: i64 = 8 * 3_600_000;
const MFA_MS: i64 = 5 * 60_000;
/// SMART backend services: tokens SHOULD last at most 300 s, with no refresh token.
const BACKEND_MS: i64 = 300_000;

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

/// A one-time code (enrolment, recovery) as people type it: 128 random bits in base32,
/// grouped by five.
pub fn code_text(bytes: &[u8; 16]) -> String {
    let s = osler_auth::totp::base32(bytes);
    s.as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// What a one-time code is stored and looked up as: SHA-256 of its letters (case, dashes
/// and spaces ignored).
pub fn code_hash(text: &str) -> [u8; 32] {
    let norm: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    osler_auth::token::hash(&norm)
}

fn needs_second_factor(role: &str) -> bool {
    matches!(role, "admin" | "clinician")
}

fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    (
        status,
        [("cache-control", "no-store")],
        axum::Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response()
}

fn slow_down(wait_ms: i64) -> Response {
    let secs = (wait_ms + 999) / 1000;
    let mut r = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        format!("too many failed attempts from here; try again in {secs} s"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn entry(
    event: &str,
    action: Action,
    outcome: Outcome,
    who: &str,
    role: Option<&str>,
    peer: std::net::SocketAddr,
    patient: Option<&str>,
    text: Option<String>,
) -> String {
    osler_fhir::audit::entry_text(&Record {
        recorded_ms: now_ms(),
        event: event.into(),
        action,
        outcome,
        outcome_text: text,
        who: who.into(),
        role: role.map(str::to_owned),
        network: Some(peer.ip().to_string()),
        patient: patient.map(str::to_owned),
        what: None,
        query: None,
    })
}

fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body: {e}"),
        ))
    })
}

async fn body_bytes(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Box<Response>> {
    read_body(headers, body, 16 * 1024)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| {
            Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body is unreadable or over 16 KiB",
            ))
        })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    code: String,
    password: String,
}

/// `POST /auth/enrol {code, password}`: the one-time code from `osler hub user add` sets the
/// password and, for administrators and clinicians, the second factor (its secret and
/// `otpauth://` URI returned once) and ten single-use recovery codes.
async fn enrol(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match body_bytes(&headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let b: EnrolBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let hash = code_hash(&b.code);
    let store = state.store.clone();
    let now = now_ms();
    let Ok(Ok(Some(account))) =
        tokio::task::spawn_blocking(move || store.enrolling(&hash, now)).await
    else {
        record_later(
            &state,
            entry(
                "enrol",
                Action::Update,
                Outcome::Refused,
                "anonymous",
                None,
                peer,
                None,
                Some("unknown, used or expired code".into()),
            ),
        );
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "this enrolment code is unknown, used or expired; ask an administrator for a new one",
        );
    };
    if let Err(e) = osler_auth::password::check(&b.password, &account.name) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
    }
    let (Some(salt), Some(secret)) = (random::<16>(), random::<20>()) else {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "no randomness",
        );
    };
    let totp = needs_second_factor(&account.role).then_some(secret.to_vec());
    let mut codes = Vec::new();
    for _ in 0..10 {
        match random::<16>() {
            Some(r) => codes.push(code_text(&r)),
            None => {
                return oauth_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "no randomness",
                );
            }
        }
    }
    let hashes: Vec<[u8; 32]> = codes.iter().map(|c| code_hash(c)).collect();
    let password = b.password;
    let Ok(Ok(phc)) =
        tokio::task::spawn_blocking(move || osler_auth::password::hash(&password, &salt)).await
    else {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "cannot hash the password",
        );
    };
    let (name, role) = (account.name.clone(), account.role.clone());
    let audit = move |e: &osler_store::Enrolled| match e {
        osler_store::Enrolled::Done(_) => vec![entry(
            "enrol",
            Action::Update,
            Outcome::Success,
            &name,
            Some(&role),
            peer,
            None,
            None,
        )],
        osler_store::Enrolled::BadCode => Vec::new(),
    };
    match state
        .store
        .enrol(hash, phc, totp.clone(), hashes, now_ms(), audit)
        .await
    {
        Ok(osler_store::Enrolled::Done(a)) => {
            let second = totp.map(|s| {
                json!({"type": "totp", "secret": osler_auth::totp::base32(&s),
                    "otpauth_uri": osler_auth::totp::uri("Osler", &a.name, &s),
                    "digits": 6, "period": 30, "algorithm": "SHA1"})
            });
            (
                [("cache-control", "no-store")],
                axum::Json(
                    json!({"account": a.name, "role": a.role, "second_factor": second,
                    "recovery_codes": if second.is_some() { json!(codes) } else { json!([]) }}),
                ),
            )
                .into_response()
        }
        Ok(osler_store::Enrolled::BadCode) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "this enrolment code was used meanwhile",
        ),
        Err(_) => oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the store failed; nothing changed",
        ),
    }
}

/// The scopes a person's tokens carry: everything their role allows (the role and their
/// compartment narrow it).
fn person_scopes(role: &str) -> &'static str {
    match role {
        "patient" => "patient/*.cruds",
        _ => "user/*.cruds",
    }
}

/// Issues an access token and a refresh token of `family` for an account, recorded.
async fn issue_pair(
    state: &AppState,
    account: &osler_store::Account,
    family: Option<String>,
    peer: std::net::SocketAddr,
    event: &str,
) -> Response {
    let (Some(a), Some(r), Some(f)) = (random::<32>(), random::<32>(), random::<12>()) else {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "no randomness",
        );
    };
    let family = family.unwrap_or_else(|| f.iter().map(|b| format!("{b:02x}")).collect());
    let access = osler_auth::token::secret(osler_auth::token::ACCESS_PREFIX, &a);
    let refresh = osler_auth::token::secret(osler_auth::token::REFRESH_PREFIX, &r);
    let now = now_ms();
    let scopes = person_scopes(&account.role);
    let record = |secret: &str, kind: &str, life: i64| {
        let h = osler_auth::token::hash(secret);
        (
            h,
            osler_store::TokenRecord {
                id: h[..6].iter().map(|b| format!("{b:02x}")).collect(),
                kind: kind.into(),
                family: Some(family.clone()),
                subject: account.name.clone(),
                role: account.role.clone(),
                scopes: scopes.into(),
                patient: account.patient.clone(),
                issued_ms: now,
                expires_ms: now + life,
                used_ms: None,
                revoked_ms: None,
            },
        )
    };
    let tokens = vec![
        record(&access, "access", ACCESS_MS),
        record(&refresh, "refresh", REFRESH_MS),
    ];
    let audit = vec![entry(
        event,
        Action::Create,
        Outcome::Success,
        &account.name,
        Some(&account.role),
        peer,
        account.patient.as_deref(),
        None,
    )];
    if state.store.issue(tokens, audit).await.is_err() {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the store failed",
        );
    }
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_MS / 1000,
        "refresh_token": refresh, "scope": scopes});
    if let Some(p) = &account.patient {
        body["patient"] = json!(p);
    }
    ([("cache-control", "no-store")], axum::Json(body)).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
}

/// `POST /auth/login {name, password}`. An unknown name and a wrong password get the same
/// answer after the same work (a decoy hash is checked).
async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match body_bytes(&headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let b: LoginBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let now = now_ms();
    if let Err(wait) = state.throttle.admit(&b.name, peer.ip(), now) {
        return slow_down(wait);
    }
    let store = state.store.clone();
    let name = b.name.clone();
    let password = b.password;
    let checked = tokio::task::spawn_blocking(move || {
        let account = store
            .account(&name)
            .ok()
            .flatten()
            .filter(|a| a.enrolled_ms.is_some());
        let phc = account
            .as_ref()
            .and_then(|a| a.password.clone())
            .unwrap_or_else(|| osler_auth::password::decoy().to_owned());
        let ok = osler_auth::password::verify(&password, &phc);
        account.filter(|_| ok)
    })
    .await
    .ok()
    .flatten();
    let Some(account) = checked else {
        state.throttle.failed(&b.name, peer.ip(), now);
        record_later(
            &state,
            entry(
                "login",
                Action::Execute,
                Outcome::Refused,
                &b.name,
                None,
                peer,
                None,
                Some("wrong name or password".into()),
            ),
        );
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "wrong name or password",
        );
    };
    state.throttle.succeeded(&account.name, peer.ip());
    if !needs_second_factor(&account.role) {
        return issue_pair(&state, &account, None, peer, "login").await;
    }
    let Some(m) = random::<32>() else {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "no randomness",
        );
    };
    let mfa = osler_auth::token::secret("osl_mfa_", &m);
    let h = osler_auth::token::hash(&mfa);
    let record = osler_store::TokenRecord {
        id: h[..6].iter().map(|b| format!("{b:02x}")).collect(),
        kind: "mfa".into(),
        family: None,
        subject: account.name.clone(),
        role: account.role.clone(),
        scopes: String::new(),
        patient: None,
        issued_ms: now,
        expires_ms: now + MFA_MS,
        used_ms: None,
        revoked_ms: None,
    };
    let audit = vec![entry(
        "login",
        Action::Execute,
        Outcome::Success,
        &account.name,
        Some(&account.role),
        peer,
        None,
        Some("password accepted; second factor to follow".into()),
    )];
    if state.store.issue(vec![(h, record)], audit).await.is_err() {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the store failed",
        );
    }
    (
        [("cache-control", "no-store")],
        axum::Json(
            json!({"second_factor_required": true, "mfa_token": mfa, "expires_in": MFA_MS / 1000}),
        ),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecondBody {
    mfa_token: String,
    code: Option<String>,
    recovery_code: Option<String>,
}

/// `POST /auth/second-factor {mfa_token, code}` (or `recovery_code`): the TOTP code of the
/// current step, or one step either side, never a step used before; or a recovery code, once.
async fn second_factor(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match body_bytes(&headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let b: SecondBody = match json_body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let now = now_ms();
    let mfa_hash = osler_auth::token::hash(&b.mfa_token);
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        let t = store.token(&mfa_hash).ok().flatten()?;
        let a = store.account(&t.subject).ok().flatten()?;
        Some((t, a))
    })
    .await
    .ok()
    .flatten();
    let refused =
        |why: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", why.to_owned());
    let Some((t, account)) = found.filter(|(t, _)| {
        t.kind == "mfa" && t.used_ms.is_none() && t.revoked_ms.is_none() && t.expires_ms > now
    }) else {
        return refused("the login has expired or was completed; log in again");
    };
    if let Err(wait) = state.throttle.admit(&account.name, peer.ip(), now) {
        return slow_down(wait);
    }
    let (name, role) = (account.name.clone(), account.role.clone());
    let ok = match (&b.code, &b.recovery_code, &account.totp_secret) {
        (Some(code), None, Some(secret)) => {
            match osler_auth::totp::verify(secret, code, now / 1000, account.totp_last_step) {
                // The step is taken in a transaction: the same code twice (even at once,
                // from two requests) passes once.
                Some(step) => {
                    let (n, r) = (name.clone(), role.clone());
                    state
                        .store
                        .use_totp_step(name.clone(), step, move |ok| {
                            vec![entry(
                                "second-factor",
                                Action::Execute,
                                if ok {
                                    Outcome::Success
                                } else {
                                    Outcome::Refused
                                },
                                &n,
                                Some(&r),
                                peer,
                                None,
                                (!ok).then(|| "a code already used".to_owned()),
                            )]
                        })
                        .await
                        .unwrap_or(false)
                }
                None => false,
            }
        }
        (None, Some(rc), _) => {
            let (n, r) = (name.clone(), role.clone());
            state
                .store
                .use_recovery(name.clone(), code_hash(rc), now, move |ok| {
                    vec![entry(
                        "recovery-code",
                        Action::Execute,
                        if ok {
                            Outcome::Success
                        } else {
                            Outcome::Refused
                        },
                        &n,
                        Some(&r),
                        peer,
                        None,
                        None,
                    )]
                })
                .await
                .unwrap_or(false)
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "give code (six digits) or recovery_code",
            );
        }
    };
    if !ok {
        state.throttle.failed(&name, peer.ip(), now);
        record_later(
            &state,
            entry(
                "second-factor",
                Action::Execute,
                Outcome::Refused,
                &name,
                Some(&role),
                peer,
                None,
                Some("wrong or reused code".into()),
            ),
        );
        return refused("wrong or already used code");
    }
    // The password step is spent now: it cannot open a second session.
    let spent = state
        .store
        .spend(osler_auth::token::hash(&b.mfa_token), now, |_| Vec::new())
        .await;
    if !matches!(spent, Ok(osler_store::Spent::Fresh(_))) {
        return refused("the login has expired or was completed; log in again");
    }
    let _ = t;
    issue_pair(&state, &account, None, peer, "login").await
}

fn form(bytes: &[u8]) -> Vec<(String, String)> {
    osler_fhir::parse_query(&String::from_utf8_lossy(bytes)).unwrap_or_default()
}

/// `POST /auth/token`: `grant_type=refresh_token` (rotation: the refresh token is spent and a
/// new pair issued; a spent one used again revokes every token of that login) or
/// `grant_type=client_credentials` with a signed JWT assertion (SMART backend services).
async fn token(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match body_bytes(&headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let f = form(&bytes);
    let get = |k: &str| f.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    match get("grant_type").as_deref() {
        Some("refresh_token") => refresh(&state, peer, get("refresh_token")).await,
        Some("client_credentials") => {
            backend(
                &state,
                &headers,
                peer,
                get("client_assertion_type"),
                get("client_assertion"),
                get("scope"),
            )
            .await
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type is refresh_token or client_credentials",
        ),
    }
}

async fn refresh(state: &AppState, peer: std::net::SocketAddr, token: Option<String>) -> Response {
    let Some(token) = token else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let now = now_ms();
    let audit = move |s: &osler_store::Spent| match s {
        osler_store::Spent::Reused(t) => vec![entry(
            "refresh-reuse",
            Action::Execute,
            Outcome::Refused,
            &t.subject,
            Some(&t.role),
            peer,
            None,
            Some(
                "a spent refresh token was used again: every token of this login is revoked".into(),
            ),
        )],
        _ => Vec::new(),
    };
    let spent = state
        .store
        .spend(osler_auth::token::hash(&token), now, audit)
        .await;
    match spent {
        Ok(osler_store::Spent::Fresh(t)) if t.kind == "refresh" => {
            let store = state.store.clone();
            let name = t.subject.clone();
            let account = tokio::task::spawn_blocking(move || store.account(&name))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            match account {
                Some(a) => issue_pair(state, &a, t.family.clone(), peer, "token-refresh").await,
                None => oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "the account is gone",
                ),
            }
        }
        Ok(osler_store::Spent::Reused(_)) => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "this refresh token was used before: every token of this login is revoked; log in again",
        ),
        Ok(_) => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "unknown, expired or revoked refresh token",
        ),
        Err(_) => oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the store failed",
        ),
    }
}

async fn backend(
    state: &AppState,
    headers: &HeaderMap,
    peer: std::net::SocketAddr,
    assertion_type: Option<String>,
    assertion: Option<String>,
    scope: Option<String>,
) -> Response {
    const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    if assertion_type.as_deref() != Some(JWT_BEARER) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("client_assertion_type must be {JWT_BEARER}"),
        );
    }
    let (Some(jwt), Some(scope)) = (assertion, scope) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_assertion and scope are required",
        );
    };
    let invalid = |why: String| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", why);
    let Some(iss) = osler_auth::jwt::issuer(&jwt) else {
        return invalid("the assertion names no client (iss)".into());
    };
    let store = state.store.clone();
    let id = iss.clone();
    let client = tokio::task::spawn_blocking(move || store.client(&id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(client) = client.filter(|c| c.revoked_ms.is_none()) else {
        record_later(
            state,
            entry(
                "token-issue",
                Action::Create,
                Outcome::Refused,
                &iss,
                Some("integration"),
                peer,
                None,
                Some("unknown client".into()),
            ),
        );
        return invalid("unknown client".into());
    };
    let root = base_url(state, headers);
    let token_url = format!("{}/auth/token", root.trim_end_matches("/fhir"));
    let now = now_ms();
    let a = match osler_auth::jwt::verify(&jwt, &client.jwks, &token_url, now / 1000) {
        Ok(a) => a,
        Err(e) => {
            record_later(
                state,
                entry(
                    "token-issue",
                    Action::Create,
                    Outcome::Refused,
                    &iss,
                    Some("integration"),
                    peer,
                    None,
                    Some(e.to_string()),
                ),
            );
            return invalid(e.to_string());
        }
    };
    let (who, jti) = (a.client_id.clone(), a.jti.clone());
    let first = state
        .store
        .first_jti(
            a.client_id.clone(),
            jti,
            a.exp_s * 1000,
            now,
            move |first| {
                if first {
                    Vec::new()
                } else {
                    vec![entry(
                        "token-issue",
                        Action::Create,
                        Outcome::Refused,
                        &who,
                        Some("integration"),
                        peer,
                        None,
                        Some("a replayed assertion (jti seen before)".into()),
                    )]
                }
            },
        )
        .await;
    match first {
        Ok(true) => {}
        Ok(false) => {
            return invalid(
                "this assertion was used before (jti); sign a new one for every request".into(),
            );
        }
        Err(_) => {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the store failed",
            );
        }
    }
    let (Ok(asked), Ok(allowed)) = (
        osler_auth::Scopes::parse(&scope),
        osler_auth::Scopes::parse(&client.scopes),
    ) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "malformed scope");
    };
    if asked.has_context(osler_auth::Context::Patient)
        || asked.has_context(osler_auth::Context::User)
        || !asked.grants_data()
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "a backend service asks for system/ scopes",
        );
    }
    if let Some(s) = asked.0.iter().find(|s| !allowed.0.contains(s)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            format!("{s} is not registered for this client"),
        );
    }
    let Some(r) = random::<32>() else {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "no randomness",
        );
    };
    let access = osler_auth::token::secret(osler_auth::token::ACCESS_PREFIX, &r);
    let h = osler_auth::token::hash(&access);
    let record = osler_store::TokenRecord {
        id: h[..6].iter().map(|b| format!("{b:02x}")).collect(),
        kind: "access".into(),
        family: None,
        subject: format!("client:{}", client.id),
        role: "integration".into(),
        scopes: asked.to_string(),
        patient: None,
        issued_ms: now,
        expires_ms: now + BACKEND_MS,
        used_ms: None,
        revoked_ms: None,
    };
    let audit = vec![entry(
        "token-issue",
        Action::Create,
        Outcome::Success,
        &format!("client:{}", client.id),
        Some("integration"),
        peer,
        None,
        None,
    )];
    if state.store.issue(vec![(h, record)], audit).await.is_err() {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the store failed",
        );
    }
    (
        [("cache-control", "no-store")],
        axum::Json(json!({"access_token": access, "token_type": "Bearer", "expires_in": BACKEND_MS / 1000, "scope": asked.to_string()})),
    )
        .into_response()
}
