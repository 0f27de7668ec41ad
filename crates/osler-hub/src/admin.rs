//! What an operator does on the hub's machine with its data directory (`osler hub token`,
//! `osler hub enrol`, `osler audit`): each change is committed with its audit entry, signed
//! with the hub's audit key.

use std::path::Path;

use ed25519_dalek::SigningKey;
use osler_audit::{Action, Outcome, Record};
use osler_auth::{Context, Role, Scopes};
use osler_store::TokenRecord;

use crate::{HubError, now_ms, prepare};

/// Why an admin command cannot do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Store(#[from] osler_store::StoreError),
    #[error("--scope: {0}")]
    Scope(#[from] osler_auth::ScopeError),
    #[error("{0}")]
    Refused(String),
}

/// The longest a token made on the command line may live: a year.
pub const MAX_TOKEN_MS: i64 = 366 * 86_400_000;

fn key(dir: &Path) -> Result<SigningKey, HubError> {
    Ok(SigningKey::from_bytes(&prepare::audit_seed(dir)?))
}

fn cli_record(event: &str, action: Action, what: String, patient: Option<String>) -> String {
    osler_fhir::audit::entry_text(&Record {
        recorded_ms: now_ms(),
        event: event.into(),
        action,
        outcome: Outcome::Success,
        outcome_text: None,
        who: format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "operator".into())),
        role: Some("admin".into()),
        network: None,
        patient,
        what: Some(what),
        query: None,
    })
}

fn random32() -> Result<[u8; 32], AdminError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| AdminError::Refused(format!("no randomness: {e}")))?;
    Ok(b)
}

/// Makes a bearer token for a program (role integration): `system/` scopes for every patient,
/// or `patient/` scopes bound to `patient`. Returns the secret, which is stored only as its
/// hash and so can never be shown again.
pub fn create_token(
    dir: &Path,
    scopes: &str,
    patient: Option<&str>,
    lifetime_ms: i64,
) -> Result<String, AdminError> {
    let parsed = Scopes::parse(scopes)?;
    if !parsed.grants_data() {
        return Err(AdminError::Refused(
            "no data scope: ask for at least one, e.g. system/Observation.rs or patient/*.rs".into(),
        ));
    }
    if parsed.has_context(Context::User) {
        return Err(AdminError::Refused(
            "user/ scopes belong to a person's login; a program's token takes system/ or patient/ scopes".into(),
        ));
    }
    let patient_scoped = parsed.has_context(Context::Patient);
    match (patient_scoped, patient) {
        (true, None) => {
            return Err(AdminError::Refused(
                "patient/ scopes need the patient they are for: --patient ID".into(),
            ));
        }
        (false, Some(_)) => {
            return Err(AdminError::Refused(
                "--patient binds patient/ scopes; system/ scopes cover every patient".into(),
            ));
        }
        (true, Some(p)) if parsed.has_context(Context::System) => {
            return Err(AdminError::Refused(format!(
                "a token for Patient/{p} cannot also hold system/ scopes (they would reach every patient)"
            )));
        }
        _ => {}
    }
    if let Some(p) = patient
        && osler_core::Id::parse(p).is_none()
    {
        return Err(AdminError::Refused(format!("--patient {p:?} is not a valid id")));
    }
    if lifetime_ms <= 0 || lifetime_ms > MAX_TOKEN_MS {
        return Err(AdminError::Refused(
            "--expires must be between 1s and 366d".into(),
        ));
    }
    let key = key(dir)?;
    let secret = osler_auth::token::secret(osler_auth::token::ACCESS_PREFIX, &random32()?);
    let hash = osler_auth::token::hash(&secret);
    // The public handle: the first 12 hex digits of the hash (it identifies the token in
    // lists and the audit log without being usable as one).
    let id: String = hash[..6].iter().map(|b| format!("{b:02x}")).collect();
    let now = now_ms();
    let record = TokenRecord {
        id: id.clone(),
        subject: format!("token:{id}"),
        role: Role::Integration.as_str().into(),
        scopes: parsed.to_string(),
        patient: patient.map(str::to_owned),
        issued_ms: now,
        expires_ms: now + lifetime_ms,
        revoked_ms: None,
    };
    let audit = cli_record(
        "token-issue",
        Action::Create,
        format!("token {id} scope {}", record.scopes),
        record.patient.clone(),
    );
    osler_store::admin::create_token(dir, &key, &hash, &record, &[audit])?;
    Ok(secret)
}

/// Revokes a token given as its secret or its public id; the record of it, if there was one.
pub fn revoke_token(dir: &Path, token_or_id: &str) -> Result<Option<TokenRecord>, AdminError> {
    let key = key(dir)?;
    let (hash, id) = if token_or_id.starts_with(osler_auth::token::ACCESS_PREFIX) {
        (Some(osler_auth::token::hash(token_or_id)), None)
    } else {
        (None, Some(token_or_id))
    };
    let label = id.map_or_else(|| "given by its secret".to_owned(), str::to_owned);
    let audit = cli_record("token-revoke", Action::Delete, format!("token {label}"), None);
    Ok(osler_store::admin::revoke_token(
        dir,
        &key,
        hash.as_ref(),
        id,
        now_ms(),
        &[audit],
    )?)
}

/// Enrols a gateway's key, audited.
pub fn enrol_gateway(dir: &Path, id: &str, public_key: &str) -> Result<(), AdminError> {
    let key = key(dir)?;
    let audit = cli_record("gateway-enrol", Action::Create, format!("gateway {id}"), None);
    Ok(osler_store::admin::enrol(
        dir,
        &key,
        id,
        public_key,
        now_ms(),
        &[audit],
    )?)
}

/// Revokes a gateway's key, audited; false if it was never enrolled.
pub fn revoke_gateway(dir: &Path, id: &str) -> Result<bool, AdminError> {
    let key = key(dir)?;
    let audit = cli_record("gateway-revoke", Action::Delete, format!("gateway {id}"), None);
    Ok(osler_store::admin::revoke(dir, &key, id, now_ms(), &[audit])?)
}

/// The audit log's verifier key (C2SP note verifier key format).
pub fn audit_public_key(dir: &Path) -> Result<String, AdminError> {
    Ok(osler_audit::note::verifier_key(&key(dir)?.verifying_key()))
}

/// The audit log exported: the head line, then one line per entry (see
/// `osler_audit::verify`).
pub fn audit_export(dir: &Path, out: &mut dyn std::io::Write) -> Result<u64, AdminError> {
    let key = key(dir)?;
    let rows = osler_store::admin::audit_log(dir)?;
    let mut tree = osler_audit::merkle::Frontier::default();
    for (_, entry, _) in &rows {
        tree.push(osler_audit::merkle::leaf_hash(entry.as_bytes()));
    }
    let origin = osler_audit::note::origin(&key.verifying_key());
    let head = osler_audit::note::signed_note(
        &key,
        &osler_audit::note::checkpoint_text(&origin, rows.len() as u64, &tree.root()),
    );
    let io = |e: std::io::Error| AdminError::Refused(format!("cannot write the export: {e}"));
    writeln!(
        out,
        "{}",
        osler_audit::verify::head_line(&osler_audit::note::verifier_key(&key.verifying_key()), &head)
    )
    .map_err(io)?;
    for (seq, entry, sig) in &rows {
        writeln!(out, "{}", osler_audit::verify::entry_line(*seq, sig, entry)).map_err(io)?;
    }
    Ok(rows.len() as u64)
}
