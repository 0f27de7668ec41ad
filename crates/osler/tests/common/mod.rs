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

/// What a test needs to speak to a hub: its CA (PEM) and a bearer token with the widest
/// integration scope, registered by the hub's root URL so that [`send`], [`get`] and
/// [`post`] use them without each test repeating it.
#[derive(Clone)]
pub struct Access {
    pub root: String,
    pub ca_file: PathBuf,
    pub ca_pem: String,
    pub token: String,
}

static ACCESS: std::sync::Mutex<Vec<Access>> = std::sync::Mutex::new(Vec::new());

fn register(a: Access) {
    let mut all = ACCESS.lock().unwrap();
    all.retain(|x| x.root != a.root);
    all.push(a);
}

/// The access registered for the hub a URL is on.
pub fn access_for(url: &str) -> Option<Access> {
    ACCESS
        .lock()
        .unwrap()
        .iter()
        .find(|a| url.starts_with(&a.root))
        .cloned()
}

/// Prepares a hub's data directory (`osler hub init`) unless it was prepared before.
pub fn init_hub(data: &Path) {
    if !data.join("tls/ca.pem").exists() {
        osler(&["hub", "init", "--data", data.to_str().unwrap()]);
    }
}

/// A token made on the hub's command line (`osler hub token create`).
pub fn token(data: &Path, scope: &str, patient: Option<&str>) -> String {
    let mut args = vec![
        "hub",
        "token",
        "create",
        "--data",
        data.to_str().unwrap(),
        "--scope",
        scope,
        "--expires",
        "1d",
    ];
    if let Some(p) = patient {
        args.extend(["--patient", p]);
    }
    osler(&args).trim().to_owned()
}

/// A running hub.
pub struct Hub {
    child: Child,
    /// The FHIR base URL, e.g. `https://127.0.0.1:41234/fhir`.
    pub base: String,
    /// Its CA and a `system/*.cruds` token.
    pub access: Access,
}

impl Hub {
    pub fn start(data: &Path) -> Hub {
        Hub::start_with(data, &[])
    }

    pub fn start_with(data: &Path, extra: &[&str]) -> Hub {
        Hub::start_full(data, 0, extra, None)
    }

    /// On a fixed port (to restart at the same address), logging to `log` if given.
    pub fn start_full(data: &Path, port: u16, extra: &[&str], log: Option<&Path>) -> Hub {
        init_hub(data);
        let mut cmd = Command::new(osler_bin());
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .args(extra);
        let (child, base) = spawn_printing_url(cmd, log, "osler serve");
        let ca_file = data.join("tls/ca.pem");
        let access = Access {
            root: base.trim_end_matches("/fhir").to_owned(),
            ca_pem: std::fs::read_to_string(&ca_file).unwrap(),
            ca_file,
            token: token(data, "system/*.cruds", None),
        };
        register(access.clone());
        Hub {
            child,
            base,
            access,
        }
    }

    /// The `--hub-ca` argument pair a gateway needs for this hub.
    pub fn ca_arg(&self) -> String {
        self.access.ca_file.to_str().unwrap().to_owned()
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

/// Starts a command whose first line of standard output is its URL, and returns it.
fn spawn_printing_url(mut cmd: Command, log: Option<&Path>, what: &str) -> (Child, String) {
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap(),
        ),
        None => Stdio::inherit(),
    };
    let mut child = cmd
        .env("OSLER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} printed its URL within 30 s"));
    let url = line.trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
        "{what}: unexpected first line {url:?}"
    );
    (child, url)
}

/// A free loopback port (bound and released; good enough on a test machine).
/// A port free now, for a process to bind later (a restart at the same address), chosen below
/// the kernel's ephemeral range: a port from that range can be taken meanwhile by a client's
/// own connection to it (a gateway retrying an absent hub connects to itself when the kernel
/// gives its socket the destination port as source), and the hub could then not bind it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u32, low.saturating_sub(10_000).max(1));
    // Test binaries run in parallel: start from a place of this process's own.
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < span, "no free port below the ephemeral range");
        let port = (from + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Marks a gateway of [`Gateway::start`] that asks devices for their credentials (no
/// `--open-devices`); not passed to the gateway.
pub const DEVICE_CREDENTIALS: &str = "(device credentials)";

/// A running gateway.
pub struct Gateway {
    child: Child,
    /// e.g. `http://127.0.0.1:41235`
    pub url: String,
}

impl Gateway {
    /// `osler gateway --data DATA --hub HUB --listen 127.0.0.1:PORT` plus `extra`; with the
    /// hub's CA (`--hub-ca`) when the hub is one this test started over HTTPS; with
    /// `--open-devices` (the simulator and most tests post without device credentials) unless
    /// `extra` holds [`DEVICE_CREDENTIALS`].
    pub fn start(data: &Path, hub_root: &str, port: u16, extra: &[&str]) -> Gateway {
        let mut cmd = Command::new(osler_bin());
        cmd.args(["gateway", "--data"]).arg(data);
        let extra: Vec<&str> = if extra.contains(&DEVICE_CREDENTIALS) {
            extra
                .iter()
                .copied()
                .filter(|a| *a != DEVICE_CREDENTIALS)
                .collect()
        } else {
            let mut e = extra.to_vec();
            e.push("--open-devices");
            e
        };
        let extra = extra.as_slice();
        if hub_root.starts_with("https://") && !extra.contains(&"--hub-ca") {
            let a = access_for(hub_root).expect("a hub started by this test");
            cmd.arg("--hub-ca").arg(&a.ca_file);
        }
        cmd.args([
            "--hub",
            hub_root,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--max-wait-ms",
            "50",
        ])
        .args(extra);
        let (child, url) = spawn_printing_url(cmd, None, "osler gateway");
        Gateway { child, url }
    }

    pub fn status(&self) -> Value {
        get(&format!("{}/status", self.url)).json()
    }

    /// Everything received has left: every lane of the outbox is empty and no edge stream
    /// holds a reading still to decide or an open summary.
    pub fn drained(&self) -> bool {
        let s = self.status();
        ["readings", "alerts", "summaries", "emergencies"]
            .iter()
            .all(|lane| s["outbox"][lane] == 0)
            && s["edge"]["streams_holding"] == 0
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `osler` with arguments to completion and returns its standard output.
pub fn osler(args: &[&str]) -> String {
    let out = Command::new(osler_bin())
        .args(args)
        .env("OSLER_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "osler {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Gives the gateway whose data is in `gw_dir` its identity and enrols it at the hub whose data
/// is in `hub_dir` (`osler hub enrol --from-gateway`), as an operator would. Repeating it for
/// an enrolled gateway (after a restart) changes nothing.
pub fn enrol(hub_dir: &Path, gw_dir: &Path) {
    init_hub(hub_dir);
    osler(&["gateway", "--data", gw_dir.to_str().unwrap(), "--identity"]);
    let out = osler(&[
        "hub",
        "enrol",
        "--data",
        hub_dir.to_str().unwrap(),
        "--from-gateway",
        gw_dir.to_str().unwrap(),
    ]);
    assert!(out.starts_with("enrolled "), "{out}");
}

/// Enrols a gateway by its public key (a test that signs batches by hand).
pub fn enrol_key(hub_dir: &Path, gateway: &str, key: &osler_wire::GatewayKey) {
    let out = osler(&[
        "hub",
        "enrol",
        "--data",
        hub_dir.to_str().unwrap(),
        "--gateway",
        gateway,
        "--key",
        &key.public_hex(),
    ]);
    assert!(out.starts_with("enrolled "), "{out}");
}

/// Posts a signed envelope (a batch, a notice) to `path` on the hub: the status and the JSON
/// answer.
pub fn post_envelope(hub: &Hub, path: &str, body: &[u8]) -> (u16, Value) {
    let resp = req("POST", &format!("{}{path}", hub.root()))
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

/// Now, in UTC milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Starts `osler sim` in the background.
pub fn spawn_sim(args: &[&str]) -> Child {
    Command::new(osler_bin())
        .arg("sim")
        .args(args)
        .env("OSLER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits (at most two minutes) for a sim and returns its summary line.
pub fn finish_sim(mut child: Child) -> Value {
    let status = wait_for(Duration::from_secs(120), || child.try_wait().unwrap());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("osler sim did not finish within 120 s");
    };
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert!(status.success(), "osler sim failed: {text}");
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// The lines of a JSON-lines file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A comparable key for a reading in the device format the simulator sends.
pub fn sent_key(r: &Value) -> String {
    let metric = osler_core::Metric::from_key(r["metric"].as_str().unwrap()).unwrap();
    let values: Vec<f64> = match &r["value"] {
        Value::Array(a) => a.iter().map(|v| v.as_f64().unwrap()).collect(),
        v => vec![v.as_f64().unwrap()],
    };
    format!(
        "{}|{}|{}|{:?}",
        r["patient"].as_str().unwrap(),
        metric.info().loinc.code,
        r["time"].as_str().unwrap(),
        values
    )
}

/// The same key for an Observation the hub serves.
pub fn observation_key(o: &Value) -> String {
    let patient = o["subject"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/");
    let values: Vec<f64> = match o["component"].as_array() {
        Some(c) => c
            .iter()
            .map(|c| c["valueQuantity"]["value"].as_f64().unwrap())
            .collect(),
        None => vec![o["valueQuantity"]["value"].as_f64().unwrap()],
    };
    format!(
        "{patient}|{}|{}|{:?}",
        o["code"]["coding"][0]["code"].as_str().unwrap(),
        o["effectiveDateTime"].as_str().unwrap(),
        values
    )
}

/// Every Observation of a patient, through the FHIR API, following `next` links.
pub fn all_observations(hub_base: &str, patient: &str) -> Vec<Value> {
    let mut url = Some(format!(
        "{hub_base}/Observation?patient={patient}&_count=1000"
    ));
    let mut out = Vec::new();
    while let Some(u) = url.take() {
        let b = get(&u).json();
        out.extend(
            b["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone()),
        );
        url = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
    }
    out
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
    /// Every response header, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

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

/// A request with the hub's CA trusted and its token sent.
pub fn req(method: &str, url: &str) -> ureq::Request {
    request(method, url, &[])
}

/// An HTTP agent trusting the CA of every hub this test started (and no other).
pub fn agent() -> ureq::Agent {
    agent_builder().build()
}

/// [`agent`] that does not follow redirects (to see where a dashboard page sends a browser).
pub fn agent_without_redirects() -> ureq::Agent {
    agent_builder().redirects(0).build()
}

fn agent_builder() -> ureq::AgentBuilder {
    let pems: String = ACCESS
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.ca_pem.clone())
        .collect();
    let mut b = ureq::AgentBuilder::new().timeout(Duration::from_secs(60));
    if !pems.is_empty() {
        b = b.tls_config(osler_tls::client_config(&pems).unwrap());
    }
    b
}

/// `Authorization: Bearer …` for a hub URL, with the hub's registered token.
pub fn bearer(url: &str) -> Option<String> {
    access_for(url).map(|a| format!("Bearer {}", a.token))
}

/// A request to `url` with the hub's token unless `headers` bring their own
/// `Authorization` (an empty one sends none).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> ureq::Request {
    request_on(&agent(), method, url, headers)
}

/// [`request`] on a given agent.
pub fn request_on(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> ureq::Request {
    let mut req = agent.request(method, url);
    let own = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if !own && let Some(b) = bearer(url) {
        req = req.set("Authorization", &b);
    }
    for (k, v) in headers {
        if !v.is_empty() {
            req = req.set(k, v);
        }
    }
    req
}

pub fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    // Every value of a repeated header (Set-Cookie) is kept, once.
    let mut names = resp.headers_names();
    names.sort_by_key(|n| n.to_ascii_lowercase());
    names.dedup_by_key(|n| n.to_ascii_lowercase());
    let headers = names
        .into_iter()
        .flat_map(|n| {
            let lower = n.to_ascii_lowercase();
            resp.all(&n)
                .into_iter()
                .map(move |v| (lower.clone(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    Answer {
        status: resp.status(),
        location: resp.header("location").map(str::to_owned),
        content_type: resp.header("content-type").map(str::to_owned),
        headers,
        text: resp.into_string().unwrap(),
    }
}

/// Any method, with a FHIR JSON body when `body` is not empty, and extra headers.
pub fn send(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let req = request(method, url, headers);
    if body.is_empty() {
        answer(req.call())
    } else {
        let mut all = vec![("Content-Type", "application/fhir+json")];
        all.extend_from_slice(headers);
        answer(request(method, url, &all).send_string(body))
    }
}

pub fn get(url: &str) -> Answer {
    answer(request("GET", url, &[]).call())
}

pub fn post(url: &str, body: &str) -> Answer {
    post_with(url, body, &[])
}

pub fn post_with(url: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("Content-Type", "application/fhir+json")];
    all.extend_from_slice(headers);
    answer(request("POST", url, &all).send_string(body))
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
    seconds_ago(minutes * 60)
}

/// An ISO instant `seconds` before now, in UTC, to the second.
pub fn seconds_ago(seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    osler_core::Timestamp::utc((now - seconds) * 1000).to_string()
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

/// Whether an Observation is a gateway's window summary.
pub fn is_summary(o: &Value) -> bool {
    o["meta"]["tag"][0]["code"] == "edge-summary"
}

/// How many device readings an Observation stands for: one, or a summary's count.
pub fn readings_in(o: &Value) -> f64 {
    if !is_summary(o) {
        return 1.0;
    }
    o["component"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["code"]["coding"][0]["code"] == "count")
        .and_then(|c| c["valueInteger"].as_f64())
        .unwrap()
}

/// The workspace root.
pub fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with the pinned FHIR validator (`OSLER_PYTHON`, else the venv `scripts/test` makes).
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("OSLER_PYTHON") {
        return std::path::PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run ./scripts/test, which installs the pinned FHIR validator",
        venv.display()
    );
    venv
}

/// Runs the independent FHIR validator (`scripts/validate_fhir.py`) over `resources` and
/// asserts that it validated every one of them with no problem.
pub fn assert_valid_fhir(dir: &Path, resources: &[Value]) {
    let file = dir.join(format!("validate-{}.json", resources.len()));
    std::fs::write(&file, serde_json::to_string_pretty(resources).unwrap()).unwrap();
    let out = Command::new(python())
        .arg(workspace().join("scripts/validate_fhir.py"))
        .arg(&file)
        .output()
        .expect("run the validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "validator failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("validated {} resources", resources.len()))
            && stdout.contains(": 0 problems"),
        "{stdout}"
    );
}

/// RFC 4648 base32 (no padding) decoded: a TOTP secret as enrolment answers it.
pub fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {c}"),
        } as u32;
        buf = buf << 5 | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits & 0xff) as u8);
        }
    }
    out
}

/// A person's account, enrolled over the API: its name, password, TOTP secret (for roles
/// with a second factor) and recovery codes.
pub struct Person {
    pub name: String,
    pub password: String,
    pub secret: Option<Vec<u8>>,
    pub recovery: Vec<String>,
}

/// `osler hub user add`, then `POST /auth/enrol` with the code it printed.
pub fn enrol_person(hub: &Hub, data: &Path, name: &str, role: &str, of: Option<&str>) -> Person {
    let mut args = vec![
        "hub",
        "user",
        "add",
        "--data",
        data.to_str().unwrap(),
        "--name",
        name,
        "--role",
        role,
    ];
    match (role, of) {
        ("clinician", Some(p)) => args.extend(["--practitioner", p]),
        ("patient", Some(p)) => args.extend(["--patient", p]),
        _ => {}
    }
    let code = osler(&args).trim().to_owned();
    let password = format!("quiet harbour mornings {}", name.len());
    let a = send(
        "POST",
        &format!("{}/auth/enrol", hub.root()),
        &json!({"code": code, "password": password}).to_string(),
        &[("Authorization", ""), ("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    Person {
        name: name.to_owned(),
        password,
        secret: v["second_factor"]["secret"].as_str().map(base32_decode),
        recovery: v["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect(),
    }
}

/// A TOTP code for `step_offset` steps from now.
pub fn totp(secret: &[u8], step_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let step = osler_auth::totp::step_of(now) + step_offset;
    format!("{:06}", osler_auth::totp::code_at(secret, step, 6))
}

/// Logs a person in (password, then the second factor with the current step's code) and
/// returns the token answer.
pub fn login(hub: &Hub, p: &Person) -> Value {
    let a = send(
        "POST",
        &format!("{}/auth/login", hub.root()),
        &json!({"name": p.name, "password": p.password}).to_string(),
        &[("Authorization", ""), ("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 200, "{}", a.text);
    let v = a.json();
    let Some(secret) = &p.secret else {
        return v;
    };
    let mfa = v["mfa_token"].as_str().unwrap();
    let b = send(
        "POST",
        &format!("{}/auth/second-factor", hub.root()),
        &json!({"mfa_token": mfa, "code": totp(secret, 0)}).to_string(),
        &[("Authorization", ""), ("Content-Type", "application/json")],
    );
    assert_eq!(b.status, 200, "{}", b.text);
    b.json()
}
