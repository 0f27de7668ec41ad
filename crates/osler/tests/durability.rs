//! "Commit first, acknowledge after": whatever the hub acknowledged is there after a restart,
//! including after `kill -9` in the middle of a write load.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The `location`s of every Observation in a transaction response.
fn locations(resp: &Value) -> Vec<String> {
    resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["location"].as_str().unwrap().to_owned())
        .collect()
}

/// The id in a location URL (`.../Observation/{id}/_history/{vid}`).
fn id_of(location: &str) -> String {
    let resource = location.split("/_history/").next().unwrap();
    resource.rsplit('/').next().unwrap().to_owned()
}

#[test]
fn a_clean_restart_keeps_everything() {
    let dir = TempDir::new("restart");
    let hub = Hub::start(&dir.0);
    let mut acked = Vec::new();
    for b in 0..5 {
        let obs: Vec<Value> = (0..200)
            .map(|i| {
                observation(
                    "rita",
                    "8867-4",
                    60.0 + (i % 30) as f64,
                    "/min",
                    &minutes_ago(2000 - b * 200 - i),
                )
            })
            .collect();
        let a = post(&hub.base, &bundle("transaction", &obs, &[]).to_string());
        assert_eq!(a.status, 200, "{}", a.text);
        acked.extend(locations(&a.json()).iter().map(|l| id_of(l)));
    }
    let single = post(
        &format!("{}/Observation", hub.base),
        &blood_pressure("rita", 150.0, 95.0, &minutes_ago(1)).to_string(),
    );
    assert_eq!(single.status, 201);
    let bp = single.json();
    hub.stop();

    let hub = Hub::start(&dir.0);
    assert_eq!(count_for(&hub, "rita"), 1001);
    let read = get(&format!(
        "{}/Observation/{}",
        hub.base,
        bp["id"].as_str().unwrap()
    ));
    assert_eq!(read.json(), bp);
    for id in acked.iter().step_by(97) {
        assert_eq!(
            get(&format!("{}/Observation/{id}", hub.base)).status,
            200,
            "{id}"
        );
    }
    assert_eq!(metric(&hub, "osler_readings_stored"), 1001.0);
}

/// Several clients post Bundles and single Observations while the hub is killed with SIGKILL,
/// three times. Every acknowledged reading must be found afterwards, exactly once.
#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = TempDir::new("kill9");
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut minute = 0i64;
    for round in 0..3 {
        let hub = Hub::start(&dir.0);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let (base, stop, acked) = (hub.base.clone(), stop.clone(), acked.clone());
                // Each client writes its own patient's timeline, so no two readings collide.
                let patient = format!("k{round}-{c}");
                let start = minute;
                std::thread::spawn(move || {
                    let mut k = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        let obs: Vec<Value> = (0..50)
                            .map(|i| {
                                observation(
                                    &patient,
                                    "8867-4",
                                    70.0,
                                    "/min",
                                    &minutes_ago(9000 - start - k - i),
                                )
                            })
                            .collect();
                        k += 50;
                        let body = bundle("transaction", &obs, &[]).to_string();
                        // A request cut off by the kill has no answer: it was never acknowledged.
                        let resp = req("POST", &base)
                            .set("Content-Type", "application/fhir+json")
                            .timeout(Duration::from_secs(10))
                            .send_string(&body);
                        match resp {
                            Ok(r) if r.status() == 200 => {
                                let v: Value =
                                    serde_json::from_str(&r.into_string().unwrap()).unwrap();
                                acked
                                    .lock()
                                    .unwrap()
                                    .extend(locations(&v).iter().map(|l| id_of(l)));
                            }
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        minute += 3000;
        // Kill once a few hundred readings are acknowledged in this round.
        let before = acked.lock().unwrap().len();
        let reached = wait_for(Duration::from_secs(30), || {
            (acked.lock().unwrap().len() >= before + 300).then_some(())
        });
        assert!(reached.is_some(), "the load did not get going");
        hub.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
    }

    let hub = Hub::start(&dir.0);
    let acked = acked.lock().unwrap().clone();
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "an id was acknowledged twice");
    for id in &acked {
        let a = get(&format!("{}/Observation/{id}", hub.base));
        assert_eq!(
            a.status, 200,
            "acknowledged Observation/{id} is missing after kill -9"
        );
    }
    // Nothing is duplicated: each client's timeline holds distinct instants only, and the
    // store has at least what was acknowledged (requests cut off by the kill may have
    // committed without their answer arriving; that is not a loss).
    let mut stored = 0;
    for round in 0..3 {
        for c in 0..3 {
            let patient = format!("k{round}-{c}");
            let (entries, total, _) = {
                let url = format!("{}/Observation?patient={patient}&_count=1000", hub.base);
                let mut all = Vec::new();
                let mut next = Some(url);
                let mut total = None;
                while let Some(u) = next.take() {
                    let b = get(&u).json();
                    total = total.or(b["total"].as_u64());
                    all.extend(b["entry"].as_array().cloned().unwrap_or_default());
                    next = b["link"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|l| l["relation"] == "next")
                        .map(|l| l["url"].as_str().unwrap().to_owned());
                }
                (all, total, ())
            };
            let times: HashSet<&str> = entries
                .iter()
                .map(|e| e["resource"]["effectiveDateTime"].as_str().unwrap())
                .collect();
            assert_eq!(
                times.len(),
                entries.len(),
                "{patient}: a reading is stored twice"
            );
            assert_eq!(total, Some(entries.len() as u64));
            stored += entries.len();
        }
    }
    assert!(
        stored >= acked.len(),
        "{stored} stored < {} acknowledged",
        acked.len()
    );
    assert_eq!(metric(&hub, "osler_readings_stored") as usize, stored);
}
