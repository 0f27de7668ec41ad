//! A device that knows only its serial number sends readings through a real gateway to a
//! real hub, and they appear under the patient wearing it at the time each was taken: across
//! a reassignment the gateway has not yet seen, exactly at the handover, late after it; and a
//! device with no assignment has its readings held on the hub, listed with the reason, until
//! an assignment covering them is written.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn put(hub: &Hub, path: &str, body: Value) {
    let a = send(
        "PUT",
        &format!("{}/{path}", hub.base),
        &body.to_string(),
        &[],
    );
    assert!(a.status == 200 || a.status == 201, "PUT {path}: {}", a.text);
}

fn usage(patient: &str, device: &str, start: &str, end: Option<&str>) -> Value {
    let mut period = json!({"start": start});
    if let Some(e) = end {
        period["end"] = json!(e);
    }
    json!({"resourceType": "DeviceUseStatement",
           "status": if end.is_some() { "completed" } else { "active" },
           "subject": {"reference": format!("Patient/{patient}")},
           "device": {"reference": format!("Device/{device}")}, "timingPeriod": period})
}

/// Heart rate from a device that names only itself.
fn from_device(serial: &str, time: &str, value: f64) -> String {
    json!({"device": serial, "metric": "heart-rate", "value": value, "unit": "/min", "time": time})
        .to_string()
}

/// When each of a patient's heart-rate readings was taken, in order.
fn times(hub: &Hub, patient: &str) -> Vec<String> {
    let mut t: Vec<String> = all_observations(&hub.base, patient)
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "8867-4")
        .map(|o| o["effectiveDateTime"].as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

#[test]
fn readings_of_a_device_go_to_whoever_wore_it_then() {
    let dir = TempDir::new("attribution");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let hub = Hub::start(&hub_dir);
    put(
        &hub,
        "Patient/anna",
        json!({"resourceType": "Patient", "name": [{"family": "Anders"}]}),
    );
    put(
        &hub,
        "Patient/ben",
        json!({"resourceType": "Patient", "name": [{"family": "Berg"}]}),
    );
    put(
        &hub,
        "Device/watch-1",
        json!({"resourceType": "Device", "serialNumber": "SN-4711", "status": "active"}),
    );
    put(
        &hub,
        "Device/cuff-1",
        json!({"resourceType": "Device", "serialNumber": "CUFF-1", "status": "active"}),
    );
    put(
        &hub,
        "DeviceUseStatement/c1",
        usage("anna", "cuff-1", &minutes_ago(60), None),
    );
    let handover = seconds_ago(600);
    put(
        &hub,
        "DeviceUseStatement/u1",
        usage("anna", "watch-1", &minutes_ago(60), Some(&handover)),
    );

    std::fs::create_dir_all(&gw_dir).unwrap();
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &[]);
    enrol(&hub_dir, &gw_dir);
    // The gateway has fetched the first assignment (by the device's id and its serial)...
    assert!(
        wait_for(Duration::from_secs(30), || (gw.status()["assignments"]
            .as_u64()
            >= Some(2))
        .then_some(()))
        .is_some(),
        "{}",
        gw.status()
    );
    // ...and not the reassignment to Ben, written now (it polls every 30 s).
    put(
        &hub,
        "DeviceUseStatement/u2",
        usage("ben", "watch-1", &handover, None),
    );
    // Nor that the cuff, which it believes still on Anna, went to Ben.
    let cuff_start = minutes_ago(60);
    let cuff_moved = seconds_ago(420);
    put(
        &hub,
        "DeviceUseStatement/c1",
        usage("anna", "cuff-1", &cuff_start, Some(&cuff_moved)),
    );
    put(
        &hub,
        "DeviceUseStatement/c2",
        usage("ben", "cuff-1", &cuff_moved, None),
    );

    let before = seconds_ago(900);
    let after = seconds_ago(300);
    let readings = [(&before, 71.0), (&handover, 72.0), (&after, 73.0)];
    for (t, v) in readings {
        let a = post(
            &format!("{}/readings", gw.url),
            &from_device("SN-4711", t, v),
        );
        assert_eq!(a.status, 200, "{}", a.text);
    }
    // A late reading from before the handover, sent after it.
    let late = seconds_ago(1200);
    assert_eq!(
        post(
            &format!("{}/readings", gw.url),
            &from_device("SN-4711", &late, 70.0)
        )
        .status,
        200
    );
    // A hypertensive crisis from the cuff: the gateway's critical rules raise it for Anna (its
    // stale guess); the hub believes its own assignments and raises it for Ben.
    let crisis = json!({"device": "CUFF-1", "metric": "blood-pressure", "value": [205, 110], "unit": "mm[Hg]",
                        "time": seconds_ago(240)}).to_string();
    let a = post(&format!("{}/readings", gw.url), &crisis);
    assert!(
        a.status == 200 && a.text.contains("\"accepted\":1"),
        "{}",
        a.text
    );
    // A device nobody has registered or assigned yet.
    let stray = seconds_ago(120);
    assert_eq!(
        post(
            &format!("{}/readings", gw.url),
            &from_device("SN-0042", &stray, 64.0)
        )
        .status,
        200
    );
    // A reading with neither patient nor device is refused with the reason.
    let a = post(
        &format!("{}/readings", gw.url),
        &json!({"metric": "heart-rate", "value": 60, "unit": "/min", "time": stray}).to_string(),
    );
    assert!(
        a.text.contains("\\\"device\\\"") || a.text.contains("device"),
        "{}",
        a.text
    );

    assert!(
        wait_for(Duration::from_secs(30), || gw.drained().then_some(())).is_some(),
        "{}",
        gw.status()
    );
    let norm = |t: &str| osler_time(t);
    assert_eq!(
        times(&hub, "anna")
            .iter()
            .map(|t| norm(t))
            .collect::<Vec<_>>(),
        vec![norm(&late), norm(&before)]
    );
    assert_eq!(
        times(&hub, "ben")
            .iter()
            .map(|t| norm(t))
            .collect::<Vec<_>>(),
        vec![norm(&handover), norm(&after)]
    );
    let alerts = get(&format!("{}/alerts?state=raised", hub.root())).json();
    let who: Vec<(&str, &str)> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["patient"].as_str().unwrap(), a["rule"].as_str().unwrap()))
        .collect();
    assert!(who.contains(&("ben", "bp-crisis-systolic")), "{alerts}");
    assert!(
        !who.iter().any(|(p, _)| *p == "anna"),
        "no alert for the previous wearer: {alerts}"
    );
    let gw_alerts = get(&format!("{}/alerts", gw.url)).json();
    assert!(
        gw_alerts.to_string().contains("anna"),
        "the gateway did guess Anna: {gw_alerts}"
    );
    // The observations name the registered Device, not the serial it reported.
    for o in all_observations(&hub.base, "ben") {
        let want = if o["code"]["coding"][0]["code"] == "8867-4" {
            "Device/watch-1"
        } else {
            "Device/cuff-1"
        };
        assert_eq!(o["device"]["reference"], want, "{o}");
    }

    // The stray reading is held on the hub, with why, and nowhere else.
    let held = get(&format!("{}/registry/held", hub.root())).json();
    let list = held["held"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{held}");
    assert_eq!(list[0]["device"], "SN-0042");
    assert!(
        list[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no DeviceUseStatement"),
        "{held}"
    );
    assert_eq!(
        get(&format!("{}/Patient/unattributed", hub.base)).status,
        404
    );

    // Registering the device and assigning it releases the held reading to its patient.
    put(
        &hub,
        "Device/strap-42",
        json!({"resourceType": "Device", "serialNumber": "SN-0042"}),
    );
    put(
        &hub,
        "DeviceUseStatement/u3",
        usage("anna", "strap-42", &minutes_ago(30), None),
    );
    assert_eq!(times(&hub, "anna").len(), 3);
    assert!(
        get(&format!("{}/registry/held", hub.root())).json()["held"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// An instant as UTC milliseconds, whatever offset or precision it was written with.
fn osler_time(t: &str) -> i64 {
    osler_core::Timestamp::parse(t).unwrap().utc_ms
}
