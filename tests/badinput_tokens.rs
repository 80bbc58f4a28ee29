//! Bad tokens at the gateway (installed from `deploy/`, on the real API
//! server): no token, an empty bearer, other schemes, garbage, oversize
//! tokens, a token for another audience, the token of a deleted
//! ServiceAccount. Each gets a 401 with a JSON reason (or, for a header
//! larger than the server reads at all, a bare 431), never a 5xx; no token
//! value ever appears in the gateway's log.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::DeleteParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

/// One POST with `authorization` written as raw bytes (it may not be valid
/// header text); returns the status and the body.
async fn publish(addr: SocketAddr, channel: &str, authorization: Option<&[u8]>) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!(
        "POST /channels/{channel} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    )
    .into_bytes();
    if let Some(value) = authorization {
        request.extend_from_slice(b"Authorization: ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\nhello");
    let _ = stream.write_all(&request).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_tokens_get_401_as_json_and_never_reach_the_log() -> Result<()> {
    let cp = support::shared().await;
    let client = cp.client();
    let gateway = support::install::installed().await.gateway_addr;
    let ns = support::create_namespace(&client, "badinput-tokens").await?;
    let role = support::example_role("publisher-role.yaml", "orders", &ns)?;
    let yaml = format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {{name: orders, namespace: {ns}}}\nspec: {{allowAnonymousPublish: false}}\n---\n{role}"
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    support::ensure_service_account(&client, &ns, "departed").await?;
    let mint = |sa: &'static str, audience: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            support::mint_service_account_token(&client, &ns, sa, &[audience], Duration::from_secs(600)).await
        }
    };
    let publisher = mint("publisher", support::API_AUDIENCE).await?;
    let other_audience = mint("publisher", "https://not-the-api-server.example").await?;
    let departed = mint("departed", support::API_AUDIENCE).await?;
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .delete("departed", &DeleteParams::default())
        .await?;

    let channel = format!("{ns}/orders");
    // Once the gateway knows the channel, no token is a 401.
    support::eventually(WAIT, "the gateway knows the channel", || {
        let channel = channel.clone();
        async move { Ok(Some(publish(gateway, &channel, None).await?).filter(|(code, _)| *code == 401)) }
    })
    .await?;
    // The ServiceAccount's deletion has reached the token authenticator once
    // its token is refused.
    let departed_bearer = format!("Bearer {departed}");
    support::eventually(WAIT, "the departed ServiceAccount's token refused", || {
        let (channel, authorization) = (channel.clone(), departed_bearer.clone());
        async move {
            let answer = publish(gateway, &channel, Some(authorization.as_bytes())).await?;
            Ok(Some(answer).filter(|(code, _)| *code == 401))
        }
    })
    .await?;

    let garbage_64k = format!("Bearer {}", "g".repeat(64 * 1024));
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty bearer", b"Bearer ".to_vec()),
        ("the scheme alone", b"Bearer".to_vec()),
        ("spaces only", b"Bearer      ".to_vec()),
        ("basic auth", b"Basic cHVibGlzaGVyOnMzY3IzdA==".to_vec()),
        (
            "another scheme",
            bearer(&publisher).replace("Bearer", "Token").into_bytes(),
        ),
        ("no scheme", publisher.clone().into_bytes()),
        ("garbage", b"Bearer not.a.jwt-s3cr3t-garbage".to_vec()),
        ("a 64 kB token", garbage_64k.clone().into_bytes()),
        ("bytes that are not text", b"Bearer \xff\xfe-s3cr3t-\x80".to_vec()),
        (
            "a token for another audience",
            bearer(&other_audience).into_bytes(),
        ),
        (
            "the token of a deleted ServiceAccount",
            bearer(&departed).into_bytes(),
        ),
        (
            "a truncated token",
            bearer(&publisher[..publisher.len() - 10]).into_bytes(),
        ),
    ];
    let mut failures = Vec::new();
    for (what, authorization) in &cases {
        let (code, body) = publish(gateway, &channel, Some(authorization)).await?;
        if code != 401 || reason(&body) != "Unauthorized" {
            failures.push(format!("{what}: {code} {body}"));
        }
    }
    // A header larger than the server reads at all: refused by hyper before
    // any handler, with a bare 431 (or the connection closed). Never a 5xx.
    let huge = format!("Bearer {}", "h".repeat(1 << 20));
    let (code, body) = publish(gateway, &channel, Some(huge.as_bytes())).await?;
    if !(code == 0 || code == 431 || code == 401) {
        failures.push(format!("a 1 MB token: {code} {body}"));
    }
    // The real token still works (the Role allows it).
    let (code, body) = publish(gateway, &channel, Some(bearer(&publisher).as_bytes())).await?;
    if code != 202 {
        failures.push(format!("the publisher's token: {code} {body}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let log = support::install::installed().await.gateway.lock().unwrap().logs();
    assert!(!log.contains("panicked"), "{log}");
    let signature = |t: &str| t.rsplit('.').next().unwrap_or_default().to_string();
    for secret in [
        signature(&publisher),
        signature(&other_audience),
        signature(&departed),
        "s3cr3t".to_string(),
        "g".repeat(64),
        "h".repeat(64),
    ] {
        assert!(!log.contains(&secret), "a token value is in the gateway's log");
    }
    Ok(())
}

/// Sends `request` as is; returns the status and the body.
async fn raw(addr: SocketAddr, request: &str) -> Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut out)).await??;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[tokio::test]
async fn the_gateway_answers_bad_paths_and_methods_with_json_before_any_token_check() -> Result<()> {
    let gateway = support::install::installed().await.gateway_addr;
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
    };
    for (request, code, expected) in [
        (
            "DELETE /channels/default/orders HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".to_string(),
            405,
            "MethodNotAllowed",
        ),
        (
            "GET /channels/default/orders HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".to_string(),
            426,
            "UpgradeRequired",
        ),
        (
            "GET /ws/default HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".to_string(),
            426,
            "UpgradeRequired",
        ),
        (
            "GET /nope HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".to_string(),
            404,
            "NotFound",
        ),
        (post("/channels/default"), 404, "NotFound"),
        (post("/channels/Default/orders"), 400, "InvalidChannel"),
        (post("/channels/default/%ff"), 400, "InvalidChannel"),
        (
            post(&format!("/channels/default/{}", "n".repeat(300))),
            400,
            "InvalidChannel",
        ),
    ] {
        let (status, body) = raw(gateway, &request).await?;
        assert_eq!(
            (status, reason(&body).as_str()),
            (code, expected),
            "{request}: {body}"
        );
    }
    Ok(())
}
