//! The clinician's dashboard, served under `/ui/`: signing in (password, then the second
//! factor) into a session held in two HttpOnly cookies, and the pages (`views`) and their
//! forms (`forms`). The HTML itself is `osler_web`'s; this module gathers what each page
//! shows, narrowed to the viewer's compartment before any query runs, through the same
//! routes table and guard as the API (a page is a route with a policy like any other).
//!
//! The session is the login's own tokens: the access token in `osler_session` (sent
//! everywhere on the hub, so the page's event stream and answers use the API's routes), the
//! refresh token in `osler_refresh` (sent to `/ui/` only). When the access token has expired
//! a page renews it through `/ui/refresh` (the refresh token rotates as in the API) and
//! returns where it was. Changes made with the cookie must come from the hub's own pages
//! (`access::authenticate` checks the browser's `Sec-Fetch-Site` or `Origin`), and the cookies
//! are `SameSite=Strict`.

mod forms;
mod patient;
mod sparks;
mod views;

pub(crate) use sparks::SparkCache;

pub use forms::answer_form;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use osler_auth::{Interaction, OPERATIONS, Policy};
use osler_web::{Page, Viewer};
use serde_json::{Value, json};

use crate::AppState;
use crate::access::{REFRESH_COOKIE, Routes, SESSION_COOKIE, cookie};
use crate::tls::Peer;

pub(crate) fn routes() -> Routes {
    use Interaction::*;
    Routes::new()
        .get("/ui", Policy::Public, home)
        .get("/ui/", Policy::Public, home)
        .get("/ui/assets/osler.css", Policy::Public, css)
        .get("/ui/assets/osler.js", Policy::Public, js)
        .get("/ui/login", Policy::Public, login_page)
        .post("/ui/login", Policy::Public, login)
        .post("/ui/second-factor", Policy::Public, second_factor)
        .get("/ui/refresh", Policy::Public, refresh)
        .get("/ui/link", Policy::Public, link)
        .post("/ui/logout", Policy::Public, logout)
        .get("/ui/session", Policy::Resource("Patient", Search), session)
        .get(
            "/ui/worklist",
            Policy::Resource("Patient", Search),
            views::worklist,
        )
        .get("/ui/inbox", Policy::Resource("Flag", Search), views::inbox)
        .get(
            "/ui/patients/{id}",
            Policy::Resource("Patient", Read),
            patient::page,
        )
        .get(
            "/ui/devices",
            Policy::Resource("Device", Search),
            views::devices,
        )
        .get(
            "/ui/admin",
            Policy::Everyone(OPERATIONS, Read),
            views::admin,
        )
        .post(
            "/ui/alerts/{id}/{what}",
            Policy::Resource("Flag", Update),
            forms::answer,
        )
        .post(
            "/ui/patients/{id}/notes",
            Policy::Resource("Communication", Create),
            forms::note,
        )
        .post(
            "/ui/patients/{id}/plan/{rule}",
            Policy::Resource("CarePlan", Update),
            forms::threshold,
        )
}

/// Headers every page carries: nothing from elsewhere runs or frames it.
fn page_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A page as a whole document, or only its `<main>` when the page's script asks for it
/// (`x-osler-fragment: main`) to swap it in place.
pub(super) fn render(page: &Page, viewer: Option<&Viewer>, headers: &HeaderMap) -> Response {
    render_status(StatusCode::OK, page, viewer, headers)
}

fn render_status(
    status: StatusCode,
    page: &Page,
    viewer: Option<&Viewer>,
    headers: &HeaderMap,
) -> Response {
    let fragment = wants_fragment(headers);
    let body = if fragment {
        page.main.clone().into_string()
    } else {
        osler_web::document(page, viewer).into_string()
    };
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    if fragment {
        r.headers_mut()
            .insert("x-osler-fragment", HeaderValue::from_static("main"));
    }
    page_headers(&mut r);
    r
}

pub(super) fn wants_fragment(headers: &HeaderMap) -> bool {
    headers
        .get("x-osler-fragment")
        .is_some_and(|v| v.as_bytes() == b"main")
}

pub(super) fn viewer(c: &osler_auth::Caller) -> Viewer {
    Viewer {
        name: c.subject.clone(),
        role: c.role.as_str().to_owned(),
        admin: c.role == osler_auth::Role::Admin && c.compartment == osler_auth::Compartment::All,
    }
}

pub(super) use crate::body::form_fields;

pub(super) fn field<'f>(f: &'f [(String, String)], name: &str) -> Option<&'f str> {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Where to go after a form: a page of the dashboard, never another site.
pub(super) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/ui/worklist".to_owned(),
    }
}

pub(super) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A page asked without a valid session: renew it when the browser holds a refresh token,
/// otherwise sign in; either way come back to `path_and_query`.
pub(crate) fn sign_in_again(headers: &HeaderMap, path_and_query: &str) -> Response {
    let next = encode(path_and_query);
    if cookie(headers, REFRESH_COOKIE).is_some() && !path_and_query.starts_with("/ui/refresh") {
        see_other(&format!("/ui/refresh?next={next}"))
    } else {
        see_other(&format!("/ui/login?next={next}"))
    }
}

/// What the viewer's role or token does not allow, as a page.
pub(crate) fn forbidden_page(d: &osler_auth::Denied) -> Response {
    let page = Page {
        title: "Not allowed".into(),
        nav: osler_web::Nav::SignIn,
        live: false,
        main: maud::html! {
            h1 { "Not allowed" }
            p { (d.to_string()) "." }
            p { a href="/ui/worklist" { "Back to the worklist" } }
        },
    };
    render_status(StatusCode::FORBIDDEN, &page, None, &HeaderMap::new())
}

async fn home() -> Response {
    see_other("/ui/worklist")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", osler_web::CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", osler_web::JS)
}

#[derive(serde::Deserialize)]
struct Next {
    next: Option<String>,
}

async fn login_page(Query(q): Query<Next>, headers: HeaderMap) -> Response {
    let next = safe_next(q.next.as_deref());
    render(&osler_web::sign_in::password(&next, None), None, &headers)
}

/// Reads the JSON answer of one of the API's handlers run by a page (sign-in, the plan).
pub(super) async fn json_of(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn json_request(v: &Value) -> (HeaderMap, Body) {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (h, Body::from(v.to_string()))
}

/// The status of a sign-in form shown again with why it failed: a refused password or code is
/// a page like any (401 would need a `WWW-Authenticate` challenge, which a form login has
/// none of); too many tries (429) and a failing store (503) keep theirs.
fn form_status(api: StatusCode) -> StatusCode {
    if api == StatusCode::UNAUTHORIZED {
        StatusCode::OK
    } else {
        api
    }
}

/// The session the API's token answer starts, or the password form again with why not.
fn signed_in_or_again(
    state: &AppState,
    status: StatusCode,
    answer: &Value,
    next: &str,
    headers: &HeaderMap,
) -> Response {
    if status.is_success() {
        return start_session(state, answer, next);
    }
    render_status(
        form_status(status),
        &osler_web::sign_in::password(next, Some(&described(answer))),
        None,
        headers,
    )
}

fn described(v: &Value) -> String {
    v["error_description"]
        .as_str()
        .unwrap_or("the hub could not sign you in; try again")
        .to_owned()
}

/// A session from the API's token answer: both cookies set, then on to `next`.
fn start_session(state: &AppState, tokens: &Value, next: &str) -> Response {
    let secure = if state.scheme == "https" {
        "; Secure"
    } else {
        ""
    };
    let (Some(access), Some(refresh)) = (
        tokens["access_token"].as_str(),
        tokens["refresh_token"].as_str(),
    ) else {
        return see_other("/ui/login");
    };
    let mut r = see_other(next);
    let cookies = [
        format!(
            "{SESSION_COOKIE}={access}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            tokens["expires_in"].as_i64().unwrap_or(900)
        ),
        format!(
            "{REFRESH_COOKIE}={refresh}; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            8 * 3600
        ),
    ];
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

fn end_session(mut r: Response) -> Response {
    for c in [
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        format!("{REFRESH_COOKIE}=; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=0"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let f = form_fields(&body);
    let next = safe_next(field(&f, "next"));
    let request = json!({
        "name": field(&f, "name").unwrap_or(""),
        // A password is taken as typed: spaces are part of it.
        "password": f.iter().find(|(k, _)| k == "password").map_or("", |(_, v)| v.as_str()),
    });
    let (h, b) = json_request(&request);
    let (status, answer) =
        json_of(crate::auth_api::login(State(state.clone()), ConnectInfo(peer), h, b).await).await;
    if status.is_success() && answer["second_factor_required"] == json!(true) {
        let mfa = answer["mfa_token"].as_str().unwrap_or("");
        return render(
            &osler_web::sign_in::second_factor(mfa, &next, None),
            None,
            &headers,
        );
    }
    signed_in_or_again(&state, status, &answer, &next, &headers)
}

async fn second_factor(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let f = form_fields(&body);
    let next = safe_next(field(&f, "next"));
    let mfa = field(&f, "mfa_token").unwrap_or("");
    let mut request = json!({ "mfa_token": mfa });
    match (field(&f, "code"), field(&f, "recovery_code")) {
        (Some(c), _) => request["code"] = json!(c),
        (None, Some(r)) => request["recovery_code"] = json!(r),
        (None, None) => {
            return render_status(
                StatusCode::BAD_REQUEST,
                &osler_web::sign_in::second_factor(
                    mfa,
                    &next,
                    Some("Type the six digits from your authenticator app, or a recovery code."),
                ),
                None,
                &headers,
            );
        }
    }
    let (h, b) = json_request(&request);
    let (status, answer) = json_of(
        crate::auth_api::second_factor(State(state.clone()), ConnectInfo(peer), h, b).await,
    )
    .await;
    let why = described(&answer);
    // A session, or (an expired or completed login) the password again.
    if status.is_success() || why.contains("log in again") {
        return signed_in_or_again(&state, status, &answer, &next, &headers);
    }
    render_status(
        form_status(status),
        &osler_web::sign_in::second_factor(mfa, &next, Some(&why)),
        None,
        &headers,
    )
}

/// Renews the session with the refresh token (rotated, as `POST /auth/token` does).
async fn refresh(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Query(q): Query<Next>,
    headers: HeaderMap,
) -> Response {
    let next = safe_next(q.next.as_deref());
    let token = cookie(&headers, REFRESH_COOKIE).map(str::to_owned);
    let (status, answer) = json_of(crate::auth_api::refresh(&state, peer, token).await).await;
    if status.is_success() {
        return start_session(&state, &answer, &next);
    }
    end_session(see_other(&format!("/ui/login?next={}", encode(&next))))
}

#[derive(serde::Deserialize)]
struct LinkQuery {
    code: Option<String>,
}

/// A one-time sign-in link (see `auth_api::sign_in_link`).
async fn link(
    State(state): State<Arc<AppState>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Query(q): Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    let code = q.code.unwrap_or_default();
    let (status, answer) = json_of(crate::auth_api::sign_in_link(&state, peer, &code).await).await;
    signed_in_or_again(&state, status, &answer, "/ui/worklist", &headers)
}

/// Ends the session: both tokens revoked (as `POST /auth/revoke` does), both cookies cleared.
async fn logout(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    // Another site cannot sign the viewer out behind their back.
    if !crate::access::same_origin(&headers) {
        return see_other("/ui/worklist");
    }
    for name in [SESSION_COOKIE, REFRESH_COOKIE] {
        if let Some(t) = cookie(&headers, name) {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            let body = Body::from(format!("token={t}"));
            let _ = crate::auth_api::revoke(State(state.clone()), ConnectInfo(peer), h, body).await;
        }
    }
    end_session(see_other("/ui/login"))
}

/// 204 while the session holds (a page's script renews an expired one through here).
async fn session() -> Response {
    StatusCode::NO_CONTENT.into_response()
}
