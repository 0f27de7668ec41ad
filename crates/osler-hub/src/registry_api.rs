//! The registry's FHIR routes, the same for every kind it manages (Patient, Practitioner,
//! Organization, CareTeam, Device, DeviceUseStatement): create (conditional with
//! If-None-Exist), read (ETag, Last-Modified, If-None-Match), update (If-Match; conditional
//! on a search), delete (marks, never erases), search, `_history` and vread.
//!
//! Every write goes parse and check (osler-fhir) → the store's writer, which checks
//! references, unique identifiers, device assignment overlaps and versions inside its
//! transaction → answer after the commit.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use osler_fhir::bundle::searchset;
use osler_fhir::registry::{
    deleted, etag, history_bundle, parse_etag, parse_registry_search, prepare, resource_json,
};
use osler_fhir::{ErrorKind, FhirError, encode_query, parse_query};
use osler_registry::{Kind, StoredResource, WriteMode, WriteOutcome};

use crate::access::{Ax, Cx, Routes, audited, sees};
use crate::fhir_api::{base_url, prefers, read_json};
use crate::reply::{ApiError, fhir, http_date};
use crate::{AppState, now_ms};
use osler_auth::{Caller, Compartment, Interaction, OPERATIONS, Policy};

type St = State<Arc<AppState>>;

pub(crate) fn routes() -> Routes {
    use Interaction::*;
    let mut r = Routes::new()
        // Every device assignment, for gateways (signed) and whole-hub programs.
        .get(
            "/registry/assignments",
            Policy::Everyone("DeviceUseStatement", Search),
            assignments,
        )
        .get("/registry/held", Policy::Everyone(OPERATIONS, Search), held);
    for kind in Kind::ALL {
        let ty = kind.as_str();
        let res = |i| Policy::Resource(ty, i);
        r = r
            .get(
                &format!("/fhir/{ty}"),
                res(Search),
                move |s: St, c: Cx, h: HeaderMap, q: RawQuery| search(kind, s, c, h, q),
            )
            .post(
                &format!("/fhir/{ty}"),
                res(Create),
                move |s: St, c: Cx, a: Ax, h: HeaderMap, b: Body| create(kind, s, c, a, h, b),
            )
            .put(
                &format!("/fhir/{ty}"),
                res(Update),
                move |s: St, c: Cx, a: Ax, h: HeaderMap, q: RawQuery, b: Body| {
                    update_matching(kind, s, c, a, h, q, b)
                },
            )
            .get(
                &format!("/fhir/{ty}/{{id}}"),
                res(Read),
                move |s: St, c: Cx, h: HeaderMap, p: Path<String>| read(kind, s, c, h, p),
            )
            .put(
                &format!("/fhir/{ty}/{{id}}"),
                res(Update),
                move |s: St, c: Cx, a: Ax, h: HeaderMap, p: Path<String>, b: Body| {
                    update(kind, s, c, a, h, p, b)
                },
            )
            .delete(
                &format!("/fhir/{ty}/{{id}}"),
                res(Delete),
                move |s: St, c: Cx, a: Ax, h: HeaderMap, p: Path<String>| {
                    delete(kind, s, c, a, h, p)
                },
            )
            .get(
                &format!("/fhir/{ty}/{{id}}/_history"),
                res(Read),
                move |s: St, c: Cx, h: HeaderMap, p: Path<String>| history(kind, s, c, h, p),
            )
            .get(
                &format!("/fhir/{ty}/{{id}}/_history/{{vid}}"),
                res(Read),
                move |s: St, c: Cx, h: HeaderMap, p: Path<(String, String)>| {
                    vread(kind, s, c, h, p)
                },
            );
    }
    r
}

/// A new server-assigned id: 128 random bits in hex (unguessable, so that ids leak nothing
/// about how many patients a clinic has).
pub(crate) fn new_id() -> Result<String, FhirError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        tracing::error!(error = %e, "no randomness for a new id");
        FhirError::new(ErrorKind::Internal, "cannot choose an id")
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn not_found(kind: Kind, id: &str) -> FhirError {
    FhirError::at(
        ErrorKind::NotFound,
        format!("{kind}.id"),
        format!(
            "{kind}/{} is not known",
            id.chars().take(64).collect::<String>()
        ),
    )
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, FhirError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                FhirError::new(
                    ErrorKind::BadParameter,
                    format!("{name} is not readable text"),
                )
            })
        })
        .transpose()
}

/// 304 Not Modified with the ETag of `version`: the client's copy is current.
pub(crate) fn not_modified(version: u64) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The version an `If-Match` header names, if there is one.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<u64>, FhirError> {
    header_text(headers, "if-match")?
        .map(|h| {
            parse_etag(h).ok_or_else(|| {
                FhirError::new(
                    ErrorKind::BadParameter,
                    "If-Match must name a version: W/\"3\"",
                )
            })
        })
        .transpose()
}

/// The response to a stored version: body (unless `Prefer: return=minimal`), ETag,
/// Last-Modified, Location naming the version.
fn stored_response(
    status: StatusCode,
    base: &str,
    s: &StoredResource,
    headers: &HeaderMap,
) -> Response {
    let mut response = if prefers(headers, "minimal") == Some(true) {
        status.into_response()
    } else {
        fhir(status, &resource_json(s))
    };
    let h = response.headers_mut();
    let location = format!("{base}/{}/{}/_history/{}", s.kind, s.id, s.version);
    for (name, value) in [
        (header::ETAG, etag(s.version)),
        (header::LAST_MODIFIED, http_date(s.updated_ms)),
        (header::LOCATION, location),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    response
}

/// What a refused write is, as a FHIR error naming the element at fault.
pub(crate) fn refusal(kind: Kind, o: &WriteOutcome) -> FhirError {
    match o {
        WriteOutcome::VersionConflict { current } => FhirError::new(
            ErrorKind::Precondition,
            match current {
                Some(v) => format!(
                    "the resource is at version {v}; read it again and reapply the change (If-Match)"
                ),
                None => "If-Match names a version of a resource that does not exist".to_owned(),
            },
        ),
        WriteOutcome::MissingReference(r) => FhirError::at(
            ErrorKind::Invalid,
            r.path.clone(),
            format!(
                "{}/{} does not exist on this server; create it first",
                r.kind, r.id
            ),
        ),
        WriteOutcome::Duplicate { term, other } => FhirError::at(
            ErrorKind::Conflict,
            format!("{kind}.{}", term.param),
            format!(
                "{kind}/{other} already has the identifier {}; two {kind}s with one identifier could not be told apart (update {kind}/{other} instead)",
                term.value.trim_start_matches('|')
            ),
        ),
        WriteOutcome::Overlap { other } => FhirError::at(
            ErrorKind::Conflict,
            "DeviceUseStatement.timingPeriod",
            format!(
                "the device is assigned by DeviceUseStatement/{other} for part of this period; end that one first (a device is worn by one patient at a time)"
            ),
        ),
        WriteOutcome::MultipleMatches(n) => FhirError::new(
            ErrorKind::MultipleMatches,
            format!("the condition matched {n} or more {kind}s; nothing was written"),
        ),
        WriteOutcome::IdTaken => FhirError::new(ErrorKind::Conflict, "the id is taken; retry"),
        _ => FhirError::new(ErrorKind::Internal, "unexpected store outcome"),
    }
}

/// The patient whose compartment a registry resource is in: the Patient itself, the patient
/// a CareTeam, Device or DeviceUseStatement names; `None` for Practitioner and Organization
/// (not patient data: any caller with the scope may read them).
pub(crate) fn patient_of(kind: Kind, id: &str, body: &serde_json::Value) -> Option<String> {
    let element = match kind {
        Kind::Patient => return Some(id.to_owned()),
        Kind::Practitioner | Kind::Organization => return None,
        Kind::CareTeam | Kind::DeviceUseStatement => "subject",
        Kind::Device => "patient",
    };
    Some(
        body.get(element)
            .and_then(|r| r.get("reference"))
            .and_then(|r| r.as_str())
            .and_then(|r| r.strip_prefix("Patient/"))
            .unwrap_or("")
            .to_owned(),
    )
}

/// Whether the caller may see this resource (outside their compartment it does not exist
/// for them: 404).
pub(crate) fn visible(caller: &Caller, kind: Kind, id: &str, body: &serde_json::Value) -> bool {
    caller.compartment == Compartment::All
        || patient_of(kind, id, body).is_none_or(|p| sees(caller, &p))
}

fn visible_stored(caller: &Caller, s: &StoredResource) -> bool {
    caller.compartment == Compartment::All
        || serde_json::from_str(&s.body).is_ok_and(|b| visible(caller, s.kind, &s.id, &b))
}

fn outside(kind: Kind) -> FhirError {
    FhirError::new(
        ErrorKind::Forbidden,
        format!("this {kind} would name a patient outside the caller's compartment"),
    )
}

/// Writes one prepared resource, its audit entry in the same commit, and answers as FHIR
/// asks for the outcome.
async fn write(
    state: &AppState,
    caller: &Caller,
    audit: &crate::access::AuditCtx,
    headers: &HeaderMap,
    w: osler_registry::ResourceWrite,
    body: &serde_json::Value,
) -> Result<Response, ApiError> {
    let kind = w.kind;
    if !visible(caller, kind, &w.id, body) {
        return Err(outside(kind).into());
    }
    let patient = patient_of(kind, &w.id, body);
    let entry = audit.entry_about(patient.as_deref());
    let result = state
        .alerts
        .write_resources(&state.store, vec![w], vec![entry])
        .await?;
    // Stored, its entry is in the commit; refused, the guard records the refusal.
    Ok(match answer_write(state, headers, kind, result).await {
        Ok(r) => audited(r),
        Err(e) => e.into_response(),
    })
}

async fn answer_write(
    state: &AppState,
    headers: &HeaderMap,
    kind: Kind,
    result: osler_store::WriteResult,
) -> Result<Response, ApiError> {
    let Some(outcome) = result.resources.into_iter().next() else {
        return Err(FhirError::new(ErrorKind::Internal, "the store answered no outcome").into());
    };
    let base = base_url(state, headers);
    let status = match &outcome {
        WriteOutcome::Created(_) => StatusCode::CREATED,
        WriteOutcome::Updated(_) | WriteOutcome::Matched(_) | WriteOutcome::Unchanged(_) => {
            StatusCode::OK
        }
        refused => return Err(refusal(kind, refused).into()),
    };
    let stored = outcome
        .stored()
        .ok_or_else(|| FhirError::new(ErrorKind::Internal, "no resource"))?;
    Ok(stored_response(status, &base, stored, headers))
}

async fn create(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let json = read_json(&state, &headers, body).await?;
    let mode = match header_text(&headers, "if-none-exist")? {
        None => WriteMode::Create,
        Some(q) => {
            let params = parse_query(q.trim_start_matches('?'))?;
            if params.is_empty() {
                return Err(
                    FhirError::new(ErrorKind::BadParameter, "If-None-Exist is empty").into(),
                );
            }
            let s = parse_registry_search(kind, &params).map_err(|e| e.within("If-None-Exist"))?;
            WriteMode::CreateIfNoneExist(s.query)
        }
    };
    let w = prepare(kind, &json, &new_id()?, mode, None, now_ms())?;
    write(&state, &caller, &audit, &headers, w, &json).await
}

async fn update(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    if osler_core::Id::parse(&id).is_none() {
        return Err(FhirError::at(
            ErrorKind::Malformed,
            format!("{kind}.id"),
            "an id is 1-64 letters, digits, '-' or '.'",
        )
        .into());
    }
    let json = read_json(&state, &headers, body).await?;
    if caller.compartment != Compartment::All {
        // An existing resource outside the compartment does not exist for this caller.
        let store = state.store.clone();
        let key = id.clone();
        let current = tokio::task::spawn_blocking(move || store.resource(kind, &key)).await??;
        if current.is_some_and(|c| !visible_stored(&caller, &c)) {
            return Err(not_found(kind, &id).into());
        }
    }
    let w = prepare(
        kind,
        &json,
        &id,
        WriteMode::Update,
        if_match(&headers)?,
        now_ms(),
    )?;
    write(&state, &caller, &audit, &headers, w, &json).await
}

async fn update_matching(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    if params.is_empty() {
        return Err(FhirError::new(
            ErrorKind::BadParameter,
            format!("a conditional update needs search parameters (PUT /fhir/{kind}?identifier=...), or use PUT /fhir/{kind}/{{id}}"),
        )
        .into());
    }
    let mut s = parse_registry_search(kind, &params)?;
    if !narrow(&caller, &mut s.query) {
        return Err(outside(kind).into());
    }
    let json = read_json(&state, &headers, body).await?;
    let id = match json.get("id").and_then(|v| v.as_str()) {
        Some(id) => id.to_owned(),
        None => new_id()?,
    };
    let w = prepare(
        kind,
        &json,
        &id,
        WriteMode::UpdateMatching(s.query),
        if_match(&headers)?,
        now_ms(),
    )?;
    write(&state, &caller, &audit, &headers, w, &json).await
}

async fn delete(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let key = id.clone();
    let Some(current) = tokio::task::spawn_blocking(move || store.resource(kind, &key)).await??
    else {
        return Err(not_found(kind, &id).into());
    };
    if !visible_stored(&caller, &current) {
        return Err(not_found(kind, &id).into());
    }
    let marked = deleted(&current);
    let if_match = if_match(&headers)?.or(Some(current.version));
    let w = prepare(kind, &marked, &id, WriteMode::Update, if_match, now_ms())?;
    write(&state, &caller, &audit, &headers, w, &marked).await
}

async fn read(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if osler_core::Id::parse(&id).is_none() || (kind == Kind::Patient && !sees(&caller, &id)) {
        return Err(not_found(kind, &id).into());
    }
    let store = state.store.clone();
    let key = id.clone();
    let (found, known_from_readings) = tokio::task::spawn_blocking(move || {
        let found = store.resource(kind, &key)?;
        let stub = match (kind, &found) {
            (Kind::Patient, None) => store.patient_exists(&key)?,
            (Kind::Device, None) => store.device_exists(&key)?,
            _ => false,
        };
        Ok::<_, osler_store::StoreError>((found, stub))
    })
    .await??;
    if found.as_ref().is_some_and(|s| !visible_stored(&caller, s)) {
        return Err(not_found(kind, &id).into());
    }
    let Some(s) = found else {
        // A device known only from readings is nobody's to see unless the caller sees all.
        if kind == Kind::Device && caller.compartment != Compartment::All {
            return Err(not_found(kind, &id).into());
        }
        // Known only because readings named it: a minimal resource until it is enrolled.
        return match (kind, known_from_readings) {
            (Kind::Patient, true) => Ok(fhir(StatusCode::OK, &osler_fhir::resources::patient(&id))),
            (Kind::Device, true) => Ok(fhir(StatusCode::OK, &osler_fhir::resources::device(&id))),
            _ => Err(not_found(kind, &id).into()),
        };
    };
    if let Some(h) = header_text(&headers, "if-none-match")?
        && parse_etag(h) == Some(s.version)
    {
        return Ok(not_modified(s.version));
    }
    let base = base_url(&state, &headers);
    let mut r = stored_response(StatusCode::OK, &base, &s, &HeaderMap::new());
    r.headers_mut().remove(header::LOCATION);
    Ok(r)
}

/// A Patient or Device as served: its registry resource, or the minimal one of a patient or
/// device known only from readings. Blocking.
pub(crate) fn resource_or_stub(
    store: &osler_store::Store,
    kind: Kind,
    id: &str,
) -> Result<Option<serde_json::Value>, osler_store::StoreError> {
    if let Some(s) = store.resource(kind, id)? {
        return Ok(Some(resource_json(&s)));
    }
    Ok(match kind {
        Kind::Patient if store.patient_exists(id)? => Some(osler_fhir::resources::patient(id)),
        Kind::Device if store.device_exists(id)? => Some(osler_fhir::resources::device(id)),
        _ => None,
    })
}

async fn vread(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    Path((id, vid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Ok(v) = vid.parse::<u64>() else {
        return Err(not_found(kind, &id).into());
    };
    let store = state.store.clone();
    let key = id.clone();
    let found =
        tokio::task::spawn_blocking(move || store.resource_version(kind, &key, v)).await??;
    let found = found.filter(|s| visible_stored(&caller, s));
    let Some(s) = found else {
        return Err(FhirError::new(
            ErrorKind::NotFound,
            format!(
                "{kind}/{} has no version {v}",
                id.chars().take(64).collect::<String>()
            ),
        )
        .into());
    };
    let base = base_url(&state, &headers);
    let mut r = stored_response(StatusCode::OK, &base, &s, &HeaderMap::new());
    r.headers_mut().remove(header::LOCATION);
    Ok(r)
}

async fn history(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let key = id.clone();
    let versions =
        tokio::task::spawn_blocking(move || store.resource_history(kind, &key)).await??;
    // Visible if any version is (the current one decides, like a read).
    if versions.first().is_none_or(|s| !visible_stored(&caller, s)) {
        return Err(not_found(kind, &id).into());
    }
    let base = base_url(&state, &headers);
    Ok(fhir(StatusCode::OK, &history_bundle(&base, &versions)))
}

/// Narrows a registry query to the caller's compartment before it runs; false when nothing
/// can match (a compartment of nobody).
pub(crate) fn narrow(caller: &Caller, q: &mut osler_registry::ResourceQuery) -> bool {
    let Compartment::Patients(patients) = &caller.compartment else {
        return true;
    };
    match q.kind {
        Kind::Practitioner | Kind::Organization => true,
        Kind::Patient => {
            let ids: Vec<String> = match q.ids.take() {
                None => patients.clone(),
                Some(asked) => asked.into_iter().filter(|i| sees(caller, i)).collect(),
            };
            let any = !ids.is_empty();
            q.ids = Some(ids);
            any
        }
        Kind::CareTeam | Kind::Device | Kind::DeviceUseStatement => {
            q.conds.push(osler_registry::ParamCond {
                param: "patient".into(),
                any: patients
                    .iter()
                    .map(|p| osler_registry::Match::Exact(format!("Patient/{p}")))
                    .collect(),
            });
            !patients.is_empty()
        }
    }
}

async fn search(
    kind: Kind,
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    let s = parse_registry_search(kind, &params)?;
    let base = base_url(&state, &headers);
    let store = state.store.clone();
    let mut q = s.query.clone();
    let any = narrow(&caller, &mut q);
    let (page, total) = if any {
        tokio::task::spawn_blocking(move || store.search_resources(&q, true)).await??
    } else {
        (Vec::new(), Some(0))
    };
    let total = total.unwrap_or(0);
    let mut links = vec![("self", format!("{base}/{kind}?{}", encode_query(&params)))];
    let end = s.query.offset + page.len();
    if !s.summary_count && (end as u64) < total && !page.is_empty() {
        let mut next: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "_offset")
            .cloned()
            .collect();
        next.push(("_offset".into(), end.to_string()));
        links.push(("next", format!("{base}/{kind}?{}", encode_query(&next))));
    }
    let entries = page
        .iter()
        .map(|r| (format!("{base}/{kind}/{}", r.id), resource_json(r)))
        .collect();
    Ok(fhir(
        StatusCode::OK,
        &searchset(Some(total), &links, entries),
    ))
}

/// Every device assignment in force, with every name each device goes by: what gateways
/// fetch to attribute readings that name only their device.
async fn assignments(State(state): St) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let all = tokio::task::spawn_blocking(move || store.assignments()).await??;
    let items: Vec<serde_json::Value> = all
        .into_iter()
        .map(|(a, names)| {
            serde_json::json!({
                "device": a.device, "names": names, "patient": a.patient,
                "start_ms": a.start_ms, "end_ms": a.end_ms, "source": a.source,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "assignments": items })).into_response())
}

/// Readings held for want of an assignment covering their time, oldest first, with why: for
/// an operator to see which device needs a DeviceUseStatement.
async fn held(State(state): St, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    let mut limit = 1000;
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        FhirError::at(ErrorKind::BadParameter, "limit", "a number from 1 to 10000")
                    })?
            }
            _ => {
                return Err(FhirError::at(
                    ErrorKind::BadParameter,
                    k.clone(),
                    "unknown parameter; use limit",
                )
                .into());
            }
        }
    }
    let store = state.store.clone();
    let held = tokio::task::spawn_blocking(move || store.held(limit)).await??;
    let items: Vec<serde_json::Value> = held
        .iter()
        .map(|h| {
            let r = &h.reading;
            serde_json::json!({
                "id": h.id,
                "device": h.device,
                "metric": r.metric.info().key,
                "value": match r.value {
                    osler_core::Value::Scalar(v) => serde_json::json!(v),
                    osler_core::Value::Pair(a, b) => serde_json::json!([a, b]),
                },
                "unit": r.metric.info().unit,
                "time": r.taken.to_string(),
                "received": osler_core::Timestamp::utc(r.received_ms).to_string(),
                "reason": h.reason,
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "held": items })).into_response())
}
