//! Osler's domain core: what a reading is, which metrics exist, and what makes a reading valid.
//!
//! - [`metric`]: the catalog ([`Metric`], [`MetricInfo`]) with LOINC, MDC and UCUM codes and
//!   plausible ranges; the only place in Osler where a clinical code is written.
//! - [`reading`]: the canonical [`Reading`] and [`ReadingInput::validate`], the one gate every
//!   wire format passes its readings through.
//! - [`time`]: [`Timestamp`] (UTC milliseconds plus the sender's offset) and date parsing.
//!
//! **Architecture invariant:** this crate does no IO and knows nothing of HTTP, MQTT, SQL or
//! FHIR JSON. Callers pass in the present time; nothing here reads a clock.

pub mod metric;
pub mod reading;
pub mod time;

pub use metric::{Category, Metric, MetricInfo};
pub use reading::{Id, Identifier, InputValue, Reading, ReadingError, ReadingInput, Status, Value};
pub use time::Timestamp;
