//! Errors as FHIR `OperationOutcome`.

use serde_json::{Value, json};

/// What went wrong, in the terms an HTTP layer needs to pick a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not JSON, or not the shape of a FHIR resource at all (HTTP 400).
    Malformed,
    /// A resource that parses but is not a valid reading (HTTP 422).
    Invalid,
    /// A valid request that Osler does not support (HTTP 422 for content, 400 for search).
    NotSupported,
    /// A search or query parameter is wrong (HTTP 400).
    BadParameter,
    /// A different reading is already stored under the same identity (HTTP 409).
    Conflict,
    /// A conditional create matched more than one resource (HTTP 412).
    MultipleMatches,
    /// `If-Match` named a version that is not the current one: the client's copy is stale
    /// (HTTP 412).
    Precondition,
    /// The resource does not exist (HTTP 404).
    NotFound,
    /// The request is too large (HTTP 413).
    TooLarge,
    /// The body is in a format Osler does not read, such as XML (HTTP 415).
    UnsupportedMediaType,
    /// The client takes no format Osler serves (only XML, say) (HTTP 406).
    NotAcceptable,
    /// The server failed (HTTP 500); the message is safe to show.
    Internal,
    /// No valid credentials: a missing, expired or revoked token (401).
    Unauthorized,
    /// The credentials do not allow this (403).
    Forbidden,
    /// The server's disk is full: nothing was stored, retry later (HTTP 507).
    InsufficientStorage,
}

impl ErrorKind {
    /// The HTTP status for this kind of error.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Malformed | ErrorKind::BadParameter => 400,
            ErrorKind::Invalid | ErrorKind::NotSupported => 422,
            ErrorKind::Conflict => 409,
            ErrorKind::MultipleMatches | ErrorKind::Precondition => 412,
            ErrorKind::NotFound => 404,
            ErrorKind::TooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::NotAcceptable => 406,
            ErrorKind::Internal => 500,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::InsufficientStorage => 507,
        }
    }

    /// The FHIR `IssueType` code.
    fn issue_code(self) -> &'static str {
        match self {
            ErrorKind::Malformed => "structure",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotSupported => "not-supported",
            ErrorKind::BadParameter => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::MultipleMatches => "multiple-matches",
            ErrorKind::Precondition => "conflict",
            ErrorKind::NotFound => "not-found",
            ErrorKind::TooLarge => "too-costly",
            ErrorKind::UnsupportedMediaType | ErrorKind::NotAcceptable => "not-supported",
            ErrorKind::Internal => "exception",
            ErrorKind::Unauthorized | ErrorKind::Forbidden => "security",
            ErrorKind::InsufficientStorage => "transient",
        }
    }
}

/// A FHIR-level error: what kind, where (a FHIRPath-like expression) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", .expression.as_ref().map(|e| format!("{e}: ")).unwrap_or_default())]
pub struct FhirError {
    pub kind: ErrorKind,
    pub expression: Option<String>,
    pub message: String,
}

impl FhirError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> FhirError {
        FhirError {
            kind,
            expression: None,
            message: message.into(),
        }
    }

    pub fn at(
        kind: ErrorKind,
        expression: impl Into<String>,
        message: impl Into<String>,
    ) -> FhirError {
        FhirError {
            kind,
            expression: Some(expression.into()),
            message: message.into(),
        }
    }

    /// The same error, located inside a containing element (`Bundle.entry[3]`).
    pub fn within(mut self, prefix: &str) -> FhirError {
        self.expression = Some(match self.expression {
            Some(e) => format!("{prefix}.{e}"),
            None => prefix.to_owned(),
        });
        self
    }

    /// This error as an `OperationOutcome` resource.
    pub fn to_outcome(&self) -> Value {
        outcome(
            "error",
            self.kind.issue_code(),
            &self.message,
            self.expression.as_deref(),
        )
    }
}

/// An `OperationOutcome` with one issue.
pub fn outcome(severity: &str, code: &str, diagnostics: &str, expression: Option<&str>) -> Value {
    let mut issue = json!({
        "severity": severity,
        "code": code,
        "diagnostics": diagnostics,
    });
    if let Some(e) = expression {
        issue["expression"] = json!([e]);
    }
    json!({
        "resourceType": "OperationOutcome",
        "issue": [issue],
    })
}
