//! Critical rules at the edge: the same rule definitions as the hub (`osler-rules`), only the
//! rules marked critical, so that a crisis is raised even while the hub is unreachable. Alert
//! events travel in the outbox's alerts lane, which the uploader sends before any reading; the
//! hub merges them with its own evaluation (one open alert per patient and rule).
//!
//! Thresholds are the patient's overrides as last fetched from the hub (see `overrides`), else
//! the defaults.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use osler_core::{Reading, Timestamp};
use osler_rules::{Engine, Overrides, Rule};
use osler_wire::AlertEntry;
use serde_json::{Value, json};

/// How many recent local alert events `GET /alerts` on the gateway shows.
const RECENT: usize = 200;

pub struct LocalAlerts {
    engine: Mutex<Engine>,
    recent: Mutex<VecDeque<Value>>,
}

impl Default for LocalAlerts {
    fn default() -> Self {
        LocalAlerts {
            engine: Mutex::new(Engine::critical_only()),
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

impl LocalAlerts {
    /// Runs readings through the critical rules; returns alert entries for the alerts lane.
    /// With `by_device`, the readings' patients come from the gateway's copy of the device
    /// assignments: each entry names the device, so that the hub can check the attribution.
    pub fn evaluate(
        &self,
        readings: &[Reading],
        overrides: &HashMap<String, Overrides>,
        by_device: bool,
    ) -> Vec<String> {
        let events: Vec<_> = {
            let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
            readings
                .iter()
                .flat_map(|r| {
                    let device = by_device
                        .then(|| r.device.as_ref().map(|d| d.to_string()))
                        .flatten();
                    engine
                        .observe(r, overrides.get(r.patient.as_str()))
                        .into_iter()
                        .map(move |e| (e, device.clone()))
                })
                .collect()
        };
        let mut out = Vec::with_capacity(events.len());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (e, device) in events {
            let change = e.change.as_str();
            tracing::warn!(patient = %e.patient, rule = e.rule, severity = e.severity.as_str(), change, "edge alert");
            recent.push_back(json!({
                "patient": e.patient,
                "rule": e.rule,
                "title": Rule::by_id(e.rule).map_or("", |r| r.title),
                "severity": e.severity.as_str(),
                "event": change,
                "reading_time": Timestamp::utc(e.reading_ms).to_string(),
                "value": e.value,
            }));
            if recent.len() > RECENT {
                recent.pop_front();
            }
            out.push(
                AlertEntry {
                    p: e.patient,
                    rule: e.rule.to_owned(),
                    change: change.to_owned(),
                    t: e.reading_ms,
                    v: e.value,
                    th: e.threshold,
                    late: e.late,
                    d: device,
                }
                .to_json(),
            );
        }
        out
    }

    /// Recent local alert events, newest last.
    pub fn recent(&self) -> Vec<Value> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}
