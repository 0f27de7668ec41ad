//! The small resources: CapabilityStatement, the minimal Patient and Device known only from
//! readings, and alerts as Flag.

use osler_core::Metric;
use osler_registry::{Kind, ParamType};
use serde_json::{Value as Json, json};

/// A registry kind as the CapabilityStatement describes it.
fn registry_capability(kind: Kind) -> Json {
    let ty = |t: ParamType| match t {
        ParamType::String => "string",
        ParamType::Token => "token",
        ParamType::Reference => "reference",
        ParamType::Date => "date",
    };
    let mut params: Vec<Json> = vec![
        json!({"name": "_id", "type": "token", "documentation": "The id; comma for any of several"}),
        json!({"name": "_lastUpdated", "type": "date", "documentation": "Prefixes eq, ge, gt, le, lt"}),
    ];
    params.extend(
        kind.params()
            .iter()
            .map(|p| json!({"name": p.name, "type": ty(p.ty), "documentation": p.doc})),
    );
    params.push(json!({"name": "_count", "type": "number", "documentation": "Page size, 1-1000 (default 50); 0 returns only the total"}));
    params.push(json!({"name": "_sort", "type": "string", "documentation": "_id, _lastUpdated or a string, token or date parameter; - for descending; comma for several"}));
    let delete = match kind.delete_as() {
        osler_registry::DeleteAs::Inactive => {
            "DELETE sets active to false; the resource and its history stay"
        }
        osler_registry::DeleteAs::EnteredInError => {
            "DELETE sets status to entered-in-error; the resource and its history stay"
        }
    };
    let mut cap = json!({
        "type": kind.as_str(),
        "documentation": format!("Versioned; unknown elements are refused rather than dropped. {delete}."),
        "interaction": [
            {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"},
            {"code": "history-instance"}, {"code": "create"}, {"code": "search-type"},
        ],
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": true,
        "conditionalCreate": true,
        "conditionalRead": "not-supported",
        "conditionalUpdate": true,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    });
    if kind == Kind::Patient {
        cap["operation"] = json!([{
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            "documentation": "Paged: the Patient, its care teams, devices and their use, the practitioners and organisations they name, its Flags, then its Observations (start, end, _count)",
        }]);
    }
    cap
}

/// The CapabilityStatement: what this server really supports, and nothing more.
/// `date` is the server's start time, as an RFC 3339 date-time.
pub fn capability_statement(version: &str, date: &str, base_url: &str) -> Json {
    let search =
        |name: &str, ty: &str, doc: &str| json!({"name": name, "type": ty, "documentation": doc});
    let codes: Vec<String> = Metric::all()
        .map(|m| format!("{} ({})", m.info().loinc.code, m.info().key))
        .collect();
    let mut resources: Vec<Json> = match json!([
                {
                    "type": "Observation",
                    "profile": "http://hl7.org/fhir/StructureDefinition/Observation",
                    "supportedProfile": [
                        "http://hl7.org/fhir/StructureDefinition/vitalsigns",
                        "http://hl7.org/fhir/StructureDefinition/heartrate",
                        "http://hl7.org/fhir/StructureDefinition/oxygensat",
                        "http://hl7.org/fhir/StructureDefinition/bp",
                        "http://hl7.org/fhir/StructureDefinition/bodyweight",
                        "http://hl7.org/fhir/StructureDefinition/bodytemp",
                        "http://hl7.org/fhir/StructureDefinition/resprate",
                    ],
                    "documentation": format!("Supported codes (LOINC): {}", codes.join(", ")),
                    "interaction": [
                        {"code": "read"},
                        {"code": "vread"},
                        {"code": "create"},
                        {"code": "update", "documentation": "A correction: same subject, code, device and time; a changed value needs status amended, corrected or entered-in-error; the previous version is kept"},
                        {"code": "history-instance"},
                        {"code": "search-type"},
                    ],
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": false,
                    "conditionalCreate": true,
                    "conditionalUpdate": false,
                    "conditionalDelete": "not-supported",
                    "searchParam": [
                        search("patient", "reference", "The patient: id, Patient/id or a URL ending in Patient/id"),
                        search("subject", "reference", "Same as patient"),
                        search("code", "token", "LOINC or MDC code, system|code or code; comma for any of several"),
                        search("category", "token", "vital-signs, laboratory or activity"),
                        search("date", "date", "Time taken; prefixes eq, ge, gt, le, lt; may repeat"),
                        search("device", "reference", "The device: id or Device/id"),
                        search("identifier", "token", "system|value"),
                        search("_count", "number", "Page size, 1-1000 (default 50); 0 returns only the total"),
                        search("_sort", "string", "date (default) or -date"),
                        search("_summary", "token", "count returns only the total; true, text and data return subsets"),
                        search("_elements", "string", "Only these top-level elements (and the mandatory ones), tagged SUBSETTED"),
                    ],
                    "searchInclude": ["Observation:patient", "Observation:subject", "Observation:device"],
                    "operation": [{
                        "name": "lastn",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
                    }],
                },
                {
                    "type": "Flag",
                    "documentation": "Alerts: active while open, with severity, value and threshold in extensions. Searches are paged newest first (Bundle.link next) and carry no total.",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [
                        search("patient", "reference", "The patient"),
                        search("subject", "reference", "Same as patient"),
                        search("status", "token", "active or inactive"),
                        search("_count", "number", "Page size, 1-1000 (default 50)"),
                    ],
                },
    ]) {
        Json::Array(a) => a,
        _ => Vec::new(),
    };
    resources.extend(Kind::ALL.into_iter().map(registry_capability));
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Osler",
        "kind": "instance",
        "software": { "name": "Osler", "version": version },
        "implementation": {
            "description": "Osler hub: continuous physiological monitoring readings as FHIR R4 Observations",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Observations are readings from monitoring devices, one per metric and instant. \
                Observation searches need patient (or subject) or identifier; every search is paged with Bundle.link next. \
                Unknown search parameters are refused (strict handling). Dates without a zone are read as UTC.",
            "resource": resources,
            "interaction": [
                {"code": "transaction", "documentation": "POST Observations; POST, PUT Type/id or conditional PUT of registry resources; all or nothing"},
                {"code": "batch", "documentation": "The writes of a transaction, and GET of any read or search, each entry on its own"},
            ],
        }],
    })
}

/// A Patient known only by its id (Osler holds no demographics).
pub fn patient(id: &str) -> Json {
    json!({ "resourceType": "Patient", "id": id, "active": true })
}

/// A Device known only by its id.
pub fn device(id: &str) -> Json {
    json!({ "resourceType": "Device", "id": id, "status": "active" })
}

/// An alert as a FHIR `Flag`: active while the alert is open, its period from the reading that
/// raised it to the one that resolved it. Severity and the reading's value travel in
/// extensions, because Flag has no element for them.
pub struct FlagInput<'a> {
    pub id: i64,
    pub patient: &'a str,
    pub rule: &'a str,
    pub title: &'a str,
    pub severity: &'a str,
    pub active: bool,
    pub start: &'a str,
    pub end: Option<&'a str>,
    pub value: f64,
    pub threshold: f64,
}

/// The extension URL base for Osler's alert details.
pub const ALERT_EXTENSION: &str = "https://osler.dev/fhir/StructureDefinition/alert";

pub fn flag(f: &FlagInput<'_>) -> Json {
    let mut period = json!({ "start": f.start });
    if let Some(end) = f.end {
        period["end"] = json!(end);
    }
    json!({
        "resourceType": "Flag",
        "id": f.id.to_string(),
        "extension": [
            { "url": format!("{ALERT_EXTENSION}-severity"), "valueCode": f.severity },
            { "url": format!("{ALERT_EXTENSION}-value"), "valueDecimal": f.value },
            { "url": format!("{ALERT_EXTENSION}-threshold"), "valueDecimal": f.threshold },
        ],
        "status": if f.active { "active" } else { "inactive" },
        "category": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                "code": "clinical",
                "display": "Clinical",
            }],
        }],
        "code": {
            "coding": [{ "system": "https://osler.dev/alert-rule", "code": f.rule, "display": f.title }],
            "text": f.title,
        },
        "subject": { "reference": format!("Patient/{}", f.patient) },
        "period": period,
    })
}
