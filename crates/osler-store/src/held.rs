//! Readings held for want of an assignment: attributed by device (the sender did not know the
//! patient), with no DeviceUseStatement covering their time. Never dropped, never guessed:
//! kept here with the reason, listed for an operator, and stored under their patient in the
//! same commit as the assignment that covers them.
//!
//! ```text
//! held(id, device, metric, t, v, v2, tz, rx, status, ident, source, reason)
//!     INDEX (device, t); `device` as the sender wrote it (a Device id or an identifier)
//! ```

use osler_core::{Id, Identifier, Metric, Reading, Status, Timestamp, Value};
use rusqlite::{Connection, params};

use crate::StoreError;

pub(crate) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS held(
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    metric INTEGER NOT NULL,
    t INTEGER NOT NULL,
    v REAL NOT NULL,
    v2 REAL,
    tz INTEGER NOT NULL,
    rx INTEGER NOT NULL,
    status INTEGER NOT NULL,
    ident TEXT,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS held_device ON held(device, t);
";

/// A held reading: the reading (its patient is meaningless until attributed) and why it waits.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldReading {
    pub id: i64,
    /// The device as the sender named it.
    pub device: String,
    pub reading: Reading,
    pub reason: String,
}

/// The patient a placeholder names in a held reading: not a patient, never stored as one.
const NOBODY: &str = "unattributed";

pub(crate) fn insert(
    conn: &Connection,
    r: &Reading,
    device: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let (v, v2) = match r.value {
        Value::Scalar(v) => (v, None),
        Value::Pair(a, b) => (a, Some(b)),
    };
    conn.prepare_cached(
        "INSERT INTO held(device, metric, t, v, v2, tz, rx, status, ident, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        device,
        r.metric as u8,
        r.taken.utc_ms,
        v,
        v2,
        r.taken.offset_min,
        r.received_ms - r.taken.utc_ms,
        r.status as u8,
        r.identifier.as_ref().map(crate::ident_text),
        reason
    ])?;
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> Result<HeldReading, StoreError> {
    let id: i64 = r.get(0)?;
    let device: String = r.get(1)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("held reading {id}: {what}"));
    let metric = Metric::from_u8(r.get(2)?).ok_or_else(|| corrupt("unknown metric"))?;
    let t: i64 = r.get(3)?;
    let v: f64 = r.get(4)?;
    let v2: Option<f64> = r.get(5)?;
    let tz: i16 = r.get(6)?;
    let rx: i64 = r.get(7)?;
    let status = Status::from_u8(r.get(8)?).ok_or_else(|| corrupt("unknown status"))?;
    let ident: Option<String> = r.get(9)?;
    let identifier = ident.and_then(|s| {
        let (system, value) = s.split_once('\u{1f}')?;
        Some(Identifier {
            system: system.to_owned(),
            value: value.to_owned(),
        })
    });
    Ok(HeldReading {
        id,
        reading: Reading {
            patient: Id::parse(NOBODY).ok_or_else(|| corrupt("placeholder"))?,
            device: Id::parse(&device),
            metric,
            value: match v2 {
                Some(b) => Value::Pair(v, b),
                None => Value::Scalar(v),
            },
            taken: Timestamp {
                utc_ms: t,
                offset_min: tz,
            },
            received_ms: t + rx,
            status,
            identifier,
        },
        device,
        reason: r.get(10)?,
    })
}

const COLUMNS: &str = "id, device, metric, t, v, v2, tz, rx, status, ident, reason";

pub(crate) fn list(conn: &Connection, limit: usize) -> Result<Vec<HeldReading>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM held ORDER BY id LIMIT ?1"))?;
    let mut rows = stmt.query([limit as i64])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row(r)?);
    }
    Ok(out)
}

/// Held readings of a device, named by any of `names`, taken in `[start, end)`.
pub(crate) fn covered(
    conn: &Connection,
    names: &[String],
    start_ms: i64,
    end_ms: Option<i64>,
) -> Result<Vec<HeldReading>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM held WHERE device = ?1 AND t >= ?2 AND t < ?3 ORDER BY t"
    ))?;
    let mut out = Vec::new();
    for name in names {
        let mut rows = stmt.query(params![name, start_ms, end_ms.unwrap_or(i64::MAX)])?;
        while let Some(r) = rows.next()? {
            out.push(row(r)?);
        }
    }
    Ok(out)
}

pub(crate) fn remove(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM held WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}
