//! The door of the HTTP control plane, in front of every route (inject, admin,
//! metrics, health), before any handler and before a body is read:
//!
//! 1. browsers kept out: a request carrying an `Origin` not in `http.allowed_origins`
//!    is refused (403), and on a loopback listener a `Host` other than the listener's
//!    address, `localhost` or `http.hostnames` is refused (403; a DNS-rebinding page
//!    names its own host); off loopback, `http.hostnames` when set;
//! 2. routes without a token (health, metrics, unknown paths) take no body (413);
//! 3. the bearer token of the route's kind (`/api/`: `http.tokens`, `/admin/`:
//!    `http.admin_tokens`; they reload), checked before the body is read (401);
//! 4. admin POSTs must say `application/json` (415);
//! 5. at most `http.requests_max` requests past these checks at once (503 with
//!    `Retry-After` beyond), each body read whole within `http.body_timeout_seconds`
//!    (408) and `http.body_max_bytes` (413), then handed to the route.
//!
//! Every refusal is JSON: `{"error": "..."}` naming the limit or the header.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::Semaphore;

/// What the door checks against.
#[derive(Debug)]
pub struct Guard {
    /// The running configuration: the tokens (they reload).
    pub live: Arc<crate::live::Live>,
    /// The address the control plane is bound to.
    pub bound: SocketAddr,
    permits: Arc<Semaphore>,
    requests_max: usize,
    body_timeout: Duration,
    body_max: usize,
    allowed_origins: Vec<String>,
    hostnames: Vec<String>,
}

impl Guard {
    /// The door for a control plane bound to `bound`, with the `[http]` limits of the
    /// configuration it started with (they need a restart to change).
    pub fn new(live: Arc<crate::live::Live>, bound: SocketAddr) -> Guard {
        let http = live.current().http.clone();
        Guard {
            live,
            bound,
            permits: Arc::new(Semaphore::new(http.requests_max)),
            requests_max: http.requests_max,
            body_timeout: Duration::from_secs(http.body_timeout_seconds),
            body_max: http.body_max_bytes,
            allowed_origins: http
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            hostnames: http.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `host` (a `Host` header: name or address, with an optional port) names
    /// this control plane.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = split_host(&host);
        if port.is_some_and(|port| port != self.bound.port()) {
            return false;
        }
        if self.hostnames.iter().any(|allowed| *allowed == name) {
            return true;
        }
        let address = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        if self.bound.ip().is_loopback() {
            // A page that rebinds its own name to 127.0.0.1 still sends that name.
            return name == "localhost" || address.is_some_and(|ip| ip.is_loopback());
        }
        // Off loopback the tokens guard the door; `hostnames`, when set, narrows it.
        self.hostnames.is_empty() || address.is_some_and(|ip| ip == self.bound.ip() || self.bound.ip().is_unspecified())
    }
}

/// `name` and `port` of a `Host` value (`[v6]:port`, `name:port`, `name`).
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((inside, tail)) => {
                let name = &host[..inside.len() + 2];
                (name, tail.strip_prefix(':').and_then(|p| p.parse().ok()))
            }
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The door (an axum middleware over the whole control plane).
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/').to_ascii_lowercase();
        if !guard.allowed_origins.contains(&origin) {
            return refuse(StatusCode::FORBIDDEN, format!("origin {origin:?} is not in http.allowed_origins"));
        }
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    if !guard.host_allowed(host) {
        return refuse(StatusCode::FORBIDDEN, format!("Host {host:?} does not name this server (http.hostnames)"));
    }
    let path = request.uri().path();
    let config = guard.live.current();
    let (tokens, admin) = if path.starts_with("/admin/") {
        (&config.http.admin_tokens, true)
    } else if path.starts_with("/api/") {
        (&config.http.tokens, false)
    } else {
        // Health, metrics and anything unknown take no token, so they take no body
        // either: nobody without a token can make the door read or hold one.
        if has_body(headers) {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("{path} takes no request body"));
        }
        return next.run(request).await;
    };
    if !token_matches(tokens, headers) {
        let what = if admin { "a valid admin bearer token is required" } else { "a valid bearer token is required" };
        let mut response = refuse(StatusCode::UNAUTHORIZED, what);
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    if admin && request.method() == axum::http::Method::POST && !is_json(headers) {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "admin requests must be Content-Type: application/json");
    }
    // A body announced too large is refused before a byte of it is asked for (no
    // `100 Continue`: a client that waits for one never uploads it).
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > guard.body_max as u64) {
        let why = format!("the body is larger than http.body_max_bytes ({})", guard.body_max);
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, why);
    }
    drop(config);
    // Only requests that passed the cheap checks hold a slot while their body comes.
    let Ok(_permit) = Arc::clone(&guard.permits).try_acquire_owned() else {
        let mut response = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many requests at once (http.requests_max = {})", guard.requests_max),
        );
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(guard.body_timeout, axum::body::to_bytes(body, guard.body_max)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            let why = format!("the body is larger than http.body_max_bytes ({}) or was cut off", guard.body_max);
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, why);
        }
        Err(_) => {
            let why = format!("the body did not arrive within http.body_timeout_seconds ({:?})", guard.body_timeout);
            return refuse(StatusCode::REQUEST_TIMEOUT, why);
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Whether the request announces a body (a length above 0, or chunks).
fn has_body(headers: &HeaderMap) -> bool {
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|length| length > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the request carries one of `tokens` as a bearer token (compared in
/// constant time for equal lengths); true when there are no tokens.
pub fn token_matches(tokens: &[String], headers: &HeaderMap) -> bool {
    if tokens.is_empty() {
        return true;
    }
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
    else {
        return false;
    };
    tokens.iter().any(|token| {
        token.len() == given.len() && token.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_split_and_judged() {
        assert_eq!(split_host("127.0.0.1:8025"), ("127.0.0.1", Some(8025)));
        assert_eq!(split_host("[::1]:8025"), ("[::1]", Some(8025)));
        assert_eq!(split_host("localhost"), ("localhost", None));
        assert_eq!(split_host("::1"), ("::1", None));
        let config = crate::config::Config::default();
        let live = Arc::new(crate::live::Live::new(Arc::new(config), None));
        let guard = Guard::new(Arc::clone(&live), "127.0.0.1:8025".parse().unwrap());
        for good in ["127.0.0.1:8025", "localhost:8025", "LOCALHOST", "[::1]:8025", "127.0.0.2"] {
            assert!(guard.host_allowed(good), "{good}");
        }
        for bad in ["evil.example:8025", "evil.example", "127.0.0.1:9999", "10.0.0.1:8025", ""] {
            assert!(!guard.host_allowed(bad), "{bad}");
        }
        let open = Guard::new(live, "0.0.0.0:8025".parse().unwrap());
        assert!(open.host_allowed("mta.example.com:8025"), "off loopback without hostnames: the tokens guard");
    }
}
