//! `osler sim`: a simulated cohort sending its readings to a gateway.
//!
//! Main types: [`SimArgs`] (the command line), [`model::Cohort`] (patients, devices, events),
//! [`run`]. The simulated window ends now, so no reading is in the future: with `--duration 1d`
//! the readings are stamped from a day ago up to the present, at `--speed` times real time.
//!
//! Ground truth (`--ground-truth FILE`): one JSON line per injected event,
//! `{"patient","kind","start","end"}`. The readings a gateway acknowledged (`--sent FILE`): one
//! JSON line per reading, in the gateway's device format.

pub mod model;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use model::{Cohort, SimReading, SimValue};
use serde_json::json;

/// `osler sim` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Patients in the cohort.
    #[arg(long, default_value_t = 20)]
    pub patients: usize,
    /// Simulated time to cover, ending now (or at --end): e.g. 30m, 6h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
    /// End the simulated past here instead of now (RFC 3339, not in the future): with --seed,
    /// every run sends the same readings at the same times (to compare two gateways).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub end: Option<i64>,
    /// Simulated seconds per real second, or "max" for as fast as the gateway takes them.
    #[arg(long, default_value = "max")]
    pub speed: String,
    /// Readings per second at most (a load-test bound on top of --speed).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Injected clinical events (default: one patient in four).
    #[arg(long)]
    pub events: Option<usize>,
    /// Seed: the same seed gives the same cohort, readings and events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The gateway's URL (HTTP source), e.g. http://127.0.0.1:8081.
    #[arg(long, value_name = "URL")]
    pub gateway: Option<String>,
    /// Publish to an MQTT broker instead, HOST:PORT; topics are PREFIX/<patient>/readings.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "gateway")]
    pub mqtt: Option<String>,
    /// Topic prefix for --mqtt.
    #[arg(long, default_value = "osler")]
    pub mqtt_prefix: String,
    /// Readings per HTTP request at most.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Write the injected events here (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
    /// Write every reading the gateway (or broker) acknowledged here (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub sent: Option<PathBuf>,
    /// Patient ids are PREFIX<n>.
    #[arg(long, default_value = "sim-p")]
    pub patient_prefix: String,
    /// After the simulated past, keep going in real time for this long (e.g. 8h): readings are
    /// never sent before their time.
    #[arg(long, value_parser = parse_duration)]
    pub follow: Option<Duration>,
    /// Place every injected event within this much of the start of the window (default: the
    /// whole window).
    #[arg(long, value_parser = parse_duration)]
    pub events_within: Option<Duration>,
    /// Only these kinds of events, comma-separated (default: all, in turn): tachycardia,
    /// bradycardia, desaturation, hypertensive-crisis, hypoglycaemia, hyperglycaemia, fever,
    /// weight-gain.
    #[arg(long, value_delimiter = ',')]
    pub event_kinds: Vec<String>,
    /// The watch's heart-rate interval in ms (a load knob; must divide 5000).
    #[arg(long, default_value_t = 5000)]
    pub watch_every_ms: i64,
    /// Give up on a batch the gateway keeps refusing after this many seconds of retries.
    #[arg(long, default_value_t = 600)]
    pub retry_for: u64,
}

/// Parses `90s`, `30m`, `6h`, `2d` (or plain seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_time(text: &str) -> Result<i64, String> {
    osler_core::Timestamp::parse(text)
        .map(|t| t.utc_ms)
        .map_err(|e| format!("{text:?}: {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A reading in the gateway's device format.
pub fn device_json(r: &SimReading, prefix: &str) -> serde_json::Value {
    let value = match r.value {
        SimValue::One(v) => json!(v),
        SimValue::Two(a, b) => json!([a, b]),
    };
    json!({
        "patient": format!("{prefix}{}", r.patient),
        "device": format!("{prefix}{}-{}", r.patient, r.device),
        "metric": r.metric,
        "value": value,
        "unit": r.unit,
        "time": osler_core::Timestamp::utc(r.t_ms).to_string(),
    })
}

enum Sink {
    Http {
        agent: ureq::Agent,
        url: String,
    },
    Mqtt {
        client: rumqttc::Client,
        thread: std::thread::JoinHandle<()>,
        acked: std::sync::mpsc::Receiver<u16>,
    },
}

/// Sends one batch to the gateway, retrying (with backoff) while it is unreachable or busy.
/// Returns (acknowledged, rejected) counts; rejected readings are listed by the gateway.
fn send_http(
    agent: &ureq::Agent,
    url: &str,
    batch: &[&serde_json::Value],
    retry_for: Duration,
) -> anyhow::Result<Vec<bool>> {
    let body = serde_json::to_string(batch)?;
    let deadline = Instant::now() + retry_for;
    let mut wait = Duration::from_millis(50);
    loop {
        let reason = match agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(resp) => {
                let v: serde_json::Value = serde_json::from_str(&resp.into_string()?)?;
                let mut ok = vec![true; batch.len()];
                for r in v["rejected"].as_array().into_iter().flatten() {
                    if let Some(i) = r["index"].as_u64() {
                        ok[i as usize] = false;
                    }
                }
                return Ok(ok);
            }
            Err(ureq::Error::Status(422, _)) => return Ok(vec![false; batch.len()]),
            Err(ureq::Error::Status(code, resp)) => {
                format!("HTTP {code}: {}", resp.into_string().unwrap_or_default())
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("the gateway kept refusing a batch for {retry_for:?}: {reason}");
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// What the simulator has generated but not yet sent, and where it goes.
struct Outbox {
    sink: Sink,
    pending: Vec<(SimReading, serde_json::Value)>,
    acked: u64,
    rejected: u64,
    sent_file: Option<std::io::BufWriter<std::fs::File>>,
    retry_for: Duration,
    mqtt_prefix: String,
    patient_prefix: String,
    /// Readings taken at or after this time are live (`--follow`), not the replayed past.
    live_from: i64,
    /// Per send of live readings: how long after its time the oldest of them left (ms). The
    /// benchmarks report it, so that a simulator falling behind is not taken for a slow system.
    send_lags: Vec<i64>,
}

impl Outbox {
    /// Sends everything pending and records what was acknowledged.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(oldest) = self
            .pending
            .iter()
            .map(|(r, _)| r.t_ms)
            .filter(|t| *t >= self.live_from)
            .min()
        {
            self.send_lags.push(now_ms() - oldest);
        }
        let ok: Vec<bool> = match &mut self.sink {
            Sink::Http { agent, url } => {
                // Borrowed, not cloned: at 10,000 readings/s the simulator shares the machine
                // with what it measures.
                let batch: Vec<&serde_json::Value> = self.pending.iter().map(|(_, j)| j).collect();
                send_http(agent, url, &batch, self.retry_for)?
            }
            Sink::Mqtt {
                client, acked: rx, ..
            } => {
                // One message per patient and device, as a device would publish.
                let mut groups: std::collections::BTreeMap<(usize, &str), Vec<serde_json::Value>> =
                    Default::default();
                for (r, j) in &self.pending {
                    groups
                        .entry((r.patient, r.device))
                        .or_default()
                        .push(j.clone());
                }
                let n = groups.len();
                for ((p, _), items) in groups {
                    let topic = format!("{}/{}{p}/readings", self.mqtt_prefix, self.patient_prefix);
                    client.publish(
                        topic,
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&items)?,
                    )?;
                }
                for _ in 0..n {
                    rx.recv_timeout(Duration::from_secs(60))
                        .context("the broker did not acknowledge a publish")?;
                }
                vec![true; self.pending.len()]
            }
        };
        for ((_, j), ok) in self.pending.iter().zip(ok) {
            if ok {
                self.acked += 1;
                if let Some(f) = self.sent_file.as_mut() {
                    writeln!(f, "{j}")?;
                }
            } else {
                self.rejected += 1;
            }
        }
        self.pending.clear();
        Ok(())
    }
}

/// Runs the simulation. Prints one summary line (JSON) on standard output at the end.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let speed = match args.speed.as_str() {
        "max" => None,
        s => Some(
            s.parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0)
                .with_context(|| format!("--speed {s:?}: a positive number or max"))?,
        ),
    };
    if args.gateway.is_none() && args.mqtt.is_none() {
        bail!("say where to send: --gateway URL or --mqtt HOST:PORT");
    }
    let now = match args.end {
        Some(end) if end > now_ms() => {
            bail!(
                "--end {} is in the future: the simulator never sends a reading before its time",
                osler_core::Timestamp::utc(end)
            );
        }
        Some(end) => end,
        None => now_ms(),
    };
    let start = now - args.duration.as_millis() as i64;
    let end = now + args.follow.map_or(0, |f| f.as_millis() as i64);
    let events = args.events.unwrap_or((args.patients / 4).max(1));
    let events_end = args
        .events_within
        .map_or(end, |w| start + w.as_millis() as i64);
    let kinds: Vec<model::EventKind> = if args.event_kinds.is_empty() {
        model::EventKind::ALL.to_vec()
    } else {
        args.event_kinds
            .iter()
            .map(|k| {
                model::EventKind::parse(k)
                    .with_context(|| format!("--event-kinds: unknown kind {k:?}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut cohort = Cohort::with_events_by(
        args.patients,
        start,
        end,
        &kinds,
        events,
        events_end,
        args.seed,
    );
    cohort
        .set_tick(args.watch_every_ms)
        .map_err(|e| anyhow::anyhow!("--watch-every-ms: {e}"))?;
    if let Some(path) = &args.ground_truth {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        for e in &cohort.events {
            writeln!(
                f,
                "{}",
                json!({
                    "patient": format!("{}{}", args.patient_prefix, e.patient),
                    "kind": e.kind.name(),
                    "start": osler_core::Timestamp::utc(e.start_ms).to_string(),
                    "end": osler_core::Timestamp::utc(e.end_ms).to_string(),
                })
            )?;
        }
        f.sync_all()?;
    }
    let sent_file = match &args.sent {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let sink = if let Some(url) = &args.gateway {
        Sink::Http {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
            url: format!("{}/readings", url.trim_end_matches('/')),
        }
    } else {
        let hp = args.mqtt.clone().unwrap_or_default();
        let (host, port) = hp.rsplit_once(':').context("--mqtt: expected HOST:PORT")?;
        let mut opts = rumqttc::MqttOptions::new(
            format!("osler-sim-{}-{}", args.seed, std::process::id()),
            host,
            port.parse()?,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut connection) = rumqttc::Client::new(opts, 1000);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) => {
                        let _ = tx.send(a.pkid);
                    }
                    // Our own goodbye: the connection would otherwise reconnect forever.
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(e) => {
                        eprintln!("osler sim: MQTT: {e}");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        });
        Sink::Mqtt {
            client,
            thread,
            acked: rx,
        }
    };

    let began = Instant::now();
    let mut readings = Vec::new();
    let mut sent = 0u64;
    let mut out = Outbox {
        sink,
        pending: Vec::new(),
        acked: 0,
        rejected: 0,
        sent_file,
        retry_for: Duration::from_secs(args.retry_for),
        mqtt_prefix: args.mqtt_prefix.clone(),
        patient_prefix: args.patient_prefix.clone(),
        live_from: now,
        send_lags: Vec::new(),
    };
    while let Some(t) = cohort.next_tick_ms() {
        // Never ahead of real time: a reading is not sent before it was taken.
        if t > now_ms() {
            out.flush()?;
            // Measured after the flush, which waits for the gateway's answer: sleeping for the
            // time measured before it would send every later reading that much after it was
            // taken, and charge the simulator's lateness to the system it measures.
            let ahead = t - now_ms();
            if ahead > 0 {
                std::thread::sleep(Duration::from_millis(ahead as u64));
            }
        }
        if let Some(speed) = speed {
            // Simulated time runs `speed` times faster than real time from the start.
            let due =
                began + Duration::from_secs_f64((t - cohort.start_ms) as f64 / 1000.0 / speed);
            let now = Instant::now();
            if due > now {
                out.flush()?;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        readings.clear();
        cohort.tick(&mut readings);
        for r in readings.drain(..) {
            if let Some(rate) = args.rate {
                // Reading k is due k/rate seconds after the start. Sleep only when more than
                // 20 ms ahead, and send what is pending first, so that a paced run still goes
                // out in batches rather than one request per reading.
                let due = began + Duration::from_secs_f64(sent as f64 / rate);
                let now = Instant::now();
                if due > now + Duration::from_millis(20) {
                    out.flush()?;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            }
            let j = device_json(&r, &args.patient_prefix);
            out.pending.push((r, j));
            sent += 1;
            if out.pending.len() >= args.batch {
                out.flush()?;
            }
        }
    }
    out.flush()?;
    if let Some(f) = out.sent_file.as_mut() {
        f.flush()?;
    }
    let (acked, rejected) = (out.acked, out.rejected);
    let mut lags = std::mem::take(&mut out.send_lags);
    lags.sort_unstable();
    let lag = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    let send_lag =
        (!lags.is_empty()).then(|| json!({ "p50": lag(0.5), "p99": lag(0.99), "max": lag(1.0) }));
    if let Sink::Mqtt { client, thread, .. } = out.sink {
        client.disconnect().context("MQTT disconnect")?;
        drop(client);
        let _ = thread.join();
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "sent": sent,
            "acknowledged": acked,
            "rejected": rejected,
            "events": cohort.events.len(),
            "seconds": (secs * 1000.0).round() / 1000.0,
            "readings_per_second": (acked as f64 / secs).round(),
            "send_lag_ms": send_lag,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse_duration("2d").unwrap().as_secs(), 172_800);
        assert_eq!(super::parse_duration("1.5h").unwrap().as_secs(), 5400);
        assert!(super::parse_duration("5y").is_err());
        assert!(super::parse_duration("0m").is_err());
    }
}
