//! `POST /ingest/batch`: signed batches from enrolled gateways (format: osler-wire).
//!
//! Order of checks: size, envelope shape, the gateway's enrolment, the signature, and only then
//! the content. A refused batch stores nothing and is logged with the gateway's name and the
//! reason, because a forged or revoked sender is something an operator must hear about. An
//! accepted batch is committed (with its sequence high-water mark) before it is acknowledged;
//! a resend is recognised by its sequence numbers and acknowledged again without storing twice.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_store::{BatchMark, WriteOp, WriteOutcome};
use osler_wire::{Envelope, MAX_ENVELOPE_BYTES, parse_public_key};
use serde_json::json;

use crate::access::Routes;
use crate::body::{BodyError, read_body};
use crate::{AppState, now_ms};
use osler_auth::Policy;

/// Batches carry their credential inside: the gateway's signature, checked against its
/// enrolled key before anything in the batch is believed.
pub(crate) fn routes() -> Routes {
    Routes::new().post("/ingest/batch", Policy::SignedBatch, batch)
}

/// A batch's place in its gateway's sequence with the entries refused before the store; each
/// lane adds what it carries (ops, summaries).
fn mark_of(env: &Envelope<'_>, received: i64, rejected: Vec<(u64, String, String)>) -> BatchMark {
    let header = &env.header;
    BatchMark {
        signature: env.signature().to_vec(),
        gateway: header.gateway.clone(),
        received_ms: received,
        first_seq: header.first_seq,
        lane: header.lane.as_u8(),
        last_seq: header.last_seq(),
        op_seqs: Vec::new(),
        op_raw: Vec::new(),
        rejected,
        summaries: Vec::new(),
        report: header
            .state
            .as_ref()
            .map(|s| osler_store::technical::GatewayReport {
                gateway: header.gateway.clone(),
                at_ms: received,
                outbox_bytes: s.outbox_bytes,
                outbox_limit: s.outbox_limit,
                version: s.version.clone(),
            }),
    }
}

/// The audit entry of a signed batch, committed with what it stored: which gateway sent
/// which sequence numbers of which lane, from where. (A batch holds many patients' readings;
/// their provenance is the batch, its gateway and its signature.)
fn batch_entry(header: &osler_wire::BatchHeader, peer: std::net::SocketAddr) -> String {
    osler_fhir::audit::entry_text(&osler_audit::Record {
        recorded_ms: now_ms(),
        event: "batch".into(),
        action: osler_audit::Action::Create,
        outcome: osler_audit::Outcome::Success,
        outcome_text: None,
        who: format!("gateway:{}", header.gateway),
        role: Some("gateway".into()),
        network: Some(peer.ip().to_string()),
        patient: None,
        what: Some(format!(
            "{:?} lane, entries {}..={}",
            header.lane,
            header.first_seq,
            header.last_seq()
        )),
        query: None,
    })
}

/// A refusal with its reason, as gateways read it.
pub(crate) fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": reason.into() }))).into_response()
}

async fn batch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(crate::tls::Peer(peer)): ConnectInfo<crate::tls::Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = now_ms();
    let bytes = match envelope_body(&headers, body, MAX_ENVELOPE_BYTES, "a batch", peer).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let env = match verified(&state, &bytes, peer).await {
        Ok(e) => e,
        Err(refused) => return refused,
    };
    let gw = env.header.gateway.clone();
    match env.header.lane {
        osler_wire::Lane::Alerts | osler_wire::Lane::Emergencies => {
            return alert_batch(&state, &env, received, peer).await;
        }
        osler_wire::Lane::Summaries => return summary_batch(&state, &env, received, peer).await,
        osler_wire::Lane::Readings => {}
    }
    let entries = match env.entries() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%peer, gateway = %gw, reason = %e, "batch refused: signed but garbled");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };

    let header = env.header.clone();
    let mut ops = Vec::with_capacity(entries.len());
    let mut op_seqs = Vec::with_capacity(entries.len());
    let mut op_raw = Vec::with_capacity(entries.len());
    let mut rejected = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let seq = header.first_seq + i as u64;
        let checked = entry
            .to_reading()
            .and_then(|r| r.check(received).map(|()| r).map_err(|e| e.to_string()));
        match checked {
            Ok(reading) => {
                ops.push(WriteOp {
                    reading,
                    if_none_exist: None,
                    by_device: entry.a,
                    correction: None,
                });
                op_seqs.push(seq);
                op_raw.push(entry.to_json());
            }
            Err(reason) => rejected.push((seq, entry.to_json(), reason)),
        }
    }
    let mark = BatchMark {
        op_seqs,
        op_raw,
        ..mark_of(&env, received, rejected.clone())
    };
    // The readings and the alert changes the rules find in them are one commit: a crash
    // before it makes the gateway resend the batch, and nothing of it was stored.
    let result = match state
        .alerts
        .write(
            &state.store,
            ops,
            false,
            Some(mark),
            vec![batch_entry(&header, peer)],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(gateway = %gw, error = %e, "batch not committed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; nothing was acknowledged, retry",
            );
        }
    };
    let count = |f: fn(&WriteOutcome) -> bool| result.outcomes.iter().filter(|o| f(o)).count();
    let stored = count(|o| matches!(o, WriteOutcome::Created(_)));
    let duplicates = count(|o| {
        matches!(
            o,
            WriteOutcome::AlreadyCommitted | WriteOutcome::Existing(_)
        )
    });
    let dead = count(|o| matches!(o, WriteOutcome::DeadLettered)) + rejected.len();
    if dead > 0 {
        state.metrics.rejected("dead-lettered", dead as u64);
        tracing::warn!(gateway = %gw, dead, "batch entries dead-lettered");
    }
    tracing::debug!(gateway = %gw, first = header.first_seq, last = header.last_seq(), stored, duplicates, "batch committed");
    (
        StatusCode::OK,
        axum::Json(json!({
            "gateway": gw,
            "lane": header.lane,
            "committed_through": header.last_seq(),
            "stored": stored,
            "duplicates": duplicates,
            "dead_lettered": dead,
        })),
    )
        .into_response()
}

/// The body of a signed envelope (`what` it is, for the refusal), at most `max` bytes.
pub(crate) async fn envelope_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    what: &str,
    peer: std::net::SocketAddr,
) -> Result<Vec<u8>, Response> {
    match read_body(headers, body, max).await {
        Ok(b) => Ok(b),
        Err(BodyError::TooLarge) => {
            tracing::warn!(%peer, "{what} refused: larger than {max} bytes");
            Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{what} is at most {max} bytes"),
            ))
        }
        Err(BodyError::Unreadable) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "the body could not be read",
        )),
    }
}

/// The envelope, once its gateway is known to be enrolled and not revoked and its signature
/// holds; otherwise the refusal to answer (logged: a forged or revoked sender is something an
/// operator must hear about).
pub(crate) async fn verified<'a>(
    state: &AppState,
    bytes: &'a [u8],
    peer: std::net::SocketAddr,
) -> Result<Envelope<'a>, Response> {
    let env = match Envelope::parse(bytes) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%peer, reason = %e, "batch refused: not a valid envelope");
            return Err(refuse(StatusCode::BAD_REQUEST, e.to_string()));
        }
    };
    let gw = env.header.gateway.clone();
    let store = state.store.clone();
    let lookup = gw.clone();
    let record = match tokio::task::spawn_blocking(move || store.gateway(&lookup)).await {
        Ok(Ok(r)) => r,
        _ => {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; retry",
            ));
        }
    };
    let Some(record) = record else {
        tracing::warn!(%peer, gateway = %gw, "batch refused: gateway not enrolled");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            format!("gateway {gw:?} is not enrolled (osler hub enrol)"),
        ));
    };
    if record.revoked_ms.is_some() {
        tracing::warn!(%peer, gateway = %gw, "batch refused: gateway key revoked");
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("gateway {gw:?} is revoked"),
        ));
    }
    let verdict = parse_public_key(&record.public_key).and_then(|k| env.verify(&k));
    if let Err(e) = verdict {
        tracing::warn!(%peer, gateway = %gw, reason = %e, "batch refused: signature");
        return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    Ok(env)
}

/// The patient the hub's own assignments give each (index, device, time), for entries the
/// gateway attributed by device; `None` if the store cannot say. No store read (nor thread
/// hop) when there is nothing to check, which is the common case.
pub(crate) async fn hub_patients(
    state: &AppState,
    checks: Vec<(usize, String, i64)>,
) -> Option<Vec<(usize, Option<String>)>> {
    if checks.is_empty() {
        return Some(Vec::new());
    }
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        checks
            .into_iter()
            .map(|(i, d, t)| store.patient_at(&d, t).map(|p| (i, p)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .ok()?
    .ok()
}

/// An alerts-lane batch: the gateway's own evaluation of the critical rules. Recorded with the
/// batch's high-water mark in one commit; merged with the hub's evaluation by the store (one
/// open alert per patient and rule, one alert per rule and reading time).
async fn alert_batch(
    state: &AppState,
    env: &Envelope<'_>,
    received: i64,
    peer: std::net::SocketAddr,
) -> Response {
    let gw = env.header.gateway.clone();
    let entries = match env.alert_entries() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(gateway = %gw, reason = %e, "alert batch refused: signed but garbled");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    // Alerts on readings the gateway attributed by device: believed only when the hub's own
    // assignments name the same patient at that time (a gateway that has not yet seen a
    // reassignment guesses the previous wearer). The reading itself arrives in the readings
    // lane, and the hub's rules judge it for the right patient.
    let checks = entries
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.d.clone().map(|d| (i, d, a.t)))
        .collect();
    let attributed = match hub_patients(state, checks).await {
        Some(a) => a,
        None => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; nothing was acknowledged, retry",
            );
        }
    };
    for (i, a) in entries.iter().enumerate() {
        let seq = env.header.first_seq + i as u64;
        if let Some((_, hub_patient)) = attributed.iter().find(|(j, _)| *j == i)
            && hub_patient.as_deref() != Some(a.p.as_str())
        {
            rejected.push((
                seq,
                a.to_json(),
                format!(
                    "the gateway attributed device {:?}'s reading to {:?} by its copy of the assignments; the hub's assign it to {}: the hub judges the reading itself",
                    a.d.as_deref().unwrap_or(""),
                    a.p,
                    hub_patient.as_deref().map_or("nobody".to_owned(), |p| format!("{p:?}"))
                ),
            ));
            continue;
        }
        let change = match a.change.as_str() {
            "raised" => Some(osler_rules::Change::Raised),
            "updated" => Some(osler_rules::Change::Updated),
            "resolved" => Some(osler_rules::Change::Resolved),
            _ => None,
        };
        // A rule's alert, or an emergency the gateway took from a device (raised only: a
        // person resolves it). The emergencies lane carries emergencies only: nothing else
        // may take its shortcut.
        let known = osler_rules::Rule::by_id(&a.rule)
            .filter(|_| env.header.lane == osler_wire::Lane::Alerts)
            .map(|r| (r.id, r.severity))
            .or_else(|| {
                osler_rules::Emergency::by_id(&a.rule)
                    .filter(|_| change == Some(osler_rules::Change::Raised))
                    .map(|e| (e.id, e.severity))
            });
        match (known, change) {
            (Some((rule, severity)), Some(change)) if osler_core::Id::parse(&a.p).is_some() => {
                events.push(osler_rules::AlertEvent {
                    change,
                    patient: a.p.clone(),
                    rule,
                    severity,
                    reading_ms: a.t,
                    value: a.v,
                    threshold: a.th,
                    late: a.late,
                })
            }
            _ if env.header.lane == osler_wire::Lane::Emergencies
                && osler_rules::Rule::by_id(&a.rule).is_some() =>
            {
                rejected.push((
                seq,
                a.to_json(),
                format!(
                    "rule {:?}'s alerts travel in the alerts lane; the emergencies lane carries only emergencies",
                    a.rule
                ),
            ))
            }
            _ => rejected.push((
                seq,
                a.to_json(),
                format!(
                    "unknown rule {:?}, change {:?} or patient {:?}",
                    a.rule, a.change, a.p
                ),
            )),
        }
    }
    let mark = mark_of(env, received, rejected.clone());
    let result = match state
        .store
        .write_batch(
            Vec::new(),
            mark,
            crate::alerts::writes(&events, "gateway"),
            vec![batch_entry(&env.header, peer)],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(gateway = %gw, error = %e, "alert batch not committed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; nothing was acknowledged, retry",
            );
        }
    };
    let changed = result.alerts.iter().filter(|a| a.is_some()).count();
    state.alerts.publish(&events, result.alerts);
    (
        StatusCode::OK,
        axum::Json(json!({
            "gateway": gw,
            "lane": env.header.lane,
            "committed_through": env.header.last_seq(),
            "alerts": entries.len(),
            "changed": changed,
            "dead_lettered": rejected.len(),
        })),
    )
        .into_response()
}

/// A summaries-lane batch: the gateway's window summaries of readings it did not send one by
/// one. Stored with the batch's high-water mark in one commit (a resend stores nothing twice);
/// an entry that does not make sense is dead-lettered with the reason.
async fn summary_batch(
    state: &AppState,
    env: &Envelope<'_>,
    received: i64,
    peer: std::net::SocketAddr,
) -> Response {
    let gw = env.header.gateway.clone();
    let entries = match env.summary_entries() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(gateway = %gw, reason = %e, "summary batch refused: signed but garbled");
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let mut summaries = Vec::with_capacity(entries.len());
    let mut rejected = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let seq = env.header.first_seq + i as u64;
        match summary(e) {
            Ok(s) => summaries.push((seq, s)),
            Err(reason) => rejected.push((seq, e.to_json(), reason)),
        }
    }
    let stored = summaries.len();
    let mark = BatchMark {
        summaries,
        ..mark_of(env, received, rejected.clone())
    };
    let audit = vec![batch_entry(&env.header, peer)];
    if let Err(e) = state
        .store
        .write_batch(Vec::new(), mark, Vec::new(), audit)
        .await
    {
        tracing::error!(gateway = %gw, error = %e, "summary batch not committed");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed; nothing was acknowledged, retry",
        );
    }
    if !rejected.is_empty() {
        state
            .metrics
            .rejected("dead-lettered", rejected.len() as u64);
        tracing::warn!(gateway = %gw, dead = rejected.len(), "summary entries dead-lettered");
    }
    (
        StatusCode::OK,
        axum::Json(json!({
            "gateway": gw,
            "lane": env.header.lane,
            "committed_through": env.header.last_seq(),
            "summaries": stored,
            "dead_lettered": rejected.len(),
        })),
    )
        .into_response()
}

fn summary(e: &osler_wire::SummaryEntry) -> Result<osler_store::Summary, String> {
    let metric = e.check()?;
    let value = |v: &[f64]| match v {
        [a, b] => osler_core::Value::Pair(*a, *b),
        [a, ..] => osler_core::Value::Scalar(*a),
        // check() refused an empty statistic.
        [] => osler_core::Value::Scalar(f64::NAN),
    };
    // check() parsed both ids already.
    let patient = osler_core::Id::parse(&e.p).ok_or("invalid patient id")?;
    let device = match &e.d {
        Some(d) => Some(osler_core::Id::parse(d).ok_or("invalid device id")?),
        None => None,
    };
    Ok(osler_store::Summary {
        patient,
        metric,
        device,
        start: osler_core::Timestamp {
            utc_ms: e.t0,
            offset_min: e.o,
        },
        mean: value(&e.mean),
        stats: osler_store::SummaryStats {
            end_ms: e.t1,
            count: e.n,
            min: value(&e.min),
            max: value(&e.max),
            last: value(&e.last),
            spikes: e.spikes,
        },
    })
}

#[cfg(test)]
mod tests {
    /// The store's escalation recognises an emergency by the prefix the rules give every
    /// emergency's id: the two crates do not depend on each other, so this test holds them to
    /// the same.
    #[test]
    fn the_rules_and_the_store_name_emergencies_alike() {
        assert_eq!(
            osler_rules::EMERGENCY_PREFIX,
            osler_store::escalation::EMERGENCY_PREFIX
        );
    }
}
