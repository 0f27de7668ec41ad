//! The registry: versioned resources (Patient, Practitioner, Organization, CareTeam, Device,
//! DeviceUseStatement), their search terms and the device assignments they make.
//!
//! ```text
//! resource(kind, id, vid, updated_ms)                 PRIMARY KEY(kind, id): the current version
//! resource_version(kind, id, vid, updated_ms, body)   PRIMARY KEY(kind, id, vid): every version
//! resource_term(kind, param, value, id)               PRIMARY KEY(kind, param, value, id): the
//!                                                     current version's searchable values
//! assignment(source, device, patient, start_ms, end_ms)  one row per DeviceUseStatement in force
//! ```
//!
//! `body` is the resource's JSON without `id` and `meta`, as the FHIR crate wrote it. Nothing is
//! ever deleted from `resource_version`: a FHIR delete is an update that marks the resource.
//!
//! Invariants (kept by the one writer, checked before anything of a write is applied): a
//! resource's references exist; a unique term (a Patient's identifier) belongs to one resource
//! of its kind; the assignments of one device never overlap; `vid` grows by one per change.

use osler_registry::{
    Assignment, Kind, Match, ParamCond, ResourceQuery, ResourceWrite, SortKey, StoredResource,
    Term, WriteMode, WriteOutcome, overlapping,
};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::StoreError;

pub(crate) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS resource(
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    vid INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resource_updated ON resource(kind, updated_ms);
CREATE TABLE IF NOT EXISTS resource_version(
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    vid INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY(kind, id, vid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS resource_term(
    kind TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY(kind, param, value, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resource_term_of ON resource_term(kind, id);
CREATE TABLE IF NOT EXISTS assignment(
    source TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    patient TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS assignment_device ON assignment(device, start_ms);
";

/// The current version of a resource.
pub(crate) fn current(
    conn: &Connection,
    kind: Kind,
    id: &str,
) -> Result<Option<StoredResource>, StoreError> {
    conn.prepare_cached(
        "SELECT r.vid, r.updated_ms, v.body FROM resource r
         JOIN resource_version v ON v.kind = r.kind AND v.id = r.id AND v.vid = r.vid
         WHERE r.kind = ?1 AND r.id = ?2",
    )?
    .query_row(params![kind.as_str(), id], |row| {
        Ok(StoredResource {
            kind,
            id: id.to_owned(),
            version: row.get::<_, i64>(0)? as u64,
            updated_ms: row.get(1)?,
            body: row.get(2)?,
        })
    })
    .optional()
    .map_err(Into::into)
}

/// One version of a resource (FHIR vread).
pub(crate) fn version(
    conn: &Connection,
    kind: Kind,
    id: &str,
    vid: u64,
) -> Result<Option<StoredResource>, StoreError> {
    conn.prepare_cached(
        "SELECT updated_ms, body FROM resource_version WHERE kind = ?1 AND id = ?2 AND vid = ?3",
    )?
    .query_row(params![kind.as_str(), id, vid as i64], |row| {
        Ok(StoredResource {
            kind,
            id: id.to_owned(),
            version: vid,
            updated_ms: row.get(0)?,
            body: row.get(1)?,
        })
    })
    .optional()
    .map_err(Into::into)
}

/// Every version of a resource, newest first (FHIR `_history`).
pub(crate) fn history(
    conn: &Connection,
    kind: Kind,
    id: &str,
) -> Result<Vec<StoredResource>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT vid, updated_ms, body FROM resource_version WHERE kind = ?1 AND id = ?2
         ORDER BY vid DESC",
    )?;
    let rows = stmt.query_map(params![kind.as_str(), id], |row| {
        Ok(StoredResource {
            kind,
            id: id.to_owned(),
            version: row.get::<_, i64>(0)? as u64,
            updated_ms: row.get(1)?,
            body: row.get(2)?,
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

/// The value test of one condition on `resource_term t`, and its parameters.
fn match_sql(c: &ParamCond) -> (String, Vec<Sql>) {
    let mut args = Vec::new();
    let mut alts = Vec::with_capacity(c.any.len());
    for m in &c.any {
        match m {
            Match::Exact(v) => {
                alts.push("t.value = ?".to_owned());
                args.push(Sql::Text(v.clone()));
            }
            Match::Prefix(v) => {
                // A range on the primary key: every text starting with v sorts between v and
                // v followed by the highest code point.
                alts.push("(t.value >= ? AND t.value < ?)".to_owned());
                args.push(Sql::Text(v.clone()));
                args.push(Sql::Text(format!("{v}\u{10FFFF}")));
            }
            Match::Contains(v) => {
                alts.push("instr(t.value, ?) > 0".to_owned());
                args.push(Sql::Text(v.clone()));
            }
            Match::Range { lo, hi } => {
                let mut parts = Vec::new();
                if let Some(lo) = lo {
                    parts.push("t.value >= ?");
                    args.push(Sql::Text(lo.clone()));
                }
                if let Some(hi) = hi {
                    parts.push("t.value < ?");
                    args.push(Sql::Text(hi.clone()));
                }
                if parts.is_empty() {
                    parts.push("1");
                }
                alts.push(format!("({})", parts.join(" AND ")));
            }
        }
    }
    if alts.is_empty() {
        alts.push("0".to_owned());
    }
    (format!("({})", alts.join(" OR ")), args)
}

/// How many resources a condition matches, counted up to a bound: enough to tell which
/// condition is the most selective. A `:contains` test reads every term of its parameter, so
/// it never drives.
fn estimate(conn: &Connection, kind: Kind, c: &ParamCond) -> Result<u64, StoreError> {
    if c.any.iter().any(|m| matches!(m, Match::Contains(_))) {
        return Ok(u64::MAX);
    }
    let (test, mut args) = match_sql(c);
    let mut all = vec![
        Sql::Text(kind.as_str().to_owned()),
        Sql::Text(c.param.clone()),
    ];
    all.append(&mut args);
    let n: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM resource_term t WHERE t.kind = ? AND t.param = ? AND {test} LIMIT 1000)"
        ))?
        .query_row(params_from_iter(all), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// A query's WHERE clause over `resource r` and its parameters, made once for the page and the
/// total (choosing the driving condition reads the terms).
pub(crate) struct Filter {
    sql: String,
    args: Vec<Sql>,
}

/// The WHERE clause of a query over `resource r`, and its parameters. The most selective
/// condition drives (its matching ids are looked up by primary key); the others are checked
/// per candidate against its own terms, so "given=Anna&family=Berg" costs what Berg costs.
pub(crate) fn filter(conn: &Connection, q: &ResourceQuery) -> Result<Filter, StoreError> {
    let mut sql = String::from("r.kind = ?");
    let mut args: Vec<Sql> = vec![Sql::Text(q.kind.as_str().to_owned())];
    if let Some(ids) = &q.ids {
        sql.push_str(" AND r.id IN (");
        sql.push_str(&vec!["?"; ids.len().max(1)].join(","));
        sql.push(')');
        if ids.is_empty() {
            args.push(Sql::Null);
        }
        args.extend(ids.iter().map(|i| Sql::Text(i.clone())));
    }
    if let Some(lo) = q.updated_from {
        sql.push_str(" AND r.updated_ms >= ?");
        args.push(Sql::Integer(lo));
    }
    if let Some(hi) = q.updated_to {
        sql.push_str(" AND r.updated_ms < ?");
        args.push(Sql::Integer(hi));
    }
    let mut driver = None;
    if q.conds.len() > 1 {
        let mut best = u64::MAX;
        for (i, c) in q.conds.iter().enumerate() {
            let n = estimate(conn, q.kind, c)?;
            if driver.is_none() || n < best {
                (driver, best) = (Some(i), n);
            }
        }
    } else if !q.conds.is_empty() {
        driver = Some(0);
    }
    for (i, c) in q.conds.iter().enumerate() {
        let (test, mut targs) = match_sql(c);
        if Some(i) == driver {
            sql.push_str(&format!(
                " AND r.id IN (SELECT t.id FROM resource_term t WHERE t.kind = r.kind AND t.param = ? AND {test})"
            ));
        } else {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM resource_term t WHERE t.kind = r.kind AND t.id = r.id AND t.param = ? AND {test})"
            ));
        }
        args.push(Sql::Text(c.param.clone()));
        args.append(&mut targs);
    }
    Ok(Filter { sql, args })
}

/// The number of resources a query matches.
pub(crate) fn count(conn: &Connection, f: &Filter) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM resource r WHERE {}", f.sql))?
        .query_row(params_from_iter(f.args.iter()), |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// One page of a query's matches, current versions, in the query's order.
pub(crate) fn search(
    conn: &Connection,
    q: &ResourceQuery,
    f: &Filter,
) -> Result<Vec<StoredResource>, StoreError> {
    let (w, mut args) = (&f.sql, f.args.clone());
    let mut order = Vec::new();
    for s in &q.sort {
        let dir = if s.descending { "DESC" } else { "ASC" };
        match &s.key {
            SortKey::Id => order.push(format!("r.id {dir}")),
            SortKey::LastUpdated => order.push(format!("r.updated_ms {dir}")),
            SortKey::Term(param) => {
                // Resources without the term sort last either way, as FHIR servers commonly do.
                let agg = if s.descending { "max" } else { "min" };
                order.push(format!(
                    "(SELECT {agg}(t.value) FROM resource_term t WHERE t.kind = r.kind AND t.id = r.id AND t.param = ?) IS NULL, \
                     (SELECT {agg}(t.value) FROM resource_term t WHERE t.kind = r.kind AND t.id = r.id AND t.param = ?) {dir}"
                ));
                args.push(Sql::Text(param.clone()));
                args.push(Sql::Text(param.clone()));
            }
        }
    }
    order.push("r.id ASC".to_owned());
    args.push(Sql::Integer(q.limit as i64));
    args.push(Sql::Integer(q.offset as i64));
    let sql = format!(
        "SELECT r.id, r.vid, r.updated_ms, v.body FROM resource r
         JOIN resource_version v ON v.kind = r.kind AND v.id = r.id AND v.vid = r.vid
         WHERE {w} ORDER BY {} LIMIT ? OFFSET ?",
        order.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let kind = q.kind;
    let rows = stmt.query_map(params_from_iter(args), |row| {
        Ok(StoredResource {
            kind,
            id: row.get(0)?,
            version: row.get::<_, i64>(1)? as u64,
            updated_ms: row.get(2)?,
            body: row.get(3)?,
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

/// Every assignment in force.
pub(crate) fn assignments(conn: &Connection) -> Result<Vec<Assignment>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT source, device, patient, start_ms, end_ms FROM assignment")?;
    let rows = stmt.query_map([], assignment_row)?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

fn assignment_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Assignment> {
    Ok(Assignment {
        source: row.get(0)?,
        device: row.get(1)?,
        patient: row.get(2)?,
        start_ms: row.get(3)?,
        end_ms: row.get(4)?,
    })
}

/// Whether a reference's target exists: a registry resource, or, for a Patient or a Device, one
/// known only from readings (it appears as a minimal resource until it is enrolled).
fn target_exists(conn: &Connection, kind: Kind, id: &str) -> Result<bool, StoreError> {
    if current(conn, kind, id)?.is_some() {
        return Ok(true);
    }
    Ok(match kind {
        Kind::Patient => crate::query::exists(conn, "patient", id)?,
        Kind::Device => crate::query::exists(conn, "device", id)?,
        _ => false,
    })
}

/// The resource of `kind` other than `id` that holds `term`, if any.
fn term_owner(
    conn: &Connection,
    kind: Kind,
    term: &Term,
    id: &str,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(
        "SELECT id FROM resource_term WHERE kind = ?1 AND param = ?2 AND value = ?3 AND id <> ?4 LIMIT 1",
    )?
    .query_row(params![kind.as_str(), term.param, term.value, id], |r| r.get(0))
    .optional()
    .map_err(Into::into)
}

/// Applies one resource write inside the writer's transaction. Every check runs before
/// anything is written, so a refused write leaves nothing behind.
pub(crate) fn apply(conn: &Connection, w: &ResourceWrite) -> Result<WriteOutcome, StoreError> {
    let matching = |q: &ResourceQuery| -> Result<Vec<StoredResource>, StoreError> {
        let q = ResourceQuery {
            offset: 0,
            limit: 2,
            ..q.clone()
        };
        search(conn, &q, &filter(conn, &q)?)
    };
    let (id, existing) = match &w.mode {
        WriteMode::Create => {
            if current(conn, w.kind, &w.id)?.is_some() {
                return Ok(WriteOutcome::IdTaken);
            }
            (w.id.clone(), None)
        }
        WriteMode::CreateIfNoneExist(q) => {
            let mut found = matching(q)?;
            match found.len() {
                0 => (w.id.clone(), None),
                1 => return Ok(WriteOutcome::Matched(found.remove(0))),
                n => return Ok(WriteOutcome::MultipleMatches(n)),
            }
        }
        WriteMode::Update => (w.id.clone(), current(conn, w.kind, &w.id)?),
        WriteMode::UpdateMatching(q) => {
            let mut found = matching(q)?;
            match found.len() {
                0 => (w.id.clone(), None),
                1 => {
                    let f = found.remove(0);
                    (f.id.clone(), Some(f))
                }
                n => return Ok(WriteOutcome::MultipleMatches(n)),
            }
        }
    };
    if let Some(v) = w.if_match
        && existing.as_ref().map(|e| e.version) != Some(v)
    {
        return Ok(WriteOutcome::VersionConflict {
            current: existing.map(|e| e.version),
        });
    }
    for r in &w.refs {
        // A resource may name itself (rare, but not a dangling reference).
        let own = r.kind == w.kind && r.id == id;
        if !own && !target_exists(conn, r.kind, &r.id)? {
            return Ok(WriteOutcome::MissingReference(r.clone()));
        }
    }
    for t in &w.unique {
        if let Some(other) = term_owner(conn, w.kind, t, &id)? {
            return Ok(WriteOutcome::Duplicate {
                term: t.clone(),
                other,
            });
        }
    }
    if let Some(a) = &w.assignment {
        let mut stmt = conn.prepare_cached(
            "SELECT source, device, patient, start_ms, end_ms FROM assignment WHERE device = ?1",
        )?;
        let same_device: Vec<Assignment> = stmt
            .query_map([&a.device], assignment_row)?
            .collect::<Result<_, _>>()?;
        let mut a = a.clone();
        a.source = id.clone();
        if let Some(other) = overlapping(&same_device, &a) {
            return Ok(WriteOutcome::Overlap {
                other: other.source.clone(),
            });
        }
    }
    if let Some(e) = &existing
        && e.body == w.body
    {
        return Ok(WriteOutcome::Unchanged(e.clone()));
    }
    let vid = existing.as_ref().map_or(1, |e| e.version + 1);
    let kind = w.kind.as_str();
    conn.prepare_cached(
        "INSERT INTO resource_version(kind, id, vid, updated_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![kind, id, vid as i64, w.now_ms, w.body])?;
    conn.prepare_cached(
        "INSERT INTO resource(kind, id, vid, updated_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(kind, id) DO UPDATE SET vid = excluded.vid, updated_ms = excluded.updated_ms",
    )?
    .execute(params![kind, id, vid as i64, w.now_ms])?;
    conn.prepare_cached("DELETE FROM resource_term WHERE kind = ?1 AND id = ?2")?
        .execute(params![kind, id])?;
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO resource_term(kind, param, value, id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for t in &w.terms {
        insert.execute(params![kind, t.param, t.value, id])?;
    }
    if w.kind == Kind::DeviceUseStatement {
        conn.prepare_cached("DELETE FROM assignment WHERE source = ?1")?
            .execute([&id])?;
        if let Some(a) = &w.assignment {
            conn.prepare_cached(
                "INSERT INTO assignment(source, device, patient, start_ms, end_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, a.device, a.patient, a.start_ms, a.end_ms])?;
        }
    }
    let stored = StoredResource {
        kind: w.kind,
        id,
        version: vid,
        updated_ms: w.now_ms,
        body: w.body.clone(),
    };
    Ok(if existing.is_some() {
        WriteOutcome::Updated(stored)
    } else {
        WriteOutcome::Created(stored)
    })
}

/// The device whose held readings a write may release: a DeviceUseStatement's device, or a
/// Device (its identifiers may be how held readings name it).
pub(crate) fn device_of(w: &ResourceWrite, outcome: &WriteOutcome) -> Option<String> {
    if !matches!(outcome, WriteOutcome::Created(_) | WriteOutcome::Updated(_)) {
        return None;
    }
    match w.kind {
        Kind::DeviceUseStatement => w.assignment.as_ref().map(|a| a.device.clone()),
        Kind::Device => outcome.stored().map(|s| s.id.clone()),
        _ => None,
    }
}

/// The Device id a sender's name for a device stands for: the id itself when a Device has
/// it, else the one Device holding it as an identifier (a serial number, a MAC), else the name
/// as given (a device known only from readings).
pub(crate) fn resolve_device(conn: &Connection, name: &str) -> Result<String, StoreError> {
    if current(conn, Kind::Device, name)?.is_some() {
        return Ok(name.to_owned());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT id FROM resource_term WHERE kind = 'Device' AND param = 'identifier' AND value = ?1 LIMIT 2",
    )?;
    let ids: Vec<String> = stmt
        .query_map([name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(match ids.as_slice() {
        [one] => one.clone(),
        // None, or ambiguous (two Devices share the value under different systems): the name
        // itself, which no assignment names, so the reading is held for a person to look at.
        _ => name.to_owned(),
    })
}

/// Every name a Device goes by: its id and its identifier values.
pub(crate) fn device_names(conn: &Connection, id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT value FROM resource_term WHERE kind = 'Device' AND id = ?1 AND param = 'identifier'",
    )?;
    let mut names: Vec<String> = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    names.push(id.to_owned());
    names.sort();
    names.dedup();
    Ok(names)
}

/// The assignments of one device.
pub(crate) fn assignments_of(
    conn: &Connection,
    device: &str,
) -> Result<Vec<Assignment>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT source, device, patient, start_ms, end_ms FROM assignment WHERE device = ?1 ORDER BY start_ms",
    )?;
    let rows = stmt.query_map([device], assignment_row)?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

/// The patient `device` is assigned to at `t_ms`.
pub(crate) fn patient_at(
    conn: &Connection,
    device: &str,
    t_ms: i64,
) -> Result<Option<String>, StoreError> {
    conn.prepare_cached(
        "SELECT patient FROM assignment WHERE device = ?1 AND start_ms <= ?2 AND (end_ms IS NULL OR ?2 < end_ms)
         ORDER BY start_ms DESC LIMIT 1",
    )?
    .query_row(params![device, t_ms], |r| r.get(0))
    .optional()
    .map_err(Into::into)
}

/// Gives a patient known only from readings its minimal Patient (version 1), unless the
/// registry has one already.
pub(crate) fn insert_stub(
    conn: &Connection,
    id: &str,
    stub: &osler_registry::Stub,
    now_ms: i64,
) -> Result<(), StoreError> {
    let kind = Kind::Patient.as_str();
    let new = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO resource(kind, id, vid, updated_ms) VALUES (?1, ?2, 1, ?3)",
        )?
        .execute(params![kind, id, now_ms])?;
    if new == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO resource_version(kind, id, vid, updated_ms, body) VALUES (?1, ?2, 1, ?3, ?4)",
    )?
    .execute(params![kind, id, now_ms, stub.body])?;
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO resource_term(kind, param, value, id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for t in &stub.terms {
        insert.execute(params![kind, t.param, t.value, id])?;
    }
    Ok(())
}

/// Gives every patient known from readings but missing from the registry its minimal Patient
/// (at start-up: a database of the previous release, or one written without stubs).
pub(crate) fn stub_missing_patients(
    conn: &Connection,
    stub: &osler_registry::Stub,
) -> Result<(), StoreError> {
    let missing: Vec<(String, i64)> = conn
        .prepare(
            "SELECT p.id, p.created_ms FROM patient p
             WHERE NOT EXISTS (SELECT 1 FROM resource r WHERE r.kind = 'Patient' AND r.id = p.id)",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if missing.is_empty() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for (id, created) in &missing {
        if let Err(e) = insert_stub(conn, id, stub, *created) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    conn.execute_batch("COMMIT")?;
    tracing::info!(
        patients = missing.len(),
        "patients known from readings given their minimal Patient"
    );
    Ok(())
}
