//! Timestamps: stored as integer microseconds since the Unix epoch (UTC),
//! accepted as ISO 8601 with any offset or none (read as UTC), and returned
//! as ISO 8601 in UTC with microseconds and `Z`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};

pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// Formats microseconds as `2026-03-01T09:30:12.123456Z`.
pub fn format_micros(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(at) => at.to_rfc3339_opts(SecondsFormat::Micros, true),
        None => String::new(),
    }
}

/// Parses an ISO 8601 timestamp to microseconds. Digits past the microsecond
/// are truncated. Returns `None` for anything else.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_micros());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z"] {
        if let Ok(at) = DateTime::parse_from_str(text, format) {
            return Some(at.timestamp_micros());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Some(at.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_and_naive_times_as_utc() {
        let utc = parse_timestamp("2026-03-01T09:30:12.123456+00:00").unwrap();
        assert_eq!(format_micros(utc), "2026-03-01T09:30:12.123456Z");
        let shifted = parse_timestamp("2026-03-01T11:30:12.123456+02:00").unwrap();
        assert_eq!(shifted, utc);
        let naive = parse_timestamp("2026-03-01T09:30:00").unwrap();
        assert_eq!(format_micros(naive), "2026-03-01T09:30:00.000000Z");
        assert_eq!(parse_timestamp("2026-03-01T09:30:12.1234567Z"), Some(utc));
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2026-13-01T00:00:00"), None);
    }
}
