//! Alerts end to end: every injected event raises its alert on the live stream and nothing else
//! does; alerts survive a restart; overrides are set over the API and take effect.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Subscribes to the hub's SSE stream; every `data:` line lands in the returned vector.
fn subscribe(hub: &Hub) -> Arc<Mutex<Vec<Value>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let resp = req("GET", &format!("{}/alerts/stream", hub.root()))
        .timeout(Duration::from_secs(600))
        .call()
        .expect("subscribe");
    assert!(resp.content_type().starts_with("text/event-stream"));
    let sink = events.clone();
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(v) = serde_json::from_str::<Value>(data.trim())
            {
                sink.lock().unwrap().push(v);
            }
        }
    });
    events
}

/// The rules an injected event must raise (any one of them counts).
fn rules_for(kind: &str) -> &'static [&'static str] {
    match kind {
        "tachycardia" => &["hr-high"],
        "bradycardia" => &["hr-low"],
        "desaturation" => &["spo2-low"],
        "hypertensive-crisis" => &["bp-crisis-systolic", "bp-crisis-diastolic"],
        "hypoglycaemia" => &["glucose-urgent-low", "glucose-low"],
        "hyperglycaemia" => &["glucose-high"],
        "fever" => &["fever"],
        "weight-gain" => &["weight-gain"],
        other => panic!("unknown event kind {other}"),
    }
}

#[test]
fn every_injected_event_raises_its_alert_and_nothing_else_does() {
    let dir = TempDir::new("alerts-e2e");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &[]);
    let stream = subscribe(&hub);
    let truth_file = dir.0.join("truth.jsonl");
    // Five days, so that the heart-failure weight gain (four days) fits too.
    let summary = finish_sim(spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "24",
        "--duration",
        "5d",
        "--events",
        "16",
        "--seed",
        "8",
        "--ground-truth",
        truth_file.to_str().unwrap(),
    ]));
    let truth = read_jsonl(&truth_file);
    assert_eq!(truth.len(), 16);
    let kinds: std::collections::HashSet<&str> =
        truth.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 8, "every kind of event is injected: {kinds:?}");
    let sent = summary["acknowledged"].as_u64().unwrap();
    // The gateway runs its edge processing (the default): what it sends is what the rules see.
    let delivered = wait_for(Duration::from_secs(120), || gw.drained().then_some(()));
    assert!(sent > 0);
    assert!(delivered.is_some(), "readings not delivered");

    let matches = |event: &Value, alert: &Value| {
        let start = event["start"].as_str().unwrap();
        // The alert's reading lies within the event, or shortly after it for trends (the last
        // weighing of a gain) and readings taken on the hour.
        let end = osler_core::Timestamp::parse(event["end"].as_str().unwrap())
            .unwrap()
            .utc_ms
            + 30 * 60_000;
        let t = osler_core::Timestamp::parse(alert["reading_time"].as_str().unwrap())
            .unwrap()
            .utc_ms;
        alert["patient"] == event["patient"]
            && rules_for(event["kind"].as_str().unwrap()).contains(&alert["rule"].as_str().unwrap())
            && t >= osler_core::Timestamp::parse(start).unwrap().utc_ms
            && t <= end
    };
    let raised = || -> Vec<Value> {
        stream
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a["event"] == "raised")
            .cloned()
            .collect()
    };
    let all_seen = wait_for(Duration::from_secs(30), || {
        let r = raised();
        truth
            .iter()
            .all(|e| r.iter().any(|a| matches(e, a)))
            .then_some(())
    });
    let r = raised();
    let missing: Vec<&Value> = truth
        .iter()
        .filter(|e| !r.iter().any(|a| matches(e, a)))
        .collect();
    assert!(
        all_seen.is_some() && missing.is_empty(),
        "events without their alert: {missing:?}\nraised: {r:?}"
    );
    let unexplained: Vec<&Value> = r
        .iter()
        .filter(|a| !truth.iter().any(|e| matches(e, a)))
        .collect();
    assert!(
        unexplained.is_empty(),
        "alerts without an event: {unexplained:?}"
    );
    // One alert per patient and rule while open: no duplicates on the stream.
    let mut per: HashMap<(String, String, String), usize> = HashMap::new();
    for a in &r {
        *per.entry((
            a["patient"].to_string(),
            a["rule"].to_string(),
            a["reading_time"].to_string(),
        ))
        .or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 1), "duplicate raises: {per:?}");
    // The simulated days arrived in seconds, so every alert is flagged late, and each names
    // its rule, severity and the time of the reading.
    for a in &r {
        assert_eq!(a["late"], true);
        assert!(["warning", "urgent", "critical"].contains(&a["severity"].as_str().unwrap()));
        assert!(!a["title"].as_str().unwrap().is_empty());
    }
    // The same alerts through the API and as FHIR Flags.
    let listed = get(&format!("{}/alerts?limit=1000", hub.root())).json();
    assert_eq!(listed["alerts"].as_array().unwrap().len(), r.len());
    let id = r[0]["id"].as_i64().unwrap();
    let flag = get(&format!("{}/Flag/{id}", hub.base)).json();
    assert_eq!(flag["resourceType"], "Flag");
    assert_eq!(
        flag["subject"]["reference"],
        format!("Patient/{}", r[0]["patient"].as_str().unwrap())
    );
    let flags = get(&format!(
        "{}/Flag?patient={}",
        hub.base,
        r[0]["patient"].as_str().unwrap()
    ))
    .json();
    // Paged, newest first, without a total (counting a population's alerts on every page is
    // not worth it).
    assert!(!flags["entry"].as_array().unwrap().is_empty(), "{flags}");
}

#[test]
fn alerts_survive_a_restart_and_are_not_raised_twice() {
    let dir = TempDir::new("alerts-restart");
    let hub = Hub::start(&dir.0);
    let url = format!("{}/Observation", hub.base);
    let a = post(
        &url,
        &blood_pressure("rs", 195.0, 100.0, &minutes_ago(30)).to_string(),
    );
    assert_eq!(a.status, 201);
    let open = get(&format!("{}/alerts?patient=rs&state=raised", hub.root())).json();
    assert_eq!(open["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(open["alerts"][0]["rule"], "bp-crisis-systolic");
    assert_eq!(open["alerts"][0]["late"], true);
    hub.kill9();

    let hub = Hub::start(&dir.0);
    let url = format!("{}/Observation", hub.base);
    let stream = subscribe(&hub);
    let open = get(&format!("{}/alerts?patient=rs&state=raised", hub.root())).json();
    assert_eq!(
        open["alerts"].as_array().unwrap().len(),
        1,
        "the open alert is still open"
    );
    // Another crisis reading while it is open: no second alert.
    assert_eq!(
        post(
            &url,
            &blood_pressure("rs", 190.0, 100.0, &minutes_ago(20)).to_string()
        )
        .status,
        201
    );
    // Much worse (beyond the 20 mmHg margin): the open alert is updated, not raised again.
    assert_eq!(
        post(
            &url,
            &blood_pressure("rs", 221.0, 100.0, &minutes_ago(15)).to_string()
        )
        .status,
        201
    );
    let updated = wait_for(Duration::from_secs(10), || {
        stream
            .lock()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "updated")
            .cloned()
    })
    .expect("an update on the stream");
    assert_eq!(
        (updated["rule"].as_str(), updated["value"].as_f64()),
        (Some("bp-crisis-systolic"), Some(221.0))
    );
    assert!(updated["updated_reading_time"].is_string());
    // A normal reading resolves it (hysteresis: 20 below the threshold).
    assert_eq!(
        post(
            &url,
            &blood_pressure("rs", 135.0, 85.0, &minutes_ago(10)).to_string()
        )
        .status,
        201
    );
    let resolved = wait_for(Duration::from_secs(10), || {
        stream
            .lock()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "resolved")
            .cloned()
    })
    .expect("resolution on the stream");
    assert_eq!(resolved["rule"], "bp-crisis-systolic");
    assert!(
        stream
            .lock()
            .unwrap()
            .iter()
            .all(|e| e["event"] != "raised"),
        "raised twice"
    );
    let all = get(&format!("{}/alerts?patient=rs", hub.root())).json();
    assert_eq!(all["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(all["alerts"][0]["state"], "resolved");
    assert_eq!(
        get(&format!("{}/alerts?state=bogus", hub.root())).status,
        400
    );
}

#[test]
fn monitoring_plans_set_thresholds_within_bounds_and_keep_their_history() {
    let dir = TempDir::new("alerts-plan");
    let hub = Hub::start(&dir.0);
    let put = |path: &str, body: Value| {
        send(
            "PUT",
            &format!("{}/{path}", hub.base),
            &body.to_string(),
            &[],
        )
        .status
    };
    assert_eq!(put("Patient/ath", json!({"resourceType": "Patient"})), 201);
    assert_eq!(
        put(
            "Practitioner/dr-ade",
            json!({"resourceType": "Practitioner"})
        ),
        201
    );
    let set = |patient: &str, rule: &str, body: Value| {
        send(
            "PUT",
            &format!("{}/plans/{patient}/{rule}", hub.root()),
            &body.to_string(),
            &[],
        )
    };
    let change = |t: Value, reason: &str| json!({"threshold": t, "reason": reason, "author": "Practitioner/dr-ade"});
    let before = seconds_ago(1);
    let a = set(
        "ath",
        "spo2-low",
        change(json!(88), "COPD: prescribed target 88-92%"),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    // Refused, each with its reason, and nothing changes.
    for (patient, rule, body, status, says) in [
        ("ath", "spo2-low", change(json!(0), "typo"), 422, "85"),
        ("ath", "spo2-low", change(json!(99), "x"), 422, "NEWS2"),
        ("ath", "hr-high", change(json!(250), "x"), 422, "150"),
        ("ath", "spo2-low", change(json!(90), "  "), 422, "reason"),
        (
            "ath",
            "spo2-low",
            json!({"threshold": 90, "reason": "x", "author": "Practitioner/nobody"}),
            422,
            "author",
        ),
        ("ath", "spo2-low", json!({"threshold": 90}), 400, "reason"),
        (
            "ath",
            "no-such-rule",
            change(json!(1), "x"),
            404,
            "spo2-low",
        ),
        (
            "nobody",
            "spo2-low",
            change(json!(90), "x"),
            404,
            "Patient/nobody",
        ),
    ] {
        let a = set(patient, rule, body.clone());
        assert_eq!(a.status, status, "{body}: {}", a.text);
        assert!(a.text.contains(says), "{body}: {}", a.text);
    }
    let plan = get(&format!("{}/plans/ath", hub.root())).json();
    let spo2 = &plan["rules"]["spo2-low"];
    assert_eq!(
        (spo2["threshold"].clone(), spo2["default"].clone()),
        (json!(88.0), json!(92.0))
    );
    assert_eq!(spo2["set_by"], "Practitioner/dr-ade");
    assert_eq!(spo2["reason"], "COPD: prescribed target 88-92%");
    assert_eq!(spo2["bounds"], json!([85.0, 95.0]));
    // 90% five times: an alert for anyone else, not for this patient.
    let obs: Vec<Value> = (0..5)
        .flat_map(|i| {
            [
                observation("ath", "2708-6", 90.0, "%", &minutes_ago(20 - i)),
                observation("other", "2708-6", 90.0, "%", &minutes_ago(20 - i)),
            ]
        })
        .collect();
    assert_eq!(
        post(&hub.base, &bundle("batch", &obs, &[]).to_string()).status,
        200
    );
    let alerts = get(&format!("{}/alerts", hub.root())).json();
    let patients: Vec<&str> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["patient"].as_str().unwrap())
        .collect();
    assert_eq!(patients, ["other"]);
    // A rule can be switched off for one patient (with a reason), and back on.
    assert_eq!(set("ath", "glucose-low", json!({"applies": false, "threshold": 80, "reason": "x", "author": "Practitioner/dr-ade"})).status, 422);
    let a = set(
        "ath",
        "glucose-low",
        json!({"applies": false, "reason": "not diabetic; the CGM was a trial", "author": "Practitioner/dr-ade"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let lows: Vec<Value> = (0..20)
        .map(|i| observation("ath", "99504-3", 60.0, "mg/dL", &minutes_ago(40 - i)))
        .collect();
    assert_eq!(
        post(&hub.base, &bundle("batch", &lows, &[]).to_string()).status,
        200
    );
    let glucose = get(&format!("{}/alerts?patient=ath", hub.root())).json();
    assert!(
        !glucose.to_string().contains("glucose-low"),
        "switched off: {glucose}"
    );
    let plan = get(&format!("{}/plans/ath", hub.root())).json();
    assert_eq!(
        (
            plan["rules"]["glucose-low"]["applies"].clone(),
            plan["rules"]["glucose-low"]["threshold"].clone()
        ),
        (json!(false), Value::Null)
    );
    assert_eq!(plan["rules"]["spo2-low"]["applies"], true);
    let feed = get(&format!("{}/alerts/overrides", hub.root())).json();
    assert!(
        feed["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["rule"] == "glucose-low" && o["threshold"].as_f64().is_some()),
        "gateways get a finite threshold: {feed}"
    );
    let a = set(
        "ath",
        "glucose-low",
        json!({"applies": true, "reason": "CGM for good now", "author": "Practitioner/dr-ade"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        get(&format!("{}/plans/ath", hub.root())).json()["rules"]["glucose-low"]["threshold"],
        json!(70.0)
    );
    // Back to the default: a change too, kept with the others.
    let a = set("ath", "spo2-low", change(Value::Null, "exacerbation over"));
    assert_eq!(a.status, 200, "{}", a.text);
    // Survives a restart; the plan as of a past time shows what applied then.
    hub.stop();
    let hub = Hub::start(&dir.0);
    let now = get(&format!("{}/plans/ath", hub.root())).json();
    assert_eq!(now["rules"]["spo2-low"]["threshold"], json!(92.0));
    let history = get(&format!("{}/plans/ath/history", hub.root())).json();
    assert_eq!(history["changes"].as_array().unwrap().len(), 4, "{history}");
    assert_eq!(history["changes"][1]["applies"], false, "{history}");
    let first_at = history["changes"][0]["at"].as_str().unwrap().to_owned();
    let then = get(&format!("{}/plans/ath?at={first_at}", hub.root())).json();
    assert_eq!(
        then["rules"]["spo2-low"]["threshold"],
        json!(88.0),
        "{then}"
    );
    let earlier = get(&format!("{}/plans/ath?at={}", hub.root(), before)).json();
    assert_eq!(
        earlier["rules"]["spo2-low"]["threshold"],
        json!(92.0),
        "{earlier}"
    );
}

#[test]
fn the_gateway_raises_critical_alerts_while_the_hub_is_away_and_the_hub_merges_them() {
    let dir = TempDir::new("alerts-edge");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let port = free_port();
    // No hub yet.
    let ca = hub_dir.join("tls/ca.pem");
    let gw = Gateway::start(
        &gw_dir,
        &format!("https://127.0.0.1:{port}"),
        0,
        &["--hub-ca", ca.to_str().unwrap()],
    );
    let crisis = format!(
        r#"[{{"patient":"edge","device":"cuff","metric":"blood-pressure","value":[196,104],"unit":"mm[Hg]","time":"{}"}},
            {{"patient":"edge","device":"thermo","metric":"body-temperature","value":39.8,"unit":"Cel","time":"{}"}}]"#,
        minutes_ago(1),
        minutes_ago(1)
    );
    assert_eq!(
        post(&format!("{}/readings", gw.url), &crisis).json()["accepted"],
        2
    );
    let local = get(&format!("{}/alerts", gw.url)).json();
    let rules: Vec<&str> = local["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    // The critical rule fires at the edge; fever is not an edge rule.
    assert_eq!(rules, ["bp-crisis-systolic"]);
    assert_eq!(gw.status()["outbox"]["alerts"], 1);

    let hub = Hub::start_full(&hub_dir, port, &[], None);
    let delivered = wait_for(Duration::from_secs(30), || gw.drained().then_some(()));
    assert!(delivered.is_some(), "{}", gw.status());
    let alerts = get(&format!("{}/alerts?patient=edge", hub.root())).json();
    let list = alerts["alerts"].as_array().unwrap();
    let bp: Vec<&Value> = list
        .iter()
        .filter(|a| a["rule"] == "bp-crisis-systolic")
        .collect();
    assert_eq!(
        bp.len(),
        1,
        "raised once, not by the gateway and the hub both: {list:?}"
    );
    assert_eq!(bp[0]["source"], "gateway", "the edge alert arrived first");
    assert_eq!(bp[0]["state"], "raised");
    // The hub's own rules ran on the readings too: the fever is the hub's.
    let fever: Vec<&Value> = list.iter().filter(|a| a["rule"] == "fever").collect();
    assert_eq!(fever.len(), 1);
    assert_eq!(fever[0]["source"], "hub");

    // Both engines see a much worse reading (beyond the rule's 20 mmHg margin) and both report
    // the update: the stream shows it once. Then a normal reading resolves the alert, once too;
    // the stream is ordered, so a doubled update would be on it before that.
    let stream = subscribe(&hub);
    let reading = |sys: f64, dia: f64, ago: i64| {
        format!(
            r#"{{"patient":"edge","device":"cuff","metric":"blood-pressure","value":[{sys},{dia}],"unit":"mm[Hg]","time":"{}"}}"#,
            seconds_ago(ago)
        )
    };
    assert_eq!(
        post(&format!("{}/readings", gw.url), &reading(221.0, 104.0, 30)).json()["accepted"],
        1
    );
    // Both evaluations of it reach the hub (the gateway's alert and the reading) before the
    // alert can resolve.
    let drained = wait_for(Duration::from_secs(30), || gw.drained().then_some(()));
    assert!(drained.is_some(), "{}", gw.status());
    assert_eq!(
        post(&format!("{}/readings", gw.url), &reading(120.0, 80.0, 20)).json()["accepted"],
        1
    );
    let bp_events = || -> Vec<(String, f64)> {
        stream
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["patient"] == "edge" && e["rule"] == "bp-crisis-systolic")
            .map(|e| {
                (
                    e["event"].as_str().unwrap_or("").to_owned(),
                    e["value"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    };
    let seen = wait_for(Duration::from_secs(30), || {
        let events = bp_events();
        events
            .iter()
            .any(|(e, _)| e == "resolved")
            .then_some(events)
    })
    .unwrap_or_else(|| panic!("no resolution on the stream: {:?}", bp_events()));
    assert_eq!(
        seen,
        [
            ("updated".to_owned(), 221.0),
            ("resolved".to_owned(), 221.0)
        ],
        "each change once"
    );
}
