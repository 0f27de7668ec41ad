//! People signing in: enrolment with a one-time code, login (password, then for
//! administrators and clinicians a TOTP code or a recovery code), and rotating refresh tokens
//! whose reuse revokes the whole login.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_audit::{Action, Outcome};
use serde_json::json;

use super::{entry, issue_then_answer, json_body, oauth_error, random, slow_down};
use crate::access::record_later;
use crate::tls::Peer;
use crate::{AppState, now_ms};

/// An access token lives a quarter of an hour; a refresh token a shift (8 h), and is spent
/// each time it is used; the password step of a login holds five minutes for the second.
const ACCESS_MS: i64 = 15 * 60_000;
const REFRESH_MS: i64 = 8 * 3_600_000;
const MFA_MS: i64 = 5 * 60_000;

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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    code: String,
    password: String,
}

/// `POST /auth/enrol {code, password}`: the one-time code from `osler hub user add` sets the
/// password and, for administrators and clinicians, the second factor (its secret and
/// `otpauth://` URI returned once) and ten single-use recovery codes.
pub(super) async fn enrol(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let b: EnrolBody = match json_body(&headers, body).await {
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
        let issued =
            osler_store::TokenRecord::issued(&h, kind, &account.name, &account.role, now, life);
        (
            h,
            osler_store::TokenRecord {
                family: Some(family.clone()),
                scopes: scopes.into(),
                patient: account.patient.clone(),
                ..issued
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
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_MS / 1000,
        "refresh_token": refresh, "scope": scopes});
    if let Some(p) = &account.patient {
        body["patient"] = json!(p);
    }
    issue_then_answer(state, tokens, audit, body).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
}

/// `POST /auth/login {name, password}`. An unknown name and a wrong password get the same
/// answer after the same work (a decoy hash is checked).
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let b: LoginBody = match json_body(&headers, body).await {
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
    let record =
        osler_store::TokenRecord::issued(&h, "mfa", &account.name, &account.role, now, MFA_MS);
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
    let body =
        json!({"second_factor_required": true, "mfa_token": mfa, "expires_in": MFA_MS / 1000});
    issue_then_answer(&state, vec![(h, record)], audit, body).await
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
pub(crate) async fn second_factor(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let b: SecondBody = match json_body(&headers, body).await {
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
    let Some((_, account)) = found.filter(|(t, _)| {
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
    issue_pair(&state, &account, None, peer, "login").await
}

pub(crate) async fn refresh(
    state: &AppState,
    peer: std::net::SocketAddr,
    token: Option<String>,
) -> Response {
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

/// A one-time sign-in link (`GET /ui/link?code=…`), minted on the hub's own machine with its
/// data directory (`osler demo` prints one for its demo clinician): spent once, it gives the
/// account a login as the second factor would. Only a `link` token is taken (a leaked access
/// or refresh token is not spent here).
pub(crate) async fn sign_in_link(
    state: &AppState,
    peer: std::net::SocketAddr,
    code: &str,
) -> Response {
    let refused = || {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "this sign-in link is unknown, used or expired",
        )
    };
    let hash = osler_auth::token::hash(code);
    if !matches!(state.store.token(&hash), Ok(Some(t)) if t.kind == "link") {
        return refused();
    }
    let spent = state.store.spend(hash, now_ms(), |_| Vec::new()).await;
    let Ok(osler_store::Spent::Fresh(t)) = spent else {
        return refused();
    };
    match state.store.account(&t.subject) {
        Ok(Some(a)) => issue_pair(state, &a, None, peer, "login-link").await,
        _ => refused(),
    }
}
