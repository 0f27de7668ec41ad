//! sim → gateway → hub with the real binaries: exactly once, through outages and `kill -9`.
//!
//! The gateway runs with `--raw` here: these tests count every reading end to end (the
//! transport's exactly-once promise). The edge's own crash and fidelity tests are in `edge.rs`.

mod common;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Waits until the hub stores `expected` readings and the gateway's outbox is empty.
fn wait_delivered(hub: &Hub, gw: &Gateway, expected: u64, timeout: Duration) {
    let done = wait_for(timeout, || {
        let stored = metric(hub, "osler_readings_stored") as u64;
        let pending = gw.status()["outbox"]["readings"].as_u64().unwrap();
        (stored >= expected && pending == 0).then_some(())
    });
    assert!(
        done.is_some(),
        "not delivered in {timeout:?}: hub has {}, expected {expected}; gateway {}",
        metric(hub, "osler_readings_stored"),
        gw.status()
    );
}

/// Every reading the simulator had acknowledged is at the hub exactly once, and the hub holds
/// nothing else for these patients.
fn assert_exactly_once(hub: &Hub, sent: &[Value], patients: usize) {
    let mut want: HashMap<String, usize> = HashMap::new();
    for r in sent {
        *want.entry(sent_key(r)).or_default() += 1;
    }
    assert!(
        want.values().all(|n| *n == 1),
        "the simulator sent a reading twice"
    );
    let mut got: HashMap<String, usize> = HashMap::new();
    for p in 0..patients {
        for o in all_observations(&hub.base, &format!("sim-p{p}")) {
            *got.entry(observation_key(&o)).or_default() += 1;
        }
    }
    let missing: Vec<&String> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged readings missing, e.g. {missing:?}",
        want.keys().filter(|k| !got.contains_key(*k)).count()
    );
    let dup: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dup.is_empty(), "stored more than once: {dup:?}");
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "stored but never sent: {extra:?}");
}

#[test]
fn sim_to_hub_every_reading_exactly_once() {
    let dir = TempDir::new("e2e");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw"]);
    let sent_file = dir.0.join("sent.jsonl");
    let truth = dir.0.join("truth.jsonl");
    let summary = finish_sim(spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "8",
        "--duration",
        "3h",
        "--seed",
        "5",
        "--sent",
        sent_file.to_str().unwrap(),
        "--ground-truth",
        truth.to_str().unwrap(),
    ]));
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap() as usize,
        sent.len()
    );
    assert!(sent.len() > 10_000, "{summary}");
    assert_eq!(read_jsonl(&truth).len(), 2);
    wait_delivered(&hub, &gw, sent.len() as u64, Duration::from_secs(60));
    assert_exactly_once(&hub, &sent, 8);
    // The readings became FHIR Observations with their codes.
    let one = &all_observations(&hub.base, "sim-p0")[0];
    assert_eq!(one["resourceType"], "Observation");
    assert!(
        one["device"]["reference"]
            .as_str()
            .unwrap()
            .starts_with("Device/sim-p0-")
    );
    let status = gw.status();
    assert_eq!(status["upload"]["hub_reachable"], true);
    assert_eq!(
        status["upload"]["entries"].as_u64().unwrap() as usize,
        sent.len()
    );
}

#[test]
fn gateway_rejects_invalid_readings_clearly() {
    let dir = TempDir::new("gw-invalid");
    let hub = Hub::start(&dir.0.join("hub"));
    let gw = Gateway::start(&dir.0.join("gw"), &hub.root(), 0, &["--raw"]);
    let url = format!("{}/readings", gw.url);
    let now = minutes_ago(1);
    let body = format!(
        r#"[{{"patient":"v1","device":"w","metric":"heart-rate","value":72,"unit":"/min","time":"{now}"}},
            {{"patient":"v1","device":"w","metric":"heart-rate","value":720,"unit":"/min","time":"{now}"}},
            {{"patient":"v1","device":"w","metric":"mood","value":1,"unit":"1","time":"{now}"}}]"#
    );
    let a = post(&url, &body);
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    assert_eq!(v["accepted"], 1);
    let reasons: Vec<&str> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].contains("plausible range") && reasons[1].contains("unknown metric"),
        "{reasons:?}"
    );
    let a = post(
        &url,
        r#"{"patient":"v1","metric":"spo2","value":97,"unit":"%","time":"yesterday"}"#,
    );
    assert_eq!(a.status, 422, "{}", a.text);
    assert_eq!(post(&url, "{not json").status, 400);
}

#[test]
fn hub_outage_under_load_then_everything_once() {
    let dir = TempDir::new("outage");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let port = free_port();
    let hub = Hub::start_full(&hub_dir, port, &[], None);
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw"]);
    let sent_file = dir.0.join("sent.jsonl");
    let sim = spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "6",
        "--duration",
        "2h",
        "--seed",
        "9",
        "--rate",
        "6000",
        "--sent",
        sent_file.to_str().unwrap(),
    ]);
    // Let some readings through, then take the hub away while the load goes on.
    assert!(
        wait_for(Duration::from_secs(20), || (metric(
            &hub,
            "osler_readings_stored"
        ) > 1000.0)
            .then_some(()))
        .is_some()
    );
    hub.kill9();
    let backlog = wait_for(Duration::from_secs(20), || {
        let s = gw.status();
        (s["outbox"]["readings"].as_u64().unwrap() > 2000 && s["upload"]["hub_reachable"] == false)
            .then_some(s)
    })
    .expect("the gateway keeps readings while the hub is away");
    assert!(backlog["outbox"]["oldest_unsent_age_s"].as_f64().unwrap() > 0.0);
    assert!(
        backlog["upload"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    let hub = Hub::start_full(&hub_dir, port, &[], None);
    let summary = finish_sim(sim);
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap() as usize,
        sent.len()
    );
    wait_delivered(&hub, &gw, sent.len() as u64, Duration::from_secs(60));
    assert_exactly_once(&hub, &sent, 6);
    // In order: every batch after the outage started right after the last one committed.
    assert_eq!(metric(&hub, "osler_gateway_sequence_gaps_total"), 0.0);
}

#[test]
fn gateway_kill_9_mid_stream_loses_and_duplicates_nothing() {
    let dir = TempDir::new("gw-kill9");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    let port = free_port();
    let mut gw = Gateway::start(&gw_dir, &hub.root(), port, &["--raw"]);
    let sent_file = dir.0.join("sent.jsonl");
    let sim = spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "6",
        "--duration",
        "2h",
        "--seed",
        "13",
        "--rate",
        "5000",
        "--batch",
        "100",
        "--sent",
        sent_file.to_str().unwrap(),
    ]);
    for round in 0..4 {
        let before = gw.status()["ingest"]["received"].as_u64().unwrap();
        let grew = wait_for(Duration::from_secs(20), || {
            (gw.status()["ingest"]["received"].as_u64().unwrap() > before + 800).then_some(())
        });
        assert!(
            grew.is_some(),
            "round {round}: the load did not reach the gateway"
        );
        gw.kill9();
        gw = Gateway::start(&gw_dir, &hub.root(), port, &["--raw"]);
    }
    let summary = finish_sim(sim);
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap() as usize,
        sent.len()
    );
    assert_eq!(summary["rejected"], 0);
    wait_delivered(&hub, &gw, sent.len() as u64, Duration::from_secs(60));
    assert_exactly_once(&hub, &sent, 6);
}

#[test]
fn hub_kill_9_between_receiving_and_acknowledging() {
    let dir = TempDir::new("hub-kill9");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let port = free_port();
    let mut hub = Hub::start_full(&hub_dir, port, &[], None);
    enrol(&hub_dir, &gw_dir);
    // Small batches make many commits, so the kills land between receipt and answer.
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw", "--max-batch", "50"]);
    let sent_file = dir.0.join("sent.jsonl");
    let sim = spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "6",
        "--duration",
        "2h",
        "--seed",
        "17",
        "--rate",
        "6000",
        "--sent",
        sent_file.to_str().unwrap(),
    ]);
    for round in 0..4 {
        let before = metric(&hub, "osler_readings_stored");
        let grew = wait_for(Duration::from_secs(20), || {
            (metric(&hub, "osler_readings_stored") > before + 500.0).then_some(())
        });
        assert!(grew.is_some(), "round {round}: nothing reached the hub");
        hub.kill9();
        hub = Hub::start_full(&hub_dir, port, &[], None);
    }
    let summary = finish_sim(sim);
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap() as usize,
        sent.len()
    );
    wait_delivered(&hub, &gw, sent.len() as u64, Duration::from_secs(60));
    assert_exactly_once(&hub, &sent, 6);
}

/// Readings for the torn-write test: `n` heart rates of one patient, a second apart.
fn readings_json(patient: &str, n: usize, minutes_back: i64) -> String {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - minutes_back * 60;
    let items: Vec<String> = (0..n)
        .map(|i| {
            let t = osler_core::Timestamp::utc((base + i as i64) * 1000);
            format!(r#"{{"patient":"{patient}","device":"w","metric":"heart-rate","value":{},"unit":"/min","time":"{t}"}}"#, 60 + i % 40)
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn a_write_torn_by_a_crash_is_recovered_without_losing_what_was_acknowledged() {
    let dir = TempDir::new("torn-cut");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let dead_hub = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&gw_dir, &dead_hub, 0, &["--raw"]);
    let wal = gw_dir.join("outbox.db-wal");
    let a = post(
        &format!("{}/readings", gw.url),
        &readings_json("torn-a", 200, 30),
    );
    assert_eq!(a.json()["accepted"], 200);
    let s1 = std::fs::metadata(&wal).unwrap().len();
    let b = post(
        &format!("{}/readings", gw.url),
        &readings_json("torn-b", 200, 20),
    );
    assert_eq!(b.json()["accepted"], 200);
    let s2 = std::fs::metadata(&wal).unwrap().len();
    assert!(
        s2 > s1,
        "the second write appended to the WAL ({s1} -> {s2})"
    );
    gw.kill9();
    // The disk as a crash in the middle of the second write would leave it: the file cut
    // half-way through that write. In that world the second write was never acknowledged;
    // the first one was, and must survive.
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(s1 + (s2 - s1) / 2).unwrap();
    drop(f);
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw"]);
    wait_delivered(&hub, &gw, 200, Duration::from_secs(30));
    assert_eq!(count_for(&hub, "torn-a"), 200);
    assert_eq!(
        count_for(&hub, "torn-b"),
        0,
        "a torn write must not half-appear"
    );
    assert_eq!(gw.status()["outbox"]["readings"], 0);
}

#[test]
fn a_torn_outbox_tail_is_recovered_and_a_damaged_file_set_aside() {
    let dir = TempDir::new("torn");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    // First the gateway has no hub (nothing listens on this port): readings pile up.
    let dead_hub = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&gw_dir, &dead_hub, 0, &["--raw"]);
    let sent_file = dir.0.join("sent.jsonl");
    finish_sim(spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "3",
        "--duration",
        "1h",
        "--seed",
        "21",
        "--sent",
        sent_file.to_str().unwrap(),
    ]));
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        gw.status()["outbox"]["readings"].as_u64().unwrap() as usize,
        sent.len()
    );
    gw.kill9();
    // A torn tail: half a frame's worth of bytes after the last commit, as a crash in the
    // middle of writing the next transaction leaves it.
    let wal = gw_dir.join("outbox.db-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    let tail: Vec<u8> = bytes[bytes.len().saturating_sub(3000)..bytes.len() - 1000].to_vec();
    bytes.extend_from_slice(&tail);
    std::fs::write(&wal, &bytes).unwrap();
    // Restarted with a real hub, it recovers by itself and delivers everything it acknowledged.
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw"]);
    wait_delivered(&hub, &gw, sent.len() as u64, Duration::from_secs(60));
    assert_exactly_once(&hub, &sent, 3);
    gw.kill9();

    // A file damaged beyond repair (its header overwritten) does not make a crash loop: the
    // gateway moves it aside, says so in /status, and works on.
    let db = gw_dir.join("outbox.db");
    let _ = std::fs::remove_file(gw_dir.join("outbox.db-wal"));
    let _ = std::fs::remove_file(gw_dir.join("outbox.db-shm"));
    let mut bytes = std::fs::read(&db).unwrap();
    for b in bytes.iter_mut().take(100) {
        *b = 0x5a;
    }
    std::fs::write(&db, &bytes).unwrap();
    let gw = Gateway::start(&gw_dir, &hub.root(), 0, &["--raw"]);
    let status = gw.status();
    let aside = status["outbox"]["recovered_from_damaged_file"]
        .as_str()
        .expect("recovery reported");
    assert!(Path::new(aside).exists(), "{aside}");
    let a = post(
        &format!("{}/readings", gw.url),
        &format!(
            r#"{{"patient":"after","device":"w","metric":"heart-rate","value":70,"unit":"/min","time":"{}"}}"#,
            minutes_ago(1)
        ),
    );
    assert_eq!(a.status, 200, "{}", a.text);
}
