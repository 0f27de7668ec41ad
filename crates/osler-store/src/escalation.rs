//! Escalation: who is told of an open alert, and when, until someone accepts it.
//!
//! ```text
//! escalation_policy(team, repeat, author, at_ms)          PRIMARY KEY(team): a care team's policy
//! escalation_step(team, n, targets, wait_ms)              PRIMARY KEY(team, n)
//! escalation(alert, team, step, round, due_ms, ended_ms, ended_why)   PRIMARY KEY(alert)
//!     the timer of each open alert: the next step and when it is due
//! ```
//!
//! A policy is a list of steps: notify these targets, then wait; when a wait ends and nobody
//! has accepted the alert, the next step runs; after the last, the steps repeat `repeat` more
//! times, then the escalation is exhausted. Step 1 runs when the alert is raised. The timers
//! are rows, so a hub restarted in the middle of a wait runs the step when it was due (at
//! once, if that time passed while it was down), never from the start again.
//!
//! Targets: `team` (every person of the patient's care team), `Practitioner/{id}` (the people
//! whose account is that practitioner), `role:{role}` (every account of an Osler role, e.g.
//! `role:admin` for the operators).

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;
use crate::alerts::AlertRecord;

/// One step of a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub notify: Vec<String>,
    pub wait_ms: i64,
}

/// A care team's escalation policy.
#[derive(Clone, Debug, PartialEq)]
pub struct EscalationPolicy {
    pub steps: Vec<Step>,
    /// Rounds after the first.
    pub repeat: u32,
}

impl EscalationPolicy {
    /// The policy of a team that has none of its own: tell the whole team, and again while
    /// nobody accepts, every 5 minutes for a critical alert, 10 for an urgent one and 30 for
    /// a warning, three more times. Osler's choice: no published standard gives a remote-
    /// monitoring escalation time (`../shared/reference/alerts.md`).
    pub fn default_for(severity: &str) -> EscalationPolicy {
        let minutes = match severity {
            "warning" => 30,
            "urgent" => 10,
            _ => 5,
        };
        EscalationPolicy {
            steps: vec![Step {
                notify: vec!["team".into()],
                wait_ms: minutes * 60_000,
            }],
            repeat: 3,
        }
    }
}

/// What the rule id of an emergency (a fall, an SOS) begins with; the rules' own table
/// (`osler_rules::EMERGENCY_PREFIX`) is held to the same by a test of the hub.
pub const EMERGENCY_PREFIX: &str = "emergency-";

impl EscalationPolicy {
    /// An emergency's policy, whatever the team's own: the whole team at once, and again
    /// every 2 minutes while nobody accepts, ten more times (20 minutes). Osler's choice:
    /// short enough that a fall is never left for the 5 minutes of a critical reading, with
    /// the team told together because the nearest person, not the first on a rota, should go.
    pub fn emergency() -> EscalationPolicy {
        EscalationPolicy {
            steps: vec![Step {
                notify: vec!["team".into()],
                wait_ms: 2 * 60_000,
            }],
            repeat: 10,
        }
    }
}

/// Why a policy cannot be stored.
pub fn check(p: &EscalationPolicy) -> Result<(), String> {
    if p.steps.is_empty() || p.steps.len() > 10 {
        return Err("a policy has 1 to 10 steps".into());
    }
    if p.repeat > 10 {
        return Err("repeat is at most 10".into());
    }
    for (i, s) in p.steps.iter().enumerate() {
        let n = i + 1;
        if s.notify.is_empty() {
            return Err(format!("step {n} notifies nobody"));
        }
        if !(1_000..=86_400_000).contains(&s.wait_ms) {
            return Err(format!("step {n}: the wait is 1 second to 24 hours"));
        }
        for t in &s.notify {
            let ok = t == "team"
                || t.strip_prefix("Practitioner/").is_some_and(valid_id)
                || t.strip_prefix("role:")
                    .is_some_and(|r| ["admin", "clinician"].contains(&r));
            if !ok {
                return Err(format!(
                    "step {n}: {t:?} is not a target (team, Practitioner/{{id}}, role:admin, role:clinician)"
                ));
            }
        }
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Stores (replacing) a team's policy.
pub(crate) fn set(
    c: &Connection,
    team: &str,
    p: &EscalationPolicy,
    author: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO escalation_policy(team, repeat, author, at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(team) DO UPDATE SET repeat = excluded.repeat, author = excluded.author,
             at_ms = excluded.at_ms",
        params![team, p.repeat, author, at_ms],
    )?;
    c.execute("DELETE FROM escalation_step WHERE team = ?1", [team])?;
    for (n, s) in p.steps.iter().enumerate() {
        c.execute(
            "INSERT INTO escalation_step(team, n, targets, wait_ms) VALUES (?1, ?2, ?3, ?4)",
            params![team, n as i64, s.notify.join(" "), s.wait_ms],
        )?;
    }
    Ok(())
}

/// A team's own policy, if it has one.
pub(crate) fn get(c: &Connection, team: &str) -> Result<Option<EscalationPolicy>, StoreError> {
    let repeat: Option<u32> = c
        .prepare_cached("SELECT repeat FROM escalation_policy WHERE team = ?1")?
        .query_row([team], |r| r.get(0))
        .optional()?;
    let Some(repeat) = repeat else {
        return Ok(None);
    };
    let mut stmt = c.prepare_cached(
        "SELECT targets, wait_ms FROM escalation_step WHERE team = ?1 ORDER BY n",
    )?;
    let steps = stmt
        .query_map([team], |r| {
            Ok(Step {
                notify: r
                    .get::<_, String>(0)?
                    .split(' ')
                    .map(str::to_owned)
                    .collect(),
                wait_ms: r.get(1)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(EscalationPolicy { steps, repeat }))
}

/// The patient's active care teams, by id.
fn teams_of(c: &Connection, patient: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT DISTINCT p.id FROM resource_term p
         WHERE p.kind = 'CareTeam' AND p.param = 'patient' AND p.value = ?1
           AND NOT EXISTS (SELECT 1 FROM resource_term s
                WHERE s.kind = 'CareTeam' AND s.id = p.id AND s.param = 'status'
                  AND s.value IN ('inactive', 'suspended', 'entered-in-error', 'proposed'))
         ORDER BY p.id",
    )?;
    let rows = stmt.query_map([format!("Patient/{patient}")], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The policy an alert of this patient follows: the first of their care teams (by id) that
/// has one, else the default; with the team it belongs to.
pub(crate) fn policy_for(
    c: &Connection,
    a: &AlertRecord,
) -> Result<(Option<String>, EscalationPolicy), StoreError> {
    let teams = teams_of(c, &a.patient)?;
    if a.rule.starts_with(EMERGENCY_PREFIX) {
        return Ok((teams.first().cloned(), EscalationPolicy::emergency()));
    }
    for t in &teams {
        if let Some(p) = get(c, t)? {
            return Ok((Some(t.clone()), p));
        }
    }
    Ok((
        teams.first().cloned(),
        EscalationPolicy::default_for(&a.severity),
    ))
}

/// The accounts a step's targets name, for this patient.
pub(crate) fn accounts(
    c: &Connection,
    patient: &str,
    targets: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut out: Vec<String> = Vec::new();
    for t in targets {
        let found: Vec<String> = if t == "team" {
            crate::lifecycle::care_team_accounts(c, patient)?
        } else if let Some(p) = t.strip_prefix("Practitioner/") {
            let mut s = c.prepare_cached("SELECT name FROM account WHERE practitioner = ?1")?;
            s.query_map([p], |r| r.get(0))?.collect::<Result<_, _>>()?
        } else if let Some(role) = t.strip_prefix("role:") {
            let mut s = c.prepare_cached("SELECT name FROM account WHERE role = ?1")?;
            s.query_map([role], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Starts (or, re-opened, restarts) an alert's escalation with its first step's wait.
pub(crate) fn start(
    c: &Connection,
    alert: i64,
    team: Option<&str>,
    first_wait_ms: i64,
    at_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO escalation(alert, team, step, round, due_ms) VALUES (?1, ?2, 1, 0, ?3)
         ON CONFLICT(alert) DO UPDATE SET team = excluded.team, step = 1, round = 0,
             due_ms = excluded.due_ms, ended_ms = NULL, ended_why = NULL",
    )?
    .execute(params![alert, team, at_ms + first_wait_ms])?;
    Ok(())
}

/// Ends an alert's escalation (`accepted`, `resolved`, `exhausted`).
pub(crate) fn end(c: &Connection, alert: i64, at_ms: i64, why: &str) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE escalation SET ended_ms = ?2, ended_why = ?3 WHERE alert = ?1 AND ended_ms IS NULL",
    )?
    .execute(params![alert, at_ms, why])?;
    Ok(())
}

/// An alert's escalation timer as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Escalation {
    pub alert: i64,
    pub team: Option<String>,
    /// The next step to run (0-based).
    pub step: usize,
    pub round: u32,
    pub due_ms: i64,
    pub ended_ms: Option<i64>,
    pub ended_why: Option<String>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Escalation> {
    Ok(Escalation {
        alert: r.get(0)?,
        team: r.get(1)?,
        step: r.get::<_, i64>(2)? as usize,
        round: r.get(3)?,
        due_ms: r.get(4)?,
        ended_ms: r.get(5)?,
        ended_why: r.get(6)?,
    })
}

const COLUMNS: &str = "alert, team, step, round, due_ms, ended_ms, ended_why";

pub(crate) fn of_alert(c: &Connection, alert: i64) -> Result<Option<Escalation>, StoreError> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM escalation WHERE alert = ?1"
    ))?
    .query_row([alert], row)
    .optional()?)
}

/// When the next running escalation is due.
pub(crate) fn next_due(c: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(c.query_row(
        "SELECT MIN(due_ms) FROM escalation WHERE ended_ms IS NULL",
        [],
        |r| r.get(0),
    )?)
}

/// Runs every step due at `now_ms`, in the caller's transaction: the alerts it notified about
/// (their events are in the timeline), with one audit subject each.
pub(crate) fn run_due(
    c: &Connection,
    now_ms: i64,
    muted: &dyn Fn(&AlertRecord) -> Option<String>,
) -> Result<Vec<AlertRecord>, StoreError> {
    let due: Vec<Escalation> = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM escalation WHERE ended_ms IS NULL AND due_ms <= ?1 ORDER BY due_ms"
        ))?
        .query_map([now_ms], row)?
        .collect::<Result<_, _>>()?;
    let mut touched = Vec::new();
    for e in due {
        let Some(a) = crate::alerts::get(c, e.alert)? else {
            end(c, e.alert, now_ms, "resolved")?;
            continue;
        };
        if a.state != "raised" {
            end(c, e.alert, now_ms, "resolved")?;
            continue;
        }
        if crate::lifecycle::accepted_by(c, a.id)?.is_some() {
            end(c, e.alert, now_ms, "accepted")?;
            continue;
        }
        let (_, policy) = match &e.team {
            _ if a.rule.starts_with(EMERGENCY_PREFIX) => (None, EscalationPolicy::emergency()),
            Some(t) => match get(c, t)? {
                Some(p) => (Some(t.clone()), p),
                None => (None, EscalationPolicy::default_for(&a.severity)),
            },
            None => (None, EscalationPolicy::default_for(&a.severity)),
        };
        if let Some(why) = muted(&a) {
            let wait = policy
                .steps
                .get(e.step.min(policy.steps.len().saturating_sub(1)))
                .map_or(60_000, |s| s.wait_ms);
            c.prepare_cached("UPDATE escalation SET due_ms = ?2 WHERE alert = ?1")?
                .execute(params![e.alert, now_ms + wait])?;
            crate::lifecycle::note_event(c, &a, now_ms, "muted", &why)?;
            touched.push(a);
            continue;
        }
        let (mut step, mut round) = (e.step, e.round);
        if step >= policy.steps.len() {
            if round >= policy.repeat {
                end(c, e.alert, now_ms, "exhausted")?;
                crate::lifecycle::note_event(c, &a, now_ms, "exhausted", "nobody accepted it")?;
                touched.push(a);
                continue;
            }
            step = 0;
            round += 1;
        }
        let s = &policy.steps[step];
        crate::lifecycle::notify(
            c,
            &a,
            &accounts(c, &a.patient, &s.notify)?,
            now_ms,
            step + 1,
            round,
        )?;
        c.prepare_cached(
            "UPDATE escalation SET step = ?2, round = ?3, due_ms = ?4 WHERE alert = ?1",
        )?
        .execute(params![
            e.alert,
            (step + 1) as i64,
            round,
            now_ms + s.wait_ms
        ])?;
        touched.push(a);
    }
    Ok(touched)
}
