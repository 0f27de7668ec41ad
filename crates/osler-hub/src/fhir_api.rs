//! The `/fhir` routes: one handler per FHIR interaction.
//!
//! Every write follows the same path: parse (osler-fhir) → validate (osler-core) → commit
//! (osler-store) → answer. Nothing is acknowledged before the commit, and every refusal names
//! the element at fault.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use osler_core::{Id, ReadingError};
use osler_fhir::bundle::{searchset, searchset_with};
use osler_fhir::{
    ErrorKind, FhirError, ObservationSearch, SummaryView, encode_query, observation_json,
    parse_if_none_exist, parse_observation, parse_observation_search, parse_query, summary_json,
};
use osler_store::{Correction, Cursor, Query, StoredReading, WriteOp, WriteOutcome};
use serde_json::Value;

use crate::access::{Ax, Cx, Routes, audited, sees, within};
use crate::body::{BodyError, read_body};
use crate::reply::{ApiError, fhir};
use crate::{AppState, now_ms};
use osler_auth::{Interaction, Policy};

type St = State<Arc<AppState>>;

pub(crate) fn routes() -> Routes {
    use crate::observation_versions as versions;
    use Interaction::*;
    let obs = |i| Policy::Resource("Observation", i);
    Routes::new()
        .post(
            "/fhir",
            Policy::PerEntry,
            crate::bundle_api::transaction_or_batch,
        )
        .post(
            "/fhir/",
            Policy::PerEntry,
            crate::bundle_api::transaction_or_batch,
        )
        .get("/fhir/metadata", Policy::Public, metadata)
        .post("/fhir/Observation", obs(Create), create)
        .get("/fhir/Observation", obs(Search), search)
        .get("/fhir/Observation/$lastn", obs(Search), last_n)
        .get("/fhir/Observation/{id}", obs(Read), versions::read)
        .put("/fhir/Observation/{id}", obs(Update), versions::correct)
        .get(
            "/fhir/Observation/{id}/_history",
            obs(Read),
            versions::history,
        )
        .get(
            "/fhir/Observation/{id}/_history/{vid}",
            obs(Read),
            versions::vread,
        )
        .get(
            "/fhir/Provenance",
            Policy::Resource("Provenance", Search),
            versions::provenance,
        )
}

/// The FHIR base URL as the client sees it.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(u) = &state.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("{}://{host}/fhir", state.scheme)
}

/// Reads the body as JSON, within the size limit.
pub(crate) async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && ct.to_ascii_lowercase().contains("xml")
    {
        return Err(FhirError::new(
            ErrorKind::UnsupportedMediaType,
            "only JSON is accepted (application/fhir+json)",
        )
        .into());
    }
    let bytes = match read_body(headers, body, state.max_body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Err(FhirError::new(
                ErrorKind::TooLarge,
                format!(
                    "the body exceeds {} bytes; split it into smaller Bundles",
                    state.max_body
                ),
            )
            .into());
        }
        Err(BodyError::Unreadable) => {
            return Err(
                FhirError::new(ErrorKind::Malformed, "the request body could not be read").into(),
            );
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        FhirError::new(
            ErrorKind::Malformed,
            format!("the body is not valid JSON: {e}"),
        )
        .into()
    })
}

pub(crate) fn invalid_reading(e: ReadingError) -> FhirError {
    osler_fhir::reading_error(&e)
}

/// An element path of a resource (`Patient.birthDate`) as it reads inside Bundle entry `i`
/// (`Bundle.entry[3].resource.birthDate`).
pub(crate) fn in_entry(mut e: FhirError, i: usize, resource_type: &str) -> FhirError {
    e.expression = e.expression.map(|x| match x.strip_prefix(resource_type) {
        Some(rest) => format!("Bundle.entry[{i}].resource{rest}"),
        None => format!("Bundle.entry[{i}].resource.{x}"),
    });
    e
}

/// Why a write outcome is a failure, as a FHIR error.
pub(crate) fn outcome_error(o: &WriteOutcome) -> Option<FhirError> {
    match o {
        WriteOutcome::Created(_) | WriteOutcome::Existing(_) | WriteOutcome::Corrected(_) => None,
        WriteOutcome::VersionConflict { current } => Some(FhirError::new(
            ErrorKind::Precondition,
            format!(
                "the Observation is at version {current}; read it again and reapply the correction (If-Match)"
            ),
        )),
        WriteOutcome::Conflict { existing } => Some(FhirError::new(
            ErrorKind::Conflict,
            format!(
                "Observation/{} already holds a different reading for this patient, metric and device at this time; \
                 a reading's time identifies it: correct it with PUT, or send it with status amended, corrected or entered-in-error",
                existing.id
            ),
        )),
        WriteOutcome::MultipleMatches { count } => Some(FhirError::new(
            ErrorKind::MultipleMatches,
            format!("If-None-Exist matched {count} Observations; nothing was created"),
        )),
        // Only gateway batches produce these; a FHIR write meeting one is a bug, said as such.
        WriteOutcome::AlreadyCommitted | WriteOutcome::DeadLettered | WriteOutcome::Held => {
            Some(FhirError::new(
                ErrorKind::Internal,
                "the store answered a FHIR write with a gateway-batch outcome",
            ))
        }
    }
}

pub(crate) fn prefers(headers: &HeaderMap, what: &str) -> Option<bool> {
    let p = headers.get("prefer")?.to_str().ok()?;
    Some(
        p.split(';')
            .any(|part| part.trim() == format!("return={what}")),
    )
}

pub(crate) fn location(base: &str, s: &StoredReading) -> String {
    format!("{base}/Observation/{}", s.id)
}

async fn metadata(State(state): St, headers: HeaderMap) -> Response {
    let cs = osler_fhir::resources::capability_statement(
        env!("CARGO_PKG_VERSION"),
        &state.started,
        &base_url(&state, &headers),
    );
    fhir(StatusCode::OK, &cs)
}

async fn create(
    State(state): St,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = now_ms();
    let json = read_json(&state, &headers, body).await?;
    let input =
        parse_observation(&json, received).inspect_err(|_| state.metrics.rejected("invalid", 1))?;
    let reading = input.validate(received).map_err(|e| {
        state.metrics.rejected("invalid", 1);
        invalid_reading(e)
    })?;
    if !sees(&caller, reading.patient.as_str()) {
        return Err(FhirError::at(
            ErrorKind::Forbidden,
            "Observation.subject",
            "this patient is outside the caller's compartment",
        )
        .into());
    }
    let entry = audit.entry_about(Some(reading.patient.as_str()));
    let if_none_exist = match headers.get("if-none-exist") {
        None => None,
        Some(v) => Some(parse_if_none_exist(v.to_str().map_err(|_| {
            FhirError::new(
                ErrorKind::BadParameter,
                "If-None-Exist is not readable text",
            )
        })?)?),
    };
    let result = state
        .alerts
        .write(
            &state.store,
            vec![WriteOp {
                // An amended, corrected or entered-in-error reading replaces the one stored
                // under its identity (kept as its previous version).
                correction: reading.status.is_correction().then(Correction::default),
                reading,
                if_none_exist,
                by_device: false,
            }],
            false,
            None,
            vec![entry],
        )
        .await?;
    // Stored, its entry is in the commit; refused (a conflict), the guard records the refusal.
    Ok(match created(&state, &headers, result).await {
        Ok(r) => audited(r),
        Err(e) => e.into_response(),
    })
}

async fn created(
    state: &AppState,
    headers: &HeaderMap,
    result: osler_store::WriteResult,
) -> Result<Response, ApiError> {
    let Some(outcome) = result.outcomes.into_iter().next() else {
        return Err(FhirError::new(ErrorKind::Internal, "the store answered no outcome").into());
    };
    let (status, stored) = match outcome {
        WriteOutcome::Created(s) => (StatusCode::CREATED, s),
        WriteOutcome::Existing(s) | WriteOutcome::Corrected(s) => (StatusCode::OK, s),
        failed => {
            state.metrics.rejected("conflict", 1);
            let e = outcome_error(&failed)
                .unwrap_or_else(|| FhirError::new(ErrorKind::Internal, "unknown outcome"));
            return Err(e.into());
        }
    };
    let base = base_url(state, headers);
    // A new reading is version 1; one found or corrected is at the version the store holds.
    let version = if status == StatusCode::CREATED {
        1
    } else {
        let store = state.store.clone();
        let id = stored.id;
        tokio::task::spawn_blocking(move || store.reading_versions(id))
            .await??
            .len()
            .max(1) as u64
    };
    let mut response = if prefers(headers, "minimal") == Some(true) {
        let mut r = status.into_response();
        if let Ok(v) = HeaderValue::from_str(&osler_fhir::registry::etag(version)) {
            r.headers_mut().insert(header::ETAG, v);
        }
        r
    } else {
        crate::observation_versions::versioned(status, version, &stored)
    };
    let loc = format!("{}/_history/{version}", location(&base, &stored));
    if let Ok(v) = HeaderValue::from_str(&loc) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

pub(crate) fn status_line(code: u16) -> String {
    let reason = StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{code} {reason}")
}

fn store_query(s: &ObservationSearch, patient: Option<Id>) -> Query {
    Query {
        patient,
        metrics: s.metrics.clone(),
        device: s.device.clone(),
        from_ms: s.from_ms,
        to_ms: s.to_ms,
        descending: s.descending,
        after: s.cursor.map(|(t_ms, series)| Cursor { t_ms, series }),
        limit: s.count,
        within: None,
    }
}

fn entries(base: &str, readings: &[StoredReading]) -> Vec<(String, Value)> {
    readings
        .iter()
        .map(|s| (location(base, s), stored_json(s)))
        .collect()
}

async fn search(
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    let s = parse_observation_search(&params, false)?;
    let base = base_url(&state, &headers);
    let self_link = format!("{base}/Observation?{}", encode_query(&params));
    let outside = s
        .patient
        .as_ref()
        .is_some_and(|p| !sees(&caller, p.as_str()));
    if s.metrics.as_ref().is_some_and(Vec::is_empty) || outside {
        // The codes or categories asked for name no metric Osler stores, or the patient is
        // outside the caller's compartment: nothing can match.
        // The codes or categories asked for name no metric Osler stores: nothing can match.
        return Ok(fhir(
            StatusCode::OK,
            &searchset(Some(0), &[("self", self_link)], Vec::new()),
        ));
    }
    let store = state.store.clone();
    let s2 = s.clone();
    let compartment =
        within(&caller).map(|w| w.iter().filter_map(|p| Id::parse(p)).collect::<Vec<Id>>());
    let (total, page) =
        tokio::task::spawn_blocking(move || -> Result<_, osler_store::StoreError> {
            if let Some(ident) = &s2.identifier {
                // Identifier matches are few (normally one); filter and order them in memory.
                let mut found: Vec<StoredReading> = store
                    .by_identifier(ident)?
                    .into_iter()
                    .filter(|r| {
                        let q = &r.reading;
                        compartment.as_ref().is_none_or(|w| w.contains(&q.patient))
                            && s2.patient.as_ref().is_none_or(|p| *p == q.patient)
                            && s2.metrics.as_ref().is_none_or(|m| m.contains(&q.metric))
                            && s2
                                .device
                                .as_ref()
                                .is_none_or(|d| Some(d) == q.device.as_ref())
                            && (s2.from_ms..s2.to_ms).contains(&r.id.t_ms)
                    })
                    .collect();
                found.sort_by_key(|r| (r.id.t_ms, r.id.series));
                if s2.descending {
                    found.reverse();
                }
                let total = found.len() as u64;
                found.truncate(s2.count);
                return Ok((
                    Some(total),
                    osler_store::Page {
                        readings: found,
                        next: None,
                    },
                ));
            }
            // Without a patient, parse_observation_search guarantees a code or category: a
            // search across patients of those metrics' series.
            let across = s2.patient.is_none();
            let q = Query {
                within: compartment,
                ..store_query(&s2, s2.patient.clone())
            };
            // The total is counted on the first page only: later pages are read by clients that
            // already have it, and counting a long range on every page would double their cost.
            // Across patients it is counted only when asked (_summary=count): it would read
            // every matching reading of the population, where a page reads one per series.
            let total = if (s2.cursor.is_none() && !across) || s2.summary_count {
                Some(store.count(&Query {
                    after: None,
                    ..q.clone()
                })?)
            } else {
                None
            };
            if s2.summary_count {
                return Ok((
                    total,
                    osler_store::Page {
                        readings: Vec::new(),
                        next: None,
                    },
                ));
            }
            Ok((total, store.search(&q)?))
        })
        .await??;
    let mut links = vec![("self", self_link)];
    if let Some(c) = page.next {
        links.push((
            "next",
            next_link(&format!("{base}/Observation"), &params, c),
        ));
    }
    let included = if s.include_patient || s.include_device {
        let store = state.store.clone();
        let readings = page.readings.clone();
        let (patients, devices) = (s.include_patient, s.include_device);
        let base = base.clone();
        tokio::task::spawn_blocking(move || included(&store, &base, &readings, patients, devices))
            .await??
    } else {
        Vec::new()
    };
    Ok(fhir(
        StatusCode::OK,
        &searchset_with(total, &links, entries(&base, &page.readings), included),
    ))
}

/// The patients and devices of a page's readings, each once (`_include`). Blocking.
fn included(
    store: &osler_store::Store,
    base: &str,
    readings: &[StoredReading],
    patients: bool,
    devices: bool,
) -> Result<Vec<(String, Value)>, osler_store::StoreError> {
    use osler_registry::Kind;
    let mut wanted: Vec<(Kind, String)> = Vec::new();
    for r in readings {
        if patients {
            wanted.push((Kind::Patient, r.reading.patient.to_string()));
        }
        if devices && let Some(d) = &r.reading.device {
            wanted.push((Kind::Device, d.to_string()));
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut out = Vec::with_capacity(wanted.len());
    for (kind, id) in wanted {
        if let Some(json) = crate::registry_api::resource_or_stub(store, kind, &id)? {
            out.push((format!("{base}/{kind}/{id}"), json));
        }
    }
    Ok(out)
}

async fn last_n(
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    let s = parse_observation_search(&params, true)?;
    let base = base_url(&state, &headers);
    let self_link = format!("{base}/Observation/$lastn?{}", encode_query(&params));
    let Some(patient) = s.patient.clone() else {
        return Err(FhirError::new(ErrorKind::BadParameter, "$lastn needs patient").into());
    };
    let found = if s.metrics.as_ref().is_some_and(Vec::is_empty) || !sees(&caller, patient.as_str())
    {
        Vec::new()
    } else {
        let store = state.store.clone();
        let q = store_query(&s, Some(patient));
        let max = s.max;
        tokio::task::spawn_blocking(move || store.last_n(&q, max)).await??
    };
    Ok(fhir(
        StatusCode::OK,
        &searchset(
            Some(found.len() as u64),
            &[("self", self_link)],
            entries(&base, &found),
        ),
    ))
}

/// The `next` link of a keyset-paged search: the same parameters, `_cursor` after `c`.
pub(crate) fn next_link(path: &str, params: &[(String, String)], c: Cursor) -> String {
    let mut next: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_cursor")
        .cloned()
        .collect();
    next.push(("_cursor".into(), format!("{}.{}", c.t_ms, c.series)));
    format!("{path}?{}", encode_query(&next))
}

/// A stored reading as FHIR: an Observation, or for a gateway's window summary an Observation
/// over a period with its statistics (see `osler_fhir::summary_json`).
pub(crate) fn stored_json(s: &StoredReading) -> serde_json::Value {
    match &s.summary {
        None => observation_json(&s.id.to_string(), &s.reading),
        Some(st) => summary_json(
            &s.id.to_string(),
            &s.reading,
            &SummaryView {
                end_ms: st.end_ms,
                count: st.count,
                min: st.min,
                max: st.max,
                last: st.last,
                spikes: st.spikes,
            },
        ),
    }
}
