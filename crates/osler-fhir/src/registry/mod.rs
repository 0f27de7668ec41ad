//! The registry's resources as FHIR R4 JSON: checking what a client writes (and what it yields
//! for search, the references it makes, the assignment a DeviceUseStatement makes), writing a
//! stored version back out with its `id` and `meta`, the history Bundle, and strict parsing of
//! registry search parameters into an [`osler_registry::ResourceQuery`].

mod check;
mod kinds;
mod search;

use osler_core::Timestamp;
use osler_registry::{DeleteAs, Kind, ResourceWrite, StoredResource, WriteMode};
use serde_json::{Map, Value as Json, json};

pub use search::{RegistrySearch, parse_registry_search};

use crate::{ErrorKind, FhirError};

/// Checks a resource a client sent and prepares it for the store: `id` is the resource's id
/// (from the URL for an update, chosen by the server for a create). `meta.versionId` and
/// `meta.lastUpdated` are the server's and are dropped; an `id` in the body must match.
pub fn prepare(
    kind: Kind,
    v: &Json,
    id: &str,
    mode: WriteMode,
    if_match: Option<u64>,
    now_ms: i64,
) -> Result<ResourceWrite, FhirError> {
    let o = v.as_object().ok_or_else(|| {
        FhirError::new(
            ErrorKind::Malformed,
            format!("a {kind} must be a JSON object"),
        )
    })?;
    match o.get("resourceType").and_then(Json::as_str) {
        Some(t) if t == kind.as_str() => {}
        Some(t) => {
            return Err(FhirError::at(
                ErrorKind::Invalid,
                "resourceType",
                format!(
                    "this endpoint takes a {kind}, not a {}",
                    t.chars().take(40).collect::<String>()
                ),
            ));
        }
        None => {
            return Err(FhirError::at(
                ErrorKind::Malformed,
                "resourceType",
                format!("resourceType is required (\"{kind}\")"),
            ));
        }
    }
    if matches!(mode, WriteMode::Update)
        && let Some(body_id) = o.get("id")
        && body_id.as_str() != Some(id)
    {
        return Err(FhirError::at(
            ErrorKind::Malformed,
            format!("{kind}.id"),
            "the id in the body differs from the id in the URL",
        ));
    }
    let mut body: Map<String, Json> = o.clone();
    body.shift_remove("id");
    if let Some(meta) = body.get_mut("meta") {
        let m = meta.as_object_mut().ok_or_else(|| {
            FhirError::at(
                ErrorKind::Invalid,
                format!("{kind}.meta"),
                "must be an object",
            )
        })?;
        m.shift_remove("versionId");
        m.shift_remove("lastUpdated");
        check::only_known(
            m,
            &format!("{kind}.meta"),
            &["source", "profile", "security", "tag"],
        )?;
        if m.is_empty() {
            body.shift_remove("meta");
        }
    }
    if let Some(t) = body.get("text") {
        let to = check::object(t, &format!("{kind}.text"))?;
        check::only_known(to, &format!("{kind}.text"), &["status", "div"])?;
    }
    let mut found = check::Found::default();
    let assignment = kinds::check(kind, &body, id, now_ms, &mut found)?;
    found.terms.sort();
    found.terms.dedup();
    Ok(ResourceWrite {
        kind,
        id: id.to_owned(),
        mode,
        body: Json::Object(body).to_string(),
        terms: found.terms,
        refs: found.refs,
        unique: found.unique,
        if_match,
        assignment,
        now_ms,
    })
}

/// The minimal Patient that stands for one known only from readings (`{"active": true}`), as the
/// store keeps it until the patient is enrolled under the same id.
pub fn patient_stub() -> osler_registry::Stub {
    let json = json!({"resourceType": "Patient", "active": true});
    // A constant the checks accept (a test below proves it); a failure would be a bug here.
    let w = prepare(Kind::Patient, &json, "stub", WriteMode::Update, None, 0)
        .expect("the minimal Patient is valid");
    osler_registry::Stub {
        body: w.body,
        terms: w.terms,
    }
}

/// A stored version as the client sees it: `resourceType`, `id` and `meta` first.
pub fn resource_json(s: &StoredResource) -> Json {
    let mut out = Map::new();
    out.insert("resourceType".into(), json!(s.kind.as_str()));
    out.insert("id".into(), json!(s.id));
    let body: Map<String, Json> = serde_json::from_str(&s.body).unwrap_or_default();
    let mut meta = Map::new();
    meta.insert("versionId".into(), json!(s.version.to_string()));
    meta.insert("lastUpdated".into(), json!(last_updated(s.updated_ms)));
    if let Some(Json::Object(m)) = body.get("meta") {
        for (k, v) in m {
            meta.insert(k.clone(), v.clone());
        }
    }
    out.insert("meta".into(), Json::Object(meta));
    for (k, v) in body {
        if k != "resourceType" && k != "meta" {
            out.insert(k, v);
        }
    }
    Json::Object(out)
}

/// `meta.lastUpdated` (an instant, UTC).
pub fn last_updated(ms: i64) -> String {
    Timestamp::utc(ms).to_string()
}

/// The weak ETag of a version: `W/"3"`.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// The version an `If-Match` (or `If-None-Match`) header names: `W/"3"`, `"3"` or `3`.
pub fn parse_etag(header: &str) -> Option<u64> {
    let h = header.trim();
    let h = h.strip_prefix("W/").unwrap_or(h);
    let h = h
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(h);
    h.parse().ok()
}

/// The resource as a FHIR delete leaves it: kept, marked inactive (Patient, Practitioner,
/// Organization: `active` false) or entered in error (CareTeam, Device, DeviceUseStatement:
/// `status`), so that nothing clinical is erased and the history shows who was who.
pub fn deleted(s: &StoredResource) -> Json {
    let mut v = resource_json(s);
    match s.kind.delete_as() {
        DeleteAs::Inactive => v["active"] = json!(false),
        DeleteAs::EnteredInError => v["status"] = json!("entered-in-error"),
    }
    v
}

/// Whether a version is what a delete leaves.
pub fn is_deleted(s: &StoredResource) -> bool {
    let v: Json = serde_json::from_str(&s.body).unwrap_or_default();
    match s.kind.delete_as() {
        DeleteAs::Inactive => v["active"] == json!(false),
        DeleteAs::EnteredInError => v["status"] == json!("entered-in-error"),
    }
}

/// A `history` Bundle of a resource's versions, newest first.
pub fn history_bundle(base: &str, versions: &[StoredResource]) -> Json {
    let entries: Vec<Json> = versions
        .iter()
        .map(|s| {
            let url = format!("{}/{}", s.kind, s.id);
            json!({
                "fullUrl": format!("{base}/{url}"),
                "resource": resource_json(s),
                "request": {
                    "method": if s.version == 1 { "POST" } else { "PUT" },
                    "url": if s.version == 1 { s.kind.as_str().to_owned() } else { url },
                },
                "response": {
                    "status": if s.version == 1 { "201 Created" } else { "200 OK" },
                    "etag": etag(s.version),
                    "lastModified": last_updated(s.updated_ms),
                },
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": versions.len(),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_patient_is_valid_and_searchable_as_active() {
        let stub = patient_stub();
        assert_eq!(stub.body, r#"{"resourceType":"Patient","active":true}"#);
        assert!(
            stub.terms
                .iter()
                .any(|t| t.param == "active" && t.value == "true")
        );
    }
}
