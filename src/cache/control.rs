//! `Cache-Control` directives (RFC 9111 §5.2, RFC 5861) as baton acts on them, parsed once
//! from a request or a response head.

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// The value a delta-seconds too large to represent stands for (RFC 9111 §1.2.2).
pub const MAX_DELTA: u64 = 1 << 31;

/// The directives of one message. A number is `None` when the directive is absent; a
/// directive whose value is not a number is [`Delta::Invalid`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<Delta>,
    pub s_maxage: Option<Delta>,
    /// Request: `max-stale` with no value accepts any staleness.
    pub max_stale: Option<Option<Delta>>,
    pub min_fresh: Option<Delta>,
    pub stale_while_revalidate: Option<Delta>,
    pub stale_if_error: Option<Delta>,
    pub no_cache: bool,
    pub no_store: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub must_understand: bool,
}

/// A delta-seconds value (RFC 9111 §1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    Seconds(u64),
    /// Not a non-negative integer: a response with such freshness is stale (§4.2.1).
    Invalid,
}

impl Delta {
    pub fn parse(value: Option<&str>) -> Delta {
        let Some(digits) = value.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        else {
            return Delta::Invalid;
        };
        // Past 2^31 every value means 2^31; the digits are all ASCII, so only the length
        // can overflow.
        Delta::Seconds(
            digits
                .parse::<u64>()
                .map_or(MAX_DELTA, |n| n.min(MAX_DELTA)),
        )
    }

    /// The seconds, or zero for an invalid value.
    pub fn seconds(self) -> u64 {
        match self {
            Delta::Seconds(n) => n,
            Delta::Invalid => 0,
        }
    }
}

impl Directives {
    /// The directives of every `Cache-Control` line of `headers`. The first of a repeated
    /// directive counts (RFC 9111 §4.2.1); names are case-insensitive; unknown ones are
    /// ignored (§5.2.3).
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for line in headers.get_all(CACHE_CONTROL) {
            let Ok(line) = line.to_str() else { continue };
            for (name, value) in split(line) {
                directives.set(name, value);
            }
        }
        directives
    }

    /// A request's directives, with `Pragma: no-cache` as `no-cache` when there is no
    /// `Cache-Control` (RFC 9111 §5.4).
    pub fn of_request(headers: &HeaderMap) -> Directives {
        if !headers.contains_key(CACHE_CONTROL) {
            let pragma = headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
                });
            return Directives {
                no_cache: pragma,
                ..Directives::default()
            };
        }
        Directives::of(headers)
    }

    fn set(&mut self, name: &str, value: Option<&str>) {
        fn first(slot: &mut Option<Delta>, value: Option<&str>) {
            if slot.is_none() {
                *slot = Some(Delta::parse(value));
            }
        }
        // Most names come lower case already; only others are copied to compare.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        match name {
            "max-age" => first(&mut self.max_age, value),
            "s-maxage" => first(&mut self.s_maxage, value),
            "min-fresh" => first(&mut self.min_fresh, value),
            "stale-while-revalidate" => first(&mut self.stale_while_revalidate, value),
            "stale-if-error" => first(&mut self.stale_if_error, value),
            "max-stale" if self.max_stale.is_none() => {
                self.max_stale = Some(value.map(|v| Delta::parse(Some(v))));
            }
            // The qualified forms (`no-cache="Set-Cookie"`, `private="…"`) are taken as
            // the unqualified ones: stricter, and allowed (§5.2.2.4, §5.2.2.7).
            "no-cache" => self.no_cache = true,
            "no-store" => self.no_store = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "only-if-cached" => self.only_if_cached = true,
            "must-understand" => self.must_understand = true,
            _ => {}
        }
    }

    /// Whether a shared cache must not serve the response stale (§5.2.2.2, §5.2.2.8):
    /// `must-revalidate`, `proxy-revalidate`, or `s-maxage` (which implies the latter).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// `Surrogate-Control` (W3C Edge Architecture 1.0): directives for the gateway alone,
/// which take the place of `Cache-Control` for it when they say anything it knows —
/// `max-age=N` (with `+M`, M seconds more it may answer stale instead of an error) and
/// `no-store` — each for every surrogate or, with `;baton`, for baton alone (a directive
/// for another target is ignored). The origin learns baton's name from
/// `Surrogate-Capability: baton="Surrogate/1.0"` on each request of a cached route.
pub fn surrogate(headers: &HeaderMap) -> Option<Directives> {
    let mut directives = Directives::default();
    let mut known = false;
    for line in headers.get_all(SURROGATE_CONTROL) {
        let Ok(line) = line.to_str() else { continue };
        for (name, value) in split(line) {
            // The target rides on the value (`max-age=60;baton`) or on the name
            // (`no-store;baton`).
            let (name, name_target) = name.split_once(';').unwrap_or((name, ""));
            let (value, value_target) = match value.map(|v| v.split_once(';').unwrap_or((v, ""))) {
                Some((value, target)) => (Some(value), target),
                None => (None, ""),
            };
            let target = if name_target.is_empty() {
                value_target
            } else {
                name_target
            };
            if !target.is_empty() && !target.trim().eq_ignore_ascii_case(SURROGATE_NAME) {
                continue;
            }
            if name.eq_ignore_ascii_case("no-store") {
                directives.no_store = true;
                known = true;
            } else if name.eq_ignore_ascii_case("max-age") && directives.max_age.is_none() {
                let (fresh, stale) = value.map_or((None, None), |v| match v.split_once('+') {
                    Some((fresh, stale)) => (Some(fresh), Some(stale)),
                    None => (Some(v), None),
                });
                directives.max_age = Some(Delta::parse(fresh));
                directives.stale_if_error = stale.map(|s| Delta::parse(Some(s)));
                known = true;
            }
        }
    }
    known.then_some(directives)
}

/// The name baton answers to in `Surrogate-Control` targets.
pub const SURROGATE_NAME: &str = "baton";

/// `Surrogate-Control`, for the gateway; never passed on to clients.
pub const SURROGATE_CONTROL: http::HeaderName = http::HeaderName::from_static("surrogate-control");

/// `Surrogate-Capability`, which tells the origin what baton understands.
pub const SURROGATE_CAPABILITY: http::HeaderName =
    http::HeaderName::from_static("surrogate-capability");

/// The directives of a list: `name`, `name=token` or `name="quoted string"`, separated by
/// commas; empty elements are skipped (RFC 9110 §5.6.1). A comma inside quotes does not
/// end a directive.
fn split(line: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = line;
    std::iter::from_fn(move || loop {
        let trimmed = rest.trim_start_matches([' ', '\t', ',']);
        if trimmed.is_empty() {
            return None;
        }
        let name_end = trimmed.find(['=', ',']).unwrap_or(trimmed.len());
        let name = trimmed[..name_end].trim();
        let after = &trimmed[name_end..];
        let Some(value_text) = after.strip_prefix('=') else {
            rest = after;
            if name.is_empty() {
                continue;
            }
            return Some((name, None));
        };
        let value_text = value_text.trim_start();
        let (value, tail) = match value_text.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(close) => (&quoted[..close], &quoted[close + 1..]),
                None => (quoted, ""),
            },
            None => {
                let end = value_text
                    .find([',', ' ', '\t'])
                    .unwrap_or(value_text.len());
                (&value_text[..end], &value_text[end..])
            }
        };
        // Whatever follows a value up to the next comma is not part of it.
        rest = tail.find(',').map_or("", |comma| &tail[comma..]);
        if name.is_empty() {
            continue;
        }
        return Some((name, Some(value)));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn of(lines: &[&str]) -> Directives {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        Directives::of(&headers)
    }

    #[test]
    fn directives_are_read_from_every_line_and_the_first_value_counts() {
        let d = of(&["public, max-age=60", "Max-Age=5, s-maxage=\"30\""]);
        assert!(d.public);
        assert_eq!(d.max_age, Some(Delta::Seconds(60)));
        assert_eq!(d.s_maxage, Some(Delta::Seconds(30)));
        assert!(d.forbids_stale());
    }

    #[test]
    fn values_that_are_not_numbers_are_invalid_and_huge_ones_are_capped() {
        let d = of(&[
            "max-age=abc, stale-if-error=-1, stale-while-revalidate=99999999999999999999999",
        ]);
        assert_eq!(d.max_age, Some(Delta::Invalid));
        assert_eq!(d.stale_if_error, Some(Delta::Invalid));
        assert_eq!(d.stale_while_revalidate, Some(Delta::Seconds(MAX_DELTA)));
        assert_eq!(of(&["max-age"]).max_age, Some(Delta::Invalid));
    }

    #[test]
    fn quoted_values_may_hold_commas_and_empty_elements_are_skipped() {
        let d = of(&[",, no-cache=\"set-cookie, x-a\" ,private, ,max-age=1 junk"]);
        assert!(d.no_cache && d.private);
        assert_eq!(d.max_age, Some(Delta::Seconds(1)));
        assert!(!d.no_store);
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        let mut headers = HeaderMap::new();
        headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(Directives::of_request(&headers).no_cache);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=10"));
        assert!(!Directives::of_request(&headers).no_cache);
    }

    #[test]
    fn surrogate_control_speaks_to_baton_or_to_every_surrogate() {
        let of = |line: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(SURROGATE_CONTROL, HeaderValue::from_str(line).unwrap());
            surrogate(&headers)
        };
        let d = of("foo, MaX-AgE=60+30").unwrap();
        assert_eq!(d.max_age, Some(Delta::Seconds(60)));
        assert_eq!(d.stale_if_error, Some(Delta::Seconds(30)));
        assert!(!d.private && !d.no_cache);
        assert_eq!(
            of("max-age=60;baton").unwrap().max_age,
            Some(Delta::Seconds(60))
        );
        assert_eq!(of("max-age=60;other"), None);
        assert!(of("no-store;baton").unwrap().no_store);
        assert_eq!(of("content=\"ESI/1.0\""), None);
    }

    #[test]
    fn max_stale_without_a_value_takes_any_staleness() {
        assert_eq!(of(&["max-stale"]).max_stale, Some(None));
        assert_eq!(
            of(&["max-stale=5"]).max_stale,
            Some(Some(Delta::Seconds(5)))
        );
    }
}
