//! A full outbox over the path devices use (`POST /readings` to a real gateway whose hub is
//! away): what was refused is never acknowledged later by mistake, the resend of a refused
//! request is taken in once there is room, and a critical alert raised while full still
//! reaches the hub.

mod common;

use std::time::Duration;

use common::*;

/// Request `i`: 50 heart-rate readings of one patient at distinct times (about 5 KB of
/// outbox entries, well under the alerts' extra room of 15 KB).
fn request(i: usize) -> String {
    let readings: Vec<String> = (0..50)
        .map(|k| {
            let t = osler_core::Timestamp::utc(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64
                    / 3_600_000
                    * 3_600_000
                    - 3_600_000
                    + (i * 50 + k) as i64 * 1000,
            );
            format!(
                r#"{{"patient":"full-p","device":"w","metric":"heart-rate","value":{},"unit":"/min","time":"{t}"}}"#,
                60 + k % 30
            )
        })
        .collect();
    format!("[{}]", readings.join(","))
}

#[test]
fn a_refused_request_is_never_acknowledged_until_it_is_stored() {
    let dir = TempDir::new("outbox-full");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let port = free_port();
    // The hub is away: nothing listens at its address yet.
    let ca = hub_dir.join("tls/ca.pem");
    let gw = Gateway::start(
        &gw_dir,
        &format!("https://127.0.0.1:{port}"),
        0,
        &[
            "--raw",
            "--outbox-limit",
            "150000",
            "--hub-ca",
            ca.to_str().unwrap(),
        ],
    );
    let url = format!("{}/readings", gw.url);
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..100 {
        let a = post(&url, &request(i));
        match a.status {
            200 => accepted.push(i),
            507 => {
                refused = Some(i);
                break;
            }
            other => panic!("request {i}: HTTP {other}: {}", a.text),
        }
    }
    let refused = refused.expect("the outbox fills within 100 requests of 5 KB");
    assert!(!accepted.is_empty());
    // A device resends what was refused, exactly: still no room, still refused (it was never
    // stored, so it must never be answered as if it had been).
    let again = post(&url, &request(refused));
    assert_eq!(again.status, 507, "{}", again.text);

    // A hypertensive crisis while full: the readings are refused, the edge's alert is kept.
    let t = minutes_ago(3);
    let crisis = format!(
        r#"[{{"patient":"full-crisis","device":"cuff","metric":"blood-pressure","value":[200,110],"unit":"mm[Hg]","time":"{t}"}}]"#
    );
    let c = post(&url, &crisis);
    assert_eq!(c.status, 507, "{}", c.text);
    assert_eq!(gw.status()["outbox"]["alerts"], 1, "{}", gw.status());

    // The hub comes; once the outbox drained, the refused requests go in.
    let hub = Hub::start_full(&hub_dir, port, &[], None);
    assert!(
        wait_for(Duration::from_secs(60), || gw.drained().then_some(())).is_some(),
        "{}",
        gw.status()
    );
    assert_eq!(post(&url, &request(refused)).status, 200);
    assert_eq!(post(&url, &crisis).status, 200);
    accepted.push(refused);
    assert!(
        wait_for(Duration::from_secs(60), || gw.drained().then_some(())).is_some(),
        "{}",
        gw.status()
    );
    assert_eq!(count_for(&hub, "full-p"), accepted.len() as u64 * 50);
    assert_eq!(count_for(&hub, "full-crisis"), 1);
    let open = get(&format!(
        "{}/alerts?patient=full-crisis&state=raised",
        hub.root()
    ))
    .json();
    assert_eq!(open["alerts"].as_array().map(Vec::len), Some(1), "{open}");
}
