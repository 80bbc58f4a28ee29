//! A retried publish is safe in standalone mode: the same `Idempotency-Key`
//! (or `ce-id`) on a channel within the window answers the first publish's
//! id and reaches neither the bridged endpoint nor the subscriber again;
//! suppressed duplicates are counted on `/metrics`.

mod standalone_support;
#[allow(dead_code)]
#[path = "support/http.rs"]
mod test_http;

use std::time::Duration;

use standalone_support::{Endpoint, Standalone, Subscriber, TempDir};

const WAIT: Duration = Duration::from_secs(15);

fn config(endpoint_url: &str, subscriber_uri: &str) -> String {
    standalone_support::bridged_channel_yaml(endpoint_url, "orders")
        + &standalone_support::subscription_yaml("audit", "orders", subscriber_uri, "")
}

/// Publishes `body` with `headers`; the status and the JSON answer.
async fn publish(standalone: &Standalone, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let mut all = vec![("Content-Type", "text/plain")];
    all.extend_from_slice(headers);
    let (code, text) = test_http::request(
        standalone.addr,
        "POST",
        "/channels/default/orders",
        &all,
        body.as_bytes(),
    )
    .await
    .unwrap();
    (code, serde_json::from_str(&text).unwrap_or_default())
}

#[tokio::test]
async fn a_retried_publish_reaches_the_endpoint_and_the_subscriber_once() {
    let dir = TempDir::new("idempotent-publish");
    let mut endpoint = Endpoint::start().await;
    let mut subscriber = Subscriber::start(Duration::ZERO).await;
    let file = dir.write("config.yaml", &config(&endpoint.url(), &subscriber.uri("/audit")));
    let standalone = Standalone::start(&[&file], &dir.0).await;
    // Once the bridge is connected, a publish without a key goes through.
    standalone.publish_accepted("default/orders", "warm-up").await;
    assert_eq!(endpoint.next(WAIT).await.as_deref(), Some("warm-up"));
    subscriber.next_containing("warm-up", WAIT).await;

    let keyed = [("Idempotency-Key", "order-1")];
    let (first, answer) = publish(&standalone, &keyed, "order one").await;
    let (again, retried) = publish(&standalone, &keyed, "order one").await;
    assert_eq!((first, again), (202, 202));
    assert_eq!(
        answer["id"], retried["id"],
        "a retry answers the first publish's id"
    );
    assert_eq!(retried["subscribers"], 0, "{retried}");

    // Publishes with a ce-id and no Idempotency-Key are keyed by it.
    let by_id = [("ce-id", "order-2-event")];
    assert_eq!(publish(&standalone, &by_id, "order two").await.0, 202);
    assert_eq!(publish(&standalone, &by_id, "order two").await.0, 202);
    // Another key is another publish; this one marks the end.
    assert_eq!(
        publish(&standalone, &[("Idempotency-Key", "end")], "end").await.0,
        202
    );

    let mut sent_out = Vec::new();
    while let Some(text) = endpoint.next(WAIT).await {
        let end = text == "end";
        sent_out.push(text);
        if end {
            break;
        }
    }
    assert_eq!(sent_out, ["order one", "order two", "end"]);
    let first_delivery = subscriber.next_containing("order one", WAIT).await;
    assert_eq!(
        first_delivery.headers["ce-id"].to_str().unwrap(),
        answer["id"].as_str().unwrap()
    );
    let mut delivered = vec![first_delivery.body];
    loop {
        let d = subscriber.rx.recv().await.expect("subscriber open");
        let end = d.body == "end";
        delivered.push(d.body);
        if end {
            break;
        }
    }
    assert_eq!(delivered, ["order one", "order two", "end"]);

    let (_, metrics) = test_http::get(standalone.addr, "/metrics").await.unwrap();
    let duplicates = |target: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("wsbridge_publish_duplicates_total{")
                    && l.contains(&format!("target=\"{target}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        (duplicates("endpoint"), duplicates("subscribers")),
        (2.0, 2.0),
        "{metrics}"
    );

    // A key that is not usable is refused before the body is read.
    let long = "k".repeat(300);
    let (code, refused) = publish(&standalone, &[("Idempotency-Key", &long)], "x").await;
    assert_eq!(
        (code, refused["reason"].as_str()),
        (400, Some("InvalidIdempotencyKey"))
    );
}
