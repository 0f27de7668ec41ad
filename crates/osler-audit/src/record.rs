//! What an audit entry says: who did what to which data, when, from where, and how it ended.

/// What was done (FHIR AuditEvent.action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
    /// Anything else: a search, a login, a token issued.
    Execute,
}

impl Action {
    pub fn code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }
}

/// How it ended (FHIR AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused: the caller's mistake or lack of right (4xx).
    Refused,
    /// The hub failed (5xx).
    Failed,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Refused => "4",
            Outcome::Failed => "8",
        }
    }

    pub fn of_status(status: u16) -> Outcome {
        match status {
            0..400 => Outcome::Success,
            400..500 => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }
}

/// One audit entry, before it is written as a FHIR AuditEvent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub recorded_ms: i64,
    /// The event: a RESTful interaction (`read`, `search-type`, `create`, `update`,
    /// `transaction`...) or an Osler event (`login`, `token-issue`, `token-revoke`,
    /// `gateway-enrol`, `gateway-revoke`, `batch`).
    pub event: String,
    pub action: Action,
    pub outcome: Outcome,
    /// Why it failed, in words (never a secret).
    pub outcome_text: Option<String>,
    /// Who: an account, a client id, a gateway id, or `cli` for a command run on the hub.
    pub who: String,
    /// Their role.
    pub role: Option<String>,
    /// Where from: the client's address.
    pub network: Option<String>,
    /// The patient whose data it was, when it was one patient's.
    pub patient: Option<String>,
    /// What: a reference (`Observation/123`), a route, a token's label.
    pub what: Option<String>,
    /// The query of a search, as asked.
    pub query: Option<String>,
}
