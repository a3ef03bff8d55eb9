//! RFC 3339 timestamps with nanoseconds, as logtail writes them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> i64 {
    let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(now).unwrap_or(i64::MAX)
}

/// Formats Unix nanoseconds as RFC 3339 in UTC (`2006-01-02T15:04:05.999999999Z`).
pub fn format_nanos(nanos: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| nanos.to_string())
}

/// Parses an RFC 3339 timestamp into Unix nanoseconds (saturating outside
/// the years 1677–2262 that fit).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .ok()?
        .unix_timestamp_nanos();
    Some(i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nanoseconds() {
        let n = 1_700_000_000_123_456_789;
        let s = format_nanos(n);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_rfc3339(&s), Some(n));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.5+01:00"),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
