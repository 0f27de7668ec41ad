//! The watchdog of silence: on a timer (not when data arrives), every measurement of every
//! patient whose newest data is older than its reporting interval (the plan's, or the
//! default in `osler_rules::STALENESS`) raises a "no data" alert; data arriving resolves it at
//! the next look. While it is open, the patient's other alerts on that measurement are muted:
//! shown so, and not escalated (the "no data" alert is, instead). `GET /alerts/status?patient=`
//! gives each rule's state for a patient: a rule whose measurement is silent is `unknown`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use osler_core::Metric;
use osler_rules::{Rule, STALENESS, Staleness};
use osler_store::alerts::{AlertFilter, AlertRecord, AlertWrite};

use crate::{AppState, now_ms};

/// How often the watchdog looks.
pub(crate) const LOOK_EVERY_MS: u64 = 2_000;

/// Data older than this is no longer watched (a device put away a week ago is not news;
/// its alert, if open, stays open until data comes).
const WATCH_WITHIN_MS: i64 = 7 * 24 * 3_600_000;

/// The open "no data" alerts: (patient, metric) → (alert id, time of the newest data).
#[derive(Default)]
pub(crate) struct Silences {
    open: Mutex<HashMap<(String, Metric), (i64, i64)>>,
}

impl Silences {
    /// The open ones, from the store (at start-up).
    pub(crate) fn load(store: &osler_store::Store) -> Result<Silences, osler_store::StoreError> {
        let open = store.alerts(&AlertFilter {
            state: Some("raised".into()),
            limit: usize::MAX >> 1,
            ..AlertFilter::default()
        })?;
        let mut map = HashMap::new();
        for a in open {
            if let Some(s) = Staleness::by_id(&a.rule) {
                map.insert((a.patient.clone(), s.metric), (a.id, a.raised_reading_ms));
            }
        }
        Ok(Silences {
            open: Mutex::new(map),
        })
    }

    /// Why an alert is muted, if it is: the open "no data" alert of its measurement (only an
    /// open alert is muted).
    pub(crate) fn muting(&self, a: &AlertRecord) -> Option<(i64, i64)> {
        if a.state != "raised" {
            return None;
        }
        let metric = Rule::by_id(&a.rule)?.metric;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(a.patient.clone(), metric))
            .copied()
    }

    fn is_open(&self, patient: &str, metric: Metric) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&(patient.to_owned(), metric))
    }

    fn set(&self, patient: &str, metric: Metric, open: Option<(i64, i64)>) {
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open {
            Some(v) => m.insert((patient.to_owned(), metric), v),
            None => m.remove(&(patient.to_owned(), metric)),
        };
    }
}

/// What one look finds for one measurement: the changes to write.
fn look(
    state: &AppState,
    s: &Staleness,
    now: i64,
) -> Result<Vec<AlertWrite>, osler_store::StoreError> {
    let mut writes = Vec::new();
    for (patient, last) in state.store.latest_data(s.metric, now - WATCH_WITHIN_MS)? {
        let minutes = state
            .alerts
            .override_of(&patient, s.id)
            .unwrap_or(s.after_min);
        let silent_ms = now - last;
        let stale = silent_ms as f64 > minutes * 60_000.0;
        let open = state.silences.is_open(&patient, s.metric);
        if stale && !open {
            writes.push(AlertWrite::Raise {
                patient,
                rule: s.id.to_owned(),
                severity: s.severity.as_str().to_owned(),
                reading_ms: last,
                at_ms: now,
                value: (silent_ms as f64 / 6_000.0).round() / 10.0,
                threshold: minutes,
                late: false,
                source: "hub".into(),
            });
        } else if !stale && open {
            writes.push(AlertWrite::Resolve {
                patient,
                rule: s.id.to_owned(),
                reading_ms: last,
                at_ms: now,
            });
        }
    }
    Ok(writes)
}

/// Looks every [`LOOK_EVERY_MS`] until the hub shuts down.
pub(crate) async fn watchdog(state: Arc<AppState>) {
    let mut stop = state.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(LOOK_EVERY_MS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // A look reads every series of six measurements: off the async workers.
        let looking = state.clone();
        let writes = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let mut writes = Vec::new();
            for s in STALENESS {
                match look(&looking, s, now) {
                    Ok(w) => writes.extend(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "the staleness watchdog cannot read the store; retrying")
                    }
                }
            }
            writes
        })
        .await
        .unwrap_or_default();
        if writes.is_empty() {
            continue;
        }
        match state.store.write_alerts(writes, Vec::new()).await {
            Ok(result) => {
                for a in result.alerts.into_iter().flatten() {
                    let Some(s) = Staleness::by_id(&a.rule) else {
                        continue;
                    };
                    let open = (a.state == "raised").then_some((a.id, a.raised_reading_ms));
                    tracing::info!(patient = %a.patient, rule = %a.rule, state = %a.state, "no data");
                    state.silences.set(&a.patient, s.metric, open);
                }
                state.alerts.changed();
            }
            Err(e) => tracing::error!(error = %e, "no-data alerts could not be stored; retrying"),
        }
    }
}

/// Each rule of a patient now: `alert` (open), `fine`, `unknown` (no data of its measurement
/// within its reporting interval, or none ever: silence is never "fine") or `off` (the plan
/// switches it off).
pub(crate) fn routes() -> crate::access::Routes {
    crate::access::Routes::new().get(
        "/alerts/status",
        osler_auth::Policy::Resource("Flag", osler_auth::Interaction::Search),
        status,
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    patient: String,
}

async fn status(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    axum::Extension(caller): crate::access::Cx,
    q: Result<axum::extract::Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let Ok(axum::extract::Query(q)) = q else {
        return crate::alerts::error(StatusCode::BAD_REQUEST, "the parameter is patient=<id>");
    };
    if !crate::access::sees(&caller, &q.patient) {
        return crate::alerts::error(
            StatusCode::NOT_FOUND,
            format!("Patient/{} is not known to this hub", q.patient),
        );
    }
    let now = now_ms();
    let (latest, open) = match (
        state.store.latest_data_of(&q.patient),
        state.store.alerts(&AlertFilter {
            patient: Some(q.patient.clone()),
            state: Some("raised".into()),
            limit: 1000,
            ..AlertFilter::default()
        }),
    ) {
        (Ok(l), Ok(o)) => (l, o),
        _ => {
            return crate::alerts::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the store now; retry",
            );
        }
    };
    let time = |ms: i64| osler_core::Timestamp::utc(ms).to_string();
    let mut rules = serde_json::Map::new();
    let mut judge = |id: &str, metric: Metric, off: bool| {
        let last = latest.iter().find(|(m, _)| *m == metric).map(|(_, t)| *t);
        let interval = Staleness::of(metric).map(|s| {
            state
                .alerts
                .override_of(&q.patient, s.id)
                .unwrap_or(s.after_min)
                * 60_000.0
        });
        let alert = open.iter().find(|a| a.rule == id);
        let (st, why) = if let Some(a) = alert {
            let muted = state.silences.muting(a).is_some();
            (
                "alert",
                if muted {
                    Some("muted: no data".to_owned())
                } else {
                    None
                },
            )
        } else if off {
            ("off", Some("switched off by the patient's plan".to_owned()))
        } else {
            match (last, interval) {
                (None, _) => (
                    "unknown",
                    Some(format!("no {} data yet", metric.info().key)),
                ),
                (Some(t), Some(i)) if (now - t) as f64 > i => (
                    "unknown",
                    Some(format!("no {} data since {}", metric.info().key, time(t))),
                ),
                _ => ("fine", None),
            }
        };
        rules.insert(
            id.to_owned(),
            serde_json::json!({
                "state": st,
                "why": why,
                "metric": metric.info().key,
                "last_data": last.map(time),
                "alert": alert.map(|a| a.id),
            }),
        );
    };
    for r in osler_rules::RULES {
        let off = state
            .alerts
            .override_of(&q.patient, r.id)
            .is_some_and(|v| r.is_off(v));
        judge(r.id, r.metric, off);
    }
    for s in STALENESS {
        judge(s.id, s.metric, false);
    }
    axum::Json(serde_json::json!({"patient": q.patient, "at": time(now), "rules": rules}))
        .into_response()
}
