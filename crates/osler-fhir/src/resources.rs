//! The small resources: CapabilityStatement, Patient, Device.

use osler_core::Metric;
use serde_json::{Value as Json, json};

/// The CapabilityStatement: what this server really supports, and nothing more.
/// `date` is the server's start time, as an RFC 3339 date-time.
pub fn capability_statement(version: &str, date: &str, base_url: &str) -> Json {
    let search =
        |name: &str, ty: &str, doc: &str| json!({"name": name, "type": ty, "documentation": doc});
    let codes: Vec<String> = Metric::all()
        .map(|m| format!("{} ({})", m.info().loinc.code, m.info().key))
        .collect();
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
                Searches need patient (or subject) or identifier and are paged with Bundle.link next. \
                Unknown search parameters are refused (strict handling). Dates without a zone are read as UTC.",
            "resource": [
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
                        {"code": "create"},
                        {"code": "search-type"},
                    ],
                    "versioning": "no-version",
                    "readHistory": false,
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
                        search("_summary", "token", "count returns only the total"),
                    ],
                    "operation": [{
                        "name": "lastn",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
                    }],
                },
                {
                    "type": "Patient",
                    "documentation": "Patients named by readings' subjects",
                    "interaction": [{"code": "read"}],
                },
                {
                    "type": "Device",
                    "documentation": "Devices named by readings",
                    "interaction": [{"code": "read"}],
                },
            ],
            "interaction": [
                {"code": "transaction", "documentation": "POST Observations, all or nothing"},
                {"code": "batch", "documentation": "POST Observations, each entry on its own"},
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
