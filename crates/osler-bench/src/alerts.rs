//! `osler bench alerts`: alert latency under load, sim → gateway → hub → SSE subscriber, each
//! its own process, live (readings stamped with the real time at which they are sent).
//!
//! Latency is from the time the deciding reading was taken (its timestamp, set by the simulator
//! when it sends it) to the moment this program reads the alert, per channel: from
//! `GET /alerts/stream` (SSE), and as a webhook delivered to a receiver of its own on loopback.
//! The alert burden of the simulated cohort (alerts per patient-day) comes from `/metrics`. The
//! injected events are of the kinds whose rules decide on one reading (hypertensive crisis,
//! fever), so that every event can complete within the run; duration rules add their duration
//! by design and are covered by the test suite.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::percentile;
use crate::process::{cpu_seconds, rss_bytes, sim_summary, stored_readings};

#[derive(clap::Args, Debug)]
pub struct AlertBenchArgs {
    /// `standard`: 1,000 patients at 10,000 readings/s for 60 s with 200 injected events.
    /// `quick`: 200 patients at 2,000 readings/s for 15 s with 40 events.
    #[arg(long, default_value = "standard")]
    scenario: String,
    /// The gateway's batching wait (`osler gateway --max-wait-ms`).
    #[arg(long, default_value_t = 20)]
    gateway_wait_ms: u64,
    /// Run the gateway with `--raw` (every reading sent as received, no edge processing): the
    /// hub then stores and evaluates all 10,000 readings a second.
    #[arg(long)]
    raw: bool,
    /// Seconds of live load (overrides the scenario's).
    #[arg(long)]
    seconds: Option<u64>,
    /// Injected events (overrides the scenario's). About 1.5 alerts come of each (a
    /// hypertensive crisis raises its systolic and diastolic rules): `--seconds 240 --events
    /// 800` gives more than 1,000 alerts, so that p99.9 is not simply the maximum.
    #[arg(long)]
    events: Option<usize>,
    /// Emergencies (falls) posted to the gateway during the load, as a wearable would; their
    /// latency is reported apart (default: one a second of live load).
    #[arg(long)]
    emergencies: Option<usize>,
    /// Data directory (default: a new temp directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The osler binary to benchmark (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
}

use crate::now_ms;

fn ts(text: &str) -> Option<i64> {
    osler_core::Timestamp::parse(text).ok().map(|t| t.utc_ms)
}

/// Whether an alert (the hub's JSON: patient, rule, reading_time) is the one an injected event
/// (the simulator's ground truth: patient, kind, start, end) must raise: same patient, a rule of
/// the event's kind, raised by a reading taken during the event. Only the kinds decided by one
/// reading are known here (hypertensive crisis, fever), the ones the benchmarks inject.
pub(crate) fn explains(event: &serde_json::Value, alert: &serde_json::Value) -> bool {
    let rules: &[&str] = match event["kind"].as_str().unwrap_or("") {
        "hypertensive-crisis" => &["bp-crisis-systolic", "bp-crisis-diastolic"],
        "fever" => &["fever"],
        _ => &[],
    };
    let (Some(start), Some(end), Some(t)) = (
        event["start"].as_str().and_then(ts),
        event["end"].as_str().and_then(ts),
        alert["reading_time"].as_str().and_then(ts),
    ) else {
        return false;
    };
    alert["patient"] == event["patient"]
        && rules.contains(&alert["rule"].as_str().unwrap_or(""))
        && t >= start
        && t <= end
}

pub fn run(args: AlertBenchArgs) -> anyhow::Result<()> {
    let (patients, secs, events) = match args.scenario.as_str() {
        "standard" => (1000usize, 60u64, 200usize),
        "quick" => (200, 15, 40),
        other => anyhow::bail!("unknown scenario {other:?}: standard or quick"),
    };
    let (secs, events) = (args.seconds.unwrap_or(secs), args.events.unwrap_or(events));
    let (osler, data) =
        crate::process::setup(args.osler.as_deref(), args.data.as_deref(), "alerts")?;
    // A short batching wait: readings leave the gateway within 20 ms.
    let wait = args.gateway_wait_ms.to_string();
    let mut gw_args = vec!["--max-wait-ms", &wait];
    if args.raw {
        gw_args.push("--raw");
    }
    let (hub, root, gw) = crate::process::hub_and_gateway(&osler, &data, &gw_args)?;
    // The webhook channel: a receiver here, registered as an endpoint for every patient.
    let sink = crate::webhook_sink::Sink::start()?;
    crate::process::request_on(
        &crate::process::agent(Duration::from_secs(10)),
        "POST",
        &format!("{root}/webhooks"),
    )
    .set("Content-Type", "application/json")
    .send_string(&serde_json::json!({ "url": sink.url }).to_string())
    .context("cannot register the webhook receiver")?;

    // The subscriber: every alert with the wall-clock time it was read.
    let received: Arc<Mutex<Vec<(i64, serde_json::Value)>>> = Arc::default();
    {
        let sink = received.clone();
        let resp = crate::process::get(&format!("{root}/alerts/stream"))
            .timeout(Duration::from_secs(3600))
            .call()?;
        std::thread::spawn(move || {
            for line in BufReader::new(resp.into_reader())
                .lines()
                .map_while(Result::ok)
            {
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim())
                {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((now_ms(), v));
                }
            }
        });
    }

    let truth = data.join("truth.jsonl");
    let cpu0 = (
        cpu_seconds(hub.pid()).unwrap_or(0.0),
        cpu_seconds(gw.pid()).unwrap_or(0.0),
    );
    let started = Instant::now();
    // Readings taken before this moment are the simulator's short replayed past, not live:
    // their alerts are left out of the latency figures (and counted).
    let live_from = now_ms() + 1000;
    let mut sim = Command::new(&osler)
        .args([
            "sim",
            "--gateway",
            &gw.base,
            "--duration",
            "1s",
            "--watch-every-ms",
            "100",
        ])
        .args([
            "--patients",
            &patients.to_string(),
            "--follow",
            &format!("{secs}s"),
            "--events",
            &events.to_string(),
        ])
        .args([
            "--event-kinds",
            "hypertensive-crisis,fever",
            "--batch",
            "2000",
            "--seed",
            "11",
            "--ground-truth",
        ])
        .arg(&truth)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start osler sim")?;
    // Falls, one patient each (an open emergency takes no second one), spread over the live
    // load: each stamped with the time it is sent, as a fall detector stamps its event.
    let falls = args.emergencies.unwrap_or(secs as usize);
    let injector = {
        let url = format!("{}/readings", gw.base);
        let gap = Duration::from_millis((secs * 1000 / (falls as u64 + 1)).max(1));
        std::thread::spawn(move || {
            let agent = crate::process::agent(Duration::from_secs(10));
            std::thread::sleep(Duration::from_secs(1) + gap);
            for i in 0..falls {
                let body = serde_json::json!({"patient": format!("sim-p{}", patients - 1 - i % patients),
                    "device": "pendant", "event": "fall",
                    "time": osler_core::Timestamp::utc(now_ms()).to_string()});
                let _ = agent
                    .post(&url)
                    .set("Content-Type", "application/json")
                    .send_string(&body.to_string());
                std::thread::sleep(gap);
            }
        })
    };
    let (mut hub_rss, mut gw_rss) = (0u64, 0u64);
    while sim.try_wait()?.is_none() {
        hub_rss = hub_rss.max(rss_bytes(hub.pid()).unwrap_or(0));
        gw_rss = gw_rss.max(rss_bytes(gw.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = sim_summary(&sim.wait_with_output()?)?;
    let _ = injector.join();
    let sent = summary["acknowledged"].as_u64().context("sim summary")?;
    let run_secs = started.elapsed().as_secs_f64();
    let cpu1 = (
        cpu_seconds(hub.pid()).unwrap_or(0.0),
        cpu_seconds(gw.pid()).unwrap_or(0.0),
    );
    // Let the last readings and alerts through: the gateway's outbox empties (with its edge
    // processing, the hub stores fewer readings than were sent; the rest is in summaries).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = crate::process::outbox_pending(&gw.base, &["readings", "alerts"]);
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored = stored_readings(&root).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));

    let status: serde_json::Value = serde_json::from_str(
        &crate::process::get(&format!("{}/status", gw.base))
            .call()?
            .into_string()?,
    )?;

    // Latency and accounting.
    let truth: Vec<serde_json::Value> = std::fs::read_to_string(&truth)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let alerts = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let emergency = |a: &serde_json::Value| {
        a["rule"]
            .as_str()
            .is_some_and(|r| r.starts_with(osler_rules::EMERGENCY_PREFIX))
    };
    let raised: Vec<&(i64, serde_json::Value)> = alerts
        .iter()
        .filter(|(_, a)| a["event"] == "raised" && !emergency(a))
        .collect();
    // A fall's latency: from the time the device stamped it to this subscriber's first word
    // of it, the hub's notice (announced before the commits) or the stored alert, whichever
    // came first; and each of the two apart.
    let since_taken = |event: &str| -> Vec<(String, i64, f64)> {
        alerts
            .iter()
            .filter(|(_, a)| a["event"] == event && emergency(a))
            .filter_map(|(at, a)| {
                let t = ts(a["reading_time"].as_str()?)?;
                Some((a["patient"].as_str()?.to_owned(), t, (at - t) as f64))
            })
            .collect()
    };
    let (notices, stored_falls) = (since_taken("notice"), since_taken("raised"));
    let mut first: std::collections::HashMap<(String, i64), f64> = Default::default();
    for (patient, t, ms) in notices.iter().chain(&stored_falls) {
        let slot = first.entry((patient.clone(), *t)).or_insert(*ms);
        *slot = slot.min(*ms);
    }
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let fall_ms = sorted(first.into_values().collect());
    let notice_ms = sorted(notices.iter().map(|n| n.2).collect());
    let stored_ms = sorted(stored_falls.iter().map(|n| n.2).collect());
    // Where a fall's time goes: the device's stamp to the hub's commit (the gateway's commit,
    // the upload, the hub's commit), then to this subscriber.
    let (mut fall_commit, mut fall_reader): (Vec<f64>, Vec<f64>) = alerts
        .iter()
        .filter(|(_, a)| a["event"] == "raised" && emergency(a))
        .filter_map(|(at, a)| {
            let t = ts(a["reading_time"].as_str()?)?;
            let stored = ts(a["raised_at"].as_str()?)?;
            Some(((stored - t) as f64, (at - stored) as f64))
        })
        .unzip();
    fall_commit.sort_by(f64::total_cmp);
    fall_reader.sort_by(f64::total_cmp);
    let mut latencies: Vec<f64> = raised
        .iter()
        .filter_map(|(at, a)| Some((*at, ts(a["reading_time"].as_str()?)?)))
        .filter(|(_, t)| *t >= live_from)
        .map(|(at, t)| (at - t) as f64)
        .collect();
    let not_live = raised.len() - latencies.len();
    latencies.sort_by(f64::total_cmp);
    // Where the time goes: from the reading's time to the hub's commit of the alert
    // (`raised_at`: the simulator, the gateway's commit, the upload, the hub's commit), and
    // from that commit to the subscriber (publishing, the stream, this reader).
    let (mut to_commit, mut to_reader): (Vec<f64>, Vec<f64>) = raised
        .iter()
        .filter_map(|(at, a)| {
            let t = ts(a["reading_time"].as_str()?)?;
            let stored = ts(a["raised_at"].as_str()?)?;
            (t >= live_from).then_some(((stored - t) as f64, (at - stored) as f64))
        })
        .unzip();
    to_commit.sort_by(f64::total_cmp);
    to_reader.sort_by(f64::total_cmp);
    let missed = truth
        .iter()
        .filter(|e| !raised.iter().any(|(_, a)| explains(e, a)))
        .count();
    let unexplained: Vec<&serde_json::Value> = raised
        .iter()
        .map(|(_, a)| a)
        .filter(|a| !truth.iter().any(|e| explains(e, a)))
        .collect();
    let bytes = status["upload"]["bytes"].as_f64().unwrap_or(0.0);
    // The webhook channel: the raised alerts' deliveries, from the reading's time to arrival.
    let hooks = sink.got.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut hook_ms: Vec<f64> = hooks
        .iter()
        .filter(|(_, b)| b["type"] == "alert.raised" && !emergency(&b["data"]))
        .filter_map(|(at, b)| Some((*at, ts(b["data"]["reading_time"].as_str()?)?)))
        .filter(|(_, t)| *t >= live_from)
        .map(|(at, t)| (at - t) as f64)
        .collect();
    hook_ms.sort_by(f64::total_cmp);

    hub.stop()?;
    gw.stop()?;
    println!();
    println!(
        "osler bench alerts --scenario {}{}  ({patients} patients, {secs} s live, {} injected events, {} cores)",
        args.scenario,
        if args.raw { " --raw" } else { "" },
        truth.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("{:<48} {:>18} {:>12}", "figure", "result", "goal");
    println!(
        "{:<48} {:>18} {:>12}",
        "readings committed",
        format!("{:.0} rdg/s", sent as f64 / run_secs),
        if patients == 1000 { "10000" } else { "" }
    );
    println!(
        "{:<48} {:>18} {:>12}",
        format!(
            "alert latency, {} live alerts ({not_live} replayed left out): p50",
            latencies.len()
        ),
        format!("{:.0} ms", percentile(&latencies, 50.0)),
        ""
    );
    for p in [99.0, 99.5, 99.9] {
        println!(
            "{:<48} {:>18} {:>12}",
            format!("  p{p}"),
            format!("{:.0} ms", percentile(&latencies, p)),
            if p == 99.9 { "<= 50 ms" } else { "" }
        );
    }
    println!(
        "{:<48} {:>18} {:>12}",
        "  max",
        format!("{:.0} ms", percentile(&latencies, 100.0)),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "  reading -> alert committed at the hub: p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(&to_commit, 50.0),
            percentile(&to_commit, 99.0)
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "  committed -> subscriber: p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(&to_reader, 50.0),
            percentile(&to_reader, 99.0)
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        format!(
            "webhook latency, {} live alerts: p50 / p99 / max",
            hook_ms.len()
        ),
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            percentile(&hook_ms, 50.0),
            percentile(&hook_ms, 99.0),
            percentile(&hook_ms, 100.0)
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        format!(
            "emergency latency, {} of {falls} falls: p50 / p99 / max",
            fall_ms.len()
        ),
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            percentile(&fall_ms, 50.0),
            percentile(&fall_ms, 99.0),
            percentile(&fall_ms, 100.0)
        ),
        "p99 <= 10 ms"
    );
    for (what, v) in [("notice", &notice_ms), ("stored alert", &stored_ms)] {
        println!(
            "{:<48} {:>18} {:>12}",
            format!("  {what}, {} of {falls}: p50 / p99 / max", v.len()),
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                percentile(v, 50.0),
                percentile(v, 99.0),
                percentile(v, 100.0)
            ),
            ""
        );
    }
    println!(
        "{:<48} {:>18} {:>12}",
        "  device -> committed at the hub: p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(&fall_commit, 50.0),
            percentile(&fall_commit, 99.0)
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "  committed -> subscriber: p50 / p99",
        format!(
            "{:.0} / {:.0} ms",
            percentile(&fall_reader, 50.0),
            percentile(&fall_reader, 99.0)
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "injected events without their alert",
        missed.to_string(),
        "0"
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "alerts without an injected event",
        unexplained.len().to_string(),
        "0"
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "hub: CPU / RSS (max)",
        format!(
            "{:.0} % / {:.0} MB",
            (cpu1.0 - cpu0.0) / run_secs * 100.0,
            hub_rss as f64 / 1e6
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "gateway: CPU / RSS (max)",
        format!(
            "{:.0} % / {:.0} MB",
            (cpu1.1 - cpu0.1) / run_secs * 100.0,
            gw_rss as f64 / 1e6
        ),
        ""
    );
    // The load generator's own lateness: latency is measured from the reading's time, so a
    // simulator that sends late would be counted against the system.
    println!(
        "{:<48} {:>18} {:>12}",
        "simulator send lag after reading time: p99 / max",
        format!(
            "{} / {} ms",
            summary["send_lag_ms"]["p99"], summary["send_lag_ms"]["max"]
        ),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "bytes uploaded per reading sent by devices",
        format!("{:.1} B", bytes / (sent.max(1) as f64)),
        ""
    );
    println!(
        "{:<48} {:>18} {:>12}",
        "readings stored one by one at the hub (edge)",
        stored.to_string(),
        ""
    );
    let mut slow: Vec<(i64, &serde_json::Value)> = raised
        .iter()
        .filter_map(|(at, a)| Some((*at, ts(a["reading_time"].as_str()?)?, a)))
        .filter(|(_, t, _)| *t >= live_from)
        .map(|(at, t, a)| (at - t, a))
        .collect();
    slow.sort_by_key(|(l, _)| std::cmp::Reverse(*l));
    for (l, a) in slow.iter().take(3) {
        println!(
            "  slowest: {l} ms  {} {} reading {} raised {}",
            a["patient"], a["rule"], a["reading_time"], a["raised_at"]
        );
    }
    for a in unexplained.iter().take(5) {
        println!("  unexplained: {a}");
    }
    if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}
