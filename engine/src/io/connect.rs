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

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| format!("{text:?}: not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("{text:?}: bad prefix"))?,
            None => max,
        };
        Ok(Network { address, prefix })
    }
}

/// Where the engine may connect. Every test, demo and benchmark uses `loopback()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    /// `None`: anywhere (production without an allowlist).
    networks: Option<Vec<Network>>,
}

impl Allowlist {
    pub fn anywhere() -> Self {
        Allowlist { networks: None }
    }

    /// 127.0.0.0/8 and ::1.
    pub fn loopback() -> Self {
        let networks = ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect();
        Allowlist { networks: Some(networks) }
    }

    pub fn parse<'a>(cidrs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let networks = cidrs.into_iter().map(str::parse).collect::<Result<Vec<Network>, String>>()?;
        Ok(Allowlist { networks: Some(networks) })
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.networks.as_ref().is_none_or(|networks| networks.iter().any(|n| n.contains(ip)))
    }
}

/// Why a connection was not opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("destination {0} is not in the allowlist")]
    Denied(IpAddr),
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
    if !allowlist.allows(destination.ip()) {
        return Err(ConnectError::Denied(destination.ip()));
    }
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
    }
}
