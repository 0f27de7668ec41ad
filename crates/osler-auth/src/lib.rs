//! Who may do what: the vocabulary of access control, with no IO.
//!
//! - [`Scope`] and [`Scopes`]: SMART App Launch v2 scopes
//!   (`(patient|user|system)/(Type|*).[c][r][u][d][s]`, v1 `.read`/`.write`/`.*` accepted).
//! - [`Role`]: administrator, clinician, patient, integration; what each may do at most.
//! - [`Policy`]: what a route declares it needs, where it is defined.
//! - [`Caller`] and [`Caller::decide`]: effective access = scope ∩ role ∩ compartment.
//! - [`token`]: opaque bearer tokens (256 random bits), stored only as SHA-256 hashes.
//! - [`password`]: Argon2id hashes and the rules for choosing a password; [`totp`]: the
//!   second factor (RFC 6238).
//!
//! Sources: HL7 SMART App Launch 2.2 (scopes and their v1 aliases), RFC 6750 (bearer tokens and
//! their error codes).

pub mod jwt;
pub mod password;
mod scope;
pub mod token;
pub mod totp;

pub use scope::{Context, Interaction, Perms, Scope, ScopeError, Scopes};

/// A person's or program's role. Scopes only narrow what the role allows (SMART: "scopes
/// only delegate").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs the hub: accounts, the registry, the audit log; every patient.
    Admin,
    /// Sees and acts on the patients of their care teams.
    Clinician,
    /// Their own record only.
    Patient,
    /// A program with `system/` scopes (or `patient/` scopes bound to one patient); no login.
    Integration,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Patient => "patient",
            Role::Integration => "integration",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "clinician" => Role::Clinician,
            "patient" => Role::Patient,
            "integration" => Role::Integration,
            _ => return None,
        })
    }

    /// Whether the role may ever do `interaction` on `resource`, whatever the scopes.
    fn permits(self, resource: &str, interaction: Interaction) -> bool {
        use Interaction::*;
        let reads = matches!(interaction, Read | Search);
        match self {
            // The audit log is read-only for everyone (it is appended to by the hub alone).
            _ if resource == AUDIT_EVENT => self == Role::Admin && reads,
            Role::Admin | Role::Integration => true,
            Role::Clinician => match resource {
                // Readings (entered by hand or corrected), alerts and their actions, plans,
                // and the notes and calls of care (Communication).
                "Observation" | "Flag" | "CarePlan" | "Communication" => true,
                _ => reads,
            },
            Role::Patient => match resource {
                // A patient may record their own home readings.
                "Observation" => reads || interaction == Create,
                _ => reads && resource != OPERATIONS,
            },
        }
    }
}

/// The FHIR type of audit entries.
pub const AUDIT_EVENT: &str = "AuditEvent";
/// The type that stands for the hub's operations (metrics, held readings) in scopes: a
/// program watching the hub needs `system/OslerOperations.rs`.
pub const OPERATIONS: &str = "OslerOperations";

/// The patients a caller may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compartment {
    /// Every patient (administrators, `system/` scopes).
    All,
    /// These patients only (a patient's own record; a clinician's care teams; a token bound to
    /// a patient). Sorted, without duplicates.
    Patients(Vec<String>),
}

impl Compartment {
    pub fn patients(mut ids: Vec<String>) -> Compartment {
        ids.sort();
        ids.dedup();
        Compartment::Patients(ids)
    }

    pub fn contains(&self, patient: &str) -> bool {
        match self {
            Compartment::All => true,
            Compartment::Patients(p) => p.binary_search_by(|x| x.as_str().cmp(patient)).is_ok(),
        }
    }
}

/// What a route needs, declared where the route is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Anyone, without a token: liveness, the CapabilityStatement, SMART discovery, the token
    /// endpoint, the audit log's public checkpoints and proofs.
    Public,
    /// A signed gateway batch: the signature in the body is the credential (checked by the
    /// handler against the enrolled key); no token.
    SignedBatch,
    /// An interaction on a resource type, narrowed to the caller's compartment by the handler.
    Resource(&'static str, Interaction),
    /// An interaction on a resource type across every patient at once (every threshold, every
    /// device assignment): only callers whose compartment is everyone, or an enrolled gateway
    /// signing its request.
    Everyone(&'static str, Interaction),
    /// A Bundle: any valid token; each entry is authorised on its own.
    PerEntry,
}

impl Policy {
    /// Whether the route takes a bearer token at all.
    pub fn needs_token(self) -> bool {
        !matches!(self, Policy::Public | Policy::SignedBatch)
    }

    /// The scope that grants this route, as the access table documents it.
    pub fn scope_needed(self) -> Option<String> {
        match self {
            Policy::Resource(t, i) | Policy::Everyone(t, i) => Some(format!("{t}.{}", i.letter())),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who: an account's name, a client id, or the token's own label.
    pub subject: String,
    pub role: Role,
    pub scopes: Scopes,
    /// The patients the caller may see (role and token binding already applied).
    pub compartment: Compartment,
}

/// Why access is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token's scopes do not grant the interaction (403, `insufficient_scope`).
    #[error("the token's scopes do not grant {0}")]
    Scope(String),
    /// The role never may (403).
    #[error("the {role} role may not {what}")]
    Role { role: &'static str, what: String },
    /// A route over every patient asked by a caller who may see only some (403).
    #[error("{0} spans every patient; this caller may see only their own compartment")]
    Compartment(String),
}

impl Caller {
    /// Whether the caller may do `interaction` on `resource` at all (the compartment is
    /// applied afterwards by the query, before it runs).
    pub fn may(&self, resource: &str, interaction: Interaction) -> Result<(), Denied> {
        let what = format!("{resource}.{}", interaction.letter());
        if !self.role.permits(resource, interaction) {
            return Err(Denied::Role {
                role: self.role.as_str(),
                what,
            });
        }
        if !self.scopes.grants(resource, interaction) {
            return Err(Denied::Scope(what));
        }
        Ok(())
    }

    /// The decision for a route's policy.
    pub fn decide(&self, policy: Policy) -> Result<(), Denied> {
        match policy {
            Policy::Public | Policy::SignedBatch | Policy::PerEntry => Ok(()),
            Policy::Resource(t, i) => self.may(t, i),
            Policy::Everyone(t, i) => {
                self.may(t, i)?;
                if self.compartment != Compartment::All {
                    return Err(Denied::Compartment(format!("{t}.{}", i.letter())));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
