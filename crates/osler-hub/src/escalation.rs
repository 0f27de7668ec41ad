//! Escalation policies per care team (`PUT|GET /escalation/{team}`), and the timer that runs
//! their steps.
//!
//! The timers are rows in the store (`osler_store::escalation`): the escalator sleeps until
//! the earliest is due (or a commit adds one), runs every due step in one transaction with an
//! audit entry per alert, and wakes the live stream. A hub restarted in the middle of a wait
//! finds the row and runs the step when it was due.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use osler_audit::{Action, Outcome, Record};
use osler_auth::{Interaction, Policy};
use osler_registry::Kind;
use osler_store::escalation::{EscalationPolicy, Step, check};
use serde_json::{Value, json};

use crate::access::{Ax, Cx, Routes, audited};
use crate::alerts::{error, missing, refused};
use crate::{AppState, now_ms};

/// A team's escalation policy is part of the team: reading it is reading the CareTeam,
/// setting it is updating the CareTeam (administrators, by the roles' caps).
pub(crate) fn routes() -> Routes {
    use Interaction::*;
    Routes::new()
        .get(
            "/escalation/{team}",
            Policy::Resource("CareTeam", Read),
            get_policy,
        )
        .put(
            "/escalation/{team}",
            Policy::Resource("CareTeam", Update),
            put_policy,
        )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    notify: Vec<String>,
    wait_minutes: f64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    steps: Vec<StepBody>,
    #[serde(default)]
    repeat: u32,
}

const POLICY_HELP: &str = "the body is {\"steps\": [{\"notify\": [\"team\" | \"Practitioner/{id}\" | \"role:admin\"], \"wait_minutes\": N}, ...], \"repeat\": R}";

/// Reads the body of `PUT /escalation/{team}` as the route does: the policy, checked, or the
/// HTTP status and why not. Public for the fuzz target.
pub fn parse_policy(body: &[u8]) -> Result<EscalationPolicy, (u16, String)> {
    let body: PolicyBody =
        serde_json::from_slice(body).map_err(|e| (400, format!("{e}; {POLICY_HELP}")))?;
    let mut steps = Vec::new();
    for s in body.steps {
        if !s.wait_minutes.is_finite() || s.wait_minutes <= 0.0 {
            return Err((422, "wait_minutes must be a positive number".into()));
        }
        steps.push(Step {
            notify: s.notify,
            // Saturates for an absurd wait, which the check below refuses.
            wait_ms: (s.wait_minutes * 60_000.0).round() as i64,
        });
    }
    let policy = EscalationPolicy {
        steps,
        repeat: body.repeat,
    };
    check(&policy).map_err(|why| (422, why))?;
    Ok(policy)
}

fn policy_json(p: &EscalationPolicy) -> Value {
    json!({
        "steps": p.steps.iter().map(|s| json!({
            "notify": s.notify,
            "wait_minutes": s.wait_ms as f64 / 60_000.0,
        })).collect::<Vec<_>>(),
        "repeat": p.repeat,
    })
}

/// The answer to give when the team is not there to have a policy (`None`: it is).
fn no_team(state: &AppState, team: &str) -> Option<Response> {
    missing(state, Kind::CareTeam, team, StatusCode::NOT_FOUND, || {
        format!("CareTeam/{team} is not known")
    })
}

async fn get_policy(State(state): State<Arc<AppState>>, Path(team): Path<String>) -> Response {
    if let Some(r) = no_team(&state, &team) {
        return r;
    }
    match state.store.escalation_policy(&team) {
        Ok(Some(p)) => {
            axum::Json(json!({"team": team, "policy": policy_json(&p), "default": false}))
                .into_response()
        }
        Ok(None) => axum::Json(json!({
            "team": team,
            "default": true,
            "policy": {
                "critical": policy_json(&EscalationPolicy::default_for("critical")),
                "urgent": policy_json(&EscalationPolicy::default_for("urgent")),
                "warning": policy_json(&EscalationPolicy::default_for("warning")),
            },
        }))
        .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot read the policy now; retry",
        ),
    }
}

async fn put_policy(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    axum::Extension(audit): Ax,
    Path(team): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let policy = match parse_policy(&body) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    if let Some(r) = no_team(&state, &team) {
        return r;
    }
    // A step that names someone the registry does not know would notify nobody, silently.
    for p in policy
        .steps
        .iter()
        .flat_map(|s| &s.notify)
        .filter_map(|t| t.strip_prefix("Practitioner/"))
    {
        let why = || format!("Practitioner/{p} is not known to this hub");
        if let Some(r) = missing(
            &state,
            Kind::Practitioner,
            p,
            StatusCode::UNPROCESSABLE_ENTITY,
            why,
        ) {
            return r;
        }
    }
    let at = now_ms();
    match state
        .store
        .set_escalation(team.clone(), policy.clone(), caller.subject.clone(), at, audit.entry())
        .await
    {
        Ok(()) => audited(
            axum::Json(json!({"team": team, "policy": policy_json(&policy), "default": false, "set_by": caller.subject}))
                .into_response(),
        ),
        Err(e) => {
            tracing::error!(error = %e, %team, "an escalation policy could not be stored");
            error(StatusCode::SERVICE_UNAVAILABLE, "the store failed; nothing changed, retry")
        }
    }
}

/// The audit entry of an escalation step: the hub itself acted.
fn step_entry(a: &osler_store::alerts::AlertRecord) -> String {
    osler_fhir::audit::entry_text(&Record {
        recorded_ms: now_ms(),
        event: "escalation".into(),
        action: Action::Execute,
        outcome: Outcome::Success,
        outcome_text: None,
        who: "osler:escalation".into(),
        role: None,
        network: None,
        patient: Some(a.patient.clone()),
        what: Some(format!("alert {}", a.id)),
        query: None,
    })
}

/// The longest the escalator sleeps without looking (a commit that adds a timer wakes it
/// sooner; this bounds what a missed wake-up could cost).
const LOOK_EVERY_MS: i64 = 5_000;

/// Runs escalation steps when they are due, until the hub shuts down.
pub(crate) async fn escalator(state: Arc<AppState>) {
    let mut stop = state.shutdown.subscribe();
    loop {
        let now = now_ms();
        let wait = match state.store.next_escalation_due() {
            Ok(Some(due)) => (due - now).clamp(0, LOOK_EVERY_MS),
            Ok(None) => LOOK_EVERY_MS,
            Err(e) => {
                tracing::warn!(error = %e, "the escalator cannot read its timers; retrying");
                LOOK_EVERY_MS
            }
        };
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait as u64)) => {}
                _ = state.alerts.timers_changed() => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        // A muted alert (its device silent) waits; its "no data" alert escalates instead.
        let muted = {
            let state = state.clone();
            move |a: &osler_store::alerts::AlertRecord| {
                state
                    .silences
                    .muting(a)
                    .map(|(by, _)| format!("muted by alert {by} (no data): the step waits"))
            }
        };
        match state.store.escalate_due(now_ms(), step_entry, muted).await {
            Ok(touched) if !touched.is_empty() => {
                for a in &touched {
                    tracing::info!(alert = a.id, patient = %a.patient, rule = %a.rule, "escalation step");
                }
                state.alerts.changed();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "escalation steps could not be run; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
