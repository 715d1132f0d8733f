//! The HTTP control plane: `POST /api/inject/v1`, `GET /metrics`, `GET /healthz`.
//!
//! Inject takes KumoMTA's request shape (see [`super::inject`]) and answers only after
//! the store has synced what it accepted (the durability contract): 200 with
//! `{"success_count", "fail_count", "failed_recipients", "errors"}` (a recipient that
//! cannot be accepted fails alone); 401 without a valid bearer token (when tokens are
//! configured); 400 with a JSON `error` naming the field at fault (nothing queued);
//! 413 when the body is too large; 503 with `Retry-After` while ingest is shedding
//! load (store unhealthy or full, memory over its limit).
//!
//! An `Idempotency-Key` header (1 to 255 visible ASCII characters) makes a retry
//! safe: the key is stored with the messages, in the same write, with the answer;
//! a request with a key already stored gets that first answer again (200, header
//! `Idempotent-Replayed: true`) and queues nothing; the same key with a different
//! request gets 422; while a request with the key is under way (its write included,
//! even after a 503 for hung storage), another gets 409. Keys are kept
//! `http.idempotency_ttl_hours` (24).
//!
//! A request that expands to more than [`INJECT_CHUNK_BYTES`] of messages (a large
//! personalised one) is rendered and stored a chunk at a time, each chunk synced
//! before the next is rendered, so its memory stays about one chunk. It runs on a
//! task of its own: a client that goes away does not cut it short. With a key, each
//! chunk's write also records how far the request got: a retry after a crash in the
//! middle stores only the rest, and answers for the whole request. If the store
//! refuses a chunk after others were stored, the answer is 200 with the recipients
//! not stored in `failed_recipients` ("not queued (why); send it again").

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue_store::{NewMessage, Store, StoreError};
use serde::Serialize;

use super::inject::{BadRequest, Built, Expansion, InjectRequest, Problem};
use super::Shedding;
use crate::log::{send_receptions, Reception, Record};
use crate::metrics::Metrics;

/// The answer to an inject request (KumoMTA's shape).
#[derive(Debug, Serialize)]
pub struct InjectResponse {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

/// What the HTTP side needs.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub body_max: usize,
    /// Recipients per request at most.
    pub recipients_max: usize,
    /// Inject requests at work at once at most (`http.requests_max`).
    pub requests_max: usize,
    /// The host name in generated `Message-ID`s.
    pub hostname: String,
    /// What one request may expand to and run (`http.expansion_max_bytes`,
    /// `http.template_fuel`).
    pub bounds: super::inject::Bounds,
}

#[derive(Clone)]
struct Api {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shedding: Arc<Shedding>,
    settings: Arc<HttpSettings>,
    /// `Reception` records for the delivery log (written by the completer).
    receptions: crossbeam_channel::Sender<Record>,
    /// Idempotency keys of requests under way (until their write is answered).
    keys_in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Inject requests at work at most (`http.requests_max`), their tasks included.
    tasks: Arc<tokio::sync::Semaphore>,
    /// DKIM signing before the messages are stored.
    signer: Arc<crate::dkim::pool::SignerPool>,
}

/// A request's hold on its idempotency key; let go when dropped.
struct KeyHold {
    keys: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl KeyHold {
    fn take(keys: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>, key: &str) -> Option<KeyHold> {
        let mut held = keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.insert(key.to_string()).then(|| KeyHold { keys: Arc::clone(keys), key: key.to_string() })
    }
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

/// The `Idempotency-Key` header, checked: `Ok(None)` without one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| "Idempotency-Key: visible ASCII only".to_string())?;
    if key.is_empty() || key.len() > HEADER_KEY_MAX || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("Idempotency-Key: 1 to {} visible ASCII characters, no spaces", HEADER_KEY_MAX));
    }
    Ok(Some(key.to_string()))
}

/// Bytes of an `Idempotency-Key` header at most (the stored key adds its scope).
const HEADER_KEY_MAX: usize = 255;

/// The scope of a client's idempotency keys: a 64-bit hash of its `Authorization`
/// header, the same for every request of one token (tokens are the operator's, so
/// no client can pick one that collides with another's).
fn token_scope(headers: &HeaderMap) -> u64 {
    let mut hash = Fnv::default();
    hash.feed(headers.get(header::AUTHORIZATION).map(|value| value.as_bytes()).unwrap_or_default());
    hash.0
}

/// 64-bit FNV-1a, fed bytes or formatted text.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn feed(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.feed(text.as_bytes());
        Ok(())
    }
}

/// What a request says, as a 64-bit FNV-1a hash of its parsed form (so the same
/// JSON in other whitespace or key order is the same request).
fn fingerprint(request: &InjectRequest) -> u64 {
    let mut hash = Fnv::default();
    let _ = std::fmt::Write::write_fmt(&mut hash, format_args!("{request:?}"));
    hash.0
}

/// The router, ready to serve.
pub fn router(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shedding: Arc<Shedding>,
    settings: HttpSettings,
    receptions: crossbeam_channel::Sender<Record>,
    signer: Arc<crate::dkim::pool::SignerPool>,
) -> Router {
    let body_max = settings.body_max;
    Router::new()
        .route("/api/inject/v1", post(inject))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(Api {
            store,
            metrics,
            shedding,
            tasks: Arc::new(tokio::sync::Semaphore::new(settings.requests_max)),
            settings: Arc::new(settings),
            receptions,
            keys_in_flight: Arc::default(),
            signer,
        })
}

/// How long a chunk's messages may wait for room in the signers' queue before the
/// request is answered busy.
const SIGNING_WAIT_MAX: Duration = Duration::from_secs(5);
/// Messages one request has with the signers at once: a large personalised request
/// leaves the rest of the queue to the SMTP listener and other requests.
const SIGNING_PER_REQUEST_MAX: usize = 256;

/// The chunk's messages signed where a `[[dkim]]` entry applies (in order), and
/// the signatures of each. While the signers' queue is full, the oldest of this
/// chunk's messages under way is awaited first (or, with none, a moment passes),
/// for at most [`SIGNING_WAIT_MAX`].
async fn sign_chunk(
    signer: &crate::dkim::pool::SignerPool,
    messages: Vec<NewMessage>,
) -> Result<(Vec<NewMessage>, Vec<Vec<crate::dkim::SignatureNote>>), crate::dkim::SignError> {
    use crate::dkim::pool::Submitted;
    use crate::dkim::{Draft, SignError, SignatureNote, Signed};
    type Answer = tokio::sync::oneshot::Receiver<Result<Signed, SignError>>;
    /// The message's bytes (and its recipients' header blocks) back in place.
    fn put_back(message: &mut NewMessage, draft: Draft) {
        message.body = draft.message;
        for (recipient, head) in message.recipients.iter_mut().zip(draft.heads) {
            recipient.head = head;
        }
    }
    fn settle(
        out: &mut [(NewMessage, Vec<SignatureNote>)],
        index: usize,
        answer: Result<Result<Signed, SignError>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<(), SignError> {
        let signed = answer.unwrap_or(Err(SignError::Stopped))?;
        put_back(&mut out[index].0, Draft { message: signed.message, heads: signed.heads });
        out[index].1 = signed.signatures;
        Ok(())
    }
    let mut out: Vec<(NewMessage, Vec<SignatureNote>)> = Vec::with_capacity(messages.len());
    let mut waiting: std::collections::VecDeque<(usize, Answer)> = std::collections::VecDeque::new();
    let deadline = tokio::time::Instant::now() + SIGNING_WAIT_MAX;
    for mut message in messages {
        if waiting.len() >= SIGNING_PER_REQUEST_MAX {
            if let Some((done, answer)) = waiting.pop_front() {
                settle(&mut out, done, answer.await)?;
            }
        }
        let index = out.len();
        // Header blocks go with the message when its recipients have them (all or none).
        let heads = match message.recipients.iter().any(|recipient| !recipient.head.is_empty()) {
            true => message.recipients.iter_mut().map(|recipient| std::mem::take(&mut recipient.head)).collect(),
            false => Vec::new(),
        };
        let mut draft = Draft { message: std::mem::take(&mut message.body), heads };
        let tenant = message.tenant.clone();
        out.push((message, Vec::new()));
        loop {
            match signer.submit(draft, tenant.clone())? {
                Submitted::Unsigned(unsigned) => {
                    put_back(&mut out[index].0, unsigned);
                    break;
                }
                Submitted::Queued(answer) => {
                    waiting.push_back((index, answer));
                    break;
                }
                Submitted::Busy(back) if tokio::time::Instant::now() < deadline => {
                    draft = back;
                    match waiting.pop_front() {
                        Some((done, answer)) => settle(&mut out, done, answer.await)?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Submitted::Busy(_) => return Err(SignError::Busy(signer.queue_max())),
            }
        }
    }
    while let Some((index, answer)) = waiting.pop_front() {
        settle(&mut out, index, answer.await)?;
    }
    Ok(out.into_iter().unzip())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn busy(reason: String) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

async fn inject(
    State(api): State<Api>,
    headers: HeaderMap,
    request: Result<Json<InjectRequest>, JsonRejection>,
) -> Response {
    let refuse = |status: StatusCode, why: String| {
        Metrics::count(&api.metrics.rejected_requests, 1);
        error(status, why)
    };
    let request = match request {
        Ok(Json(request)) => request,
        Err(rejection) => {
            let status = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return refuse(status, rejection.body_text());
        }
    };
    // Scoped by the bearer token: one client cannot take, probe or replay
    // another's keys.
    let key = match idempotency_key(&headers) {
        Ok(key) => key.map(|key| format!("{:016x}/{key}", token_scope(&headers))),
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    // Held first, then looked up: a request that finished meanwhile is found.
    let mut resume = Progress::default();
    let hold = match &key {
        None => None,
        Some(key) => {
            let Some(hold) = KeyHold::take(&api.keys_in_flight, key) else {
                let why = "a request with this Idempotency-Key is under way; retry once it is answered";
                return refuse(StatusCode::CONFLICT, why.into());
            };
            let fingerprint = fingerprint(&request);
            match api.store.idempotent(key) {
                Ok(Some(record)) if record.fingerprint == fingerprint => {
                    match serde_json::from_slice::<Partial>(&record.answer) {
                        // Cut after some of its chunks were stored: go on from there.
                        Ok(partial) => resume = partial.ringmail_partial,
                        Err(_) => {
                            let mut response = (StatusCode::OK, record.answer).into_response();
                            let json = header::HeaderValue::from_static("application/json");
                            response.headers_mut().insert(header::CONTENT_TYPE, json);
                            let replayed = header::HeaderValue::from_static("true");
                            response.headers_mut().insert("idempotent-replayed", replayed);
                            return response;
                        }
                    }
                    Some((hold, fingerprint))
                }
                Ok(Some(_)) => {
                    let why = "this Idempotency-Key was used with a different request";
                    return refuse(StatusCode::UNPROCESSABLE_ENTITY, why.into());
                }
                Ok(None) => Some((hold, fingerprint)),
                Err(error) => return refusal(super::refusal::Refusal::from(&error)),
            }
        }
    };
    if request.recipients.len() > api.settings.recipients_max {
        let why =
            format!("recipients: {} in one request, at most {}", request.recipients.len(), api.settings.recipients_max);
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    if let Some(reason) = api.shedding.reason() {
        Metrics::count(&api.metrics.rejected_requests, 1);
        return busy(reason);
    }
    // Templates and MIME building are CPU work: off the reactor.
    let limits = api.store.config().limits.clone();
    let hostname = api.settings.hostname.clone();
    let bounds = api.settings.bounds;
    let mut expansion =
        match tokio::task::spawn_blocking(move || Expansion::prepare(request, &limits, &hostname, &bounds)).await {
            Ok(Ok(expansion)) => expansion,
            Ok(Err(BadRequest(why, Problem::TooLarge))) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, why),
            Ok(Err(BadRequest(why, Problem::Invalid))) => return refuse(StatusCode::BAD_REQUEST, why),
            Err(join) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("checking the request: {join}")),
        };
    expansion.skip_to(resume.next, resume.expanded);
    let key = key.zip(hold);
    // On a task of its own: a client that goes away does not stop a request half
    // stored (a retry with its key meanwhile gets 409, then the answer). The tasks
    // are bounded as the requests are (`http.requests_max`): the door's permit ends
    // with the connection, this one with the task.
    let Ok(permit) = Arc::clone(&api.tasks).try_acquire_owned() else {
        Metrics::count(&api.metrics.rejected_requests, 1);
        return busy(format!("too many inject requests at work (http.requests_max = {})", api.settings.requests_max));
    };
    let task = store_in_chunks(api, expansion, key, resume);
    match tokio::spawn(async move {
        let response = task.await;
        drop(permit);
        response
    })
    .await
    {
        Ok(response) => response,
        Err(join) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("storing the messages: {join}")),
    }
}

/// Bytes of rendered messages one chunk of a request holds at most: a request that
/// expands further is rendered and stored a chunk at a time, each synced before the
/// next is rendered, so its memory stays about one chunk whatever it expands to.
pub const INJECT_CHUNK_BYTES: u64 = 32 << 20;

/// How far a request got: the next recipient to render, and the answer so far.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
struct Progress {
    next: usize,
    /// Bytes of messages rendered so far (the request's `http.expansion_max_bytes`).
    #[serde(default)]
    expanded: u64,
    success_count: usize,
    failed_recipients: Vec<String>,
    errors: Vec<String>,
}

/// The record of a keyed request stored in part (its answer is written when the last
/// chunk is): the marker [`inject`] resumes from.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Partial {
    ringmail_partial: Progress,
}

impl Progress {
    fn answer(&self) -> InjectResponse {
        InjectResponse {
            success_count: self.success_count,
            fail_count: self.failed_recipients.len(),
            failed_recipients: self.failed_recipients.clone(),
            errors: self.errors.clone(),
        }
    }
}

type HeldKey = (String, (KeyHold, u64));

/// Renders and stores `expansion` a chunk ([`INJECT_CHUNK_BYTES`]) at a time; the
/// answer counts every chunk. A chunk the store refuses (or does not confirm in
/// time) ends the request: nothing stored yet, or a key to retry with → the refusal
/// as it is (503…; the retry with the key stores exactly the rest); some stored and
/// no key → 200 with the rest in `failed_recipients`, each saying whether it was
/// not queued or may have been (a chunk whose write was not confirmed).
async fn store_in_chunks(
    api: Api,
    mut expansion: Expansion,
    mut key: Option<HeldKey>,
    mut progress: Progress,
) -> Response {
    let resumed = progress.next > 0;
    let keyed = key.is_some();
    loop {
        let (returned, chunk) = match tokio::task::spawn_blocking(move || {
            let chunk = expansion.next_chunk(INJECT_CHUNK_BYTES);
            (expansion, chunk)
        })
        .await
        {
            Ok(done) => done,
            Err(join) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("building the messages: {join}")),
        };
        expansion = returned;
        let stored_before = resumed || progress.success_count > 0;
        let built = match chunk {
            Ok(built) => built,
            Err(BadRequest(why, problem)) if !stored_before => {
                Metrics::count(&api.metrics.rejected_requests, 1);
                let status =
                    if problem == Problem::TooLarge { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
                return error(status, why);
            }
            Err(BadRequest(why, _)) => {
                let rest: Vec<String> = expansion.remaining().map(str::to_string).collect();
                return partly(&api, progress, rest, &why);
            }
        };
        let Built { messages, accepted: _, failed_recipients, errors } = built;
        let chunk_recipients: Vec<String> =
            messages.iter().flat_map(|m| m.recipients.iter().map(|r| r.address.clone())).collect();
        progress.failed_recipients.extend(failed_recipients);
        progress.errors.extend(errors);
        let last = expansion.done();
        if messages.is_empty() {
            if !last {
                continue;
            }
            // Earlier chunks stored and this last one all failed: the answer is
            // still recorded for the key, alone.
            if let (true, Some((key, (_, fingerprint)))) = (stored_before, &key) {
                let answer = serde_json::to_vec(&progress.answer()).unwrap_or_default();
                let once = queue_store::Idempotency { key: key.clone(), fingerprint: *fingerprint, answer };
                if let Ok(pending) = api.store.submit_enqueue_once(Vec::new(), Some(once)) {
                    let _ = pending.await;
                }
            }
            break;
        }
        // Signed before they are stored; signers too busy for too long end the
        // request as a store refusal would (nothing of this chunk is stored).
        let (messages, signatures) = match sign_chunk(&api.signer, messages).await {
            Ok(signed) => signed,
            Err(sign_error) if !stored_before || keyed => {
                Metrics::count(&api.metrics.rejected_requests, 1);
                return refusal(super::refusal::Refusal::from(&sign_error));
            }
            Err(sign_error) => {
                let rest = expansion.remaining().map(str::to_string);
                return partly(
                    &api,
                    progress,
                    chunk_recipients.into_iter().chain(rest).collect(),
                    &sign_error.to_string(),
                );
            }
        };
        let recipients: usize = messages.iter().map(|m| m.recipients.len()).sum();
        let receptions: Vec<_> = messages
            .iter()
            .zip(signatures)
            .map(|(m, signatures)| {
                let recipients: Vec<_> = m.recipients.iter().map(|r| (r.address.clone(), r.metadata.clone())).collect();
                (m.sender.clone(), m.tenant.clone(), m.campaign.clone(), m.metadata.clone(), recipients, signatures)
            })
            .collect();
        let count = messages.len();
        let after = Progress {
            next: expansion.next_index(),
            expanded: expansion.expanded(),
            success_count: progress.success_count + recipients,
            failed_recipients: progress.failed_recipients.clone(),
            errors: progress.errors.clone(),
        };
        let once = key.as_ref().map(|(key, (_, fingerprint))| {
            // The last chunk writes the answer; the others where to go on from.
            let answer = if last {
                serde_json::to_vec(&after.answer())
            } else {
                serde_json::to_vec(&Partial { ringmail_partial: after.clone() })
            };
            queue_store::Idempotency { key: key.clone(), fingerprint: *fingerprint, answer: answer.unwrap_or_default() }
        });
        // Bounded (`store.sync_wait_max_ms`): hung storage gets a 503, not a hung client.
        let mut unconfirmed = false;
        let result = match api.store.submit_enqueue_once(messages, once) {
            Ok(mut pending) => {
                let stall = api.store.stall_signal();
                tokio::select! {
                    answer = &mut pending => answer,
                    () = stall.stalled() => {
                        unconfirmed = true;
                        // The write may still happen: the key stays held until it is
                        // answered, so a retry meanwhile gets 409, and after it the
                        // answer (or where to go on from).
                        if let Some((_, (hold, _))) = key.take() {
                            tokio::spawn(async move {
                                let _ = pending.await;
                                drop(hold);
                            });
                        }
                        Err(StoreError::Unhealthy(queue_store::Health::Stalled))
                    }
                }
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(ids) => {
                api.shedding.note_arrival();
                Metrics::count(&api.metrics.injected_messages, count as u64);
                Metrics::count(&api.metrics.injected_recipients, recipients as u64);
                for (id, (sender, tenant, campaign, metadata, recipients, signatures)) in ids.iter().zip(receptions) {
                    let id = id.to_string();
                    let response =
                        crate::log::Response { code: 250, enhanced_code: None, content: "queued (HTTP inject)".into() };
                    let reception = Reception {
                        id: &id,
                        sender: &sender,
                        peer: None,
                        response,
                        tenant: tenant.as_deref(),
                        campaign: campaign.as_deref(),
                        metadata: &metadata,
                        dkim: &signatures,
                    };
                    send_receptions(&api.receptions, &api.metrics.log_records_dropped, reception, recipients);
                }
                progress = after;
            }
            Err(store_error) if !stored_before || keyed => {
                Metrics::count(&api.metrics.rejected_requests, 1);
                return refusal(super::refusal::Refusal::from(&store_error));
            }
            Err(store_error) => {
                let chunk: Vec<String> = receptions.into_iter().flat_map(|r| r.4).map(|(address, _)| address).collect();
                let why = store_error.to_string();
                let mut progress = progress;
                let mut rest = Vec::new();
                if unconfirmed {
                    for address in chunk {
                        progress.errors.push(format!(
                            "{address}: outcome unknown ({why}): it may be queued; sending it again may deliver it twice"
                        ));
                        progress.failed_recipients.push(address);
                    }
                } else {
                    rest = chunk;
                }
                rest.extend(expansion.remaining().map(str::to_string));
                return partly(&api, progress, rest, &why);
            }
        }
        if last {
            break;
        }
    }
    if progress.success_count == 0 {
        Metrics::count(&api.metrics.rejected_requests, 1);
        return (StatusCode::BAD_REQUEST, Json(progress.answer())).into_response();
    }
    (StatusCode::OK, Json(progress.answer())).into_response()
}

/// Some chunks were stored and the next could not be: 200 with the recipients not
/// stored in `failed_recipients`, each saying why.
fn partly(api: &Api, mut progress: Progress, rest: Vec<String>, why: &str) -> Response {
    Metrics::count(&api.metrics.rejected_requests, 1);
    for address in rest {
        progress.errors.push(format!("{address}: not queued ({why}); send it again"));
        progress.failed_recipients.push(address);
    }
    (StatusCode::OK, Json(progress.answer())).into_response()
}

/// Why mail was refused (the store, the signers), as the client should hear it
/// (`ingest::refusal`).
fn refusal(refusal: super::refusal::Refusal) -> Response {
    let mut response = error(refusal.http_status(), refusal.to_string());
    if let Some(seconds) = refusal.retry_after_seconds() {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let text = api.metrics.render(&api.store);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// 200 only when the store accepts writes and every engine thread runs; otherwise
/// 503 saying what is wrong (a load balancer then sends ingest elsewhere).
async fn health(State(api): State<Api>) -> Response {
    let backend = api.metrics.parts.backend();
    let store = api.store.health();
    if store != queue_store::Health::Healthy {
        let other = store;
        let body =
            serde_json::json!({ "status": "unhealthy", "error": format!("store: {other:?}"), "backend": backend });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let down = api.metrics.parts.down();
    if !down.is_empty() {
        let body = serde_json::json!({
            "status": "degraded",
            "error": format!("engine parts down: {}", down.join("; ")),
            "down": down,
            "backend": backend,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    (StatusCode::OK, Json(serde_json::json!({ "status": "ok", "backend": backend }))).into_response()
}
