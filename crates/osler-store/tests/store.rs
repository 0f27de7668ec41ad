//! The store against a real SQLite file in a temporary directory.

use osler_core::{Id, Identifier, Metric, Reading, Status, Timestamp, Value};
use osler_store::{
    BatchMark, Cursor, Query, ReadingId, Store, StoreOptions, WriteOp, WriteOutcome,
};

const T0: i64 = 1_750_000_000_000;

struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("osler-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn reading(patient: &str, metric: Metric, device: Option<&str>, t: i64, v: f64) -> Reading {
    Reading {
        patient: Id::parse(patient).unwrap(),
        device: device.map(|d| Id::parse(d).unwrap()),
        metric,
        value: if metric == Metric::BloodPressure {
            Value::Pair(v, v - 40.0)
        } else {
            Value::Scalar(v)
        },
        taken: Timestamp::utc(t),
        received_ms: t + 1500,
        status: Status::Final,
        identifier: None,
    }
}

fn op(r: Reading) -> WriteOp {
    WriteOp {
        reading: r,
        if_none_exist: None,
        by_device: false,
        correction: None,
    }
}

#[test]
fn writes_survive_reopen_and_resends_are_idempotent() {
    let dir = TempDir::new("reopen");
    let mut r = reading("p1", Metric::HeartRate, Some("w1"), T0, 72.0);
    r.taken.offset_min = 120;
    let id = {
        let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
        let res = store.write_blocking(vec![op(r.clone())], false).unwrap();
        assert!(res.committed);
        let WriteOutcome::Created(s) = &res.outcomes[0] else {
            panic!("{:?}", res.outcomes)
        };
        s.id
    };
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    assert_eq!(store.get(id).unwrap().unwrap().reading, r);
    assert_eq!(
        store
            .stats()
            .readings
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The same reading again is recognised, not stored twice.
    let res = store.write_blocking(vec![op(r.clone())], false).unwrap();
    assert!(matches!(&res.outcomes[0], WriteOutcome::Existing(s) if s.id == id));
    // A different value under the same identity is a conflict, and the original stays.
    let mut other = r.clone();
    other.value = Value::Scalar(80.0);
    let res = store.write_blocking(vec![op(other)], false).unwrap();
    assert!(
        matches!(&res.outcomes[0], WriteOutcome::Conflict { existing } if existing.reading == r)
    );
    let q = Query::patient(Id::parse("p1").unwrap());
    assert_eq!(store.count(&q).unwrap(), 1);
    assert!(store.patient_exists("p1").unwrap());
    assert!(store.device_exists("w1").unwrap());
    assert!(!store.patient_exists("p2").unwrap());
}

#[test]
fn an_atomic_job_is_all_or_nothing() {
    let dir = TempDir::new("atomic");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let first = reading("p1", Metric::Spo2, Some("ox"), T0, 97.0);
    store
        .write_blocking(vec![op(first.clone())], false)
        .unwrap();
    let mut clash = first.clone();
    clash.value = Value::Scalar(90.0);
    // A new patient and a new series in the failing job must not leak into the store.
    let ops = vec![
        op(reading("p9", Metric::HeartRate, Some("w9"), T0, 60.0)),
        op(clash),
    ];
    let res = store.write_blocking(ops.clone(), true).unwrap();
    assert!(!res.committed);
    assert!(matches!(res.outcomes[1], WriteOutcome::Conflict { .. }));
    assert!(!store.patient_exists("p9").unwrap());
    assert_eq!(
        store
            .count(&Query::patient(Id::parse("p9").unwrap()))
            .unwrap(),
        0
    );
    // The same ops as a batch: the good one is stored, the bad one fails alone; the series
    // created for p9 is reused correctly after the rollback.
    let res = store.write_blocking(ops, false).unwrap();
    assert!(res.committed);
    assert!(matches!(res.outcomes[0], WriteOutcome::Created(_)));
    assert!(matches!(res.outcomes[1], WriteOutcome::Conflict { .. }));
    assert_eq!(
        store
            .count(&Query::patient(Id::parse("p9").unwrap()))
            .unwrap(),
        1
    );
}

#[test]
fn conditional_create_matches_identifiers() {
    let dir = TempDir::new("ident");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let ident = Identifier {
        system: "urn:osler:test".into(),
        value: "a|1".into(),
    };
    let mut r = reading("p1", Metric::BodyWeight, Some("scale"), T0, 81.5);
    r.identifier = Some(ident.clone());
    let cond = |r: Reading| WriteOp {
        reading: r,
        if_none_exist: Some(ident.clone()),
        by_device: false,
        correction: None,
    };
    let res = store.write_blocking(vec![cond(r.clone())], false).unwrap();
    assert!(matches!(res.outcomes[0], WriteOutcome::Created(_)));
    // A resend with another time but the same identifier matches the first: nothing new.
    let mut resend = r.clone();
    resend.taken = Timestamp::utc(T0 + 5000);
    let res = store
        .write_blocking(vec![cond(resend.clone())], false)
        .unwrap();
    assert!(matches!(&res.outcomes[0], WriteOutcome::Existing(s) if s.reading == r));
    // Stored unconditionally, the identifier is now on two readings: conditional create says so.
    store
        .write_blocking(vec![op(resend.clone())], false)
        .unwrap();
    let res = store.write_blocking(vec![cond(resend)], false).unwrap();
    assert_eq!(res.outcomes[0], WriteOutcome::MultipleMatches { count: 2 });
    assert_eq!(store.by_identifier(&ident).unwrap().len(), 2);
    let other = Identifier {
        system: "urn:osler:test".into(),
        value: "a".into(),
    };
    assert!(store.by_identifier(&other).unwrap().is_empty());
}

/// Pages through searches in both orders, with metric and time filters, and compares them
/// with a plain model of the same readings.
#[test]
fn keyset_paging_matches_a_model() {
    let dir = TempDir::new("paging");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let mut model = Vec::new();
    let mut ops = Vec::new();
    // Deterministic pseudo-random times with deliberate ties across series.
    let mut x: u64 = 12345;
    for i in 0..600 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let t = T0 + ((x >> 33) % 200) as i64 * 1000;
        let (metric, device) = match i % 4 {
            0 => (Metric::HeartRate, Some("w1")),
            1 => (Metric::HeartRate, Some("w2")),
            2 => (Metric::Spo2, Some("w1")),
            _ => (Metric::BloodPressure, None),
        };
        let v = 100.0 + (i % 50) as f64;
        let r = reading("p1", metric, device, t, v);
        ops.push(op(r));
    }
    // One noisy neighbour that must never show up.
    ops.push(op(reading("p2", Metric::HeartRate, Some("w1"), T0, 70.0)));
    for chunk in ops.chunks(97) {
        let res = store.write_blocking(chunk.to_vec(), false).unwrap();
        for o in res.outcomes {
            if let WriteOutcome::Created(s) = o
                && s.reading.patient.as_str() == "p1"
            {
                model.push(s);
            }
        }
    }
    let cases: Vec<(Option<Vec<Metric>>, i64, i64)> = vec![
        (None, i64::MIN, i64::MAX),
        (Some(vec![Metric::HeartRate]), T0 + 20_000, T0 + 150_000),
        (
            Some(vec![Metric::Spo2, Metric::BloodPressure]),
            T0,
            T0 + 100_000,
        ),
    ];
    for (metrics, from_ms, to_ms) in cases {
        for descending in [false, true] {
            for limit in [1, 7, 50] {
                let mut expect: Vec<_> = model
                    .iter()
                    .filter(|s| {
                        metrics
                            .as_ref()
                            .is_none_or(|m| m.contains(&s.reading.metric))
                    })
                    .filter(|s| s.id.t_ms >= from_ms && s.id.t_ms < to_ms)
                    .map(|s| (s.id.t_ms, s.id.series))
                    .collect();
                expect.sort();
                if descending {
                    expect.reverse();
                }
                let mut q = Query::patient(Id::parse("p1").unwrap());
                q.metrics = metrics.clone();
                q.from_ms = from_ms;
                q.to_ms = to_ms;
                q.descending = descending;
                q.limit = limit;
                assert_eq!(store.count(&q).unwrap() as usize, expect.len());
                let mut got = Vec::new();
                let mut after: Option<Cursor> = None;
                loop {
                    q.after = after;
                    let page = store.search(&q).unwrap();
                    assert!(page.readings.len() <= limit);
                    got.extend(page.readings.iter().map(|s| (s.id.t_ms, s.id.series)));
                    match page.next {
                        Some(c) => after = Some(c),
                        None => break,
                    }
                }
                assert_eq!(
                    got, expect,
                    "metrics {metrics:?} desc {descending} limit {limit}"
                );
            }
        }
    }
    // Newest 2 per metric.
    let q = Query::patient(Id::parse("p1").unwrap());
    let last = store.last_n(&q, 2).unwrap();
    for metric in [Metric::HeartRate, Metric::Spo2, Metric::BloodPressure] {
        let mut expect: Vec<_> = model
            .iter()
            .filter(|s| s.reading.metric == metric)
            .map(|s| (s.id.t_ms, s.id.series))
            .collect();
        expect.sort();
        expect.reverse();
        expect.truncate(2);
        let got: Vec<_> = last
            .iter()
            .filter(|s| s.reading.metric == metric)
            .map(|s| (s.id.t_ms, s.id.series))
            .collect();
        assert_eq!(got, expect, "{metric}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_writers_share_commits() {
    let dir = TempDir::new("group");
    let store = std::sync::Arc::new(Store::open(&dir.0, StoreOptions::default()).unwrap());
    let mut tasks = Vec::new();
    for w in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let r = reading(
                    &format!("p{w}"),
                    Metric::HeartRate,
                    Some("w"),
                    T0 + i * 1000,
                    70.0,
                );
                let res = store.write(vec![op(r)], false).await.unwrap();
                assert!(res.committed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        stats.readings.load(std::sync::atomic::Ordering::Relaxed),
        640
    );
    // 640 single-reading writes from 32 concurrent writers must not take 640 commits.
    assert!(commits < 640, "{commits} commits for 640 writes");
}

fn mark(first: u64, ops: &[WriteOp], rejected: Vec<(u64, String, String)>) -> BatchMark {
    let n = (ops.len() + rejected.len()) as u64;
    BatchMark {
        signature: vec![7; 64],
        gateway: "gw-1".into(),
        received_ms: T0,
        first_seq: first,
        lane: 1,
        last_seq: first + n - 1,
        op_seqs: (first..first + ops.len() as u64).collect(),
        op_raw: ops
            .iter()
            .map(|o| format!("{:?}", o.reading.value))
            .collect(),
        rejected,
        summaries: Vec::new(),
        report: None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn gateway_batches_are_deduplicated_and_dead_lettered() {
    let dir = TempDir::new("batch");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let ops: Vec<WriteOp> = (0..10)
        .map(|i| {
            op(reading(
                "g1",
                Metric::HeartRate,
                Some("w"),
                T0 + i * 1000,
                70.0,
            ))
        })
        .collect();
    let res = store
        .write_batch(ops.clone(), mark(1, &ops, vec![]), vec![], vec![])
        .await
        .unwrap();
    assert!(
        res.outcomes
            .iter()
            .all(|o| matches!(o, WriteOutcome::Created(_)))
    );
    assert_eq!(store.committed_through("gw-1", 1).unwrap(), 10);
    // The same batch again: every op is recognised by its sequence number.
    let res = store
        .write_batch(ops.clone(), mark(1, &ops, vec![]), vec![], vec![])
        .await
        .unwrap();
    assert!(
        res.outcomes
            .iter()
            .all(|o| *o == WriteOutcome::AlreadyCommitted)
    );
    // An overlapping batch: 6..=10 seen, 11..=12 new; one new entry conflicts, one was refused
    // before the store. Both are dead-lettered, nothing is overwritten.
    let mut clash = reading("g1", Metric::HeartRate, Some("w"), T0, 99.0);
    clash.received_ms += 5;
    let mut ops2: Vec<WriteOp> = ops[5..].to_vec();
    ops2.push(op(clash));
    let rejected = vec![(
        12,
        "{\"m\":\"mood\"}".to_owned(),
        "unknown metric \"mood\"".to_owned(),
    )];
    let m = mark(6, &ops2, rejected);
    assert_eq!(m.last_seq, 12);
    let res = store.write_batch(ops2, m, vec![], vec![]).await.unwrap();
    assert_eq!(
        res.outcomes[..5],
        vec![WriteOutcome::AlreadyCommitted; 5][..]
    );
    assert_eq!(res.outcomes[5], WriteOutcome::DeadLettered);
    assert_eq!(store.committed_through("gw-1", 1).unwrap(), 12);
    assert_eq!(store.committed_through("gw-1", 0).unwrap(), 0);
    let dead = store.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter().any(
            |d| d.reason.contains("unknown metric") && d.source == "gateway gw-1 lane 1 seq 12"
        )
    );
    assert!(
        dead.iter()
            .any(|d| d.reason.contains("same identity") && d.source.ends_with("seq 11"))
    );
    assert_eq!(
        store
            .count(&Query::patient(Id::parse("g1").unwrap()))
            .unwrap(),
        10
    );
}

#[test]
fn gateways_are_enrolled_and_revoked() {
    let dir = TempDir::new("enrol");
    let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
    let audit = |what: &str| vec![format!("{{\"what\":\"{what}\"}}")];
    osler_store::admin::enrol(&dir.0, &key, "gw-1", "ab", 5, &audit("enrol 1")).unwrap();
    osler_store::admin::enrol(&dir.0, &key, "gw-2", "cd", 6, &audit("enrol 2")).unwrap();
    assert!(osler_store::admin::revoke(&dir.0, &key, "gw-2", 7, &audit("revoke 2")).unwrap());
    // Revoking a gateway never enrolled changes nothing and records nothing.
    assert!(!osler_store::admin::revoke(&dir.0, &key, "gw-9", 7, &audit("revoke 9")).unwrap());
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    // Each change is in the audit log, committed with it.
    let log: Vec<String> = store
        .audit_rows(1, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        log,
        [audit("enrol 1"), audit("enrol 2"), audit("revoke 2")].concat()
    );
    let g1 = store.gateway("gw-1").unwrap().unwrap();
    assert_eq!((g1.public_key.as_str(), g1.revoked_ms), ("ab", None));
    assert_eq!(store.gateway("gw-2").unwrap().unwrap().revoked_ms, Some(7));
    assert_eq!(store.gateway("gw-3").unwrap(), None);
    // Enrolling again while the hub's store is open replaces the key and lifts the revocation.
    osler_store::admin::enrol(&dir.0, &key, "gw-2", "ef", 8, &audit("enrol 2 again")).unwrap();
    let g2 = store.gateway("gw-2").unwrap().unwrap();
    assert_eq!((g2.public_key.as_str(), g2.revoked_ms), ("ef", None));
    assert_eq!(osler_store::admin::list(&dir.0).unwrap().len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn summaries_are_stored_once_and_searched_with_readings() {
    let dir = TempDir::new("summary");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let r = reading("s1", Metric::HeartRate, Some("w"), T0, 70.0);
    let ops = vec![op(r.clone())];
    store
        .write_batch(ops.clone(), mark(1, &ops, vec![]), vec![], vec![])
        .await
        .unwrap();
    let summary = |t0: i64| osler_store::Summary {
        patient: r.patient.clone(),
        metric: Metric::HeartRate,
        device: r.device.clone(),
        start: Timestamp::utc(t0),
        mean: Value::Scalar(71.5),
        stats: osler_store::SummaryStats {
            end_ms: t0 + 59_000,
            count: 12,
            min: Value::Scalar(68.0),
            max: Value::Scalar(75.0),
            last: Value::Scalar(72.0),
            spikes: 1,
        },
    };
    let batch = |first: u64, ts: &[i64]| BatchMark {
        signature: vec![7; 64],
        gateway: "gw-1".into(),
        received_ms: T0,
        first_seq: first,
        lane: 2,
        last_seq: first + ts.len() as u64 - 1,
        op_seqs: vec![],
        op_raw: vec![],
        rejected: vec![],
        summaries: ts
            .iter()
            .enumerate()
            .map(|(i, t)| (first + i as u64, summary(*t)))
            .collect(),
        report: None,
    };
    store
        .write_batch(vec![], batch(1, &[T0 + 1000, T0 + 61_000]), vec![], vec![])
        .await
        .unwrap();
    // A resend of the same sequence numbers stores nothing twice.
    store
        .write_batch(vec![], batch(1, &[T0 + 1000, T0 + 61_000]), vec![], vec![])
        .await
        .unwrap();
    let q = Query::patient(r.patient.clone());
    let page = store.search(&q).unwrap();
    assert_eq!(page.readings.len(), 3);
    assert!(page.readings[0].summary.is_none());
    let s = &page.readings[1];
    assert!(s.id.is_summary() && s.id.to_string().starts_with('s'));
    assert_eq!(s.summary.as_ref().unwrap().count, 12);
    assert_eq!(s.reading.value, Value::Scalar(71.5));
    assert_eq!(store.count(&q).unwrap(), 3);
    // Found again by its id, and paging walks across readings and summaries.
    let again = store
        .get(ReadingId::parse(&s.id.to_string()).unwrap())
        .unwrap();
    assert_eq!(again.as_ref(), Some(s));
    let mut q1 = q.clone();
    q1.limit = 1;
    let mut seen = Vec::new();
    loop {
        let p = store.search(&q1).unwrap();
        seen.extend(p.readings.iter().map(|x| x.id));
        match p.next {
            Some(c) => q1.after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, page.readings.iter().map(|x| x.id).collect::<Vec<_>>());
}

#[test]
fn an_alert_update_is_stored_only_when_worse() {
    use osler_store::alerts::AlertWrite;
    let dir = TempDir::new("alert-update");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let raise = |rule: &str, value: f64| AlertWrite::Raise {
        patient: "p1".into(),
        rule: rule.into(),
        severity: "critical".into(),
        reading_ms: T0,
        at_ms: T0,
        value,
        threshold: 180.0,
        late: false,
        source: "hub".into(),
    };
    let update = |rule: &str, value: f64, higher_is_worse: bool| AlertWrite::Update {
        patient: "p1".into(),
        rule: rule.into(),
        value,
        higher_is_worse,
        reading_ms: T0,
        at_ms: T0,
    };
    let changed = |w: Vec<AlertWrite>| -> Vec<Option<f64>> {
        rt.block_on(store.write_alerts(w, vec![]))
            .unwrap()
            .alerts
            .into_iter()
            .map(|a| a.map(|a| a.value))
            .collect()
    };
    assert_eq!(
        changed(vec![raise("bp", 195.0), raise("low", 50.0)]),
        [Some(195.0), Some(50.0)]
    );
    // Worse, the same again (the gateway's report and the hub's of one reading), less bad.
    assert_eq!(
        changed(vec![
            update("bp", 221.0, true),
            update("bp", 221.0, true),
            update("bp", 210.0, true)
        ]),
        [Some(221.0), None, None]
    );
    assert_eq!(
        changed(vec![update("low", 45.0, false), update("low", 48.0, false)]),
        [Some(45.0), None]
    );
    // No open alert: nothing to update.
    assert_eq!(changed(vec![update("none", 300.0, true)]), [None]);
}

#[tokio::test(flavor = "current_thread")]
async fn rules_run_inside_the_commit_on_what_it_stored() {
    use osler_store::alerts::{AlertFilter, AlertWrite};
    let dir = TempDir::new("rules");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let first = reading("p1", Metric::BloodPressure, Some("cuff"), T0, 190.0);
    store.write(vec![op(first.clone())], false).await.unwrap();
    // The rules see what the job left stored: the new reading and the one already there,
    // not the one that conflicts; their alert is in the same commit as the readings.
    let mut clash = first.clone();
    clash.value = Value::Pair(100.0, 60.0);
    let fresh = reading(
        "p1",
        Metric::BloodPressure,
        Some("cuff"),
        T0 + 60_000,
        195.0,
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let rules: osler_store::Rules = Box::new(move |readings| {
        *log.lock().unwrap() = readings.iter().map(|r| r.taken.utc_ms).collect::<Vec<_>>();
        vec![AlertWrite::Raise {
            patient: "p1".into(),
            rule: "bp-crisis-systolic".into(),
            severity: "critical".into(),
            reading_ms: T0 + 60_000,
            at_ms: T0 + 60_000,
            value: 195.0,
            threshold: 180.0,
            late: false,
            source: "hub".into(),
        }]
    });
    let res = store
        .write_with_rules(
            vec![op(first.clone()), op(clash.clone()), op(fresh)],
            false,
            None,
            rules,
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(res.committed);
    assert_eq!(*seen.lock().unwrap(), vec![T0, T0 + 60_000]);
    assert_eq!(res.alerts.len(), 1);
    assert!(res.alerts[0].is_some(), "the raise is recorded");
    let stored = store.alerts(&AlertFilter::default()).unwrap();
    assert_eq!(stored.len(), 1);
    // An atomic job that fails stores nothing, and its rules do not run.
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let rules: osler_store::Rules = Box::new(move |_| {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        Vec::new()
    });
    let later = reading(
        "p1",
        Metric::BloodPressure,
        Some("cuff"),
        T0 + 120_000,
        150.0,
    );
    let res = store
        .write_with_rules(vec![op(later), op(clash)], true, None, rules, Vec::new())
        .await
        .unwrap();
    assert!(!res.committed);
    assert!(!ran.load(std::sync::atomic::Ordering::Relaxed));
}

/// A search across patients pages through every selected series in (time, series) order,
/// either way, whatever the page size: compared with every reading sorted by brute force.
#[test]
fn searches_across_patients_merge_every_series_in_order() {
    let dir = TempDir::new("across");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let mut ops = Vec::new();
    // 7 patients × 2 devices of heart rate, uneven counts and clashing times, plus SpO2.
    for p in 0..7i64 {
        for d in 0..2i64 {
            for i in 0..(3 + p * 2 + d * 5) {
                let t = T0 + (i * 7 + p * 3 + d) % 60 * 1000 + i * 60_000;
                let patient = format!("p{p}");
                let device = format!("d{d}");
                ops.push(WriteOp {
                    reading: reading(
                        &patient,
                        Metric::HeartRate,
                        Some(&device),
                        t,
                        60.0 + i as f64,
                    ),
                    if_none_exist: None,
                    by_device: false,
                    correction: None,
                });
                ops.push(WriteOp {
                    reading: reading(&patient, Metric::Spo2, Some(&device), t, 97.0),
                    if_none_exist: None,
                    by_device: false,
                    correction: None,
                });
            }
        }
    }
    let result = store.write_blocking(ops, false).unwrap();
    let mut all: Vec<ReadingId> = result
        .outcomes
        .iter()
        .filter_map(|o| match o {
            WriteOutcome::Created(s) if s.reading.metric == Metric::HeartRate => Some(s.id),
            _ => None,
        })
        .collect();
    all.sort_by_key(|id| (id.t_ms, id.series));
    for descending in [false, true] {
        let mut want = all.clone();
        if descending {
            want.reverse();
        }
        for limit in [1, 3, 4, 5, 17, 1000] {
            let mut q = Query {
                patient: None,
                metrics: Some(vec![Metric::HeartRate]),
                descending,
                limit,
                ..Query::patient(Id::parse("x").unwrap())
            };
            let mut got = Vec::new();
            loop {
                let page = store.search(&q).unwrap();
                assert!(page.readings.len() <= limit);
                got.extend(page.readings.iter().map(|s| s.id));
                match page.next {
                    Some(c) => q.after = Some(c),
                    None => break,
                }
            }
            assert_eq!(got, want, "descending {descending}, limit {limit}");
        }
    }
    let q = Query {
        patient: None,
        metrics: None,
        ..Query::patient(Id::parse("x").unwrap())
    };
    assert!(
        store.search(&q).unwrap().readings.is_empty(),
        "no metric, no patient: nothing is scanned"
    );
}

#[test]
fn a_narrow_replay_of_alert_events_moves_past_the_others() {
    let dir = TempDir::new("alert-events");
    let store = Store::open(&dir.0, StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let raise = |patient: &str, rule: &str| osler_store::alerts::AlertWrite::Raise {
        patient: patient.into(),
        rule: rule.into(),
        severity: "urgent".into(),
        reading_ms: T0,
        at_ms: T0,
        value: 130.0,
        threshold: 120.0,
        late: false,
        source: "hub".into(),
    };
    rt.block_on(store.write_alerts(
        vec![
            raise("p1", "hr-high"),
            raise("p2", "hr-high"),
            raise("p1", "fever"),
        ],
        vec![],
    ))
    .unwrap();
    let all = store.alert_events_after(0, 100, None).unwrap();
    assert_eq!(all.0.len(), 3);
    assert_eq!(all.1, all.0[2].seq);
    // Only p2's: one event, and the start moves past p1's last one.
    let p2 = ["p2".to_owned()];
    let (mine, scanned) = store.alert_events_after(0, 100, Some(&p2)).unwrap();
    assert_eq!(
        mine.iter().map(|e| e.patient.as_str()).collect::<Vec<_>>(),
        ["p2"]
    );
    assert_eq!(scanned, all.1);
    // Nothing after it: nothing read, and the start stays.
    assert_eq!(
        store.alert_events_after(scanned, 100, Some(&p2)).unwrap(),
        (vec![], scanned)
    );
}
