//! `osler bench hub`: the hub alone, as a separate process over loopback.
//!
//! 1. Baseline: single-Observation POSTs, one after another (what a client gets from a server
//!    that commits each write on its own).
//! 2. Ingest: FHIR transaction Bundles of 1,000 Observations from concurrent clients.
//! 3. Fill: the rest of the readings straight into the store (same write path minus HTTP and
//!    JSON), so that the search runs over millions of readings in minutes, not an hour.
//! 4. Size: bytes on disk per reading, beside the size of the FHIR JSON the hub serves.
//! 5. Search: the main query (one patient, one metric, 24 hours) against a restarted hub.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use osler_core::{Metric, Reading};
use osler_store::{Store, StoreOptions, WriteOp};

use crate::cohort::{Cohort, observation_text, readings_per_patient_day, transaction_text};
use crate::percentile;
use crate::process::{Server, metric_value};

#[derive(clap::Args, Debug)]
pub struct HubBenchArgs {
    /// Readings stored in all; the search runs over this many.
    #[arg(long, default_value_t = 10_000_000)]
    readings: u64,
    /// Of which this many are posted through FHIR transaction Bundles (the rest is loaded
    /// straight into the store).
    #[arg(long, default_value_t = 300_000)]
    ingest: usize,
    /// Observations per transaction Bundle.
    #[arg(long, default_value_t = 1000)]
    bundle: usize,
    /// Concurrent HTTP clients posting Bundles.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Single-Observation POSTs for the baseline.
    #[arg(long, default_value_t = 500)]
    baseline_posts: usize,
    /// Patients in the synthetic cohort.
    #[arg(long, default_value_t = 200)]
    patients: usize,
    /// 24-hour searches to time.
    #[arg(long, default_value_t = 2000)]
    searches: usize,
    /// Data directory (default: a new directory under the system temp dir, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    keep: bool,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
    /// Give every reading a sender identifier (stored and indexed for conditional create), to
    /// measure what identifiers cost on disk.
    #[arg(long)]
    identifiers: bool,
    /// Seed for the synthetic cohort.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

use crate::now_ms;

fn agent() -> ureq::Agent {
    crate::process::agent_builder(Duration::from_secs(120))
        .max_idle_connections_per_host(16)
        .build()
}

fn post(agent: &ureq::Agent, url: &str, body: &str) -> anyhow::Result<String> {
    match crate::process::request_on(agent, "POST", url)
        .set("Content-Type", "application/fhir+json")
        .send_string(body)
    {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(code, r)) => {
            bail!(
                "POST {url}: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => Err(e).with_context(|| format!("POST {url}")),
    }
}

fn get(agent: &ureq::Agent, url: &str) -> anyhow::Result<String> {
    match crate::process::request_on(agent, "GET", url).call() {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(code, r)) => {
            bail!(
                "GET {url}: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => Err(e).with_context(|| format!("GET {url}")),
    }
}

fn dir_bytes(db: &std::path::Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    total
}

pub fn run(args: HubBenchArgs) -> anyhow::Result<()> {
    let osler = match &args.osler {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find the osler binary")?,
    };
    ensure!(
        args.bundle > 0 && args.clients > 0 && args.patients > 0,
        "bundle, clients and patients must be positive"
    );
    ensure!(
        (args.baseline_posts + args.ingest) as u64 <= args.readings,
        "--readings must be at least --baseline-posts + --ingest"
    );
    let data = match &args.data {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("osler-bench-hub-{}", std::process::id())),
    };
    if data.join(osler_store::DB_FILE).exists() {
        bail!(
            "{} already holds a hub database; the benchmark needs an empty directory",
            data.display()
        );
    }
    std::fs::create_dir_all(&data)?;

    // The cohort's timeline ends an hour before now, so no reading is in the future.
    let days = args.readings as f64 / (args.patients as f64 * readings_per_patient_day());
    let span_ms = (days * 86_400_000.0) as i64 + 3_600_000;
    let start_ms = (now_ms() - span_ms - 3_600_000) / 86_400_000 * 86_400_000;
    let mut numbered = 0u64;
    let with_ids = args.identifiers;
    let mut cohort = Cohort::new(args.patients, start_ms, args.seed).map(move |mut r| {
        if with_ids {
            numbered += 1;
            r.identifier = Some(osler_core::Identifier {
                system: "urn:osler:bench".into(),
                value: format!("r{numbered}"),
            });
        }
        r
    });
    let patients: Vec<String> = (0..args.patients)
        .map(|i| Cohort::patient_id(i).to_string())
        .collect();

    eprintln!(
        "osler bench hub: {} readings, {} patients, {:.1} simulated days; data in {}",
        args.readings,
        args.patients,
        days,
        data.display()
    );
    let baseline: Vec<String> = cohort
        .by_ref()
        .take(args.baseline_posts)
        .map(|r| observation_text(&r))
        .collect();
    let ingest: Vec<Reading> = cohort.by_ref().take(args.ingest).collect();
    let bundles: Vec<String> = ingest.chunks(args.bundle).map(transaction_text).collect();
    let bundle_bytes: usize = bundles.iter().map(String::len).sum();
    drop(ingest);

    let server = Server::start(&osler, &data, Duration::from_secs(30))?;
    let agent = agent();

    // 1. Baseline: one Observation per request, one request at a time.
    let t = Instant::now();
    for body in &baseline {
        post(&agent, &format!("{}/Observation", server.base), body)?;
    }
    let baseline_rate = baseline.len() as f64 / t.elapsed().as_secs_f64();

    // 2. Transaction Bundles from concurrent clients.
    let bundles = Arc::new(bundles);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|_| {
            let (bundles, next, base, agent) = (
                bundles.clone(),
                next.clone(),
                server.base.clone(),
                agent.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bundles.get(i) else {
                        return Ok(latencies);
                    };
                    let t = Instant::now();
                    let resp = post(&agent, &base, body)?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    ensure!(
                        resp.contains("\"transaction-response\""),
                        "unexpected response: {}",
                        &resp[..resp.len().min(300)]
                    );
                }
            })
        })
        .collect();
    let mut bundle_ms = Vec::new();
    for w in workers {
        bundle_ms.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let ingest_secs = t.elapsed().as_secs_f64();
    let ingest_rate = args.ingest as f64 / ingest_secs;
    bundle_ms.sort_by(f64::total_cmp);
    let metrics = get(&agent, &server.base.replace("/fhir", "/metrics"))?;
    let stored = metric_value(&metrics, "osler_readings_stored").unwrap_or(-1.0) as usize;
    ensure!(
        stored == args.baseline_posts + args.ingest,
        "the hub reports {stored} readings stored, expected {}",
        args.baseline_posts + args.ingest
    );
    server.stop()?;

    // 3. Fill the rest straight into the store.
    let rest = args.readings as usize - args.baseline_posts - args.ingest;
    let t = Instant::now();
    {
        let store = Store::open(&data, StoreOptions::default())?;
        let mut chunk = Vec::with_capacity(20_000);
        for r in cohort.by_ref().take(rest) {
            chunk.push(WriteOp {
                reading: r,
                if_none_exist: None,
                by_device: false,
                correction: None,
            });
            if chunk.len() == 20_000 {
                let res = store.write_blocking(std::mem::take(&mut chunk), false)?;
                ensure!(
                    res.outcomes
                        .iter()
                        .all(|o| matches!(o, osler_store::WriteOutcome::Created(_))),
                    "fill: a reading was not created"
                );
            }
        }
        if !chunk.is_empty() {
            store.write_blocking(chunk, false)?;
        }
    }
    let fill_rate = rest as f64 / t.elapsed().as_secs_f64();
    let end_ms = cohort.next().map_or(start_ms, |r| r.taken.utc_ms);

    // 5. Search a restarted hub: random patient, heart rate, a random 24-hour window.
    let t = Instant::now();
    let server = Server::start(&osler, &data, Duration::from_secs(120))?;
    let restart_secs = t.elapsed().as_secs_f64();
    let mut rng = crate::cohort::Rng::new(args.seed ^ 0x5eed);
    let window = 86_400_000;
    let latest_start = (end_ms - window).max(start_ms + 1);
    let mut search_ms = Vec::with_capacity(args.searches);
    let mut totals = 0u64;
    let mut json_bytes = 0usize;
    let mut json_count = 0usize;
    for i in 0..args.searches {
        let p = &patients[(rng.next_u64() % patients.len() as u64) as usize];
        let from = start_ms + (rng.unit() * (latest_start - start_ms) as f64) as i64;
        let fmt = |ms: i64| osler_core::Timestamp::utc(ms).to_string();
        let url = format!(
            "{}/Observation?patient={p}&code=http://loinc.org|{}&date=ge{}&date=lt{}",
            server.base,
            Metric::HeartRate.info().loinc.code,
            fmt(from),
            fmt(from + window)
        );
        let t = Instant::now();
        let body = get(&agent, &url)?;
        search_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let total = v["total"]
            .as_u64()
            .context("a search Bundle without total")?;
        totals += total;
        if i < 20 {
            for e in v["entry"].as_array().into_iter().flatten() {
                json_bytes += e["resource"].to_string().len();
                json_count += 1;
            }
        }
    }
    search_ms.sort_by(f64::total_cmp);
    let metrics = get(&agent, &server.base.replace("/fhir", "/metrics"))?;
    let stored_after = metric_value(&metrics, "osler_readings_stored").unwrap_or(-1.0) as u64;
    server.stop()?;
    ensure!(
        stored_after == args.readings,
        "after restart the hub reports {stored_after} readings, expected {}",
        args.readings
    );

    // 4. Size on disk (after the hub's clean stop has checkpointed what it could).
    let bytes = dir_bytes(&data.join(osler_store::DB_FILE));
    let per_reading = bytes as f64 / args.readings as f64;
    let json_per_reading = json_bytes as f64 / json_count.max(1) as f64;

    println!();
    println!(
        "osler bench hub  ({} readings, {} patients, {} cores)",
        args.readings,
        args.patients,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "figure", "result", "goal", "baseline"
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        format!(
            "ingest, transaction Bundles of {} ({} clients)",
            args.bundle, args.clients
        ),
        format!("{ingest_rate:.0} obs/s"),
        ">= 20000",
        format!("{baseline_rate:.0} obs/s single POST")
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "  Bundle latency p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(&bundle_ms, 50.0),
            percentile(&bundle_ms, 99.0)
        ),
        "",
        format!(
            "{:.0} B/obs posted",
            bundle_bytes as f64 / args.ingest.max(1) as f64
        )
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "store fill, direct (no HTTP, no JSON)",
        format!("{fill_rate:.0} rdg/s"),
        "",
        ""
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "bytes on disk per reading",
        format!("{per_reading:.1} B"),
        "<= 64",
        format!("{json_per_reading:.0} B as FHIR JSON")
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "hub restart until listening",
        format!("{:.0} ms", restart_secs * 1e3),
        "",
        ""
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "search 1 patient, HR, 24 h: p50",
        format!("{:.2} ms", percentile(&search_ms, 50.0)),
        "",
        ""
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "  p99",
        format!("{:.2} ms", percentile(&search_ms, 99.0)),
        "<= 10 ms",
        ""
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "  max",
        format!("{:.2} ms", percentile(&search_ms, 100.0)),
        "",
        ""
    );
    println!(
        "{:<46} {:>16} {:>12} {:>24}",
        "  readings matched per search (mean)",
        format!("{:.0}", totals as f64 / args.searches.max(1) as f64),
        "",
        "first page: 50 + total"
    );
    println!(
        "{:<46} {:>16}",
        "database",
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    );

    if !args.keep && args.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}
