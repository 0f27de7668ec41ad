//! Gateway enrolment: which gateway keys the hub trusts. These functions open the database on
//! their own connection, so `osler hub enrol` works whether or not the hub is running (SQLite's
//! locking serialises them with the hub's writer).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use ed25519_dalek::SigningKey;

use crate::{DB_FILE, StoreError, TokenRecord, schema};

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

/// Runs `f` in one immediate transaction on a connection of its own, with `audit` appended
/// to the audit log in the same transaction: the change and its record commit together or
/// not at all.
pub(crate) fn in_transaction<T>(
    dir: &Path,
    key: &SigningKey,
    audit: &[String],
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    transact(dir, key, |c| Ok((f(c)?, audit.to_vec())))
}

/// Runs `f` in one immediate transaction on a connection of its own; the audit entries it
/// returns (chosen once it knows what it did) are appended in the same transaction.
pub(crate) fn transact<T>(
    dir: &Path,
    key: &SigningKey,
    f: impl FnOnce(&Connection) -> Result<(T, Vec<String>), StoreError>,
) -> Result<T, StoreError> {
    transact_on(&open(dir)?, key, f)
}

/// [`transact`] on a connection already open.
pub(crate) fn transact_on<T>(
    conn: &Connection,
    key: &SigningKey,
    f: impl FnOnce(&Connection) -> Result<(T, Vec<String>), StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = f(conn).and_then(|(v, audit)| {
        crate::security::append(conn, key, &audit)?;
        Ok(v)
    });
    match result {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Enrols (or re-enrols, replacing its key and lifting a revocation) a gateway, recording
/// `audit`.
pub fn enrol(
    dir: &Path,
    key: &SigningKey,
    id: &str,
    public_key: &str,
    now_ms: i64,
    audit: &[String],
) -> Result<(), StoreError> {
    in_transaction(dir, key, audit, |c| {
        c.execute(
            "INSERT INTO gateway(id, public_key, enrolled_ms, revoked_ms) VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT(id) DO UPDATE SET public_key = excluded.public_key,
                 enrolled_ms = excluded.enrolled_ms, revoked_ms = NULL",
            params![id, public_key, now_ms],
        )?;
        Ok(())
    })
}

/// Revokes a gateway's key, recording `audit`. Returns false (and records nothing) if the
/// gateway was never enrolled.
pub fn revoke(
    dir: &Path,
    key: &SigningKey,
    id: &str,
    now_ms: i64,
    audit: &[String],
) -> Result<bool, StoreError> {
    let known = open(dir)?
        .query_row("SELECT 1 FROM gateway WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some();
    if !known {
        return Ok(false);
    }
    in_transaction(dir, key, audit, |c| {
        c.execute(
            "UPDATE gateway SET revoked_ms = ?2 WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(true)
    })
}

/// Stores a new token (its hash only), recording `audit`.
pub fn create_token(
    dir: &Path,
    key: &SigningKey,
    hash: &[u8; 32],
    token: &TokenRecord,
    audit: &[String],
) -> Result<(), StoreError> {
    in_transaction(dir, key, audit, |c| {
        crate::security::insert_token(c, hash, token)
    })
}

/// Revokes a token, by its hash or its public id, recording `audit` (only when one was
/// found). Returns the token.
pub fn revoke_token(
    dir: &Path,
    key: &SigningKey,
    hash: Option<&[u8; 32]>,
    id: Option<&str>,
    now_ms: i64,
    audit: &[String],
) -> Result<Option<TokenRecord>, StoreError> {
    let conn = open(dir)?;
    let found = match (hash, id) {
        (Some(h), _) => crate::security::token_by_hash(&conn, h)?,
        (None, Some(id)) => crate::security::tokens(&conn)?
            .into_iter()
            .find(|t| t.id == id),
        (None, None) => None,
    };
    drop(conn);
    if found.is_none() {
        return Ok(None);
    }
    in_transaction(dir, key, audit, |c| {
        crate::security::revoke_token(c, hash, id, now_ms)
    })
}

/// Adds a person's account, waiting for enrolment with the code hashing to `code_hash` until
/// `expires_ms`; false (and nothing recorded) when the name is taken.
pub fn add_account(
    dir: &Path,
    key: &SigningKey,
    account: &crate::Account,
    code_hash: &[u8; 32],
    expires_ms: i64,
    now_ms: i64,
    audit: &[String],
) -> Result<bool, StoreError> {
    transact(dir, key, |c| {
        let added = crate::security::add_account(c, account, code_hash, expires_ms, now_ms)?;
        Ok((added, if added { audit.to_vec() } else { Vec::new() }))
    })
}

/// Every account.
pub fn accounts(dir: &Path) -> Result<Vec<crate::Account>, StoreError> {
    crate::security::accounts(&open(dir)?)
}

/// Registers (or updates) a backend client, recording `audit`.
pub fn add_client(
    dir: &Path,
    key: &SigningKey,
    client: &crate::Client,
    now_ms: i64,
    audit: &[String],
) -> Result<(), StoreError> {
    in_transaction(dir, key, audit, |c| {
        crate::security::add_client(c, client, now_ms)
    })
}

/// Every token (hashes are not returned: they are of no use to anyone).
pub fn tokens(dir: &Path) -> Result<Vec<TokenRecord>, StoreError> {
    crate::security::tokens(&open(dir)?)
}

/// The whole audit log, in order, in one read transaction (a consistent snapshot): the
/// entries with their signatures.
pub fn audit_log(dir: &Path) -> Result<Vec<crate::AuditRow>, StoreError> {
    let conn = open(dir)?;
    conn.execute_batch("BEGIN")?;
    let size = crate::security::audit_size(&conn)?;
    let rows = crate::security::audit_rows(&conn, 1, size)?;
    conn.execute_batch("COMMIT")?;
    Ok(rows)
}

/// Every enrolled gateway.
pub fn list(dir: &Path) -> Result<Vec<GatewayRecord>, StoreError> {
    Ok(gateways(&open(dir)?)?.into_iter().map(|(g, _)| g).collect())
}

/// Every enrolled gateway and when its last batch arrived.
pub(crate) fn gateways(c: &Connection) -> Result<Vec<(GatewayRecord, Option<i64>)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, public_key, enrolled_ms, revoked_ms,
                (SELECT MAX(received_ms) FROM batch b WHERE b.gateway = g.id)
         FROM gateway g ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| Ok((record(r)?, r.get(4)?)))?;
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
