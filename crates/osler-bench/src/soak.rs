//! `osler bench soak`: the pipeline under load while things go wrong, counted at the end.
//!
//! A hub, a gateway (default edge processing) and `osler sim` run for `--minutes`. Meanwhile,
//! at random moments: the gateway is killed with `kill -9` and restarted; the hub is killed
//! with `kill -9` and restarted; the hub is stopped for a while (an outage); the gateway is
//! restarted with an outbox limit it is already past, so that it refuses readings for a while
//! (507) and devices resend. At the end the simulator's own record of what each device was told
//! (`--sent`: every reading acknowledged) is compared with what the hub holds, as readings or
//! counted in window summaries, per patient and metric: lost, duplicated. Injected events
//! (hypertensive crises and fevers, decided by one reading each) are compared with the hub's
//! alerts: every event must have its alert.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::process::{Server, enrol, setup};

#[derive(Args, Debug)]
pub struct SoakBenchArgs {
    /// How long the faults go on (the drain and the count come after).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Patients in the simulated cohort.
    #[arg(long, default_value_t = 20)]
    patients: usize,
    /// Readings a second the simulator sends (history replayed at this rate).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds between faults: each next one comes after a random 0.5x to 1.5x of this.
    #[arg(long, default_value_t = 20)]
    fault_every: u64,
    #[arg(long, default_value_t = 5)]
    seed: u64,
    /// The osler binary to run (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
    /// Where everything is kept (default: a new temp directory; kept afterwards for a look).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

/// Readings a patient's kit sends a day in the simulator's cohort (watch every 5 s, SpO2 and
/// steps every minute, a CGM for one in three, cuff, scale, thermometer): for sizing the run.
const SIM_READINGS_PER_DAY: f64 = 20_300.0;

/// xorshift: the faults' schedule is repeatable for a seed.
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct Faults {
    gateway_kills: u32,
    hub_kills: u32,
    outages: u32,
    full_windows: u32,
}

/// The processes, on fixed ports so that restarts keep their addresses.
struct Pipeline<'a> {
    osler: &'a Path,
    hub_dir: String,
    gw_dir: String,
    hub_port: u16,
    gw_port: u16,
    logs: PathBuf,
}

impl Pipeline<'_> {
    fn hub(&self) -> anyhow::Result<Server> {
        Server::spawn_logging(
            self.osler,
            &[
                "serve",
                "--data",
                &self.hub_dir,
                "--listen",
                &format!("127.0.0.1:{}", self.hub_port),
            ],
            Duration::from_secs(60),
            &self.logs.join("hub.log"),
        )
    }

    fn gateway(&self, limit: Option<&str>) -> anyhow::Result<Server> {
        let hub = format!("http://127.0.0.1:{}", self.hub_port);
        let listen = format!("127.0.0.1:{}", self.gw_port);
        let mut args = vec![
            "gateway",
            "--data",
            &self.gw_dir,
            "--hub",
            &hub,
            "--listen",
            &listen,
        ];
        if let Some(l) = limit {
            args.extend(["--outbox-limit", l]);
        }
        Server::spawn_logging(
            self.osler,
            &args,
            Duration::from_secs(60),
            &self.logs.join("gw.log"),
        )
    }
}

/// A port free now for a process restarted at the same address, chosen below the kernel's
/// ephemeral range: a port from it can be taken meanwhile by the gateway's own connection to an
/// absent hub (a socket given the destination port as its source connects to itself).
fn free_port() -> anyhow::Result<u16> {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let from = 10_000u16;
    let span = low.saturating_sub(from).max(1);
    // Each call moves on, so that two calls never name the same port.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = from + start.wrapping_add(n) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port below the ephemeral range")
}

fn kill9(mut s: Server) {
    let _ = s.child.kill();
    let _ = s.child.wait();
}

fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    let text = crate::process::get(url)
        .timeout(Duration::from_secs(30))
        .call()?
        .into_string()?;
    Ok(serde_json::from_str(&text)?)
}

pub fn run(args: SoakBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.minutes > 0 && args.patients > 0 && args.rate > 0,
        "nothing to run"
    );
    let (osler, data) = setup(args.osler.as_deref(), args.data.as_deref(), "soak")?;
    std::fs::create_dir_all(&data)?;
    let p = Pipeline {
        osler: &osler,
        hub_dir: data.join("hub").to_str().context("UTF-8 paths")?.to_owned(),
        gw_dir: data.join("gw").to_str().context("UTF-8 paths")?.to_owned(),
        hub_port: free_port()?,
        gw_port: free_port()?,
        logs: data.clone(),
    };
    let mut hub = Some(p.hub()?);
    enrol(&osler, &p.hub_dir, &p.gw_dir)?;
    let mut gw = Some(p.gateway(None)?);
    let (sent, truth) = (data.join("sent.jsonl"), data.join("ground-truth.jsonl"));
    // History long enough that the simulator is still sending when the faults stop.
    let days = (args.rate as f64 * args.minutes as f64 * 60.0
        / (args.patients as f64 * SIM_READINGS_PER_DAY))
        .max(0.05);
    let hours = format!("{}h", (days * 24.0).ceil() as u64);
    let events = ((days * args.patients as f64) as usize).max(4).to_string();
    let gw_url = format!("http://127.0.0.1:{}", p.gw_port);
    let sim_log = std::fs::File::create(data.join("sim.log"))?;
    let mut sim = std::process::Command::new(&osler)
        .args([
            "sim",
            "--gateway",
            &gw_url,
            "--patients",
            &args.patients.to_string(),
            "--duration",
            &hours,
            "--rate",
            &args.rate.to_string(),
            "--batch",
            "200",
            "--events",
            &events,
            "--event-kinds",
            "hypertensive-crisis,fever",
            "--seed",
            &args.seed.to_string(),
            "--retry-for",
            "900",
            "--sent",
            sent.to_str().context("UTF-8 paths")?,
            "--ground-truth",
            truth.to_str().context("UTF-8 paths")?,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(sim_log)
        .spawn()
        .context("cannot start osler sim")?;
    println!(
        "osler bench soak: {} min of faults, {} patients, {} readings/s ({hours} of history), data and logs in {}",
        args.minutes,
        args.patients,
        args.rate,
        data.display()
    );

    let mut rng = Rng(args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut faults = Faults::default();
    let deadline = Instant::now() + Duration::from_secs(args.minutes * 60);
    let pause = |rng: &mut Rng, mean: f64| Duration::from_secs_f64(mean * (0.5 + rng.unit()));
    while Instant::now() < deadline {
        std::thread::sleep(pause(&mut rng, args.fault_every as f64).min(deadline - Instant::now()));
        if Instant::now() >= deadline || sim.try_wait()?.is_some() {
            break;
        }
        let pick = rng.unit();
        if pick < 0.4 {
            kill9(gw.take().context("a gateway runs")?);
            faults.gateway_kills += 1;
            gw = Some(p.gateway(None)?);
        } else if pick < 0.7 {
            kill9(hub.take().context("a hub runs")?);
            faults.hub_kills += 1;
            std::thread::sleep(pause(&mut rng, 2.0));
            hub = Some(p.hub()?);
        } else if pick < 0.85 {
            hub.take().context("a hub runs")?.stop()?;
            faults.outages += 1;
            std::thread::sleep(pause(&mut rng, 30.0));
            hub = Some(p.hub()?);
        } else {
            // An outbox past its limit: every reading is refused (507) and devices resend;
            // then a kill -9 ends the window.
            kill9(gw.take().context("a gateway runs")?);
            gw = Some(p.gateway(Some("1"))?);
            std::thread::sleep(pause(&mut rng, 10.0));
            kill9(gw.take().context("a gateway runs")?);
            faults.gateway_kills += 1;
            faults.full_windows += 1;
            gw = Some(p.gateway(None)?);
        }
    }
    println!(
        "faults: {} gateway kill -9, {} hub kill -9, {} hub outages, {} full-outbox windows; waiting for the simulator",
        faults.gateway_kills, faults.hub_kills, faults.outages, faults.full_windows
    );
    let out = sim.wait_with_output()?;
    let summary = crate::process::sim_summary(&out)?;
    let gw = gw.context("a gateway runs")?;
    let hub = hub.context("a hub runs")?;
    wait_drained(&gw.base)?;
    let hub_root = hub.base.trim_end_matches("/fhir").to_owned();

    // Readings: acknowledged per (patient, metric) against the hub's.
    let acked = acknowledged(&sent)?;
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    let mut at_hub = 0u64;
    let patients: Vec<String> = acked
        .keys()
        .map(|(p, _)| p.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut have: BTreeMap<(String, String), u64> = BTreeMap::new();
    for patient in &patients {
        for (m, n) in hub_counts(&hub.base, patient)? {
            have.insert((patient.clone(), m), n);
        }
    }
    for (key, n) in &acked {
        let h = have.get(key).copied().unwrap_or(0);
        lost += n.saturating_sub(h);
        duplicated += h.saturating_sub(*n);
        at_hub += h;
    }
    for (key, h) in &have {
        if !acked.contains_key(key) {
            duplicated += h;
            at_hub += h;
        }
    }
    let total: u64 = acked.values().sum();

    // Alerts: every injected event has its alert at the hub.
    let truth: Vec<serde_json::Value> = std::fs::read_to_string(&truth)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let alerts = get_json(&format!("{hub_root}/alerts?limit=100000"))?;
    let raised: Vec<serde_json::Value> = alerts["alerts"].as_array().cloned().unwrap_or_default();
    let missed = truth
        .iter()
        .filter(|e| !raised.iter().any(|a| crate::alerts::explains(e, a)))
        .count();
    gw.stop()?;
    hub.stop()?;

    println!();
    println!("| figure | result | goal |");
    println!("|---|---|---|");
    println!(
        "| faults over {} min | {} kill -9 (gateway {}, hub {}), {} hub outages, {} full-outbox windows | ≥ 50 kills over ≥ 30 min |",
        args.minutes,
        faults.gateway_kills + faults.hub_kills,
        faults.gateway_kills,
        faults.hub_kills,
        faults.outages,
        faults.full_windows
    );
    println!(
        "| readings acknowledged to devices | {total} (the simulator says {}) | |",
        summary["acknowledged"]
    );
    println!("| at the hub, as themselves or counted in one summary | {at_hub} | {total} |");
    println!("| **lost** | **{lost}** | 0 |");
    println!("| **duplicated** | **{duplicated}** | 0 |");
    println!(
        "| injected events without their alert | **{missed}** of {} | 0 |",
        truth.len()
    );
    if lost > 0 || duplicated > 0 || missed > 0 {
        bail!("the soak lost, duplicated or missed something (see the table)");
    }
    Ok(())
}

/// Waits until the gateway holds nothing more to send (every lane empty, no stream holding).
fn wait_drained(gw: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(s) = get_json(&format!("{gw}/status"))
            && ["readings", "alerts", "summaries"]
                .iter()
                .all(|l| s["outbox"][l] == 0)
            && s["edge"]["streams_holding"] == 0
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the gateway did not drain within 10 minutes")
}

/// Readings the simulator was told were stored, per (patient, metric key).
fn acknowledged(path: &Path) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let mut out = BTreeMap::new();
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    for line in file.lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let key = (
            v["patient"].as_str().unwrap_or_default().to_owned(),
            v["metric"].as_str().unwrap_or_default().to_owned(),
        );
        *out.entry(key).or_default() += 1;
    }
    Ok(out)
}

/// What the hub holds for a patient, per metric key: readings count once, window summaries
/// their count.
fn hub_counts(base: &str, patient: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut per_metric: BTreeMap<String, u64> = BTreeMap::new();
    let mut url = Some(format!("{base}/Observation?patient={patient}&_count=1000"));
    while let Some(u) = url.take() {
        let page = get_json(&u)?;
        for e in page["entry"].as_array().cloned().unwrap_or_default() {
            let o = &e["resource"];
            let loinc = o["code"]["coding"][0]["code"].as_str().unwrap_or_default();
            let metric = osler_core::Metric::from_loinc(loinc)
                .map_or(loinc.to_owned(), |m| m.info().key.to_owned());
            let summary = o["meta"]["tag"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["code"] == "edge-summary"));
            let n = if summary {
                o["component"]
                    .as_array()
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c["code"]["coding"][0]["code"] == "count")
                            .and_then(|c| c["valueInteger"].as_u64())
                    })
                    .unwrap_or(0)
            } else {
                1
            };
            *per_metric.entry(metric).or_default() += n;
        }
        url = page["link"].as_array().and_then(|links| {
            links
                .iter()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str().map(str::to_owned))
        });
    }
    Ok(per_metric)
}
