//! What each page shows, gathered from the store narrowed to the viewer's compartment
//! (`Caller::compartment`) before any query runs. Each page reads on a blocking thread: a
//! worklist is a few thousand point reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use osler_auth::{Caller, Compartment};
use osler_core::Metric;
use osler_registry::{Kind, ResourceQuery};
use osler_rules::STALENESS;
use osler_store::StoreError;
use osler_store::alerts::{AlertFilter, AlertRecord};
use osler_store::care::Latest;
use osler_web::alerts::AlertView;
use osler_web::patient::DeviceView;
use osler_web::worklist::{Row, Vital};

use super::{render, viewer};
use crate::access::{Cx, narrowed};
use crate::{AppState, now_ms};

pub(super) const DAY_MS: i64 = 86_400_000;

/// The viewer's patients, sorted.
fn patients_in(state: &AppState, caller: &Caller) -> Result<Vec<String>, StoreError> {
    match &caller.compartment {
        Compartment::All => state.store.patients(),
        Compartment::Patients(p) => Ok(p.clone()),
    }
}

/// This month (the hub's UTC calendar): its first local day, its first instant, and today's
/// day of the month.
pub(super) fn month(now: i64) -> (i64, i64, u32) {
    let today = now.div_euclid(DAY_MS);
    let (y, m, d) = osler_core::time::civil_from_days(today);
    let first = osler_core::time::days_from_civil(y, m, 1);
    (first, first * DAY_MS, d)
}

/// A person's name as the registry's Patient gives it (`name[0].text`, or given and family).
pub(super) fn name_of(state: &AppState, patient: &str) -> Option<String> {
    let r = state.store.resource(Kind::Patient, patient).ok()??;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    let n = v.get("name")?.get(0)?;
    if let Some(t) = n.get("text").and_then(|t| t.as_str()) {
        return Some(t.to_owned());
    }
    let given: Vec<&str> = n
        .get("given")
        .and_then(|g| g.as_array())
        .map(|g| g.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let family = n.get("family").and_then(|f| f.as_str());
    let whole: Vec<&str> = given.into_iter().chain(family).collect();
    (!whole.is_empty()).then(|| whole.join(" "))
}

/// The expected reporting interval of a measurement for a patient (minutes), if it has one.
fn expected_min(state: &AppState, patient: &str, metric: Metric) -> Option<f64> {
    let s = STALENESS.iter().find(|s| s.metric == metric)?;
    Some(
        state
            .alerts
            .override_of(patient, s.id)
            .unwrap_or(s.after_min),
    )
}

/// A measurement expected at least hourly (heart rate, SpO2, CGM): one with a 24-hour shape.
fn continuous(metric: Metric) -> bool {
    STALENESS
        .iter()
        .any(|s| s.metric == metric && s.after_min <= 60.0)
}

fn is_stale(state: &AppState, patient: &str, metric: Metric, t_ms: i64, now: i64) -> bool {
    expected_min(state, patient, metric).is_some_and(|m| (now - t_ms) as f64 > m * 60_000.0)
}

/// A series' device as the devices table shows it: its last reading against how often it
/// should report.
pub(super) fn device_view(state: &AppState, l: &Latest, now: i64) -> DeviceView {
    DeviceView {
        device: l.device.clone(),
        metric: l.metric,
        last_ms: l.t_ms,
        stale: is_stale(state, &l.patient, l.metric, l.t_ms, now),
        expected_min: expected_min(state, &l.patient, l.metric).unwrap_or(0.0),
    }
}

/// An alert with what the viewer needs to answer it.
pub(super) fn alert_view(
    state: &AppState,
    a: AlertRecord,
    with_events: bool,
) -> Result<AlertView, StoreError> {
    let muted = state.silences.muting(&a).map(|(by, since)| {
        format!(
            "no data since {} (alert {by}): the device may be offline",
            osler_web::clock(since)
        )
    });
    Ok(AlertView {
        title: crate::alerts::title_of(&a.rule)
            .unwrap_or(a.rule.as_str())
            .to_owned(),
        responses: state.store.alert_responses(a.id)?,
        snoozes: state.store.alert_snoozes(a.id)?,
        muted,
        cap_min: state.snooze_caps.minutes(&a.severity),
        events: if with_events {
            state.store.alert_timeline(a.id)?
        } else {
            Vec::new()
        },
        alert: a,
    })
}

pub(super) fn filter(
    caller: &Caller,
    patient: Option<&str>,
    state: Option<&str>,
    limit: usize,
) -> AlertFilter {
    AlertFilter {
        patient: patient.map(str::to_owned),
        state: state.map(str::to_owned),
        severity: None,
        limit,
        before_id: None,
        within: crate::access::within(caller),
    }
}

/// The newest reading per (patient, measurement) across devices.
fn newest(latest: Vec<Latest>) -> BTreeMap<String, BTreeMap<u8, Latest>> {
    let mut by: BTreeMap<String, BTreeMap<u8, Latest>> = BTreeMap::new();
    for l in latest {
        let slot = by.entry(l.patient.clone()).or_default();
        match slot.get(&(l.metric as u8)) {
            Some(old) if old.t_ms >= l.t_ms => {}
            _ => {
                slot.insert(l.metric as u8, l);
            }
        }
    }
    by
}

/// Every row of the viewer's worklist, in order, and today's day of the month.
pub(crate) fn worklist_rows(
    state: &AppState,
    caller: &Caller,
    now: i64,
) -> Result<(Vec<Row>, u32), StoreError> {
    let patients = patients_in(state, caller)?;
    let (first_day, first_ms, today) = month(now);
    let latest = newest(state.store.latest_readings(narrowed(caller))?);
    let days: HashMap<String, u32> = state
        .store
        .data_days(narrowed(caller), first_day, first_day + 31)?
        .into_iter()
        .collect();
    let minutes: HashMap<String, (u32, u32)> = state
        .store
        .care_minutes(narrowed(caller), first_ms, now + 1)?
        .into_iter()
        .map(|(p, m, c)| (p, (m, c)))
        .collect();
    let mut open: HashMap<String, Vec<AlertView>> = HashMap::new();
    let mut raised = state.store.open_alerts(narrowed(caller))?;
    raised.sort_by_key(|a| std::cmp::Reverse(a.id));
    for a in raised {
        let p = a.patient.clone();
        open.entry(p)
            .or_default()
            .push(alert_view(state, a, false)?);
    }
    // Sparklines of the continuous measurements (a daily cuff or scale has a point or two a
    // day: its trend is on the patient's page): the series that gave the newest reading, 24
    // points a day.
    let mut series = Vec::new();
    for per in latest.values() {
        series.extend(
            per.values()
                .filter(|l| continuous(l.metric))
                .map(|l| l.series),
        );
    }
    let sparks = state.sparks.points(&state.store, &series, now)?;
    let mut rows = Vec::with_capacity(patients.len());
    for p in patients {
        let vitals = latest
            .get(&p)
            .map(|per| {
                per.values()
                    .map(|l| Vital {
                        metric: l.metric,
                        v: l.v,
                        v2: l.v2,
                        t_ms: l.t_ms,
                        stale: is_stale(state, &p, l.metric, l.t_ms, now),
                        spark: sparks.get(&l.series).cloned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (m, calls) = minutes.get(&p).copied().unwrap_or((0, 0));
        rows.push(Row {
            name: name_of(state, &p),
            alerts: open.remove(&p).unwrap_or_default(),
            vitals,
            data_days: days.get(&p).copied().unwrap_or(0),
            minutes: m,
            calls,
            patient: p,
        });
    }
    osler_web::worklist::order(&mut rows);
    Ok((rows, today))
}

/// Says how long the page took on the server (W3C Server-Timing: the browser's developer
/// tools show it, and `osler bench dashboard` reports it): reading the store, then in all.
pub(super) fn timed(
    mut r: Response,
    gathered: std::time::Duration,
    started: std::time::Instant,
) -> Response {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let text = format!(
        "store;dur={:.1}, total;dur={:.1}",
        ms(gathered),
        ms(started.elapsed())
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

pub(super) fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The hub cannot read its store right now; reload in a moment.",
    )
        .into_response()
}

/// Runs a page's reads on a blocking thread.
pub(super) async fn gather<T: Send + 'static>(
    state: &Arc<AppState>,
    caller: &Caller,
    f: impl FnOnce(&AppState, &Caller) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let (s, c) = (state.clone(), caller.clone());
    match tokio::task::spawn_blocking(move || f(&s, &c)).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a dashboard page could not read the store");
            None
        }
        Err(_) => None,
    }
}

pub(super) async fn worklist(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    headers: HeaderMap,
) -> Response {
    let now = now_ms();
    let started = std::time::Instant::now();
    let Some((rows, today)) = gather(&state, &caller, move |s, c| worklist_rows(s, c, now)).await
    else {
        return unavailable();
    };
    let gathered = started.elapsed();
    let page = osler_web::worklist::page(&rows, &caller.subject, now, today);
    timed(
        render(&page, Some(&viewer(&caller)), &headers),
        gathered,
        started,
    )
}

/// How far back the inbox shows resolved alerts.
const INBOX_HOURS: u32 = 24;

pub(super) async fn inbox(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    headers: HeaderMap,
) -> Response {
    let now = now_ms();
    let groups = gather(&state, &caller, move |s, c| {
        let since = now - i64::from(INBOX_HOURS) * 3_600_000;
        let mut by: BTreeMap<String, Vec<AlertView>> = BTreeMap::new();
        for a in s.store.alerts(&filter(c, None, None, 2_000))? {
            let recent = a.state == "raised" || a.resolved_at_ms.is_some_and(|t| t >= since);
            if recent {
                let p = a.patient.clone();
                by.entry(p).or_default().push(alert_view(s, a, true)?);
            }
        }
        let mut groups: Vec<osler_web::inbox::Group> = by
            .into_iter()
            .map(|(patient, mut alerts)| {
                alerts.sort_by_key(|a| (a.alert.state != "raised", -a.alert.id));
                osler_web::inbox::Group {
                    name: name_of(s, &patient),
                    patient,
                    alerts,
                }
            })
            .collect();
        // Patients with an open alert first, the worst of them first.
        groups.sort_by_key(|g| {
            std::cmp::Reverse(
                g.alerts
                    .iter()
                    .filter(|a| a.alert.state == "raised" && a.accepted_by().is_none())
                    .map(|a| a.rank())
                    .max()
                    .unwrap_or(0),
            )
        });
        Ok(groups)
    })
    .await;
    let Some(groups) = groups else {
        return unavailable();
    };
    let page = osler_web::inbox::page(&groups, &caller.subject, now, INBOX_HOURS);
    render(&page, Some(&viewer(&caller)), &headers)
}

pub(super) async fn devices(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    headers: HeaderMap,
) -> Response {
    let now = now_ms();
    let admin = viewer(&caller).admin;
    let found = gather(&state, &caller, move |s, c| {
        let mut by: BTreeMap<String, Vec<DeviceView>> = BTreeMap::new();
        for l in s.store.latest_readings(narrowed(c))? {
            by.entry(l.patient.clone())
                .or_default()
                .push(device_view(s, &l, now));
        }
        let gateways = if admin {
            let reports = s.store.gateway_reports()?;
            let gateways = s
                .store
                .gateways()?
                .into_iter()
                .map(|(g, last)| {
                    let r = reports.iter().find(|r| r.gateway == g.id);
                    osler_web::devices::GatewayView {
                        outbox: r.map(|r| (r.outbox_bytes, r.outbox_limit)),
                        version: r.map(|r| r.version.clone()),
                        id: g.id,
                        enrolled_ms: g.enrolled_ms,
                        revoked_ms: g.revoked_ms,
                        last_batch_ms: last,
                    }
                })
                .collect::<Vec<_>>();
            let technical = s
                .store
                .technical_alerts(0)?
                .into_iter()
                .map(|t| osler_web::devices::TechnicalView {
                    subject: t.subject,
                    rule: t.rule,
                    detail: t.detail,
                    raised_ms: t.raised_ms,
                })
                .collect::<Vec<_>>();
            Some((gateways, technical))
        } else {
            None
        };
        Ok((by.into_iter().collect::<Vec<_>>(), gateways))
    })
    .await;
    let Some((patients, gateways)) = found else {
        return unavailable();
    };
    let gateways = gateways.as_ref().map(|(g, t)| (g.as_slice(), t.as_slice()));
    let page = osler_web::devices::page(&patients, gateways, now);
    render(&page, Some(&viewer(&caller)), &headers)
}

pub(super) async fn admin(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    headers: HeaderMap,
) -> Response {
    let found = gather(&state, &caller, |s, _| {
        let accounts = s.store.accounts()?;
        let (teams, _) = s
            .store
            .search_resources(&ResourceQuery::all(Kind::CareTeam, 1_000), false)?;
        let mut views = Vec::new();
        for t in teams {
            let v: serde_json::Value = serde_json::from_str(&t.body).unwrap_or_default();
            let refs = |arr: &str, inner: &str| -> Vec<String> {
                v[arr]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p[inner]["reference"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            views.push(osler_web::admin::TeamView {
                name: v["name"].as_str().map(str::to_owned),
                members: refs("participant", "member"),
                patients: usize::from(v["subject"]["reference"].is_string()),
                policy: s.store.escalation_policy(&t.id)?,
                id: t.id,
            });
        }
        // Over every patient: this page is for callers who see every patient.
        let burden = s.store.alert_burden(now_ms(), 30 * DAY_MS).ok();
        Ok((accounts, views, s.store.webhooks()?, burden))
    })
    .await;
    let Some((accounts, teams, hooks, burden)) = found else {
        return unavailable();
    };
    let page = osler_web::admin::page(&accounts, &teams, &hooks, burden.as_ref());
    render(&page, Some(&viewer(&caller)), &headers)
}
