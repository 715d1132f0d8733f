//! `ringmail ctl`: the operator's command line over the admin API ([`crate::admin`]),
//! in the manner of `postqueue`/`postsuper`, `kcli` and `pmta`. Tables for people,
//! `--json` for scripts. The daemon is found at `--url` (or `RINGMAIL_URL`, default
//! `http://127.0.0.1:8025`) with the token in `--token` (or `RINGMAIL_ADMIN_TOKEN`).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::admin::api::{
    BounceRequest, CheckpointRequest, DomainRequest, DrainRequest, LogLevelRequest, RebindRequest, RetryRequest,
    SuspendRequest,
};
use crate::admin::client::AdminClient;

#[derive(Args, Debug)]
pub struct Ctl {
    /// The daemon's control plane.
    #[arg(long, env = "RINGMAIL_URL", default_value = "http://127.0.0.1:8025")]
    pub url: String,
    /// An admin bearer token (http.admin_tokens).
    #[arg(long, env = "RINGMAIL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the daemon's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// The queue: summary, or one domain's recipients.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// One message: envelope and each recipient's state.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Hold a domain's mail (queued, and new arrivals), or a site's (every domain
    /// routed to that MX host set), until resumed or for a while.
    Suspend {
        #[command(flatten)]
        target: Target,
        /// How long (90s, 15m, 2h, 1d); none: until `resume`.
        #[arg(long)]
        duration: Option<String>,
    },
    /// Release a suspended domain, site or tenant.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Suspended domains and when each suspension ends.
    Suspensions,
    /// Administrative bounce of a domain's, a message's, a tenant's or a campaign's
    /// recipients, logged as AdminBounce.
    #[command(group(clap::ArgGroup::new("selector").required(true).multiple(false)))]
    Bounce {
        #[arg(long, group = "selector")]
        domain: Option<String>,
        #[arg(long, group = "selector")]
        message: Option<String>,
        #[arg(long, group = "selector")]
        tenant: Option<String>,
        #[arg(long, group = "selector")]
        campaign: Option<String>,
        /// Why (it goes into every AdminBounce record).
        #[arg(long)]
        reason: String,
        /// Only count what would be bounced.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make deferred recipients due now (one domain, or all).
    RetryNow {
        #[arg(long)]
        domain: Option<String>,
    },
    /// Send a domain's mail through another egress pool (until restart); `--reset`
    /// returns it to the configuration.
    Rebind {
        #[arg(long)]
        domain: String,
        #[arg(long, required_unless_present = "reset")]
        pool: Option<String>,
        #[arg(long, conflicts_with = "pool")]
        reset: bool,
    },
    /// Domains rebound to another pool.
    Rebinds,
    /// Per lane (site × egress source): connections, waiting, rate, backoff, last error.
    Lanes,
    /// A consistent copy of the queue, taken while running (a RocksDB checkpoint):
    /// `--to` is a new directory on the daemon's machine.
    Backup {
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Stop taking mail in (SMTP 421, HTTP 503) and keep delivering what is queued;
    /// `--off` takes mail in again.
    Drain {
        #[arg(long)]
        off: bool,
    },
    /// Read the configuration file again (as SIGHUP): what changed now, what needs
    /// a restart.
    Reload,
    /// Set the log filter (`info`, `debug`, `ringmail=debug,info` ...).
    LogLevel { filter: String },
    /// Stop the daemon gracefully (as SIGTERM).
    Shutdown,
}

/// What `suspend` and `resume` act on: exactly one of these.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    #[arg(long)]
    domain: Option<String>,
    /// A site as `ringmail ctl lanes` names it (its MX hosts).
    #[arg(long)]
    site: Option<String>,
    /// A tenant: its messages, whatever their domain.
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Totals by state, the oldest message, the largest domains.
    Summary {
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// Group by domain or site (instant), tenant or campaign (a scan of the queue).
        #[arg(long, default_value = "domain", value_parser = ["domain", "site", "tenant", "campaign"])]
        by: String,
    },
    /// A domain's recipients: state, attempts, next attempt, last response.
    List {
        #[arg(long)]
        domain: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum MessageCommand {
    Show { id: String },
}

/// `90s`, `15m`, `2h`, `1d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration (90s, 15m, 2h, 1d)"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m, h or d)")),
    };
    Ok(Duration::from_secs(seconds))
}

#[derive(Parser, Debug)]
#[command(name = "ringmail ctl")]
struct Line {
    #[command(flatten)]
    ctl: Ctl,
}

/// `ringmail ctl`'s arguments (without the program name), parsed.
pub fn parse(args: &[&str]) -> Result<Ctl, String> {
    Line::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).map(|l| l.ctl).map_err(|e| e.to_string())
}

/// Runs one command, printing its table (or its JSON with `--json`); the error is
/// the message to print.
pub fn run(ctl: Ctl) -> Result<(), String> {
    let json = ctl.json;
    let (answer, table) = execute(ctl)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else {
        println!("{table}");
    }
    Ok(())
}

/// Runs one command: the daemon's JSON answer and the table made of it.
pub fn execute(ctl: Ctl) -> Result<(Value, String), String> {
    let client = AdminClient::new(&ctl.url, ctl.token.clone());
    let (answer, table): (Value, fn(&Value) -> String) = match ctl.command {
        CtlCommand::Queue(QueueCommand::Summary { top, by }) => {
            (client.get(&format!("summary?top={top}&by={by}"))?, summary_table)
        }
        CtlCommand::Queue(QueueCommand::List { domain, limit }) => {
            (client.get(&format!("domains/{domain}/recipients?limit={limit}"))?, list_table)
        }
        CtlCommand::Message(MessageCommand::Show { id }) => (client.get(&format!("messages/{id}"))?, message_table),
        CtlCommand::Suspend { target, duration } => {
            let seconds = duration.as_deref().map(parse_duration).transpose()?.map(|d| d.as_secs());
            let request = SuspendRequest {
                domain: target.domain,
                site: target.site,
                tenant: target.tenant,
                duration_seconds: seconds,
            };
            (client.post("suspend", Some(&request))?, |v| match v["site"].as_str() {
                Some(site) => format!("site {site} suspended: its domains are held as they come up"),
                None => report_line(v),
            })
        }
        CtlCommand::Resume { target } => {
            let request = DomainRequest { domain: target.domain, site: target.site, tenant: target.tenant };
            (client.post("resume", Some(&request))?, report_line)
        }
        CtlCommand::Suspensions => (client.get("suspensions")?, suspensions_table),
        CtlCommand::Bounce { domain, message, tenant, campaign, reason, dry_run } => {
            let request = BounceRequest { domain, message, tenant, campaign, reason, dry_run };
            (client.post("bounce", Some(&request))?, bounce_line)
        }
        CtlCommand::RetryNow { domain } => (client.post("retry-now", Some(&RetryRequest { domain }))?, |v| {
            format!("{} deferred recipients due now", number(&v["due_now"]))
        }),
        CtlCommand::Rebind { domain, pool, reset: _ } => {
            let answer = client.post("rebind", Some(&RebindRequest { domain, pool }))?;
            (answer, |v| match v["pool"].as_str() {
                Some(pool) => format!(
                    "{} goes through pool {pool}; {} deferred recipients due now",
                    number(&v["domain"]),
                    number(&v["due_now"])
                ),
                None => format!("{} follows the configuration again", number(&v["domain"])),
            })
        }
        CtlCommand::Rebinds => (client.get("rebinds")?, |v| {
            let rows = rows(&v["rebinds"], |r| vec![number(&r["domain"]), number(&r["pool"])]);
            if rows.is_empty() {
                return "no rebinds".into();
            }
            table(&["DOMAIN", "POOL"], &rows)
        }),
        CtlCommand::Lanes => (client.get("lanes")?, lanes_table),
        CtlCommand::Backup { to } => {
            let to = if to.is_absolute() { to } else { std::env::current_dir().map_err(|e| e.to_string())?.join(to) };
            (client.post("checkpoint", Some(&CheckpointRequest { path: to }))?, |v| {
                format!("backup written to {}", v["path"].as_str().unwrap_or("?"))
            })
        }
        CtlCommand::Drain { off } => (client.post("drain", Some(&DrainRequest { on: !off }))?, |v| {
            if v["draining"].as_bool() == Some(true) {
                "draining: new mail refused (SMTP 421, HTTP 503); queued mail is still delivered".into()
            } else {
                "taking mail in again".into()
            }
        }),
        CtlCommand::Reload => (client.post::<()>("reload", None)?, |v| {
            let list = |key: &str| {
                let items: Vec<String> = v[key].as_array().map(|a| a.iter().map(number).collect()).unwrap_or_default();
                if items.is_empty() {
                    "nothing".to_string()
                } else {
                    items.join(", ")
                }
            };
            format!("reloaded: applied {}; needs a restart: {}", list("applied"), list("restart_needed"))
        }),
        CtlCommand::LogLevel { filter } => (client.post("log-level", Some(&LogLevelRequest { filter }))?, |v| {
            format!("log filter: {}", number(&v["filter"]))
        }),
        CtlCommand::Shutdown => (client.post::<()>("shutdown", None)?, |_| "the daemon is stopping".into()),
    };
    let text = table(&answer);
    Ok((answer, text))
}

fn number(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seconds(value: &Value) -> String {
    match value.as_f64() {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        Some(s) => format!("{:.1}d", s / 86_400.0),
    }
}

/// Left-aligned first column, right-aligned numbers, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, width))| if i == 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|row| line(row.clone())));
    out.join("\n")
}

fn summary_table(v: &Value) -> String {
    let t = &v["totals"];
    let mut out = format!(
        "queued {}  in flight {}  deferred {}  suspended {}  total {}  messages {}\n",
        number(&t["queued"]),
        number(&t["in_flight"]),
        number(&t["deferred"]),
        number(&t["suspended"]),
        number(&t["total"]),
        number(&v["messages"])
    );
    if let Some(oldest) = v["oldest"].as_object() {
        out.push_str(&format!("oldest message {} ({} old)\n", number(&oldest["id"]), seconds(&oldest["age_s"])));
    }
    if v["draining"].as_bool() == Some(true) {
        out.push_str("intake DRAINING: new mail is refused\n");
    }
    out.push_str(&format!("store {}\n\n", number(&v["store_health"])));
    let rows = rows(&v["groups"], |g| {
        let mut row: Vec<String> =
            ["name", "queued", "in_flight", "deferred", "suspended", "total"].iter().map(|k| number(&g[*k])).collect();
        row.push(seconds(&g["oldest_age_s"]));
        row
    });
    let by = v["by"].as_str().unwrap_or("domain").to_uppercase();
    out.push_str(&table(&[&by, "QUEUED", "IN FLIGHT", "DEFERRED", "SUSPENDED", "TOTAL", "OLDEST"], &rows));
    out
}

fn recipient_rows(recipients: &Value, with_message: bool) -> Vec<Vec<String>> {
    rows(recipients, |r| {
        let mut row = Vec::new();
        if with_message {
            row.push(number(&r["message"]));
        }
        row.extend([
            number(&r["recipient"]),
            number(&r["state"]),
            number(&r["attempts"]),
            seconds(&r["next_attempt_in_s"]),
            r["last_response"].as_str().unwrap_or("-").chars().take(60).collect(),
        ]);
        row
    })
}

/// One table row per element of the JSON array `list` (none when it is not one).
fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array().map(|items| items.iter().map(row).collect()).unwrap_or_default()
}

fn list_table(v: &Value) -> String {
    let rows = recipient_rows(&v["recipients"], true);
    table(&["MESSAGE", "RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "LAST RESPONSE"], &rows)
}

fn message_table(v: &Value) -> String {
    let mut out = format!(
        "message {}\nsender {}\ntenant {}  campaign {}\nage {}  size {} bytes\n\n",
        number(&v["id"]),
        number(&v["sender"]),
        number(&v["tenant"]),
        number(&v["campaign"]),
        seconds(&v["age_s"]),
        number(&v["size"])
    );
    let rows = recipient_rows(&v["recipients"], false);
    out.push_str(&table(&["RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "LAST RESPONSE"], &rows));
    out
}

fn lanes_table(v: &Value) -> String {
    let rows = rows(&v["lanes"], |l| {
        vec![
            number(&l["site"]),
            if l["source"].is_null() { "-".into() } else { number(&l["source"]) },
            format!("{}/{}", number(&l["connections"]), number(&l["limit"])),
            number(&l["ready"]),
            format!("{:.1}", l["rate"].as_f64().unwrap_or(0.0)),
            seconds(&l["backoff_remaining_s"]),
            number(&l["hosts_down"]),
            l["last_error"].as_str().unwrap_or("").chars().take(50).collect(),
        ]
    });
    if rows.is_empty() {
        return "no lanes (nothing delivered since the start)".into();
    }
    table(&["SITE", "SOURCE", "CONNS/LIMIT", "READY", "TX/S", "BACKOFF", "DOWN", "LAST ERROR"], &rows)
}

fn suspensions_table(v: &Value) -> String {
    let rows = rows(&v["suspensions"], |s| {
        let until = if s["remaining_s"].is_null() { "until resumed".into() } else { seconds(&s["remaining_s"]) };
        match (s["site"].as_str(), s["tenant"].as_str()) {
            (Some(site), _) => vec![format!("site {site}"), until],
            (_, Some(tenant)) => vec![format!("tenant {tenant}"), until],
            _ => vec![number(&s["domain"]), until],
        }
    });
    if rows.is_empty() {
        return "no suspensions".into();
    }
    table(&["SUSPENDED", "REMAINING"], &rows)
}

fn report_line(v: &Value) -> String {
    let report = &v["report"];
    let mut line = format!("{}: {} recipients changed", number(&v["domain"]), number(&report["changed"]));
    if let Some(error) = report["error"].as_str() {
        line.push_str(&format!(" (stopped part-way: {error})"));
    }
    line
}

fn bounce_line(v: &Value) -> String {
    if v["dry_run"].as_bool() == Some(true) {
        return format!("dry run: {} recipients would be bounced", number(&v["would_bounce"]));
    }
    let report = &v["report"];
    format!(
        "bounced {} recipients now; {} in flight will be bounced when their attempt comes back",
        number(&v["bounced"]),
        number(&report["in_flight"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_operator_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("2w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn tables_align_their_columns() {
        let text =
            table(&["DOMAIN", "TOTAL"], &[vec!["a.test".into(), "5".into()], vec!["bb.test".into(), "12".into()]]);
        assert_eq!(text, "DOMAIN   TOTAL\na.test       5\nbb.test     12");
    }
}
