//! Reading ⇄ FHIR R4 `Observation`.
//!
//! Osler stores readings, not documents: an incoming Observation is read into a
//! [`ReadingInput`] and every element Osler keeps is checked; an element Osler would have to
//! drop is refused with its name rather than silently lost. Outgoing Observations are built
//! from the reading and the catalog, so their codes always agree with the catalog and follow
//! the R4 vital-signs profile (category, LOINC plus MDC coding, UCUM quantity, BP components).

use osler_core::metric::{LOINC, MDC, UCUM};
use osler_core::{Identifier, InputValue, Metric, Reading, ReadingInput, Status, Timestamp, Value};
use serde_json::{Map, Value as Json, json};

use crate::outcome::{ErrorKind, FhirError};

/// FHIR system URI for observation categories.
pub const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// Elements Osler reads or can safely regenerate. Anything else would be lost, so it is refused.
const KNOWN: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "text",
    "identifier",
    "status",
    "category",
    "code",
    "subject",
    "effectiveDateTime",
    "issued",
    "device",
    "valueQuantity",
    "component",
];

fn invalid(path: &str, msg: impl Into<String>) -> FhirError {
    FhirError::at(ErrorKind::Invalid, path, msg)
}

fn obj<'a>(v: &'a Json, path: &str) -> Result<&'a Map<String, Json>, FhirError> {
    v.as_object()
        .ok_or_else(|| invalid(path, "must be a JSON object"))
}

fn string<'a>(
    o: &'a Map<String, Json>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, FhirError> {
    match o.get(key) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(&format!("{path}.{key}"), "must be a string")),
    }
}

fn required_string<'a>(
    o: &'a Map<String, Json>,
    key: &str,
    path: &str,
) -> Result<&'a str, FhirError> {
    string(o, key, path)?
        .ok_or_else(|| FhirError::at(ErrorKind::Invalid, format!("{path}.{key}"), "is required"))
}

/// Reads a FHIR `Observation` (already parsed JSON) into a reading to validate.
/// `received_ms` is when the hub received it.
pub fn parse_observation(v: &Json, received_ms: i64) -> Result<ReadingInput, FhirError> {
    let o = v.as_object().ok_or_else(|| {
        FhirError::new(
            ErrorKind::Malformed,
            "the body must be a JSON object (a FHIR resource)",
        )
    })?;
    match o.get("resourceType").and_then(Json::as_str) {
        Some("Observation") => {}
        Some(other) => {
            return Err(FhirError::at(
                ErrorKind::Invalid,
                "resourceType",
                format!("expected \"Observation\", found {other:?}"),
            ));
        }
        None => {
            return Err(FhirError::at(
                ErrorKind::Invalid,
                "resourceType",
                "is required",
            ));
        }
    }
    let p = "Observation";
    let mut unknown: Vec<&str> = o
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let hint = if unknown.iter().any(|k| k.starts_with("value")) {
            "; a reading's value must be a valueQuantity"
        } else if unknown.contains(&"effectivePeriod") {
            "; a reading needs the instant it was taken (effectiveDateTime)"
        } else {
            ""
        };
        return Err(FhirError::at(
            ErrorKind::NotSupported,
            format!("{p}.{}", unknown[0]),
            format!(
                "Osler does not store {}; it was refused rather than silently dropped{hint}",
                unknown.join(", ")
            ),
        ));
    }

    let status_code = required_string(o, "status", p)?;
    let status = Status::from_code(status_code).ok_or_else(|| {
        invalid(
            "Observation.status",
            format!("{status_code:?} is not accepted for a stored reading; use final, preliminary, amended, corrected or entered-in-error"),
        )
    })?;

    let code = o
        .get("code")
        .ok_or_else(|| invalid("Observation.code", "is required"))?;
    let metric = metric_of(code, "Observation.code")?.ok_or_else(|| {
        FhirError::at(
            ErrorKind::Invalid,
            "Observation.code",
            format!(
                "no coding names a metric Osler supports (LOINC or MDC); supported LOINC codes: {}",
                supported_loinc()
            ),
        )
    })?;
    if let Some(cat) = o.get("category") {
        check_categories(cat)?;
    }

    let subject = o.get("subject").ok_or_else(|| {
        invalid(
            "Observation.subject",
            "is required: a reference to the Patient",
        )
    })?;
    let patient = reference(subject, "Patient", "Observation.subject")?;
    let device = match o.get("device") {
        Some(d) => Some(reference(d, "Device", "Observation.device")?),
        None => None,
    };

    let when = required_string(o, "effectiveDateTime", p)?;
    let taken = Timestamp::parse(when)
        .map_err(|e| invalid("Observation.effectiveDateTime", e.to_string()))?;

    let identifier = match o.get("identifier") {
        None => None,
        Some(Json::Array(items)) if items.is_empty() => None,
        Some(Json::Array(items)) if items.len() == 1 => {
            Some(parse_identifier(&items[0], "Observation.identifier[0]")?)
        }
        Some(Json::Array(_)) => {
            return Err(FhirError::at(
                ErrorKind::NotSupported,
                "Observation.identifier",
                "Osler keeps one identifier per reading; send at most one",
            ));
        }
        Some(_) => return Err(invalid("Observation.identifier", "must be an array")),
    };

    let info = metric.info();
    let value = match info.parts {
        None => {
            if o.contains_key("component") {
                return Err(FhirError::at(
                    ErrorKind::NotSupported,
                    "Observation.component",
                    format!("{} readings have no components", info.key),
                ));
            }
            let q = o.get("valueQuantity").ok_or_else(|| {
                invalid(
                    "Observation.valueQuantity",
                    "is required: a reading has a measured value",
                )
            })?;
            let (value, unit) = quantity(q, "Observation.valueQuantity")?;
            InputValue::Scalar { value, unit }
        }
        Some(parts) => {
            if o.contains_key("valueQuantity") {
                return Err(invalid(
                    "Observation.valueQuantity",
                    "a blood-pressure panel carries its values in components (8480-6 systolic, 8462-4 diastolic), not valueQuantity",
                ));
            }
            let comps = match o.get("component") {
                Some(Json::Array(c)) => c,
                Some(_) => return Err(invalid("Observation.component", "must be an array")),
                None => {
                    return Err(invalid(
                        "Observation.component",
                        "is required: systolic (8480-6) and diastolic (8462-4) components",
                    ));
                }
            };
            let mut found: [Option<(f64, String)>; 2] = [None, None];
            for (i, c) in comps.iter().enumerate() {
                let cp = format!("Observation.component[{i}]");
                let co = obj(c, &cp)?;
                let code = co
                    .get("code")
                    .ok_or_else(|| invalid(&format!("{cp}.code"), "is required"))?;
                let slot = parts.iter().position(|part| {
                    codings(code).any(|(sys, c)| {
                        (sys == Some(LOINC) && c == part.loinc.code)
                            || (sys == Some(MDC) && c == part.mdc.code)
                    })
                });
                let Some(slot) = slot else {
                    return Err(FhirError::at(
                        ErrorKind::NotSupported,
                        format!("{cp}.code"),
                        "only systolic (LOINC 8480-6) and diastolic (LOINC 8462-4) components are stored",
                    ));
                };
                if found[slot].is_some() {
                    return Err(invalid(
                        &format!("{cp}.code"),
                        "this component appears twice",
                    ));
                }
                let q = co
                    .get("valueQuantity")
                    .ok_or_else(|| invalid(&format!("{cp}.valueQuantity"), "is required"))?;
                found[slot] = Some(quantity(q, &format!("{cp}.valueQuantity"))?);
            }
            match found {
                [Some(first), Some(second)] => InputValue::Pair { first, second },
                [None, _] => {
                    return Err(invalid(
                        "Observation.component",
                        "the systolic component (8480-6) is missing",
                    ));
                }
                [_, None] => {
                    return Err(invalid(
                        "Observation.component",
                        "the diastolic component (8462-4) is missing",
                    ));
                }
            }
        }
    };

    Ok(ReadingInput {
        patient: patient.to_owned(),
        device: device.map(str::to_owned),
        metric,
        value,
        taken,
        received_ms,
        status,
        identifier,
    })
}

fn supported_loinc() -> String {
    Metric::all()
        .map(|m| m.info().loinc.code)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The (system, code) pairs of a CodeableConcept, skipping malformed codings.
fn codings(cc: &Json) -> impl Iterator<Item = (Option<&str>, &str)> {
    cc.get("coding")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c.get("system").and_then(Json::as_str),
                c.get("code")?.as_str()?,
            ))
        })
}

/// The metric a CodeableConcept names; an error if its codings name different metrics.
fn metric_of(cc: &Json, path: &str) -> Result<Option<Metric>, FhirError> {
    if !cc.get("coding").is_some_and(Json::is_array) {
        return Err(invalid(
            &format!("{path}.coding"),
            "is required: an array of codings",
        ));
    }
    let mut found: Option<Metric> = None;
    for (system, code) in codings(cc) {
        let m = match system {
            Some(LOINC) => Metric::from_loinc(code),
            Some(MDC) => Metric::from_mdc(code),
            _ => None,
        };
        if let Some(m) = m {
            if found.is_some_and(|f| f != m) {
                return Err(invalid(
                    path,
                    format!(
                        "codings disagree: they name both {} and {m}",
                        found.unwrap_or(m)
                    ),
                ));
            }
            found = Some(m);
        }
    }
    Ok(found)
}

fn check_categories(cat: &Json) -> Result<(), FhirError> {
    // Osler files each metric under the category the catalog gives; a sender's category is
    // only checked for shape, because the catalog's is the one every reader relies on.
    match cat {
        Json::Array(items) => {
            for (i, c) in items.iter().enumerate() {
                obj(c, &format!("Observation.category[{i}]"))?;
            }
            Ok(())
        }
        _ => Err(invalid("Observation.category", "must be an array")),
    }
}

/// The id in a reference such as `Patient/p1`.
fn reference<'a>(v: &'a Json, kind: &str, path: &str) -> Result<&'a str, FhirError> {
    let o = obj(v, path)?;
    let r = required_string(o, "reference", path)?;
    r.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or_else(|| {
            invalid(
                &format!("{path}.reference"),
                format!("expected \"{kind}/<id>\", found {r:?}"),
            )
        })
}

fn parse_identifier(v: &Json, path: &str) -> Result<Identifier, FhirError> {
    let o = obj(v, path)?;
    let system = required_string(o, "system", path)?;
    let value = required_string(o, "value", path)?;
    if system.is_empty() || value.is_empty() || system.contains('\u{1f}') {
        return Err(invalid(path, "system and value must be non-empty text"));
    }
    Ok(Identifier {
        system: system.to_owned(),
        value: value.to_owned(),
    })
}

/// A Quantity's value and UCUM unit code.
fn quantity(v: &Json, path: &str) -> Result<(f64, String), FhirError> {
    let o = obj(v, path)?;
    let value = match o.get("value") {
        Some(Json::Number(n)) => n
            .as_f64()
            .ok_or_else(|| invalid(&format!("{path}.value"), "is not a finite number"))?,
        Some(_) => return Err(invalid(&format!("{path}.value"), "must be a JSON number")),
        None => return Err(invalid(&format!("{path}.value"), "is required")),
    };
    if let Some(system) = string(o, "system", path)?
        && system != UCUM
    {
        return Err(invalid(
            &format!("{path}.system"),
            format!("units must be UCUM ({UCUM}), found {system:?}"),
        ));
    }
    // UCUM code first; senders that only fill the human `unit` are read leniently, and the
    // catalog still decides whether it is a unit Osler accepts.
    let unit = string(o, "code", path)?
        .or(string(o, "unit", path)?)
        .ok_or_else(|| invalid(&format!("{path}.code"), "is required: the UCUM unit code"))?;
    Ok((value, unit.to_owned()))
}

fn number(v: f64) -> Json {
    // Integral values are written without a fraction (72, not 72.0); 2^53 bounds exactness.
    if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn quantity_json(v: f64, info: &osler_core::MetricInfo) -> Json {
    json!({
        "value": number(v),
        "unit": info.unit_display,
        "system": UCUM,
        "code": info.unit,
    })
}

/// FHIR's statistics code system (R4 `StatisticsCode`: average, maximum, minimum, count...).
pub const STATISTICS: &str = "http://hl7.org/fhir/observation-statistics";
/// Osler's own codes for what FHIR's statistics codes lack (`last`) and for the summary tag.
pub const OSLER_SUMMARY: &str = "https://osler.dev/fhir/CodeSystem/edge-summary";

/// What a window summary adds to its Observation.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryView {
    pub end_ms: i64,
    pub count: u32,
    pub min: Value,
    pub max: Value,
    pub last: Value,
    pub spikes: u32,
}

/// The FHIR Observation for a gateway's window summary: the same code, subject and device as
/// the readings it summarises, `effectivePeriod` from the first to the last of them, the mean
/// as the value (for a panel, in its usual components), and one component per statistic:
/// minimum, maximum and count from FHIR's statistics codes, last from Osler's. Tagged
/// `edge-summary` in `meta.tag` so that a client can tell it from a single reading.
pub fn summary_json(id: &str, r: &Reading, s: &SummaryView) -> Json {
    let info = r.metric.info();
    let mut o = observation_json(id, r);
    if let Some(map) = o.as_object_mut() {
        map.remove("effectiveDateTime");
    }
    o["effectivePeriod"] = json!({
        "start": r.taken.to_string(),
        "end": Timestamp { utc_ms: s.end_ms, offset_min: r.taken.offset_min }.to_string(),
    });
    o["meta"]["tag"] = json!([{
        "system": OSLER_SUMMARY,
        "code": "edge-summary",
        "display": "Summary of readings the gateway did not send one by one",
    }]);
    let stat = |system: &str, code: &str, display: &str| json!({"system": system, "code": code, "display": display});
    let stats = [
        (stat(STATISTICS, "minimum", "Minimum"), s.min),
        (stat(STATISTICS, "maximum", "Maximum"), s.max),
        (stat(OSLER_SUMMARY, "last", "Last value"), s.last),
    ];
    let mut components: Vec<Json> = o["component"].as_array().cloned().unwrap_or_default();
    for (code, value) in stats {
        match (value, info.parts) {
            (Value::Pair(a, b), Some(parts)) => {
                for (part, v) in [(parts[0], a), (parts[1], b)] {
                    components.push(json!({
                        "code": {
                            "coding": [
                                {"system": LOINC, "code": part.loinc.code, "display": part.loinc.display},
                                code.clone(),
                            ],
                            "text": format!("{} {}", part.loinc.display, code["display"].as_str().unwrap_or("")),
                        },
                        "valueQuantity": quantity_json(v, info),
                    }));
                }
            }
            (Value::Scalar(v), _) | (Value::Pair(v, _), None) => {
                components.push(json!({
                    "code": {
                        "coding": [code.clone()],
                        "text": code["display"].clone(),
                    },
                    "valueQuantity": quantity_json(v, info),
                }));
            }
        }
    }
    components.push(json!({
        "code": {
            "coding": [stat(STATISTICS, "count", "Count")],
            "text": "Readings summarised",
        },
        "valueInteger": s.count,
    }));
    if s.spikes > 0 {
        components.push(json!({
            "code": {
                "coding": [stat(OSLER_SUMMARY, "spikes", "Readings judged artefacts by the gateway's spike filter")],
                "text": "Readings judged artefacts",
            },
            "valueInteger": s.spikes,
        }));
    }
    o["component"] = json!(components);
    o
}

/// The FHIR Observation for a stored reading with id `id`.
pub fn observation_json(id: &str, r: &Reading) -> Json {
    let info = r.metric.info();
    let mut coding =
        vec![json!({"system": LOINC, "code": info.loinc.code, "display": info.loinc.display})];
    coding.extend(
        info.extra_loinc
            .iter()
            .map(|c| json!({"system": LOINC, "code": c.code, "display": c.display})),
    );
    if let Some(mdc) = info.mdc {
        coding.push(json!({"system": MDC, "code": mdc.code, "display": mdc.display}));
    }
    let received = Timestamp::utc(r.received_ms).to_string();
    let mut meta = json!({ "lastUpdated": received });
    if !info.profiles.is_empty() {
        meta["profile"] = json!(info.profiles);
    }
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "meta": meta,
    });
    if let Some(i) = &r.identifier {
        o["identifier"] = json!([{ "system": i.system, "value": i.value }]);
    }
    o["status"] = json!(r.status.code());
    o["category"] = json!([{
        "coding": [{
            "system": CATEGORY_SYSTEM,
            "code": info.category.code(),
            "display": info.category.display(),
        }],
        "text": info.category.display(),
    }]);
    o["code"] = json!({ "coding": coding, "text": info.loinc.display });
    o["subject"] = json!({ "reference": format!("Patient/{}", r.patient) });
    o["effectiveDateTime"] = json!(r.taken.to_string());
    o["issued"] = json!(received);
    if let Some(d) = &r.device {
        o["device"] = json!({ "reference": format!("Device/{d}") });
    }
    match (r.value, info.parts) {
        (Value::Pair(a, b), Some(parts)) => {
            o["component"] = json!(
                [(parts[0], a), (parts[1], b)]
                    .iter()
                    .map(|(part, v)| json!({
                        "code": {
                            "coding": [
                                {"system": LOINC, "code": part.loinc.code, "display": part.loinc.display},
                                {"system": MDC, "code": part.mdc.code, "display": part.mdc.display},
                            ],
                            "text": part.loinc.display,
                        },
                        "valueQuantity": quantity_json(*v, info),
                    }))
                    .collect::<Vec<_>>()
            );
        }
        (Value::Scalar(v), _) | (Value::Pair(v, _), None) => {
            o["valueQuantity"] = quantity_json(v, info);
        }
    }
    o
}

/// A reading refused by validation, as a FHIR error naming the Observation element at fault
/// (`Observation.valueQuantity.code` for an unknown unit, `Observation.effectiveDateTime` for a
/// time in the future, the component for one part of a panel).
pub fn reading_error(e: &osler_core::ReadingError) -> FhirError {
    use osler_core::ReadingError as E;
    let panel = |m: &Metric| m.info().parts.is_some();
    let value = |m: &Metric, part: &str, leaf: &str| {
        if panel(m) {
            let i = usize::from(part.contains("diastolic"));
            format!("Observation.component[{i}].valueQuantity.{leaf}")
        } else {
            format!("Observation.valueQuantity.{leaf}")
        }
    };
    let at = match e {
        E::InvalidId { what, .. } if what.contains("device") => {
            "Observation.device.reference".to_owned()
        }
        E::InvalidId { .. } => "Observation.subject.reference".to_owned(),
        E::UnknownUnit { metric, .. } => value(metric, "", "code"),
        E::Implausible { metric, part, .. } => value(metric, part, "value"),
        E::NotFinite { metric } => value(metric, "", "value"),
        E::WrongShape { metric, .. } if panel(metric) => "Observation.component".to_owned(),
        E::WrongShape { .. } => "Observation.valueQuantity".to_owned(),
        E::SystolicNotAboveDiastolic { .. } => "Observation.component".to_owned(),
        E::InFuture { .. } | E::TooOld { .. } => "Observation.effectiveDateTime".to_owned(),
        _ => "Observation".to_owned(),
    };
    FhirError::at(ErrorKind::Invalid, at, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    fn hr() -> Json {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2025-06-15T10:00:00+02:00",
            "device": {"reference": "Device/w1"},
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": UCUM, "code": "/min"},
        })
    }

    #[test]
    fn round_trips_a_heart_rate() {
        let input = parse_observation(&hr(), NOW).unwrap();
        let r = input.validate(NOW).unwrap();
        let out = observation_json("1-2", &r);
        assert_eq!(out["effectiveDateTime"], "2025-06-15T10:00:00+02:00");
        assert_eq!(out["valueQuantity"]["value"], json!(72));
        assert_eq!(out["code"]["coding"][1]["code"], "147842");
        assert_eq!(out["category"][0]["coding"][0]["code"], "vital-signs");
        let again = parse_observation(&out, NOW).unwrap().validate(NOW).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn blood_pressure_components_round_trip() {
        let bp = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2025-06-15T10:00:00Z",
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 85, "system": UCUM, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": MDC, "code": "150021"}]}, "valueQuantity": {"value": 141, "system": UCUM, "code": "mm[Hg]"}},
            ],
        });
        let r = parse_observation(&bp, NOW).unwrap().validate(NOW).unwrap();
        assert_eq!(r.value, Value::Pair(141.0, 85.0));
        let out = observation_json("1-2", &r);
        assert!(out.get("valueQuantity").is_none());
        assert_eq!(out["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(out["component"][1]["code"]["coding"][0]["code"], "8462-4");
        assert_eq!(out["component"][1]["valueQuantity"]["value"], json!(85));
    }

    #[test]
    fn refuses_with_a_location() {
        let cases: Vec<(Json, &str, &str)> = vec![
            (json!([]), "", "JSON object"),
            (
                json!({"resourceType": "Patient"}),
                "resourceType",
                "expected \"Observation\"",
            ),
            (
                {
                    let mut v = hr();
                    v["code"]["coding"][0]["code"] = json!("0000-0");
                    v
                },
                "Observation.code",
                "no coding names",
            ),
            (
                {
                    let mut v = hr();
                    v["valueQuantity"]["code"] = json!("kg");
                    v
                },
                "",
                "",
            ),
            (
                {
                    let mut v = hr();
                    v["note"] = json!([{"text": "x"}]);
                    v
                },
                "Observation.note",
                "refused rather than silently dropped",
            ),
            (
                {
                    let mut v = hr();
                    v.as_object_mut().unwrap().remove("valueQuantity");
                    v["valueString"] = json!("72");
                    v
                },
                "Observation.valueString",
                "valueQuantity",
            ),
            (
                {
                    let mut v = hr();
                    v["subject"]["reference"] = json!("Group/1");
                    v
                },
                "Observation.subject.reference",
                "Patient/<id>",
            ),
            (
                {
                    let mut v = hr();
                    v["effectiveDateTime"] = json!("2025-06-15");
                    v
                },
                "Observation.effectiveDateTime",
                "time of day",
            ),
            (
                {
                    let mut v = hr();
                    v["status"] = json!("cancelled");
                    v
                },
                "Observation.status",
                "not accepted",
            ),
            (
                {
                    let mut v = hr();
                    v["valueQuantity"]["system"] = json!("http://example.org");
                    v
                },
                "Observation.valueQuantity.system",
                "UCUM",
            ),
            (
                {
                    let mut v = hr();
                    v["valueQuantity"]["value"] = json!("72");
                    v
                },
                "Observation.valueQuantity.value",
                "JSON number",
            ),
            (
                {
                    let mut v = hr();
                    v["code"]["coding"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"system": LOINC, "code": "2708-6"}));
                    v
                },
                "Observation.code",
                "disagree",
            ),
        ];
        for (body, path, msg) in cases {
            let e = match parse_observation(&body, NOW) {
                Err(e) => e,
                // Unit errors are found by the core's validation, after parsing.
                Ok(input) => {
                    let e = input.validate(NOW).unwrap_err();
                    assert!(e.to_string().contains("unit \"kg\" is not accepted"), "{e}");
                    continue;
                }
            };
            assert_eq!(e.expression.as_deref().unwrap_or(""), path, "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }
}
