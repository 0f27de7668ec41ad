//! An outbox written by the previous release (commit 25d019d: the outbox that also held the
//! edge streams, before the intake) is carried over with everything in it: its readings,
//! its alert, its window summaries and the readings still waiting in its edge streams all
//! reach the hub, once. The fixture was made with that release's binary: a gateway whose hub
//! was away took 1,841 readings (two patients' heart rate a second apart for 15 minutes with
//! artefacts, SpO2 a minute apart, one hypertensive crisis), then stopped with SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn an_outbox_of_the_previous_release_is_carried_over_whole() {
    let dir = TempDir::new("upgrade");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    std::fs::create_dir_all(&gw_dir).unwrap();
    let fixture = workspace().join("crates/osler/tests/fixtures/outbox-25d019d");
    for f in ["gateway.id", "gateway.key", "outbox.db"] {
        std::fs::copy(fixture.join(f), gw_dir.join(f)).unwrap();
    }
    let hub = Hub::start(&hub_dir);
    // The fixture's own identity (the old release's key) is the one enrolled.
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &[]);
    assert!(
        wait_for(Duration::from_secs(60), || gw.drained().then_some(())).is_some(),
        "{}",
        gw.status()
    );
    // What the old outbox held was uploaded (it had entries in every lane).
    let s = gw.status();
    assert!(s["upload"]["entries"].as_u64().unwrap() > 0, "{s}");
    assert!(s["upload"]["summaries"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["upload"]["alerts"], 1, "{s}");
    for (patient, want) in [("fx-a", 921.0), ("fx-b", 920.0)] {
        let have: f64 = all_observations(&hub.base, patient)
            .iter()
            .map(readings_in)
            .sum();
        assert_eq!(have, want, "{patient}: readings at the hub");
    }
    let open = get(&format!("{}/alerts?patient=fx-a", hub.root())).json();
    assert_eq!(open["alerts"][0]["rule"], "bp-crisis-systolic", "{open}");
}

/// A hub database written by the previous release (commit 44cb01f, schema 1: readings, an
/// open alert, a threshold override) is migrated in place at start: every reading, the alert
/// and the override are still there, and the registry works on it. The fixture was made with
/// that release's binary: 10 heart-rate readings of fx-anna (watch-1), 7 SpO2 readings of
/// fx-ben at 84% (raising spo2-low), and fx-anna's spo2-low override at 88%, then SIGTERM.
#[test]
fn a_hub_database_of_the_previous_release_is_migrated_in_place() {
    let dir = TempDir::new("upgrade-hub");
    let fixture = workspace().join("crates/osler/tests/fixtures/hub-44cb01f/hub.db");
    std::fs::copy(&fixture, dir.0.join("hub.db")).unwrap();
    for round in 0..2 {
        // The second start opens the migrated database as it is now.
        let hub = Hub::start(&dir.0);
        assert_eq!(count_for(&hub, "fx-anna"), 10, "round {round}");
        assert_eq!(count_for(&hub, "fx-ben"), 7, "round {round}");
        let open = get(&format!(
            "{}/alerts?patient=fx-ben&state=raised",
            hub.root()
        ))
        .json();
        assert_eq!(open["alerts"][0]["rule"], "spo2-low", "{open}");
        let plan = get(&format!("{}/alerts/overrides/fx-anna", hub.root())).json();
        assert_eq!(plan["rules"]["spo2-low"]["threshold"], 88.0, "{plan}");
        // The old release kept no author or time: the migration says so rather than invent.
        assert_eq!(plan["rules"]["spo2-low"]["set_by"], "unknown", "{plan}");
        // Patients and devices known from the old readings are there to enrol, and patients
        // are found by search like any.
        let found = get(&format!("{}/Patient?_id=fx-anna,fx-ben", hub.base)).json();
        assert_eq!(found["total"], 2, "{found}");
        assert_eq!(get(&format!("{}/Device/watch-1", hub.base)).status, 200);
        if round == 0 {
            let a = send(
                "PUT",
                &format!("{}/Patient/fx-anna", hub.base),
                &json!({"resourceType": "Patient", "name": [{"family": "Fixture"}]}).to_string(),
                &[],
            );
            // The migration gave fx-anna its minimal Patient: enrolling is its version 2.
            assert_eq!(a.status, 200, "{}", a.text);
            assert_eq!(a.json()["meta"]["versionId"], "2");
        }
        assert_eq!(
            get(&format!("{}/Patient/fx-anna", hub.base)).json()["name"][0]["family"],
            "Fixture"
        );
        hub.stop();
    }
}
