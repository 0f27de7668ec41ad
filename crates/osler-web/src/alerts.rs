//! An alert as the pages show it, with the answers a clinician can give from where it is:
//! acknowledge, accept (take it for the team), snooze (this recipient by default, capped by
//! severity) and undo, each a form that works without the script.

use maud::{Markup, html};
use osler_store::alerts::AlertRecord;
use osler_store::lifecycle::{AlertEvent, Response, Snooze};

use crate::{age, clock};

/// One alert and what the viewer needs to act on it.
#[derive(Clone, Debug)]
pub struct AlertView {
    pub alert: AlertRecord,
    /// The rule's title ("Heart rate high").
    pub title: String,
    /// Every recipient's response.
    pub responses: Vec<Response>,
    /// The snoozes still silencing someone.
    pub snoozes: Vec<Snooze>,
    /// Why it is muted (its device is silent), if it is.
    pub muted: Option<String>,
    /// The longest snooze its severity allows, in minutes.
    pub cap_min: f64,
    /// Its timeline (the inbox shows who did what when), oldest first; may be empty.
    pub events: Vec<AlertEvent>,
}

impl AlertView {
    /// Who accepted it, if anyone did.
    pub fn accepted_by(&self) -> Option<&str> {
        self.responses
            .iter()
            .find(|r| r.state == "accepted")
            .map(|r| r.recipient.as_str())
    }

    /// The viewer's own response state.
    pub fn mine(&self, viewer: &str) -> Option<&str> {
        self.responses
            .iter()
            .find(|r| r.recipient == viewer)
            .map(|r| r.state.as_str())
    }

    /// A fall or an SOS: above every severity, and resolved by a person.
    pub fn is_emergency(&self) -> bool {
        self.alert
            .rule
            .starts_with(osler_store::escalation::EMERGENCY_PREFIX)
    }

    /// How urgent it is for ordering: 4 an emergency, then 3 critical, 2 urgent, 1 warning.
    pub fn rank(&self) -> u8 {
        if self.is_emergency() {
            4
        } else {
            rank(&self.alert.severity)
        }
    }

    /// The snooze that silences it for the viewer now.
    pub fn snoozed_for(&self, viewer: &str, now_ms: i64) -> Option<&Snooze> {
        self.snoozes
            .iter()
            .find(|s| s.active(now_ms) && s.recipient.as_deref().is_none_or(|r| r == viewer))
    }
}

/// A severity as a word in a box, coloured; its rank orders worklists (3 is the worst).
pub fn severity(s: &str) -> Markup {
    let word = match s {
        "critical" => "Critical",
        "urgent" => "Urgent",
        "warning" => "Warning",
        other => other,
    };
    html! { span class={"sev sev-" (s)} { (word) } }
}

/// How bad a severity is: 3 critical, 2 urgent, 1 warning, 0 anything else.
pub fn rank(severity: &str) -> u8 {
    match severity {
        "critical" => 3,
        "urgent" => 2,
        "warning" => 1,
        _ => 0,
    }
}

/// The snooze choices a severity allows (minutes), always within its cap.
fn snooze_choices(cap: f64) -> Vec<u32> {
    let mut c: Vec<u32> = [5u32, 15, 30, 60, 120, 240]
        .into_iter()
        .filter(|m| f64::from(*m) <= cap)
        .collect();
    if c.is_empty() {
        c.push(cap.floor().max(1.0) as u32);
    }
    c
}

/// An alert with its state and the answers the viewer may give; `back` is where a form
/// without the script returns to.
pub fn card(v: &AlertView, viewer: &str, now_ms: i64, back: &str, notes: bool) -> Markup {
    let a = &v.alert;
    let open = a.state == "raised";
    let snoozed = v.snoozed_for(viewer, now_ms);
    let id = a.id;
    html! {
        div class={"alert " (a.severity)} id={"alert-" (id)} {
            @if v.is_emergency() { span class="sev sev-critical" { "EMERGENCY" } " " }
            @else { (severity(&a.severity)) " " }
            strong { (v.title) } " "
            @if !v.is_emergency() {
                span { (format!("{:.1}", a.value).trim_end_matches(".0")) " (threshold " (a.threshold) ")" } " "
            }
            span.muted { "raised " (age(now_ms, a.raised_at_ms)) } " "
            @if !open { span.state { "resolved " (a.resolved_at_ms.map(|t| age(now_ms, t)).unwrap_or_default()) } }
            @if let Some(by) = v.accepted_by() { " " span.state { "accepted by " (by) } }
            @else if open { " " span.state { "not accepted" } }
            @if let Some(m) = v.mine(viewer) { " " span.state { "you: " (m) } }
            @if let Some(s) = snoozed {
                " " span.state { "snoozed " @if s.recipient.is_none() { "for the team " } "until " (clock(s.until_ms)) " by " (s.who)
                    @if let Some(r) = &s.reason { " — " (r) } }
            }
            @if let Some(why) = &v.muted { p.muted-by { "Muted: " (why) } }
            @if open {
                div {
                    @if v.mine(viewer) != Some("acknowledged") && v.accepted_by().is_none() {
                        (act(id, "ack", "Acknowledge", back, notes))
                    }
                    @if v.accepted_by().is_none() { (act(id, "accept", "Accept", back, notes)) }
                    @if let Some(s) = snoozed {
                        @if s.recipient.is_some() || s.who == viewer { (act(id, "unsnooze", "Undo snooze", back, false)) }
                    } @else {
                        form.act method="post" action={"/ui/alerts/" (id) "/snooze"} {
                            input type="hidden" name="back" value=(back);
                            label for={"snooze-" (id)} { "Snooze" }
                            select id={"snooze-" (id)} name="minutes" {
                                @for m in snooze_choices(v.cap_min) { option value=(m) { (m) " min" } }
                            }
                            @if notes {
                                label for={"reason-" (id)} class="sr-only" { "Reason" }
                                input id={"reason-" (id)} name="note" placeholder="reason (needed for the team)";
                                label { input type="checkbox" name="scope" value="team"; " whole team" }
                            }
                            button type="submit" { "Snooze" }
                        }
                    }
                    @if v.is_emergency() { (act(id, "resolve", "Resolve: the patient is safe", back, notes)) }
                    @if notes { (act(id, "comment", "Comment", back, true)) }
                }
            }
        }
    }
}

/// One answer as a form: a button, and a note field where the page has room for one.
fn act(id: i64, what: &str, label: &str, back: &str, note: bool) -> Markup {
    html! {
        form.act method="post" action={"/ui/alerts/" (id) "/" (what)} {
            input type="hidden" name="back" value=(back);
            @if note {
                label for={(what) "-note-" (id)} class="sr-only" { (label) " note" }
                input id={(what) "-note-" (id)} name="note" placeholder={"note for " (label.to_lowercase())};
            }
            button type="submit" { (label) }
        }
    }
}

/// An alert's timeline: who did what, when.
pub fn timeline(events: &[AlertEvent]) -> Markup {
    html! {
        ul.timeline {
            @for e in events {
                li {
                    (clock(e.at_ms)) " — " strong { (e.kind) }
                    @if let Some(w) = &e.who { " by " (w) }
                    @if let Some(v) = e.value { " at " (v) }
                    @if let Some(n) = &e.note { ": " em { (n) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str) -> AlertView {
        AlertView {
            alert: AlertRecord {
                id: 7,
                patient: "p1".into(),
                rule: "heart-rate-high".into(),
                severity: "critical".into(),
                state: state.into(),
                raised_reading_ms: 0,
                raised_at_ms: 0,
                value: 150.0,
                threshold: 120.0,
                late: false,
                source: "hub".into(),
                resolved_reading_ms: None,
                resolved_at_ms: None,
            },
            title: "Heart rate high".into(),
            responses: vec![],
            snoozes: vec![],
            muted: None,
            cap_min: 15.0,
            events: vec![],
        }
    }

    #[test]
    fn an_open_alert_offers_its_answers_and_snoozes_no_longer_than_its_cap() {
        let html = card(&view("raised"), "dr", 60_000, "/ui/worklist", false).into_string();
        assert!(html.contains(r#"action="/ui/alerts/7/ack""#));
        assert!(html.contains(r#"action="/ui/alerts/7/accept""#));
        assert!(html.contains(r#"<option value="15">"#));
        assert!(
            !html.contains(r#"<option value="30">"#),
            "critical caps at 15 min"
        );
        assert!(
            html.contains("Critical"),
            "the severity is a word, not only a colour"
        );
    }

    #[test]
    fn an_accepted_or_snoozed_alert_says_so_and_offers_undo() {
        let mut v = view("raised");
        v.responses.push(Response {
            recipient: "dr-b".into(),
            state: "accepted".into(),
            at_ms: 0,
        });
        v.snoozes.push(Snooze {
            id: 1,
            alert: 7,
            recipient: Some("dr".into()),
            who: "dr".into(),
            reason: Some("seen at visit".into()),
            from_ms: 0,
            until_ms: 600_000,
            ended_ms: None,
            ended_why: None,
        });
        let html = card(&v, "dr", 60_000, "/", false).into_string();
        assert!(html.contains("accepted by dr-b"));
        assert!(!html.contains("/accept\""), "taken already");
        assert!(html.contains("/unsnooze"));
        assert!(html.contains("seen at visit"));
        let resolved = card(&view("resolved"), "dr", 0, "/", false).into_string();
        assert!(
            !resolved.contains("<form"),
            "nothing to answer on a resolved alert"
        );
    }
}
