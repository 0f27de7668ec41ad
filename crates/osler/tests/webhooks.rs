//! Webhooks through a real receiver on a loopback socket: Standard Webhooks headers and a
//! signature the receiver can check with the secret it was given, retries with the same id
//! after failures, dead-lettering after the budget and a replay, 410 disabling the endpoint,
//! only the endpoint's team's patients, and nothing lost across a crash of the hub.

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// One request the receiver took.
#[derive(Clone, Debug)]
struct Got {
    headers: HashMap<String, String>,
    body: String,
}

/// A webhook receiver answering each request with the next scripted status (200 once the
/// script is spent).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let (g, s) = (got.clone(), script.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let status = s.lock().unwrap().pop_front().unwrap_or(200);
                g.lock().unwrap().push(Got {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, got, script }
    }

    fn fail_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// Checks a delivery's signature the way a receiver does: HMAC-SHA256 over `id.ts.body` with
/// the secret's key bytes.
fn signed_by(g: &Got, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let content = format!(
        "{}.{}.{}",
        g.headers["webhook-id"], g.headers["webhook-timestamp"], g.body
    );
    g.headers["webhook-signature"].split(' ').any(|s| {
        s.strip_prefix("v1,")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|tag| ring::hmac::verify(&key, content.as_bytes(), &tag).is_ok())
    })
}

fn setup(dir: &TempDir, extra: &[&str]) -> Hub {
    let hub = Hub::start_with(&dir.0, extra);
    for (path, body) in [
        ("Patient/p1", json!({"resourceType": "Patient"})),
        ("Patient/p2", json!({"resourceType": "Patient"})),
        (
            "CareTeam/t1",
            json!({"resourceType": "CareTeam", "status": "active",
                "subject": {"reference": "Patient/p1"}}),
        ),
    ] {
        let a = send(
            "PUT",
            &format!("{}/{path}", hub.base),
            &body.to_string(),
            &[],
        );
        assert_eq!(a.status, 201, "{path}: {}", a.text);
    }
    hub
}

fn add_endpoint(hub: &Hub, url: &str, team: Option<&str>) -> Value {
    let mut body = json!({ "url": url });
    if let Some(t) = team {
        body["team"] = json!(t);
    }
    let a = send(
        "POST",
        &format!("{}/webhooks", hub.root()),
        &body.to_string(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 201, "{}", a.text);
    a.json()
}

fn crisis(hub: &Hub, patient: &str, sys: f64, ago: i64) {
    let o = blood_pressure(patient, sys, 85.0, &seconds_ago(ago));
    assert_eq!(
        post(&format!("{}/Observation", hub.base), &o.to_string()).status,
        201
    );
}

fn deliveries(hub: &Hub, state: &str) -> Vec<Value> {
    get(&format!("{}/webhooks/deliveries?state={state}", hub.root())).json()["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn deliveries_are_signed_retried_with_one_id_dead_lettered_and_replayed() {
    let dir = TempDir::new("webhooks-retry");
    let hub = setup(&dir, &["--webhook-retry-critical", "300ms,300ms"]);
    let rx = Receiver::start();
    let ep = add_endpoint(&hub, &rx.url, Some("t1"));
    let secret = ep["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    // The list never shows a secret again.
    let list = get(&format!("{}/webhooks", hub.root())).text;
    assert!(!list.contains(&secret) && list.contains(ep["id"].as_str().unwrap()));

    // Two failures, then success: three attempts, one webhook-id, each signed.
    rx.fail_next(&[500, 503]);
    crisis(&hub, "p1", 185.0, 60);
    let got = wait_for(Duration::from_secs(10), || {
        let g = rx.got();
        (g.len() >= 3).then_some(g)
    })
    .expect("three attempts");
    assert_eq!(got.len(), 3, "no attempt after the success");
    let ids: Vec<&String> = got.iter().map(|g| &g.headers["webhook-id"]).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert!(got.iter().all(|g| signed_by(g, &secret)));
    let body: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(body["type"], "alert.raised");
    assert_eq!(body["data"]["patient"], "p1");
    assert_eq!(body["data"]["rule"], "bp-crisis-systolic");
    // A tampered body does not verify.
    let mut forged = got[2].clone();
    forged.body = forged.body.replace("p1", "p9");
    assert!(!signed_by(&forged, &secret));
    // p2 is not the team's: nothing of p2 reaches this endpoint.
    crisis(&hub, "p2", 190.0, 60);
    let delivered = wait_for(Duration::from_secs(10), || {
        let d = deliveries(&hub, "delivered");
        (!d.is_empty()).then_some(d)
    })
    .unwrap();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["attempts"], 3);

    // Always failing: after the short critical budget (1 + 2 retries) it is dead, visible,
    // and the alert's timeline says so.
    rx.fail_next(&[500, 500, 500]);
    assert_eq!(
        send(
            "POST",
            &format!("{}/alerts/{}/comment", hub.root(), body["data"]["id"]),
            &json!({"note": "calling"}).to_string(),
            &[("Content-Type", "application/json")]
        )
        .status,
        200
    );
    let dead = wait_for(Duration::from_secs(10), || {
        let d = deliveries(&hub, "dead");
        (!d.is_empty()).then_some(d)
    })
    .expect("dead-lettered");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_status"], 500);
    let timeline = get(&format!("{}/alerts/{}", hub.root(), body["data"]["id"])).json();
    assert!(
        timeline["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "delivery-failed"),
        "{timeline}"
    );
    assert!(metric(&hub, "osler_webhook_deliveries_dead_total") >= 1.0);

    // Replayed once the receiver is fixed: delivered, same id as the attempts before.
    let before = rx.got().len();
    let a = send(
        "POST",
        &format!(
            "{}/webhooks/deliveries/{}/replay",
            hub.root(),
            dead[0]["id"]
        ),
        "",
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let got = wait_for(Duration::from_secs(10), || {
        let g = rx.got();
        (g.len() > before).then_some(g)
    })
    .expect("the replay is sent");
    assert_eq!(
        got.last().unwrap().headers["webhook-id"],
        dead[0]["webhook_id"]
    );
    assert!(deliveries(&hub, "dead").is_empty());
    // Replaying what is not dead is refused.
    let a = send(
        "POST",
        &format!(
            "{}/webhooks/deliveries/{}/replay",
            hub.root(),
            dead[0]["id"]
        ),
        "",
        &[],
    );
    assert_eq!(a.status, 409, "{}", a.text);
    // By now p2's alert (raised seconds ago) would have been sent, were it the team's.
    let patients: Vec<String> = rx
        .got()
        .iter()
        .map(|g| serde_json::from_str::<Value>(&g.body).unwrap()["data"]["patient"].to_string())
        .collect();
    assert!(patients.iter().all(|p| p == "\"p1\""), "{patients:?}");
}

#[test]
fn gone_disables_the_endpoint_and_nothing_queued_is_lost_in_a_crash() {
    let dir = TempDir::new("webhooks-gone");
    let hub = setup(&dir, &[]);
    // Only operators manage endpoints; plain HTTP is for this machine only.
    let a = send(
        "POST",
        &format!("{}/webhooks", hub.root()),
        &json!({"url": "http://hooks.example.org/x"}).to_string(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 422, "{}", a.text);
    let rx = Receiver::start();
    add_endpoint(&hub, &rx.url, None);
    rx.fail_next(&[410]);
    crisis(&hub, "p1", 185.0, 60);
    wait_for(Duration::from_secs(10), || {
        let e = get(&format!("{}/webhooks", hub.root())).json();
        (e["endpoints"][0]["disabled_why"] == "it answered 410 Gone").then_some(())
    })
    .expect("410 disables the endpoint");
    crisis(&hub, "p2", 190.0, 60);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.got().len(), 1, "a disabled endpoint gets nothing");

    // A new endpoint, failing while the hub crashes: what was queued is sent after the restart
    // (the worse reading updates the open alert: one event, one delivery).
    let rx2 = Receiver::start();
    add_endpoint(&hub, &rx2.url, None);
    rx2.fail_next(&[500]);
    crisis(&hub, "p1", 210.0, 50);
    wait_for(Duration::from_secs(10), || {
        (!rx2.got().is_empty()).then_some(())
    })
    .expect("the first attempt");
    hub.kill9();
    let hub = Hub::start_with(&dir.0, &[]);
    let got = wait_for(Duration::from_secs(30), || {
        let g = rx2.got();
        (g.len() >= 2).then_some(g)
    })
    .unwrap_or_else(|| {
        panic!(
            "the retries survive the crash: got {:?}, queue {:?}",
            rx2.got()
                .iter()
                .map(|g| g.headers["webhook-id"].clone())
                .collect::<Vec<_>>(),
            get(&format!("{}/webhooks/deliveries", hub.root())).json()
        )
    });
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for g in &got {
        *per_id.entry(g.headers["webhook-id"].clone()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 1, "{per_id:?}");
    assert!(
        per_id.values().all(|n| *n == 2),
        "failed once, then arrived: {per_id:?}"
    );
    wait_for(Duration::from_secs(10), || {
        deliveries(&hub, "pending").is_empty().then_some(())
    })
    .expect("nothing left pending");
}
