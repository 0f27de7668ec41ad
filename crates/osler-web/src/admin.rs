//! Administration: people's accounts, care teams, their escalation policies, and webhook
//! endpoints. Changes are made through the API and the `osler hub` commands this page names
//! (each audited); the page shows what is in force.

use maud::html;
use osler_store::Account;
use osler_store::escalation::EscalationPolicy;
use osler_store::lifecycle::Burden;
use osler_store::webhooks::Endpoint;

use crate::{Nav, Page, clock};

/// A care team, its members and patients (from the registry), and its escalation policy.
#[derive(Clone, Debug)]
pub struct TeamView {
    pub id: String,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub patients: usize,
    /// `None`: the default policy per severity applies.
    pub policy: Option<EscalationPolicy>,
}

pub fn page(
    accounts: &[Account],
    teams: &[TeamView],
    webhooks: &[Endpoint],
    burden: Option<&Burden>,
) -> Page {
    let main = html! {
        h1 { "Administration" }
        h2 { "Alert burden, last 30 days" }
        @match burden {
            Some(b) => {
                div.totals {
                    div { strong { (b.alerts) } "alerts raised" }
                    div { strong { (format!("{:.0}", b.patient_days)) } "patient-days monitored" }
                    div {
                        strong { @if b.patient_days > 0.0 { (format!("{:.2}", b.alerts as f64 / b.patient_days)) } @else { "—" } }
                        "alerts per patient-day"
                    }
                    div {
                        strong { @if b.alerts > 0 { (format!("{:.0}%", 100.0 * b.answered as f64 / b.alerts as f64)) } @else { "—" } }
                        "acknowledged or accepted"
                    }
                }
                p.hint { "The same figures are in /metrics (osler_alerts_per_patient_day, osler_alerts_answered_ratio). Many alerts per patient-day with few answered is alarm fatigue: review the thresholds." }
            }
            None => { p.muted { "Cannot be read right now." } }
        }
        h2 { "People" }
        p.hint { "Add a person with " code { "osler hub user add --data DIR --name NAME --role admin|clinician|patient" } "; they enrol with the one-time code it prints." }
        table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Is" } th scope="col" { "Enrolled" } th scope="col" { "Second factor" } } }
            tbody {
                @for a in accounts {
                    tr {
                        td { (a.name) }
                        td { (a.role) }
                        td {
                            @if let Some(p) = &a.practitioner { "Practitioner/" (p) }
                            @if let Some(p) = &a.patient { "Patient/" (p) }
                        }
                        td { @match a.enrolled_ms { Some(t) => { (clock(t)) }, None => { span.stale { "waiting for enrolment" } } } }
                        td { @if a.totp_secret.is_some() { "TOTP" } @else { "none" } }
                    }
                }
            }
        }
        h2 { "Care teams and escalation" }
        p.hint { "Change a team's policy with " code { "PUT /escalation/{team}" } "; without one, the whole team is told again every 5 (critical), 10 (urgent) or 30 (warning) minutes until someone accepts." }
        table {
            thead { tr { th scope="col" { "Team" } th scope="col" { "Members" } th scope="col" { "Patients" } th scope="col" { "Escalation" } } }
            tbody {
                @for t in teams {
                    tr {
                        td { (t.name.as_deref().unwrap_or(&t.id)) br; span.muted { "CareTeam/" (t.id) } }
                        td { (t.members.join(", ")) }
                        td { (t.patients) }
                        td {
                            @match &t.policy {
                                None => { span.muted { "default" } }
                                Some(p) => {
                                    ol {
                                        @for s in &p.steps { li { "notify " (s.notify.join(", ")) ", wait " (s.wait_ms / 60_000) " min" } }
                                    }
                                    "then repeat " (p.repeat) " times"
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Webhook endpoints" }
        p.hint { "Add one with " code { "POST /webhooks" } "; failed deliveries are listed at " code { "/webhooks/deliveries?state=dead" } " and can be replayed. Addresses show their host only: a path may carry the receiver's secret." }
        table {
            thead { tr { th scope="col" { "Id" } th scope="col" { "Host" } th scope="col" { "Team" } th scope="col" { "State" } } }
            tbody {
                @for w in webhooks {
                    tr {
                        td { (w.id) }
                        td { (host_of(&w.url)) }
                        td { (w.team.as_deref().unwrap_or("every team")) }
                        td {
                            @match w.disabled_ms {
                                Some(t) => { span.stale { "disabled " (clock(t)) } @if let Some(why) = &w.disabled_why { ": " (why) } }
                                None => { "delivering" }
                            }
                        }
                    }
                }
            }
        }
    };
    Page {
        title: "Administration".into(),
        nav: Nav::Admin,
        live: false,
        main,
    }
}

/// The host (and port) of a URL, without its path, query or credentials.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit('@').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_webhook_shows_its_host_and_never_its_path_or_credentials() {
        assert_eq!(
            super::host_of("https://u:pw@hooks.example:8443/T0/secret?x=1"),
            "hooks.example:8443"
        );
        assert_eq!(super::host_of("http://127.0.0.1:9/a"), "127.0.0.1:9");
    }
}
