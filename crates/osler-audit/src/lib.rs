//! The audit log's integrity, with no IO: an append-only Merkle tree with RFC 9162 hashing
//! ([`merkle`]), checkpoints signed in the C2SP signed-note format ([`note`]), and the
//! verification of an exported log by anyone holding only the public key ([`verify`]).
//!
//! Every entry is followed by a checkpoint of the tree that ends with it, so a verifier names
//! the first entry that does not match exactly, not just a range; a checkpoint is one Ed25519
//! signature (64 bytes) and a root hash.
//!
//! What an entry says (who, what, when, from where, the outcome) is [`Record`]; the FHIR
//! AuditEvent it is written as is the FHIR crate's.

pub mod merkle;
pub mod note;
mod record;
pub mod verify;

pub use record::{Action, Outcome, Record};
