//! Webhooks, after the Standard Webhooks conventions: every alert event of the patients an
//! endpoint may see is POSTed to it as JSON with `webhook-id` (the same on every retry),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 over
//! `id.timestamp.body` with the endpoint's `whsec_` secret).
//!
//! Deliveries are queued in the store in the event's own transaction and sent by the
//! deliverer task; a failure is retried on a schedule (short for a critical alert: a clinical
//! alert must not wait a day), then dead-lettered, visible under `/webhooks/deliveries` and
//! replayable. A 410 disables the endpoint. A critical alert whose delivery died says so on
//! its timeline (and so on the live stream).
//!
//! Routes (operators: callers who see every patient): `POST /webhooks`, `GET /webhooks`,
//! `DELETE /webhooks/{id}`, `GET /webhooks/deliveries?state=`,
//! `POST /webhooks/deliveries/{id}/replay`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use osler_auth::{Interaction, Policy};
use osler_store::webhooks::{Attempt, Delivery, Endpoint};
use serde_json::{Value, json};

use crate::access::{Ax, Cx, Routes, audited};
use crate::alerts::{error, missing, refused};
use crate::{AppState, now_ms};

/// When failed deliveries are tried again (delays after each failure); past the last, a
/// delivery is dead. Critical alerts get the short budget.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookRetries {
    pub critical_ms: Vec<i64>,
    pub other_ms: Vec<i64>,
}

impl Default for WebhookRetries {
    /// Critical: 5 s, 30 s, 2 min (dead within three minutes, when a phone call is due). Others:
    /// the start of the Standard Webhooks example schedule (5 s, 5 min, 30 min, 2 h, 5 h).
    fn default() -> WebhookRetries {
        WebhookRetries {
            critical_ms: vec![5_000, 30_000, 120_000],
            other_ms: vec![5_000, 300_000, 1_800_000, 7_200_000, 18_000_000],
        }
    }
}

impl WebhookRetries {
    /// Parses a comma-separated schedule such as `5s,30s,2m`.
    pub fn parse(text: &str) -> Result<Vec<i64>, String> {
        text.split(',')
            .map(|d| {
                osler_auth::token::parse_duration(d)
                    .ok_or_else(|| format!("{d:?}: a delay is a number with ms, s, m or h"))
            })
            .collect()
    }
}

/// Operators only: an endpoint can receive any patient's alerts.
pub(crate) fn routes() -> Routes {
    use Interaction::*;
    let ops = |i| Policy::Everyone(osler_auth::OPERATIONS, i);
    Routes::new()
        .post("/webhooks", ops(Create), add)
        .get("/webhooks", ops(Search), list)
        .delete("/webhooks/{id}", ops(Delete), remove)
        .get("/webhooks/deliveries", ops(Search), deliveries)
        .post("/webhooks/deliveries/{id}/replay", ops(Update), replay)
}

/// The body of `POST /webhooks`.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    /// Only this care team's patients (default: every patient).
    pub team: Option<String>,
}

/// Reads the body of `POST /webhooks` as the route does: the endpoint asked for (its address
/// checked), or the HTTP status and why not. Public for the fuzz target.
pub fn parse_endpoint(body: &[u8]) -> Result<NewEndpoint, (u16, String)> {
    let e: NewEndpoint = serde_json::from_slice(body).map_err(|e| {
        (
            400,
            format!("{e}; the body is {{\"url\": \"https://...\", \"team\": \"<CareTeam id>\"}}"),
        )
    })?;
    check_url(&e.url).map_err(|why| (422, why))?;
    Ok(e)
}

/// Plain HTTP only to this machine (a receiver beside the hub); anything else over HTTPS.
fn check_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = r.split(['/', '?']).next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if !["127.0.0.1", "localhost", "[::1]"].contains(&host) {
            return Err("url: webhooks go over https (plain http only to this machine)".into());
        }
        r
    } else {
        return Err("url: an https:// address".into());
    };
    if rest.is_empty() || rest.starts_with('/') || url.len() > 2000 {
        return Err("url: an address with a host".into());
    }
    Ok(())
}

fn endpoint_json(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "url": e.url,
        "team": e.team,
        "created": osler_core::Timestamp::utc(e.created_ms).to_string(),
        "disabled": e.disabled_ms.map(|t| osler_core::Timestamp::utc(t).to_string()),
        "disabled_why": e.disabled_why,
    })
}

async fn add(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    axum::Extension(audit): Ax,
    body: axum::body::Bytes,
) -> Response {
    let body = match parse_endpoint(&body) {
        Ok(b) => b,
        Err(r) => return refused(r),
    };
    if let Some(t) = &body.team {
        let why = || format!("team: CareTeam/{t} is not known");
        let kind = osler_registry::Kind::CareTeam;
        if let Some(r) = missing(&state, kind, t, StatusCode::UNPROCESSABLE_ENTITY, why) {
            return r;
        }
    }
    let mut key = [0u8; 24];
    let mut id = [0u8; 8];
    if getrandom::fill(&mut key).is_err() || getrandom::fill(&mut id).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a secret; retry",
        );
    }
    let e = Endpoint {
        id: format!("ep_{}", hex(&id)),
        url: body.url,
        secret: format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        ),
        team: body.team,
        created_ms: now_ms(),
        disabled_ms: None,
        disabled_why: None,
    };
    // Not the address: a receiver's URL often carries its own secret.
    tracing::info!(endpoint = %e.id, by = %caller.subject, "webhook endpoint added");
    match state.store.add_webhook(e.clone(), audit.entry()).await {
        Ok(()) => {
            // The secret is shown once, here: the receiver needs it to check signatures.
            let mut v = endpoint_json(&e);
            v["secret"] = json!(e.secret);
            audited((StatusCode::CREATED, axum::Json(v)).into_response())
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed; nothing changed, retry",
        ),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    match state.store.webhooks() {
        Ok(all) => {
            axum::Json(json!({"endpoints": all.iter().map(endpoint_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the endpoints now; retry",
        ),
    }
}

async fn remove(
    State(state): State<Arc<AppState>>,
    axum::Extension(audit): Ax,
    Path(id): Path<String>,
) -> Response {
    match state
        .store
        .disable_webhook(id.clone(), now_ms(), audit.entry())
        .await
    {
        Ok(true) => audited(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no enabled endpoint {id}")),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed; nothing changed, retry",
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    state: Option<String>,
    limit: Option<usize>,
}

fn delivery_json(d: &Delivery) -> Value {
    let t = |ms: i64| osler_core::Timestamp::utc(ms).to_string();
    json!({
        "id": d.id,
        "endpoint": d.endpoint,
        "webhook_id": d.msg_id,
        "event_seq": d.seq,
        "critical": d.critical,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt": (d.state == "pending").then(|| t(d.next_ms)),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created": t(d.created_ms),
        "done": d.done_ms.map(t),
    })
}

async fn deliveries(
    State(state): State<Arc<AppState>>,
    q: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "parameters: state (pending|delivered|dead), limit",
        );
    };
    if q.state
        .as_deref()
        .is_some_and(|s| !["pending", "delivered", "dead"].contains(&s))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "state is pending, delivered or dead",
        );
    }
    match state
        .store
        .webhook_deliveries(q.state.as_deref(), q.limit.unwrap_or(100).min(1000))
    {
        Ok(all) => {
            axum::Json(json!({"deliveries": all.iter().map(delivery_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the deliveries now; retry",
        ),
    }
}

async fn replay(
    State(state): State<Arc<AppState>>,
    axum::Extension(audit): Ax,
    Path(id): Path<String>,
) -> Response {
    let Ok(n) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "no such delivery");
    };
    match state.store.replay_webhook(n, now_ms(), audit.entry()).await {
        Ok(true) => {
            state.alerts.changed();
            audited(axum::Json(json!({"id": n, "state": "pending"})).into_response())
        }
        Ok(false) => error(
            StatusCode::CONFLICT,
            format!("delivery {n} is not dead (or its endpoint is disabled): nothing to replay"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed; nothing changed, retry",
        ),
    }
}

/// `v1,` + base64 HMAC-SHA256 of `id.timestamp.body` under the secret's key bytes.
pub(crate) fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let tag = ring::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    ))
}

/// The body of a delivery: the event as the live stream carries it.
fn payload(state: &AppState, seq: i64) -> Option<String> {
    let e = state
        .store
        .alert_events_after(seq - 1, 1, None)
        .ok()?
        .0
        .into_iter()
        .next()
        .filter(|e| e.seq == seq)?;
    let a = state.store.alert(e.alert).ok().flatten()?;
    Some(
        json!({
            "type": format!("alert.{}", e.kind),
            "timestamp": osler_core::Timestamp::utc(e.at_ms).to_string(),
            "data": crate::alert_lifecycle::event_json(&e, &a),
        })
        .to_string(),
    )
}

/// What a receiver answered: a status, or the status (if any) and why it failed.
type Sent = Result<u16, (Option<u16>, String)>;

/// One attempt: the outcome and how long the receiver asked us to wait (`Retry-After`).
fn send(agent: &ureq::Agent, url: &str, id: &str, secret: &str, body: &str) -> (Sent, Option<i64>) {
    let ts = now_ms() / 1000;
    let Some(sig) = signature(secret, id, ts, body) else {
        return (
            Err((None, "the endpoint's secret is unreadable".into())),
            None,
        );
    };
    let r = agent
        .post(url)
        .set("content-type", "application/json")
        .set("webhook-id", id)
        .set("webhook-timestamp", &ts.to_string())
        .set("webhook-signature", &sig)
        .send_string(body);
    match r {
        Ok(resp) => (Ok(resp.status()), None),
        Err(ureq::Error::Status(code, resp)) => {
            let after = resp
                .header("retry-after")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|s| s.clamp(0, 3600) * 1000);
            (Err((Some(code), format!("HTTP {code}"))), after)
        }
        // The kind of failure only: ureq's full message names the URL, which may carry the
        // receiver's secret, and this text is logged and listed.
        Err(ureq::Error::Transport(t)) => (Err((None, t.kind().to_string())), None),
    }
}

/// What an attempt comes to, given the retry schedule.
fn judge(
    d: &Delivery,
    result: Sent,
    after: Option<i64>,
    retries: &WebhookRetries,
    now: i64,
) -> Attempt {
    match result {
        Ok(status) if (200..300).contains(&status) => Attempt::Delivered { status },
        Ok(status) => judge(
            d,
            Err((Some(status), format!("HTTP {status}"))),
            after,
            retries,
            now,
        ),
        Err((Some(410), _)) => Attempt::Gone,
        Err((status, error)) => {
            let schedule = if d.critical {
                &retries.critical_ms
            } else {
                &retries.other_ms
            };
            match schedule.get(d.attempts as usize) {
                Some(delay) => Attempt::Retry {
                    status,
                    error,
                    next_ms: now + (*delay).max(after.unwrap_or(0)),
                },
                None => Attempt::Dead { status, error },
            }
        }
    }
}

/// At most this many deliveries are sent at once (one slow receiver cannot hold the rest
/// for longer than its timeout).
const AT_ONCE: usize = 16;
/// A receiver must answer within this.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends due deliveries until the hub shuts down.
pub(crate) async fn deliverer(state: Arc<AppState>) {
    let mut stop = state.shutdown.subscribe();
    let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
    loop {
        let now = now_ms();
        let wait = match state.store.next_webhook_due() {
            Ok(Some(due)) => (due - now).clamp(0, 5_000),
            Ok(None) => 5_000,
            Err(_) => 5_000,
        };
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = state.alerts.deliveries_changed() => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let due = match state.store.due_webhooks(now_ms(), AT_ONCE) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "the webhook queue cannot be read; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut sends = tokio::task::JoinSet::new();
        for d in due {
            let (state, agent) = (state.clone(), agent.clone());
            sends.spawn(async move { attempt(&state, &agent, d).await });
        }
        while sends.join_next().await.is_some() {}
    }
}

async fn attempt(state: &Arc<AppState>, agent: &ureq::Agent, d: Delivery) {
    let endpoint = match state.store.webhook(&d.endpoint) {
        Ok(Some(e)) => e,
        _ => return,
    };
    let Some(body) = d.payload.clone().or_else(|| payload(state, d.seq)) else {
        tracing::warn!(
            delivery = d.id,
            "the event of a delivery cannot be read; retrying later"
        );
        return;
    };
    let (url, id, secret, sent) = (
        endpoint.url.clone(),
        d.msg_id.clone(),
        endpoint.secret.clone(),
        body.clone(),
    );
    let agent = agent.clone();
    let (result, after) =
        tokio::task::spawn_blocking(move || send(&agent, &url, &id, &secret, &sent))
            .await
            .unwrap_or_else(|_| (Err((None, "the sender stopped".into())), None));
    let outcome = judge(&d, result, after, &state.retries, now_ms());
    match &outcome {
        Attempt::Delivered { status } => {
            tracing::debug!(delivery = d.id, status, "webhook delivered")
        }
        Attempt::Retry { error, .. } => {
            tracing::warn!(delivery = d.id, endpoint = %d.endpoint, %error, "webhook failed; will retry")
        }
        Attempt::Dead { error, .. } => {
            tracing::error!(delivery = d.id, endpoint = %d.endpoint, %error, "webhook dead-lettered")
        }
        Attempt::Gone => {
            tracing::warn!(endpoint = %d.endpoint, "webhook endpoint gone (410): disabled")
        }
    }
    let dead = matches!(outcome, Attempt::Dead { .. } | Attempt::Gone);
    // A critical alert that could not be delivered says so where people look.
    let note = (dead && d.critical).then(|| {
        format!(
            "webhook {} could not be delivered after {} attempts",
            d.endpoint,
            d.attempts + 1
        )
    });
    match state
        .store
        .webhook_attempt(d.id, body, outcome, now_ms(), d.seq, note)
        .await
    {
        Ok(()) => {
            if dead {
                state.metrics.webhook_dead();
                state.alerts.changed();
            }
        }
        Err(e) => {
            tracing::error!(error = %e, delivery = d.id, "a webhook attempt could not be recorded")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_standard_webhooks() {
        // The example in the Standard Webhooks specification: secret, id, timestamp, body and
        // the signature it gives.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let sig = signature(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            sig.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn only_loopback_may_be_plain_http() {
        assert!(check_url("https://hooks.example.org/osler").is_ok());
        assert!(check_url("http://127.0.0.1:9000/h").is_ok());
        assert!(check_url("http://localhost/h").is_ok());
        assert!(check_url("http://hooks.example.org/h").is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https:///nohost").is_err());
    }
}
