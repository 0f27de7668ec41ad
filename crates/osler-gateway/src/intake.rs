//! The intake: the one writer of the outbox, where every way in (HTTP, MQTT, the edge's clock,
//! the uploader's acknowledgements) becomes a transaction.
//!
//! Main types: [`Intake`] (the handle the sources and the uploader call), [`Unit`] (what one
//! device request or MQTT message brings: readings, what to quarantine, the request's key),
//! [`Room`] (the admission rule, decided for every unit before anything about it is recorded).
//!
//! # One group, one transaction
//! The writer thread takes every job waiting (group commit) and, in one outbox transaction:
//! for each unit, checks whether its request was committed before (a device's resend after a
//! crash: answered at once, nothing taken twice), decides its [`Room`], runs the critical rules
//! ([`LocalAlerts`]) and the edge stage ([`osler_edge::Stage`]) on its readings; then appends
//! the alert events, the readings sent and the summaries closed, writes every changed stream
//! state, and commits with fsync. Only then are the units answered. If the commit fails,
//! nothing of it is stored: the edge stage rolls back to its stored streams, the alert events
//! raised are carried to the next commit (the rules will not raise them again from the resent
//! readings), and every unit of the group is answered with the error.
//!
//! A unit's emergencies (a fall, an SOS) never wait for that: [`Intake::ingest`] splits them
//! off, hands them to the announcer and to the emergencies lane's own writer and file
//! ([`crate::emergency_lane`]), and sends the rest here; the unit is answered once both parts
//! are committed.
//!
//! # Admission
//! [`Room::at`] is the one place that decides what fits: below the limit everything; between
//! the limit and 10% above it only alert events (they are small and matter most); past that,
//! nothing. A unit refused is answered [`OutboxError::Full`] with nothing of it recorded (not its
//! request key, not its readings), so the device's resend is taken in once there is room.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use osler_core::Reading;
use osler_edge::{EdgeConfig, Output, Stage, StateWrite, Tally};
use osler_rules::Overrides;
use osler_wire::{Entry, Lane, SummaryEntry};
use tokio::sync::{mpsc, oneshot};

use crate::local_alerts::LocalAlerts;
use crate::outbox::{EMERGENCIES_FILE, Outbox, OutboxError, Quarantined, Queue, Tx};

/// Requests are remembered for an hour: far longer than any device waits before resending.
pub(crate) const REMEMBER_REQUESTS_MS: i64 = 3_600_000;

/// The most jobs one commit takes.
const GROUP: usize = 512;

/// What one device request (or MQTT message) brings, stored or refused as a whole.
#[derive(Clone, Debug, Default)]
pub struct Unit {
    /// Validated readings.
    pub readings: Vec<Reading>,
    /// Validated readings that named only their device, attributed by the gateway's copy of
    /// the assignments (or named `assignments::UNATTRIBUTED`): sent whole and marked, for the
    /// hub to attribute by its own.
    pub by_device: Vec<Reading>,
    /// Emergencies' alert entries (wire JSON), for the emergencies lane (see `Intake::ingest`).
    pub alerts: Vec<String>,
    /// What of it was not valid, with the reasons.
    pub quarantine: Vec<Quarantined>,
    /// The request's key (see [`crate::request_key`]): a unit whose request was committed in
    /// the last hour is answered without being taken in twice.
    pub request: Option<u64>,
}

impl Unit {
    /// Nothing to store (a unit like this fits whatever the room).
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.by_device.is_empty()
            && self.alerts.is_empty()
            && self.quarantine.is_empty()
    }
}

/// What the outbox admits at its current size: the one admission rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// Below the limit: everything.
    Everything,
    /// From the limit to 10% above it: alert events only; readings are refused.
    AlertsOnly,
    /// Past that: nothing.
    Nothing,
}

impl Room {
    pub fn at(used: u64, limit: u64) -> Room {
        let hard = limit.saturating_add(limit / 10);
        if used < limit {
            Room::Everything
        } else if used < hard {
            Room::AlertsOnly
        } else {
            Room::Nothing
        }
    }
}

/// Per-patient threshold overrides as the gateway last fetched them from the hub.
pub type OverrideCache = Arc<std::sync::RwLock<HashMap<String, Overrides>>>;

/// The edge's counters (for `/status` and the benchmarks).
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub tally: Mutex<Tally>,
    pub summaries: AtomicU64,
    pub streams: AtomicU64,
    /// Streams holding readings not yet decided or an open summary.
    pub open: AtomicU64,
    /// Decision time per reading (zone, filter, decision; not the commit), log2 buckets of ns.
    pub decision_ns: [AtomicU64; 32],
}

impl EdgeStats {
    fn record(&self, ns: u64) {
        let bucket = (64 - ns.max(1).leading_zeros() as usize - 1).min(31);
        self.decision_ns[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile of decision time in microseconds (the upper edge of its bucket, so an
    /// overestimate by at most 2x).
    pub fn decision_quantile_us(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .decision_ns
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some((1u64 << (i + 1)) as f64 / 1000.0);
            }
        }
        None
    }
}

/// How the intake is set up.
pub struct IntakeSetup {
    /// The outbox size at which readings are refused (see [`Room`]).
    pub limit: u64,
    pub edge: EdgeConfig,
    pub overrides: OverrideCache,
    pub stats: Arc<EdgeStats>,
    pub alerts: Arc<LocalAlerts>,
}

impl IntakeSetup {
    /// Defaults: the default edge processing, no overrides, the given limit.
    pub fn with_limit(limit: u64) -> IntakeSetup {
        IntakeSetup {
            limit,
            edge: EdgeConfig::default(),
            overrides: OverrideCache::default(),
            stats: Arc::new(EdgeStats::default()),
            alerts: Arc::new(LocalAlerts::default()),
        }
    }
}

pub(crate) type Outcomes = Vec<Result<(), OutboxError>>;

pub(crate) enum Job {
    Ingest {
        units: Vec<Unit>,
        now_ms: i64,
        reply: oneshot::Sender<Result<Outcomes, OutboxError>>,
    },
    Ack {
        lane: Lane,
        through: u64,
        reply: oneshot::Sender<Result<usize, OutboxError>>,
    },
    Tick {
        now_ms: i64,
    },
}

/// The intake. Cheap to share behind an `Arc`.
pub struct Intake {
    outbox: Arc<Outbox>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The emergencies lane: its own file and writer (see [`crate::emergency_lane`]).
    emergencies: Arc<Outbox>,
    emergency_jobs: Option<mpsc::Sender<Job>>,
    emergency_writer: Option<std::thread::JoinHandle<()>>,
    /// Where emergencies are announced at once, before their commit (see
    /// [`crate::uploader::announce`]); unset, they are not announced.
    announcer: std::sync::OnceLock<std::sync::mpsc::Sender<Vec<String>>>,
    /// The outbox size at which readings are refused.
    limit: u64,
}

impl Intake {
    /// Opens the outbox in `dir` (recovering a damaged file, carrying an older outbox over),
    /// loads the edge streams and starts the writer thread.
    pub fn open(dir: &std::path::Path, setup: IntakeSetup) -> Result<Intake, OutboxError> {
        let (outbox, mut queue) = Outbox::open(dir)?;
        crate::legacy::migrate_json_states(queue.connection())?;
        let stage = load_stage(&mut queue, setup.edge.clone())?;
        setup
            .stats
            .streams
            .store(stage.streams() as u64, Ordering::Relaxed);
        setup.stats.open.store(stage.holding(), Ordering::Relaxed);
        let (emergencies, emergency_queue) = Outbox::open_file(dir, EMERGENCIES_FILE)?;
        let (etx, erx) = mpsc::channel(1024);
        let emergency_writer = crate::emergency_lane::Writer {
            queue: emergency_queue,
            limit: crate::emergency_lane::limit_of(setup.limit),
        };
        let emergency_handle = std::thread::Builder::new()
            .name("osler-emergency-writer".into())
            .spawn(move || emergency_writer.run(erx))
            .map_err(|source| OutboxError::Io {
                path: emergencies.path().to_owned(),
                source,
            })?;
        let limit = setup.limit;
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            queue,
            stage,
            limit: setup.limit,
            overrides: setup.overrides,
            stats: setup.stats,
            alerts: setup.alerts,
            carried: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("osler-outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OutboxError::Io {
                path: outbox.path().to_owned(),
                source,
            })?;
        Ok(Intake {
            outbox: Arc::new(outbox),
            jobs: Some(tx),
            writer: Some(handle),
            emergencies: Arc::new(emergencies),
            emergency_jobs: Some(etx),
            emergency_writer: Some(emergency_handle),
            announcer: std::sync::OnceLock::new(),
            limit,
        })
    }

    /// The outbox's read side (alerts, readings, summaries).
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Announces every emergency taken in from now on to `to`, as it arrives (before its
    /// commit). Set once; later calls are ignored.
    pub fn announce_to(&self, to: std::sync::mpsc::Sender<Vec<String>>) {
        let _ = self.announcer.set(to);
    }

    /// Hands the emergencies of `units` to the announcer, if there is one. An announcer gone
    /// is no loss: announcing is the fast path, the emergencies lane the sure one.
    fn announce(&self, units: &[Unit]) {
        if let Some(to) = self.announcer.get()
            && !units.is_empty()
        {
            let _ = to.send(units.iter().flat_map(|u| u.alerts.clone()).collect());
        }
    }

    /// What the gateway says of itself in its batches' headers: how full the outbox is.
    pub fn state(&self) -> osler_wire::GatewayState {
        osler_wire::GatewayState {
            // Unreadable (the outbox's reader failing) reads as empty: the hub then sees the
            // batch itself, which says the gateway is alive.
            outbox_bytes: self.outbox.used_bytes().unwrap_or(0),
            outbox_limit: self.limit,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The read side of the file that holds `lane`.
    pub fn outbox_of(&self, lane: Lane) -> &Arc<Outbox> {
        match lane {
            Lane::Emergencies => &self.emergencies,
            Lane::Alerts | Lane::Readings | Lane::Summaries => &self.outbox,
        }
    }

    /// The writer of `lane`'s file.
    fn sender(&self, lane: Lane) -> Result<&mpsc::Sender<Job>, OutboxError> {
        match lane {
            Lane::Emergencies => self.emergency_jobs.as_ref(),
            Lane::Alerts | Lane::Readings | Lane::Summaries => self.jobs.as_ref(),
        }
        .ok_or(OutboxError::Closed)
    }

    /// Sends `lane`'s writer the job `make` builds around a reply channel, and waits for its
    /// answer (given once the job's group is committed, or failed).
    async fn call<T>(
        &self,
        lane: Lane,
        make: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Job,
    ) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender(lane)?
            .send(make(reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// [`Intake::call`] for callers outside the runtime.
    fn call_blocking<T>(
        &self,
        lane: Lane,
        make: impl FnOnce(oneshot::Sender<Result<T, OutboxError>>) -> Job,
    ) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.sender(lane)?
            .blocking_send(make(reply))
            .map_err(|_| OutboxError::Closed)?;
        rx.blocking_recv().map_err(|_| OutboxError::Closed)?
    }

    /// Takes in units (each stored or refused as a whole); resolves once the commits holding
    /// them are durable, with one outcome per unit, in order. A unit's emergencies go to their
    /// own lane's writer, at the same time as the rest goes to the outbox's.
    pub async fn ingest(&self, units: Vec<Unit>, now_ms: i64) -> Result<Outcomes, OutboxError> {
        let split = Split::of(units);
        self.announce(&split.urgent);
        let urgent = async {
            if split.urgent.is_empty() {
                return Ok(Vec::new());
            }
            self.call(Lane::Emergencies, |reply| Job::Ingest {
                units: split.urgent,
                now_ms,
                reply,
            })
            .await
        };
        let rest = async {
            if split.rest.is_empty() {
                return Ok(Vec::new());
            }
            self.call(Lane::Readings, |reply| Job::Ingest {
                units: split.rest,
                now_ms,
                reply,
            })
            .await
        };
        let (urgent, rest) = tokio::join!(urgent, rest);
        Ok(Split::join(
            split.n,
            (&split.urgent_of, urgent?),
            (&split.rest_of, rest?),
        ))
    }

    /// [`Intake::ingest`] of one unit.
    pub async fn ingest_one(&self, unit: Unit, now_ms: i64) -> Result<(), OutboxError> {
        first(self.ingest(vec![unit], now_ms).await?)
    }

    /// [`Intake::ingest_one`] for callers outside the runtime (emergencies first).
    pub fn ingest_blocking(&self, unit: Unit, now_ms: i64) -> Result<(), OutboxError> {
        let split = Split::of(vec![unit]);
        self.announce(&split.urgent);
        let mut outcomes = Vec::new();
        for (lane, units) in [
            (Lane::Emergencies, split.urgent),
            (Lane::Readings, split.rest),
        ] {
            if !units.is_empty() {
                outcomes.extend(self.call_blocking(lane, |reply| Job::Ingest {
                    units,
                    now_ms,
                    reply,
                })?);
            }
        }
        outcomes.into_iter().find(Result::is_err).unwrap_or(Ok(()))
    }

    /// Removes a lane's entries up to and including `through` (the hub committed them).
    /// Blocking: for the uploader threads.
    pub fn ack_blocking(&self, lane: Lane, through: u64) -> Result<usize, OutboxError> {
        self.call_blocking(lane, |reply| Job::Ack {
            lane,
            through,
            reply,
        })
    }

    /// Time-driven edge work: readings that waited long enough for their filter window are
    /// decided, idle summaries closed, old request keys forgotten. The gateway calls this
    /// every 250 ms.
    pub fn tick_blocking(&self, now_ms: i64) -> Result<(), OutboxError> {
        self.sender(Lane::Readings)?
            .blocking_send(Job::Tick { now_ms })
            .map_err(|_| OutboxError::Closed)
    }
}

fn first(outcomes: Outcomes) -> Result<(), OutboxError> {
    outcomes.into_iter().next().unwrap_or(Ok(()))
}

/// Units split between the two writers: each unit's emergencies (with its request key) for the
/// emergencies lane, the rest for the outbox; a unit of emergencies alone goes only to the first.
struct Split {
    n: usize,
    urgent: Vec<Unit>,
    urgent_of: Vec<usize>,
    rest: Vec<Unit>,
    rest_of: Vec<usize>,
}

impl Split {
    fn of(units: Vec<Unit>) -> Split {
        let mut split = Split {
            n: units.len(),
            urgent: Vec::new(),
            urgent_of: Vec::new(),
            rest: Vec::new(),
            rest_of: Vec::new(),
        };
        for (i, mut unit) in units.into_iter().enumerate() {
            let had_alerts = !unit.alerts.is_empty();
            if had_alerts {
                split.urgent.push(Unit {
                    alerts: std::mem::take(&mut unit.alerts),
                    request: unit.request,
                    ..Unit::default()
                });
                split.urgent_of.push(i);
            }
            if !(had_alerts && unit.is_empty()) {
                split.rest.push(unit);
                split.rest_of.push(i);
            }
        }
        split
    }

    /// Each unit's outcome: refused if either writer refused its part.
    fn join(n: usize, a: (&[usize], Outcomes), b: (&[usize], Outcomes)) -> Outcomes {
        let mut out: Outcomes = (0..n).map(|_| Ok(())).collect();
        for (of, outcomes) in [a, b] {
            for (&i, o) in of.iter().zip(outcomes) {
                if let (Some(slot @ Ok(())), Err(e)) = (out.get_mut(i), o) {
                    *slot = Err(e);
                }
            }
        }
        out
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.jobs.take();
        self.emergency_jobs.take();
        for h in [self.writer.take(), self.emergency_writer.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

/// Loads every stream's stored state. A state that does not decode (damage, or a future
/// version) is logged, removed and started afresh: it held at most a filter window of readings
/// and an open summary.
fn load_stage(queue: &mut Queue, config: EdgeConfig) -> Result<Stage, OutboxError> {
    let mut stage = Stage::new(config);
    let mut bad = Vec::new();
    for row in queue.states()? {
        let device = (!row.device.is_empty()).then_some(row.device.as_str());
        if let Err(error) = stage.restore(row.id, &row.patient, &row.metric, device, row.state) {
            tracing::error!(patient = %row.patient, metric = %row.metric, %error, "an edge stream state does not decode; starting it afresh");
            bad.push(row.id);
        }
    }
    if !bad.is_empty() {
        let mut tx = queue.transaction()?;
        for id in bad {
            tx.delete_state(id)?;
        }
        tx.commit()?;
    }
    Ok(stage)
}

/// A closed summary as it travels (the summaries lane's entry).
pub fn summary_entry(s: &osler_edge::Summary) -> SummaryEntry {
    SummaryEntry {
        p: s.patient.clone(),
        d: s.device.clone(),
        m: s.metric.clone(),
        t0: s.t0,
        t1: s.t1,
        o: s.o,
        n: s.n,
        min: s.min.clone(),
        max: s.max.clone(),
        mean: s.mean(),
        last: s.last.clone(),
        spikes: s.spikes,
    }
}

/// A job's answer, sent once the group's commit is known.
pub(crate) enum Reply {
    Ingest(oneshot::Sender<Result<Outcomes, OutboxError>>, Outcomes),
    Ack(oneshot::Sender<Result<usize, OutboxError>>, usize),
}

impl Reply {
    /// Answers with the outcome, or with the commit's failure. A requester that went away
    /// (client hung up) is not an error: the outcome stands either way.
    pub(crate) fn finish(self, failure: Option<&OutboxError>) {
        match (self, failure) {
            (Reply::Ingest(tx, outcomes), None) => drop(tx.send(Ok(outcomes))),
            (Reply::Ack(tx, n), None) => drop(tx.send(Ok(n))),
            (Reply::Ingest(tx, _), Some(e)) => drop(tx.send(Err(e.for_requester()))),
            (Reply::Ack(tx, _), Some(e)) => drop(tx.send(Err(e.for_requester()))),
        }
    }
}

/// What one group produced, before its commit.
#[derive(Default)]
struct Group {
    alerts: Vec<String>,
    out: Vec<Output>,
    /// Entries of readings attributed by device, past the edge.
    by_device: Vec<String>,
    tally: Tally,
    /// Request keys taken in by this group (a resend inside the same group is recognised).
    requests: HashSet<u64>,
    now_ms: i64,
}

struct Writer {
    queue: Queue,
    stage: Stage,
    limit: u64,
    overrides: OverrideCache,
    stats: Arc<EdgeStats>,
    alerts: Arc<LocalAlerts>,
    /// Alert events raised by a group whose commit failed, for the next commit.
    carried: Vec<String>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(jobs) = next_group(&mut rx) {
            self.commit(jobs);
        }
        // Stopping: alert events a failed commit left are stored now if the disk lets us
        // (after a crash instead, the device resends the refused readings and the rules,
        // starting afresh, raise them again).
        if !self.carried.is_empty() {
            self.commit(Vec::new());
        }
    }

    fn commit(&mut self, jobs: Vec<Job>) {
        // Size is checked once per group: the outbox grows by at most one group past the limit.
        let used = self.queue.used_bytes().unwrap_or(0);
        let room = Room::at(used, self.limit);
        let mut replies = Vec::with_capacity(jobs.len());
        let mut group = Group {
            alerts: std::mem::take(&mut self.carried),
            ..Group::default()
        };
        let result = self.apply(jobs, room, used, &mut group, &mut replies);
        match result {
            Ok(written) => {
                self.stage.commit(written);
                self.stats
                    .open
                    .store(self.stage.holding(), Ordering::Relaxed);
                self.stats
                    .streams
                    .store(self.stage.streams() as u64, Ordering::Relaxed);
                self.stats
                    .tally
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(&group.tally);
                for r in replies {
                    r.finish(None);
                }
            }
            Err(e) => {
                self.stage.rollback();
                self.carried = group.alerts;
                tracing::error!(error = %e, "outbox commit failed; nothing of it was stored");
                for r in replies {
                    r.finish(Some(&e));
                }
            }
        }
    }

    /// Applies a group's jobs in one transaction and commits it. Returns the stream states
    /// written; the replies are pushed as the jobs are applied, to be answered after.
    fn apply(
        &mut self,
        jobs: Vec<Job>,
        room: Room,
        used: u64,
        group: &mut Group,
        replies: &mut Vec<Reply>,
    ) -> Result<Vec<StateWrite>, OutboxError> {
        let Writer {
            queue,
            stage,
            limit,
            overrides,
            stats,
            alerts,
            ..
        } = self;
        let overrides = overrides.read().unwrap_or_else(|p| p.into_inner());
        let mut tx = queue.transaction()?;
        for job in jobs {
            match job {
                Job::Ingest {
                    units,
                    now_ms,
                    reply,
                } => {
                    group.now_ms = group.now_ms.max(now_ms);
                    let mut outcomes = Vec::with_capacity(units.len());
                    for unit in units {
                        let take = Take {
                            tx: &mut tx,
                            stage,
                            alerts,
                            overrides: &overrides,
                            stats,
                        };
                        let admitted = take.unit(unit, room, now_ms, group)?;
                        outcomes.push(if admitted {
                            Ok(())
                        } else {
                            Err(OutboxError::Full {
                                bytes: used,
                                limit: *limit,
                            })
                        });
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
                Job::Tick { now_ms } => {
                    group.now_ms = group.now_ms.max(now_ms);
                    tx.forget_requests(now_ms - REMEMBER_REQUESTS_MS)?;
                    stage.tick(now_ms, &mut group.out, &mut group.tally);
                }
            }
        }
        let now = group.now_ms;
        if !group.alerts.is_empty() {
            tx.append(Lane::Alerts, &group.alerts, now)?;
        }
        let (mut readings, mut summaries) = (std::mem::take(&mut group.by_device), Vec::new());
        for o in group.out.drain(..) {
            match o {
                Output::Forward(r) => readings.push(Entry::from_reading(&r).to_json()),
                Output::Summary(s) => summaries.push(summary_entry(&s).to_json()),
            }
        }
        if !readings.is_empty() {
            tx.append(Lane::Readings, &readings, now)?;
            // Readings near a threshold carry alerts only the hub decides: no batching wait.
            if group.tally.near() > 0 {
                tx.urgent();
            }
        }
        if !summaries.is_empty() {
            tx.append(Lane::Summaries, &summaries, now)?;
        }
        let written = stage.writes();
        for w in &written {
            let new = w.new.as_ref().map(|(p, m, d)| (p.as_str(), *m, d.as_str()));
            tx.put_state(w.id, new, &w.bytes)?;
        }
        tx.commit()?;
        stats
            .summaries
            .fetch_add(summaries.len() as u64, Ordering::Relaxed);
        Ok(written)
    }
}

/// The next group of jobs: the first (waited for), then every one already waiting, up to
/// [`GROUP`]; `None` once every sender is gone.
pub(crate) fn next_group(rx: &mut mpsc::Receiver<Job>) -> Option<Vec<Job>> {
    let mut jobs = vec![rx.blocking_recv()?];
    while jobs.len() < GROUP {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Taking in one unit inside the group's transaction.
struct Take<'a, 't> {
    tx: &'a mut Tx<'t>,
    stage: &'a mut Stage,
    alerts: &'a LocalAlerts,
    overrides: &'a HashMap<String, Overrides>,
    stats: &'a EdgeStats,
}

impl Take<'_, '_> {
    /// Whether the unit is taken in (or was before: a resend).
    fn unit(
        self,
        unit: Unit,
        room: Room,
        now_ms: i64,
        group: &mut Group,
    ) -> Result<bool, OutboxError> {
        if let Some(key) = unit.request
            && (group.requests.contains(&key) || self.tx.seen(key)?)
        {
            return Ok(true);
        }
        if unit.is_empty() {
            return Ok(true);
        }
        if room == Room::Nothing {
            return Ok(false);
        }
        // Alert entries the unit brings (emergencies reach the emergencies lane instead, see
        // `Intake::ingest`), then the rules, which run only once the alerts they raise are sure
        // of their room: an alert the engine raised and the outbox refused would never be
        // raised again.
        group.alerts.extend(unit.alerts.iter().cloned());
        group
            .alerts
            .extend(self.alerts.evaluate(&unit.readings, self.overrides, false));
        let attributed: Vec<Reading> = unit
            .by_device
            .iter()
            .filter(|r| r.patient.as_str() != crate::assignments::UNATTRIBUTED)
            .cloned()
            .collect();
        group
            .alerts
            .extend(self.alerts.evaluate(&attributed, self.overrides, true));
        if room == Room::AlertsOnly {
            return Ok(false);
        }
        for q in &unit.quarantine {
            self.tx.quarantine(q)?;
        }
        for r in &unit.by_device {
            let mut e = Entry::from_reading(r);
            e.a = true;
            group.by_device.push(e.to_json());
        }
        for r in &unit.readings {
            let started = std::time::Instant::now();
            self.stage.observe(
                r,
                self.overrides.get(r.patient.as_str()),
                now_ms,
                &mut group.out,
                &mut group.tally,
            );
            self.stats.record(started.elapsed().as_nanos() as u64);
        }
        if let Some(key) = unit.request {
            self.tx.remember(key, now_ms)?;
            group.requests.insert(key);
        }
        Ok(true)
    }
}
