//! Configuration: the TOML file ([`raw`]), its units ([`units`]) and the validated runtime
//! types ([`runtime`]). [`load`] reads a file and returns either a [`Config`] or every
//! problem found, each located as `file:line:column`.

pub mod raw;
pub mod runtime;
pub mod units;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::Path;

pub use runtime::{
    AccessLogTarget, Balance, CacheConfig, Config, Dns, EndpointConfig, HashKey, HealthCheck,
    HostPattern, Keepalive, Listener, NamedEndpoint, Outlier, Route, StatusPage, StoreConfig,
    Timeouts, UpstreamConfig,
};

/// One problem in a config file, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column; `None` when the problem is about the file as a whole.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![ConfigError {
            file: file.clone(),
            position: None,
            message: format!("cannot read the config file: {err}"),
        }]
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut config = parse(&text, &file, base_dir)?;
    config.source = Some(path.to_owned());
    Ok(config)
}

/// Parses and validates config text; `file` names it in errors, `base_dir` resolves paths.
pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
    let locate = |span: Option<Range<usize>>, message: String| ConfigError {
        file: file.to_owned(),
        position: span.map(|span| line_column(text, span.start)),
        message,
    };
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|err| vec![locate(err.span(), err.message().to_owned())])?;
    Config::from_raw(raw, base_dir).map_err(|problems| {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| locate(p.span, p.message))
            .collect();
        errors.sort_by_key(|e| e.position);
        errors
    })
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BASE: &str = "[[listeners]]\nlisten = \"127.0.0.1:8080\"\n[upstreams.app]\nendpoints = [\"127.0.0.1:3000\"]\n";

    #[test]
    fn partial_tables_take_defaults_for_missing_keys() {
        let text = format!(
            "{BASE}keepalive = {{ idle = \"5s\" }}\n[[routes]]\nupstream = \"app\"\ntimeouts = {{ connect = \"1s\" }}\nretry = {{ attempts = 2 }}\n"
        );
        let config = parse(&text, "t.toml", Path::new(".")).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.name, "route-1");
        assert_eq!(route.timeouts.connect, Some(Duration::from_secs(1)));
        assert_eq!(
            route.timeouts.response_header,
            Some(Duration::from_secs(30))
        );
        assert_eq!(route.timeouts.idle, Some(Duration::from_secs(60)));
        assert_eq!(route.timeouts.total, None);
        assert_eq!(route.retry.attempts, 2);
        assert_eq!(route.retry.budget_percent, 20);
        assert_eq!(route.retry.backoff, Duration::from_millis(25));
        assert_eq!(route.buffer_bytes, 64 << 10);
        assert_eq!(route.max_body_bytes, 16 << 20);
        assert!(route.preserve_host);
        let keepalive = config.upstreams[0].keepalive;
        assert_eq!(keepalive.idle, Duration::from_secs(5));
        assert_eq!(keepalive.max_idle_per_endpoint, 64);
        assert_eq!(config.listeners[0].max_header_bytes, 64 << 10);
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn errors_point_at_the_value() {
        let text =
            format!("{BASE}[[routes]]\nupstream = \"app\"\nmax_body_bytes = \"12 apples\"\n");
        let errors = parse(&text, "t.toml", Path::new(".")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].position, Some((7, 18)));
        assert!(
            errors[0].to_string().starts_with("t.toml:7:18: "),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn health_checks_take_defaults_and_check_their_values() {
        let text = format!("{BASE}health = {{ interval = \"500ms\" }}\n");
        let config = parse(&text, "t.toml", Path::new(".")).unwrap();
        let health = config.upstreams[0].health.clone().unwrap();
        assert_eq!(health.path, "/healthz");
        assert_eq!(health.interval, Duration::from_millis(500));
        assert_eq!((health.healthy, health.unhealthy), (2, 3));
        assert!(health.expects(200) && health.expects(399) && !health.expects(500));

        let text = format!("{BASE}health = {{ expect = \"200,204-206\" }}\n");
        let health = parse(&text, "t.toml", Path::new(".")).unwrap().upstreams[0]
            .health
            .clone()
            .unwrap();
        assert!(health.expects(204) && !health.expects(201));

        for bad in [
            "expect = \"2xx\"",
            "healthy = 0",
            "path = \"healthz\"",
            "interval = \"0s\"",
        ] {
            let text = format!("{BASE}health = {{ {bad} }}\n");
            let errors = parse(&text, "t.toml", Path::new(".")).unwrap_err();
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].position.map(|p| p.0), Some(5), "{bad}");
        }
        let text = format!("{BASE}balance = \"hash\"\n");
        let errors = parse(&text, "t.toml", Path::new(".")).unwrap_err();
        assert!(errors[0].message.contains("no `hash_key`"), "{errors:?}");
    }

    #[test]
    fn max_inflight_is_a_number_or_auto_and_queue_takes_defaults() {
        use crate::config::runtime::{AdmissionConfig, InflightLimit};
        let admission = |extra: &str| {
            parse(&format!("{BASE}{extra}\n"), "t.toml", Path::new("."))
                .map(|c| c.upstreams[0].admission)
        };
        assert_eq!(admission("max_inflight = 0").unwrap(), None);
        assert_eq!(
            admission("max_inflight = 4").unwrap(),
            Some(AdmissionConfig {
                limit: InflightLimit::Fixed(4),
                queue_size: 1024,
                queue_timeout: Duration::from_secs(1),
            })
        );
        let auto = admission("max_inflight = \"auto\"\nqueue = { size = 0, timeout = \"50ms\" }");
        assert_eq!(
            auto.unwrap(),
            Some(AdmissionConfig {
                limit: InflightLimit::Auto,
                queue_size: 0,
                queue_timeout: Duration::from_millis(50),
            })
        );
        for bad in [
            "max_inflight = -1",
            "max_inflight = \"many\"",
            "max_inflight = 2000000",
        ] {
            let errors = admission(bad).unwrap_err();
            assert!(
                errors[0].message.contains("`max_inflight` must be"),
                "{bad}: {errors:?}"
            );
        }
        let errors = admission("max_inflight = 4\nqueue = { size = 2000000 }").unwrap_err();
        assert!(errors[0].message.contains("`queue.size`"), "{errors:?}");
        let errors = admission("max_inflight = 4\nqueue = { length = 2 }").unwrap_err();
        assert!(errors[0].message.contains("length"), "{errors:?}");
    }

    #[test]
    fn rate_limits_need_requests_and_take_defaults() {
        use crate::config::runtime::RateKey;
        let rate = |table: &str| {
            parse(
                &format!("{BASE}[[routes]]\nupstream = \"app\"\nrate_limit = {table}\n"),
                "t.toml",
                Path::new("."),
            )
            .map(|c| c.routes[0].rate_limit.clone())
        };
        let limit = rate("{ requests = 5 }").unwrap().unwrap();
        assert_eq!((limit.requests, limit.burst), (5, 5));
        assert_eq!(limit.per, Duration::from_secs(1));
        assert_eq!(limit.key, RateKey::ClientIp);
        assert_eq!(limit.policy, "\"default\";q=5;w=1");
        let limit = rate("{ requests = 2, per = \"1m\", burst = 4, key = \"header:X-Api-Key\" }")
            .unwrap()
            .unwrap();
        assert_eq!(
            limit.key,
            RateKey::Header(http::HeaderName::from_static("x-api-key"))
        );
        assert_eq!(limit.policy, "\"default\";q=4;w=120");
        assert_eq!(
            rate("{ requests = 1, key = \"route\" }")
                .unwrap()
                .unwrap()
                .key,
            RateKey::Route
        );
        for (bad, message) in [
            ("{ per = \"1s\" }", "needs `requests`"),
            ("{ requests = 0 }", "`rate_limit.requests` must be"),
            ("{ requests = 1, burst = 0 }", "`rate_limit.burst` must be"),
            ("{ requests = 1, per = \"0s\" }", "at least 1ms"),
            (
                "{ requests = 1, key = \"cookie:x\" }",
                "`rate_limit.key` must be",
            ),
            (
                "{ requests = 1, key = \"header:bad name\" }",
                "`rate_limit.key` must be",
            ),
        ] {
            let errors = rate(bad).unwrap_err();
            assert!(errors[0].message.contains(message), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn store_max_bytes_is_checked() {
        let parsed = parse(
            &format!("{BASE}[store]\nmax_bytes = \"1MiB\"\n"),
            "t.toml",
            Path::new("."),
        );
        assert_eq!(
            parsed.unwrap().store,
            StoreConfig::Memory { max_bytes: 1 << 20 }
        );
        for (bad, message) in [
            ("max_bytes = \"1KiB\"", "at least"),
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1/0\"\nmax_bytes = \"1MiB\"",
                "maxmemory",
            ),
        ] {
            let errors =
                parse(&format!("{BASE}[store]\n{bad}\n"), "t.toml", Path::new(".")).unwrap_err();
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert!(errors[0].message.contains(message), "{errors:?}");
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("ab\ncdé", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé", 3), (2, 1));
        assert_eq!(line_column("ab\nédc", 5), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
