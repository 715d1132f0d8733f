//! The HTTP control plane: `POST /api/inject/v1`, `GET /metrics`, `GET /healthz`.
//!
//! Inject takes KumoMTA's request shape (see [`super::inject`]) and answers only after
//! the store has synced what it accepted (the durability contract): 200 with
//! `{"success_count", "fail_count", "failed_recipients", "errors"}` (a recipient that
//! cannot be accepted fails alone); 401 without a valid bearer token (when tokens are
//! configured); 400 with a JSON `error` naming the field at fault (nothing queued);
//! 413 when the body is too large; 503 with `Retry-After` while ingest is shedding
//! load (store unhealthy or full, memory over its limit).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue_store::{Store, StoreError};
use serde::Serialize;

use super::inject::{build_within, BadRequest, Built, InjectRequest, Problem};
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
}

/// The router, ready to serve.
pub fn router(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shedding: Arc<Shedding>,
    settings: HttpSettings,
    receptions: crossbeam_channel::Sender<Record>,
) -> Router {
    let body_max = settings.body_max;
    Router::new()
        .route("/api/inject/v1", post(inject))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(Api { store, metrics, shedding, settings: Arc::new(settings), receptions })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn busy(reason: String) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

async fn inject(State(api): State<Api>, request: Result<Json<InjectRequest>, JsonRejection>) -> Response {
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
    let built = match tokio::task::spawn_blocking(move || build_within(request, &limits, &hostname, &bounds)).await {
        Ok(Ok(built)) => built,
        Ok(Err(BadRequest(why, Problem::TooLarge))) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, why),
        Ok(Err(BadRequest(why, Problem::Invalid))) => return refuse(StatusCode::BAD_REQUEST, why),
        Err(join) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("building the messages: {join}")),
    };
    let Built { messages, accepted: _, failed_recipients, errors } = built;
    let answer = |success_count: usize| InjectResponse {
        success_count,
        fail_count: failed_recipients.len(),
        failed_recipients: failed_recipients.clone(),
        errors: errors.clone(),
    };
    if messages.is_empty() {
        Metrics::count(&api.metrics.rejected_requests, 1);
        return (StatusCode::BAD_REQUEST, Json(answer(0))).into_response();
    }
    let recipients: usize = messages.iter().map(|m| m.recipients.len()).sum();
    let receptions: Vec<_> = messages
        .iter()
        .map(|m| {
            let recipients: Vec<_> = m.recipients.iter().map(|r| (r.address.clone(), r.metadata.clone())).collect();
            (m.sender.clone(), m.tenant.clone(), m.campaign.clone(), m.metadata.clone(), recipients)
        })
        .collect();
    let count = messages.len();
    // Bounded (`store.sync_wait_max_ms`): hung storage gets a 503, not a hung client.
    let result = match api.store.submit_enqueue(messages) {
        Ok(pending) => pending.or_stalled(api.store.stall_signal()).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(ids) => {
            api.shedding.note_arrival();
            Metrics::count(&api.metrics.injected_messages, count as u64);
            Metrics::count(&api.metrics.injected_recipients, recipients as u64);
            for (id, (sender, tenant, campaign, metadata, recipients)) in ids.iter().zip(receptions) {
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
                };
                send_receptions(&api.receptions, &api.metrics.log_records_dropped, reception, recipients);
            }
            (StatusCode::OK, Json(answer(recipients))).into_response()
        }
        Err(store_error) => {
            Metrics::count(&api.metrics.rejected_requests, 1);
            refusal(&store_error)
        }
    }
}

/// Why the store refused, as the client should hear it (`ingest::refusal`).
fn refusal(store_error: &StoreError) -> Response {
    let refusal = super::refusal::Refusal::from(store_error);
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
