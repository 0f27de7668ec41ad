//! What people do about alerts, through the hub's real API over TLS: per-recipient answers,
//! accepting for the team, re-opening on a markedly worse condition, snoozes (scope, cap,
//! undo, expiry, end on resolution, a restart in the middle), the audit trail of every act,
//! and the live stream's numbered events resumed after a reconnect.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A hub with patients p1 (care team: Ana and Ben) and p2 (nobody's), and the two clinicians
/// logged in.
struct Ward {
    dir: TempDir,
    /// `None` only while it restarts.
    running: Option<Hub>,
    ana: String,
    ben: String,
}

fn ward(name: &str, extra: &[&str]) -> Ward {
    let dir = TempDir::new(name);
    let hub = Hub::start_with(&dir.0, extra);
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
    let token = |hub: &Hub, name: &str, practitioner: &str| {
        let p = enrol_person(hub, &dir.0, name, "clinician", Some(practitioner));
        login(hub, &p)["access_token"].as_str().unwrap().to_owned()
    };
    let ana = token(&hub, "dr-ana", "ana");
    let ben = token(&hub, "dr-ben", "ben");
    Ward {
        dir,
        running: Some(hub),
        ana,
        ben,
    }
}

impl Ward {
    fn hub(&self) -> &Hub {
        self.running.as_ref().unwrap()
    }

    /// Kills the hub (SIGKILL: nothing flushed at exit) and starts it again on its data.
    fn crash_and_restart(&mut self) {
        self.running.take().unwrap().kill9();
        self.running = Some(Hub::start(&self.dir.0));
    }

    /// Posts a blood pressure for a patient (as the hub's own program token).
    fn pressure(&self, patient: &str, sys: f64, seconds: i64) {
        let o = blood_pressure(patient, sys, 85.0, &seconds_ago(seconds));
        let a = post(&format!("{}/Observation", self.hub().base), &o.to_string());
        assert_eq!(a.status, 201, "{}", a.text);
    }

    /// The open systolic-crisis alert of a patient.
    fn open_alert(&self, patient: &str) -> i64 {
        let list = get(&format!(
            "{}/alerts?patient={patient}&state=raised",
            self.hub().root()
        ))
        .json();
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == "bp-crisis-systolic")
            .unwrap_or_else(|| panic!("no open alert for {patient}: {list}"))["id"]
            .as_i64()
            .unwrap()
    }

    fn act(&self, token: &str, id: i64, what: &str, body: Value) -> Answer {
        send(
            "POST",
            &format!("{}/alerts/{id}/{what}", self.hub().root()),
            &body.to_string(),
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", "application/json"),
            ],
        )
    }

    fn detail(&self, token: &str, id: i64) -> Answer {
        send(
            "GET",
            &format!("{}/alerts/{id}", self.hub().root()),
            "",
            &[("Authorization", &format!("Bearer {token}"))],
        )
    }
}

fn state_of(detail: &Value, who: &str) -> String {
    detail["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == who)
        .map_or("none".into(), |r| r["state"].as_str().unwrap().to_owned())
}

fn kinds(detail: &Value) -> Vec<String> {
    detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_recipient_answers_for_themselves_one_accepts_and_worse_reopens() {
    let w = ward("lifecycle-answers", &[]);
    w.pressure("p1", 185.0, 60);
    let id = w.open_alert("p1");

    // The care team is notified, each on their own.
    let d = w.detail(&w.ana, id).json();
    assert_eq!(state_of(&d, "dr-ana"), "notified", "{d}");
    assert_eq!(state_of(&d, "dr-ben"), "notified", "{d}");
    assert_eq!(kinds(&d), ["raised"]);

    // Ana's acknowledgement is hers alone.
    let a = w.act(&w.ana, id, "ack", json!({"note": "calling the patient"}));
    assert_eq!(a.status, 200, "{}", a.text);
    let d = a.json();
    assert_eq!(state_of(&d, "dr-ana"), "acknowledged");
    assert_eq!(state_of(&d, "dr-ben"), "notified");
    let ack = &d["timeline"][1];
    assert_eq!(
        (
            ack["kind"].as_str(),
            ack["who"].as_str(),
            ack["note"].as_str()
        ),
        (Some("ack"), Some("dr-ana"), Some("calling the patient"))
    );

    // Ben takes it for the team; then Ana cannot, and is told who has it.
    let a = w.act(&w.ben, id, "accept", json!({}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["accepted_by"], "dr-ben");
    let a = w.act(&w.ana, id, "accept", json!({}));
    assert_eq!(a.status, 409, "{}", a.text);
    assert!(a.text.contains("dr-ben"), "{}", a.text);
    // An acknowledgement after accepting does not undo the acceptance.
    assert_eq!(w.act(&w.ben, id, "ack", json!({})).status, 200);
    assert_eq!(state_of(&w.detail(&w.ben, id).json(), "dr-ben"), "accepted");

    // A little worse changes no answer; markedly worse (the excess doubled and a real move)
    // asks everyone again.
    w.pressure("p1", 206.0, 40);
    let d = wait_for(Duration::from_secs(10), || {
        let d = w.detail(&w.ana, id).json();
        kinds(&d).contains(&"reopened".to_owned()).then_some(d)
    })
    .expect("a markedly worse reading re-opens the answers");
    assert_eq!(state_of(&d, "dr-ana"), "notified", "{d}");
    assert_eq!(state_of(&d, "dr-ben"), "notified", "{d}");
    assert_eq!(d["accepted_by"], Value::Null);
    assert_eq!(
        kinds(&d),
        ["raised", "ack", "accept", "ack", "updated", "reopened"]
    );

    // Nobody outside the patient's care team learns of another patient's alert.
    w.pressure("p2", 190.0, 60);
    let other = w.open_alert("p2");
    assert_eq!(w.detail(&w.ana, other).status, 404);
    assert_eq!(w.act(&w.ana, other, "ack", json!({})).status, 404);
    // The burden: two alerts, one of them answered.
    assert_eq!(metric(w.hub(), "osler_alerts_raised_30d"), 2.0);
    assert_eq!(metric(w.hub(), "osler_alerts_answered_ratio"), 0.5);
    assert!(metric(w.hub(), "osler_alerts_per_patient_day") > 0.0);

    // Once resolved, an alert takes a comment but no more answers.
    w.pressure("p1", 150.0, 20);
    wait_for(Duration::from_secs(10), || {
        (w.detail(&w.ana, id).json()["state"] == "resolved").then_some(())
    })
    .expect("a normal reading resolves the alert");
    assert_eq!(w.act(&w.ana, id, "ack", json!({})).status, 409);
    let a = w.act(&w.ana, id, "comment", json!({"note": "patient was fine"}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(w.act(&w.ana, id, "comment", json!({})).status, 422);

    // Bad bodies are refused with a reason and change nothing.
    let a = w.act(&w.ana, id, "comment", json!({"nope": 1}));
    assert_eq!(a.status, 400);
    assert!(a.text.contains("unknown field"), "{}", a.text);

    // Every act is in the audit trail, with who did it; refusals too, as refused (a refusal's
    // entry is committed just after its answer, so the log is read until it has them all).
    let acts = wait_for(Duration::from_secs(10), || {
        let log = osler(&["audit", "export", "--data", w.dir.0.to_str().unwrap()]);
        let acts: Vec<String> = log
            .lines()
            .filter(|l| l.contains(&format!("/alerts/{id}/")))
            .map(str::to_owned)
            .collect();
        (acts.len() == 8).then_some(acts)
    })
    .expect("ack, accept, accept (refused), ack, ack (refused), comment, two bad comments");
    let done: Vec<&String> = acts
        .iter()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["entry"]["outcome"] == "0")
        .collect();
    assert_eq!(done.len(), 4, "{done:#?}");
    assert!(
        done.iter()
            .any(|l| l.contains("dr-ben") && l.contains("/accept")),
        "{done:#?}"
    );
}

#[test]
fn snoozes_are_narrow_capped_undone_expire_survive_a_restart_and_end_on_resolution() {
    let mut w = ward("lifecycle-snooze", &[]);
    w.pressure("p1", 185.0, 120);
    let id = w.open_alert("p1");
    let active = |d: &Value| -> Vec<(String, String)> {
        d["snoozes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["active"] == true)
            .map(|s| {
                (
                    s["scope"].as_str().unwrap().to_owned(),
                    s["by"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };

    // A critical alert is snoozed for 15 minutes at most; a team-wide snooze needs a reason.
    let a = w.act(
        &w.ana,
        id,
        "snooze",
        json!({"minutes": 30, "reason": "in clinic"}),
    );
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.text.contains("at most 15"), "{}", a.text);
    let a = w.act(
        &w.ana,
        id,
        "snooze",
        json!({"minutes": 10, "scope": "team"}),
    );
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(w.act(&w.ana, id, "snooze", json!({})).status, 422);
    assert_eq!(active(&w.detail(&w.ana, id).json()), []);

    // Ana's snooze is hers: it shows who and why, and can be undone (once).
    let a = w.act(
        &w.ana,
        id,
        "snooze",
        json!({"minutes": 10, "reason": "in clinic"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let d = a.json();
    assert_eq!(active(&d), [("me".to_owned(), "dr-ana".to_owned())]);
    assert_eq!(d["snoozes"][0]["reason"], "in clinic");
    assert_eq!(d["snoozes"][0]["recipient"], "dr-ana");
    let a = w.act(&w.ana, id, "unsnooze", json!({}));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(active(&a.json()), []);
    assert_eq!(a.json()["snoozes"][0]["ended_why"], "undone");
    assert_eq!(w.act(&w.ana, id, "unsnooze", json!({})).status, 409);

    // A snooze outlives a crash of the hub (it was committed before the answer).
    assert_eq!(
        w.act(&w.ana, id, "snooze", json!({"minutes": 10})).status,
        200
    );
    w.crash_and_restart();
    assert_eq!(
        active(&w.detail(&w.ana, id).json()),
        [("me".to_owned(), "dr-ana".to_owned())]
    );

    // A short one expires by itself.
    assert_eq!(
        w.act(&w.ben, id, "snooze", json!({"minutes": 0.02})).status,
        200
    );
    assert_eq!(active(&w.detail(&w.ben, id).json()).len(), 2);
    wait_for(Duration::from_secs(15), || {
        (active(&w.detail(&w.ben, id).json()).len() == 1).then_some(())
    })
    .expect("a snooze of 1.2 s expires");

    // The team's snooze, with its reason; resolution ends every snooze of the alert.
    let a = w.act(
        &w.ben,
        id,
        "snooze",
        json!({"minutes": 5, "scope": "team", "reason": "handover"}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(active(&a.json()).len(), 2);
    w.pressure("p1", 150.0, 60);
    let d = wait_for(Duration::from_secs(10), || {
        let d = w.detail(&w.ana, id).json();
        (d["state"] == "resolved").then_some(d)
    })
    .expect("resolved");
    assert_eq!(active(&d), []);
    let ended: Vec<&str> = d["snoozes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["ended_why"].as_str())
        .collect();
    assert_eq!(ended, ["undone", "resolved", "resolved"], "{d}");
}

#[test]
fn the_snooze_cap_is_configurable() {
    let w = ward("lifecycle-cap", &["--snooze-cap", "critical=5"]);
    w.pressure("p1", 185.0, 60);
    let id = w.open_alert("p1");
    let a = w.act(&w.ana, id, "snooze", json!({"minutes": 10}));
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.text.contains("at most 5"), "{}", a.text);
    assert_eq!(
        w.act(&w.ana, id, "snooze", json!({"minutes": 5})).status,
        200
    );
}

/// What a subscription read: (event id, event name, data).
type Events = Vec<(i64, String, Value)>;

/// One subscription, until `enough` says so or 30 s pass; the receiver says when it is
/// connected.
fn subscribe(
    w: &Ward,
    token: Option<&str>,
    last_id: Option<&str>,
    enough: impl Fn(&[(i64, String, Value)]) -> bool + Send + 'static,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Events>) {
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(t) = token {
        headers.push(("Authorization".into(), format!("Bearer {t}")));
    }
    if let Some(id) = last_id {
        headers.push(("Last-Event-ID".into(), id.into()));
    }
    let url = format!("{}/alerts/stream", w.hub().root());
    let (ready_tx, ready) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let resp = request("GET", &url, &h)
            .timeout(Duration::from_secs(30))
            .call()
            .expect("subscribe");
        assert!(resp.content_type().starts_with("text/event-stream"));
        let _ = ready_tx.send(());
        let mut got = Vec::new();
        let (mut id, mut name) = (0i64, String::new());
        for line in BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                got.push((id, name.clone(), serde_json::from_str(v.trim()).unwrap()));
                if enough(&got) {
                    break;
                }
            }
        }
        got
    });
    (ready, handle)
}

#[test]
fn the_stream_numbers_its_events_and_a_reconnect_misses_none() {
    let w = ward("lifecycle-stream", &[]);
    // A subscriber sees the alert raised, then drops its connection.
    let (ready, first) = subscribe(&w, None, None, |got| {
        got.iter()
            .any(|(_, _, v)| v["event"] == "raised" && v["patient"] == "p1")
    });
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    w.pressure("p1", 185.0, 60);
    let first = first.join().unwrap();
    let (last_id, name, raised) = first.last().unwrap().clone();
    assert_eq!(name, "alert");
    assert_eq!(raised["seq"], last_id);
    let id = raised["id"].as_i64().unwrap();

    // Meanwhile: answers, another patient's alert, a worse reading.
    assert_eq!(w.act(&w.ana, id, "ack", json!({})).status, 200);
    w.pressure("p2", 190.0, 60);
    assert_eq!(w.act(&w.ben, id, "accept", json!({})).status, 200);
    w.pressure("p1", 206.0, 40);
    wait_for(Duration::from_secs(10), || {
        kinds(&w.detail(&w.ana, id).json())
            .contains(&"reopened".to_owned())
            .then_some(())
    })
    .expect("re-opened");

    // Reconnecting with the last id gets exactly what was missed, in order.
    let want = |got: &[(i64, String, Value)]| got.iter().any(|(_, _, v)| v["event"] == "reopened");
    let (_, again) = subscribe(&w, None, Some(&last_id.to_string()), want);
    let again = again.join().unwrap();
    let seen: Vec<(String, String)> = again
        .iter()
        .map(|(_, n, v)| {
            (
                n.clone(),
                format!(
                    "{}:{}",
                    v["event"].as_str().unwrap(),
                    v["patient"].as_str().unwrap()
                ),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("response".into(), "ack:p1".into()),
            ("alert".into(), "raised:p2".into()),
            ("response".into(), "accept:p1".into()),
            ("alert".into(), "updated:p1".into()),
            ("alert".into(), "reopened:p1".into()),
        ] as [(String, String); 5]
    );
    let ids: Vec<i64> = again.iter().map(|(i, _, _)| *i).collect();
    assert!(
        ids.windows(2).all(|p| p[0] < p[1]) && ids[0] > last_id,
        "{ids:?}"
    );
    assert_eq!(again[1].2["severity"], "critical");

    // A clinician's replay from the start holds only their patients' events.
    let (_, mine) = subscribe(&w, Some(&w.ana), Some("0"), want);
    let mine = mine.join().unwrap();
    assert!(
        mine.iter().all(|(_, _, v)| v["patient"] == "p1"),
        "{mine:?}"
    );
    assert_eq!(
        mine.len(),
        5,
        "raised, ack, accept, updated, reopened and nothing of p2"
    );

    // A malformed id is refused, not taken as "from now".
    let a = send(
        "GET",
        &format!("{}/alerts/stream", w.hub().root()),
        "",
        &[("Last-Event-ID", "yesterday")],
    );
    assert_eq!(a.status, 400, "{}", a.text);
}

/// Sets CareTeam/t1's escalation policy (as the hub's administrator program).
fn set_policy(w: &Ward, policy: Value) -> Answer {
    send(
        "PUT",
        &format!("{}/escalation/t1", w.hub().root()),
        &policy.to_string(),
        &[("Content-Type", "application/json")],
    )
}

/// The `escalated` events of an alert: (ms after it was raised, note).
fn escalations(w: &Ward, id: i64) -> Vec<(i64, String)> {
    let d = w.detail(&w.ana, id).json();
    let t = d["timeline"].as_array().unwrap();
    let at = |e: &Value| {
        osler_core::Timestamp::parse(e["at"].as_str().unwrap())
            .unwrap()
            .utc_ms
    };
    let raised = at(&t[0]);
    t.iter()
        .filter(|e| e["kind"] == "escalated")
        .map(|e| (at(e) - raised, e["note"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn escalation_runs_every_step_repeats_and_stops_on_accept_not_on_ack() {
    let w = ward("lifecycle-escalation", &[]);
    // Ana's team sees it first; after 1.2 s Ben is told; then the steps repeat once.
    let a = set_policy(
        &w,
        json!({"steps": [
            {"notify": ["Practitioner/ana"], "wait_minutes": 0.02},
            {"notify": ["Practitioner/ben"], "wait_minutes": 0.02}],
          "repeat": 1}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    // A clinician may not change the policy; a malformed one is refused with a reason.
    let a = send(
        "PUT",
        &format!("{}/escalation/t1", w.hub().root()),
        &json!({"steps": []}).to_string(),
        &[
            ("Authorization", &format!("Bearer {}", w.ana)),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(a.status, 403, "{}", a.text);
    let a = set_policy(
        &w,
        json!({"steps": [{"notify": ["everyone"], "wait_minutes": 1}]}),
    );
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(a.text.contains("not a target"), "{}", a.text);
    let a = set_policy(
        &w,
        json!({"steps": [{"notify": ["Practitioner/nobody"], "wait_minutes": 1}]}),
    );
    assert_eq!(a.status, 422, "{}", a.text);
    assert!(
        a.text.contains("Practitioner/nobody is not known"),
        "{}",
        a.text
    );

    w.pressure("p1", 185.0, 60);
    let id = w.open_alert("p1");
    let d = w.detail(&w.ana, id).json();
    assert_eq!(state_of(&d, "dr-ana"), "notified");
    assert_eq!(state_of(&d, "dr-ben"), "none", "step 1 names only Ana: {d}");

    // An acknowledgement does not stop it: step 2, then round 2's steps 1 and 2, then the end.
    assert_eq!(w.act(&w.ana, id, "ack", json!({})).status, 200);
    let steps = wait_for(Duration::from_secs(20), || {
        let d = w.detail(&w.ana, id).json();
        kinds(&d)
            .contains(&"exhausted".to_owned())
            .then(|| escalations(&w, id))
    })
    .expect("the escalation runs to its end");
    let notes: Vec<&str> = steps.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        notes,
        [
            "step 2, round 1: notified dr-ben",
            "step 1, round 2: notified dr-ana",
            "step 2, round 2: notified dr-ben",
        ]
    );
    // Each step waited its 1.2 s (the timer is not early; the hub is not seconds late).
    for (n, (after, _)) in steps.iter().enumerate() {
        let due = 1200 * (n as i64 + 1);
        assert!(
            *after >= due && *after < due + 1500,
            "step {n} at {after} ms, due {due}: {steps:?}"
        );
    }
    assert_eq!(state_of(&w.detail(&w.ana, id).json(), "dr-ben"), "notified");

    // A second alert: accepting stops the escalation before its next step.
    w.pressure("p1", 150.0, 50);
    w.pressure("p1", 190.0, 40);
    let second = wait_for(Duration::from_secs(10), || {
        let id2 = w.open_alert("p1");
        (id2 != id).then_some(id2)
    })
    .unwrap();
    assert_eq!(w.act(&w.ana, second, "accept", json!({})).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(escalations(&w, second), [], "no step after the accept");
    let d = w.detail(&w.ana, second).json();
    assert_eq!(d["escalation"]["ended_why"], "accepted", "{d}");

    // Every step is in the audit trail, done by the hub.
    let log = osler(&["audit", "export", "--data", w.dir.0.to_str().unwrap()]);
    let steps = log
        .lines()
        .filter(|l| l.contains("osler:escalation") && l.contains(&format!("alert {id}")))
        .count();
    assert_eq!(steps, 4, "three steps and the end");
}

#[test]
fn an_escalation_wait_survives_a_crash_of_the_hub() {
    let mut w = ward("lifecycle-escalation-crash", &[]);
    let a = set_policy(
        &w,
        json!({"steps": [{"notify": ["team"], "wait_minutes": 0.1}], "repeat": 1}),
    );
    assert_eq!(a.status, 200, "{}", a.text);
    w.pressure("p1", 185.0, 60);
    let id = w.open_alert("p1");
    // Killed two seconds into the six-second wait, back a moment later.
    std::thread::sleep(Duration::from_secs(2));
    w.crash_and_restart();
    let steps = wait_for(Duration::from_secs(20), || {
        let s = escalations(&w, id);
        (!s.is_empty()).then_some(s)
    })
    .expect("the step runs after the restart");
    let (after, note) = &steps[0];
    assert!(
        *after >= 6000 && *after < 7500,
        "due 6 s after the raise, ran at {after} ms (not restarted, not lost)"
    );
    assert_eq!(note, "step 1, round 2: notified dr-ana, dr-ben");
}

#[test]
fn silence_raises_no_data_on_the_timer_mutes_the_measurements_alerts_and_data_clears_it() {
    let w = ward("lifecycle-silence", &[]);
    let root = w.hub().root();
    // p1's SpO2 may be silent for a minute (the plan's reporting interval).
    let a = send(
        "PUT",
        &format!("{root}/plans/p1/no-data-spo2"),
        &json!({"threshold": 1, "reason": "post-op watch", "author": "Practitioner/ana"})
            .to_string(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let plan = get(&format!("{root}/plans/p1")).json();
    assert_eq!(plan["reporting"]["no-data-spo2"]["minutes"], 1.0, "{plan}");
    let a = send(
        "PUT",
        &format!("{root}/plans/p1/no-data-heart-rate"),
        &json!({"threshold": 1, "reason": "post-op watch", "author": "Practitioner/ana"})
            .to_string(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    // Each rule's state: fine with fresh data, unknown without any.
    let hr = observation("p1", "8867-4", 70.0, "/min", &seconds_ago(50));
    assert_eq!(
        post(&format!("{}/Observation", w.hub().base), &hr.to_string()).status,
        201
    );
    w.pressure("p1", 120.0, 1);
    let status = |rule: &str| -> (String, String) {
        let s = get(&format!("{root}/alerts/status?patient=p1")).json();
        let r = &s["rules"][rule];
        (
            r["state"].as_str().unwrap_or("?").to_owned(),
            r["why"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(status("hr-high").0, "fine");
    assert_eq!(status("bp-crisis-systolic").0, "fine");
    assert_eq!(
        status("fever"),
        (
            "unknown".to_owned(),
            "no body-temperature data yet".to_owned()
        )
    );
    let open = |rule: &str| -> Option<Value> {
        get(&format!("{root}/alerts?patient=p1&state=raised")).json()["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == rule)
            .cloned()
    };
    // Three low readings: an SpO2 alert, and no "no data" (data just arrived).
    for ago in [54, 52, 50] {
        let o = observation("p1", "2708-6", 88.0, "%", &seconds_ago(ago));
        assert_eq!(
            post(&format!("{}/Observation", w.hub().base), &o.to_string()).status,
            201
        );
    }
    let spo2 = open("spo2-low").expect("three low readings raise spo2-low");
    assert!(
        open("no-data-spo2").is_none(),
        "not raised when data arrives"
    );

    // Nothing arrives: the timer raises it, a minute after the hub last heard of the device.
    let silent = wait_for(Duration::from_secs(90), || open("no-data-spo2"))
        .expect("a minute of silence raises no-data-spo2");
    assert_eq!(silent["severity"], "warning");
    assert_eq!(silent["title"], "No SpO2 data");
    assert_eq!(silent["threshold"], 1.0);
    // The SpO2 alert is muted, and says by what.
    let d = w.detail(&w.ana, spo2["id"].as_i64().unwrap()).json();
    assert_eq!(d["muted"]["by_alert"], silent["id"], "{d}");
    assert!(
        d["muted"]["why"]
            .as_str()
            .unwrap()
            .contains("no data since")
    );
    assert_eq!(status("spo2-low").0, "alert");
    assert_eq!(status("no-data-spo2").0, "alert");
    // The heart rate fell silent too: its rules are unknown, never fine.
    let (state, why) = status("hr-high");
    assert_eq!(state, "unknown");
    assert!(why.starts_with("no heart-rate data since"), "{why}");

    // Data comes back: the silence resolves at the next look, and the mute is lifted.
    let o = observation("p1", "2708-6", 97.0, "%", &seconds_ago(1));
    assert_eq!(
        post(&format!("{}/Observation", w.hub().base), &o.to_string()).status,
        201
    );
    wait_for(Duration::from_secs(15), || {
        open("no-data-spo2").is_none().then_some(())
    })
    .expect("fresh data resolves the silence");
    let d = w.detail(&w.ana, spo2["id"].as_i64().unwrap()).json();
    assert_eq!(d["muted"], Value::Null, "{d}");
    assert_eq!(status("no-data-spo2").0, "fine");
    // Nobody else's patient: not found.
    let other = send(
        "GET",
        &format!("{root}/alerts/status?patient=p2"),
        "",
        &[("Authorization", &format!("Bearer {}", w.ana))],
    );
    assert_eq!(other.status, 404);
}
