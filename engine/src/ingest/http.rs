//! The HTTP control plane: `POST /api/inject/v1`, `GET /metrics`, `GET /healthz`.
//!
//! Inject takes a batch of messages and answers only after the store has synced them
//! (the durability contract): 200 with their ids; 400 with a JSON error naming the
//! message and field at fault (nothing of the batch is queued); 413 when the body is
//! too large; 503 with `Retry-After` when the queue is full or the store unhealthy.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use queue_store::{NewMessage, NewRecipient, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::log::{send_receptions, Reception, Record};
use crate::metrics::Metrics;

/// One message of an inject request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectMessage {
    /// The envelope sender; "" for the null reverse-path.
    pub sender: String,
    pub recipients: Vec<String>,
    /// The raw RFC 5322 message (headers and body), as text.
    pub content: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    pub messages: Vec<InjectMessage>,
}

#[derive(Debug, Serialize)]
pub struct InjectResponse {
    pub accepted: usize,
    pub recipients: usize,
    pub ids: Vec<String>,
}

#[derive(Clone)]
struct Api {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    /// `Reception` records for the delivery log (written by the completer).
    receptions: crossbeam_channel::Sender<Record>,
}

/// The router, ready to serve.
pub fn router(
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    batch_max: usize,
    body_max: usize,
    receptions: crossbeam_channel::Sender<Record>,
) -> Router {
    Router::new()
        .route("/api/inject/v1", post(inject))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(health))
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(Api { store, metrics, batch_max, receptions })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn inject(State(api): State<Api>, request: Result<Json<InjectRequest>, JsonRejection>) -> Response {
    let request = match request {
        Ok(Json(request)) => request,
        Err(rejection) => {
            Metrics::count(&api.metrics.rejected_requests, 1);
            let status = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, rejection.body_text());
        }
    };
    if request.messages.is_empty() || request.messages.len() > api.batch_max {
        Metrics::count(&api.metrics.rejected_requests, 1);
        return error(StatusCode::BAD_REQUEST, format!("messages: between 1 and {} per request", api.batch_max));
    }
    let recipients: usize = request.messages.iter().map(|m| m.recipients.len()).sum();
    let envelopes: Vec<(String, Vec<String>)> =
        request.messages.iter().map(|m| (m.sender.clone(), m.recipients.clone())).collect();
    let batch: Vec<NewMessage> = request
        .messages
        .into_iter()
        .map(|message| NewMessage {
            sender: message.sender,
            recipients: message.recipients.into_iter().map(NewRecipient::new).collect(),
            body: message.content.into_bytes(),
            tenant: message.tenant,
            campaign: message.campaign,
            metadata: Vec::new(),
        })
        .collect();
    let count = batch.len();
    let result = match api.store.submit_enqueue(batch) {
        Ok(pending) => pending.await,
        Err(error) => Err(error),
    };
    match result {
        Ok(ids) => {
            Metrics::count(&api.metrics.injected_messages, count as u64);
            Metrics::count(&api.metrics.injected_recipients, recipients as u64);
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            log_receptions(&api, &ids, envelopes);
            (StatusCode::OK, Json(InjectResponse { accepted: count, recipients, ids })).into_response()
        }
        Err(store_error) => {
            Metrics::count(&api.metrics.rejected_requests, 1);
            refusal(&store_error)
        }
    }
}

/// Why the store refused, as the client should hear it.
fn refusal(store_error: &StoreError) -> Response {
    match store_error {
        StoreError::Invalid { .. } => error(StatusCode::BAD_REQUEST, store_error.to_string()),
        StoreError::Storage(_) | StoreError::Corrupt { .. } => {
            error(StatusCode::INTERNAL_SERVER_ERROR, store_error.to_string())
        }
        // Sticky until the engine restarts: no Retry-After.
        StoreError::Unhealthy(queue_store::Health::NeedsReopen) | StoreError::Closed => {
            error(StatusCode::SERVICE_UNAVAILABLE, store_error.to_string())
        }
        error_ if error_.is_temporary() => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, store_error.to_string());
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, store_error.to_string()),
    }
}

/// One `Reception` record per recipient of each stored message.
fn log_receptions(api: &Api, ids: &[String], envelopes: Vec<(String, Vec<String>)>) {
    for (id, (sender, recipients)) in ids.iter().zip(envelopes) {
        let response = crate::log::Response { code: 250, enhanced_code: None, content: "queued (HTTP inject)".into() };
        let reception = Reception { id, sender: &sender, peer: None, response };
        send_receptions(&api.receptions, &api.metrics.log_records_dropped, reception, recipients);
    }
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let text = api.metrics.render(&api.store);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn health(State(api): State<Api>) -> Response {
    match api.store.health() {
        queue_store::Health::Healthy => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response(),
        other => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {other:?}")),
    }
}
