//! Per resource type: which elements Osler keeps, how each is checked, and what it yields for
//! search. Element lists follow FHIR R4 (4.0.1); elements that would need resources Osler does
//! not hold (PractitionerRole, Encounter, Location, Group...) are refused by name.

use osler_registry::{Assignment, Kind};
use serde_json::{Map, Value as Json};

use super::check::*;
use crate::FhirError;

type Obj = Map<String, Json>;

const COMMON: &[&str] = &["resourceType", "meta", "text", "language"];

pub(super) fn check(
    kind: Kind,
    o: &Obj,
    id: &str,
    now_ms: i64,
    found: &mut Found,
) -> Result<Option<Assignment>, FhirError> {
    match kind {
        Kind::Patient => patient(o, now_ms, found).map(|_| None),
        Kind::Practitioner => practitioner(o, now_ms, found).map(|_| None),
        Kind::Organization => organization(o, found).map(|_| None),
        Kind::CareTeam => care_team(o, found).map(|_| None),
        Kind::Device => device(o, found).map(|_| None),
        Kind::DeviceUseStatement => device_use(o, id, found),
    }
}

fn known(o: &Obj, path: &str, own: &[&str]) -> Result<(), FhirError> {
    let all: Vec<&str> = COMMON.iter().chain(own).copied().collect();
    only_known(o, path, &all)
}

const GENDERS: &[&str] = &["male", "female", "other", "unknown"];

fn birth_date(o: &Obj, path: &str, now_ms: i64, found: &mut Found) -> Result<(), FhirError> {
    if let Some(b) = o.get("birthDate") {
        let p = format!("{path}.birthDate");
        let (text, start) = date(b, &p)?;
        if start > now_ms {
            return Err(invalid(&p, format!("{text} is in the future")));
        }
        found.term("birthdate", text);
    }
    Ok(())
}

fn active(o: &Obj, path: &str, found: &mut Found) -> Result<(), FhirError> {
    if let Some(a) = o.get("active") {
        let a = boolean(a, &format!("{path}.active"))?;
        found.term("active", a.to_string());
    }
    Ok(())
}

fn patient(o: &Obj, now_ms: i64, found: &mut Found) -> Result<(), FhirError> {
    let path = "Patient";
    known(
        o,
        path,
        &[
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceasedBoolean",
            "deceasedDateTime",
            "address",
            "maritalStatus",
            "multipleBirthBoolean",
            "multipleBirthInteger",
            "communication",
            "generalPractitioner",
            "managingOrganization",
            "contact",
        ],
    )?;
    for (k, v) in o {
        let p = format!("{path}.{k}");
        match k.as_str() {
            // Identifiers tell patients apart: two with one system|value cannot both exist.
            "identifier" => identifiers(v, &p, found, true)?,
            "name" => names(v, &p, found)?,
            "telecom" => telecoms(v, &p)?,
            "address" => addresses(v, &p)?,
            "gender" => {
                found.term("gender", code(v, &p, GENDERS)?);
            }
            "deceasedBoolean" | "multipleBirthBoolean" => {
                boolean(v, &p)?;
            }
            "deceasedDateTime" => {
                osler_core::time::parse_span(string(v, &p)?)
                    .map_err(|e| invalid(&p, e.to_string()))?;
            }
            "multipleBirthInteger" => {
                v.as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid(&p, "must be a positive integer"))?;
            }
            "maritalStatus" => codeable(v, &p, None, found)?,
            "communication" => {
                for (i, c) in array(v, &p)?.iter().enumerate() {
                    let cp = format!("{p}[{i}]");
                    let co = object(c, &cp)?;
                    only_known(co, &cp, &["language", "preferred"])?;
                    codeable(
                        co.get("language")
                            .ok_or_else(|| invalid(&format!("{cp}.language"), "is required"))?,
                        &format!("{cp}.language"),
                        None,
                        found,
                    )?;
                }
            }
            "generalPractitioner" => {
                for (i, r) in array(v, &p)?.iter().enumerate() {
                    reference(
                        r,
                        &format!("{p}[{i}]"),
                        &[Kind::Practitioner, Kind::Organization],
                        Some("general-practitioner"),
                        found,
                    )?;
                }
            }
            "managingOrganization" => {
                reference(v, &p, &[Kind::Organization], Some("organization"), found)?;
            }
            "contact" => {
                for (i, c) in array(v, &p)?.iter().enumerate() {
                    let cp = format!("{p}[{i}]");
                    let co = object(c, &cp)?;
                    only_known(
                        co,
                        &cp,
                        &[
                            "relationship",
                            "name",
                            "telecom",
                            "address",
                            "gender",
                            "period",
                        ],
                    )?;
                    if let Some(n) = co.get("name") {
                        names(
                            &Json::Array(vec![n.clone()]),
                            &format!("{cp}.name"),
                            &mut Found::default(),
                        )?;
                    }
                    if let Some(t) = co.get("telecom") {
                        telecoms(t, &format!("{cp}.telecom"))?;
                    }
                }
            }
            _ => {}
        }
    }
    active(o, path, found)?;
    birth_date(o, path, now_ms, found)
}

fn practitioner(o: &Obj, now_ms: i64, found: &mut Found) -> Result<(), FhirError> {
    let path = "Practitioner";
    known(
        o,
        path,
        &[
            "identifier",
            "active",
            "name",
            "telecom",
            "address",
            "gender",
            "birthDate",
            "qualification",
            "communication",
        ],
    )?;
    for (k, v) in o {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "identifier" => identifiers(v, &p, found, true)?,
            "name" => names(v, &p, found)?,
            "telecom" => telecoms(v, &p)?,
            "address" => addresses(v, &p)?,
            "gender" => {
                code(v, &p, GENDERS)?;
            }
            "qualification" => {
                for (i, q) in array(v, &p)?.iter().enumerate() {
                    let qp = format!("{p}[{i}]");
                    let qo = object(q, &qp)?;
                    only_known(qo, &qp, &["identifier", "code", "period", "issuer"])?;
                    codeable(
                        qo.get("code")
                            .ok_or_else(|| invalid(&format!("{qp}.code"), "is required"))?,
                        &format!("{qp}.code"),
                        None,
                        found,
                    )?;
                    if let Some(i) = qo.get("issuer") {
                        reference(
                            i,
                            &format!("{qp}.issuer"),
                            &[Kind::Organization],
                            None,
                            found,
                        )?;
                    }
                }
            }
            "communication" => {
                for (i, c) in array(v, &p)?.iter().enumerate() {
                    codeable(c, &format!("{p}[{i}]"), None, found)?;
                }
            }
            _ => {}
        }
    }
    active(o, path, found)?;
    birth_date(o, path, now_ms, found)
}

fn organization(o: &Obj, found: &mut Found) -> Result<(), FhirError> {
    let path = "Organization";
    known(
        o,
        path,
        &[
            "identifier",
            "active",
            "type",
            "name",
            "alias",
            "telecom",
            "address",
            "partOf",
        ],
    )?;
    for (k, v) in o {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "identifier" => identifiers(v, &p, found, true)?,
            "type" => {
                for (i, t) in array(v, &p)?.iter().enumerate() {
                    codeable(t, &format!("{p}[{i}]"), None, found)?;
                }
            }
            "name" => found.string("name", string(v, &p)?),
            "alias" => {
                for (i, a) in array(v, &p)?.iter().enumerate() {
                    found.string("name", string(a, &format!("{p}[{i}]"))?);
                }
            }
            "telecom" => telecoms(v, &p)?,
            "address" => addresses(v, &p)?,
            "partOf" => {
                reference(v, &p, &[Kind::Organization], None, found)?;
            }
            _ => {}
        }
    }
    active(o, path, found)
}

const CARE_TEAM_STATUS: &[&str] = &[
    "proposed",
    "active",
    "suspended",
    "inactive",
    "entered-in-error",
];

fn care_team(o: &Obj, found: &mut Found) -> Result<(), FhirError> {
    let path = "CareTeam";
    known(
        o,
        path,
        &[
            "identifier",
            "status",
            "category",
            "name",
            "subject",
            "period",
            "participant",
            "reasonCode",
            "managingOrganization",
            "telecom",
            "note",
        ],
    )?;
    for (k, v) in o {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "identifier" => identifiers(v, &p, found, false)?,
            "status" => found.term("status", code(v, &p, CARE_TEAM_STATUS)?),
            "category" | "reasonCode" => {
                for (i, c) in array(v, &p)?.iter().enumerate() {
                    codeable(c, &format!("{p}[{i}]"), None, found)?;
                }
            }
            "name" => {
                string(v, &p)?;
            }
            "subject" => {
                let (_, id) = reference(v, &p, &[Kind::Patient], Some("subject"), found)?;
                found.term("patient", format!("Patient/{id}"));
            }
            "period" => {
                period(v, &p)?;
            }
            "participant" => {
                for (i, m) in array(v, &p)?.iter().enumerate() {
                    let mp = format!("{p}[{i}]");
                    let mo = object(m, &mp)?;
                    only_known(mo, &mp, &["role", "member", "onBehalfOf", "period"])?;
                    if let Some(roles) = mo.get("role") {
                        for (j, r) in array(roles, &format!("{mp}.role"))?.iter().enumerate() {
                            codeable(r, &format!("{mp}.role[{j}]"), None, found)?;
                        }
                    }
                    let member = mo.get("member").ok_or_else(|| {
                        invalid(&format!("{mp}.member"), "a participant needs a member")
                    })?;
                    reference(
                        member,
                        &format!("{mp}.member"),
                        &[
                            Kind::Practitioner,
                            Kind::Organization,
                            Kind::Patient,
                            Kind::CareTeam,
                        ],
                        Some("participant"),
                        found,
                    )?;
                    if let Some(b) = mo.get("onBehalfOf") {
                        reference(
                            b,
                            &format!("{mp}.onBehalfOf"),
                            &[Kind::Organization],
                            None,
                            found,
                        )?;
                    }
                    if let Some(per) = mo.get("period") {
                        period(per, &format!("{mp}.period"))?;
                    }
                }
            }
            "managingOrganization" => {
                for (i, r) in array(v, &p)?.iter().enumerate() {
                    reference(r, &format!("{p}[{i}]"), &[Kind::Organization], None, found)?;
                }
            }
            "telecom" => telecoms(v, &p)?,
            "note" => notes(v, &p)?,
            _ => {}
        }
    }
    Ok(())
}

fn notes(v: &Json, p: &str) -> Result<(), FhirError> {
    for (i, n) in array(v, p)?.iter().enumerate() {
        let np = format!("{p}[{i}]");
        let no = object(n, &np)?;
        only_known(no, &np, &["authorString", "time", "text"])?;
        string(
            no.get("text")
                .ok_or_else(|| invalid(&format!("{np}.text"), "a note needs text"))?,
            &format!("{np}.text"),
        )?;
    }
    Ok(())
}

const DEVICE_STATUS: &[&str] = &["active", "inactive", "entered-in-error", "unknown"];

fn device(o: &Obj, found: &mut Found) -> Result<(), FhirError> {
    let path = "Device";
    known(
        o,
        path,
        &[
            "identifier",
            "udiCarrier",
            "status",
            "statusReason",
            "distinctIdentifier",
            "manufacturer",
            "manufactureDate",
            "expirationDate",
            "lotNumber",
            "serialNumber",
            "deviceName",
            "modelNumber",
            "partNumber",
            "type",
            "version",
            "patient",
            "owner",
            "note",
            "parent",
        ],
    )?;
    for (k, v) in o {
        let p = format!("{path}.{k}");
        match k.as_str() {
            // A serial number or an EUI-64/MAC is one device; two Devices may not share one.
            "identifier" => identifiers(v, &p, found, true)?,
            "udiCarrier" => {
                for (i, u) in array(v, &p)?.iter().enumerate() {
                    let up = format!("{p}[{i}]");
                    let uo = object(u, &up)?;
                    only_known(
                        uo,
                        &up,
                        &[
                            "deviceIdentifier",
                            "issuer",
                            "jurisdiction",
                            "carrierAIDC",
                            "carrierHRF",
                            "entryType",
                        ],
                    )?;
                    if let Some(d) = uo.get("deviceIdentifier") {
                        let d = string(d, &format!("{up}.deviceIdentifier"))?;
                        found.token("udi", None, d);
                    }
                    for s in [
                        "issuer",
                        "jurisdiction",
                        "carrierAIDC",
                        "carrierHRF",
                        "entryType",
                    ] {
                        if let Some(x) = uo.get(s) {
                            string(x, &format!("{up}.{s}"))?;
                        }
                    }
                }
            }
            "status" => found.term("status", code(v, &p, DEVICE_STATUS)?),
            "statusReason" => {
                for (i, c) in array(v, &p)?.iter().enumerate() {
                    codeable(c, &format!("{p}[{i}]"), None, found)?;
                }
            }
            "manufacturer" => found.string("manufacturer", string(v, &p)?),
            "modelNumber" => found.string("model", string(v, &p)?),
            "serialNumber" => {
                // Searchable as an identifier too: a device reports its serial, not its id.
                found.token("identifier", None, string(v, &p)?);
            }
            "distinctIdentifier" | "lotNumber" | "partNumber" | "manufactureDate"
            | "expirationDate" => {
                string(v, &p)?;
            }
            "deviceName" => {
                for (i, n) in array(v, &p)?.iter().enumerate() {
                    let np = format!("{p}[{i}]");
                    let no = object(n, &np)?;
                    only_known(no, &np, &["name", "type"])?;
                    string(
                        no.get("name")
                            .ok_or_else(|| invalid(&format!("{np}.name"), "is required"))?,
                        &format!("{np}.name"),
                    )?;
                    code(
                        no.get("type")
                            .ok_or_else(|| invalid(&format!("{np}.type"), "is required"))?,
                        &format!("{np}.type"),
                        &[
                            "udi-label-name",
                            "user-friendly-name",
                            "patient-reported-name",
                            "manufacturer-name",
                            "model-name",
                            "other",
                        ],
                    )?;
                }
            }
            "type" => codeable(v, &p, Some("type"), found)?,
            "version" => {
                for (i, ver) in array(v, &p)?.iter().enumerate() {
                    let vp = format!("{p}[{i}]");
                    let vo = object(ver, &vp)?;
                    only_known(vo, &vp, &["type", "component", "value"])?;
                    string(
                        vo.get("value")
                            .ok_or_else(|| invalid(&format!("{vp}.value"), "is required"))?,
                        &format!("{vp}.value"),
                    )?;
                }
            }
            "patient" => {
                reference(v, &p, &[Kind::Patient], Some("patient"), found)?;
            }
            "owner" => {
                reference(v, &p, &[Kind::Organization], Some("organization"), found)?;
            }
            "parent" => {
                reference(v, &p, &[Kind::Device], None, found)?;
            }
            "note" => notes(v, &p)?,
            _ => {}
        }
    }
    Ok(())
}

const DEVICE_USE_STATUS: &[&str] = &[
    "active",
    "completed",
    "entered-in-error",
    "intended",
    "stopped",
    "on-hold",
];

/// A DeviceUseStatement assigns its device to its subject for `timingPeriod` when its status
/// says the device was (or is) in use: active, completed or stopped (stopped still covers the
/// period it gives). intended, on-hold and entered-in-error assign nothing.
fn device_use(o: &Obj, id: &str, found: &mut Found) -> Result<Option<Assignment>, FhirError> {
    let path = "DeviceUseStatement";
    known(
        o,
        path,
        &[
            "identifier",
            "status",
            "subject",
            "timingPeriod",
            "timingDateTime",
            "recordedOn",
            "source",
            "device",
            "reasonCode",
            "bodySite",
            "note",
        ],
    )?;
    let required = |k: &str| {
        o.get(k)
            .ok_or_else(|| invalid(&format!("{path}.{k}"), "is required"))
    };
    let status = code(
        required("status")?,
        &format!("{path}.status"),
        DEVICE_USE_STATUS,
    )?;
    found.term("status", status);
    let (_, patient) = reference(
        required("subject")?,
        &format!("{path}.subject"),
        &[Kind::Patient],
        Some("subject"),
        found,
    )?;
    found.term("patient", format!("Patient/{patient}"));
    let (_, device) = reference(
        required("device")?,
        &format!("{path}.device"),
        &[Kind::Device],
        Some("device"),
        found,
    )?;
    let mut span = (None, None);
    for (k, v) in o {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "identifier" => identifiers(v, &p, found, false)?,
            "timingPeriod" => span = period(v, &p)?,
            "timingDateTime" => {
                return Err(invalid(
                    &p,
                    "an assignment needs a period: use timingPeriod (start, and end once it is over)",
                ));
            }
            "recordedOn" => {
                osler_core::time::parse_span(string(v, &p)?)
                    .map_err(|e| invalid(&p, e.to_string()))?;
            }
            "source" => {
                reference(
                    v,
                    &p,
                    &[Kind::Patient, Kind::Practitioner, Kind::Organization],
                    None,
                    found,
                )?;
            }
            "reasonCode" => {
                for (i, c) in array(v, &p)?.iter().enumerate() {
                    codeable(c, &format!("{p}[{i}]"), None, found)?;
                }
            }
            "bodySite" => codeable(v, &p, None, found)?,
            "note" => notes(v, &p)?,
            _ => {}
        }
    }
    if !matches!(status, "active" | "completed" | "stopped") {
        return Ok(None);
    }
    let start = span.0.ok_or_else(|| {
        invalid(
            &format!("{path}.timingPeriod.start"),
            "a device in use needs the time it was put on: timingPeriod.start",
        )
    })?;
    if span.1.is_none() && status != "active" {
        return Err(invalid(
            &format!("{path}.timingPeriod.end"),
            format!("a {status} use needs the time it ended: timingPeriod.end"),
        ));
    }
    Ok(Some(Assignment {
        device,
        patient,
        start_ms: start,
        end_ms: span.1,
        source: id.to_owned(),
    }))
}
