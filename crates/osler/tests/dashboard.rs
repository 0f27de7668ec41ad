//! The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `scripts/browser`, both installed by `./scripts/test`): sign in with a password and TOTP, an
//! alert raised by a new reading appears on the worklist without a reload, an emergency a
//! gateway announces shows at once (before it is stored), acknowledge and
//! snooze from the row, restart the hub and find the snooze still there, axe-core's WCAG
//! checks on every page, a call logged on the patient page, keyboard navigation. Screenshots
//! and axe reports are kept in `target/browser-artifacts/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A clear message when the browser or the driver is not installed (`./scripts/test` installs
/// both); the test fails rather than skip, so that CI never passes without it.
fn browser_setup() -> std::path::PathBuf {
    let dir = workspace().join("scripts/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no {chromium}: run ./scripts/test, which installs Debian's chromium"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "no playwright-core in scripts/browser/node_modules: run ./scripts/test"
    );
    dir
}

#[test]
fn a_clinician_signs_in_sees_an_alert_arrive_answers_it_and_the_snooze_survives_a_restart() {
    let browser_dir = browser_setup();
    let dir = TempDir::new("dashboard");
    let port = free_port();
    let mut hub = Some(Hub::start_full(&dir.0, port, &[], None));
    let h = hub.as_ref().unwrap();
    for (path, body) in [
        (
            "Patient/p1",
            json!({"resourceType": "Patient", "name": [{"text": "Rosa Quint"}]}),
        ),
        ("Patient/p2", json!({"resourceType": "Patient"})),
        (
            "Practitioner/nurse-1",
            json!({"resourceType": "Practitioner"}),
        ),
        (
            "CareTeam/t1",
            json!({"resourceType": "CareTeam", "status": "active",
                "subject": {"reference": "Patient/p1"},
                "participant": [{"member": {"reference": "Practitioner/nurse-1"}}]}),
        ),
    ] {
        let a = send("PUT", &format!("{}/{path}", h.base), &body.to_string(), &[]);
        assert_eq!(a.status, 201, "{path}: {}", a.text);
    }
    // Readings of both patients: p2 is not on the nurse's teams and must not show.
    for (p, sys, s) in [("p1", 128.0, 3600), ("p2", 200.0, 3600)] {
        let o = blood_pressure(p, sys, 80.0, &seconds_ago(s));
        assert_eq!(
            post(&format!("{}/Observation", h.base), &o.to_string()).status,
            201
        );
    }
    // A gateway, to announce an emergency the way a real one does (signed).
    let gateway_key = osler_wire::GatewayKey::generate().unwrap();
    enrol_key(&dir.0, "gw-ui", &gateway_key);
    let nurse = enrol_person(h, &dir.0, "nurse", "clinician", Some("nurse-1"));
    let secret = nurse
        .secret
        .clone()
        .expect("a clinician has a second factor");
    let artifacts = workspace().join("target/browser-artifacts/dashboard");
    let mut node = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .current_dir(&browser_dir)
        .env("OSLER_ROOT", h.root())
        .env("OSLER_NAME", &nurse.name)
        .env("OSLER_PASSWORD", &nurse.password)
        .env("OSLER_TOTP", base32_encode(&secret))
        .env("OSLER_PATIENT", "p1")
        .env("OSLER_ARTIFACTS", &artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (installed with the machine)");
    let mut to_node = node.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err = node.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        s
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        seen.push(line.clone());
        match line.as_str() {
            "STEP raise" => {
                let h = hub.as_ref().unwrap();
                let o = blood_pressure("p1", 192.0, 85.0, &seconds_ago(1));
                let a = post(&format!("{}/Observation", h.base), &o.to_string());
                assert_eq!(a.status, 201, "{}", a.text);
                writeln!(to_node, "raised").unwrap();
            }
            "STEP delivered" => {
                // The nurse's response moved from notified to delivered when the page got the
                // event (waited for: the page posts it as the event arrives).
                let h = hub.as_ref().unwrap();
                let state = wait_for(Duration::from_secs(10), || {
                    let list = get(&format!("{}/alerts?patient=p1&state=raised", h.root())).json();
                    let id = list["alerts"][0]["id"].as_i64()?;
                    let d = get(&format!("{}/alerts/{id}", h.root())).json();
                    d["responses"]
                        .as_array()?
                        .iter()
                        .find(|r| r["recipient"] == "nurse" && r["state"] == "delivered")
                        .cloned()
                });
                assert!(state.is_some(), "the nurse's response is delivered");
                writeln!(to_node, "checked").unwrap();
            }
            "STEP notice" => {
                let h = hub.as_ref().unwrap();
                let now = now_ms();
                let entry = osler_wire::AlertEntry {
                    p: "p1".into(),
                    rule: "emergency-fall".into(),
                    change: "raised".into(),
                    t: now - 10,
                    v: 1.0,
                    th: 1.0,
                    late: false,
                    d: None,
                }
                .to_json();
                let header = osler_wire::BatchHeader {
                    gateway: "gw-ui".into(),
                    lane: osler_wire::Lane::Emergencies,
                    first_seq: 1,
                    count: 1,
                    sent_ms: now,
                    state: None,
                };
                let body = osler_wire::seal(&header, &[entry.as_str()], &gateway_key);
                let (status, v) = post_envelope(h, "/ingest/notice", &body);
                assert_eq!(status, 200, "{v}");
                writeln!(to_node, "announced").unwrap();
            }
            "STEP restart" => {
                // SIGKILL: nothing is flushed at exit; the snooze must already be on disk.
                hub.take().unwrap().kill9();
                hub = Some(Hub::start_full(&dir.0, port, &[], None));
                writeln!(to_node, "restarted").unwrap();
            }
            "DONE" => break,
            _ => {}
        }
    }
    let status = wait_for(Duration::from_secs(30), || node.try_wait().unwrap());
    if status.is_none() {
        let _ = node.kill();
    }
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()) && seen.iter().any(|l| l == "DONE"),
        "the browser test failed; its output:\n{}\n{stderr}",
        seen.join("\n")
    );
    for step in [
        "SIGNED-IN",
        "STEP delivered",
        "ALERT-LIVE",
        "NOTICE-LIVE",
        "ACKED-AND-SNOOZED",
        "SNOOZE-SURVIVED-RESTART",
    ] {
        assert!(seen.iter().any(|l| l == step), "{step} missing: {seen:?}");
    }
    for page in ["login", "worklist", "inbox", "patient"] {
        assert!(
            seen.iter()
                .any(|l| l.starts_with(&format!("AXE {page} ok"))),
            "no accessibility check of {page}: {seen:?}"
        );
        assert!(artifacts.join(format!("axe-{page}.json")).exists());
    }
    assert!(artifacts.join("2-worklist-live-alert.png").exists());

    // What the browser did is in the store, by the nurse's name, through the API's records.
    let h = hub.as_ref().unwrap();
    let list = get(&format!("{}/alerts?patient=p1&state=raised", h.root())).json();
    let id = list["alerts"][0]["id"].as_i64().expect("p1's open alert");
    let detail = get(&format!("{}/alerts/{id}", h.root())).json();
    let mine = detail["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == "nurse")
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["state"], "acknowledged", "{detail}");
    let snoozes = detail["snoozes"].as_array().unwrap();
    assert!(
        snoozes
            .iter()
            .any(|s| s["by"] == "nurse" && s["active"] == true),
        "{detail}"
    );
    // The call logged on the patient page is in the audit log, as the nurse's.
    let log = osler(&["audit", "export", "--data", dir.0.to_str().unwrap()]);
    let entry = log
        .lines()
        .find(|l| l.contains("/ui/patients/p1/notes"))
        .unwrap_or_else(|| panic!("no audit entry of the note in:\n{log}"));
    assert!(entry.contains("nurse"), "{entry}");
}

fn base32_encode(bytes: &[u8]) -> String {
    osler_auth::totp::base32(bytes)
}
