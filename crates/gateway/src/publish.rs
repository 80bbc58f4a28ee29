//! `POST /channels/{namespace}/{name}`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::access::Denied;
use super::{GatewayState, send_key};
use futures::future::join_all;
use wsbridge_core::ChannelKey;
use wsbridge_dataplane::delivery::{AttemptOutcome, publish_key};
use wsbridge_dataplane::metrics::ChannelLabels;
use wsbridge_dataplane::{Message, Origin, Payload, PayloadKind, send_auth};
use wsbridge_http::publish::{self, SentOut};
use wsbridge_translate as translate;

/// `POST /channels/{namespace}/{name}`: a publish (routed beside the
/// WebSocket upgrade on the same path, in [`crate::remote::router`]).
pub(crate) async fn handle(
    State(shared): State<Arc<GatewayState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = match publish::channel_key(path) {
        Ok(channel) => publish_on(&shared, channel, &headers, body).await,
        Err(rejection) => tagged(rejection, "InvalidChannel"),
    };
    let reason = response.extensions().get::<Reason>().map_or("Accepted", |r| r.0);
    shared.metrics.observe(
        response.status().as_u16(),
        reason,
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The reason a response is counted under in the metrics: an extension,
/// so it never goes out to the client.
#[derive(Debug, Clone, Copy)]
struct Reason(&'static str);

/// Tags a response with its reason for the metrics.
fn tagged(mut response: Response, reason: &'static str) -> Response {
    response.extensions_mut().insert(Reason(reason));
    response
}

/// A JSON error, tagged with its reason.
fn refused(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Response {
    tagged(publish::error(status, reason, message), reason)
}

async fn publish_on(shared: &GatewayState, channel: ChannelKey, headers: &HeaderMap, body: Body) -> Response {
    let routes = shared.index.routes(&channel);
    let Some(info) = routes.channel.as_ref() else {
        return tagged(publish::channel_not_found(&channel), "ChannelNotFound");
    };
    if !info.allow_anonymous_publish {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(e) = shared.access.check(authorization, &channel).await {
            if let Denied::Unavailable(_) = e {
                tracing::warn!(%channel, error = %e, "access review failed");
            }
            let (status, reason) = e.status_and_reason();
            let mut response = refused(status, reason, e.to_string());
            if let Denied::Throttled = e {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            return response;
        }
    }
    let facts = shared.channels.read().ok().and_then(|c| c.get(&channel).copied());
    let max = facts.map_or(translate::channel_max_message_bytes(&Default::default()), |f| {
        f.max_message_bytes
    });
    let key = match publish_key(headers) {
        Ok(key) => key,
        Err(e) => return refused(StatusCode::BAD_REQUEST, "InvalidIdempotencyKey", e.to_string()),
    };
    let payload = match publish::read_message(headers, body, max).await {
        Ok(p) => p,
        Err(rejection) => return tagged(rejection, "BadMessage"),
    };
    match publish_payload(shared, &channel, payload, key).await {
        Ok(published) if published.durable => durably_accepted(&published, &channel),
        Ok(published) => publish::accepted(
            &published.id,
            &channel,
            published.subscribers,
            SentOut::Bridges(published.bridges),
        ),
        Err(refusal) => {
            let retry_after = refusal.retry_after;
            let mut response = refused(refusal.status, refusal.reason, refusal.message);
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
    }
}

/// 202 for a message of a `rabbitmq` channel: the broker confirmed it, so
/// the Subscriptions' backlogs and the Bridges' queues hold it
/// (`"durable": true`; `subscribers` and `bridges` are those this gateway
/// knows of, which the broker feeds).
fn durably_accepted(published: &Published, channel: &ChannelKey) -> Response {
    let body = serde_json::json!({
        "accepted": true,
        "durable": true,
        "id": published.id,
        "channel": channel.to_string(),
        "subscribers": published.subscribers,
        "bridges": published.bridges,
    });
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

/// A published message, as the 202 tells it.
pub(crate) struct Published {
    pub id: String,
    pub subscribers: usize,
    pub bridges: usize,
    /// Confirmed by the broker (a `rabbitmq` channel).
    pub durable: bool,
}

/// Why a read message was not published.
pub(crate) struct Refused {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
    /// Seconds for `Retry-After`, when a retry soon may succeed.
    pub retry_after: Option<u32>,
}

fn unpublished(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        status,
        reason,
        message: message.into(),
        retry_after: None,
    }
}

/// The reason of a `503` for a message of a `rabbitmq` channel that the
/// broker did not confirm (down, refusing, or too slow to confirm).
pub(crate) const BROKER_UNAVAILABLE: &str = "BrokerUnavailable";

/// The reason of a `503` on a `rabbitmq` channel when this gateway has no
/// broker configured.
pub(crate) const NO_BROKER: &str = "NoBroker";

/// The `503` for a `rabbitmq` channel on a gateway without a broker.
pub(crate) fn no_broker(channel: &ChannelKey) -> Refused {
    unpublished(
        StatusCode::SERVICE_UNAVAILABLE,
        NO_BROKER,
        format!(
            "channel {channel} has backend: rabbitmq and this gateway has no broker configured (chart value broker.url or broker.existingSecret; --rabbitmq-url-file)"
        ),
    )
}

/// Publishes on a `rabbitmq` channel: to its exchange with publisher
/// confirms, `Ok` once the broker confirmed. Nothing is sent to workers or
/// delivered from here: the Bridges' queues and the Subscriptions'
/// backlogs take it, and this replica's WebSocket clients get it back
/// through its listener (as every replica's do), so never twice.
async fn publish_durable(
    shared: &GatewayState,
    channel: &ChannelKey,
    payload: Payload,
    key: Option<String>,
) -> Result<Published, Refused> {
    let Some(durable) = shared.durable.as_ref() else {
        return Err(no_broker(channel));
    };
    let routes = shared.index.routes(channel);
    // A retried publish (same key) waits for the first; once confirmed,
    // it is not written again.
    let mut record = match &key {
        Some(key) => Some(shared.recent.lock(channel, key).await),
        None => None,
    };
    let mut message = Message::new(
        payload,
        Origin::Published,
        translate::channel_source(&channel.namespace, &channel.name),
    );
    if let Some(id) = record.as_ref().and_then(|r| r.id.clone()) {
        message = message.with_id(id);
    }
    if let Some(record) = record.as_mut() {
        record.id.get_or_insert_with(|| message.id().to_owned());
        if record.dispatched {
            shared.recent.skipped_subscribers();
            return Ok(Published {
                id: message.id().to_owned(),
                subscribers: 0,
                bridges: 0,
                durable: true,
            });
        }
    }
    let result = durable.publish(channel, &message).await;
    // The connection gauges as this publish found the broker (the
    // once-a-second sweep may not have seen a reconnect yet).
    durable.metrics().observe(durable.broker());
    if let Err(e) = result {
        tracing::warn!(%channel, error = %e, "the broker did not confirm a publish");
        return Err(Refused {
            retry_after: Some(1),
            ..unpublished(
                StatusCode::SERVICE_UNAVAILABLE,
                BROKER_UNAVAILABLE,
                format!("{e}; nothing was accepted, retry later"),
            )
        });
    }
    if let Some(record) = record.as_mut() {
        record.dispatched = true;
    }
    shared
        .dataplane
        .published
        .get_or_create(&ChannelLabels {
            channel: channel.to_string(),
        })
        .inc();
    Ok(Published {
        id: message.id().to_owned(),
        subscribers: routes.subscribers.len(),
        bridges: routes.bridges.len(),
        durable: true,
    })
}

/// Publishes a message that passed its checks and was read (an HTTP body,
/// a remote client's frame): out through every bridge of the channel, then
/// to its subscribers. With `key`, a retry is sent only where the first
/// attempt did not reach.
pub(crate) async fn publish_payload(
    shared: &GatewayState,
    channel: &ChannelKey,
    payload: Payload,
    key: Option<String>,
) -> Result<Published, Refused> {
    if shared.is_durable(channel) {
        return publish_durable(shared, channel, payload, key).await;
    }
    let routes = shared.index.routes(channel);
    let facts = shared.channels.read().ok().and_then(|c| c.get(channel).copied());
    if let Some(expected) = facts.map(|f| f.bridges).filter(|n| *n > routes.bridges.len()) {
        return Err(unpublished(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoPathToEndpoint",
            format!(
                "channel {channel} has {expected} bridges and this gateway has seen {} of them so far; retry shortly",
                routes.bridges.len()
            ),
        ));
    }
    // Every bridge must be able to take it before anyone gets it.
    let mut targets = Vec::with_capacity(routes.bridges.len());
    {
        let paths = shared.paths.read().expect("paths lock");
        for route in &routes.bridges {
            match paths.get(&route.bridge) {
                Some(super::BridgePath {
                    address: Some(address),
                    connected: true,
                    uid,
                }) => {
                    targets.push((route.bridge.clone(), address.clone(), uid.clone()));
                }
                _ => {
                    return Err(unpublished(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "NoPathToEndpoint",
                        format!(
                            "bridge {} is not connected to endpoint {}; retry later",
                            route.bridge, route.endpoint.name
                        ),
                    ));
                }
            }
        }
    }
    // A retried publish (same key) waits for the first and picks up where it ended.
    let mut record = match &key {
        Some(key) => Some(shared.recent.lock(channel, key).await),
        None => None,
    };
    let mut message = Message::new(
        payload,
        Origin::Published,
        translate::channel_source(&channel.namespace, &channel.name),
    );
    if let Some(id) = record.as_ref().and_then(|r| r.id.clone()) {
        message = message.with_id(id);
    }
    let message = Arc::new(message);
    if let Some(record) = record.as_mut() {
        record.id.get_or_insert_with(|| message.id().to_owned());
    }
    // Charged before any queue takes it: refused rather than grown past
    // the budget (subscribers are behind; the publisher retries).
    if let Err(e) = shared.engine.admit(&message) {
        return Err(unpublished(
            StatusCode::SERVICE_UNAVAILABLE,
            publish::MEMORY_BUDGET_EXHAUSTED,
            format!("{e}; retry later"),
        ));
    }
    // To every bridge at once; one that took it already (a retry) is skipped.
    let pending: Vec<_> = targets
        .iter()
        .filter(|(bridge, _, _)| {
            let sent = record.as_ref().is_some_and(|r| r.bridges.contains(bridge));
            if sent {
                shared.recent.skipped_endpoint();
            }
            !sent
        })
        .collect();
    let sends = pending.iter().map(|(bridge, address, uid)| {
        let message = &message;
        async move {
            (
                bridge,
                send_to_worker(shared, address, uid.as_deref(), message).await,
            )
        }
    });
    let mut failed = None;
    for (bridge, sent) in join_all(sends).await {
        match sent {
            Ok(()) => {
                if let Some(record) = record.as_mut() {
                    record.bridges.insert(bridge.clone());
                }
            }
            Err(reason) => {
                failed.get_or_insert((bridge, reason));
            }
        }
    }
    if let Some((bridge, reason)) = failed {
        return Err(unpublished(
            StatusCode::SERVICE_UNAVAILABLE,
            "NoPathToEndpoint",
            format!("bridge {bridge} could not take the message: {reason}; retry later"),
        ));
    }
    let subscribers = match record.as_mut() {
        Some(record) if record.dispatched => {
            shared.recent.skipped_subscribers();
            0
        }
        _ => {
            let report = shared.engine.dispatch(channel, message.clone());
            shared
                .dataplane
                .published
                .get_or_create(&ChannelLabels {
                    channel: channel.to_string(),
                })
                .inc();
            if let Some(record) = record.as_mut() {
                record.dispatched = true;
            }
            report.subscribers
        }
    };
    Ok(Published {
        id: message.id().to_owned(),
        subscribers,
        bridges: targets.len(),
        durable: false,
    })
}

/// The worker's `/v1/send`, with the message's identity in CloudEvents
/// headers and the Bridge's send credential (derived from the installation
/// key and the Bridge's UID). A worker that refuses the credential (`401`:
/// the key rotated and one side has not caught up) is tried with the key
/// read again, then with the key before it.
async fn send_to_worker(
    shared: &GatewayState,
    address: &http::Uri,
    uid: Option<&str>,
    message: &Message,
) -> Result<(), String> {
    let uri: http::Uri = format!("{}/v1/send", address.to_string().trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad worker address: {e}"))?;
    let mut headers = message.http_headers();
    if message.payload().kind() == PayloadKind::Binary {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    let Some(uid) = uid else {
        return Err("the gateway has not seen the Bridge's UID yet".into());
    };
    let mut tried: Vec<send_key::Key> = Vec::new();
    for reload in [false, true] {
        for key in shared.send_keys.keys(reload) {
            if tried.contains(&key) {
                continue;
            }
            tried.push(key.clone());
            let credential = send_auth::credential(&key, uid);
            let mut value = HeaderValue::try_from(send_auth::authorization(&credential))
                .map_err(|_| "the send credential is not a header value".to_string())?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
            match shared
                .http
                .post(&uri, &headers, message.payload().bytes(), shared.send_timeout)
                .await
            {
                AttemptOutcome::Response { status, .. } if status.is_success() => return Ok(()),
                AttemptOutcome::Response { status, .. } if status == StatusCode::UNAUTHORIZED => {}
                AttemptOutcome::Response { status, .. } => {
                    return Err(format!("the worker answered {status}"));
                }
                AttemptOutcome::Timeout => return Err("the worker did not answer in time".into()),
                AttemptOutcome::Network(e) | AttemptOutcome::Denied(e) => return Err(e),
            }
        }
    }
    Err(if tried.is_empty() {
        "the gateway holds no send key (--send-key-file), and workers take no sends without it".into()
    } else {
        "the worker refused the gateway's send credential (401): the send key is rotating or differs from the controller's".into()
    })
}
