//! The Osler edge gateway: readings in from devices (HTTP, MQTT), kept on disk, sent to the hub
//! in signed batches, deleted only when the hub confirms.
//!
//! Main types: [`GatewayConfig`], [`Gateway`] ([`Gateway::start`], [`Gateway::local_addr`],
//! [`Gateway::run`]), [`intake::Intake`] (the one writer: admission, critical rules, edge stage,
//! group commit), [`outbox::Outbox`] (the durable queue).
//!
//! Layout: one file per source (`http_source`, `mqtt_source`), the device reading format in
//! `input`, the writer that turns every way in into one transaction in `intake` (decisions from
//! `osler-edge`), the queue in `outbox` (and older outboxes carried over in `legacy`), the
//! sender in `uploader`, `/status` in `status`, the critical rules in `local_alerts`, the hub's
//! per-patient thresholds in `overrides`, the gateway's identity (id and Ed25519 key, kept in
//! the data directory) in `identity`.
//!
//! **Invariant:** a reading is acknowledged to its device only after it is committed to the
//! outbox with fsync, and leaves the outbox only after the hub confirms its commit.

pub mod assignments;
pub mod devices;
mod emergency_lane;
mod hub_cache;
pub mod identity;
pub mod input;
pub mod intake;
mod items;
mod legacy;
pub mod local_alerts;
pub mod outbox;
pub mod overrides;
pub mod status;
pub mod uploader;

mod http_source;
mod mqtt_source;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use mqtt_source::MqttConfig;
use tokio::net::TcpListener;
pub use uploader::UploadConfig;

/// Default outbox size limit: 1 GiB holds about ten million readings, days of a large kit.
pub const DEFAULT_OUTBOX_LIMIT: u64 = 1 << 30;

pub(crate) fn now_ms() -> i64 {
    // A clock before 1970 is a broken machine; 0 makes every reading "in the future" and refused.
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the gateway runs.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub upload: UploadConfig,
    pub mqtt: Option<MqttConfig>,
    pub outbox_limit: u64,
    /// Edge policies per metric (`EdgeConfig::forward_everything()` sends every raw reading).
    pub edge: osler_edge::EdgeConfig,
    /// How often the hub's per-patient thresholds are fetched.
    pub overrides_every: std::time::Duration,
    /// Take readings from any device as they claim (development): no device credentials.
    pub open_devices: bool,
}

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::OutboxError),
    #[error("identity: {0}")]
    Identity(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// A request's identity for recognising a device's resend of something the gateway committed
/// but could not acknowledge (it crashed in between): a 64-bit hash of its bytes (SipHash with
/// fixed keys, so the same after a restart).
pub(crate) fn request_key(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)] // SipHasher: stable keys on purpose; DefaultHasher's are unspecified.
    let mut h = std::hash::SipHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// State shared by the sources, the uploader and `/status`.
pub(crate) struct Shared {
    pub gateway: String,
    pub intake: Arc<intake::Intake>,
    pub status: Arc<status::Status>,
    pub alerts: Arc<local_alerts::LocalAlerts>,
    pub edge: Arc<intake::EdgeStats>,
    /// The hub's device assignments, to attribute readings that name only their device.
    pub assignments: assignments::AssignmentCache,
    /// The devices that may send, and how they are known (see `devices`).
    pub devices: devices::Devices,
}

impl Shared {
    pub fn outbox(&self) -> &outbox::Outbox {
        self.intake.outbox()
    }
}

/// A started gateway: outbox open, uploader running, listener bound.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    mqtt: Option<MqttConfig>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, GatewayError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map_err(GatewayError::Serve)
}

impl Gateway {
    /// Opens the outbox (recovering a damaged file), loads or creates the identity, starts the
    /// uploader and binds the HTTP listener. `config.upload.gateway` is replaced by the
    /// identity's id when empty.
    pub async fn start(mut config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let data = config.data.clone();
        let limit = config.outbox_limit;
        let overrides = overrides::load(&config.data);
        let edge = Arc::new(intake::EdgeStats::default());
        let alerts = Arc::new(local_alerts::LocalAlerts::default());
        let setup = intake::IntakeSetup {
            limit,
            edge: config.edge.clone(),
            overrides: overrides.clone(),
            stats: edge.clone(),
            alerts: alerts.clone(),
        };
        let (intake, identity) = tokio::task::spawn_blocking(move || {
            let identity =
                identity::Identity::load_or_create(&data).map_err(GatewayError::Identity)?;
            let intake = intake::Intake::open(&data, setup)?;
            Ok::<_, GatewayError>((intake, identity))
        })
        .await
        .map_err(|e| GatewayError::Serve(std::io::Error::other(e)))??;
        if config.upload.gateway.is_empty() {
            config.upload.gateway = identity.id.clone();
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let shared = Arc::new(Shared {
            gateway: config.upload.gateway.clone(),
            intake: Arc::new(intake),
            status: Arc::new(status::Status::default()),
            alerts,
            edge,
            assignments: assignments::load(&config.data),
            devices: devices::Devices::load(&config.data, config.open_devices)
                .map_err(GatewayError::Identity)?,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (to, from) = std::sync::mpsc::channel();
            shared.intake.announce_to(to);
            let (upload, key, stop) = (config.upload.clone(), identity.key.clone(), stop.clone());
            threads.push(spawn("osler-announcer", move || {
                uploader::announce(upload, key, from, stop)
            })?);
        }
        for lane in osler_wire::Lane::ALL {
            let (intake, status, stop) =
                (shared.intake.clone(), shared.status.clone(), stop.clone());
            let (upload, key) = (config.upload.clone(), identity.key.clone());
            threads.push(spawn(
                &format!("osler-uploader-{lane:?}").to_lowercase(),
                move || uploader::run(upload, lane, key, intake, status, stop),
            )?);
        }
        {
            // The edge's clock: readings that waited long enough for their filter window are
            // decided, idle summaries closed.
            let (intake, stop) = (shared.intake.clone(), stop.clone());
            threads.push(spawn("osler-edge-tick", move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    if let Err(e) = intake.tick_blocking(now_ms()) {
                        tracing::error!(error = %e, "edge tick failed");
                    }
                }
            })?);
        }
        {
            let (upload, data, stop) = (config.upload.clone(), config.data.clone(), stop.clone());
            let key = identity.key.clone();
            let every = config.overrides_every;
            threads.push(spawn("osler-overrides", move || {
                hub_cache::poll(
                    &upload,
                    &key,
                    "/alerts/overrides",
                    &data,
                    overrides::FILE,
                    every,
                    &stop,
                    |t| overrides::apply(&overrides, t),
                )
            })?);
        }
        {
            let (upload, data, stop) = (config.upload.clone(), config.data.clone(), stop.clone());
            let key = identity.key.clone();
            let every = config.overrides_every;
            let cache = shared.assignments.clone();
            threads.push(spawn("osler-assignments", move || {
                hub_cache::poll(
                    &upload,
                    &key,
                    "/registry/assignments",
                    &data,
                    assignments::FILE,
                    every,
                    &stop,
                    |t| assignments::apply(&cache, t),
                )
            })?);
        }
        tracing::info!(gateway = %shared.gateway, hub = %config.upload.hub, outbox = %shared.outbox().path().display(), "gateway started");
        Ok(Gateway {
            listener,
            shared,
            mqtt: config.mqtt,
            stop,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address; failure here would be an OS bug.
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    pub fn id(&self) -> &str {
        &self.shared.gateway
    }

    /// Serves until `shutdown` completes; then stops the uploader (what it had not sent stays
    /// in the outbox for the next start).
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let mqtt = self
            .mqtt
            .clone()
            .map(|m| tokio::spawn(mqtt_source::run(m, self.shared.clone())));
        let app = http_source::routes(self.shared.clone());
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(GatewayError::Serve);
        if let Some(m) = mqtt {
            m.abort();
        }
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in std::mem::take(&mut self.threads) {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        served
    }
}
