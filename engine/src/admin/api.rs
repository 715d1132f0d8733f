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
