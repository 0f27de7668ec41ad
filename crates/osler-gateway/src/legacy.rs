//! Outboxes written by earlier releases, carried over at start.

use osler_edge::Stream;
use rusqlite::{Connection, OptionalExtension, params};

use crate::outbox::OutboxError;

/// Outboxes written before the binary state kept it as JSON in `edge_stream`: carried over
/// once, in one transaction, so an upgrade loses no reading waiting at the edge.
pub(crate) fn migrate_json_states(conn: &Connection) -> Result<(), OutboxError> {
    let old: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='edge_stream'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if old.is_none() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let moved = (|| -> Result<usize, OutboxError> {
        let mut rows: Vec<(String, String, String, String)> = Vec::new();
        {
            let mut stmt =
                conn.prepare("SELECT patient, metric, device, state FROM edge_stream")?;
            let mut q = stmt.query([])?;
            while let Some(row) = q.next()? {
                rows.push((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?));
            }
        }
        let mut insert = conn.prepare(
            "INSERT INTO edge_state(patient, metric, device, state) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut moved = 0;
        for (patient, metric, device, state) in rows {
            match serde_json::from_str::<Stream>(&state) {
                Ok(stream) => {
                    let mut bytes = Vec::new();
                    stream.encode(&mut bytes);
                    insert.execute(params![patient, metric, device, bytes])?;
                    moved += 1;
                }
                Err(e) => {
                    tracing::error!(%patient, %metric, error = %e, "an edge stream state does not parse; starting it afresh")
                }
            }
        }
        conn.execute_batch("DROP TABLE edge_stream")?;
        Ok(moved)
    })();
    match moved {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            tracing::info!(
                streams = n,
                "edge stream states carried over to the binary form"
            );
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
