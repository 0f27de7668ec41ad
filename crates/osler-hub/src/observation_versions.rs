//! An Observation's versions: read (ETag, Last-Modified, If-None-Match), correction by `PUT`
//! (same reading, a status that says it changed, `If-Match`), `_history` and vread. The
//! previous versions of a corrected reading are the store's `reading_version`.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::Response;
use osler_fhir::{ErrorKind, FhirError, parse_observation};
use osler_store::{Correction, ReadingId, StoredReading, WriteOp, WriteOutcome};
use serde_json::Value;

use crate::access::{Ax, Cx, audited, sees};
use crate::fhir_api::{base_url, invalid_reading, outcome_error, read_json, stored_json};
use crate::reply::{ApiError, fhir};
use crate::{AppState, now_ms};

type St = State<Arc<AppState>>;

fn observation_not_found(id: &str) -> FhirError {
    FhirError::at(
        ErrorKind::NotFound,
        "Observation.id",
        format!(
            "Observation/{} is not known",
            id.chars().take(64).collect::<String>()
        ),
    )
}

/// A stored reading with its version as FHIR: `meta.versionId`, and the ETag and
/// Last-Modified (when the hub received this version) headers.
pub(crate) fn versioned(status: StatusCode, version: u64, s: &StoredReading) -> Response {
    let mut json = stored_json(s);
    json["meta"]["versionId"] = Value::String(version.to_string());
    let mut r = fhir(status, &json);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&osler_fhir::registry::etag(version)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&crate::reply::http_date(s.reading.received_ms)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    r
}

pub(crate) async fn read(
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rid = ReadingId::parse(&id).ok_or_else(|| observation_not_found(&id))?;
    let store = state.store.clone();
    let versions = if rid.is_summary() {
        // A window summary has one version; it is never corrected.
        let s = tokio::task::spawn_blocking(move || store.get(rid)).await??;
        s.map(|s| vec![(1, s)]).unwrap_or_default()
    } else {
        tokio::task::spawn_blocking(move || store.reading_versions(rid)).await??
    };
    let Some((v, s)) = versions
        .into_iter()
        .next()
        .filter(|(_, s)| sees(&caller, s.reading.patient.as_str()))
    else {
        return Err(observation_not_found(&id).into());
    };
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .and_then(osler_fhir::registry::parse_etag);
    if known == Some(v) {
        return Ok(crate::registry_api::not_modified(v));
    }
    Ok(versioned(StatusCode::OK, v, &s))
}

/// `PUT /fhir/Observation/{id}`: a correction of the stored reading. The body must describe
/// the same reading (patient, code, device, time: what identifies it); a changed value needs
/// status amended, corrected or entered-in-error. The previous version stays readable.
pub(crate) async fn correct(
    State(state): St,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let received = now_ms();
    let rid = ReadingId::parse(&id)
        .filter(|r| !r.is_summary())
        .ok_or_else(|| observation_not_found(&id))?;
    let json = read_json(&state, &headers, body).await?;
    if let Some(body_id) = json.get("id")
        && body_id.as_str() != Some(id.as_str())
    {
        return Err(FhirError::at(
            ErrorKind::Malformed,
            "Observation.id",
            "the id in the body differs from the id in the URL",
        )
        .into());
    }
    let reading = parse_observation(&json, received)?
        .validate(received)
        .map_err(invalid_reading)?;
    let store = state.store.clone();
    let current = tokio::task::spawn_blocking(move || store.get(rid))
        .await??
        .filter(|c| sees(&caller, c.reading.patient.as_str()));
    let Some(current) = current else {
        return Err(FhirError::at(
            ErrorKind::NotFound,
            "Observation.id",
            "no reading is stored under this id; create a reading with POST /fhir/Observation",
        )
        .into());
    };
    let was = &current.reading;
    let same_identity = was.patient == reading.patient
        && was.metric == reading.metric
        && was.device == reading.device
        && was.taken.utc_ms == reading.taken.utc_ms;
    if !same_identity {
        return Err(FhirError::at(
            ErrorKind::Conflict,
            "Observation",
            "a correction keeps what identifies the reading (subject, code, device, effectiveDateTime); \
             a different reading is a new Observation",
        )
        .into());
    }
    if was.value != reading.value && !reading.status.is_correction() {
        return Err(FhirError::at(
            ErrorKind::Invalid,
            "Observation.status",
            "a changed value needs status amended or corrected (or entered-in-error), so that readers can tell it was changed",
        )
        .into());
    }
    let if_match = crate::registry_api::if_match(&headers)?;
    let op = WriteOp {
        reading,
        if_none_exist: None,
        by_device: false,
        correction: Some(Correction { if_match }),
    };
    let entry = audit.entry_about(Some(current.reading.patient.as_str()));
    let result = state
        .alerts
        .write(&state.store, vec![op], false, None, vec![entry])
        .await?;
    // Corrected, its entry is in the commit; refused, the guard records the refusal.
    Ok(match correction_answer(&state, rid, result).await {
        Ok(r) => audited(r),
        Err(e) => e.into_response(),
    })
}

async fn correction_answer(
    state: &AppState,
    rid: ReadingId,
    result: osler_store::WriteResult,
) -> Result<Response, ApiError> {
    match result.outcomes.into_iter().next() {
        Some(WriteOutcome::Corrected(_) | WriteOutcome::Existing(_)) => {
            let store = state.store.clone();
            let versions =
                tokio::task::spawn_blocking(move || store.reading_versions(rid)).await??;
            let Some((v, s)) = versions.into_iter().next() else {
                return Err(
                    FhirError::new(ErrorKind::Internal, "the corrected reading is gone").into(),
                );
            };
            Ok(versioned(StatusCode::OK, v, &s))
        }
        Some(o) => Err(outcome_error(&o)
            .unwrap_or_else(|| FhirError::new(ErrorKind::Internal, "unknown outcome"))
            .into()),
        None => Err(FhirError::new(ErrorKind::Internal, "the store answered no outcome").into()),
    }
}

/// `GET /fhir/Provenance?target=Observation/{id}`: the signed gateway batch a reading came
/// in (none for a reading posted through FHIR: its record is the audit log's).
pub(crate) async fn provenance(
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let params = osler_fhir::parse_query(raw.as_deref().unwrap_or(""))?;
    let mut target = None;
    for (k, v) in &params {
        match k.as_str() {
            "target" => target = Some(v.clone()),
            _ => {
                return Err(FhirError::at(
                    ErrorKind::BadParameter,
                    k.clone(),
                    "Provenance is searched by target=Observation/{id}",
                )
                .into());
            }
        }
    }
    let target = target.ok_or_else(|| {
        FhirError::new(
            ErrorKind::BadParameter,
            "target=Observation/{id} is required",
        )
    })?;
    let id = target
        .strip_prefix("Observation/")
        .unwrap_or(&target)
        .to_owned();
    let base = base_url(&state, &headers);
    let store = state.store.clone();
    let found = match ReadingId::parse(&id) {
        Some(rid) => {
            tokio::task::spawn_blocking(move || {
                let r = store.get(rid)?;
                let p = store.provenance(rid)?;
                Ok::<_, osler_store::StoreError>(r.map(|r| (r, p)))
            })
            .await??
        }
        None => None,
    };
    // A reading outside the caller's compartment has no provenance for them either.
    let found = found.filter(|(r, _)| sees(&caller, r.reading.patient.as_str()));
    let entries: Vec<(String, Value)> = found
        .into_iter()
        .flat_map(|(_, ps)| ps)
        .map(|p| {
            let lane = osler_wire::Lane::from_u8(p.lane).map_or("lane", |l| match l {
                osler_wire::Lane::Readings => "readings",
                osler_wire::Lane::Alerts => "alerts",
                osler_wire::Lane::Summaries => "summaries",
                osler_wire::Lane::Emergencies => "emergencies",
            });
            let v = osler_fhir::audit::provenance(&osler_fhir::audit::BatchProvenance {
                target: &format!("Observation/{id}"),
                gateway: &p.gateway,
                lane,
                first_seq: p.first_seq,
                last_seq: p.last_seq,
                received_ms: p.received_ms,
                signature: &p.signature,
            });
            (
                format!("{base}/Provenance/{}", v["id"].as_str().unwrap_or("")),
                v,
            )
        })
        .collect();
    let n = entries.len() as u64;
    Ok(fhir(
        StatusCode::OK,
        &osler_fhir::bundle::searchset(
            Some(n),
            &[("self", format!("{base}/Provenance?target=Observation/{id}"))],
            entries,
        ),
    ))
}

/// `GET /fhir/Observation/{id}/_history`: every version, newest first.
pub(crate) async fn history(
    State(state): St,
    Extension(caller): Cx,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rid = ReadingId::parse(&id).ok_or_else(|| observation_not_found(&id))?;
    let store = state.store.clone();
    let versions = tokio::task::spawn_blocking(move || store.reading_versions(rid)).await??;
    if versions
        .first()
        .is_none_or(|(_, s)| !sees(&caller, s.reading.patient.as_str()))
    {
        return Err(observation_not_found(&id).into());
    }
    let base = base_url(&state, &headers);
    let n = versions.len();
    let entries: Vec<Value> = versions
        .iter()
        .map(|(v, s)| {
            let mut json = stored_json(s);
            json["meta"]["versionId"] = Value::String(v.to_string());
            serde_json::json!({
                "fullUrl": format!("{base}/Observation/{id}"),
                "resource": json,
                "request": {
                    "method": if *v == 1 { "POST" } else { "PUT" },
                    "url": if *v == 1 { "Observation".to_owned() } else { format!("Observation/{id}") },
                },
                "response": {
                    "status": if *v == 1 { "201 Created" } else { "200 OK" },
                    "etag": osler_fhir::registry::etag(*v),
                },
            })
        })
        .collect();
    Ok(fhir(
        StatusCode::OK,
        &serde_json::json!({"resourceType": "Bundle", "type": "history", "total": n, "entry": entries}),
    ))
}

pub(crate) async fn vread(
    State(state): St,
    Extension(caller): Cx,
    Path((id, vid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let rid = ReadingId::parse(&id).ok_or_else(|| observation_not_found(&id))?;
    let want: u64 = vid.parse().map_err(|_| observation_not_found(&id))?;
    let store = state.store.clone();
    let versions = tokio::task::spawn_blocking(move || store.reading_versions(rid)).await??;
    let visible = versions
        .first()
        .is_some_and(|(_, s)| sees(&caller, s.reading.patient.as_str()));
    match versions.into_iter().find(|(v, _)| *v == want && visible) {
        Some((v, s)) => Ok(versioned(StatusCode::OK, v, &s)),
        None => Err(FhirError::new(
            ErrorKind::NotFound,
            format!(
                "Observation/{} has no version {want}",
                id.chars().take(64).collect::<String>()
            ),
        )
        .into()),
    }
}
