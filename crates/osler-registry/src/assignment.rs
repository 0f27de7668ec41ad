//! Which patient a device's reading belongs to. A DeviceUseStatement in force assigns a device
//! to a patient for a period; a reading is attributed to the patient whose assignment covers
//! the time it was **taken** (not received), so a late reading after a reassignment still goes
//! to the patient who wore the device then.
//!
//! Periods are half-open, `[start, end)`: when a device moves at time T (the first assignment
//! ends at T, the next starts at T), a reading taken exactly at T belongs to the new patient,
//! and the two assignments do not overlap. (FHIR's `Period.end` is inclusive; at millisecond
//! precision the handover instant has to go one way, and the new wearer is the one who has it.)

use std::collections::HashMap;

/// A device assigned to a patient for a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The Device's id.
    pub device: String,
    /// The Patient's id.
    pub patient: String,
    /// UTC ms, inclusive.
    pub start_ms: i64,
    /// UTC ms, exclusive; `None` while it lasts.
    pub end_ms: Option<i64>,
    /// The id of the DeviceUseStatement that makes it.
    pub source: String,
}

impl Assignment {
    pub fn covers(&self, t_ms: i64) -> bool {
        self.start_ms <= t_ms && self.end_ms.is_none_or(|e| t_ms < e)
    }

    /// Whether the two periods share an instant.
    pub fn overlaps(&self, other: &Assignment) -> bool {
        let before = |a: &Assignment, b: &Assignment| a.end_ms.is_some_and(|e| e <= b.start_ms);
        !before(self, other) && !before(other, self)
    }
}

/// The assignment of `device` that covers `t_ms`, if any. Assignments of one device never
/// overlap (the store refuses one that would), so there is at most one.
pub fn attribute<'a>(
    assignments: impl IntoIterator<Item = &'a Assignment>,
    device: &str,
    t_ms: i64,
) -> Option<&'a Assignment> {
    assignments
        .into_iter()
        .find(|a| a.device == device && a.covers(t_ms))
}

/// The first of `existing` (other than `new`'s own statement) that overlaps `new` on the same
/// device.
pub fn overlapping<'a>(
    existing: impl IntoIterator<Item = &'a Assignment>,
    new: &Assignment,
) -> Option<&'a Assignment> {
    existing
        .into_iter()
        .find(|a| a.device == new.device && a.source != new.source && a.overlaps(new))
}

/// Every assignment, indexed by device: what the gateway caches and the hub consults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignments {
    by_device: HashMap<String, Vec<Assignment>>,
}

impl Assignments {
    pub fn new(all: impl IntoIterator<Item = Assignment>) -> Assignments {
        let mut by_device: HashMap<String, Vec<Assignment>> = HashMap::new();
        for a in all {
            by_device.entry(a.device.clone()).or_default().push(a);
        }
        for list in by_device.values_mut() {
            list.sort_by_key(|a| a.start_ms);
        }
        Assignments { by_device }
    }

    /// The patient `device` was assigned to at `t_ms`.
    pub fn patient_at(&self, device: &str, t_ms: i64) -> Option<&str> {
        let list = self.by_device.get(device)?;
        attribute(list, device, t_ms).map(|a| a.patient.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_device.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Assignment> {
        self.by_device.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(device: &str, patient: &str, start: i64, end: Option<i64>, src: &str) -> Assignment {
        Assignment {
            device: device.into(),
            patient: patient.into(),
            start_ms: start,
            end_ms: end,
            source: src.into(),
        }
    }

    #[test]
    fn a_reading_at_the_handover_belongs_to_the_new_wearer() {
        let all = Assignments::new([
            a("d", "anna", 100, Some(200), "u1"),
            a("d", "ben", 200, None, "u2"),
        ]);
        assert_eq!(all.patient_at("d", 99), None);
        assert_eq!(all.patient_at("d", 100), Some("anna"));
        assert_eq!(all.patient_at("d", 199), Some("anna"));
        assert_eq!(all.patient_at("d", 200), Some("ben"));
        assert_eq!(all.patient_at("d", i64::MAX), Some("ben"));
        assert_eq!(all.patient_at("other", 150), None);
    }

    #[test]
    fn touching_periods_do_not_overlap_but_shared_instants_do() {
        let first = a("d", "anna", 100, Some(200), "u1");
        assert!(!first.overlaps(&a("d", "ben", 200, None, "u2")));
        assert!(first.overlaps(&a("d", "ben", 199, None, "u2")));
        assert!(first.overlaps(&a("d", "ben", 0, Some(101), "u2")));
        assert!(!first.overlaps(&a("d", "ben", 0, Some(100), "u2")));
        let open = a("d", "anna", 100, None, "u1");
        assert!(open.overlaps(&a("d", "ben", 10_000, None, "u2")));
        // Its own statement, rewritten, is not an overlap; another device never is.
        assert!(overlapping([&open], &a("d", "anna", 50, None, "u1")).is_none());
        assert!(overlapping([&open], &a("e", "ben", 100, None, "u3")).is_none());
    }
}
