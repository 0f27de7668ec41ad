//! `GET /fhir/Patient/{id}/$everything`: a patient's record as a paged searchset. The first
//! page holds the Patient, the registry resources about them (care teams, device use
//! statements, the devices and the practitioners and organisations these name), their alerts
//! as Flags, and the first Observations; later pages hold Observations only, keyset-paged.
//! Parameters: `start`, `end` (Observations taken in that span), `_count` (Observations per
//! page, default 100, at most 1000), and the `_cursor` of a `next` link.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use osler_core::Id;
use osler_fhir::bundle::searchset;
use osler_fhir::{ErrorKind, FhirError, encode_query, parse_query};
use osler_registry::{Kind, ResourceQuery};
use osler_store::alerts::AlertFilter;
use osler_store::{Cursor, Query, Store, StoreError};
use serde_json::Value;

use crate::AppState;
use crate::access::Routes;
use crate::fhir_api::{base_url, next_link, stored_json};
use crate::registry_api::resource_or_stub;
use crate::reply::{ApiError, fhir};
use osler_auth::{Interaction, Policy};

pub(crate) fn routes() -> Routes {
    Routes::new().get(
        "/fhir/Patient/{id}/$everything",
        Policy::Resource("Patient", Interaction::Read),
        everything,
    )
}

struct Ask {
    from_ms: i64,
    to_ms: i64,
    count: usize,
    cursor: Option<Cursor>,
}

fn parse(params: &[(String, String)]) -> Result<Ask, FhirError> {
    let bad = |p: &str, m: String| FhirError::at(ErrorKind::BadParameter, p, m);
    let mut ask = Ask {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
        count: 100,
        cursor: None,
    };
    for (k, v) in params {
        match k.as_str() {
            "start" => {
                ask.from_ms = osler_core::time::parse_span(&v.replace(' ', "+"))
                    .map_err(|e| bad(k, e.to_string()))?
                    .start_ms
            }
            "end" => {
                ask.to_ms = osler_core::time::parse_span(&v.replace(' ', "+"))
                    .map_err(|e| bad(k, e.to_string()))?
                    .end_ms
            }
            "_count" => {
                ask.count = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| bad(k, "a number from 1 to 1000".into()))?
            }
            "_cursor" => {
                let (t, s) = v
                    .split_once('.')
                    .ok_or_else(|| bad(k, "use the next link as given".into()))?;
                ask.cursor = Some(Cursor {
                    t_ms: t
                        .parse()
                        .map_err(|_| bad(k, "use the next link as given".into()))?,
                    series: s
                        .parse()
                        .map_err(|_| bad(k, "use the next link as given".into()))?,
                });
            }
            "_format" | "_pretty" | "_summary" | "_elements" => {}
            other => return Err(bad(other, "supported: start, end, _count".into())),
        }
    }
    Ok(ask)
}

/// The registry resources about a patient, and what they reference, each once. Blocking.
fn about(store: &Store, patient: &str) -> Result<Vec<(Kind, String, Value)>, StoreError> {
    let reference = format!("Patient/{patient}");
    let mut found: Vec<(Kind, String, Value)> = Vec::new();
    let mut named: Vec<(Kind, String)> = Vec::new();
    for kind in [Kind::CareTeam, Kind::DeviceUseStatement, Kind::Device] {
        let q = ResourceQuery::all(kind, 1000).with("patient", reference.clone());
        for r in store.search_resources(&q, false)?.0 {
            let json = osler_fhir::registry::resource_json(&r);
            for (path, to) in [("device", Kind::Device)] {
                if let Some(id) = json[path]["reference"]
                    .as_str()
                    .and_then(|x| x.strip_prefix("Device/"))
                {
                    named.push((to, id.to_owned()));
                }
            }
            for p in json["participant"].as_array().into_iter().flatten() {
                if let Some((ty, id)) = p["member"]["reference"]
                    .as_str()
                    .and_then(|x| x.split_once('/'))
                    && let Some(k) = Kind::parse(ty)
                {
                    named.push((k, id.to_owned()));
                }
            }
            found.push((kind, r.id.clone(), json));
        }
    }
    if let Some(p) = store.resource(Kind::Patient, patient)? {
        let json = osler_fhir::registry::resource_json(&p);
        for r in json["generalPractitioner"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&json["managingOrganization"]))
        {
            if let Some((ty, id)) = r["reference"].as_str().and_then(|x| x.split_once('/'))
                && let Some(k) = Kind::parse(ty)
            {
                named.push((k, id.to_owned()));
            }
        }
    }
    named.sort();
    named.dedup();
    for (kind, id) in named {
        if kind == Kind::Patient && id == patient {
            continue;
        }
        if found.iter().any(|(k, i, _)| *k == kind && *i == id) {
            continue;
        }
        if let Some(json) = resource_or_stub(store, kind, &id)? {
            found.push((kind, id, json));
        }
    }
    Ok(found)
}

async fn everything(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): crate::access::Cx,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = parse_query(raw.as_deref().unwrap_or(""))?;
    let ask = parse(&params)?;
    let Some(patient) = Id::parse(&id).filter(|p| crate::access::sees(&caller, p.as_str())) else {
        return Err(FhirError::new(ErrorKind::NotFound, "Patient is not known").into());
    };
    let base = base_url(&state, &headers);
    let store = state.store.clone();
    let first = ask.cursor.is_none();
    let (head, page) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let mut head: Vec<(String, Value)> = Vec::new();
        if first {
            let Some(p) = resource_or_stub(&store, Kind::Patient, patient.as_str())? else {
                return Ok(None);
            };
            head.push((format!("Patient/{patient}"), p));
            for (kind, rid, json) in about(&store, patient.as_str())? {
                head.push((format!("{kind}/{rid}"), json));
            }
            let flags = store.alerts(&AlertFilter {
                patient: Some(patient.to_string()),
                limit: 1000,
                ..AlertFilter::default()
            })?;
            for a in &flags {
                head.push((format!("Flag/{}", a.id), crate::alerts::flag_json(a)));
            }
        }
        let q = Query {
            from_ms: ask.from_ms,
            to_ms: ask.to_ms,
            after: ask.cursor,
            limit: ask.count,
            ..Query::patient(patient)
        };
        Ok(Some((head, store.search(&q)?)))
    })
    .await??
    .ok_or_else(|| {
        FhirError::at(
            ErrorKind::NotFound,
            "Patient.id",
            format!(
                "Patient/{} is not known",
                id.chars().take(64).collect::<String>()
            ),
        )
    })?;
    // Only the types the caller's scopes and role let them read (a token for Patient and
    // Observation gets no Flags or CareTeams).
    let may = |ty: &str| caller.may(ty, osler_auth::Interaction::Read).is_ok();
    let mut entries: Vec<(String, Value)> = head
        .into_iter()
        .filter(|(u, _)| {
            u.split('/')
                .next()
                .is_some_and(|ty| ty == "Patient" || may(ty))
        })
        .map(|(u, j)| (format!("{base}/{u}"), j))
        .collect();
    if may("Observation") {
        entries.extend(
            page.readings
                .iter()
                .map(|s| (format!("{base}/Observation/{}", s.id), stored_json(s))),
        );
    }
    let path = format!("{base}/Patient/{id}/$everything");
    let mut links = vec![("self", format!("{path}?{}", encode_query(&params)))];
    if let Some(c) = page.next {
        links.push(("next", next_link(&path, &params, c)));
    }
    Ok(fhir(StatusCode::OK, &searchset(None, &links, entries)))
}
