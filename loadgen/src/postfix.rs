//! A private Postfix instance as the MTA under test: its own configuration, queue and
//! log in a directory of ours, `smtpd` on one loopback address and port, relaying to
//! the scenario's sink fleet through a transport map (Postfix resolves through the
//! system resolver, which loadgen must never send `.test` names to). Starting it
//! needs root (Postfix's master runs as root and drops to the `postfix` user).
//!
//! Routes: a provider's domains go to its first MX by preference as
//! `smtp:[address]:port`; null-MX and NXDOMAIN domains bounce, SERVFAIL domains are
//! deferred, anything else is refused (`default_transport = error:`), so nothing
//! ever leaves loopback. Bounces to the sender's domain are discarded locally.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::scenario::{DnsMode, Scenario};

/// A running private Postfix; stopped on drop.
#[derive(Debug)]
pub struct Postfix {
    dir: tempfile::TempDir,
    pub address: SocketAddr,
}

/// How the instance relays.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    /// Where its smtpd listens (loopback; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The source address of its deliveries.
    pub egress: IpAddr,
    /// The envelope sender's domain: bounces to it are discarded.
    pub sender_domain: String,
    /// First retry of a deferred message (Postfix's default is 300 s).
    pub backoff: Duration,
    /// More main.cf lines (e.g. `smtpd_client_restrictions = static:HOLD` to measure
    /// ingest into the hold queue).
    pub extra_main_cf: String,
}

/// The transport map lines that route `scenario` to its sinks.
pub fn transport_map(scenario: &Scenario) -> String {
    let mut map = String::new();
    for provider in &scenario.providers {
        let first = provider.mx.iter().min_by_key(|mx| mx.preference);
        let route = match (provider.dns, first) {
            (DnsMode::NullMx, _) => "error:5.1.10 null MX (RFC 7505)".to_string(),
            (DnsMode::Nxdomain, _) => "error:5.1.2 no such domain".to_string(),
            (DnsMode::Servfail, _) => "retry:4.4.3 DNS SERVFAIL".to_string(),
            (_, Some(mx)) => format!("smtp:[{}]:{}", mx.address, mx.port),
            (_, None) => "error:5.4.4 no MX in the scenario".to_string(),
        };
        for domain in &provider.domains {
            map.push_str(&format!("{domain} {route}\n"));
        }
    }
    map
}

fn postfix_command(config_dir: &Path, action: &str) -> std::io::Result<std::process::Output> {
    // `script` gives postfix a terminal, so its fatal errors reach us instead of syslog.
    let command = format!("postfix -c {} {action}", config_dir.display());
    Command::new("script").args(["-qec", &command, "/dev/null"]).output()
}

impl Postfix {
    /// Starts the instance and waits until its smtpd accepts connections.
    pub fn start(scenario: &Scenario, config: &PostfixConfig) -> anyhow::Result<Postfix> {
        if !config.listen.ip().is_loopback() || !config.egress.is_loopback() {
            anyhow::bail!("a loadgen Postfix listens and sends on loopback only");
        }
        let is_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
        if !is_root {
            anyhow::bail!("starting a private Postfix needs root");
        }
        let listen = match config.listen.port() {
            0 => std::net::TcpListener::bind(config.listen)?.local_addr()?,
            _ => config.listen,
        };
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        let chown = Command::new("chown").arg("postfix").arg(root.join("data")).status()?;
        anyhow::ensure!(chown.success(), "chown postfix {}", root.join("data").display());
        std::fs::write(root.join("etc/transport"), transport_map(scenario))?;
        std::fs::write(root.join("etc/master.cf"), master_cf(listen)?)?;
        std::fs::write(root.join("etc/main.cf"), main_cf(root, config))?;
        let started = postfix_command(&root.join("etc"), "start")?;
        anyhow::ensure!(started.status.success(), "postfix start: {}", String::from_utf8_lossy(&started.stdout));
        let postfix = Postfix { dir, address: listen };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(listen).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "postfix did not listen on {listen}:\n{}", postfix.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(postfix)
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Messages in its hold queue now.
    pub fn held(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() {
                        count(&path)
                    } else {
                        1
                    }
                })
                .sum()
        }
        count(&self.dir.path().join("queue/hold"))
    }

    /// Removes everything from its queues (`postsuper -d ALL`).
    pub fn purge(&self) -> std::io::Result<()> {
        let config = self.dir.path().join("etc");
        Command::new("postsuper").arg("-c").arg(config).args(["-d", "ALL"]).output().map(|_| ())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = postfix_command(&self.dir.path().join("etc"), "stop");
    }
}

/// Debian's master.cf with smtpd on `listen` and nothing chrooted (the private
/// instance has no chroot tree).
fn master_cf(listen: SocketAddr) -> std::io::Result<String> {
    let stock = std::fs::read_to_string("/etc/postfix/master.cf")?;
    let mut out = String::new();
    for line in stock.lines() {
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("smtp ") && fields.get(1) == Some(&"inet") {
            out.push_str(&format!("{listen} inet n - n - - smtpd\n"));
            continue;
        }
        let service = fields.len() >= 8 && !line.starts_with(char::is_whitespace) && !line.starts_with('#');
        if service && fields[4] == "y" {
            fields[4] = "n";
            out.push_str(&fields.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Ok(out)
}

fn main_cf(root: &Path, config: &PostfixConfig) -> String {
    let backoff = config.backoff.as_secs().max(1);
    let root = root.display();
    format!(
        "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = postfix.loadgen.test
mydestination = {sender}
local_transport = discard:
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
transport_maps = texthash:{root}/etc/transport
default_transport = error:5.3.0 not routed by the loadgen scenario
relay_transport = error:5.3.0 not routed by the loadgen scenario
smtp_bind_address = {egress}
smtp_dns_support_level = disabled
smtp_tls_security_level = may
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
queue_run_delay = {backoff}s
minimal_backoff_time = {backoff}s
maximal_backoff_time = {max_backoff}s
smtpd_client_connection_count_limit = 0
{extra}
",
        sender = config.sender_domain,
        egress = config.egress,
        max_backoff = backoff * 2,
        extra = config.extra_main_cf,
    )
}
