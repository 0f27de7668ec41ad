//! The Osler edge gateway: readings in from devices (HTTP, MQTT), kept on disk, sent to the hub
//! in signed batches, deleted only when the hub confirms.
//!
//! Main types: [`GatewayConfig`], [`Gateway`] ([`Gateway::start`], [`Gateway::local_addr`],
//! [`Gateway::run`]), [`outbox::Outbox`] (the durable queue).
//!
//! Layout: one file per source (`http_source`, `mqtt_source`), the device reading format in
//! `input`, the queue in `outbox`, the sender in `uploader`, `/status` in `status`, the gateway's
//! identity (id and Ed25519 key, kept in the data directory) in `identity`.
//!
//! **Invariant:** a reading is acknowledged to its device only after it is committed to the
//! outbox with fsync, and leaves the outbox only after the hub confirms its commit.

pub mod identity;
pub mod input;
pub mod local_alerts;
pub mod outbox;
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

/// Evaluates readings with the edge rules and puts any alert events in the alerts lane, before
/// the readings themselves are stored: an alert is never behind its readings.
pub(crate) async fn store_alerts(
    shared: &Shared,
    readings: &[osler_core::Reading],
    now: i64,
) -> Result<(), String> {
    let alerts = shared.alerts.evaluate(readings);
    if alerts.is_empty() {
        return Ok(());
    }
    shared
        .outbox
        .append(osler_wire::Lane::Alerts, alerts, now)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// State shared by the sources, the uploader and `/status`.
pub(crate) struct Shared {
    pub gateway: String,
    pub outbox: Arc<outbox::Outbox>,
    pub status: Arc<status::Status>,
    pub alerts: local_alerts::LocalAlerts,
}

/// A started gateway: outbox open, uploader running, listener bound.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    mqtt: Option<MqttConfig>,
    stop: Arc<AtomicBool>,
    uploaders: Vec<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Opens the outbox (recovering a damaged file), loads or creates the identity, starts the
    /// uploader and binds the HTTP listener. `config.upload.gateway` is replaced by the
    /// identity's id when empty.
    pub async fn start(mut config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let data = config.data.clone();
        let limit = config.outbox_limit;
        let (outbox, identity) = tokio::task::spawn_blocking(move || {
            let identity =
                identity::Identity::load_or_create(&data).map_err(GatewayError::Identity)?;
            let outbox = outbox::Outbox::open(&data, limit)?;
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
        });
        let stop = Arc::new(AtomicBool::new(false));
        let uploader = {
            let mut threads = Vec::new();
            for lane in [osler_wire::Lane::Alerts, osler_wire::Lane::Readings] {
                let (outbox, status, stop) =
                    (shared.outbox.clone(), shared.status.clone(), stop.clone());
                let (upload, key) = (config.upload.clone(), identity.key.clone());
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("osler-uploader-{lane:?}").to_lowercase())
                        .spawn(move || uploader::run(upload, lane, key, outbox, status, stop))
                        .map_err(GatewayError::Serve)?,
                );
            }
            threads
        };
        tracing::info!(gateway = %shared.gateway, hub = %config.upload.hub, outbox = %shared.outbox.path().display(), "gateway started");
        Ok(Gateway {
            listener,
            shared,
            mqtt: config.mqtt,
            stop,
            uploaders: uploader,
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
        for h in std::mem::take(&mut self.uploaders) {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        served
    }
}
