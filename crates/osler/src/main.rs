//! `osler`: the command-line glue. Each subcommand parses its flags, sets up logging and hands
//! over to a library crate; no business logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod demo;

#[derive(Parser)]
#[command(
    name = "osler",
    version,
    about = "Continuous physiological monitoring: readings in, FHIR R4 out.",
    long_about = "Osler takes readings from wearables and home devices and serves them as FHIR R4.\n\n\
        See it all:     osler demo\n\
        Start a hub:    osler serve --data ./hub-data --listen 127.0.0.1:8080\n\
        Then:           curl http://127.0.0.1:8080/fhir/metadata\n\
        Benchmark it:   osler bench hub --help\n\n\
        Logs go to standard error; set OSLER_LOG (e.g. OSLER_LOG=debug or OSLER_LOG=info,osler_store=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a hub, a gateway and a simulated cohort, and print alerts as they happen.
    #[command(
        long_about = "Start a hub, a gateway and a simulated cohort, each its own process, and print\n\
        alerts as they happen. The cohort's last two hours are replayed quickly (with injected\n\
        clinical events, so alerts show within a minute), then it goes on live.\n\
        Prints the FHIR base URL, the alert stream URL and the gateway status URL. Ctrl-C stops\n\
        everything cleanly."
    )]
    Demo(demo::DemoArgs),
    /// Run the hub: the FHIR R4 API over an embedded store.
    #[command(
        long_about = "Run the hub: the FHIR R4 API over an embedded SQLite store.\n\n\
        Readings are committed to disk before they are acknowledged. The API is under /fhir\n\
        (see /fhir/metadata for what it supports); Prometheus metrics are at /metrics.\n\
        The first line on standard output is the FHIR base URL, once the hub is listening."
    )]
    Serve {
        /// Directory for the hub's data (created if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Largest request body in bytes.
        #[arg(long, value_name = "BYTES", default_value_t = osler_hub::DEFAULT_MAX_BODY)]
        max_body: usize,
        /// Public base URL of the FHIR API for links (default: from each request's Host header).
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// A web origin whose browser apps may call the hub (CORS), e.g.
        /// https://dashboard.example.org; repeat for several. None by default: browsers on
        /// other origins are refused.
        #[arg(long = "cors-origin", value_name = "ORIGIN")]
        cors_origins: Vec<String>,
        /// Serve plain HTTP instead of HTTPS, for development on this machine: refused unless
        /// --listen is a loopback address. Without it the hub needs `osler hub init` first.
        #[arg(long)]
        insecure_http: bool,
        /// The longest snooze of an alert of a severity, as SEVERITY=MINUTES; repeat for
        /// several. Defaults: critical=15 (ISO 7396-1 lets an emergency alarm be paused 15
        /// minutes at most), urgent=60, warning=240.
        #[arg(long = "snooze-cap", value_name = "SEVERITY=MINUTES")]
        snooze_caps: Vec<String>,
        /// When a failed webhook delivery of a critical alert is tried again: delays after
        /// each failure, comma-separated (past the last, it is dead-lettered).
        #[arg(long, value_name = "DELAYS", default_value = "5s,30s,2m")]
        webhook_retry_critical: String,
        /// The same for every other alert event.
        #[arg(long, value_name = "DELAYS", default_value = "5s,5m,30m,2h,5h")]
        webhook_retry: String,
        /// How long an enrolled gateway may send no batch before it is a technical alert for
        /// operators ("gateway-silent", at GET /alerts/technical and on the devices page).
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        gateway_silence: String,
    },
    /// Run an edge gateway: take readings over HTTP and MQTT, keep them on disk, send them to a hub.
    #[command(long_about = "Run an edge gateway.\n\n\
        Devices POST readings to /readings (one JSON object or an array; see the format below) or\n\
        publish them to an MQTT broker (--mqtt). Each reading is validated, written to the outbox\n\
        on disk, and only then acknowledged. The uploader sends the outbox to the hub in signed,\n\
        compressed batches and deletes entries only when the hub confirms their commit.\n\n\
        Edge processing (default; --raw turns it off): every reading near or past an alert\n\
        threshold (the patient's own thresholds included, fetched from the hub) is sent at once;\n\
        otherwise a reading is sent when its spike-filtered value moved more than the metric's\n\
        clinical resolution or a heartbeat passed, and the rest is sent as window summaries\n\
        (count, min, max, mean, last). Tune it per metric with --config FILE (TOML);\n\
        --print-config shows every key and its default.\n\n\
        Reading format: {\"patient\":\"p1\",\"device\":\"watch-1\",\"metric\":\"heart-rate\",\n\
        \"value\":72,\"unit\":\"/min\",\"time\":\"2025-06-01T08:30:00+02:00\"} (value [sys,dia] for BP).\n\n\
        First start creates the gateway's id and key in --data. Enrol it at the hub:\n\
          osler gateway --data GW --identity           # prints id and public key\n\
          osler hub enrol --data HUB --gateway ID --key KEY\n\
        GET /status reports outbox depth and age, the last upload, hub reachability and what\n\
        the edge sent, summarised and filtered.")]
    Gateway(GatewayArgs),
    /// Administer a hub's data directory: enrol or revoke gateways, list them.
    Hub {
        #[command(subcommand)]
        which: HubAdmin,
    },
    /// The audit log: its public key, an export anyone can verify, and verification.
    Audit {
        #[command(subcommand)]
        which: AuditCmd,
    },
    /// Simulate a cohort of patients with devices, and send their readings to a gateway.
    Sim(osler_sim::SimArgs),
    /// Run a benchmark against real processes and print its figures.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// Directory for the outbox, the quarantine and the gateway's identity (created if missing).
    #[arg(long, value_name = "DIR", required_unless_present = "print_config")]
    data: Option<PathBuf>,
    /// Print the gateway's id and public key (creating them if needed) and exit.
    #[arg(long)]
    identity: bool,
    /// The hub's root URL, e.g. https://hub.example.org:8443.
    #[arg(long, value_name = "URL", required_unless_present_any = ["identity", "print_config", "add_device"])]
    hub: Option<String>,
    /// The hub's CA certificate (PEM, from `osler hub ca`): the only CA trusted for the hub, so
    /// a hub presenting another certificate is refused. Required for an https:// hub.
    #[arg(long, value_name = "FILE")]
    hub_ca: Option<PathBuf>,
    /// Address for devices' HTTP readings and /status; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Set the gateway's id (stored in --data; default: generated on first start).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// MQTT broker to subscribe to, HOST:PORT (e.g. 127.0.0.1:1883).
    #[arg(long, value_name = "HOST:PORT")]
    mqtt: Option<String>,
    /// MQTT topic filter to subscribe to; its `+` is the device's id (see --open-devices).
    #[arg(long, value_name = "FILTER", default_value = "osler/+/readings")]
    mqtt_topic: String,
    /// Reach the MQTT broker over TLS, trusting the CA in this PEM file alone.
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    mqtt_ca: Option<PathBuf>,
    /// Entries per batch at most.
    #[arg(long, default_value_t = 5000)]
    max_batch: usize,
    /// Longest a reading waits for more to fill its batch, in milliseconds.
    #[arg(long, default_value_t = 200)]
    max_wait_ms: u64,
    /// Entries per second at most when catching up after an outage.
    #[arg(long, default_value_t = 100_000.0)]
    catchup_rate: f64,
    /// Outbox size in bytes at which new readings are refused (alerts get 10% more).
    #[arg(long, default_value_t = osler_gateway::DEFAULT_OUTBOX_LIMIT)]
    outbox_limit: u64,
    /// Edge policies per metric, TOML (filter, deadband, near, heartbeat, window, max_hold;
    /// see --print-config for every key and its default). Without it the defaults apply.
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    config: Option<PathBuf>,
    /// Print the effective edge configuration (defaults, or --config applied) and exit.
    #[arg(long)]
    print_config: bool,
    /// Enrol a device: print a new token for it (replacing any earlier one) and exit. The
    /// device sends it as `Authorization: Bearer …` with every POST /readings.
    #[arg(long, value_name = "DEVICE")]
    add_device: Option<String>,
    /// Take readings from any device as they claim, without device credentials or checks of
    /// their assignment (development and simulators only).
    #[arg(long)]
    open_devices: bool,
    /// Send every raw reading as it is, without edge processing (the baseline that the edge's
    /// saving is measured against).
    #[arg(long)]
    raw: bool,
    /// How often to fetch per-patient thresholds and device assignments from the hub, in
    /// seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    overrides_every: f64,
}

#[derive(Subcommand)]
enum HubAdmin {
    /// Prepare a hub's data directory: its own certificate authority and server certificate,
    /// and the audit log's signing key. Asks nothing; refuses a directory prepared before.
    #[command(
        long_about = "Prepare a hub's data directory before its first `osler serve`.\n\n\
        Makes the hub's own certificate authority (tls/ca.pem), a server certificate signed by\n\
        it for the names and addresses given (localhost, 127.0.0.1 and ::1 by default), and the\n\
        audit log's signing key. Private keys are written owner-only. It asks nothing on a\n\
        terminal, and refuses a directory that is prepared already (its keys are never\n\
        overwritten); a directory holding an older hub's database is prepared around it.\n\n\
        Clients trust the hub by its CA:  osler hub ca --data DIR > hub-ca.pem\n\
          curl --cacert hub-ca.pem https://localhost:8080/fhir/metadata"
    )]
    Init {
        /// The hub's data directory (created if missing).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// A DNS name clients reach the hub by; repeat for several.
        #[arg(long = "name", value_name = "DNS")]
        names: Vec<String>,
        /// An IP address clients reach the hub at; repeat for several.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::IpAddr>,
        /// The first administrator's account name (their one-time enrolment code is printed).
        #[arg(long, value_name = "NAME", default_value = "admin")]
        admin: String,
    },
    /// Print the hub's CA certificate (PEM) to standard output, for clients to trust.
    Ca {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Trust a gateway's key (re-enrolling replaces the key and lifts a revocation).
    Enrol {
        /// The hub's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The gateway's id.
        #[arg(long, required_unless_present = "from_gateway")]
        gateway: Option<String>,
        /// The gateway's public key (hex), as `osler gateway --identity` prints it.
        #[arg(long, required_unless_present = "from_gateway")]
        key: Option<String>,
        /// Read id and key from a gateway's data directory on this machine instead.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["gateway", "key"])]
        from_gateway: Option<PathBuf>,
    },
    /// Stop trusting a gateway: its batches are refused from now on.
    Revoke {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        gateway: String,
    },
    /// List enrolled gateways.
    Gateways {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Bearer tokens for programs and scripts: create, revoke, list.
    Token {
        #[command(subcommand)]
        which: TokenCmd,
    },
    /// People's accounts: add one (prints its one-time enrolment code), list them.
    User {
        #[command(subcommand)]
        which: UserCmd,
    },
    /// Backend programs that sign in with a key (SMART backend services): register one.
    Client {
        #[command(subcommand)]
        which: ClientCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add an account and print its one-time enrolment code (valid 7 days).
    #[command(
        long_about = "Add an account and print its one-time enrolment code (valid 7 days, shown\n\
        once). The person enrols with it: POST /auth/enrol {\"code\": ..., \"password\": ...}\n\
        sets their password (8 to 128 characters, not a common one) and, for administrators\n\
        and clinicians, answers their TOTP secret (an authenticator app's otpauth:// URI) and\n\
        ten single-use recovery codes. Login is then POST /auth/login {name, password},\n\
        then POST /auth/second-factor {mfa_token, code}.\n\n\
        Roles: admin (every patient, the audit log); clinician --practitioner ID (the patients\n\
        of that Practitioner's care teams); patient --patient ID (their own record)."
    )]
    Add {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        name: String,
        /// admin, clinician or patient.
        #[arg(long)]
        role: String,
        /// The Practitioner a clinician is.
        #[arg(long, value_name = "ID")]
        practitioner: Option<String>,
        /// The Patient a patient account is for.
        #[arg(long, value_name = "ID")]
        patient: Option<String>,
    },
    /// List accounts: name, role, enrolled or waiting, practitioner or patient.
    List {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Register (or update) a backend client by its public keys and allowed system/ scopes.
    Add {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The client id (its JWT assertions' iss and sub).
        #[arg(long)]
        id: String,
        /// A JWKS file with its public keys (EC P-384 for ES384, RSA for RS384).
        #[arg(long, value_name = "FILE")]
        jwks: PathBuf,
        /// The system/ scopes it may ask for, space-separated.
        #[arg(long, value_name = "SCOPES")]
        scope: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a bearer token and print it, and nothing else, to standard output.
    #[command(
        long_about = "Make a bearer token for a program and print it, and nothing else, to\n\
        standard output (it is stored only as a hash: it cannot be shown again).\n\n\
        Scopes are SMART v2: system/Observation.rs reads and searches every patient's\n\
        readings; system/*.cruds is everything a program may do; patient/*.rs with\n\
        --patient p1 reads p1's record only. v1 forms (.read, .write, .*) are accepted.\n\n\
        Example:\n\
          TOKEN=$(osler hub token create --data hub-data --scope 'system/Observation.rs' --expires 1h)\n\
          curl --cacert hub-ca.pem -H \"Authorization: Bearer $TOKEN\" https://localhost:8080/fhir/Observation?code=8867-4"
    )]
    Create {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Space-separated SMART scopes, e.g. "system/Observation.rs system/Patient.rs".
        #[arg(long, value_name = "SCOPES")]
        scope: String,
        /// The patient that patient/ scopes are for.
        #[arg(long, value_name = "ID")]
        patient: Option<String>,
        /// How long the token lives: 90s, 15m, 12h, 30d (at most 366d).
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        expires: String,
    },
    /// End a token at once, given as its secret or its id (`list` shows ids).
    Revoke {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The token itself, or its id.
        #[arg(long, value_name = "TOKEN|ID")]
        token: String,
    },
    /// List tokens: id, state, expiry, patient, scopes (never the secrets: they are not kept).
    List {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Print the audit log's public key (a C2SP signed-note verifier key).
    Key {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Write the whole log to standard output (JSON lines), for anyone to verify with the key.
    Export {
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
    },
    /// Recompute the log's Merkle tree and check every entry's signed checkpoint; exits
    /// non-zero naming the first bad entry.
    #[command(
        long_about = "Recompute the audit log's Merkle tree (RFC 9162) and check the signed\n\
        checkpoint of every entry; name the first entry that was changed, removed, inserted or\n\
        moved, or the truncation, and exit non-zero.\n\n\
        On the hub:       osler audit verify --data hub-data\n\
        Anyone else:      osler audit export --data hub-data > audit.jsonl\n\
                          osler audit key --data hub-data > audit.key\n\
                          osler audit verify --log audit.jsonl --key audit.key\n\
        With --checkpoint FILE (a GET /audit/checkpoint kept earlier) it also proves the log\n\
        only grew since."
    )]
    Verify {
        /// The hub's data directory (verifies its log with its own key).
        #[arg(long, value_name = "DIR", conflicts_with_all = ["log", "key"], required_unless_present = "log")]
        data: Option<PathBuf>,
        /// An exported log.
        #[arg(long, value_name = "FILE", requires = "key")]
        log: Option<PathBuf>,
        /// The verifier key file (osler audit key).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A checkpoint kept from before: the log must extend it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The hub alone: ingest through FHIR transaction Bundles, bytes per reading, search latency.
    Hub(osler_bench::hub::HubBenchArgs),
    /// Alert latency under live load (the standard scenario: 1,000 patients, 10,000 readings/s, 60 s).
    Alerts(osler_bench::alerts::AlertBenchArgs),
    /// Alert burden: alerts per patient-day on a simulated cohort replayed through a gateway.
    Burden(osler_bench::burden::BurdenBenchArgs),
    /// The dashboard's heaviest pages: a 500-patient worklist and 90 days of minute heart rate.
    Dashboard(osler_bench::dashboard::DashboardBenchArgs),
    /// The whole pipeline, sim -> gateway -> hub: throughput, gateway footprint, catch-up.
    Pipeline(osler_bench::pipeline::PipelineBenchArgs),
    /// The edge's upload saving (vs per-reading JSON and compressed raw batches), per metric;
    /// its fidelity (no alert lost, every reading counted, the trend kept) and decision time.
    /// `--live` adds the standard scenario through real processes, raw then edge.
    Edge(osler_bench::edge::EdgeBenchArgs),
    /// Readings over MQTT end to end (QoS 1, one reading per message, 100 patients), then a
    /// kill -9 of the gateway half-way: every reading must arrive once.
    Mqtt(osler_bench::mqtt::MqttBenchArgs),
    /// sim -> gateway -> hub for many minutes with kill -9 of either, hub outages and full
    /// outboxes at random moments; then counts what each device was told against the hub.
    Soak(osler_bench::soak::SoakBenchArgs),
    /// Registry searches: Patient by name among 100,000 patients, Observation across patients
    /// over 10 M readings.
    Registry(osler_bench::registry::RegistryBenchArgs),
    /// What a login costs over TLS (Argon2id), that a wrong password and an unknown name cost
    /// the same, and what checking a bearer token adds to a request.
    Login(osler_bench::login::LoginBenchArgs),
}

fn init_logging() -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("OSLER_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::filter::Targets::from_str(&spec)
        .with_context(|| format!("OSLER_LOG={spec:?} is not a valid log filter"))?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging()?;
    match cli.command {
        Command::Serve {
            data,
            listen,
            max_body,
            public_url,
            cors_origins,
            insecure_http,
            snooze_caps,
            webhook_retry_critical,
            webhook_retry,
            gateway_silence,
        } => {
            let technical = osler_hub::TechnicalLimits {
                gateway_silence_ms: osler_auth::token::parse_duration(&gateway_silence)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--gateway-silence {gateway_silence:?}: a duration is a number with ms, s, m or h"
                        )
                    })?,
                ..osler_hub::TechnicalLimits::default()
            };
            let webhook_retries = osler_hub::WebhookRetries {
                critical_ms: osler_hub::WebhookRetries::parse(&webhook_retry_critical)
                    .map_err(|e| anyhow::anyhow!("--webhook-retry-critical {e}"))?,
                other_ms: osler_hub::WebhookRetries::parse(&webhook_retry)
                    .map_err(|e| anyhow::anyhow!("--webhook-retry {e}"))?,
            };
            let mut caps = osler_hub::SnoozeCaps::default();
            for spec in &snooze_caps {
                caps.set(spec)
                    .map_err(|e| anyhow::anyhow!("--snooze-cap {e}"))?;
            }
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                let hub = osler_hub::Hub::bind(osler_hub::HubConfig {
                    data: data.clone(),
                    listen,
                    max_body,
                    public_url,
                    cors_origins,
                    insecure_http,
                    snooze_caps: caps,
                    webhook_retries,
                    technical,
                })
                .await
                .with_context(|| format!("cannot start the hub with data in {}", data.display()))?;
                // Tests and scripts read this line to learn the port when listening on port 0.
                println!("{}", hub.url());
                hub.run(shutdown_signal())
                    .await
                    .context("the hub stopped with an error")
            })
        }
        Command::Demo(args) => demo::run(args),
        Command::Gateway(args) => run_gateway(args),
        Command::Hub { which } => hub_admin(which),
        Command::Audit { which } => audit(which),
        Command::Sim(args) => osler_sim::run(args),
        Command::Bench { which } => match which {
            Bench::Hub(args) => osler_bench::hub::run(args),
            Bench::Pipeline(args) => osler_bench::pipeline::run(args),
            Bench::Alerts(args) => osler_bench::alerts::run(args),
            Bench::Burden(args) => osler_bench::burden::run(args),
            Bench::Dashboard(args) => osler_bench::dashboard::run(args),
            Bench::Edge(args) => osler_bench::edge::run(args),
            Bench::Mqtt(args) => osler_bench::mqtt::run(args),
            Bench::Soak(args) => osler_bench::soak::run(args),
            Bench::Registry(args) => osler_bench::registry::run(args),
            Bench::Login(args) => osler_bench::login::run(args),
        },
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn edge_config(args: &GatewayArgs) -> anyhow::Result<osler_edge::EdgeConfig> {
    if args.raw {
        return Ok(osler_edge::EdgeConfig::forward_everything());
    }
    match &args.config {
        None => Ok(osler_edge::EdgeConfig::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            osler_edge::EdgeConfig::from_toml(&text)
                .with_context(|| format!("--config {}", path.display()))
        }
    }
}

fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    use osler_gateway::identity::Identity;
    let edge = edge_config(&args)?;
    if args.print_config {
        print!("{}", edge.to_toml());
        return Ok(());
    }
    anyhow::ensure!(
        args.overrides_every.is_finite() && args.overrides_every >= 0.1,
        "--overrides-every must be at least 0.1 seconds"
    );
    // clap requires --data unless --print-config, which returned above.
    let data = args.data.clone().context("--data is required")?;
    if let Some(id) = &args.id {
        Identity::set_id(&data, id).map_err(anyhow::Error::msg)?;
    }
    if let Some(device) = &args.add_device {
        println!(
            "{}",
            osler_gateway::devices::Devices::add(&data, device).map_err(anyhow::Error::msg)?
        );
        return Ok(());
    }
    let identity = Identity::load_or_create(&data).map_err(anyhow::Error::msg)?;
    if args.identity {
        println!("id {}", identity.id);
        println!("key {}", identity.key.public_hex());
        return Ok(());
    }
    let hub = args.hub.context("--hub is required")?;
    let mqtt = match &args.mqtt {
        None => None,
        Some(hp) => {
            let (host, port) = hp
                .rsplit_once(':')
                .with_context(|| format!("--mqtt {hp:?}: expected HOST:PORT"))?;
            let port = port
                .parse()
                .with_context(|| format!("--mqtt {hp:?}: bad port"))?;
            Some(osler_gateway::MqttConfig {
                host: host.to_owned(),
                port,
                topic: args.mqtt_topic.clone(),
                tls_ca: match &args.mqtt_ca {
                    None => None,
                    Some(f) => Some(
                        std::fs::read(f)
                            .with_context(|| format!("cannot read --mqtt-ca {}", f.display()))?,
                    ),
                },
            })
        }
    };
    let mut upload = osler_gateway::UploadConfig::new(&hub, &identity.id);
    upload.tls = match (&args.hub_ca, hub.starts_with("https://")) {
        (Some(path), true) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --hub-ca {}", path.display()))?;
            Some(
                osler_tls::client_config(&pem)
                    .with_context(|| format!("--hub-ca {}", path.display()))?,
            )
        }
        (None, true) => anyhow::bail!(
            "--hub {hub} is HTTPS: give the hub's CA with --hub-ca FILE (on the hub: osler hub ca --data DIR > hub-ca.pem)"
        ),
        (Some(_), false) => {
            anyhow::bail!("--hub-ca is for an https:// hub; --hub {hub} is plain HTTP")
        }
        (None, false) => None,
    };
    upload.max_count = args.max_batch.max(1);
    upload.max_wait = std::time::Duration::from_millis(args.max_wait_ms);
    upload.rate = args.catchup_rate;
    let config = osler_gateway::GatewayConfig {
        data: data.clone(),
        listen: args.listen,
        upload,
        mqtt,
        outbox_limit: args.outbox_limit,
        edge,
        overrides_every: std::time::Duration::from_secs_f64(args.overrides_every),
        open_devices: args.open_devices,
    };
    if args.open_devices {
        tracing::warn!(
            "--open-devices: readings are taken from any device as they claim, without credentials"
        );
    }
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async {
        let gw = osler_gateway::Gateway::start(config)
            .await
            .with_context(|| format!("cannot start the gateway with data in {}", data.display()))?;
        // Tests and scripts read this line to learn the port when listening on port 0.
        println!("http://{}", gw.local_addr());
        gw.run(shutdown_signal())
            .await
            .context("the gateway stopped with an error")
    })
}

fn hub_admin(which: HubAdmin) -> anyhow::Result<()> {
    match which {
        HubAdmin::Init {
            data,
            names,
            addresses,
            admin,
        } => {
            let p = osler_hub::prepare::init(&data, &names, &addresses, now_ms())
                .with_context(|| format!("cannot prepare {}", data.display()))?;
            let code = osler_hub::admin::add_user(&data, &admin, "admin", None, None)
                .with_context(|| {
                    format!("cannot add the first administrator in {}", data.display())
                })?;
            let mut on: Vec<String> = p.names.clone();
            on.extend(p.addresses.iter().map(|a| a.to_string()));
            if on.is_empty() {
                on = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            }
            println!("prepared {}", data.display());
            println!("certificate authority: {}", p.ca_file.display());
            println!("server certificate for: {}", on.join(", "));
            println!("first administrator: {admin}, enrolment code {code}");
            println!(
                "  (shown once; valid 7 days: POST /auth/enrol {{\"code\": \"{code}\", \"password\": ...}})"
            );
            println!("next: osler serve --data {}", data.display());
        }
        HubAdmin::Ca { data } => {
            print!("{}", osler_hub::prepare::ca_pem(&data)?);
        }
        HubAdmin::Enrol {
            data,
            gateway,
            key,
            from_gateway,
        } => {
            let (id, key) = match from_gateway {
                Some(dir) => {
                    let identity = osler_gateway::identity::Identity::load_or_create(&dir)
                        .map_err(anyhow::Error::msg)?;
                    (identity.id.clone(), identity.key.public_hex())
                }
                None => (
                    gateway.context("--gateway is required")?,
                    key.context("--key is required")?,
                ),
            };
            osler_wire::parse_public_key(&key).with_context(|| format!("--key {key:?}"))?;
            osler_hub::admin::enrol_gateway(&data, &id, &key)
                .with_context(|| format!("cannot enrol in {}", data.display()))?;
            println!("enrolled {id}");
        }
        HubAdmin::Revoke { data, gateway } => {
            let found = osler_hub::admin::revoke_gateway(&data, &gateway)
                .with_context(|| format!("cannot revoke in {}", data.display()))?;
            if !found {
                anyhow::bail!("gateway {gateway:?} is not enrolled in {}", data.display());
            }
            println!("revoked {gateway}");
        }
        HubAdmin::Token { which } => token(which)?,
        HubAdmin::User { which } => match which {
            UserCmd::Add {
                data,
                name,
                role,
                practitioner,
                patient,
            } => {
                let code = osler_hub::admin::add_user(
                    &data,
                    &name,
                    &role,
                    practitioner.as_deref(),
                    patient.as_deref(),
                )
                .with_context(|| format!("cannot add {name} in {}", data.display()))?;
                println!("{code}");
            }
            UserCmd::List { data } => {
                for a in osler_store::admin::accounts(&data)? {
                    let state = if a.enrolled_ms.is_some() {
                        "enrolled"
                    } else {
                        "waiting"
                    };
                    let of = a
                        .practitioner
                        .map(|p| format!("Practitioner/{p}"))
                        .or(a.patient.map(|p| format!("Patient/{p}")))
                        .unwrap_or_else(|| "-".into());
                    println!("{}\t{}\t{state}\t{of}", a.name, a.role);
                }
            }
        },
        HubAdmin::Client { which } => match which {
            ClientCmd::Add {
                data,
                id,
                jwks,
                scope,
            } => {
                let text = std::fs::read_to_string(&jwks)
                    .with_context(|| format!("cannot read --jwks {}", jwks.display()))?;
                osler_hub::admin::add_client(&data, &id, &text, &scope)
                    .with_context(|| format!("cannot register {id} in {}", data.display()))?;
                println!("registered {id}");
            }
        },
        HubAdmin::Gateways { data } => {
            for g in osler_store::admin::list(&data)? {
                let state = if g.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{}\t{}", g.id, state, g.public_key);
            }
        }
    }
    Ok(())
}

fn token(which: TokenCmd) -> anyhow::Result<()> {
    match which {
        TokenCmd::Create {
            data,
            scope,
            patient,
            expires,
        } => {
            let lifetime = osler_auth::token::parse_duration(&expires).with_context(|| {
                format!("--expires {expires:?}: expected a number and s, m, h or d (e.g. 15m)")
            })?;
            let secret =
                osler_hub::admin::create_token(&data, &scope, patient.as_deref(), lifetime)
                    .with_context(|| format!("cannot make a token in {}", data.display()))?;
            println!("{secret}");
        }
        TokenCmd::Revoke { data, token } => {
            match osler_hub::admin::revoke_token(&data, &token)
                .with_context(|| format!("cannot revoke in {}", data.display()))?
            {
                Some(t) => println!("revoked {}", t.id),
                None => anyhow::bail!("no such token in {}", data.display()),
            }
        }
        TokenCmd::List { data } => {
            let now = now_ms();
            for t in osler_store::admin::tokens(&data)? {
                let state = if t.revoked_ms.is_some() {
                    "revoked"
                } else if t.expires_ms <= now {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\t{state}\t{}\t{}\t{}",
                    t.id,
                    osler_core::Timestamp::utc(t.expires_ms),
                    t.patient.as_deref().unwrap_or("-"),
                    t.scopes
                );
            }
        }
    }
    Ok(())
}

fn audit(which: AuditCmd) -> anyhow::Result<()> {
    match which {
        AuditCmd::Key { data } => println!("{}", osler_hub::admin::audit_public_key(&data)?),
        AuditCmd::Export { data } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            osler_hub::admin::audit_export(&data, &mut out)?;
            std::io::Write::flush(&mut out).context("cannot write the export")?;
        }
        AuditCmd::Verify {
            data,
            log,
            key,
            checkpoint,
        } => {
            let (text, key) = match (data, log, key) {
                (Some(dir), _, _) => {
                    let mut buf = Vec::new();
                    osler_hub::admin::audit_export(&dir, &mut buf)?;
                    (
                        String::from_utf8(buf).context("the export is not UTF-8")?,
                        osler_hub::admin::audit_public_key(&dir)?,
                    )
                }
                (None, Some(log), Some(key)) => (
                    std::fs::read_to_string(&log)
                        .with_context(|| format!("cannot read --log {}", log.display()))?,
                    std::fs::read_to_string(&key)
                        .with_context(|| format!("cannot read --key {}", key.display()))?,
                ),
                _ => anyhow::bail!("give --data DIR, or --log FILE with --key FILE"),
            };
            let key = osler_audit::note::parse_verifier_key(&key).context("--key")?;
            let kept = checkpoint
                .map(|c| {
                    std::fs::read_to_string(&c)
                        .with_context(|| format!("cannot read --checkpoint {}", c.display()))
                })
                .transpose()?;
            match osler_audit::verify::verify(&text, &key, kept.as_deref()) {
                Ok(v) => {
                    use base64::Engine;
                    println!(
                        "ok: {} entries, root {}",
                        v.entries,
                        base64::engine::general_purpose::STANDARD.encode(v.root)
                    );
                }
                Err(bad) => {
                    eprintln!("audit log verification FAILED: {bad}");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}
