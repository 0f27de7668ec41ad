//! Programs signing in as SMART backend services: `client_credentials` with a JWT assertion
//! signed ES384 or RS384 by a key registered with `osler hub client add`, each `jti` once.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use osler_audit::{Action, Outcome};
use serde_json::json;

use super::{entry, issue_then_answer, oauth_error, random};
use crate::access::record_later;
use crate::fhir_api::base_url;
use crate::{AppState, now_ms};

/// SMART backend services: tokens SHOULD last at most 300 s, with no refresh token.
const BACKEND_MS: i64 = 300_000;

pub(super) async fn backend(
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
    // A refused assertion is answered invalid_client and recorded with the reason.
    let refused = |why: String| {
        record_later(state, refusal(&iss, peer, why.clone()));
        invalid(why)
    };
    let Some(client) = client.filter(|c| c.revoked_ms.is_none()) else {
        return refused("unknown client".into());
    };
    let root = base_url(state, headers);
    let token_url = format!("{}/auth/token", root.trim_end_matches("/fhir"));
    let now = now_ms();
    let a = match osler_auth::jwt::verify(&jwt, &client.jwks, &token_url, now / 1000) {
        Ok(a) => a,
        Err(e) => return refused(e.to_string()),
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
                    vec![refusal(
                        &who,
                        peer,
                        "a replayed assertion (jti seen before)".into(),
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
    let subject = format!("client:{}", client.id);
    let record = osler_store::TokenRecord {
        scopes: asked.to_string(),
        ..osler_store::TokenRecord::issued(&h, "access", &subject, "integration", now, BACKEND_MS)
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
    let body = json!({"access_token": access, "token_type": "Bearer", "expires_in": BACKEND_MS / 1000, "scope": asked.to_string()});
    issue_then_answer(state, vec![(h, record)], audit, body).await
}

/// The audit entry of a client's refused token request.
fn refusal(client: &str, peer: std::net::SocketAddr, why: String) -> String {
    entry(
        "token-issue",
        Action::Create,
        Outcome::Refused,
        client,
        Some("integration"),
        peer,
        None,
        Some(why),
    )
}
