//! A registry search, parsed: what the store runs. Building one from a URL's parameters is the
//! FHIR crate's job; running it is the store's.

use crate::Kind;

/// How one searched value matches a stored [`Term`](crate::Term) value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// The whole value (tokens, references, `:exact` strings).
    Exact(String),
    /// The value starts with this (FHIR's default string match, after [`fold`]).
    Prefix(String),
    /// The value contains this (`:contains`).
    Contains(String),
    /// `lo <= value < hi`, either side open (dates, compared as ISO 8601 text).
    Range {
        lo: Option<String>,
        hi: Option<String>,
    },
}

/// One search parameter: a resource matches when one of its terms under `param` matches any
/// of `any` (a comma in FHIR); `missing` inverts it to "has no such term" (`:missing=true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamCond {
    pub param: String,
    pub any: Vec<Match>,
}

/// What a search is ordered by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SortKey {
    Id,
    LastUpdated,
    /// The smallest term value of this parameter (family names, birth dates).
    Term(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

/// A search of one kind. Every condition must hold (FHIR: parameters are ANDed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceQuery {
    pub kind: Kind,
    /// `_id`: any of these.
    pub ids: Option<Vec<String>>,
    /// `_lastUpdated`: `lo <= updated < hi` in UTC ms.
    pub updated_from: Option<i64>,
    pub updated_to: Option<i64>,
    pub conds: Vec<ParamCond>,
    /// Ordered by these, then by id.
    pub sort: Vec<Sort>,
    pub offset: usize,
    /// Page size; 0 asks for the total only.
    pub limit: usize,
}

impl ResourceQuery {
    /// Every resource of a kind, first page.
    pub fn all(kind: Kind, limit: usize) -> ResourceQuery {
        ResourceQuery {
            kind,
            ids: None,
            updated_from: None,
            updated_to: None,
            conds: Vec::new(),
            sort: Vec::new(),
            offset: 0,
            limit,
        }
    }

    /// Adds "one of its terms under `param` is exactly `value`".
    pub fn with(mut self, param: &str, value: impl Into<String>) -> ResourceQuery {
        self.conds.push(ParamCond {
            param: param.to_owned(),
            any: vec![Match::Exact(value.into())],
        });
        self
    }
}

/// Folds text for string search as FHIR asks (case- and accent-insensitive): lower case, the
/// common Latin diacritics removed, runs of white space as one space, trimmed. "Zoë  MÜLLER"
/// becomes "zoe muller".
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        for l in c.to_lowercase() {
            match base_letter(l) {
                Some(s) => out.push_str(s),
                None => out.push(l),
            }
        }
    }
    out
}

/// The base letter(s) of a lower-case Latin letter with a diacritic (Latin-1 Supplement and
/// Latin Extended-A), so that a search for "jose" finds "José".
fn base_letter(c: char) -> Option<&'static str> {
    Some(match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è'..='ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì'..='ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' => "n",
        'ò'..='ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' => "t",
        'ù'..='ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        'þ' => "th",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_is_case_accent_and_space_insensitive() {
        assert_eq!(fold("  Zoë  MÜLLER "), "zoe muller");
        assert_eq!(fold("José Åström"), "jose astrom");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("李"), "李");
        assert_eq!(fold(""), "");
    }
}
