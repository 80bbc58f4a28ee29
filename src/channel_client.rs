//! `wsbridge tail` and `wsbridge publish`: a channel's client for humans
//! debugging a feed. Both talk to a channel's address on the gateway or on
//! a standalone process (`--server`), with a bearer token when one is given.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use wsbridge_core::ObjectKey;

/// Where a channel lives: `{server}/channels/{namespace}/{name}`.
fn channel_url(server: &str, channel: &ObjectKey) -> anyhow::Result<url::Url> {
    let base = url::Url::parse(server).with_context(|| format!("--server {server:?} is not a URL"))?;
    if !matches!(base.scheme(), "http" | "https") {
        bail!("--server {server:?}: expected an http:// or https:// URL");
    }
    base.join(&format!("channels/{}/{}", channel.namespace, channel.name))
        .with_context(|| format!("--server {server:?}"))
}

/// Prints every message of `channel` as it arrives, one per line (text as
/// is; binary as `base64:` and its base64), until the server closes the
/// connection or Ctrl-C.
pub async fn tail(server: &str, channel: &ObjectKey, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut url = channel_url(server, channel)?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot use {url} as a WebSocket URL"))?;
    let mut request = url.as_str().into_client_request()?;
    if let Some(token) = token {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, bearer(token)?);
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!("{url} answered {}: {}", response.status(), body.trim());
        }
        Err(e) => bail!("cannot connect to {url}: {e}"),
    };
    eprintln!("tailing {channel} at {url} (Ctrl-C to stop)");
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Frame::Text(text))) => writeln!(out, "{text}")?,
                Some(Ok(Frame::Binary(bytes))) => {
                    writeln!(out, "base64:{}", base64::engine::general_purpose::STANDARD.encode(&bytes))?
                }
                Some(Ok(Frame::Close(close))) => {
                    return Ok(match close {
                        Some(c) if c.code != CloseCode::Normal && c.code != CloseCode::Away => {
                            eprintln!("closed by the server: {} {}", u16::from(c.code), c.reason);
                            ExitCode::FAILURE
                        }
                        _ => ExitCode::SUCCESS,
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the connection to {url} failed: {e}"),
                None => return Ok(ExitCode::SUCCESS),
            },
            _ = tokio::signal::ctrl_c() => {
                let _ = ws.close(None).await;
                return Ok(ExitCode::SUCCESS);
            }
        }
        out.flush()?;
    }
}

/// Publishes `message`, or each line of standard input when it is `-` (or
/// absent), and prints each answer. Stops at the first refusal.
pub async fn publish(
    server: &str,
    channel: &ObjectKey,
    message: Option<&str>,
    token: Option<&str>,
    binary: bool,
) -> anyhow::Result<ExitCode> {
    let url = channel_url(server, channel)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .context("loading the system's CA roots")?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let content_type = if binary {
        "application/octet-stream"
    } else {
        "text/plain"
    };
    let send = async |body: Bytes| -> anyhow::Result<bool> {
        let mut request = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))?;
        if let Some(token) = token {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, bearer(token)?);
        }
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot publish to {url}"))?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        let answer = String::from_utf8_lossy(&answer);
        if status.is_success() {
            println!("{}", answer.trim());
            Ok(true)
        } else {
            eprintln!("{url} answered {status}: {}", answer.trim());
            Ok(false)
        }
    };
    match message {
        Some(text) if text != "-" => {
            return Ok(if send(Bytes::from(text.to_owned())).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        _ => {}
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading standard input")?;
        if line.is_empty() {
            continue;
        }
        if !send(Bytes::from(line)).await? {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bearer(token: &str) -> anyhow::Result<http::HeaderValue> {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("the token cannot be sent in a header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The token `tail` and `publish` send: `--token` (or `WSBRIDGE_TOKEN`)
/// when given, else the bearer token of the kubeconfig's current user
/// (`token` or `tokenFile`; `KUBECONFIG` or `~/.kube/config`), else none.
/// Users that authenticate with client certificates or an exec plugin have
/// no token to forward: pass one with `--token` (for example from
/// `kubectl create token`).
pub fn token(explicit: Option<&str>) -> anyhow::Result<Option<String>> {
    if let Some(token) = explicit {
        return Ok(Some(token.to_owned()));
    }
    let Ok(kubeconfig) = kube::config::Kubeconfig::read() else {
        return Ok(None); // no kubeconfig: an anonymous client
    };
    kubeconfig_token(&kubeconfig)
}

fn kubeconfig_token(kubeconfig: &kube::config::Kubeconfig) -> anyhow::Result<Option<String>> {
    use secrecy::ExposeSecret;
    let user = kubeconfig
        .current_context
        .as_ref()
        .and_then(|name| kubeconfig.contexts.iter().find(|c| &c.name == name))
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone());
    let Some(auth) = user
        .and_then(|user| kubeconfig.auth_infos.iter().find(|a| a.name == user))
        .and_then(|a| a.auth_info.as_ref())
    else {
        return Ok(None);
    };
    if let Some(token) = &auth.token {
        return Ok(Some(token.expose_secret().trim().to_owned()));
    }
    if let Some(file) = &auth.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the kubeconfig's tokenFile {file}"))?;
        return Ok(Some(token.trim().to_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_addresses_are_built_from_the_server() {
        let ch = ObjectKey::new("default", "ticker");
        assert_eq!(
            channel_url("http://127.0.0.1:8080", &ch).unwrap().as_str(),
            "http://127.0.0.1:8080/channels/default/ticker"
        );
        assert_eq!(
            channel_url("https://gw.example/", &ch).unwrap().as_str(),
            "https://gw.example/channels/default/ticker"
        );
        assert!(channel_url("ftp://x", &ch).is_err());
        assert!(channel_url("not a url", &ch).is_err());
    }

    fn kubeconfig(user: &str) -> kube::config::Kubeconfig {
        serde_norway::from_str(&format!(
            r#"
apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {{cluster: c, user: {user}}}
- name: other
  context: {{cluster: c, user: other}}
clusters:
- name: c
  cluster: {{server: "https://127.0.0.1:6443"}}
users:
- name: alice
  user: {{token: alice-token}}
- name: other
  user: {{token: other-token}}
- name: cert
  user: {{client-certificate-data: AAAA, client-key-data: AAAA}}
"#
        ))
        .unwrap()
    }

    #[test]
    fn the_current_users_token_is_taken_and_an_explicit_one_wins() {
        assert_eq!(
            kubeconfig_token(&kubeconfig("alice")).unwrap().as_deref(),
            Some("alice-token")
        );
        assert_eq!(kubeconfig_token(&kubeconfig("cert")).unwrap(), None);
        assert_eq!(token(Some("given")).unwrap().as_deref(), Some("given"));
    }
}
