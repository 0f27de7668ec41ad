//! The MQTT source against the real Mosquitto broker on 127.0.0.1:1883 (`scripts/test` starts
//! or installs it when it is missing): sim publishes, the gateway subscribes, the hub stores;
//! invalid readings land in the gateway's quarantine with their reason.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const BROKER: &str = "127.0.0.1:1883";

fn broker_up() {
    assert!(
        std::net::TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(2))
            .is_ok(),
        "no MQTT broker on {BROKER}: run ./scripts/test, which starts Mosquitto"
    );
}

#[test]
fn mqtt_readings_reach_the_hub_and_invalid_ones_are_quarantined() {
    broker_up();
    let dir = TempDir::new("mqtt");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let hub = Hub::start(&hub_dir);
    // A topic prefix of our own so that parallel runs and other users of the broker do not mix.
    let prefix = format!("osler-test-{}", std::process::id());
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(
        &gw_dir,
        &hub.root(),
        0,
        &[
            // Every reading is counted at the hub: transport, not edge processing, is tested.
            "--raw",
            "--mqtt",
            BROKER,
            "--mqtt-topic",
            &format!("{prefix}/+/readings"),
        ],
    );
    // The subscription is made on connect, which takes a moment.
    let connected = wait_for(Duration::from_secs(10), || {
        // Publish a probe reading until it arrives: proves the subscription is live.
        let probe = format!(
            r#"{{"patient":"probe","device":"w","metric":"heart-rate","value":70,"unit":"/min","time":"{}"}}"#,
            minutes_ago(2)
        );
        publish(&format!("{prefix}/probe/readings"), &probe);
        std::thread::sleep(Duration::from_millis(200));
        (gw.status()["ingest"]["received"].as_u64().unwrap() > 0).then_some(())
    });
    assert!(
        connected.is_some(),
        "the gateway never received an MQTT message: {}",
        gw.status()
    );

    let sent_file = dir.0.join("sent.jsonl");
    let summary = finish_sim(spawn_sim(&[
        "--mqtt",
        BROKER,
        "--mqtt-prefix",
        &prefix,
        "--patients",
        "4",
        "--duration",
        "1h",
        "--seed",
        "3",
        "--sent",
        sent_file.to_str().unwrap(),
    ]));
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap() as usize,
        sent.len()
    );

    // Invalid: an impossible value, and a message that is not JSON at all.
    publish(
        &format!("{prefix}/bad/readings"),
        &format!(
            r#"[{{"patient":"bad","device":"w","metric":"spo2","value":140,"unit":"%","time":"{}"}}]"#,
            minutes_ago(1)
        ),
    );
    publish(&format!("{prefix}/bad/readings"), "this is not json");

    let want: HashSet<String> = sent.iter().map(sent_key).collect();
    let done = wait_for(Duration::from_secs(60), || {
        let got: usize = (0..4)
            .map(|p| count_for(&hub, &format!("sim-p{p}")) as usize)
            .sum();
        (got >= want.len()).then_some(got)
    });
    assert_eq!(
        done,
        Some(want.len()),
        "hub did not receive every MQTT reading: {}",
        gw.status()
    );
    let mut got = HashSet::new();
    for p in 0..4 {
        for o in all_observations(&hub.base, &format!("sim-p{p}")) {
            assert!(
                got.insert(observation_key(&o)),
                "stored twice: {}",
                observation_key(&o)
            );
        }
    }
    assert_eq!(got, want);

    let q = wait_for(Duration::from_secs(10), || {
        let items = get(&format!("{}/quarantine", gw.url)).json()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (items.len() >= 2).then_some(items)
    })
    .expect("invalid MQTT readings are quarantined");
    assert!(q.iter().any(
        |i| i["reason"].as_str().unwrap().contains("plausible range")
            && i["payload"].as_str().unwrap().contains("140")
    ));
    assert!(
        q.iter()
            .any(|i| i["reason"].as_str().unwrap().contains("not valid JSON")
                && i["payload"] == "this is not json")
    );
    assert!(q.iter().all(|i| {
        i["source"]
            .as_str()
            .unwrap()
            .starts_with(&format!("mqtt {prefix}/bad"))
    }));
    assert_eq!(count_for(&hub, "bad"), 0);
}

/// Publishes one QoS 1 message with the broker's own client, waiting for the broker's ack.
fn publish(topic: &str, payload: &str) {
    let (host, port) = BROKER.split_once(':').unwrap();
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-h", host, "-p", port, "-q", "1", "-t", topic, "-m", payload,
        ])
        .status()
        .expect("mosquitto_pub (installed with Mosquitto by scripts/test)");
    assert!(status.success());
}
