//! What people do about an alert, kept apart from the condition itself.
//!
//! ```text
//! alert_event(seq, alert, patient, at_ms, kind, who, note, value, reading_ms)
//!     every change of the condition (raised, updated, resolved, reopened) and every response
//!     (seen, ack, accept, snooze, unsnooze, comment), in one numbered sequence: the alert's
//!     timeline, and what the live stream replays after a reconnect (`seq` is the event id)
//! alert_response(alert, recipient, state, at_ms)     PRIMARY KEY(alert, recipient)
//!     each recipient's own state: notified → seen → acknowledged, or accepted (one person
//!     takes the alert for the team)
//! snooze(id, alert, patient, rule, recipient, who, reason, from_ms, until_ms, ended_ms, ended_why)
//!     `recipient` NULL for the whole team; active while not ended and before `until_ms`
//! ```
//!
//! Invariants: at most one recipient of an alert is `accepted`; a snooze ends when its alert
//! resolves or gets markedly worse (then every response goes back to `notified`); responses are
//! only to open alerts (a comment may follow a resolved one).

use rusqlite::{Connection, OptionalExtension, params};

use crate::alerts::AlertRecord;
use crate::{StoreError, escalation};

/// One entry of an alert's timeline (and of the live stream).
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    pub seq: i64,
    pub alert: i64,
    pub patient: String,
    pub at_ms: i64,
    /// `raised`, `updated`, `resolved`, `reopened`, `seen`, `ack`, `accept`, `snooze`,
    /// `unsnooze` or `comment`.
    pub kind: String,
    /// The person, or `None` for the rules.
    pub who: Option<String>,
    pub note: Option<String>,
    /// The alert's value at the event.
    pub value: Option<f64>,
    /// The reading that made the change (raised, updated, resolved).
    pub reading_ms: Option<i64>,
}

/// One recipient's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub recipient: String,
    /// `notified`, `seen`, `acknowledged` or `accepted`.
    pub state: String,
    pub at_ms: i64,
}

/// A snooze as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Snooze {
    pub id: i64,
    pub alert: i64,
    /// `None`: the whole team.
    pub recipient: Option<String>,
    pub who: String,
    pub reason: Option<String>,
    pub from_ms: i64,
    pub until_ms: i64,
    pub ended_ms: Option<i64>,
    /// `undone`, `resolved` or `worsened`.
    pub ended_why: Option<String>,
}

impl Snooze {
    /// Whether it silences now.
    pub fn active(&self, now_ms: i64) -> bool {
        self.ended_ms.is_none() && now_ms < self.until_ms
    }
}

/// What a person does.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// The recipient's own screen has it (their dashboard received the event): notified →
    /// delivered, and nothing else.
    Delivered,
    Seen,
    Ack,
    Accept,
    /// For `until_ms`, for this person or (`team`) everyone.
    Snooze {
        until_ms: i64,
        team: bool,
    },
    /// Ends the person's own snoozes of the alert, and the team's.
    Unsnooze,
    Comment,
    /// Ends an emergency: no reading can say the patient is safe, a person does.
    Resolve,
}

impl Act {
    fn kind(&self) -> &'static str {
        match self {
            Act::Delivered => "delivered",
            Act::Seen => "seen",
            Act::Ack => "ack",
            Act::Accept => "accept",
            Act::Snooze { .. } => "snooze",
            Act::Unsnooze => "unsnooze",
            Act::Comment => "comment",
            Act::Resolve => "resolved",
        }
    }
}

/// Why an act was refused (nothing was stored).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("alert {0} is not known")]
    Unknown(i64),
    #[error("alert {0} is resolved; only a comment can still be added")]
    Resolved(i64),
    #[error("alert {alert} was accepted by {by}")]
    AcceptedBy { alert: i64, by: String },
    #[error("alert {0} has no active snooze of yours or your team's to undo")]
    NothingToUndo(i64),
    #[error("alert {alert}: delivered is for a recipient still notified; yours is {state}")]
    NotNotified { alert: i64, state: String },
    #[error(
        "alert {0} resolves by itself when the readings are back to normal; a person resolves only an emergency"
    )]
    NotAnEmergency(i64),
}

/// The column values of an event about to be recorded.
pub(crate) struct NewEvent<'a> {
    pub alert: &'a AlertRecord,
    pub at_ms: i64,
    pub kind: &'a str,
    pub who: Option<&'a str>,
    pub note: Option<&'a str>,
    pub reading_ms: Option<i64>,
}

/// Records an event, and queues its webhook deliveries in the same transaction.
pub(crate) fn record(c: &Connection, e: &NewEvent<'_>) -> Result<i64, StoreError> {
    c.prepare_cached(
        "INSERT INTO alert_event(alert, patient, at_ms, kind, who, note, value, reading_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.alert.id,
        e.alert.patient,
        e.at_ms,
        e.kind,
        e.who,
        e.note,
        e.alert.value,
        e.reading_ms
    ])?;
    let seq = c.last_insert_rowid();
    crate::webhooks::enqueue(
        c,
        seq,
        &e.alert.patient,
        e.alert.severity == "critical",
        e.at_ms,
    )?;
    Ok(seq)
}

/// The people (accounts) who are the practitioners of the patient's active care teams.
pub(crate) fn care_team_accounts(c: &Connection, patient: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT DISTINCT a.name FROM resource_term p
         JOIN resource_term m ON m.kind = 'CareTeam' AND m.id = p.id AND m.param = 'participant'
         JOIN account a ON 'Practitioner/' || a.practitioner = m.value
         WHERE p.kind = 'CareTeam' AND p.param = 'patient' AND p.value = ?1
           AND NOT EXISTS (SELECT 1 FROM resource_term s
                WHERE s.kind = 'CareTeam' AND s.id = p.id AND s.param = 'status'
                  AND s.value IN ('inactive', 'suspended', 'entered-in-error', 'proposed'))
         ORDER BY a.name",
    )?;
    let rows = stmt.query_map([format!("Patient/{patient}")], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An event of the hub's own (no person): a change of the condition, or a note of the
/// escalation or delivery.
fn condition_event(
    c: &Connection,
    a: &AlertRecord,
    at_ms: i64,
    kind: &str,
    note: Option<&str>,
    reading_ms: Option<i64>,
) -> Result<i64, StoreError> {
    record(
        c,
        &NewEvent {
            alert: a,
            at_ms,
            kind,
            who: None,
            note,
            reading_ms,
        },
    )
}

/// A new alert: its event, a `notified` response for each person its escalation policy's
/// first step names, and the timer of the next step.
pub(crate) fn raised(
    c: &Connection,
    a: &AlertRecord,
    reading_ms: i64,
    at_ms: i64,
) -> Result<(), StoreError> {
    condition_event(c, a, at_ms, "raised", None, Some(reading_ms))?;
    escalate_from_start(c, a, at_ms)
}

/// Notifies the first step's people and sets the timer of the next.
fn escalate_from_start(c: &Connection, a: &AlertRecord, at_ms: i64) -> Result<(), StoreError> {
    let (team, policy) = escalation::policy_for(c, a)?;
    // A checked policy has at least one step; an empty one (never stored) notifies nobody.
    let Some(first) = policy.steps.first() else {
        return Ok(());
    };
    let who = escalation::accounts(c, &a.patient, &first.notify)?;
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO alert_response(alert, recipient, state, at_ms) VALUES (?1, ?2, 'notified', ?3)",
    )?;
    for w in &who {
        insert.execute(params![a.id, w, at_ms])?;
    }
    escalation::start(c, a.id, team.as_deref(), first.wait_ms, at_ms)
}

/// An escalation step: its people are notified (a response for those who had none), except
/// those with an active snooze of the alert (their own or the team's); the event says who was
/// and who was not.
pub(crate) fn notify(
    c: &Connection,
    a: &AlertRecord,
    who: &[String],
    at_ms: i64,
    step: usize,
    round: u32,
) -> Result<(), StoreError> {
    let (mut told, mut quiet) = (Vec::new(), Vec::new());
    for w in who {
        let snoozed: bool = c
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM snooze WHERE alert = ?1 AND ended_ms IS NULL
                   AND until_ms > ?3 AND (recipient IS NULL OR recipient = ?2))",
            )?
            .query_row(params![a.id, w, at_ms], |r| r.get(0))?;
        if snoozed {
            quiet.push(w.as_str());
            continue;
        }
        c.prepare_cached(
            "INSERT OR IGNORE INTO alert_response(alert, recipient, state, at_ms) VALUES (?1, ?2, 'notified', ?3)",
        )?
        .execute(params![a.id, w, at_ms])?;
        told.push(w.as_str());
    }
    let mut note = format!("step {step}, round {}: notified {}", round + 1, list(&told));
    if !quiet.is_empty() {
        note.push_str(&format!("; snoozed: {}", list(&quiet)));
    }
    note_event(c, a, at_ms, "escalated", &note)
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "nobody".into()
    } else {
        names.join(", ")
    }
}

/// An event of the hub's own (no person), with a note.
pub(crate) fn note_event(
    c: &Connection,
    a: &AlertRecord,
    at_ms: i64,
    kind: &str,
    note: &str,
) -> Result<(), StoreError> {
    condition_event(c, a, at_ms, kind, Some(note), None)?;
    Ok(())
}

/// The alert resolved: its event, and its snoozes end.
pub(crate) fn resolved(
    c: &Connection,
    a: &AlertRecord,
    reading_ms: i64,
    at_ms: i64,
) -> Result<(), StoreError> {
    condition_event(c, a, at_ms, "resolved", None, Some(reading_ms))?;
    resolution_ends(c, a.id, at_ms)
}

/// What an alert's resolution ends, whoever resolves it (a reading, or a person for an
/// emergency): its snoozes and its escalation.
fn resolution_ends(c: &Connection, alert: i64, at_ms: i64) -> Result<(), StoreError> {
    end_snoozes(c, alert, None, at_ms, "resolved")?;
    escalation::end(c, alert, at_ms, "resolved")
}

/// How much worse than when it was last answered an open alert must get to be asked about
/// again: its distance past the threshold at least doubled, and the value moved by at least
/// this share of the threshold (so that 1 beat/min past a limit becoming 2 is not "markedly
/// worse"). Osler's choice: no standard sets one (see `../shared/reference/alerts.md`).
pub const REOPEN_MIN_MOVE: f64 = 0.05;

/// Whether `now` is markedly worse than `answered` for an alert at `threshold`.
pub fn markedly_worse(threshold: f64, answered: f64, now: f64) -> bool {
    let (was, is) = ((answered - threshold).abs(), (now - threshold).abs());
    is >= 2.0 * was && (now - answered).abs() >= REOPEN_MIN_MOVE * threshold.abs()
}

/// The alert got worse (its new worst value is stored): its event; when markedly worse than
/// when it was last acknowledged or accepted, every response goes back to `notified`, its
/// snoozes end, a `reopened` event says so, and the escalation starts again.
pub(crate) fn updated(
    c: &Connection,
    a: &AlertRecord,
    reading_ms: Option<i64>,
    at_ms: i64,
) -> Result<(), StoreError> {
    condition_event(c, a, at_ms, "updated", None, reading_ms)?;
    // The value of the last answer since the last re-opening.
    let answered: Option<(String, Option<f64>)> = c
        .prepare_cached(
            "SELECT kind, value FROM alert_event
             WHERE alert = ?1 AND kind IN ('ack', 'accept', 'reopened') ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([a.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((kind, Some(answered))) = answered else {
        return Ok(());
    };
    if kind == "reopened" || !markedly_worse(a.threshold, answered, a.value) {
        return Ok(());
    }
    c.prepare_cached("UPDATE alert_response SET state = 'notified', at_ms = ?2 WHERE alert = ?1")?
        .execute(params![a.id, at_ms])?;
    end_snoozes(c, a.id, None, at_ms, "worsened")?;
    condition_event(
        c,
        a,
        at_ms,
        "reopened",
        Some("markedly worse than when it was answered"),
        reading_ms,
    )?;
    escalate_from_start(c, a, at_ms)
}

/// Ends active snoozes of an alert (`who`: only that person's own and the team's).
fn end_snoozes(
    c: &Connection,
    alert: i64,
    who: Option<&str>,
    at_ms: i64,
    why: &str,
) -> Result<usize, StoreError> {
    Ok(c.prepare_cached(
        "UPDATE snooze SET ended_ms = ?2, ended_why = ?3
             WHERE alert = ?1 AND ended_ms IS NULL AND until_ms > ?2
               AND (?4 IS NULL OR recipient IS NULL OR recipient = ?4)",
    )?
    .execute(params![alert, at_ms, why, who])?)
}

const RANK: &[&str] = &["notified", "delivered", "seen", "acknowledged", "accepted"];

fn rank(state: &str) -> usize {
    RANK.iter().position(|s| *s == state).unwrap_or(0)
}

/// Sets `who`'s response to `state` unless it is already further along.
fn respond(
    c: &Connection,
    alert: i64,
    who: &str,
    state: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let now: Option<String> = c
        .prepare_cached("SELECT state FROM alert_response WHERE alert = ?1 AND recipient = ?2")?
        .query_row(params![alert, who], |r| r.get(0))
        .optional()?;
    if now.as_deref().is_some_and(|s| rank(s) >= rank(state)) {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO alert_response(alert, recipient, state, at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(alert, recipient) DO UPDATE SET state = excluded.state, at_ms = excluded.at_ms",
    )?
    .execute(params![alert, who, state, at_ms])?;
    Ok(())
}

/// Does what a person asks, in the caller's transaction; `Ok(Err)` when it is refused (and
/// nothing changed), otherwise the number of the event that records it.
pub(crate) fn act(
    c: &Connection,
    alert: i64,
    who: &str,
    act: &Act,
    note: Option<&str>,
    at_ms: i64,
) -> Result<Result<i64, Refused>, StoreError> {
    let Some(a) = crate::alerts::get(c, alert)? else {
        return Ok(Err(Refused::Unknown(alert)));
    };
    if a.state != "raised" && *act != Act::Comment {
        return Ok(Err(Refused::Resolved(alert)));
    }
    match act {
        Act::Delivered => {
            let mine: Option<String> = c
                .prepare_cached(
                    "SELECT state FROM alert_response WHERE alert = ?1 AND recipient = ?2",
                )?
                .query_row(params![alert, who], |r| r.get(0))
                .optional()?;
            match mine.as_deref() {
                Some("notified") => respond(c, alert, who, "delivered", at_ms)?,
                other => {
                    return Ok(Err(Refused::NotNotified {
                        alert,
                        state: other.unwrap_or("not a recipient").to_owned(),
                    }));
                }
            }
        }
        Act::Seen => respond(c, alert, who, "seen", at_ms)?,
        Act::Ack => respond(c, alert, who, "acknowledged", at_ms)?,
        Act::Accept => {
            if let Some(by) = accepted_by(c, alert)?
                && by != who
            {
                return Ok(Err(Refused::AcceptedBy { alert, by }));
            }
            respond(c, alert, who, "accepted", at_ms)?;
            // Accepting (not seeing, not acknowledging) stops the escalation.
            escalation::end(c, alert, at_ms, "accepted")?;
        }
        Act::Snooze { until_ms, team } => {
            c.prepare_cached(
                "INSERT INTO snooze(alert, patient, rule, recipient, who, reason, from_ms, until_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                alert,
                a.patient,
                a.rule,
                (!team).then_some(who),
                who,
                note,
                at_ms,
                until_ms
            ])?;
        }
        Act::Unsnooze => {
            if end_snoozes(c, alert, Some(who), at_ms, "undone")? == 0 {
                return Ok(Err(Refused::NothingToUndo(alert)));
            }
        }
        Act::Comment => {}
        Act::Resolve => {
            if !a.rule.starts_with(escalation::EMERGENCY_PREFIX) {
                return Ok(Err(Refused::NotAnEmergency(alert)));
            }
            c.prepare_cached(
                "UPDATE alert SET state = 'resolved', resolved_at_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![alert, at_ms])?;
            resolution_ends(c, alert, at_ms)?;
        }
    }
    let seq = record(
        c,
        &NewEvent {
            alert: &a,
            at_ms,
            kind: act.kind(),
            who: Some(who),
            note,
            reading_ms: None,
        },
    )?;
    Ok(Ok(seq))
}

pub(crate) fn accepted_by(c: &Connection, alert: i64) -> Result<Option<String>, StoreError> {
    Ok(c.prepare_cached(
        "SELECT recipient FROM alert_response WHERE alert = ?1 AND state = 'accepted'",
    )?
    .query_row([alert], |r| r.get(0))
    .optional()?)
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertEvent> {
    Ok(AlertEvent {
        seq: r.get(0)?,
        alert: r.get(1)?,
        patient: r.get(2)?,
        at_ms: r.get(3)?,
        kind: r.get(4)?,
        who: r.get(5)?,
        note: r.get(6)?,
        value: r.get(7)?,
        reading_ms: r.get(8)?,
    })
}

const EVENT_COLUMNS: &str = "seq, alert, patient, at_ms, kind, who, note, value, reading_ms";

/// An alert's timeline, oldest first.
pub(crate) fn timeline(c: &Connection, alert: i64) -> Result<Vec<AlertEvent>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM alert_event WHERE alert = ?1 ORDER BY seq"
    ))?;
    let rows = stmt.query_map([alert], event_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Events after `seq`, oldest first, at most `limit`; with `within`, only those patients'.
/// Also the number of the last event looked at (a caller's next start): a caller who sees few
/// patients moves past the others' events instead of reading them again, at most
/// [`SCAN_MAX`] of them per call.
pub(crate) fn events_after(
    c: &Connection,
    seq: i64,
    limit: usize,
    within: Option<&[String]>,
) -> Result<(Vec<AlertEvent>, i64), StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM alert_event WHERE seq > ?1 ORDER BY seq"
    ))?;
    let rows = stmt.query_map([seq], event_row)?;
    let (mut out, mut last) = (Vec::new(), seq);
    for (n, e) in rows.enumerate() {
        let e = e?;
        last = e.seq;
        if within.is_none_or(|w| w.contains(&e.patient)) {
            out.push(e);
        }
        if out.len() >= limit || n + 1 >= SCAN_MAX {
            break;
        }
    }
    Ok((out, last))
}

/// The most events one [`events_after`] looks at.
pub const SCAN_MAX: usize = 10_000;

/// The last event's number (0 before any).
pub(crate) fn last_seq(c: &Connection) -> Result<i64, StoreError> {
    Ok(
        c.query_row("SELECT COALESCE(MAX(seq), 0) FROM alert_event", [], |r| {
            r.get(0)
        })?,
    )
}

pub(crate) fn responses(c: &Connection, alert: i64) -> Result<Vec<Response>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT recipient, state, at_ms FROM alert_response WHERE alert = ?1 ORDER BY recipient",
    )?;
    let rows = stmt.query_map([alert], |r| {
        Ok(Response {
            recipient: r.get(0)?,
            state: r.get(1)?,
            at_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn snoozes(c: &Connection, alert: i64) -> Result<Vec<Snooze>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, alert, recipient, who, reason, from_ms, until_ms, ended_ms, ended_why
         FROM snooze WHERE alert = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([alert], |r| {
        Ok(Snooze {
            id: r.get(0)?,
            alert: r.get(1)?,
            recipient: r.get(2)?,
            who: r.get(3)?,
            reason: r.get(4)?,
            from_ms: r.get(5)?,
            until_ms: r.get(6)?,
            ended_ms: r.get(7)?,
            ended_why: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The alert burden over a window: what the programs measure (alerts per patient-day, the
/// share that someone answered).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Burden {
    /// Alerts raised in the window.
    pub alerts: u64,
    /// Of which someone acknowledged or accepted.
    pub answered: u64,
    /// Days of monitoring in the window, over every patient (from each one's first reading, so
    /// a patient whose data began a week ago counts seven).
    pub patient_days: f64,
}

pub(crate) fn burden(c: &Connection, now_ms: i64, window_ms: i64) -> Result<Burden, StoreError> {
    let since = now_ms - window_ms;
    let (alerts, answered): (i64, i64) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(EXISTS (SELECT 1 FROM alert_event e
             WHERE e.alert = a.id AND e.kind IN ('ack', 'accept'))), 0)
         FROM alert a WHERE a.raised_at_ms >= ?1",
        [since],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // From each patient's first reading (a seek per series), so that a history sent at once
    // counts the days it covers.
    let ms: f64 = c.query_row(
        "SELECT COALESCE(SUM(?1 - MAX(first, ?2)), 0) FROM (
           SELECT MIN((SELECT MIN(r.t) FROM reading r WHERE r.series = s.id)) AS first
           FROM series s GROUP BY s.patient)
         WHERE first IS NOT NULL AND first <= ?1",
        params![now_ms, since],
        |r| r.get(0),
    )?;
    Ok(Burden {
        alerts: alerts as u64,
        answered: answered as u64,
        patient_days: ms / 86_400_000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markedly_worse_needs_double_the_distance_and_a_real_move() {
        // SpO2 below 90: answered at 89, 85 is 5 past (≥ 2 × 1) and 4 points (< 4.5).
        assert!(!markedly_worse(90.0, 89.0, 85.0));
        assert!(markedly_worse(90.0, 89.0, 84.0));
        // Heart rate above 120: answered at 125, 131 is 11 past (≥ 10) and moved 6 (≥ 6).
        assert!(markedly_worse(120.0, 125.0, 131.0));
        assert!(!markedly_worse(120.0, 125.0, 129.0));
    }

    #[test]
    fn ranks_only_move_forward() {
        assert!(rank("accepted") > rank("acknowledged"));
        assert!(rank("acknowledged") > rank("seen"));
        assert!(rank("seen") > rank("delivered"));
        assert!(rank("delivered") > rank("notified"));
    }
}
