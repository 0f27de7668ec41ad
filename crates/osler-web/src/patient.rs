//! A patient's page: charts of each measurement over 24 h, 7 d, 30 d or 90 d (downsampled on
//! the server) with the plan's thresholds drawn and editable, the devices and their last
//! contact, the alert history, and the notes and calls of their care with the minutes logged.

use maud::{Markup, html};
use osler_core::Metric;
use osler_store::care::{Bucket, CareNote};

use crate::alerts::{AlertView, card};
use crate::charts::{Limit, chart};
use crate::{Nav, Page, age, clock, label};

/// The periods a chart shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Day,
    Week,
    Month,
    Quarter,
}

impl Range {
    pub const ALL: [Range; 4] = [Range::Day, Range::Week, Range::Month, Range::Quarter];

    pub fn parse(s: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.key() == s)
    }

    /// As written in the address (`?range=7d`).
    pub fn key(self) -> &'static str {
        match self {
            Range::Day => "24h",
            Range::Week => "7d",
            Range::Month => "30d",
            Range::Quarter => "90d",
        }
    }

    pub fn ms(self) -> i64 {
        const DAY: i64 = 86_400_000;
        match self {
            Range::Day => DAY,
            Range::Week => 7 * DAY,
            Range::Month => 30 * DAY,
            Range::Quarter => 90 * DAY,
        }
    }

    /// The bucket width: some 300 buckets whatever the period (5 min for a day, 6 h for 90
    /// days), enough for a 720 px chart and cheap to draw.
    pub fn bucket_ms(self) -> i64 {
        match self {
            Range::Day => 5 * 60_000,
            Range::Week => 30 * 60_000,
            Range::Month => 2 * 3_600_000,
            Range::Quarter => 6 * 3_600_000,
        }
    }
}

/// One chart.
#[derive(Clone, Debug)]
pub struct ChartView {
    pub metric: Metric,
    pub buckets: Vec<Bucket>,
    pub limits: Vec<Limit>,
}

/// A threshold of the plan the viewer may change.
#[derive(Clone, Debug)]
pub struct PlanRule {
    pub id: String,
    pub title: String,
    /// What it judges (rules of measurements without data are folded away).
    pub metric: Metric,
    /// In force, or `None` where the plan switched the rule off.
    pub threshold: Option<f64>,
    pub default: f64,
    pub bounds: (f64, f64),
    /// Who set it, when and why (nothing for the default).
    pub set: Option<(String, i64, String)>,
}

/// A device and when it last gave data of one measurement.
#[derive(Clone, Debug)]
pub struct DeviceView {
    pub device: String,
    pub metric: Metric,
    pub last_ms: i64,
    pub stale: bool,
    /// The expected reporting interval, in minutes.
    pub expected_min: f64,
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct PatientView {
    pub patient: String,
    pub name: Option<String>,
    pub range: Range,
    pub charts: Vec<ChartView>,
    pub plan: Vec<PlanRule>,
    /// Whether the viewer may change the plan (their account names a Practitioner).
    pub may_edit_plan: bool,
    pub devices: Vec<DeviceView>,
    pub alerts: Vec<AlertView>,
    pub notes: Vec<CareNote>,
    pub data_days: u32,
    pub day_of_month: u32,
    pub minutes: u32,
    pub calls: u32,
    /// What the last form did (see [`saved_text`]).
    pub flash: Option<&'static str>,
}

/// The sentence a page shows after a form redirected to it with `?saved=KEY`; `None` for a
/// key it does not know (never text from the address).
pub fn saved_text(key: &str) -> Option<&'static str> {
    match key {
        "answer" => Some("Your answer is recorded."),
        "note" => Some("Note added to the timeline."),
        "call" => Some("Call added to the timeline."),
        "threshold" => Some("Threshold changed; the change is in the plan's history."),
        _ => None,
    }
}

pub fn page(p: &PatientView, viewer: &str, now_ms: i64) -> Page {
    let here = format!("/ui/patients/{}", p.patient);
    let back = format!("{here}?range={}", p.range.key());
    let title = p.name.clone().unwrap_or_else(|| p.patient.clone());
    let main = html! {
        h1 { (title) @if p.name.is_some() { " " span.muted { "(" (p.patient) ")" } } }
        @if let Some(f) = &p.flash { p.notice role="status" { (f) } }
        div.totals {
            div { strong { (p.data_days) " of " (p.day_of_month) } "data days this month" }
            div { strong { (p.minutes) } "minutes of care this month" }
            div { strong { (p.calls) } "calls this month" }
        }
        h2 { "Charts" }
        p.ranges {
            "Period: "
            @for r in Range::ALL {
                a href={(here) "?range=" (r.key())} aria-current=[(r == p.range).then_some("true")] { (r.key()) }
            }
            span.hint { "The band is each interval's lowest to highest, the line its mean; dashed lines are the plan's thresholds." }
        }
        @if p.charts.is_empty() { p { "No readings yet." } }
        div.charts {
            @for c in &p.charts {
                figure {
                    figcaption { strong { (label(c.metric)) } }
                    (chart(c.metric, &c.buckets, &c.limits, now_ms - p.range.ms(), now_ms))
                }
            }
        }
        h2 { "Open and recent alerts" }
        @if p.alerts.is_empty() { p { "No alerts in this period." } }
        @for a in &p.alerts { (card(a, viewer, now_ms, &back, true)) }
        h2 { "Monitoring plan" }
        (plan(p, &back))
        h2 { "Devices" }
        (devices(&p.devices, now_ms))
        h2 { "Notes and calls" }
        (notes(p, &back, now_ms))
    };
    Page {
        title,
        nav: Nav::Patient,
        live: true,
        main,
    }
}

fn plan(p: &PatientView, back: &str) -> Markup {
    let measured = |r: &&PlanRule| p.charts.iter().any(|c| c.metric == r.metric);
    let (with, without): (Vec<&PlanRule>, Vec<&PlanRule>) = p.plan.iter().partition(measured);
    html! {
        @if !p.may_edit_plan { p.hint { "Only a clinician linked to a Practitioner can change the plan; each change is audited." } }
        (plan_table(p, &with, back))
        @if !without.is_empty() {
            details {
                summary { "Rules of measurements without data (" (without.len()) ")" }
                (plan_table(p, &without, back))
            }
        }
    }
}

fn plan_table(p: &PatientView, rules: &[&PlanRule], back: &str) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Rule" } th scope="col" { "Threshold" } th scope="col" { "Set by" } @if p.may_edit_plan { th scope="col" { "Change" } } } }
            tbody {
                @for r in rules {
                    tr {
                        th scope="row" { (r.title) }
                        td {
                            @match r.threshold { Some(t) => { (t) }, None => { "off" } }
                            @if r.threshold != Some(r.default) { span.muted { " (default " (r.default) ")" } }
                        }
                        td { @match &r.set { Some((who, at, why)) => { (who) ", " (clock(*at)) ": " em { (why) } }, None => { span.muted { "default" } } } }
                        @if p.may_edit_plan {
                            td {
                                form method="post" action={"/ui/patients/" (p.patient) "/plan/" (r.id)} {
                                    input type="hidden" name="back" value=(back);
                                    label class="sr-only" for={"t-" (r.id)} { "New threshold for " (r.title) }
                                    input id={"t-" (r.id)} name="threshold" type="number" step="any" min=(r.bounds.0) max=(r.bounds.1) required;
                                    label class="sr-only" for={"why-" (r.id)} { "Reason" }
                                    input id={"why-" (r.id)} name="reason" placeholder="reason" required;
                                    button type="submit" { "Set" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn devices(ds: &[DeviceView], now_ms: i64) -> Markup {
    html! {
        @if ds.is_empty() { p { "No device has given data." } }
        @else {
            table {
                thead { tr { th scope="col" { "Device" } th scope="col" { "Measures" } th scope="col" { "Last contact" } th scope="col" { "Expected every" } } }
                tbody {
                    @for d in ds {
                        tr {
                            td { (if d.device.is_empty() { "(entered by hand)" } else { &d.device }) }
                            td { (label(d.metric)) }
                            td { @if d.stale { span.stale { "stale: " (age(now_ms, d.last_ms)) } } @else { (age(now_ms, d.last_ms)) } }
                            td { (crate::fmt::every(d.expected_min)) }
                        }
                    }
                }
            }
        }
    }
}

fn notes(p: &PatientView, back: &str, now_ms: i64) -> Markup {
    html! {
        form method="post" action={"/ui/patients/" (p.patient) "/notes"} {
            input type="hidden" name="back" value=(back);
            div.field {
                label for="note-kind" { "Kind" }
                select id="note-kind" name="kind" { option value="note" { "Note" } option value="call" { "Call with the patient" } }
            }
            div.field {
                label for="note-minutes" { "Minutes spent" }
                input id="note-minutes" name="minutes" type="number" min="0" max="600" value="0" required;
            }
            div.field {
                label for="note-text" { "Note" }
                textarea id="note-text" name="text" rows="3" required {}
            }
            button.primary type="submit" { "Add to the timeline" }
        }
        @if p.notes.is_empty() { p.muted { "Nothing logged this month." } }
        ul.timeline {
            @for n in &p.notes {
                li {
                    strong { (if n.kind == osler_store::care::NoteKind::Call { "Call" } else { "Note" }) }
                    " by " (n.author) ", " (clock(n.at_ms)) " (" (age(now_ms, n.at_ms)) ")"
                    @if n.minutes > 0 { ", " (n.minutes) " min" }
                    p { (n.text) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_says_only_its_own_sentences_after_a_form() {
        assert!(super::saved_text("call").unwrap().starts_with("Call added"));
        assert_eq!(
            super::saved_text("Your account is locked; call 555-0100"),
            None
        );
        assert_eq!(super::Range::parse("90d"), Some(super::Range::Quarter));
        assert_eq!(super::Range::parse("1y"), None);
    }
}
