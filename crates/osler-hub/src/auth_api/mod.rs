//! The authorization server's public face: SMART discovery and token revocation (RFC 7009).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_audit::{Action, Outcome, Record};
use osler_auth::Policy;
use serde_json::{Value, json};

use crate::access::Routes;
use crate::body::read_body;
use crate::fhir_api::base_url;
use crate::tls::Peer;
use crate::{AppState, now_ms};

mod backend;
mod people;

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
        .post("/auth/enrol", Policy::Public, people::enrol)
        .post("/auth/login", Policy::Public, people::login)
        .post("/auth/second-factor", Policy::Public, people::second_factor)
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
pub(crate) async fn revoke(
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

pub(super) fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

/// Stores the tokens an answer hands out, with their audit entries, and only then gives the
/// answer (never cached); if the store fails nothing was issued, and the client is told to retry.
pub(super) async fn issue_then_answer(
    state: &AppState,
    tokens: Vec<([u8; 32], osler_store::TokenRecord)>,
    audit: Vec<String>,
    body: Value,
) -> Response {
    if state.store.issue(tokens, audit).await.is_err() {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the store failed",
        );
    }
    ([("cache-control", "no-store")], axum::Json(body)).into_response()
}

pub(super) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: impl Into<String>,
) -> Response {
    (
        status,
        [("cache-control", "no-store")],
        axum::Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response()
}

pub(super) fn slow_down(wait_ms: i64) -> Response {
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
pub(super) fn entry(
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

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body: {e}"),
        ))
    })
}

pub(super) async fn body_bytes(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, Box<Response>> {
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

/// A JSON body (at most 16 KiB) as `T`, or the answer that refuses it.
pub(super) async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, Box<Response>> {
    parse_json(&body_bytes(headers, body).await?)
}

use crate::body::form_fields as form;

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
        Some("refresh_token") => people::refresh(&state, peer, get("refresh_token")).await,
        Some("client_credentials") => {
            backend::backend(
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

pub use people::{code_hash, code_text};
pub(crate) use people::{login, refresh, second_factor, sign_in_link};
