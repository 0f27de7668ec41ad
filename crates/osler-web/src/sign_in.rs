//! Signing in: the password, then (administrators and clinicians) the code from the
//! authenticator app or a recovery code.

use maud::html;

use crate::{Nav, Page};

/// The password form; `error` says why the last try failed.
pub fn password(next: &str, error: Option<&str>) -> Page {
    let main = html! {
        h1 { "Sign in to Osler" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            div.field {
                label for="name" { "Name" }
                input id="name" name="name" autocomplete="username" required autofocus;
            }
            div.field {
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
            }
            button.primary type="submit" { "Continue" }
        }
        p.hint { "New here? Enrol with the one-time code your administrator gave you (" code { "POST /auth/enrol" } ", see the README)." }
    };
    Page {
        title: "Sign in".into(),
        nav: Nav::SignIn,
        live: false,
        main,
    }
}

/// The second step: six digits from the authenticator app, or a recovery code.
pub fn second_factor(mfa_token: &str, next: &str, error: Option<&str>) -> Page {
    let main = html! {
        h1 { "Second factor" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form method="post" action="/ui/second-factor" {
            input type="hidden" name="mfa_token" value=(mfa_token);
            input type="hidden" name="next" value=(next);
            div.field {
                label for="code" { "Code from your authenticator app" }
                input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" autofocus;
            }
            p { "or" }
            div.field {
                label for="recovery" { "A recovery code (each works once)" }
                input id="recovery" name="recovery_code" autocomplete="off";
            }
            button.primary type="submit" { "Sign in" }
        }
    };
    Page {
        title: "Second factor".into(),
        nav: Nav::SignIn,
        live: false,
        main,
    }
}
