//! Prometheus text-format metrics: request counts and latencies per route, readings committed,
//! readings rejected, commits.
//!
//! A handful of counters behind one mutex: the hub takes tens of requests a second under bulk
//! load (a Bundle carries a thousand readings), so contention is nothing beside the JSON work.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use osler_store::StoreStats;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    rejected: BTreeMap<&'static str, u64>,
    webhooks_dead: u64,
    notices: u64,
}

/// The hub's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let h = m.latency.entry(route.to_owned()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts readings refused, by the kind of reason.
    pub fn rejected(&self, reason: &'static str, n: u64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.rejected.entry(reason).or_default() += n;
    }

    /// Counts emergencies announced before their commit (see `notice`).
    pub fn notices(&self, n: u64) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).notices += n;
    }

    /// Counts a webhook delivery dead-lettered.
    pub fn webhook_dead(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .webhooks_dead += 1;
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(
        &self,
        store: &StoreStats,
        burden: Option<osler_store::lifecycle::Burden>,
        technical_open: Option<usize>,
    ) -> String {
        let mut out = String::new();
        if let Some(n) = technical_open {
            let _ = writeln!(
                out,
                "# HELP osler_technical_alerts_open Technical alerts open (gateways silent or filling, webhook endpoints failing).\n# TYPE osler_technical_alerts_open gauge\nosler_technical_alerts_open {n}"
            );
        }
        if let Some(b) = burden {
            let per_day = b.alerts as f64 / b.patient_days.max(1e-9);
            let answered = b.answered as f64 / (b.alerts.max(1) as f64);
            let _ = writeln!(
                out,
                "# HELP osler_alerts_raised_30d Alerts raised in the last 30 days.\n# TYPE osler_alerts_raised_30d gauge\nosler_alerts_raised_30d {}",
                b.alerts
            );
            let _ = writeln!(
                out,
                "# HELP osler_patient_days_30d Days of monitoring in the last 30 days, over every patient.\n# TYPE osler_patient_days_30d gauge\nosler_patient_days_30d {:.3}",
                b.patient_days
            );
            let _ = writeln!(
                out,
                "# HELP osler_alerts_per_patient_day Alert burden: alerts raised per patient-day, last 30 days.\n# TYPE osler_alerts_per_patient_day gauge\nosler_alerts_per_patient_day {per_day:.4}"
            );
            let _ = writeln!(
                out,
                "# HELP osler_alerts_answered_ratio Share of the last 30 days' alerts someone acknowledged or accepted.\n# TYPE osler_alerts_answered_ratio gauge\nosler_alerts_answered_ratio {answered:.4}"
            );
        }
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail; the results are ignored for that reason.
        let mut single = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        single(
            "osler_readings_committed_total",
            "counter",
            "Readings durably committed since start.",
            load(&store.committed_readings),
        );
        single(
            "osler_readings_stored",
            "gauge",
            "Readings in the store.",
            load(&store.readings),
        );
        single(
            "osler_store_commits_total",
            "counter",
            "Group commits (each one fsync) since start.",
            load(&store.commits),
        );
        single(
            "osler_webhook_deliveries_dead_total",
            "counter",
            "Webhook deliveries dead-lettered since start (retries exhausted, or 410 Gone).",
            m.webhooks_dead,
        );
        single(
            "osler_emergency_notices_total",
            "counter",
            "Emergencies announced to the live streams before their commit (POST /ingest/notice).",
            m.notices,
        );
        single(
            "osler_gateway_sequence_gaps_total",
            "counter",
            "Gateway batches that did not follow the last committed sequence number.",
            load(&store.sequence_gaps),
        );
        let _ = writeln!(
            out,
            "# HELP osler_readings_rejected_total Readings refused, by reason."
        );
        let _ = writeln!(out, "# TYPE osler_readings_rejected_total counter");
        for (reason, n) in &m.rejected {
            let _ = writeln!(
                out,
                "osler_readings_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP osler_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(out, "# TYPE osler_http_requests_total counter");
        for ((route, method, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "osler_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP osler_http_request_duration_seconds HTTP request latency by route."
        );
        let _ = writeln!(out, "# TYPE osler_http_request_duration_seconds histogram");
        for (route, h) in &m.latency {
            for (le, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "osler_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "osler_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "osler_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "osler_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_request("/fhir", "POST", 200, Duration::from_micros(800));
        m.observe_request("/fhir", "POST", 200, Duration::from_millis(30));
        m.rejected("invalid", 2);
        let text = m.render(&StoreStats::default(), None, None);
        assert!(text.contains(
            "osler_http_request_duration_seconds_bucket{route=\"/fhir\",le=\"0.001\"} 1\n"
        ));
        assert!(text.contains(
            "osler_http_request_duration_seconds_bucket{route=\"/fhir\",le=\"0.05\"} 2\n"
        ));
        assert!(text.contains("osler_http_request_duration_seconds_count{route=\"/fhir\"} 2\n"));
        assert!(text.contains(
            "osler_http_requests_total{route=\"/fhir\",method=\"POST\",status=\"200\"} 2\n"
        ));
        assert!(text.contains("osler_readings_rejected_total{reason=\"invalid\"} 2\n"));
    }
}
