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
    kind TEXT NOT NULL,
    family TEXT,
    subject TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL,
    patient TEXT,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    used_ms INTEGER,
    revoked_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS token_family ON token(family);
CREATE TABLE IF NOT EXISTS account(
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    practitioner TEXT,
    patient TEXT,
    password TEXT,
    totp_secret BLOB,
    totp_last_step INTEGER,
    enrolment BLOB,
    enrolment_expires_ms INTEGER,
    created_ms INTEGER NOT NULL,
    enrolled_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recovery_code(
    account TEXT NOT NULL,
    hash BLOB NOT NULL,
    used_ms INTEGER,
    PRIMARY KEY(account, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch(
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    lane INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jwt_seen(
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY(issuer, jti)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client(
    id TEXT PRIMARY KEY,
    jwks TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
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
    /// `access` (a bearer token), `refresh` (rotating, single use), `mfa` (a login's
    /// password step passed, waiting for the second factor).
    pub kind: String,
    /// A login's tokens share a family: reuse of a spent refresh token ends them all.
    pub family: Option<String>,
    pub subject: String,
    pub role: String,
    pub scopes: String,
    /// The patient a token is bound to.
    pub patient: Option<String>,
    pub issued_ms: i64,
    pub expires_ms: i64,
    /// When a single-use token (refresh, mfa) was spent.
    pub used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl TokenRecord {
    /// A token issued at `now_ms` for `life_ms`, named by its hash (`hash` of the secret):
    /// its public id is the hash's first 12 hex digits, which identify it in lists and the
    /// audit log without being usable as the token. No scopes, patient or family until the
    /// caller sets them.
    pub fn issued(
        hash: &[u8; 32],
        kind: &str,
        subject: &str,
        role: &str,
        now_ms: i64,
        life_ms: i64,
    ) -> TokenRecord {
        TokenRecord {
            id: hash[..6].iter().map(|b| format!("{b:02x}")).collect(),
            kind: kind.to_owned(),
            family: None,
            subject: subject.to_owned(),
            role: role.to_owned(),
            scopes: String::new(),
            patient: None,
            issued_ms: now_ms,
            expires_ms: now_ms + life_ms,
            used_ms: None,
            revoked_ms: None,
        }
    }
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        family: r.get(2)?,
        subject: r.get(3)?,
        role: r.get(4)?,
        scopes: r.get(5)?,
        patient: r.get(6)?,
        issued_ms: r.get(7)?,
        expires_ms: r.get(8)?,
        used_ms: r.get(9)?,
        revoked_ms: r.get(10)?,
    })
}

const TOKEN_COLUMNS: &str =
    "id, kind, family, subject, role, scopes, patient, issued_ms, expires_ms, used_ms, revoked_ms";

pub(crate) fn insert_token(
    c: &Connection,
    hash: &[u8; 32],
    t: &TokenRecord,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO token(hash, id, kind, family, subject, role, scopes, patient, issued_ms, expires_ms, used_ms, revoked_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL)",
        params![
            hash.as_slice(),
            t.id,
            t.kind,
            t.family,
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
    Ok(c.query_row(
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
    let mut insert =
        c.prepare_cached("INSERT INTO audit(seq, entry, signature) VALUES (?1, ?2, ?3)")?;
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

/// A person's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub role: String,
    /// The Practitioner a clinician is (their care teams are their compartment).
    pub practitioner: Option<String>,
    /// The Patient a patient is.
    pub patient: Option<String>,
    /// The Argon2id PHC string; `None` until enrolled.
    pub password: Option<String>,
    pub totp_secret: Option<Vec<u8>>,
    pub totp_last_step: Option<i64>,
    pub enrolled_ms: Option<i64>,
}

const ACCOUNT_COLUMNS: &str =
    "name, role, practitioner, patient, password, totp_secret, totp_last_step, enrolled_ms";

fn account_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        name: r.get(0)?,
        role: r.get(1)?,
        practitioner: r.get(2)?,
        patient: r.get(3)?,
        password: r.get(4)?,
        totp_secret: r.get(5)?,
        totp_last_step: r.get(6)?,
        enrolled_ms: r.get(7)?,
    })
}

pub(crate) fn account(c: &Connection, name: &str) -> Result<Option<Account>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE name = ?1"),
        [name],
        account_row,
    )
    .optional()?)
}

pub(crate) fn accounts(c: &Connection) -> Result<Vec<Account>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM account ORDER BY name"
    ))?;
    let rows = stmt.query_map([], account_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A new account waiting for its enrolment (the code's hash and until when it works); an
/// account of that name already there is an error (`false`).
pub(crate) fn add_account(
    c: &Connection,
    a: &Account,
    code_hash: &[u8; 32],
    expires_ms: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = c.execute(
        "INSERT INTO account(name, role, practitioner, patient, enrolment, enrolment_expires_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(name) DO NOTHING",
        params![a.name, a.role, a.practitioner, a.patient, code_hash.as_slice(), expires_ms, now_ms],
    )?;
    Ok(n == 1)
}

/// What an enrolment code opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enrolled {
    Done(Account),
    /// No account waits for this code, or its time passed, or it was used.
    BadCode,
}

/// Enrols the account whose one-time code hashes to `code_hash`: sets its password (and
/// second factor and recovery codes), and spends the code. One transaction.
pub(crate) fn enrol(
    c: &Connection,
    code_hash: &[u8; 32],
    password_phc: &str,
    totp_secret: Option<&[u8]>,
    recovery_hashes: &[[u8; 32]],
    now_ms: i64,
) -> Result<Enrolled, StoreError> {
    let name: Option<String> = c
        .query_row(
            "SELECT name FROM account WHERE enrolment = ?1 AND enrolment_expires_ms > ?2",
            params![code_hash.as_slice(), now_ms],
            |r| r.get(0),
        )
        .optional()?;
    let Some(name) = name else {
        return Ok(Enrolled::BadCode);
    };
    c.execute(
        "UPDATE account SET password = ?2, totp_secret = ?3, totp_last_step = NULL,
             enrolment = NULL, enrolment_expires_ms = NULL, enrolled_ms = ?4 WHERE name = ?1",
        params![name, password_phc, totp_secret, now_ms],
    )?;
    c.execute("DELETE FROM recovery_code WHERE account = ?1", [&name])?;
    for h in recovery_hashes {
        c.execute(
            "INSERT INTO recovery_code(account, hash) VALUES (?1, ?2)",
            params![name, h.as_slice()],
        )?;
    }
    Ok(match account(c, &name)? {
        Some(a) => Enrolled::Done(a),
        None => Enrolled::BadCode,
    })
}

/// Records `step` as the account's last accepted second-factor step, if it is after the one
/// stored (the check and the write in one transaction: two requests with one code cannot both
/// pass).
pub(crate) fn use_totp_step(c: &Connection, name: &str, step: i64) -> Result<bool, StoreError> {
    let n = c.execute(
        "UPDATE account SET totp_last_step = ?2
         WHERE name = ?1 AND (totp_last_step IS NULL OR totp_last_step < ?2)",
        params![name, step],
    )?;
    Ok(n == 1)
}

/// Spends a recovery code; false if it is not one of the account's unused codes.
pub(crate) fn use_recovery(
    c: &Connection,
    name: &str,
    hash: &[u8; 32],
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = c.execute(
        "UPDATE recovery_code SET used_ms = ?3 WHERE account = ?1 AND hash = ?2 AND used_ms IS NULL",
        params![name, hash.as_slice(), now_ms],
    )?;
    Ok(n == 1)
}

/// Spends a single-use token (a refresh or mfa token). `Ok(Some)` the first time; a second
/// use of a refresh token is theft or a replay: its whole family is revoked and `Ok(None)`
/// returned.
pub(crate) fn spend(c: &Connection, hash: &[u8; 32], now_ms: i64) -> Result<Spent, StoreError> {
    let Some(t) = token_by_hash(c, hash)? else {
        return Ok(Spent::Unknown);
    };
    if t.used_ms.is_some() {
        if let Some(f) = &t.family {
            c.execute(
                "UPDATE token SET revoked_ms = ?2 WHERE family = ?1 AND revoked_ms IS NULL",
                params![f, now_ms],
            )?;
        }
        return Ok(Spent::Reused(t));
    }
    if t.revoked_ms.is_some() || t.expires_ms <= now_ms {
        return Ok(Spent::Dead(t));
    }
    c.execute(
        "UPDATE token SET used_ms = ?2 WHERE hash = ?1",
        params![hash.as_slice(), now_ms],
    )?;
    Ok(Spent::Fresh(t))
}

/// What spending a single-use token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spent {
    Fresh(TokenRecord),
    /// Used before: its family is now revoked.
    Reused(TokenRecord),
    /// Expired or revoked.
    Dead(TokenRecord),
    Unknown,
}

/// Remembers a JWT assertion's `jti` until it expires; false if it was seen before.
pub(crate) fn first_jti(
    c: &Connection,
    issuer: &str,
    jti: &str,
    expires_ms: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    c.execute("DELETE FROM jwt_seen WHERE expires_ms < ?1", [now_ms])?;
    let n = c.execute(
        "INSERT INTO jwt_seen(issuer, jti, expires_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![issuer, jti, expires_ms],
    )?;
    Ok(n == 1)
}

/// The patients of the active care teams a practitioner is a member of.
pub(crate) fn care_team_patients(
    c: &Connection,
    practitioner: &str,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT DISTINCT p.value FROM resource_term m
         JOIN resource_term p ON p.kind = 'CareTeam' AND p.id = m.id AND p.param = 'patient'
         WHERE m.kind = 'CareTeam' AND m.param = 'participant' AND m.value = ?1
           AND NOT EXISTS (SELECT 1 FROM resource_term s
                WHERE s.kind = 'CareTeam' AND s.id = m.id AND s.param = 'status'
                  AND s.value IN ('inactive', 'suspended', 'entered-in-error', 'proposed'))",
    )?;
    let rows = stmt.query_map([format!("Practitioner/{practitioner}")], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for v in rows {
        if let Some(p) = v?.strip_prefix("Patient/") {
            out.push(p.to_owned());
        }
    }
    Ok(out)
}

/// A registered backend client (SMART backend services): its public keys (JWKS) and the
/// scopes it may ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub jwks: String,
    pub scopes: String,
    pub revoked_ms: Option<i64>,
}

pub(crate) fn client(c: &Connection, id: &str) -> Result<Option<Client>, StoreError> {
    Ok(c.query_row(
        "SELECT id, jwks, scopes, revoked_ms FROM client WHERE id = ?1",
        [id],
        |r| {
            Ok(Client {
                id: r.get(0)?,
                jwks: r.get(1)?,
                scopes: r.get(2)?,
                revoked_ms: r.get(3)?,
            })
        },
    )
    .optional()?)
}

pub(crate) fn add_client(c: &Connection, cl: &Client, now_ms: i64) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO client(id, jwks, scopes, created_ms, revoked_ms) VALUES (?1, ?2, ?3, ?4, NULL)
         ON CONFLICT(id) DO UPDATE SET jwks = excluded.jwks, scopes = excluded.scopes, revoked_ms = NULL",
        params![cl.id, cl.jwks, cl.scopes, now_ms],
    )?;
    Ok(())
}

/// The account waiting for enrolment with this code, if the code is still good.
pub(crate) fn enrolling(
    c: &Connection,
    code_hash: &[u8; 32],
    now_ms: i64,
) -> Result<Option<Account>, StoreError> {
    Ok(c
        .query_row(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM account WHERE enrolment = ?1 AND enrolment_expires_ms > ?2"),
            params![code_hash.as_slice(), now_ms],
            account_row,
        )
        .optional()?)
}

/// Records a gateway batch (its provenance: the readings it stores name it); returns its id.
pub(crate) fn record_batch(c: &Connection, b: &crate::BatchMark) -> Result<i64, StoreError> {
    c.prepare_cached(
        "INSERT INTO batch(received_ms, gateway, lane, first_seq, last_seq, signature)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        b.received_ms,
        b.gateway,
        b.lane,
        b.first_seq as i64,
        b.last_seq as i64,
        b.signature,
    ])?;
    Ok(c.last_insert_rowid())
}

/// The batch that carried a reading, if a gateway's did.
pub(crate) fn provenance(
    c: &Connection,
    id: crate::ReadingId,
) -> Result<Vec<crate::Provenance>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT gateway, lane, first_seq, last_seq, received_ms, signature FROM batch
         WHERE id = (SELECT b FROM reading WHERE series = ?1 AND t = ?2)",
    )?;
    let rows = stmt.query_map(params![id.series, id.t_ms], |r| {
        Ok(crate::Provenance {
            gateway: r.get(0)?,
            lane: r.get(1)?,
            first_seq: r.get::<_, i64>(2)? as u64,
            last_seq: r.get::<_, i64>(3)? as u64,
            received_ms: r.get(4)?,
            signature: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
