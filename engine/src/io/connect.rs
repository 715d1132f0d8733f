//! Opening connections: the destination allowlist, the egress source address, and a
//! bounded connect time, for either backend.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A network in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A network (`10.0.0.0/8`, `::1`) that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    #[error("{0:?}: not an IP address")]
    Address(String),
    #[error("{0:?}: bad prefix")]
    Prefix(String),
}

impl std::str::FromStr for Network {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, NetworkError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| NetworkError::Address(text.into()))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => {
                prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| NetworkError::Prefix(text.into()))?
            }
            None => max,
        };
        // An IPv4-mapped network is the IPv4 network it maps (addresses are
        // compared in IPv4 form).
        if let (IpAddr::V6(v6), true) = (address, prefix >= 96) {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Ok(Network { address: IpAddr::V4(v4), prefix: prefix - 96 });
            }
        }
        Ok(Network { address, prefix })
    }
}

/// Addresses that are not the public internet: this host, private networks, shared
/// address space, link-local, unique-local, multicast and reserved. Delivery never
/// connects to them unless `delivery.allowlist` names them (see [`Allowlist::delivery`]).
const INTERNAL: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// [`INTERNAL`], parsed once (every connect and every relay check asks).
fn internal_networks() -> &'static [Network] {
    static NETWORKS: std::sync::OnceLock<Vec<Network>> = std::sync::OnceLock::new();
    NETWORKS.get_or_init(|| INTERNAL.iter().filter_map(|cidr| cidr.parse().ok()).collect())
}

/// The [`INTERNAL`] range `ip` is in (IPv4-mapped IPv6 as IPv4; an IPv4 address
/// carried inside NAT64 `64:ff9b::/96`, 6to4 `2002::/16` or IPv4-compatible `::/96`
/// is judged as that IPv4 address), if any.
fn internal_range(ip: IpAddr) -> Option<Network> {
    let ip = canonical(ip);
    let within = |ip: IpAddr| internal_networks().iter().copied().find(|n| n.contains(ip));
    if let Some(range) = within(ip) {
        return Some(range);
    }
    let IpAddr::V6(v6) = ip else { return None };
    let bits = u128::from(v6);
    let embedded = if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 || (bits >> 32 == 0 && bits >> 16 != 0) {
        Some(bits as u32) // NAT64 well-known prefix, IPv4-compatible
    } else if bits >> 112 == 0x2002 {
        Some((bits >> 80) as u32) // 6to4
    } else {
        None
    };
    embedded.and_then(|v4| within(IpAddr::V4(std::net::Ipv4Addr::from(v4))))
}

/// Whether `ip` is an internal address (see [`INTERNAL`] and `internal_range`).
pub fn is_internal(ip: IpAddr) -> bool {
    internal_range(ip).is_some()
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where the engine may connect (and, for `smtp.relay_networks`, who may relay).
/// Every test, demo and benchmark uses loopback only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    /// `None`: anywhere.
    networks: Option<Vec<Network>>,
    /// Internal addresses only by an entry narrower than /0 (delivery).
    internal_needs_entry: bool,
}

impl Allowlist {
    pub fn anywhere() -> Self {
        Allowlist { networks: None, internal_needs_entry: false }
    }

    /// 127.0.0.0/8 and ::1.
    pub fn loopback() -> Self {
        let networks = ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect();
        Allowlist { networks: Some(networks), internal_needs_entry: false }
    }

    pub fn parse<'a>(cidrs: impl IntoIterator<Item = &'a str>) -> Result<Self, NetworkError> {
        let networks = cidrs.into_iter().map(str::parse).collect::<Result<Vec<Network>, NetworkError>>()?;
        Ok(Allowlist { networks: Some(networks), internal_needs_entry: false })
    }

    /// Delivery's: `cidrs` (none: the whole internet), and an internal address
    /// (loopback, private, link-local, unique-local, ...) only where an entry
    /// narrower than /0 names it, so a remote domain's MX record cannot point
    /// ringmail at this host or its network (Postfix refuses such MX hosts too).
    pub fn delivery<'a>(cidrs: Option<impl IntoIterator<Item = &'a str>>) -> Result<Self, NetworkError> {
        let mut list = match cidrs {
            Some(cidrs) => Allowlist::parse(cidrs)?,
            None => Allowlist::anywhere(),
        };
        list.internal_needs_entry = true;
        Ok(list)
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.internal_needs_entry {
            if let Some(range) = internal_range(ip) {
                // Named only by an entry at least as narrow as the internal range:
                // 10.0.0.0/8 names 10.1.2.3, 0.0.0.0/1 (half the internet) does not.
                return self.networks.as_ref().is_some_and(|networks| {
                    networks.iter().any(|network| network.prefix >= range.prefix && network.contains(ip))
                });
            }
        }
        self.networks.as_ref().is_none_or(|networks| networks.iter().any(|n| n.contains(ip)))
    }

    /// `Ok` when delivery may connect to `ip`, else why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), ConnectError> {
        match self.allows(ip) {
            true => Ok(()),
            false if self.internal_needs_entry && is_internal(ip) => Err(ConnectError::Internal(ip)),
            false => Err(ConnectError::Denied(ip)),
        }
    }
}

/// Why a connection was not opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("destination {0} is not in the allowlist")]
    Denied(IpAddr),
    /// Loopback, private, link-local, unique-local ...: only when the allowlist
    /// names it.
    #[error("destination {0} is an internal address (not in delivery.allowlist)")]
    Internal(IpAddr),
    #[error("binding source address {source_address}: {error}")]
    Bind { source_address: IpAddr, error: io::Error },
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {destination}: {error}")]
    Io { destination: SocketAddr, error: io::Error },
}

/// How to open one connection.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The egress address to bind before connecting.
    pub source: Option<IpAddr>,
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        // RFC 5321 leaves connect time to the client; 30 s is common practice.
        ConnectOptions { source: None, timeout: Duration::from_secs(30) }
    }
}

/// Connects with plain tokio (needs a tokio runtime with I/O; tokio-uring's has one).
pub async fn connect_epoll(
    destination: SocketAddr,
    options: &ConnectOptions,
    allowlist: &Allowlist,
) -> Result<tokio::net::TcpStream, ConnectError> {
    allowlist.check(destination.ip())?;
    let io_error = |error| ConnectError::Io { destination, error };
    let socket = match destination {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(io_error)?;
    if let Some(source_address) = options.source {
        socket
            .bind(SocketAddr::new(source_address, 0))
            .map_err(|error| ConnectError::Bind { source_address, error })?;
    }
    let stream = tokio::time::timeout(options.timeout, socket.connect(destination))
        .await
        .map_err(|_| ConnectError::Timeout(destination))?
        .map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    Ok(stream)
}

/// Connects for io_uring: the connect itself goes through tokio (tokio-uring cannot
/// bind a source address), then the socket moves to tokio-uring.
pub async fn connect_uring(
    destination: SocketAddr,
    options: &ConnectOptions,
    allowlist: &Allowlist,
) -> Result<tokio_uring::net::TcpStream, ConnectError> {
    let stream = connect_epoll(destination, options, allowlist).await?;
    let std = stream.into_std().map_err(|error| ConnectError::Io { destination, error })?;
    Ok(tokio_uring::net::TcpStream::from_std(std))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlists_match_by_prefix() {
        let loopback = Allowlist::loopback();
        assert!(loopback.allows("127.0.0.3".parse().unwrap()));
        assert!(loopback.allows("::1".parse().unwrap()));
        assert!(!loopback.allows("10.0.0.1".parse().unwrap()));
        assert!(!loopback.allows("::2".parse().unwrap()));
        let list = Allowlist::parse(["192.0.2.0/24", "2001:db8::/32"]).unwrap();
        assert!(list.allows("192.0.2.200".parse().unwrap()));
        assert!(!list.allows("192.0.3.1".parse().unwrap()));
        assert!(list.allows("2001:db8:1::5".parse().unwrap()));
        assert!(Allowlist::parse(["1.2.3.4/33"]).is_err());
        assert!(Allowlist::parse(["nonsense"]).is_err());
        assert!(Allowlist::anywhere().allows("198.51.100.7".parse().unwrap()));
        assert!(Allowlist::parse(["0.0.0.0/0"]).unwrap().allows("203.0.113.9".parse().unwrap()));
        // Relay networks see IPv4-mapped peers (a [::] listener) as IPv4.
        assert!(Allowlist::parse(["127.0.0.0/8"]).unwrap().allows("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn delivery_reaches_internal_addresses_only_where_the_allowlist_names_them() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let open = Allowlist::delivery(None::<Vec<&str>>).unwrap();
        assert!(open.allows(ip("198.51.100.7")) && open.allows(ip("2001:db8::1")));
        for internal in
            ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"]
        {
            assert!(!open.allows(ip(internal)), "{internal}");
            assert!(matches!(open.check(ip(internal)), Err(ConnectError::Internal(_))), "{internal}");
        }
        for internal in ["::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"] {
            assert!(!open.allows(ip(internal)), "{internal}");
        }
        // A catch-all does not name them; a narrower entry does.
        let catch_all = Allowlist::delivery(Some(["0.0.0.0/0", "::/0"])).unwrap();
        assert!(!catch_all.allows(ip("127.0.0.1")) && !catch_all.allows(ip("::ffff:127.0.0.1")));
        assert!(catch_all.allows(ip("203.0.113.9")));
        let named = Allowlist::delivery(Some(["0.0.0.0/0", "10.0.0.0/8", "127.0.0.0/8"])).unwrap();
        assert!(named.allows(ip("10.9.9.9")) && named.allows(ip("::ffff:127.0.0.2")));
        assert!(!named.allows(ip("192.168.0.1")));
        // A split default route is not a name for internal ranges.
        let halves = Allowlist::delivery(Some(["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"])).unwrap();
        assert!(!halves.allows(ip("10.0.0.1")) && !halves.allows(ip("127.0.0.1")) && halves.allows(ip("8.8.8.8")));
        // IPv4 carried in IPv6: NAT64, 6to4, IPv4-compatible.
        for wrapped in
            ["64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a00:1::", "::7f00:1", "::a00:1"]
        {
            assert!(!open.allows(ip(wrapped)), "{wrapped}");
        }
        assert!(open.allows(ip("64:ff9b::808:808")), "NAT64 of a public address");
        // Mapped entries are IPv4 entries.
        let mapped = Allowlist::parse(["::ffff:10.0.0.0/104"]).unwrap();
        assert!(mapped.allows(ip("10.1.1.1")) && mapped.allows(ip("::ffff:10.1.1.1")));
    }
}
