//! CORS for browser apps on other origins: only the origins given with `--cors-origin` (none by
//! default, so a page elsewhere cannot read patients' data through a clinician's browser).
//! Preflights are answered here; every response to an allowed origin says so, exposes the
//! headers FHIR clients read (ETag, Location, Last-Modified), and varies by Origin. The alert
//! stream is covered like every other route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

fn allowed(state: &AppState, origin: &str) -> bool {
    state
        .cors_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

fn decorate(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("ETag, Location, Last-Modified, Content-Location"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

pub(crate) async fn cors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| allowed(&state, o))) else {
        return next.run(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        decorate(h, &origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Accept, Authorization, Content-Type, If-Match, If-None-Match, If-None-Exist, Prefer",
            ),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    let mut r = next.run(req).await;
    decorate(r.headers_mut(), &origin);
    r
}
