//! Helpers for end-to-end tests: a real `osler serve` process on port 0 over a temporary
//! directory, and a small HTTP client. Nothing here mocks the hub.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The osler binary under test: `OSLER_BIN` if set (the test script points it at the release
/// build), else the one cargo built for these tests.
pub fn osler_bin() -> PathBuf {
    std::env::var_os("OSLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_osler")))
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("osler-e2e-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running hub.
pub struct Hub {
    child: Child,
    /// The FHIR base URL, e.g. `http://127.0.0.1:41234/fhir`.
    pub base: String,
}

impl Hub {
    pub fn start(data: &Path) -> Hub {
        Hub::start_with(data, &[])
    }

    pub fn start_with(data: &Path, extra: &[&str]) -> Hub {
        let mut child = Command::new(osler_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("OSLER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start osler serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the hub printed its URL within 30 s");
        let base = line.trim().to_owned();
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "unexpected first line {base:?}"
        );
        Hub { child, base }
    }

    /// The hub's root (without `/fhir`).
    pub fn root(&self) -> String {
        self.base.trim_end_matches("/fhir").to_owned()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let status = wait_for(Duration::from_secs(20), || self.child.try_wait().unwrap())
            .expect("the hub exits within 20 s of SIGTERM");
        assert!(status.success(), "hub exited with {status}");
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, or the deadline passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An HTTP answer: status, headers we care about, and the body (parsed if it is JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", &self.text[..self.text.len().min(500)])
        })
    }

    /// Asserts this is an OperationOutcome with the given status, and returns its first issue.
    pub fn outcome(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
        let issue = v["issue"][0].clone();
        assert_eq!(issue["severity"], "error");
        assert!(issue["diagnostics"].as_str().is_some_and(|d| !d.is_empty()));
        issue
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    Answer {
        status: resp.status(),
        location: resp.header("location").map(str::to_owned),
        content_type: resp.header("content-type").map(str::to_owned),
        text: resp.into_string().unwrap(),
    }
}

pub fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

pub fn post(url: &str, body: &str) -> Answer {
    post_with(url, body, &[])
}

pub fn post_with(url: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent()
        .post(url)
        .set("Content-Type", "application/fhir+json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(req.send_string(body))
}

/// A Prometheus value from `/metrics`.
pub fn metric(hub: &Hub, name: &str) -> f64 {
    let text = get(&format!("{}/metrics", hub.root())).text;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// An ISO instant `minutes` before now, in UTC, to the second.
pub fn minutes_ago(minutes: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    osler_core::Timestamp::utc((now - minutes * 60) * 1000).to_string()
}

/// A vital-sign Observation with a scalar value.
pub fn observation(patient: &str, loinc: &str, value: f64, unit: &str, when: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "device": {"reference": "Device/dev-1"},
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit},
    })
}

/// A blood-pressure panel Observation.
pub fn blood_pressure(patient: &str, sys: f64, dia: f64, when: &str) -> Value {
    let part = |code: &str, v: f64| {
        json!({
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": v, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        })
    };
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "device": {"reference": "Device/cuff-1"},
        "component": [part("8480-6", sys), part("8462-4", dia)],
    })
}

/// A transaction or batch Bundle of Observation creates.
pub fn bundle(kind: &str, observations: &[Value], if_none_exist: &[Option<&str>]) -> Value {
    let entries: Vec<Value> = observations
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let mut req = json!({"method": "POST", "url": "Observation"});
            if let Some(Some(c)) = if_none_exist.get(i) {
                req["ifNoneExist"] = json!(c);
            }
            json!({"fullUrl": format!("urn:uuid:00000000-0000-0000-0000-{i:012}"), "resource": o, "request": req})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

/// The number of readings stored for a patient, through the FHIR API.
pub fn count_for(hub: &Hub, patient: &str) -> u64 {
    let a = get(&format!(
        "{}/Observation?patient={patient}&_summary=count",
        hub.base
    ));
    assert_eq!(a.status, 200, "{}", a.text);
    a.json()["total"].as_u64().unwrap()
}
