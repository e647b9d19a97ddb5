//! The responses baton generates itself: every error goes through [`error_response`].
//!
//! Headers (SPEC §5): `Baton-Error`, `Baton-Delivery`, `X-Request-Id`,
//! `Cache-Control: no-store`, and `Retry-After` on 503 and 429. The body is
//! `application/problem+json` (RFC 9457) when the client's `Accept` prefers JSON, otherwise
//! an HTML page written for a person who knows nothing of servers, or an operator template
//! from `[error_pages]`. Bodies never name an upstream address: the access log has those.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Response, StatusCode};

use crate::body::ResponseBody;
use crate::cause::{Cause, Delivery};

// Header names as `HeaderName`s: a `&str` name is parsed, and copied, at every use.
pub const BATON_ERROR: HeaderName = HeaderName::from_static("baton-error");
pub const BATON_DELIVERY: HeaderName = HeaderName::from_static("baton-delivery");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long the HTML page waits before reloading when no `Retry-After` applies.
const DEFAULT_RELOAD_AFTER: Duration = Duration::from_secs(10);
/// The `Retry-After` of 503s other than maintenance: long enough for an ejection to pass or
/// a back-end to restart, short enough that a user is not kept waiting.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Everything an error response is built from.
pub struct ErrorReply<'a> {
    pub cause: Cause,
    pub delivery: Delivery,
    pub request_id: &'a str,
    pub method: &'a Method,
    /// The request's `Accept`, for content negotiation.
    pub accept: Option<&'a HeaderValue>,
    /// `Retry-After`; set by the caller for 503 and 429.
    pub retry_after: Option<Duration>,
    /// Close the client connection after this response (framing errors).
    pub close: bool,
    /// The request is a gRPC call (`Content-Type: application/grpc…`): the answer is a
    /// trailers-only gRPC status, since gRPC clients read no error bodies (SPEC §5).
    pub grpc: bool,
}

/// The gRPC status codes baton answers with (grpc/doc/statuscodes.md).
mod grpc_code {
    pub const UNKNOWN: u16 = 2;
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request with this `Content-Type` is a gRPC call.
pub fn is_grpc(content_type: Option<&HeaderValue>) -> bool {
    content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an error baton answers (SPEC §5).
fn grpc_status(cause: Cause, delivery: Delivery) -> u16 {
    let status = cause.status();
    if cause == Cause::InternalError {
        grpc_code::INTERNAL
    } else if status == StatusCode::GATEWAY_TIMEOUT {
        grpc_code::DEADLINE_EXCEEDED
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        grpc_code::RESOURCE_EXHAUSTED
    } else if status.is_client_error() {
        grpc_code::INVALID_ARGUMENT
    } else if delivery == Delivery::Sent {
        grpc_code::UNKNOWN
    } else {
        grpc_code::UNAVAILABLE
    }
}

/// `grpc-message`: percent-encoded UTF-8, every byte outside printable ASCII and `%` as
/// `%XX` (the gRPC HTTP/2 protocol's Status-Message).
fn grpc_message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::try_from(out).unwrap_or(HeaderValue::from_static("baton error"))
}

/// A trailers-only gRPC answer: HTTP 200 with the status in the head and no body.
fn grpc_error(reply: &ErrorReply<'_>, retry_after: Option<Duration>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        GRPC_STATUS,
        HeaderValue::from(grpc_status(reply.cause, reply.delivery)),
    );
    headers.insert(
        GRPC_MESSAGE,
        grpc_message(&format!(
            "{}: {} (request {})",
            reply.cause.code(),
            reply.cause.title(),
            reply.request_id
        )),
    );
    set_baton_headers(&mut response, reply, retry_after);
    response
}

/// Builds the one response baton sends for an error. `templates` are `[error_pages]`.
pub fn error_response(
    reply: &ErrorReply<'_>,
    templates: &HashMap<String, String>,
) -> Response<ResponseBody> {
    let status = reply.cause.status();
    let retry_after = reply.retry_after.filter(|_| {
        status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
    });
    if reply.grpc {
        return grpc_error(reply, retry_after);
    }
    let (content_type, body) = if reply.accept.is_some_and(prefers_json) {
        ("application/problem+json", problem_json(reply, retry_after))
    } else {
        let template = templates
            .get(reply.cause.code())
            .or_else(|| templates.get(status.as_str()));
        let page = match template {
            Some(template) => render_template(template, reply, retry_after),
            None => html_page(reply, retry_after),
        };
        ("text/html; charset=utf-8", page)
    };

    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    set_baton_headers(&mut response, reply, retry_after);
    response
}

/// The headers every generated error carries (SPEC §5).
fn set_baton_headers(
    response: &mut Response<ResponseBody>,
    reply: &ErrorReply<'_>,
    retry_after: Option<Duration>,
) {
    let headers = response.headers_mut();
    headers.insert(BATON_ERROR, HeaderValue::from_static(reply.cause.code()));
    headers.insert(
        BATON_DELIVERY,
        HeaderValue::from_static(reply.delivery.as_str()),
    );
    if let Ok(mut id) = HeaderValue::from_str(reply.request_id) {
        // Unique to this answer: kept out of HTTP/2's compression table (see
        // `forward::request_id`).
        id.set_sensitive(true);
        headers.insert(X_REQUEST_ID, id);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(after) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    if reply.close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Serializes a generated response as HTTP/1.1 bytes, for answers written below hyper.
pub fn to_http1(response: &Response<ResponseBody>) -> Vec<u8> {
    let status = response.status();
    let body = response.body().full_bytes().cloned().unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(
        format!(
            "date: {}\r\n\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

/// True when `Accept` ranks a JSON type above HTML (RFC 9110 §12.5.1).
fn prefers_json(accept: &HeaderValue) -> bool {
    let mut json_q = 0.0f32;
    let mut html_q = 0.0f32;
    if let Ok(value) = accept.to_str() {
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let is_json = media == "application/json"
                || media == "application/problem+json"
                || (media.starts_with("application/") && media.ends_with("+json"));
            if is_json {
                json_q = json_q.max(q);
            } else if media == "text/html" || media == "text/*" || media == "*/*" {
                html_q = html_q.max(q);
            }
        }
    }
    json_q > html_q
}

/// The plain-words explanation for the person who sent the request.
fn detail(cause: Cause) -> &'static str {
    match cause {
        Cause::UpstreamConnectRefused
        | Cause::UpstreamUnreachable
        | Cause::UpstreamDnsFailed
        | Cause::UpstreamTlsFailed
        | Cause::UpstreamConnectTimeout => {
            "The site's server could not be contacted. This is usually brief, while the site restarts or recovers."
        }
        Cause::UpstreamReset
        | Cause::UpstreamInvalidResponse
        | Cause::UpstreamProtocolError
        | Cause::UpstreamBodyTruncated => {
            "The site's server ran into a problem while handling your request and did not answer properly."
        }
        Cause::UpstreamResponseTimeout | Cause::UpstreamIdleTimeout => {
            "The site's server took too long to answer."
        }
        Cause::NoHealthyUpstream => {
            "The site's servers are all unavailable at the moment. The site's team is notified by its monitoring."
        }
        Cause::UpstreamOverloaded => "The site is receiving more requests than it can handle right now.",
        Cause::Maintenance => "The site is being worked on and will be back shortly.",
        Cause::IdempotencyStoreUnavailable => {
            "The site cannot currently guarantee that this request would be processed only once, so it was not processed."
        }
        Cause::RateLimited => "Too many requests came from you in a short time.",
        Cause::IdempotencyKeyInFlight => "An identical request is still being processed.",
        Cause::IdempotencyOutcomeUnknown => {
            "An earlier identical request reached the site, but its outcome is unknown."
        }
        Cause::IdempotencyKeyReused => "This request reuses the key of a different request.",
        Cause::NoRoute => "There is nothing at this address.",
        Cause::RequestTooLarge => "What you sent is larger than this site accepts.",
        Cause::HeadersTooLarge => {
            "Your browser sent more header data than this site accepts; clearing this site's cookies often helps."
        }
        Cause::BadRequest => "Your browser or program sent a request this site could not understand.",
        Cause::ClientTimeout => "Your request took too long to arrive.",
        Cause::NotCached => "Your browser asked only for a saved copy of this page, and there is none.",
        Cause::ClientClosed => "The connection was closed before the request completed.",
        Cause::InternalError => {
            "The gateway in front of this site failed while handling your request. The failure is logged with the request ID below."
        }
    }
}

fn problem_json(reply: &ErrorReply<'_>, retry_after: Option<Duration>) -> String {
    let mut problem = serde_json::json!({
        "type": format!("urn:baton:error:{}", reply.cause.code()),
        "title": reply.cause.title(),
        "status": reply.cause.status().as_u16(),
        "detail": detail(reply.cause),
        "cause": reply.cause.code(),
        "request_id": reply.request_id,
        "delivery": reply.delivery.as_str(),
    });
    if let Some(after) = retry_after {
        problem["retry_after"] = serde_json::Value::from(after.as_secs().max(1));
    }
    problem.to_string()
}

fn delivery_sentence(delivery: Delivery) -> &'static str {
    match delivery {
        Delivery::None => "Nothing was processed — it is safe to try again.",
        Delivery::Sent => {
            "Your request may have been processed: if you were paying or submitting a form, check for a confirmation before trying again."
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Whether the page may reload itself: only a GET or HEAD, which cannot change anything.
fn auto_reload(reply: &ErrorReply<'_>, retry_after: Option<Duration>) -> Option<u64> {
    let safe = matches!(*reply.method, Method::GET | Method::HEAD);
    let reloads = reply.cause.status().is_server_error() || reply.cause == Cause::RateLimited;
    (safe && reloads).then(|| retry_after.unwrap_or(DEFAULT_RELOAD_AFTER).as_secs().max(1))
}

fn html_page(reply: &ErrorReply<'_>, retry_after: Option<Duration>) -> String {
    let status = reply.cause.status();
    let reload = auto_reload(reply, retry_after);
    let reload_note = match reload {
        Some(_) => "<p id=\"reload\">This page will try again by itself in a few seconds.</p>",
        None => "",
    };
    // The reload script waits Retry-After seconds, doubling the wait on each failure in a
    // row (kept per address in sessionStorage) up to ten minutes: never faster.
    let script = match reload {
        Some(seconds) => format!(
            "<script>(function(){{var k='baton-retry:'+location.href,n=+(sessionStorage.getItem(k)||0);\
sessionStorage.setItem(k,n+1);var s=Math.min({seconds}*Math.pow(2,n),600);\
var el=document.getElementById('reload');if(el)el.textContent='This page will try again by itself in '+s+' seconds.';\
setTimeout(function(){{location.reload();}},s*1000);}})();</script>"
        ),
        None => String::new(),
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{code} — {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 36rem; margin: 4rem auto; padding: 0 1rem; color: #222; line-height: 1.5; }}
h1 {{ font-size: 1.5rem; }}
.safe {{ padding: .75rem 1rem; border-left: 4px solid #888; background: #f4f4f4; }}
.support {{ color: #555; font-size: .9rem; }}
code {{ font-size: .9rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{detail}</p>
<p class="safe">{delivery}</p>
{reload_note}
<p class="support">If you contact the site's support, give them this reference:<br>
request <code>{request_id}</code> at <code>{time}</code> (error {code}, <code>{cause}</code>).</p>
{script}
</body>
</html>
"#,
        code = status.as_u16(),
        title = reply.cause.title(),
        detail = detail(reply.cause),
        delivery = delivery_sentence(reply.delivery),
        request_id = escape_html(reply.request_id),
        time = now_rfc3339(),
        cause = reply.cause.code(),
    )
}

/// Fills an `[error_pages]` template; every value is HTML-escaped.
fn render_template(
    template: &str,
    reply: &ErrorReply<'_>,
    retry_after: Option<Duration>,
) -> String {
    let values: [(&str, String); 8] = [
        ("status", reply.cause.status().as_u16().to_string()),
        ("title", reply.cause.title().to_owned()),
        ("cause", reply.cause.code().to_owned()),
        ("detail", detail(reply.cause).to_owned()),
        ("request_id", reply.request_id.to_owned()),
        ("delivery", reply.delivery.as_str().to_owned()),
        (
            "retry_after",
            retry_after.map_or(String::new(), |d| d.as_secs().max(1).to_string()),
        ),
        ("time", now_rfc3339()),
    ];
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = after[..end].trim();
        match values.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => out.push_str(&escape_html(value)),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn negotiation() {
        assert!(prefers_json(&accept("application/json")));
        assert!(prefers_json(&accept("application/problem+json")));
        assert!(prefers_json(&accept("text/html;q=0.5, application/json")));
        assert!(!prefers_json(&accept(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(!prefers_json(&accept("*/*")));
    }

    #[test]
    fn templates_fill_known_names_and_escape() {
        let reply = ErrorReply {
            cause: Cause::UpstreamReset,
            delivery: Delivery::Sent,
            request_id: "<id>",
            method: &Method::POST,
            accept: None,
            retry_after: None,
            close: false,
            grpc: false,
        };
        let page = render_template(
            "{{status}} {{cause}} {{ request_id }} {{unknown}} {{",
            &reply,
            None,
        );
        assert_eq!(page, "502 upstream-reset &lt;id&gt; {{unknown}} {{");
    }

    #[test]
    fn grpc_statuses_follow_the_table() {
        use grpc_code::*;
        let table = [
            (Cause::UpstreamConnectRefused, Delivery::None, UNAVAILABLE),
            (Cause::NoHealthyUpstream, Delivery::None, UNAVAILABLE),
            (Cause::UpstreamReset, Delivery::Sent, UNKNOWN),
            (
                Cause::UpstreamResponseTimeout,
                Delivery::Sent,
                DEADLINE_EXCEEDED,
            ),
            (
                Cause::UpstreamConnectTimeout,
                Delivery::None,
                DEADLINE_EXCEEDED,
            ),
            (Cause::RateLimited, Delivery::None, RESOURCE_EXHAUSTED),
            (Cause::HeadersTooLarge, Delivery::None, INVALID_ARGUMENT),
            (Cause::NoRoute, Delivery::None, INVALID_ARGUMENT),
            (Cause::InternalError, Delivery::Sent, INTERNAL),
        ];
        for (cause, delivery, code) in table {
            assert_eq!(grpc_status(cause, delivery), code, "{cause:?} {delivery:?}");
        }
    }

    #[test]
    fn a_grpc_error_is_trailers_only_with_an_encoded_message() {
        let reply = ErrorReply {
            cause: Cause::UpstreamConnectRefused,
            delivery: Delivery::None,
            request_id: "abc",
            method: &Method::POST,
            accept: None,
            retry_after: None,
            close: false,
            grpc: true,
        };
        let response = error_response(&reply, &HashMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().full_bytes().is_none());
        let headers = response.headers();
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["baton-error"], "upstream-connect-refused");
        assert_eq!(headers["content-type"], "application/grpc");
        assert!(headers["grpc-message"]
            .to_str()
            .unwrap()
            .starts_with("upstream-connect-refused: "));
        assert_eq!(
            grpc_message("100% \u{e9}").to_str().unwrap(),
            "100%25 %C3%A9"
        );
    }
}
