//! `osler bench pipeline`: sim → gateway → hub, each its own process, over loopback.
//!
//! 1. Throughput: the simulator sends a cohort as fast as the gateway takes it; the figure is
//!    readings committed at the hub per second, from the first reading sent to the last one
//!    committed. Beside it: what the gateway accepted per second, and bytes uploaded per reading.
//! 2. Footprint: the simulator at a steady 1,000 readings/s; the gateway's RSS and CPU.
//! 3. Catch-up: the hub stops for `--outage` while the simulator keeps sending 1,000 readings/s;
//!    then the hub returns and the figure is the rate at which the backlog drains.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{Server, cpu_seconds, rss_bytes, sim_summary, stored_readings};

#[derive(clap::Args, Debug)]
pub struct PipelineBenchArgs {
    /// Patients for the throughput run.
    #[arg(long, default_value_t = 200)]
    patients: usize,
    /// Simulated time for the throughput run (about 20,000 readings per patient-day).
    #[arg(long, default_value = "6h")]
    duration: String,
    /// Seconds of steady 1,000 readings/s for the footprint figures.
    #[arg(long, default_value_t = 30)]
    steady_secs: u64,
    /// Seconds the hub is away for the catch-up figure (the standard is 600).
    #[arg(long, default_value_t = 600)]
    outage_secs: u64,
    /// Data directory (default: a new temp directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
}

fn get(url: &str) -> anyhow::Result<String> {
    Ok(crate::process::get(url)
        .timeout(Duration::from_secs(10))
        .call()?
        .into_string()?)
}

fn status(gw: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&get(&format!("{gw}/status"))?)?)
}

fn sim(osler: &Path, args: &[&str]) -> anyhow::Result<std::process::Child> {
    Command::new(osler)
        .arg("sim")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start osler sim")
}

fn wait_until(
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?}")
}

pub fn run(args: PipelineBenchArgs) -> anyhow::Result<()> {
    let (osler, data) =
        crate::process::setup(args.osler.as_deref(), args.data.as_deref(), "pipeline")?;
    let (hub_dir, gw_dir) = (data.join("hub"), data.join("gw"));
    let s = |p: &Path| p.to_str().map(str::to_owned).context("paths must be UTF-8");
    let (hub_dir_s, gw_dir_s) = (s(&hub_dir)?, s(&gw_dir)?);

    let hub_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hub_listen = format!("127.0.0.1:{hub_port}");
    let hub_args = [
        "serve",
        "--data",
        hub_dir_s.as_str(),
        "--listen",
        hub_listen.as_str(),
    ];
    std::fs::create_dir_all(&data)?;
    let (hub_log, gw_log) = (data.join("hub.log"), data.join("gw.log"));
    eprintln!(
        "(the hub's and the gateway's logs: {} and {})",
        hub_log.display(),
        gw_log.display()
    );
    let hub = Server::spawn_logging(&osler, &hub_args, Duration::from_secs(30), &hub_log)?;
    let hub_root = hub.base.trim_end_matches("/fhir").to_owned();
    crate::process::enrol(&osler, &hub_dir_s, &gw_dir_s)?;
    let gw = Server::spawn_logging(
        &osler,
        &[
            "gateway",
            "--data",
            &gw_dir_s,
            "--hub",
            &hub_root,
            "--listen",
            "127.0.0.1:0",
            // The transport is measured: every reading travels and is counted at the hub
            // (`osler bench edge` measures what the edge saves).
            "--raw",
        ],
        Duration::from_secs(30),
        &gw_log,
    )?;
    let gw_url = gw.base.clone();

    // 1. Throughput.
    let patients = args.patients.to_string();
    let t = Instant::now();
    let cpu0 = (
        cpu_seconds(hub.pid()).unwrap_or(0.0),
        cpu_seconds(gw.pid()).unwrap_or(0.0),
    );
    let child = sim(
        &osler,
        &[
            "--gateway",
            &gw_url,
            "--patients",
            &patients,
            "--duration",
            &args.duration,
            "--seed",
            "42",
            "--events",
            "0",
        ],
    )?;
    let summary = sim_summary(&child.wait_with_output()?)?;
    let sent = summary["acknowledged"].as_u64().context("sim summary")?;
    let accepted_secs = t.elapsed().as_secs_f64();
    wait_until(Duration::from_secs(600), || {
        Ok(stored_readings(&hub_root)? >= sent)
    })?;
    let e2e_secs = t.elapsed().as_secs_f64();
    let cpu1 = (
        cpu_seconds(hub.pid()).unwrap_or(0.0),
        cpu_seconds(gw.pid()).unwrap_or(0.0),
    );
    let st = status(&gw_url)?;
    let bytes_per_reading = st["upload"]["bytes"].as_f64().unwrap_or(0.0)
        / st["upload"]["entries"].as_f64().unwrap_or(1.0).max(1.0);

    // 2. Footprint at a steady 1,000 readings/s.
    let steady = sim(
        &osler,
        &[
            "--gateway",
            &gw_url,
            "--patients",
            "50",
            "--duration",
            "2d",
            "--rate",
            "1000",
            "--seed",
            "7",
            "--events",
            "0",
            "--patient-prefix",
            "steady-p",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(3)); // let it settle
    let (c0, w0) = (cpu_seconds(gw.pid()).unwrap_or(0.0), Instant::now());
    let mut rss_max = 0u64;
    let r0 = stored_readings(&hub_root)?;
    while w0.elapsed() < Duration::from_secs(args.steady_secs) {
        rss_max = rss_max.max(rss_bytes(gw.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let gw_cpu = (cpu_seconds(gw.pid()).unwrap_or(0.0) - c0) / w0.elapsed().as_secs_f64();
    let steady_rate = (stored_readings(&hub_root)? - r0) as f64 / w0.elapsed().as_secs_f64();

    // 3. Catch-up after an outage, the simulator still sending 1,000 readings/s.
    hub.stop()?;
    std::thread::sleep(Duration::from_secs(args.outage_secs));
    let mut steady = steady;
    let _ = steady.kill();
    let _ = steady.wait();
    let backlog_now = status(&gw_url)?["outbox"]["readings"].as_u64().unwrap_or(0);
    let back_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let t = Instant::now();
    let hub = Server::spawn_logging(&osler, &hub_args, Duration::from_secs(60), &hub_log)?;
    // The gateway notices the hub at its next retry (backoff, at most about 15 s); the catch-up
    // rate is measured from its first successful upload to an empty outbox.
    let mut first_backlog = backlog_now;
    wait_until(Duration::from_secs(60), || {
        let s = status(&gw_url)?;
        first_backlog = s["outbox"]["readings"].as_u64().unwrap_or(0);
        Ok(s["upload"]["last_success_ms"]
            .as_i64()
            .is_some_and(|t| t >= back_ms))
    })?;
    let noticed_secs = t.elapsed().as_secs_f64();
    let t_first = Instant::now();
    wait_until(Duration::from_secs(1800), || {
        Ok(status(&gw_url)?["outbox"]["readings"].as_u64() == Some(0))
    })?;
    let catchup_secs = t_first.elapsed().as_secs_f64();
    let catchup_rate = first_backlog as f64 / catchup_secs.max(1e-3);
    hub.stop()?;
    gw.stop()?;

    println!();
    println!(
        "osler bench pipeline  (sim -> gateway -> hub, 3 processes, {} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<52} {:>18} {:>12}", "figure", "result", "goal");
    println!(
        "{:<52} {:>18} {:>12}",
        format!("end to end, {sent} readings, committed at the hub"),
        format!("{:.0} rdg/s", sent as f64 / e2e_secs),
        ">= 50000"
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  accepted by the gateway (durable in its outbox)",
        format!("{:.0} rdg/s", sent as f64 / accepted_secs),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  CPU seconds per 100k readings: hub / gateway",
        format!(
            "{:.2} / {:.2}",
            (cpu1.0 - cpu0.0) / sent as f64 * 1e5,
            (cpu1.1 - cpu0.1) / sent as f64 * 1e5
        ),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  bytes uploaded per reading (zstd, signed)",
        format!("{bytes_per_reading:.1} B"),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        format!("steady load, {:.0} rdg/s: gateway RSS (max)", steady_rate),
        format!("{:.1} MB", rss_max as f64 / 1e6),
        "<= 32 MB"
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  gateway CPU",
        format!("{:.1} % of a core", gw_cpu * 100.0),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        format!("outage {} s: backlog at hub's return", args.outage_secs),
        format!("{backlog_now} rdg"),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  hub back -> first upload (retry backoff)",
        format!("{noticed_secs:.1} s"),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  catch-up rate (first upload -> outbox empty)",
        format!("{catchup_rate:.0} rdg/s"),
        ""
    );
    println!(
        "{:<52} {:>18} {:>12}",
        "  time to drain",
        format!("{catchup_secs:.1} s"),
        ""
    );
    if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}
