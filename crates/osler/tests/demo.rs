//! `osler demo` as a new user runs it: it prints its URLs, alerts show up, FHIR answers, and
//! Ctrl-C (SIGINT) stops everything cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Kills the demo (SIGKILL; its children die with it) if the test ends early, so that a
/// failed assertion leaves no demo running on the machine.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

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
    let _guard = KillOnDrop(child.id());
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

    // The commands it prints for a newcomer work exactly as printed: a token, then curl over
    // TLS with the hub's CA.
    assert!(base.starts_with("https://"), "{base}");
    let printed = |start: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.trim_start().starts_with(start))
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| panic!("the demo prints a line starting {start:?}"))
    };
    let script = format!("{}\n{}\n", printed("TOKEN=$("), printed("curl --cacert"));
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(b["resourceType"], "Bundle", "{b}");
    assert!(b["total"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(b["entry"][0]["resource"]["resourceType"], "Observation");
    // Without the token the same request is refused.
    let bare = Command::new("sh")
        .args([
            "-c",
            &printed("curl --cacert").replace("-H \"Authorization: Bearer $TOKEN\" ", ""),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bare.stdout).contains("\"security\""));
    assert_eq!(get(&status_url).json()["upload"]["hub_reachable"], true);

    // The dashboard: the printed sign-in link signs the demo clinician in once, and their
    // worklist holds the demo's patients.
    let dashboard = find("Dashboard:").expect("the dashboard's address");
    assert!(dashboard.ends_with("/ui/worklist"), "{dashboard}");
    let link = find("Sign in:").expect("a sign-in link");
    let link = link.split_whitespace().next().unwrap().to_owned();
    let ca = std::fs::read_to_string(find("CA certificate:").expect("the CA file")).unwrap();
    let no_redirects = ureq::AgentBuilder::new()
        .tls_config(osler_tls::client_config(&ca).unwrap())
        .redirects(0)
        .build();
    let first = answer(no_redirects.get(&link).call());
    assert_eq!(first.status, 303, "{}", first.text);
    let session = first
        .headers
        .iter()
        .find_map(|(k, v)| {
            (k == "set-cookie")
                .then(|| v.strip_prefix("osler_session="))
                .flatten()
        })
        .map(|v| v.split(';').next().unwrap().to_owned())
        .expect("a session cookie");
    let worklist = answer(
        no_redirects
            .get(&dashboard)
            .set("Cookie", &format!("osler_session={session}"))
            .call(),
    );
    assert_eq!(worklist.status, 200, "{}", worklist.text);
    assert!(worklist.text.contains("row-sim-p0"), "the demo's patients");
    assert!(worklist.text.contains("demo-clinician (clinician)"));
    let again = answer(no_redirects.get(&link).call());
    assert_ne!(again.status, 303, "the link works once");

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
        .trim_start_matches("https://")
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

#[test]
fn a_demo_killed_with_sigkill_leaves_nothing_running() {
    let dir = TempDir::new("demo-kill");
    let mut child = Command::new(osler_bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut hub, mut gw, mut logs) = (None, None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (hub.is_none() || gw.is_none() || logs.is_none()) && std::time::Instant::now() < deadline
    {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        let line = line.trim().to_owned();
        let value = |p: &str| line.strip_prefix(p).map(|v| v.trim().to_owned());
        hub = hub.or(value("FHIR base:"));
        gw = gw.or(value("Gateway status:"));
        logs = logs.or(value("Logs:"));
    }
    let addr = |url: &str| {
        url.trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    let (hub, gw) = (
        addr(&hub.expect("the demo prints its FHIR base")),
        addr(&gw.expect("the demo prints the gateway's status URL")),
    );
    // The children's logs go to files, and the demo says where.
    assert!(
        logs.expect("the demo says where the logs are")
            .contains("hub.log")
    );
    assert!(std::net::TcpStream::connect(&hub).is_ok());
    child.kill().unwrap();
    child.wait().unwrap();
    for (what, a) in [("hub", &hub), ("gateway", &gw)] {
        assert!(
            wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(a)
                .is_err()
                .then_some(()))
            .is_some(),
            "the demo's {what} outlived a SIGKILL of the demo ({a} still answers)"
        );
    }
    assert!(dir.0.join("hub.log").exists() && dir.0.join("gateway.log").exists());
}
