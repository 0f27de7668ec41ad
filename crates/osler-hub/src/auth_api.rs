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
}

async fn smart_configuration(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let fhir = base_url(&state, &headers);
    let root = fhir.trim_end_matches("/fhir");
    axum::Json(json!({
        "issuer": root,
        "revocation_endpoint": format!("{root}/auth/revoke"),
        "token_endpoint_auth_methods_supported": [],
        "grant_types_supported": [],
        "scopes_supported": ["system/*.cruds", "patient/*.cruds", "system/Observation.rs", "patient/Observation.rs"],
        "capabilities": ["permission-v2", "permission-patient"],
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
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_request"}))).into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let token = text.split('&').find_map(|kv| kv.strip_prefix("token="));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": "token= is required"})),
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
        if state.store.revoke_token(hash, now_ms(), vec![entry]).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": "temporarily_unavailable"})),
            )
                .into_response();
        }
    }
    StatusCode::OK.into_response()
}
