//! The admin API's client, for `ringmail ctl`: requests from [`super::api`], answers
//! as JSON values, refusals as the message to print (the daemon's own `error`, or
//! what to do about a 401).

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

/// An admin request may take this long (a backup of a large queue, a bounce of a
/// large domain).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The daemon at one URL, with an admin token.
pub struct AdminClient {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("AdminClient").field("url", &self.url).finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client of the daemon's control plane at `url` (e.g. `http://127.0.0.1:8025`).
    pub fn new(url: &str, token: Option<String>) -> AdminClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        AdminClient { agent, url: url.to_string(), token }
    }

    /// `GET /admin/v1/{path}`: the JSON answer, or the error to print.
    pub fn get(&self, path: &str) -> Result<Value, String> {
        self.call("GET", path, None)
    }

    /// `POST /admin/v1/{path}` with `body` (one of [`super::api`]'s requests).
    pub fn post<T: Serialize>(&self, path: &str, body: Option<&T>) -> Result<Value, String> {
        let body = body.map(serde_json::to_value).transpose().map_err(|e| format!("encoding the request: {e}"))?;
        self.call("POST", path, body)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/admin/v1/{path}", self.url.trim_end_matches('/'));
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            (_, body) => {
                let mut request = self.agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.send_json(body.unwrap_or(json!({})))
            }
        };
        let mut response = result.map_err(|e| format!("cannot reach the daemon at {}: {e}", self.url))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| format!("reading the answer: {e}"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "error": text }));
        match status {
            200..=299 => Ok(value),
            401 => Err(format!(
                "the daemon refused the admin token (401): {}; give --token or RINGMAIL_ADMIN_TOKEN",
                value["error"].as_str().unwrap_or_default()
            )),
            404 if value.get("error").is_none() => Err(format!("{url}: not found (is this a ringmail daemon?)")),
            _ => Err(format!("{status}: {}", value["error"].as_str().unwrap_or(&text))),
        }
    }
}
