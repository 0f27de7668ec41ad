//! Gateway enrolment: which gateway keys the hub trusts. These functions open the database on
//! their own connection, so `osler hub enrol` works whether or not the hub is running (SQLite's
//! locking serialises them with the hub's writer).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{DB_FILE, StoreError, schema};

/// A gateway's enrolment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRecord {
    pub id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    pub enrolled_ms: i64,
    /// When the key was revoked; a revoked gateway's batches are refused.
    pub revoked_ms: Option<i64>,
}

fn open(dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let conn = Connection::open(dir.join(DB_FILE))?;
    schema::prepare_writer(&conn)?;
    Ok(conn)
}

/// Enrols (or re-enrols, replacing its key and lifting a revocation) a gateway.
pub fn enrol(dir: &Path, id: &str, public_key: &str, now_ms: i64) -> Result<(), StoreError> {
    open(dir)?.execute(
        "INSERT INTO gateway(id, public_key, enrolled_ms, revoked_ms) VALUES (?1, ?2, ?3, NULL)
         ON CONFLICT(id) DO UPDATE SET public_key = excluded.public_key,
             enrolled_ms = excluded.enrolled_ms, revoked_ms = NULL",
        params![id, public_key, now_ms],
    )?;
    Ok(())
}

/// Revokes a gateway's key. Returns false if the gateway was never enrolled.
pub fn revoke(dir: &Path, id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let n = open(dir)?.execute(
        "UPDATE gateway SET revoked_ms = ?2 WHERE id = ?1",
        params![id, now_ms],
    )?;
    Ok(n > 0)
}

/// Every enrolled gateway.
pub fn list(dir: &Path) -> Result<Vec<GatewayRecord>, StoreError> {
    let conn = open(dir)?;
    let mut stmt =
        conn.prepare("SELECT id, public_key, enrolled_ms, revoked_ms FROM gateway ORDER BY id")?;
    let rows = stmt.query_map([], record)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<GatewayRecord> {
    Ok(GatewayRecord {
        id: r.get(0)?,
        public_key: r.get(1)?,
        enrolled_ms: r.get(2)?,
        revoked_ms: r.get(3)?,
    })
}

pub(crate) fn gateway_record(
    conn: &Connection,
    id: &str,
) -> Result<Option<GatewayRecord>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, public_key, enrolled_ms, revoked_ms FROM gateway WHERE id = ?1",
            [id],
            record,
        )
        .optional()?)
}
