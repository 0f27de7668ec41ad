//! An outbox written by the previous release (commit 25d019d: the outbox that also held the
//! edge streams, before the intake) is carried over with everything in it: its readings,
//! its alert, its window summaries and the readings still waiting in its edge streams all
//! reach the hub, once. The fixture was made with that release's binary: a gateway whose hub
//! was away took 1,841 readings (two patients' heart rate a second apart for 15 minutes with
//! artefacts, SpO2 a minute apart, one hypertensive crisis), then stopped with SIGTERM.

mod common;

use std::time::Duration;

use common::*;

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
