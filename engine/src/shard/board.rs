//! Where each shard publishes its lanes for the admin API (`ringmail ctl lanes`),
//! about once a second: the only state a shard shares, behind one short lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// One lane as the admin API shows it (`ringmail ctl lanes`).
#[derive(Clone, Debug, serde::Serialize)]
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

/// Every shard's lanes, published about once a second.
#[derive(Debug, Default)]
pub struct LaneBoard {
    shards: std::sync::Mutex<HashMap<usize, Vec<LaneView>>>,
}

impl LaneBoard {
    pub(super) fn publish(&self, shard: usize, lanes: Vec<LaneView>) {
        self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shard, lanes);
    }

    /// All lanes, the busiest (most waiting, then most connections) first.
    pub fn lanes(&self) -> Vec<LaneView> {
        let shards = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<LaneView> = shards.values().flatten().cloned().collect();
        all.sort_by(|a, b| b.ready.cmp(&a.ready).then(b.connections.cmp(&a.connections)).then(a.site.cmp(&b.site)));
        all
    }
}

/// Lanes are published this often.
pub(super) const PUBLISH_EVERY: Duration = Duration::from_secs(1);
