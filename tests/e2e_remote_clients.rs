//! Remote clients at the gateway, on the real API server with real
//! ServiceAccount tokens: WebSocket subscribers and publishers are
//! authenticated by a TokenReview and authorized by a SubjectAccessReview
//! for the verbs `subscribe` and `publish`, or let in anonymously by the
//! Channel's two flags; tokens come in `Authorization` or, as browsers send
//! them, in the Kubernetes subprotocol. A `memory` channel cannot be
//! subscribed to remotely in a cluster, and the refusal says what to do.

mod support;

use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::peers::Subscriber;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Frame};

const WAIT: Duration = Duration::from_secs(60);

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a client presents its token.
#[derive(Clone, Copy)]
enum Token<'a> {
    None,
    Header(&'a str),
    Subprotocol(&'a str),
}

fn request(path: &str, addr: std::net::SocketAddr, token: Token<'_>) -> http::Request<()> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    let headers = request.headers_mut();
    match token {
        Token::None => {}
        Token::Header(t) => {
            headers.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Token::Subprotocol(t) => {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
            headers.insert(
                "sec-websocket-protocol",
                format!("wsbridge, base64url.bearer.authorization.k8s.io.{encoded}")
                    .parse()
                    .unwrap(),
            );
        }
    }
    request
}

/// The status and JSON body of a refused upgrade.
async fn refused(path: &str, token: Token<'_>) -> (u16, Value) {
    let addr = support::install::installed().await.gateway_addr;
    match tokio_tungstenite::connect_async(request(path, addr, token)).await {
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            (
                response.status().as_u16(),
                serde_json::from_slice(body).unwrap_or(Value::Null),
            )
        }
        Ok(_) => panic!("{path}: the upgrade was accepted"),
        Err(e) => panic!("{path}: {e}"),
    }
}

async fn multiplexed(namespace: &str, token: Token<'_>) -> Client {
    let addr = support::install::installed().await.gateway_addr;
    let (ws, response) = tokio_tungstenite::connect_async(request(&format!("/ws/{namespace}"), addr, token))
        .await
        .expect("upgrade");
    if let Token::Subprotocol(_) = token {
        assert_eq!(response.headers()["sec-websocket-protocol"], "wsbridge");
    }
    ws
}

async fn command(ws: &mut Client, command: Value) -> Value {
    ws.send(Frame::text(command.to_string())).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
        {
            Some(Ok(Frame::Text(text))) => return serde_json::from_str(text.as_str()).unwrap(),
            Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

fn channels(ns: &str, subscriber_uri: &str) -> String {
    format!(
        r#"apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: quotes, namespace: {ns}}}
spec: {{allowAnonymousPublish: false, allowAnonymousSubscribe: false}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {{name: lobby, namespace: {ns}}}
spec: {{allowAnonymousPublish: true, allowAnonymousSubscribe: true}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {{name: lobby-http, namespace: {ns}}}
spec: {{channel: lobby, subscriber: {{uri: '{subscriber_uri}'}}}}
"#
    )
}

#[tokio::test]
async fn remote_clients_are_let_in_by_rbac_or_the_anonymous_flags_and_memory_channels_say_what_to_do()
-> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "e2e-remote").await?;
    let mut lobby_http = Subscriber::ok().await;
    let mut yaml = channels(&ns, &lobby_http.uri.to_string());
    let role = support::example_role("subscriber-role.yaml", "quotes", &ns)?;
    yaml.push_str("---\n");
    yaml.push_str(&role);
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    support::ensure_service_account(&client, &ns, "stranger").await?;
    let mint = |sa: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { support::service_account_token(&client, &ns, sa).await }
    };
    let (subscriber, stranger) = (mint("subscriber").await?, mint("stranger").await?);
    let quotes = format!("/channels/{ns}/quotes");

    // Until the gateway's caches have the channel it is 404; then a client
    // without a token is told how to send one.
    let (code, body) = support::eventually(WAIT, "the gateway knows the channel", || async {
        let answer = refused(&quotes, Token::None).await;
        Ok((answer.0 != 404).then_some(answer))
    })
    .await?;
    assert_eq!(
        (code, body["reason"].as_str()),
        (401, Some("Unauthorized")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("base64url.bearer.authorization.k8s.io.")
    );

    let (code, body) = refused(&quotes, Token::Header(&stranger)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("\"subscribe\""),
        "{body}"
    );
    let (code, body) = refused(&quotes, Token::Header("not-a-token")).await;
    assert_eq!(code, 401, "{body}");

    // Allowed by RBAC, with the token as a browser sends it: the channel is
    // a memory channel, which gateway replicas do not share.
    let (code, body) = refused(&quotes, Token::Subprotocol(&subscriber)).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("ChannelNotShared")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("backend: rabbitmq"),
        "{body}"
    );
    // Anonymous subscribers pass the lobby's flag, and hear the same.
    let (code, body) = refused(&format!("/channels/{ns}/lobby"), Token::None).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("ChannelNotShared")),
        "{body}"
    );

    // One multiplexed connection: each command is checked on its own.
    let mut ws = multiplexed(&ns, Token::Subprotocol(&subscriber)).await;
    let reply = command(
        &mut ws,
        json!({"method":"Subscribe","params":{"channel":"quotes"},"id":1}),
    )
    .await;
    assert_eq!(reply["error"]["reason"], "ChannelNotShared", "{reply}");
    let reply = command(
        &mut ws,
        json!({"method":"Publish","params":{"channel":"quotes","message":"x"},"id":2}),
    )
    .await;
    assert_eq!(
        reply["error"]["code"], 403,
        "subscribe does not allow publish: {reply}"
    );
    let reply = command(
        &mut ws,
        json!({"method":"Subscribe","params":{"channel":"elsewhere"},"id":3}),
    )
    .await;
    assert_eq!(reply["error"]["code"], 404, "{reply}");
    // The lobby takes anonymous publishes: the frame reaches its HTTP subscriber.
    let reply = command(
        &mut ws,
        json!({"method":"Publish","params":{"channel":"lobby","message":{"hello":"lobby"}},"id":4}),
    )
    .await;
    let id = reply["result"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    let got = lobby_http.next().await;
    assert_eq!(got.body.as_ref(), br#"{"hello":"lobby"}"#);
    assert_eq!(got.headers["ce-id"], id.as_str());

    let logs = support::install::installed().await.gateway.lock().unwrap().logs();
    assert!(
        !logs.contains(&subscriber) && !logs.contains(&stranger),
        "tokens are never logged"
    );
    Ok(())
}
