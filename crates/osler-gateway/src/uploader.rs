//! The uploader: takes the outbox's oldest entries (alerts first), seals them into a signed
//! batch, posts it to the hub, and deletes them only when the hub confirms the commit.
//!
//! Batches are bounded by count, by bytes and by time (a lone reading waits at most
//! `max_wait` for company; alerts never wait). While the hub is away, attempts back off
//! exponentially with jitter, forever: nothing is dropped. After an outage the backlog drains
//! oldest first at a bounded rate (a token bucket), so a returning gateway fleet does not flatten
//! the hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use osler_wire::{BatchHeader, CONTENT_TYPE, GatewayKey, Lane, seal};

use crate::intake::Intake;
use crate::now_ms;
use crate::status::Status;

/// How the uploader batches and paces.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// The hub's root URL, e.g. `https://127.0.0.1:8080`.
    pub hub: String,
    /// The TLS client configuration trusting the hub's CA alone (`--hub-ca`): a hub that
    /// presents any other certificate is refused. `None` only for a plain-HTTP hub on this
    /// machine (development).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub gateway: String,
    pub max_count: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
    /// Entries per second at most (the catch-up bound).
    pub rate: f64,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl UploadConfig {
    /// An HTTP agent for the hub: its CA pinned when the hub is HTTPS.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(timeout);
        if let Some(tls) = &self.tls {
            b = b.tls_config(tls.clone());
        }
        b.build()
    }
}

impl UploadConfig {
    pub fn new(hub: &str, gateway: &str) -> UploadConfig {
        UploadConfig {
            hub: hub.trim_end_matches('/').to_owned(),
            tls: None,
            gateway: gateway.to_owned(),
            max_count: 5000,
            max_bytes: 2 << 20,
            max_wait: Duration::from_millis(200),
            rate: 100_000.0,
            backoff_base: Duration::from_millis(200),
            // With jitter a returning hub is noticed within 15 s at worst, while a fleet of
            // gateways retrying every 10 s costs the hub nothing worth mentioning.
            backoff_cap: Duration::from_secs(10),
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, n: usize, stop: &AtomicBool) {
        let n = n as f64;
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate)
                .min(self.burst.max(n));
            self.at = now;
            if self.tokens >= n || stop.load(Ordering::Relaxed) {
                self.tokens -= n;
                return;
            }
            std::thread::sleep(Duration::from_secs_f64(
                ((n - self.tokens) / self.rate).min(0.5),
            ));
        }
    }
}

/// A small generator for backoff jitter (xorshift64, seeded from the clock).
struct Jitter(u64);

impl Jitter {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the hub said to a batch.
enum Outcome {
    Committed(u64),
    /// The hub refused the batch for its size (HTTP 413): a smaller one will pass.
    TooLarge(String),
    Failed(String),
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Outcome {
    match agent
        .post(url)
        .set("Content-Type", CONTENT_TYPE)
        .send_bytes(body)
    {
        Ok(resp) => {
            let text = resp.into_string().unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["committed_through"].as_u64())
            {
                Some(n) => Outcome::Committed(n),
                None => Outcome::Failed(format!(
                    "the hub answered without committed_through: {text}"
                )),
            }
        }
        Err(ureq::Error::Status(code, resp)) => {
            let reason = format!(
                "the hub refused the batch: HTTP {code}: {}",
                resp.into_string().unwrap_or_default()
            );
            if code == 413 {
                Outcome::TooLarge(reason)
            } else {
                Outcome::Failed(reason)
            }
        }
        Err(e) => Outcome::Failed(transport_error(&e)),
    }
}

/// A failed connection in words; a certificate the pinned CA did not sign is said so plainly
/// (that is a hub the gateway must never send to, not a network blip).
pub(crate) fn transport_error(e: &ureq::Error) -> String {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        format!(
            "the hub's TLS certificate is not signed by the CA given with --hub-ca, so nothing is sent to it ({text}); \
             fetch the right CA with `osler hub ca --data HUB-DIR`"
        )
    } else {
        format!("the hub is unreachable: {text}")
    }
}

/// Announces emergencies to the hub (`POST /ingest/notice`) as the intake hands them over,
/// before their commit: the hub shows them on the live streams at once, while the
/// emergencies lane carries the same entries durably (see the hub's `notice` module). One
/// attempt each, with a short timeout: a notice lost is only a notice, the lane delivers.
/// Runs until `stop` is set. Blocking: give it its own thread.
pub fn announce(
    config: UploadConfig,
    key: GatewayKey,
    from: std::sync::mpsc::Receiver<Vec<String>>,
    stop: Arc<AtomicBool>,
) {
    let agent = config.agent(Duration::from_secs(2));
    let url = format!("{}/ingest/notice", config.hub);
    while !stop.load(Ordering::Relaxed) {
        let mut entries = match from.recv_timeout(Duration::from_millis(200)) {
            Ok(e) => e,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        while let Ok(more) = from.try_recv() {
            entries.extend(more);
        }
        // A few at a time, well within the hub's size for a notice (a backlog built up while
        // the hub was away would otherwise be refused whole; it is stale by then anyway).
        for chunk in entries.chunks(NOTICE_ENTRIES) {
            notice(&agent, &url, &config.gateway, chunk, &key);
        }
    }
}

/// The most entries one notice carries.
const NOTICE_ENTRIES: usize = 64;

/// One notice, one attempt.
fn notice(agent: &ureq::Agent, url: &str, gateway: &str, entries: &[String], key: &GatewayKey) {
    // A notice's sequence numbers mean nothing (the hub stores nothing of it); its freshness
    // is `sent_ms`, and its signature is remembered against replay.
    let header = BatchHeader {
        gateway: gateway.to_owned(),
        lane: Lane::Emergencies,
        first_seq: 1,
        count: entries.len() as u32,
        sent_ms: now_ms(),
        state: None,
    };
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    let body = seal(&header, &refs, key);
    match agent
        .post(url)
        .set("Content-Type", CONTENT_TYPE)
        .send_bytes(&body)
    {
        Ok(_) => tracing::debug!(entries = entries.len(), "emergencies announced"),
        Err(ureq::Error::Status(code, resp)) => {
            let answer = resp.into_string().unwrap_or_default();
            tracing::warn!(code, %answer, "the hub refused an emergency notice; the emergencies lane carries it")
        }
        Err(e) => {
            tracing::warn!(error = %transport_error(&e), "emergency notice not delivered; the emergencies lane carries it")
        }
    }
}

/// Runs until `stop` is set. Blocking: give it its own thread.
/// Uploads one lane. The gateway runs one of these per lane, so that an alert never waits
/// behind a batch of readings in flight; readings wait while alerts are pending, so alerts
/// still reach the hub first. Order is kept within each lane.
pub fn run(
    config: UploadConfig,
    lane: Lane,
    key: GatewayKey,
    intake: Arc<Intake>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) {
    let outbox = intake.outbox_of(lane);
    // Alerts and emergencies go first: the other lanes wait while either is pending.
    let (alerts, emergencies) = (
        intake.outbox_of(Lane::Alerts).clone(),
        intake.outbox_of(Lane::Emergencies).clone(),
    );
    let first_lane = matches!(lane, Lane::Alerts | Lane::Emergencies);
    let agent = config.agent(Duration::from_secs(60));
    let url = format!("{}/ingest/batch", config.hub);
    let mut bucket = Bucket {
        rate: config.rate.max(1.0),
        burst: config.max_count as f64,
        tokens: config.max_count as f64,
        at: Instant::now(),
    };
    let mut jitter = Jitter(now_ms() as u64 | 1);
    let mut backoff = config.backoff_base;
    let mut max_count = config.max_count;
    let mut seen = outbox.appends();
    let mut checkpointed = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Between batches, in the readings uploader (for the outbox) and the emergencies one
        // (for its own file): keep the WAL short (at once when idle, every two seconds under
        // load).
        let idle = outbox.depth().lane(lane).load(Ordering::Relaxed) == 0;
        let since = checkpointed.elapsed();
        if matches!(lane, Lane::Readings | Lane::Emergencies)
            && ((idle && since > Duration::from_millis(500)) || since > Duration::from_secs(2))
        {
            if let Err(e) = outbox.checkpoint() {
                tracing::warn!(error = %e, "outbox checkpoint failed; will retry");
            }
            checkpointed = Instant::now();
        }
        // Alerts go first: readings wait while alerts are pending (after an outage, the hub
        // learns of every alert and emergency before the readings behind it). Alerts and
        // emergencies never wait for readings, nor for each other.
        if !first_lane && alerts.depth().alerts.load(Ordering::Relaxed) > 0 {
            // Woken by the commit that acknowledges them (every commit that changes a lane
            // rings), with a bound in case the alerts uploader is the one waiting.
            seen = outbox.wait_for_append(seen, Duration::from_millis(200));
            continue;
        }
        if !first_lane && emergencies.depth().emergencies.load(Ordering::Relaxed) > 0 {
            // The same, rung by the emergencies' own file.
            emergencies.wait_for_append(emergencies.appends(), Duration::from_millis(200));
            continue;
        }
        let rows = match outbox.peek(lane, max_count, config.max_bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if rows.is_empty() {
            seen = outbox.wait_for_append(seen, Duration::from_millis(500));
            continue;
        }
        let age = Duration::from_millis((now_ms() - rows[0].enqueued_ms).max(0) as u64);
        // Readings near a threshold go at once (see `Tx::urgent`); others wait to fill a batch.
        let urgent = lane == Lane::Readings && outbox.take_urgent();
        if !first_lane && !urgent && rows.len() < max_count && age < config.max_wait {
            seen = outbox.wait_for_append(seen, config.max_wait - age);
            continue;
        }
        // A lane's remaining rows are contiguous (see the outbox invariants); send only the
        // contiguous prefix should that ever not hold, rather than misnumber a batch.
        let first = rows[0].seq;
        let n = rows
            .iter()
            .enumerate()
            .take_while(|(i, r)| r.seq == first + *i as u64)
            .count();
        if n < rows.len() {
            tracing::error!(lane = ?lane, first, "outbox rows are not contiguous; sending the contiguous prefix");
        }
        let rows = &rows[..n];
        // The catch-up bound applies to readings and summaries; alerts are few and never wait.
        if !first_lane {
            bucket.take(rows.len(), &stop);
        }
        let header = BatchHeader {
            gateway: config.gateway.clone(),
            lane,
            first_seq: first,
            count: rows.len() as u32,
            sent_ms: now_ms(),
            state: Some(intake.state()),
        };
        let entries: Vec<&str> = rows.iter().map(|r| r.entry.as_str()).collect();
        let body = seal(&header, &entries, &key);
        status.attempt(now_ms());
        match post(&agent, &url, &body) {
            Outcome::Committed(through) if through >= header.last_seq() => {
                match intake.ack_blocking(lane, through) {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot delete acknowledged entries; they will be resent and recognised")
                    }
                }
                status.success(now_ms(), lane, rows.len() as u64, body.len() as u64);
                backoff = config.backoff_base;
                max_count = config.max_count;
            }
            outcome => {
                let reason = match outcome {
                    Outcome::Committed(t) => format!(
                        "the hub confirmed only through {t} of {}",
                        header.last_seq()
                    ),
                    Outcome::TooLarge(r) => {
                        max_count = (max_count / 2).max(1);
                        r
                    }
                    Outcome::Failed(r) => r,
                };
                let wait = backoff.mul_f64(0.5 + jitter.unit());
                tracing::warn!(%reason, ?lane, retry_in_ms = wait.as_millis() as u64, pending = outbox.depth().lane(lane).load(Ordering::Relaxed), "upload failed; keeping the batch");
                status.failure(reason, now_ms());
                let deadline = Instant::now() + wait;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
                }
                backoff = (backoff * 2).min(config.backoff_cap);
            }
        }
    }
}
