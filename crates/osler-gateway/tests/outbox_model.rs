//! The gateway's intake (the production ingest path: admission, critical rules, edge stage,
//! group commit) against a model of what must be stored: random sequences of device requests,
//! resends of earlier ones, acknowledgements by the hub, restarts, failed commits, and an
//! outbox small enough to fill. After every step the readings lane must hold exactly what the
//! model holds, in order; a request answered OK is stored once, a refused one not at all, and
//! every critical alert raised reaches the alerts lane once, even when the readings that raised
//! it were refused for room or lost in a failed commit.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use osler_edge::EdgeConfig;
use osler_gateway::intake::{Intake, IntakeSetup, Unit};
use osler_gateway::outbox::{Outbox, OutboxError};
use osler_wire::{AlertEntry, Entry, Lane};
use proptest::prelude::*;

const T0: i64 = 1_750_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    /// A new request: `n` readings of patient `p` (blood pressure, crisis values when `crisis`).
    Send {
        p: u8,
        n: usize,
        crisis: bool,
    },
    /// A device resends the `k`-th most recent request exactly as before.
    Resend(usize),
    /// The hub confirms the first `k` entries of the readings lane.
    Ack(usize),
    Reopen,
    /// The next request's commit fails (an injected SQLite error).
    FailNext,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 1usize..40, proptest::bool::weighted(0.2))
            .prop_map(|(p, n, crisis)| Op::Send { p, n, crisis }),
        3 => (0usize..4).prop_map(Op::Resend),
        2 => (0usize..200).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
        1 => Just(Op::FailNext),
    ]
}

/// A request as a device sends it: its key and readings never change between resends.
#[derive(Clone, Debug)]
struct Request {
    key: u64,
    readings: Vec<Reading>,
}

fn reading(p: u8, t: i64, crisis: bool) -> Reading {
    // 170 mmHg neither raises the crisis alert (> 180) nor clears it (at or below 160, the
    // rule's margin), so the model needs only "raised once while open".
    let (sys, dia) = if crisis {
        (195.0, 100.0)
    } else {
        (170.0, 90.0)
    };
    Reading {
        patient: Id::parse(&format!("p{p}")).unwrap(),
        device: Some(Id::parse("cuff").unwrap()),
        metric: Metric::BloodPressure,
        value: Value::Pair(sys, dia),
        taken: Timestamp {
            utc_ms: t,
            offset_min: 0,
        },
        received_ms: t,
        status: Status::Final,
        identifier: None,
    }
}

fn open(dir: &Path, limit: u64) -> Intake {
    let mut setup = IntakeSetup::with_limit(limit);
    // Every reading is an entry: the model is about admission and durability, not the edge.
    setup.edge = EdgeConfig::forward_everything();
    Intake::open(dir, setup).unwrap()
}

/// The readings lane as (patient, time), in order.
fn lane(outbox: &Outbox) -> Vec<(String, i64)> {
    outbox
        .peek(Lane::Readings, 1_000_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str::<Entry>(&s.entry).unwrap())
        .map(|e| (e.p, e.t))
        .collect()
}

/// Raised alerts in the alerts lane: patient -> reading times.
fn raised(outbox: &Outbox) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in outbox.peek(Lane::Alerts, 1_000_000, usize::MAX).unwrap() {
        let a: AlertEntry = serde_json::from_str(&s.entry).unwrap();
        if a.change == "raised" {
            out.entry(a.p).or_default().push(a.t);
        }
    }
    out
}

struct Model {
    /// What the readings lane must hold (acknowledged by the hub entries removed).
    lane: VecDeque<(String, i64)>,
    /// Requests committed (their resends change nothing).
    committed: HashSet<u64>,
    /// Raised crisis alerts per patient, with their reading times.
    raised: BTreeMap<String, Vec<i64>>,
    /// Patients whose crisis alert is open in the gateway's rules (crisis readings never
    /// resolve here; a restart starts the rules afresh, as the gateway's do).
    open: HashSet<String>,
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "osler-intake-model-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Makes the next commit that appends an entry fail, once.
fn arm_failure(dir: &Path) {
    let side = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
    side.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    side.execute_batch(
        "CREATE TRIGGER IF NOT EXISTS fail_once BEFORE INSERT ON outbox
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
}

fn disarm_failure(dir: &Path) {
    let side = rusqlite::Connection::open(dir.join("outbox.db")).unwrap();
    side.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    side.execute_batch("DROP TRIGGER IF EXISTS fail_once")
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn what_is_acknowledged_is_stored_once_and_nothing_else(
        ops in proptest::collection::vec(op(), 1..60),
        room in 0u64..40_000,
    ) {
        let dir = dir("ops");
        // The limit sits a little above an empty outbox: it fills within a case.
        let base = {
            let intake = open(&dir, u64::MAX);
            intake.outbox().used_bytes().unwrap()
        };
        let limit = base + room;
        let hard = limit + limit / 10;
        let mut intake = Some(open(&dir, limit));
        let mut model = Model { lane: VecDeque::new(), committed: HashSet::new(), raised: BTreeMap::new(), open: HashSet::new() };
        let mut sent: Vec<Request> = Vec::new();
        let mut t = T0;
        let mut key = 0u64;
        let mut fail_next = false;
        let ops_seen = ops.clone();
        for op in ops {
            let ib = intake.as_ref().unwrap();
            let request = match op {
                Op::Send { p, n, crisis } => {
                    key += 1;
                    let readings = (0..n).map(|_| { t += 1000; reading(p, t, crisis) }).collect();
                    let r = Request { key, readings };
                    sent.push(r.clone());
                    Some(r)
                }
                Op::Resend(k) => sent.iter().rev().nth(k).cloned(),
                Op::Ack(k) => {
                    let peeked = ib.outbox().peek(Lane::Readings, k.max(1), usize::MAX).unwrap();
                    let k = k.min(peeked.len());
                    if k > 0 {
                        prop_assert_eq!(ib.ack_blocking(Lane::Readings, peeked[k - 1].seq).unwrap(), k);
                        model.lane.drain(..k);
                    }
                    None
                }
                Op::Reopen => {
                    drop(intake.take());
                    intake = Some(open(&dir, limit));
                    model.open.clear();
                    None
                }
                Op::FailNext => {
                    fail_next = true;
                    None
                }
            };
            let ib = intake.as_ref().unwrap();
            if let Some(r) = request {
                let used = ib.outbox().used_bytes().unwrap();
                let seen = model.committed.contains(&r.key);
                let failing = fail_next && !seen && used < hard;
                if failing {
                    arm_failure(&dir);
                }
                let unit = Unit { readings: r.readings.clone(), request: Some(r.key), ..Unit::default() };
                let outcome = ib.ingest_blocking(unit, t);
                if failing {
                    disarm_failure(&dir);
                    fail_next = false;
                }
                // The rules saw the readings whenever there was room for the alerts they raise.
                if !seen && used < hard {
                    for x in &r.readings {
                        let p = x.patient.to_string();
                        if matches!(x.value, Value::Pair(s, _) if s > 180.0) && model.open.insert(p.clone()) {
                            model.raised.entry(p).or_default().push(x.taken.utc_ms);
                        }
                    }
                }
                match outcome {
                    Ok(()) => {
                        prop_assert!(seen || (used < limit && !failing), "accepted at {used} of {limit} (failing: {failing})");
                        if !seen {
                            model.committed.insert(r.key);
                            model.lane.extend(r.readings.iter().map(|x| (x.patient.to_string(), x.taken.utc_ms)));
                        }
                    }
                    Err(OutboxError::Full { .. }) => prop_assert!(!seen && used >= limit, "refused at {used} of {limit}"),
                    Err(e) => prop_assert!(failing, "unexpected error {e}"),
                }
            }
            let ib = intake.as_ref().unwrap();
            prop_assert_eq!(lane(ib.outbox()), model.lane.iter().cloned().collect::<Vec<_>>());
            prop_assert_eq!(
                ib.outbox().depth().readings.load(Ordering::Relaxed) as usize,
                model.lane.len()
            );
        }
        // A last commit carries any alert of a failed one.
        let ib = intake.as_ref().unwrap();
        ib.ingest_blocking(Unit::default(), t).unwrap();
        prop_assert_eq!(raised(ib.outbox()), model.raised, "ops {:?}", ops_seen);
        drop(intake);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_full_outbox_keeps_room_for_alerts_on_the_ingest_path() {
    let dir = dir("full");
    let base = open(&dir, u64::MAX).outbox().used_bytes().unwrap();
    // Past the limit but under the alerts' room: a request raising a crisis has its alert
    // stored and its readings refused; the resend is refused again (nothing of it was
    // recorded), and taken in whole once there is room.
    let intake = open(&dir, base * 100 / 105);
    let crisis = Unit {
        readings: vec![reading(1, T0, true), reading(1, T0 + 1000, true)],
        request: Some(7),
        ..Unit::default()
    };
    for _ in 0..2 {
        let e = intake.ingest_blocking(crisis.clone(), T0).unwrap_err();
        assert!(matches!(e, OutboxError::Full { .. }), "{e}");
    }
    assert_eq!(raised(intake.outbox()).get("p1"), Some(&vec![T0]));
    assert!(lane(intake.outbox()).is_empty());
    drop(intake);
    // Past the alerts' room too: nothing at all, and the rules do not even see the readings,
    // so the alert is raised when they come back.
    let _ = std::fs::remove_dir_all(&dir);
    let intake = open(&dir, base / 2);
    let e = intake.ingest_blocking(crisis.clone(), T0).unwrap_err();
    assert!(e.is_full(), "{e}");
    assert!(raised(intake.outbox()).is_empty());
    drop(intake);
    let intake = open(&dir, u64::MAX);
    intake.ingest_blocking(crisis.clone(), T0).unwrap();
    assert_eq!(raised(intake.outbox()).get("p1"), Some(&vec![T0]));
    assert_eq!(lane(intake.outbox()).len(), 2);
    // And the resend of a request now committed is answered without being stored again.
    intake.ingest_blocking(crisis, T0).unwrap();
    assert_eq!(lane(intake.outbox()).len(), 2);
    drop(intake);
    let _ = std::fs::remove_dir_all(&dir);
}
