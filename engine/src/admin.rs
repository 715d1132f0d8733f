//! The admin API, on the HTTP control plane under `/admin/v1/`: what `ringmail ctl`
//! talks to. Bearer tokens from `http.admin_tokens` (required when `http.listen`
//! is not loopback). Every answer is JSON; every refusal has an `error`.
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

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue_store::{AdminReport, MessageId, RecipientRecord, Selector, Store, TerminalRecord};
use serde::Deserialize;
use serde_json::json;

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
    pub rebinds: crate::schedule::Rebinds,
    pub site_holds: crate::schedule::SiteHolds,
    pub site_map: crate::schedule::SiteMap,
    /// The egress pools in the configuration.
    pub pools: std::collections::BTreeSet<String>,
}

/// The admin routes, to merge into the control plane's router.
pub fn router(admin: Admin) -> Router {
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
        .with_state(Arc::new(admin))
}

type Api = State<Arc<Admin>>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// `None` when the request may go on, else the 401.
fn refused(admin: &Admin, headers: &HeaderMap) -> Option<Response> {
    if crate::ingest::http::token_matches(&admin.live.current().http.admin_tokens, headers) {
        return None;
    }
    let mut response = error(StatusCode::UNAUTHORIZED, "a valid admin bearer token is required");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    Some(response)
}

fn store_error(error: &queue_store::StoreError) -> Response {
    let status = if error.is_temporary() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
    error_with(status, error)
}

fn error_with(status: StatusCode, problem: &impl std::fmt::Display) -> Response {
    error(status, problem.to_string())
}

fn seconds_since(ms: u64) -> f64 {
    crate::log::now_ms().saturating_sub(ms) as f64 / 1000.0
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

async fn summary(State(admin): Api, headers: HeaderMap, Query(query): Query<Top>) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let counts = admin.store.counts();
    let by = query.by.clone().unwrap_or_else(|| "domain".into());
    let top = query.top.min(10_000);
    let groups: Vec<serde_json::Value> = match by.as_str() {
        "domain" => admin
            .store
            .domain_counts()
            .into_iter()
            .take(top)
            .map(|(domain, c)| {
                json!({"name": domain, "queued": c.queued, "in_flight": c.in_flight, "deferred": c.deferred,
                       "suspended": c.suspended, "total": c.total()})
            })
            .collect(),
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
            sites
                .into_iter()
                .take(top)
                .map(|(site, c)| {
                    json!({"name": site, "queued": c.queued, "in_flight": c.in_flight, "deferred": c.deferred,
                           "suspended": c.suspended, "total": c.total()})
                })
                .collect()
        }
        "tenant" | "campaign" => {
            let store = Arc::clone(&admin.store);
            let by = by.clone();
            match tokio::task::spawn_blocking(move || group_counts(&store, &by)).await {
                Ok(Ok(groups)) => groups
                    .into_iter()
                    .take(top)
                    .map(|(name, c, oldest)| {
                        json!({"name": name, "queued": c.queued, "in_flight": c.in_flight, "deferred": c.deferred,
                               "suspended": c.suspended, "total": c.total(), "oldest_age_s": seconds_since(oldest)})
                    })
                    .collect(),
                Ok(Err(e)) => return store_error(&e),
                Err(e) => return error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
            }
        }
        other => {
            return error(StatusCode::BAD_REQUEST, format!("by: {other:?} is not domain, site, tenant or campaign"))
        }
    };
    let oldest = admin.store.oldest_message().map(|(id, ms)| json!({"id": id.to_string(), "age_s": seconds_since(ms)}));
    Json(json!({
        "totals": {"queued": counts.queued, "in_flight": counts.in_flight, "deferred": counts.deferred,
                   "suspended": counts.suspended, "total": counts.total()},
        "messages": admin.store.message_count(),
        "oldest": oldest,
        "by": by,
        "groups": groups,
        "suspensions": suspension_list(&admin),
        "draining": admin.shedding.is_draining(),
        "store_health": format!("{:?}", admin.store.health()),
    }))
    .into_response()
}

fn recipient_json(record: &RecipientRecord) -> serde_json::Value {
    let now = crate::log::now_ms();
    json!({
        "recipient": record.address,
        "state": format!("{:?}", record.state),
        "attempts": record.attempts,
        "next_attempt_in_s": record.due_ms.saturating_sub(now) as f64 / 1000.0,
        "last_response": record.last_response,
    })
}

#[derive(Debug, Deserialize)]
struct Limit {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn domain_recipients(
    State(admin): Api,
    headers: HeaderMap,
    Path(domain): Path<String>,
    Query(query): Query<Limit>,
) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    match admin.store.list_domain(&domain, None, query.limit) {
        Ok(listed) => {
            let recipients: Vec<_> = listed
                .iter()
                .map(|(key, record)| {
                    let mut value = recipient_json(record);
                    value["message"] = json!(key.message.to_string());
                    value
                })
                .collect();
            Json(json!({"domain": domain, "recipients": recipients})).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn message(State(admin): Api, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let Ok(id) = MessageId::from_str(&id) else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a message id"));
    };
    match admin.store.message(id) {
        Ok(Some(view)) => {
            let envelope = &view.envelope;
            Json(json!({
                "id": id.to_string(),
                "sender": envelope.sender,
                "tenant": envelope.tenant,
                "campaign": envelope.campaign,
                "metadata": crate::log::meta(&envelope.metadata, &Vec::new()),
                "age_s": seconds_since(envelope.created_ms),
                "size": envelope.body_len,
                "recipients": view.recipients.iter().map(|(_, r)| recipient_json(r)).collect::<Vec<_>>(),
            }))
            .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no message {id} in the queue")),
        Err(e) => store_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendRequest {
    #[serde(default)]
    domain: Option<String>,
    /// A site (MX host set, as in `lanes` and the log's `site`): its domains are
    /// suspended in the queue as the scheduler meets them.
    #[serde(default)]
    site: Option<String>,
    /// A tenant: its messages are held whatever their domain.
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    duration_seconds: Option<u64>,
}

fn report_json(report: &AdminReport) -> serde_json::Value {
    json!({
        "ended": report.terminal.len(),
        "in_flight": report.in_flight,
        "changed": report.changed,
        "error": report.error.as_ref().map(ToString::to_string),
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("request body: {e}"))
}

async fn suspend(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: SuspendRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let until = request.duration_seconds.map(|s| crate::log::now_ms() + s.saturating_mul(1000));
    let domain = match (&request.domain, &request.site, &request.tenant) {
        (Some(domain), None, None) => domain.to_ascii_lowercase(),
        (None, Some(site), None) => {
            admin.site_holds.hold(site, until);
            tracing::info!(%site, "site suspended by the admin API");
            return Json(json!({"site": site, "until_ms": until})).into_response();
        }
        (None, None, Some(_)) => String::new(),
        _ => return error(StatusCode::BAD_REQUEST, "give exactly one of domain, site or tenant"),
    };
    let store = Arc::clone(&admin.store);
    let tenant = request.tenant.clone();
    let result = tokio::task::spawn_blocking(move || match &tenant {
        Some(tenant) => store.suspend_tenant(tenant, until),
        None => store.suspend(&domain, until),
    })
    .await;
    match result {
        Ok(Ok(report)) => {
            let name = request.domain.or(request.tenant);
            Json(json!({"domain": name, "until_ms": until, "report": report_json(&report)})).into_response()
        }
        Ok(Err(e)) => store_error(&e),
        Err(e) => error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainRequest {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

async fn resume(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: DomainRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let domains = match (&request.domain, &request.site, &request.tenant) {
        (Some(domain), None, None) => vec![domain.to_ascii_lowercase()],
        (None, Some(site), None) => match admin.site_holds.release(site) {
            Some(domains) => domains,
            None => return error(StatusCode::NOT_FOUND, format!("site {site:?} is not suspended")),
        },
        (None, None, Some(_)) => Vec::new(),
        _ => return error(StatusCode::BAD_REQUEST, "give exactly one of domain, site or tenant"),
    };
    let store = Arc::clone(&admin.store);
    let tenant = request.tenant.clone();
    let resumed = tokio::task::spawn_blocking(move || {
        let mut total = AdminReport::default();
        if let Some(tenant) = tenant {
            return store.resume_tenant(&tenant);
        }
        for domain in domains {
            let report = store.resume(&domain)?;
            total.changed += report.changed;
            total.in_flight += report.in_flight;
        }
        Ok::<_, queue_store::StoreError>(total)
    });
    match resumed.await {
        Ok(Ok(report)) => {
            let name = request.domain.or(request.site).or(request.tenant);
            Json(json!({"domain": name, "report": report_json(&report)})).into_response()
        }
        Ok(Err(e)) => store_error(&e),
        Err(e) => error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

fn suspension_list(admin: &Admin) -> Vec<serde_json::Value> {
    let remaining = |until: Option<u64>| until.map(|ms| ms.saturating_sub(crate::log::now_ms()) as f64 / 1000.0);
    let sites = admin.site_holds.all().into_iter().map(|(site, until, domains)| {
        json!({"site": site, "until_ms": until, "remaining_s": remaining(until), "domains": domains})
    });
    let tenants = admin
        .store
        .tenant_suspensions()
        .into_iter()
        .map(|(tenant, until)| json!({"tenant": tenant, "until_ms": until, "remaining_s": remaining(until)}));
    let domains = admin
        .store
        .suspensions()
        .into_iter()
        .map(|(domain, until)| json!({"domain": domain, "until_ms": until, "remaining_s": remaining(until)}));
    sites.chain(tenants).chain(domains).collect()
}

async fn suspensions(State(admin): Api, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    Json(json!({"suspensions": suspension_list(&admin)})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BounceRequest {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    campaign: Option<String>,
    reason: String,
    #[serde(default)]
    dry_run: bool,
}

async fn bounce(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: BounceRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if request.reason.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "reason: say why (it goes into every AdminBounce record)");
    }
    let given = [&request.domain, &request.message, &request.tenant, &request.campaign];
    if given.iter().filter(|field| field.is_some()).count() != 1 {
        return error(StatusCode::BAD_REQUEST, "give exactly one of domain, message, tenant or campaign");
    }
    if request.tenant.is_some() || request.campaign.is_some() {
        return bounce_group(&admin, request).await;
    }
    let selector = match (&request.domain, &request.message) {
        (Some(domain), _) => Selector::Domain(domain.to_ascii_lowercase()),
        (_, Some(id)) => match MessageId::from_str(id) {
            Ok(id) => Selector::Message(id),
            Err(_) => return error(StatusCode::BAD_REQUEST, format!("message: {id:?} is not a message id")),
        },
        _ => return error(StatusCode::BAD_REQUEST, "give exactly one of domain, message, tenant or campaign"),
    };
    if request.dry_run {
        let count = match &selector {
            Selector::Domain(domain) => {
                admin.store.domain_counts().into_iter().find(|(d, _)| d == domain).map(|(_, c)| c.total()).unwrap_or(0)
            }
            Selector::Message(id) => match admin.store.message(*id) {
                Ok(view) => view.map(|v| v.recipients.len() as u64).unwrap_or(0),
                Err(e) => return store_error(&e),
            },
        };
        return Json(json!({"dry_run": true, "would_bounce": count})).into_response();
    }
    let store = Arc::clone(&admin.store);
    let reason = format!("administrative bounce: {}", request.reason);
    let result = tokio::task::spawn_blocking(move || store.admin_bounce(selector, &reason)).await;
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return store_error(&e),
        Err(e) => return error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    for terminal in &report.terminal {
        log_admin_bounce(&admin, terminal);
    }
    Json(json!({"bounced": report.terminal.len(), "report": report_json(&report)})).into_response()
}

/// A bounce by tenant or campaign: the queue is scanned for their messages, and each
/// is bounced as a message.
async fn bounce_group(admin: &Admin, request: BounceRequest) -> Response {
    let store = Arc::clone(&admin.store);
    let (tenant, campaign) = (request.tenant.clone(), request.campaign.clone());
    let found = tokio::task::spawn_blocking(move || {
        let mut messages = Vec::new();
        let mut recipients = 0u64;
        store
            .scan(|envelope, listed| {
                let matches = match (&tenant, &campaign) {
                    (Some(tenant), _) => envelope.tenant.as_ref() == Some(tenant),
                    (_, Some(campaign)) => envelope.campaign.as_ref() == Some(campaign),
                    _ => false,
                };
                if matches {
                    messages.push(envelope.id);
                    recipients += listed.len() as u64;
                }
                true
            })
            .map(|()| (messages, recipients))
    })
    .await;
    let (messages, recipients) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return store_error(&e),
        Err(e) => return error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    if request.dry_run {
        return Json(json!({"dry_run": true, "would_bounce": recipients, "messages": messages.len()})).into_response();
    }
    let store = Arc::clone(&admin.store);
    let reason = format!("administrative bounce: {}", request.reason);
    let result = tokio::task::spawn_blocking(move || {
        let mut total = AdminReport::default();
        for id in messages {
            let report = store.admin_bounce(Selector::Message(id), &reason)?;
            total.terminal.extend(report.terminal);
            total.in_flight += report.in_flight;
            if report.error.is_some() {
                total.error = report.error;
                break;
            }
        }
        Ok::<_, queue_store::StoreError>(total)
    })
    .await;
    let report = match result {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return store_error(&e),
        Err(e) => return error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    for terminal in &report.terminal {
        log_admin_bounce(admin, terminal);
    }
    Json(json!({"bounced": report.terminal.len(), "report": report_json(&report)})).into_response()
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
        tenant: envelope.tenant.clone(),
        campaign: envelope.campaign.clone(),
        meta: crate::log::meta(&envelope.metadata, &terminal.recipient.metadata),
    };
    // The log channel is bounded: never wait; a dropped record is counted.
    if admin.log.try_send(record).is_err() {
        Metrics::count(&admin.metrics.log_records_dropped, 1);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    #[serde(default)]
    domain: Option<String>,
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

async fn retry_now(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: RetryRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let store = Arc::clone(&admin.store);
    let domains = match &request.domain {
        Some(domain) => vec![domain.to_ascii_lowercase()],
        None => store.domain_counts().into_iter().filter(|(_, c)| c.deferred > 0).map(|(d, _)| d).collect(),
    };
    match tokio::task::spawn_blocking(move || retry_domains(&store, domains)).await {
        Ok(Ok(changed)) => Json(json!({"domain": request.domain, "due_now": changed})).into_response(),
        Ok(Err(e)) => store_error(&e),
        Err(e) => error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebindRequest {
    domain: String,
    pool: Option<String>,
}

async fn rebind(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: RebindRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if let Some(pool) = &request.pool {
        if !admin.pools.contains(pool) {
            let known: Vec<_> = admin.pools.iter().collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("pool: no [[egress]] source is in pool {pool:?} (pools: {known:?})"),
            );
        }
    }
    let domain = request.domain.to_ascii_lowercase();
    admin.rebinds.set(&domain, request.pool.clone());
    tracing::info!(%domain, pool = ?request.pool, "domain rebound by the admin API");
    let store = Arc::clone(&admin.store);
    let due = match tokio::task::spawn_blocking(move || retry_domains(&store, vec![domain])).await {
        Ok(Ok(changed)) => changed,
        Ok(Err(e)) => return store_error(&e),
        Err(e) => return error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    Json(json!({"domain": request.domain, "pool": request.pool, "due_now": due})).into_response()
}

async fn rebinds(State(admin): Api, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let all: Vec<_> =
        admin.rebinds.all().into_iter().map(|(domain, pool)| json!({"domain": domain, "pool": pool})).collect();
    Json(json!({"rebinds": all})).into_response()
}

async fn lanes(State(admin): Api, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    Json(json!({"lanes": admin.lanes.lanes()})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRequest {
    path: std::path::PathBuf,
}

async fn checkpoint(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: CheckpointRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if !request.path.is_absolute() {
        return error(StatusCode::BAD_REQUEST, "path: must be absolute (the daemon's working directory is not yours)");
    }
    if request.path.exists() {
        return error(StatusCode::CONFLICT, format!("path: {} exists already", request.path.display()));
    }
    let store = Arc::clone(&admin.store);
    let path = request.path.clone();
    match tokio::task::spawn_blocking(move || store.checkpoint(&path)).await {
        Ok(Ok(())) => Json(json!({"path": request.path})).into_response(),
        Ok(Err(e)) => error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(e) => error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    on: bool,
}

async fn drain(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: DrainRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    admin.shedding.set_draining(request.on);
    tracing::info!(draining = request.on, "intake drain changed by the admin API");
    Json(json!({"draining": request.on})).into_response()
}

async fn reload(State(admin): Api, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let live = Arc::clone(&admin.live);
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(report)) => Json(json!(report)).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, format!("nothing changed: {why}")),
        Err(e) => error_with(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_LEVEL: std::sync::OnceLock<LogLevelHook> = std::sync::OnceLock::new();

/// How the process changes its log filter (`ringmail serve` installs it with its
/// tracing subscriber). Once per process.
pub fn set_log_level_hook(hook: LogLevelHook) {
    let _ = LOG_LEVEL.set(hook);
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelRequest {
    filter: String,
}

async fn log_level(State(admin): Api, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    let request: LogLevelRequest = match parse(&body) {
        Ok(request) => request,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let Some(hook) = LOG_LEVEL.get() else {
        return error(StatusCode::NOT_IMPLEMENTED, "this process's log filter cannot be changed (not ringmail serve)");
    };
    match hook(&request.filter) {
        Ok(()) => {
            tracing::info!(filter = %request.filter, "log filter changed by the admin API");
            Json(json!({"filter": request.filter})).into_response()
        }
        Err(why) => error(StatusCode::BAD_REQUEST, format!("filter: {why}")),
    }
}

async fn shutdown(State(admin): Api, headers: HeaderMap) -> Response {
    if let Some(refusal) = refused(&admin, &headers) {
        return refusal;
    }
    admin.shutdown.store(true, Ordering::Relaxed);
    tracing::info!("shutdown requested by the admin API");
    (StatusCode::ACCEPTED, Json(json!({"stopping": true}))).into_response()
}
