//! A fall reported by a wearable, through a real gateway to a real hub: it travels in the
//! alerts lane, raises the emergency alert, notifies the whole care team at once (the team's
//! own slower policy does not apply), escalates on the emergency's short fixed policy, shows
//! first on a clinician's worklist, and is resolved by a person (no reading can).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn a_fall_reaches_the_whole_team_at_once_and_a_person_resolves_it() {
    let dir = TempDir::new("emergency");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let hub = Hub::start(&hub_dir);
    let b = &hub.base;
    for (path, body) in [
        ("Patient/p1", json!({"resourceType": "Patient"})),
        ("Patient/p2", json!({"resourceType": "Patient"})),
        ("Practitioner/ana", json!({"resourceType": "Practitioner"})),
        ("Practitioner/ben", json!({"resourceType": "Practitioner"})),
        (
            "CareTeam/t1",
            json!({"resourceType": "CareTeam", "status": "active",
                "subject": {"reference": "Patient/p1"},
                "participant": [{"member": {"reference": "Practitioner/ana"}},
                                {"member": {"reference": "Practitioner/ben"}}]}),
        ),
    ] {
        let a = send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]);
        assert_eq!(a.status, 201, "{path}: {}", a.text);
    }
    let ana = enrol_person(&hub, &hub_dir, "dr-ana", "clinician", Some("ana"));
    let ben = enrol_person(&hub, &hub_dir, "dr-ben", "clinician", Some("ben"));
    let ana = login(&hub, &ana)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ben = login(&hub, &ben)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The team's own policy tells Ana alone and waits half an hour: not for an emergency.
    let policy =
        json!({"steps": [{"notify": ["Practitioner/ana"], "wait_minutes": 30}], "repeat": 0});
    let a = send(
        "PUT",
        &format!("{}/escalation/t1", hub.root()),
        &policy.to_string(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 200, "{}", a.text);

    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &[]);
    let now = osler_core::Timestamp::utc(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let body = json!([
        {"patient": "p1", "device": "pendant-1", "event": "fall", "time": now.to_string()},
        {"patient": "p1", "device": "pendant-1", "event": "tripped", "time": now.to_string()}
    ]);
    let a = post(&format!("{}/readings", gw.url), &body.to_string());
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.json()["accepted"],
        1,
        "the fall; the other is refused: {}",
        a.text
    );
    assert!(a.text.contains("unknown event"), "{}", a.text);

    let with = |token: &str| [("Authorization", format!("Bearer {token}"))];
    let bearer = |token: &str, url: &str| {
        let h = with(token);
        send("GET", url, "", &[(h[0].0, h[0].1.as_str())])
    };
    let alert = wait_for(Duration::from_secs(20), || {
        let list = bearer(
            &ana,
            &format!("{}/alerts?patient=p1&state=raised", hub.root()),
        )
        .json();
        list["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "emergency-fall")
            .cloned()
    })
    .expect("the fall is an open alert at the hub");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["title"], "Fall detected");
    let id = alert["id"].as_i64().unwrap();
    let detail = bearer(&ana, &format!("{}/alerts/{id}", hub.root())).json();
    let notified: Vec<&str> = detail["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recipient"].as_str().unwrap())
        .collect();
    assert!(
        notified.contains(&"dr-ana") && notified.contains(&"dr-ben"),
        "the whole team at once, not the team's ana-first policy: {detail}"
    );
    let due = detail["escalation"]["due"]
        .as_str()
        .expect("an escalation timer")
        .to_owned();
    let due_ms = osler_core::Timestamp::parse(&due).unwrap().utc_ms;
    assert!(
        due_ms - now.utc_ms <= 2 * 60_000 + 10_000,
        "the emergency's next step in 2 minutes, not the team's 30: {detail}"
    );

    // First on the worklist, above a critical reading's alert of another patient.
    let o = blood_pressure("p1", 190.0, 85.0, &seconds_ago(1));
    assert_eq!(
        post(&format!("{b}/Observation"), &o.to_string()).status,
        201
    );
    let page = bearer(&ben, &format!("{}/ui/inbox", hub.root()));
    assert_eq!(page.status, 200);
    assert!(page.text.contains("EMERGENCY") && page.text.contains("Fall detected"));
    assert!(page.text.contains(&format!("/ui/alerts/{id}/resolve")));

    // A reading's alert is not resolved by hand; an emergency is, once.
    let crisis = bearer(
        &ana,
        &format!("{}/alerts?patient=p1&state=raised", hub.root()),
    )
    .json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "bp-crisis-systolic")
        .map(|a| a["id"].as_i64().unwrap())
        .expect("the crisis alert");
    let answer = |token: &str, id: i64, what: &str, body: serde_json::Value| {
        send(
            "POST",
            &format!("{}/alerts/{id}/{what}", hub.root()),
            &body.to_string(),
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", "application/json"),
            ],
        )
    };
    let refused = answer(&ana, crisis, "resolve", json!({}));
    assert_eq!(refused.status, 409, "{}", refused.text);
    assert!(
        refused.text.contains("only an emergency"),
        "{}",
        refused.text
    );
    let done = answer(
        &ben,
        id,
        "resolve",
        json!({"note": "on the floor, unhurt; helped up"}),
    );
    assert_eq!(done.status, 200, "{}", done.text);
    let d = done.json();
    assert_eq!(d["state"], "resolved", "{d}");
    let last = d["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "resolved");
    assert_eq!(last["who"], "dr-ben");
    assert_eq!(d["escalation"]["ended_why"], "resolved", "{d}");
    assert_eq!(answer(&ana, id, "resolve", json!({})).status, 409, "once");
    // The alerts lane has nothing left to send.
    assert_eq!(
        gw.status()["outbox"]["alerts"],
        0,
        "the alerts lane is drained"
    );
}
