//! FHIR R4 JSON for Osler: the only crate that reads or writes FHIR.
//!
//! - [`observation`]: reading ⇄ `Observation` ([`parse_observation`], [`observation_json`]).
//! - [`bundle`]: `transaction`/`batch` requests ([`parse_bundle`]), their responses, `searchset`.
//! - [`search`]: strict parsing of Observation search parameters ([`ObservationSearch`]).
//! - [`outcome`]: [`FhirError`] and `OperationOutcome`.
//! - [`resources`]: CapabilityStatement, Patient, Device.
//!
//! **Architecture invariant:** nothing here knows about SQL or HTTP routing; callers hand in
//! parsed JSON and readings, and take back JSON values.

pub mod audit;
pub mod bundle;
pub mod observation;
pub mod outcome;
pub mod registry;
pub mod resources;
pub mod search;
pub mod shape;

pub use bundle::{
    BundleEntry, BundleKind, EntryRequest, RequestBundle, ResourceEntry, parse_bundle,
    parse_if_none_exist,
};
pub use observation::{
    SummaryView, observation_json, parse_observation, reading_error, summary_json,
};
pub use outcome::{ErrorKind, FhirError};
pub use search::{ObservationSearch, encode_query, parse_observation_search, parse_query};
