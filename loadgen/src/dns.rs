//! `loadgen dns`: an authoritative DNS server on loopback for the scenario's `.test`
//! domains, built on hickory-server with a request handler of our own (so a domain
//! can answer NXDOMAIN, SERVFAIL or slowly on purpose).
//!
//! For each provider, per its `dns` mode, every domain gets: `mx` — MX records to the
//! provider's hosts (their preferences as given); `implicit_mx` — no MX, an A record
//! (RFC 5321 §5.1 implicit MX); `null_mx` — `MX 0 .` (RFC 7505); `nxdomain`,
//! `servfail`, `slow` (answers after `dns_delay_ms`), or `drop_hosts` (MX answered,
//! the MX hosts' address queries never). Every MX host gets an A
//! record (its loopback address) and, when `ipv6` is set, an AAAA record for ::1.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::scenario::{DnsMode, Scenario};

/// Answers last this long (a test zone changes with the scenario, not over time).
const TTL_SECONDS: u32 = 300;

/// What a domain does when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Answer,
    NxDomain,
    ServFail,
    Slow(Duration),
    /// Never answered (the query is held, then dropped).
    Drop,
}

/// A dropped query is held this long before the handler lets it go unanswered.
const DROP_HOLD: Duration = Duration::from_secs(60);

/// The zone generated from a scenario.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
    /// Names the zone knows (answered NOERROR even without records of a type).
    names: HashMap<String, Behaviour>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Result<Name, String> {
    Name::from_ascii(format!("{}.", key(name))).map_err(|error| format!("{name}: {error}"))
}

impl Zone {
    pub fn from_scenario(scenario: &Scenario) -> Result<Zone, String> {
        let mut zone = Zone::default();
        for provider in &scenario.providers {
            for mx in &provider.mx {
                zone.add_address(&mx.host, mx.address)?;
                if provider.ipv6 {
                    zone.add_address(&mx.host, IpAddr::V6(Ipv6Addr::LOCALHOST))?;
                }
            }
            for domain in &provider.domains {
                let behaviour = match provider.dns {
                    DnsMode::Nxdomain => Behaviour::NxDomain,
                    DnsMode::Servfail => Behaviour::ServFail,
                    DnsMode::Slow => Behaviour::Slow(Duration::from_millis(provider.dns_delay_ms)),
                    _ => Behaviour::Answer,
                };
                zone.names.insert(key(domain), behaviour);
                match provider.dns {
                    DnsMode::DropHosts => {
                        for mx in &provider.mx {
                            zone.add(domain, RData::MX(MX::new(mx.preference, fqdn(&mx.host)?)))?;
                            zone.names.insert(key(&mx.host), Behaviour::Drop);
                        }
                    }
                    DnsMode::Mx | DnsMode::Slow => {
                        for mx in &provider.mx {
                            zone.add(domain, RData::MX(MX::new(mx.preference, fqdn(&mx.host)?)))?;
                        }
                    }
                    DnsMode::ImplicitMx => zone.add_address(domain, provider.mx[0].address)?,
                    DnsMode::NullMx => zone.add(domain, RData::MX(MX::new(0, Name::root())))?,
                    DnsMode::Nxdomain | DnsMode::Servfail => {}
                }
            }
        }
        for record in &scenario.txt {
            let strings =
                record.value.as_bytes().chunks(255).map(|chunk| String::from_utf8_lossy(chunk).into_owned()).collect();
            zone.add(&record.name, RData::TXT(TXT::new(strings)))?;
        }
        for record in &scenario.addresses {
            zone.add_address(&record.name, record.address)?;
        }
        for record in &scenario.ptr {
            let reverse = Name::from(record.address).to_ascii();
            zone.add(&reverse, RData::PTR(PTR(fqdn(&record.name)?)))?;
        }
        Ok(zone)
    }

    fn add_address(&mut self, name: &str, address: IpAddr) -> Result<(), String> {
        match address {
            IpAddr::V4(v4) => self.add(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RData::AAAA(AAAA(v6))),
        }
    }

    fn add(&mut self, name: &str, data: RData) -> Result<(), String> {
        let record = Record::from_rdata(fqdn(name)?, TTL_SECONDS, data);
        let record_type = record.record_type();
        self.names.entry(key(name)).or_insert(Behaviour::Answer);
        self.records.entry((key(name), record_type)).or_default().push(record);
        Ok(())
    }

    /// Whether `name` (not itself in the zone) is under a name of the zone, or under
    /// the parent of one when that parent has two labels or more (`a.b.test` makes
    /// the zone answer for `*.b.test`; `b.test` does not make it answer for `*.test`).
    fn encloses(&self, name: &str) -> bool {
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if self.names.contains_key(parent) {
                return true;
            }
            let labels = parent.split('.').count();
            if labels >= 2
                && self.names.keys().any(|known| known.strip_suffix(parent).is_some_and(|head| head.ends_with('.')))
            {
                return true;
            }
            rest = parent;
        }
        false
    }

    /// The zone in master-file form, sorted, for `loadgen dns --print`.
    pub fn render(&self) -> String {
        let mut lines: Vec<String> = self.records.values().flatten().map(|record| format!("{record}")).collect();
        for (name, behaviour) in &self.names {
            if *behaviour != Behaviour::Answer {
                lines.push(format!("; {name}. answers {behaviour:?}"));
            }
        }
        lines.sort();
        lines.join("\n") + "\n"
    }
}

/// The request handler: answers from the zone, authoritatively.
#[derive(Clone, Debug)]
struct ZoneHandler {
    zone: Arc<Zone>,
    /// Set: every query for a name of the zone answers SERVFAIL (an outage burst).
    outage: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let queries = request.queries.queries();
        let Some(query) = queries.first() else {
            return respond_error(request, ResponseCode::FormErr, response_handle).await;
        };
        let name = key(&query.name().to_string());
        let behaviour = self.zone.names.get(&name).copied();
        match behaviour {
            // Under a name the zone has (or beside one, under its parent): no such
            // name, as the authority of that domain would say (a DMARC record at
            // `_dmarc.news.example.test` that is not published, a blocklist's
            // unlisted address).
            None if self.zone.encloses(&name) => {
                let code = match self.outage.load(Ordering::Relaxed) {
                    true => ResponseCode::ServFail,
                    false => ResponseCode::NXDomain,
                };
                return respond_error(request, code, response_handle).await;
            }
            // Not ours: a name outside the zone is refused, as an authority would.
            None => return respond_error(request, ResponseCode::Refused, response_handle).await,
            Some(_) if self.outage.load(Ordering::Relaxed) => {
                return respond_error(request, ResponseCode::ServFail, response_handle).await
            }
            Some(Behaviour::NxDomain) => return respond_error(request, ResponseCode::NXDomain, response_handle).await,
            Some(Behaviour::ServFail) => return respond_error(request, ResponseCode::ServFail, response_handle).await,
            Some(Behaviour::Slow(delay)) => tokio::time::sleep(delay).await,
            Some(Behaviour::Drop) => {
                tokio::time::sleep(DROP_HOLD).await;
                return respond_error(request, ResponseCode::ServFail, response_handle).await;
            }
            Some(Behaviour::Answer) => {}
        }
        let empty = Vec::new();
        let answers = self.zone.records.get(&(name, query.query_type())).unwrap_or(&empty);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let response = MessageResponseBuilder::new(&request.queries, None).build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => error_info(request),
        }
    }
}

async fn respond_error<R: ResponseHandler>(request: &Request, code: ResponseCode, mut handle: R) -> ResponseInfo {
    let builder = MessageResponseBuilder::new(&request.queries, None);
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    metadata.response_code = code;
    let response =
        builder.build(metadata, std::iter::empty(), std::iter::empty(), std::iter::empty(), std::iter::empty());
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(_) => error_info(request),
    }
}

fn error_info(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    hickory_proto::op::Header { metadata, counts: Default::default() }.into()
}

/// A running DNS server (UDP and TCP on one loopback address and port).
#[derive(Debug)]
pub struct DnsServer {
    pub address: SocketAddr,
    outage: Arc<AtomicBool>,
}

impl DnsServer {
    /// While `on`, every query for the zone's names answers SERVFAIL (`loadgen
    /// chaos` makes bursts of it).
    pub fn set_servfail(&self, on: bool) {
        self.outage.store(on, Ordering::Relaxed);
    }
}

/// UDP and TCP on one address and port. With port 0, the port the UDP bind got may
/// be taken for TCP (by some connection's ephemeral port): then another is tried.
fn bind_both(address: SocketAddr) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener, SocketAddr)> {
    let mut tries = 0;
    loop {
        let udp = std::net::UdpSocket::bind(address)
            .map_err(|error| std::io::Error::new(error.kind(), format!("binding {address}/udp: {error}")))?;
        let bound = udp.local_addr()?;
        match std::net::TcpListener::bind(bound) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(error) if address.port() == 0 && error.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
            }
            Err(error) => {
                return Err(std::io::Error::new(error.kind(), format!("binding {bound}/tcp: {error}")));
            }
        }
    }
}

/// Starts the server on `address` (port 0: any free port) on its own thread.
pub fn start(zone: Zone, address: SocketAddr) -> std::io::Result<DnsServer> {
    if !address.ip().is_loopback() {
        return Err(std::io::Error::other(format!("{address}: loadgen's DNS listens on loopback only")));
    }
    let (udp, tcp, address) = bind_both(address)?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let outage = Arc::new(AtomicBool::new(false));
    let handler = ZoneHandler { zone: Arc::new(zone), outage: Arc::clone(&outage) };
    std::thread::Builder::new().name("loadgen-dns".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => return eprintln!("loadgen dns: starting the runtime: {error}"),
        };
        runtime.block_on(async move {
            let (Ok(udp), Ok(tcp)) = (tokio::net::UdpSocket::from_std(udp), tokio::net::TcpListener::from_std(tcp))
            else {
                return;
            };
            let mut server = Server::new(handler);
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
            let _ = server.block_until_done().await;
        });
    })?;
    Ok(DnsServer { address, outage })
}
