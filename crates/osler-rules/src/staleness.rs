//! When silence is an alert: how long each kind of measurement may go without data before a
//! "no data" alert is raised (on a timer, not when data arrives). While it is open, the
//! patient's other alerts on that measurement are muted (shown so), and its rules cannot say
//! the patient is fine: their state is unknown.
//!
//! The kind of device is known by what it measures: continuous wearables and sensors (heart
//! rate, SpO2, CGM glucose) report every few minutes; spot-check devices (cuff, scale,
//! thermometer) once or a few times a day.

use osler_core::Metric;

use crate::Severity;

/// A measurement's expected reporting interval.
#[derive(Clone, Copy, Debug)]
pub struct Staleness {
    /// The alert's rule id (and the plan entry that overrides the interval for a patient).
    pub id: &'static str,
    pub metric: Metric,
    pub title: &'static str,
    /// Minutes without data before the alert.
    pub after_min: f64,
    /// What a patient's plan may set, in minutes.
    pub bounds: (f64, f64),
    pub severity: Severity,
    pub source: &'static str,
}

const CONTINUOUS: &str = "Nightscout warns of stale CGM data after 15 minutes (urgent at 30) and ThingsBoard flags a device inactive after 600 s (../shared/reference/alerts.md); Osler uses 15 minutes for continuous sensors";
const DAILY: &str = "Osler's choice: a spot-check device used daily, plus two hours of slack (no standard sets a remote-monitoring interval)";

pub const STALENESS: &[Staleness] = &[
    Staleness {
        id: "no-data-heart-rate",
        metric: Metric::HeartRate,
        title: "No heart rate data",
        after_min: 15.0,
        bounds: (1.0, 1440.0),
        severity: Severity::Warning,
        source: CONTINUOUS,
    },
    Staleness {
        id: "no-data-spo2",
        metric: Metric::Spo2,
        title: "No SpO2 data",
        after_min: 15.0,
        bounds: (1.0, 1440.0),
        severity: Severity::Warning,
        source: CONTINUOUS,
    },
    Staleness {
        id: "no-data-cgm-glucose",
        metric: Metric::CgmGlucose,
        title: "No CGM glucose data",
        after_min: 15.0,
        bounds: (5.0, 1440.0),
        severity: Severity::Warning,
        source: CONTINUOUS,
    },
    Staleness {
        id: "no-data-blood-pressure",
        metric: Metric::BloodPressure,
        title: "No blood pressure reading",
        after_min: 26.0 * 60.0,
        bounds: (60.0, 10_080.0),
        severity: Severity::Warning,
        source: DAILY,
    },
    Staleness {
        id: "no-data-body-weight",
        metric: Metric::BodyWeight,
        title: "No weight reading",
        after_min: 26.0 * 60.0,
        bounds: (60.0, 10_080.0),
        severity: Severity::Warning,
        source: DAILY,
    },
    Staleness {
        id: "no-data-body-temperature",
        metric: Metric::BodyTemperature,
        title: "No temperature reading",
        after_min: 26.0 * 60.0,
        bounds: (60.0, 10_080.0),
        severity: Severity::Warning,
        source: DAILY,
    },
];

impl Staleness {
    pub fn by_id(id: &str) -> Option<&'static Staleness> {
        STALENESS.iter().find(|s| s.id == id)
    }

    pub fn of(metric: Metric) -> Option<&'static Staleness> {
        STALENESS.iter().find(|s| s.metric == metric)
    }

    /// Why a patient's interval (minutes) cannot be used.
    pub fn check(&self, minutes: f64) -> Result<(), String> {
        let (lo, hi) = self.bounds;
        if !minutes.is_finite() || minutes < lo || minutes > hi {
            return Err(format!("{}: from {lo} to {hi} minutes", self.id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_names_its_metric_and_defaults_lie_within_bounds() {
        for s in STALENESS {
            assert_eq!(s.id, format!("no-data-{}", s.metric.info().key));
            assert!(s.check(s.after_min).is_ok(), "{}", s.id);
            assert!(
                crate::Rule::by_id(s.id).is_none(),
                "{} is not a reading rule",
                s.id
            );
        }
    }
}
