//! A fall reported by a wearable, through a real gateway to a real hub: it is announced on the
//! live stream at once (a `notice`, to those who may see the patient), travels in the
//! emergencies lane, raises the emergency alert, notifies the whole care team at once (the team's
//! own slower policy does not apply), escalates on the emergency's short fixed policy, shows
//! first on a clinician's worklist, and is resolved by a person (no reading can).

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
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
        ("Practitioner/cal", json!({"resourceType": "Practitioner"})),
        (
            "CareTeam/t1",
            json!({"resourceType": "CareTeam", "status": "active",
                "subject": {"reference": "Patient/p1"},
                "participant": [{"member": {"reference": "Practitioner/ana"}},
                                {"member": {"reference": "Practitioner/ben"}}]}),
        ),
        (
            "CareTeam/t2",
            json!({"resourceType": "CareTeam", "status": "active",
                "subject": {"reference": "Patient/p2"},
                "participant": [{"member": {"reference": "Practitioner/cal"}}]}),
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
    let cal = enrol_person(&hub, &hub_dir, "dr-cal", "clinician", Some("cal"));
    let cal = login(&hub, &cal)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Ana (p1's team) and Cal (p2's only) watch the live stream.
    let ana_stream = stream(&hub, &ana);
    let cal_stream = stream(&hub, &cal);
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

    // Ana hears of it as a notice (announced before any commit: no id, not stored) and as the
    // stored alert (numbered). The notice is usually first; which is first is a matter of
    // speed (`osler bench alerts`), not of what a test may count on.
    let mut heard = vec![next(&ana_stream), next(&ana_stream)];
    heard.sort_by_key(|e| e.0 != "notice");
    let (notice, stored) = (&heard[0], &heard[1]);
    assert_eq!(
        (notice.0.as_str(), notice.1, &notice.2["rule"]),
        ("notice", None, &json!("emergency-fall")),
        "{heard:?}"
    );
    assert_eq!(notice.2["patient"], "p1");
    assert_eq!(
        (stored.0.as_str(), stored.2["event"].as_str()),
        ("alert", Some("raised")),
        "{heard:?}"
    );
    assert!(
        stored.1.is_some(),
        "the stored alert is numbered: {heard:?}"
    );

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
    // Cal, who may not see p1, heard of neither: his first event is his own patient's.
    let o2 = blood_pressure("p2", 190.0, 85.0, &seconds_ago(1));
    assert_eq!(
        post(&format!("{b}/Observation"), &o2.to_string()).status,
        201
    );
    let cal_first = next(&cal_stream);
    assert_eq!(cal_first.2["patient"], "p2", "{cal_first:?}");
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
    // The emergencies lane carried it and has nothing left to send.
    let status = wait_for(Duration::from_secs(10), || {
        let s = gw.status();
        (s["outbox"]["emergencies"] == 0).then_some(s)
    })
    .expect("the emergencies lane is drained");
    assert_eq!(status["upload"]["emergencies"], 1, "{status}");
    assert_eq!(status["outbox"]["alerts"], 0, "{status}");
}

/// One SSE event: its name, its id (if it has one), its data.
type Event = (String, Option<i64>, serde_json::Value);

/// The caller's live stream, event by event.
fn stream(hub: &Hub, token: &str) -> mpsc::Receiver<Event> {
    let resp = request(
        "GET",
        &format!("{}/alerts/stream", hub.root()),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .timeout(Duration::from_secs(60))
    .call()
    .expect("subscribe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut name, mut id) = (String::new(), None);
        for line in BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                let data = serde_json::from_str(v.trim()).unwrap();
                if tx
                    .send((std::mem::take(&mut name), id.take(), data))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

fn next(events: &mpsc::Receiver<Event>) -> Event {
    events
        .recv_timeout(Duration::from_secs(20))
        .expect("an event on the stream")
}

/// Falls a gateway acknowledged while the hub was away are on disk: the gateway killed with
/// SIGKILL while devices are still sending them, and restarted, delivers every acknowledged
/// one once the hub is back, each once.
#[test]
fn falls_acknowledged_before_a_kill_9_reach_the_hub_after_it() {
    let dir = TempDir::new("emergency-kill9");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let port = free_port();
    let hub = Hub::start_full(&hub_dir, port, &[], None);
    let root = hub.root();
    hub.stop();

    let gw = Gateway::start(&gw_dir, &root, 0, &[]);
    let url = format!("{}/readings", gw.url);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sender = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0..400 {
                let body = json!([{"patient": format!("f{i}"), "device": "pendant",
                    "event": "fall", "time": seconds_ago(5)}]);
                let resp = req("POST", &url)
                    .set("Content-Type", "application/json")
                    .timeout(Duration::from_secs(5))
                    .send_string(&body.to_string());
                match resp {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(format!("f{i}")),
                    // Cut off by the kill: never acknowledged.
                    _ => return,
                }
            }
        })
    };
    let enough = wait_for(Duration::from_secs(30), || {
        (acked.lock().unwrap().len() >= 40).then_some(())
    });
    assert!(enough.is_some(), "the gateway took no falls");
    gw.kill9();
    sender.join().unwrap();
    let acked = acked.lock().unwrap().clone();

    let hub = Hub::start_full(&hub_dir, port, &[], None);
    let gw = Gateway::start(&gw_dir, &root, 0, &[]);
    let falls = |hub: &Hub| -> Vec<String> {
        let list = get(&format!("{}/alerts?state=raised&limit=1000", hub.root())).json();
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["rule"] == "emergency-fall")
            .map(|a| a["patient"].as_str().unwrap().to_owned())
            .collect()
    };
    let stored = wait_for(Duration::from_secs(30), || {
        let f = falls(&hub);
        (gw.drained() && f.len() >= acked.len()).then_some(f)
    })
    .unwrap_or_else(|| panic!("{} acknowledged, {:?} stored", acked.len(), falls(&hub)));
    let unique: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(
        unique.len(),
        stored.len(),
        "a fall stored twice: {stored:?}"
    );
    for p in &acked {
        assert!(unique.contains(p), "{p}'s acknowledged fall is lost");
    }
}
