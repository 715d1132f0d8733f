//! The admin API's typed client (what `ringmail ctl` uses): the requests and answers
//! of [`super::api`], so the client and the server cannot drift apart; refusals as
//! [`AdminError`], whose text is the message to print.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::api::{
    BounceRequest, Bounced, Checkpoint, CheckpointRequest, DomainRecipients, DomainRequest, DrainRequest, Draining,
    Lanes, LogLevel, LogLevelRequest, MessageView, RebindRequest, Rebinds, Rebound, Reloaded, Resumed, RetriedNow,
    RetryRequest, Stopping, Summary, SuspendRequest, Suspended, Suspensions,
};

/// An admin request may take this long (a backup of a large queue, a bounce of a
/// large domain).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an admin request did not get its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("cannot reach the daemon at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the daemon refused the admin token (401): {0}; give --token or RINGMAIL_ADMIN_TOKEN")]
    Unauthorized(String),
    #[error("{0}: not found (is this a ringmail daemon?)")]
    NotFound(String),
    /// The daemon's own refusal: its status and `error`.
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    /// A 2xx whose body is not the answer this client knows (another version?).
    #[error("{path}: unexpected answer ({reason})")]
    Answer { path: String, reason: String },
    #[error("encoding the request: {0}")]
    Request(String),
}

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

    pub fn summary(&self, top: usize, by: &str) -> Result<Summary, AdminError> {
        self.get(&format!("summary?top={top}&by={by}"))
    }

    pub fn domain_recipients(&self, domain: &str, limit: usize) -> Result<DomainRecipients, AdminError> {
        self.get(&format!("domains/{domain}/recipients?limit={limit}"))
    }

    pub fn message(&self, id: &str) -> Result<MessageView, AdminError> {
        self.get(&format!("messages/{id}"))
    }

    pub fn suspend(&self, request: &SuspendRequest) -> Result<Suspended, AdminError> {
        self.post("suspend", Some(request))
    }

    pub fn resume(&self, request: &DomainRequest) -> Result<Resumed, AdminError> {
        self.post("resume", Some(request))
    }

    pub fn suspensions(&self) -> Result<Suspensions, AdminError> {
        self.get("suspensions")
    }

    pub fn bounce(&self, request: &BounceRequest) -> Result<Bounced, AdminError> {
        self.post("bounce", Some(request))
    }

    pub fn retry_now(&self, request: &RetryRequest) -> Result<RetriedNow, AdminError> {
        self.post("retry-now", Some(request))
    }

    pub fn rebind(&self, request: &RebindRequest) -> Result<Rebound, AdminError> {
        self.post("rebind", Some(request))
    }

    pub fn rebinds(&self) -> Result<Rebinds, AdminError> {
        self.get("rebinds")
    }

    pub fn lanes(&self) -> Result<Lanes, AdminError> {
        self.get("lanes")
    }

    pub fn checkpoint(&self, request: &CheckpointRequest) -> Result<Checkpoint, AdminError> {
        self.post("checkpoint", Some(request))
    }

    pub fn drain(&self, request: &DrainRequest) -> Result<Draining, AdminError> {
        self.post("drain", Some(request))
    }

    pub fn reload(&self) -> Result<Reloaded, AdminError> {
        self.post::<(), _>("reload", None)
    }

    pub fn log_level(&self, request: &LogLevelRequest) -> Result<LogLevel, AdminError> {
        self.post("log-level", Some(request))
    }

    pub fn shutdown(&self) -> Result<Stopping, AdminError> {
        self.post::<(), _>("shutdown", None)
    }

    /// `GET /admin/v1/{path}`.
    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call("GET", path, None)
    }

    /// `POST /admin/v1/{path}` with `body`.
    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: Option<&B>) -> Result<T, AdminError> {
        let body = body.map(serde_json::to_value).transpose().map_err(|e| AdminError::Request(e.to_string()))?;
        self.call("POST", path, Some(body.unwrap_or(json!({}))))
    }

    fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<Value>) -> Result<T, AdminError> {
        let url = format!("{}/admin/v1/{path}", self.url.trim_end_matches('/'));
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) | (_, None) => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            (_, Some(body)) => {
                let mut request = self.agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.send_json(body)
            }
        };
        let unreachable = |reason: String| AdminError::Unreachable { url: self.url.clone(), reason };
        let mut response = result.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        let error =
            || serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("error")?.as_str().map(str::to_string));
        match status {
            200..=299 => serde_json::from_str(&text)
                .map_err(|e| AdminError::Answer { path: path.to_string(), reason: e.to_string() }),
            401 => Err(AdminError::Unauthorized(error().unwrap_or_default())),
            404 if error().is_none() => Err(AdminError::NotFound(url)),
            _ => Err(AdminError::Refused { status, message: error().unwrap_or(text) }),
        }
    }
}
