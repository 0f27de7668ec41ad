//! The edge state the outbox keeps per stream: after a restart, and after an upgrade from an
//! outbox that kept it as JSON, every stream decides its next readings exactly as a stream that
//! never left memory would. The reference is `osler-edge` run in process over the same readings.

use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use osler_edge::{Output, Policy, Stream, Tally, Zone};
use osler_gateway::intake::{Intake, IntakeSetup, Unit};
use osler_gateway::outbox::Outbox;
use osler_wire::{Entry, Lane, SummaryEntry};

const T0: i64 = 1_750_000_000_000;

fn reading(patient: &str, i: i64) -> Reading {
    // Heart rate with a slow swing and an artefact now and then: some readings are sent,
    // most summarised, and the median filter holds two at any time.
    let v = 70.0 + ((i * 7) % 19) as f64 + if i % 23 == 11 { 90.0 } else { 0.0 };
    Reading {
        patient: Id::parse(patient).unwrap(),
        device: Some(Id::parse("watch").unwrap()),
        metric: Metric::HeartRate,
        value: Value::Scalar(v),
        taken: Timestamp {
            utc_ms: T0 + i * 1000,
            offset_min: 0,
        },
        received_ms: T0 + i * 1000,
        status: Status::Final,
        identifier: None,
    }
}

/// Readings sent (patient, time) and summaries (patient, first time, count), sorted.
type Sent = (Vec<(String, i64)>, Vec<(String, i64, u32)>);

/// What the outbox sends.
fn sent(outbox: &Outbox) -> Sent {
    let mut readings: Vec<(String, i64)> = outbox
        .peek(Lane::Readings, 100_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str::<Entry>(&s.entry).unwrap())
        .map(|e| (e.p, e.t))
        .collect();
    let mut summaries: Vec<(String, i64, u32)> = outbox
        .peek(Lane::Summaries, 100_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str::<SummaryEntry>(&s.entry).unwrap())
        .map(|e| (e.p, e.t0, e.n))
        .collect();
    readings.sort();
    summaries.sort();
    (readings, summaries)
}

/// The same readings through streams that stay in memory.
fn reference(patients: &[&str], range: std::ops::Range<i64>) -> Sent {
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let (mut readings, mut summaries) = (Vec::new(), Vec::new());
    for p in patients {
        let mut stream = Stream::new(&reading(p, 0));
        let (mut out, mut tally) = (Vec::new(), Tally::default());
        for i in range.clone() {
            let r = reading(p, i);
            stream.observe(&policy, &zone, &r, r.received_ms, &mut out, &mut tally);
        }
        for o in out {
            match o {
                Output::Forward(r) => readings.push((p.to_string(), r.taken.utc_ms)),
                Output::Summary(s) => summaries.push((p.to_string(), s.t0, s.n)),
            }
        }
    }
    readings.sort();
    summaries.sort();
    (readings, summaries)
}

/// The gateway's writer, as the gateway opens it (default edge processing).
fn open(dir: &std::path::Path) -> Intake {
    Intake::open(dir, IntakeSetup::with_limit(1 << 30)).unwrap()
}

fn unit(readings: Vec<Reading>, request: u64) -> Unit {
    Unit {
        readings,
        request: Some(request),
        ..Unit::default()
    }
}

fn ingest(intake: &Intake, patients: &[&str], i: i64) {
    let batch: Vec<Reading> = patients.iter().map(|p| reading(p, i)).collect();
    intake
        .ingest_blocking(unit(batch, i as u64), T0 + i * 1000)
        .unwrap();
}

/// A fresh directory of this test's own (removed by the caller on success).
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("osler-edge-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn streams_continue_across_restarts_as_if_never_stopped() {
    let dir = tempdir("restart");
    let patients = ["p1", "p2", "p3"];
    // Long enough (readings a second apart) to close summaries of the 5-minute window.
    for (from, to) in [(0, 37), (37, 38), (38, 90), (90, 700)] {
        let intake = open(&dir);
        for i in from..to {
            ingest(&intake, &patients, i);
        }
        drop(intake);
    }
    let intake = open(&dir);
    let got = sent(intake.outbox());
    let want = reference(&patients, 0..700);
    assert!(!want.0.is_empty() && !want.1.is_empty());
    assert_eq!(got, want);
    drop(intake);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_outbox_with_json_states_is_carried_over() {
    // An outbox as the previous version left it: stream states as JSON in `edge_stream`.
    let dir = tempdir("json");
    let policy = Policy::default_for(Metric::HeartRate);
    let zone = Zone::for_metric(Metric::HeartRate, policy.near, None);
    let mut stream = Stream::new(&reading("p1", 0));
    let (mut out, mut tally) = (Vec::new(), Tally::default());
    for i in 0..50 {
        let r = reading("p1", i);
        stream.observe(&policy, &zone, &r, r.received_ms, &mut out, &mut tally);
    }
    assert!(stream.waiting() > 0, "readings wait in the state");
    {
        let conn = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE edge_stream(patient TEXT NOT NULL, metric TEXT NOT NULL,
             device TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY(patient, metric, device))
             WITHOUT ROWID;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO edge_stream VALUES ('p1', 'heart-rate', 'watch', ?1)",
            [serde_json::to_string(&stream).unwrap()],
        )
        .unwrap();
        // A state that does not parse is dropped with a log line, not a failed start.
        conn.execute(
            "INSERT INTO edge_stream VALUES ('p2', 'heart-rate', 'watch', '{not json')",
            [],
        )
        .unwrap();
    }
    let intake = open(&dir);
    for i in 50..120 {
        ingest(&intake, &["p1"], i);
    }
    // The continuation is what the stream that stayed in memory decides (its first 50
    // readings' outputs were sent by the old version and are not in this outbox).
    let (all_r, all_s) = reference(&["p1"], 0..120);
    let before: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Forward(r) => Some(r.taken.utc_ms),
            _ => None,
        })
        .collect();
    let closed_before: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Summary(s) => Some(s.t0),
            _ => None,
        })
        .collect();
    let want_r: Vec<_> = all_r
        .into_iter()
        .filter(|(_, t)| !before.contains(t))
        .collect();
    let want_s: Vec<_> = all_s
        .into_iter()
        .filter(|(_, t0, _)| !closed_before.contains(t0))
        .collect();
    assert_eq!(sent(intake.outbox()), (want_r, want_s));
    drop(intake);
    let conn = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
    let old: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name='edge_stream'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0, "the JSON table is gone once carried over");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_commit_leaves_the_streams_as_they_were() {
    // A commit that fails after the edge has decided (here a trigger refuses the stream state
    // updates) must leave the streams as stored: the device resends what was not acknowledged,
    // and the outcome is the same as if the failure had never happened.
    let dir = tempdir("failed-commit");
    let intake = open(&dir);
    for i in 0..33 {
        ingest(&intake, &["p1", "p2"], i);
    }
    let side = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
    side.execute_batch(
        "CREATE TRIGGER refuse BEFORE UPDATE ON edge_state BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .unwrap();
    // p3 first appears in a failing commit: its new stream must be forgotten too.
    let batch_at = |i: i64| -> Vec<Reading> {
        ["p1", "p2", "p3"]
            .iter()
            .filter(|p| **p != "p3" || i >= 35)
            .map(|p| reading(p, i))
            .collect()
    };
    // Readings 33-38 hold an artefact (34), sent with its context: outputs that die with
    // the commit.
    for i in 33..39 {
        let batch = batch_at(i);
        let result = intake.ingest_blocking(unit(batch, 1000 + i as u64), T0 + i * 1000);
        assert!(
            result.is_err(),
            "the commit of reading {i} should have failed"
        );
    }
    side.execute_batch("DROP TRIGGER refuse").unwrap();
    for i in 33..100 {
        // The resends of the refused requests (the same requests: same key), then new ones.
        let batch = batch_at(i);
        intake
            .ingest_blocking(unit(batch, 1000 + i as u64), T0 + i * 1000)
            .unwrap();
    }
    let mut want = reference(&["p1", "p2"], 0..100);
    let p3 = reference(&["p3"], 35..100);
    want.0.extend(p3.0);
    want.1.extend(p3.1);
    want.0.sort();
    want.1.sort();
    assert_eq!(sent(intake.outbox()), want);
    drop(intake);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_that_does_not_decode_is_removed_and_started_afresh() {
    let dir = tempdir("undecodable");
    let intake = open(&dir);
    for i in 0..10 {
        ingest(&intake, &["p1"], i);
    }
    drop(intake);
    let side = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
    side.execute("UPDATE edge_state SET state=x'ff00ff'", [])
        .unwrap();
    drop(side);
    // The gateway starts (no crash loop), the damaged row is gone, and the stream goes on.
    let intake = open(&dir);
    let side = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
    let rows: i64 = side
        .query_row("SELECT count(*) FROM edge_state", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    for i in 10..20 {
        ingest(&intake, &["p1"], i);
    }
    drop(intake);
    let rows: i64 = side
        .query_row("SELECT count(*) FROM edge_state", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "the stream starts afresh and is stored again");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reading_near_a_threshold_is_marked_to_leave_without_waiting() {
    let dir = tempdir("urgent");
    let intake = open(&dir);
    // Ordinary readings: they may wait to fill a batch.
    for i in 0..5 {
        ingest(&intake, &["p1"], i);
    }
    assert!(!intake.outbox().take_urgent());
    // Heart rate 130: past the 120 /min threshold, in the alert zone.
    let mut r = reading("p1", 5);
    r.value = Value::Scalar(130.0);
    intake.ingest_blocking(unit(vec![r], 5), T0 + 5000).unwrap();
    assert!(intake.outbox().take_urgent());
    assert!(!intake.outbox().take_urgent(), "taking it clears it");
    // Temperature is sent reading by reading; a fever's (the hub decides it) goes at once, a
    // normal one waits for the batch.
    let temperature = |v: f64, i: i64| Reading {
        metric: Metric::BodyTemperature,
        value: Value::Scalar(v),
        ..reading("p1", i)
    };
    intake
        .ingest_blocking(unit(vec![temperature(36.8, 6)], 6), T0 + 6000)
        .unwrap();
    assert!(!intake.outbox().take_urgent());
    intake
        .ingest_blocking(unit(vec![temperature(39.6, 7)], 7), T0 + 7000)
        .unwrap();
    assert!(intake.outbox().take_urgent());
    drop(intake);
    let _ = std::fs::remove_dir_all(&dir);
}
