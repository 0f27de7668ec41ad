//! Access tokens and the audit log, in the hub's database.
//!
//! A token row holds the SHA-256 of the token, never the token: a copy of the database opens
//! nothing. The audit log is append-only: entry `n` (1-based) is stored with the signature of
//! the checkpoint of the tree of entries 1..=n, and `audit_head` keeps the tree's right edge
//! (`osler_audit::merkle::Frontier`) so an append costs O(log n). Every append happens inside
//! the transaction of the change it records: the writer's for what the hub changes, the
//! admin connection's for what a command on the hub's machine changes.

use ed25519_dalek::SigningKey;
use osler_audit::merkle::{Frontier, leaf_hash};
use osler_audit::note;
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

pub(crate) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS token(
    hash BLOB PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    patient TEXT,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit(
    seq INTEGER PRIMARY KEY,
    entry TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    frontier BLOB NOT NULL
);
";

/// A token as the hub stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// A public handle (not the secret), for listing and revoking.
    pub id: String,
    pub subject: String,
    pub role: String,
    pub scopes: String,
    /// The patient a token is bound to.
    pub patient: Option<String>,
    pub issued_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        subject: r.get(1)?,
        role: r.get(2)?,
        scopes: r.get(3)?,
        patient: r.get(4)?,
        issued_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        revoked_ms: r.get(7)?,
    })
}

const TOKEN_COLUMNS: &str = "id, subject, role, scopes, patient, issued_ms, expires_ms, revoked_ms";

pub(crate) fn insert_token(
    c: &Connection,
    hash: &[u8; 32],
    t: &TokenRecord,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO token(hash, id, subject, role, scopes, patient, issued_ms, expires_ms, revoked_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
        params![
            hash.as_slice(),
            t.id,
            t.subject,
            t.role,
            t.scopes,
            t.patient,
            t.issued_ms,
            t.expires_ms
        ],
    )?;
    Ok(())
}

pub(crate) fn token_by_hash(
    c: &Connection,
    hash: &[u8; 32],
) -> Result<Option<TokenRecord>, StoreError> {
    Ok(c
        .query_row(
            &format!("SELECT {TOKEN_COLUMNS} FROM token WHERE hash = ?1"),
            [hash.as_slice()],
            token_row,
        )
        .optional()?)
}

/// Revokes the token with this hash or this id; returns it if there was one (already revoked
/// ones keep their first revocation time).
pub(crate) fn revoke_token(
    c: &Connection,
    hash: Option<&[u8; 32]>,
    id: Option<&str>,
    now_ms: i64,
) -> Result<Option<TokenRecord>, StoreError> {
    let found: Option<TokenRecord> = match (hash, id) {
        (Some(h), _) => token_by_hash(c, h)?,
        (None, Some(id)) => c
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM token WHERE id = ?1"),
                [id],
                token_row,
            )
            .optional()?,
        (None, None) => None,
    };
    if let Some(t) = &found {
        c.execute(
            "UPDATE token SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![t.id, now_ms],
        )?;
    }
    Ok(found)
}

pub(crate) fn tokens(c: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {TOKEN_COLUMNS} FROM token ORDER BY issued_ms"
    ))?;
    let rows = stmt.query_map([], token_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn frontier(c: &Connection) -> Result<Frontier, StoreError> {
    let bytes: Option<Vec<u8>> = c
        .query_row("SELECT frontier FROM audit_head WHERE id = 0", [], |r| {
            r.get(0)
        })
        .optional()?;
    match bytes {
        None => Ok(Frontier::default()),
        Some(b) => Frontier::from_bytes(&b)
            .ok_or_else(|| StoreError::Corrupt("the audit log's head is unreadable".into())),
    }
}

/// Appends entries to the audit log, in the caller's transaction: each gets the next number
/// and the signature of the tree that ends with it.
pub(crate) fn append(
    c: &Connection,
    key: &SigningKey,
    entries: &[String],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let origin = note::origin(&key.verifying_key());
    let mut tree = frontier(c)?;
    let mut insert = c.prepare_cached("INSERT INTO audit(seq, entry, signature) VALUES (?1, ?2, ?3)")?;
    for e in entries {
        tree.push(leaf_hash(e.as_bytes()));
        let size = tree.size();
        let sig = note::sign(key, &note::checkpoint_text(&origin, size, &tree.root()));
        insert.execute(params![size as i64, e, sig])?;
    }
    c.execute(
        "INSERT INTO audit_head(id, frontier) VALUES (0, ?1)
         ON CONFLICT(id) DO UPDATE SET frontier = excluded.frontier",
        [tree.to_bytes()],
    )?;
    Ok(())
}

/// The log's size.
pub(crate) fn audit_size(c: &Connection) -> Result<u64, StoreError> {
    Ok(frontier(c)?.size())
}

/// One stored entry: (number, AuditEvent JSON, checkpoint signature).
pub type AuditRow = (u64, String, String);

/// Entries `from..=to` (1-based), in order.
pub(crate) fn audit_rows(c: &Connection, from: u64, to: u64) -> Result<Vec<AuditRow>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT seq, entry, signature FROM audit WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![from as i64, to as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every entry's leaf hash for the first `size` entries (for proofs).
pub(crate) fn leaves(c: &Connection, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT entry FROM audit WHERE seq <= ?1 ORDER BY seq")?;
    let rows = stmt.query_map([size as i64], |r| {
        let e: String = r.get(0)?;
        Ok(leaf_hash(e.as_bytes()))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
