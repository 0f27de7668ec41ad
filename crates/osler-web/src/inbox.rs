//! The alert inbox: open and recent alerts grouped per patient, each with its state, who
//! acted when, and the answers (with a note) the viewer may give.

use maud::html;

use crate::alerts::{AlertView, card, timeline};
use crate::{Nav, Page};

/// One patient's alerts.
#[derive(Clone, Debug)]
pub struct Group {
    pub patient: String,
    pub name: Option<String>,
    /// Open first, then the recently resolved, each newest first.
    pub alerts: Vec<AlertView>,
}

pub fn page(groups: &[Group], viewer: &str, now_ms: i64, hours: u32) -> Page {
    let open: usize = groups
        .iter()
        .map(|g| {
            g.alerts
                .iter()
                .filter(|a| a.alert.state == "raised")
                .count()
        })
        .sum();
    let main = html! {
        h1 { "Alert inbox" }
        p.hint { (open) " open alerts; resolved ones from the last " (hours) " hours below them. Each answer is recorded with your name and time." }
        @if groups.is_empty() { p { "No alerts for your patients." } }
        @for g in groups {
            section aria-labelledby={"inbox-" (g.patient)} {
                h2 id={"inbox-" (g.patient)} {
                    a href={"/ui/patients/" (g.patient)} { (g.name.as_deref().unwrap_or(&g.patient)) }
                }
                @for a in &g.alerts {
                    (card(a, viewer, now_ms, "/ui/inbox", true))
                    @if !a.events.is_empty() {
                        details { summary { "Timeline (" (a.events.len()) ")" } (timeline(&a.events)) }
                    }
                }
            }
        }
    };
    Page {
        title: "Alert inbox".into(),
        nav: Nav::Inbox,
        live: true,
        main,
    }
}
