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

/// A Mosquitto of this test's own, on a free port, keeping sessions on disk in `dir` (so it
/// can be restarted under the gateway without touching the shared broker on 1883), set up as
/// the README says: with no limit on the messages it queues for a client, so that a burst
/// faster than a busy gateway commits is held, not dropped by the broker (its default keeps
/// 1,000 beyond those in flight: on a loaded machine a 6,000-message burst lost 437 there).
struct Broker {
    child: std::process::Child,
    port: u16,
    conf: std::path::PathBuf,
}

impl Broker {
    fn start(dir: &std::path::Path, port: u16) -> Broker {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\npersistence true\npersistence_location {}/\n",
                dir.display()
            ),
        )
        .unwrap();
        Broker::run(conf, port)
    }

    fn run(conf: std::path::PathBuf, port: u16) -> Broker {
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (installed by scripts/test)");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        })
        .expect("the test's broker listens");
        Broker { child, port, conf }
    }

    /// Stops it the way an operator restarts a broker (SIGTERM: sessions saved), and starts it
    /// again on the same port.
    fn restart(mut self) -> Broker {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap();
        Broker::run(self.conf.clone(), self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `n` QoS 1 messages of one reading each, as fast as Mosquitto's own client sends
/// them (one connection, lines from stdin), for `patients` patients; readings `from..from+n`.
fn burst(port: u16, prefix: &str, from: usize, n: usize, patients: usize) {
    use std::io::Write;
    let base = now_ms_for_test() - 50 * 60_000;
    let mut child = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            &format!("{prefix}/burst/readings"),
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = String::new();
    for i in from..from + n {
        let t = osler_core::Timestamp::utc(base + i as i64 * 100);
        lines.push_str(&format!(
            r#"{{"patient":"burst-{}","device":"w","metric":"heart-rate","value":{},"unit":"/min","time":"{t}"}}"#,
            i % patients,
            60 + i % 40
        ));
        lines.push('\n');
    }
    stdin.write_all(lines.as_bytes()).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn now_ms_for_test() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn stored(hub: &Hub, patients: usize) -> u64 {
    (0..patients)
        .map(|p| count_for(hub, &format!("burst-{p}")))
        .sum()
}

/// Waits until the hub holds `want` burst readings; fails with the gateway's status if not.
fn all_arrive(hub: &Hub, gw: &Gateway, patients: usize, want: u64) {
    let got = wait_for(Duration::from_secs(60), || {
        let n = stored(hub, patients);
        (n >= want).then_some(n)
    });
    assert_eq!(
        got,
        Some(want),
        "the hub holds {} of {want} burst readings; gateway: {}",
        stored(hub, patients),
        gw.status()
    );
}

fn mqtt_connected(gw: &Gateway) -> bool {
    gw.status()["mqtt"]["connected"] == true
}

#[test]
fn mqtt_bursts_restarts_and_dropped_connections_lose_nothing() {
    let dir = TempDir::new("mqtt-burst");
    let (hub_dir, gw_dir, broker_dir) = (dir.0.join("hub"), dir.0.join("gw"), dir.0.join("mq"));
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = Broker::start(&broker_dir, free_port());
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    let prefix = "osler-burst";
    let gw = Gateway::start(
        &gw_dir,
        &hub.root(),
        0,
        &[
            "--raw",
            "--mqtt",
            &format!("127.0.0.1:{}", broker.port),
            "--mqtt-topic",
            &format!("{prefix}/+/readings"),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(10), || mqtt_connected(&gw)
            .then_some(()))
        .is_some(),
        "the gateway never connected: {}",
        gw.status()
    );
    let patients = 10;
    // Far beyond the old client's channel (100), the storer's batch and the receive window.
    burst(broker.port, prefix, 0, 12_000, patients);
    all_arrive(&hub, &gw, patients, 12_000);

    // The broker restarts under the gateway: it reconnects by itself and takes the next burst.
    broker = broker.restart();
    assert!(
        wait_for(Duration::from_secs(20), || mqtt_connected(&gw)
            .then_some(()))
        .is_some(),
        "the gateway did not reconnect after a broker restart: {}",
        gw.status()
    );
    burst(broker.port, prefix, 12_000, 6_000, patients);
    all_arrive(&hub, &gw, patients, 18_000);

    // The connection is dropped (another client takes over the gateway's session, as a
    // misconfigured duplicate would); messages published meanwhile wait in the broker's
    // session and arrive after the gateway reconnects.
    let id = format!("osler-{}", gw.status()["gateway"].as_str().unwrap());
    let status = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-i",
            &id,
            // A persistent session, as the gateway's: taking it over keeps its messages.
            "-c",
            "-t",
            "osler-burst/none",
            "-W",
            "1",
        ])
        .status()
        .unwrap();
    // -W ends it with a timeout status; what matters is that it connected (and was let go).
    assert!(status.code().is_some());
    burst(broker.port, prefix, 18_000, 800, patients);
    assert!(
        wait_for(Duration::from_secs(20), || mqtt_connected(&gw)
            .then_some(()))
        .is_some(),
        "the gateway did not reconnect after its connection was dropped: {}",
        gw.status()
    );
    all_arrive(&hub, &gw, patients, 18_800);
    // Each reading once: the total is the number of distinct readings sent.
    assert_eq!(stored(&hub, patients), 18_800);
    // Received counts the broker's redeliveries of messages whose acknowledgement was cut off
    // with the connection, so at least every message.
    let s = gw.status();
    assert!(s["ingest"]["received"].as_u64().unwrap() >= 18_800, "{s}");
}

/// Over MQTT too, a device that names only its serial number has its readings attributed to
/// the patient whose DeviceUseStatement covers their time, and an unassigned one is held.
#[test]
fn mqtt_readings_of_a_device_that_knows_only_itself_are_attributed() {
    broker_up();
    let dir = TempDir::new("mqtt-attribution");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    let hub = Hub::start(&hub_dir);
    let put = |path: &str, body: serde_json::Value| {
        let a = send(
            "PUT",
            &format!("{}/{path}", hub.base),
            &body.to_string(),
            &[],
        );
        assert!(a.status < 300, "{path}: {}", a.text);
    };
    put(
        "Patient/mq-anna",
        serde_json::json!({"resourceType": "Patient"}),
    );
    put(
        "Device/mq-watch",
        serde_json::json!({"resourceType": "Device", "serialNumber": "MQ-SN-1"}),
    );
    put(
        "DeviceUseStatement/mq-u1",
        serde_json::json!({"resourceType": "DeviceUseStatement", "status": "active",
        "subject": {"reference": "Patient/mq-anna"}, "device": {"reference": "Device/mq-watch"},
        "timingPeriod": {"start": minutes_ago(60)}}),
    );
    let prefix = format!("osler-attr-{}", std::process::id());
    enrol(&hub_dir, &gw_dir);
    let gw = Gateway::start(
        &gw_dir,
        &hub.root(),
        0,
        &[
            "--mqtt",
            BROKER,
            "--mqtt-topic",
            &format!("{prefix}/+/readings"),
        ],
    );
    let reading = |serial: &str, at: &str| {
        format!(
            r#"{{"device":"{serial}","metric":"heart-rate","value":71,"unit":"/min","time":"{at}"}}"#
        )
    };
    let at = minutes_ago(2);
    let stray_at = minutes_ago(3);
    // Until the subscription is live, the same reading again (a resend is stored once).
    let arrived = wait_for(Duration::from_secs(20), || {
        publish(
            &format!("{prefix}/MQ-SN-1/readings"),
            &reading("MQ-SN-1", &at),
        );
        std::thread::sleep(Duration::from_millis(200));
        (count_for(&hub, "mq-anna") > 0).then_some(())
    });
    assert!(arrived.is_some(), "{}", gw.status());
    publish(
        &format!("{prefix}/MQ-SN-9/readings"),
        &reading("MQ-SN-9", &stray_at),
    );
    let held = wait_for(Duration::from_secs(20), || {
        let h = get(&format!("{}/registry/held", hub.root())).json();
        (h["held"].as_array().unwrap().len() == 1).then_some(h)
    });
    assert!(held.is_some(), "{}", gw.status());
    assert_eq!(count_for(&hub, "mq-anna"), 1);
}

#[test]
fn the_gateway_reaches_its_broker_over_tls_and_refuses_one_it_does_not_trust() {
    let dir = TempDir::new("mqtt-tls");
    // A CA and a server certificate for 127.0.0.1 (made the way a hub makes its own), and
    // another CA the broker's certificate is not from.
    let (ours, theirs) = (dir.0.join("ours"), dir.0.join("theirs"));
    init_hub(&ours);
    init_hub(&theirs);
    let certs = dir.0.join("broker");
    std::fs::create_dir_all(&certs).unwrap();
    // Readable by the broker, which drops root for its own user before it loads them.
    for f in ["ca.pem", "server.pem", "server-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::copy(ours.join("tls").join(f), certs.join(f)).unwrap();
        std::fs::set_permissions(certs.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let port = free_port();
    let conf = certs.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server-key.pem\n",
            certs.display()
        ),
    )
    .unwrap();
    let _broker = Broker::run(conf, port);
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let hub = Hub::start(&hub_dir);
    let broker = format!("127.0.0.1:{port}");
    let ca = certs.join("ca.pem");
    let gw = Gateway::start(
        &gw_dir,
        &hub.root(),
        0,
        &[
            "--raw",
            "--mqtt",
            &broker,
            "--mqtt-topic",
            "tls/+/readings",
            "--mqtt-ca",
            ca.to_str().unwrap(),
        ],
    );
    let up = wait_for(Duration::from_secs(20), || {
        (gw.status()["mqtt"]["connected"] == true).then_some(())
    });
    assert!(up.is_some(), "{}", gw.status());
    let reading = format!(
        r#"{{"patient":"mqtt-tls","device":"w1","metric":"heart-rate","value":66,"unit":"/min","time":"{}"}}"#,
        minutes_ago(1)
    );
    let ok = std::process::Command::new("mosquitto_pub")
        .args([
            "--cafile",
            ca.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "tls/w1/readings",
            "-m",
            &reading,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub over TLS");
    assert!(
        wait_for(Duration::from_secs(20), || (count_for(&hub, "mqtt-tls")
            == 1)
            .then_some(()))
        .is_some(),
        "the reading crossed TLS to the gateway and reached the hub"
    );
    // A gateway told to trust another CA does not connect, and says why.
    let gw2 = Gateway::start(
        &dir.0.join("gw2"),
        &hub.root(),
        0,
        &[
            "--mqtt",
            &broker,
            "--mqtt-ca",
            theirs.join("tls/ca.pem").to_str().unwrap(),
        ],
    );
    let refused = wait_for(Duration::from_secs(20), || {
        let s = gw2.status();
        let e = s["mqtt"]["last_error"].as_str()?.to_owned();
        (s["mqtt"]["connected"] != true).then_some(e)
    })
    .expect("the untrusted broker is refused");
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("Tls"),
        "{refused}"
    );
}
