//! Channels, Subscriptions and Bridges as the routing index and the publish
//! path see them: subscriber and dead-letter addresses, delivery options and
//! message size limits.

use wsbridge_api::{self as api, BridgeSpec, ChannelSpec, DeliverySpec, Destination, SubscriptionSpec};
use wsbridge_dataplane::delivery::{BackoffPolicy, Ordering, Overflow};
use wsbridge_dataplane::endpoint::DEFAULT_MAX_MESSAGE_BYTES;
use wsbridge_dataplane::routing::{BridgeInfo, ChannelInfo, DeliveryOptions, SubscriptionInfo};

use crate::{TranslateError, duration, positive};

/// Concurrent deliveries per subscriber when `ordering: unordered` is given
/// without `maxInFlight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// The address a [`Destination`] resolves to: its `uri`, or for a Service
/// `ref`, `http://NAME.NAMESPACE.svc.cluster.local:PORT/PATH` (port 80 and
/// path `/` by default). `field` names the destination in errors.
pub fn destination_uri(
    namespace: &str,
    destination: &Destination,
    field: &str,
) -> Result<http::Uri, TranslateError> {
    let text = match (&destination.service, &destination.uri) {
        (Some(service), None) => {
            let port = service.port.unwrap_or(80);
            let path = destination.path.as_deref().unwrap_or("/");
            format!(
                "http://{}.{namespace}.svc.cluster.local:{port}{path}",
                service.name
            )
        }
        (None, Some(uri)) => uri.clone(),
        _ => {
            return Err(TranslateError::new(
                field,
                "exactly one of ref or uri must be set",
            ));
        }
    };
    let uri: http::Uri = text
        .parse()
        .map_err(|e| TranslateError::new(field, format!("invalid URI: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(uri),
        _ => Err(TranslateError::new(
            field,
            "must be an absolute http:// or https:// URL",
        )),
    }
}

/// Delivery options as written on a Channel or Subscription (unset fields
/// stay unset, to be filled by the next level). `field` is the path of the
/// `delivery` object, for errors.
///
/// `maxInFlight` without `ordering` means unordered delivery with that bound
/// (the field applies only to unordered delivery).
pub fn delivery_options(
    namespace: &str,
    spec: &DeliverySpec,
    field: &str,
) -> Result<DeliveryOptions, TranslateError> {
    let max_in_flight = spec
        .max_in_flight
        .map(|n| positive(&format!("{field}.maxInFlight"), n.into()))
        .transpose()?;
    let ordering = match (spec.ordering, max_in_flight) {
        (Some(api::Ordering::Ordered), _) => Some(Ordering::Ordered),
        (Some(api::Ordering::Unordered), n) | (None, n @ Some(_)) => Some(Ordering::Unordered {
            max_in_flight: n.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        }),
        (None, None) => None,
    };
    Ok(DeliveryOptions {
        retry: spec
            .retry
            .map(|r| {
                u32::try_from(r)
                    .map_err(|_| TranslateError::new(format!("{field}.retry"), "must not be negative"))
            })
            .transpose()?,
        backoff_policy: spec.backoff_policy.map(|p| match p {
            api::BackoffPolicy::Linear => BackoffPolicy::Linear,
            api::BackoffPolicy::Exponential => BackoffPolicy::Exponential,
        }),
        backoff_delay: spec
            .backoff_delay
            .as_ref()
            .map(|d| duration(&format!("{field}.backoffDelay"), d))
            .transpose()?,
        timeout: spec
            .timeout
            .as_ref()
            .map(|d| duration(&format!("{field}.timeout"), d))
            .transpose()?,
        ordering,
        dead_letter_sink: spec
            .dead_letter_sink
            .as_ref()
            .map(|d| destination_uri(namespace, d, &format!("{field}.deadLetterSink")))
            .transpose()?,
        queue_capacity: spec
            .queue_capacity
            .map(|n| positive(&format!("{field}.queueCapacity"), n.into()))
            .transpose()?,
        queue_bytes: spec
            .queue_capacity_bytes
            .map(|n| positive(&format!("{field}.queueCapacityBytes"), n).map(|n| n as u64))
            .transpose()?,
        overflow: spec.overflow_policy.map(|p| match p {
            api::OverflowPolicy::DropNewest => Overflow::DropNewest,
            api::OverflowPolicy::DropOldest => Overflow::DropOldest,
        }),
    })
}

/// The `spec.delivery` of a Channel or Subscription; unset, it leaves every
/// option to the next level.
fn spec_delivery(namespace: &str, spec: Option<&DeliverySpec>) -> Result<DeliveryOptions, TranslateError> {
    Ok(spec
        .map(|d| delivery_options(namespace, d, "spec.delivery"))
        .transpose()?
        .unwrap_or_default())
}

/// What the routing index needs of a Channel.
pub fn channel_info(namespace: &str, spec: &ChannelSpec) -> Result<ChannelInfo, TranslateError> {
    Ok(ChannelInfo {
        allow_anonymous_publish: spec.allow_anonymous_publish,
        delivery: spec_delivery(namespace, spec.delivery.as_ref())?,
    })
}

/// The largest message the publish path accepts on a Channel.
pub fn channel_max_message_bytes(spec: &ChannelSpec) -> usize {
    spec.max_message_bytes
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

/// What the routing index needs of a Subscription: its resolved subscriber
/// address (see [`destination_uri`]) and its delivery overrides.
pub fn subscription_info(
    namespace: &str,
    spec: &SubscriptionSpec,
) -> Result<SubscriptionInfo, TranslateError> {
    Ok(SubscriptionInfo {
        channel: spec.channel.clone(),
        subscriber_uri: destination_uri(namespace, &spec.subscriber, "spec.subscriber")?,
        delivery: spec_delivery(namespace, spec.delivery.as_ref())?,
        // Needs the Secret's value: the caller sets it with `signing_key`.
        signing: None,
    })
}

/// What the routing index needs of a Bridge.
pub fn bridge_info(spec: &BridgeSpec) -> BridgeInfo {
    BridgeInfo {
        channel: spec.channel.clone(),
        endpoint: spec.endpoint.clone(),
    }
}
