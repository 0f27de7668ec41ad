//! Time as Osler keeps it: an instant in UTC milliseconds plus the UTC offset the sender wrote.
//!
//! Readings are judged by the time they were taken, compared across devices and time zones, so the
//! instant is kept in UTC; the sender's offset is kept beside it so that a reading can be shown
//! back in the wall-clock time of the patient who took it.
//!
//! The calendar arithmetic is the proleptic Gregorian "days from civil" algorithm described by
//! Howard Hinnant (<https://howardhinnant.github.io/date_algorithms.html>), written here from
//! its description. Times are kept to the millisecond; finer fractions are truncated.

use std::fmt;

/// Milliseconds in one day.
pub const DAY_MS: i64 = 86_400_000;

/// An instant (UTC milliseconds since 1970-01-01T00:00:00Z) and the offset it was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, UTC.
    pub utc_ms: i64,
    /// The sender's offset from UTC in minutes (east positive), for display only.
    pub offset_min: i16,
}

/// Why a piece of text is not a time Osler accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a valid date-time: {reason}")]
pub struct TimeError {
    pub text: String,
    pub reason: &'static str,
}

fn err(text: &str, reason: &'static str) -> TimeError {
    TimeError {
        text: text.chars().take(64).collect(),
        reason,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date (year, month, day) of a count of days since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// A small cursor over ASCII text for the fixed-width fields of ISO 8601.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let slice = self.bytes.get(self.pos..self.pos + n)?;
        let mut v = 0u32;
        for &b in slice {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(b - b'0');
        }
        self.pos += n;
        Some(v)
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.bytes.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }
    fn done(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// How much of a date-time the text gave: FHIR search dates may stop at any of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Year,
    Month,
    Day,
    Minute,
    Second,
    Millisecond,
}

/// A span of time `[start_ms, end_ms)` given by a date-time written to some precision:
/// `2024` is the whole year, `2024-03-01T10:00Z` the whole minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start_ms: i64,
    pub end_ms: i64,
    pub precision: Precision,
}

/// Parses an ISO 8601 date or date-time of any FHIR precision (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`,
/// `YYYY-MM-DDThh:mm[:ss[.fff]](Z|±hh:mm)`) into the span it denotes. A time without a zone is
/// read as UTC, which is what Osler documents for search.
pub fn parse_span(text: &str) -> Result<Span, TimeError> {
    let mut c = Cursor {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let year = c
        .digits(4)
        .ok_or_else(|| err(text, "expected a four-digit year"))? as i64;
    if c.done() {
        let start = days_from_civil(year, 1, 1) * DAY_MS;
        let end = days_from_civil(year + 1, 1, 1) * DAY_MS;
        return Ok(span(start, end, Precision::Year));
    }
    if !c.eat(b'-') {
        return Err(err(text, "expected '-' after the year"));
    }
    let month = c
        .digits(2)
        .filter(|m| (1..=12).contains(m))
        .ok_or_else(|| err(text, "expected a month 01-12"))?;
    if c.done() {
        let start = days_from_civil(year, month, 1) * DAY_MS;
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return Ok(span(
            start,
            days_from_civil(ny, nm, 1) * DAY_MS,
            Precision::Month,
        ));
    }
    if !c.eat(b'-') {
        return Err(err(text, "expected '-' after the month"));
    }
    let day = c
        .digits(2)
        .filter(|d| (1..=days_in_month(year, month)).contains(d))
        .ok_or_else(|| err(text, "expected a day that exists in that month"))?;
    let day_start = days_from_civil(year, month, day) * DAY_MS;
    if c.done() {
        return Ok(span(day_start, day_start + DAY_MS, Precision::Day));
    }
    if !c.eat(b'T') {
        return Err(err(text, "expected 'T' before the time"));
    }
    let (local_ms, precision) = parse_clock(&mut c, text)?;
    let offset_min = parse_offset(&mut c, text, true)?.unwrap_or(0);
    if !c.done() {
        return Err(err(text, "unexpected text after the time zone"));
    }
    let start = day_start + local_ms - i64::from(offset_min) * 60_000;
    let width = match precision {
        Precision::Minute => 60_000,
        Precision::Second => 1_000,
        _ => 1,
    };
    Ok(span(start, start + width, precision))
}

fn span(start_ms: i64, end_ms: i64, precision: Precision) -> Span {
    Span {
        start_ms,
        end_ms,
        precision,
    }
}

/// `hh:mm[:ss[.f+]]` as milliseconds since midnight and the precision written.
fn parse_clock(c: &mut Cursor<'_>, text: &str) -> Result<(i64, Precision), TimeError> {
    let hour = c
        .digits(2)
        .filter(|h| *h < 24)
        .ok_or_else(|| err(text, "expected an hour 00-23"))?;
    if !c.eat(b':') {
        return Err(err(text, "expected ':' after the hour"));
    }
    let minute = c
        .digits(2)
        .filter(|m| *m < 60)
        .ok_or_else(|| err(text, "expected minutes 00-59"))?;
    let mut ms = (i64::from(hour) * 60 + i64::from(minute)) * 60_000;
    if !c.eat(b':') {
        return Ok((ms, Precision::Minute));
    }
    // Leap seconds (60) are not representable in Unix time; FHIR servers commonly reject them.
    let second = c
        .digits(2)
        .filter(|s| *s < 60)
        .ok_or_else(|| err(text, "expected seconds 00-59"))?;
    ms += i64::from(second) * 1000;
    if !c.eat(b'.') {
        return Ok((ms, Precision::Second));
    }
    let mut frac_ms = 0i64;
    let mut n = 0;
    while let Some(b) = c.peek().filter(u8::is_ascii_digit) {
        if n < 3 {
            frac_ms = frac_ms * 10 + i64::from(b - b'0');
        }
        n += 1;
        c.pos += 1;
    }
    if n == 0 {
        return Err(err(text, "expected digits after the decimal point"));
    }
    for _ in n..3 {
        frac_ms *= 10;
    }
    Ok((ms + frac_ms, Precision::Millisecond))
}

/// `Z` or `±hh:mm`. Returns `None` when no zone is written and `optional` allows that.
fn parse_offset(c: &mut Cursor<'_>, text: &str, optional: bool) -> Result<Option<i16>, TimeError> {
    match c.peek() {
        Some(b'Z') => {
            c.pos += 1;
            Ok(Some(0))
        }
        Some(sign @ (b'+' | b'-')) => {
            c.pos += 1;
            let h = c
                .digits(2)
                .filter(|h| *h <= 14)
                .ok_or_else(|| err(text, "expected a zone hour 00-14"))?;
            if !c.eat(b':') {
                return Err(err(text, "expected ':' in the time zone"));
            }
            let m = c
                .digits(2)
                .filter(|m| *m < 60)
                .ok_or_else(|| err(text, "expected zone minutes 00-59"))?;
            let total = (h * 60 + m) as i16;
            Ok(Some(if sign == b'-' { -total } else { total }))
        }
        None if optional => Ok(None),
        _ => Err(err(text, "expected a time zone ('Z' or '+hh:mm')")),
    }
}

impl Timestamp {
    /// Parses a complete date-time with seconds and a zone (RFC 3339, FHIR `instant` shape),
    /// which is what a reading's time must be: a date alone does not say when it was taken.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let mut c = Cursor {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let year = c
            .digits(4)
            .ok_or_else(|| err(text, "expected a four-digit year"))? as i64;
        let ok = c.eat(b'-');
        let month = c.digits(2).filter(|m| ok && (1..=12).contains(m));
        let month = month.ok_or_else(|| err(text, "expected '-MM' with a month 01-12"))?;
        let ok = c.eat(b'-');
        let day = c
            .digits(2)
            .filter(|d| ok && (1..=days_in_month(year, month)).contains(d))
            .ok_or_else(|| err(text, "expected '-DD' with a day that exists in that month"))?;
        if !(c.eat(b'T') || c.eat(b't')) {
            return Err(err(
                text,
                "a reading's time needs a time of day and a zone, e.g. 2024-05-01T08:30:00Z",
            ));
        }
        let (local_ms, precision) = parse_clock(&mut c, text)?;
        if precision == Precision::Minute {
            return Err(err(text, "seconds are required (hh:mm:ss)"));
        }
        let offset_min = parse_offset(&mut c, text, false)?
            .ok_or_else(|| err(text, "a time zone is required"))?;
        if !c.done() {
            return Err(err(text, "unexpected text after the time zone"));
        }
        let utc_ms =
            days_from_civil(year, month, day) * DAY_MS + local_ms - i64::from(offset_min) * 60_000;
        Ok(Timestamp { utc_ms, offset_min })
    }

    /// The instant in UTC, written with `Z`.
    pub fn utc(utc_ms: i64) -> Self {
        Timestamp {
            utc_ms,
            offset_min: 0,
        }
    }
}

/// RFC 3339 in the sender's own offset; milliseconds only when there are some.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = self.utc_ms + i64::from(self.offset_min) * 60_000;
        let days = local.div_euclid(DAY_MS);
        let in_day = local.rem_euclid(DAY_MS);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s, ms) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1000 % 60,
            in_day % 1000,
        );
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")?;
        if ms != 0 {
            write!(f, ".{ms:03}")?;
        }
        if self.offset_min == 0 {
            f.write_str("Z")
        } else {
            let sign = if self.offset_min < 0 { '-' } else { '+' };
            let abs = self.offset_min.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", abs / 60, abs % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_over_four_centuries() {
        // Every day from 1800 to 2200 maps back to itself and days advance by one.
        let start = days_from_civil(1800, 1, 1);
        let end = days_from_civil(2200, 1, 1);
        let mut prev = None;
        for z in start..end {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            assert!(d >= 1 && d <= days_in_month(y, m));
            if let Some((py, pm, pd)) = prev {
                let next_day = (py, pm, pd + 1);
                let next_month = if pm == 12 {
                    (py + 1, 1, 1)
                } else {
                    (py, pm + 1, 1)
                };
                assert!((y, m, d) == next_day || (y, m, d) == next_month);
            }
            prev = Some((y, m, d));
        }
    }

    #[test]
    fn known_instants() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2024-02-29T12:00:00Z is 1709208000 s (leap day).
        let t = Timestamp::parse("2024-02-29T12:00:00Z").unwrap();
        assert_eq!(t.utc_ms, 1_709_208_000_000);
        let t = Timestamp::parse("2024-02-29T13:30:00.5+01:30").unwrap();
        assert_eq!(t.utc_ms, 1_709_208_000_500);
        assert_eq!(t.offset_min, 90);
        assert_eq!(t.to_string(), "2024-02-29T13:30:00.500+01:30");
        let t = Timestamp::parse("1999-12-31T19:00:00-05:00").unwrap();
        assert_eq!(t.to_string(), "1999-12-31T19:00:00-05:00");
        assert_eq!(Timestamp::utc(t.utc_ms).to_string(), "2000-01-01T00:00:00Z");
    }

    #[test]
    fn rejects_what_is_not_an_instant() {
        for bad in [
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01",
            "2024-01-01T10:00Z",
            "2024-01-01T10:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T10:00:60Z",
            "2024-01-01T10:00:00+15:00",
            "2024-01-01T10:00:00.Z",
            "2024-01-01T10:00:00Zjunk",
            "24-01-01T10:00:00Z",
            "",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn spans_follow_precision() {
        let y = parse_span("2024").unwrap();
        assert_eq!(y.end_ms - y.start_ms, 366 * DAY_MS);
        let m = parse_span("2023-02").unwrap();
        assert_eq!(m.end_ms - m.start_ms, 28 * DAY_MS);
        let d = parse_span("2024-03-01").unwrap();
        assert_eq!(d.start_ms, days_from_civil(2024, 3, 1) * DAY_MS);
        let mi = parse_span("2024-03-01T10:00+02:00").unwrap();
        assert_eq!(mi.start_ms, d.start_ms + 8 * 3_600_000);
        assert_eq!(mi.end_ms - mi.start_ms, 60_000);
        let s = parse_span("2024-03-01T10:00:05").unwrap();
        assert_eq!(s.start_ms, d.start_ms + 10 * 3_600_000 + 5_000);
        assert!(parse_span("2024-3").is_err());
        assert!(parse_span("2024-03-01 10:00").is_err());
        assert!(parse_span("' OR 1=1 --").is_err());
    }
}
