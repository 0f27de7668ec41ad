//! Emergencies: a fall a wearable detected, an SOS button pressed. They are events, not
//! readings: no threshold decides them and no later reading resolves them (a person does, once
//! the patient is safe). Each is the highest priority the hub has: the whole care team is
//! notified at once and the escalation is short and fixed (`osler_store::escalation`), whatever
//! the team's own policy. Fall detectors are IEEE 11073-10471 (independent living activity
//! hub, partition 130: `../shared/reference/clinical.md`); the device format carries the
//! event's kind by name.

use crate::Severity;

/// An emergency event kind and the alert it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emergency {
    /// The alert's rule id; every one begins with [`EMERGENCY_PREFIX`].
    pub id: &'static str,
    /// The event's name in the device format (`"event": "fall"`).
    pub event: &'static str,
    pub title: &'static str,
    pub severity: Severity,
}

/// What every emergency's rule id begins with (the store's escalation keys on it).
pub const EMERGENCY_PREFIX: &str = "emergency-";

pub const EMERGENCIES: &[Emergency] = &[
    Emergency {
        id: "emergency-fall",
        event: "fall",
        title: "Fall detected",
        severity: Severity::Critical,
    },
    Emergency {
        id: "emergency-sos",
        event: "sos",
        title: "SOS button pressed",
        severity: Severity::Critical,
    },
];

impl Emergency {
    pub fn by_id(id: &str) -> Option<&'static Emergency> {
        EMERGENCIES.iter().find(|e| e.id == id)
    }

    pub fn by_event(event: &str) -> Option<&'static Emergency> {
        EMERGENCIES.iter().find(|e| e.event == event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_emergency_is_named_for_the_escalation_and_the_device_format() {
        for e in EMERGENCIES {
            assert!(e.id.starts_with(EMERGENCY_PREFIX), "{}", e.id);
            assert_eq!(Emergency::by_event(e.event), Some(e));
            assert_eq!(Emergency::by_id(e.id), Some(e));
            assert!(
                crate::Rule::by_id(e.id).is_none(),
                "no rule shares an emergency's id"
            );
        }
        assert!(Emergency::by_event("trip").is_none());
    }
}
