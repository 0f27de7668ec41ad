//! `osler bench registry`: the registry's searches against a real hub over loopback.
//!
//! 1. Enrol `--patients` Patients (100,000 by default) with PUT from concurrent clients.
//! 2. Patient search by name (family prefix, given name, any part of the name), first page.
//! 3. Fill `--readings` heart-rate readings (10 M by default: `--reading-patients` patients,
//!    one a minute) straight into the store (the write path minus HTTP and JSON), restart.
//! 4. Observation search across patients: one code over a random 24 hours, first page.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use osler_store::{Store, StoreOptions, WriteOp};

use crate::percentile;
use crate::process::Server;

#[derive(clap::Args, Debug)]
pub struct RegistryBenchArgs {
    /// Patients enrolled.
    #[arg(long, default_value_t = 100_000)]
    patients: usize,
    /// Concurrent HTTP clients enrolling them.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Searches timed per kind.
    #[arg(long, default_value_t = 2000)]
    searches: usize,
    /// Heart-rate readings stored for the search across patients.
    #[arg(long, default_value_t = 10_000_000)]
    readings: u64,
    /// Patients those readings belong to (one reading a minute each).
    #[arg(long, default_value_t = 1000)]
    reading_patients: usize,
    /// Data directory (default: a new directory under the system temp dir, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    keep: bool,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
    /// Seed for the synthetic names.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// A small deterministic generator (SplitMix64): the same seed, the same cohort.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

const SYLLABLES: &[&str] = &[
    "ba", "ber", "co", "dan", "el", "fa", "gar", "hen", "is", "jo", "ka", "lin", "mar", "no", "os",
    "per", "qui", "ros", "sa", "tor", "ul", "ven", "wil", "zor",
];
const GIVEN: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Elif", "Farah", "Goran", "Hana", "Ivan", "Jonas", "Kemal",
    "Lea", "Maya", "Noah", "Olga", "Pedro", "Quentin", "Rosa", "Sami", "Tariq", "Uma", "Vera",
    "Wen", "Xavier", "Yara", "Zoë", "Amir", "Björn", "Chloé", "Dário",
];

/// A family name of three syllables (13,824 of them), capitalised.
fn family(rng: &mut Rng) -> String {
    let s: String = (0..3).map(|_| rng.pick(SYLLABLES)).collect();
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn timed(agent: &ureq::Agent, url: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let r = crate::process::request_on(agent, "GET", url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    r.into_string()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn summary(label: &str, ms: &mut [f64], goal: &str) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{label:<48} {:>9} {:>9} {:>9} {goal:>10}",
        format!("{:.2}", percentile(ms, 50.0)),
        format!("{:.2}", percentile(ms, 99.0)),
        format!("{:.2}", percentile(ms, 100.0)),
    );
}

pub fn run(args: RegistryBenchArgs) -> anyhow::Result<()> {
    let osler = match &args.osler {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find the osler binary")?,
    };
    ensure!(
        args.patients > 0 && args.clients > 0 && args.searches > 0 && args.reading_patients > 0,
        "patients, clients, searches and reading-patients must be positive"
    );
    let data = match &args.data {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("osler-bench-registry-{}", std::process::id())),
    };
    if data.join(osler_store::DB_FILE).exists() {
        bail!(
            "{} already holds a hub database; the benchmark needs an empty directory",
            data.display()
        );
    }
    std::fs::create_dir_all(&data)?;
    eprintln!(
        "osler bench registry: {} patients, {} readings of {} patients; data in {}",
        args.patients,
        args.readings,
        args.reading_patients,
        data.display()
    );

    // 1. Enrol.
    let mut rng = Rng(args.seed);
    let people: Vec<(String, String)> = (0..args.patients)
        .map(|_| (family(&mut rng), rng.pick(GIVEN).to_owned()))
        .collect();
    let people = Arc::new(people);
    let server = Server::start(&osler, &data, Duration::from_secs(30))?;
    let agent = crate::process::agent_builder(Duration::from_secs(60))
        .max_idle_connections_per_host(16)
        .build();
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|_| {
            let (people, next, base, agent) = (people.clone(), next.clone(), server.base.clone(), agent.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((family, given)) = people.get(i) else { return Ok(()) };
                    let body = serde_json::json!({
                        "resourceType": "Patient", "active": true,
                        "identifier": [{"system": "urn:bench:mrn", "value": format!("M{i:07}")}],
                        "name": [{"family": family, "given": [given]}],
                        "gender": if i % 2 == 0 { "female" } else { "male" },
                        "birthDate": format!("{}-{:02}-{:02}", 1930 + i % 80, 1 + i % 12, 1 + i % 28),
                    });
                    crate::process::request_on(&agent, "PUT", &format!("{base}/Patient/bp{i}"))
                        .set("Content-Type", "application/fhir+json")
                        .send_string(&body.to_string())
                        .with_context(|| format!("PUT Patient/bp{i}"))?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("an enrolling client panicked"))??;
    }
    let enrol_rate = args.patients as f64 / t.elapsed().as_secs_f64();

    // 2. Patient search by name, first page (with its total).
    let mut by_family = Vec::with_capacity(args.searches);
    let mut by_given_family = Vec::with_capacity(args.searches);
    let mut by_name = Vec::with_capacity(args.searches);
    let mut matched = 0u64;
    for _ in 0..args.searches {
        let (family, given) = &people[(rng.next() % people.len() as u64) as usize];
        let prefix: String = family.chars().take(4).collect();
        let url = format!("{}/Patient?family={prefix}", server.base);
        by_family.push(timed(&agent, &url)?);
        let url = format!("{}/Patient?given={given}&family={family}", server.base);
        by_given_family.push(timed(&agent, &url)?);
        let url = format!("{}/Patient?name={}", server.base, family.to_lowercase());
        let t = Instant::now();
        let page: serde_json::Value = serde_json::from_str(
            &crate::process::request_on(&agent, "GET", &url)
                .call()?
                .into_string()?,
        )?;
        by_name.push(t.elapsed().as_secs_f64() * 1e3);
        matched += page["total"].as_u64().unwrap_or(0);
    }
    server.stop()?;

    // 3. Readings, straight into the store.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let per_patient = args.readings / args.reading_patients as u64;
    let start = (now - per_patient as i64 * 60_000 - 3_600_000) / 60_000 * 60_000;
    let t = Instant::now();
    {
        let store = Store::open(&data, StoreOptions::default())?;
        let mut chunk = Vec::with_capacity(50_000);
        for minute in 0..per_patient as i64 {
            for p in 0..args.reading_patients {
                let t_ms = start + minute * 60_000 + (p as i64 * 37) % 60_000;
                chunk.push(WriteOp {
                    reading: Reading {
                        patient: Id::parse(&format!("bp{p}")).context("patient id")?,
                        device: Id::parse(&format!("watch-{p}")),
                        metric: Metric::HeartRate,
                        value: Value::Scalar(60.0 + ((minute + p as i64) % 40) as f64),
                        taken: Timestamp::utc(t_ms),
                        received_ms: t_ms + 2000,
                        status: Status::Final,
                        identifier: None,
                    },
                    if_none_exist: None,
                    by_device: false,
                    correction: None,
                });
                if chunk.len() == 50_000 {
                    store.write_blocking(std::mem::take(&mut chunk), false)?;
                }
            }
        }
        if !chunk.is_empty() {
            store.write_blocking(chunk, false)?;
        }
    }
    let fill_rate = (per_patient * args.reading_patients as u64) as f64 / t.elapsed().as_secs_f64();

    // 4. Across patients: heart rate over a random 24 hours, first page.
    let server = Server::start(&osler, &data, Duration::from_secs(120))?;
    let span = (per_patient as i64 * 60_000 - 86_400_000).max(1);
    let mut across = Vec::with_capacity(args.searches);
    let mut entries = 0usize;
    for _ in 0..args.searches {
        let from = start + (rng.next() % span as u64) as i64;
        let url = format!(
            "{}/Observation?code=8867-4&date=ge{}&date=lt{}",
            server.base,
            Timestamp::utc(from),
            Timestamp::utc(from + 86_400_000)
        );
        let t = Instant::now();
        let page: serde_json::Value = serde_json::from_str(
            &crate::process::request_on(&agent, "GET", &url)
                .call()?
                .into_string()?,
        )?;
        across.push(t.elapsed().as_secs_f64() * 1e3);
        entries += page["entry"].as_array().map_or(0, Vec::len);
    }
    server.stop()?;

    println!();
    println!(
        "osler bench registry: {} patients enrolled; {} readings of {} patients",
        args.patients,
        per_patient * args.reading_patients as u64,
        args.reading_patients
    );
    println!(
        "{:<48} {:>9} {:>9} {:>9} {:>10}",
        "", "p50 ms", "p99 ms", "max ms", "goal p99"
    );
    summary(
        "Patient?family=<4-letter prefix>",
        &mut by_family,
        "<= 10 ms",
    );
    summary(
        "Patient?given=<name>&family=<name>",
        &mut by_given_family,
        "<= 10 ms",
    );
    summary(
        &format!(
            "Patient?name=<family> ({:.1} matches)",
            matched as f64 / args.searches as f64
        ),
        &mut by_name,
        "<= 10 ms",
    );
    summary(
        &format!(
            "Observation?code=HR, 24 h, all patients ({:.0}/page)",
            entries as f64 / args.searches as f64
        ),
        &mut across,
        "<= 20 ms",
    );
    println!(
        "{:<48} {:>9}",
        "enrolment, PUT Patient (clients)",
        format!("{enrol_rate:.0}/s ({})", args.clients)
    );
    println!(
        "{:<48} {:>9}",
        "reading fill, direct",
        format!("{fill_rate:.0}/s")
    );
    if args.keep {
        eprintln!("data kept in {}", data.display());
    } else if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}
