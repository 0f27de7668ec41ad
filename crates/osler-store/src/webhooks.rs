//! Webhook endpoints and the queue of deliveries to them (Standard Webhooks).
//!
//! ```text
//! webhook_endpoint(id, url, secret, team, created_ms, disabled_ms, disabled_why)
//!     `team` NULL: every patient's alerts (operators); else that care team's patients'
//! webhook_delivery(id, endpoint, msg_id, seq, critical, state, attempts, next_ms, payload,
//!                  last_status, last_error, created_ms, done_ms)      UNIQUE(msg_id)
//!     one row per alert event and endpoint, queued in the event's own transaction (nothing
//!     is lost between the commit and the send); `state` pending → delivered | dead
//! ```
//!
//! `msg_id` is `msg_{endpoint}_{seq}`: the receiver's idempotency key, the same on every
//! retry, and the queue's de-duplication key (never timing).

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

/// An endpoint as stored (its secret included: it signs every delivery).
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub team: Option<String>,
    pub created_ms: i64,
    pub disabled_ms: Option<i64>,
    pub disabled_why: Option<String>,
}

/// A delivery as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub endpoint: String,
    pub msg_id: String,
    /// The alert event it carries.
    pub seq: i64,
    pub critical: bool,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: u32,
    pub next_ms: i64,
    /// The body, fixed at the first attempt (retries send the same bytes).
    pub payload: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub done_ms: Option<i64>,
}

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    /// Failed; try again at `next_ms`.
    Retry {
        status: Option<u16>,
        error: String,
        next_ms: i64,
    },
    /// Failed for the last time: dead-lettered.
    Dead {
        status: Option<u16>,
        error: String,
    },
    /// The endpoint answered 410 Gone: it is disabled and the delivery dead.
    Gone,
}

/// Queues a delivery of event `seq` to every enabled endpoint that may see `patient`.
pub(crate) fn enqueue(
    c: &Connection,
    seq: i64,
    patient: &str,
    critical: bool,
    at_ms: i64,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO webhook_delivery(endpoint, msg_id, seq, critical, state, attempts,
             next_ms, created_ms)
         SELECT e.id, 'msg_' || e.id || '_' || ?1, ?1, ?2, 'pending', 0, ?3, ?3
         FROM webhook_endpoint e
         WHERE e.disabled_ms IS NULL
           AND (e.team IS NULL OR EXISTS (SELECT 1 FROM resource_term p
                WHERE p.kind = 'CareTeam' AND p.id = e.team AND p.param = 'patient'
                  AND p.value = 'Patient/' || ?4))",
    )?
    .execute(params![seq, critical, at_ms, patient])?;
    Ok(())
}

pub(crate) fn add(c: &Connection, e: &Endpoint) -> Result<bool, StoreError> {
    let n = c.execute(
        "INSERT OR IGNORE INTO webhook_endpoint(id, url, secret, team, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.id, e.url, e.secret, e.team, e.created_ms],
    )?;
    Ok(n == 1)
}

/// Disables an endpoint (its pending deliveries are dead-lettered with the reason).
pub(crate) fn disable(c: &Connection, id: &str, why: &str, at_ms: i64) -> Result<bool, StoreError> {
    let n = c.execute(
        "UPDATE webhook_endpoint SET disabled_ms = ?2, disabled_why = ?3 WHERE id = ?1 AND disabled_ms IS NULL",
        params![id, at_ms, why],
    )?;
    c.execute(
        "UPDATE webhook_delivery SET state = 'dead', done_ms = ?2, last_error = ?3
         WHERE endpoint = ?1 AND state = 'pending'",
        params![id, at_ms, format!("the endpoint was disabled: {why}")],
    )?;
    Ok(n == 1)
}

fn endpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Endpoint> {
    Ok(Endpoint {
        id: r.get(0)?,
        url: r.get(1)?,
        secret: r.get(2)?,
        team: r.get(3)?,
        created_ms: r.get(4)?,
        disabled_ms: r.get(5)?,
        disabled_why: r.get(6)?,
    })
}

const ENDPOINT_COLUMNS: &str = "id, url, secret, team, created_ms, disabled_ms, disabled_why";

pub(crate) fn endpoints(c: &Connection) -> Result<Vec<Endpoint>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint ORDER BY created_ms, id"
    ))?;
    let rows = stmt.query_map([], endpoint_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn endpoint(c: &Connection, id: &str) -> Result<Option<Endpoint>, StoreError> {
    Ok(c.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoint WHERE id = ?1"
    ))?
    .query_row([id], endpoint_row)
    .optional()?)
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        msg_id: r.get(2)?,
        seq: r.get(3)?,
        critical: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        next_ms: r.get(7)?,
        payload: r.get(8)?,
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        created_ms: r.get(11)?,
        done_ms: r.get(12)?,
    })
}

const DELIVERY_COLUMNS: &str = "id, endpoint, msg_id, seq, critical, state, attempts, next_ms, payload, last_status, last_error, created_ms, done_ms";

/// Pending deliveries due at `now_ms`, oldest first.
pub(crate) fn due(c: &Connection, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_delivery
         WHERE state = 'pending' AND next_ms <= ?1 ORDER BY next_ms, id"
    ))?;
    let rows = stmt.query_map([now_ms], delivery_row)?;
    Ok(rows.take(limit).collect::<Result<_, _>>()?)
}

/// When the next pending delivery is due.
pub(crate) fn next_due(c: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(c.query_row(
        "SELECT MIN(next_ms) FROM webhook_delivery WHERE state = 'pending'",
        [],
        |r| r.get(0),
    )?)
}

/// Deliveries, newest first; with `state`, only those.
pub(crate) fn deliveries(
    c: &Connection,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_delivery
         WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC"
    ))?;
    let rows = stmt.query_map([state], delivery_row)?;
    Ok(rows.take(limit).collect::<Result<_, _>>()?)
}

/// Records an attempt (and the body it sent, kept for the retries).
pub(crate) fn record(
    c: &Connection,
    id: i64,
    payload: &str,
    attempt: &Attempt,
    at_ms: i64,
) -> Result<(), StoreError> {
    let (state, status, error, next): (&str, Option<u16>, Option<&str>, Option<i64>) = match attempt
    {
        Attempt::Delivered { status } => ("delivered", Some(*status), None, None),
        Attempt::Retry {
            status,
            error,
            next_ms,
        } => ("pending", *status, Some(error), Some(*next_ms)),
        Attempt::Dead { status, error } => ("dead", *status, Some(error), None),
        Attempt::Gone => ("dead", Some(410), Some("the endpoint is gone (410)"), None),
    };
    c.execute(
        "UPDATE webhook_delivery SET state = ?2, attempts = attempts + 1, payload = ?3,
             last_status = ?4, last_error = ?5, next_ms = COALESCE(?6, next_ms),
             done_ms = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?7 END
         WHERE id = ?1",
        params![id, state, payload, status, error, next, at_ms],
    )?;
    if *attempt == Attempt::Gone {
        let endpoint: String = c.query_row(
            "SELECT endpoint FROM webhook_delivery WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?;
        disable(c, &endpoint, "it answered 410 Gone", at_ms)?;
    }
    Ok(())
}

/// Puts a dead delivery back in the queue, due now; false if there is none such.
pub(crate) fn replay(c: &Connection, id: i64, at_ms: i64) -> Result<bool, StoreError> {
    let n = c.execute(
        "UPDATE webhook_delivery SET state = 'pending', attempts = 0, next_ms = ?2, done_ms = NULL
         WHERE id = ?1 AND state = 'dead'
           AND (SELECT disabled_ms FROM webhook_endpoint e WHERE e.id = endpoint) IS NULL",
        params![id, at_ms],
    )?;
    Ok(n == 1)
}
