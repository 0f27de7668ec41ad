//! Observation JSON and readings: every reading Osler can store, served as the Observation it
//! builds, posted back, is the same reading.

use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use proptest::prelude::*;

const NOW: i64 = 1_750_000_000_000;

fn reading() -> impl Strategy<Value = Reading> {
    let metrics: Vec<Metric> = Metric::all().collect();
    (
        proptest::sample::select(metrics),
        0.0f64..=1.0,
        0.0f64..=1.0,
        0i64..30 * 86_400_000,
        -720i16..=840,
        proptest::option::of("[a-z0-9]{1,8}"),
        "[a-z0-9][a-z0-9.-]{0,10}",
    )
        .prop_map(|(metric, a, b, ago, offset_min, device, patient)| {
            let info = metric.info();
            // Any value inside the plausible range, all its digits (converted units, such as
            // pounds to kilograms, have them).
            let within = |(lo, hi): (f64, f64), u: f64| lo + (hi - lo) * u;
            let value = match info.parts {
                Some(parts) => {
                    let dia = within(parts[1].range, b * 0.5);
                    let sys = within(parts[0].range, a)
                        .max(dia + 1.0)
                        .min(parts[0].range.1);
                    Value::Pair(sys, dia.min(sys - 1.0))
                }
                None => Value::Scalar(within(info.range, a)),
            };
            Reading {
                patient: Id::parse(&patient).unwrap(),
                device: device.map(|d| Id::parse(&d).unwrap()),
                metric,
                value,
                // Whole seconds: FHIR dateTime to the millisecond is kept too, but a served
                // reading of a second keeps its exact text either way.
                taken: Timestamp {
                    utc_ms: (NOW - ago) / 1000 * 1000,
                    offset_min,
                },
                received_ms: NOW,
                status: Status::Final,
                identifier: None,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn a_served_observation_posts_back_as_the_same_reading(r in reading()) {
        prop_assume!(r.check(NOW).is_ok());
        // Through text, as a client receives and posts it.
        let text = osler_fhir::observation_json("x", &r).to_string();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back = osler_fhir::parse_observation(&json, NOW)
            .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?
            .validate(NOW)
            .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        prop_assert_eq!(back.patient, r.patient);
        prop_assert_eq!(back.device, r.device);
        prop_assert_eq!(back.metric, r.metric);
        prop_assert_eq!(back.value, r.value);
        prop_assert_eq!(back.taken, r.taken);
    }
}
