//! Who is who: the vocabulary of the hub's registry of patients, clinicians, organisations,
//! care teams and devices, shared by the FHIR crate (which reads and writes their JSON), the
//! store (which keeps them, versioned) and the gateway (which attributes a device's readings to
//! a patient). No IO, no JSON, no clock.
//!
//! Main types: [`Kind`] (the resource types the registry manages, their search parameters and
//! what a delete means for each), [`Term`] (one searchable value of a resource, extracted when
//! it is written), [`ResourceQuery`] (a search, already parsed), [`ResourceWrite`] and
//! [`StoredResource`] (what the store takes and gives back), [`Assignment`] and
//! [`attribute`] (which patient a device's reading belongs to).

mod assignment;
mod query;

pub use assignment::{Assignment, Assignments, attribute, overlapping};
pub use query::{Match, ParamCond, ResourceQuery, Sort, SortKey, fold};

/// The resource types the registry manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Patient,
    Practitioner,
    Organization,
    CareTeam,
    Device,
    DeviceUseStatement,
}

/// The type of a search parameter, as FHIR defines them (only those the registry uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// Case- and accent-insensitive, matching the start of a word by default.
    String,
    /// `system|code`, `code` or `system|`.
    Token,
    /// `Type/id` (or a bare id where the target type is unambiguous).
    Reference,
    /// A date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) with the prefixes eq, ge, gt, le, lt.
    Date,
}

/// A search parameter of a kind: its name, type and, for references, the kinds it may point to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamDef {
    pub name: &'static str,
    pub ty: ParamType,
    pub targets: &'static [Kind],
    pub doc: &'static str,
}

const fn p(name: &'static str, ty: ParamType, doc: &'static str) -> ParamDef {
    ParamDef {
        name,
        ty,
        targets: &[],
        doc,
    }
}

const fn r(name: &'static str, targets: &'static [Kind], doc: &'static str) -> ParamDef {
    ParamDef {
        name,
        ty: ParamType::Reference,
        targets,
        doc,
    }
}

use ParamType::{Date, String as Str, Token};

const PATIENT: &[ParamDef] = &[
    p(
        "identifier",
        Token,
        "An identifier (system|value, or value)",
    ),
    p(
        "name",
        Str,
        "Any part of a name: family, given, prefix, suffix or text",
    ),
    p("family", Str, "The family name"),
    p("given", Str, "A given name"),
    p("birthdate", Date, "Date of birth"),
    p("gender", Token, "male, female, other or unknown"),
    p("active", Token, "true or false"),
    r(
        "general-practitioner",
        &[Kind::Practitioner, Kind::Organization],
        "Practitioner/id or Organization/id",
    ),
    r(
        "organization",
        &[Kind::Organization],
        "The managing organisation",
    ),
];
const PRACTITIONER: &[ParamDef] = &[
    p(
        "identifier",
        Token,
        "An identifier (system|value, or value)",
    ),
    p("name", Str, "Any part of a name"),
    p("family", Str, "The family name"),
    p("given", Str, "A given name"),
    p("active", Token, "true or false"),
];
const ORGANIZATION: &[ParamDef] = &[
    p(
        "identifier",
        Token,
        "An identifier (system|value, or value)",
    ),
    p("name", Str, "The name or an alias"),
    p("active", Token, "true or false"),
];
const CARE_TEAM: &[ParamDef] = &[
    r(
        "patient",
        &[Kind::Patient],
        "The patient looked after (subject)",
    ),
    r("subject", &[Kind::Patient], "Same as patient"),
    r(
        "participant",
        &[
            Kind::Practitioner,
            Kind::Organization,
            Kind::Patient,
            Kind::CareTeam,
        ],
        "A member: Practitioner/id, Organization/id, ...",
    ),
    p(
        "status",
        Token,
        "proposed, active, suspended, inactive or entered-in-error",
    ),
    p("identifier", Token, "An identifier"),
];
const DEVICE: &[ParamDef] = &[
    p(
        "identifier",
        Token,
        "An identifier: serial number, EUI-64, MAC or UDI carrier",
    ),
    r(
        "patient",
        &[Kind::Patient],
        "The patient the device is currently assigned to",
    ),
    p("type", Token, "The kind of device (system|code)"),
    p(
        "status",
        Token,
        "active, inactive, entered-in-error or unknown",
    ),
    p("manufacturer", Str, "The manufacturer"),
    p("model", Str, "The model number"),
];
const DEVICE_USE: &[ParamDef] = &[
    r("subject", &[Kind::Patient], "The patient"),
    r("patient", &[Kind::Patient], "Same as subject"),
    r("device", &[Kind::Device], "The device"),
    p(
        "status",
        Token,
        "active, completed, entered-in-error, intended, stopped or on-hold",
    ),
    p("identifier", Token, "An identifier"),
];

/// What `DELETE` does to a kind: nothing clinical is ever erased by an API call; the resource
/// is kept and marked, as FHIR's own elements for each type allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteAs {
    /// `active` becomes false (Patient, Practitioner, Organization have no error status).
    Inactive,
    /// `status` becomes `entered-in-error` (CareTeam, Device, DeviceUseStatement).
    EnteredInError,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Patient,
        Kind::Practitioner,
        Kind::Organization,
        Kind::CareTeam,
        Kind::Device,
        Kind::DeviceUseStatement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Patient => "Patient",
            Kind::Practitioner => "Practitioner",
            Kind::Organization => "Organization",
            Kind::CareTeam => "CareTeam",
            Kind::Device => "Device",
            Kind::DeviceUseStatement => "DeviceUseStatement",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The search parameters beyond `_id` and `_lastUpdated` (which every kind has).
    pub fn params(self) -> &'static [ParamDef] {
        match self {
            Kind::Patient => PATIENT,
            Kind::Practitioner => PRACTITIONER,
            Kind::Organization => ORGANIZATION,
            Kind::CareTeam => CARE_TEAM,
            Kind::Device => DEVICE,
            Kind::DeviceUseStatement => DEVICE_USE,
        }
    }

    pub fn param(self, name: &str) -> Option<&'static ParamDef> {
        self.params().iter().find(|p| p.name == name)
    }

    pub fn delete_as(self) -> DeleteAs {
        match self {
            Kind::Patient | Kind::Practitioner | Kind::Organization => DeleteAs::Inactive,
            Kind::CareTeam | Kind::Device | Kind::DeviceUseStatement => DeleteAs::EnteredInError,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One searchable value of a resource, extracted from it when it is written: `param` is a
/// search parameter of its kind, `value` is normalised for matching (strings folded by
/// [`fold`], tokens as `system|code` and also as `code` under `param` + `|`, references as
/// `Type/id`, dates as written).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Term {
    pub param: String,
    pub value: String,
}

impl Term {
    pub fn new(param: impl Into<String>, value: impl Into<String>) -> Term {
        Term {
            param: param.into(),
            value: value.into(),
        }
    }
}

/// A reference from a resource to another, which must exist when the resource is written.
/// `path` names the element it came from, for the error when it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub kind: Kind,
    pub id: String,
    pub path: String,
}

/// How a write finds the resource it replaces.
#[derive(Clone, Debug, PartialEq)]
pub enum WriteMode {
    /// A new resource with this (server-assigned) id.
    Create,
    /// Create unless a resource of the kind matches the query (FHIR conditional create).
    CreateIfNoneExist(ResourceQuery),
    /// Create or replace the resource with this id (FHIR update; `updateCreate`).
    Update,
    /// Replace the one resource matching the query, or create it (FHIR conditional update).
    UpdateMatching(ResourceQuery),
}

/// One resource to store. `body` is its JSON without `id` and `meta` (the store adds neither:
/// the FHIR crate writes them from the stored version on the way out).
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceWrite {
    pub kind: Kind,
    pub id: String,
    pub mode: WriteMode,
    pub body: String,
    pub terms: Vec<Term>,
    pub refs: Vec<Ref>,
    /// Terms no other resource of the kind may share (a Patient's identifiers: two Patients
    /// with one MRN could not be told apart).
    pub unique: Vec<Term>,
    /// `If-Match`: the version the client last read; a different current version is a conflict.
    pub if_match: Option<u64>,
    /// For a DeviceUseStatement that is in force: the assignment it makes.
    pub assignment: Option<Assignment>,
    /// When the write was received (UTC ms): the new version's `lastUpdated`.
    pub now_ms: i64,
}

/// The minimal resource that stands for a patient known only from readings, until enrolled:
/// its JSON body (as the FHIR crate writes it) and search terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    pub body: String,
    pub terms: Vec<Term>,
}

/// A stored version of a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResource {
    pub kind: Kind,
    pub id: String,
    pub version: u64,
    pub updated_ms: i64,
    pub body: String,
}

/// What became of a [`ResourceWrite`].
#[derive(Clone, Debug, PartialEq)]
pub enum WriteOutcome {
    Created(StoredResource),
    Updated(StoredResource),
    /// A conditional create matched this resource; nothing was written.
    Matched(StoredResource),
    /// The body is the same as the current version's: no new version was made.
    Unchanged(StoredResource),
    /// `If-Match` named another version than the current one (or the resource does not exist).
    VersionConflict {
        current: Option<u64>,
    },
    /// A reference to something that does not exist.
    MissingReference(Ref),
    /// A unique term is already another resource's.
    Duplicate {
        term: Term,
        other: String,
    },
    /// The assignment overlaps another of the same device.
    Overlap {
        other: String,
    },
    /// A conditional write matched several resources.
    MultipleMatches(usize),
    /// The id is taken by a create that did not expect it.
    IdTaken,
}

impl WriteOutcome {
    pub fn stored(&self) -> Option<&StoredResource> {
        match self {
            WriteOutcome::Created(s)
            | WriteOutcome::Updated(s)
            | WriteOutcome::Matched(s)
            | WriteOutcome::Unchanged(s) => Some(s),
            _ => None,
        }
    }
}
