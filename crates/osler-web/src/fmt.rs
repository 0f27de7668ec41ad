//! How values, ages and times read on the page.

use osler_core::Metric;

/// A reading as a clinician reads it: its value with the metric's usual precision and unit
/// ("72 beats/minute", "128/84 mmHg", "81.4 kg").
pub fn value(metric: Metric, v: f64, v2: Option<f64>) -> String {
    let info = metric.info();
    let digits = match metric {
        Metric::BodyWeight | Metric::BodyTemperature | Metric::BodyFat => 1,
        _ => 0,
    };
    let n = |x: f64| format!("{x:.digits$}");
    match v2 {
        Some(b) => format!("{}/{} {}", n(v), n(b), info.unit_display),
        None => format!("{} {}", n(v), info.unit_display),
    }
}

/// The name a clinician gives a measurement.
pub fn label(metric: Metric) -> &'static str {
    match metric {
        Metric::HeartRate => "Heart rate",
        Metric::RestingHeartRate => "Resting heart rate",
        Metric::Spo2 => "SpO\u{2082}",
        Metric::BloodPressure => "Blood pressure",
        Metric::BodyWeight => "Weight",
        Metric::BodyTemperature => "Temperature",
        Metric::RespiratoryRate => "Respiratory rate",
        Metric::CgmGlucose => "Glucose (CGM)",
        Metric::CapillaryGlucose => "Glucose (finger-stick)",
        Metric::Steps => "Steps",
        Metric::BodyFat => "Body fat",
        Metric::HrvSdnn => "HRV (SDNN)",
    }
}

/// A reporting interval given in minutes, as people say it ("15 min", "26 h"); "—" for none.
pub fn every(minutes: f64) -> String {
    if minutes <= 0.0 {
        "—".into()
    } else if minutes >= 120.0 {
        format!("{} h", (minutes / 60.0 * 10.0).round() / 10.0)
    } else {
        format!("{} min", minutes.round())
    }
}

/// How long ago, in the largest whole unit ("just now", "12 min ago", "3 h ago", "2 d ago").
pub fn age(now_ms: i64, t_ms: i64) -> String {
    let s = (now_ms - t_ms).max(0) / 1000;
    match s {
        0..60 => "just now".into(),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A time as the page shows it: UTC, to the minute ("2026-12-01 20:53Z").
pub fn clock(t_ms: i64) -> String {
    let full = osler_core::Timestamp::utc(t_ms).to_string();
    // The full form is 2026-12-01T20:53:12.345Z or without millis: keep date and minutes.
    match (full.get(..10), full.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm}Z"),
        _ => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_ages_and_clocks_read_as_people_write_them() {
        assert_eq!(value(Metric::HeartRate, 72.4, None), "72 beats/minute");
        assert!(value(Metric::BloodPressure, 128.0, Some(84.0)).starts_with("128/84 "));
        assert!(value(Metric::BodyWeight, 81.44, None).starts_with("81.4 "));
        assert_eq!(age(100_000, 100_000), "just now");
        assert_eq!(age(13 * 60_000, 0), "13 min ago");
        assert_eq!(age(5 * 3_600_000, 0), "5 h ago");
        assert_eq!(age(3 * 86_400_000, 0), "3 d ago");
        assert_eq!(clock(1_796_167_800_000), "2026-12-01 23:30Z");
        assert_eq!(every(15.0), "15 min");
        assert_eq!(every(1560.0), "26 h");
        assert_eq!(every(0.0), "—");
    }
}
