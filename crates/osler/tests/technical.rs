//! Technical alerts for operators, end to end: a real gateway's batches say how full its outbox
//! is and its version; a gateway that falls silent is a technical alert on the hub's own timer
//! and stops being one when it uploads again; a batch saying its outbox is filling raises one,
//! and a later batch saying it drained resolves it; a webhook endpoint that keeps failing is
//! one until it is removed. Every change is in the audit trail.

mod common;

use std::time::Duration;

use common::*;
use osler_wire::{BatchHeader, Entry, GatewayKey, GatewayState, Lane, seal};
use serde_json::{Value, json};

fn technical(hub: &Hub) -> Value {
    get(&format!("{}/alerts/technical", hub.root())).json()
}

/// The open technical alert of `rule` about `subject`, waited for.
fn wait_open(hub: &Hub, rule: &str, subject: &str, open: bool) -> Value {
    wait_for(Duration::from_secs(20), || {
        let t = technical(hub);
        let found = t["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == rule && a["subject"] == subject && a["state"] == "raised")
            .cloned();
        match (found, open) {
            (Some(a), true) => Some(a),
            (None, false) => Some(t),
            _ => None,
        }
    })
    .unwrap_or_else(|| panic!("{rule} {subject} open={open}: {}", technical(hub)))
}

fn reading_batch(key: &GatewayKey, seq: u64, state: Option<GatewayState>) -> Vec<u8> {
    let now = now_ms();
    let entry = Entry {
        p: "p1".into(),
        d: Some("w".into()),
        m: "heart-rate".into(),
        v: vec![70.0],
        t: now - 1000 - seq as i64,
        o: 0,
        r: now,
        a: false,
    }
    .to_json();
    let header = BatchHeader {
        gateway: "gw-hand".into(),
        lane: Lane::Readings,
        first_seq: seq,
        count: 1,
        sent_ms: now,
        state,
    };
    seal(&header, &[entry.as_str()], key)
}

fn post_batch(hub: &Hub, body: &[u8]) {
    let (status, v) = post_envelope(hub, "/ingest/batch", body);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn silent_gateways_filling_outboxes_and_failing_endpoints_are_technical_alerts() {
    let dir = TempDir::new("technical");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let port = free_port();
    let extra = [
        "--gateway-silence",
        "2s",
        "--webhook-retry-critical",
        "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
    ];
    let hub = Hub::start_full(&hub_dir, port, &extra, None);
    let gw_id = std::fs::read_to_string(gw_dir.join("gateway.id")).unwrap();
    let gw_id = gw_id.trim();
    let subject = format!("gateway:{gw_id}");

    // A real gateway uploads: its batches say its outbox and version.
    // Polls every half second: its contact when no device sends.
    let gw_args = ["--overrides-every", "0.5"];
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &gw_args);
    let o = json!([{"patient": "p1", "device": "w", "metric": "heart-rate", "value": 71,
        "unit": "/min", "time": seconds_ago(2)}]);
    assert_eq!(
        post(&format!("{}/readings", gw.url), &o.to_string()).status,
        200
    );
    let report = wait_for(Duration::from_secs(20), || {
        technical(&hub)["gateways"]
            .as_array()?
            .iter()
            .find(|g| g["gateway"] == gw_id)
            .cloned()
    })
    .expect("the gateway's batches report its state");
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert!(report["outbox_limit"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(technical(&hub)["open"], 0, "{}", technical(&hub));

    // It stops: silent after 2 s, on the hub's own timer (no data needs to arrive).
    gw.kill9();
    let silent = wait_open(&hub, "gateway-silent", &subject, true);
    assert!(
        silent["detail"]
            .as_str()
            .unwrap()
            .contains("no contact for"),
        "{silent}"
    );
    assert_eq!(metric(&hub, "osler_technical_alerts_open"), 1.0);
    // Back: resolved by its next contact (a poll; no device needs to send).
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &gw_args);
    wait_open(&hub, "gateway-silent", &subject, false);

    // A gateway whose batch says its outbox is at 90% of its limit is filling; one that
    // says 10% is not.
    let key = GatewayKey::generate().unwrap();
    enrol_key(&hub_dir, "gw-hand", &key);
    let state = |bytes| GatewayState {
        outbox_bytes: bytes,
        outbox_limit: 1_000_000_000,
        version: "0.0.1-hand".into(),
    };
    post_batch(&hub, &reading_batch(&key, 1, Some(state(900_000_000))));
    let filling = wait_open(&hub, "gateway-outbox-filling", "gateway:gw-hand", true);
    assert!(
        filling["detail"].as_str().unwrap().contains("90%"),
        "{filling}"
    );
    post_batch(&hub, &reading_batch(&key, 2, Some(state(100_000_000))));
    wait_open(&hub, "gateway-outbox-filling", "gateway:gw-hand", false);

    // A webhook endpoint nobody answers: failing once a delivery failed three times.
    let closed = free_port();
    let a = send(
        "POST",
        &format!("{}/webhooks", hub.root()),
        &json!({"url": format!("http://127.0.0.1:{closed}/hook")}).to_string(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 201, "{}", a.text);
    let hook = a.json()["id"].as_str().unwrap().to_owned();
    let crisis = blood_pressure("p1", 195.0, 85.0, &seconds_ago(1));
    assert_eq!(
        post(&format!("{}/Observation", hub.base), &crisis.to_string()).status,
        201
    );
    let failing = wait_open(&hub, "webhook-failing", &format!("webhook:{hook}"), true);
    assert!(
        failing["detail"].as_str().unwrap().contains("failed"),
        "{failing}"
    );
    let a = send(
        "DELETE",
        &format!("{}/webhooks/{hook}", hub.root()),
        "",
        &[],
    );
    assert!(a.status < 300, "{}", a.text);
    wait_open(&hub, "webhook-failing", &format!("webhook:{hook}"), false);

    // Each raise and resolve is the hub's own act in the audit trail.
    let audit = osler(&["audit", "export", "--data", hub_dir.to_str().unwrap()]);
    assert!(
        audit.matches("technical-alert").count() >= 6,
        "three raised, three resolved: {}",
        audit
            .lines()
            .filter(|l| l.contains("technical"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(gw);
}
