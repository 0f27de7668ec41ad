//! The clinician's dashboard as HTML: every page, charts drawn as SVG on the server, and the
//! stylesheet and script the pages use (both written for Osler and compiled into the binary).
//! No IO: the hub gathers what a page shows (narrowed to what the viewer may see) and hands
//! it here.
//!
//! Main types: [`Page`] (a page's title, its place in the navigation and its `<main>`),
//! [`Viewer`] (who is looking), [`document`] (a page as a whole document), and one module per
//! page: [`worklist`], [`inbox`], [`patient`], [`devices`], [`admin`], [`sign_in`].
//!
//! Accessibility (WCAG 2.2 AA) is part of the markup: a skip link, landmarks, labelled
//! controls, `aria-current` navigation, a polite live region for updates, severities and
//! staleness always written as words beside their colour, and targets of at least 24 px.

pub mod admin;
pub mod alerts;
pub mod charts;
pub mod devices;
mod fmt;
pub mod inbox;
pub mod patient;
pub mod sign_in;
pub mod worklist;

pub use fmt::{age, clock, label, value};
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The stylesheet, served at `/ui/assets/osler.css`.
pub const CSS: &str = include_str!("../assets/osler.css");
/// The script, served at `/ui/assets/osler.js`.
pub const JS: &str = include_str!("../assets/osler.js");

/// Who is looking at the page.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub name: String,
    pub role: String,
    /// Sees every patient and the hub's operations (administrators).
    pub admin: bool,
}

/// Where a page sits in the navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    Worklist,
    Inbox,
    Patient,
    Devices,
    Admin,
    SignIn,
}

/// A rendered page: its title, its place, and its `<main>`; `live` pages refresh their main
/// when an alert event arrives.
pub struct Page {
    pub title: String,
    pub nav: Nav,
    pub live: bool,
    pub main: Markup,
}

/// The whole document around a page.
pub fn document(page: &Page, viewer: Option<&Viewer>) -> Markup {
    let link = |href: &str, label: &str, nav: Nav| {
        html! {
            li { a href=(href) aria-current=[(page.nav == nav).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · Osler" }
                link rel="stylesheet" href="/ui/assets/osler.css";
                script src="/ui/assets/osler.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Osler" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            ul {
                                (link("/ui/worklist", "Worklist", Nav::Worklist))
                                (link("/ui/inbox", "Alert inbox", Nav::Inbox))
                                (link("/ui/devices", "Devices", Nav::Devices))
                                @if v.admin { (link("/ui/admin", "Administration", Nav::Admin)) }
                            }
                        }
                        span.who { (v.name) " (" (v.role) ")" }
                        form method="post" action="/ui/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                // Emergencies announced before they are stored (the hub's `notice` events),
                // until the stored alert arrives: filled by osler.js.
                div id="urgent" role="alert" hidden {}
                main id="main" tabindex="-1" data-live=[page.live.then_some("")] { (page.main) }
                div id="live" class="sr-only" aria-live="polite" {}
            }
        }
    }
}

/// Text that is already HTML (the charts' SVG, built here).
pub(crate) fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_escapes_what_it_is_given_and_marks_the_current_page() {
        let page = Page {
            title: "<script>".into(),
            nav: Nav::Inbox,
            live: true,
            main: html! { p { "x" } },
        };
        let v = Viewer {
            name: "dr <b>".into(),
            role: "clinician".into(),
            admin: false,
        };
        let html = document(&page, Some(&v)).into_string();
        assert!(html.contains("&lt;script&gt; · Osler"));
        assert!(html.contains("dr &lt;b&gt;"));
        assert!(html.contains(r#"<a href="/ui/inbox" aria-current="page">"#));
        assert!(
            !html.contains("/ui/admin"),
            "administration is for administrators"
        );
        assert!(html.contains(r#"data-live"#));
    }
}
