//! `osler demo` as a new user runs it: it prints its URLs, alerts show up, FHIR answers, and
//! Ctrl-C (SIGINT) stops everything cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

#[test]
fn demo_shows_alerts_serves_fhir_and_stops_on_sigint() {
    let dir = TempDir::new("demo");
    let mut child = Command::new(osler_bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(&dir.0)
        .env("OSLER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let find = |prefix: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    let base = wait_for(Duration::from_secs(30), || find("FHIR base:"))
        .expect("the demo prints its FHIR base URL");
    let status_url = find("Gateway status:").expect("gateway status URL");
    assert!(find("Alert stream:").unwrap().ends_with("/alerts/stream"));

    // Within a minute, an alert line.
    let alert = wait_for(Duration::from_secs(60), || {
        lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("RAISED"))
            .cloned()
    });
    assert!(
        alert.is_some(),
        "no alert within a minute; output:\n{}",
        lines.lock().unwrap().join("\n")
    );

    // FHIR Observations from its base, and a live gateway.
    let a = get(&format!("{base}/Observation?patient=sim-p0&_count=5"));
    assert_eq!(a.status, 200);
    let b = a.json();
    assert!(b["total"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(b["entry"][0]["resource"]["resourceType"], "Observation");
    assert_eq!(get(&status_url).json()["upload"]["hub_reachable"], true);

    // Ctrl-C.
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = wait_for(Duration::from_secs(40), || child.try_wait().unwrap())
        .expect("the demo stops after SIGINT");
    assert!(status.success(), "demo exited with {status}");
    assert!(
        wait_for(Duration::from_secs(5), || lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Stopped cleanly"))
            .then_some(()))
        .is_some()
    );
    // Nothing is left listening.
    let port = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        std::net::TcpStream::connect(&port).is_err(),
        "the hub is still running"
    );
    // --data kept the data.
    assert!(dir.0.join("hub").join("hub.db").exists());
}
