//! The worklist: the viewer's patients, riskiest first, each row with its open alerts, the
//! latest value and age of each measurement (stale ones marked in words), a 24-hour sparkline,
//! and this month's data days and minutes of care.

use std::cmp::Reverse;

use maud::{Markup, html};
use osler_core::Metric;

use crate::alerts::{AlertView, card};
use crate::{Nav, Page, age, charts, label, value};

/// One measurement of a row.
#[derive(Clone, Debug)]
pub struct Vital {
    pub metric: Metric,
    pub v: f64,
    pub v2: Option<f64>,
    pub t_ms: i64,
    /// Older than the measurement's expected reporting interval.
    pub stale: bool,
    /// The last 24 hours, sampled; `None` for a measurement taken a few times a day.
    pub spark: Option<Vec<(i64, f64)>>,
}

/// One patient's row.
#[derive(Clone, Debug)]
pub struct Row {
    pub patient: String,
    pub name: Option<String>,
    /// Open alerts (raised, not resolved).
    pub alerts: Vec<AlertView>,
    pub vitals: Vec<Vital>,
    /// Days with data this month.
    pub data_days: u32,
    /// Minutes of care logged this month, and calls among them.
    pub minutes: u32,
    pub calls: u32,
}

/// Where a row stands, worst first: unaccepted alerts by severity, an emergency above all
/// (then how many), then
/// alerts someone has taken but that are still open, then data gaps (a stale measurement),
/// then fewer data days this month; the patient id breaks ties so the order is stable.
type Risk = (
    Reverse<u8>,
    Reverse<usize>,
    Reverse<usize>,
    Reverse<bool>,
    u32,
);

fn risk(r: &Row) -> Risk {
    let unaccepted: Vec<&AlertView> = r
        .alerts
        .iter()
        .filter(|a| a.accepted_by().is_none())
        .collect();
    let worst = unaccepted.iter().map(|a| a.rank()).max().unwrap_or(0);
    let taken = r.alerts.len() - unaccepted.len();
    let gap = r.vitals.iter().any(|v| v.stale);
    (
        Reverse(worst),
        Reverse(unaccepted.len()),
        Reverse(taken),
        Reverse(gap),
        r.data_days,
    )
}

/// Orders rows riskiest first.
pub fn order(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        risk(a)
            .cmp(&risk(b))
            .then_with(|| a.patient.cmp(&b.patient))
    });
}

/// The worklist page; `rows` already in order.
pub fn page(rows: &[Row], viewer: &str, now_ms: i64, day_of_month: u32) -> Page {
    let back = "/ui/worklist";
    let main = html! {
        h1 { "Worklist" }
        p.hint {
            (rows.len()) @if rows.len() == 1 { " patient" } @else { " patients" } ", riskiest first: unaccepted alerts by severity, then alerts someone has taken, then data gaps. "
            "Keys: " kbd { "j" } " / " kbd { "k" } " move between patients, " kbd { "Enter" } " opens one. "
            "This page updates by itself."
        }
        table {
            caption.sr-only { "Patients and their open alerts" }
            thead { tr {
                th scope="col" { "Patient" }
                th scope="col" { "Open alerts" }
                th scope="col" { "Latest values (24 h)" }
                th scope="col" { "Data days this month" }
                th scope="col" { "Minutes this month" }
            } }
            tbody {
                @for r in rows {
                    tr data-row tabindex="-1" id={"row-" (r.patient)} {
                        th scope="row" {
                            a data-open href={"/ui/patients/" (r.patient)} { (r.name.as_deref().unwrap_or(&r.patient)) }
                            @if r.name.is_some() { br; span.muted { (r.patient) } }
                        }
                        td {
                            @if r.alerts.is_empty() { span.fine { "none open" } }
                            @for a in &r.alerts { (card(a, viewer, now_ms, back, false)) }
                        }
                        td { (vitals(&r.vitals, now_ms)) }
                        td { (r.data_days) " of " (day_of_month) }
                        td { (r.minutes) @if r.calls > 0 { " (" (r.calls) " call" @if r.calls > 1 { "s" } ")" } }
                    }
                }
            }
        }
    };
    Page {
        title: "Worklist".into(),
        nav: Nav::Worklist,
        live: true,
        main,
    }
}

fn vitals(vs: &[Vital], now_ms: i64) -> Markup {
    html! {
        div.vitals {
            @if vs.is_empty() { span.muted { "no readings yet" } }
            @for v in vs {
                div.vital {
                    div { (label(v.metric)) ": " span.v { (value(v.metric, v.v, v.v2)) } }
                    div {
                        @if v.stale { span.stale { "stale: " (age(now_ms, v.t_ms)) } }
                        @else { span.muted { (age(now_ms, v.t_ms)) } }
                    }
                    @if let Some(points) = &v.spark {
                        (charts::sparkline(v.metric, points, now_ms - 86_400_000, now_ms))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osler_store::alerts::AlertRecord;
    use osler_store::lifecycle::Response;

    fn alert(severity: &str, accepted: bool) -> AlertView {
        AlertView {
            alert: AlertRecord {
                id: 1,
                patient: "p".into(),
                rule: "r".into(),
                severity: severity.into(),
                state: "raised".into(),
                raised_reading_ms: 0,
                raised_at_ms: 0,
                value: 1.0,
                threshold: 1.0,
                late: false,
                source: "hub".into(),
                resolved_reading_ms: None,
                resolved_at_ms: None,
            },
            title: "t".into(),
            responses: if accepted {
                vec![Response {
                    recipient: "x".into(),
                    state: "accepted".into(),
                    at_ms: 0,
                }]
            } else {
                vec![]
            },
            snoozes: vec![],
            muted: None,
            cap_min: 15.0,
            events: vec![],
        }
    }

    fn row(id: &str, alerts: Vec<AlertView>, stale: bool, days: u32) -> Row {
        Row {
            patient: id.into(),
            name: None,
            alerts,
            vitals: vec![Vital {
                metric: Metric::HeartRate,
                v: 70.0,
                v2: None,
                t_ms: 0,
                stale,
                spark: None,
            }],
            data_days: days,
            minutes: 0,
            calls: 0,
        }
    }

    #[test]
    fn rows_go_unaccepted_by_severity_then_taken_then_gaps_then_fewest_days() {
        let mut rows = vec![
            row("fine", vec![], false, 20),
            row("gap", vec![], true, 20),
            row("warning", vec![alert("warning", false)], false, 20),
            row("taken-critical", vec![alert("critical", true)], false, 20),
            row("critical", vec![alert("critical", false)], false, 20),
            row("few-days", vec![], false, 3),
            row(
                "two-urgent",
                vec![alert("urgent", false), alert("urgent", false)],
                false,
                20,
            ),
            row("urgent", vec![alert("urgent", false)], false, 20),
        ];
        order(&mut rows);
        let ids: Vec<&str> = rows.iter().map(|r| r.patient.as_str()).collect();
        assert_eq!(
            ids,
            [
                "critical",
                "two-urgent",
                "urgent",
                "warning",
                "taken-critical",
                "gap",
                "few-days",
                "fine"
            ]
        );
    }

    #[test]
    fn a_stale_value_is_marked_in_words() {
        let html = page(&[row("p", vec![], true, 1)], "dr", 3_600_000, 1)
            .main
            .into_string();
        assert!(html.contains("stale: 1 h ago"));
        assert!(html.contains(r#"href="/ui/patients/p""#));
    }
}
