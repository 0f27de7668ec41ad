//! A hub's data directory before it serves: `osler hub init` makes its certificate authority,
//! its server certificate and its audit key; `osler serve` loads them. Secrets are written
//! owner-only and never overwritten: a prepared hub is refused a second init.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::HubError;

/// Where each piece lives inside the data directory.
pub const TLS_DIR: &str = "tls";
pub const CA_FILE: &str = "tls/ca.pem";
pub const CA_KEY_FILE: &str = "tls/ca-key.pem";
pub const SERVER_FILE: &str = "tls/server.pem";
pub const SERVER_KEY_FILE: &str = "tls/server-key.pem";
/// The audit log's Ed25519 signing key: 32 bytes of seed, hex.
pub const AUDIT_KEY_FILE: &str = "audit-key";

/// What `init` made, for the operator.
#[derive(Debug)]
pub struct Prepared {
    pub ca_file: PathBuf,
    pub names: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

/// Prepares `dir` (created if missing): a CA, a server certificate for `names` and
/// `addresses` (localhost, 127.0.0.1 and ::1 when both are empty) and the audit key. Refuses a
/// directory that was prepared before; a directory holding only an older hub's database is
/// prepared around it, its data untouched.
pub fn init(
    dir: &Path,
    names: &[String],
    addresses: &[IpAddr],
    now_ms: i64,
) -> Result<Prepared, HubError> {
    if dir.join(CA_FILE).exists() || dir.join(AUDIT_KEY_FILE).exists() {
        return Err(HubError::Prepared(dir.to_owned()));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| HubError::Io { path, source }
    };
    std::fs::create_dir_all(dir.join(TLS_DIR)).map_err(io(&dir.join(TLS_DIR)))?;
    // The database holds patients' data and TOTP secrets: the directory is its owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let year = osler_core::Timestamp::utc(now_ms).to_string()[..4]
        .parse()
        .unwrap_or(2026);
    let certs = osler_tls::generate("Osler hub", names, addresses, year)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| io(dir)(std::io::Error::other(format!("no randomness: {e}"))))?;
    // Secrets first, each created anew (never truncating a file that is there), the CA last:
    // its presence is what marks a prepared hub.
    write_new(&dir.join(CA_KEY_FILE), certs.ca_key_pem.as_bytes(), true)?;
    write_new(
        &dir.join(SERVER_KEY_FILE),
        certs.server_key_pem.as_bytes(),
        true,
    )?;
    write_new(&dir.join(AUDIT_KEY_FILE), hex(&seed).as_bytes(), true)?;
    write_new(
        &dir.join(SERVER_FILE),
        certs.server_chain_pem.as_bytes(),
        false,
    )?;
    write_new(&dir.join(CA_FILE), certs.ca_pem.as_bytes(), false)?;
    Ok(Prepared {
        ca_file: dir.join(CA_FILE),
        names: names.to_vec(),
        addresses: addresses.to_vec(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates `path` (failing if it exists) with `data`, owner-only when `secret`, and syncs it.
fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<(), HubError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| HubError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

fn read(dir: &Path, file: &str) -> Result<String, HubError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            HubError::NotPrepared(dir.to_owned())
        } else {
            HubError::Io { path, source }
        }
    })
}

/// The CA certificate clients must trust, PEM.
pub fn ca_pem(dir: &Path) -> Result<String, HubError> {
    read(dir, CA_FILE)
}

/// The server's TLS configuration.
pub fn server_tls(dir: &Path) -> Result<Arc<rustls::ServerConfig>, HubError> {
    let chain = read(dir, SERVER_FILE)?;
    let key = read(dir, SERVER_KEY_FILE)?;
    Ok(osler_tls::server_config(&chain, &key)?)
}

/// The audit log's signing key seed.
pub fn audit_seed(dir: &Path) -> Result<[u8; 32], HubError> {
    let text = read(dir, AUDIT_KEY_FILE)?;
    let text = text.trim();
    let bad = || HubError::Io {
        path: dir.join(AUDIT_KEY_FILE),
        source: std::io::Error::other("not 64 hex digits"),
    };
    if text.len() != 64 {
        return Err(bad());
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(seed)
}
