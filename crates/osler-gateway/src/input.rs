//! The device reading format the gateway accepts, over HTTP and MQTT alike.
//!
//! One reading is a JSON object; a message may carry one object or an array of them:
//!
//! ```json
//! {"patient": "p1", "device": "watch-7", "metric": "heart-rate",
//!  "value": 72, "unit": "/min", "time": "2025-06-01T08:30:00+02:00"}
//! ```
//!
//! - `metric`: a catalog key (`heart-rate`, `spo2`, `blood-pressure`, `body-weight`,
//!   `body-temperature`, `respiratory-rate`, `cgm-glucose`, `capillary-glucose`, `steps`,
//!   `body-fat`, `hrv-sdnn`, `resting-heart-rate`) or its LOINC code.
//! - `value`: a number, or `[systolic, diastolic]` for blood pressure.
//! - `unit`: a UCUM code the catalog accepts for the metric (`[lb_av]`, `[degF]`, `mmol/L`, ...).
//! - `time`: when it was taken, RFC 3339 with seconds and a zone.
//! - `device` may be left out for manual entries. Unknown fields are refused, not ignored.
//! - `patient` may be left out by a device that knows only itself: then `device` (its id,
//!   serial number or MAC, as registered on the hub's Device) is required, and the reading is
//!   attributed to the patient whose DeviceUseStatement covers its time (see `assignments`).
//!   Such a reading's `ReadingInput::patient` is empty until it is attributed.
//!
//! The second kind of item is an emergency, an event rather than a measurement:
//!
//! ```json
//! {"patient": "p1", "device": "pendant-2", "event": "fall", "time": "2025-06-01T08:30:00.250Z"}
//! ```
//!
//! - `event`: `fall` (a fall detector) or `sos` (a help button); see `osler_rules::EMERGENCIES`.
//! - `patient` and `device` as for a reading (one of them at least); `time` as for a reading.
//!   The gateway announces it to the hub at once (the live streams' `notice`) and commits it to
//!   its emergencies lane, from which it raises the hub's emergency alert.

use osler_core::{InputValue, Metric, ReadingInput, Status, Timestamp};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceReading {
    #[serde(default)]
    patient: Option<String>,
    #[serde(default)]
    device: Option<String>,
    metric: String,
    /// Checked by hand (see [`value`]) so that a wrong value gets a reason a person can act on.
    value: serde_json::Value,
    unit: String,
    time: String,
}

/// A reading's value: a number, or two for blood pressure.
fn value(v: &serde_json::Value) -> Result<Vec<f64>, String> {
    let number = |x: &serde_json::Value| x.as_f64();
    match v {
        serde_json::Value::Array(a) if a.len() == 2 => a
            .iter()
            .map(number)
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| format!("\"value\" must hold two numbers, got {v}")),
        x => number(x).map(|n| vec![n]).ok_or_else(|| {
            format!(
                "\"value\" must be a number (or [systolic, diastolic] for blood pressure), got {x}"
            )
        }),
    }
}

/// An emergency as the device reported it (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct EmergencyInput {
    /// Empty when the device left it out (attributed by its assignment).
    pub patient: String,
    pub device: Option<String>,
    pub emergency: &'static osler_rules::Emergency,
    pub taken: Timestamp,
}

/// One item of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Reading(ReadingInput),
    Emergency(EmergencyInput),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEvent {
    #[serde(default)]
    patient: Option<String>,
    #[serde(default)]
    device: Option<String>,
    event: String,
    time: String,
}

/// The bytes of element `i` of a message that is a JSON array, exactly as received (the
/// quarantine keeps what the device sent, not a re-encoding).
pub fn element(bytes: &[u8], i: usize) -> Option<Vec<u8>> {
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes).ok()?;
    items.get(i).map(|raw| raw.get().as_bytes().to_vec())
}

/// Parses a message: one item (a reading or an emergency) or an array of them. The outer error
/// means the message as a whole is unreadable; inner errors belong to single items, which
/// fail alone.
pub fn parse_message(bytes: &[u8], received_ms: i64) -> Result<Vec<Result<Item, String>>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => return Err("expected a reading object or an array of them".into()),
    };
    Ok(items
        .into_iter()
        .map(|item| {
            if item.get("event").is_some() {
                parse_event(item).map(Item::Emergency)
            } else {
                parse_one(item, received_ms).map(Item::Reading)
            }
        })
        .collect())
}

fn parse_event(item: serde_json::Value) -> Result<EmergencyInput, String> {
    let e: DeviceEvent = serde_json::from_value(item).map_err(|e| {
        format!("not an emergency ({e}); expected event, time, and patient or device")
    })?;
    let emergency = osler_rules::Emergency::by_event(&e.event).ok_or_else(|| {
        let known: Vec<&str> = osler_rules::EMERGENCIES.iter().map(|x| x.event).collect();
        format!("unknown event {:?}; events: {}", e.event, known.join(", "))
    })?;
    let taken = Timestamp::parse(&e.time).map_err(|err| err.to_string())?;
    let patient = who(e.patient, &e.device)?;
    Ok(EmergencyInput {
        patient,
        device: e.device,
        emergency,
        taken,
    })
}

/// The patient an item names, or empty for one its device is to be attributed to.
fn who(patient: Option<String>, device: &Option<String>) -> Result<String, String> {
    match (patient, device) {
        (Some(p), _) if p.is_empty() => {
            Err("\"patient\" is empty; leave it out to have the device attributed".into())
        }
        (Some(p), _) => Ok(p),
        (None, Some(_)) => Ok(String::new()),
        (None, None) => Err(
            "an item needs \"patient\", or \"device\" so that the hub attributes it to its patient"
                .into(),
        ),
    }
}

fn parse_one(item: serde_json::Value, received_ms: i64) -> Result<ReadingInput, String> {
    let r: DeviceReading = serde_json::from_value(item).map_err(|e| {
        // serde's own words name the field; they only need the format's context.
        format!(
            "not a reading ({e}); expected patient, metric, value, unit, time and optionally device"
        )
    })?;
    let metric = Metric::from_key(&r.metric)
        .or_else(|| Metric::from_loinc(&r.metric))
        .ok_or_else(|| {
            format!(
                "unknown metric {:?}; use a catalog key such as heart-rate, or a LOINC code",
                r.metric
            )
        })?;
    let value = match value(&r.value)?.as_slice() {
        [a, b] => InputValue::Pair {
            first: (*a, r.unit.clone()),
            second: (*b, r.unit),
        },
        [v, ..] => InputValue::Scalar {
            value: *v,
            unit: r.unit,
        },
        [] => return Err("\"value\" is empty".into()),
    };
    let taken = Timestamp::parse(&r.time).map_err(|e| e.to_string())?;
    let patient = who(r.patient, &r.device)?;
    Ok(ReadingInput {
        patient,
        device: r.device,
        metric,
        value,
        taken,
        received_ms,
        status: Status::Final,
        identifier: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_many_and_errors_per_item() {
        let msg = br#"[
            {"patient":"p1","device":"w","metric":"heart-rate","value":72,"unit":"/min","time":"2025-06-01T08:30:00Z"},
            {"patient":"p1","metric":"85354-9","value":[120,80],"unit":"mm[Hg]","time":"2025-06-01T08:30:00+02:00"},
            {"patient":"p1","metric":"mood","value":1,"unit":"1","time":"2025-06-01T08:30:00Z"},
            {"patient":"p1","metric":"spo2","value":97,"unit":"%","time":"2025-06-01T08:30:00Z","extra":1}
        ]"#;
        let items = parse_message(msg, 0).unwrap();
        assert!(items[0].is_ok());
        assert!(matches!(&items[1], Ok(Item::Reading(r)) if r.metric == Metric::BloodPressure));
        assert!(items[2].as_ref().unwrap_err().contains("unknown metric"));
        assert!(items[3].as_ref().unwrap_err().contains("unknown field"));
        let one = parse_message(br#"{"patient":"p","metric":"steps","value":5,"unit":"{steps}","time":"2025-06-01T08:30:00Z"}"#, 0).unwrap();
        assert_eq!(one.len(), 1);
        assert!(
            parse_message(b"[1,", 0)
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(parse_message(b"42", 0).is_err());
    }

    #[test]
    fn an_emergency_is_its_own_kind_of_item() {
        let msg = br#"[
            {"patient":"p1","device":"pendant","event":"fall","time":"2025-06-01T08:30:00.250Z"},
            {"device":"button-4","event":"sos","time":"2025-06-01T08:30:01Z"},
            {"patient":"p1","event":"trip","time":"2025-06-01T08:30:00Z"},
            {"event":"sos","time":"2025-06-01T08:30:00Z"},
            {"patient":"p1","event":"fall","time":"2025-06-01T08:30:00Z","value":1}
        ]"#;
        let items = parse_message(msg, 0).unwrap();
        let Ok(Item::Emergency(fall)) = &items[0] else {
            panic!("{:?}", items[0]);
        };
        assert_eq!(fall.emergency.id, "emergency-fall");
        assert_eq!(fall.taken.utc_ms % 1000, 250, "milliseconds are kept");
        assert!(matches!(&items[1], Ok(Item::Emergency(e)) if e.patient.is_empty()));
        assert!(
            items[2]
                .as_ref()
                .unwrap_err()
                .contains("unknown event \"trip\"")
        );
        assert!(items[3].as_ref().unwrap_err().contains("needs \"patient\""));
        assert!(items[4].as_ref().unwrap_err().contains("unknown field"));
    }

    #[test]
    fn reasons_are_written_for_people() {
        let bad = |value: &str| {
            let msg = format!(
                r#"{{"patient":"p","metric":"heart-rate","value":{value},"unit":"/min","time":"2025-06-01T08:30:00Z"}}"#
            );
            parse_message(msg.as_bytes(), 0)
                .unwrap()
                .pop()
                .unwrap()
                .unwrap_err()
        };
        let e = bad(r#""seventy""#);
        assert!(
            e.contains("\"value\" must be a number") && e.contains("seventy"),
            "{e}"
        );
        assert!(!e.contains("untagged"), "{e}");
        assert!(bad("[1, \"x\"]").contains("two numbers"));
        let missing = parse_message(br#"{"patient":"p"}"#, 0)
            .unwrap()
            .pop()
            .unwrap()
            .unwrap_err();
        assert!(
            missing.contains("missing field") && missing.contains("expected patient"),
            "{missing}"
        );
    }

    #[test]
    fn elements_are_kept_as_sent() {
        let msg = b"[ {\"a\" :  1},\n  {\"b\":[1, 2 ]} ]";
        assert_eq!(element(msg, 1).unwrap(), b"{\"b\":[1, 2 ]}");
        assert_eq!(element(msg, 2), None);
        assert_eq!(element(b"{}", 0), None);
    }
}
