//! The edge, end to end with the real binaries: the same simulated cohort through a raw gateway
//! and through an edge gateway must raise the same alerts at the same reading times, and the
//! edge hub's readings plus summaries must account for every reading sent and keep its trend;
//! and `kill -9` of an edge gateway mid-stream loses no reading (each is stored or counted in
//! exactly one summary).

mod common;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const PATIENTS: usize = 10;

fn enrolled(dir: &Path) -> (Hub, std::path::PathBuf) {
    let (hub_dir, gw_dir) = (dir.join("hub"), dir.join("gw"));
    let hub = Hub::start(&hub_dir);
    enrol(&hub_dir, &gw_dir);
    (hub, gw_dir)
}

fn sim_args<'a>(gw: &'a str, sent: &'a str, end: &'a str) -> Vec<&'a str> {
    vec![
        "--end",
        end,
        "--gateway",
        gw,
        "--patients",
        "10",
        "--duration",
        "36h",
        "--events",
        "10",
        "--seed",
        "21",
        "--sent",
        sent,
    ]
}

/// Every alert the hub raised or resolved: (patient, rule, what, reading time).
fn alert_set(hub: &Hub) -> BTreeSet<(String, String, String, String)> {
    let a = get(&format!("{}/alerts?limit=10000", hub.root())).json();
    let mut out = BTreeSet::new();
    for x in a["alerts"].as_array().unwrap() {
        let s = |k: &str| x[k].as_str().unwrap_or("").to_owned();
        out.insert((s("patient"), s("rule"), "raised".into(), s("reading_time")));
        if x["state"] == "resolved" {
            out.insert((
                s("patient"),
                s("rule"),
                "resolved".into(),
                s("resolved_reading_time"),
            ));
        }
    }
    out
}

fn loinc_metric(o: &Value) -> &'static str {
    let code = o["code"]["coding"][0]["code"].as_str().unwrap();
    osler_core::Metric::all()
        .find(|m| m.info().loinc.code == code)
        .map(|m| m.info().key)
        .unwrap()
}

fn first_value(o: &Value) -> f64 {
    o["valueQuantity"]["value"]
        .as_f64()
        .or_else(|| o["component"][0]["valueQuantity"]["value"].as_f64())
        .unwrap()
}

fn ms(text: &str) -> i64 {
    osler_core::Timestamp::parse(text).unwrap().utc_ms
}

/// Per (patient, metric, bucket): (sum of the first value, count), from what the hub serves:
/// readings count once, summaries their count times their mean.
fn hub_trend(
    hub: &Hub,
    bucket: impl Fn(&str) -> i64,
) -> HashMap<(String, String, i64), (f64, f64)> {
    let mut out: HashMap<(String, String, i64), (f64, f64)> = HashMap::new();
    for p in 0..PATIENTS {
        let patient = format!("sim-p{p}");
        for o in all_observations(&hub.base, &patient) {
            let metric = loinc_metric(&o);
            let n = readings_in(&o);
            let t = match o["effectivePeriod"]["start"].as_str() {
                Some(start) if is_summary(&o) => ms(start),
                _ => ms(o["effectiveDateTime"].as_str().unwrap()),
            };
            let slot = out
                .entry((
                    patient.clone(),
                    metric.to_owned(),
                    t.div_euclid(bucket(metric)),
                ))
                .or_default();
            slot.0 += first_value(&o) * n;
            slot.1 += n;
        }
    }
    out
}

#[test]
fn the_edge_keeps_every_alert_and_the_trend_of_the_raw_stream() {
    let dir = TempDir::new("edge-fidelity");
    // Both runs replay the same 36 hours, ending a minute ago.
    let end = osler_core::Timestamp::utc(
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            / 60_000
            - 1)
            * 60_000,
    )
    .to_string();
    let mut runs = Vec::new();
    for raw in [true, false] {
        let sub = dir.0.join(if raw { "raw" } else { "edge" });
        let (hub, gw_dir) = enrolled(&sub);
        let extra: &[&str] = if raw { &["--raw"] } else { &[] };
        let gw = Gateway::start(&gw_dir, &hub.root(), 0, extra);
        let sent_file = sub.join("sent.jsonl");
        let summary = finish_sim(spawn_sim(&sim_args(
            &gw.url,
            sent_file.to_str().unwrap(),
            &end,
        )));
        let sent = summary["acknowledged"].as_u64().unwrap();
        let drained = wait_for(Duration::from_secs(90), || gw.drained().then_some(()));
        assert!(drained.is_some(), "gateway not drained: {}", gw.status());
        runs.push((hub, gw, sent, read_jsonl(&sent_file)));
    }
    let (raw_hub, _, raw_sent, sent_readings) = &runs[0];
    let (edge_hub, edge_gw, edge_sent, _) = &runs[1];
    assert_eq!(raw_sent, edge_sent, "the same cohort both times");

    // 1. Alerts: the raw run's, all of them, at the same reading times (and nothing else).
    let raw_alerts = alert_set(raw_hub);
    let edge_alerts = alert_set(edge_hub);
    assert!(
        raw_alerts.len() >= 10,
        "the cohort raises alerts: {raw_alerts:?}"
    );
    let lost: Vec<_> = raw_alerts.difference(&edge_alerts).collect();
    assert!(lost.is_empty(), "alerts lost at the edge: {lost:?}");
    let extra: Vec<_> = edge_alerts.difference(&raw_alerts).collect();
    assert!(extra.is_empty(), "alerts only with the edge: {extra:?}");

    // 2. The saving is real and every reading is accounted for.
    let status = edge_gw.status();
    let uploaded = status["upload"]["entries"].as_u64().unwrap()
        + status["upload"]["summaries"].as_u64().unwrap();
    assert!(
        uploaded * 5 < *edge_sent,
        "the edge should send far fewer entries than readings: {status}"
    );
    assert_eq!(
        metric(raw_hub, "osler_readings_stored") as u64,
        *raw_sent,
        "the raw hub stores every reading"
    );

    // 2b. Summaries as FHIR: valid R4 (fhir.resources, pinned) and the vital-signs rules, read
    // alone and in a searchset.
    let page = get(&format!(
        "{}/Observation?patient=sim-p0&code=8867-4&_count=50",
        edge_hub.base
    ))
    .json();
    let summary_id = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| is_summary(&e["resource"]))
        .and_then(|e| e["resource"]["id"].as_str())
        .expect("heart-rate summaries in the search")
        .to_owned();
    let one = get(&format!("{}/Observation/{summary_id}", edge_hub.base)).json();
    assert_eq!(one["id"], summary_id.as_str());
    let file = dir.0.join("summaries.json");
    std::fs::write(&file, serde_json::to_string(&[page, one]).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(workspace().join("scripts/validate_fhir.py"))
        .arg(&file)
        .output()
        .expect("run the validator (./scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": 0 problems"),
        "validator: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. The trend: per patient, metric and 5-minute bucket (or the metric's summary window,
    // if longer), the hub's mean from readings and summaries matches the mean of the readings
    // the devices sent, within the metric's resolution; and the counts match exactly.
    let config = osler_edge::EdgeConfig::default();
    let bucket = |m: &str| {
        let metric = osler_core::Metric::from_key(m).unwrap();
        config.policy(metric).window_ms.max(5 * 60_000)
    };
    let mut sent_trend: HashMap<(String, String, i64), (f64, f64)> = HashMap::new();
    for r in sent_readings {
        let metric = r["metric"].as_str().unwrap();
        let v = match &r["value"] {
            Value::Array(a) => a[0].as_f64().unwrap(),
            v => v.as_f64().unwrap(),
        };
        let t = ms(r["time"].as_str().unwrap());
        let slot = sent_trend
            .entry((
                r["patient"].as_str().unwrap().to_owned(),
                metric.to_owned(),
                t.div_euclid(bucket(metric)),
            ))
            .or_default();
        slot.0 += v;
        slot.1 += 1.0;
    }
    let edge_trend = hub_trend(edge_hub, bucket);
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    for (key, (sum, n)) in &sent_trend {
        let (esum, en) = edge_trend.get(key).copied().unwrap_or((0.0, 0.0));
        assert_eq!(*n, en, "readings counted for {key:?}");
        let err = (sum / n - esum / en).abs();
        let w = worst.entry(key.1.clone()).or_default();
        *w = w.max(err);
    }
    assert_eq!(
        sent_trend.len(),
        edge_trend.len(),
        "no bucket without readings"
    );
    for (metric, err) in &worst {
        let resolution = config
            .policy(osler_core::Metric::from_key(metric).unwrap())
            .deadband
            .max(1e-6);
        assert!(
            *err <= resolution,
            "{metric}: trend off by {err} (resolution {resolution})"
        );
    }
}

#[test]
fn kill_9_of_an_edge_gateway_loses_no_reading() {
    let dir = TempDir::new("edge-kill9");
    let (hub, gw_dir) = enrolled(&dir.0);
    let port = free_port();
    let mut gw = Gateway::start(&gw_dir, &hub.root(), port, &[]);
    let sent_file = dir.0.join("sent.jsonl");
    let sim = spawn_sim(&[
        "--gateway",
        &gw.url,
        "--patients",
        "6",
        "--duration",
        "4h",
        "--seed",
        "23",
        "--rate",
        "5000",
        "--batch",
        "100",
        "--sent",
        sent_file.to_str().unwrap(),
    ]);
    for round in 0..4 {
        let before = gw.status()["ingest"]["received"].as_u64().unwrap();
        let grew = wait_for(Duration::from_secs(20), || {
            (gw.status()["ingest"]["received"].as_u64().unwrap() > before + 800).then_some(())
        });
        assert!(grew.is_some(), "round {round}: no load reached the gateway");
        gw.kill9();
        gw = Gateway::start(&gw_dir, &hub.root(), port, &[]);
    }
    let summary = finish_sim(sim);
    let sent = read_jsonl(&sent_file);
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap() as usize,
        sent.len()
    );
    let drained = wait_for(Duration::from_secs(90), || gw.drained().then_some(()));
    assert!(drained.is_some(), "gateway not drained: {}", gw.status());
    // Every acknowledged reading is on the hub: stored as itself or counted in one summary.
    let mut counted = 0.0;
    let mut per_patient: BTreeMap<String, usize> = BTreeMap::new();
    for r in &sent {
        *per_patient
            .entry(r["patient"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for (patient, n) in &per_patient {
        let mut have = 0.0;
        for o in all_observations(&hub.base, patient) {
            have += readings_in(&o);
        }
        assert_eq!(have as usize, *n, "{patient}: readings on the hub");
        counted += have;
    }
    assert_eq!(counted as usize, sent.len());
}

#[test]
fn the_printed_configuration_reads_back_and_bad_keys_are_named() {
    // `--print-config` needs no data directory: it is how a user starts an edge.toml.
    let printed = osler(&["gateway", "--print-config"]);
    assert!(printed.contains("[heart-rate]") && printed.contains("deadband"));
    let dir = TempDir::new("edge-config");
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("edge.toml");
    let tuned = printed.replacen("deadband = 5", "deadband = 8", 1);
    assert_ne!(
        tuned, printed,
        "the heart-rate deadband is in the printed file"
    );
    std::fs::write(&file, &tuned).unwrap();
    let again = osler(&[
        "gateway",
        "--config",
        file.to_str().unwrap(),
        "--print-config",
    ]);
    assert_eq!(again, tuned, "the file reads back as written");
    std::fs::write(&file, "[heart-rate]\ndeadbnd = 3\n").unwrap();
    let out = std::process::Command::new(osler_bin())
        .args([
            "gateway",
            "--config",
            file.to_str().unwrap(),
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deadbnd"), "the bad key is named: {err}");
}
