//! `osler bench burden`: the alert burden of a simulated cohort. Days of a cohort's readings
//! (with injected clinical events) are replayed through a gateway into a hub as fast as they
//! go; then the hub's `/metrics` give alerts per patient-day and the share someone answered
//! (none here: nobody answers a simulation), and `/alerts` gives them by rule.
//!
//! Beside it, the figure a published remote-monitoring program reports (a hypertension program:
//! about 0.5 alerts per patient-day, JMIR Med Inform 2025;13:e66066, see
//! `../shared/reference/alerts.md`). A simulation is not that program's population: the figure
//! says how noisy Osler's rules are on this cohort, not on yours.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::process::{metric_value, sim_summary};

#[derive(clap::Args, Debug)]
pub struct BurdenBenchArgs {
    /// Patients in the cohort.
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// Days of readings per patient.
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// Clinical events injected into the cohort.
    #[arg(long, default_value_t = 40)]
    events: usize,
    /// Seed of the simulated cohort (the same seed, the same readings and events).
    #[arg(long, default_value_t = 5)]
    seed: u64,
    /// Data directory (default: a new temp directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
}

pub fn run(args: BurdenBenchArgs) -> anyhow::Result<()> {
    let (osler, data) =
        crate::process::setup(args.osler.as_deref(), args.data.as_deref(), "burden")?;
    let (hub, root, gw) = crate::process::hub_and_gateway(&osler, &data, &[])?;
    let started = Instant::now();
    let out = Command::new(&osler)
        .args(["sim", "--gateway", &gw.base])
        .args(["--patients", &args.patients.to_string()])
        .args(["--duration", &format!("{}d", args.days)])
        .args(["--events", &args.events.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .env("OSLER_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run osler sim")?;
    let summary = sim_summary(&out)?;
    // Everything the gateway holds reaches the hub before the count.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending =
            crate::process::outbox_pending(&gw.base, &["readings", "alerts", "summaries"]);
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not drain in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let replay_secs = started.elapsed().as_secs_f64();
    let metrics = crate::process::get(&format!("{root}/metrics"))
        .call()?
        .into_string()?;
    let alerts: serde_json::Value = serde_json::from_str(
        &crate::process::get(&format!("{root}/alerts?limit=10000"))
            .call()?
            .into_string()?,
    )?;
    let mut by_rule: BTreeMap<(String, String), u64> = BTreeMap::new();
    for a in alerts["alerts"].as_array().into_iter().flatten() {
        let key = (
            a["severity"].as_str().unwrap_or("?").to_owned(),
            a["rule"].as_str().unwrap_or("?").to_owned(),
        );
        *by_rule.entry(key).or_default() += 1;
    }
    hub.stop()?;
    gw.stop()?;
    let m = |name: &str| metric_value(&metrics, name).unwrap_or(f64::NAN);
    println!();
    println!(
        "osler bench burden  ({} patients, {} days, {} injected events, seed {}; replayed in {replay_secs:.0} s)",
        args.patients, args.days, args.events, args.seed
    );
    println!("{:<48} {:>14} {:>14}", "figure", "result", "a program");
    println!(
        "{:<48} {:>14} {:>14}",
        "readings sent by the devices",
        summary["acknowledged"].to_string(),
        ""
    );
    println!(
        "{:<48} {:>14} {:>14}",
        "patient-days monitored",
        format!("{:.1}", m("osler_patient_days_30d")),
        ""
    );
    println!(
        "{:<48} {:>14} {:>14}",
        "alerts raised",
        format!("{:.0}", m("osler_alerts_raised_30d")),
        ""
    );
    println!(
        "{:<48} {:>14} {:>14}",
        "alerts per patient-day",
        format!("{:.2}", m("osler_alerts_per_patient_day")),
        "0.5"
    );
    println!(
        "{:<48} {:>14} {:>14}",
        "share answered (acknowledged or accepted)",
        format!("{:.0} %", m("osler_alerts_answered_ratio") * 100.0),
        ""
    );
    for ((severity, rule), n) in &by_rule {
        println!(
            "{:<48} {:>14} {:>14}",
            format!("  {severity} {rule}"),
            n.to_string(),
            ""
        );
    }
    if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}
