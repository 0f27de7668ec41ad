//! Technical alerts: conditions of the system itself rather than of a patient (a gateway that
//! stopped uploading, a gateway whose outbox is filling, a webhook endpoint that keeps
//! failing), for operators. They have no patient, so they are not in `alert` (whose every row
//! belongs to one patient's compartment); each is a row here, open until its condition ends.
//!
//! The hub decides which conditions hold (`osler-hub::technical`) and hands the whole set for
//! the rules it checks to [`sync`], which raises what is new, resolves what is gone and keeps
//! the rest, in one transaction with an audit entry per change: idempotent, so a restart
//! neither loses an open alert nor raises it twice.
//!
//! Also here: what each gateway last said of itself in its batches' headers (`gateway_report`,
//! written in the batch's own commit).

use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;

pub(crate) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS technical_alert(
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    rule TEXT NOT NULL,
    detail TEXT NOT NULL,
    raised_ms INTEGER NOT NULL,
    resolved_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS technical_open ON technical_alert(subject, rule)
    WHERE resolved_ms IS NULL;
CREATE TABLE IF NOT EXISTS gateway_report(
    gateway TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    outbox_bytes INTEGER NOT NULL,
    outbox_limit INTEGER NOT NULL,
    version TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_of ON batch(gateway, received_ms);
";

/// A technical alert, open or resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TechnicalAlert {
    pub id: i64,
    /// What it is about: `gateway:ID`, `webhook:ID`.
    pub subject: String,
    pub rule: String,
    /// In words, as of the last check (a filling outbox's share, how long a gateway is silent).
    pub detail: String,
    pub raised_ms: i64,
    pub resolved_ms: Option<i64>,
}

/// A condition that holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub subject: String,
    pub rule: &'static str,
    pub detail: String,
}

/// What a gateway last said of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayReport {
    pub gateway: String,
    pub at_ms: i64,
    pub outbox_bytes: u64,
    pub outbox_limit: u64,
    pub version: String,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TechnicalAlert> {
    Ok(TechnicalAlert {
        id: r.get(0)?,
        subject: r.get(1)?,
        rule: r.get(2)?,
        detail: r.get(3)?,
        raised_ms: r.get(4)?,
        resolved_ms: r.get(5)?,
    })
}

const COLUMNS: &str = "id, subject, rule, detail, raised_ms, resolved_ms";

/// Makes the open alerts of `rules` exactly `now`: raises the new, resolves the gone, updates
/// the detail of the rest. Returns the changes: each alert with `raised` or `resolved`.
pub(crate) fn sync(
    c: &Connection,
    rules: &[&str],
    now: &[Condition],
    at_ms: i64,
) -> Result<Vec<(TechnicalAlert, &'static str)>, StoreError> {
    let mut changes = Vec::new();
    for rule in rules {
        let open: Vec<TechnicalAlert> = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM technical_alert WHERE rule = ?1 AND resolved_ms IS NULL"
            ))?
            .query_map([rule], row)?
            .collect::<Result<_, _>>()?;
        for a in &open {
            match now
                .iter()
                .find(|n| n.rule == *rule && n.subject == a.subject)
            {
                Some(n) if n.detail != a.detail => {
                    c.prepare_cached("UPDATE technical_alert SET detail = ?2 WHERE id = ?1")?
                        .execute(params![a.id, n.detail])?;
                }
                Some(_) => {}
                None => {
                    c.prepare_cached("UPDATE technical_alert SET resolved_ms = ?2 WHERE id = ?1")?
                        .execute(params![a.id, at_ms])?;
                    let mut done = a.clone();
                    done.resolved_ms = Some(at_ms);
                    changes.push((done, "resolved"));
                }
            }
        }
        for n in now.iter().filter(|n| n.rule == *rule) {
            if open.iter().any(|a| a.subject == n.subject) {
                continue;
            }
            c.prepare_cached(
                "INSERT INTO technical_alert(subject, rule, detail, raised_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![n.subject, n.rule, n.detail, at_ms])?;
            changes.push((
                TechnicalAlert {
                    id: c.last_insert_rowid(),
                    subject: n.subject.clone(),
                    rule: n.rule.to_owned(),
                    detail: n.detail.clone(),
                    raised_ms: at_ms,
                    resolved_ms: None,
                },
                "raised",
            ));
        }
    }
    Ok(changes)
}

/// The open technical alerts, and the `recent` last resolved, newest first.
pub(crate) fn list(c: &Connection, recent: usize) -> Result<Vec<TechnicalAlert>, StoreError> {
    let mut out: Vec<TechnicalAlert> = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM technical_alert WHERE resolved_ms IS NULL ORDER BY raised_ms DESC"
        ))?
        .query_map([], row)?
        .collect::<Result<_, _>>()?;
    let resolved = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM technical_alert WHERE resolved_ms IS NOT NULL
             ORDER BY resolved_ms DESC LIMIT ?1"
        ))?
        .query_map([recent as i64], row)?
        .collect::<Result<Vec<_>, _>>()?;
    out.extend(resolved);
    Ok(out)
}

/// Keeps what a gateway said of itself with a batch (in the batch's transaction).
pub(crate) fn report(c: &Connection, r: &GatewayReport) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO gateway_report(gateway, at_ms, outbox_bytes, outbox_limit, version)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(gateway) DO UPDATE SET at_ms = excluded.at_ms,
             outbox_bytes = excluded.outbox_bytes, outbox_limit = excluded.outbox_limit,
             version = excluded.version
         WHERE excluded.at_ms >= gateway_report.at_ms",
    )?
    .execute(params![
        r.gateway,
        r.at_ms,
        r.outbox_bytes as i64,
        r.outbox_limit as i64,
        r.version
    ])?;
    Ok(())
}

/// Every gateway's last report.
pub(crate) fn reports(c: &Connection) -> Result<Vec<GatewayReport>, StoreError> {
    let rows = c
        .prepare_cached(
            "SELECT gateway, at_ms, outbox_bytes, outbox_limit, version FROM gateway_report ORDER BY gateway",
        )?
        .query_map([], |r| {
            Ok(GatewayReport {
                gateway: r.get(0)?,
                at_ms: r.get(1)?,
                outbox_bytes: r.get::<_, i64>(2)?.max(0) as u64,
                outbox_limit: r.get::<_, i64>(3)?.max(0) as u64,
                version: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Webhook endpoints (enabled) that are failing now, with why: a delivery still being retried
/// after failing `retrying` times or more, or a delivery dead-lettered within `window_ms` with
/// none delivered since.
pub(crate) fn failing_webhooks(
    c: &Connection,
    now_ms: i64,
    retrying: u32,
    window_ms: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    let endpoints: Vec<String> = c
        .prepare_cached("SELECT id FROM webhook_endpoint WHERE disabled_ms IS NULL ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for e in endpoints {
        let retried: Option<(i64, Option<String>)> = c
            .prepare_cached(
                "SELECT attempts, last_error FROM webhook_delivery
                 WHERE endpoint = ?1 AND state = 'pending' AND attempts >= ?2
                 ORDER BY attempts DESC LIMIT 1",
            )?
            .query_row(params![e, retrying], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((attempts, error)) = retried {
            out.push((
                e,
                format!(
                    "a delivery has failed {attempts} times and is being retried ({})",
                    error.unwrap_or_else(|| "no answer".into())
                ),
            ));
            continue;
        }
        let dead: Option<(i64, Option<String>)> = c
            .prepare_cached(
                "SELECT COUNT(*), MAX(last_error) FROM webhook_delivery
                 WHERE endpoint = ?1 AND state = 'dead' AND done_ms >= ?2
                   AND done_ms > COALESCE((SELECT MAX(done_ms) FROM webhook_delivery
                                           WHERE endpoint = ?1 AND state = 'delivered'), 0)
                 HAVING COUNT(*) > 0",
            )?
            .query_row(params![e, now_ms - window_ms], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((n, error)) = dead {
            out.push((
                e,
                format!(
                    "{n} deliveries dead-lettered and none delivered since ({}); replay them once it answers",
                    error.unwrap_or_else(|| "no answer".into())
                ),
            ));
        }
    }
    Ok(out)
}
