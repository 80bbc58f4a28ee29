//! Publishing through the gateway on the real API server, with real
//! ServiceAccount tokens: the gateway (from `deploy/`) authenticates with a
//! TokenReview, authorizes `publish` with a SubjectAccessReview, sends out
//! through each bridge's worker (from the controller's pod template) to real
//! WebSocket endpoints and delivers to real HTTP subscribers.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use support::peers::{ServerOpts, Subscriber, WsServer};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(60);

async fn gateway() -> SocketAddr {
    support::install::installed().await.gateway_addr
}

async fn publish(channel: &str, token: Option<&str>, body: &[u8]) -> Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    support::http::request(
        gateway().await,
        "POST",
        &format!("/channels/{channel}"),
        &headers,
        body,
    )
    .await
}

/// Publishes until the gateway has caught up with the objects (its caches,
/// the workers' Connected status, the subscribers its delivery follows),
/// then returns the first answer that is not 404/503 and reached at least
/// `subscribers`. Probes that reached fewer are delivered too: tests that
/// count deliveries publish distinct bodies after this.
async fn publish_when_routed(
    channel: &str,
    token: Option<&str>,
    body: &[u8],
    subscribers: u64,
) -> Result<(u16, String)> {
    support::eventually(WAIT, &format!("a routed publish on {channel}"), || async move {
        let answer = publish(channel, token, body).await?;
        let reached = serde_json::from_str::<serde_json::Value>(&answer.1)
            .ok()
            .and_then(|v| v["subscribers"].as_u64());
        Ok(
            (answer.0 != 503 && answer.0 != 404 && reached.unwrap_or(u64::MAX) >= subscribers)
                .then_some(answer),
        )
    })
    .await
}

fn endpoint_and_channel(ns: &str, channel: &str, anonymous: bool, endpoints: &[(&str, String)]) -> String {
    let mut yaml = format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: {channel}, namespace: {ns}}}\nspec: {{allowAnonymousPublish: {anonymous}, maxMessageBytes: 256}}\n"
    );
    for (name, url) in endpoints {
        yaml.push_str(&format!(
            "---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{url: '{url}', reconnect: {{initialDelay: 50ms, maxDelay: 500ms}}}}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{channel: {channel}, endpoint: {name}}}\n"
        ));
    }
    yaml
}

fn subscription(ns: &str, channel: &str, name: &str, uri: &str) -> String {
    format!(
        "---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{channel: {channel}, subscriber: {{uri: '{uri}'}}}}\n"
    )
}

async fn next_text(endpoint: &mut WsServer) -> String {
    loop {
        if let (_, WsMessage::Text(t)) = endpoint.next_frame().await {
            return t.to_string();
        }
    }
}

#[tokio::test]
async fn only_publishers_allowed_to_publish_reach_the_endpoint_and_subscribers() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "e2e-publish").await?;
    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let mut subs = [Subscriber::ok().await, Subscriber::ok().await];
    let mut yaml = endpoint_and_channel(&ns, "orders", false, &[("exchange", endpoint.url())]);
    for (i, s) in subs.iter().enumerate() {
        yaml.push_str(&subscription(
            &ns,
            "orders",
            &format!("sub-{i}"),
            &s.uri.to_string(),
        ));
    }
    // The Role from examples/, granting `publish` on this one channel.
    let role = support::example_role("publisher-role.yaml", "orders", &ns)?;
    yaml.push_str("---\n");
    yaml.push_str(&role);
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    support::ensure_service_account(&client, &ns, "stranger").await?;
    let token = |sa: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { support::service_account_token(&client, &ns, sa).await }
    };
    let (publisher, stranger) = (token("publisher").await?, token("stranger").await?);
    let _worker = support::pods::start_bridge_worker(&ns, "exchange").await?;
    endpoint.next_connected().await;

    let channel = format!("{ns}/orders");
    let (code, body) = publish_when_routed(&channel, Some(&publisher), br#"{"order":"buy"}"#, 2).await?;
    assert_eq!(code, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert!(answer["id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert_eq!(next_text(&mut endpoint).await, r#"{"order":"buy"}"#);
    for sub in subs.iter_mut() {
        // Earlier probes (answered before every cache caught up) may come first.
        let got = loop {
            let got = sub.next().await;
            if got.headers["ce-id"] == answer["id"].as_str().unwrap() {
                break got;
            }
        };
        assert_eq!(got.body.as_ref(), br#"{"order":"buy"}"#);
        assert!(
            got.headers.get("authorization").is_none(),
            "published messages carry no bridge token"
        );
    }

    let (code, body) = publish(&channel, Some(&stranger), b"{}").await?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Forbidden") && body.contains("publish"), "{body}");
    let (code, body) = publish(&channel, None, b"{}").await?;
    assert_eq!(code, 401, "{body}");
    let (code, body) = publish(&channel, Some("not-a-token"), b"{}").await?;
    assert_eq!(code, 401, "{body}");
    // None of the refused publishes went anywhere.
    for sub in subs.iter_mut() {
        sub.assert_quiet(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test]
async fn anonymous_channels_need_no_token_and_bad_requests_get_clear_errors() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "e2e-anon").await?;
    let mut sub = Subscriber::ok().await;
    let mut yaml = endpoint_and_channel(&ns, "open", true, &[]);
    yaml.push_str(&subscription(&ns, "open", "listener", &sub.uri.to_string()));
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;

    let channel = format!("{ns}/open");
    let (code, body) = publish_when_routed(&channel, None, b"hello", 1).await?;
    assert_eq!(code, 202, "{body}");
    // Earlier probes may have reached it too: find ours.
    while sub.next().await.body.as_ref() != b"hello" {}

    let (code, body) = publish(&format!("{ns}/no-such-channel"), None, b"x").await?;
    assert_eq!((code, body.contains("ChannelNotFound")), (404, true), "{body}");
    let (code, body) = publish(&channel, None, &[b'x'; 300]).await?;
    assert_eq!((code, body.contains("MessageTooLarge")), (413, true), "{body}");
    let (code, body) = publish(&channel, None, b"").await?;
    assert_eq!(code, 400, "{body}");

    // A keep-alive connection stays open after an answer to a request read
    // in full; an answer given before the body was read says
    // `Connection: close` (RFC 9112 §9.6). No internal header goes out.
    use support::http::{closed_by_server, exchange, keep_alive_post};
    let addr = gateway().await;
    let path = format!("/channels/{channel}");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    for body in [&b"kept-1"[..], b"kept-2"] {
        let answer = exchange(&mut stream, &keep_alive_post(addr, &path, body)).await?;
        assert_eq!(
            (answer.status, answer.header("connection")),
            (202, None),
            "{answer:?}"
        );
    }
    let missing = format!("/channels/{ns}/no-such-channel");
    for (path, body, status) in [(&path, vec![b'x'; 300], 413), (&missing, b"x".to_vec(), 404)] {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let answer = exchange(&mut stream, &keep_alive_post(addr, path, &body)).await?;
        assert_eq!(
            (answer.status, answer.header("connection")),
            (status, Some("close")),
            "{answer:?}"
        );
        assert!(
            !answer.head.to_ascii_lowercase().contains("x-wsbridge"),
            "{answer:?}"
        );
        assert!(
            closed_by_server(&mut stream, WAIT).await,
            "said close, stayed open"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_channel_with_two_bridges_sends_each_publish_to_both_endpoints_once() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "e2e-two").await?;
    let mut a = WsServer::start(ServerOpts::default()).await;
    let mut b = WsServer::start(ServerOpts::default()).await;
    let yaml = endpoint_and_channel(&ns, "fanout", true, &[("venue-a", a.url()), ("venue-b", b.url())]);
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let _workers = (
        support::pods::start_bridge_worker(&ns, "venue-a").await?,
        support::pods::start_bridge_worker(&ns, "venue-b").await?,
    );
    a.next_connected().await;
    b.next_connected().await;

    let (code, body) = publish_when_routed(&format!("{ns}/fanout"), None, br#"{"n":1}"#, 0).await?;
    assert_eq!(code, 202, "{body}");
    assert_eq!(next_text(&mut a).await, r#"{"n":1}"#);
    assert_eq!(next_text(&mut b).await, r#"{"n":1}"#);
    for endpoint in [&mut a, &mut b] {
        let again = tokio::time::timeout(Duration::from_secs(1), endpoint.next_frame()).await;
        assert!(again.is_err(), "an endpoint got the message twice: {again:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_bridge_without_a_connection_answers_503() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "e2e-down").await?;
    // Nothing listens on this port.
    let url = format!("ws://127.0.0.1:{}/down", support::http::free_port());
    support::apply_yaml(
        &client,
        &endpoint_and_channel(&ns, "stuck", true, &[("down", url)]),
        Some(&ns),
    )
    .await?;
    let _worker = support::pods::start_bridge_worker(&ns, "down").await?;
    let channel = format!("{ns}/stuck");
    let (code, body) = support::eventually(WAIT, "the gateway knows the channel", || {
        let channel = channel.clone();
        async move { Ok(Some(publish(&channel, None, b"x").await?).filter(|(code, _)| *code != 404)) }
    })
    .await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("NoPathToEndpoint"), "{body}");
    Ok(())
}

/// `wsbridge publish` without `--token` sends the kubeconfig's token: a
/// ServiceAccount allowed to publish gets its message through the real
/// gateway, and the token never shows in what the command prints.
#[tokio::test]
async fn wsbridge_publish_sends_the_kubeconfig_users_token() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "e2e-cli").await?;
    let mut sub = Subscriber::ok().await;
    let mut yaml = endpoint_and_channel(&ns, "alerts", false, &[]);
    yaml.push_str(&subscription(&ns, "alerts", "sub", &sub.uri.to_string()));
    let role = support::example_role("publisher-role.yaml", "alerts", &ns)?;
    yaml.push_str("---\n");
    yaml.push_str(&role);
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let token = support::service_account_token(&client, &ns, "publisher").await?;
    let dir = tempfile_dir(&ns)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: ci\ncontexts:\n- name: ci\n  context: {{cluster: ci, user: publisher}}\nclusters:\n- name: ci\n  cluster: {{server: 'https://127.0.0.1:1'}}\nusers:\n- name: publisher\n  user: {{token: '{token}'}}\n"
        ),
    )?;
    let server = format!("http://{}", gateway().await);
    let run = |kubeconfig: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"))
            .args([
                "publish",
                &format!("{ns}/alerts"),
                "from-the-cli",
                "--server",
                &server,
            ])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("WSBRIDGE_TOKEN")
            .output()
    };
    // Until the gateway's caches have the channel, the answer is 404; until
    // they have the Subscription, the message reaches no one.
    let output = support::eventually(WAIT, "wsbridge publish accepted for the subscriber", || async {
        let output = run(&kubeconfig)?;
        let answer: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        Ok((output.status.success() && answer["subscribers"] == 1).then_some(output))
    })
    .await?;
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("\"channel\""), "{printed}");
    assert!(!printed.contains(&token) && !String::from_utf8_lossy(&output.stderr).contains(&token));
    assert_eq!(sub.next().await.body.as_ref(), b"from-the-cli");

    // Without the kubeconfig there is no token, and the gateway says 401.
    let output = run(&dir.join("missing"))?;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("401"),
        "{output:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("wsbridge-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
