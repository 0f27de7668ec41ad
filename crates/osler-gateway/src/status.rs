//! What `/status` reports: the outbox's depth and age, the last upload, the hub's reachability,
//! and what the edge sent, summarised and filtered.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use osler_wire::Lane;
use serde_json::{Value, json};

use crate::outbox::{EdgeStats, Outbox};

#[derive(Debug, Default)]
pub struct Status {
    last_attempt_ms: AtomicI64,
    last_success_ms: AtomicI64,
    hub_reachable: AtomicBool,
    last_error: Mutex<Option<String>>,
    uploaded_entries: AtomicU64,
    uploaded_alerts: AtomicU64,
    uploaded_summaries: AtomicU64,
    uploaded_batches: AtomicU64,
    uploaded_bytes: AtomicU64,
    pub received: AtomicU64,
    pub rejected: AtomicU64,
    pub quarantined: AtomicU64,
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
            Lane::Summaries => self
                .uploaded_summaries
                .fetch_add(entries, Ordering::Relaxed),
        };
        self.uploaded_batches.fetch_add(1, Ordering::Relaxed);
        self.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    pub fn failure(&self, reason: String) {
        self.hub_reachable.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// The `/status` document.
    pub fn report(&self, gateway: &str, outbox: &Outbox, edge: &EdgeStats, now_ms: i64) -> Value {
        let ms = |a: &AtomicI64| {
            let v = a.load(Ordering::Relaxed);
            (v > 0).then_some(v)
        };
        let oldest_any = Lane::ALL
            .into_iter()
            .filter_map(|l| outbox.oldest_ms(l).ok().flatten())
            .min();
        let tally = *edge.tally.lock().unwrap_or_else(|p| p.into_inner());
        let last_success = ms(&self.last_success_ms);
        json!({
            "gateway": gateway,
            "outbox": {
                "readings": outbox.depth().readings.load(Ordering::Relaxed),
                "alerts": outbox.depth().alerts.load(Ordering::Relaxed),
                "summaries": outbox.depth().summaries.load(Ordering::Relaxed),
                "oldest_unsent_age_s": oldest_any.map(|t| (now_ms - t).max(0) as f64 / 1000.0),
                "recovered_from_damaged_file": outbox.recovered_from.as_ref().map(|p| p.display().to_string()),
            },
            "upload": {
                "last_success_ms": last_success,
                "last_success_age_s": last_success.map(|t| (now_ms - t).max(0) as f64 / 1000.0),
                "last_attempt_ms": ms(&self.last_attempt_ms),
                "hub_reachable": self.hub_reachable.load(Ordering::Relaxed),
                "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                "entries": self.uploaded_entries.load(Ordering::Relaxed),
                "alerts": self.uploaded_alerts.load(Ordering::Relaxed),
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
        })
    }
}
