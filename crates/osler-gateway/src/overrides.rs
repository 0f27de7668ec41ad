//! The hub's per-patient thresholds, fetched and cached: the edge sends every reading near or
//! past a patient's own threshold, and the critical rules here use it too.
//!
//! `GET {hub}/alerts/overrides` every `every` (default 30 s). The last answer is kept in
//! `overrides.json` in the data directory, so that a gateway restarted while the hub is away
//! still knows them. Until a change reaches the gateway (at most one poll interval while the hub
//! is reachable) the edge judges by the previous thresholds; the zone counts both the default
//! and the override threshold of each rule, so only a threshold moved further than the default
//! in the sending direction can be missed meanwhile (see ARCHITECTURE.md).

use std::collections::HashMap;
use std::path::Path;

use osler_rules::Overrides;

use crate::intake::OverrideCache;

pub const FILE: &str = "overrides.json";

#[derive(serde::Deserialize, serde::Serialize)]
struct Item {
    patient: String,
    rule: String,
    threshold: f64,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct List {
    overrides: Vec<Item>,
}

fn to_map(list: List) -> HashMap<String, Overrides> {
    let mut map: HashMap<String, Overrides> = HashMap::new();
    for i in list.overrides {
        if i.threshold.is_finite() && osler_rules::Rule::by_id(&i.rule).is_some() {
            map.entry(i.patient)
                .or_default()
                .insert(i.rule, i.threshold);
        }
    }
    map
}

/// The cached overrides from the data directory (empty if none were ever fetched).
pub fn load(data: &Path) -> OverrideCache {
    let map = std::fs::read(data.join(FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<List>(&b).ok())
        .map(to_map)
        .unwrap_or_default();
    OverrideCache::new(std::sync::RwLock::new(map))
}

/// Replaces the cache with the hub's answer; the number of overrides.
pub fn apply(cache: &OverrideCache, text: &str) -> Result<usize, String> {
    let list = serde_json::from_str::<List>(text).map_err(|e| e.to_string())?;
    let map = to_map(list);
    let n = map.values().map(|o| o.len()).sum();
    *cache.write().unwrap_or_else(|p| p.into_inner()) = map;
    Ok(n)
}
