//! `osler bench edge`: what the edge saves and what it keeps.
//!
//! **Offline part** (in this process, the same code the gateway runs): a simulated cohort is fed
//! through `osler-edge` exactly as the gateway's outbox does (zone from the rules, a stream per
//! patient × metric × device, the default policies). For each metric and overall it counts the
//! bytes and messages of three ways to upload the same readings:
//! 1. **per-reading JSON**: every raw reading POSTed alone in the gateway's device format, with
//!    the request line and the headers a minimal HTTP/1.1 client sends;
//! 2. **compressed raw batches**: every raw reading as a wire entry, one signed zstd batch per
//!    second of readings (what `osler gateway --raw` uploads), plus its request headers;
//! 3. **edge**: the readings the edge sends and its window summaries, batched the same way.
//!
//! It also checks fidelity: the hub's rule engine run over the raw readings and over what the
//! edge sends must raise and resolve the same alerts at the same reading times; every raw
//! reading must be sent or counted in exactly one summary; and the trend the hub can rebuild
//! (per stream, the mean of each 5-minute bucket from readings and summaries) must stay within
//! the metric's deadband of the raw trend. And it times each edge decision.
//!
//! **Live part** (`--live`): the standard scenario (1,000 patients at 10,000 readings/s for
//! 60 s) through real processes twice, `osler gateway --raw` then the default edge, reporting
//! the bytes and batches each gateway uploaded, the alerts each hub raised, and the gateway's
//! own decision-time percentiles.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use osler_core::{Metric, Reading};
use osler_edge::{EdgeConfig, Output, Stage, Tally};
use osler_rules::{Change, Engine};
use osler_sim::model::{Cohort, EventKind};
use osler_wire::{BatchHeader, Entry, GatewayKey, Lane, seal};

use crate::percentile;

#[derive(clap::Args, Debug)]
pub struct EdgeBenchArgs {
    /// `standard`: 1,000 patients for a minute with heart rate ten times a second (10,000
    /// readings/s, the alert benchmark's load; heart rate is 99.7 % of it). `home`: a remote
    /// monitoring kit as it is: 50 patients for a week, a watch reporting heart rate every 5 s
    /// and SpO2 and steps every minute, a CGM every 5 minutes for one patient in three, blood
    /// pressure three times and weight once a day, 40 injected events. The options below
    /// change either.
    #[arg(long, value_enum, default_value_t = Scenario::Standard)]
    scenario: Scenario,
    /// Patients in the simulated cohort (standard 1,000, home 50).
    #[arg(long)]
    patients: Option<usize>,
    /// Simulated time, minutes (offline: it takes seconds; standard 1, home 10,080).
    #[arg(long)]
    minutes: Option<i64>,
    /// Heart-rate sampling interval in ms (standard 100, home 5,000: a typical watch).
    #[arg(long)]
    hr_every_ms: Option<i64>,
    /// Injected events, all eight kinds (standard 200, home 40).
    #[arg(long)]
    events: Option<usize>,
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Also run the standard scenario live through real processes, raw then edge.
    #[arg(long)]
    live: bool,
    /// The osler binary for the live part (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Standard,
    Home,
}

/// A scenario's cohort: patients, minutes, heart-rate interval, events.
struct Plan {
    patients: usize,
    minutes: i64,
    hr_every_ms: i64,
    events: usize,
}

impl EdgeBenchArgs {
    fn plan(&self) -> Plan {
        let (patients, minutes, hr_every_ms, events) = match self.scenario {
            Scenario::Standard => (1000, 1, 100, 200),
            Scenario::Home => (50, 7 * 24 * 60, 5000, 40),
        };
        Plan {
            patients: self.patients.unwrap_or(patients),
            minutes: self.minutes.unwrap_or(minutes),
            hr_every_ms: self.hr_every_ms.unwrap_or(hr_every_ms),
            events: self.events.unwrap_or(events),
        }
    }
}

/// Bytes and messages of one way of uploading.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    bytes: u64,
    requests: u64,
    entries: u64,
}

/// The request line and headers a minimal HTTP/1.1 client sends with a body of `len` bytes.
fn http_overhead(path: &str, content_type: &str, len: usize) -> u64 {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
    .len() as u64
}

/// Seals entries into one batch per second of reading time and adds up the bytes.
fn batched(entries: &[(i64, String)], key: &GatewayKey, lane: Lane) -> Cost {
    let mut cost = Cost::default();
    let mut seq = 1u64;
    let mut i = 0;
    while i < entries.len() {
        let second = entries[i].0.div_euclid(1000);
        let mut j = i;
        while j < entries.len() && entries[j].0.div_euclid(1000) == second {
            j += 1;
        }
        let refs: Vec<&str> = entries[i..j].iter().map(|(_, e)| e.as_str()).collect();
        let header = BatchHeader {
            gateway: "gw-bench".into(),
            lane,
            first_seq: seq,
            count: refs.len() as u32,
            sent_ms: entries[i].0,
            state: None,
        };
        let body = seal(&header, &refs, key);
        cost.bytes += body.len() as u64
            + http_overhead("/ingest/batch", osler_wire::CONTENT_TYPE, body.len());
        cost.requests += 1;
        cost.entries += refs.len() as u64;
        seq += refs.len() as u64;
        i = j;
    }
    cost
}

/// Wire entries with the time they would be sent.
type Timed = Vec<(i64, String)>;

type Alerts = Vec<(String, &'static str, &'static str, i64)>;

fn evaluate(readings: &[Reading]) -> Alerts {
    let mut engine = Engine::new();
    let mut out = Vec::new();
    for r in readings {
        for e in engine.observe(r, None) {
            if e.change != Change::Updated {
                out.push((e.patient, e.rule, e.change.as_str(), e.reading_ms));
            }
        }
    }
    out.sort();
    out
}

fn first(v: &osler_core::Value) -> f64 {
    match *v {
        osler_core::Value::Scalar(a) | osler_core::Value::Pair(a, _) => a,
    }
}

/// The trend's resolution: 5 minutes, or the metric's summary window if longer (windows are
/// aligned, so a bucket holds whole summaries).
fn bucket_ms(config: &EdgeConfig, metric: Metric) -> i64 {
    config.policy(metric).window_ms.max(5 * 60_000)
}

/// Per stream and bucket: (sum of part 0, count).
type Trend = HashMap<(String, Metric, i64), (f64, f64)>;

fn add_trend(trend: &mut Trend, patient: &str, metric: Metric, bucket: i64, sum: f64, n: f64) {
    let slot = trend
        .entry((patient.to_owned(), metric, bucket))
        .or_default();
    slot.0 += sum;
    slot.1 += n;
}

pub fn run(args: EdgeBenchArgs) -> anyhow::Result<()> {
    let plan = args.plan();
    anyhow::ensure!(plan.patients > 0 && plan.minutes > 0, "nothing to simulate");
    let start = 1_750_000_000_000i64;
    let end = start + plan.minutes * 60_000;
    let mut cohort = Cohort::with_events_by(
        plan.patients,
        start,
        end,
        &EventKind::ALL,
        plan.events,
        end,
        args.seed,
    );
    cohort
        .set_tick(plan.hr_every_ms)
        .map_err(anyhow::Error::msg)?;
    let config = EdgeConfig::default();
    let key = GatewayKey::generate()?;

    let mut raw: Vec<Reading> = Vec::new();
    let mut json_cost: BTreeMap<&'static str, Cost> = BTreeMap::new();
    // The gateway's own edge stage: the same decision code its writer runs.
    let mut stage = Stage::new(config.clone());
    let mut outputs: Vec<(i64, Output)> = Vec::new();
    let mut tally = Tally::default();
    let mut decision_ns: Vec<f64> = Vec::new();
    let mut tick = Vec::new();
    let started = Instant::now();
    while cohort.tick(&mut tick) {
        for sr in tick.drain(..) {
            let body = serde_json::to_vec(&osler_sim::device_json(&sr, "p"))?;
            let c = json_cost.entry(sr.metric).or_default();
            c.bytes +=
                body.len() as u64 + http_overhead("/readings", "application/json", body.len());
            c.requests += 1;
            c.entries += 1;
            let now = sr.t_ms + 50;
            let item = osler_gateway::input::parse_message(&body, now)
                .map_err(anyhow::Error::msg)?
                .pop()
                .context("one reading")?
                .map_err(anyhow::Error::msg)?;
            let osler_gateway::input::Item::Reading(input) = item else {
                anyhow::bail!("the simulator sent an emergency where a reading was expected");
            };
            let r = input.validate(now)?;
            // The decision exactly as the gateway's writer takes it.
            let t0 = Instant::now();
            let mut out = Vec::new();
            stage.observe(&r, None, now, &mut out, &mut tally);
            decision_ns.push(t0.elapsed().as_nanos() as f64);
            outputs.extend(out.into_iter().map(|o| (now, o)));
            raw.push(r);
        }
    }
    let mut out = Vec::new();
    stage.flush(&mut out, &mut tally);
    outputs.extend(out.into_iter().map(|o| (end, o)));
    let elapsed = started.elapsed();

    // Upload costs per metric and overall.
    let mut raw_entries: BTreeMap<&'static str, Vec<(i64, String)>> = BTreeMap::new();
    let mut all_raw = Vec::with_capacity(raw.len());
    for r in &raw {
        let e = (r.received_ms, Entry::from_reading(r).to_json());
        raw_entries
            .entry(r.metric.info().key)
            .or_default()
            .push(e.clone());
        all_raw.push(e);
    }
    let mut edge_entries: BTreeMap<&'static str, (Timed, Timed)> = BTreeMap::new();
    let (mut all_fwd, mut all_sum) = (Vec::new(), Vec::new());
    let mut forwarded: Vec<Reading> = Vec::new();
    let mut summaries = 0u64;
    for (at, o) in &outputs {
        match o {
            Output::Forward(r) => {
                let e = (*at, Entry::from_reading(r).to_json());
                edge_entries
                    .entry(r.metric.info().key)
                    .or_default()
                    .0
                    .push(e.clone());
                all_fwd.push(e);
                forwarded.push(r.clone());
            }
            Output::Summary(s) => {
                summaries += 1;
                let m = Metric::from_key(&s.metric).context("a summary's metric")?;
                let e = (*at, osler_gateway::intake::summary_entry(s).to_json());
                edge_entries
                    .entry(m.info().key)
                    .or_default()
                    .1
                    .push(e.clone());
                all_sum.push(e);
            }
        }
    }
    all_sum.sort_by_key(|(t, _)| *t);

    println!();
    println!(
        "osler bench edge --scenario {:?}  ({} patients, {} simulated minutes, heart rate every {} ms, {} events; {} raw readings decided in {:.1} s)",
        args.scenario,
        plan.patients,
        plan.minutes,
        plan.hr_every_ms,
        plan.events,
        raw.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "{:<18} {:>10} {:>12} {:>12} {:>12} {:>10} {:>9} {:>9}",
        "metric",
        "raw",
        "JSON bytes",
        "raw batches",
        "edge bytes",
        "edge msgs",
        "vs JSON",
        "vs batch"
    );
    let row = |name: &str, n: u64, json: Cost, rawb: Cost, edge: Cost| {
        println!(
            "{:<18} {:>10} {:>12} {:>12} {:>12} {:>10} {:>8.1}% {:>8.1}%",
            name,
            n,
            json.bytes,
            rawb.bytes,
            edge.bytes,
            edge.entries,
            100.0 * (1.0 - edge.bytes as f64 / json.bytes.max(1) as f64),
            100.0 * (1.0 - edge.bytes as f64 / rawb.bytes.max(1) as f64),
        );
    };
    for (metric, entries) in &raw_entries {
        let json = json_cost.get(metric).copied().unwrap_or_default();
        let rawb = batched(entries, &key, Lane::Readings);
        let (f, s) = edge_entries.get(metric).cloned().unwrap_or_default();
        let (ef, es) = (
            batched(&f, &key, Lane::Readings),
            batched(&s, &key, Lane::Summaries),
        );
        let edge = Cost {
            bytes: ef.bytes + es.bytes,
            requests: ef.requests + es.requests,
            entries: ef.entries + es.entries,
        };
        row(metric, entries.len() as u64, json, rawb, edge);
    }
    let json_all = json_cost.values().fold(Cost::default(), |a, c| Cost {
        bytes: a.bytes + c.bytes,
        requests: a.requests + c.requests,
        entries: a.entries + c.entries,
    });
    let raw_all = batched(&all_raw, &key, Lane::Readings);
    let (ef, es) = (
        batched(&all_fwd, &key, Lane::Readings),
        batched(&all_sum, &key, Lane::Summaries),
    );
    let edge_all = Cost {
        bytes: ef.bytes + es.bytes,
        requests: ef.requests + es.requests,
        entries: ef.entries + es.entries,
    };
    row("all", raw.len() as u64, json_all, raw_all, edge_all);
    println!(
        "requests: per-reading JSON {}, raw batches {}, edge batches {} (readings {}, summaries {})",
        json_all.requests, raw_all.requests, edge_all.requests, ef.requests, es.requests
    );
    println!(
        "edge sent {} readings ({} near a threshold, {} after one, {} changes, {} heartbeats, {} every-reading metrics) and {summaries} summaries of {} readings; {} spikes filtered",
        tally.sent(),
        tally.zone,
        tally.context,
        tally.change,
        tally.heartbeat,
        tally.all,
        tally.folded,
        tally.spikes
    );

    // Fidelity.
    let raw_alerts = evaluate(&raw);
    let edge_alerts = evaluate(&forwarded);
    let lost: Vec<_> = raw_alerts
        .iter()
        .filter(|a| !edge_alerts.contains(a))
        .collect();
    let extra = edge_alerts
        .iter()
        .filter(|a| !raw_alerts.contains(a))
        .count();
    let counted = tally.sent() + tally.folded;
    let mut raw_trend = Trend::new();
    let mut edge_trend = Trend::new();
    for r in &raw {
        let v = first(&r.value);
        let b = r.taken.utc_ms.div_euclid(bucket_ms(&config, r.metric));
        add_trend(&mut raw_trend, r.patient.as_str(), r.metric, b, v, 1.0);
    }
    for (_, o) in &outputs {
        match o {
            Output::Forward(r) => {
                let v = first(&r.value);
                let b = r.taken.utc_ms.div_euclid(bucket_ms(&config, r.metric));
                add_trend(&mut edge_trend, r.patient.as_str(), r.metric, b, v, 1.0);
            }
            // A summary adds its mean × count to its bucket (it lies within one).
            Output::Summary(s) => {
                let m = Metric::from_key(&s.metric).context("metric")?;
                let b = s.t0.div_euclid(bucket_ms(&config, m));
                let mean = s.mean()[0];
                add_trend(
                    &mut edge_trend,
                    &s.patient,
                    m,
                    b,
                    mean * f64::from(s.n),
                    f64::from(s.n),
                );
            }
        }
    }
    let mut worst: BTreeMap<&'static str, (f64, f64)> = BTreeMap::new();
    for (k, (sum, n)) in &raw_trend {
        let (esum, en) = edge_trend.get(k).copied().unwrap_or((0.0, 0.0));
        let err = if en > 0.0 {
            (sum / n - esum / en).abs()
        } else {
            f64::INFINITY
        };
        let deadband = config.policy(k.1).deadband;
        let slot = worst.entry(k.1.info().key).or_insert((0.0, deadband));
        slot.0 = slot.0.max(err);
    }
    decision_ns.sort_by(f64::total_cmp);
    println!();
    println!(
        "{:<58} {:>14} {:>10}",
        "fidelity and speed", "result", "goal"
    );
    println!(
        "{:<58} {:>14} {:>10}",
        format!(
            "alerts raised or resolved on raw readings ({})",
            raw_alerts.len()
        ),
        format!("{} lost", lost.len()),
        "0 lost"
    );
    println!(
        "{:<58} {:>14} {:>10}",
        "alerts on edge readings only",
        extra.to_string(),
        "0"
    );
    println!(
        "{:<58} {:>14} {:>10}",
        "raw readings sent or summarised exactly once",
        format!("{counted} of {}", raw.len()),
        "all"
    );
    for (metric, (err, deadband)) in &worst {
        println!(
            "{:<58} {:>14} {:>10}",
            format!("  {metric}: worst trend error (5 min or its window)"),
            format!("{err:.3}"),
            format!("<= {deadband}")
        );
    }
    println!(
        "{:<58} {:>14} {:>10}",
        "edge decision per reading: p50 / p99",
        format!(
            "{:.2} / {:.2} us",
            percentile(&decision_ns, 50.0) / 1000.0,
            percentile(&decision_ns, 99.0) / 1000.0
        ),
        "p99 <= 1 ms"
    );
    println!(
        "{:<58} {:>14}",
        "  p99.9 / max",
        format!(
            "{:.1} / {:.0} us",
            percentile(&decision_ns, 99.9) / 1000.0,
            percentile(&decision_ns, 100.0) / 1000.0
        )
    );
    for a in lost.iter().take(5) {
        println!("  lost: {a:?}");
    }
    if args.live {
        live(args.osler.as_deref())?;
    }
    Ok(())
}

/// The standard scenario through real processes: once with `--raw`, once with the edge.
fn live(osler: Option<&std::path::Path>) -> anyhow::Result<()> {
    use crate::process::sim_summary;
    let mut results = Vec::new();
    for raw in [true, false] {
        let (osler, data) = crate::process::setup(osler, None, "edge")?;
        let (hub, root, gw) =
            crate::process::hub_and_gateway(&osler, &data, if raw { &["--raw"] } else { &[] })?;
        let out = std::process::Command::new(&osler)
            .args(["sim", "--gateway", &gw.base, "--duration", "1s"])
            .args(["--watch-every-ms", "100", "--patients", "1000"])
            .args(["--follow", "60s", "--events", "200", "--batch", "2000"])
            .args(["--event-kinds", "hypertensive-crisis,fever", "--seed", "11"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("cannot run osler sim")?;
        let sent = sim_summary(&out)?["acknowledged"].as_u64().unwrap_or(0);
        // Wait until the gateway's outbox is empty (summaries close on the gateway's clock).
        let deadline = Instant::now() + Duration::from_secs(150);
        let status = loop {
            let s: serde_json::Value = serde_json::from_str(
                &crate::process::get(&format!("{}/status", gw.base))
                    .call()?
                    .into_string()?,
            )?;
            let pending: u64 = ["readings", "alerts", "summaries"]
                .iter()
                .map(|k| s["outbox"][k].as_u64().unwrap_or(0))
                .sum();
            let open = s["edge"]["summarised"].as_u64().unwrap_or(0) > 0
                && s["upload"]["summaries"].as_u64().unwrap_or(0)
                    < s["edge"]["summaries"].as_u64().unwrap_or(0);
            if (pending == 0 && !open && Instant::now() > deadline - Duration::from_secs(80))
                || Instant::now() > deadline
            {
                break s;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let alerts: serde_json::Value = serde_json::from_str(
            &crate::process::get(&format!("{root}/alerts?limit=10000"))
                .call()?
                .into_string()?,
        )?;
        // Live runs happen at different times, so alerts are compared by patient and rule
        // (the same seed injects the same events); the same reading time is checked offline
        // above and in crates/osler/tests/edge.rs.
        let mut raised: Vec<(String, String)> = alerts["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["patient"].as_str().unwrap_or("").to_owned(),
                            x["rule"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        raised.sort();
        hub.stop()?;
        gw.stop()?;
        let _ = std::fs::remove_dir_all(&data);
        results.push((raw, sent, status, raised));
    }
    println!();
    println!("live, standard scenario (1,000 patients, 10,000 readings/s, 60 s, 200 events)");
    println!(
        "{:<10} {:>10} {:>14} {:>10} {:>12} {:>14} {:>8}",
        "gateway", "readings", "bytes", "batches", "entries", "decision p99", "alerts"
    );
    for (raw, sent, status, raised) in &results {
        let u = &status["upload"];
        println!(
            "{:<10} {:>10} {:>14} {:>10} {:>12} {:>14} {:>8}",
            if *raw { "--raw" } else { "edge" },
            sent,
            u["bytes"].as_u64().unwrap_or(0),
            u["batches"].as_u64().unwrap_or(0),
            u["entries"].as_u64().unwrap_or(0) + u["summaries"].as_u64().unwrap_or(0),
            status["edge"]["decision_p99_us"]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.1} us")),
            raised.len()
        );
    }
    if let [(_, _, raw_s, raw_a), (_, _, edge_s, edge_a)] = results.as_slice() {
        let rb = raw_s["upload"]["bytes"].as_f64().unwrap_or(0.0);
        let eb = edge_s["upload"]["bytes"].as_f64().unwrap_or(0.0);
        let lost = raw_a.iter().filter(|a| !edge_a.contains(a)).count();
        println!(
            "edge vs --raw: {:.1}% fewer bytes; (patient, rule) alerts of the raw run missing from the edge run: {lost}",
            100.0 * (1.0 - eb / rb.max(1.0))
        );
    }
    Ok(())
}
