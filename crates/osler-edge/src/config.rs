//! Per-metric edge policy: which spike filter, how large a change is worth sending, how often a
//! reading is sent anyway, how long a summary window is. Defaults here; a TOML file overrides
//! them per metric (`osler gateway --config edge.toml`).
//!
//! ```toml
//! # Every key is optional; a metric not named keeps its defaults.
//! [heart-rate]
//! filter = "median"      # "none", "median" or "hampel"
//! half_window = 2        # the filter looks this many readings either side (window 5)
//! hampel_k = 3.0         # hampel only: a spike is further than k scaled MADs from the median
//! deadband = 5           # send when the filtered value moved more than this (canonical unit)
//! near = 5               # send everything this close to an alert threshold (or past it)
//! heartbeat = 300        # seconds: send a reading at least this often
//! window = 300           # seconds: length of a summary of the readings not sent
//! max_hold = 15          # seconds a quiet stream's readings wait for their filter window
//!
//! [blood-pressure]
//! forward_all = true     # every reading is sent (sparse, deliberate measurements)
//! ```
//!
//! # Where the default resolutions come from
//! The deadband is the metric's *clinical resolution*: a change smaller than the accuracy that
//! device standards require carries no clinical information, so it need not travel at once
//! (it still reaches the hub inside a summary). Sources, each the accuracy a device must meet:
//! - heart rate, resting heart rate: ±10 % or ±5 /min, whichever is greater (ANSI/AAMI EC13,
//!   cardiac monitors) → 5 /min.
//! - SpO2: Arms ≤ 4 % over 70–100 % (ISO 80601-2-61, pulse oximeters) → 2 % (half of it,
//!   because SpO2 alerts sit close to the normal range).
//! - respiratory rate: NEWS2 bands are 3–4 /min wide (RCP 2017, clinical.md) → 2 /min.
//! - CGM glucose: ±15 mg/dL below 100 mg/dL (ISO 15197:2013, the glucose-meter accuracy that
//!   CGM performance is compared with) → 10 mg/dL.
//! - steps: no clinical threshold; 100 steps a sample is ~1 minute of walking.
//! - HRV SDNN: 10 ms, well below the day-to-day variation of SDNN.
//!
//! Blood pressure, weight, temperature, capillary glucose, body fat and resting heart rate are
//! sparse, deliberate measurements (a cuff three times a day, a daily scale): every one is sent
//! (`forward_all`), because filtering them would save almost nothing and the weight-gain rule
//! compares each against the lowest of three days. These accuracy figures are not in
//! shared/reference/clinical.md; they are named here so that they can be checked.

use std::collections::HashMap;

use osler_core::Metric;
use serde::Deserialize;

/// The spike filter of a stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    /// Decide on the raw value.
    None,
    /// The running median of `2 × half + 1` readings centred on the one decided: removes runs
    /// of up to `half` spikes and smooths noise, so that the deadband sees the signal.
    Median { half: usize },
    /// Hampel: the raw value, unless it is further than `k` scaled MADs (and than the deadband)
    /// from the window's median, in which case the median.
    Hampel { half: usize, k: f64 },
}

impl Filter {
    /// Readings after the decided one the filter needs.
    pub fn lookahead(&self) -> usize {
        match self {
            Filter::None => 0,
            Filter::Median { half } | Filter::Hampel { half, .. } => *half,
        }
    }
}

/// How one metric's streams are processed.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Send every reading (no filter, no summary).
    pub forward_all: bool,
    pub filter: Filter,
    /// Clinical resolution in the canonical unit: a filtered value this far from the last one
    /// sent is sent.
    pub deadband: f64,
    /// Margin around each alert threshold (and its hysteresis band) inside which every reading
    /// is sent.
    pub near: f64,
    pub heartbeat_ms: i64,
    pub window_ms: i64,
    pub max_hold_ms: i64,
}

const S: i64 = 1000;

impl Policy {
    fn all() -> Policy {
        Policy {
            forward_all: true,
            filter: Filter::None,
            deadband: 0.0,
            near: 0.0,
            heartbeat_ms: 3600 * S,
            window_ms: 3600 * S,
            max_hold_ms: 60 * S,
        }
    }

    fn dense(filter: Filter, deadband: f64, near: f64, heartbeat_s: i64, window_s: i64) -> Policy {
        Policy {
            forward_all: false,
            filter,
            deadband,
            near,
            heartbeat_ms: heartbeat_s * S,
            window_ms: window_s * S,
            // Three intervals of a watch that samples every 5 s.
            max_hold_ms: 15 * S,
        }
    }

    /// The default policy of a metric (sources in the module docs).
    pub fn default_for(metric: Metric) -> Policy {
        let median = Filter::Median { half: 2 };
        match metric {
            // The zone already spans each rule's hysteresis band (10 /min for heart rate, 2 %
            // for SpO2: at least the clinical resolution), so no extra margin by default.
            Metric::HeartRate => Policy::dense(median, 5.0, 0.0, 300, 300),
            Metric::Spo2 => Policy::dense(median, 2.0, 0.0, 600, 300),
            Metric::RespiratoryRate => Policy::dense(median, 2.0, 2.0, 300, 60),
            // CGM sensors smooth their own output; a 5-minute series has no spikes to remove
            // that the 15-minute glucose rules do not already ignore. glucose-low has no
            // hysteresis band, hence a margin of one resolution.
            // An hour's window and heartbeat: see "Summary windows" above.
            Metric::CgmGlucose => Policy::dense(Filter::None, 10.0, 10.0, 3600, 3600),
            Metric::Steps => Policy::dense(Filter::None, 100.0, 0.0, 3600, 900),
            Metric::HrvSdnn => Policy::dense(Filter::None, 10.0, 0.0, 3600, 3600),
            Metric::RestingHeartRate
            | Metric::BloodPressure
            | Metric::BodyWeight
            | Metric::BodyTemperature
            | Metric::CapillaryGlucose
            | Metric::BodyFat => Policy::all(),
        }
    }
}

/// Edge policies for every metric.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeConfig {
    policies: HashMap<Metric, Policy>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            policies: Metric::all().map(|m| (m, Policy::default_for(m))).collect(),
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("the edge configuration is not valid TOML: {0}")]
    Toml(String),
    #[error("unknown metric [{0}] in the edge configuration; known: {1}")]
    UnknownMetric(String, String),
    #[error("[{metric}] {key}: {reason}")]
    Invalid {
        metric: String,
        key: &'static str,
        reason: String,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    forward_all: Option<bool>,
    filter: Option<String>,
    half_window: Option<usize>,
    hampel_k: Option<f64>,
    deadband: Option<f64>,
    near: Option<f64>,
    heartbeat: Option<f64>,
    window: Option<f64>,
    max_hold: Option<f64>,
}

impl EdgeConfig {
    pub fn policy(&self, metric: Metric) -> &Policy {
        // Every metric has an entry: the map is built from Metric::all() and only updated.
        &self.policies[&metric]
    }

    /// Every reading of every metric sent as it is: the raw baseline the edge is compared with.
    pub fn forward_everything() -> EdgeConfig {
        EdgeConfig {
            policies: Metric::all().map(|m| (m, Policy::all())).collect(),
        }
    }

    /// The defaults, changed by a TOML document (format in the module docs).
    pub fn from_toml(text: &str) -> Result<EdgeConfig, ConfigError> {
        let file: HashMap<String, PolicyFile> =
            toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        let mut config = EdgeConfig::default();
        for (name, f) in file {
            let metric = Metric::from_key(&name).ok_or_else(|| {
                let known: Vec<&str> = Metric::all().map(|m| m.info().key).collect();
                ConfigError::UnknownMetric(name.clone(), known.join(", "))
            })?;
            let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
                metric: name.clone(),
                key,
                reason: reason.to_owned(),
            };
            let p = config
                .policies
                .get_mut(&metric)
                .expect("every metric has a default policy");
            if let Some(all) = f.forward_all {
                p.forward_all = all;
            }
            let half = match f.half_window {
                Some(h) if !(1..=10).contains(&h) => {
                    return Err(invalid("half_window", "must be 1 to 10"));
                }
                Some(h) => h,
                None => p.filter.lookahead().max(2),
            };
            let k = match f.hampel_k {
                Some(k) if !(k.is_finite() && k > 0.0) => {
                    return Err(invalid("hampel_k", "must be a positive number"));
                }
                Some(k) => k,
                None => 3.0,
            };
            p.filter = match f.filter.as_deref() {
                None => match p.filter {
                    Filter::None => Filter::None,
                    Filter::Median { .. } => Filter::Median { half },
                    Filter::Hampel { .. } => Filter::Hampel { half, k },
                },
                Some("none") => Filter::None,
                Some("median") => Filter::Median { half },
                Some("hampel") => Filter::Hampel { half, k },
                Some(other) => {
                    return Err(invalid(
                        "filter",
                        &format!("{other:?} is not one of \"none\", \"median\", \"hampel\""),
                    ));
                }
            };
            let non_negative = |v: Option<f64>, key: &'static str, slot: &mut f64| match v {
                Some(v) if !(v.is_finite() && v >= 0.0) => {
                    Err(invalid(key, "must be a number at least 0"))
                }
                Some(v) => {
                    *slot = v;
                    Ok(())
                }
                None => Ok(()),
            };
            non_negative(f.deadband, "deadband", &mut p.deadband)?;
            non_negative(f.near, "near", &mut p.near)?;
            let seconds = |v: Option<f64>, key: &'static str, slot: &mut i64| match v {
                // Kept in whole milliseconds: less than one would be stored as none.
                Some(v) if !(v.is_finite() && (0.001..=86_400.0 * 7.0).contains(&v)) => Err(
                    invalid(key, "must be seconds, at least 0.001 and at most a week"),
                ),
                Some(v) => {
                    *slot = (v * 1000.0).round() as i64;
                    Ok(())
                }
                None => Ok(()),
            };
            seconds(f.heartbeat, "heartbeat", &mut p.heartbeat_ms)?;
            seconds(f.window, "window", &mut p.window_ms)?;
            seconds(f.max_hold, "max_hold", &mut p.max_hold_ms)?;
        }
        Ok(config)
    }

    /// The effective configuration as TOML (what `osler gateway --print-config` shows).
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for m in Metric::all() {
            let p = self.policy(m);
            out.push_str(&format!("[{}]\n", m.info().key));
            // Every key, even where every reading is forwarded: the file read back must be
            // this configuration (turning forward_all off keeps the other values shown).
            if p.forward_all {
                out.push_str("forward_all = true\n");
            }
            match p.filter {
                Filter::None => out.push_str("filter = \"none\"\n"),
                Filter::Median { half } => {
                    out.push_str(&format!("filter = \"median\"\nhalf_window = {half}\n"))
                }
                Filter::Hampel { half, k } => out.push_str(&format!(
                    "filter = \"hampel\"\nhalf_window = {half}\nhampel_k = {k}\n"
                )),
            }
            out.push_str(&format!(
                "deadband = {}\nnear = {}\nheartbeat = {}\nwindow = {}\nmax_hold = {}\n\n",
                p.deadband,
                p.near,
                seconds(p.heartbeat_ms),
                seconds(p.window_ms),
                seconds(p.max_hold_ms)
            ));
        }
        out
    }
}

/// Milliseconds as the seconds a configuration file gives (whole where they are whole).
fn seconds(ms: i64) -> String {
    if ms % 1000 == 0 {
        (ms / 1000).to_string()
    } else {
        (ms as f64 / 1000.0).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = EdgeConfig::from_toml(
            "[heart-rate]\ndeadband = 8\nfilter = \"hampel\"\nhalf_window = 3\nheartbeat = 120\n",
        )
        .unwrap();
        let hr = c.policy(Metric::HeartRate);
        assert_eq!(hr.deadband, 8.0);
        assert_eq!(hr.filter, Filter::Hampel { half: 3, k: 3.0 });
        assert_eq!(hr.heartbeat_ms, 120_000);
        assert_eq!(hr.window_ms, 300_000, "the default window is kept");
        assert!(c.policy(Metric::BloodPressure).forward_all);
        // The printed configuration reads back to the same thing.
        assert_eq!(EdgeConfig::from_toml(&c.to_toml()).unwrap(), c);
        assert_eq!(
            EdgeConfig::from_toml(&EdgeConfig::default().to_toml()).unwrap(),
            EdgeConfig::default()
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = EdgeConfig::from_toml("[heart-rat]\ndeadband = 1\n").unwrap_err();
        assert!(e.to_string().contains("heart-rat") && e.to_string().contains("heart-rate"));
        let e = EdgeConfig::from_toml("[spo2]\ndeadband = -1\n").unwrap_err();
        assert!(e.to_string().contains("deadband"), "{e}");
        let e = EdgeConfig::from_toml("[spo2]\nfilter = \"kalman\"\n").unwrap_err();
        assert!(e.to_string().contains("kalman"), "{e}");
        let e = EdgeConfig::from_toml("[spo2]\nwindow = 0\n").unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        let e = EdgeConfig::from_toml("[spo2]\ndeadbnd = 1\n").unwrap_err();
        assert!(e.to_string().contains("deadbnd"), "{e}");
        assert!(matches!(
            EdgeConfig::from_toml("[spo2\n"),
            Err(ConfigError::Toml(_))
        ));
    }
}
