//! The hub's batch endpoint refuses what it must, says why, logs it, and stores nothing:
//! forged signatures, unknown and revoked keys, replays, oversized and garbled batches.

mod common;

use std::time::Duration;

use common::*;
use osler_wire::{BatchHeader, Entry, GatewayKey, Lane, seal};

fn entries(patient: &str, n: usize) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (0..n)
        .map(|i| {
            Entry {
                p: patient.into(),
                d: Some("w".into()),
                m: "heart-rate".into(),
                v: vec![60.0 + i as f64 % 30.0],
                t: now - 600_000 + i as i64 * 1000,
                o: 0,
                r: now,
                a: false,
            }
            .to_json()
        })
        .collect()
}

fn batch(key: &GatewayKey, gateway: &str, first_seq: u64, entries: &[String]) -> Vec<u8> {
    let header = BatchHeader {
        gateway: gateway.into(),
        lane: Lane::Readings,
        first_seq,
        count: entries.len() as u32,
        sent_ms: 0,
        state: None,
    };
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    seal(&header, &refs, key)
}

fn send(hub: &Hub, body: &[u8]) -> (u16, serde_json::Value) {
    post_envelope(hub, "/ingest/batch", body)
}

#[test]
fn only_enrolled_unrevoked_correctly_signed_batches_are_stored_once() {
    let dir = TempDir::new("batch-sec");
    let hub_dir = dir.0.join("hub");
    let log = dir.0.join("hub.log");
    let hub = Hub::start_full(&hub_dir, 0, &[], Some(&log));
    let key = GatewayKey::generate().unwrap();
    let good = batch(&key, "gw-a", 1, &entries("sec", 20));

    // Unknown gateway.
    let (status, v) = send(&hub, &good);
    assert_eq!(status, 401);
    assert!(v["error"].as_str().unwrap().contains("not enrolled"), "{v}");

    enrol_key(&hub_dir, "gw-a", &key);
    // Forged: signed by another key under gw-a's name.
    let forger = GatewayKey::generate().unwrap();
    let (status, v) = send(&hub, &batch(&forger, "gw-a", 1, &entries("sec", 20)));
    assert_eq!(status, 401);
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
    // Tampered: one byte of the body changed after signing.
    let mut tampered = good.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x40;
    assert_eq!(send(&hub, &tampered).0, 401);
    // Garbled and truncated.
    let (status, v) = send(&hub, b"hello, hub");
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("magic"), "{v}");
    assert_eq!(send(&hub, &good[..good.len() - 10]).0, 400);
    // Oversized.
    let (status, _) = send(&hub, &vec![b'x'; osler_wire::MAX_ENVELOPE_BYTES + 1]);
    assert_eq!(status, 413);
    assert_eq!(count_for(&hub, "sec"), 0);

    // The genuine batch is stored, and its replay is recognised, not stored again.
    let (status, v) = send(&hub, &good);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["committed_through"].as_u64(), v["stored"].as_u64()),
        (Some(20), Some(20))
    );
    let (status, v) = send(&hub, &good);
    assert_eq!(status, 200);
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(20))
    );
    assert_eq!(count_for(&hub, "sec"), 20);

    // A signed entry that is not a valid reading is dead-lettered, not stored, not lost.
    let mut bad = entries("sec", 1);
    bad[0] = bad[0].replace("heart-rate", "mood");
    let (status, v) = send(&hub, &batch(&key, "gw-a", 21, &bad));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["dead_lettered"].as_u64(), Some(1));

    // Revoked: refused from then on.
    osler(&[
        "hub",
        "revoke",
        "--data",
        hub_dir.to_str().unwrap(),
        "--gateway",
        "gw-a",
    ]);
    let (status, v) = send(&hub, &batch(&key, "gw-a", 22, &entries("sec2", 5)));
    assert_eq!(status, 403);
    assert!(v["error"].as_str().unwrap().contains("revoked"), "{v}");
    assert_eq!(count_for(&hub, "sec2"), 0);
    let listed = osler(&["hub", "gateways", "--data", hub_dir.to_str().unwrap()]);
    assert!(listed.contains("gw-a\trevoked"), "{listed}");

    // Every refusal was logged with its reason.
    let text = std::fs::read_to_string(&log).unwrap();
    for needle in [
        "gateway not enrolled",
        "batch refused: signature",
        "not a valid envelope",
        "gateway key revoked",
        "larger than",
    ] {
        assert!(text.contains(needle), "log lacks {needle:?}:\n{text}");
    }
}

/// A notice (`POST /ingest/notice`): emergencies, signed like a batch, sent at `sent_ms`.
fn notice(key: &GatewayKey, gateway: &str, lane: Lane, sent_ms: i64, rules: &[&str]) -> Vec<u8> {
    let entries: Vec<String> = rules
        .iter()
        .map(|rule| {
            osler_wire::AlertEntry {
                p: "fallen".into(),
                rule: (*rule).into(),
                change: "raised".into(),
                t: sent_ms - 5,
                v: 1.0,
                th: 1.0,
                late: false,
                d: None,
            }
            .to_json()
        })
        .collect();
    let header = BatchHeader {
        gateway: gateway.into(),
        lane,
        first_seq: 1,
        count: entries.len() as u32,
        sent_ms,
        state: None,
    };
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    seal(&header, &refs, key)
}

fn announce(hub: &Hub, body: &[u8]) -> (u16, serde_json::Value) {
    post_envelope(hub, "/ingest/notice", body)
}

/// An emergency announced before its commit reaches the live stream as a `notice` without an
/// id (it must never move a subscriber's Last-Event-ID), once, only from an enrolled gateway's
/// signature, only for emergencies, and stores nothing: the stored alert is the record.
#[test]
fn a_notice_is_announced_once_from_a_signed_gateway_and_stores_nothing() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("notice-sec");
    let hub_dir = dir.0.join("hub");
    let hub = Hub::start(&hub_dir);
    let key = GatewayKey::generate().unwrap();
    let fall = |sent| notice(&key, "gw-n", Lane::Emergencies, sent, &["emergency-fall"]);

    let (status, v) = announce(&hub, &fall(now_ms()));
    assert_eq!(status, 401, "not enrolled: {v}");
    enrol_key(&hub_dir, "gw-n", &key);
    let forger = GatewayKey::generate().unwrap();
    let forged = notice(
        &forger,
        "gw-n",
        Lane::Emergencies,
        now_ms(),
        &["emergency-sos"],
    );
    assert_eq!(announce(&hub, &forged).0, 401);
    let (status, v) = announce(
        &hub,
        &notice(&key, "gw-n", Lane::Alerts, now_ms(), &["emergency-fall"]),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("emergencies"), "{v}");

    // Every event block of the stream, as sent: its lines.
    let resp = req("GET", &format!("{}/alerts/stream", hub.root()))
        .timeout(Duration::from_secs(60))
        .call()
        .expect("subscribe");
    let (tx, blocks) = std::sync::mpsc::channel::<Vec<String>>();
    std::thread::spawn(move || {
        let mut block = Vec::new();
        for line in BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if block.iter().any(|l: &String| l.starts_with("data:")) {
                    let _ = tx.send(std::mem::take(&mut block));
                }
                block.clear();
            } else {
                block.push(line);
            }
        }
    });

    // A rule's alert may not take the shortcut; the stale and the replayed are not announced.
    let (status, v) = announce(
        &hub,
        &notice(&key, "gw-n", Lane::Emergencies, now_ms(), &["hr-high"]),
    );
    assert_eq!((status, v["announced"].as_u64()), (200, Some(0)), "{v}");
    assert!(
        v["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("not an emergency")
    );
    let (_, v) = announce(&hub, &fall(now_ms() - 120_000));
    assert_eq!(v["announced"].as_u64(), Some(0), "stale: {v}");
    let genuine = fall(now_ms());
    let (status, v) = announce(&hub, &genuine);
    assert_eq!((status, v["announced"].as_u64()), (200, Some(1)), "{v}");
    let (_, v) = announce(&hub, &genuine);
    assert_eq!(v["announced"].as_u64(), Some(0), "a replay: {v}");

    let block = blocks
        .recv_timeout(Duration::from_secs(10))
        .expect("the notice on the stream");
    assert!(block.contains(&"event: notice".to_owned()), "{block:?}");
    assert!(
        !block.iter().any(|l| l.starts_with("id:")),
        "a notice has no id: {block:?}"
    );
    let data: serde_json::Value = serde_json::from_str(
        block
            .iter()
            .find_map(|l| l.strip_prefix("data:"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(
        (&data["patient"], &data["rule"], &data["stored"]),
        (&"fallen".into(), &"emergency-fall".into(), &false.into())
    );
    // The next one on the stream is the next notice, not the replay (nor the stale or the
    // rule's, which came before the genuine one).
    let sos = notice(
        &key,
        "gw-n",
        Lane::Emergencies,
        now_ms(),
        &["emergency-sos"],
    );
    assert_eq!(announce(&hub, &sos).1["announced"].as_u64(), Some(1));
    let next = blocks.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        next.iter().any(|l| l.contains("emergency-sos")),
        "announced once: {next:?}"
    );
    let listed = get(&format!("{}/alerts?patient=fallen", hub.root())).json();
    assert_eq!(listed["alerts"], serde_json::json!([]), "nothing stored");
    assert_eq!(metric(&hub, "osler_emergency_notices_total"), 2.0);
}
