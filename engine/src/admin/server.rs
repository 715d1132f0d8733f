//! The admin API, on the HTTP control plane under `/admin/v1/`: what `ringmail ctl`
//! talks to. Bearer tokens from `http.admin_tokens` (required when `http.listen`
//! is not loopback), checked with the rest of the door (`crate::http_guard`) before
//! a body is read; POSTs are `application/json`. Every answer is JSON; every
//! refusal has an `error`.
//!
//! - `GET  summary?top=N&by=domain|site|tenant|campaign` (site: as each domain last
//!   resolved): totals by state, messages,
//!   oldest age, the N largest groups (tenant and campaign: a scan of the queue,
//!   with each group's oldest message), suspensions, whether intake is drained;
//! - `GET  domains/{domain}/recipients?limit=N`, `GET messages/{id}`;
//! - `POST suspend {domain | site | tenant, duration_seconds?}`,
//!   `POST resume {domain | site | tenant}`,
//!   `GET suspensions`;
//! - `POST bounce {domain | message | tenant | campaign, reason, dry_run?}`: administrative bounce,
//!   logged as `AdminBounce` (in-flight recipients when their attempt comes back);
//! - `POST retry-now {domain?}`: deferred recipients due now (one domain, or all);
//! - `POST rebind {domain, pool}` (`pool: null` undoes it), `GET rebinds`: send a
//!   domain through another egress pool (in memory until restart), its deferred
//!   mail due now;
//! - `GET lanes`: per lane (site × egress source) connections and limit, waiting
//!   transactions, rate, backoff, hosts down, last error;
//! - `POST checkpoint {path}`: a consistent copy of the queue while running (backup);
//! - `POST reload`: read the configuration file again ([`crate::live`]), as SIGHUP;
//! - `POST log-level {filter}`: the log filter (`info`, `ringmail=debug,info` ...);
//! - `POST drain {on}`: stop (or restart) taking mail in, keep delivering;
//!   `POST shutdown`: a graceful stop, as SIGTERM.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue_store::{AdminReport, MessageId, RecipientRecord, Selector, Store, TerminalRecord};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::api::{
    BounceRequest, Bounced, Checkpoint, CheckpointRequest, Counts, DomainRecipients, DomainRequest, DrainRequest,
    Draining, Lanes, LogLevel, LogLevelRequest, MessageView, OldestMessage, Rebind, RebindRequest, Rebinds, Rebound,
    RecipientView, Reloaded, Report, Resumed, RetriedNow, RetryRequest, Stopping, Summary, SuspendRequest, Suspended,
    Suspension, Suspensions,
};
use crate::ingest::Shedding;
use crate::log::{Record, Response as LogResponse};
use crate::metrics::Metrics;

/// What the admin API acts on.
#[derive(Clone, Debug)]
pub struct Admin {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub shedding: Arc<Shedding>,
    /// The delivery log (written by the completer): `AdminBounce` records.
    pub log: crossbeam_channel::Sender<Record>,
    /// The running configuration: `http.admin_tokens` (they reload), and reloads.
    pub live: Arc<crate::live::Live>,
    /// Set by `POST shutdown`; `ringmail serve` watches it.
    pub shutdown: Arc<AtomicBool>,
    /// What the delivery shards publish about their lanes.
    pub lanes: Arc<crate::shard::LaneBoard>,
    pub rebinds: crate::operator::Rebinds,
    pub site_holds: crate::operator::SiteHolds,
    pub site_map: crate::operator::SiteMap,
    /// The egress pools in the configuration.
    pub pools: std::collections::BTreeSet<String>,
}

/// The admin routes, to merge into the control plane's router.
pub fn router(admin: Admin) -> Router {
    let admin = Arc::new(admin);
    Router::new()
        .route("/admin/v1/summary", get(summary))
        .route("/admin/v1/domains/{domain}/recipients", get(domain_recipients))
        .route("/admin/v1/messages/{id}", get(message))
        .route("/admin/v1/suspend", post(suspend))
        .route("/admin/v1/resume", post(resume))
        .route("/admin/v1/suspensions", get(suspensions))
        .route("/admin/v1/bounce", post(bounce))
        .route("/admin/v1/retry-now", post(retry_now))
        .route("/admin/v1/rebind", post(rebind))
        .route("/admin/v1/rebinds", get(rebinds))
        .route("/admin/v1/lanes", get(lanes))
        .route("/admin/v1/checkpoint", post(checkpoint))
        .route("/admin/v1/drain", post(drain))
        .route("/admin/v1/reload", post(reload))
        .route("/admin/v1/log-level", post(log_level))
        .route("/admin/v1/shutdown", post(shutdown))
        .with_state(admin)
}

type Api = State<Arc<Admin>>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Why a request is refused: answered as `{"error": message}` with `status`.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

impl From<queue_store::StoreError> for Refusal {
    fn from(problem: queue_store::StoreError) -> Refusal {
        // The same mapping as the inject API's (`ingest::refusal`).
        let refusal = crate::ingest::refusal::Refusal::from(&problem);
        Refusal::new(refusal.http_status(), refusal.to_string())
    }
}

impl From<tokio::task::JoinError> for Refusal {
    fn from(problem: tokio::task::JoinError) -> Refusal {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, problem.to_string())
    }
}

type Answer = Result<Response, Refusal>;

fn answer<T: serde::Serialize>(value: T) -> Answer {
    Ok(Json(value).into_response())
}

/// Store work off the reactor (it waits for the store's writer).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, queue_store::StoreError> + Send + 'static,
) -> Result<T, Refusal> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

/// A request's JSON body, whatever its content type; 400 naming the problem.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Refusal;

    async fn from_request(request: Request, state: &S) -> Result<Self, Refusal> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| Refusal::bad(format!("request body: {}", e.body_text())))?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| Refusal::bad(format!("request body: {e}")))
    }
}

fn seconds_since(ms: u64) -> f64 {
    crate::log::now_ms().saturating_sub(ms) as f64 / 1000.0
}

fn counts_of(name: Option<&str>, counts: &queue_store::StateCounts) -> Counts {
    Counts {
        name: name.map(str::to_string),
        queued: counts.queued,
        in_flight: counts.in_flight,
        deferred: counts.deferred,
        suspended: counts.suspended,
        total: counts.total(),
        oldest_age_s: None,
    }
}

#[derive(Debug, Deserialize)]
struct Top {
    #[serde(default = "default_top")]
    top: usize,
    /// `domain` (the default: kept counts, instant), `tenant` or `campaign` (a scan
    /// of the queue, with each group's oldest message).
    #[serde(default)]
    by: Option<String>,
}

/// Recipients by tenant or campaign, from a scan of the queue: name, counts by
/// state, oldest message time; largest groups first.
fn group_counts(
    store: &Store,
    by: &str,
) -> Result<Vec<(String, queue_store::StateCounts, u64)>, queue_store::StoreError> {
    use queue_store::RecipientState;
    let mut groups: std::collections::HashMap<String, (queue_store::StateCounts, u64)> = Default::default();
    store.scan(|envelope, recipients| {
        let name = match by {
            "tenant" => envelope.tenant.clone(),
            _ => envelope.campaign.clone(),
        }
        .unwrap_or_else(|| "-".into());
        let (counts, oldest) = groups.entry(name).or_insert((Default::default(), u64::MAX));
        *oldest = (*oldest).min(envelope.created_ms);
        for (_, record) in recipients {
            match record.state {
                RecipientState::Queued => counts.queued += 1,
                RecipientState::InFlight => counts.in_flight += 1,
                RecipientState::Deferred => counts.deferred += 1,
                RecipientState::Suspended => counts.suspended += 1,
            }
        }
        true
    })?;
    let mut out: Vec<_> = groups.into_iter().map(|(name, (counts, oldest))| (name, counts, oldest)).collect();
    out.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

fn default_top() -> usize {
    20
}

async fn summary(State(admin): Api, Query(query): Query<Top>) -> Answer {
    let by = query.by.clone().unwrap_or_else(|| "domain".into());
    let top = query.top.min(10_000);
    let groups: Vec<Counts> = match by.as_str() {
        "domain" => {
            admin.store.domain_counts().iter().take(top).map(|(domain, c)| counts_of(Some(domain), c)).collect()
        }
        "site" => {
            let mut sites: std::collections::HashMap<String, queue_store::StateCounts> = Default::default();
            for (domain, c) in admin.store.domain_counts() {
                let site =
                    admin.site_map.site_of(&domain).map_or_else(|| "(not resolved yet)".to_string(), |s| s.to_string());
                let sum = sites.entry(site).or_default();
                sum.queued += c.queued;
                sum.in_flight += c.in_flight;
                sum.deferred += c.deferred;
                sum.suspended += c.suspended;
            }
            let mut sites: Vec<_> = sites.into_iter().collect();
            sites.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
            sites.iter().take(top).map(|(site, c)| counts_of(Some(site), c)).collect()
        }
        "tenant" | "campaign" => {
            let store = Arc::clone(&admin.store);
            let by = by.clone();
            let groups = blocking(move || group_counts(&store, &by)).await?;
            groups
                .iter()
                .take(top)
                .map(|(name, c, oldest)| Counts {
                    oldest_age_s: Some(seconds_since(*oldest)),
                    ..counts_of(Some(name), c)
                })
                .collect()
        }
        other => return Err(Refusal::bad(format!("by: {other:?} is not domain, site, tenant or campaign"))),
    };
    let oldest =
        admin.store.oldest_message().map(|(id, ms)| OldestMessage { id: id.to_string(), age_s: seconds_since(ms) });
    answer(Summary {
        totals: counts_of(None, &admin.store.counts()),
        messages: admin.store.message_count(),
        oldest,
        by,
        groups,
        suspensions: suspension_list(&admin),
        draining: admin.shedding.is_draining(),
        store_health: format!("{:?}", admin.store.health()),
    })
}

fn recipient_view(record: &RecipientRecord) -> RecipientView {
    let now = crate::log::now_ms();
    RecipientView {
        recipient: record.address.clone(),
        state: format!("{:?}", record.state),
        attempts: record.attempts,
        next_attempt_in_s: record.due_ms.saturating_sub(now) as f64 / 1000.0,
        last_response: record.last_response.clone(),
        message: None,
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn domain_recipients(State(admin): Api, Path(domain): Path<String>, Query(query): Query<Limit>) -> Answer {
    let listed = admin.store.list_domain(&domain, None, query.limit)?;
    let recipients: Vec<_> = listed
        .iter()
        .map(|(key, record)| RecipientView { message: Some(key.message.to_string()), ..recipient_view(record) })
        .collect();
    answer(DomainRecipients { domain, recipients })
}

fn message_id(text: &str, field: &str) -> Result<MessageId, Refusal> {
    MessageId::from_str(text).map_err(|_| Refusal::bad(format!("{field}{text:?} is not a message id")))
}

async fn message(State(admin): Api, Path(id): Path<String>) -> Answer {
    let id = message_id(&id, "")?;
    let Some(view) = admin.store.message(id)? else {
        return Err(Refusal::new(StatusCode::NOT_FOUND, format!("no message {id} in the queue")));
    };
    let envelope = &view.envelope;
    answer(MessageView {
        id: id.to_string(),
        sender: envelope.sender.clone(),
        tenant: envelope.tenant.clone(),
        campaign: envelope.campaign.clone(),
        metadata: serde_json::to_value(crate::log::meta(&envelope.metadata, &Vec::new())).unwrap_or_default(),
        age_s: seconds_since(envelope.created_ms),
        size: envelope.body_len,
        recipients: view.recipients.iter().map(|(_, r)| recipient_view(r)).collect(),
    })
}

fn report_of(report: &AdminReport) -> Report {
    Report {
        ended: report.terminal.len(),
        in_flight: report.in_flight,
        changed: report.changed,
        error: report.error.as_ref().map(ToString::to_string),
    }
}

async fn suspend(State(admin): Api, Body(request): Body<SuspendRequest>) -> Answer {
    let until = request.duration_seconds.map(|s| crate::log::now_ms() + s.saturating_mul(1000));
    let store = Arc::clone(&admin.store);
    let report = match (request.domain.clone(), &request.site, request.tenant.clone()) {
        (Some(domain), None, None) => blocking(move || store.suspend(&domain.to_ascii_lowercase(), until)).await?,
        (None, Some(site), None) => {
            admin.site_holds.hold(site, until);
            tracing::info!(%site, "site suspended by the admin API");
            return answer(Suspended { domain: None, site: Some(site.clone()), until_ms: until, report: None });
        }
        (None, None, Some(tenant)) => blocking(move || store.suspend_tenant(&tenant, until)).await?,
        _ => return Err(Refusal::bad("give exactly one of domain, site or tenant")),
    };
    let name = request.domain.or(request.tenant);
    answer(Suspended { domain: name, site: None, until_ms: until, report: Some(report_of(&report)) })
}

async fn resume(State(admin): Api, Body(request): Body<DomainRequest>) -> Answer {
    let store = Arc::clone(&admin.store);
    let domains = match (&request.domain, &request.site, request.tenant.clone()) {
        (Some(domain), None, None) => vec![domain.to_ascii_lowercase()],
        (None, Some(site), None) => admin
            .site_holds
            .release(site)
            .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, format!("site {site:?} is not suspended")))?,
        (None, None, Some(tenant)) => {
            let report = blocking(move || store.resume_tenant(&tenant)).await?;
            return answer(Resumed { domain: request.tenant, report: report_of(&report) });
        }
        _ => return Err(Refusal::bad("give exactly one of domain, site or tenant")),
    };
    let report = blocking(move || {
        let mut total = AdminReport::default();
        for domain in domains {
            let report = store.resume(&domain)?;
            total.changed += report.changed;
            total.in_flight += report.in_flight;
        }
        Ok(total)
    })
    .await?;
    let name = request.domain.or(request.site);
    answer(Resumed { domain: name, report: report_of(&report) })
}

fn suspension_list(admin: &Admin) -> Vec<Suspension> {
    let remaining = |until: Option<u64>| until.map(|ms| ms.saturating_sub(crate::log::now_ms()) as f64 / 1000.0);
    let none = |until: Option<u64>| Suspension {
        site: None,
        tenant: None,
        domain: None,
        until_ms: until,
        remaining_s: remaining(until),
        domains: None,
    };
    let sites = admin.site_holds.all().into_iter().map(|(site, until, domains)| Suspension {
        site: Some(site),
        domains: Some(domains),
        ..none(until)
    });
    let tenants = admin
        .store
        .tenant_suspensions()
        .into_iter()
        .map(|(tenant, until)| Suspension { tenant: Some(tenant), ..none(until) });
    let domains =
        admin.store.suspensions().into_iter().map(|(domain, until)| Suspension { domain: Some(domain), ..none(until) });
    sites.chain(tenants).chain(domains).collect()
}

async fn suspensions(State(admin): Api) -> Answer {
    answer(Suspensions { suspensions: suspension_list(&admin) })
}

async fn bounce(State(admin): Api, Body(request): Body<BounceRequest>) -> Answer {
    if request.reason.trim().is_empty() {
        return Err(Refusal::bad("reason: say why (it goes into every AdminBounce record)"));
    }
    let given = [&request.domain, &request.message, &request.tenant, &request.campaign];
    if given.iter().filter(|field| field.is_some()).count() != 1 {
        return Err(Refusal::bad("give exactly one of domain, message, tenant or campaign"));
    }
    // What to bounce (a domain is one selector), and for a dry run the recipients
    // it holds (a tenant's or campaign's scan counts them anyway).
    let store = Arc::clone(&admin.store);
    let (selectors, recipients, messages): (Vec<Selector>, u64, Option<usize>) =
        match (&request.domain, &request.message) {
            (Some(domain), _) => {
                let domain = domain.to_ascii_lowercase();
                let count = match request.dry_run {
                    true => store.domain_counts().iter().find(|(d, _)| *d == domain).map_or(0, |(_, c)| c.total()),
                    false => 0,
                };
                (vec![Selector::Domain(domain)], count, None)
            }
            (_, Some(id)) => {
                let id = message_id(id, "message: ")?;
                let count = match request.dry_run {
                    true => store.message(id)?.map_or(0, |view| view.recipients.len() as u64),
                    false => 0,
                };
                (vec![Selector::Message(id)], count, None)
            }
            _ => {
                let (tenant, campaign) = (request.tenant.clone(), request.campaign.clone());
                let (ids, count) =
                    blocking(move || group_messages(&store, tenant.as_deref(), campaign.as_deref())).await?;
                let messages = ids.len();
                (ids.into_iter().map(Selector::Message).collect(), count, Some(messages))
            }
        };
    if request.dry_run {
        return answer(Bounced { dry_run: true, would_bounce: Some(recipients), messages, ..Bounced::default() });
    }
    let store = Arc::clone(&admin.store);
    let reason = format!("administrative bounce: {}", request.reason);
    let report = blocking(move || {
        let mut total = AdminReport::default();
        for selector in selectors {
            let report = store.admin_bounce(selector, &reason)?;
            total.terminal.extend(report.terminal);
            total.in_flight += report.in_flight;
            if report.error.is_some() {
                total.error = report.error;
                break;
            }
        }
        Ok(total)
    })
    .await?;
    for terminal in &report.terminal {
        log_admin_bounce(&admin, terminal);
    }
    answer(Bounced { bounced: Some(report.terminal.len()), report: Some(report_of(&report)), ..Bounced::default() })
}

/// The messages of a tenant or a campaign (a scan of the queue), and how many
/// recipients they hold.
fn group_messages(
    store: &Store,
    tenant: Option<&str>,
    campaign: Option<&str>,
) -> Result<(Vec<MessageId>, u64), queue_store::StoreError> {
    let mut messages = Vec::new();
    let mut recipients = 0u64;
    store.scan(|envelope, listed| {
        let matches = match (tenant, campaign) {
            (Some(tenant), _) => envelope.tenant.as_deref() == Some(tenant),
            (_, Some(campaign)) => envelope.campaign.as_deref() == Some(campaign),
            _ => false,
        };
        if matches {
            messages.push(envelope.id);
            recipients += listed.len() as u64;
        }
        true
    })?;
    Ok((messages, recipients))
}

fn log_admin_bounce(admin: &Admin, terminal: &TerminalRecord) {
    let envelope = &terminal.envelope;
    let record = Record {
        kind: "AdminBounce",
        id: terminal.key.message.to_string(),
        sender: envelope.sender.clone(),
        recipient: terminal.recipient.address.clone(),
        site: None,
        egress_source: None,
        peer_address: None,
        response: LogResponse::from_text(&terminal.response),
        num_attempts: terminal.recipient.attempts,
        timestamp: crate::log::now_ms() as f64 / 1000.0,
        created: envelope.created_ms as f64 / 1000.0,
        bounce_classification: Some("AdministrativeBounce"),
        tls_protocol_version: None,
        tls_cipher: None,
        tls_peer_verified: None,
        tenant: envelope.tenant.clone(),
        campaign: envelope.campaign.clone(),
        meta: crate::log::meta(&envelope.metadata, &terminal.recipient.metadata),
        dkim: Vec::new(),
    };
    // The log channel is bounded: never wait; a dropped record is counted.
    if admin.log.try_send(record).is_err() {
        Metrics::count(&admin.metrics.log_records_dropped, 1);
    }
}

/// Deferred recipients of `domains` due now; how many changed.
fn retry_domains(store: &Store, domains: Vec<String>) -> Result<u64, queue_store::StoreError> {
    let now = crate::log::now_ms();
    let mut changed = 0;
    for domain in domains {
        changed += store.retry_now(&domain, now)?.changed;
    }
    Ok(changed)
}

async fn retry_now(State(admin): Api, Body(request): Body<RetryRequest>) -> Answer {
    let store = Arc::clone(&admin.store);
    let domains = match &request.domain {
        Some(domain) => vec![domain.to_ascii_lowercase()],
        None => store.domain_counts().into_iter().filter(|(_, c)| c.deferred > 0).map(|(d, _)| d).collect(),
    };
    let changed = blocking(move || retry_domains(&store, domains)).await?;
    answer(RetriedNow { domain: request.domain, due_now: changed })
}

async fn rebind(State(admin): Api, Body(request): Body<RebindRequest>) -> Answer {
    if let Some(pool) = &request.pool {
        if !admin.pools.contains(pool) {
            let known: Vec<_> = admin.pools.iter().collect();
            return Err(Refusal::bad(format!("pool: no [[egress]] source is in pool {pool:?} (pools: {known:?})")));
        }
    }
    let domain = request.domain.to_ascii_lowercase();
    admin.rebinds.set(&domain, request.pool.clone());
    tracing::info!(%domain, pool = ?request.pool, "domain rebound by the admin API");
    let store = Arc::clone(&admin.store);
    let due = blocking(move || retry_domains(&store, vec![domain])).await?;
    answer(Rebound { domain: request.domain, pool: request.pool, due_now: due })
}

async fn rebinds(State(admin): Api) -> Answer {
    let rebinds = admin.rebinds.all().into_iter().map(|(domain, pool)| Rebind { domain, pool }).collect();
    answer(Rebinds { rebinds })
}

async fn lanes(State(admin): Api) -> Answer {
    answer(Lanes { lanes: admin.lanes.lanes() })
}

async fn checkpoint(State(admin): Api, Body(request): Body<CheckpointRequest>) -> Answer {
    if !request.path.is_absolute() {
        return Err(Refusal::bad("path: must be absolute (the daemon's working directory is not yours)"));
    }
    if request.path.exists() {
        return Err(Refusal::new(StatusCode::CONFLICT, format!("path: {} exists already", request.path.display())));
    }
    let store = Arc::clone(&admin.store);
    let path = request.path.clone();
    // Any failure to write the copy is the daemon's (500), not a busy store.
    let written = tokio::task::spawn_blocking(move || store.checkpoint(&path)).await?;
    written.map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    answer(Checkpoint { path: request.path })
}

async fn drain(State(admin): Api, Body(request): Body<DrainRequest>) -> Answer {
    admin.shedding.set_draining(request.on);
    tracing::info!(draining = request.on, "intake drain changed by the admin API");
    answer(Draining { draining: request.on })
}

async fn reload(State(admin): Api) -> Answer {
    let live = Arc::clone(&admin.live);
    let report = tokio::task::spawn_blocking(move || live.reload()).await?;
    let report = report.map_err(|why| Refusal::bad(format!("nothing changed: {why}")))?;
    answer(Reloaded {
        applied: report.applied.iter().map(|s| s.to_string()).collect(),
        restart_needed: report.restart_needed.iter().map(|s| s.to_string()).collect(),
        generation: report.generation,
    })
}

type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_LEVEL: std::sync::OnceLock<LogLevelHook> = std::sync::OnceLock::new();

/// How the process changes its log filter (`ringmail serve` installs it with its
/// tracing subscriber). Once per process.
pub fn set_log_level_hook(hook: LogLevelHook) {
    let _ = LOG_LEVEL.set(hook);
}

async fn log_level(Body(request): Body<LogLevelRequest>) -> Answer {
    let Some(hook) = LOG_LEVEL.get() else {
        return Err(Refusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "this process's log filter cannot be changed (not ringmail serve)",
        ));
    };
    hook(&request.filter).map_err(|why| Refusal::bad(format!("filter: {why}")))?;
    tracing::info!(filter = %request.filter, "log filter changed by the admin API");
    answer(LogLevel { filter: request.filter })
}

async fn shutdown(State(admin): Api) -> Answer {
    admin.shutdown.store(true, Ordering::Relaxed);
    tracing::info!("shutdown requested by the admin API");
    Ok((StatusCode::ACCEPTED, Json(Stopping { stopping: true })).into_response())
}
