//! What the sources (HTTP, MQTT) do with each item of a device's message: bind it to the
//! device that sent it, attribute it to a patient where it named only its device, validate it.
//! A reading goes on to the edge; an emergency becomes an alert entry, announced to the hub at
//! once and committed to the emergencies lane, whose uploader never waits for company.

use osler_core::Reading;
use osler_wire::AlertEntry;

use crate::assignments::AssignmentCache;
use crate::input::{EmergencyInput, Item};

/// What an item became.
pub(crate) enum Admitted {
    Reading(Reading),
    /// A reading attributed by its device (the hub attributes it again by its own copy).
    ByDevice(Reading),
    /// An emergency's alert entry, as wire JSON.
    Alert(String),
}

/// How far ahead of the gateway's clock an emergency's time may be (a device's clock drifts;
/// an emergency is never refused for a few seconds of it).
const AHEAD_MS: i64 = 5 * 60_000;

/// Why an item is refused, and whether it is kept in quarantine: an item its device may not
/// send (another device's, another patient's) is; one that is merely invalid is answered.
pub(crate) struct Refusal {
    pub reason: String,
    pub quarantine: bool,
}

fn invalid(reason: String) -> Refusal {
    Refusal {
        reason,
        quarantine: false,
    }
}

fn not_its_own(reason: String) -> Refusal {
    Refusal {
        reason,
        quarantine: true,
    }
}

/// Binds, attributes and validates one item.
pub(crate) fn admit(
    item: Item,
    device: Option<&str>,
    now_ms: i64,
    assignments: &AssignmentCache,
) -> Result<Admitted, Refusal> {
    match item {
        Item::Reading(mut input) => {
            if let Some(d) = device {
                crate::devices::bind(&mut input, d, assignments).map_err(not_its_own)?;
            }
            Ok(
                match crate::assignments::validate(input, now_ms, assignments).map_err(invalid)? {
                    (r, false) => Admitted::Reading(r),
                    (r, true) => Admitted::ByDevice(r),
                },
            )
        }
        Item::Emergency(mut e) => {
            if let Some(d) = device {
                crate::devices::bind_parts(&mut e.device, &e.patient, e.taken, d, assignments)
                    .map_err(not_its_own)?;
            }
            emergency(e, now_ms, assignments)
                .map(Admitted::Alert)
                .map_err(invalid)
        }
    }
}

fn emergency(
    e: EmergencyInput,
    now_ms: i64,
    assignments: &AssignmentCache,
) -> Result<String, String> {
    if e.taken.utc_ms > now_ms + AHEAD_MS {
        return Err(format!(
            "the emergency's time {} is more than 5 minutes ahead of this gateway's clock",
            e.taken
        ));
    }
    let by_device = e.patient.is_empty();
    let patient = if by_device {
        let device = e.device.as_deref().unwrap_or("");
        let a = assignments.read().unwrap_or_else(|p| p.into_inner());
        a.patient_at(device, e.taken.utc_ms)
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "device {device:?} is assigned to no patient at {}: an emergency needs its patient (name \"patient\", or register a DeviceUseStatement)",
                    e.taken
                )
            })?
    } else {
        e.patient
    };
    if osler_core::Id::parse(&patient).is_none() {
        return Err(format!("\"patient\" {patient:?} is not a valid id"));
    }
    Ok(AlertEntry {
        p: patient,
        rule: e.emergency.id.to_owned(),
        change: "raised".into(),
        t: e.taken.utc_ms,
        v: 1.0,
        th: 1.0,
        late: false,
        // The hub believes a by-device attribution only when its own assignments agree.
        d: if by_device { e.device } else { None },
    }
    .to_json())
}
