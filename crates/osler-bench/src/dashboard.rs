//! `osler bench dashboard`: how long the dashboard's heaviest pages take on a real hub over
//! TLS, from the request to the last byte of the page: the worklist of a clinician whose care
//! teams hold `--patients` patients (goal ≤ 100 ms for 500), and one patient's page over 90
//! days of minute-by-minute heart rate (goal ≤ 500 ms).
//!
//! The cohort: every patient has a day of heart rate every `--hr-every` seconds, SpO2 every
//! 15 minutes, and a month of blood pressure twice a day and weight once a day (so the month's
//! data days are full); one patient has 90 days of heart rate every minute. A third of the
//! patients have an open critical alert (their latest pressure is in crisis).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use serde_json::json;

use crate::cohort::transaction_text;
use crate::percentile;
use crate::process::{Server, agent, request_on};

#[derive(clap::Args, Debug)]
pub struct DashboardBenchArgs {
    /// Patients on the clinician's worklist.
    #[arg(long, default_value_t = 500)]
    patients: usize,
    /// Seconds between the heart-rate readings of the worklist's last day.
    #[arg(long, default_value_t = 60)]
    hr_every: i64,
    /// Timed requests of each page.
    #[arg(long, default_value_t = 30)]
    requests: usize,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
}

const MIN: i64 = 60_000;
const DAY: i64 = 1440 * MIN;

fn reading(patient: &str, metric: Metric, value: Value, t_ms: i64) -> Reading {
    Reading {
        // Ids made here are valid ids ("p" and digits).
        patient: Id::parse(patient).expect("a valid id"),
        device: Id::parse(&format!("{patient}-{}", metric.info().key)),
        metric,
        value,
        taken: Timestamp::utc(t_ms),
        received_ms: t_ms,
        status: Status::Final,
        identifier: None,
    }
}

/// The cohort, oldest first within each patient.
fn cohort(patients: usize, hr_every: i64, now: i64) -> Vec<Reading> {
    let mut out = Vec::new();
    for i in 0..patients {
        let p = format!("p{i}");
        let wobble = |t: i64| ((t / MIN + i as i64 * 7) % 29) as f64;
        let mut t = now - DAY;
        while t < now {
            out.push(reading(
                &p,
                Metric::HeartRate,
                Value::Scalar(62.0 + wobble(t)),
                t,
            ));
            t += hr_every * 1000;
        }
        let mut t = now - DAY;
        while t < now {
            out.push(reading(
                &p,
                Metric::Spo2,
                Value::Scalar(95.0 + wobble(t) % 4.0),
                t,
            ));
            t += 15 * MIN;
        }
        for d in (0..30).rev() {
            let day = now - d * DAY - 2 * MIN;
            let crisis = d == 0 && i % 3 == 0;
            let sys = if crisis { 190.0 } else { 118.0 + wobble(day) };
            out.push(reading(
                &p,
                Metric::BloodPressure,
                Value::Pair(sys, 78.0),
                day,
            ));
            out.push(reading(
                &p,
                Metric::BloodPressure,
                Value::Pair(120.0, 80.0),
                day - 12 * 60 * MIN,
            ));
            out.push(reading(
                &p,
                Metric::BodyWeight,
                Value::Scalar(80.0 + wobble(day) / 10.0),
                day - 60 * MIN,
            ));
        }
    }
    // Ninety days of minute heart rate for the patient whose page is timed (p0's own day of
    // heart rate is replaced: the same times would conflict).
    out.retain(|r| !(r.patient.as_str() == "p0" && r.metric == Metric::HeartRate));
    let mut t = now - 90 * DAY;
    while t < now {
        let v = 60.0 + ((t / MIN) % 41) as f64;
        out.push(reading("p0", Metric::HeartRate, Value::Scalar(v), t));
        t += MIN;
    }
    out
}

/// `n` timed requests of a page after a first one, whose time is returned apart: it opens
/// the connection and fills the caches (SQLite's pages, the worklist's sparklines).
fn timed(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    n: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, f64, usize)> {
    let mut ms = Vec::with_capacity(n);
    let mut server = Vec::with_capacity(n);
    let (mut first, mut bytes) = (0.0, 0);
    for i in 0..=n {
        let t = Instant::now();
        let response = agent
            .get(url)
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .with_context(|| format!("GET {url}"))?;
        // "store;dur=12.3, total;dur=20.1": the server's own time for the page.
        let total = response
            .header("server-timing")
            .and_then(|h| h.split("total;dur=").nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok());
        let body = response.into_string()?;
        let took = t.elapsed().as_secs_f64() * 1e3;
        if i == 0 {
            first = took;
        } else {
            ms.push(took);
            server.extend(total);
        }
        bytes = body.len();
        ensure!(
            body.contains("<main"),
            "not a page: {}",
            &body[..body.len().min(200)]
        );
    }
    ms.sort_by(f64::total_cmp);
    server.sort_by(f64::total_cmp);
    Ok((ms, server, first, bytes))
}

pub fn run(args: DashboardBenchArgs) -> anyhow::Result<()> {
    ensure!(
        args.patients > 0 && args.hr_every > 0,
        "--patients and --hr-every must be positive"
    );
    let (osler, data) = crate::process::setup(args.osler.as_deref(), None, "dashboard")?;
    let hub_dir = data.join("hub");
    let hub_s = hub_dir.to_str().context("UTF-8 paths")?.to_owned();
    std::fs::create_dir_all(&data)?;
    let server = Server::spawn(
        &osler,
        &["serve", "--data", &hub_s, "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    )?;
    let root = server.base.trim_end_matches("/fhir").to_owned();
    let agent = agent(Duration::from_secs(120));

    // The clinician and the care teams that put every patient on their worklist.
    let put = |path: &str, body: serde_json::Value| -> anyhow::Result<()> {
        request_on(&agent, "PUT", &format!("{}/{path}", server.base))
            .set("Content-Type", "application/fhir+json")
            .send_string(&body.to_string())
            .with_context(|| format!("PUT {path}"))?;
        Ok(())
    };
    put(
        "Practitioner/bench-nurse",
        json!({"resourceType": "Practitioner"}),
    )?;
    for i in 0..args.patients {
        put(
            &format!("Patient/p{i}"),
            json!({"resourceType": "Patient", "name": [{"text": format!("Patient {i}")}]}),
        )?;
        put(
            &format!("CareTeam/t{i}"),
            json!({"resourceType": "CareTeam", "status": "active",
                "subject": {"reference": format!("Patient/p{i}")},
                "participant": [{"member": {"reference": "Practitioner/bench-nurse"}}]}),
        )?;
    }
    let token = crate::login::clinician_token(&osler, &hub_s, &root, &agent, "bench-nurse")?;

    let now = crate::now_ms();
    let readings = cohort(args.patients, args.hr_every, now);
    let total = readings.len();
    eprintln!(
        "osler bench dashboard: {} patients, {total} readings; data in {}",
        args.patients,
        data.display()
    );
    let bundles: Arc<Vec<String>> = Arc::new(readings.chunks(2000).map(transaction_text).collect());
    drop(readings);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (bundles, next, base, agent) = (
                bundles.clone(),
                next.clone(),
                server.base.clone(),
                agent.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                while let Some(b) = bundles.get(next.fetch_add(1, Ordering::Relaxed)) {
                    request_on(&agent, "POST", &base)
                        .set("Content-Type", "application/fhir+json")
                        .send_string(b)
                        .context("posting the cohort")?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a loader panicked"))??;
    }
    eprintln!("loaded in {:.1} s", t.elapsed().as_secs_f64());

    let pages = [
        (
            format!("worklist, {} patients (goal <= 100 ms)", args.patients),
            "/ui/worklist",
        ),
        (
            "patient page, 90 days of minute HR (goal <= 500 ms)".to_owned(),
            "/ui/patients/p0?range=90d",
        ),
        (
            "patient page, 24 hours".to_owned(),
            "/ui/patients/p1?range=24h",
        ),
    ];
    println!(
        "osler bench dashboard — {} patients, {total} readings, over TLS, request to last byte",
        args.patients
    );
    println!(
        "{:<52} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>6}",
        "page", "first ms", "p50 ms", "p99 ms", "max ms", "server p50", "server p99", "KiB"
    );
    for (label, path) in pages {
        let (ms, server, first, bytes) =
            timed(&agent, &format!("{root}{path}"), &token, args.requests)?;
        println!(
            "{label:<52} {first:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.1} {:>10.1} {:>6.0}",
            percentile(&ms, 50.0),
            percentile(&ms, 99.0),
            ms.last().copied().unwrap_or(f64::NAN),
            percentile(&server, 50.0),
            percentile(&server, 99.0),
            bytes as f64 / 1024.0
        );
    }
    println!(
        "(request to last byte over TLS, after a first request that fills the caches; server: \
         the page's own Server-Timing, from the request to the page built)"
    );
    server.stop()?;
    Ok(())
}
