//! The stored form of a [`Stream`]'s state: compact binary, because the gateway writes the
//! state of every stream a commit touched (a thousand or more at a time under load), and that
//! write is most of the gateway's time to acknowledge a device.
//!
//! # Format (version 1)
//!
//! Integers are LEB128 varints, signed ones zigzag-encoded; times are deltas from a nearby time
//! where that makes them small. A number is a tag byte and its value: `0` an integer (zigzag
//! varint; readings are mostly whole numbers), `1` eight bytes of an `f64`, little-endian.
//!
//! ```text
//! u8 version (1)
//! recent:   count, then per sample: t (delta from the previous sample's t, the first from 0),
//!           o, r - t, a - r, done (u8), values (count, numbers)
//! last_sent: u8 0 | 1, t - base, values          (base: the newest recent t, else 0)
//! context_left
//! summary:  u8 0 | 1, t0 - base, t1 - t0, o, n, spikes, touched_ms - t0, min, max, sum, last
//! seen:     count, first (delta from base), then deltas from the previous
//! arrived:  two signed varints
//! ```
//!
//! The stream's key (patient, metric, device) is not in it: the gateway stores it beside.

use std::collections::VecDeque;

use crate::{Sample, Stream, Summary};

/// The version byte written first; a decoder refuses any other.
const VERSION: u8 = 1;

/// Why stored bytes are not a stream state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("the state ends early")]
    Truncated,
    #[error("unknown state version {0}")]
    Version(u8),
    #[error("malformed state: {0}")]
    Malformed(&'static str),
    #[error("the state names an unknown metric")]
    Metric,
}

/// The most values a reading has (blood pressure has two); anything more is not a state this
/// crate wrote.
const MAX_PARTS: u64 = 2;
/// The most samples or remembered times a state holds: a filter window or the resend memory,
/// with room to spare; a larger count is damage, not a state.
const MAX_ITEMS: u64 = 4096;

fn put_u(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i(out: &mut Vec<u8>, v: i64) {
    put_u(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_f(out: &mut Vec<u8>, v: f64) {
    // Whole numbers within i64's exact range travel as varints; the check round-trips the
    // value, so -0.0 and anything fractional or huge take the eight-byte form.
    let i = v as i64;
    if i as f64 == v && v.is_sign_positive() == (i >= 0) && i.unsigned_abs() < (1 << 53) {
        out.push(0);
        put_i(out, i);
    } else {
        out.push(1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_values(out: &mut Vec<u8>, v: &[f64]) {
    put_u(out, v.len() as u64);
    for x in v {
        put_f(out, *x);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(b)
    }

    fn u(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed("a varint longer than 64 bits"))
    }

    fn i(&mut self) -> Result<i64, DecodeError> {
        let u = self.u()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn count(&mut self, max: u64) -> Result<usize, DecodeError> {
        let n = self.u()?;
        if n > max {
            return Err(DecodeError::Malformed("a count out of range"));
        }
        Ok(n as usize)
    }

    fn f(&mut self) -> Result<f64, DecodeError> {
        match self.byte()? {
            0 => Ok(self.i()? as f64),
            1 => {
                let (head, rest) = self
                    .bytes
                    .split_first_chunk::<8>()
                    .ok_or(DecodeError::Truncated)?;
                self.bytes = rest;
                Ok(f64::from_le_bytes(*head))
            }
            _ => Err(DecodeError::Malformed("an unknown number tag")),
        }
    }

    fn values(&mut self) -> Result<Vec<f64>, DecodeError> {
        let n = self.count(MAX_PARTS)?;
        (0..n).map(|_| self.f()).collect()
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("a flag that is neither 0 nor 1")),
        }
    }

    fn small<T: TryFrom<i64>>(&mut self) -> Result<T, DecodeError> {
        T::try_from(self.i()?).map_err(|_| DecodeError::Malformed("a number out of range"))
    }
}

impl Stream {
    /// Appends the stored form of this stream's state to `out` (see the module's format).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put_u(out, self.recent.len() as u64);
        let mut prev = 0i64;
        for s in &self.recent {
            put_i(out, s.t.wrapping_sub(prev));
            prev = s.t;
            put_i(out, i64::from(s.o));
            put_i(out, s.r.wrapping_sub(s.t));
            put_i(out, s.a.wrapping_sub(s.r));
            out.push(u8::from(s.done));
            put_values(out, &s.v);
        }
        let base = self.recent.back().map_or(0, |s| s.t);
        match &self.last_sent {
            None => out.push(0),
            Some((t, v)) => {
                out.push(1);
                put_i(out, t.wrapping_sub(base));
                put_values(out, v);
            }
        }
        put_u(out, self.context_left as u64);
        match &self.summary {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_i(out, s.t0.wrapping_sub(base));
                put_i(out, s.t1.wrapping_sub(s.t0));
                put_i(out, i64::from(s.o));
                put_u(out, u64::from(s.n));
                put_u(out, u64::from(s.spikes));
                put_i(out, s.touched_ms.wrapping_sub(s.t0));
                for v in [&s.min, &s.max, &s.sum, &s.last] {
                    put_values(out, v);
                }
            }
        }
        put_u(out, self.seen.len() as u64);
        let mut prev = base;
        for t in &self.seen {
            put_i(out, t.wrapping_sub(prev));
            prev = *t;
        }
        put_i(out, self.arrived[0]);
        put_i(out, self.arrived[1]);
    }

    /// The stream whose state [`Stream::encode`] wrote, with its key.
    pub fn decode(
        patient: &str,
        metric: &str,
        device: Option<&str>,
        bytes: &[u8],
    ) -> Result<Stream, DecodeError> {
        let mut r = Reader { bytes };
        let version = r.byte()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let n = r.count(MAX_ITEMS)?;
        let mut recent = VecDeque::with_capacity(n);
        let mut prev = 0i64;
        for _ in 0..n {
            let t = prev.wrapping_add(r.i()?);
            prev = t;
            let o = r.small()?;
            let rcv = t.wrapping_add(r.i()?);
            let a = rcv.wrapping_add(r.i()?);
            let done = r.flag()?;
            let v = r.values()?;
            recent.push_back(Sample {
                t,
                o,
                r: rcv,
                v,
                done,
                a,
            });
        }
        let base = recent.back().map_or(0, |s| s.t);
        let last_sent = if r.flag()? {
            let t = base.wrapping_add(r.i()?);
            Some((t, r.values()?))
        } else {
            None
        };
        let context_left = r.count(MAX_ITEMS)?;
        let summary = if r.flag()? {
            let t0 = base.wrapping_add(r.i()?);
            let t1 = t0.wrapping_add(r.i()?);
            let o = r.small()?;
            let n = u32::try_from(r.u()?).map_err(|_| DecodeError::Malformed("a summary count"))?;
            let spikes =
                u32::try_from(r.u()?).map_err(|_| DecodeError::Malformed("a spike count"))?;
            let touched_ms = t0.wrapping_add(r.i()?);
            let (min, max, sum, last) = (r.values()?, r.values()?, r.values()?, r.values()?);
            Some(Summary {
                patient: String::new(),
                metric: String::new(),
                device: None,
                t0,
                t1,
                o,
                n,
                min,
                max,
                sum,
                last,
                spikes,
                touched_ms,
            })
        } else {
            None
        };
        let n = r.count(MAX_ITEMS)?;
        let mut seen = VecDeque::with_capacity(n);
        let mut prev = base;
        for _ in 0..n {
            let t = prev.wrapping_add(r.i()?);
            prev = t;
            seen.push_back(t);
        }
        let arrived = [r.i()?, r.i()?];
        if !r.bytes.is_empty() {
            return Err(DecodeError::Malformed("bytes after the end"));
        }
        Ok(Stream {
            patient: patient.to_owned(),
            metric: metric.to_owned(),
            device: device.map(str::to_owned),
            recent,
            last_sent,
            context_left,
            summary,
            seen,
            arrived,
        })
    }
}
