//! The edge stage: every stream a gateway keeps, the decision for each reading, the clock, and
//! what must be written so that the stored states match the streams in memory.
//!
//! Main type: [`Stage`]. No IO: the gateway stores the bytes [`Stage::writes`] returns in the
//! same transaction as the outputs, then calls [`Stage::commit`]; if that transaction fails it
//! calls [`Stage::rollback`], which puts every stream back as it was stored and forgets the
//! streams the failed group created. Between the two, the stage is "pending": the streams show
//! the group's effect, and nothing about it is known to be durable.

use std::collections::HashMap;

use osler_core::{Metric, Reading};
use osler_rules::Overrides;

use crate::{DecodeError, EdgeConfig, Output, Stream, Tally, Zone};

/// A stream's key: patient, metric, device.
pub type StreamKey = (String, Metric, Option<String>);

/// One stream as the stage keeps it.
struct Slot {
    /// Its identity in storage (the gateway's `edge_state.id`).
    id: i64,
    key: StreamKey,
    stream: Stream,
    /// Its state as last committed (`None`: not stored yet). A rollback restores the stream
    /// from it, and a state that encodes to the same bytes is not written again.
    saved: Option<Vec<u8>>,
    /// Touched by the pending group, and whether it held anything before.
    touched: bool,
    was_holding: bool,
}

/// A stream state to store: insert a new row when `new` names the stream, else update row `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    pub id: i64,
    /// Patient, metric key and device (empty for none) of a stream not stored before.
    pub new: Option<(String, &'static str, String)>,
    pub bytes: Vec<u8>,
}

/// Every stream of a gateway.
pub struct Stage {
    config: EdgeConfig,
    slots: Vec<Slot>,
    index: HashMap<StreamKey, usize>,
    next_id: i64,
    /// Slots touched by the pending group.
    touched: Vec<usize>,
    /// Slots from here on were created by the pending group.
    created_from: usize,
    /// How many streams hold readings to decide or an open summary (as of the last commit).
    holding: u64,
}

impl Stage {
    pub fn new(config: EdgeConfig) -> Stage {
        Stage {
            config,
            slots: Vec::new(),
            index: HashMap::new(),
            next_id: 1,
            touched: Vec::new(),
            created_from: 0,
            holding: 0,
        }
    }

    /// Takes back a stored stream (at start, before any reading). A state that does not decode
    /// is refused; the caller decides what to do with its row.
    pub fn restore(
        &mut self,
        id: i64,
        patient: &str,
        metric: &str,
        device: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<(), DecodeError> {
        let m = Metric::from_key(metric).ok_or(DecodeError::Metric)?;
        let stream = Stream::decode(patient, metric, device, &bytes)?;
        self.next_id = self.next_id.max(id + 1);
        let key = (patient.to_owned(), m, device.map(str::to_owned));
        if !stream.is_idle() {
            self.holding += 1;
        }
        self.index.insert(key.clone(), self.slots.len());
        self.slots.push(Slot {
            id,
            key,
            stream,
            saved: Some(bytes),
            touched: false,
            was_holding: false,
        });
        self.created_from = self.slots.len();
        Ok(())
    }

    /// Streams known.
    pub fn streams(&self) -> usize {
        self.slots.len()
    }

    /// Streams holding readings not yet decided or an open summary, as of the last commit.
    pub fn holding(&self) -> u64 {
        self.holding
    }

    /// Decides one reading at gateway time `now_ms`: outputs to send go to `out`.
    pub fn observe(
        &mut self,
        r: &Reading,
        overrides: Option<&Overrides>,
        now_ms: i64,
        out: &mut Vec<Output>,
        tally: &mut Tally,
    ) {
        let policy = self.config.policy(r.metric);
        let zone = Zone::for_metric(r.metric, policy.near, overrides);
        if policy.forward_all {
            // Nothing to remember: sent as it is.
            tally.all += 1;
            if zone.contains(&crate::parts(&r.value)) {
                tally.all_near += 1;
            }
            out.push(Output::Forward(r.clone()));
            return;
        }
        let i = self.slot_for(r);
        let policy = self.config.policy(r.metric);
        self.slots[i]
            .stream
            .observe(policy, &zone, r, now_ms, out, tally);
    }

    /// Time-driven work: readings that waited long enough for their filter window are decided,
    /// idle summaries closed.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Output>, tally: &mut Tally) {
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            // Only a stream holding something has time-driven work, so one the tick changed
            // held something before it.
            if slot.stream.is_idle() {
                continue;
            }
            let policy = self.config.policy(slot.key.1);
            if slot.stream.tick(policy, now_ms, out, tally) && !slot.touched {
                slot.touched = true;
                slot.was_holding = true;
                self.touched.push(i);
            }
        }
    }

    /// Decides everything waiting and closes every summary (the end of a benchmark run).
    pub fn flush(&mut self, out: &mut Vec<Output>, tally: &mut Tally) {
        for i in 0..self.slots.len() {
            self.touch(i);
            let policy = self.config.policy(self.slots[i].key.1);
            self.slots[i].stream.flush(policy, out, tally);
        }
    }

    /// The states the pending group changed, encoded, to store in its transaction.
    pub fn writes(&self) -> Vec<StateWrite> {
        let mut writes = Vec::with_capacity(self.touched.len());
        for &i in &self.touched {
            let slot = &self.slots[i];
            let mut bytes = Vec::with_capacity(slot.saved.as_ref().map_or(64, |b| b.len() + 16));
            slot.stream.encode(&mut bytes);
            if slot.saved.as_ref() == Some(&bytes) {
                // A resend recognised, or a tick that changed nothing: the row already says it.
                continue;
            }
            let new = slot.saved.is_none().then(|| {
                let (patient, metric, device) = &slot.key;
                (
                    patient.clone(),
                    metric.info().key,
                    device.clone().unwrap_or_default(),
                )
            });
            writes.push(StateWrite {
                id: slot.id,
                new,
                bytes,
            });
        }
        writes
    }

    /// The pending group's transaction committed with `written` (what [`Stage::writes`]
    /// returned): those bytes become the streams' saved states.
    pub fn commit(&mut self, written: Vec<StateWrite>) {
        let by_id: HashMap<i64, Vec<u8>> = written.into_iter().map(|w| (w.id, w.bytes)).collect();
        for i in std::mem::take(&mut self.touched) {
            let slot = &mut self.slots[i];
            slot.touched = false;
            if let Some(bytes) = by_id.get(&slot.id) {
                slot.saved = Some(bytes.clone());
            }
            match (slot.was_holding, !slot.stream.is_idle()) {
                (false, true) => self.holding += 1,
                (true, false) => self.holding = self.holding.saturating_sub(1),
                _ => {}
            }
        }
        self.created_from = self.slots.len();
    }

    /// The pending group's transaction failed: the streams it touched go back to their saved
    /// state, and the ones it created are forgotten, as the database has them.
    pub fn rollback(&mut self) {
        for i in std::mem::take(&mut self.touched) {
            let slot = &mut self.slots[i];
            slot.touched = false;
            let Some(saved) = &slot.saved else {
                continue;
            };
            let (patient, metric, device) = (&slot.key.0, slot.key.1.info().key, &slot.key.2);
            // These bytes were encoded by this process from a valid stream, so they decode;
            // were they not to, the stream carries on as it is rather than stop.
            if let Ok(s) = Stream::decode(patient, metric, device.as_deref(), saved) {
                slot.stream = s;
            }
        }
        // Their ids are not reused: skipping a few is harmless.
        for slot in self.slots.drain(self.created_from..) {
            self.index.remove(&slot.key);
        }
    }

    /// Marks slot `i` as touched by the pending group (its holding status is taken now,
    /// before the change).
    fn touch(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if !slot.touched {
            slot.touched = true;
            slot.was_holding = !slot.stream.is_idle();
            self.touched.push(i);
        }
    }

    /// The slot of a reading's stream, created (and touched) if new.
    fn slot_for(&mut self, r: &Reading) -> usize {
        let key = Stream::key(r);
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                let i = self.slots.len();
                self.slots.push(Slot {
                    id: self.next_id,
                    key: key.clone(),
                    stream: Stream::new(r),
                    saved: None,
                    touched: false,
                    was_holding: false,
                });
                self.next_id += 1;
                self.index.insert(key, i);
                i
            }
        };
        self.touch(i);
        i
    }
}
