//! Corrections of readings over HTTP with a real hub: a changed value is an explicit update
//! (PUT, or a status of amended, corrected or entered-in-error), kept with its history, never a
//! silent overwrite, and the alert engine judges again what the correction changes.

mod common;

use common::*;
use serde_json::{Value, json};

fn alerts_of(hub: &Hub, patient: &str, rule: &str) -> Vec<Value> {
    let all = get(&format!("{}/alerts?patient={patient}", hub.root())).json();
    all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == rule)
        .cloned()
        .collect()
}

#[test]
fn corrections_are_versioned_and_rejudged() {
    let dir = TempDir::new("corrections");
    let hub = Hub::start(&dir.0);
    let base = hub.base.clone();
    let b = &base;
    let mut served = Vec::new();

    // A hypertensive crisis that was a cuff error.
    let when = minutes_ago(30);
    let mut bp = blood_pressure("cora", 195.0, 100.0, &when);
    let a = post(&format!("{b}/Observation"), &bp.to_string());
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.json()["id"].as_str().unwrap().to_owned();
    let url = format!("{b}/Observation/{id}");
    assert_eq!(
        alerts_of(&hub, "cora", "bp-crisis-systolic")[0]["state"],
        "raised"
    );
    let read = get(&url);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert!(read.header("last-modified").unwrap().ends_with(" GMT"));
    assert_eq!(
        send("GET", &url, "", &[("If-None-Match", "W/\"1\"")]).status,
        304
    );

    // A changed value must say it was changed; what identifies the reading cannot change.
    bp["component"][0]["valueQuantity"]["value"] = json!(135.0);
    bp["component"][1]["valueQuantity"]["value"] = json!(85.0);
    let issue = send("PUT", &url, &bp.to_string(), &[]).outcome(422);
    assert_eq!(issue["expression"][0], "Observation.status");
    let mut moved = bp.clone();
    moved["status"] = json!("amended");
    moved["effectiveDateTime"] = json!(minutes_ago(29));
    send("PUT", &url, &moved.to_string(), &[]).outcome(409);
    assert_eq!(get(&format!("{b}/Observation/1-1/_history")).status, 404);

    bp["status"] = json!("amended");
    let a = send("PUT", &url, &bp.to_string(), &[("If-Match", "W/\"1\"")]);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("etag"), Some("W/\"2\""));
    assert_eq!(
        send("GET", &url, "", &[("If-None-Match", "W/\"1\"")]).status,
        200,
        "a stale copy is sent the new one"
    );
    let now = a.json();
    assert_eq!(
        (now["status"].clone(), now["meta"]["versionId"].clone()),
        (json!("amended"), json!("2"))
    );
    served.push(now);
    // The crisis the wrong reading raised is resolved at it.
    let crisis = &alerts_of(&hub, "cora", "bp-crisis-systolic")[0];
    assert_eq!(crisis["state"], "resolved", "{crisis}");
    // A stale If-Match changes nothing.
    let mut again = bp.clone();
    again["component"][0]["valueQuantity"]["value"] = json!(136.0);
    send("PUT", &url, &again.to_string(), &[("If-Match", "W/\"1\"")]).outcome(412);

    // The history keeps every version; each can be read.
    let history = get(&format!("{url}/_history")).json();
    assert_eq!(history["total"], 2, "{history}");
    assert_eq!(
        history["entry"][1]["resource"]["component"][0]["valueQuantity"]["value"],
        json!(195)
    );
    let v1 = get(&format!("{url}/_history/1")).json();
    assert_eq!(
        (v1["status"].clone(), v1["meta"]["versionId"].clone()),
        (json!("final"), json!("1"))
    );
    served.push(history);
    served.push(v1);

    // A correction sent as a create (status corrected, same identity) is one too.
    let mut c = bp.clone();
    c["status"] = json!("corrected");
    c["component"][0]["valueQuantity"]["value"] = json!(137.0);
    let a = post(&format!("{b}/Observation"), &c.to_string());
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(get(&url).json()["meta"]["versionId"], "3");
    // Without such a status it is still a conflict, never an overwrite.
    let mut silent = bp.clone();
    silent["status"] = json!("final");
    silent["component"][0]["valueQuantity"]["value"] = json!(150.0);
    post(&format!("{b}/Observation"), &silent.to_string()).outcome(409);

    // A correction that makes a reading breach raises its alert (late: it is old news).
    let t = minutes_ago(20);
    let temp = observation("cora", "8310-5", 37.0, "Cel", &t);
    let a = post(&format!("{b}/Observation"), &temp.to_string());
    let temp_url = format!("{b}/Observation/{}", a.json()["id"].as_str().unwrap());
    assert!(alerts_of(&hub, "cora", "fever").is_empty());
    let mut fever = temp.clone();
    fever["status"] = json!("corrected");
    fever["valueQuantity"]["value"] = json!(39.6);
    assert_eq!(send("PUT", &temp_url, &fever.to_string(), &[]).status, 200);
    assert_eq!(alerts_of(&hub, "cora", "fever")[0]["state"], "raised");

    // A reading entered in error is kept, marked, and no longer counts: the SpO2 alert the
    // third low reading raised is withdrawn with it.
    let mut lows = Vec::new();
    for i in 0..3 {
        let o = observation("cora", "59408-5", 86.0, "%", &minutes_ago(15 - i));
        let a = post(&format!("{b}/Observation"), &o.to_string());
        lows.push((
            o,
            format!("{b}/Observation/{}", a.json()["id"].as_str().unwrap()),
        ));
    }
    assert_eq!(alerts_of(&hub, "cora", "spo2-low")[0]["state"], "raised");
    let (mut third, third_url) = lows.pop().unwrap();
    third["status"] = json!("entered-in-error");
    let a = send("PUT", &third_url, &third.to_string(), &[]);
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["status"], "entered-in-error");
    assert_eq!(alerts_of(&hub, "cora", "spo2-low")[0]["state"], "resolved");

    // All of it survives a restart.
    hub.stop();
    let hub = Hub::start(&dir.0);
    let history = get(&format!("{}/Observation/{id}/_history", hub.base)).json();
    assert_eq!(history["total"], 3, "{history}");
    assert_eq!(
        get(&third_url.replace(b, &hub.base)).json()["status"],
        "entered-in-error"
    );
    assert_valid_fhir(&dir.0, &served);
}
