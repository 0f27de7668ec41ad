//! Who may use which route, declared where the route is defined, and the audit entry every
//! request to patient data leaves.
//!
//! Routes are added only through [`Routes`], which takes a [`Policy`] with every route and
//! wraps the handler in [`guard`]: the bearer token is looked up (by its hash), the policy
//! decided (scope ∩ role), the [`Caller`] handed to the handler (which narrows its query to
//! the caller's compartment before it runs), and the outcome audited. A write handler puts its
//! audit entry in the commit of the change ([`AuditCtx::entry`]) and marks its response
//! [`Audited`]; anything else (a read, a refusal) is audited here after the response is made.
//! The table of every route and its policy is kept for the tests that enumerate it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use osler_audit::{Action, Outcome, Record};
use osler_auth::{Caller, Compartment, Interaction, Policy, Role, Scopes};
use osler_fhir::{ErrorKind, FhirError};

use crate::reply::ApiError;
use crate::tls::Peer;
use crate::{AppState, now_ms};

/// The caller, for handlers (put there by the guard).
pub(crate) type Cx = axum::Extension<Caller>;
/// The request's audit entry, for handlers that write.
pub(crate) type Ax = axum::Extension<AuditCtx>;

/// One route and what it needs.
#[derive(Clone, Debug)]
pub(crate) struct RouteDecl {
    pub method: Method,
    pub path: String,
    pub policy: Policy,
}

/// The hub's routes, each with its policy.
pub(crate) struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<RouteDecl>,
}

impl Routes {
    pub(crate) fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    /// Adds `handler` for `method` on `path`, guarded by `policy`.
    pub(crate) fn add<H, T>(
        mut self,
        method: Method,
        path: &str,
        policy: Policy,
        handler: H,
    ) -> Routes
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        // Every method a route is declared with is one of the five below.
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        let guarded = on(filter, handler).route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| guard(policy, req, next),
        ));
        self.router = self.router.route(path, guarded);
        self.table.push(RouteDecl {
            method,
            path: path.to_owned(),
            policy,
        });
        self
    }

    pub(crate) fn get<H, T>(self, path: &str, policy: Policy, h: H) -> Routes
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        self.add(Method::GET, path, policy, h)
    }

    pub(crate) fn post<H, T>(self, path: &str, policy: Policy, h: H) -> Routes
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        self.add(Method::POST, path, policy, h)
    }

    pub(crate) fn put<H, T>(self, path: &str, policy: Policy, h: H) -> Routes
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        self.add(Method::PUT, path, policy, h)
    }

    pub(crate) fn delete<H, T>(self, path: &str, policy: Policy, h: H) -> Routes
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        self.add(Method::DELETE, path, policy, h)
    }

    pub(crate) fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    pub(crate) fn finish(self) -> (Router<Arc<AppState>>, Vec<RouteDecl>) {
        (self.router, self.table)
    }
}

/// A response whose audit entry was committed with the change it records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Audited;

/// Marks a response as audited in its commit.
pub(crate) fn audited(mut r: Response) -> Response {
    r.extensions_mut().insert(Audited);
    r
}

/// What a request's audit entry says, known before the handler runs; handlers that write
/// complete it with what they learn (the patient) and commit it with the change.
#[derive(Clone, Debug)]
pub(crate) struct AuditCtx {
    record: Record,
}

impl AuditCtx {
    /// The entry for this request, succeeded.
    pub(crate) fn entry(&self) -> String {
        osler_fhir::audit::entry_text(&self.record)
    }

    /// The entry, succeeded, about `patient` (when the request did not name them).
    pub(crate) fn entry_about(&self, patient: Option<&str>) -> String {
        let mut r = self.record.clone();
        if r.patient.is_none() {
            r.patient = patient.map(str::to_owned);
        }
        osler_fhir::audit::entry_text(&r)
    }

    fn finished(&self, status: u16, why: Option<String>) -> String {
        let mut r = self.record.clone();
        r.outcome = Outcome::of_status(status);
        r.outcome_text = why.or_else(|| (status >= 400).then(|| format!("HTTP {status}")));
        osler_fhir::audit::entry_text(&r)
    }
}

fn event(policy: Policy, method: &Method, path: &str) -> (String, Action) {
    let i = match policy {
        Policy::Resource(_, i) | Policy::Everyone(_, i) => i,
        Policy::PerEntry => return ("transaction".into(), Action::Execute),
        Policy::SignedBatch => return ("batch".into(), Action::Create),
        Policy::Public => return ("read".into(), Action::Read),
    };
    match i {
        Interaction::Create => ("create".into(), Action::Create),
        Interaction::Update => ("update".into(), Action::Update),
        Interaction::Delete => ("delete".into(), Action::Delete),
        Interaction::Search => ("search-type".into(), Action::Execute),
        Interaction::Read if path.contains("/_history/") => ("vread".into(), Action::Read),
        Interaction::Read if path.ends_with("/_history") || path.ends_with("/history") => {
            ("history-instance".into(), Action::Read)
        }
        Interaction::Read if *method == Method::GET && path.contains('$') => {
            ("operation".into(), Action::Execute)
        }
        Interaction::Read => ("read".into(), Action::Read),
    }
}

/// The patient a request names: `patient=` or `subject=` in its query, or the id after
/// `/fhir/Patient/`, `/plans/` or `/ui/patients/` in its path.
fn patient_named(path: &str, query: Option<&str>) -> Option<String> {
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        if k == "patient" || k == "subject" {
            let v = v
                .trim_start_matches("Patient/")
                .trim_start_matches("Patient%2F");
            if !v.is_empty() && !v.contains(',') && !v.contains("%2C") {
                return Some(v.to_owned());
            }
        }
    }
    let rest = path
        .strip_prefix("/fhir/Patient/")
        .or_else(|| path.strip_prefix("/plans/"))
        .or_else(|| path.strip_prefix("/alerts/overrides/"))
        // The dashboard's patient page and its forms: whose record was looked at or changed.
        .or_else(|| path.strip_prefix("/ui/patients/"))?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

fn peer_of(req: &Request) -> Option<String> {
    req.extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.0.ip().to_string())
}

/// Why a request is not authenticated (401).
#[derive(Debug)]
pub(crate) enum Unauthenticated {
    Missing,
    Invalid(&'static str),
}

/// A 401 with the `WWW-Authenticate` challenge RFC 6750 §3 asks for (no error code when the
/// request carried no credentials at all).
fn unauthorized(why: &Unauthenticated) -> Response {
    let (challenge, text) = match why {
        Unauthenticated::Missing => (
            r#"Bearer realm="osler""#.to_owned(),
            "this endpoint needs a bearer token (Authorization: Bearer …); see /.well-known/smart-configuration".to_owned(),
        ),
        Unauthenticated::Invalid(reason) => (
            format!(r#"Bearer realm="osler", error="invalid_token", error_description="{reason}""#),
            format!("the bearer token is {reason}"),
        ),
    };
    let mut r = ApiError(FhirError::new(ErrorKind::Unauthorized, text)).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// A 403 for what the token's scopes or the caller's role do not allow.
pub(crate) fn forbidden(d: &osler_auth::Denied) -> Response {
    let mut r = ApiError(FhirError::new(ErrorKind::Forbidden, d.to_string())).into_response();
    // RFC 6750 §3: the scope that would grant the request (any of the contexts).
    let scope = match d {
        osler_auth::Denied::Scope(s) => {
            format!(r#", scope="system/{s} user/{s} patient/{s}""#)
        }
        _ => String::new(),
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        r#"Bearer realm="osler", error="insufficient_scope"{scope}"#
    )) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The caller a bearer token stands for, or why there is none.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    method: &str,
    path_and_query: &str,
    policy: Policy,
) -> Result<Caller, Unauthenticated> {
    if matches!(policy, Policy::Everyone(..))
        && let Some(h) = headers
            .get(osler_wire::REQUEST_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        return gateway_caller(state, h, method, path_and_query).await;
    }
    let token = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) => t
            .strip_prefix("Bearer ")
            .or_else(|| t.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(Unauthenticated::Invalid("not a bearer token"))?,
        // The dashboard's session: the same access token, in a cookie the page's script
        // cannot read. A browser sends cookies with requests other sites make it send, so a
        // change (anything but GET) must come from the hub's own pages.
        None => {
            let t = cookie(headers, SESSION_COOKIE).ok_or(Unauthenticated::Missing)?;
            if !matches!(method, "GET" | "HEAD") && !same_origin(headers) {
                return Err(Unauthenticated::Invalid(
                    "a session cookie on a request from another site",
                ));
            }
            t
        }
    };
    let hash = osler_auth::token::hash(token);
    // The lookups here run on the async worker: each is a point read by key on a pooled
    // reading connection (microseconds; WAL readers do not wait for the writer), cheaper than
    // the hand-off to a blocking thread and back, which cost every request a tenth of a
    // millisecond (BENCHMARKS.md, "With TLS, tokens and the audit log").
    let found = state
        .store
        .token(&hash)
        .map_err(|_| Unauthenticated::Invalid("unverifiable now"))?;
    let t = found
        .filter(|t| t.kind == "access")
        .ok_or(Unauthenticated::Invalid("unknown"))?;
    if t.revoked_ms.is_some() {
        return Err(Unauthenticated::Invalid("revoked"));
    }
    if t.expires_ms <= now_ms() {
        return Err(Unauthenticated::Invalid("expired"));
    }
    let role = Role::parse(&t.role).ok_or(Unauthenticated::Invalid("of an unknown role"))?;
    let scopes = Scopes::parse(&t.scopes).map_err(|_| Unauthenticated::Invalid("malformed"))?;
    let compartment = match (&t.patient, role) {
        (Some(p), _) => Compartment::patients(vec![p.clone()]),
        (None, Role::Admin | Role::Integration) => Compartment::All,
        // A clinician sees the patients of the care teams they are a member of now (from the
        // registry, at every request: a change of team applies at once).
        (None, Role::Clinician) => {
            let store = &state.store;
            let patients = store
                .account(&t.subject)
                .and_then(|a| match a.and_then(|a| a.practitioner) {
                    Some(p) => store.care_team_patients(&p),
                    None => Ok(Vec::new()),
                })
                .map_err(|_| Unauthenticated::Invalid("unverifiable now"))?;
            Compartment::patients(patients)
        }
        // A patient token without its patient sees nobody.
        (None, Role::Patient) => Compartment::patients(Vec::new()),
    };
    Ok(Caller {
        subject: t.subject,
        role,
        scopes,
        compartment,
    })
}

/// The cookie that carries a dashboard session's access token.
pub(crate) const SESSION_COOKIE: &str = "osler_session";
/// The cookie that carries its refresh token (sent to `/ui/` only).
pub(crate) const REFRESH_COOKIE: &str = "osler_refresh";

/// A cookie's value.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the browser says the request comes from the hub's own pages: `Sec-Fetch-Site:
/// same-origin`, or an `Origin` whose host is the one the request was sent to.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        return site == "same-origin";
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        _ => false,
    }
}

/// An enrolled gateway signing its poll of every patient's thresholds or assignments.
async fn gateway_caller(
    state: &AppState,
    header: &str,
    method: &str,
    path: &str,
) -> Result<Caller, Unauthenticated> {
    let id = osler_wire::request_gateway(header)
        .ok_or(Unauthenticated::Invalid("a malformed gateway signature"))?
        .to_owned();
    let record = state
        .store
        .gateway(&id)
        .ok()
        .flatten()
        .filter(|g| g.revoked_ms.is_none())
        .ok_or(Unauthenticated::Invalid(
            "of a gateway that is not enrolled",
        ))?;
    let key = osler_wire::parse_public_key(&record.public_key)
        .map_err(|_| Unauthenticated::Invalid("of a gateway with an unreadable key"))?;
    osler_wire::verify_request(header, &key, method, path, now_ms())
        .map_err(|_| Unauthenticated::Invalid("a gateway signature that does not verify"))?;
    state.gateway_polls.note(&id, now_ms());
    Ok(Caller {
        subject: format!("gateway:{id}"),
        role: Role::Integration,
        // What a gateway polls, and nothing else.
        scopes: Scopes::parse("system/CarePlan.s system/DeviceUseStatement.s").unwrap_or_default(),
        compartment: Compartment::All,
    })
}

/// The guard every route runs behind.
async fn guard(policy: Policy, mut req: Request, next: Next) -> Response {
    if !policy.needs_token() {
        return next.run(req).await;
    }
    let Some(state) = req.extensions().get::<Arc<AppState>>().cloned() else {
        // The router always carries the state; a request without it is a wiring bug.
        return ApiError(FhirError::new(
            ErrorKind::Internal,
            "the hub is misconfigured",
        ))
        .into_response();
    };
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let (ev, action) = event(policy, req.method(), &path);
    let mut ctx = AuditCtx {
        record: Record {
            recorded_ms: now_ms(),
            event: ev,
            action,
            outcome: Outcome::Success,
            outcome_text: None,
            who: "anonymous".into(),
            role: None,
            network: peer_of(&req),
            patient: patient_named(&path, query.as_deref()),
            what: Some(format!("{} {path}", req.method())),
            query: query.clone(),
        },
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let headers = req.headers().clone();
    let caller = match authenticate(&state, &headers, &method, &path_and_query, policy).await {
        Ok(c) => c,
        Err(why) => {
            // A page of the dashboard sends the person to sign in (or renews their session)
            // and back, rather than answering a browser with JSON.
            let r = if path.starts_with("/ui/") {
                crate::dashboard::sign_in_again(&headers, &path_and_query)
            } else {
                unauthorized(&why)
            };
            record_later(&state, ctx.finished(401, Some(format!("{why:?}"))));
            return r;
        }
    };
    ctx.record.who = caller.subject.clone();
    ctx.record.role = Some(caller.role.as_str().to_owned());
    if let Err(d) = caller.decide(policy) {
        record_later(&state, ctx.finished(403, Some(d.to_string())));
        if path.starts_with("/ui/") {
            return crate::dashboard::forbidden_page(&d);
        }
        return forbidden(&d);
    }
    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(ctx.clone());
    let response = next.run(req).await;
    if response.extensions().get::<Audited>().is_none() {
        record_later(&state, ctx.finished(response.status().as_u16(), None));
    }
    response
}

/// Appends an entry for what changed nothing (a read, a refusal) without holding the answer
/// for its commit: entries gathered over [`AUDIT_EVERY`] are committed together (one fsync
/// for many reads, not one each).
pub(crate) fn record_later(state: &AppState, entry: String) {
    let mut pending = state
        .audit_pending
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    pending.push(entry);
    if pending.len() == 1 {
        state.audit_wake.notify_one();
    }
}

/// How long a read's audit entry waits for others to share its commit.
pub(crate) const AUDIT_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Commits the gathered read and refusal entries, every [`AUDIT_EVERY`] while there are
/// any, until the server has finished its last request (`audit_closing`, then once more, so
/// none is left behind).
pub(crate) async fn audit_flusher(state: Arc<AppState>) {
    loop {
        state.audit_wake.notified().await;
        let stopping = state
            .audit_closing
            .load(std::sync::atomic::Ordering::Acquire);
        if !stopping {
            tokio::time::sleep(AUDIT_EVERY).await;
        }
        let batch = std::mem::take(
            &mut *state
                .audit_pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if !batch.is_empty()
            && let Err(e) = state.store.audit(batch).await
        {
            tracing::error!(error = %e, "audit entries could not be stored");
        }
        if stopping {
            return;
        }
    }
}

/// Whether the caller may see this patient's data: outside the compartment an instance is
/// answered 404, as if it did not exist.
pub(crate) fn sees(caller: &Caller, patient: &str) -> bool {
    caller.compartment.contains(patient)
}

/// The patients a query must be narrowed to, `None` for everyone.
pub(crate) fn within(caller: &Caller) -> Option<Vec<String>> {
    narrowed(caller).map(<[String]>::to_vec)
}

/// [`within`], borrowed.
pub(crate) fn narrowed(caller: &Caller) -> Option<&[String]> {
    match &caller.compartment {
        Compartment::All => None,
        Compartment::Patients(p) => Some(p.as_slice()),
    }
}

#[cfg(test)]
mod tests {
    /// Routes reach the router only through `Routes`, which takes a policy with each: no
    /// module may call axum's `.route(` itself (that would be a route without a guard).
    #[test]
    fn no_route_is_added_outside_routes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("access.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains(".route(")
                        && !code.contains(".nest(")
                        && !code.contains("route_service("),
                    "{}:{}: a route added around `Routes` (no policy): {line}",
                    path.display(),
                    n + 1
                );
            }
            checked += 1;
        }
        assert!(checked > 10);
    }

    #[test]
    fn every_route_has_a_policy_and_none_is_declared_twice() {
        let table = crate::route_table();
        let mut seen = std::collections::HashSet::new();
        for (method, path, _) in &table {
            assert!(
                seen.insert((method.clone(), path.clone())),
                "{method} {path} twice"
            );
        }
        // The routes a caller without a token may use, all of them named here.
        let public: Vec<String> = table
            .iter()
            .filter(|(_, _, p)| !p.needs_token())
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect();
        let mut want = vec![
            "GET /fhir/metadata",
            "GET /.well-known/smart-configuration",
            "GET /fhir/.well-known/smart-configuration",
            "POST /auth/revoke",
            "POST /auth/enrol",
            "POST /auth/login",
            "POST /auth/second-factor",
            "POST /auth/token",
            "GET /audit/checkpoint",
            "GET /audit/key",
            "GET /audit/proof/inclusion",
            "GET /audit/proof/consistency",
            "POST /ingest/batch",
            // Signed by an enrolled gateway, like a batch (see `notice`).
            "POST /ingest/notice",
            "GET /healthz",
            // The dashboard's sign-in and its two static files.
            "GET /ui",
            "GET /ui/",
            "GET /ui/assets/osler.css",
            "GET /ui/assets/osler.js",
            "GET /ui/login",
            "POST /ui/login",
            "POST /ui/second-factor",
            "GET /ui/refresh",
            "GET /ui/link",
            "POST /ui/logout",
        ];
        let mut got: Vec<&str> = public.iter().map(String::as_str).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }
}
