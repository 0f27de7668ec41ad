//! Audit entries as FHIR R4 AuditEvent, shaped after IHE Basic Audit Log Patterns (BALP):
//! RESTful interactions are `type` rest with the interaction as `subtype`
//! (http://hl7.org/fhir/restful-interaction), logins are DICOM 110114 "User Authentication"
//! with 110122 "Login", the patient is an entity with role 1 (Patient) and a search's query
//! rides in `entity.query` (base64). Osler's own events (tokens, gateways) carry a subtype
//! from Osler's code system.
//!
//! The stored entry has no `id`: its number in the log is its id, added when it is served.

use osler_audit::Record;
use serde_json::{Map, Value, json};

/// Osler's code system for events that FHIR and DICOM do not name.
pub const OSLER_EVENTS: &str = "https://osler.health/fhir/CodeSystem/audit-event";

const REST: [&str; 12] = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
    "search-system",
    "transaction",
    "batch",
];

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The AuditEvent for a record (without `id`).
pub fn audit_event(r: &Record) -> Value {
    let (ty, subtype) = if REST.contains(&r.event.as_str()) || r.event == "operation" {
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": r.event}),
        )
    } else if r.event == "login" {
        (
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"}),
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}),
        )
    } else {
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!({"system": OSLER_EVENTS, "code": r.event}),
        )
    };
    let mut agent = Map::new();
    if let Some(role) = &r.role {
        agent.insert("role".into(), json!([{"text": role}]));
    }
    agent.insert(
        "who".into(),
        json!({"identifier": {"system": "https://osler.health/fhir/NamingSystem/caller", "value": r.who}}),
    );
    agent.insert("requestor".into(), json!(true));
    if let Some(addr) = &r.network {
        // Network access point type 2: an IP address.
        agent.insert("network".into(), json!({"address": addr, "type": "2"}));
    }
    let mut entities = Vec::new();
    if let Some(p) = &r.patient {
        entities.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    if r.what.is_some() || r.query.is_some() {
        let mut e = Map::new();
        if let Some(w) = &r.what {
            if w.contains('/') && !w.starts_with('/') {
                e.insert("what".into(), json!({"reference": w}));
            } else {
                e.insert("what".into(), json!({"display": w}));
            }
        }
        e.insert(
            "type".into(),
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}),
        );
        if let Some(q) = &r.query {
            e.insert("query".into(), json!(base64(q.as_bytes())));
        }
        entities.push(Value::Object(e));
    }
    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    ev.insert("type".into(), ty);
    ev.insert("subtype".into(), json!([subtype]));
    ev.insert("action".into(), json!(r.action.code()));
    ev.insert(
        "recorded".into(),
        json!(osler_core::Timestamp::utc(r.recorded_ms).to_string()),
    );
    ev.insert("outcome".into(), json!(r.outcome.code()));
    if let Some(t) = &r.outcome_text {
        ev.insert("outcomeDesc".into(), json!(t));
    }
    ev.insert("agent".into(), json!([Value::Object(agent)]));
    ev.insert(
        "source".into(),
        json!({
            "observer": {"display": "Osler hub"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        }),
    );
    if !entities.is_empty() {
        ev.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(ev)
}

/// The stored text of an entry (compact JSON: the bytes the log hashes).
pub fn entry_text(r: &Record) -> String {
    audit_event(r).to_string()
}

/// A stored entry as served: with its number as `id`.
pub fn served(seq: u64, entry: &str) -> Option<Value> {
    let mut v: Value = serde_json::from_str(entry).ok()?;
    let obj = v.as_object_mut()?;
    let mut out = Map::new();
    out.insert("resourceType".into(), json!("AuditEvent"));
    out.insert("id".into(), json!(seq.to_string()));
    for (k, val) in std::mem::take(obj) {
        if k != "resourceType" {
            out.insert(k, val);
        }
    }
    Some(Value::Object(out))
}

/// What a Provenance says of a reading that a gateway's signed batch carried.
pub struct BatchProvenance<'a> {
    pub target: &'a str,
    pub gateway: &'a str,
    pub lane: &'a str,
    pub first_seq: u64,
    pub last_seq: u64,
    pub received_ms: i64,
    pub signature: &'a [u8],
}

/// A FHIR R4 Provenance for a reading from a gateway: the gateway as the agent that
/// assembled it, the batch as the source entity, and the gateway's Ed25519 signature over the
/// batch (ASTM E1762 "Source Signature").
pub fn provenance(p: &BatchProvenance<'_>) -> Value {
    let gateway = json!({"identifier": {"system": "https://osler.health/fhir/NamingSystem/gateway", "value": p.gateway}, "display": format!("gateway {}", p.gateway)});
    let when = osler_core::Timestamp::utc(p.received_ms).to_string();
    let batch = format!("{}/{}/{}-{}", p.gateway, p.lane, p.first_seq, p.last_seq);
    json!({
        "resourceType": "Provenance",
        "id": format!("{}-{}-{}", p.gateway, p.lane, p.first_seq).replace(['/', '_'], "-"),
        "target": [{"reference": p.target}],
        "recorded": when,
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler", "display": "Assembler"}]},
            "who": gateway,
        }],
        "entity": [{"role": "source", "what": {"identifier": {"system": "https://osler.health/fhir/NamingSystem/batch", "value": batch}, "display": format!("signed batch {batch}")}}],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14", "display": "Source Signature"}],
            "when": when,
            "who": gateway,
            "sigFormat": "application/octet-stream",
            "data": base64(p.signature),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use osler_audit::{Action, Outcome};

    #[test]
    fn a_search_names_its_patient_and_query() {
        let r = Record {
            recorded_ms: 0,
            event: "search-type".into(),
            action: Action::Execute,
            outcome: Outcome::Success,
            outcome_text: None,
            who: "tok-1".into(),
            role: Some("integration".into()),
            network: Some("127.0.0.1".into()),
            patient: Some("p1".into()),
            what: Some("Observation".into()),
            query: Some("patient=p1".into()),
        };
        let v = audit_event(&r);
        assert_eq!(v["subtype"][0]["code"], "search-type");
        assert_eq!(v["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(v["entity"][1]["query"], base64(b"patient=p1"));
        assert_eq!(served(7, &entry_text(&r)).unwrap()["id"], "7");
    }
}
