//! Where each shard publishes its lanes for the admin API (`ringmail ctl lanes`),
//! about once a second: the only state a shard shares, behind one short lock. A
//! shard sends what changed (busy lanes, lanes that went quiet, lanes it evicted),
//! not every lane it knows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::LaneKey;

/// One lane as the admin API shows it (`ringmail ctl lanes`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LaneView {
    pub site: String,
    pub source: Option<IpAddr>,
    pub connections: usize,
    /// Connections allowed now (AIMD), and the lane's maximum.
    pub limit: f64,
    pub limit_max: usize,
    /// Transactions waiting in the lane.
    pub ready: usize,
    /// Delivered transactions a second since the last publication.
    pub rate: f64,
    pub backoff_remaining_s: f64,
    pub hosts_down: usize,
    pub last_error: String,
}

/// One publication of a shard: lanes to show as given, lanes to forget.
#[derive(Debug, Default)]
pub struct LaneChanges {
    pub updated: Vec<LaneView>,
    pub removed: Vec<LaneKey>,
}

/// Every shard's lanes, kept up to date by their publications.
#[derive(Debug, Default)]
pub struct LaneBoard {
    shards: std::sync::Mutex<HashMap<usize, HashMap<LaneKey, LaneView>>>,
}

impl LaneBoard {
    pub fn publish(&self, shard: usize, changes: LaneChanges) {
        let mut shards = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let lanes = shards.entry(shard).or_default();
        for key in &changes.removed {
            lanes.remove(key);
        }
        for view in changes.updated {
            lanes.insert(LaneKey { site: view.site.clone(), source: view.source }, view);
        }
    }

    /// All lanes, the busiest (most waiting, then most connections) first.
    pub fn lanes(&self) -> Vec<LaneView> {
        let shards = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<LaneView> = shards.values().flat_map(HashMap::values).cloned().collect();
        all.sort_by(|a, b| b.ready.cmp(&a.ready).then(b.connections.cmp(&a.connections)).then(a.site.cmp(&b.site)));
        all
    }
}

/// Lanes are published this often.
pub(super) const PUBLISH_EVERY: Duration = Duration::from_secs(1);
