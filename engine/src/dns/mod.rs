//! Where a domain's mail goes: MX lookup with hickory-resolver (cached with TTLs,
//! negative answers too), preference order with equal preferences shuffled, implicit
//! MX, null MX (RFC 7505), and the `site`: the rolled-up MX host set, so that domains
//! hosted by one provider share a lane.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;
use tokio::sync::Semaphore;

use crate::config::DnsSection;

/// The hosts to try, best first, with the site they make up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The MX host names, sorted and joined (or the domain itself for implicit MX).
    pub site: String,
    /// Addresses in the order to try them.
    pub hosts: Vec<SocketAddr>,
    /// The MX host name each address was found under (same order as `hosts`): the
    /// name a certificate must carry when it has to verify.
    pub names: Vec<Arc<str>>,
}

impl Route {
    /// The MX host name `peer` was found under (the first, if several share it).
    pub fn host_name(&self, peer: SocketAddr) -> Option<&Arc<str>> {
        self.hosts.iter().position(|host| *host == peer).and_then(|index| self.names.get(index))
    }
}

/// Why the resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolverError {
    #[error("dns.nameservers: none configured (ringmail does not use the system resolver)")]
    NoNameservers,
    #[error("dns: {0}")]
    Build(hickory_resolver::net::NetError),
}

/// Why a domain has no route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Null MX: the domain takes no mail (permanent).
    #[error("the domain publishes a null MX (RFC 7505): it accepts no mail")]
    NullMx,
    /// NXDOMAIN, or no MX and no address (permanent).
    #[error("no such domain: {0}")]
    NoSuchDomain(String),
    /// SERVFAIL, timeout, or MX hosts without addresses (retry later).
    #[error("DNS failure: {0}")]
    Temporary(String),
}

impl RouteError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RouteError::Temporary(_))
    }
}

/// The engine's resolver; cheap to clone.
#[derive(Clone)]
pub struct MxResolver {
    resolver: Arc<Resolver<TokioRuntimeProvider>>,
    port: u16,
    /// Lookups in flight at most (`dns.in_flight_max`): held per lookup, never
    /// across a route's several lookups.
    in_flight: Arc<Semaphore>,
    /// A whole route (MX, then each host's addresses) at most this long.
    route_deadline: Duration,
}

/// MX hosts whose addresses are looked up per route at most, best preference first
/// (Postfix's `smtp_mx_address_limit` is 5 too).
pub const MX_HOSTS_MAX: usize = 5;

impl std::fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MxResolver").field("port", &self.port).finish_non_exhaustive()
    }
}

/// The hickory configuration for `[dns]`: its nameservers (each on its own port),
/// its timeout, two attempts, and never /etc/hosts (a host entry must not route
/// mail, and tests must not depend on the machine's file). `ringmail doctor` asks
/// through the same.
pub fn configured(section: &DnsSection) -> Result<(ResolverConfig, ResolverOpts), ResolverError> {
    if section.nameservers.is_empty() {
        return Err(ResolverError::NoNameservers);
    }
    let servers = section
        .nameservers
        .iter()
        .map(|address| {
            let mut server = NameServerConfig::udp_and_tcp(address.ip());
            for connection in &mut server.connections {
                connection.port = address.port();
            }
            server
        })
        .collect();
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_millis(section.timeout_ms);
    options.attempts = 2;
    options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    Ok((ResolverConfig::from_name_servers(servers), options))
}

impl MxResolver {
    /// `port`: where MX hosts listen (25, or a test fleet's port). Needs a tokio runtime.
    pub fn new(section: &DnsSection, port: u16) -> Result<MxResolver, ResolverError> {
        let (config, options) = configured(section)?;
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options;
        builder.options_mut().cache_size = section.cache_size as u64;
        let resolver = builder.build().map_err(ResolverError::Build)?;
        Ok(MxResolver {
            resolver: Arc::new(resolver),
            port,
            in_flight: Arc::new(Semaphore::new(section.in_flight_max)),
            route_deadline: Duration::from_millis(section.route_timeout_ms),
        })
    }

    /// One lookup's permit (`dns.in_flight_max`).
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, RouteError> {
        self.in_flight.acquire().await.map_err(|_| RouteError::Temporary("resolver closed".into()))
    }

    /// The route for `domain` (lowercase, no trailing dot), within `dns.route_timeout_ms`.
    /// A domain whose hosts never answer holds one lookup slot at a time and gives up
    /// at its deadline, so other domains' lookups go on.
    pub async fn route(&self, domain: &str) -> Result<Route, RouteError> {
        match tokio::time::timeout(self.route_deadline, self.lookup_route(domain)).await {
            Ok(route) => route,
            Err(_) => Err(RouteError::Temporary(format!(
                "DNS: no route for {domain} within dns.route_timeout_ms ({} ms)",
                self.route_deadline.as_millis()
            ))),
        }
    }

    async fn lookup_route(&self, domain: &str) -> Result<Route, RouteError> {
        let name = format!("{domain}.");
        let answer = {
            let _permit = self.permit().await?;
            self.resolver.lookup(name.as_str(), RecordType::MX).await
        };
        match answer {
            Ok(lookup) => {
                let mut exchanges: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_string())),
                        _ => None,
                    })
                    .collect();
                if exchanges.iter().any(|(_, host)| host == ".") {
                    return Err(RouteError::NullMx);
                }
                order(&mut exchanges);
                self.addresses(exchanges).await
            }
            Err(error) if error.is_nx_domain() => Err(RouteError::NoSuchDomain(domain.into())),
            Err(error) if error.is_no_records_found() => self.implicit(domain).await,
            Err(error) => Err(RouteError::Temporary(error.to_string())),
        }
    }

    /// No MX: the domain's own address is its mail host (RFC 5321 §5.1).
    async fn implicit(&self, domain: &str) -> Result<Route, RouteError> {
        let answer = {
            let _permit = self.permit().await?;
            self.resolver.lookup_ip(format!("{domain}.").as_str()).await
        };
        match answer {
            Ok(ips) => {
                let hosts: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, self.port)).collect();
                if hosts.is_empty() {
                    return Err(RouteError::NoSuchDomain(domain.into()));
                }
                let names = vec![Arc::from(domain); hosts.len()];
                Ok(Route { site: domain.to_string(), hosts, names })
            }
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => {
                Err(RouteError::NoSuchDomain(format!("{domain} has neither MX nor address records")))
            }
            Err(error) => Err(RouteError::Temporary(error.to_string())),
        }
    }

    async fn addresses(&self, exchanges: Vec<(u16, String)>) -> Result<Route, RouteError> {
        let mut names: Vec<String> =
            exchanges.iter().map(|(_, host)| host.trim_end_matches('.').to_lowercase()).collect();
        let mut hosts = Vec::new();
        let mut host_names = Vec::new();
        let mut last_error = String::from("no MX hosts");
        // The best MX_HOSTS_MAX hosts only (the site is still named by all of them).
        for ((_, host), name) in exchanges.iter().zip(&names).take(MX_HOSTS_MAX) {
            let answer = {
                let _permit = self.permit().await?;
                self.resolver.lookup_ip(host.as_str()).await
            };
            match answer {
                Ok(ips) => {
                    let name: Arc<str> = Arc::from(name.as_str());
                    for ip in ips.iter() {
                        hosts.push(SocketAddr::new(ip, self.port));
                        host_names.push(Arc::clone(&name));
                    }
                }
                Err(error) => last_error = format!("{host}: {error}"),
            }
        }
        if hosts.is_empty() {
            return Err(RouteError::Temporary(format!("no address for any MX host ({last_error})")));
        }
        names.sort();
        names.dedup();
        Ok(Route { site: names.join(","), hosts, names: host_names })
    }
}

/// Preference order; hosts of equal preference in random order (RFC 5321 §5.1).
fn order(exchanges: &mut [(u16, String)]) {
    fastrand::shuffle(exchanges);
    exchanges.sort_by_key(|(preference, _)| *preference); // stable: the shuffle stays within a preference
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_with_equal_ones_shuffled() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut exchanges = vec![(20, "c".to_string()), (10, "a".to_string()), (10, "b".to_string())];
            order(&mut exchanges);
            assert_eq!(exchanges[2].1, "c");
            seen_first.insert(exchanges[0].1.clone());
        }
        assert_eq!(seen_first.len(), 2, "both preference-10 hosts come first sometimes");
    }
}
