//! The Osler edge gateway: readings in from devices (HTTP, MQTT), kept on disk, sent to the hub
//! in signed batches, deleted only when the hub confirms.
//!
//! Main types: [`GatewayConfig`], [`Gateway`] ([`Gateway::start`], [`Gateway::local_addr`],
//! [`Gateway::run`]), [`outbox::Outbox`] (the durable queue).
//!
//! Layout: one file per source (`http_source`, `mqtt_source`), the device reading format in
//! `input`, the queue and the edge processing it commits with in `outbox` (decisions from
//! `osler-edge`), the sender in `uploader`, `/status` in `status`, the critical rules in
//! `local_alerts`, the hub's per-patient thresholds in `overrides`, the gateway's identity (id
//! and Ed25519 key, kept in the data directory) in `identity`.
//!
//! **Invariant:** a reading is acknowledged to its device only after it is committed to the
//! outbox with fsync, and leaves the outbox only after the hub confirms its commit.

pub mod identity;
pub mod input;
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

/// Takes in validated readings: the critical rules evaluate them (with the patients'
/// thresholds), then the outbox commits the alert events, the edge's decisions and the streams'
/// states together. Resolves once durable: only then may a source acknowledge its device.
pub(crate) async fn ingest(
    shared: &Shared,
    readings: Vec<osler_core::Reading>,
    now: i64,
    request: u64,
) -> Result<(), outbox::OutboxError> {
    if readings.is_empty() {
        return Ok(());
    }
    let alerts = {
        let overrides = shared.overrides.read().unwrap_or_else(|p| p.into_inner());
        shared.alerts.evaluate(&readings, &overrides)
    };
    shared
        .outbox
        .ingest(readings, alerts, now, Some(request))
        .await
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
    pub outbox: Arc<outbox::Outbox>,
    pub status: Arc<status::Status>,
    pub alerts: local_alerts::LocalAlerts,
    pub overrides: outbox::OverrideCache,
    pub edge: Arc<outbox::EdgeStats>,
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
        let edge = Arc::new(outbox::EdgeStats::default());
        let setup = outbox::EdgeSetup {
            config: config.edge.clone(),
            overrides: overrides.clone(),
            stats: edge.clone(),
        };
        let (outbox, identity) = tokio::task::spawn_blocking(move || {
            let identity =
                identity::Identity::load_or_create(&data).map_err(GatewayError::Identity)?;
            let outbox = outbox::Outbox::open_with(&data, limit, setup)?;
            Ok::<_, GatewayError>((outbox, identity))
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
            outbox: Arc::new(outbox),
            status: Arc::new(status::Status::default()),
            alerts: local_alerts::LocalAlerts::default(),
            overrides: overrides.clone(),
            edge,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for lane in osler_wire::Lane::ALL {
            let (outbox, status, stop) =
                (shared.outbox.clone(), shared.status.clone(), stop.clone());
            let (upload, key) = (config.upload.clone(), identity.key.clone());
            threads.push(spawn(
                &format!("osler-uploader-{lane:?}").to_lowercase(),
                move || uploader::run(upload, lane, key, outbox, status, stop),
            )?);
        }
        {
            // The edge's clock: readings that waited long enough for their filter window are
            // decided, idle summaries closed.
            let (outbox, stop) = (shared.outbox.clone(), stop.clone());
            threads.push(spawn("osler-edge-tick", move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    if let Err(e) = outbox.tick_blocking(now_ms()) {
                        tracing::error!(error = %e, "edge tick failed");
                    }
                }
            })?);
        }
        {
            let (hub, data, stop) = (config.upload.hub.clone(), config.data.clone(), stop.clone());
            let every = config.overrides_every;
            threads.push(spawn("osler-overrides", move || {
                overrides::poll(&hub, &data, &overrides, every, &stop)
            })?);
        }
        tracing::info!(gateway = %shared.gateway, hub = %config.upload.hub, outbox = %shared.outbox.path().display(), "gateway started");
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
