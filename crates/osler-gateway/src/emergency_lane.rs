//! The emergencies lane's writer: a fall or an SOS press is committed to its own file
//! ([`EMERGENCIES_FILE`]) by its own thread, in a transaction of a few rows, so that it never
//! waits for the readings commit in progress in the main outbox. That commit (the edge stage on
//! a device's thousands of readings, then fsync) takes tens of milliseconds under load, and an
//! emergency's whole budget from the device to the clinician is 10 ms (issue 13).
//!
//! The same rules as the main intake ([`crate::intake`]): group commit, nothing answered before
//! its commit is durable, entries removed only through the hub's confirmation. Each file keeps
//! its own request keys, so a device request that carries an emergency and readings is
//! recognised by both writers when the device resends it after a crash between their commits.
//!
//! Admission is the lane's own: emergencies are refused only when this file holds more than a
//! tenth of the outbox limit (a device flooding SOS presses cannot fill the disk) or the disk is
//! full, never because the main outbox is full of readings.

use std::collections::HashSet;

use osler_wire::Lane;
use tokio::sync::mpsc;

use crate::intake::{Job, Outcomes, REMEMBER_REQUESTS_MS, Reply, Unit, next_group};
use crate::outbox::{OutboxError, Queue, Tx};

/// The size this lane's file may reach, from the outbox limit.
pub(crate) fn limit_of(outbox_limit: u64) -> u64 {
    (outbox_limit / 10).max(1 << 20)
}

pub(crate) struct Writer {
    pub(crate) queue: Queue,
    pub(crate) limit: u64,
}

impl Writer {
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(jobs) = next_group(&mut rx) {
            self.commit(jobs);
        }
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        let used = self.queue.used_bytes().unwrap_or(0);
        let mut replies = Vec::with_capacity(jobs.len());
        let failure = self.apply(jobs, used, &mut replies).err();
        if let Some(e) = &failure {
            tracing::error!(error = %e, "emergencies commit failed; nothing of it was stored");
        }
        for r in replies {
            r.finish(failure.as_ref());
        }
    }

    fn apply(
        &mut self,
        jobs: Vec<Job>,
        used: u64,
        replies: &mut Vec<Reply>,
    ) -> Result<(), OutboxError> {
        let limit = self.limit;
        let mut tx = self.queue.transaction()?;
        let mut taken = HashSet::new();
        let mut newest = None;
        for job in jobs {
            match job {
                Job::Ingest {
                    units,
                    now_ms,
                    reply,
                } => {
                    newest = newest.max(Some(now_ms));
                    let mut outcomes: Outcomes = Vec::with_capacity(units.len());
                    for unit in units {
                        outcomes.push(take(&mut tx, unit, used, limit, now_ms, &mut taken)?);
                    }
                    replies.push(Reply::Ingest(reply, outcomes));
                }
                Job::Ack {
                    lane,
                    through,
                    reply,
                } => {
                    let n = tx.ack(lane, through)?;
                    replies.push(Reply::Ack(reply, n));
                }
                Job::Tick { now_ms } => tx.forget_requests(now_ms - REMEMBER_REQUESTS_MS)?,
            }
        }
        // Request keys are forgotten as the lane takes new ones: no clock of its own, and no
        // commit at all while nothing happens.
        if let Some(now_ms) = newest {
            tx.forget_requests(now_ms - REMEMBER_REQUESTS_MS)?;
        }
        tx.commit()
    }
}

/// One unit's emergencies, inside the transaction: `Ok(Err(Full))` when the lane has no room.
fn take(
    tx: &mut Tx<'_>,
    unit: Unit,
    used: u64,
    limit: u64,
    now_ms: i64,
    taken: &mut HashSet<u64>,
) -> Result<Result<(), OutboxError>, OutboxError> {
    if let Some(key) = unit.request
        && (taken.contains(&key) || tx.seen(key)?)
    {
        return Ok(Ok(()));
    }
    if unit.alerts.is_empty() {
        return Ok(Ok(()));
    }
    if used > limit {
        return Ok(Err(OutboxError::Full { bytes: used, limit }));
    }
    tx.append(Lane::Emergencies, &unit.alerts, now_ms)?;
    if let Some(key) = unit.request {
        tx.remember(key, now_ms)?;
        taken.insert(key);
    }
    Ok(Ok(()))
}
