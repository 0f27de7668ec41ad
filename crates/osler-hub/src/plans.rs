//! Monitoring plans: which threshold each alert rule uses for a patient, set by whom, when
//! and why. Every change is kept, so the plan as of any past time can be read (an alert's
//! review needs the threshold that applied when it was raised).
//!
//! Routes: `GET /plans/{patient}[?at=ISO]` (the plan now, or as it stood at a time),
//! `GET /plans/{patient}/history` (every change, oldest first), `PUT /plans/{patient}/{rule}`
//! with `{"threshold": 88, "reason": "...", "author": "Practitioner/id"}` (`"threshold": null`
//! goes back to the rule's default; `"applies": false` says the rule does not apply to this
//! patient, `"applies": true` puts it back). A threshold outside the bounds the rule declares (each
//! cited) is refused, and so are a missing reason, an author who is not a Practitioner on this
//! hub and a patient it does not know. Until accounts exist (the access-control issue) the
//! author is declared by the client, not authenticated.
//! `GET /alerts/overrides/{patient}` is the same view as `GET /plans/{patient}` (older clients).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use osler_core::Timestamp;
use osler_registry::Kind;
use osler_rules::{RULES, Rule, STALENESS, Staleness};
use osler_store::alerts::{AlertWrite, PlanChange};
use serde_json::{Value, json};

use crate::access::{Ax, Cx, Routes, audited, sees};
use crate::alerts::error;
use crate::{AppState, now_ms};
use osler_auth::{Interaction, Policy};

type St = State<Arc<AppState>>;

/// Monitoring plans are the patient's CarePlan in scopes (`patient/CarePlan.r` to read one,
/// `.u` to change a threshold).
pub(crate) fn routes() -> Routes {
    use Interaction::*;
    Routes::new()
        .get("/plans/{patient}", Policy::Resource("CarePlan", Read), plan)
        .get(
            "/alerts/overrides/{patient}",
            Policy::Resource("CarePlan", Read),
            plan,
        )
        .get(
            "/plans/{patient}/history",
            Policy::Resource("CarePlan", Read),
            history,
        )
        .put(
            "/plans/{patient}/{rule}",
            Policy::Resource("CarePlan", Update),
            set,
        )
}

fn time(ms: i64) -> String {
    Timestamp::utc(ms).to_string()
}

/// Who set an entry of the plan, when and why (nothing for a default).
fn set_by(v: &mut Value, change: Option<&PlanChange>) {
    if let Some(c) = change {
        v["set_by"] = json!(c.author);
        v["set_at"] = json!(time(c.at_ms));
        v["reason"] = json!(c.reason);
    }
}

/// The last change of each plan entry (rule or reporting interval), from changes oldest first.
fn last_changes(changes: &[PlanChange]) -> BTreeMap<&str, &PlanChange> {
    let mut last: BTreeMap<&str, &PlanChange> = BTreeMap::new();
    for c in changes {
        last.insert(c.rule.as_str(), c);
    }
    last
}

/// A rule as a patient's plan has it.
pub(crate) struct InForce<'a> {
    pub rule: &'static Rule,
    /// The threshold in force; `None` where the plan switched the rule off.
    pub threshold: Option<f64>,
    /// The change that set it (none for the default).
    pub change: Option<&'a PlanChange>,
}

/// Every rule as the plan stands after `changes` (oldest first): the one reading of a plan,
/// for the API's plan and the dashboard's.
pub(crate) fn rules_in_force(changes: &[PlanChange]) -> Vec<InForce<'_>> {
    let last = last_changes(changes);
    RULES
        .iter()
        .map(|r| {
            let change = last.get(r.id).copied();
            let threshold = match change.and_then(|c| c.value) {
                Some(v) if r.is_off(v) => None,
                Some(v) => Some(v),
                None => Some(r.threshold),
            };
            InForce {
                rule: r,
                threshold,
                change,
            }
        })
        .collect()
}

/// The plan from its changes: for every rule, the default, the threshold in force and the
/// change that set it.
fn plan_json(patient: &str, changes: &[PlanChange], at: Option<i64>) -> Value {
    let last = last_changes(changes);
    let rules: serde_json::Map<String, Value> = rules_in_force(changes)
        .into_iter()
        .map(
            |InForce {
                 rule: r,
                 threshold,
                 change,
             }| {
                let mut v = json!({
                    "title": r.title,
                    "applies": threshold.is_some(),
                    "default": r.threshold,
                    "threshold": threshold,
                    "source": r.source,
                    "bounds": [r.bounds.0, r.bounds.1],
                    "bounds_source": r.bounds_source,
                });
                set_by(&mut v, change);
                (r.id.to_owned(), v)
            },
        )
        .collect();
    // How long each measurement may go without data (minutes) before "no data" is raised.
    let reporting: serde_json::Map<String, Value> = STALENESS
        .iter()
        .map(|r| {
            let change = last.get(r.id);
            let mut v = json!({
                "title": r.title,
                "metric": r.metric.info().key,
                "default_minutes": r.after_min,
                "minutes": change.and_then(|c| c.value).unwrap_or(r.after_min),
                "source": r.source,
                "bounds": [r.bounds.0, r.bounds.1],
            });
            set_by(&mut v, change.copied());
            (r.id.to_owned(), v)
        })
        .collect();
    let mut out = json!({ "patient": patient, "rules": rules, "reporting": reporting });
    if let Some(t) = at {
        out["at"] = json!(time(t));
    }
    out
}

/// What a plan sets: a rule's threshold, or a measurement's reporting interval (minutes).
#[derive(Clone, Copy)]
enum Entry {
    Rule(&'static Rule),
    Silence(&'static Staleness),
}

impl Entry {
    fn by_id(id: &str) -> Option<Entry> {
        Rule::by_id(id)
            .map(Entry::Rule)
            .or_else(|| Staleness::by_id(id).map(Entry::Silence))
    }

    fn id(self) -> &'static str {
        match self {
            Entry::Rule(r) => r.id,
            Entry::Silence(s) => s.id,
        }
    }

    fn default(self) -> f64 {
        match self {
            Entry::Rule(r) => r.threshold,
            Entry::Silence(s) => s.after_min,
        }
    }

    fn check_threshold(self, t: f64) -> Result<(), String> {
        match self {
            Entry::Rule(r) => r.check_threshold(t),
            Entry::Silence(s) => s.check(t),
        }
    }

    /// The threshold that switches it off (a reporting interval has none).
    fn off_threshold(self) -> Option<f64> {
        match self {
            Entry::Rule(r) => Some(r.off_threshold()),
            Entry::Silence(_) => None,
        }
    }
}

/// A patient outside the caller's compartment is not known to them.
fn unknown(patient: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("Patient/{patient} is not known to this hub"),
    )
}

async fn plan(
    State(state): St,
    axum::Extension(caller): Cx,
    Path(patient): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !sees(&caller, &patient) {
        return unknown(&patient);
    }
    let mut at = None;
    for (k, v) in osler_fhir::parse_query(raw.as_deref().unwrap_or("")).unwrap_or_default() {
        match k.as_str() {
            "at" => match osler_core::time::parse_span(&v.replace(' ', "+")) {
                // The plan as it stood at the end of the instant (or day) named.
                Ok(span) => at = Some(span.end_ms - 1),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("at: {e}")),
            },
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {k:?}; use at"),
                );
            }
        }
    }
    let store = state.store.clone();
    let p = patient.clone();
    match tokio::task::spawn_blocking(move || store.plan_changes(&p, at)).await {
        Ok(Ok(changes)) => axum::Json(plan_json(&patient, &changes, at)).into_response(),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the plan; retry",
        ),
    }
}

async fn history(
    State(state): St,
    axum::Extension(caller): Cx,
    Path(patient): Path<String>,
) -> Response {
    if !sees(&caller, &patient) {
        return unknown(&patient);
    }
    let store = state.store.clone();
    let p = patient.clone();
    match tokio::task::spawn_blocking(move || store.plan_changes(&p, None)).await {
        Ok(Ok(changes)) => axum::Json(json!({
            "patient": patient,
            "changes": changes.iter().map(|c| {
                let off = Rule::by_id(&c.rule).is_some_and(|r| c.value.is_some_and(|v| r.is_off(v)));
                json!({
                    "rule": c.rule,
                    "applies": !off,
                    "threshold": if off { None } else { c.value },
                    "author": c.author,
                    "reason": c.reason,
                    "at": time(c.at_ms),
                })
            }).collect::<Vec<_>>(),
        }))
        .into_response(),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the plan; retry",
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Change {
    /// `null` goes back to the rule's default.
    #[serde(default)]
    pub(crate) threshold: Option<f64>,
    /// `false`: the rule does not apply to this patient (it never fires for them; an open alert
    /// of it resolves at their next reading). `true` (the default) puts it back.
    #[serde(default)]
    pub(crate) applies: Option<bool>,
    pub(crate) reason: String,
    pub(crate) author: String,
}

/// `PUT /plans/{patient}/{rule}`; the dashboard's threshold form comes here too.
pub(crate) async fn set(
    State(state): St,
    axum::Extension(caller): Cx,
    axum::Extension(audit): Ax,
    Path((patient, rule)): Path<(String, String)>,
    body: Result<axum::Json<Change>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !sees(&caller, &patient) {
        return unknown(&patient);
    }
    let Some(r) = Entry::by_id(&rule) else {
        let ids: Vec<&str> = RULES
            .iter()
            .map(|r| r.id)
            .chain(STALENESS.iter().map(|s| s.id))
            .collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no rule {rule:?}; rules: {}", ids.join(", ")),
        );
    };
    let body = match body {
        Ok(axum::Json(b)) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{e}; the body is {{\"threshold\": <number or null>, \"reason\": \"...\", \"author\": \"Practitioner/<id>\"}}"
                ),
            );
        }
    };
    let off = body.applies == Some(false);
    if off && r.off_threshold().is_none() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "applies: a reporting interval cannot be switched off; set a longer one",
        );
    }
    if off && body.threshold.is_some() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "threshold: a rule that does not apply has no threshold; leave it out",
        );
    }
    if let Some(t) = body.threshold
        && let Err(why) = r.check_threshold(t)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("threshold: {why}"),
        );
    }
    // The rule switched off is stored as its off threshold, which every engine (the hub's, and
    // gateways' of any release) reads as "never fires".
    let value = if off {
        r.off_threshold()
    } else {
        body.threshold
    };
    let reason = body.reason.trim();
    if reason.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason: say why the threshold changes (it is kept with the plan)",
        );
    }
    let store = state.store.clone();
    let (p, author) = (patient.clone(), body.author.clone());
    let known = tokio::task::spawn_blocking(move || {
        let practitioner = author
            .strip_prefix("Practitioner/")
            .map(|id| store.resource(Kind::Practitioner, id))
            .transpose()?
            .flatten()
            .is_some();
        let patient = store.patient_known(&p)?;
        Ok::<_, osler_store::StoreError>((practitioner, patient))
    })
    .await;
    match known {
        Ok(Ok((_, false))) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("Patient/{patient} is not known to this hub"),
            );
        }
        Ok(Ok((false, _))) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "author: {:?} is not a Practitioner on this hub (write Practitioner/<id>)",
                    body.author
                ),
            );
        }
        Ok(Ok(_)) => {}
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed; nothing changed",
            );
        }
    }
    let at = now_ms();
    let write = AlertWrite::Override {
        patient: patient.clone(),
        rule: r.id().to_owned(),
        value,
        author: body.author.clone(),
        reason: reason.to_owned(),
        at_ms: at,
    };
    // The change and its audit entry (who, from where) are one commit.
    if state
        .store
        .write_alerts(vec![write], vec![audit.entry()])
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed; nothing changed",
        );
    }
    state.alerts.set_override(&patient, r.id(), value);
    audited(axum::Json(json!({
        "patient": patient, "rule": r.id(), "applies": !off,
        "threshold": if off { Value::Null } else { json!(body.threshold.unwrap_or(r.default())) },
        "default": r.default(),
        "set_by": body.author, "set_at": time(at), "reason": reason,
    }))
    .into_response())
}
