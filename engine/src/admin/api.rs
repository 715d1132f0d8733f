//! The admin API's request bodies: one definition, parsed by the server
//! (`server.rs`) and sent by `ringmail ctl` through the client (`client.rs`), so the
//! two cannot drift apart.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    #[serde(default)]
    pub domain: Option<String>,
    /// A site (MX host set, as in `lanes` and the log's `site`): its domains are
    /// suspended in the queue as the scheduler meets them.
    #[serde(default)]
    pub site: Option<String>,
    /// A tenant: its messages are held whatever their domain.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub duration_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DomainRequest {
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BounceRequest {
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RebindRequest {
    pub domain: String,
    pub pool: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    pub path: std::path::PathBuf,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub on: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogLevelRequest {
    pub filter: String,
}

// The answers. Each is what the server serializes and what `ringmail ctl` reads;
// fields that some variants of an answer leave out are skipped when absent, so
// the JSON is the same as the server wrote by hand before these types.

fn is_false(value: &bool) -> bool {
    !*value
}

/// Recipients by state, for the whole queue or one group (domain, site, tenant,
/// campaign).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Counts {
    /// The group's name (absent for the totals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub queued: u64,
    pub in_flight: u64,
    pub deferred: u64,
    pub suspended: u64,
    pub total: u64,
    /// Tenant and campaign groups: the age of their oldest message (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct OldestMessage {
    pub id: String,
    pub age_s: f64,
}

/// `GET summary`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Summary {
    pub totals: Counts,
    pub messages: u64,
    pub oldest: Option<OldestMessage>,
    /// domain, site, tenant or campaign.
    pub by: String,
    pub groups: Vec<Counts>,
    pub suspensions: Vec<Suspension>,
    pub draining: bool,
    pub store_health: String,
}

/// One recipient of a message in the queue.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct RecipientView {
    pub recipient: String,
    /// Queued, InFlight, Deferred or Suspended.
    pub state: String,
    pub attempts: u32,
    pub next_attempt_in_s: f64,
    pub last_response: Option<String>,
    /// Its message (in a domain's listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET domains/{domain}/recipients`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct DomainRecipients {
    pub domain: String,
    pub recipients: Vec<RecipientView>,
}

/// `GET messages/{id}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct MessageView {
    pub id: String,
    pub sender: String,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub metadata: serde_json::Value,
    pub age_s: f64,
    pub size: u64,
    pub recipients: Vec<RecipientView>,
}

/// What a state change in the queue did.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Recipients ended (an administrative bounce).
    pub ended: usize,
    /// Recipients in flight: they are acted on when their attempt comes back.
    pub in_flight: u64,
    pub changed: u64,
    pub error: Option<String>,
}

/// `POST suspend`: a domain or tenant (with the queue's report), or a site.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Suspended {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// When it ends (ms since the epoch); none: until resumed.
    pub until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// `POST resume`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Resumed {
    /// The domain, site or tenant resumed.
    pub domain: Option<String>,
    pub report: Report,
}

/// One suspension: of a site (with the domains it held), a tenant or a domain.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Suspension {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub until_ms: Option<u64>,
    pub remaining_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains: Option<Vec<String>>,
}

/// `GET suspensions`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Suspensions {
    pub suspensions: Vec<Suspension>,
}

/// `POST bounce`: what a dry run would bounce, or what was bounced.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Bounced {
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_bounce: Option<u64>,
    /// Messages of the tenant or campaign (a dry run of either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounced: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// `POST retry-now`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct RetriedNow {
    pub domain: Option<String>,
    pub due_now: u64,
}

/// `POST rebind`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rebound {
    pub domain: String,
    pub pool: Option<String>,
    pub due_now: u64,
}

/// One domain sent through another pool.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rebind {
    pub domain: String,
    pub pool: String,
}

/// `GET rebinds`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rebinds {
    pub rebinds: Vec<Rebind>,
}

/// `GET lanes`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Lanes {
    pub lanes: Vec<crate::shard::LaneView>,
}

/// `POST checkpoint`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub path: std::path::PathBuf,
}

/// `POST drain`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Draining {
    pub draining: bool,
}

/// `POST reload`: the sections applied now and those that wait for a restart.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Reloaded {
    pub applied: Vec<String>,
    pub restart_needed: Vec<String>,
    pub generation: u64,
}

/// `POST log-level`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct LogLevel {
    pub filter: String,
}

/// `POST shutdown`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Stopping {
    pub stopping: bool,
}
