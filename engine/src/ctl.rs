//! `ringmail ctl`: the operator's command line over the admin API (`ringmail::admin`,
//! through its typed client),
//! in the manner of `postqueue`/`postsuper`, `kcli` and `pmta`. Tables for people,
//! `--json` for scripts. The daemon is found at `--url` (or `RINGMAIL_URL`, default
//! `http://127.0.0.1:8025`) with the token in `--token` (or `RINGMAIL_ADMIN_TOKEN`).

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use serde::Serialize;

use ringmail::admin::api::{
    BounceRequest, Bounced, CheckpointRequest, DomainRequest, DrainRequest, LogLevelRequest, MessageView,
    RebindRequest, RecipientView, Report, RetryRequest, Summary, SuspendRequest, Suspension,
};
use ringmail::admin::client::{AdminClient, AdminError};

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

#[cfg(test)]
#[derive(clap::Parser, Debug)]
#[command(name = "ringmail ctl")]
struct Line {
    #[command(flatten)]
    ctl: Ctl,
}

/// `ringmail ctl`'s arguments (without the program name), parsed.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Ctl, String> {
    use clap::Parser;
    Line::try_parse_from(std::iter::once("ctl").chain(args.iter().copied())).map(|l| l.ctl).map_err(|e| e.to_string())
}

/// Runs one command, printing its table (or its JSON with `--json`); the error is
/// the message to print.
pub(crate) fn run(ctl: Ctl) -> Result<(), String> {
    let json = ctl.json;
    let (answer, table) = execute(ctl)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else {
        println!("{table}");
    }
    Ok(())
}

/// Runs one command: the daemon's answer as JSON and the table made of it.
fn execute(ctl: Ctl) -> Result<(Value, String), String> {
    let client = AdminClient::new(&ctl.url, ctl.token.clone());
    /// The answer as JSON (`--json`), and its table.
    fn shown<T: Serialize>(
        answer: Result<T, AdminError>,
        table: impl Fn(&T) -> String,
    ) -> Result<(Value, String), String> {
        let answer = answer.map_err(|e| e.to_string())?;
        let text = table(&answer);
        Ok((serde_json::to_value(&answer).map_err(|e| e.to_string())?, text))
    }
    match ctl.command {
        CtlCommand::Queue(QueueCommand::Summary { top, by }) => shown(client.summary(top, &by), summary_table),
        CtlCommand::Queue(QueueCommand::List { domain, limit }) => {
            shown(client.domain_recipients(&domain, limit), |v| {
                let rows = recipient_rows(&v.recipients, true);
                table(&["MESSAGE", "RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "LAST RESPONSE"], &rows)
            })
        }
        CtlCommand::Message(MessageCommand::Show { id }) => shown(client.message(&id), message_table),
        CtlCommand::Suspend { target, duration } => {
            let seconds = duration.as_deref().map(parse_duration).transpose()?.map(|d| d.as_secs());
            let request = SuspendRequest {
                domain: target.domain,
                site: target.site,
                tenant: target.tenant,
                duration_seconds: seconds,
            };
            shown(client.suspend(&request), |v| match (&v.site, &v.report) {
                (Some(site), _) => format!("site {site} suspended: its domains are held as they come up"),
                (None, report) => report_line(v.domain.as_deref(), report.as_ref()),
            })
        }
        CtlCommand::Resume { target } => {
            let request = DomainRequest { domain: target.domain, site: target.site, tenant: target.tenant };
            shown(client.resume(&request), |v| report_line(v.domain.as_deref(), Some(&v.report)))
        }
        CtlCommand::Suspensions => shown(client.suspensions(), |v| suspensions_table(&v.suspensions)),
        CtlCommand::Bounce { domain, message, tenant, campaign, reason, dry_run } => {
            let request = BounceRequest { domain, message, tenant, campaign, reason, dry_run };
            shown(client.bounce(&request), bounce_line)
        }
        CtlCommand::RetryNow { domain } => {
            shown(client.retry_now(&RetryRequest { domain }), |v| format!("{} deferred recipients due now", v.due_now))
        }
        CtlCommand::Rebind { domain, pool, reset: _ } => {
            shown(client.rebind(&RebindRequest { domain, pool }), |v| match &v.pool {
                Some(pool) => {
                    format!("{} goes through pool {pool}; {} deferred recipients due now", v.domain, v.due_now)
                }
                None => format!("{} follows the configuration again", v.domain),
            })
        }
        CtlCommand::Rebinds => shown(client.rebinds(), |v| {
            let rows: Vec<Vec<String>> = v.rebinds.iter().map(|r| vec![r.domain.clone(), r.pool.clone()]).collect();
            if rows.is_empty() {
                return "no rebinds".into();
            }
            table(&["DOMAIN", "POOL"], &rows)
        }),
        CtlCommand::Lanes => shown(client.lanes(), |v| lanes_table(&v.lanes)),
        CtlCommand::Backup { to } => {
            let to = if to.is_absolute() { to } else { std::env::current_dir().map_err(|e| e.to_string())?.join(to) };
            shown(client.checkpoint(&CheckpointRequest { path: to }), |v| {
                format!("backup written to {}", v.path.display())
            })
        }
        CtlCommand::Drain { off } => shown(client.drain(&DrainRequest { on: !off }), |v| {
            if v.draining {
                "draining: new mail refused (SMTP 421, HTTP 503); queued mail is still delivered".into()
            } else {
                "taking mail in again".into()
            }
        }),
        CtlCommand::Reload => shown(client.reload(), |v| {
            let list = |items: &[String]| if items.is_empty() { "nothing".to_string() } else { items.join(", ") };
            format!("reloaded: applied {}; needs a restart: {}", list(&v.applied), list(&v.restart_needed))
        }),
        CtlCommand::LogLevel { filter } => {
            shown(client.log_level(&LogLevelRequest { filter }), |v| format!("log filter: {}", v.filter))
        }
        CtlCommand::Shutdown => shown(client.shutdown(), |_| "the daemon is stopping".into()),
    }
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

fn seconds(value: Option<f64>) -> String {
    match value {
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

fn summary_table(v: &Summary) -> String {
    let t = &v.totals;
    let mut out = format!(
        "queued {}  in flight {}  deferred {}  suspended {}  total {}  messages {}\n",
        t.queued, t.in_flight, t.deferred, t.suspended, t.total, v.messages
    );
    if let Some(oldest) = &v.oldest {
        out.push_str(&format!("oldest message {} ({} old)\n", oldest.id, seconds(Some(oldest.age_s))));
    }
    if v.draining {
        out.push_str("intake DRAINING: new mail is refused\n");
    }
    out.push_str(&format!("store {}\n\n", v.store_health));
    let rows: Vec<Vec<String>> = v
        .groups
        .iter()
        .map(|g| {
            let mut row = vec![or_dash(g.name.as_deref())];
            row.extend([g.queued, g.in_flight, g.deferred, g.suspended, g.total].map(|n| n.to_string()));
            row.push(seconds(g.oldest_age_s));
            row
        })
        .collect();
    let by = v.by.to_uppercase();
    out.push_str(&table(&[&by, "QUEUED", "IN FLIGHT", "DEFERRED", "SUSPENDED", "TOTAL", "OLDEST"], &rows));
    out
}

fn recipient_rows(recipients: &[RecipientView], with_message: bool) -> Vec<Vec<String>> {
    recipients
        .iter()
        .map(|r| {
            let mut row = Vec::new();
            if with_message {
                row.push(or_dash(r.message.as_deref()));
            }
            row.extend([
                r.recipient.clone(),
                r.state.clone(),
                r.attempts.to_string(),
                seconds(Some(r.next_attempt_in_s)),
                r.last_response.as_deref().unwrap_or("-").chars().take(60).collect(),
            ]);
            row
        })
        .collect()
}

fn message_table(v: &MessageView) -> String {
    let mut out = format!(
        "message {}\nsender {}\ntenant {}  campaign {}\nage {}  size {} bytes\n\n",
        v.id,
        v.sender,
        or_dash(v.tenant.as_deref()),
        or_dash(v.campaign.as_deref()),
        seconds(Some(v.age_s)),
        v.size
    );
    let rows = recipient_rows(&v.recipients, false);
    out.push_str(&table(&["RECIPIENT", "STATE", "ATTEMPTS", "NEXT", "LAST RESPONSE"], &rows));
    out
}

fn lanes_table(lanes: &[ringmail::shard::LaneView]) -> String {
    let rows: Vec<Vec<String>> = lanes
        .iter()
        .map(|l| {
            vec![
                l.site.clone(),
                l.source.map_or_else(|| "-".into(), |s| s.to_string()),
                format!("{}/{}", l.connections, l.limit),
                l.ready.to_string(),
                format!("{:.1}", l.rate),
                seconds(Some(l.backoff_remaining_s)),
                l.hosts_down.to_string(),
                l.last_error.chars().take(50).collect(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no lanes (nothing delivered since the start)".into();
    }
    table(&["SITE", "SOURCE", "CONNS/LIMIT", "READY", "TX/S", "BACKOFF", "DOWN", "LAST ERROR"], &rows)
}

fn suspensions_table(suspensions: &[Suspension]) -> String {
    let rows: Vec<Vec<String>> = suspensions
        .iter()
        .map(|s| {
            let until = if s.remaining_s.is_none() { "until resumed".into() } else { seconds(s.remaining_s) };
            match (&s.site, &s.tenant) {
                (Some(site), _) => vec![format!("site {site}"), until],
                (_, Some(tenant)) => vec![format!("tenant {tenant}"), until],
                _ => vec![or_dash(s.domain.as_deref()), until],
            }
        })
        .collect();
    if rows.is_empty() {
        return "no suspensions".into();
    }
    table(&["SUSPENDED", "REMAINING"], &rows)
}

fn report_line(name: Option<&str>, report: Option<&Report>) -> String {
    let changed = report.map_or_else(|| "-".to_string(), |r| r.changed.to_string());
    let mut line = format!("{}: {changed} recipients changed", or_dash(name));
    if let Some(error) = report.and_then(|r| r.error.as_deref()) {
        line.push_str(&format!(" (stopped part-way: {error})"));
    }
    line
}

fn bounce_line(v: &Bounced) -> String {
    if v.dry_run {
        return format!("dry run: {} recipients would be bounced", v.would_bounce.unwrap_or(0));
    }
    format!(
        "bounced {} recipients now; {} in flight will be bounced when their attempt comes back",
        v.bounced.unwrap_or(0),
        v.report.as_ref().map_or(0, |r| r.in_flight)
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
    fn commands_parse_and_refuse_what_makes_no_sense() {
        let ctl = parse(&["--url", "http://127.0.0.1:1", "queue", "summary", "--by", "site"]).unwrap();
        assert!(matches!(ctl.command, CtlCommand::Queue(QueueCommand::Summary { top: 20, ref by }) if by == "site"));
        let error = parse(&["bounce", "--reason", "x"]).unwrap_err();
        assert!(error.contains("--domain"), "a selector is required: {error}");
        let error = parse(&["suspend", "--domain", "a.test", "--site", "mx.a.test"]).unwrap_err();
        assert!(error.contains("cannot be used with"), "{error}");
        assert!(parse(&["queue", "summary", "--by", "planet"]).is_err());
    }

    #[test]
    fn tables_are_made_from_the_typed_answers() {
        use ringmail::admin::api::{Counts, OldestMessage};
        let counts =
            |name: &str, total: u64| Counts { name: Some(name.into()), queued: total, total, ..Counts::default() };
        let summary = Summary {
            totals: Counts { queued: 7, total: 7, ..Counts::default() },
            messages: 5,
            oldest: Some(OldestMessage { id: "m1".into(), age_s: 90.0 }),
            by: "domain".into(),
            groups: vec![counts("big.test", 5), counts("small.test", 2)],
            suspensions: Vec::new(),
            draining: true,
            store_health: "Healthy".into(),
        };
        let text = summary_table(&summary);
        assert!(text.starts_with("queued 7  in flight 0  deferred 0  suspended 0  total 7  messages 5\n"), "{text}");
        assert!(text.contains("oldest message m1 (90s old)") && text.contains("intake DRAINING"), "{text}");
        assert!(text.contains("DOMAIN") && text.contains("big.test") && text.contains("small.test"), "{text}");
        let held = Suspension {
            site: None,
            tenant: Some("t1".into()),
            domain: None,
            until_ms: None,
            remaining_s: None,
            domains: None,
        };
        assert!(suspensions_table(&[held]).contains("tenant t1  until resumed"));
        assert_eq!(suspensions_table(&[]), "no suspensions");
        let dry = Bounced { dry_run: true, would_bounce: Some(30), ..Bounced::default() };
        assert_eq!(bounce_line(&dry), "dry run: 30 recipients would be bounced");
        let report = Report { changed: 20, ..Report::default() };
        assert_eq!(report_line(Some("ok.test"), Some(&report)), "ok.test: 20 recipients changed");
    }

    #[test]
    fn tables_align_their_columns() {
        let text =
            table(&["DOMAIN", "TOTAL"], &[vec!["a.test".into(), "5".into()], vec!["bb.test".into(), "12".into()]]);
        assert_eq!(text, "DOMAIN   TOTAL\na.test       5\nbb.test     12");
    }
}
