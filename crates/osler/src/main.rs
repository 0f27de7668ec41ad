//! `osler`: the command-line glue. Each subcommand parses its flags, sets up logging and hands
//! over to a library crate; no business logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "osler",
    version,
    about = "Continuous physiological monitoring: readings in, FHIR R4 out.",
    long_about = "Osler takes readings from wearables and home devices and serves them as FHIR R4.\n\n\
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
    },
    /// Run a benchmark against real processes and print its figures.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The hub alone: ingest through FHIR transaction Bundles, bytes per reading, search latency.
    Hub(osler_bench::hub::HubBenchArgs),
}

fn init_logging() -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("OSLER_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::filter::Targets::from_str(&spec)
        .with_context(|| format!("OSLER_LOG={spec:?} is not a valid log filter"))?;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                let hub = osler_hub::Hub::bind(osler_hub::HubConfig {
                    data: data.clone(),
                    listen,
                    max_body,
                    public_url,
                })
                .await
                .with_context(|| format!("cannot start the hub with data in {}", data.display()))?;
                // Tests and scripts read this line to learn the port when listening on port 0.
                println!("http://{}/fhir", hub.local_addr());
                hub.run(shutdown_signal())
                    .await
                    .context("the hub stopped with an error")
            })
        }
        Command::Bench { which } => match which {
            Bench::Hub(args) => osler_bench::hub::run(args),
        },
    }
}
