//! The hub's alert engine and its delivery.
//!
//! Every reading the hub accepts (new, or a resend it already had) is run through the rules
//! (`osler-rules`) at its own time, right after its commit and before the sender's answer; alert
//! changes are committed too, with their events (the alert's timeline, `alert_lifecycle`), then
//! the live stream is woken. Routes: `GET /alerts` (filters `patient`, `state`, `severity`,
//! `limit`), `GET /alerts/overrides` (every patient's thresholds, for gateways; plans
//! are set under `/plans`, see `plans`), and each alert as a
//! FHIR `Flag` (`/fhir/Flag/{id}`, `/fhir/Flag?patient=&status=`).
//!
//! After a restart, open alerts come back from the store and the engine's short history is
//! rebuilt from the readings of the last window, so that a condition in progress keeps its
//! duration and an alert raised before the restart is not raised again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_core::{Metric, Reading, Timestamp};
use osler_rules::{AlertEvent, Change, Engine, Overrides, Rule};
use osler_store::alerts::{AlertFilter, AlertRecord, AlertWrite};
use osler_store::{BatchMark, Rules, Store, WriteOp, WriteResult};
use serde_json::{Value, json};

use crate::access::{Cx, Routes, sees, within};
use crate::{AppState, now_ms};
use osler_auth::{Interaction, Policy};

/// The engine, the overrides, and the stream of changes.
pub(crate) struct Alerts {
    engine: Mutex<Engine>,
    overrides: Mutex<HashMap<String, Overrides>>,
    /// Bumped after every commit that added alert events: wakes the live streams, which read
    /// the new events from the store (see `alert_lifecycle`).
    changes: tokio::sync::watch::Sender<u64>,
    /// Told after every such commit too: escalation timers may have been added or ended.
    timers: tokio::sync::Notify,
    /// And so is the webhook deliverer: deliveries may have been queued.
    deliveries: tokio::sync::Notify,
}

/// How far back the engine's history is rebuilt at start-up, per metric: a little more than
/// the longest rule on that metric needs.
fn warm_up_since(now: i64, metric: Metric) -> i64 {
    match metric {
        Metric::BodyWeight => now - 4 * 24 * 3_600_000,
        _ => now - 30 * 60_000,
    }
}

impl Alerts {
    /// Restores open alerts and overrides from the store and rebuilds recent history.
    pub(crate) fn load(store: &Store) -> Result<Alerts, osler_store::StoreError> {
        let mut engine = Engine::new();
        let mut overrides: HashMap<String, Overrides> = HashMap::new();
        for (patient, rule, value) in store.overrides()? {
            overrides.entry(patient).or_default().insert(rule, value);
        }
        let now = now_ms();
        for s in store.recent(&|m| warm_up_since(now, m))? {
            // Replayed silently: these readings were evaluated when they arrived.
            let _ = engine.observe(&s.reading, overrides.get(s.reading.patient.as_str()));
        }
        // The store is the truth about what is open: close what the replay opened but the
        // store has resolved (or never had), open what the store has open.
        let open = store.alerts(&AlertFilter {
            state: Some("raised".into()),
            limit: usize::MAX >> 1,
            ..AlertFilter::default()
        })?;
        engine.retain_open(|patient, rule| {
            open.iter().any(|a| a.patient == patient && a.rule == rule)
        });
        for a in &open {
            engine.restore_open(&a.patient, &a.rule, a.value, a.raised_reading_ms);
        }
        Ok(Alerts {
            engine: Mutex::new(engine),
            overrides: Mutex::new(overrides),
            changes: tokio::sync::watch::Sender::new(0),
            timers: tokio::sync::Notify::new(),
            deliveries: tokio::sync::Notify::new(),
        })
    }

    /// Stores readings and the alert changes the rules find in them in one commit (one
    /// fsync), then publishes what changed: the one way every source of readings (FHIR
    /// Observation, Bundle, gateway batch) stores them. The rules run inside the store's commit,
    /// in commit order, on the readings the commit left stored; `WriteResult::alerts` is
    /// consumed by the publishing.
    pub(crate) async fn write(
        self: &Arc<Self>,
        store: &Store,
        ops: Vec<WriteOp>,
        atomic: bool,
        batch: Option<BatchMark>,
        audit: Vec<String>,
    ) -> Result<WriteResult, osler_store::StoreError> {
        let (rules, raised) = self.rules();
        let mut result = store
            .write_with_rules(ops, atomic, batch, rules, audit)
            .await?;
        self.publish_raised(&raised, &mut result);
        Ok(result)
    }

    /// Registry writes, with the rules judging the held readings an assignment releases in
    /// the same commit.
    pub(crate) async fn write_resources(
        self: &Arc<Self>,
        store: &Store,
        writes: Vec<osler_registry::ResourceWrite>,
        audit: Vec<String>,
    ) -> Result<WriteResult, osler_store::StoreError> {
        let (rules, raised) = self.rules();
        let mut result = store.write_resources(writes, Some(rules), audit).await?;
        self.publish_raised(&raised, &mut result);
        Ok(result)
    }

    /// Readings and registry resources of one Bundle, in one commit with their alerts.
    pub(crate) async fn write_all(
        self: &Arc<Self>,
        store: &Store,
        ops: Vec<WriteOp>,
        writes: Vec<osler_registry::ResourceWrite>,
        atomic: bool,
        audit: Vec<String>,
    ) -> Result<WriteResult, osler_store::StoreError> {
        let (rules, raised) = self.rules();
        let mut result = store.write_all(ops, writes, atomic, rules, audit).await?;
        self.publish_raised(&raised, &mut result);
        Ok(result)
    }

    /// The rules as the store runs them inside a commit, and where the events they raised are
    /// left for publishing after it.
    fn rules(self: &Arc<Self>) -> (Rules, Arc<Mutex<Vec<AlertEvent>>>) {
        let raised: Arc<Mutex<Vec<AlertEvent>>> = Arc::default();
        let (alerts, out) = (self.clone(), raised.clone());
        let rules: Rules = Box::new(move |readings| {
            let events = alerts.evaluate(readings);
            let w = writes(&events, "hub");
            *out.lock().unwrap_or_else(|p| p.into_inner()) = events;
            w
        });
        (rules, raised)
    }

    fn publish_raised(&self, raised: &Mutex<Vec<AlertEvent>>, result: &mut WriteResult) {
        let events = std::mem::take(&mut *raised.lock().unwrap_or_else(|p| p.into_inner()));
        self.publish(&events, std::mem::take(&mut result.alerts));
    }

    /// Runs readings through the rules, each at its own time.
    fn evaluate(&self, readings: &[&Reading]) -> Vec<AlertEvent> {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let overrides = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        readings
            .iter()
            .flat_map(|r| engine.observe(r, overrides.get(r.patient.as_str())))
            .collect()
    }

    /// Publishes the alerts a write changed (`changed[i]` is the outcome of `events[i]`): in
    /// the log, and to the live streams (the events themselves were stored in the commit).
    pub(crate) fn publish(&self, events: &[AlertEvent], changed: Vec<Option<AlertRecord>>) {
        let mut any = false;
        for (event, record) in events.iter().zip(changed) {
            let Some(record) = record else { continue };
            let change = event.change.as_str();
            tracing::info!(patient = %record.patient, rule = %record.rule, severity = %record.severity, change, late = record.late, source = %record.source, "alert");
            any = true;
        }
        if any {
            self.changed();
        }
    }

    /// Wakes the live streams: alert events were committed.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        // A permit is kept if the escalator is not waiting yet, so no change is missed.
        self.timers.notify_one();
        self.deliveries.notify_one();
    }

    /// Resolves after the next commit of alert events (for the webhook deliverer).
    pub(crate) fn deliveries_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.deliveries.notified()
    }

    /// Resolves after the next commit of alert events (for the escalator).
    pub(crate) fn timers_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.timers.notified()
    }

    /// What a live stream waits on.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A patient's own value for a rule (or reporting interval), if their plan sets one.
    pub(crate) fn override_of(&self, patient: &str, rule: &str) -> Option<f64> {
        self.overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(patient)
            .and_then(|o| o.get(rule).copied())
    }

    pub(crate) fn set_override(&self, patient: &str, rule: &str, value: Option<f64>) {
        let mut o = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => {
                o.entry(patient.to_owned())
                    .or_default()
                    .insert(rule.to_owned(), v);
            }
            None => {
                if let Some(p) = o.get_mut(patient) {
                    p.remove(rule);
                }
            }
        }
    }
}

/// The store writes for rule events.
pub(crate) fn writes(events: &[AlertEvent], source: &str) -> Vec<AlertWrite> {
    let at = now_ms();
    events
        .iter()
        .map(|e| match e.change {
            Change::Updated => AlertWrite::Update {
                patient: e.patient.clone(),
                rule: e.rule.to_owned(),
                value: e.value,
                higher_is_worse: Rule::by_id(e.rule)
                    .is_none_or(|r| r.direction == osler_rules::Direction::Above),
                reading_ms: e.reading_ms,
                at_ms: at,
            },
            Change::Raised => AlertWrite::Raise {
                patient: e.patient.clone(),
                rule: e.rule.to_owned(),
                severity: e.severity.as_str().to_owned(),
                reading_ms: e.reading_ms,
                at_ms: at,
                value: e.value,
                threshold: e.threshold,
                late: e.late,
                source: source.to_owned(),
            },
            Change::Resolved => AlertWrite::Resolve {
                patient: e.patient.clone(),
                rule: e.rule.to_owned(),
                reading_ms: e.reading_ms,
                at_ms: at,
            },
        })
        .collect()
}

/// A time as the hub's JSON writes it (UTC, ISO 8601).
pub(crate) fn time(ms: i64) -> String {
    Timestamp::utc(ms).to_string()
}

/// The JSON of an alert on the stream and in `/alerts`.
pub(crate) fn alert_json(a: &AlertRecord, event: &str) -> Value {
    let title = title_of(&a.rule).unwrap_or("");
    json!({
        "event": event,
        "id": a.id,
        "patient": a.patient,
        "rule": a.rule,
        "title": title,
        "severity": a.severity,
        "state": a.state,
        "reading_time": time(a.raised_reading_ms),
        "raised_at": time(a.raised_at_ms),
        "value": a.value,
        "threshold": a.threshold,
        "late": a.late,
        "source": a.source,
        "resolved_reading_time": a.resolved_reading_ms.map(time),
        "resolved_at": a.resolved_at_ms.map(time),
    })
}

/// A rule's title: a reading rule's, or a reporting interval's ("no data").
pub(crate) fn title_of(rule: &str) -> Option<&'static str> {
    Rule::by_id(rule)
        .map(|r| r.title)
        .or_else(|| osler_rules::Staleness::by_id(rule).map(|s| s.title))
        .or_else(|| osler_rules::Emergency::by_id(rule).map(|e| e.title))
}

pub(crate) fn flag_json(a: &AlertRecord) -> Value {
    let title = title_of(&a.rule).unwrap_or(a.rule.as_str());
    osler_fhir::resources::flag(&osler_fhir::resources::FlagInput {
        id: a.id,
        patient: &a.patient,
        rule: &a.rule,
        title,
        severity: &a.severity,
        active: a.state == "raised",
        start: &time(a.raised_reading_ms),
        end: a.resolved_reading_ms.map(time).as_deref(),
        value: a.value,
        threshold: a.threshold,
    })
}

/// Alerts are Flags in scopes (`patient/Flag.s` lists and streams them); every patient's
/// thresholds at once are for gateways and whole-hub programs.
pub(crate) fn routes() -> Routes {
    use Interaction::*;
    Routes::new()
        .get("/alerts", Policy::Resource("Flag", Search), list)
        .get(
            "/alerts/overrides",
            Policy::Everyone("CarePlan", Search),
            all_overrides,
        )
        .get("/fhir/Flag/{id}", Policy::Resource("Flag", Read), read_flag)
        .get("/fhir/Flag", Policy::Resource("Flag", Search), search_flags)
}

/// A route's refusal from a body reader's `(status, why)`.
pub(crate) fn refused((code, why): (u16, String)) -> Response {
    error(
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        why,
    )
}

/// The answer when the registry has no `kind/id` (`status`, with `why`) or cannot be read
/// (503); `None` when it is there.
pub(crate) fn missing(
    state: &AppState,
    kind: osler_registry::Kind,
    id: &str,
    status: StatusCode,
    why: impl FnOnce() -> String,
) -> Option<Response> {
    match state.store.resource(kind, id) {
        Ok(Some(_)) => None,
        Ok(None) => Some(error(status, why())),
        Err(_) => Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the registry now; retry",
        )),
    }
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": msg.into() }))).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    patient: Option<String>,
    state: Option<String>,
    severity: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "unknown or malformed parameter; use patient, state (raised|resolved), severity (warning|urgent|critical), limit",
        );
    };
    if q.state
        .as_deref()
        .is_some_and(|s| s != "raised" && s != "resolved")
    {
        return error(StatusCode::BAD_REQUEST, "state is raised or resolved");
    }
    if q.severity
        .as_deref()
        .is_some_and(|s| osler_rules::Severity::parse(s).is_none())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "severity is warning, urgent or critical",
        );
    }
    let filter = AlertFilter {
        patient: q.patient,
        state: q.state,
        severity: q.severity,
        limit: q.limit.unwrap_or(100).min(10_000),
        before_id: None,
        within: within(&caller),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.alerts(&filter)).await {
        Ok(Ok(list)) => axum::Json(json!({ "alerts": list.iter().map(|a| {
                let mut v = alert_json(a, &a.state);
                v["muted"] = crate::alert_lifecycle::muted_json(&state, a);
                v
            }).collect::<Vec<_>>() }))
        .into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read alerts"),
    }
}

/// Every per-patient threshold, for gateways (they send what is near a patient's own threshold
/// and evaluate their critical rules with it).
async fn all_overrides(State(state): State<Arc<AppState>>) -> Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.overrides()).await {
        Ok(Ok(list)) => axum::Json(json!({
            "overrides": list
                .into_iter()
                .map(|(patient, rule, threshold)| json!({"patient": patient, "rule": rule, "threshold": threshold}))
                .collect::<Vec<_>>(),
        }))
        .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "the store failed; retry"})),
        )
            .into_response(),
    }
}

async fn read_flag(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    Path(id): Path<String>,
) -> Response {
    let not_found = || {
        crate::reply::ApiError(osler_fhir::FhirError::new(
            osler_fhir::ErrorKind::NotFound,
            format!(
                "Flag/{} is not known",
                id.chars().take(32).collect::<String>()
            ),
        ))
        .into_response()
    };
    let Ok(n) = id.parse::<i64>() else {
        return not_found();
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.alert(n)).await {
        Ok(Ok(Some(a))) if sees(&caller, &a.patient) => {
            crate::reply::fhir(StatusCode::OK, &flag_json(&a))
        }
        Ok(Ok(_)) => not_found(),
        _ => crate::reply::ApiError(osler_fhir::FhirError::new(
            osler_fhir::ErrorKind::Internal,
            "cannot read alerts",
        ))
        .into_response(),
    }
}

async fn search_flags(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let bad = |m: &str| {
        crate::reply::ApiError(osler_fhir::FhirError::at(
            osler_fhir::ErrorKind::BadParameter,
            "Flag",
            m,
        ))
        .into_response()
    };
    let Ok(params) = osler_fhir::parse_query(raw.as_deref().unwrap_or("")) else {
        return bad("malformed query string");
    };
    let mut filter = AlertFilter {
        limit: 50,
        within: within(&caller),
        ..AlertFilter::default()
    };
    for (k, v) in &params {
        match k.as_str() {
            "patient" | "subject" => {
                filter.patient = Some(v.trim_start_matches("Patient/").to_owned())
            }
            "status" => {
                filter.state = Some(match v.as_str() {
                    "active" => "raised".into(),
                    "inactive" => "resolved".into(),
                    _ => return bad("status is active or inactive"),
                })
            }
            "_count" => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => filter.limit = n,
                _ => return bad("_count is a number from 1 to 1000"),
            },
            "_cursor" => match v.parse::<i64>() {
                Ok(id) => filter.before_id = Some(id),
                Err(_) => return bad("_cursor is the one the previous page's next link gives"),
            },
            "_format" | "_pretty" | "_summary" | "_elements" => {}
            _ => return bad("supported parameters: patient, subject, status, _count"),
        }
    }
    // One more than the page, to know whether there is a next one.
    let page = filter.limit;
    filter.limit += 1;
    let store = state.store.clone();
    let Ok(Ok(list)) = tokio::task::spawn_blocking(move || store.alerts(&filter)).await else {
        return crate::reply::ApiError(osler_fhir::FhirError::new(
            osler_fhir::ErrorKind::Internal,
            "cannot read alerts",
        ))
        .into_response();
    };
    let mut list = list;
    let more = list.len() > page;
    list.truncate(page);
    let base = crate::fhir_api::base_url(&state, &headers);
    let entries = list
        .iter()
        .map(|a| (format!("{base}/Flag/{}", a.id), flag_json(a)))
        .collect();
    let mut links = vec![(
        "self",
        format!("{base}/Flag?{}", osler_fhir::encode_query(&params)),
    )];
    if more && let Some(last) = list.last() {
        let mut next: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "_cursor")
            .cloned()
            .collect();
        next.push(("_cursor".into(), last.id.to_string()));
        links.push((
            "next",
            format!("{base}/Flag?{}", osler_fhir::encode_query(&next)),
        ));
    }
    // No total: counting every alert of a population on every page is not worth its cost.
    crate::reply::fhir(
        StatusCode::OK,
        &osler_fhir::bundle::searchset(None, &links, entries),
    )
}
