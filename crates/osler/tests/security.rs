//! Access control and transport, against a real hub over TLS: every route's policy, the
//! access matrix (callers × routes × inside/outside the compartment), and the attacks the
//! hub must turn away.

mod common;

use std::time::Duration;

use common::*;
use osler_auth::{Interaction, Policy};
use serde_json::{Value, json};

/// A route's path with its parameters filled: `{patient}` is `patient`, every other
/// parameter a made-up id.
fn concrete(path: &str, patient: &str) -> String {
    path.replace("{patient}", patient)
        .replace("{rule}", "hr-high")
        .replace("{vid}", "1")
        .replace("{id}", patient)
}

fn call(method: &str, url: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let body = match method {
        "POST" | "PUT" => "{}",
        _ => "",
    };
    send(
        method,
        url,
        body,
        &[("Authorization", auth.as_deref().unwrap_or(""))],
    )
}

/// A dashboard page as a browser asks it, without following where it sends the browser.
fn call_page(method: &str, url: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let req = request_on(
        &agent_without_redirects(),
        method,
        url,
        &[("Authorization", auth.as_deref().unwrap_or(""))],
    );
    answer(match method {
        "POST" => req.send_string(""),
        _ => req.call(),
    })
}

/// The hub with two patients, each with a reading, a practitioner, and tokens:
/// everything (`system/*.cruds`), only readings (`system/Observation.rs`), and patient p1's
/// own record read-only (`patient/*.rs`) and read-write (`patient/*.cruds`).
struct World {
    _dir: TempDir,
    hub: Hub,
    wide: String,
    readings_only: String,
    p1_read: String,
    p1_write: String,
    /// People, logged in: an administrator, a clinician whose care team looks after p1, and
    /// p1 themselves.
    admin: String,
    clinician: String,
    patient: String,
    /// The id of p2's reading.
    p2_reading: String,
}

fn world() -> World {
    let dir = TempDir::new("security");
    let hub = Hub::start(&dir.0);
    let b = &hub.base;
    for p in ["p1", "p2"] {
        let a = send(
            "PUT",
            &format!("{b}/Patient/{p}"),
            &json!({"resourceType": "Patient", "id": p}).to_string(),
            &[],
        );
        assert_eq!(a.status, 201, "{}", a.text);
    }
    let mut p2_reading = String::new();
    for (p, hr) in [("p1", 71.0), ("p2", 180.0)] {
        let o = observation(p, "8867-4", hr, "/min", &minutes_ago(5));
        let a = post(&format!("{b}/Observation"), &o.to_string());
        assert_eq!(a.status, 201, "{}", a.text);
        if p == "p2" {
            p2_reading = a.json()["id"].as_str().unwrap().to_owned();
        }
    }
    // A hypertensive crisis (one reading is enough) raises an alert for p2.
    let bp = blood_pressure("p2", 196.0, 104.0, &minutes_ago(4));
    assert_eq!(
        post(&format!("{b}/Observation"), &bp.to_string()).status,
        201
    );
    let d = &dir.0;
    for (path, body) in [
        ("Practitioner/doc", json!({"resourceType": "Practitioner"})),
        (
            "CareTeam/t1",
            json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": "Practitioner/doc"}}]}),
        ),
    ] {
        assert_eq!(
            send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]).status,
            201
        );
    }
    let person = |name: &str, role: &str, of: Option<&str>| {
        let p = enrol_person(&hub, d, name, role, of);
        login(&hub, &p)["access_token"].as_str().unwrap().to_owned()
    };
    let (admin, clinician, patient) = (
        person("ada", "admin", None),
        person("dr-doc", "clinician", Some("doc")),
        person("pat-one", "patient", Some("p1")),
    );
    World {
        admin,
        clinician,
        patient,
        wide: hub.access.token.clone(),
        readings_only: token(d, "system/Observation.rs", None),
        p1_read: token(d, "patient/*.rs", Some("p1")),
        p1_write: token(d, "patient/*.cruds", Some("p1")),
        p2_reading,
        hub,
        _dir: dir,
    }
}

/// What a caller must get from a route, written down: the rules that decide it (scope ∩ role
/// ∩ compartment) restated independently of the hub's code.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Expect {
    /// 401 with a Bearer challenge.
    Unauthenticated,
    /// 403, code security.
    Forbidden,
    /// Past the guard: whatever the handler says about the request itself (never 401/403).
    Through,
}

fn expected(caller: &str, policy: Policy) -> Expect {
    use Expect::*;
    let (resource, interaction, everyone) = match policy {
        Policy::Public | Policy::SignedBatch => return Through,
        Policy::PerEntry => {
            return if caller == "anonymous" {
                Unauthenticated
            } else {
                Through
            };
        }
        Policy::Resource(r, i) => (r, i, false),
        Policy::Everyone(r, i) => (r, i, true),
    };
    let reads = matches!(interaction, Interaction::Read | Interaction::Search);
    let writes_clinical = matches!(
        resource,
        "Observation" | "Flag" | "CarePlan" | "Communication"
    );
    match caller {
        "anonymous" => Unauthenticated,
        // An administrator may do everything, and read (only read) the audit log.
        "admin" => Through,
        // Only administrators read the audit log; programs never.
        _ if resource == "AuditEvent" => Forbidden,
        "wide" => Through,
        // People other than administrators see only their own compartment.
        "clinician" | "patient" if everyone => Forbidden,
        // A clinician acts on readings, alerts and plans, and reads the registry.
        "clinician" => {
            if reads || writes_clinical {
                Through
            } else {
                Forbidden
            }
        }
        // A patient reads their own record and may add readings to it.
        "patient" => {
            if (reads && resource != "OslerOperations")
                || (resource == "Observation" && interaction == Interaction::Create)
            {
                Through
            } else {
                Forbidden
            }
        }
        "readings_only" => {
            if resource == "Observation" && reads {
                Through
            } else {
                Forbidden
            }
        }
        // Bound to one patient: nothing that spans every patient.
        _ if everyone => Forbidden,
        "p1_read" => {
            if reads {
                Through
            } else {
                Forbidden
            }
        }
        "p1_write" => Through,
        other => panic!("no expectations for {other}"),
    }
}

#[test]
fn every_route_declares_a_policy_and_the_access_matrix_holds_over_tls() {
    let w = world();
    let table = osler_hub::route_table();
    assert!(table.len() > 60, "{} routes", table.len());
    let callers: [(&str, Option<&str>); 8] = [
        ("anonymous", None),
        ("wide", Some(&w.wide)),
        ("readings_only", Some(&w.readings_only)),
        ("p1_read", Some(&w.p1_read)),
        ("p1_write", Some(&w.p1_write)),
        ("admin", Some(&w.admin)),
        ("clinician", Some(&w.clinician)),
        ("patient", Some(&w.patient)),
    ];
    let root = w.hub.root();
    let mut checked = 0;
    for (method, path, policy) in &table {
        if path.ends_with("/stream") {
            // A stream that is let through never ends; its guard is checked below.
            continue;
        }
        for (name, token) in callers {
            for patient in ["p1", "p2"] {
                let url = format!("{root}{}", concrete(path, patient));
                // A dashboard page answers a browser: an unauthenticated one is sent to sign
                // in (303), a refused one gets a page that says why (403).
                let page = path.starts_with("/ui");
                let a = if page {
                    call_page(method, &url, token)
                } else {
                    call(method, &url, token)
                };
                if *policy == Policy::SignedBatch {
                    // The signature in the body is the credential: an empty body is refused.
                    assert!(a.status >= 400, "{name} {method} {url}: {}", a.text);
                    continue;
                }
                let want = expected(name, *policy);
                let signing_in = a.status == 303
                    && a.location.as_deref().is_some_and(|l| {
                        l.starts_with("/ui/login") || l.starts_with("/ui/refresh")
                    });
                let got = match a.status {
                    401 => Expect::Unauthenticated,
                    303 if page && signing_in && *policy != Policy::Public => {
                        Expect::Unauthenticated
                    }
                    403 => Expect::Forbidden,
                    _ => Expect::Through,
                };
                assert_eq!(
                    got, want,
                    "{name} {method} {url} ({policy:?}): {} {}",
                    a.status, a.text
                );
                match got {
                    _ if page => {
                        assert_ne!(a.status, 401, "a page never answers 401: {url}");
                        if got == Expect::Forbidden {
                            assert!(a.text.contains("Not allowed"), "{url}: {}", a.text);
                        }
                    }
                    Expect::Unauthenticated => {
                        assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));
                        assert_eq!(a.outcome(401)["code"], "security");
                    }
                    Expect::Forbidden => {
                        assert_eq!(a.outcome(403)["code"], "security");
                    }
                    Expect::Through => {}
                }
                // Inside/outside: a patient-bound caller let through to another patient's
                // instance finds nothing there.
                let instance = path.contains("{patient}") || path.starts_with("/fhir/Patient/{id}");
                if got == Expect::Through
                    && matches!(name, "p1_read" | "p1_write" | "clinician" | "patient")
                    && patient == "p2"
                    && instance
                    && method == "GET"
                {
                    assert_eq!(a.status, 404, "{name} {method} {url}: {}", a.text);
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "{checked}");
    // The stream's guard, without staying on it (a caller let through would stay).
    assert_eq!(
        call("GET", &format!("{root}/alerts/stream"), None).status,
        401
    );
    assert_eq!(
        call(
            "GET",
            &format!("{root}/alerts/stream"),
            Some(&w.readings_only)
        )
        .status,
        403
    );
}

#[test]
fn a_patient_token_sees_only_its_patient_everywhere_a_query_could_leak() {
    let w = world();
    let (b, root) = (&w.hub.base, w.hub.root());
    let as_p1 = |url: &str| {
        send(
            "GET",
            url,
            "",
            &[("Authorization", &format!("Bearer {}", w.p1_read))],
        )
    };
    // Search by the other patient: empty, total 0.
    let s = as_p1(&format!("{b}/Observation?patient=p2")).json();
    assert_eq!(s["total"], 0, "{s}");
    // Across patients by code: only p1's, even in the count.
    let s = as_p1(&format!("{b}/Observation?code=8867-4")).json();
    let subjects: Vec<&str> = s["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["subject"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Patient/p1"], "{s}");
    let count = as_p1(&format!("{b}/Observation?code=8867-4&_summary=count")).json();
    assert_eq!(count["total"], 1, "{count}");
    // The other patient's reading, by id, does not exist; nor its history.
    as_p1(&format!("{b}/Observation/{}", w.p2_reading)).outcome(404);
    as_p1(&format!("{b}/Observation/{}/_history", w.p2_reading)).outcome(404);
    // Registry: Patient search returns p1 alone; p2 is not there.
    let s = as_p1(&format!("{b}/Patient")).json();
    assert_eq!(s["total"], 1, "{s}");
    assert_eq!(s["entry"][0]["resource"]["id"], "p1");
    assert_eq!(as_p1(&format!("{b}/Patient?_id=p2")).json()["total"], 0);
    as_p1(&format!("{b}/Patient/p2")).outcome(404);
    as_p1(&format!("{b}/Patient/p2/$everything")).outcome(404);
    assert_eq!(as_p1(&format!("{b}/Patient/p1/$everything")).status, 200);
    // $lastn for the other patient: nothing.
    let s = as_p1(&format!("{b}/Observation/$lastn?patient=p2&code=8867-4")).json();
    assert_eq!(s["total"], 0, "{s}");
    // Alerts: p2's crisis raised one; p1 sees none of it.
    let all = get(&format!("{root}/alerts")).json();
    assert!(
        all["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["patient"] == "p2"),
        "{all}"
    );
    let mine = as_p1(&format!("{root}/alerts")).json();
    assert!(
        mine["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["patient"] == "p1"),
        "{mine}"
    );
    let flags = as_p1(&format!("{b}/Flag")).json();
    assert!(
        flags["entry"].as_array().is_none_or(|e| e.is_empty()),
        "{flags}"
    );
    // A batch's reads are authorised one by one, as the caller.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/p2"}},
        {"request": {"method": "GET", "url": "Patient/p1"}},
    ]});
    let r = send(
        "POST",
        b,
        &batch.to_string(),
        &[("Authorization", &format!("Bearer {}", w.p1_read))],
    )
    .json();
    assert_eq!(r["entry"][0]["response"]["status"], "404 Not Found", "{r}");
    assert_eq!(r["entry"][1]["response"]["status"], "200 OK", "{r}");
    // A write for another patient, even with write scopes, is refused entry by entry.
    let tx = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Observation"},
         "resource": observation("p2", "8867-4", 60.0, "/min", &minutes_ago(2))},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": observation("p1", "8867-4", 61.0, "/min", &minutes_ago(2))},
    ]});
    let r = send(
        "POST",
        b,
        &tx.to_string(),
        &[("Authorization", &format!("Bearer {}", w.p1_write))],
    )
    .json();
    assert_eq!(r["entry"][0]["response"]["status"], "403 Forbidden", "{r}");
    assert_eq!(r["entry"][1]["response"]["status"], "201 Created", "{r}");
    // Plans: the other patient's does not exist for p1.
    let plan = send(
        "GET",
        &format!("{root}/plans/p2"),
        "",
        &[("Authorization", &format!("Bearer {}", w.p1_read))],
    );
    assert_eq!(plan.status, 404);
}

#[test]
fn expired_revoked_unknown_and_forged_credentials_are_refused() {
    let w = world();
    let (b, d) = (&w.hub.base, &w.hub.access.ca_file);
    let hub_dir = d.parent().unwrap().parent().unwrap().to_owned();
    let with = |t: &str| {
        send(
            "GET",
            &format!("{b}/Observation?patient=p1"),
            "",
            &[("Authorization", &format!("Bearer {t}"))],
        )
    };
    // Unknown.
    let a = with("osl_at_not-a-real-token");
    assert_eq!(a.status, 401);
    assert!(
        a.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    // Expired: a token that lives one second stops working by itself.
    let short = osler(&[
        "hub",
        "token",
        "create",
        "--data",
        hub_dir.to_str().unwrap(),
        "--scope",
        "system/Observation.rs",
        "--expires",
        "1s",
    ])
    .trim()
    .to_owned();
    let expired = wait_for(Duration::from_secs(10), || {
        (with(&short).status == 401).then_some(())
    });
    assert!(expired.is_some(), "a 1 s token still works after 10 s");
    assert!(
        with(&short)
            .header("www-authenticate")
            .unwrap()
            .contains("expired")
    );
    // Revoked on the command line: at once.
    let t = token(&hub_dir, "system/Observation.rs", None);
    assert_eq!(with(&t).status, 200);
    osler(&[
        "hub",
        "token",
        "revoke",
        "--data",
        hub_dir.to_str().unwrap(),
        "--token",
        &t,
    ]);
    assert_eq!(with(&t).status, 401);
    assert!(
        with(&t)
            .header("www-authenticate")
            .unwrap()
            .contains("revoked")
    );
    // Revoked by its holder at the revocation endpoint (RFC 7009): at once.
    let t = token(&hub_dir, "system/Observation.rs", None);
    assert_eq!(with(&t).status, 200);
    let r = request(
        "POST",
        &format!("{}/auth/revoke", w.hub.root()),
        &[("Authorization", "")],
    )
    .set("Content-Type", "application/x-www-form-urlencoded")
    .send_string(&format!("token={t}"))
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(with(&t).status, 401);
    // A forged gateway signature on a poll of every patient's thresholds.
    let a = send(
        "GET",
        &format!("{}/alerts/overrides", w.hub.root()),
        "",
        &[("Authorization", ""), ("Osler-Gateway", "gw-nobody 1 00")],
    );
    assert_eq!(a.status, 401, "{}", a.text);
    // A patient token cannot be stretched to another patient by asking for one.
    let s = with(&w.p1_read);
    assert_eq!(s.status, 200);
    let other = send(
        "GET",
        &format!("{b}/Observation?patient=p2"),
        "",
        &[("Authorization", &format!("Bearer {}", w.p1_read))],
    )
    .json();
    assert_eq!(other["total"], 0);
}

#[test]
fn tokens_are_refused_at_creation_when_their_scopes_make_no_sense() {
    let dir = TempDir::new("token-cli");
    init_hub(&dir.0);
    let d = dir.0.to_str().unwrap();
    for (scope, patient, says) in [
        ("patient/*.rs", None, "--patient"),
        ("system/*.rs", Some("p1"), "--patient binds"),
        ("user/*.rs", None, "login"),
        ("patient/Observation.sr", Some("p1"), "subset"),
        ("openid", None, "no data scope"),
    ] {
        let mut args = vec!["hub", "token", "create", "--data", d, "--scope", scope];
        if let Some(p) = patient {
            args.extend(["--patient", p]);
        }
        let out = std::process::Command::new(osler_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{scope} accepted");
        assert!(out.stdout.is_empty(), "nothing on stdout when refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{scope}: {err}");
    }
    // The token is long and random, and only its hash is stored.
    let t = token(&dir.0, "system/Observation.rs", None);
    assert!(t.starts_with("osl_at_") && t.len() >= 7 + 43, "{t}");
    let db = std::fs::read(dir.0.join("hub.db")).unwrap();
    let wal = std::fs::read(dir.0.join("hub.db-wal")).unwrap_or_default();
    let needle = t.as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the token's secret is on disk"
        );
    }
}

#[test]
fn plain_http_is_refused_and_only_loopback_may_opt_out() {
    let dir = TempDir::new("plain");
    let hub = Hub::start(&dir.0);
    // Plain HTTP to the HTTPS port: told so, nothing served.
    let plain = hub.root().replace("https://", "http://");
    let r = ureq::get(&format!("{plain}/fhir/metadata")).call();
    let text = match r {
        Err(ureq::Error::Status(400, r)) => r.into_string().unwrap(),
        other => panic!("plain HTTP was answered: {other:?}"),
    };
    assert!(text.contains("HTTPS only"), "{text}");
    // A client that does not trust the hub's CA refuses it (no system root signed it).
    let untrusted = ureq::get(&format!("{}/healthz", hub.root())).call();
    assert!(untrusted.is_err());
    // --insecure-http on a non-loopback address is refused at start.
    let out = std::process::Command::new(osler_bin())
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    // An unprepared data directory is refused with what to do.
    let empty = TempDir::new("unprepared");
    let out = std::process::Command::new(osler_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&empty.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("osler hub init"));
    // init never overwrites a prepared hub.
    let again = std::process::Command::new(osler_bin())
        .args(["hub", "init", "--data"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(!again.status.success());
    // The CA printed by `hub ca` is the one the hub presents.
    let ca = osler(&["hub", "ca", "--data", dir.0.to_str().unwrap()]);
    assert_eq!(ca, hub.access.ca_pem);
    // Secrets are owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir.0).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the data directory is open to others: {mode:o}"
    );
    for f in ["tls/ca-key.pem", "tls/server-key.pem", "audit-key"] {
        let mode = std::fs::metadata(dir.0.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
}

#[test]
fn a_gateway_pinned_to_another_ca_sends_nothing_and_says_why() {
    let dir = TempDir::new("pinning");
    let (hub_dir, gw_dir, other) = (dir.0.join("hub"), dir.0.join("gw"), dir.0.join("other"));
    enrol(&hub_dir, &gw_dir);
    init_hub(&other);
    let hub = Hub::start(&hub_dir);
    let wrong = other.join("tls/ca.pem");
    let gw = Gateway::start(
        &gw_dir,
        &hub.root(),
        0,
        &["--raw", "--hub-ca", wrong.to_str().unwrap()],
    );
    let reading = json!({"patient": "pin", "device": "w", "metric": "heart-rate", "value": 70,
        "unit": "/min", "time": minutes_ago(1)});
    assert_eq!(
        post(&format!("{}/readings", gw.url), &reading.to_string()).status,
        200
    );
    let error = wait_for(Duration::from_secs(30), || {
        let s = gw.status();
        let e = s["upload"]["last_error"].as_str()?.to_owned();
        e.contains("--hub-ca").then_some(e)
    })
    .expect("the gateway says the hub's certificate is not its CA's");
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(
        gw.status()["outbox"]["readings"],
        1,
        "nothing left the outbox"
    );
    let s = get(&format!("{}/Observation?patient=pin", hub.base)).json();
    assert_eq!(s["total"], 0);
    // An https hub without --hub-ca is refused at start, with what to do.
    let out = std::process::Command::new(osler_bin())
        .args(["gateway", "--data"])
        .arg(dir.0.join("gw2"))
        .args(["--hub", &hub.root(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hub-ca"));
}

/// The entries of an exported log, by line.
fn export(dir: &std::path::Path) -> Vec<String> {
    osler(&["audit", "export", "--data", dir.to_str().unwrap()])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn verify_file(dir: &TempDir, key: &std::path::Path, lines: &[String]) -> (bool, String) {
    let f = dir.0.join("tampered.jsonl");
    std::fs::write(&f, lines.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(osler_bin())
        .args(["audit", "verify", "--log"])
        .arg(&f)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_audit_log_records_access_and_detects_any_tampering() {
    let w = world();
    let root = w.hub.root();
    let hub_dir = w
        .hub
        .access
        .ca_file
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    // A read and a refusal are recorded (soon: reads do not wait for their entry's commit);
    // a plan change is recorded in its own commit.
    let programs = get(&format!("{}/AuditEvent?_count=1", w.hub.base)).status;
    assert_eq!(programs, 403, "programs do not read the audit log");
    let size = |root: &str| -> u64 {
        let note = get(&format!("{root}/audit/checkpoint")).text;
        note.lines().nth(1).unwrap().parse().unwrap()
    };
    let n0 = size(&root);
    call(
        "GET",
        &format!("{}/Patient/p2", w.hub.base),
        Some(&w.p1_read),
    );
    // A write the store refuses (a second Patient with one identifier) is recorded as
    // refused, not as done.
    let mrn =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "M-1"}]});
    for (id, want) in [("dup-a", 201), ("dup-b", 409)] {
        let a = send(
            "PUT",
            &format!("{}/Patient/{id}", w.hub.base),
            &mrn.to_string(),
            &[],
        );
        assert_eq!(a.status, want, "{}", a.text);
    }
    let a = send(
        "PUT",
        &format!("{root}/plans/p1/hr-high"),
        &json!({"threshold": 110, "reason": "athlete", "author": "Practitioner/x"}).to_string(),
        &[],
    );
    assert!(a.status == 422 || a.status == 200, "{}", a.text);
    let grown = wait_for(Duration::from_secs(10), || {
        (size(&root) >= n0 + 2).then_some(())
    });
    assert!(grown.is_some(), "the read and the refusal were not audited");
    // The proofs the hub serves check out against its signed checkpoint, as a third party
    // would check them (RFC 9162 §2.1.3 and §2.1.4).
    let key =
        osler_audit::note::parse_verifier_key(&get(&format!("{root}/audit/key")).text).unwrap();
    let note = get(&format!("{root}/audit/checkpoint")).text;
    let head = osler_audit::note::open_checkpoint(&key, &note)
        .expect("a checkpoint signed by the audit key");
    let b64 = |v: &Value| -> [u8; 32] {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let n = head.size;
    let inc = get(&format!("{root}/audit/proof/inclusion?entry=3&size={n}")).json();
    let proof: Vec<[u8; 32]> = inc["proof"].as_array().unwrap().iter().map(b64).collect();
    assert!(osler_audit::merkle::verify_inclusion(
        2,
        n,
        &b64(&inc["leaf_hash"]),
        &proof,
        &head.root
    ));
    assert!(!osler_audit::merkle::verify_inclusion(
        3,
        n,
        &b64(&inc["leaf_hash"]),
        &proof,
        &head.root
    ));
    let con = get(&format!("{root}/audit/proof/consistency?from=5&to={n}")).json();
    let proof: Vec<[u8; 32]> = con["proof"].as_array().unwrap().iter().map(b64).collect();
    assert!(osler_audit::merkle::verify_consistency(
        5,
        n,
        &b64(&con["from_root"]),
        &head.root,
        &proof
    ));
    assert_eq!(
        get(&format!("{root}/audit/proof/inclusion?entry=0&size={n}")).outcome(400)["code"],
        "invalid"
    );
    w.hub.stop();

    assert!(osler(&["audit", "verify", "--data", hub_dir.to_str().unwrap()]).starts_with("ok: "));
    let lines = export(&hub_dir);
    assert!(lines.len() > 8, "{} lines", lines.len());
    let entries: Vec<Value> = lines[1..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&Value> = entries.iter().map(|e| &e["entry"]).collect();
    assert!(events.iter().all(|e| e["resourceType"] == "AuditEvent"));
    // The refused read of p2 by p1's token: who, what, the outcome, from where.
    let refused = events
        .iter()
        .find(|e| e["outcome"] == "4" && e["entity"][0]["what"]["reference"] == "Patient/p2")
        .expect("the read outside the compartment is audited as refused");
    assert_eq!(refused["agent"][0]["network"]["address"], "127.0.0.1");
    assert!(
        events
            .iter()
            .any(|e| e["subtype"][0]["code"] == "token-issue")
    );
    let outcomes_of = |patient: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["entity"][0]["what"]["reference"] == format!("Patient/{patient}"))
            .map(|e| e["outcome"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        outcomes_of("dup-b"),
        ["4"],
        "the refused write is one entry, refused"
    );
    assert_eq!(
        outcomes_of("dup-a"),
        ["0"],
        "the stored write is one entry, done"
    );
    assert!(events.iter().any(|e| e["subtype"][0]["code"] == "create"
        && e["entity"][0]["what"]["reference"] == "Patient/p2"));

    let key = w._dir.0.join("audit.key");
    std::fs::write(
        &key,
        osler(&["audit", "key", "--data", hub_dir.to_str().unwrap()]),
    )
    .unwrap();
    assert!(
        verify_file(&w._dir, &key, &lines).0,
        "the untouched export verifies"
    );
    // Flip bytes of a sample of entries: every one is caught, and the entry named.
    let mut flips = 0;
    for (i, line) in lines.iter().enumerate().skip(1).step_by(3) {
        for pos in [line.len() / 3, line.len() / 2, line.len() - 3] {
            let mut b = line.clone().into_bytes();
            b[pos] ^= 0x04;
            let Ok(t) = String::from_utf8(b) else {
                continue;
            };
            let mut tampered = lines.clone();
            tampered[i] = t;
            let (ok, why) = verify_file(&w._dir, &key, &tampered);
            assert!(!ok, "a flipped byte at {pos} of line {i} passed");
            assert!(
                why.contains(&format!("entry {i}")) || why.contains("head"),
                "{why}"
            );
            flips += 1;
        }
    }
    assert!(flips >= 6);
    // Delete one, swap two, insert one, truncate.
    let mut deleted = lines.clone();
    deleted.remove(3);
    let (ok, why) = verify_file(&w._dir, &key, &deleted);
    assert!(!ok && why.contains("entry 3"), "{why}");
    let mut swapped = lines.clone();
    swapped.swap(2, 5);
    let (ok, why) = verify_file(&w._dir, &key, &swapped);
    assert!(!ok && why.contains("entry 2"), "{why}");
    // A replayed (duplicated) entry: the copy stands where entry 5 should.
    let mut inserted = lines.clone();
    inserted.insert(4, lines[4].clone());
    let (ok, why) = verify_file(&w._dir, &key, &inserted);
    assert!(!ok && why.contains("entry 5"), "{why}");
    let mut cut = lines.clone();
    cut.truncate(lines.len() - 2);
    let (ok, why) = verify_file(&w._dir, &key, &cut);
    assert!(!ok && why.contains("truncated"), "{why}");
    // Tampering inside the hub's own database is caught by verify --data, naming the entry.
    // (A refusal rewritten as a success, the edit an insider would want.)
    let db = rusqlite::Connection::open(hub_dir.join("hub.db")).unwrap();
    let first_bad: i64 = db
        .query_row(
            "SELECT min(seq) FROM audit WHERE entry LIKE '%\"outcome\":\"4\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE audit SET entry = replace(entry, '\"outcome\":\"4\"', '\"outcome\":\"0\"') WHERE seq = ?1",
        [first_bad],
    )
    .unwrap();
    drop(db);
    let out = std::process::Command::new(osler_bin())
        .args(["audit", "verify", "--data"])
        .arg(&hub_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains(&format!("entry {first_bad}")), "{why}");
}

#[test]
fn devices_are_identities_bound_to_their_assignment_over_http_and_mqtt() {
    let dir = TempDir::new("devices");
    let (hub_dir, gw_dir) = (dir.0.join("hub"), dir.0.join("gw"));
    enrol(&hub_dir, &gw_dir);
    let hub = Hub::start(&hub_dir);
    let b = &hub.base;
    for (path, body) in [
        ("Patient/anna", json!({"resourceType": "Patient"})),
        ("Patient/ben", json!({"resourceType": "Patient"})),
        (
            "Device/cuff-1",
            json!({"resourceType": "Device", "status": "active"}),
        ),
        (
            "DeviceUseStatement/u1",
            json!({"resourceType": "DeviceUseStatement", "status": "active",
            "subject": {"reference": "Patient/anna"}, "device": {"reference": "Device/cuff-1"},
            "timingPeriod": {"start": minutes_ago(120)}}),
        ),
    ] {
        assert_eq!(
            send("PUT", &format!("{b}/{path}"), &body.to_string(), &[]).status,
            201,
            "{path}"
        );
    }
    let token = osler(&[
        "gateway",
        "--data",
        gw_dir.to_str().unwrap(),
        "--add-device",
        "cuff-1",
    ])
    .trim()
    .to_owned();
    let topic_root = format!("osler-sec-{}", std::process::id());
    let filter = format!("{topic_root}/+/readings");
    let gw = Gateway::start(
        &gw_dir,
        &hub.root(),
        0,
        &[
            "--raw",
            "--mqtt",
            "127.0.0.1:1883",
            "--mqtt-topic",
            &filter,
            DEVICE_CREDENTIALS,
        ],
    );
    assert!(
        wait_for(Duration::from_secs(30), || (gw.status()["assignments"]
            .as_u64()
            >= Some(1))
        .then_some(()))
        .is_some(),
        "the gateway fetched the assignment"
    );
    let reading = |patient: Option<&str>, device: Option<&str>, v: f64| {
        // A time of its own per value: a reading's time is its identity.
        let mut r = json!({"metric": "heart-rate", "value": v, "unit": "/min", "time": seconds_ago(200 - v as i64)});
        if let Some(p) = patient {
            r["patient"] = json!(p);
        }
        if let Some(d) = device {
            r["device"] = json!(d);
        }
        r.to_string()
    };
    let url = format!("{}/readings", gw.url);
    let with = |auth: &str, body: &str| post_with(&url, body, &[("Authorization", auth)]);
    // No credential, or one the gateway never issued: refused.
    let none = post_with(&url, &reading(Some("anna"), Some("cuff-1"), 70.0), &[]);
    assert_eq!(none.status, 401, "{}", none.text);
    assert_eq!(
        with("Bearer osl_dev_forged", &reading(Some("anna"), None, 70.0)).status,
        401
    );
    let bearer = format!("Bearer {token}");
    // Its own patient: taken (with or without naming itself).
    assert_eq!(
        with(&bearer, &reading(Some("anna"), Some("cuff-1"), 71.0)).json()["accepted"],
        1
    );
    assert_eq!(
        with(&bearer, &reading(Some("anna"), None, 72.0)).json()["accepted"],
        1
    );
    // Another patient, or another device's name: quarantined with the reason.
    let other = with(&bearer, &reading(Some("ben"), None, 73.0)).json();
    assert_eq!(other["accepted"], 0, "{other}");
    assert!(
        other["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("assigned to patient \"anna\""),
        "{other}"
    );
    let spoof = with(&bearer, &reading(Some("anna"), Some("cuff-9"), 74.0)).json();
    assert_eq!(spoof["accepted"], 0, "{spoof}");
    // Over MQTT the topic names the device: the same binding.
    let publish = |device: &str, body: &str| {
        let ok = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-q",
                "1",
                "-t",
                &format!("{topic_root}/{device}/readings"),
                "-m",
                body,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let connected = wait_for(Duration::from_secs(20), || {
        (gw.status()["mqtt"]["connected"] == true).then_some(())
    });
    assert!(connected.is_some());
    publish("cuff-1", &reading(Some("ben"), None, 75.0));
    publish("cuff-1", &reading(Some("anna"), None, 76.0));
    let q = wait_for(Duration::from_secs(20), || {
        let q = get(&format!("{}/quarantine", gw.url)).json();
        let n = q["items"].as_array().map_or(0, Vec::len);
        (n >= 3).then_some(q)
    })
    .expect("three readings quarantined");
    let reasons: Vec<&str> = q["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("claims patient \"ben\"")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("names device \"cuff-9\"")),
        "{reasons:?}"
    );
    // Only anna's three readings reach the hub; none under ben.
    let stored = wait_for(Duration::from_secs(30), || {
        let n = get(&format!("{b}/Observation?patient=anna&_summary=count")).json()["total"]
            .as_u64()?;
        (n == 3).then_some(n)
    });
    assert_eq!(
        stored,
        Some(3),
        "{} {}",
        gw.status(),
        get(&format!("{b}/Observation?patient=anna")).text
    );
    assert_eq!(
        get(&format!("{b}/Observation?patient=ben")).json()["total"],
        0
    );
}

#[test]
fn the_alert_stream_carries_only_the_callers_patients() {
    let w = world();
    let root = w.hub.root();
    use std::io::BufRead;
    let subscribe = |token: &str| {
        let resp = request(
            "GET",
            &format!("{root}/alerts/stream"),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .timeout(Duration::from_secs(60))
        .call()
        .unwrap();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(resp.into_reader())
                .lines()
                .map_while(Result::ok)
            {
                if let Some(d) = line.strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<Value>(d.trim())
                {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        events
    };
    let mine = subscribe(&w.p1_read);
    let all = subscribe(&w.wide);
    // Both subscriptions are made (the response headers came back) before anything is raised.
    // p3 is new (p2's crisis is open already: a second one raises nothing).
    for (p, minutes) in [("p3", 3), ("p1", 2)] {
        let bp = blood_pressure(p, 200.0, 112.0, &minutes_ago(minutes));
        assert_eq!(
            post(&format!("{}/Observation", w.hub.base), &bp.to_string()).status,
            201
        );
    }
    let seen_all = wait_for(Duration::from_secs(20), || {
        let e = all.lock().unwrap();
        let ps: Vec<String> = e
            .iter()
            .filter_map(|v| v["patient"].as_str().map(str::to_owned))
            .collect();
        (ps.iter().any(|p| p == "p1") && ps.iter().any(|p| p == "p3")).then_some(ps)
    });
    assert!(
        seen_all.is_some(),
        "the wide stream saw both patients' alerts"
    );
    let got = wait_for(Duration::from_secs(10), || {
        let e = mine.lock().unwrap();
        e.iter().any(|v| v["patient"] == "p1").then(|| e.clone())
    })
    .expect("p1's stream carries p1's alert");
    assert!(got.iter().all(|v| v["patient"] == "p1"), "{got:?}");
}
