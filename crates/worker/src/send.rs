//! `POST /v1/send`: the publish path's last hop. The gateway has already
//! authorized the publisher and delivers to subscribers itself; the worker
//! only sends the message out to its endpoint (so nothing is delivered twice).
//!
//! On a `rabbitmq` Channel the gateway publishes to the broker instead,
//! and the worker sends out what the Bridge's queue there holds: a send
//! gets `409` with reason `ChannelIsDurable`.
//!
//! Only the gateway may send: each request presents the Bridge's send
//! credential (`Authorization: Bearer`, see
//! [`wsbridge_dataplane::send_auth`]), which the worker holds from its
//! environment; anything else gets `401` and sends nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use wsbridge_core::SecretString;
use wsbridge_dataplane::budget::MemoryBudget;
use wsbridge_dataplane::endpoint::{EndpointHandle, SendError};
use wsbridge_dataplane::{Message, Origin, send_auth};
use wsbridge_http::publish;

/// Where sends go right now: the live connection of the current session.
#[derive(Clone)]
pub struct SendTarget {
    pub handle: Arc<EndpointHandle>,
    pub max_message_bytes: usize,
    /// `ce-source` when the caller gives none.
    pub source: String,
}

/// Shared slot, empty between sessions.
pub type SendSlot = Arc<RwLock<Option<SendTarget>>>;

#[derive(Clone)]
struct SendState {
    slot: SendSlot,
    /// The worker's memory budget: the endpoint's send queue holds messages
    /// within it, like the subscriber queues.
    budget: Arc<MemoryBudget>,
    /// What a sender must present; `None` (no credential in the pod)
    /// refuses every send.
    credential: Option<SecretString>,
    /// The current session's Channel is `rabbitmq`.
    on_broker: Arc<AtomicBool>,
}

/// The send credential from the pod's environment (an empty value counts
/// as none).
pub fn credential_from_env(lookup: impl Fn(&str) -> Option<String>) -> Option<SecretString> {
    lookup(wsbridge_api::worker_env::SEND_CREDENTIAL)
        .filter(|v| !v.is_empty())
        .map(SecretString::new)
}

/// The send route.
pub fn router(
    slot: SendSlot,
    budget: Arc<MemoryBudget>,
    credential: Option<SecretString>,
    on_broker: Arc<AtomicBool>,
) -> Router {
    Router::new().route("/v1/send", post(send)).with_state(SendState {
        slot,
        budget,
        credential,
        on_broker,
    })
}

/// `401` with a JSON reason (never the credential).
fn unauthorized(message: &str) -> Response {
    let mut response = publish::error(StatusCode::UNAUTHORIZED, "Unauthorized", message);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn send(
    State(SendState {
        slot,
        budget,
        credential,
        on_broker,
    }): State<SendState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(credential) = credential else {
        return unauthorized("this worker holds no send credential, so it takes no sends");
    };
    let authorization = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if !send_auth::presented(authorization, &credential) {
        return unauthorized(if authorization.is_none() {
            "a send needs the Bridge's send credential (Authorization: Bearer); only the gateway holds it"
        } else {
            "the send credential is not this Bridge's"
        });
    }
    if on_broker.load(Ordering::Relaxed) {
        return publish::error(
            StatusCode::CONFLICT,
            "ChannelIsDurable",
            "this Bridge's Channel has backend rabbitmq: publishes reach the endpoint through the broker \
             (publish on the Channel's address), not through the worker",
        );
    }
    let target = slot.read().map(|s| s.clone()).unwrap_or_default();
    let Some(target) = target else {
        return publish::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotConnected",
            "the bridge has no endpoint connection yet",
        );
    };
    let payload = match publish::read_message(&headers, body, target.max_message_bytes).await {
        Ok(p) => p,
        Err(rejection) => return rejection,
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut message = Message::new(
        payload,
        Origin::Published,
        header("ce-source").unwrap_or(target.source.clone()),
    );
    if let Some(id) = header("ce-id") {
        message = message.with_id(id);
    }
    let id = message.id().to_owned();
    if let Err(e) = message.charge(&budget) {
        return publish::error(
            StatusCode::SERVICE_UNAVAILABLE,
            publish::MEMORY_BUDGET_EXHAUSTED,
            format!("{e}; retry later"),
        );
    }
    match target.handle.try_send(Arc::new(message)) {
        Ok(()) => (StatusCode::ACCEPTED, axum::Json(json!({"id": id}))).into_response(),
        Err(SendError::TooLarge { size, max }) => publish::too_large(Some(size), max),
        Err(e @ (SendError::NotConnected | SendError::Full | SendError::Stopped)) => publish::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "EndpointUnavailable",
            e.to_string(),
        ),
    }
}
