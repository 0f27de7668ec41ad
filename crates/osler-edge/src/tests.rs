use super::*;
use osler_rules::{Change, Engine};
use proptest::prelude::*;

const T0: i64 = 1_750_000_000_000;

fn reading(metric: Metric, t: i64, v: Value) -> Reading {
    Reading {
        patient: Id::parse("p1").unwrap(),
        device: Some(Id::parse("w1").unwrap()),
        metric,
        value: v,
        taken: Timestamp {
            utc_ms: t,
            offset_min: 0,
        },
        received_ms: t + 100,
        status: Status::Final,
        identifier: None,
    }
}

/// Runs values (one every `every_ms`) through a stream; returns forwarded readings, summaries
/// and the tally, after a final flush.
fn run(
    metric: Metric,
    policy: &Policy,
    zone: &Zone,
    values: &[Value],
    every_ms: i64,
) -> (Vec<Reading>, Vec<Summary>, Tally) {
    let mut stream = None::<Stream>;
    let mut out = Vec::new();
    let mut tally = Tally::default();
    for (i, v) in values.iter().enumerate() {
        let t = T0 + i as i64 * every_ms;
        let r = reading(metric, t, *v);
        let s = stream.get_or_insert_with(|| Stream::new(&r));
        s.observe(policy, zone, &r, t + 100, &mut out, &mut tally);
    }
    if let Some(s) = stream.as_mut() {
        s.flush(policy, &mut out, &mut tally);
    }
    let mut fwd = Vec::new();
    let mut sums = Vec::new();
    for o in out {
        match o {
            Output::Forward(r) => fwd.push(r),
            Output::Summary(s) => sums.push(s),
        }
    }
    (fwd, sums, tally)
}

fn raised(metric: Metric, readings: &[Reading]) -> Vec<(&'static str, i64)> {
    let mut engine = Engine::new();
    let mut out = Vec::new();
    for r in readings {
        for e in engine.observe(r, None) {
            if e.change != Change::Updated {
                out.push((e.rule, e.reading_ms));
            }
        }
    }
    let _ = metric;
    out
}

fn scalars(v: &[f64]) -> Vec<Value> {
    v.iter().map(|x| Value::Scalar(*x)).collect()
}

#[test]
fn a_lone_spike_is_filtered_and_counted() {
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let mut v = vec![72.0; 40];
    v[20] = 100.0; // an artefact below every threshold's zone
    let (fwd, sums, tally) = run(Metric::HeartRate, &policy, &zone, &scalars(&v), 1000);
    assert_eq!(fwd.len(), 1, "only the first reading (heartbeat) is sent");
    assert_eq!(tally.spikes, 1);
    let n: u32 = sums.iter().map(|s| s.n).sum();
    assert_eq!(n as usize + fwd.len(), 40);
    assert!(
        sums.iter().any(|s| s.max[0] == 100.0),
        "the raw value stays in the summary"
    );
}

#[test]
fn a_step_is_sent_heartbeats_keep_coming() {
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let mut v = vec![70.0; 600];
    for x in v.iter_mut().skip(300) {
        *x = 90.0;
    }
    let (fwd, sums, tally) = run(Metric::HeartRate, &policy, &zone, &scalars(&v), 1000);
    // The first reading and the step (the change, not a heartbeat, at 300 s).
    assert_eq!(tally.change, 1);
    assert!(
        fwd.iter()
            .any(|r| r.value == Value::Scalar(90.0) && r.taken.utc_ms == T0 + 300 * 1000)
    );
    assert_eq!(tally.heartbeat, 1, "the first reading only: {tally:?}");
    // Summaries lie within one aligned window.
    assert!(
        sums.iter()
            .all(|s| s.t0 / policy.window_ms == s.t1 / policy.window_ms)
    );
    let n: u32 = sums.iter().map(|s| s.n).sum();
    assert_eq!(n as usize + fwd.len(), 600);
}

#[test]
fn near_a_threshold_everything_is_sent_and_context_follows() {
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    // hr-high: 120, hysteresis 10, no extra margin -> zone from 110; context 3 (clear_count).
    let mut v = vec![80.0; 20];
    v[10] = 111.0;
    let (fwd, _, tally) = run(Metric::HeartRate, &policy, &zone, &scalars(&v), 1000);
    assert_eq!(tally.zone, 1);
    assert_eq!(tally.context, 3);
    let times: Vec<i64> = fwd.iter().map(|r| (r.taken.utc_ms - T0) / 1000).collect();
    assert_eq!(times, vec![0, 10, 11, 12, 13]);
}

#[test]
fn overrides_widen_the_zone() {
    let mut o = Overrides::new();
    o.insert("hr-high".into(), 100.0);
    let zone = Zone::for_metric(Metric::HeartRate, 5.0, Some(&o));
    assert!(zone.contains(&[90.0]));
    let plain = Zone::for_metric(Metric::HeartRate, 5.0, None);
    assert!(!plain.contains(&[90.0]));
    assert!(plain.contains(&[44.0]), "hr-low 40 + 5 hysteresis");
    let bp = Zone::for_metric(Metric::BloodPressure, 5.0, None);
    assert!(bp.contains(&[120.0, 96.0]), "diastolic 120 - 20 - 5");
    assert!(!bp.contains(&[150.0, 90.0]));
    assert_eq!(Zone::for_metric(Metric::Spo2, 1.0, None).context, 4);
}

#[test]
fn a_quiet_stream_is_decided_and_its_summary_sent() {
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let at = |i: i64| reading(Metric::HeartRate, T0 + i * 1000, Value::Scalar(70.0));
    let mut s = Stream::new(&at(0));
    let (mut out, mut tally) = (Vec::new(), Tally::default());
    // Arrivals on the gateway's clock track reading time here.
    for i in 0..5 {
        s.observe(&policy, &zone, &at(i), T0 + i * 1000, &mut out, &mut tally);
    }
    assert_eq!(s.waiting(), 2, "the last two wait for their filter window");
    assert!(!s.tick(&policy, T0 + 4000 + QUIET_MS - 1, &mut out, &mut tally));
    assert_eq!(s.waiting(), 2, "not stopped yet");
    assert_eq!(out.len(), 1, "the first reading was sent");
    // Stopped (quiet for three of its intervals, at least QUIET_MS): the waiting readings are
    // decided and the summary sent, though its window has not ended.
    assert!(s.tick(&policy, T0 + 4000 + QUIET_MS, &mut out, &mut tally));
    assert_eq!(s.waiting(), 0);
    assert!(matches!(out.last(), Some(Output::Summary(x)) if x.n == 4));
    assert_eq!(out.len(), 2);
    assert!(s.is_idle());
}

#[test]
fn state_survives_a_round_trip_through_its_stored_form() {
    // What the gateway does at every commit: the stream restored from its stored bytes (or,
    // from an outbox written before the binary form, its JSON) decides the rest exactly as the
    // one that stayed in memory. A one-minute window, so that 200 s of readings close several
    // summaries.
    let policy = Policy {
        window_ms: 60_000,
        ..Policy::default_for(Metric::HeartRate)
    };
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let values: Vec<f64> = (0..200).map(|i| 70.0 + ((i * 37) % 23) as f64).collect();
    let (mut a_out, mut b_out, mut c_out) = (Vec::new(), Vec::new(), Vec::new());
    let mut tally = Tally::default();
    let first = reading(Metric::HeartRate, T0, Value::Scalar(values[0]));
    let mut a = Stream::new(&first);
    let mut b = Stream::new(&first);
    let mut c = Stream::new(&first);
    for (i, v) in values.iter().enumerate() {
        let r = reading(Metric::HeartRate, T0 + i as i64 * 1000, Value::Scalar(*v));
        a.observe(&policy, &zone, &r, r.taken.utc_ms, &mut a_out, &mut tally);
        let mut bytes = Vec::new();
        b.encode(&mut bytes);
        b = Stream::decode("p1", "heart-rate", Some("w1"), &bytes).unwrap();
        b.observe(&policy, &zone, &r, r.taken.utc_ms, &mut b_out, &mut tally);
        let text = serde_json::to_string(&c).unwrap();
        c = serde_json::from_str(&text).unwrap();
        c.observe(&policy, &zone, &r, r.taken.utc_ms, &mut c_out, &mut tally);
    }
    // Readings sent and summaries closed along the way: both halves of the state were used.
    assert!(a_out.iter().any(|o| matches!(o, Output::Forward(_))));
    assert!(a_out.iter().any(|o| matches!(o, Output::Summary(_))));
    assert_eq!(a, b);
    assert_eq!(a_out, b_out);
    assert_eq!(a, c);
    assert_eq!(a_out, c_out);
}

#[test]
fn damaged_state_bytes_are_refused_not_misread() {
    let policy = Policy::default_for(Metric::BloodPressure);
    let zone = Zone::for_metric(Metric::BloodPressure, policy.near, None);
    let mut s = Stream::new(&reading(
        Metric::BloodPressure,
        T0,
        Value::Pair(120.0, 80.0),
    ));
    let (mut out, mut tally) = (Vec::new(), Tally::default());
    for i in 0..20 {
        let r = reading(
            Metric::BloodPressure,
            T0 + i * 60_000,
            Value::Pair(120.5 + i as f64, 80.0),
        );
        s.observe(&policy, &zone, &r, T0 + i * 60_000, &mut out, &mut tally);
    }
    let mut bytes = Vec::new();
    s.encode(&mut bytes);
    for cut in 0..bytes.len() {
        assert!(
            Stream::decode("p1", "blood-pressure", Some("w1"), &bytes[..cut]).is_err(),
            "a state cut at {cut} of {} bytes was accepted",
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Stream::decode("p1", "blood-pressure", None, &longer).is_err());
    let mut other = bytes.clone();
    other[0] = 9;
    assert_eq!(
        Stream::decode("p1", "blood-pressure", None, &other),
        Err(DecodeError::Version(9))
    );
}

#[test]
fn a_stream_state_stays_small() {
    // What the gateway writes at every commit must not grow with the stream's history.
    for metric in [Metric::HeartRate, Metric::CgmGlucose, Metric::Steps] {
        let policy = Policy::default_for(metric);
        let zone = Zone::for_metric(metric, policy.near, None);
        let first = reading(metric, T0, Value::Scalar(100.0));
        let mut s = Stream::new(&first);
        let (mut out, mut tally) = (Vec::new(), Tally::default());
        for i in 0..5000 {
            let r = reading(metric, T0 + i * 1000, Value::Scalar(100.0 + (i % 7) as f64));
            s.observe(&policy, &zone, &r, T0 + i * 1000, &mut out, &mut tally);
        }
        let json = serde_json::to_string(&s).unwrap().len();
        let mut bytes = Vec::new();
        s.encode(&mut bytes);
        // Heart rate holds its filter window and 16 remembered times: about 120 bytes.
        assert!(
            bytes.len() < 200,
            "{metric:?}: state of {} bytes",
            bytes.len()
        );
        assert!(
            bytes.len() * 3 < json,
            "{metric:?}: {} bytes against {json} of JSON",
            bytes.len()
        );
    }
}

/// A heart-rate series with noise, artefacts and excursions into both alert ranges.
fn hr_series() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec((0u8..100, -4.0f64..4.0, 0usize..40), 20..60).prop_map(|segments| {
        let mut out = Vec::new();
        for (kind, noise, len) in segments {
            let level = match kind {
                0..=59 => 75.0,
                60..=69 => 112.0,
                70..=84 => 135.0,
                85..=94 => 37.0,
                _ => 47.0,
            };
            for i in 0..len {
                let jitter = noise * ((i * 7 % 5) as f64 - 2.0) / 2.0;
                let spike = if i % 17 == 16 { 60.0 } else { 0.0 };
                out.push((level + jitter + spike).round());
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The edge's promise, on heart rate (sustained rules) and SpO2 (3 of 5): the hub's rules
    /// raise and resolve on the readings the edge sends exactly what they would on every raw
    /// reading, at the same reading times; and every raw reading is sent or summarised once.
    #[test]
    fn no_alert_is_lost_and_every_reading_is_counted(hr in hr_series(), spo2 in prop::collection::vec(84.0f64..99.0, 10..200), every in prop::sample::select(vec![1000i64, 5000, 60_000])) {
        for (metric, values) in [(Metric::HeartRate, hr), (Metric::Spo2, spo2.iter().map(|x| x.round()).collect())] {
            let policy = Policy::default_for(metric);
            let zone = Zone::for_metric(metric, policy.near, None);
            let values = scalars(&values);
            let raw: Vec<Reading> = values.iter().enumerate()
                .map(|(i, v)| reading(metric, T0 + i as i64 * every, *v)).collect();
            let (fwd, sums, _) = run(metric, &policy, &zone, &values, every);
            prop_assert_eq!(raised(metric, &raw), raised(metric, &fwd));
            let n: u32 = sums.iter().map(|s| s.n).sum();
            prop_assert_eq!(n as usize + fwd.len(), raw.len());
            prop_assert!(fwd.windows(2).all(|w| w[0].taken.utc_ms < w[1].taken.utc_ms));
        }
    }

    /// Any state a stream reaches (pairs and fractions, out-of-order and resent readings, the
    /// gateway's clock before or after reading time) comes back from its stored form as it was.
    #[test]
    fn every_state_round_trips(
        steps in prop::collection::vec((-3i64..40, 0.0f64..300.0, 0.0f64..200.0, any::<bool>(), -5_000i64..5_000, any::<bool>()), 1..80),
        metric in prop::sample::select(vec![Metric::HeartRate, Metric::BloodPressure, Metric::CgmGlucose, Metric::Steps]),
    ) {
        let policy = Policy::default_for(metric);
        let zone = Zone::for_metric(metric, policy.near, None);
        let mut s = Stream::new(&reading(metric, T0, Value::Scalar(1.0)));
        let (mut out, mut tally) = (Vec::new(), Tally::default());
        let mut t = T0;
        for (dt, a, b, fraction, skew, tick) in steps {
            t += dt * 1000;
            let a = if fraction { a } else { a.round() };
            let value = if metric == Metric::BloodPressure { Value::Pair(a, b) } else { Value::Scalar(a) };
            let now = t + skew;
            s.observe(&policy, &zone, &reading(metric, t, value), now, &mut out, &mut tally);
            if tick {
                s.tick(&policy, now + 20_000, &mut out, &mut tally);
            }
            let mut bytes = Vec::new();
            s.encode(&mut bytes);
            let back = Stream::decode("p1", metric.info().key, Some("w1"), &bytes);
            prop_assert_eq!(back.as_ref(), Ok(&s));
        }
    }
}

#[test]
fn resends_are_recognised_and_late_readings_sent() {
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let at = |i: i64| reading(Metric::HeartRate, T0 + i * 1000, Value::Scalar(70.0));
    let mut s = Stream::new(&at(0));
    let (mut out, mut tally) = (Vec::new(), Tally::default());
    for i in [0, 1, 2, 3, 1, 2, 3, 4] {
        s.observe(&policy, &zone, &at(i), T0, &mut out, &mut tally);
    }
    assert_eq!(tally.duplicates, 3);
    // A reading older than the newest that was never seen: sent as it is.
    let mut late = at(0);
    late.taken.utc_ms = T0 - 500;
    s.observe(&policy, &zone, &late, T0, &mut out, &mut tally);
    assert_eq!(tally.late, 1);
    assert!(matches!(out.last(), Some(Output::Forward(r)) if r.taken.utc_ms == T0 - 500));
    s.flush(&policy, &mut out, &mut tally);
    let n: u32 = out
        .iter()
        .map(|o| match o {
            Output::Forward(_) => 1,
            Output::Summary(x) => x.n,
        })
        .sum();
    assert_eq!(n, 6, "five distinct readings and the late one, once each");
}
