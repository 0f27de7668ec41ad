//! What `/status` reports: the outbox's depth and age, the last upload, the hub's reachability,
//! and what the edge sent, summarised and filtered.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use osler_wire::Lane;
use serde_json::{Value, json};

use crate::intake::EdgeStats;
use crate::intake::Intake;

#[derive(Debug, Default)]
pub struct Status {
    last_attempt_ms: AtomicI64,
    last_success_ms: AtomicI64,
    hub_reachable: AtomicBool,
    last_error: Mutex<Option<String>>,
    uploaded_entries: AtomicU64,
    uploaded_alerts: AtomicU64,
    uploaded_emergencies: AtomicU64,
    uploaded_summaries: AtomicU64,
    uploaded_batches: AtomicU64,
    uploaded_bytes: AtomicU64,
    /// Since when uploads have failed without a success between (0: they have not).
    failing_since_ms: AtomicI64,
    pub received: AtomicU64,
    pub rejected: AtomicU64,
    pub quarantined: AtomicU64,
    mqtt: Mutex<Option<Mqtt>>,
}

/// The MQTT source as `/status` shows it (`None` before it first tries, or without MQTT).
#[derive(Debug, Default, Clone)]
struct Mqtt {
    connected: bool,
    /// Since when it is connected, or disconnected.
    since_ms: i64,
    last_error: Option<String>,
    messages: u64,
    last_message_ms: i64,
    /// Messages refused by a full outbox, unacknowledged, waiting to be retried.
    waiting: u64,
    /// Since when messages have waited (0: none wait).
    waiting_since_ms: i64,
}

impl Status {
    pub fn attempt(&self, now_ms: i64) {
        self.last_attempt_ms.store(now_ms, Ordering::Relaxed);
    }
    pub fn success(&self, now_ms: i64, lane: Lane, entries: u64, bytes: u64) {
        self.last_success_ms.store(now_ms, Ordering::Relaxed);
        self.hub_reachable.store(true, Ordering::Relaxed);
        match lane {
            Lane::Readings => self.uploaded_entries.fetch_add(entries, Ordering::Relaxed),
            Lane::Alerts => self.uploaded_alerts.fetch_add(entries, Ordering::Relaxed),
            Lane::Emergencies => self
                .uploaded_emergencies
                .fetch_add(entries, Ordering::Relaxed),
            Lane::Summaries => self
                .uploaded_summaries
                .fetch_add(entries, Ordering::Relaxed),
        };
        self.uploaded_batches.fetch_add(1, Ordering::Relaxed);
        self.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }
    pub fn failure(&self, reason: String, now_ms: i64) {
        self.hub_reachable.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        let _ =
            self.failing_since_ms
                .compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Readings received by a source, and how many of them were invalid.
    pub fn count_in(&self, readings: u64, quarantined: u64) {
        self.received.fetch_add(readings, Ordering::Relaxed);
        self.quarantined.fetch_add(quarantined, Ordering::Relaxed);
    }

    fn mqtt(&self, f: impl FnOnce(&mut Mqtt)) {
        let mut m = self.mqtt.lock().unwrap_or_else(|p| p.into_inner());
        f(m.get_or_insert_with(Mqtt::default));
    }
    pub fn mqtt_connected(&self, now_ms: i64) {
        self.mqtt(|m| {
            m.connected = true;
            m.since_ms = now_ms;
        });
    }
    pub fn mqtt_down(&self, reason: String, now_ms: i64) {
        self.mqtt(|m| {
            if m.connected || m.since_ms == 0 {
                m.since_ms = now_ms;
            }
            m.connected = false;
            m.last_error = Some(reason);
        });
    }
    pub fn mqtt_message(&self, now_ms: i64) {
        self.mqtt(|m| {
            m.messages += 1;
            m.last_message_ms = now_ms;
        });
    }
    pub fn mqtt_waiting(&self, n: u64, now_ms: i64) {
        self.mqtt(|m| {
            match (m.waiting, n) {
                (0, 1..) => m.waiting_since_ms = now_ms,
                (_, 0) => m.waiting_since_ms = 0,
                _ => {}
            }
            m.waiting = n;
        });
    }

    /// The `/status` document.
    pub fn report(&self, gateway: &str, intake: &Intake, edge: &EdgeStats, now_ms: i64) -> Value {
        let outbox = intake.outbox();
        let depth = |lane: Lane| {
            intake
                .outbox_of(lane)
                .depth()
                .lane(lane)
                .load(Ordering::Relaxed)
        };
        let ms = |a: &AtomicI64| {
            let v = a.load(Ordering::Relaxed);
            (v > 0).then_some(v)
        };
        let oldest_any = Lane::ALL
            .into_iter()
            .filter_map(|l| intake.outbox_of(l).oldest_ms(l).ok().flatten())
            .min();
        let tally = *edge.tally.lock().unwrap_or_else(|p| p.into_inner());
        let last_success = ms(&self.last_success_ms);
        let age = |t: i64| (t > 0).then(|| (now_ms - t).max(0) as f64 / 1000.0);
        let mqtt = self.mqtt.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mqtt = mqtt.map(|m| {
            json!({
                "connected": m.connected,
                "connected_for_s": if m.connected { age(m.since_ms) } else { None },
                "down_for_s": if m.connected { None } else { age(m.since_ms) },
                "last_error": m.last_error,
                "messages": m.messages,
                "last_message_age_s": age(m.last_message_ms),
                "waiting_for_room": m.waiting,
                "waiting_for_room_s": age(m.waiting_since_ms),
            })
        });
        let failing_since = ms(&self.failing_since_ms);
        json!({
            "gateway": gateway,
            "outbox": {
                "readings": depth(Lane::Readings),
                "alerts": depth(Lane::Alerts),
                "summaries": depth(Lane::Summaries),
                "emergencies": depth(Lane::Emergencies),
                "oldest_unsent_age_s": oldest_any.map(|t| (now_ms - t).max(0) as f64 / 1000.0),
                "recovered_from_damaged_file": outbox.recovered_from.as_ref().map(|p| p.display().to_string()),
            },
            "upload": {
                "last_success_ms": last_success,
                "last_success_age_s": last_success.map(|t| (now_ms - t).max(0) as f64 / 1000.0),
                "last_attempt_ms": ms(&self.last_attempt_ms),
                "hub_reachable": self.hub_reachable.load(Ordering::Relaxed),
                "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                "failing_since_ms": failing_since,
                "failing_for_s": failing_since.map(age),
                "entries": self.uploaded_entries.load(Ordering::Relaxed),
                "alerts": self.uploaded_alerts.load(Ordering::Relaxed),
                "emergencies": self.uploaded_emergencies.load(Ordering::Relaxed),
                "summaries": self.uploaded_summaries.load(Ordering::Relaxed),
                "batches": self.uploaded_batches.load(Ordering::Relaxed),
                "bytes": self.uploaded_bytes.load(Ordering::Relaxed),
            },
            "edge": {
                "streams": edge.streams.load(Ordering::Relaxed),
                "streams_holding": edge.open.load(Ordering::Relaxed),
                "sent": {
                    "total": tally.sent(),
                    "near_threshold": tally.zone,
                    "after_threshold": tally.context,
                    "change": tally.change,
                    "heartbeat": tally.heartbeat,
                    "every_reading_metric": tally.all,
                    "late": tally.late,
                },
                "duplicates_dropped": tally.duplicates,
                "summarised": tally.folded,
                "spikes": tally.spikes,
                "summaries": edge.summaries.load(Ordering::Relaxed),
                "decision_p50_us": edge.decision_quantile_us(0.5),
                "decision_p99_us": edge.decision_quantile_us(0.99),
            },
            "ingest": {
                "received": self.received.load(Ordering::Relaxed),
                "rejected": self.rejected.load(Ordering::Relaxed),
                "quarantined": self.quarantined.load(Ordering::Relaxed),
            },
            "mqtt": mqtt,
        })
    }
}
