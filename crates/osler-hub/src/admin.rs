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
        who: format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "operator".into())
        ),
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
            "no data scope: ask for at least one, e.g. system/Observation.rs or patient/*.rs"
                .into(),
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
        return Err(AdminError::Refused(format!(
            "--patient {p:?} is not a valid id"
        )));
    }
    if lifetime_ms <= 0 || lifetime_ms > MAX_TOKEN_MS {
        return Err(AdminError::Refused(
            "--expires must be between 1s and 366d".into(),
        ));
    }
    let key = key(dir)?;
    let secret = osler_auth::token::secret(osler_auth::token::ACCESS_PREFIX, &random32()?);
    let hash = osler_auth::token::hash(&secret);
    let issued = TokenRecord::issued(
        &hash,
        "access",
        "",
        Role::Integration.as_str(),
        now_ms(),
        lifetime_ms,
    );
    let id = issued.id.clone();
    let record = TokenRecord {
        subject: format!("token:{id}"),
        scopes: parsed.to_string(),
        patient: patient.map(str::to_owned),
        ..issued
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
    let audit = cli_record(
        "token-revoke",
        Action::Delete,
        format!("token {label}"),
        None,
    );
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
    let audit = cli_record(
        "gateway-enrol",
        Action::Create,
        format!("gateway {id}"),
        None,
    );
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
    let audit = cli_record(
        "gateway-revoke",
        Action::Delete,
        format!("gateway {id}"),
        None,
    );
    Ok(osler_store::admin::revoke(
        dir,
        &key,
        id,
        now_ms(),
        &[audit],
    )?)
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
        osler_audit::verify::head_line(
            &osler_audit::note::verifier_key(&key.verifying_key()),
            &head
        )
    )
    .map_err(io)?;
    for (seq, entry, sig) in &rows {
        writeln!(out, "{}", osler_audit::verify::entry_line(*seq, sig, entry)).map_err(io)?;
    }
    Ok(rows.len() as u64)
}

/// How long an enrolment code works: a week, to reach the person and be used once.
pub const ENROLMENT_MS: i64 = 7 * 86_400_000;

/// Adds a person's account and returns their one-time enrolment code (shown once: only its
/// hash is kept). Clinicians name the Practitioner they are, patients the Patient.
pub fn add_user(
    dir: &Path,
    name: &str,
    role: &str,
    practitioner: Option<&str>,
    patient: Option<&str>,
) -> Result<String, AdminError> {
    let refuse = |m: String| Err(AdminError::Refused(m));
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return refuse(format!(
            "--name {name:?}: 1-64 letters, digits, '.', '_', '-' or '@'"
        ));
    }
    match (role, practitioner, patient) {
        ("admin", None, None) | ("clinician", Some(_), None) | ("patient", None, Some(_)) => {}
        ("clinician", None, _) => {
            return refuse(
                "a clinician is a Practitioner of the registry: --practitioner ID".into(),
            );
        }
        ("patient", _, None) => {
            return refuse(
                "a patient account is for a Patient of the registry: --patient ID".into(),
            );
        }
        ("admin" | "clinician" | "patient", _, _) => {
            return refuse(format!(
                "--role {role} takes {}",
                match role {
                    "admin" => "neither --practitioner nor --patient",
                    "clinician" => "--practitioner only",
                    _ => "--patient only",
                }
            ));
        }
        _ => return refuse(format!("--role {role:?}: admin, clinician or patient")),
    }
    for id in practitioner.iter().chain(patient.iter()) {
        if osler_core::Id::parse(id).is_none() {
            return refuse(format!("{id:?} is not a valid id"));
        }
    }
    let key = key(dir)?;
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| AdminError::Refused(format!("no randomness: {e}")))?;
    let code = crate::auth_api::code_text(&raw);
    let account = osler_store::Account {
        name: name.to_owned(),
        role: role.to_owned(),
        practitioner: practitioner.map(str::to_owned),
        patient: patient.map(str::to_owned),
        password: None,
        totp_secret: None,
        totp_last_step: None,
        enrolled_ms: None,
    };
    let audit = cli_record(
        "account-add",
        Action::Create,
        format!("account {name} ({role})"),
        patient.map(str::to_owned),
    );
    let now = now_ms();
    let added = osler_store::admin::add_account(
        dir,
        &key,
        &account,
        &crate::auth_api::code_hash(&code),
        now + ENROLMENT_MS,
        now,
        &[audit],
    )?;
    if !added {
        return refuse(format!("an account named {name:?} exists already"));
    }
    Ok(code)
}

/// A one-time link that signs `name` in to the dashboard without a password or second
/// factor (`/ui/link?code=…`), for `osler demo` only: whoever holds the hub's data directory
/// can do anything anyway, and the demo's clinician is demo data. Spent on first use; lasts
/// `lifetime_ms`. Returns the code.
pub fn create_sign_in_link(dir: &Path, name: &str, lifetime_ms: i64) -> Result<String, AdminError> {
    let account = osler_store::admin::accounts(dir)?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AdminError::Refused(format!("no account named {name:?}")))?;
    let key = key(dir)?;
    let secret = osler_auth::token::secret("osl_link_", &random32()?);
    let hash = osler_auth::token::hash(&secret);
    let record = TokenRecord::issued(&hash, "link", name, &account.role, now_ms(), lifetime_ms);
    let audit = cli_record(
        "sign-in-link-issue",
        Action::Create,
        format!("one-time sign-in link for {name}"),
        None,
    );
    osler_store::admin::create_token(dir, &key, &hash, &record, &[audit])?;
    Ok(secret)
}

/// Registers a backend client (SMART backend services) by its public keys (a JWKS with EC
/// P-384 or RSA keys) and the `system/` scopes it may ask for.
pub fn add_client(dir: &Path, id: &str, jwks: &str, scopes: &str) -> Result<(), AdminError> {
    let parsed = Scopes::parse(scopes)?;
    if parsed.has_context(Context::Patient)
        || parsed.has_context(Context::User)
        || !parsed.grants_data()
    {
        return Err(AdminError::Refused(
            "a backend client is given system/ scopes (e.g. system/Observation.rs)".into(),
        ));
    }
    let v: serde_json::Value = serde_json::from_str(jwks)
        .map_err(|e| AdminError::Refused(format!("the JWKS is not JSON: {e}")))?;
    let keys = v["keys"].as_array().map_or(0, Vec::len);
    if keys == 0 {
        return Err(AdminError::Refused(
            "the JWKS holds no keys ({\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-384\", ...}]})"
                .into(),
        ));
    }
    if id.is_empty() || id.len() > 128 {
        return Err(AdminError::Refused("--id: 1-128 characters".into()));
    }
    let key = key(dir)?;
    let client = osler_store::Client {
        id: id.to_owned(),
        jwks: v.to_string(),
        scopes: parsed.to_string(),
        revoked_ms: None,
    };
    let audit = cli_record(
        "client-add",
        Action::Create,
        format!("client {id} scope {}", client.scopes),
        None,
    );
    Ok(osler_store::admin::add_client(
        dir,
        &key,
        &client,
        now_ms(),
        &[audit],
    )?)
}
