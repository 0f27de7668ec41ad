//! `osler demo`: a hub, a gateway and a simulated cohort, each its own process, wired together
//! and watched. Glue only: every part is the ordinary subcommand.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use osler_bench::process::Server;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Patients in the simulated cohort.
    #[arg(long, default_value_t = 20)]
    patients: usize,
    /// How fast the last two hours are replayed before the cohort goes live (simulated seconds
    /// per real second).
    #[arg(long, default_value_t = 240.0)]
    speed: f64,
    /// Keep the data here (default: a temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The hub's address (falls back to a free port if this one is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Seed for the cohort.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn free_or_zero(addr: &str) -> String {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr.to_owned(),
        Err(_) => "127.0.0.1:0".to_owned(),
    }
}

/// Prints one readable line per alert event from the hub's stream, until it closes.
fn watch(stream_url: String) {
    let resp = match osler_bench::process::get(&stream_url)
        .timeout(Duration::from_secs(24 * 3600))
        .call()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("osler demo: cannot follow the alert stream: {e}");
            return;
        }
    };
    for line in BufReader::new(resp.into_reader()).lines() {
        let Ok(line) = line else { return };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(a) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
        let clock = |t: String| t.get(11..19).unwrap_or("").to_owned();
        let resolved = a["event"] == "resolved";
        let (at, reading) = if resolved {
            (s("resolved_at"), s("resolved_reading_time"))
        } else {
            (s("raised_at"), s("reading_time"))
        };
        let what = if resolved {
            format!("back to normal (reading at {})", reading.replace('T', " "))
        } else {
            format!(
                "{} (reading at {}{})",
                a["value"],
                reading.replace('T', " "),
                if a["late"] == true {
                    ", arrived late"
                } else {
                    ""
                }
            )
        };
        let line = format!(
            "  {}  {:<8} {:<8}  {:<8}  {} — {what}",
            clock(at),
            s("event").to_uppercase(),
            s("severity"),
            s("patient"),
            s("title"),
        );
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The demo's clinician: a Practitioner on the care team of every simulated patient (each
/// registered with a made-up name), an account for them, and a one-time link that signs them
/// in to the dashboard without a password (demo data only; see `create_sign_in_link`).
fn demo_clinician(hub_dir: &Path, root: &str, patients: usize) -> anyhow::Result<String> {
    const GIVEN: [&str; 10] = [
        "Ada", "Bo", "Chen", "Dara", "Eli", "Femi", "Gia", "Hana", "Ivo", "Jun",
    ];
    let agent = osler_bench::process::agent(Duration::from_secs(30));
    let put = |path: String, body: serde_json::Value| -> anyhow::Result<()> {
        osler_bench::process::request_on(&agent, "PUT", &format!("{root}/fhir/{path}"))
            .set("Content-Type", "application/fhir+json")
            .send_string(&body.to_string())
            .with_context(|| format!("cannot register {path} for the demo"))?;
        Ok(())
    };
    let who = "demo-clinician";
    put(
        format!("Practitioner/{who}"),
        serde_json::json!({"resourceType": "Practitioner", "id": who, "active": true,
            "name": [{"text": "Demo Clinician"}]}),
    )?;
    for i in 0..patients {
        let id = format!("sim-p{i}");
        put(
            format!("Patient/{id}"),
            serde_json::json!({"resourceType": "Patient", "id": id, "active": true,
                "name": [{"text": format!("{} Demo-{i}", GIVEN[i % GIVEN.len()])}]}),
        )?;
        put(
            format!("CareTeam/demo-team-{id}"),
            serde_json::json!({"resourceType": "CareTeam", "id": format!("demo-team-{id}"),
                "status": "active", "subject": {"reference": format!("Patient/{id}")},
                "participant": [{"member": {"reference": format!("Practitioner/{who}")}}]}),
        )?;
    }
    // An account that is never enrolled: the link is its only way in.
    if let Err(e) = osler_hub::admin::add_user(hub_dir, who, "clinician", Some(who), None) {
        // Kept from an earlier run with the same --data: a new link signs it in again.
        if !e.to_string().contains("exists already") {
            return Err(e).context("cannot add the demo clinician");
        }
    }
    let code = osler_hub::admin::create_sign_in_link(hub_dir, who, 8 * 3_600_000)
        .context("cannot make the demo's sign-in link")?;
    Ok(format!("{root}/ui/link?code={code}"))
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let osler = std::env::current_exe().context("cannot find the osler binary")?;
    let (data, temporary) = match &args.data {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("osler-demo-{}", std::process::id())),
            true,
        ),
    };
    let hub_dir = data.join("hub");
    let gw_dir = data.join("gateway");
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .context("the data directory must be UTF-8")
    };
    let (hub_s, gw_s) = (path(&hub_dir)?, path(&gw_dir)?);

    let listen = free_or_zero(&args.listen);
    std::fs::create_dir_all(&data).context("cannot create the data directory")?;
    let (hub_log, gw_log) = (data.join("hub.log"), data.join("gateway.log"));
    let hub = Server::spawn_logging(
        &osler,
        &["serve", "--data", &hub_s, "--listen", &listen],
        Duration::from_secs(30),
        &hub_log,
    )?;
    let root = hub.base.trim_end_matches("/fhir").to_owned();
    osler_bench::process::enrol(&osler, &hub_s, &gw_s)?;
    let gw = Server::spawn_logging(
        &osler,
        &[
            "gateway",
            "--data",
            &gw_s,
            "--hub",
            &root,
            "--listen",
            "127.0.0.1:0",
            "--max-wait-ms",
            "50",
        ],
        Duration::from_secs(30),
        &gw_log,
    )?;
    let link = demo_clinician(&hub_dir, &root, args.patients)?;
    println!(
        "Osler demo: {} patients; the last 2 hours replayed at {}x, then live.",
        args.patients, args.speed
    );
    let ca = hub_dir.join("tls/ca.pem");
    let exe = osler.display().to_string();
    println!("  FHIR base:      {}", hub.base);
    println!("  CA certificate: {}", ca.display());
    println!("  Alert stream:   {root}/alerts/stream");
    println!("  Alerts:         {root}/alerts");
    println!("  Gateway status: {}/status", gw.base);
    println!("  Dashboard:      {root}/ui/worklist");
    println!(
        "  Sign in:        {link}  (once; the demo clinician, demo data only; the browser warns \
         about the demo's own certificate authority: trust {} or proceed)",
        ca.display()
    );
    println!(
        "  Data:           {}{}",
        data.display(),
        if temporary {
            " (removed at exit; --data DIR keeps it)"
        } else {
            ""
        }
    );
    println!(
        "  Logs:           {} and {}",
        hub_log.display(),
        gw_log.display()
    );
    // Every command printed here works as printed, in another terminal, while the demo runs.
    println!("Try, in another terminal (the token lasts 8 hours):");
    println!(
        "  TOKEN=$('{exe}' hub token create --data '{hub_s}' --scope 'system/*.rs' --expires 8h)"
    );
    println!(
        "  curl --cacert '{}' -H \"Authorization: Bearer $TOKEN\" '{}/Observation?patient=sim-p0&code=8867-4&_sort=-date&_count=3'",
        ca.display(),
        hub.base
    );
    println!("Alerts as they happen (Ctrl-C to stop):");

    let stream_url = format!("{root}/alerts/stream");
    std::thread::spawn(move || watch(stream_url));
    let patients = args.patients.to_string();
    let speed = args.speed.to_string();
    let seed = args.seed.to_string();
    let events = (args.patients / 2).max(1).to_string();
    let truth = data.join("ground-truth.jsonl");
    let truth_s = path(&truth)?;
    let sim = Server::spawn_plain(
        &osler,
        &[
            "sim",
            "--gateway",
            &gw.base,
            "--patients",
            &patients,
            "--duration",
            "2h",
            "--speed",
            &speed,
            "--follow",
            "24h",
            "--events",
            &events,
            "--events-within",
            "2h",
            "--seed",
            &seed,
            "--ground-truth",
            &truth_s,
        ],
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    rt.block_on(crate::shutdown_signal());
    println!("Stopping: simulator, gateway, hub.");
    sim.stop()?;
    gw.stop()?;
    hub.stop()?;
    if temporary {
        let _ = std::fs::remove_dir_all(&data);
    }
    println!("Stopped cleanly.");
    Ok(())
}
