use super::*;
use osler_core::{Id, Status, Timestamp};

const T0: i64 = 1_750_000_000_000;
const SEC: i64 = 1000;

fn reading(metric: Metric, t: i64, value: Value) -> Reading {
    Reading {
        patient: Id::parse("p1").unwrap(),
        device: None,
        metric,
        value,
        taken: Timestamp::utc(t),
        received_ms: t + SEC,
        status: Status::Final,
        identifier: None,
    }
}

/// Feeds heart rates every 5 s from `from` for `secs`, returns the events.
fn hr(engine: &mut Engine, from: i64, secs: i64, bpm: f64) -> Vec<AlertEvent> {
    let mut out = Vec::new();
    let mut t = from;
    while t < from + secs * SEC {
        out.extend(engine.observe(&reading(Metric::HeartRate, t, Value::Scalar(bpm)), None));
        t += 5 * SEC;
    }
    out
}

#[test]
fn crossing_needs_its_duration_and_a_spike_does_not_page() {
    let mut e = Engine::new();
    assert!(hr(&mut e, T0, 600, 70.0).is_empty());
    // One artefact spike.
    assert!(
        e.observe(
            &reading(Metric::HeartRate, T0 + 600 * SEC, Value::Scalar(210.0)),
            None
        )
        .is_empty()
    );
    assert!(hr(&mut e, T0 + 605 * SEC, 60, 70.0).is_empty());
    // Nine minutes above 120: not yet.
    let start = T0 + 700 * SEC;
    assert!(hr(&mut e, start, 9 * 60, 135.0).is_empty());
    // At ten minutes: raised once, at the reading that completes ten minutes.
    let ev = hr(&mut e, start + 9 * 60 * SEC, 120, 135.0);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].change, ev[0].rule), (Change::Raised, "hr-high"));
    assert_eq!(ev[0].reading_ms, start + 600 * SEC);
    assert!(!ev[0].late);
}

#[test]
fn hysteresis_then_resolve() {
    let mut e = Engine::new();
    let ev = hr(&mut e, T0, 11 * 60, 130.0);
    assert_eq!(ev.iter().filter(|e| e.change == Change::Raised).count(), 1);
    // Just under the threshold is not enough to resolve (margin 10).
    assert!(hr(&mut e, T0 + 11 * 60 * SEC, 120, 115.0).is_empty());
    assert!(e.is_open("p1", "hr-high"));
    // Three readings below 110 resolve it.
    let ev = hr(&mut e, T0 + 13 * 60 * SEC, 15, 100.0);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].change, Change::Resolved);
    assert!(!e.is_open("p1", "hr-high"));
}

#[test]
fn count_of_rule_for_spo2() {
    let mut e = Engine::new();
    let spo2 = |e: &mut Engine, i: i64, v: f64| {
        e.observe(
            &reading(Metric::Spo2, T0 + i * 60 * SEC, Value::Scalar(v)),
            None,
        )
    };
    for (i, v) in [97.0, 91.0, 96.0, 92.0].into_iter().enumerate() {
        assert!(spo2(&mut e, i as i64, v).is_empty(), "{i}");
    }
    // 91, 92, 90 among the last five: raised.
    let ev = spo2(&mut e, 4, 90.0);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].rule, "spo2-low");
}

#[test]
fn blood_pressure_parts_and_single_reading() {
    let mut e = Engine::new();
    let ev = e.observe(
        &reading(Metric::BloodPressure, T0, Value::Pair(150.0, 125.0)),
        None,
    );
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].rule, ev[0].value), ("bp-crisis-diastolic", 125.0));
    let ev = e.observe(
        &reading(
            Metric::BloodPressure,
            T0 + DAY / 4,
            Value::Pair(185.0, 90.0),
        ),
        None,
    );
    let rules: Vec<(&str, Change)> = ev.iter().map(|e| (e.rule, e.change)).collect();
    assert!(rules.contains(&("bp-crisis-systolic", Change::Raised)));
    assert!(rules.contains(&("bp-crisis-diastolic", Change::Resolved)));
}

#[test]
fn per_patient_override() {
    let mut e = Engine::new();
    let mut o = Overrides::new();
    o.insert("hr-high".into(), 150.0);
    let mut events = Vec::new();
    let mut t = T0;
    for _ in 0..200 {
        events.extend(e.observe(
            &reading(Metric::HeartRate, t, Value::Scalar(140.0)),
            Some(&o),
        ));
        t += 5 * SEC;
    }
    assert!(events.is_empty(), "140 is under this patient's 150");
    for _ in 0..200 {
        events.extend(e.observe(
            &reading(Metric::HeartRate, t, Value::Scalar(155.0)),
            Some(&o),
        ));
        t += 5 * SEC;
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].threshold, 150.0);
}

#[test]
fn late_readings_are_judged_in_their_own_time_and_marked() {
    let mut e = Engine::new();
    // Readings arrive after an outage, oldest first, each received an hour after it was taken.
    let mut events = Vec::new();
    let mut t = T0;
    for _ in 0..150 {
        let mut r = reading(Metric::HeartRate, t, Value::Scalar(140.0));
        r.received_ms = t + 3_600_000;
        events.extend(e.observe(&r, None));
        t += 5 * SEC;
    }
    assert_eq!(events.len(), 1);
    assert!(events[0].late);
    assert_eq!(events[0].reading_ms, T0 + 600 * SEC);
    // Out of order: a newer normal reading first, then the late breaching ones in the past do
    // not pretend the patient is tachycardic now... but they are evaluated at their own times.
    let mut e = Engine::new();
    assert!(
        e.observe(
            &reading(Metric::HeartRate, T0 + 3_600_000, Value::Scalar(70.0)),
            None
        )
        .is_empty()
    );
    let mut events = Vec::new();
    let mut t = T0;
    for _ in 0..150 {
        events.extend(e.observe(&reading(Metric::HeartRate, t, Value::Scalar(140.0)), None));
        t += 5 * SEC;
    }
    assert_eq!(
        events.iter().filter(|e| e.change == Change::Raised).count(),
        1
    );
    assert_eq!(events[0].reading_ms, T0 + 600 * SEC);
}

#[test]
fn weight_gain_trend() {
    let mut e = Engine::new();
    let w = |e: &mut Engine, day: i64, kg: f64| {
        e.observe(
            &reading(Metric::BodyWeight, T0 + day * DAY, Value::Scalar(kg)),
            None,
        )
    };
    assert!(w(&mut e, 0, 80.0).is_empty());
    assert!(w(&mut e, 1, 80.8).is_empty());
    assert!(w(&mut e, 2, 81.6).is_empty());
    let ev = w(&mut e, 3, 82.4);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].rule, "weight-gain");
    // Over a week the same total rise spread thin does not fire.
    let mut e = Engine::new();
    for d in 0..8 {
        assert!(w(&mut e, d, 80.0 + d as f64 * 0.4).is_empty(), "day {d}");
    }
}

#[test]
fn the_edge_engine_runs_only_critical_rules() {
    let mut e = Engine::critical_only();
    assert!(
        e.observe(
            &reading(Metric::BodyTemperature, T0, Value::Scalar(39.6)),
            None
        )
        .is_empty()
    );
    let ev = e.observe(
        &reading(Metric::BloodPressure, T0, Value::Pair(190.0, 100.0)),
        None,
    );
    assert_eq!(ev.len(), 1);
    let mut hub = Engine::new();
    assert_eq!(
        hub.observe(
            &reading(Metric::BodyTemperature, T0, Value::Scalar(39.6)),
            None
        )
        .len(),
        1
    );
}

#[test]
fn every_rule_cites_a_source_and_matches_the_reference() {
    for r in RULES {
        assert!(!r.source.is_empty() && !r.title.is_empty(), "{}", r.id);
    }
    // The thresholds restated from shared/reference/clinical.md.
    let expect = [
        ("hr-high", 120.0),
        ("hr-low", 40.0),
        ("spo2-low", 92.0),
        ("bp-crisis-systolic", 180.0),
        ("bp-crisis-diastolic", 120.0),
        ("glucose-urgent-low", 54.0),
        ("glucose-low", 70.0),
        ("glucose-high", 250.0),
        ("fever", 39.1),
        ("weight-gain", 2.0),
    ];
    for (id, v) in expect {
        assert_eq!(Rule::by_id(id).unwrap().threshold, v, "{id}");
    }
}

#[test]
fn an_open_alert_that_worsens_is_updated_not_raised_again() {
    let mut e = Engine::new();
    let bp = |e: &mut Engine, h: i64, s: f64| {
        e.observe(
            &reading(
                Metric::BloodPressure,
                T0 + h * 3_600_000,
                Value::Pair(s, 100.0),
            ),
            None,
        )
    };
    assert_eq!(bp(&mut e, 0, 185.0)[0].change, Change::Raised);
    // Slightly worse: within the margin (20), nothing.
    assert!(bp(&mut e, 1, 195.0).is_empty());
    // Much worse: updated, with the new value.
    let ev = bp(&mut e, 2, 210.0);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].change, ev[0].value), (Change::Updated, 210.0));
    // Better but still in crisis: nothing; back to normal: resolved.
    assert!(bp(&mut e, 3, 190.0).is_empty());
    assert_eq!(bp(&mut e, 4, 150.0)[0].change, Change::Resolved);
}

#[test]
fn every_default_lies_within_the_bounds_a_plan_may_set() {
    for r in RULES {
        let (lo, hi) = r.bounds;
        assert!(lo < hi, "{}", r.id);
        assert!(
            r.check_threshold(r.threshold).is_ok(),
            "{}: default outside its bounds",
            r.id
        );
        assert!(
            r.check_threshold(lo).is_ok() && r.check_threshold(hi).is_ok(),
            "{}",
            r.id
        );
        assert!(r.check_threshold(f64::NAN).is_err());
        assert!(!r.bounds_source.is_empty());
    }
    let spo2 = Rule::by_id("spo2-low").unwrap();
    let e = spo2.check_threshold(0.0).unwrap_err();
    assert!(e.contains("85") && e.contains("NEWS2"), "{e}");
    assert!(spo2.check_threshold(88.0).is_ok());
}

#[test]
fn a_correction_of_the_reading_that_raised_an_alert_judges_it_again() {
    let mut e = Engine::new();
    let spo2 = |t: i64, v: f64, status: Status| Reading {
        status,
        ..reading(Metric::Spo2, t, Value::Scalar(v))
    };
    // Three lows of five raise; the third raised it.
    let mut events = Vec::new();
    for (i, v) in [97.0, 90.0, 90.0, 96.0, 90.0].into_iter().enumerate() {
        events.extend(e.observe(&spo2(i as i64 * 60_000, v, Status::Final), None));
    }
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].change, events[0].reading_ms),
        (Change::Raised, 4 * 60_000)
    );
    // Correcting an earlier low (not the one that raised it) leaves the alert as it is.
    assert!(
        e.observe(&spo2(60_000, 91.0, Status::Corrected), None)
            .is_empty()
    );
    // The raising reading entered in error: with it gone, the rule no longer holds there.
    let withdrawn = e.observe(&spo2(4 * 60_000, 90.0, Status::EnteredInError), None);
    assert_eq!(withdrawn.len(), 1, "{withdrawn:?}");
    assert_eq!(withdrawn[0].change, Change::Resolved);
    assert!(!e.is_open("p1", "spo2-low"));
    // A correction that breaches raises like any reading.
    let raised = e.observe(&spo2(5 * 60_000, 85.0, Status::Amended), None);
    assert_eq!(
        raised.iter().map(|x| x.change).collect::<Vec<_>>(),
        [Change::Raised]
    );
}

#[test]
fn a_rule_switched_off_never_fires_and_lets_an_open_alert_resolve() {
    let mut e = Engine::new();
    let rule = Rule::by_id("bp-crisis-systolic").unwrap();
    let bp = |t: i64, sys: f64| reading(Metric::BloodPressure, t, Value::Pair(sys, 90.0));
    let raised = e.observe(&bp(0, 200.0), None);
    assert_eq!(raised[0].change, Change::Raised);
    let mut off = Overrides::new();
    off.insert(rule.id.to_owned(), rule.off_threshold());
    assert!(rule.is_off(rule.off_threshold()) && !rule.is_off(rule.threshold));
    let next = e.observe(&bp(60_000, 230.0), Some(&off));
    assert_eq!(
        next.iter().map(|x| x.change).collect::<Vec<_>>(),
        [Change::Resolved]
    );
    assert!(
        e.observe(&bp(120_000, 260.0), Some(&off)).is_empty(),
        "never again while off"
    );
    let low = Rule::by_id("spo2-low").unwrap();
    assert_eq!(low.off_threshold(), f64::MIN);
}
