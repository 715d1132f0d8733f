//! What the operator changes at run time and the scheduler, the shards and the admin
//! API share: domains rebound to another egress pool, sites held, and the site each
//! domain last routed to. Kept in memory (a restart returns to the configuration);
//! domain and tenant suspensions live in the queue store instead.

use std::collections::HashMap;
use std::sync::Arc;

/// Domains the operator moved to another egress pool, consulted before the
/// `[[site]]` rules. Kept in memory: a restart returns to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Rebinds {
    pools: Arc<std::sync::RwLock<HashMap<String, String>>>,
}

impl Rebinds {
    pub fn pool_of(&self, domain: &str) -> Option<String> {
        let pools = self.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pools.is_empty() {
            return None;
        }
        pools.get(domain).cloned()
    }

    /// Sends `domain` through `pool` (`None`: back to the configuration).
    pub fn set(&self, domain: &str, pool: Option<String>) {
        let mut pools = self.pools.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pool {
            Some(pool) => pools.insert(domain.to_ascii_lowercase(), pool),
            None => pools.remove(&domain.to_ascii_lowercase()),
        };
    }

    pub fn all(&self) -> Vec<(String, String)> {
        let pools = self.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = pools.iter().map(|(d, p)| (d.clone(), p.clone())).collect();
        all.sort();
        all
    }
}

/// The site each domain routed to when last resolved, bounded (cleared when full).
#[derive(Clone, Debug, Default)]
pub struct SiteMap {
    sites: Arc<std::sync::RwLock<HashMap<String, Arc<str>>>>,
}

/// Domains remembered at most by [`SiteMap`].
const SITE_MAP_MAX: usize = 200_000;

impl SiteMap {
    pub(crate) fn record(&self, domain: &str, site: &str) {
        {
            let sites = self.sites.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if sites.get(domain).is_some_and(|known| &**known == site) {
                return;
            }
        }
        let mut sites = self.sites.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sites.len() >= SITE_MAP_MAX {
            sites.clear();
        }
        sites.insert(domain.to_string(), Arc::from(site));
    }

    pub fn site_of(&self, domain: &str) -> Option<Arc<str>> {
        self.sites.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(domain).cloned()
    }
}

/// Sites (MX host sets) the operator suspended, and the domains suspended in the
/// queue because they route there (so that resuming the site resumes them).
#[derive(Clone, Debug, Default)]
pub struct SiteHolds {
    holds: Arc<std::sync::RwLock<HashMap<String, SiteHold>>>,
}

#[derive(Clone, Debug, Default)]
struct SiteHold {
    until_ms: Option<u64>,
    domains: Vec<String>,
}

impl SiteHolds {
    /// `Some(until)` when `site` is held now.
    pub fn held(&self, site: &str) -> Option<Option<u64>> {
        let holds = self.holds.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if holds.is_empty() {
            return None;
        }
        let hold = holds.get(site)?;
        match hold.until_ms {
            Some(until) if until <= crate::log::now_ms() => None,
            until => Some(until),
        }
    }

    pub fn hold(&self, site: &str, until_ms: Option<u64>) {
        let mut holds = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        holds.entry(site.to_string()).or_default().until_ms = until_ms;
    }

    /// Ends the hold; the domains it suspended, to resume.
    pub fn release(&self, site: &str) -> Option<Vec<String>> {
        let mut holds = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        holds.remove(site).map(|hold| hold.domains)
    }

    pub(crate) fn add_domain(&self, site: &str, domain: &str) {
        let mut holds = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hold) = holds.get_mut(site) {
            if !hold.domains.iter().any(|d| d == domain) {
                hold.domains.push(domain.to_string());
            }
        }
    }

    /// Every held site: its end (ms), and the domains suspended for it so far.
    pub fn all(&self) -> Vec<(String, Option<u64>, Vec<String>)> {
        let holds = self.holds.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = holds.iter().map(|(s, h)| (s.clone(), h.until_ms, h.domains.clone())).collect();
        all.sort();
        all
    }
}
