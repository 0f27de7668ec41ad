//! Technical alerts, for operators: a gateway that stopped uploading, a gateway whose outbox is
//! filling up, a webhook endpoint that keeps failing. A watch every [`LOOK_EVERY_MS`] (sooner
//! when the configured silence is short) decides
//! which conditions hold and hands them to the store (`osler_store::technical`), which raises
//! the new ones and resolves those that ended, each with an audit entry by `osler:technical`.
//!
//! What the watch knows of a gateway comes from its batches (when the last arrived, and what
//! its signed header said of its outbox, bytes used against its limit, and its version) and
//! from its signed polls of thresholds and assignments (every 30 s by default, even when no
//! device sends anything, which a batch would not tell). Its contact is the later of the two.
//! A gateway never heard from is not "silent" (it may not be installed yet); one revoked is not
//! watched; and for the first silence-period after a start the hub does not judge silence at
//! all (it has not yet heard the polls that were going on), keeping what was open. Route: `GET /alerts/technical` (operators), open ones first.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use osler_audit::{Action, Outcome, Record};
use osler_auth::{Interaction, Policy};
use osler_store::technical::{Condition, GatewayReport, TechnicalAlert};
use serde_json::json;

use crate::access::Routes;
use crate::alerts::time;
use crate::{AppState, now_ms};

/// How often the watch looks.
const LOOK_EVERY_MS: u64 = 10_000;

pub(crate) const GATEWAY_SILENT: &str = "gateway-silent";
pub(crate) const OUTBOX_FILLING: &str = "gateway-outbox-filling";
pub(crate) const WEBHOOK_FAILING: &str = "webhook-failing";
/// Every rule the watch decides; silence first (left out while the hub is too new to judge it).
const RULES: &[&str] = &[GATEWAY_SILENT, OUTBOX_FILLING, WEBHOOK_FAILING];

/// When the watch calls a condition an alert.
#[derive(Clone, Copy, Debug)]
pub struct TechnicalLimits {
    /// A gateway whose last batch is older than this is silent. Its uploaders send at least a
    /// heartbeat's readings every few minutes while devices report, so 10 minutes of nothing
    /// means the gateway, its network or its devices are down.
    pub gateway_silence_ms: i64,
    /// The share of its limit past which a gateway's outbox is filling (at the limit it refuses
    /// readings; at 80% an operator has time to look).
    pub outbox_filling_pct: u64,
    /// A webhook delivery that has failed this many times (and is being retried) makes its
    /// endpoint failing; so does one dead-lettered in the last hour with none delivered since.
    pub webhook_failures: u32,
}

impl Default for TechnicalLimits {
    fn default() -> TechnicalLimits {
        TechnicalLimits {
            gateway_silence_ms: 10 * 60_000,
            outbox_filling_pct: 80,
            webhook_failures: 3,
        }
    }
}

pub(crate) fn routes() -> Routes {
    Routes::new().get(
        "/alerts/technical",
        Policy::Everyone(osler_auth::OPERATIONS, Interaction::Search),
        list,
    )
}

/// When each gateway last polled, kept in memory (a poll is frequent and says only "alive").
#[derive(Default)]
pub(crate) struct Polls(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl Polls {
    pub(crate) fn note(&self, gateway: &str, at_ms: i64) {
        let mut polls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        polls.insert(gateway.to_owned(), at_ms);
    }

    fn last(&self, gateway: &str) -> Option<i64> {
        let polls = self.0.lock().unwrap_or_else(|p| p.into_inner());
        polls.get(gateway).copied()
    }
}

/// A span in words: seconds under two minutes, then minutes.
fn span(ms: i64) -> String {
    if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} min", ms / 60_000)
    }
}

/// Whether the hub has run long enough to judge gateways' silence.
fn judges_silence(state: &AppState, now: i64) -> bool {
    now - state.started_ms > state.technical.gateway_silence_ms
}

/// The conditions that hold now, from the gateways' batches and polls and the webhook queue.
fn conditions(state: &AppState, now: i64) -> Result<Vec<Condition>, osler_store::StoreError> {
    let limits = state.technical;
    let reports = state.store.gateway_reports()?;
    let mut out = Vec::new();
    for (g, last_batch) in state.store.gateways()? {
        if g.revoked_ms.is_some() {
            continue;
        }
        let subject = format!("gateway:{}", g.id);
        let last_poll = state.gateway_polls.last(&g.id);
        if let Some(contact) = last_batch.max(last_poll)
            && now - contact > limits.gateway_silence_ms
        {
            let when = |t: Option<i64>| t.map_or_else(|| "never".to_owned(), time);
            out.push(Condition {
                subject: subject.clone(),
                rule: GATEWAY_SILENT,
                detail: format!(
                    "no contact for {} (last batch {}, last poll {})",
                    span(now - contact),
                    when(last_batch),
                    when(last_poll)
                ),
            });
        }
        if let Some(r) = reports.iter().find(|r| r.gateway == g.id)
            && filling(r, limits.outbox_filling_pct)
        {
            out.push(Condition {
                subject,
                rule: OUTBOX_FILLING,
                detail: format!(
                    "outbox {}% of its limit ({} of {} MB, reported at {}): the hub is not taking its batches fast enough, or they fail",
                    r.outbox_bytes * 100 / r.outbox_limit.max(1),
                    r.outbox_bytes / 1_000_000,
                    r.outbox_limit / 1_000_000,
                    time(r.at_ms)
                ),
            });
        }
    }
    for (endpoint, why) in state
        .store
        .failing_webhooks(now, limits.webhook_failures, 3_600_000)?
    {
        out.push(Condition {
            subject: format!("webhook:{endpoint}"),
            rule: WEBHOOK_FAILING,
            detail: why,
        });
    }
    Ok(out)
}

fn filling(r: &GatewayReport, pct: u64) -> bool {
    r.outbox_limit > 0 && r.outbox_bytes.saturating_mul(100) >= r.outbox_limit.saturating_mul(pct)
}

/// The audit entry of a technical alert raised or resolved: the hub itself acted.
fn entry(a: &TechnicalAlert, what: &str) -> String {
    osler_fhir::audit::entry_text(&Record {
        recorded_ms: now_ms(),
        event: "technical-alert".into(),
        action: Action::Execute,
        outcome: Outcome::Success,
        outcome_text: None,
        who: "osler:technical".into(),
        role: None,
        network: None,
        patient: None,
        what: Some(format!("{what} {} {} ({})", a.rule, a.subject, a.detail)),
        query: None,
    })
}

/// Looks every [`LOOK_EVERY_MS`] until the hub shuts down.
pub(crate) async fn watch(state: Arc<AppState>) {
    let mut stop = state.shutdown.subscribe();
    loop {
        let looking = state.clone();
        let now = now_ms();
        let found = tokio::task::spawn_blocking(move || conditions(&looking, now)).await;
        match found {
            Ok(Ok(now_holding)) => {
                let rules = if judges_silence(&state, now) {
                    RULES
                } else {
                    &RULES[1..]
                };
                match state
                    .store
                    .technical_sync(rules, now_holding, now, entry)
                    .await
                {
                    Ok(changes) => {
                        for (a, what) in changes {
                            tracing::warn!(rule = %a.rule, subject = %a.subject, detail = %a.detail, "technical alert {what}");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "technical alerts could not be stored; retrying")
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the technical watch cannot read the store; retrying")
            }
            Err(_) => {}
        }
        // A quarter of the silence allowed, so a silent gateway is called so within 25% of it.
        let every =
            (state.technical.gateway_silence_ms.max(0) as u64 / 4).clamp(250, LOOK_EVERY_MS);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(every)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The query of `GET /alerts/technical`.
#[derive(serde::Deserialize)]
struct ListQuery {
    /// How many resolved ones to add after the open ones (default 50).
    recent: Option<usize>,
}

pub(crate) fn json_of(a: &TechnicalAlert) -> serde_json::Value {
    json!({
        "id": a.id,
        "subject": a.subject,
        "rule": a.rule,
        "detail": a.detail,
        "state": if a.resolved_ms.is_some() { "resolved" } else { "raised" },
        "raised_at": time(a.raised_ms),
        "resolved_at": a.resolved_ms.map(time),
    })
}

async fn list(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    let recent = q.recent.unwrap_or(50).min(1000);
    let found = state
        .store
        .technical_alerts(recent)
        .and_then(|a| Ok((a, state.store.gateway_reports()?)));
    match found {
        Ok((all, reports)) => {
            let open = all.iter().filter(|a| a.resolved_ms.is_none()).count();
            let alerts: Vec<_> = all.iter().map(json_of).collect();
            // What each gateway last said of itself, which the watch judges.
            let gateways: Vec<_> = reports
                .iter()
                .map(|r| {
                    json!({
                        "gateway": r.gateway,
                        "reported_at": time(r.at_ms),
                        "outbox_bytes": r.outbox_bytes,
                        "outbox_limit": r.outbox_limit,
                        "version": r.version,
                    })
                })
                .collect();
            axum::Json(json!({ "open": open, "alerts": alerts, "gateways": gateways }))
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "cannot read the technical alerts now; retry"})),
        )
            .into_response(),
    }
}
