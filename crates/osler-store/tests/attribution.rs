//! Device attribution against a simple model, driving the production store (its writer, its
//! SQLite file) with DeviceUseStatements prepared by the FHIR crate as the hub prepares them:
//! assignments with periods (some refused for overlapping), readings at random times named by
//! Device id or by serial number, late arrivals, reassignments, statements entered in error.
//! Every reading ends stored under the patient whose assignment covered its time when it
//! arrived or, if none did, when one was first written; until then it is held; none is lost.

use std::collections::{BTreeMap, BTreeSet};

use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use osler_registry::{Kind, WriteMode};
use osler_store::{Query, Store, StoreOptions, WriteOp, WriteOutcome};
use proptest::prelude::*;
use serde_json::json;

const T0: i64 = 1_780_000_000_000;
const DEVICES: usize = 2;
const PATIENTS: usize = 3;

#[derive(Clone, Debug)]
enum Action {
    /// A reading of device `d` at minute `t`, named by its serial when `serial`.
    Reading { d: usize, t: i64, serial: bool },
    /// Statement `u` (rewritten if it exists): device `d` on patient `p` from `start` to `end`.
    Assign {
        u: usize,
        d: usize,
        p: usize,
        start: i64,
        end: Option<i64>,
    },
    /// Statement `u` entered in error.
    Withdraw { u: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (0..DEVICES, 0i64..200, any::<bool>()).prop_map(|(d, t, serial)| Action::Reading { d, t, serial }),
        2 => (0usize..4, 0..DEVICES, 0..PATIENTS, 0i64..200, proptest::option::of(1i64..120)).prop_map(
            |(u, d, p, start, len)| Action::Assign { u, d, p, start, end: len.map(|l| start + l) }
        ),
        1 => (0usize..4).prop_map(|u| Action::Withdraw { u }),
    ]
}

fn ms(minute: i64) -> i64 {
    T0 + minute * 60_000
}

fn iso(minute: i64) -> String {
    Timestamp::utc(ms(minute)).to_string()
}

/// The model: assignments in force by statement, where each reading is.
#[derive(Default)]
struct Model {
    assigned: BTreeMap<usize, (usize, usize, i64, Option<i64>)>,
    stored: BTreeSet<(usize, usize, i64)>,
    held: BTreeSet<(usize, i64)>,
}

impl Model {
    fn covers(&self, d: usize, t: i64) -> Option<usize> {
        self.assigned
            .values()
            .find(|(ad, _, s, e)| *ad == d && *s <= t && e.is_none_or(|e| t < e))
            .map(|(_, p, _, _)| *p)
    }

    fn overlaps(&self, u: usize, d: usize, start: i64, end: Option<i64>) -> bool {
        self.assigned.iter().any(|(ou, (od, _, s, e))| {
            *ou != u
                && *od == d
                && !(e.is_some_and(|e| e <= start) || end.is_some_and(|end| end <= *s))
        })
    }

    fn release(&mut self) {
        let held: Vec<(usize, i64)> = self.held.iter().copied().collect();
        for (d, t) in held {
            if let Some(p) = self.covers(d, t) {
                self.held.remove(&(d, t));
                self.stored.insert((p, d, t));
            }
        }
    }
}

fn reading(d: &str, t: i64) -> Reading {
    Reading {
        // Ignored: the store attributes by device.
        patient: Id::parse("guess").unwrap(),
        device: Some(Id::parse(d).unwrap()),
        metric: Metric::HeartRate,
        value: Value::Scalar(60.0 + (t % 40) as f64),
        taken: Timestamp::utc(ms(t)),
        received_ms: ms(t) + 1000,
        status: Status::Final,
        identifier: None,
    }
}

fn write(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    kind: Kind,
    id: &str,
    body: serde_json::Value,
) -> osler_registry::WriteOutcome {
    let w = osler_fhir::registry::prepare(kind, &body, id, WriteMode::Update, None, T0).unwrap();
    let r = rt
        .block_on(store.write_resources(vec![w], None, Vec::new()))
        .unwrap();
    r.resources.into_iter().next().unwrap()
}

fn run(actions: &[Action]) -> Result<(), TestCaseError> {
    let dir = std::env::temp_dir().join(format!(
        "osler-attribution-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = Store::open(&dir, StoreOptions::default()).unwrap();
    for p in 0..PATIENTS {
        write(
            &rt,
            &store,
            Kind::Patient,
            &format!("p{p}"),
            json!({"resourceType": "Patient"}),
        );
    }
    for d in 0..DEVICES {
        write(
            &rt,
            &store,
            Kind::Device,
            &format!("d{d}"),
            json!({"resourceType": "Device", "serialNumber": format!("SN-{d}")}),
        );
    }
    let mut model = Model::default();
    let mut seen = BTreeSet::new();
    for a in actions {
        match *a {
            Action::Reading { d, t, serial } => {
                if !seen.insert((d, t)) {
                    continue; // one reading per device and minute: identity is not under test
                }
                let name = if serial {
                    format!("SN-{d}")
                } else {
                    format!("d{d}")
                };
                let op = WriteOp {
                    reading: reading(&name, t),
                    if_none_exist: None,
                    by_device: true,
                    correction: None,
                };
                let out = store
                    .write_blocking(vec![op], false)
                    .unwrap()
                    .outcomes
                    .remove(0);
                match model.covers(d, t) {
                    Some(p) => {
                        let WriteOutcome::Created(s) = out else {
                            return Err(TestCaseError::fail(format!(
                                "{a:?}: {out:?}, model says p{p}"
                            )));
                        };
                        prop_assert_eq!(s.reading.patient.as_str(), format!("p{p}"));
                        prop_assert_eq!(
                            s.reading.device.as_ref().unwrap().as_str(),
                            format!("d{d}")
                        );
                        model.stored.insert((p, d, t));
                    }
                    None => {
                        prop_assert_eq!(&out, &WriteOutcome::Held, "{:?}", a);
                        model.held.insert((d, t));
                    }
                }
            }
            Action::Assign {
                u,
                d,
                p,
                start,
                end,
            } => {
                let mut period = json!({"start": iso(start)});
                if let Some(e) = end {
                    period["end"] = json!(iso(e));
                }
                let body = json!({
                    "resourceType": "DeviceUseStatement",
                    "status": if end.is_some() { "completed" } else { "active" },
                    "subject": {"reference": format!("Patient/p{p}")},
                    "device": {"reference": format!("Device/d{d}")},
                    "timingPeriod": period,
                });
                let out = write(
                    &rt,
                    &store,
                    Kind::DeviceUseStatement,
                    &format!("u{u}"),
                    body,
                );
                if model.overlaps(u, d, start, end) {
                    prop_assert!(
                        matches!(out, osler_registry::WriteOutcome::Overlap { .. }),
                        "{:?}: {:?}",
                        a,
                        out
                    );
                } else {
                    prop_assert!(out.stored().is_some(), "{:?}: {:?}", a, out);
                    model.assigned.insert(u, (d, p, start, end));
                    model.release();
                }
            }
            Action::Withdraw { u } => {
                let Some(&(d, p, start, end)) = model.assigned.get(&u) else {
                    continue;
                };
                let mut period = json!({"start": iso(start)});
                if let Some(e) = end {
                    period["end"] = json!(iso(e));
                }
                let body = json!({
                    "resourceType": "DeviceUseStatement", "status": "entered-in-error",
                    "subject": {"reference": format!("Patient/p{p}")},
                    "device": {"reference": format!("Device/d{d}")}, "timingPeriod": period,
                });
                let out = write(
                    &rt,
                    &store,
                    Kind::DeviceUseStatement,
                    &format!("u{u}"),
                    body,
                );
                prop_assert!(out.stored().is_some(), "{:?}", out);
                model.assigned.remove(&u);
            }
        }
    }
    let mut stored = BTreeSet::new();
    for p in 0..PATIENTS {
        let q = Query {
            limit: 10_000,
            ..Query::patient(Id::parse(&format!("p{p}")).unwrap())
        };
        for s in store.search(&q).unwrap().readings {
            let d: usize = s.reading.device.as_ref().unwrap().as_str()[1..]
                .parse()
                .unwrap();
            stored.insert((p, d, (s.id.t_ms - T0) / 60_000));
        }
    }
    prop_assert_eq!(&stored, &model.stored);
    let held: BTreeSet<(usize, i64)> = store
        .held(10_000)
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.device
                    .trim_start_matches("SN-")
                    .trim_start_matches('d')
                    .parse()
                    .unwrap(),
                (h.reading.taken.utc_ms - T0) / 60_000,
            )
        })
        .collect();
    prop_assert_eq!(&held, &model.held);
    prop_assert!(
        store
            .held(10_000)
            .unwrap()
            .iter()
            .all(|h| h.reason.contains("held until"))
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn readings_go_to_the_patient_whose_assignment_covers_their_time(actions in proptest::collection::vec(action(), 1..40)) {
        run(&actions)?;
    }
}

/// The corners by name: exactly at the handover, a late reading after a reassignment, and a
/// reading that arrives before its assignment.
#[test]
fn handover_corners() {
    use Action::*;
    run(&[
        Assign {
            u: 0,
            d: 0,
            p: 0,
            start: 10,
            end: Some(50),
        },
        Assign {
            u: 1,
            d: 0,
            p: 1,
            start: 50,
            end: None,
        },
        Reading {
            d: 0,
            t: 50,
            serial: false,
        },
        Reading {
            d: 0,
            t: 49,
            serial: true,
        },
        Reading {
            d: 1,
            t: 20,
            serial: true,
        },
        Assign {
            u: 2,
            d: 1,
            p: 2,
            start: 0,
            end: None,
        },
    ])
    .unwrap();
}
