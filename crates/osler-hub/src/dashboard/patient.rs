//! A patient's page: the charts of each measurement over the chosen period (bucketed in the
//! store), the plan's thresholds drawn and editable, devices, alerts, notes and calls, and the
//! month's data days and minutes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use osler_auth::Caller;
use osler_core::Metric;
use osler_store::StoreError;
use osler_store::care::Latest;
use osler_web::patient::{PatientView, PlanRule, Range};

use super::views::{
    DAY_MS, alert_view, device_view, filter, gather, month, name_of, timed, unavailable,
};
use super::{render, viewer};
use crate::access::{Cx, sees};
use crate::{AppState, now_ms};

#[derive(serde::Deserialize)]
pub(super) struct PatientQuery {
    range: Option<String>,
    saved: Option<String>,
}

/// A threshold line and the measurement whose chart it crosses.
type MetricLimit = (Metric, osler_web::charts::Limit);

/// The monitoring plan's thresholds for a patient, and the lines they draw on a chart.
fn plan_of(
    state: &AppState,
    patient: &str,
) -> Result<(Vec<PlanRule>, Vec<MetricLimit>), StoreError> {
    let changes = state.store.plan_changes(patient, None)?;
    let mut rules = Vec::new();
    let mut limits = Vec::new();
    for crate::plans::InForce {
        rule: r,
        threshold,
        change: last,
    } in crate::plans::rules_in_force(&changes)
    {
        // A level threshold is a line on the chart; a rise within days is not.
        if let (Some(t), false) = (
            threshold,
            matches!(r.condition, osler_rules::Condition::RiseWithin(_)),
        ) {
            limits.push((
                r.metric,
                osler_web::charts::Limit {
                    label: r.title.to_owned(),
                    value: t,
                },
            ));
        }
        rules.push(PlanRule {
            id: r.id.to_owned(),
            title: r.title.to_owned(),
            metric: r.metric,
            threshold,
            default: r.threshold,
            bounds: r.bounds,
            set: last.map(|c| (c.author.clone(), c.at_ms, c.reason.clone())),
        });
    }
    Ok((rules, limits))
}

fn patient_view(
    state: &AppState,
    caller: &Caller,
    patient: &str,
    range: Range,
    now: i64,
) -> Result<PatientView, StoreError> {
    let (first_day, first_ms, today) = month(now);
    let one = [patient.to_owned()];
    let series = state.store.latest_readings(Some(&one))?;
    let (plan, limits) = plan_of(state, patient)?;
    let mut by_metric: BTreeMap<u8, Vec<&Latest>> = BTreeMap::new();
    for l in &series {
        by_metric.entry(l.metric as u8).or_default().push(l);
    }
    let from = now - range.ms();
    let mut charts = Vec::new();
    for ls in by_metric.values() {
        let metric = ls[0].metric;
        let ids: Vec<i64> = ls.iter().map(|l| l.series).collect();
        charts.push(osler_web::patient::ChartView {
            metric,
            buckets: state
                .store
                .buckets(&ids, from, now + 1, range.bucket_ms())?,
            limits: limits
                .iter()
                .filter(|(m, _)| *m == metric)
                .map(|(_, l)| l.clone())
                .collect(),
        });
    }
    let devices = series.iter().map(|l| device_view(state, l, now)).collect();
    let mut alerts = Vec::new();
    for a in state
        .store
        .alerts(&filter(caller, Some(patient), None, 200))?
    {
        let recent = a.state == "raised" || a.resolved_at_ms.is_some_and(|t| t >= from);
        if recent {
            alerts.push(alert_view(state, a, false)?);
        }
    }
    let data_days = state
        .store
        .data_days(Some(&one), first_day, first_day + 31)?
        .first()
        .map_or(0, |(_, n)| *n);
    let (minutes, calls) = state
        .store
        .care_minutes(Some(&one), first_ms, now + 1)?
        .first()
        .map_or((0, 0), |(_, m, c)| (*m, *c));
    let account = state.store.account(&caller.subject)?;
    Ok(PatientView {
        patient: patient.to_owned(),
        name: name_of(state, patient),
        range,
        charts,
        plan,
        may_edit_plan: account.is_some_and(|a| a.practitioner.is_some())
            && caller
                .may("CarePlan", osler_auth::Interaction::Update)
                .is_ok(),
        devices,
        alerts,
        notes: state.store.notes(patient, now - 90 * DAY_MS, now + 1)?,
        data_days,
        day_of_month: today,
        minutes,
        calls,
        flash: None,
    })
}

pub(super) async fn page(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    Path(id): Path<String>,
    Query(q): Query<PatientQuery>,
    headers: HeaderMap,
) -> Response {
    // Outside the compartment a patient does not exist for the viewer.
    if !sees(&caller, &id) || !matches!(state.store.patient_known(&id), Ok(true)) {
        let page = osler_web::Page {
            title: "No such patient".into(),
            nav: osler_web::Nav::Patient,
            live: false,
            main: maud::html! { h1 { "No such patient" } p { "Patient " (id) " is not one of yours, or does not exist." } },
        };
        let mut r = render(&page, Some(&viewer(&caller)), &headers);
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    let range = q
        .range
        .as_deref()
        .and_then(Range::parse)
        .unwrap_or(Range::Day);
    let now = now_ms();
    let started = std::time::Instant::now();
    let p = id.clone();
    let Some(mut view) = gather(&state, &caller, move |s, c| {
        patient_view(s, c, &p, range, now)
    })
    .await
    else {
        return unavailable();
    };
    let gathered = started.elapsed();
    view.flash = q.saved.as_deref().and_then(osler_web::patient::saved_text);
    let page = osler_web::patient::page(&view, &caller.subject, now);
    timed(
        render(&page, Some(&viewer(&caller)), &headers),
        gathered,
        started,
    )
}
