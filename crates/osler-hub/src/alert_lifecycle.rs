//! What people do about alerts, and the live stream that tells them.
//!
//! Routes: `GET /alerts/{id}` (the alert, each recipient's response, its snoozes and its whole
//! timeline), `POST /alerts/{id}/seen|ack|accept|snooze|unsnooze|comment`, and
//! `GET /alerts/stream` (Server-Sent Events). Every act is one transaction with its audit
//! entry; the condition (raised, updated, resolved) and the responses are separate records
//! (`osler_store::lifecycle`).
//!
//! The stream is read from the store: every event has a number, sent as the SSE `id:`, and a
//! subscriber that reconnects with `Last-Event-ID` gets everything after it, so a dropped
//! connection loses nothing. It carries only the events of the caller's patients.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use osler_auth::{Caller, Interaction, Policy};
use osler_store::alerts::AlertRecord;
use osler_store::lifecycle::{Act, AlertEvent, Refused};
use serde_json::{Value, json};

use crate::access::{Ax, Cx, Routes, audited, sees, within};
use crate::alerts::{alert_json, error, refused};
use crate::{AppState, now_ms};

/// The longest snooze per severity, in minutes. Critical follows ISO 7396-1/A3's limit on
/// pausing an emergency alarm (15 min, `../shared/reference/alerts.md`); urgent and warning are
/// Osler's choice (no standard sets them), within the ranges Nightscout offers for its levels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnoozeCaps {
    pub critical_min: f64,
    pub urgent_min: f64,
    pub warning_min: f64,
}

impl Default for SnoozeCaps {
    fn default() -> SnoozeCaps {
        SnoozeCaps {
            critical_min: 15.0,
            urgent_min: 60.0,
            warning_min: 240.0,
        }
    }
}

impl SnoozeCaps {
    /// The cap for a severity (an unknown one gets the shortest).
    pub fn minutes(&self, severity: &str) -> f64 {
        match severity {
            "warning" => self.warning_min,
            "urgent" => self.urgent_min,
            _ => self.critical_min,
        }
    }

    /// Parses `SEVERITY=MINUTES` into these caps.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (sev, min) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected SEVERITY=MINUTES, e.g. critical=10"))?;
        let min: f64 = min
            .parse()
            .ok()
            .filter(|m: &f64| m.is_finite() && *m > 0.0)
            .ok_or_else(|| format!("{spec:?}: the minutes must be a positive number"))?;
        match sev {
            "critical" => self.critical_min = min,
            "urgent" => self.urgent_min = min,
            "warning" => self.warning_min = min,
            _ => {
                return Err(format!(
                    "{sev:?}: the severities are critical, urgent, warning"
                ));
            }
        }
        Ok(())
    }
}

/// One handler per answer, each the same `answer` with its kind.
macro_rules! answers {
    ($($name:ident),* $(,)?) => {$(
        async fn $name(
            s: State<Arc<AppState>>,
            c: Cx,
            a: Ax,
            p: Path<String>,
            b: Bytes,
        ) -> Response {
            answer(s, c, a, p, b, stringify!($name)).await
        }
    )*};
}

answers!(
    delivered, seen, ack, accept, snooze, unsnooze, comment, resolve
);

/// Answering an alert is updating a Flag (`Flag.u`); its detail and the stream are reading.
pub(crate) fn routes() -> Routes {
    use Interaction::*;
    let act = || Policy::Resource("Flag", Update);
    Routes::new()
        .get("/alerts/stream", Policy::Resource("Flag", Search), stream)
        .get("/alerts/{id}", Policy::Resource("Flag", Read), detail)
        .post("/alerts/{id}/delivered", act(), delivered)
        .post("/alerts/{id}/seen", act(), seen)
        .post("/alerts/{id}/ack", act(), ack)
        .post("/alerts/{id}/accept", act(), accept)
        .post("/alerts/{id}/snooze", act(), snooze)
        .post("/alerts/{id}/unsnooze", act(), unsnooze)
        .post("/alerts/{id}/comment", act(), comment)
        .post("/alerts/{id}/resolve", act(), resolve)
}

fn time(ms: i64) -> String {
    osler_core::Timestamp::utc(ms).to_string()
}

/// The alert the path names, if the caller may see it (otherwise it does not exist for them).
async fn visible_alert(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<AlertRecord, Response> {
    alert_for(state, caller, id)
        .await
        .map_err(|(code, why)| error(code, why))
}

/// The alert with its responses, snoozes and timeline.
fn detail_json(state: &AppState, a: &AlertRecord) -> Result<Value, osler_store::StoreError> {
    let now = now_ms();
    let responses = state.store.alert_responses(a.id)?;
    let snoozes = state.store.alert_snoozes(a.id)?;
    let timeline = state.store.alert_timeline(a.id)?;
    let mut v = alert_json(a, &a.state);
    v["accepted_by"] = json!(
        responses
            .iter()
            .find(|r| r.state == "accepted")
            .map(|r| &r.recipient)
    );
    v["responses"] = responses
        .iter()
        .map(|r| json!({"recipient": r.recipient, "state": r.state, "at": time(r.at_ms)}))
        .collect();
    v["snoozes"] = snoozes
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "scope": if s.recipient.is_some() { "me" } else { "team" },
                "recipient": s.recipient,
                "by": s.who,
                "reason": s.reason,
                "from": time(s.from_ms),
                "until": time(s.until_ms),
                "active": s.active(now),
                "ended_at": s.ended_ms.map(time),
                "ended_why": s.ended_why,
            })
        })
        .collect();
    v["timeline"] = timeline.iter().map(timeline_json).collect();
    v["muted"] = muted_json(state, a);
    v["escalation"] = match state.store.escalation(a.id)? {
        Some(e) => json!({
            "team": e.team,
            "next_step": e.step + 1,
            "round": e.round + 1,
            "due": e.ended_ms.is_none().then(|| time(e.due_ms)),
            "ended_at": e.ended_ms.map(time),
            "ended_why": e.ended_why,
        }),
        None => Value::Null,
    };
    Ok(v)
}

/// Whether the alert is muted, and by what: the open "no data" alert of its measurement.
pub(crate) fn muted_json(state: &AppState, a: &AlertRecord) -> Value {
    match state.silences.muting(a) {
        Some((by, since)) => json!({
            "by_alert": by,
            "why": format!("no data since {}: the device may be offline", time(since)),
        }),
        _ => Value::Null,
    }
}

fn timeline_json(e: &AlertEvent) -> Value {
    json!({
        "seq": e.seq,
        "at": time(e.at_ms),
        "kind": e.kind,
        "who": e.who,
        "note": e.note,
        "value": e.value,
        "reading_time": e.reading_ms.map(time),
    })
}

async fn detail(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    Path(id): Path<String>,
) -> Response {
    let a = match visible_alert(&state, &caller, &id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match detail_json(&state, &a) {
        Ok(v) => axum::Json(v).into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read alerts now; retry",
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Delivered,
    Seen,
    Ack,
    Accept,
    Snooze,
    Unsnooze,
    Comment,
    Resolve,
}

/// The body of an answer: all optional but `minutes` (snooze) and `note` (comment).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Answer {
    /// Snooze length.
    minutes: Option<f64>,
    /// Why (a snooze), or what (a comment, an ack's note).
    reason: Option<String>,
    note: Option<String>,
    /// Snooze for `me` (default) or the whole `team` (needs a reason).
    scope: Option<String>,
}

const BODY_HELP: &str = "the body is JSON: {\"note\": \"...\"}; a snooze takes \
     {\"minutes\": N, \"reason\": \"...\", \"scope\": \"me\"|\"team\"}; a comment needs a note";

/// Longest note kept (a note is for a sentence or two, not a document).
const NOTE_MAX: usize = 2000;

/// What the body asks, checked against the alert; or the 4xx status and why not.
fn to_act(
    kind: Kind,
    body: &[u8],
    severity: &str,
    caps: &SnoozeCaps,
    now_ms: i64,
) -> Result<(Act, Option<String>), (StatusCode, String)> {
    let bad = |code: StatusCode, m: String| Err((code, m));
    let answer: Answer = if body.iter().all(u8::is_ascii_whitespace) {
        Answer::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(e) => return bad(StatusCode::BAD_REQUEST, format!("{e}; {BODY_HELP}")),
        }
    };
    let note = answer
        .note
        .or(answer.reason)
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if note.as_ref().is_some_and(|n| n.chars().count() > NOTE_MAX) {
        return bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a note is at most {NOTE_MAX} characters"),
        );
    }
    if kind != Kind::Snooze && (answer.minutes.is_some() || answer.scope.is_some()) {
        return bad(
            StatusCode::BAD_REQUEST,
            "minutes and scope are for /snooze".into(),
        );
    }
    let act = match kind {
        Kind::Delivered => Act::Delivered,
        Kind::Seen => Act::Seen,
        Kind::Ack => Act::Ack,
        Kind::Accept => Act::Accept,
        Kind::Unsnooze => Act::Unsnooze,
        Kind::Comment if note.is_none() => {
            return bad(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a comment needs a note: {\"note\": \"...\"}".into(),
            );
        }
        Kind::Comment => Act::Comment,
        Kind::Resolve => Act::Resolve,
        Kind::Snooze => {
            let team = match answer.scope.as_deref() {
                None | Some("me") => false,
                Some("team") => true,
                Some(other) => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        format!("scope {other:?}: it is \"me\" or \"team\""),
                    );
                }
            };
            if team && note.is_none() {
                return bad(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "a snooze for the whole team needs a reason".into(),
                );
            }
            let cap = caps.minutes(severity);
            let minutes = match answer.minutes {
                None => {
                    return bad(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "a snooze needs {{\"minutes\": N}} (at most {cap} for a {} alert)",
                            severity
                        ),
                    );
                }
                Some(m) if !m.is_finite() || m <= 0.0 => {
                    return bad(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "minutes must be a positive number".into(),
                    );
                }
                Some(m) if m > cap => {
                    return bad(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "a {} alert can be snoozed for at most {cap} minutes (the hub's --snooze-cap)",
                            severity
                        ),
                    );
                }
                Some(m) => m,
            };
            Act::Snooze {
                until_ms: now_ms + (minutes * 60_000.0) as i64,
                team,
            }
        }
    };
    Ok((act, note))
}

/// Reads the body of `POST /alerts/{id}/{what}` (`what`: seen, ack, accept, snooze, unsnooze,
/// comment) for an alert of `severity`, as the route does: what to do and its note, or the
/// HTTP status and why not. Public for the fuzz target.
pub fn parse_answer(
    what: &str,
    body: &[u8],
    severity: &str,
    caps: &SnoozeCaps,
    now_ms: i64,
) -> Result<(Act, Option<String>), (u16, String)> {
    let kind = match what {
        "delivered" => Kind::Delivered,
        "seen" => Kind::Seen,
        "ack" => Kind::Ack,
        "accept" => Kind::Accept,
        "snooze" => Kind::Snooze,
        "unsnooze" => Kind::Unsnooze,
        "comment" => Kind::Comment,
        "resolve" => Kind::Resolve,
        _ => return Err((404, format!("no answer {what:?}"))),
    };
    to_act(kind, body, severity, caps, now_ms).map_err(|(c, m)| (c.as_u16(), m))
}

async fn answer(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    axum::Extension(audit): Ax,
    Path(id): Path<String>,
    body: Bytes,
    what: &str,
) -> Response {
    let a = match visible_alert(&state, &caller, &id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = give_answer(&state, &caller, &audit, &a, what, &body).await {
        return refused((r.0.as_u16(), r.1));
    }
    match state
        .store
        .alert(a.id)
        .map(|a| a.map(|a| detail_json(&state, &a)))
    {
        Ok(Some(Ok(v))) => audited(axum::Json(v).into_response()),
        _ => audited(
            (
                StatusCode::OK,
                axum::Json(json!({"id": a.id, "note": "done; the alert could not be read back"})),
            )
                .into_response(),
        ),
    }
}

/// The alert `id` names if `caller` may see it, or the status and why not (the dashboard's
/// forms answer in words, not JSON).
pub(crate) async fn alert_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<AlertRecord, (StatusCode, String)> {
    let unknown = || {
        (
            StatusCode::NOT_FOUND,
            format!(
                "alert {} is not known",
                id.chars().take(32).collect::<String>()
            ),
        )
    };
    let n: i64 = id.parse().map_err(|_| unknown())?;
    match state.store.alert(n) {
        Ok(Some(a)) if sees(caller, &a.patient) => Ok(a),
        Ok(_) => Err(unknown()),
        Err(_) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read alerts now; retry".to_owned(),
        )),
    }
}

/// Does what the body of `POST /alerts/{id}/{what}` asks of alert `a`, with its audit entry
/// in the same commit: the one path for the API and the dashboard's forms.
pub(crate) async fn give_answer(
    state: &AppState,
    caller: &Caller,
    audit: &crate::access::AuditCtx,
    a: &AlertRecord,
    what: &str,
    body: &[u8],
) -> Result<i64, (StatusCode, String)> {
    let (act, note) =
        parse_answer(what, body, &a.severity, &state.snooze_caps, now_ms()).map_err(|(c, m)| {
            (
                StatusCode::from_u16(c).unwrap_or(StatusCode::BAD_REQUEST),
                m,
            )
        })?;
    let done = state
        .store
        .act(
            a.id,
            caller.subject.clone(),
            act,
            note,
            now_ms(),
            audit.entry_about(Some(&a.patient)),
        )
        .await;
    match done {
        Ok(Ok(seq)) => {
            state.alerts.changed();
            Ok(seq)
        }
        Ok(Err(Refused::Unknown(_))) => Err((
            StatusCode::NOT_FOUND,
            format!("alert {} is not known", a.id),
        )),
        Ok(Err(why)) => Err((StatusCode::CONFLICT, why.to_string())),
        Err(e) => {
            tracing::error!(error = %e, alert = a.id, "an answer to an alert could not be stored");
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; nothing changed, retry".to_owned(),
            ))
        }
    }
}

/// Events read from the store per round (a subscriber far behind catches up in rounds).
const ROUND: usize = 256;

/// The JSON of one stream event: a change of the condition carries the alert as `/alerts`
/// shows it, as it was then; an answer says who did what.
pub(crate) fn event_json(e: &AlertEvent, a: &AlertRecord) -> Value {
    let condition = matches!(
        e.kind.as_str(),
        "raised" | "updated" | "resolved" | "reopened"
    );
    if !condition {
        return json!({
            "event": e.kind,
            "seq": e.seq,
            "id": a.id,
            "patient": a.patient,
            "rule": a.rule,
            "severity": a.severity,
            "who": e.who,
            "note": e.note,
            "at": time(e.at_ms),
        });
    }
    let mut v = alert_json(a, &e.kind);
    v["seq"] = json!(e.seq);
    if let Some(value) = e.value {
        v["value"] = json!(value);
    }
    if e.kind != "resolved" {
        v["state"] = json!("raised");
        v["resolved_reading_time"] = Value::Null;
        v["resolved_at"] = Value::Null;
    }
    if e.kind == "updated" {
        v["updated_reading_time"] = json!(e.reading_ms.map(time));
    }
    v
}

/// The SSE event for a stored event (`None` if its alert cannot be read).
fn sse_event(state: &AppState, e: &AlertEvent) -> Option<Event> {
    let a = state.store.alert(e.alert).ok().flatten()?;
    let name = match e.kind.as_str() {
        "raised" | "updated" | "resolved" | "reopened" => "alert",
        _ => "response",
    };
    Some(
        Event::default()
            .event(name)
            .id(e.seq.to_string())
            .data(event_json(e, &a).to_string()),
    )
}

struct Subscriber {
    state: Arc<AppState>,
    within: Option<Vec<String>>,
    cursor: i64,
    ready: VecDeque<AlertEvent>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Emergencies announced before their commit (see `notice`): sent as they come, ahead of
    /// the stored events, to a subscriber who may see the patient.
    notices: tokio::sync::broadcast::Receiver<Arc<crate::notice::Notice>>,
    /// Whom the subscriber may see, for the notices (the stored events are read narrowed).
    compartment: osler_auth::Compartment,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Subscriber {
    /// The next event, waiting for one; `None` when the hub shuts down.
    async fn next(&mut self) -> Option<Event> {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        loop {
            loop {
                match self.notices.try_recv() {
                    Ok(n) if self.compartment.contains(&n.patient) => {
                        return Some(n.event());
                    }
                    Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            while let Some(e) = self.ready.pop_front() {
                if let Some(ev) = sse_event(&self.state, &e) {
                    return Some(ev);
                }
            }
            // Marked seen before reading, so that a commit after the read wakes the wait.
            self.changes.borrow_and_update();
            match self
                .state
                .store
                .alert_events_after(self.cursor, ROUND, self.within.as_deref())
            {
                Ok((events, scanned)) if scanned > self.cursor => {
                    self.cursor = scanned;
                    self.ready.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the alert stream cannot read the store; retrying")
                }
            }
            tokio::select! {
                r = self.changes.changed() => if r.is_err() { return None },
                n = self.notices.recv() => match n {
                    Ok(n) if self.compartment.contains(&n.patient) => return Some(n.event()),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                // The hub is shutting down: end the stream so the shutdown can complete.
                _ = self.stop.wait_for(|s| *s) => return None,
                // A failed read is retried even if nothing new is committed.
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }
}

async fn stream(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    headers: HeaderMap,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<i64>());
    let cursor = match resume {
        Some(Ok(n)) if n >= 0 => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is the id of an event this stream sent (a number)",
            );
        }
        // A new subscriber starts from now.
        None => match state.store.alert_last_seq() {
            Ok(n) => n,
            Err(_) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot read alerts now; retry",
                );
            }
        },
    };
    let sub = Subscriber {
        within: within(&caller),
        cursor,
        ready: VecDeque::new(),
        changes: state.alerts.subscribe(),
        notices: state.notices.subscribe(),
        compartment: caller.compartment.clone(),
        stop: state.shutdown.subscribe(),
        state,
    };
    let events = futures_util::stream::unfold(sub, |mut sub| async move {
        let ev = sub.next().await?;
        Some((Ok::<_, Infallible>(ev), sub))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
