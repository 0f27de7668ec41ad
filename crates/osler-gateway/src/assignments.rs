//! The hub's device assignments, fetched and cached like the thresholds (`overrides`): a
//! device that reports only its serial number is attributed here, at the time its reading
//! was taken, so that the critical rules run for its patient even while the hub is away.
//!
//! `GET {hub}/registry/assignments` every poll interval; the last answer is kept in
//! `assignments.json`. The gateway's attribution is only ever a guess for its own rules: such
//! readings travel whole (the edge does not fold them into summaries) and marked, and the hub
//! attributes them again by its own assignments, which are the truth. So a gateway that has
//! not yet seen a new assignment, or still holds an ended one, cannot misfile a reading.

use std::path::Path;
use std::sync::{Arc, RwLock};

use osler_core::{Reading, ReadingInput};
use osler_registry::{Assignment, Assignments};

pub const FILE: &str = "assignments.json";

/// What a reading names its patient as when the gateway cannot attribute it (the hub
/// attributes or holds it; the gateway's rules skip it).
pub const UNATTRIBUTED: &str = "unattributed";

#[derive(serde::Deserialize)]
struct Item {
    device: String,
    /// Every name the device goes by (its id, serial number, MAC...).
    names: Vec<String>,
    patient: String,
    start_ms: i64,
    end_ms: Option<i64>,
    source: String,
}

#[derive(serde::Deserialize)]
struct List {
    assignments: Vec<Item>,
}

/// The cached assignments, indexed by every name of each device.
pub type AssignmentCache = Arc<RwLock<Assignments>>;

fn parse(text: &str) -> Result<Assignments, String> {
    let list: List = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    for i in list.assignments {
        for name in i.names.iter().chain([&i.device]) {
            all.push(Assignment {
                device: name.clone(),
                patient: i.patient.clone(),
                start_ms: i.start_ms,
                end_ms: i.end_ms,
                source: i.source.clone(),
            });
        }
    }
    Ok(Assignments::new(all))
}

/// The cached assignments from the data directory (none if never fetched).
pub fn load(data: &Path) -> AssignmentCache {
    let a = std::fs::read_to_string(data.join(FILE))
        .ok()
        .and_then(|t| parse(&t).ok())
        .unwrap_or_default();
    Arc::new(RwLock::new(a))
}

/// Replaces the cache with the hub's answer; the number of assignments.
pub fn apply(cache: &AssignmentCache, text: &str) -> Result<usize, String> {
    let a = parse(text)?;
    let n = a.len();
    *cache.write().unwrap_or_else(|p| p.into_inner()) = a;
    Ok(n)
}

/// Validates a reading of the device format. One that named no patient (only its device)
/// is attributed by the cached assignments at the time it was taken, or named
/// [`UNATTRIBUTED`]; the second value says it was attributed by device, which the hub must
/// redo.
pub fn validate(
    mut input: ReadingInput,
    now_ms: i64,
    cache: &AssignmentCache,
) -> Result<(Reading, bool), String> {
    let by_device = input.patient.is_empty();
    if by_device {
        let device = input.device.as_deref().unwrap_or("");
        let a = cache.read().unwrap_or_else(|p| p.into_inner());
        input.patient = a
            .patient_at(device, input.taken.utc_ms)
            .unwrap_or(UNATTRIBUTED)
            .to_owned();
    }
    let r = input.validate(now_ms).map_err(|e| e.to_string())?;
    Ok((r, by_device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_known_by_its_serial_is_attributed_at_its_reading_time() {
        let cache = AssignmentCache::default();
        let n = apply(
            &cache,
            r#"{"assignments":[
                {"device":"watch-1","names":["SN-1"],"patient":"anna","start_ms":1000,"end_ms":2000,"source":"u1"},
                {"device":"watch-1","names":["SN-1"],"patient":"ben","start_ms":2000,"end_ms":null,"source":"u2"}]}"#,
        )
        .unwrap();
        assert_eq!(n, 4);
        let a = cache.read().unwrap();
        assert_eq!(a.patient_at("SN-1", 1999), Some("anna"));
        assert_eq!(a.patient_at("watch-1", 2000), Some("ben"));
        assert_eq!(a.patient_at("SN-1", 999), None);
    }
}
