//! HTTP-dates in header fields (RFC 9110 §5.6.7), read for the cache's freshness and
//! validators.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

/// A header as an HTTP-date, in any of the three formats a recipient must accept (RFC 9110
/// §5.6.7); `None` when absent, repeated or invalid.
pub fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?.trim();
    imf_fixdate(text).or_else(|| httpdate::parse_http_date(text).ok())
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7), the form every
/// sender is to use, read in a few dozen instructions (a general parser takes a thousand,
/// on every response stored); `None` for anything else, which the general parser reads.
fn imf_fixdate(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 29
        || &b[3..5] != b", "
        || b[7] != b' '
        || b[11] != b' '
        || b[16] != b' '
        || b[19] != b':'
        || b[22] != b':'
        || &b[25..] != b" GMT"
    {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        b[range].iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let month = MONTHS.iter().position(|m| m[..] == b[8..11])? as u64 + 1;
    let (day, year) = (digits(5..7)?, digits(12..16)?);
    let (hour, minute, second) = (digits(17..19)?, digits(20..22)?, digits(23..25)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=month_days).contains(&day) || year < 1970 || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of a date in the proleptic Gregorian calendar (the
    // days-from-civil algorithm, with March as the first month of the year).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y % 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use http::header::DATE;
    use http::HeaderValue;

    use super::*;

    #[test]
    fn imf_fixdates_read_as_the_general_parser_reads_them() {
        for seconds in [
            0u64,
            68_169_600,
            951_782_400,
            1_700_000_000,
            4_102_444_800,
            1_709_164_799,
        ] {
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            let text = httpdate::fmt_http_date(time);
            assert_eq!(imf_fixdate(&text), Some(time), "{text}");
        }
        assert_eq!(imf_fixdate("Sun, 31 Feb 2021 08:49:37 GMT"), None);
        assert_eq!(
            imf_fixdate("Tue, 29 Feb 2000 00:00:00 GMT"),
            httpdate::parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT").ok()
        );
        assert_eq!(imf_fixdate("Sun, 29 Feb 2100 00:00:00 GMT"), None);
        assert_eq!(imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        let mut h = HeaderMap::new();
        h.insert(
            DATE,
            HeaderValue::from_static("Sunday, 06-Nov-94 08:49:37 GMT"),
        );
        assert_eq!(
            http_date(&h, DATE),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
    }
}
