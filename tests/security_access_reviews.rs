//! What publishers cost the API server: the gateway (installed from
//! `deploy/`, on the real API server) reviews a token once however many
//! requests carry it at the same time, remembers rejected tokens briefly,
//! and rate-limits reviews of tokens it has never seen, so that a flood of
//! random tokens neither reaches the API server unbounded nor evicts the
//! tokens it accepted. Counted on the gateway's `/metrics`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::join_all;
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(60);
/// The gateway's default rate of reviews of new tokens (per second, and the
/// bucket's size).
const REVIEW_RATE: f64 = 50.0;

/// The tests read counters of one shared gateway: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn publish(gateway: SocketAddr, channel: &str, token: &str) -> Result<u16> {
    let bearer = format!("Bearer {token}");
    let headers = [("Content-Type", "text/plain"), ("Authorization", bearer.as_str())];
    let (code, _) =
        support::http::request(gateway, "POST", &format!("/channels/{channel}"), &headers, b"hi").await?;
    Ok(code)
}

/// The gateway's review counters right now.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reviews {
    token_allowed: f64,
    token_denied: f64,
    access_allowed: f64,
    rejected_cached: f64,
    throttled: f64,
}

async fn reviews(gateway: SocketAddr) -> Result<Reviews> {
    let (_, m) = support::http::get(gateway, "/metrics").await?;
    let reviews = |kind: &str, result: &str| {
        support::metric_sum(
            &m,
            "wsbridge_gateway_access_reviews_total",
            &[&format!("kind=\"{kind}\""), &format!("result=\"{result}\"")],
        )
    };
    Ok(Reviews {
        token_allowed: reviews("token", "allowed"),
        token_denied: reviews("token", "denied"),
        access_allowed: reviews("access", "allowed"),
        rejected_cached: support::metric_sum(&m, "wsbridge_gateway_access_rejected_cached_total", &[]),
        throttled: support::metric_sum(&m, "wsbridge_gateway_access_reviews_throttled_total", &[]),
    })
}

/// A namespace with channel `orders` (no anonymous publishing) and a
/// ServiceAccount allowed to publish on it; returns `ns/orders` and a token.
async fn channel_and_publisher(prefix: &str) -> Result<(String, String)> {
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, prefix).await?;
    let role = support::example_role("publisher-role.yaml", "orders", &ns)?;
    let yaml = format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: orders, namespace: {ns}}}\nspec: {{allowAnonymousPublish: false}}\n---\n{role}"
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let token = support::service_account_token(&client, &ns, "publisher").await?;
    Ok((format!("{ns}/orders"), token))
}

/// Waits until the gateway knows the channel (a publish without a token is 401).
async fn routed(gateway: SocketAddr, channel: &str) -> Result<()> {
    support::eventually(WAIT, "the gateway knows the channel", || async move {
        let (code, _) =
            support::http::request(gateway, "POST", &format!("/channels/{channel}"), &[], b"x").await?;
        Ok((code == 401).then_some(()))
    })
    .await
}

#[tokio::test]
async fn concurrent_publishes_with_one_token_cost_one_review_of_each_kind() -> Result<()> {
    let gateway = support::install::installed().await.gateway_addr;
    let (channel, token) = channel_and_publisher("reviews-once").await?;
    routed(gateway, &channel).await?;
    let _serial = SERIAL.lock().await;

    let before = reviews(gateway).await?;
    let codes = join_all((0..32).map(|_| publish(gateway, &channel, &token))).await;
    let after = reviews(gateway).await?;

    for code in codes {
        assert_eq!(code?, 202);
    }
    assert_eq!(
        after.token_allowed - before.token_allowed,
        1.0,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        after.access_allowed - before.access_allowed,
        1.0,
        "{before:?} → {after:?}"
    );

    // A rejected token is remembered: asking again costs no review.
    let bad = format!("not-a-token-{}", support::kubeconfig::random_hex(8));
    let first = join_all((0..8).map(|_| publish(gateway, &channel, &bad))).await;
    let again = publish(gateway, &channel, &bad).await?;
    let last = reviews(gateway).await?;
    for code in first {
        assert_eq!(code?, 401);
    }
    assert_eq!(again, 401);
    assert_eq!(
        last.token_denied - after.token_denied,
        1.0,
        "{after:?} → {last:?}"
    );
    assert!(
        last.rejected_cached > after.rejected_cached,
        "{after:?} → {last:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_flood_of_random_tokens_is_rate_limited_and_leaves_accepted_tokens_cached() -> Result<()> {
    let gateway = support::install::installed().await.gateway_addr;
    let (channel, token) = channel_and_publisher("reviews-flood").await?;
    routed(gateway, &channel).await?;
    let _serial = SERIAL.lock().await;
    assert_eq!(publish(gateway, &channel, &token).await?, 202);

    let before = reviews(gateway).await?;
    let started = Instant::now();
    let flood: Vec<String> = (0..600)
        .map(|i| format!("flood-{i}-{}", support::kubeconfig::random_hex(16)))
        .collect();
    let mut codes = Vec::new();
    for wave in flood.chunks(50) {
        codes.extend(join_all(wave.iter().map(|t| publish(gateway, &channel, t))).await);
        // The accepted token keeps working during the flood, from the cache.
        assert_eq!(publish(gateway, &channel, &token).await?, 202);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = reviews(gateway).await?;

    let mut throttled = 0.0;
    for code in codes {
        match code? {
            401 => {}
            429 => throttled += 1.0,
            other => panic!("a random token got {other}"),
        }
    }
    let reviewed = after.token_denied - before.token_denied;
    assert!(
        reviewed <= REVIEW_RATE * (1.0 + elapsed) + 1.0,
        "{reviewed} token reviews in {elapsed:.2}s"
    );
    assert!(throttled > 0.0, "no random token was throttled");
    assert_eq!(after.throttled - before.throttled, throttled);
    assert_eq!(reviewed + throttled, flood.len() as f64, "{before:?} → {after:?}");
    assert_eq!(
        after.token_allowed, before.token_allowed,
        "the accepted token was reviewed again"
    );
    // The flood emptied the gateway's bucket of new-token reviews (a burst
    // of REVIEW_RATE, refilled at REVIEW_RATE a second): the next test to
    // take SERIAL reviews new tokens, so it gets a full bucket.
    tokio::time::sleep(Duration::from_secs_f64(1.0 + 0.25)).await;
    Ok(())
}
