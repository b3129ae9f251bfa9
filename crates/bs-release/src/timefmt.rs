//! UTC timestamps as fixed-width RFC 3339 text (`2026-11-22T06:30:00.123Z`),
//! so that comparing two of them as strings compares them as times.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    from_unix_millis(ms)
}

pub fn from_unix_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Whether `text` is a time prefix `--since` accepts: `YYYY-MM-DD`, optionally
/// followed by `THH`, `:MM`, `:SS` (UTC). Compared as a string prefix bound.
pub fn valid_since(text: &str) -> bool {
    let pattern = b"dddd-dd-ddTdd:dd:dd";
    let b = text.trim_end_matches('Z').as_bytes();
    if ![10, 13, 16, 19].contains(&b.len()) {
        return false;
    }
    b.iter().zip(pattern.iter()).all(|(c, p)| match p {
        b'd' => c.is_ascii_digit(),
        other => c == other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(from_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            from_unix_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            from_unix_millis(1_795_334_400_123),
            "2026-11-22T08:00:00.123Z"
        );
    }

    #[test]
    fn since_accepts_date_prefixes_only() {
        assert!(valid_since("2026-11-22"));
        assert!(valid_since("2026-11-22T06"));
        assert!(valid_since("2026-11-22T06:30:00Z"));
        assert!(!valid_since("yesterday"));
        assert!(!valid_since("2026-1-2"));
    }
}
