//! The hub's batch endpoint refuses what it must, says why, logs it, and stores nothing:
//! forged signatures, unknown and revoked keys, replays, oversized and garbled batches.

mod common;

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
    };
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    seal(&header, &refs, key)
}

fn send(hub: &Hub, body: &[u8]) -> (u16, serde_json::Value) {
    let resp = req("POST", &format!("{}/ingest/batch", hub.root()))
        .set("Content-Type", osler_wire::CONTENT_TYPE)
        .send_bytes(body);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    (
        status,
        serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
    )
}

#[test]
fn only_enrolled_unrevoked_correctly_signed_batches_are_stored_once() {
    let dir = TempDir::new("batch-sec");
    let hub_dir = dir.0.join("hub");
    let log = dir.0.join("hub.log");
    let hub = Hub::start_full(&hub_dir, 0, &[], Some(&log));
    let key = GatewayKey::generate().unwrap();
    let pk = key.public_hex();
    let good = batch(&key, "gw-a", 1, &entries("sec", 20));

    // Unknown gateway.
    let (status, v) = send(&hub, &good);
    assert_eq!(status, 401);
    assert!(v["error"].as_str().unwrap().contains("not enrolled"), "{v}");

    osler(&[
        "hub",
        "enrol",
        "--data",
        hub_dir.to_str().unwrap(),
        "--gateway",
        "gw-a",
        "--key",
        &pk,
    ]);
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
