//! The cohort model: patients with kits, their physiology, and injected clinical events.
//!
//! Everything is a pure function of the seed: the same `--seed` gives the same readings and the
//! same events, so a test can rerun a cohort and compare. Time advances in 5-second ticks; at
//! each tick every patient's devices emit what is due.
//!
//! Physiology (plausible, not a clinical model): heart rate around a personal baseline with a
//! night-time dip, activity bumps and sensor noise; SpO2 95-99 %; blood pressure three times a
//! day; a daily weight; CGM every 5 minutes for one patient in three with visible meals; a
//! thermometer twice a day. Artefacts: a rare single-sample spike on the watch. Dropouts: the
//! watch comes off for 20-60 minutes now and then (charging).

use std::fmt;

/// xorshift64*: small, fast, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Mix the seed so that neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Roughly normal noise (sum of uniforms), standard deviation `sd`.
    pub fn noise(&mut self, sd: f64) -> f64 {
        (self.unit() + self.unit() + self.unit() - 1.5) * 2.0 * sd
    }
}

/// A clinical event the simulator injects, with the ground truth it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Tachycardia,
    Bradycardia,
    Desaturation,
    HypertensiveCrisis,
    Hypoglycaemia,
    Hyperglycaemia,
    Fever,
    WeightGain,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Tachycardia,
        EventKind::Bradycardia,
        EventKind::Desaturation,
        EventKind::HypertensiveCrisis,
        EventKind::Hypoglycaemia,
        EventKind::Hyperglycaemia,
        EventKind::Fever,
        EventKind::WeightGain,
    ];

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Tachycardia => "tachycardia",
            EventKind::Bradycardia => "bradycardia",
            EventKind::Desaturation => "desaturation",
            EventKind::HypertensiveCrisis => "hypertensive-crisis",
            EventKind::Hypoglycaemia => "hypoglycaemia",
            EventKind::Hyperglycaemia => "hyperglycaemia",
            EventKind::Fever => "fever",
            EventKind::WeightGain => "weight-gain",
        }
    }

    /// How long the event lasts, in ms.
    fn length_ms(self) -> i64 {
        const MIN: i64 = 60_000;
        match self {
            EventKind::Tachycardia | EventKind::Bradycardia => 15 * MIN,
            EventKind::Desaturation => 10 * MIN,
            EventKind::HypertensiveCrisis => MIN,
            EventKind::Hypoglycaemia => 30 * MIN,
            EventKind::Hyperglycaemia => 60 * MIN,
            EventKind::Fever => 180 * MIN,
            EventKind::WeightGain => 4 * 24 * 60 * MIN,
        }
    }

    fn needs_cgm(self) -> bool {
        matches!(self, EventKind::Hypoglycaemia | EventKind::Hyperglycaemia)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One injected event: the ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub patient: usize,
    pub kind: EventKind,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A reading as the simulator's devices send it (the gateway's device format).
#[derive(Clone, Debug, PartialEq)]
pub struct SimReading {
    pub patient: usize,
    pub device: &'static str,
    pub metric: &'static str,
    pub value: SimValue,
    pub unit: &'static str,
    pub t_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SimValue {
    One(f64),
    Two(f64, f64),
}

/// The default tick: the watch's heart-rate interval.
pub const TICK_MS: i64 = 5_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

#[derive(Clone, Debug)]
struct Patient {
    rng: Rng,
    hr_base: f64,
    sys_base: f64,
    weight: f64,
    cgm: bool,
    /// Minutes past UTC midnight when the patient's day starts (spreads the cohort's routines).
    tz_shift: i64,
    off_until: i64,
}

/// The cohort: patients, their events, and the clock.
pub struct Cohort {
    patients: Vec<Patient>,
    pub events: Vec<Event>,
    pub start_ms: i64,
    pub end_ms: i64,
    tick: i64,
    tick_ms: i64,
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

impl Cohort {
    /// `n` patients over `[start_ms, end_ms)`, with `events` injected events.
    pub fn new(n: usize, start_ms: i64, end_ms: i64, events: usize, seed: u64) -> Cohort {
        Cohort::with_events_by(n, start_ms, end_ms, &EventKind::ALL, events, end_ms, seed)
    }

    /// As [`Cohort::new`], with every event over by `events_end_ms` (the demo puts them in the
    /// replayed past so that alerts show within a minute).
    pub fn with_events_by(
        n: usize,
        start_ms: i64,
        end_ms: i64,
        kinds: &[EventKind],
        events: usize,
        events_end_ms: i64,
        seed: u64,
    ) -> Cohort {
        let mut rng = Rng::new(seed);
        let patients: Vec<Patient> = (0..n)
            .map(|i| {
                let mut r = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9));
                Patient {
                    hr_base: r.range(58.0, 78.0),
                    sys_base: r.range(112.0, 138.0),
                    weight: r.range(55.0, 105.0),
                    cgm: i % 3 == 0,
                    tz_shift: (r.range(-3.0, 3.0) * 60.0) as i64,
                    off_until: 0,
                    rng: r,
                }
            })
            .collect();
        // Events start after the first tenth of the window (so there is a baseline before) and
        // end before its end; one event per patient at most, so ground truth stays unambiguous.
        let mut evs = Vec::new();
        let span = events_end_ms.min(end_ms) - start_ms;
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for (k, &p) in order.iter().enumerate().take(events.min(n)) {
            let mut kind = kinds[k % kinds.len()];
            if kind.needs_cgm() && !patients[p].cgm {
                kind = EventKind::Tachycardia;
            }
            let len = kind.length_ms();
            if len * 10 / 8 > span && kinds.len() == EventKind::ALL.len() {
                // The window is too short for this event (weight gain over days).
                kind = EventKind::Desaturation;
            }
            let len = kind.length_ms();
            let lo = start_ms + span / 10;
            // Events that outlast a short window still start inside it, spread over its body.
            let hi = if start_ms + span - len - 5 * MIN > lo {
                start_ms + span - len - 5 * MIN
            } else {
                start_ms + span * 9 / 10
            };
            let start = lo + (rng.unit() * (hi - lo) as f64) as i64;
            let start = start - start.rem_euclid(TICK_MS);
            evs.push(Event {
                patient: p,
                kind,
                start_ms: start,
                end_ms: start + len,
            });
        }
        evs.sort_by_key(|e| (e.start_ms, e.patient));
        Cohort {
            patients,
            events: evs,
            start_ms: start_ms - start_ms.rem_euclid(TICK_MS),
            end_ms,
            tick: 0,
            tick_ms: TICK_MS,
        }
    }

    /// The time of the next tick, or `None` when the window is over.
    pub fn next_tick_ms(&self) -> Option<i64> {
        let t = self.start_ms + self.tick * self.tick_ms;
        (t < self.end_ms).then_some(t)
    }

    fn event_for(&self, p: usize, t: i64) -> Option<&Event> {
        self.events
            .iter()
            .find(|e| e.patient == p && t >= e.start_ms && t < e.end_ms)
    }

    /// Samples heart rate every `ms` instead of every 5 s (a load knob: 100 ms gives ten
    /// readings a second per patient). `ms` must divide 5,000.
    pub fn set_tick(&mut self, ms: i64) -> Result<(), String> {
        if ms <= 0 || TICK_MS % ms != 0 {
            return Err(format!("{ms} ms does not divide 5000 ms"));
        }
        self.tick_ms = ms;
        self.tick = 0;
        Ok(())
    }

    /// Every reading due at the next tick.
    pub fn tick(&mut self, out: &mut Vec<SimReading>) -> bool {
        let Some(t) = self.next_tick_ms() else {
            return false;
        };
        self.tick += 1;
        for p in 0..self.patients.len() {
            let event = self.event_for(p, t).cloned();
            let pat = &mut self.patients[p];
            let local = (t + pat.tz_shift * MIN).rem_euclid(DAY);
            let asleep = !(7 * HOUR..23 * HOUR).contains(&local);
            let push = |out: &mut Vec<SimReading>, device, metric, value, unit| {
                out.push(SimReading {
                    patient: p,
                    device,
                    metric,
                    value,
                    unit,
                    t_ms: t,
                });
            };
            let kind = event.as_ref().map(|e| e.kind);
            // Devices are not synchronised: each patient's minute and five-minute schedules
            // start at their own offset (a whole number of ticks).
            let phase = (p as i64 * 7919 % (MIN / self.tick_ms)) * self.tick_ms;
            // The watch: heart rate every tick, SpO2 and steps every minute, unless it is off.
            if kind.is_some() {
                // Ground truth must be visible: an event puts the watch back on.
                pat.off_until = 0;
            } else if t >= pat.off_until
                && pat.rng.unit() < 0.000_5 * self.tick_ms as f64 / TICK_MS as f64
            {
                pat.off_until = t + (pat.rng.range(20.0, 60.0) as i64) * MIN;
            }
            if t >= pat.off_until {
                let mut hr = pat.hr_base + if asleep { -8.0 } else { 4.0 } + pat.rng.noise(2.5);
                match kind {
                    Some(EventKind::Tachycardia) => hr = pat.rng.range(132.0, 150.0),
                    Some(EventKind::Bradycardia) => hr = pat.rng.range(34.0, 38.0),
                    Some(EventKind::Fever) => hr += 15.0,
                    _ => {
                        if pat.rng.unit() < 0.0005 * self.tick_ms as f64 / TICK_MS as f64 {
                            // Motion artefact: one implausibly high sample.
                            hr = pat.rng.range(170.0, 210.0);
                        }
                    }
                }
                push(
                    out,
                    "watch",
                    "heart-rate",
                    SimValue::One(hr.round()),
                    "/min",
                );
                if (t - self.start_ms + phase) % MIN == 0 {
                    let spo2 = match kind {
                        Some(EventKind::Desaturation) => pat.rng.range(85.0, 89.0),
                        _ => (97.0 + pat.rng.noise(1.0)).min(100.0),
                    };
                    push(out, "watch", "spo2", SimValue::One(spo2.round()), "%");
                    let steps = if asleep {
                        0.0
                    } else {
                        (pat.rng.range(0.0, 1.0).powi(3) * 130.0).round()
                    };
                    push(out, "watch", "steps", SimValue::One(steps), "{steps}");
                }
            }
            // The cuff: 08:00, 14:00, 20:00, plus a reading at a hypertensive crisis.
            let cuff_due = [8 * HOUR, 14 * HOUR, 20 * HOUR].contains(&local);
            let crisis = kind == Some(EventKind::HypertensiveCrisis)
                && event.as_ref().is_some_and(|e| e.start_ms == t);
            if cuff_due || crisis {
                let (sys, dia) = if crisis {
                    (pat.rng.range(188.0, 200.0), pat.rng.range(122.0, 128.0))
                } else {
                    let s = pat.sys_base + pat.rng.noise(6.0);
                    (s, s * 0.64 + pat.rng.noise(3.0))
                };
                push(
                    out,
                    "cuff",
                    "blood-pressure",
                    SimValue::Two(sys.round(), dia.round()),
                    "mm[Hg]",
                );
            }
            // The scale: 07:30 daily; weight gain adds 1 kg a day during the event
            // (3 kg in 3 days: well past the 2 kg rule, whatever the scale's 0.1 kg noise).
            if local == 7 * HOUR + 30 * MIN {
                let gain = match &event {
                    Some(e) if e.kind == EventKind::WeightGain => {
                        1.0 * ((t - e.start_ms) as f64 / DAY as f64)
                    }
                    _ => 0.0,
                };
                push(
                    out,
                    "scale",
                    "body-weight",
                    SimValue::One(round1(pat.weight + gain + pat.rng.noise(0.1))),
                    "kg",
                );
            }
            // The CGM: every 5 minutes, meals at 08:00, 13:00 and 19:00.
            if pat.cgm && (t - self.start_ms + phase) % (5 * MIN) == 0 {
                let mut g = 100.0 + pat.rng.noise(4.0);
                for meal in [8 * HOUR, 13 * HOUR, 19 * HOUR] {
                    let since = (local - meal) as f64 / MIN as f64;
                    if (0.0..180.0).contains(&since) {
                        // A rise peaking ~45 minutes after the meal, back down in three hours.
                        g += 60.0
                            * (since / 45.0)
                            * (-(since - 45.0) / 45.0).exp().min(1.0)
                            * (1.0 - since / 180.0);
                    }
                }
                match kind {
                    Some(EventKind::Hypoglycaemia) => g = pat.rng.range(42.0, 52.0),
                    Some(EventKind::Hyperglycaemia) => g = pat.rng.range(285.0, 330.0),
                    _ => {}
                }
                push(out, "cgm", "cgm-glucose", SimValue::One(g.round()), "mg/dL");
            }
            // The thermometer: 08:00 and 20:00, every 30 minutes during a fever.
            let fever = kind == Some(EventKind::Fever);
            if [8 * HOUR, 20 * HOUR].contains(&local)
                || (fever
                    && event
                        .as_ref()
                        .is_some_and(|e| (t - e.start_ms) % (30 * MIN) == 0))
            {
                let temp = if fever {
                    pat.rng.range(39.3, 39.8)
                } else {
                    36.7 + pat.rng.noise(0.2)
                };
                push(
                    out,
                    "thermometer",
                    "body-temperature",
                    SimValue::One(round1(temp)),
                    "Cel",
                );
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_750_000_000_000 - 1_750_000_000_000 % DAY;

    fn run(seed: u64) -> (Vec<SimReading>, Vec<Event>) {
        let mut c = Cohort::new(12, START, START + 2 * DAY, 8, seed);
        let mut out = Vec::new();
        while c.tick(&mut out) {}
        (out, c.events.clone())
    }

    #[test]
    fn deterministic_for_a_seed() {
        assert_eq!(run(3), run(3));
        assert_ne!(run(3).0, run(4).0);
    }

    #[test]
    fn events_show_in_the_readings() {
        let (readings, events) = run(7);
        assert_eq!(events.len(), 8);
        for e in &events {
            let during: Vec<&SimReading> = readings
                .iter()
                .filter(|r| r.patient == e.patient && r.t_ms >= e.start_ms && r.t_ms < e.end_ms)
                .collect();
            let shows = |metric: &str, f: &dyn Fn(SimValue) -> bool| {
                during.iter().any(|r| r.metric == metric && f(r.value))
            };
            let one = |v: SimValue| match v {
                SimValue::One(x) => x,
                SimValue::Two(x, _) => x,
            };
            let ok = match e.kind {
                EventKind::Tachycardia => shows("heart-rate", &|v| one(v) > 130.0),
                EventKind::Bradycardia => shows("heart-rate", &|v| one(v) < 40.0),
                EventKind::Desaturation => shows("spo2", &|v| one(v) <= 89.0),
                EventKind::HypertensiveCrisis => shows("blood-pressure", &|v| one(v) > 180.0),
                EventKind::Hypoglycaemia => shows("cgm-glucose", &|v| one(v) < 60.0),
                EventKind::Hyperglycaemia => shows("cgm-glucose", &|v| one(v) > 250.0),
                EventKind::Fever => shows("body-temperature", &|v| one(v) >= 39.1),
                EventKind::WeightGain => true,
            };
            assert!(ok, "{e:?} does not show in its readings");
        }
    }

    #[test]
    fn readings_are_plausible_and_unique_per_stream() {
        let (readings, _) = run(11);
        let mut seen = std::collections::HashSet::new();
        for r in &readings {
            assert!(
                seen.insert((r.patient, r.metric, r.device, r.t_ms)),
                "duplicate {r:?}"
            );
            let metric = osler_core::Metric::from_key(r.metric).unwrap();
            let info = metric.info();
            let v = match r.value {
                SimValue::One(v) => v,
                SimValue::Two(v, _) => v,
            };
            let range = info.parts.map_or(info.range, |p| p[0].range);
            assert!((range.0..=range.1).contains(&v), "{r:?}");
        }
        // A watch sends 17,280 heart rates a day; dropouts (charging) take up to a fifth away.
        let hr = readings
            .iter()
            .filter(|r| r.patient == 1 && r.metric == "heart-rate")
            .count();
        assert!((27_000..=34_560).contains(&hr), "{hr}");
    }
}
