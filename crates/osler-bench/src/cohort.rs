//! A deterministic synthetic cohort for load: each patient wears a watch (heart rate every
//! 10 s; SpO2 and steps every minute), some wear a CGM (every 5 minutes), and everyone takes a
//! blood pressure and a temperature four times a day and weighs in daily. Readings come out in
//! time order across patients, as a hub would receive them live.
//!
//! This is load, not physiology: values wander plausibly around a baseline so that the store
//! sees realistic integers and decimals, nothing more. The clinical simulator is `osler sim`.

use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};

/// The simulator's deterministic generator, shared so that there is one.
pub use osler_sim::model::Rng;

/// Readings per patient per simulated day: 8,640 heart rates + 1,440 SpO2 + 1,440 steps +
/// 4 BP + 4 temperatures + 1 weight (+ 288 CGM for one patient in five).
pub fn readings_per_patient_day() -> f64 {
    8640.0 + 1440.0 + 1440.0 + 9.0 + 288.0 / 5.0
}

/// The cohort's stream of readings, from `start_ms` on, 10 s a tick.
pub struct Cohort {
    patients: Vec<(Id, Id)>,
    rng: Rng,
    tick: i64,
    start_ms: i64,
    pending: Vec<Reading>,
}

impl Cohort {
    pub fn new(patients: usize, start_ms: i64, seed: u64) -> Cohort {
        let patients = (0..patients)
            .map(|i| {
                // Formatted ids are always valid: letters, digits and '-'.
                let d = Id::parse(&format!("bench-d{i}")).expect("valid id");
                (Cohort::patient_id(i), d)
            })
            .collect();
        Cohort {
            patients,
            rng: Rng::new(seed),
            tick: 0,
            start_ms,
            pending: Vec::new(),
        }
    }

    /// The id of the cohort's patient number `i`.
    pub fn patient_id(i: usize) -> Id {
        // Formatted ids are always valid: letters, digits and '-'.
        Id::parse(&format!("bench-p{i}")).expect("valid id")
    }

    fn fill_tick(&mut self) {
        let t = self.start_ms + self.tick * 10_000;
        let sec = self.tick * 10;
        for (i, (p, d)) in self.patients.iter().enumerate() {
            // Spread each patient's periodic readings over the period so they do not all land
            // on one tick.
            let phase = (i as i64 * 7919) % 86_400 / 10 * 10;
            let mut push = |metric: Metric, value: Value, rng: &mut Rng| {
                let jitter = (rng.unit() * 900.0) as i64;
                self.pending.push(Reading {
                    patient: p.clone(),
                    device: Some(d.clone()),
                    metric,
                    value,
                    taken: Timestamp {
                        utc_ms: t + jitter,
                        offset_min: 60,
                    },
                    received_ms: t + jitter + 1200,
                    status: Status::Final,
                    identifier: None,
                });
            };
            let rng = &mut self.rng;
            let circadian = ((sec % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU).sin();
            push(
                Metric::HeartRate,
                Value::Scalar((68.0 + 8.0 * circadian + rng.unit() * 10.0).round()),
                rng,
            );
            if (sec + phase) % 60 == 0 {
                push(
                    Metric::Spo2,
                    Value::Scalar((95.0 + rng.unit() * 4.0).round()),
                    rng,
                );
                push(
                    Metric::Steps,
                    Value::Scalar((rng.unit() * 120.0).round()),
                    rng,
                );
            }
            if i % 5 == 0 && (sec + phase) % 300 == 0 {
                push(
                    Metric::CgmGlucose,
                    Value::Scalar((90.0 + 40.0 * circadian + rng.unit() * 20.0).round()),
                    rng,
                );
            }
            if (sec + phase) % 21_600 == 0 {
                let sys = (118.0 + rng.unit() * 30.0).round();
                push(
                    Metric::BloodPressure,
                    Value::Pair(sys, (sys * 0.62).round()),
                    rng,
                );
                push(
                    Metric::BodyTemperature,
                    Value::Scalar((364.0 + (rng.unit() * 10.0).round()) / 10.0),
                    rng,
                );
            }
            if (sec + phase) % 86_400 == 0 {
                push(
                    Metric::BodyWeight,
                    Value::Scalar((700.0 + (rng.unit() * 300.0).round()) / 10.0),
                    rng,
                );
            }
        }
        self.tick += 1;
    }
}

impl Iterator for Cohort {
    type Item = Reading;
    fn next(&mut self) -> Option<Reading> {
        while self.pending.is_empty() {
            self.fill_tick();
            self.pending.reverse();
        }
        self.pending.pop()
    }
}

/// One reading as a FHIR Observation, written directly as text: the benchmark client must not
/// spend the CPU it shares with the hub on building JSON trees.
pub fn observation_text(r: &Reading) -> String {
    let info = r.metric.info();
    let device = r
        .device
        .as_ref()
        .map(|d| format!(r#","device":{{"reference":"Device/{d}"}}"#))
        .unwrap_or_default();
    let value = match (r.value, info.parts) {
        (Value::Pair(s, d), Some(parts)) => format!(
            r#","component":[{{"code":{{"coding":[{{"system":"http://loinc.org","code":"{}"}}]}},"valueQuantity":{{"value":{s},"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}}},{{"code":{{"coding":[{{"system":"http://loinc.org","code":"{}"}}]}},"valueQuantity":{{"value":{d},"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}}}]"#,
            parts[0].loinc.code, parts[1].loinc.code
        ),
        (Value::Scalar(v), _) | (Value::Pair(v, _), None) => format!(
            r#","valueQuantity":{{"value":{v},"unit":"{}","system":"http://unitsofmeasure.org","code":"{}"}}"#,
            info.unit_display, info.unit
        ),
    };
    let identifier = r
        .identifier
        .as_ref()
        .map(|i| {
            let (system, value) = (
                serde_json::Value::from(i.system.as_str()),
                serde_json::Value::from(i.value.as_str()),
            );
            format!(r#""identifier":[{{"system":{system},"value":{value}}}],"#)
        })
        .unwrap_or_default();
    format!(
        r#"{{"resourceType":"Observation",{identifier}"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{}"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{}","display":"{}"}}]}},"subject":{{"reference":"Patient/{}"}},"effectiveDateTime":"{}"{device}{value}}}"#,
        info.category.code(),
        info.loinc.code,
        info.loinc.display,
        r.patient,
        r.taken
    )
}

/// A transaction Bundle of readings.
pub fn transaction_text(readings: &[Reading]) -> String {
    let mut out = String::with_capacity(readings.len() * 700);
    out.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"resource":"#);
        out.push_str(&observation_text(r));
        out.push_str(r#","request":{"method":"POST","url":"Observation"}}"#);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_ordered_deterministic_and_valid() {
        let start = 1_750_000_000_000;
        let a: Vec<Reading> = Cohort::new(5, start, 7).take(5000).collect();
        let b: Vec<Reading> = Cohort::new(5, start, 7).take(5000).collect();
        assert_eq!(a, b);
        for w in a.windows(2) {
            // Ticks advance; within a tick, jitter is under a second.
            assert!(w[1].taken.utc_ms + 1000 >= w[0].taken.utc_ms);
        }
        let metrics: std::collections::HashSet<_> = a.iter().map(|r| r.metric).collect();
        assert!(metrics.len() >= 5, "{metrics:?}");
        // The text the benchmark posts reads back, through the hub's own parser, as the
        // reading it was made from.
        let now = a.last().unwrap().taken.utc_ms;
        for r in a
            .iter()
            .filter(|r| r.metric != Metric::HeartRate)
            .take(200)
            .chain(&a[..50])
        {
            let json: serde_json::Value = serde_json::from_str(&observation_text(r)).unwrap();
            let input = osler_fhir::parse_observation(&json, r.received_ms).unwrap();
            let back = input.validate(now).unwrap();
            assert_eq!(&back, r);
        }
        let bundle: serde_json::Value = serde_json::from_str(&transaction_text(&a[..10])).unwrap();
        let parsed = osler_fhir::parse_bundle(&bundle, now).unwrap();
        assert_eq!(parsed.entries.len(), 10);
        assert!(parsed.entries.iter().all(Result::is_ok));
    }
}
