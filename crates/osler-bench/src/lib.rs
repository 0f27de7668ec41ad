//! Benchmark programs for Osler. Each drives real `osler` processes over loopback and prints a
//! table of figures beside a named baseline; BENCHMARKS.md records the commands and results.
//!
//! - [`hub`]: FHIR ingest through transaction Bundles, bytes on disk per reading, and the
//!   latency of the main search (one patient, one metric, 24 hours) over millions of readings.
//! - [`pipeline`]: sim → gateway → hub end to end, the gateway's footprint, catch-up after an
//!   outage.
//! - [`alerts`]: alert latency under live load, from a reading's time to an SSE subscriber and
//!   to a webhook receiver.
//! - [`burden`]: alerts per patient-day on a simulated cohort.
//! - [`edge`]: the edge's upload saving against per-reading JSON and compressed raw batches,
//!   its fidelity (no alert lost, every reading counted, the trend kept) and decision time.
//! - [`registry`]: Patient search by name among 100,000 patients, and Observation search across
//!   patients over 10 M readings.
//! - [`cohort`]: a deterministic synthetic cohort that the hub benchmark feeds in.
//! - [`process`]: starting and stopping an `osler` child process.

pub mod alerts;
pub mod burden;
pub mod cohort;
pub mod dashboard;
pub mod edge;
pub mod hub;
pub mod login;
pub mod mqtt;
pub mod pipeline;
pub mod process;
pub mod registry;
pub mod soak;
pub mod webhook_sink;

/// The percentile `p` (0-100) of sorted samples, nearest-rank.
/// Now, in UTC milliseconds (a clock before 1970 reads as the epoch).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), 50.0);
        assert_eq!(super::percentile(&v, 99.0), 99.0);
        assert_eq!(super::percentile(&v, 100.0), 100.0);
        assert_eq!(super::percentile(&[3.0], 99.9), 3.0);
    }
}
