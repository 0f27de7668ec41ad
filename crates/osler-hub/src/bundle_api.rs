//! `POST /fhir`: transaction and batch Bundles. Entries create Observations, write registry
//! resources (POST, PUT by id, conditional PUT) and, in a batch, read (GET). All the writes of
//! a Bundle are one store job: a transaction is stored whole or not at all (a conflicting
//! reading or a refused resource undoes it, and the answer names the entry); in a batch each
//! entry fails alone. A batch's reads run after its writes, through the hub's own routes.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::Response;
use osler_fhir::bundle::{response_bundle, response_entry};
use osler_fhir::registry::{etag, parse_registry_search, prepare, resource_json};
use osler_fhir::{
    BundleEntry, BundleKind, ErrorKind, FhirError, ResourceEntry, observation_json, parse_bundle,
};
use osler_registry::{ResourceWrite, WriteMode};
use osler_store::{Correction, WriteOp, WriteOutcome};
use serde_json::Value;

use crate::access::{Ax, Cx, audited, sees};
use crate::fhir_api::{
    base_url, in_entry, invalid_reading, location, outcome_error, prefers, read_json, status_line,
};
use crate::registry_api::{narrow, new_id, refusal, visible};
use crate::reply::{ApiError, fhir};
use crate::{AppState, now_ms};
use osler_auth::{Caller, Interaction};

/// What became of an entry before the store saw it.
enum Slot {
    Op(usize),
    Resource(usize),
    Read(String),
    Refused(FhirError),
}

/// A registry entry made ready for the store; errors located inside the entry.
fn prepare_entry(e: ResourceEntry, i: usize, now: i64) -> Result<ResourceWrite, FhirError> {
    let kind = e.kind;
    let if_match = match &e.if_match {
        None => None,
        Some(t) => Some(osler_fhir::registry::parse_etag(t).ok_or_else(|| {
            FhirError::at(
                ErrorKind::BadParameter,
                format!("Bundle.entry[{i}].request.ifMatch"),
                "must name a version: W/\"3\"",
            )
        })?),
    };
    let search = |q: &[(String, String)], what: &str| {
        parse_registry_search(kind, q)
            .map(|s| s.query)
            .map_err(|err| err.within(&format!("Bundle.entry[{i}].request.{what}")))
    };
    let (id, mode) = match (&e.id, &e.condition, &e.if_none_exist) {
        (Some(id), _, _) => (id.clone(), WriteMode::Update),
        (None, Some(q), _) => {
            let id = e
                .resource
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            (
                id.map_or_else(new_id, Ok)?,
                WriteMode::UpdateMatching(search(q, "url")?),
            )
        }
        (None, None, Some(q)) => (
            new_id()?,
            WriteMode::CreateIfNoneExist(search(q, "ifNoneExist")?),
        ),
        (None, None, None) => (new_id()?, WriteMode::Create),
    };
    if osler_core::Id::parse(&id).is_none() {
        return Err(FhirError::at(
            ErrorKind::Invalid,
            format!("Bundle.entry[{i}].request.url"),
            "an id is 1-64 letters, digits, '-' or '.'",
        ));
    }
    prepare(kind, &e.resource, &id, mode, if_match, now).map_err(|e| in_entry(e, i, kind.as_str()))
}

/// Why the caller may not write this entry, if they may not: each entry is authorised on its
/// own (scope ∩ role ∩ compartment), before anything is stored.
fn entry_refusal(
    caller: &Caller,
    i: usize,
    w: &mut ResourceWrite,
    body: &Value,
) -> Option<FhirError> {
    let interaction = match w.mode {
        WriteMode::Create | WriteMode::CreateIfNoneExist(_) => Interaction::Create,
        WriteMode::Update | WriteMode::UpdateMatching(_) => Interaction::Update,
    };
    let at = |msg: String| {
        Some(FhirError::at(
            ErrorKind::Forbidden,
            format!("Bundle.entry[{i}]"),
            msg,
        ))
    };
    if let Err(d) = caller.may(w.kind.as_str(), interaction) {
        return at(d.to_string());
    }
    let narrowed = match &mut w.mode {
        WriteMode::UpdateMatching(q) | WriteMode::CreateIfNoneExist(q) => narrow(caller, q),
        _ => true,
    };
    if !narrowed || !visible(caller, w.kind, &w.id, body) {
        return at(format!(
            "this {} names a patient outside the caller's compartment",
            w.kind
        ));
    }
    None
}

pub(crate) async fn transaction_or_batch(
    State(state): State<Arc<AppState>>,
    Extension(caller): Cx,
    Extension(audit): Ax,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = now_ms();
    let mut json = read_json(&state, &headers, body).await?;
    // Entries that name each other by urn:uuid get their ids before anything is checked.
    osler_fhir::bundle::resolve_placeholders(&mut json, new_id)?;
    let bundle = parse_bundle(&json, received)?;
    let base = base_url(&state, &headers);
    let with_resources = prefers(&headers, "representation") == Some(true);
    let (mut ops, mut writes, mut slots) = (Vec::new(), Vec::new(), Vec::new());
    for (i, entry) in bundle.entries.into_iter().enumerate() {
        let slot = match entry {
            Err(e) => Slot::Refused(e),
            Ok(BundleEntry::Read { url }) => Slot::Read(url),
            Ok(BundleEntry::Create(_))
                if caller.may("Observation", Interaction::Create).is_err() =>
            {
                Slot::Refused(FhirError::at(
                    ErrorKind::Forbidden,
                    format!("Bundle.entry[{i}]"),
                    "the token's scopes or the caller's role do not allow creating Observations",
                ))
            }
            Ok(BundleEntry::Create(req)) => match req.input.validate(received) {
                Ok(reading) if !sees(&caller, reading.patient.as_str()) => {
                    Slot::Refused(FhirError::at(
                        ErrorKind::Forbidden,
                        format!("Bundle.entry[{i}].resource.subject"),
                        "this patient is outside the caller's compartment",
                    ))
                }
                Ok(reading) => {
                    ops.push(WriteOp {
                        // An amended, corrected or entered-in-error reading replaces the one
                        // stored under its identity.
                        correction: reading.status.is_correction().then(Correction::default),
                        reading,
                        if_none_exist: req.if_none_exist,
                        by_device: false,
                    });
                    Slot::Op(ops.len() - 1)
                }
                Err(e) => Slot::Refused(in_entry(invalid_reading(e), i, "Observation")),
            },
            Ok(BundleEntry::Resource(r)) => {
                let body = r.resource.clone();
                match prepare_entry(r, i, received) {
                    Ok(mut w) => match entry_refusal(&caller, i, &mut w, &body) {
                        Some(e) => Slot::Refused(e),
                        None => {
                            writes.push(w);
                            Slot::Resource(writes.len() - 1)
                        }
                    },
                    Err(e) => Slot::Refused(e),
                }
            }
        };
        slots.push(slot);
    }
    let refused = slots
        .iter()
        .filter(|s| matches!(s, Slot::Refused(_)))
        .count() as u64;
    if refused > 0 {
        state.metrics.rejected("invalid", refused);
    }
    let atomic = bundle.kind == BundleKind::Transaction;
    if atomic && let Some(Slot::Refused(e)) = slots.iter().find(|s| matches!(s, Slot::Refused(_))) {
        let mut e = e.clone();
        e.message = format!("{} (transaction: nothing was stored)", e.message);
        return Err(e.into());
    }
    let kinds: Vec<_> = writes.iter().map(|w| w.kind).collect();
    let result = if ops.is_empty() && writes.is_empty() {
        None
    } else {
        Some(
            state
                .alerts
                .write_all(&state.store, ops, writes, atomic, vec![audit.entry()])
                .await?,
        )
    };
    // A job that stored something carries this request's audit entry; otherwise (nothing to
    // write, a transaction undone, every entry refused) the guard records the outcome.
    let committed = result.as_ref().is_some_and(|r| {
        r.committed
            && (r.outcomes.iter().any(WriteOutcome::is_ok)
                || r.resources.iter().any(|o| o.stored().is_some()))
    });
    let answer = answer_bundle(
        &state,
        &headers,
        bundle.kind,
        slots,
        kinds,
        result,
        &base,
        with_resources,
    )
    .await;
    Ok(match (answer, committed) {
        (Ok(r), true) => audited(r),
        (Err(e), true) => audited(e.into_response()),
        (Ok(r), false) => r,
        (Err(e), false) => e.into_response(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn answer_bundle(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    bundle_kind: BundleKind,
    slots: Vec<Slot>,
    kinds: Vec<osler_registry::Kind>,
    result: Option<osler_store::WriteResult>,
    base: &str,
    with_resources: bool,
) -> Result<Response, ApiError> {
    let atomic = bundle_kind == BundleKind::Transaction;
    if atomic
        && let Some(r) = &result
        && !r.committed
    {
        // The first entry that failed, named.
        let failed = slots.iter().enumerate().find_map(|(i, s)| match s {
            Slot::Op(k) => {
                outcome_error(&r.outcomes[*k]).map(|e| e.within(&format!("Bundle.entry[{i}]")))
            }
            Slot::Resource(k) => r.resources[*k]
                .stored()
                .is_none()
                .then(|| refused_in(kinds[*k], &r.resources[*k], i)),
            _ => None,
        });
        let mut e = failed.unwrap_or_else(|| {
            FhirError::new(ErrorKind::Internal, "transaction was not committed")
        });
        state.metrics.rejected("conflict", 1);
        e.message = format!("{} (transaction: nothing was stored)", e.message);
        return Err(e.into());
    }
    // The version of every reading found or corrected rather than created (a new one is 1).
    let found: Vec<osler_store::ReadingId> = result
        .iter()
        .flat_map(|r| &r.outcomes)
        .filter_map(|o| match o {
            WriteOutcome::Existing(s) | WriteOutcome::Corrected(s) => Some(s.id),
            _ => None,
        })
        .collect();
    let versions: std::collections::HashMap<osler_store::ReadingId, u64> = if found.is_empty() {
        Default::default()
    } else {
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || {
            found
                .into_iter()
                .map(|id| Ok((id, store.reading_versions(id)?.len().max(1) as u64)))
                .collect::<Result<_, osler_store::StoreError>>()
        })
        .await??
    };
    let mut entries = Vec::with_capacity(slots.len());
    let mut router: Option<axum::Router> = None;
    for (i, slot) in slots.into_iter().enumerate() {
        let entry = match slot {
            Slot::Refused(e) => failed_entry(&e),
            Slot::Op(k) => {
                let o = result.as_ref().map(|r| &r.outcomes[k]);
                match o {
                    Some(
                        o @ (WriteOutcome::Created(s)
                        | WriteOutcome::Existing(s)
                        | WriteOutcome::Corrected(s)),
                    ) => {
                        let status = if matches!(o, WriteOutcome::Created(_)) {
                            "201 Created"
                        } else {
                            "200 OK"
                        };
                        let version = versions.get(&s.id).copied().unwrap_or(1);
                        let resource = with_resources.then(|| {
                            let mut j = observation_json(&s.id.to_string(), &s.reading);
                            j["meta"]["versionId"] = Value::String(version.to_string());
                            j
                        });
                        let loc = format!("{}/_history/{version}", location(base, s));
                        let mut e = response_entry(status, Some(&loc), resource, None);
                        e["response"]["etag"] = Value::String(etag(version));
                        e
                    }
                    Some(failed) => {
                        state.metrics.rejected("conflict", 1);
                        failed_entry(&outcome_error(failed).unwrap_or_else(|| {
                            FhirError::new(ErrorKind::Internal, "unknown outcome")
                        }))
                    }
                    None => failed_entry(&FhirError::new(ErrorKind::Internal, "no outcome")),
                }
            }
            Slot::Resource(k) => match result.as_ref().map(|r| &r.resources[k]) {
                Some(o) => match o.stored() {
                    Some(s) => {
                        let status = if matches!(o, osler_registry::WriteOutcome::Created(_)) {
                            "201 Created"
                        } else {
                            "200 OK"
                        };
                        let loc = format!("{base}/{}/{}/_history/{}", s.kind, s.id, s.version);
                        let mut e = response_entry(
                            status,
                            Some(&loc),
                            with_resources.then(|| resource_json(s)),
                            None,
                        );
                        e["response"]["etag"] = Value::String(etag(s.version));
                        // An instant here, not the HTTP date of the Last-Modified header.
                        e["response"]["lastModified"] =
                            Value::String(osler_fhir::registry::last_updated(s.updated_ms));
                        e
                    }
                    None => failed_entry(&refused_in(kinds[k], o, i)),
                },
                None => failed_entry(&FhirError::new(ErrorKind::Internal, "no outcome")),
            },
            Slot::Read(url) => {
                // The routes, built once for all of the batch's reads.
                let routes = router.get_or_insert_with(|| crate::router(state.clone()));
                read_entry(routes.clone(), headers, url).await
            }
        };
        entries.push(entry);
    }
    Ok(fhir(StatusCode::OK, &response_bundle(bundle_kind, entries)))
}

/// The store's refusal of entry `i`'s resource, located inside the entry.
fn refused_in(kind: osler_registry::Kind, o: &osler_registry::WriteOutcome, i: usize) -> FhirError {
    let mut e = in_entry(refusal(kind, o), i, kind.as_str());
    e.expression
        .get_or_insert_with(|| format!("Bundle.entry[{i}]"));
    e
}

fn failed_entry(e: &FhirError) -> Value {
    response_entry(
        &status_line(e.kind.status()),
        None,
        None,
        Some(e.to_outcome()),
    )
}

/// A batch's GET entry, answered by the hub's own routes (every read and search the API
/// serves, with the same checks), as a response entry.
fn read_entry(
    routes: axum::Router,
    headers: &HeaderMap,
    url: String,
) -> std::pin::Pin<Box<dyn Future<Output = Value> + Send>> {
    // The read is made as the caller: their token goes with it, and the route's guard
    // authorises and audits it like any request.
    let pass = [header::HOST, header::AUTHORIZATION]
        .into_iter()
        .filter_map(|h| Some((h.clone(), headers.get(h)?.clone())))
        .collect();
    // Boxed: this handler's future would otherwise contain the router's, which contains it.
    Box::pin(read_entry_inner(routes, pass, url))
}

async fn read_entry_inner(
    routes: axum::Router,
    pass: Vec<(header::HeaderName, HeaderValue)>,
    url: String,
) -> Value {
    use tower::ServiceExt;
    let mut req = axum::http::Request::get(format!("/fhir/{url}"));
    for (k, v) in pass {
        req = req.header(k, v);
    }
    let failed = |e: FhirError| {
        response_entry(
            &status_line(e.kind.status()),
            None,
            None,
            Some(e.to_outcome()),
        )
    };
    let Ok(req) = req.body(Body::empty()) else {
        return failed(FhirError::at(
            ErrorKind::Invalid,
            "request.url",
            "not a URL",
        ));
    };
    let Ok(resp) = routes.oneshot(req).await;
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let header_of = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let etag = header_of(header::ETAG);
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return failed(FhirError::new(
            ErrorKind::Internal,
            "the read could not be completed",
        ));
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut response = serde_json::json!({ "status": status_line(status.as_u16()) });
    if let Some(e) = etag {
        response["etag"] = Value::String(e);
    }
    // response.lastModified is an instant: the resource's own meta.lastUpdated (the
    // Last-Modified header is an HTTP date).
    if let Some(m) = body["meta"]["lastUpdated"].as_str() {
        response["lastModified"] = Value::String(m.to_owned());
    }
    if status.is_success() {
        serde_json::json!({ "resource": body, "response": response })
    } else {
        response["outcome"] = body;
        serde_json::json!({ "response": response })
    }
}
