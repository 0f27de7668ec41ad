//! `POST /ingest/notice`: an emergency announced before it is stored.
//!
//! A fall or an SOS press must reach the care team within milliseconds, and a durable path
//! cannot promise that: each of its two commits (the gateway's outbox, then the hub's store)
//! waits for the disk's flush, and on a shared disk a flush alone sometimes takes a hundred
//! milliseconds. So a gateway does two things with an emergency at once: it commits it to its
//! emergencies lane (from which it travels as a sequenced, signed batch, is stored, numbered,
//! escalated and audited like every alert), and it announces it here, signed the same way.
//!
//! An announcement is only that. It is checked like a batch (the gateway enrolled, not
//! revoked, its signature; each entry an emergency being raised for a patient the hub would
//! attribute it to), then handed to the live streams of those who may see that patient as an
//! SSE `notice` event **without an `id:`**, so that it never moves a subscriber's
//! `Last-Event-ID`: nothing is stored, and the stored `alert` event that follows is the record
//! (a subscriber that missed the notice misses nothing). A notice older than
//! [`FRESH_MS`] by its gateway's clock, or one already announced (the same signature), is
//! answered but not announced again, so a captured notice cannot be replayed.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_wire::Lane;
use serde_json::json;

use crate::access::Routes;
use crate::alerts::time;
use crate::ingest::refuse;
use crate::{AppState, now_ms};
use osler_auth::Policy;

/// How old (by the sender's clock against the hub's) a notice may be and still be announced.
pub(crate) const FRESH_MS: i64 = 30_000;

/// A notice is a handful of entries.
const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// Announcements a slow subscriber may fall behind by before it skips some (it still receives
/// every stored event).
const CAPACITY: usize = 256;

/// One emergency announced, as the live streams carry it.
#[derive(Clone, Debug)]
pub(crate) struct Notice {
    pub patient: String,
    pub rule: &'static str,
    pub title: &'static str,
    pub severity: osler_rules::Severity,
    pub reading_ms: i64,
    pub gateway: String,
    pub received_ms: i64,
}

impl Notice {
    /// The SSE `notice` event: no id (see the module's doc).
    pub(crate) fn event(&self) -> axum::response::sse::Event {
        axum::response::sse::Event::default()
            .event("notice")
            .data(self.json().to_string())
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "event": "notice",
            "patient": self.patient,
            "rule": self.rule,
            "title": self.title,
            "severity": self.severity.as_str(),
            "reading_time": time(self.reading_ms),
            "gateway": self.gateway,
            "received_at": time(self.received_ms),
            "stored": false,
        })
    }
}

/// The announcements' channel, and the signatures announced within [`FRESH_MS`].
pub(crate) struct Notices {
    tx: tokio::sync::broadcast::Sender<Arc<Notice>>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    order: VecDeque<(i64, Vec<u8>)>,
    set: HashSet<Vec<u8>>,
}

impl Default for Notices {
    fn default() -> Notices {
        Notices {
            tx: tokio::sync::broadcast::channel(CAPACITY).0,
            seen: Mutex::new(Seen::default()),
        }
    }
}

impl Notices {
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Notice>> {
        self.tx.subscribe()
    }

    /// Whether this signature is new (then remembered until it is too old to be announced).
    fn first_time(&self, signature: &[u8], now: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, _)) = seen.order.front() {
            if now - at <= 2 * FRESH_MS {
                break;
            }
            if let Some((_, sig)) = seen.order.pop_front() {
                seen.set.remove(&sig);
            }
        }
        if !seen.set.insert(signature.to_vec()) {
            return false;
        }
        seen.order.push_back((now, signature.to_vec()));
        true
    }
}

/// Signed by the gateway like a batch: its signature is checked before anything is believed.
pub(crate) fn routes() -> Routes {
    Routes::new().post("/ingest/notice", Policy::SignedBatch, notice)
}

async fn notice(
    State(state): State<Arc<AppState>>,
    ConnectInfo(crate::tls::Peer(peer)): ConnectInfo<crate::tls::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = now_ms();
    let bytes = match crate::ingest::envelope_body(
        &headers,
        body,
        MAX_NOTICE_BYTES,
        "a notice",
        peer,
    )
    .await
    {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let env = match crate::ingest::verified(&state, &bytes, peer).await {
        Ok(e) => e,
        Err(refused) => return refused,
    };
    if env.header.lane != Lane::Emergencies {
        return refuse(
            StatusCode::BAD_REQUEST,
            "a notice announces emergencies: its header's lane is \"emergencies\"",
        );
    }
    let entries = match env.alert_entries() {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let gateway = env.header.gateway.clone();
    let age = received - env.header.sent_ms;
    if age.abs() > FRESH_MS || !state.notices.first_time(&env.signature(), received) {
        tracing::warn!(%gateway, age_ms = age, "notice not announced: stale or already announced");
        return answer(
            0,
            vec![json!({"reason": "stale or already announced: not announced again"})],
        );
    }
    let mut refused = Vec::new();
    let mut notices = Vec::new();
    for (i, a) in entries.into_iter().enumerate() {
        let known = osler_rules::Emergency::by_id(&a.rule)
            .filter(|_| a.change == "raised" && osler_core::Id::parse(&a.p).is_some());
        let Some(e) = known else {
            refused.push(json!({"entry": i, "reason": format!(
                "not an emergency being raised for a valid patient (rule {:?}, change {:?})",
                a.rule, a.change
            )}));
            continue;
        };
        notices.push((
            i,
            a.d,
            Notice {
                patient: a.p,
                rule: e.id,
                title: e.title,
                severity: e.severity,
                reading_ms: a.t,
                gateway: gateway.clone(),
                received_ms: received,
            },
        ));
    }
    // An emergency the gateway attributed by its device is announced only if the hub's own
    // assignments name the same patient then (as for the stored alert, see `ingest`).
    let checks = notices
        .iter()
        .enumerate()
        .filter_map(|(i, (_, d, n))| d.clone().map(|d| (i, d, n.reading_ms)))
        .collect();
    let Some(attributed) = crate::ingest::hub_patients(&state, checks).await else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the store failed; retry");
    };
    let mut announced = 0;
    for (i, (entry, _, n)) in notices.into_iter().enumerate() {
        if let Some((_, p)) = attributed.iter().find(|(j, _)| *j == i)
            && p.as_deref() != Some(n.patient.as_str())
        {
            refused.push(json!({"entry": entry, "reason": "the hub's assignments attribute the device to another patient"}));
            continue;
        }
        tracing::info!(%gateway, patient = %n.patient, rule = n.rule, "emergency announced");
        // No subscriber is not an error: the stored alert reaches them when they connect.
        let _ = state.notices.tx.send(Arc::new(n));
        announced += 1;
    }
    state.metrics.notices(announced as u64);
    answer(announced, refused)
}

fn answer(announced: usize, refused: Vec<serde_json::Value>) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({ "announced": announced, "refused": refused })),
    )
        .into_response()
}
