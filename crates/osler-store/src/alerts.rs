//! Alerts and per-patient threshold overrides, persisted so that they survive a restart.
//!
//! ```text
//! alert(id, patient, rule, severity, state, raised_reading_ms, raised_at_ms, value, threshold,
//!       late, source, resolved_reading_ms, resolved_at_ms)   UNIQUE(patient, rule, raised_reading_ms)
//! threshold_override(patient, rule, value)                   PRIMARY KEY(patient, rule): the plan now
//! plan_change(id, patient, rule, value, author, reason, at_ms) every change, never removed
//! ```
//!
//! Invariants: at most one open (`raised`) alert per patient and rule; raising the same alert
//! again (same patient, rule and reading time, e.g. after a resend or from the gateway and the
//! hub both) changes nothing and reports nothing.

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

/// An alert as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRecord {
    pub id: i64,
    pub patient: String,
    pub rule: String,
    pub severity: String,
    /// `raised` or `resolved`.
    pub state: String,
    pub raised_reading_ms: i64,
    pub raised_at_ms: i64,
    pub value: f64,
    pub threshold: f64,
    pub late: bool,
    /// `hub` or `gateway`.
    pub source: String,
    pub resolved_reading_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
}

/// A change to record.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertWrite {
    Raise {
        patient: String,
        rule: String,
        severity: String,
        reading_ms: i64,
        at_ms: i64,
        value: f64,
        threshold: f64,
        late: bool,
        source: String,
    },
    Resolve {
        patient: String,
        rule: String,
        reading_ms: i64,
        at_ms: i64,
    },
    /// The open alert got worse: record its new worst value.
    Update {
        patient: String,
        rule: String,
        value: f64,
        /// Whether a higher value is worse (the rule breaches upwards). An update that is not
        /// worse than the alert's stored value changes nothing.
        higher_is_worse: bool,
        reading_ms: i64,
        at_ms: i64,
    },
    /// Set (`Some`) or remove (`None`) a patient's threshold for a rule, recorded in the plan's
    /// history with who, when and why.
    Override {
        patient: String,
        rule: String,
        value: Option<f64>,
        author: String,
        reason: String,
        at_ms: i64,
    },
}

/// One change to a patient's monitoring plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanChange {
    pub patient: String,
    pub rule: String,
    /// The threshold set; `None` went back to the rule's default.
    pub value: Option<f64>,
    pub author: String,
    pub reason: String,
    pub at_ms: i64,
}

/// Which alerts to list.
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    pub patient: Option<String>,
    pub state: Option<String>,
    pub severity: Option<String>,
    pub limit: usize,
    /// Only alerts with a smaller id (keyset paging, newest first).
    pub before_id: Option<i64>,
    /// Only these patients' (the caller's compartment); `None` for every patient.
    pub within: Option<Vec<String>>,
}

const COLUMNS: &str = "id, patient, rule, severity, state, raised_reading_ms, raised_at_ms, value, threshold, late, source, resolved_reading_ms, resolved_at_ms";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRecord> {
    Ok(AlertRecord {
        id: r.get(0)?,
        patient: r.get(1)?,
        rule: r.get(2)?,
        severity: r.get(3)?,
        state: r.get(4)?,
        raised_reading_ms: r.get(5)?,
        raised_at_ms: r.get(6)?,
        value: r.get(7)?,
        threshold: r.get(8)?,
        late: r.get(9)?,
        source: r.get(10)?,
        resolved_reading_ms: r.get(11)?,
        resolved_at_ms: r.get(12)?,
    })
}

fn open_alert(
    conn: &Connection,
    patient: &str,
    rule: &str,
) -> Result<Option<AlertRecord>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM alert WHERE patient=?1 AND rule=?2 AND state='raised'"
        ))?
        .query_row(params![patient, rule], record)
        .optional()?)
}

/// Applies one change inside the writer's transaction; `Some` when something changed.
pub(crate) fn apply(conn: &Connection, w: &AlertWrite) -> Result<Option<AlertRecord>, StoreError> {
    match w {
        AlertWrite::Raise {
            patient,
            rule,
            severity,
            reading_ms,
            at_ms,
            value,
            threshold,
            late,
            source,
        } => {
            if open_alert(conn, patient, rule)?.is_some() {
                return Ok(None);
            }
            let n = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO alert(patient, rule, severity, state, raised_reading_ms, raised_at_ms, value, threshold, late, source)
                     VALUES (?1, ?2, ?3, 'raised', ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![patient, rule, severity, reading_ms, at_ms, value, threshold, late, source])?;
            if n == 0 {
                return Ok(None);
            }
            let raised = open_alert(conn, patient, rule)?;
            if let Some(a) = &raised {
                crate::lifecycle::raised(conn, a, *reading_ms, *at_ms)?;
            }
            Ok(raised)
        }
        AlertWrite::Resolve {
            patient,
            rule,
            reading_ms,
            at_ms,
        } => {
            let Some(open) = open_alert(conn, patient, rule)? else {
                return Ok(None);
            };
            conn.prepare_cached(
                "UPDATE alert SET state='resolved', resolved_reading_ms=?2, resolved_at_ms=?3 WHERE id=?1",
            )?
            .execute(params![open.id, reading_ms, at_ms])?;
            let resolved = get(conn, open.id)?;
            if let Some(a) = &resolved {
                crate::lifecycle::resolved(conn, a, *reading_ms, *at_ms)?;
            }
            Ok(resolved)
        }
        AlertWrite::Update {
            patient,
            rule,
            value,
            higher_is_worse,
            reading_ms,
            at_ms,
        } => {
            let Some(open) = open_alert(conn, patient, rule)? else {
                return Ok(None);
            };
            // The gateway's engine and the hub's both report the update a reading makes (the
            // gateway's alert, then the hub's own evaluation of the reading), and either may
            // have seen readings the other has not: only a worse value is a change, to store
            // and to publish once.
            let worse = if *higher_is_worse {
                *value > open.value
            } else {
                *value < open.value
            };
            if !worse {
                return Ok(None);
            }
            conn.prepare_cached("UPDATE alert SET value=?2 WHERE id=?1")?
                .execute(params![open.id, value])?;
            let updated = get(conn, open.id)?;
            if let Some(a) = &updated {
                crate::lifecycle::updated(conn, a, Some(*reading_ms), *at_ms)?;
            }
            Ok(updated)
        }
        AlertWrite::Override {
            patient,
            rule,
            value,
            author,
            reason,
            at_ms,
        } => {
            conn.prepare_cached(
                "INSERT INTO plan_change(patient, rule, value, author, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![patient, rule, value, author, reason, at_ms])?;
            match value {
                Some(v) => conn
                    .prepare_cached(
                        "INSERT INTO threshold_override(patient, rule, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT(patient, rule) DO UPDATE SET value=excluded.value",
                    )?
                    .execute(params![patient, rule, v])?,
                None => conn
                    .prepare_cached("DELETE FROM threshold_override WHERE patient=?1 AND rule=?2")?
                    .execute(params![patient, rule])?,
            };
            Ok(None)
        }
    }
}

pub(crate) fn get(conn: &Connection, id: i64) -> Result<Option<AlertRecord>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM alert WHERE id=?1"))?
        .query_row([id], record)
        .optional()?)
}

pub(crate) fn list(conn: &Connection, f: &AlertFilter) -> Result<Vec<AlertRecord>, StoreError> {
    let Some(within) = &f.within else {
        return list_one(conn, f);
    };
    // A compartment is a few patients: each one's alerts by the patient index, merged newest
    // first.
    let mut all = Vec::new();
    for p in within {
        if f.patient.as_ref().is_some_and(|asked| asked != p) {
            continue;
        }
        all.extend(list_one(
            conn,
            &AlertFilter {
                patient: Some(p.clone()),
                within: None,
                ..f.clone()
            },
        )?);
    }
    all.sort_by_key(|a| std::cmp::Reverse(a.id));
    all.truncate(f.limit.max(1));
    Ok(all)
}

/// The open alerts of these patients, each patient's by the open-alert index.
pub(crate) fn open_of(
    conn: &Connection,
    only: crate::care::Patients<'_>,
) -> Result<Vec<AlertRecord>, StoreError> {
    crate::care::per_patient(
        conn,
        only,
        &format!("SELECT {COLUMNS} FROM alert WHERE state = 'raised'"),
        &format!(
            "SELECT {COLUMNS} FROM alert WHERE patient {} AND state = 'raised'",
            crate::care::IN_PATIENTS
        ),
        &[],
        record,
    )
}

fn list_one(conn: &Connection, f: &AlertFilter) -> Result<Vec<AlertRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM alert
         WHERE (?1 IS NULL OR patient=?1) AND (?2 IS NULL OR state=?2) AND (?3 IS NULL OR severity=?3)
           AND id < ?4
         ORDER BY id DESC"
    ))?;
    // Stepped to the limit rather than `LIMIT ?`, which SQLite re-prepares at every run.
    let rows = stmt.query_map(
        params![
            f.patient,
            f.state,
            f.severity,
            f.before_id.unwrap_or(i64::MAX)
        ],
        record,
    )?;
    Ok(rows.take(f.limit.max(1)).collect::<Result<_, _>>()?)
}

/// Every override: (patient, rule, threshold).
pub(crate) fn overrides(conn: &Connection) -> Result<Vec<(String, String, f64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT patient, rule, value FROM threshold_override")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A patient's plan changes, oldest first; with `until`, only those made at or before it.
pub(crate) fn plan_changes(
    conn: &Connection,
    patient: &str,
    until: Option<i64>,
) -> Result<Vec<PlanChange>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT patient, rule, value, author, reason, at_ms FROM plan_change
         WHERE patient = ?1 AND at_ms <= ?2 ORDER BY at_ms, id",
    )?;
    let rows = stmt.query_map(params![patient, until.unwrap_or(i64::MAX)], |r| {
        Ok(PlanChange {
            patient: r.get(0)?,
            rule: r.get(1)?,
            value: r.get(2)?,
            author: r.get(3)?,
            reason: r.get(4)?,
            at_ms: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
