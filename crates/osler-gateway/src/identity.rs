//! The gateway's identity: an id and an Ed25519 key, created on first start and kept in the
//! data directory (`gateway.id`, `gateway.key`, the key readable by its owner only). The hub
//! enrols the public key (`osler gateway identity` prints it; `osler hub enrol` takes it).

use std::path::Path;

use osler_wire::GatewayKey;

pub const ID_FILE: &str = "gateway.id";
pub const KEY_FILE: &str = "gateway.key";

pub struct Identity {
    pub id: String,
    pub key: GatewayKey,
}

impl Identity {
    /// Loads the identity in `dir`, creating it if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Identity, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let id_path = dir.join(ID_FILE);
        let key_path = dir.join(KEY_FILE);
        if !key_path.exists() {
            let key = GatewayKey::generate().map_err(|e| e.to_string())?;
            write_private(&key_path, &key.to_hex())?;
        }
        if !id_path.exists() {
            let key = GatewayKey::generate().map_err(|e| e.to_string())?;
            // A random suffix from fresh key material: unique without a registry.
            let id = format!("gw-{}", &key.public_hex()[..12]);
            std::fs::write(&id_path, format!("{id}\n"))
                .map_err(|e| format!("cannot write {}: {e}", id_path.display()))?;
        }
        let id = std::fs::read_to_string(&id_path)
            .map_err(|e| format!("cannot read {}: {e}", id_path.display()))?
            .trim()
            .to_owned();
        if osler_core::Id::parse(&id).is_none() {
            return Err(format!(
                "{} holds {id:?}, not a valid id (1-64 letters, digits, '-', '.')",
                id_path.display()
            ));
        }
        let hex = std::fs::read_to_string(&key_path)
            .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
        let key = GatewayKey::from_hex(&hex).map_err(|e| format!("{}: {e}", key_path.display()))?;
        Ok(Identity { id, key })
    }

    /// Sets the gateway's id (before first use, or to rename it; the hub enrols by id).
    pub fn set_id(dir: &Path, id: &str) -> Result<(), String> {
        if osler_core::Id::parse(id).is_none() {
            return Err(format!(
                "{id:?} is not a valid id (1-64 letters, digits, '-', '.')"
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::write(dir.join(ID_FILE), format!("{id}\n")).map_err(|e| e.to_string())
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
