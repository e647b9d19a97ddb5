//! Host syntax (RFC 9110 §7.2, RFC 3986 §3.2.2): what a `Host` field or a URI authority may
//! be before it is forwarded.

/// Whether `host` is a valid `Host` field value or URI authority (RFC 9110 §7.2, RFC 3986
/// §3.2.2): `uri-host [ ":" port ]`, where the host is an IP literal in brackets, or a
/// reg-name of unreserved characters, percent-encodings and sub-delims (which covers IPv4
/// addresses). An empty value is valid (RFC 9110 §7.2: a target without an authority). No
/// user information: an `http` URI never carries it (RFC 9110 §4.2.4).
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                let ip_literal = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                // IPvFuture: "v" HEXDIG+ "." ( unreserved / sub-delims / ":" )+
                let future = literal.first().is_some_and(|&b| b == b'v' || b == b'V');
                if !(ip_literal || future && literal.iter().all(|&b| reg_name_byte(b) || b == b':'))
                {
                    return false;
                }
                match &host[end + 1..] {
                    [] => (&[][..], None),
                    [b':', port @ ..] => (&[][..], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.iter().all(u8::is_ascii_digit));
    port_ok && valid_reg_name(name)
}

/// Unreserved characters and sub-delims (RFC 3986 §2.2, §2.3), as a table: every request's
/// host is checked byte by byte.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')'
            )
            || matches!(c, b'*' | b'+' | b',' | b';' | b'=');
        b += 1;
    }
    table
};

fn reg_name_byte(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// A reg-name: those characters and `%` followed by two hex digits.
fn valid_reg_name(name: &[u8]) -> bool {
    if name.iter().all(|&b| reg_name_byte(b)) {
        return true;
    }
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if reg_name_byte(b) => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_against_rfc_3986() {
        let good = [
            "",
            "a",
            "example.test:80",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "a%20b",
            "x:",
        ];
        for host in good {
            assert!(valid_host(host.as_bytes()), "{host:?}");
        }
        let bad = [
            "a b", "a/b", "a<b", "u@h", "[::1", "[]", "[::1]x", "a:b", "%2", "%zz", "a\\b",
        ];
        for host in bad {
            assert!(!valid_host(host.as_bytes()), "{host:?}");
        }
    }
}
