//! Route matching: which route answers a request, by host and path (SPEC §3).
//!
//! Among routes whose `host` matches, the longest `path_prefix` wins; on a tie the more
//! specific host (exact, then `*.domain`, then `*`) wins, then the earlier route in the file.
//! A prefix matches whole path segments: `/api` matches `/api` and `/api/users`, not `/apix`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::config::{HostPattern, Route};
use crate::upstream::balance::StableHasher;

impl HostPattern {
    /// `host` is lowercase, without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    fn specificity(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Suffix(_) => 1,
            HostPattern::Any => 0,
        }
    }
}

/// The host part of a `Host` header or URI authority: lowercase, without port. Borrows
/// when the name is lowercase already, as it nearly always is.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    // On bytes: the str patterns' searchers cost more than the whole of a short host.
    let bytes = host.as_bytes();
    let (start, mut end) = if bytes.first() == Some(&b'[') {
        // An IPv6 literal: keep the brackets' content.
        let close = bytes.iter().position(|&b| b == b']').unwrap_or(bytes.len());
        (1, close)
    } else {
        (
            0,
            bytes
                .iter()
                .rposition(|&b| b == b':')
                .unwrap_or(bytes.len()),
        )
    };
    while end > start && bytes[end - 1] == b'.' {
        end -= 1;
    }
    // Both ends are at ASCII bytes or the string's ends, so on char boundaries.
    let name = host.get(start..end).unwrap_or_default();
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The routes indexed by path prefix, so that picking one costs a hash lookup per segment
/// of the request path, however many routes there are.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Route indices by prefix, most specific host first, then in file order.
    by_prefix: HashMap<String, Vec<usize>, BuildHasherDefault<StableHasher>>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> RouteTable {
        let mut by_prefix: HashMap<String, Vec<usize>, _> = HashMap::default();
        for (index, route) in routes.iter().enumerate() {
            by_prefix
                .entry(route.path_prefix.clone())
                .or_default()
                .push(index);
        }
        for indices in by_prefix.values_mut() {
            indices.sort_by_key(|&i| (std::cmp::Reverse(routes[i].host.specificity()), i));
        }
        RouteTable { by_prefix }
    }

    /// Picks the route for a request from `routes` (those the table was built from);
    /// `None` means 404 `no-route`.
    pub fn select<'a>(
        &self,
        routes: &'a [Route],
        host: &str,
        path: &str,
    ) -> Option<(usize, &'a Route)> {
        candidate_prefixes(path).find_map(|prefix| {
            self.by_prefix
                .get(prefix)?
                .iter()
                .find(|&&i| routes[i].host.matches(host))
                .map(|&i| (i, &routes[i]))
        })
    }
}

/// The prefixes that can match `path` on a segment boundary, longest first: the path, and
/// before each `/` the part up to it with and without the slash.
fn candidate_prefixes(path: &str) -> impl Iterator<Item = &str> {
    std::iter::once(path).chain(
        path.rmatch_indices('/')
            .flat_map(move |(i, _)| [&path[..=i], &path[..i]])
            .filter(move |prefix| prefix.len() < path.len() && !prefix.is_empty()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Timeouts;
    use std::time::Duration;

    fn route(name: &str, host: HostPattern, prefix: &str) -> Route {
        Route {
            name: name.into(),
            host,
            path_prefix: prefix.into(),
            upstream: 0,
            max_body_bytes: 0,
            preserve_host: true,
            maintenance: false,
            maintenance_retry_after: Duration::ZERO,
            timeouts: Timeouts {
                connect: None,
                response_header: None,
                idle: None,
                total: None,
            },
            idempotency: None,
            rate_limit: None,
            cache: None,
            retry: crate::config::runtime::Retry {
                attempts: 1,
                non_idempotent: false,
                budget_percent: 0,
                min_per_second: 0,
                backoff: Duration::ZERO,
                max_backoff: Duration::ZERO,
            },
            buffer_bytes: 0,
        }
    }

    #[test]
    fn longest_prefix_then_most_specific_host() {
        let routes = vec![
            route("root", HostPattern::Any, "/"),
            route("api", HostPattern::Any, "/api"),
            route(
                "api-example",
                HostPattern::Exact("example.com".into()),
                "/api",
            ),
            route("sub", HostPattern::Suffix(".example.com".into()), "/"),
        ];
        let table = RouteTable::new(&routes);
        let pick = |host: &str, path: &str| {
            table
                .select(&routes, host, path)
                .map(|(_, r)| r.name.as_str())
        };
        assert_eq!(pick("other.org", "/"), Some("root"));
        assert_eq!(pick("other.org", "/api/x"), Some("api"));
        assert_eq!(pick("other.org", "/apix"), Some("root"));
        assert_eq!(pick("example.com", "/api"), Some("api-example"));
        assert_eq!(pick("a.example.com", "/x"), Some("sub"));
        assert_eq!(pick("example.com", "/x"), Some("root"));
        let api_only = &routes[1..2];
        assert!(RouteTable::new(api_only)
            .select(api_only, "x", "/")
            .is_none());
    }

    /// True when `prefix` covers `path` on a segment boundary.
    fn prefix_matches(prefix: &str, path: &str) -> bool {
        match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// The rule of the module, route by route: what the table must agree with.
    fn select_by_scan<'a>(
        routes: &'a [Route],
        host: &str,
        path: &str,
    ) -> Option<(usize, &'a Route)> {
        routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.host.matches(host) && prefix_matches(&r.path_prefix, path))
            .max_by(|(ia, a), (ib, b)| {
                (a.path_prefix.len(), a.host.specificity())
                    .cmp(&(b.path_prefix.len(), b.host.specificity()))
                    .then(ib.cmp(ia))
            })
    }

    #[test]
    fn the_table_agrees_with_the_rule_on_random_routes() {
        let prefixes = ["/", "/a", "/a/", "/a/b", "/ab", "/a/b/", "/b", "/a/b/c"];
        let hosts = [
            HostPattern::Any,
            HostPattern::Exact("x.com".into()),
            HostPattern::Suffix(".x.com".into()),
        ];
        let paths = [
            "/", "/a", "/a/", "/a/b", "/a/bc", "/ab/c", "/a/b/c/d", "/b/", "/c", "//a",
        ];
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for _ in 0..300 {
            let routes: Vec<Route> = (0..1 + next(8))
                .map(|i| {
                    route(
                        &format!("r{i}"),
                        hosts[next(3)].clone(),
                        prefixes[next(prefixes.len())],
                    )
                })
                .collect();
            let table = RouteTable::new(&routes);
            for host in ["x.com", "a.x.com", "y.org"] {
                for path in paths {
                    let by_table = table.select(&routes, host, path).map(|(i, _)| i);
                    let by_scan = select_by_scan(&routes, host, path).map(|(i, _)| i);
                    assert_eq!(by_table, by_scan, "{host}{path} in {routes:?}");
                }
            }
        }
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("Example.com.:443"), "example.com");
        assert_eq!(normalize_host("[::1"), "::1");
        assert_eq!(normalize_host(""), "");
    }
}
