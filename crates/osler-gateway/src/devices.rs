//! Devices are identities: a device is authenticated on the way in and may report only for
//! the patient its registry assignment names.
//!
//! Over HTTP a device sends its own bearer token (`osler gateway --add-device ID` makes one;
//! the gateway keeps only its SHA-256, in `devices.json`). Over MQTT the topic carries the
//! device (`osler/{device}/readings`: the `+` of the topic filter), and the broker's ACL
//! lets each device publish only under its own name (see SECURITY.md for Mosquitto's
//! `pattern write osler/%u/readings`). Either way a reading that names another device, or a
//! patient its device is not assigned to at the reading's time, is quarantined with the
//! reason; one that names no patient is attributed by its device as before.
//!
//! `--open-devices` turns all of it off (development, simulators): every reading is taken
//! as it claims, as gateways did before devices had identities.

use std::collections::HashMap;
use std::path::Path;

use osler_core::ReadingInput;

use crate::assignments::AssignmentCache;

pub const FILE: &str = "devices.json";
const PREFIX: &str = "osl_dev_";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The enrolled devices, by the hash of their token.
#[derive(Debug, Default)]
pub struct Devices {
    /// `--open-devices`: no credentials asked, no binding checked.
    pub open: bool,
    by_hash: HashMap<String, String>,
}

/// Why a device's request is refused (401).
#[derive(Debug, PartialEq, Eq)]
pub enum Unauthenticated {
    Missing,
    Unknown,
}

impl Devices {
    /// The devices enrolled in `data` (none when the file is absent).
    pub fn load(data: &Path, open: bool) -> Result<Devices, String> {
        let path = data.join(FILE);
        let mut d = Devices {
            open,
            by_hash: HashMap::new(),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(d),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not readable: {e}", path.display()))?;
        for dev in v["devices"].as_array().into_iter().flatten() {
            if let (Some(id), Some(h)) = (dev["id"].as_str(), dev["token_sha256"].as_str()) {
                d.by_hash.insert(h.to_owned(), id.to_owned());
            }
        }
        Ok(d)
    }

    /// Enrols a device (replacing its earlier token) and returns its new token, shown once.
    pub fn add(data: &Path, id: &str) -> Result<String, String> {
        if osler_core::Id::parse(id).is_none() {
            return Err(format!(
                "{id:?} is not a valid device id (1-64 letters, digits, '-' or '.')"
            ));
        }
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
        let token = osler_auth::token::secret(PREFIX, &random);
        let mut current = Devices::load(data, false)?;
        current.by_hash.retain(|_, d| d != id);
        current
            .by_hash
            .insert(hex(&osler_auth::token::hash(&token)), id.to_owned());
        let mut list: Vec<serde_json::Value> = current
            .by_hash
            .iter()
            .map(|(h, d)| serde_json::json!({"id": d, "token_sha256": h}))
            .collect();
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        let text = serde_json::json!({"devices": list}).to_string();
        std::fs::create_dir_all(data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let tmp = data.join(format!("{FILE}.tmp"));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        }
        std::fs::rename(&tmp, data.join(FILE)).map_err(|e| format!("cannot save {FILE}: {e}"))?;
        Ok(token)
    }

    /// The device an `Authorization: Bearer` header authenticates; `Ok(None)` when devices are
    /// open.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Option<String>, Unauthenticated> {
        if self.open {
            return Ok(None);
        }
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or(Unauthenticated::Missing)?
            .trim();
        self.by_hash
            .get(&hex(&osler_auth::token::hash(token)))
            .cloned()
            .map(Some)
            .ok_or(Unauthenticated::Unknown)
    }
}

/// The device a topic names: the segment where the filter has its `+`.
pub fn topic_device(filter: &str, topic: &str) -> Option<String> {
    let i = filter.split('/').position(|s| s == "+")?;
    let d = topic.split('/').nth(i)?;
    osler_core::Id::parse(d).map(|_| d.to_owned())
}

/// Binds a reading to the authenticated `device`: it may name no other device, and a patient
/// it names must be the one the device is assigned to at the reading's time. The reason,
/// when it may not, is for the quarantine.
pub fn bind(input: &mut ReadingInput, device: &str, cache: &AssignmentCache) -> Result<(), String> {
    bind_parts(
        &mut input.device,
        &input.patient,
        input.taken,
        device,
        cache,
    )
}

/// [`bind`] for any item: its named device (filled in with the sender when absent), its
/// patient (empty: to be attributed by the device) and its time.
pub fn bind_parts(
    named: &mut Option<String>,
    patient: &str,
    taken: osler_core::Timestamp,
    device: &str,
    cache: &AssignmentCache,
) -> Result<(), String> {
    match named.as_deref() {
        None => *named = Some(device.to_owned()),
        Some(d) if d == device => {}
        Some(d) => {
            return Err(format!(
                "the reading names device {d:?}, but it was sent by device {device:?}"
            ));
        }
    }
    if patient.is_empty() {
        // Attributed by its device, from the hub's assignments.
        return Ok(());
    }
    let a = cache.read().unwrap_or_else(|p| p.into_inner());
    match a.patient_at(device, taken.utc_ms) {
        Some(p) if p == patient => Ok(()),
        Some(p) => Err(format!(
            "device {device:?} is assigned to patient {p:?} at {taken} (registry), but the item claims patient {patient:?}"
        )),
        None => Err(format!(
            "device {device:?} is assigned to no patient at {taken}: register a DeviceUseStatement, or leave \"patient\" out to have the hub attribute it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_token_authenticates_its_device_only() {
        let dir = std::env::temp_dir().join(format!("osler-devices-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t1 = Devices::add(&dir, "cuff-1").unwrap();
        let t2 = Devices::add(&dir, "watch-2").unwrap();
        let d = Devices::load(&dir, false).unwrap();
        assert_eq!(
            d.authenticate(Some(&format!("Bearer {t1}"))),
            Ok(Some("cuff-1".into()))
        );
        assert_eq!(
            d.authenticate(Some(&format!("Bearer {t2}"))),
            Ok(Some("watch-2".into()))
        );
        assert_eq!(d.authenticate(None), Err(Unauthenticated::Missing));
        assert_eq!(
            d.authenticate(Some("Bearer osl_dev_nope")),
            Err(Unauthenticated::Unknown)
        );
        // A new token replaces the old one.
        let t1b = Devices::add(&dir, "cuff-1").unwrap();
        let d = Devices::load(&dir, false).unwrap();
        assert_eq!(
            d.authenticate(Some(&format!("Bearer {t1}"))),
            Err(Unauthenticated::Unknown)
        );
        assert_eq!(
            d.authenticate(Some(&format!("Bearer {t1b}"))),
            Ok(Some("cuff-1".into()))
        );
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(!text.contains(&t1b), "only hashes are kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn topics_name_their_device() {
        assert_eq!(
            topic_device("osler/+/readings", "osler/cuff-1/readings").as_deref(),
            Some("cuff-1")
        );
        assert_eq!(topic_device("osler/readings", "osler/readings"), None);
        assert_eq!(topic_device("osler/+/readings", "osler/a b/readings"), None);
    }
}
