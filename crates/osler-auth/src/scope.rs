//! SMART App Launch v2 scopes (HL7 SMART App Launch 2.2, "Scopes for requesting clinical
//! data"): `(patient|user|system)/(Type|*).[c][r][u][d][s]`, the letters a subset of `cruds`
//! in that order; the v1 forms `.read` (= `.rs`), `.write` (= `.cud`) and `.*` (= `.cruds`)
//! are accepted. Scopes without a resource (`openid`, `fhirUser`, `launch/patient`,
//! `offline_access`) are kept and grant no data.

use std::fmt;

/// Whose data a scope is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// The patient in context (the token's patient).
    Patient,
    /// Whatever the user may see.
    User,
    /// A backend program: every patient its role allows.
    System,
}

impl Context {
    fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// A FHIR interaction as scopes name them: `r` covers read, vread and history of an instance,
/// `s` search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    pub fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 2,
            Interaction::Update => 4,
            Interaction::Delete => 8,
            Interaction::Search => 16,
        }
    }
}

/// A set of interactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perms(u8);

impl Perms {
    pub const ALL: Perms = Perms(31);

    pub fn has(self, i: Interaction) -> bool {
        self.0 & i.bit() != 0
    }
}

/// One scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A data scope.
    Data {
        context: Context,
        /// `None` for `*`.
        resource: Option<String>,
        perms: Perms,
    },
    /// A scope that names no data (`openid`, `launch/patient`, ...), kept as written.
    Other(String),
}

/// Why a scope string is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "scope {0:?}: expected patient/, user/ or system/ then Type.cruds (e.g. patient/Observation.rs)"
    )]
    Shape(String),
    #[error("scope {0:?}: the letters must be a subset of c, r, u, d, s in that order")]
    Letters(String),
    #[error("scope {0:?}: {1:?} is not a resource type")]
    Type(String, String),
    #[error(
        "scope {0:?}: search-parameter constraints (?param=value) are not supported; ask for the type without them"
    )]
    Constraint(String),
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let shape = || ScopeError::Shape(text.to_owned());
        let Some((ctx, rest)) = text.split_once('/') else {
            // `openid`, `fhirUser`, `offline_access`, `online_access`.
            return if !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                Ok(Scope::Other(text.to_owned()))
            } else {
                Err(shape())
            };
        };
        let context = match ctx {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            "launch" => return Ok(Scope::Other(text.to_owned())),
            _ => return Err(shape()),
        };
        if rest.contains('?') {
            return Err(ScopeError::Constraint(text.to_owned()));
        }
        let (ty, letters) = rest.split_once('.').ok_or_else(shape)?;
        let resource = match ty {
            "*" => None,
            t if t.starts_with(|c: char| c.is_ascii_uppercase())
                && t.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                Some(t.to_owned())
            }
            t => return Err(ScopeError::Type(text.to_owned(), t.to_owned())),
        };
        let perms = match letters {
            "read" => Perms(Interaction::Read.bit() | Interaction::Search.bit()),
            "write" => Perms(
                Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit(),
            ),
            "*" => Perms::ALL,
            l => {
                let mut bits = 0u8;
                let mut last = 0usize;
                for c in l.chars() {
                    let pos = "cruds"
                        .find(c)
                        .ok_or_else(|| ScopeError::Letters(text.to_owned()))?
                        + 1;
                    if pos <= last {
                        return Err(ScopeError::Letters(text.to_owned()));
                    }
                    last = pos;
                    bits |= 1 << (pos - 1);
                }
                if bits == 0 {
                    return Err(ScopeError::Letters(text.to_owned()));
                }
                Perms(bits)
            }
        };
        Ok(Scope::Data {
            context,
            resource,
            perms,
        })
    }

    fn grants(&self, resource: &str, i: Interaction) -> bool {
        match self {
            Scope::Data {
                resource: r, perms, ..
            } => perms.has(i) && r.as_deref().is_none_or(|r| r == resource),
            Scope::Other(_) => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Other(s) => f.write_str(s),
            Scope::Data {
                context,
                resource,
                perms,
            } => {
                write!(
                    f,
                    "{}/{}.",
                    context.as_str(),
                    resource.as_deref().unwrap_or("*")
                )?;
                for (i, c) in "cruds".chars().enumerate() {
                    if perms.0 & (1 << i) != 0 {
                        write!(f, "{c}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// A token's scopes, as granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    /// A space-separated list (OAuth 2.0 `scope`), each parsed; duplicates removed.
    pub fn parse(text: &str) -> Result<Scopes, ScopeError> {
        let mut out: Vec<Scope> = Vec::new();
        for s in text.split_ascii_whitespace() {
            let s = Scope::parse(s)?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(Scopes(out))
    }

    pub fn grants(&self, resource: &str, i: Interaction) -> bool {
        self.0.iter().any(|s| s.grants(resource, i))
    }

    /// Whether any data scope is of this context.
    pub fn has_context(&self, context: Context) -> bool {
        self.0
            .iter()
            .any(|s| matches!(s, Scope::Data { context: c, .. } if *c == context))
    }

    /// Whether any scope grants data at all.
    pub fn grants_data(&self) -> bool {
        self.0.iter().any(|s| matches!(s, Scope::Data { .. }))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}
