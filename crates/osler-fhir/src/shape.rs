//! What a client asked the response to look like, where FHIR defines it: `_summary`
//! (`true`, `text`, `data`, `count` is the search's own), `_elements`, and whether the client
//! takes JSON at all (`Accept`, `_format`). Applied to a finished response body, so that every
//! interaction honours them the same way.

use serde_json::{Map, Value as Json, json};

use crate::{ErrorKind, FhirError};

/// The elements FHIR R4 (4.0.1) marks as summary (isSummary) for the types Osler serves,
/// besides `id`, `meta` and `implicitRules` (as listed by the R4 StructureDefinitions; checked
/// against the fhir.resources models the tests validate with).
fn summary_elements(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Patient" => &[
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceasedBoolean",
            "deceasedDateTime",
            "address",
            "managingOrganization",
            "link",
        ],
        "Practitioner" => &[
            "identifier",
            "active",
            "name",
            "telecom",
            "address",
            "gender",
            "birthDate",
        ],
        "Organization" => &["identifier", "active", "type", "name", "partOf"],
        "CareTeam" => &[
            "identifier",
            "status",
            "category",
            "name",
            "subject",
            "encounter",
            "period",
            "managingOrganization",
        ],
        "Device" => &["udiCarrier", "status", "safety"],
        "DeviceUseStatement" => &[
            "identifier",
            "basedOn",
            "status",
            "subject",
            "derivedFrom",
            "timingTiming",
            "timingPeriod",
            "timingDateTime",
            "recordedOn",
            "source",
            "device",
            "reasonCode",
            "reasonReference",
            "bodySite",
        ],
        "Observation" => &[
            "identifier",
            "basedOn",
            "partOf",
            "status",
            "code",
            "subject",
            "focus",
            "encounter",
            "effectiveDateTime",
            "effectivePeriod",
            "effectiveTiming",
            "effectiveInstant",
            "issued",
            "performer",
            "valueQuantity",
            "valueCodeableConcept",
            "valueString",
            "valueBoolean",
            "valueInteger",
            "valueRange",
            "valueRatio",
            "valueSampledData",
            "valueTime",
            "valueDateTime",
            "valuePeriod",
            "hasMember",
            "derivedFrom",
            "component",
        ],
        "Flag" => &[
            "identifier",
            "status",
            "category",
            "code",
            "subject",
            "period",
            "encounter",
            "author",
        ],
        _ => &[],
    }
}

/// Elements every resource keeps in a subset: what identifies it, and the mandatory elements of
/// the types Osler serves (a subset must still be a valid resource).
const ALWAYS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "status",
    "code",
    "subject",
    "intent",
];

/// How a response is to be cut down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Subset {
    #[default]
    Whole,
    /// `_summary=true`.
    Summary,
    /// `_summary=text`: text, id, meta and the mandatory elements.
    Text,
    /// `_summary=data`: everything but the narrative.
    Data,
    /// `_elements=a,b`: these top-level elements and the mandatory ones.
    Elements(Vec<String>),
}

/// The subset a query asks for (`_summary`, `_elements`); `count` and `false` are whole.
pub fn subset_of(params: &[(String, String)]) -> Result<Subset, FhirError> {
    let mut subset = Subset::Whole;
    for (k, v) in params {
        let next = match (k.as_str(), v.as_str()) {
            ("_summary", "true") => Subset::Summary,
            ("_summary", "text") => Subset::Text,
            ("_summary", "data") => Subset::Data,
            ("_summary", "count" | "false") => Subset::Whole,
            ("_summary", other) => {
                return Err(FhirError::at(
                    ErrorKind::BadParameter,
                    "_summary",
                    format!("{other:?} is not one of true, text, data, count, false"),
                ));
            }
            ("_elements", list) => Subset::Elements(
                list.split(',')
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect(),
            ),
            _ => continue,
        };
        if subset != Subset::Whole && next != Subset::Whole {
            return Err(FhirError::at(
                ErrorKind::BadParameter,
                k.clone(),
                "give one of _summary (true, text, data) and _elements",
            ));
        }
        if next != Subset::Whole {
            subset = next;
        }
    }
    Ok(subset)
}

fn cut(resource: &Map<String, Json>, subset: &Subset) -> Map<String, Json> {
    let ty = resource
        .get("resourceType")
        .and_then(Json::as_str)
        .unwrap_or("");
    let keep = |k: &str| -> bool {
        ALWAYS.contains(&k)
            || match subset {
                Subset::Whole => true,
                Subset::Summary => summary_elements(ty).contains(&k),
                Subset::Text => k == "text",
                Subset::Data => k != "text",
                Subset::Elements(list) => list.iter().any(|e| e == k),
            }
    };
    let mut out: Map<String, Json> = resource
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if out.len() < resource.len() {
        // A resource missing elements says so, so that nobody takes it for the whole.
        let meta = out.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            let tags = m.entry("tag").or_insert_with(|| json!([]));
            if let Some(t) = tags.as_array_mut() {
                t.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "Resource encoded in summary mode",
                }));
            }
        }
    }
    out
}

/// Cuts a response body down: a resource, or each resource of a searchset (the Bundle itself
/// is kept whole); OperationOutcomes and other Bundles are left as they are.
pub fn apply_subset(body: &mut Json, subset: &Subset) {
    if *subset == Subset::Whole {
        return;
    }
    let Some(o) = body.as_object_mut() else {
        return;
    };
    match o.get("resourceType").and_then(Json::as_str) {
        Some("OperationOutcome") | Some("CapabilityStatement") => {}
        Some("Bundle") => {
            if o.get("type").and_then(Json::as_str) != Some("searchset") {
                return;
            }
            for e in o
                .get_mut("entry")
                .and_then(Json::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(r) = e.get_mut("resource").and_then(Json::as_object_mut) {
                    *r = cut(r, subset);
                }
            }
        }
        Some(_) => *o = cut(o, subset),
        None => {}
    }
}

/// Whether a client that sent this `Accept` header takes FHIR JSON (a missing header does).
pub fn accepts_json(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*"
                | "application/*"
                | "application/json"
                | "application/fhir+json"
                | "application/json+fhir"
        )
    })
}

/// Whether a request body of this `Content-Type` is FHIR JSON.
pub fn is_json_content(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        media.as_str(),
        "application/json" | "application/fhir+json" | "application/json+fhir"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_keep_what_identifies_and_say_they_are_subsets() {
        let mut p = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "2"},
            "text": {"status": "generated", "div": "<div/>"}, "name": [{"family": "X"}],
            "generalPractitioner": [{"reference": "Practitioner/p"}]});
        let mut s = p.clone();
        apply_subset(&mut s, &Subset::Summary);
        assert_eq!(s["name"], p["name"]);
        assert!(s.get("generalPractitioner").is_none() && s.get("text").is_none());
        assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(s["meta"]["versionId"], "2");
        apply_subset(
            &mut p,
            &Subset::Elements(vec!["generalPractitioner".into()]),
        );
        assert!(p.get("name").is_none() && p.get("generalPractitioner").is_some());
        let mut whole = json!({"resourceType": "Patient", "id": "a"});
        apply_subset(&mut whole, &Subset::Data);
        assert!(whole.get("meta").is_none(), "nothing cut, no tag");
    }

    #[test]
    fn accept_and_content_type() {
        assert!(accepts_json("application/fhir+json"));
        assert!(accepts_json(
            "application/fhir+xml;q=0.9, application/fhir+json;q=0.8"
        ));
        assert!(accepts_json("*/*"));
        assert!(!accepts_json("application/fhir+xml"));
        assert!(!accepts_json("text/html"));
        assert!(is_json_content("application/fhir+json; charset=utf-8"));
        assert!(!is_json_content("text/plain"));
        assert!(subset_of(&[("_summary".into(), "maybe".into())]).is_err());
    }
}
