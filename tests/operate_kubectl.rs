//! `kubectl get` answers an operator's first question for each kind, and
//! `kubectl describe` shows the Events of a transition: the real kubectl
//! (from the control plane build) against the real API server, with the
//! controller installed from `deploy/` reconciling.

#[allow(dead_code)] // shared with deploy_manifests, which uses all of it
mod deploy_support;
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use deploy_support::{kubectl, run};
use support::ControlPlane;

const WAIT: Duration = Duration::from_secs(60);

/// `kubectl get <what> -n <ns> [extra]`, as a header and rows of cells.
fn get(cp: &ControlPlane, ns: &str, what: &str, extra: &[&str]) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut cmd = kubectl(cp);
    cmd.args(["get", what, "-n", ns]).args(extra);
    let out = run(cmd, None)?;
    let mut lines = out.lines();
    let header = lines.next().context("no header")?;
    // kubectl left-aligns every column under its heading; an empty cell is
    // blank, so cells are cut at the headings' offsets, not at spaces.
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header.as_bytes()[i - 1] == b' '))
        .map(|(i, _)| i)
        .collect();
    let cut = |line: &str| -> Vec<String> {
        starts
            .iter()
            .enumerate()
            .map(|(n, &from)| {
                let to = starts.get(n + 1).copied().unwrap_or(line.len()).min(line.len());
                line.get(from.min(to)..to).unwrap_or_default().trim().to_string()
            })
            .collect()
    };
    Ok((cut(header), lines.map(cut).collect()))
}

/// Waits until `kubectl get` shows a row (by name) satisfying `ok`.
async fn wait_row(
    cp: &ControlPlane,
    ns: &str,
    what: &str,
    name: &str,
    ok: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>> {
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (header, rows) = get(cp, ns, what, &[])?;
        if let Some(row) = rows
            .into_iter()
            .find(|r| r.first().map(String::as_str) == Some(name))
        {
            if ok(&row) {
                return Ok(row);
            }
            last = format!("{header:?} {row:?}");
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} {name} never showed the expected row; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kubectl_get_shows_each_kinds_state_and_describe_shows_its_events() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "operate-kubectl").await?;

    // A Bridge whose Channel is missing says so in plain `kubectl get`.
    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {name: feed}\nspec: {channel: ticks, endpoint: feed}\n",
        Some(&ns),
    )
    .await?;
    let row = wait_row(cp, &ns, "bridges", "feed", |r| {
        r.iter().any(|c| c == "ChannelNotFound")
    })
    .await?;
    let (header, _) = get(cp, &ns, "bridges", &[])?;
    assert_eq!(
        header,
        [
            "NAME",
            "CHANNEL",
            "ENDPOINT",
            "CONNECTED",
            "READY",
            "REASON",
            "AGE"
        ]
    );
    // No worker yet, so nothing says CONNECTED.
    assert_eq!(
        row[..6],
        ["feed", "ticks", "feed", "", "False", "ChannelNotFound"]
    );
    let (wide, _) = get(cp, &ns, "bridges", &["-o", "wide"])?;
    assert_eq!(wide.last().map(String::as_str), Some("CONNECTION"));

    // The Channel appears: the reason moves on to the missing Endpoint.
    support::apply_yaml(
        &client,
        "apiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ticks}\nspec: {}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Subscription\nmetadata: {name: billing}\n\
         spec: {channel: ticks, subscriber: {uri: 'http://billing.example.com:8080/in'}}\n\
         ---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: other-feed}\n\
         spec: {url: 'ws://feed.example.com/stream'}\n",
        Some(&ns),
    )
    .await?;
    wait_row(cp, &ns, "bridges", "feed", |r| {
        r.iter().any(|c| c == "EndpointNotFound")
    })
    .await?;

    let row = wait_row(cp, &ns, "subscriptions", "billing", |r| {
        r.iter().any(|c| c == "True")
    })
    .await?;
    let (header, _) = get(cp, &ns, "subscriptions", &[])?;
    assert_eq!(
        header,
        ["NAME", "CHANNEL", "SUBSCRIBER", "READY", "REASON", "AGE"]
    );
    assert_eq!(
        row[..4],
        ["billing", "ticks", "http://billing.example.com:8080/in", "True"]
    );

    let (header, _) = get(cp, &ns, "channels", &[])?;
    assert_eq!(
        header,
        ["NAME", "ADDRESS", "BRIDGES", "SUBSCRIPTIONS", "READY", "AGE"]
    );
    let row = wait_row(cp, &ns, "endpoints.wsbridge.io", "other-feed", |r| r[2] == "True").await?;
    let (header, _) = get(cp, &ns, "endpoints.wsbridge.io", &[])?;
    assert_eq!(header, ["NAME", "URL", "READY", "REASON", "AGE"]);
    assert_eq!(row[..3], ["other-feed", "ws://feed.example.com/stream", "True"]);

    // `describe` shows the transitions as Events, with the reasons.
    let describe = support::eventually(WAIT, "both Events in kubectl describe", || {
        let ns = ns.clone();
        async move {
            let mut cmd = kubectl(cp);
            cmd.args(["describe", "bridge", "feed", "-n", &ns]);
            let out = run(cmd, None)?;
            let events = out.split("Events:").nth(1).unwrap_or_default().to_string();
            Ok((events.contains("ChannelNotFound") && events.contains("EndpointNotFound")).then_some(out))
        }
    })
    .await?;
    let events = describe.split("Events:").nth(1).unwrap_or_default();
    assert!(events.contains("Warning"), "{events}");
    assert!(
        events.contains(r#"Endpoint "feed" does not exist; create it"#),
        "the note says what to do: {events}"
    );
    Ok(())
}
