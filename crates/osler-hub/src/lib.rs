//! The Osler hub service: ingest, the FHIR R4 API, metrics.
//!
//! Main types: [`HubConfig`] (what to serve and where), [`Hub`] (a bound, ready server:
//! [`Hub::bind`], [`Hub::local_addr`], [`Hub::run`]).
//!
//! Layout: `fhir_api` holds the `/fhir` routes (one handler per interaction), `reply` turns
//! results and errors into HTTP responses (errors as OperationOutcome), `metrics` the
//! Prometheus registry.
//!
//! **Invariant:** a reading is acknowledged (2xx) only after the store has committed it.

mod access;
pub mod admin;
mod alert_lifecycle;
mod alerts;
mod audit_api;
pub(crate) mod auth_api;
mod body;
mod bundle_api;
mod cors;
mod dashboard;
mod escalation;
mod everything;
mod fhir_api;
mod ingest;
mod metrics;
mod negotiate;
mod notice;
mod observation_versions;
mod plans;
pub mod prepare;
mod registry_api;
mod reply;
mod staleness;
mod technical;
mod throttle;
mod tls;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use osler_store::{Store, StoreOptions};
use tokio::net::TcpListener;

pub use alert_lifecycle::{SnoozeCaps, parse_answer};
pub use dashboard::answer_form;
pub use escalation::parse_policy;
pub use metrics::Metrics;
pub use technical::TechnicalLimits;
pub use webhooks::WebhookRetries;
pub use webhooks::{NewEndpoint, parse_endpoint};

/// Largest request body accepted by default: a 10,000-entry Bundle fits with room to spare.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;

/// What the hub serves and where.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Directory for the database and anything else the hub keeps.
    pub data: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// The public base URL of the FHIR API (for links and fullUrls); derived from each
    /// request's Host header when absent.
    pub public_url: Option<String>,
    /// Web origins whose browser apps may call the hub (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// Serve plain HTTP instead of HTTPS (development only): refused unless `listen` is a
    /// loopback address.
    pub insecure_http: bool,
    /// The longest snooze per alert severity.
    pub snooze_caps: SnoozeCaps,
    /// When failed webhook deliveries are tried again.
    pub webhook_retries: WebhookRetries,
    /// When a condition of the system itself is a technical alert.
    pub technical: TechnicalLimits,
}

/// Errors that stop the hub from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error("cannot open the store: {0}")]
    Store(#[from] osler_store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("{0} is not a prepared hub: run `osler hub init --data {0}` first")]
    NotPrepared(PathBuf),
    #[error("{0} is a prepared hub already: init refuses to overwrite its keys")]
    Prepared(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] osler_tls::TlsError),
    #[error(
        "plain HTTP is for development on this machine only: {0} is not a loopback address \
         (drop --insecure-http to serve HTTPS)"
    )]
    PlainNotLoopback(SocketAddr),
}

pub(crate) struct AppState {
    pub store: Arc<Store>,
    pub alerts: Arc<alerts::Alerts>,
    /// The open "no data" alerts, which mute the others of their measurement.
    pub silences: staleness::Silences,
    pub metrics: Metrics,
    pub public_url: Option<String>,
    pub max_body: usize,
    pub cors_origins: Vec<String>,
    pub started: String,
    /// Audit entries of reads and refusals waiting to be committed together.
    pub audit_pending: std::sync::Mutex<Vec<String>>,
    pub audit_wake: tokio::sync::Notify,
    /// Set once the server has answered its last request: the flusher commits and ends.
    pub audit_closing: std::sync::atomic::AtomicBool,
    /// Failed logins, to slow guessing (see `throttle`).
    pub throttle: throttle::Throttle,
    /// The audit log's signing key: signs the checkpoints served.
    pub audit_key: ed25519_dalek::SigningKey,
    /// The longest snooze per alert severity.
    pub snooze_caps: SnoozeCaps,
    /// When failed webhook deliveries are tried again.
    pub retries: WebhookRetries,
    /// When a condition of the system itself is a technical alert.
    pub technical: TechnicalLimits,
    /// `https`, or `http` under `insecure_http`: the scheme of the links the hub writes.
    pub scheme: &'static str,
    /// The worklist's sparklines of finished hours.
    pub sparks: dashboard::SparkCache,
    /// When each gateway last polled (signed), beside its batches: its contact (`technical`).
    pub gateway_polls: technical::Polls,
    /// When this hub started (the technical watch gives gateways that long to get in touch).
    pub started_ms: i64,
    /// Emergencies announced before their commit, for the live streams (see `notice`).
    pub notices: notice::Notices,
    /// Turns true when the hub begins to shut down, so that long-lived responses (the alert
    /// stream) end and the graceful shutdown can finish.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

/// A hub bound to its address with its store open, ready to [`run`](Hub::run).
pub struct Hub {
    listener: TcpListener,
    /// `None` only with `insecure_http`.
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AppState>,
}

pub(crate) fn now_ms() -> i64 {
    // A clock before 1970 is a broken machine; treating it as the epoch makes every reading
    // look "in the future" and refused, which is the safe failure.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Hub {
    /// Opens the store and binds the listener.
    pub async fn bind(config: HubConfig) -> Result<Hub, HubError> {
        let tls = if config.insecure_http {
            if !config.listen.ip().is_loopback() {
                return Err(HubError::PlainNotLoopback(config.listen));
            }
            None
        } else {
            Some(prepare::server_tls(&config.data)?)
        };
        let audit_seed = prepare::audit_seed(&config.data)?;
        let data = config.data.clone();
        let (store, alerts, silences) = tokio::task::spawn_blocking(move || {
            let store = Store::open(
                &data,
                StoreOptions {
                    patient_stub: Some(osler_fhir::registry::patient_stub()),
                    audit_key: Some(audit_seed),
                    ..StoreOptions::default()
                },
            )?;
            let alerts = alerts::Alerts::load(&store)?;
            let silences = staleness::Silences::load(&store)?;
            Ok::<_, osler_store::StoreError>((store, alerts, silences))
        })
        .await
        .map_err(|e| HubError::Serve(std::io::Error::other(e)))??;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: config.listen,
                source,
            })?;
        let state = Arc::new(AppState {
            store: Arc::new(store),
            alerts: Arc::new(alerts),
            silences,
            metrics: Metrics::default(),
            public_url: config
                .public_url
                .map(|u| u.trim_end_matches('/').to_owned()),
            max_body: config.max_body,
            cors_origins: config
                .cors_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            started: osler_core::Timestamp::utc(now_ms()).to_string(),
            audit_key: ed25519_dalek::SigningKey::from_bytes(&audit_seed),
            snooze_caps: config.snooze_caps,
            retries: config.webhook_retries,
            technical: config.technical,
            throttle: throttle::Throttle::default(),
            audit_pending: std::sync::Mutex::new(Vec::new()),
            audit_wake: tokio::sync::Notify::new(),
            audit_closing: std::sync::atomic::AtomicBool::new(false),
            scheme: if tls.is_some() { "https" } else { "http" },
            shutdown: tokio::sync::watch::Sender::new(false),
            sparks: dashboard::SparkCache::default(),
            notices: notice::Notices::default(),
            gateway_polls: technical::Polls::default(),
            started_ms: now_ms(),
        });
        Ok(Hub {
            listener,
            tls,
            state,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always has a local address; failure here would be an OS bug.
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// The FHIR base URL as this hub is reached on its own address.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/fhir", self.local_addr())
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HubError> {
        let app = router(self.state.clone());
        let flusher = tokio::spawn(access::audit_flusher(self.state.clone()));
        let escalator = tokio::spawn(escalation::escalator(self.state.clone()));
        let watchdog = tokio::spawn(staleness::watchdog(self.state.clone()));
        let deliverer = tokio::spawn(webhooks::deliverer(self.state.clone()));
        let technical = tokio::spawn(technical::watch(self.state.clone()));
        let state = self.state.clone();
        let shutdown = async move {
            shutdown.await;
            state.shutdown.send_replace(true);
        };
        tracing::info!(url = %self.url(), db = %self.state.store.path().display(), "hub serving");
        let service = app.into_make_service_with_connect_info::<tls::Peer>();
        let served = match self.tls {
            Some(config) => {
                let listener =
                    tls::TlsListener::new(self.listener, config).map_err(HubError::Serve)?;
                axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            None => {
                axum::serve(self.listener, service)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        };
        // Requests are finished: the audit entries they left waiting are committed now.
        self.state
            .audit_closing
            .store(true, std::sync::atomic::Ordering::Release);
        self.state.audit_wake.notify_one();
        let _ = flusher.await;
        let _ = escalator.await;
        let _ = watchdog.await;
        let _ = deliverer.await;
        let _ = technical.await;
        served.map_err(HubError::Serve)
    }
}

/// Every route of the hub with its policy: the one place routes are added (see `access`).
pub(crate) fn routes() -> access::Routes {
    use osler_auth::{Interaction, OPERATIONS, Policy};
    access::Routes::new()
        .merge(fhir_api::routes())
        .merge(registry_api::routes())
        .merge(plans::routes())
        .merge(everything::routes())
        .merge(ingest::routes())
        .merge(notice::routes())
        .merge(alerts::routes())
        .merge(alert_lifecycle::routes())
        .merge(escalation::routes())
        .merge(webhooks::routes())
        .merge(staleness::routes())
        .merge(technical::routes())
        .merge(auth_api::routes())
        .merge(audit_api::routes())
        .merge(dashboard::routes())
        .get(
            "/metrics",
            Policy::Everyone(OPERATIONS, Interaction::Read),
            metrics_text,
        )
        .get("/healthz", Policy::Public, || async { "ok\n" })
}

/// Every route as (method, path, policy), for the tests that enumerate them.
pub fn route_table() -> Vec<(String, String, osler_auth::Policy)> {
    let (_, table) = routes().finish();
    table
        .into_iter()
        .map(|d| (d.method.to_string(), d.path, d.policy))
        .collect()
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let (routes, _) = routes().finish();
    routes
        .fallback(reply::not_found)
        .method_not_allowed_fallback(reply::method_not_allowed)
        .layer(axum::middleware::from_fn(negotiate::fhir_negotiation))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::cors,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        // The route guards find the state here (they are added before the router has it).
        .layer(axum::Extension(state.clone()))
        .with_state(state)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(
            state.store.stats(),
            // The burden is a few counts over the alerts table; a failed read leaves it out.
            state.store.alert_burden(now_ms(), 30 * 86_400_000).ok(),
            state.store.technical_alerts(0).ok().map(|open| open.len()),
        ),
    )
        .into_response()
}

/// Times every request and counts it by route (the matched pattern, so ids do not explode
/// the label set).
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    state
        .metrics
        .observe_request(&route, &method, status, elapsed);
    if status >= 500 {
        tracing::warn!(%route, %method, status, ms = elapsed.as_secs_f64() * 1e3, "request failed");
    } else {
        tracing::debug!(%route, %method, status, ms = elapsed.as_secs_f64() * 1e3, "request");
    }
    response
}
