//! The dashboard's forms: answering an alert, adding a note or call to a patient's care
//! timeline, changing a threshold of the plan. Each runs the API's own path (the same
//! checks, the same commit with its audit entry) and answers a browser: with the script, a
//! sentence (or why not) for the page to show; without it, back to the page it came from.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use osler_store::care::{CareNote, NoteKind};
use serde_json::{Value, json};

use super::{field, form_fields, render, safe_next, see_other, viewer, wants_fragment};
use crate::access::{Ax, Cx, audited, sees};
use crate::{AppState, now_ms};

/// What a form did: a sentence for the page's script, and the key of the fixed sentence the
/// page shows after a redirect (`?saved=note`; the address never carries text to display, so
/// a link cannot make the page say something the hub did not).
struct Done {
    message: String,
    key: &'static str,
}

/// A form's outcome: done, or refused (`status`, why), answered as the page asked.
fn outcome(
    headers: &HeaderMap,
    caller: &osler_auth::Caller,
    back: &str,
    done: Result<Done, (StatusCode, String)>,
) -> Response {
    match (done, wants_fragment(headers)) {
        (Ok(Done { message, .. }), true) => audited(
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                message,
            )
                .into_response(),
        ),
        (Ok(Done { key, .. }), false) => {
            let sep = if back.contains('?') { '&' } else { '?' };
            audited(see_other(&format!("{back}{sep}saved={key}")))
        }
        (Err((status, why)), true) => (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            why,
        )
            .into_response(),
        (Err((status, why)), false) => {
            let page = osler_web::Page {
                title: "Not done".into(),
                nav: osler_web::Nav::Patient,
                live: false,
                main: maud::html! {
                    h1 { "Not done" }
                    p.error role="alert" { (why) }
                    p { a href=(back) { "Back" } }
                },
            };
            let mut r = render(&page, Some(&viewer(caller)), headers);
            *r.status_mut() = status;
            r
        }
    }
}

/// What each answer is called when it is done.
fn done_text(what: &str) -> &'static str {
    match what {
        "ack" => "Acknowledged",
        "accept" => "Accepted: the alert is yours",
        "snooze" => "Snoozed",
        "unsnooze" => "Snooze undone",
        "comment" => "Comment added",
        "resolve" => "Resolved",
        "seen" => "Marked seen",
        _ => "Done",
    }
}

/// `POST /ui/alerts/{id}/{what}` with `note`, `minutes` and `scope` as form fields: the body
/// `POST /alerts/{id}/{what}` takes, given by the same path.
pub(super) async fn answer(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    axum::Extension(audit): Ax,
    Path((id, what)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (bytes, back) = match answer_form(&body) {
        Ok(x) => x,
        Err((why, back)) => {
            let refused = Err((StatusCode::UNPROCESSABLE_ENTITY, why));
            return outcome(&headers, &caller, &back, refused);
        }
    };
    let done = async {
        let a = crate::alert_lifecycle::alert_for(&state, &caller, &id).await?;
        crate::alert_lifecycle::give_answer(&state, &caller, &audit, &a, &what, &bytes).await?;
        let title = crate::alerts::title_of(&a.rule).unwrap_or(a.rule.as_str());
        Ok(Done {
            message: format!("{}: {title} for {}", done_text(&what), a.patient),
            key: "answer",
        })
    }
    .await;
    outcome(&headers, &caller, &back, done)
}

/// An answer form (`note`, `minutes`, `scope`, `back`) as the JSON body the API's answer
/// takes, and the dashboard page to return to; or why not, and that page. Public for the fuzz
/// target.
pub fn answer_form(body: &[u8]) -> Result<(Vec<u8>, String), (String, String)> {
    let f = form_fields(body);
    let back = safe_next(field(&f, "back"));
    let mut request = serde_json::Map::new();
    if let Some(n) = field(&f, "note") {
        request.insert("note".into(), json!(n));
    }
    if let Some(m) = field(&f, "minutes") {
        match m.parse::<f64>() {
            Ok(m) => request.insert("minutes".into(), json!(m)),
            Err(_) => return Err((format!("minutes: {m:?} is not a number"), back)),
        };
    }
    if let Some(s) = field(&f, "scope") {
        request.insert("scope".into(), json!(s));
    }
    Ok((Value::Object(request).to_string().into_bytes(), back))
}

/// Longest note kept (a care note is a paragraph, not a document).
const NOTE_MAX: usize = 4000;
/// Most minutes one entry may log (ten hours; a typing slip of 6000 is refused).
const MINUTES_MAX: u32 = 600;

/// `POST /ui/patients/{id}/notes` with `kind` (note or call), `minutes` and `text`.
pub(super) async fn note(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    axum::Extension(audit): Ax,
    Path(patient): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form_fields(&body);
    let back = safe_next(field(&f, "back"));
    let bad = |why: String| Err((StatusCode::UNPROCESSABLE_ENTITY, why));
    let done = if !sees(&caller, &patient) {
        Err((
            StatusCode::NOT_FOUND,
            format!("patient {patient} is not one of yours"),
        ))
    } else {
        match (
            field(&f, "kind").map(NoteKind::parse),
            field(&f, "minutes").unwrap_or("0").parse::<u32>(),
            field(&f, "text"),
        ) {
            (Some(None), _, _) => bad("kind: note or call".into()),
            (_, Err(_), _) => bad(format!("minutes: a whole number from 0 to {MINUTES_MAX}")),
            (_, Ok(m), _) if m > MINUTES_MAX => {
                bad(format!("minutes: at most {MINUTES_MAX} in one entry"))
            }
            (_, _, None) => bad("text: say what was done or discussed".into()),
            (_, _, Some(t)) if t.chars().count() > NOTE_MAX => {
                bad(format!("text: at most {NOTE_MAX} characters"))
            }
            (kind, Ok(minutes), Some(text)) => {
                let kind = kind.flatten().unwrap_or(NoteKind::Note);
                let n = CareNote {
                    id: 0,
                    patient: patient.clone(),
                    author: caller.subject.clone(),
                    kind,
                    minutes,
                    text: text.to_owned(),
                    at_ms: now_ms(),
                };
                match state
                    .store
                    .add_note(n, audit.entry_about(Some(&patient)))
                    .await
                {
                    Ok(_) => Ok(if kind == NoteKind::Call {
                        Done {
                            message: format!("Call added ({minutes} min)"),
                            key: "call",
                        }
                    } else {
                        Done {
                            message: format!("Note added ({minutes} min)"),
                            key: "note",
                        }
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "a care note could not be stored");
                        Err((
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the store failed; nothing was saved, try again".into(),
                        ))
                    }
                }
            }
        }
    };
    outcome(&headers, &caller, &back, done)
}

/// `POST /ui/patients/{id}/plan/{rule}` with `threshold` and `reason`: `PUT /plans/…` with
/// the viewer's Practitioner as the author.
pub(super) async fn threshold(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): Cx,
    audit: Ax,
    Path((patient, rule)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form_fields(&body);
    let back = safe_next(field(&f, "back"));
    let practitioner = state
        .store
        .account(&caller.subject)
        .ok()
        .flatten()
        .and_then(|a| a.practitioner);
    let Some(practitioner) = practitioner else {
        let why = "only a clinician linked to a Practitioner can change a plan".to_owned();
        // Not the guard's refusal (403): the plan needs an author this caller cannot name.
        return outcome(
            &headers,
            &caller,
            &back,
            Err((StatusCode::UNPROCESSABLE_ENTITY, why)),
        );
    };
    let threshold = match field(&f, "threshold").map(str::parse::<f64>) {
        Some(Ok(t)) => Some(t),
        None => None,
        Some(Err(_)) => {
            let why = "threshold: a number".to_owned();
            return outcome(
                &headers,
                &caller,
                &back,
                Err((StatusCode::UNPROCESSABLE_ENTITY, why)),
            );
        }
    };
    let change = crate::plans::Change {
        threshold,
        applies: None,
        reason: field(&f, "reason").unwrap_or("").to_owned(),
        author: format!("Practitioner/{practitioner}"),
    };
    let r = crate::plans::set(
        State(state.clone()),
        axum::Extension(caller.clone()),
        audit,
        Path((patient, rule.clone())),
        Ok(axum::Json(change)),
    )
    .await;
    let (status, v) = super::json_of(r).await;
    let done = if status.is_success() {
        Ok(Done {
            message: format!(
                "Threshold of {rule} set to {}",
                v["threshold"]
                    .as_f64()
                    .map_or("its default".into(), |t| t.to_string())
            ),
            key: "threshold",
        })
    } else {
        Err((
            status,
            v["error"].as_str().unwrap_or("not changed").to_owned(),
        ))
    };
    outcome(&headers, &caller, &back, done)
}
