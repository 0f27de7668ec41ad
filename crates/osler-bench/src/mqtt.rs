//! `osler bench mqtt`: readings over MQTT, end to end. Publishers send QoS 1 messages of one
//! reading each (the device format) for 100 patients to a broker as fast as it takes them; a
//! real gateway (`--raw`, every reading uploaded) subscribes and a real hub stores. The figure
//! is readings committed at the hub per second, from the first publish to the last commit, and
//! the gateway's own rate (durable in its outbox and acknowledged to the broker). Then the same
//! again with the gateway killed (`kill -9`) and restarted in the middle: every reading must
//! still reach the hub, once.
//!
//! Baseline: a common low-code flow tool relays about 53,000 readings/s over the same broker
//! on this machine, without durability (it loses what is in flight on `kill -9`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::process::{Server, hub_and_gateway, setup, stored_readings};

#[derive(Args, Debug)]
pub struct MqttBenchArgs {
    /// A broker to use (HOST:PORT). By default the bench starts a Mosquitto of its own on a
    /// free port, set up as a gateway's broker should be: `max_queued_messages 0`, so that
    /// the broker never drops what it queues for the gateway while it is behind or restarting
    /// (Mosquitto's default keeps 1,000 and drops the rest).
    #[arg(long)]
    broker: Option<String>,
    /// Readings (messages) per run.
    #[arg(long, default_value_t = 300_000)]
    readings: usize,
    /// Patients the readings are spread over.
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// Publisher connections (each publishes its share of the patients, in order).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Skip the second run (kill -9 of the gateway half-way).
    #[arg(long)]
    no_kill: bool,
    /// The osler binary to run (default: this one).
    #[arg(long, value_name = "PATH")]
    osler: Option<PathBuf>,
    /// Where the hub and the gateway keep their data (default: a new temp directory).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

/// Baseline: the flow tool's relay rate measured on this machine (no durability).
const BASELINE: f64 = 53_000.0;

pub fn run(args: MqttBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.readings > 0 && args.patients > 0 && args.publishers > 0,
        "nothing to send"
    );
    let (osler, data) = setup(args.osler.as_deref(), args.data.as_deref(), "mqtt")?;
    std::fs::create_dir_all(&data)?;
    let own = match &args.broker {
        Some(_) => None,
        None => Some(Broker::start(&data)?),
    };
    let broker = match (&args.broker, &own) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => format!("127.0.0.1:{}", b.port),
        (None, None) => unreachable!("a broker of our own is started when none is given"),
    };
    let (host, port) = broker
        .rsplit_once(':')
        .context("--broker: expected HOST:PORT")?;
    let port: u16 = port.parse().context("--broker: the port is not a number")?;
    let prefix = format!("osler-bench-{}", std::process::id());
    let topic = format!("{prefix}/+/readings");
    let gw_args = [
        "--raw",
        "--mqtt",
        broker.as_str(),
        "--mqtt-topic",
        topic.as_str(),
    ];
    println!(
        "osler bench mqtt: {} readings, {} patients, {} publishers, QoS 1, broker {}",
        args.readings,
        args.patients,
        args.publishers,
        if own.is_some() {
            format!("{broker} (started by the bench, max_queued_messages 0)")
        } else {
            broker.clone()
        }
    );

    // Run 1: throughput.
    let run1 = data.join("run1");
    let (hub, root, gw) = hub_and_gateway(&osler, &run1, &gw_args)?;
    wait_connected(&gw)?;
    let started = Instant::now();
    publish(host, port, &prefix, &args, 0)?;
    let published = started.elapsed();
    let acked = wait_for_received(&gw, args.readings as u64, started)?;
    let committed = wait_for_hub(&root, args.readings as u64, started)?;
    let rate = args.readings as f64 / committed.as_secs_f64();
    let per_100k = |pid: u32| {
        crate::process::cpu_seconds(pid).map_or("?".to_owned(), |s| {
            format!("{:.2}", s * 100_000.0 / args.readings as f64)
        })
    };
    let (gw_cpu, hub_cpu) = (per_100k(gw.pid()), per_100k(hub.pid()));
    let broker_cpu = own
        .as_ref()
        .map_or("?".to_owned(), |b| per_100k(b.child.id()));
    gw.stop()?;
    hub.stop()?;

    println!();
    println!("| figure | result | baseline |");
    println!("|---|---|---|");
    println!(
        "| published (QoS 1, acknowledged by the broker) | {:.0} readings/s | |",
        args.readings as f64 / published.as_secs_f64()
    );
    println!(
        "| durable in the gateway's outbox, acknowledged to the broker | {:.0} readings/s | |",
        args.readings as f64 / acked.as_secs_f64()
    );
    println!(
        "| **end to end, committed at the hub** | **{rate:.0} readings/s** | {BASELINE:.0} (no durability) |"
    );
    println!(
        "| CPU seconds per 100,000 readings: gateway / hub / broker | {gw_cpu} / {hub_cpu} / {broker_cpu} | |"
    );

    if args.no_kill {
        return Ok(());
    }
    // Run 2: the gateway is killed half-way and restarted; everything must arrive once.
    let run2 = data.join("run2");
    let (hub, root, gw) = hub_and_gateway(&osler, &run2, &gw_args)?;
    wait_connected(&gw)?;
    let pid = gw.pid();
    let gw_dir = run2.join("gw");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    });
    publish(host, port, &prefix, &args, 1)?;
    killer
        .join()
        .map_err(|_| anyhow::anyhow!("the killer thread panicked"))?;
    drop(gw);
    let gw_dir = gw_dir.to_str().context("UTF-8 paths")?;
    let gw = Server::spawn_logging(
        &osler,
        &[
            "gateway",
            "--data",
            gw_dir,
            "--hub",
            &root,
            "--listen",
            "127.0.0.1:0",
            "--raw",
            "--mqtt",
            &broker,
            "--mqtt-topic",
            &topic,
        ],
        Duration::from_secs(30),
        &run2.join("gw.log"),
    )?;
    let restarted = Instant::now();
    let stored = wait_for_hub(&root, args.readings as u64, restarted).map(|_| args.readings as u64);
    let got = stored_readings(&root)?;
    gw.stop()?;
    hub.stop()?;
    println!(
        "| kill -9 of the gateway half-way, then restarted: readings at the hub | {got} of {} ({} lost, {} duplicated) | 0 lost |",
        args.readings,
        args.readings as u64 - got.min(args.readings as u64),
        got.saturating_sub(args.readings as u64)
    );
    stored?;
    Ok(())
}

/// A Mosquitto of the bench's own, stopped when dropped.
struct Broker {
    child: std::process::Child,
    port: u16,
}

impl Broker {
    fn start(data: &std::path::Path) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = data.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"),
        )?;
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start mosquitto (install it, or give --broker HOST:PORT)")?;
        let broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_connected(gw: &Server) -> anyhow::Result<()> {
    let url = format!("{}/status", gw.base);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(r) = crate::process::get(&url).call()
            && let Ok(text) = r.into_string()
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["mqtt"]["connected"] == true
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the gateway did not connect to the broker within 15 s")
}

/// Waits until the gateway has taken in `n` readings; returns the time since `from`.
fn wait_for_received(gw: &Server, n: u64, from: Instant) -> anyhow::Result<Duration> {
    let url = format!("{}/status", gw.base);
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(r) = crate::process::get(&url).call()
            && let Ok(text) = r.into_string()
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["ingest"]["received"].as_u64().unwrap_or(0) >= n
        {
            return Ok(from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the gateway did not receive {n} readings within 10 minutes")
}

/// Waits until the hub has stored `n` readings; returns the time since `from`.
fn wait_for_hub(root: &str, n: u64, from: Instant) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if stored_readings(root).unwrap_or(0) >= n {
            return Ok(from.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the hub stored {} of {n} readings within 10 minutes",
        stored_readings(root).unwrap_or(0)
    )
}

/// Publishes the run's readings: each publisher its share of the patients, every message QoS 1
/// and acknowledged by the broker before this returns. `run` keeps runs' readings apart.
fn publish(
    host: &str,
    port: u16,
    prefix: &str,
    args: &MqttBenchArgs,
    run: usize,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let per_patient = args.readings.div_ceil(args.patients);
    // Readings 100 ms apart, ending a minute ago.
    let base = now - 60_000 - per_patient as i64 * 100;
    let mut threads = Vec::new();
    for k in 0..args.publishers {
        let (host, prefix) = (host.to_owned(), prefix.to_owned());
        let (total, patients, publishers) = (args.readings, args.patients, args.publishers);
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut opts = rumqttc::MqttOptions::new(
                format!("{prefix}-pub-{run}-{k}"),
                host,
                port,
            );
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_inflight(1000);
            let (client, mut connection) = rumqttc::Client::new(opts, 10_000);
            let mine: Vec<usize> = (0..patients).filter(|p| p % publishers == k).collect();
            let count = (0..total).filter(|i| mine.contains(&(i % patients))).count();
            let sender = std::thread::spawn(move || -> anyhow::Result<()> {
                for i in (0..total).filter(|i| i % patients % publishers == k) {
                    let p = i % patients;
                    let t = osler_core::Timestamp::utc(base + (i / patients) as i64 * 100);
                    let body = format!(
                        r#"{{"patient":"mq{run}-p{p}","device":"w","metric":"heart-rate","value":{},"unit":"/min","time":"{t}"}}"#,
                        60 + i % 40
                    );
                    client.publish(
                        format!("{prefix}/mq{run}-p{p}/readings"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        body,
                    )?;
                }
                Ok(())
            });
            let mut acked = 0;
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        acked += 1;
                        if acked == count {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => bail!("publisher {k}: {e}"),
                }
            }
            sender
                .join()
                .map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
    }
    Ok(())
}
