//! The gateway→hub batch format: what a gateway uploads and a hub verifies.
//!
//! Main types: [`Entry`] (one reading on the wire), [`BatchHeader`], [`Envelope`] (a parsed,
//! not yet trusted batch), [`GatewayKey`] (the gateway's Ed25519 signing key).
//!
//! # Layout (version 1)
//!
//! ```text
//! magic    4 bytes   "OSB1"
//! hlen     u32 LE    length of the header
//! header   hlen      JSON: {"gateway","lane","first_seq","count","sent_ms"}
//! blen     u32 LE    length of the body
//! body     blen      zstd( JSON array of entries )
//! sig      64 bytes  Ed25519 signature over every byte before it
//! ```
//!
//! Entries are JSON so that a batch can be inspected with `zstd -d | jq`; zstd takes away the
//! repetition. A batch carries one lane's contiguous sequence range `first_seq ..
//! first_seq + count`, which is what lets the hub recognise a resend: it remembers, per gateway
//! and lane, the highest sequence number it committed.
//!
//! # Invariants
//! - Nothing from a batch is believed before [`Envelope::verify`] has checked its signature
//!   with the gateway's enrolled key; the header is parsed first only to find that key.
//! - Parsing is bounded: the envelope, the decompressed body and the entry count each have a
//!   limit, so a garbled or hostile batch costs bounded memory and is refused with a reason.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 4] = b"OSB1";
/// Largest envelope a hub accepts.
pub const MAX_ENVELOPE_BYTES: usize = 8 << 20;
/// Largest decompressed body (a zip bomb stops here).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Most entries in one batch.
pub const MAX_ENTRIES: u32 = 100_000;
/// The HTTP content type of an envelope.
pub const CONTENT_TYPE: &str = "application/vnd.osler.batch";

/// Why a batch is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    #[error("the batch is truncated: {0}")]
    Truncated(&'static str),
    #[error("not an Osler batch (bad magic number)")]
    BadMagic,
    #[error("the batch is {0} bytes; at most {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("the batch header is invalid: {0}")]
    BadHeader(String),
    #[error("the signature does not verify with the gateway's enrolled key")]
    BadSignature,
    #[error("the body does not decompress: {0}")]
    Decompress(String),
    #[error("the entries are invalid: {0}")]
    BadEntries(String),
    #[error("the header says {header} entries, the body holds {body}")]
    CountMismatch { header: u32, body: usize },
    #[error("invalid key: {0}")]
    BadKey(String),
}

/// Which queue an entry travels in. Alerts are sent before readings and never dropped;
/// summaries (of readings the edge did not send one by one) come last. Emergencies (a fall,
/// an SOS press) travel as alert entries in a lane of their own, which the gateway keeps in its
/// own file with its own writer, so that one never waits for a commit of readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Alerts,
    Readings,
    Summaries,
    Emergencies,
}

impl Lane {
    pub const ALL: [Lane; 4] = [
        Lane::Alerts,
        Lane::Readings,
        Lane::Summaries,
        Lane::Emergencies,
    ];

    pub fn as_u8(self) -> u8 {
        match self {
            Lane::Alerts => 0,
            Lane::Readings => 1,
            Lane::Summaries => 2,
            Lane::Emergencies => 3,
        }
    }
    pub fn from_u8(n: u8) -> Option<Lane> {
        match n {
            0 => Some(Lane::Alerts),
            1 => Some(Lane::Readings),
            2 => Some(Lane::Summaries),
            3 => Some(Lane::Emergencies),
            _ => None,
        }
    }
}

/// What a batch says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    pub gateway: String,
    pub lane: Lane,
    pub first_seq: u64,
    pub count: u32,
    pub sent_ms: i64,
    /// What the gateway says of itself with the batch (signed with it, so the hub may believe
    /// it): how full its outbox is, its version. Absent from gateways that say nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<GatewayState>,
}

/// A gateway's account of itself, carried in its batches' headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayState {
    /// Bytes of data in its outbox, and the size at which it refuses readings.
    pub outbox_bytes: u64,
    pub outbox_limit: u64,
    /// Its software version (`osler --version`).
    pub version: String,
}

impl BatchHeader {
    /// The last sequence number in the batch.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count.max(1)) - 1
    }
}

/// One reading on the wire. Field names are short because they repeat in every entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Patient id.
    pub p: String,
    /// Device id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// Metric key from the catalog (`heart-rate`).
    pub m: String,
    /// Value(s) in the canonical unit: one, or two for a panel.
    pub v: Vec<f64>,
    /// Time taken, UTC ms.
    pub t: i64,
    /// The sender's UTC offset in minutes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub o: i16,
    /// Time the gateway received it, UTC ms.
    pub r: i64,
    /// Attributed by device: the sender named only the device, and `p` is the gateway's guess
    /// from its copy of the assignments (or `unattributed`). The hub attributes it again by
    /// its own assignments, or holds it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub a: bool,
}

fn is_zero(n: &i16) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Entry {
    pub fn from_reading(r: &Reading) -> Entry {
        Entry {
            p: r.patient.to_string(),
            d: r.device.as_ref().map(Id::to_string),
            m: r.metric.info().key.to_owned(),
            v: match r.value {
                Value::Scalar(v) => vec![v],
                Value::Pair(a, b) => vec![a, b],
            },
            t: r.taken.utc_ms,
            o: r.taken.offset_min,
            r: r.received_ms,
            a: false,
        }
    }

    /// The reading this entry carries. A gateway validated it already; the hub checks the
    /// shape again because a signed batch proves who sent it, not that it is well formed.
    pub fn to_reading(&self) -> Result<Reading, String> {
        let metric =
            Metric::from_key(&self.m).ok_or_else(|| format!("unknown metric {:?}", self.m))?;
        let patient =
            Id::parse(&self.p).ok_or_else(|| format!("invalid patient id {:?}", self.p))?;
        let device = match &self.d {
            Some(d) => Some(Id::parse(d).ok_or_else(|| format!("invalid device id {d:?}"))?),
            None => None,
        };
        let value = match (self.v.as_slice(), metric.info().parts.is_some()) {
            ([v], false) => Value::Scalar(*v),
            ([a, b], true) => Value::Pair(*a, *b),
            _ => return Err(format!("{} values for {metric}", self.v.len())),
        };
        Ok(Reading {
            patient,
            device,
            metric,
            value,
            taken: Timestamp {
                utc_ms: self.t,
                offset_min: self.o,
            },
            received_ms: self.r,
            status: Status::Final,
            identifier: None,
        })
    }

    /// The entry as JSON text (what the gateway's outbox stores, ready to batch).
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).expect("an entry serializes")
    }
}

/// One alert event on the wire (the alerts lane): raised or resolved by the gateway's own
/// evaluation of the critical rules, so that the hub learns of it first, even after an outage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEntry {
    /// Patient id.
    pub p: String,
    /// Rule id (`hr-high`).
    pub rule: String,
    /// `raised`, `updated` or `resolved`.
    pub change: String,
    /// Time the deciding reading was taken, UTC ms.
    pub t: i64,
    /// Its value.
    pub v: f64,
    /// The threshold in force.
    pub th: f64,
    /// The deciding reading arrived late at the gateway.
    #[serde(default)]
    pub late: bool,
    /// The device of the deciding reading when the gateway attributed that reading by device:
    /// `p` is then the gateway's guess from its copy of the assignments, which the hub checks
    /// against its own before it believes the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
}

impl AlertEntry {
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).expect("an alert entry serializes")
    }
}

/// A window summary on the wire (the summaries lane): readings of one stream that the edge did
/// not send one by one, as count, min, max, mean and last of their raw values, per part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryEntry {
    /// Patient id.
    pub p: String,
    /// Device id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// Metric key.
    pub m: String,
    /// First and last reading summarised (time taken, UTC ms).
    pub t0: i64,
    pub t1: i64,
    /// UTC offset of the readings, minutes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub o: i16,
    /// How many readings.
    pub n: u32,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    pub mean: Vec<f64>,
    pub last: Vec<f64>,
    /// How many of them the gateway's spike filter judged artefacts.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub spikes: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl SummaryEntry {
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).expect("a summary entry serializes")
    }

    /// Checks what a signed batch cannot prove: known metric, valid ids, a sane shape.
    pub fn check(&self) -> Result<Metric, String> {
        let metric =
            Metric::from_key(&self.m).ok_or_else(|| format!("unknown metric {:?}", self.m))?;
        Id::parse(&self.p).ok_or_else(|| format!("invalid patient id {:?}", self.p))?;
        if let Some(d) = &self.d {
            Id::parse(d).ok_or_else(|| format!("invalid device id {d:?}"))?;
        }
        let parts = if metric.info().parts.is_some() { 2 } else { 1 };
        let all = [&self.min, &self.max, &self.mean, &self.last];
        if all.iter().any(|v| v.len() != parts) {
            return Err(format!(
                "{metric} summaries carry {parts} value(s) per statistic"
            ));
        }
        if all.iter().any(|v| v.iter().any(|x| !x.is_finite())) {
            return Err("a statistic is not a finite number".into());
        }
        if self.n == 0 || self.t1 < self.t0 {
            return Err("a summary covers at least one reading, t0 <= t1".into());
        }
        for i in 0..parts {
            // The mean is a sum divided by a count: allow rounding at the last digits.
            let eps = 1e-9 * self.max[i].abs().max(1.0);
            let (lo, mean, hi) = (self.min[i], self.mean[i], self.max[i]);
            if lo > hi || mean < lo - eps || mean > hi + eps {
                return Err("min <= mean <= max does not hold".into());
            }
        }
        Ok(metric)
    }
}

/// A gateway's Ed25519 signing key.
#[derive(Clone)]
pub struct GatewayKey(SigningKey);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Result<[u8; N], WireError> {
    let text = text.trim();
    if text.len() != N * 2 {
        return Err(WireError::BadKey(format!(
            "expected {} hex digits, found {}",
            N * 2,
            text.len()
        )));
    }
    let mut out = [0u8; N];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| WireError::BadKey("not hex".into()))?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| WireError::BadKey("not hex".into()))?;
    }
    Ok(out)
}

impl GatewayKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<GatewayKey, WireError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| WireError::BadKey(format!("no randomness: {e}")))?;
        Ok(GatewayKey(SigningKey::from_bytes(&seed)))
    }
    /// The secret seed as hex (for the key file).
    pub fn to_hex(&self) -> String {
        hex(&self.0.to_bytes())
    }
    pub fn from_hex(text: &str) -> Result<GatewayKey, WireError> {
        Ok(GatewayKey(SigningKey::from_bytes(&unhex::<32>(text)?)))
    }
    /// The public key as hex: what the hub enrols.
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }
}

/// The header by which a gateway signs a request that is not a batch (its polls of the hub's
/// thresholds and assignments): `Osler-Gateway: <gateway id> <unix ms> <signature hex>`.
pub const REQUEST_HEADER: &str = "osler-gateway";

/// How far a signed request's time may be from the hub's clock.
pub const REQUEST_SKEW_MS: i64 = 5 * 60 * 1000;

fn request_message(gateway: &str, method: &str, path_and_query: &str, at_ms: i64) -> String {
    format!("osler-gateway-request\n{gateway}\n{method}\n{path_and_query}\n{at_ms}")
}

impl GatewayKey {
    /// The `Osler-Gateway` header value for a request.
    pub fn sign_request(
        &self,
        gateway: &str,
        method: &str,
        path_and_query: &str,
        at_ms: i64,
    ) -> String {
        let m = request_message(gateway, method, path_and_query, at_ms);
        format!(
            "{gateway} {at_ms} {}",
            hex(&self.0.sign(m.as_bytes()).to_bytes())
        )
    }
}

/// The gateway id a request's `Osler-Gateway` header claims, before its signature is checked
/// (to look its key up).
pub fn request_gateway(header: &str) -> Option<&str> {
    header.split(' ').next().filter(|g| !g.is_empty())
}

/// Checks a request's `Osler-Gateway` header against the gateway's enrolled key and the
/// hub's clock.
pub fn verify_request(
    header: &str,
    key: &VerifyingKey,
    method: &str,
    path_and_query: &str,
    now_ms: i64,
) -> Result<(), WireError> {
    let mut parts = header.split(' ');
    let (Some(gateway), Some(at), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WireError::BadSignature);
    };
    let at_ms: i64 = at.parse().map_err(|_| WireError::BadSignature)?;
    if (now_ms - at_ms).abs() > REQUEST_SKEW_MS {
        return Err(WireError::BadSignature);
    }
    let sig = ed25519_dalek::Signature::from_bytes(
        &unhex::<64>(sig).map_err(|_| WireError::BadSignature)?,
    );
    let m = request_message(gateway, method, path_and_query, at_ms);
    key.verify_strict(m.as_bytes(), &sig)
        .map_err(|_| WireError::BadSignature)
}

/// A public key as the hub enrols it.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, WireError> {
    VerifyingKey::from_bytes(&unhex::<32>(text)?).map_err(|e| WireError::BadKey(e.to_string()))
}

/// Builds a signed envelope. `entries_json` are entries already serialized with
/// [`Entry::to_json`] (the gateway keeps them that way in its outbox).
pub fn seal(header: &BatchHeader, entries_json: &[&str], key: &GatewayKey) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries_json.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, e) in entries_json.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.as_bytes());
    }
    body.push(b']');
    // Level 3 is zstd's default: most of the ratio at a fraction of the CPU of higher levels.
    let compressed = zstd::bulk::compress(&body, 3).expect("compressing into memory cannot fail");
    let header_json = serde_json::to_vec(header).expect("a header serializes");
    let mut out = Vec::with_capacity(4 + 4 + header_json.len() + 4 + compressed.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_json);
    out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    out.extend_from_slice(&compressed);
    let sig = key.0.sign(&out);
    out.extend_from_slice(&sig.to_bytes());
    out
}

/// A parsed envelope whose signature has not been checked yet.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub header: BatchHeader,
    signed: &'a [u8],
    body: &'a [u8],
    signature: Signature,
}

fn take<'a>(bytes: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
    if bytes.len() < n {
        return Err(WireError::Truncated(what));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn u32_le(b: &[u8]) -> usize {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
}

impl<'a> Envelope<'a> {
    /// The batch's Ed25519 signature (its provenance, kept with what it stored).
    pub fn signature(&self) -> [u8; 64] {
        self.signature.to_bytes()
    }

    /// Splits an envelope into its parts and reads the header.
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, WireError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let mut rest = bytes;
        if take(&mut rest, 4, "magic")? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let hlen = u32_le(take(&mut rest, 4, "header length")?);
        let header_bytes = take(&mut rest, hlen, "header")?;
        let header: BatchHeader = serde_json::from_slice(header_bytes)
            .map_err(|e| WireError::BadHeader(e.to_string()))?;
        if header.count == 0 || header.count > MAX_ENTRIES {
            return Err(WireError::BadHeader(format!(
                "count {} is not within 1..={MAX_ENTRIES}",
                header.count
            )));
        }
        if header.first_seq == 0
            || header
                .first_seq
                .checked_add(u64::from(header.count))
                .is_none()
        {
            return Err(WireError::BadHeader(
                "sequence numbers start at 1 and must not overflow".into(),
            ));
        }
        let blen = u32_le(take(&mut rest, 4, "body length")?);
        let body = take(&mut rest, blen, "body")?;
        let sig = take(&mut rest, 64, "signature")?;
        if !rest.is_empty() {
            return Err(WireError::BadHeader(format!(
                "{} bytes after the signature",
                rest.len()
            )));
        }
        let signed = &bytes[..bytes.len() - 64];
        let signature = Signature::from_slice(sig).map_err(|_| WireError::BadSignature)?;
        Ok(Envelope {
            header,
            signed,
            body,
            signature,
        })
    }

    /// Checks the signature with the gateway's enrolled public key.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), WireError> {
        key.verify(self.signed, &self.signature)
            .map_err(|_| WireError::BadSignature)
    }

    /// Decompresses and parses the readings (call after [`Envelope::verify`]).
    pub fn entries(&self) -> Result<Vec<Entry>, WireError> {
        self.entries_as()
    }

    /// Decompresses and parses the alert entries of an alerts-lane batch.
    pub fn alert_entries(&self) -> Result<Vec<AlertEntry>, WireError> {
        self.entries_as()
    }

    /// Decompresses and parses the summaries of a summaries-lane batch.
    pub fn summary_entries(&self) -> Result<Vec<SummaryEntry>, WireError> {
        self.entries_as()
    }

    fn entries_as<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, WireError> {
        let body = decompress_bounded(self.body)?;
        let entries: Vec<T> =
            serde_json::from_slice(&body).map_err(|e| WireError::BadEntries(e.to_string()))?;
        if entries.len() != self.header.count as usize {
            return Err(WireError::CountMismatch {
                header: self.header.count,
                body: entries.len(),
            });
        }
        Ok(entries)
    }
}

fn decompress_bounded(body: &[u8]) -> Result<Vec<u8>, WireError> {
    use std::io::Read;
    let decoder =
        zstd::stream::read::Decoder::new(body).map_err(|e| WireError::Decompress(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| WireError::Decompress(e.to_string()))?;
    if out.len() > MAX_BODY_BYTES {
        return Err(WireError::Decompress(format!(
            "more than {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(i: i64) -> Reading {
        Reading {
            patient: Id::parse("p1").unwrap(),
            device: Some(Id::parse("w1").unwrap()),
            metric: if i % 2 == 0 {
                Metric::HeartRate
            } else {
                Metric::BloodPressure
            },
            value: if i % 2 == 0 {
                Value::Scalar(70.5)
            } else {
                Value::Pair(120.0, 80.0)
            },
            taken: Timestamp {
                utc_ms: 1_750_000_000_000 + i,
                offset_min: 60,
            },
            received_ms: 1_750_000_001_000 + i,
            status: Status::Final,
            identifier: None,
        }
    }

    fn batch(key: &GatewayKey, n: u32) -> Vec<u8> {
        let entries: Vec<String> = (0..i64::from(n))
            .map(|i| Entry::from_reading(&reading(i)).to_json())
            .collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let header = BatchHeader {
            gateway: "gw-1".into(),
            lane: Lane::Readings,
            first_seq: 10,
            count: n,
            sent_ms: 1,
            state: None,
        };
        seal(&header, &refs, key)
    }

    #[test]
    fn round_trip_and_verify() {
        let key = GatewayKey::generate().unwrap();
        let bytes = batch(&key, 100);
        let env = Envelope::parse(&bytes).unwrap();
        assert_eq!(env.header.last_seq(), 109);
        env.verify(&parse_public_key(&key.public_hex()).unwrap())
            .unwrap();
        let entries = env.entries().unwrap();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.to_reading().unwrap(), reading(i as i64));
        }
        let same = GatewayKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(same.public_hex(), key.public_hex());
    }

    #[test]
    fn refuses_forgeries_and_garbage() {
        let key = GatewayKey::generate().unwrap();
        let other = GatewayKey::generate().unwrap();
        let bytes = batch(&key, 10);
        let pk = parse_public_key(&key.public_hex()).unwrap();
        // Another key's signature.
        let env = Envelope::parse(&bytes).unwrap();
        assert_eq!(
            env.verify(&parse_public_key(&other.public_hex()).unwrap()),
            Err(WireError::BadSignature)
        );
        // Any flipped bit in the signed part.
        for pos in [5, 20, bytes.len() / 2, bytes.len() - 70] {
            let mut forged = bytes.clone();
            forged[pos] ^= 0x01;
            let verdict = Envelope::parse(&forged).and_then(|e| e.verify(&pk));
            assert!(verdict.is_err(), "flip at {pos} accepted");
        }
        // Truncation anywhere.
        for cut in [0, 3, 7, 30, bytes.len() - 1] {
            assert!(Envelope::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            Envelope::parse(b"GARBAGE!").unwrap_err(),
            WireError::BadMagic
        );
        let huge = vec![0u8; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::parse(&huge),
            Err(WireError::TooLarge(_))
        ));
        // A zip bomb: signed and valid, but decompressing beyond the limit.
        let bomb_body = zstd::bulk::compress(&vec![b' '; MAX_BODY_BYTES + 10], 19).unwrap();
        let header = serde_json::to_vec(&BatchHeader {
            gateway: "gw-1".into(),
            lane: Lane::Readings,
            first_seq: 1,
            count: 1,
            sent_ms: 0,
            state: None,
        })
        .unwrap();
        let mut bomb = MAGIC.to_vec();
        bomb.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bomb.extend_from_slice(&header);
        bomb.extend_from_slice(&(bomb_body.len() as u32).to_le_bytes());
        bomb.extend_from_slice(&bomb_body);
        let sig = key.0.sign(&bomb);
        bomb.extend_from_slice(&sig.to_bytes());
        let env = Envelope::parse(&bomb).unwrap();
        env.verify(&pk).unwrap();
        assert!(matches!(env.entries(), Err(WireError::Decompress(_))));
    }

    #[test]
    fn entries_are_checked() {
        let bad = Entry {
            p: "p 1".into(),
            d: None,
            m: "heart-rate".into(),
            v: vec![1.0],
            t: 0,
            o: 0,
            r: 0,
            a: false,
        };
        assert!(bad.to_reading().unwrap_err().contains("patient"));
        let bad = Entry {
            p: "p1".into(),
            d: None,
            m: "blood-pressure".into(),
            v: vec![1.0],
            t: 0,
            o: 0,
            r: 0,
            a: false,
        };
        assert!(bad.to_reading().unwrap_err().contains("1 values"));
        let bad = Entry {
            p: "p1".into(),
            d: None,
            m: "mood".into(),
            v: vec![1.0],
            t: 0,
            o: 0,
            r: 0,
            a: false,
        };
        assert!(bad.to_reading().unwrap_err().contains("unknown metric"));
    }
}
