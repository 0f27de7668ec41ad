//! Starting and stopping `osler` child processes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What a client of a hub started here needs: the hub's CA and a `system/*.cruds` token.
#[derive(Clone, Debug)]
pub struct Access {
    pub root: String,
    pub data: std::path::PathBuf,
    pub ca_file: std::path::PathBuf,
    pub ca_pem: String,
    pub token: String,
}

static ACCESS: std::sync::Mutex<Vec<Access>> = std::sync::Mutex::new(Vec::new());

/// The access of the hub a URL is on, if this process started it.
pub fn access_for(url: &str) -> Option<Access> {
    ACCESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|a| url.starts_with(&a.root))
        .cloned()
}

/// Prepares a hub's data directory (`osler hub init`) unless it is prepared already.
pub fn init_hub(osler: &Path, hub_dir: &str) -> anyhow::Result<()> {
    if Path::new(hub_dir).join("tls/ca.pem").exists() {
        return Ok(());
    }
    let ok = Command::new(osler)
        .args(["hub", "init", "--data", hub_dir])
        .stdout(Stdio::null())
        .status()
        .context("cannot run osler hub init")?;
    if !ok.success() {
        bail!("osler hub init failed");
    }
    Ok(())
}

/// A bearer token from `osler hub token create`.
pub fn make_token(
    osler: &Path,
    hub_dir: &str,
    scope: &str,
    expires: &str,
) -> anyhow::Result<String> {
    let out = Command::new(osler)
        .args([
            "hub",
            "token",
            "create",
            "--data",
            hub_dir,
            "--scope",
            scope,
            "--expires",
            expires,
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run osler hub token create")?;
    if !out.status.success() {
        bail!("osler hub token create failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// An HTTP agent trusting the CAs of the hubs this process started.
pub fn agent(timeout: Duration) -> ureq::Agent {
    agent_builder(timeout).build()
}

/// [`agent`] before it is built, for more settings.
pub fn agent_builder(timeout: Duration) -> ureq::AgentBuilder {
    let pems: String = ACCESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|a| a.ca_pem.clone())
        .collect();
    let mut b = ureq::AgentBuilder::new().timeout(timeout);
    if let Ok(tls) = osler_tls::client_config(&pems) {
        b = b.tls_config(tls);
    }
    b
}

/// `method url` with the hub's token, on `agent`.
pub fn request_on(agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
    let req = agent.request(method, url);
    match access_for(url) {
        Some(a) => req.set("Authorization", &format!("Bearer {}", a.token)),
        None => req,
    }
}

/// A GET with the hub's CA trusted and its token sent (60 s timeout).
pub fn get(url: &str) -> ureq::Request {
    request_on(&agent(Duration::from_secs(60)), "GET", url)
}

/// A running `osler serve` and the FHIR base URL it printed.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Starts `osler serve --data DIR --listen 127.0.0.1:0` and waits (up to `timeout`) for it
    /// to print its URL.
    pub fn start(osler: &Path, data: &Path, timeout: Duration) -> anyhow::Result<Server> {
        let data = data.to_str().context("the data directory is not UTF-8")?;
        Server::spawn(
            osler,
            &["serve", "--listen", "127.0.0.1:0", "--data", data],
            timeout,
        )
    }

    /// Starts `osler ARGS` and waits (up to `timeout`) for the URL it prints first. Its log
    /// goes to the terminal (see [`Server::spawn_logging`] to keep it in a file).
    pub fn spawn(osler: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<Server> {
        Server::spawn_to(osler, args, timeout, None)
    }

    /// [`Server::spawn`] with the child's log appended to `log` (info and above), so that the
    /// terminal shows only what the command means to show.
    pub fn spawn_logging(
        osler: &Path,
        args: &[&str],
        timeout: Duration,
        log: &Path,
    ) -> anyhow::Result<Server> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        Server::spawn_to(osler, args, timeout, Some(file))
    }

    /// Starts the child with its standard error in `log`, or the terminal's.
    ///
    /// A hub (`serve`) is prepared first (`osler hub init`) and registered with a token once
    /// it listens; a gateway (`gateway --hub https://…`) of a hub started here is given its CA.
    fn spawn_to(
        osler: &Path,
        args: &[&str],
        timeout: Duration,
        log: Option<std::fs::File>,
    ) -> anyhow::Result<Server> {
        let value = |flag: &str| {
            args.iter()
                .position(|a| *a == flag)
                .and_then(|i| args.get(i + 1))
                .map(|s| s.to_string())
        };
        let hub_dir = (args.first() == Some(&"serve"))
            .then(|| value("--data"))
            .flatten();
        if let Some(d) = &hub_dir {
            init_hub(osler, d)?;
        }
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        // The simulator's devices hold no credentials: benchmarks measure the pipeline.
        if args.first().map(String::as_str) == Some("gateway")
            && !args
                .iter()
                .any(|a| a == "--open-devices" || a == "--identity")
        {
            args.push("--open-devices".into());
        }
        if args.first().map(String::as_str) == Some("gateway")
            && !args.iter().any(|a| a == "--hub-ca")
            && let Some(a) = value("--hub").and_then(|h| access_for(&h))
        {
            args.push("--hub-ca".into());
            args.push(a.ca_file.to_string_lossy().into_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let args = args.as_slice();
        // A file takes the whole story; a terminal only what needs a person.
        let level = if log.is_some() { "info" } else { "warn" };
        let stderr = log.map_or(Stdio::inherit(), Stdio::from);
        let mut cmd = Command::new(osler);
        cmd.args(args)
            .env(
                "OSLER_LOG",
                std::env::var("OSLER_LOG").unwrap_or_else(|_| level.into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", osler.display()))?;
        let stdout = child.stdout.take().context("no stdout from the child")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let deadline = Instant::now() + timeout;
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .with_context(|| format!("osler {} did not print its URL in time", args[0]))?;
        let base = line.trim().to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            let _ = child.kill();
            bail!("osler {} printed {base:?} instead of its URL", args[0]);
        }
        if let Some(d) = hub_dir {
            let ca_file = Path::new(&d).join("tls/ca.pem");
            let access = Access {
                root: base.trim_end_matches("/fhir").to_owned(),
                ca_pem: std::fs::read_to_string(&ca_file)
                    .with_context(|| format!("cannot read {}", ca_file.display()))?,
                ca_file,
                token: make_token(osler, &d, "system/*.cruds", "7d")?,
                data: d.into(),
            };
            let mut all = ACCESS.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|x| x.root != access.root);
            all.push(access);
        }
        Ok(Server { child, base })
    }

    /// Starts `osler ARGS` without waiting for anything it prints (its standard output is
    /// inherited).
    pub fn spawn_plain(osler: &Path, args: &[&str]) -> anyhow::Result<Server> {
        let mut cmd = Command::new(osler);
        cmd.args(args).stdin(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start osler {}", args[0]))?;
        Ok(Server {
            child,
            base: String::new(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            // Already gone (a terminal's Ctrl-C reaches the whole process group).
            return Ok(());
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() && self.child.try_wait()?.is_none() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("the process did not stop within 30 s of SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A benchmark that fails half-way must not leave a hub running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Makes the child stop (SIGTERM: it shuts down cleanly) when this process dies, however it
/// dies: a demo or a bench killed with SIGKILL must not leave a hub holding its port.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl and
    // getppid, which are async-signal-safe, and allocates nothing.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// The osler binary to benchmark (`given`, or the running one) and an empty data directory
/// (`data`, or a new one under the system temp dir named after `bench`).
pub fn setup(
    given: Option<&Path>,
    data: Option<&Path>,
    bench: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let osler = match given {
        Some(p) => p.to_owned(),
        None => std::env::current_exe().context("cannot find the osler binary")?,
    };
    let data = match data {
        Some(d) => d.to_owned(),
        None => std::env::temp_dir().join(format!("osler-bench-{bench}-{}", std::process::id())),
    };
    if data.join("hub").exists() {
        bail!(
            "{} already holds a hub; use an empty directory",
            data.display()
        );
    }
    Ok((osler, data))
}

/// A gauge or counter's value from Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The number of readings the hub at `root` (without `/fhir`) reports stored.
pub fn stored_readings(root: &str) -> anyhow::Result<u64> {
    let text = get(&format!("{root}/metrics"))
        .timeout(Duration::from_secs(10))
        .call()?
        .into_string()?;
    metric_value(&text, "osler_readings_stored")
        .map(|v| v as u64)
        .context("osler_readings_stored missing from /metrics")
}

/// The summary `osler sim` prints as its last line, once it has exited successfully.
pub fn sim_summary(out: &std::process::Output) -> anyhow::Result<serde_json::Value> {
    if !out.status.success() {
        bail!("osler sim failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().unwrap_or("{}"))?)
}

/// Enrols the gateway whose data is in `gw_dir` at the hub whose data is in `hub_dir`
/// (`osler hub enrol --from-gateway`).
pub fn enrol(osler: &Path, hub_dir: &str, gw_dir: &str) -> anyhow::Result<()> {
    init_hub(osler, hub_dir)?;
    let ok = Command::new(osler)
        .args(["hub", "enrol", "--data", hub_dir, "--from-gateway", gw_dir])
        .stdout(Stdio::null())
        .status()
        .context("cannot run osler hub enrol")?;
    if !ok.success() {
        bail!("osler hub enrol failed");
    }
    Ok(())
}

/// A hub and a gateway enrolled at it, each its own process, with their data under `data`
/// (`hub/`, `gw/`, their logs in `hub.log` and `gw.log`); `gateway_args` are added to the gateway's command line. Returns the hub, its
/// root URL and the gateway.
pub fn hub_and_gateway(
    osler: &Path,
    data: &Path,
    gateway_args: &[&str],
) -> anyhow::Result<(Server, String, Server)> {
    let hub_dir = data.join("hub").to_str().context("UTF-8 paths")?.to_owned();
    let gw_dir = data.join("gw").to_str().context("UTF-8 paths")?.to_owned();
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let hub = Server::spawn_logging(
        osler,
        &["serve", "--data", &hub_dir, "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
        &data.join("hub.log"),
    )?;
    let root = hub.base.trim_end_matches("/fhir").to_owned();
    enrol(osler, &hub_dir, &gw_dir)?;
    let mut args = vec![
        "gateway",
        "--data",
        &gw_dir,
        "--hub",
        &root,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(gateway_args);
    let gw = Server::spawn_logging(osler, &args, Duration::from_secs(30), &data.join("gw.log"))?;
    eprintln!(
        "(the hub's and the gateway's logs: {}/hub.log, gw.log)",
        data.display()
    );
    Ok((hub, root, gw))
}

/// The entries a gateway's outbox still holds in these lanes (`u64::MAX` when it cannot
/// say), from its `/status`.
pub fn outbox_pending(gateway: &str, lanes: &[&str]) -> u64 {
    let s: serde_json::Value = get(&format!("{gateway}/status"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    lanes
        .iter()
        .map(|k| s["outbox"][k].as_u64().unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add)
}

/// Resident memory (VmRSS) of a process, in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) a process has used, in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux reports in clock ticks of USER_HZ, which is 100 on every mainstream architecture.
    Some(ticks / 100.0)
}
