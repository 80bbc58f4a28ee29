//! SIGTERM during load: a gateway replica and a worker are terminated while
//! publishers keep publishing. Every publish that was answered 202 must
//! reach every subscriber and the endpoint; the count of lost messages is
//! printed (and must be 0).

mod faults_support;
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use faults_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use support::pods::run_pod_template;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const PUBLISHERS: usize = 4;

/// Accepted publishes: (ce-id, body).
type Accepted = Arc<Mutex<Vec<(String, String)>>>;
/// Refused publishes by status (0 = no answer).
type Refused = Arc<Mutex<std::collections::BTreeMap<u16, usize>>>;

/// `PUBLISHERS` tasks publishing to `gateway()` until `stop`; returns the
/// accepted publishes and the count of refusals by status (0 = no answer).
fn publish_load(
    gateway: impl Fn() -> SocketAddr + Send + Sync + Clone + 'static,
    channel: String,
    stop: Arc<AtomicBool>,
) -> (Accepted, Refused, Vec<tokio::task::JoinHandle<()>>) {
    let accepted: Accepted = Arc::default();
    let refused: Refused = Arc::default();
    let tasks = (0..PUBLISHERS)
        .map(|p| {
            let (gateway, channel, stop) = (gateway.clone(), channel.clone(), stop.clone());
            let (accepted, refused) = (accepted.clone(), refused.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let body = format!("{{\"p\":{p},\"n\":{n}}}");
                    n += 1;
                    let answer = support::http::request(
                        gateway(),
                        "POST",
                        &format!("/channels/{channel}"),
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    )
                    .await;
                    match answer {
                        Ok((202, reply)) => {
                            let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
                            let id = v["id"].as_str().unwrap_or_default().to_string();
                            accepted.lock().unwrap().push((id, body));
                        }
                        Ok((code, _)) => *refused.lock().unwrap().entry(code).or_default() += 1,
                        Err(_) => {
                            *refused.lock().unwrap().entry(0).or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();
    (accepted, refused, tasks)
}

/// Waits until the load has had `LOADED` publishes accepted (so that a
/// termination happens under load, and there is something to lose);
/// returns the count then.
async fn under_load(accepted: &Accepted) -> Result<usize> {
    const LOADED: usize = 100;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = accepted.lock().unwrap().len();
        if n >= LOADED {
            return Ok(n);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {n} publishes accepted before the termination"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every accepted publish must reach both subscribers and the endpoint.
/// Returns the number lost (missing anywhere).
async fn lost(accepted: &[(String, String)], subs: &[&CountingSubscriber], feed: &Feed) -> usize {
    let bodies: BTreeSet<String> = accepted.iter().map(|(_, b)| b.clone()).collect();
    let complete = |subs: &[&CountingSubscriber]| {
        let frames: BTreeSet<String> = feed.frames.lock().unwrap().iter().cloned().collect();
        let mut missing: BTreeSet<String> = bodies.difference(&frames).cloned().collect();
        for s in subs {
            let got = s.ids();
            for (id, body) in accepted {
                if !got.contains(id) {
                    missing.insert(body.clone());
                }
            }
        }
        missing.len()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while complete(subs) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    complete(subs)
}

fn setup_yaml(ns: &str, feed: &Feed, subs: &[&CountingSubscriber]) -> String {
    objects(
        ns,
        &feed.url(),
        "{allowAnonymousPublish: true}",
        &[("a", &subs[0].uri, "{}"), ("b", &subs[1].uri, "{}")],
    )
}

/// Publishes until one is accepted (the gateway knows the route).
async fn wait_publishable(gateway: SocketAddr, channel: &str) -> Result<()> {
    support::eventually(WAIT, "a publish accepted", || async move {
        let (code, _) =
            support::http::request(gateway, "POST", &format!("/channels/{channel}"), &[], b"warm")
                .await
                .unwrap_or((0, String::new()));
        Ok((code == 202).then_some(()))
    })
    .await
}

#[tokio::test]
async fn a_gateway_terminated_under_load_delivers_every_publish_it_accepted() -> Result<()> {
    support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "faults-gw-term").await?;
    let feed = Feed::start().await?;
    let (a, b) = (CountingSubscriber::ok().await?, CountingSubscriber::ok().await?);
    support::apply_yaml(&client, &setup_yaml(&ns, &feed, &[&a, &b]), Some(&ns)).await?;
    let _worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;

    // A second gateway replica from the same Deployment, to terminate.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), support::install::SYSTEM_NAMESPACE);
    let template = deployments.get("wsbridge-gateway").await?;
    let listen = format!("127.0.0.1:{}", support::http::free_port());
    let mut gateway = run_pod_template(cp, &client, &template, &[("WSBRIDGE_LISTEN", &listen)]).await?;
    let addr = pod_addr(&gateway);
    wait_ready(&gateway).await?;
    let channel = format!("{ns}/ch");
    wait_publishable(addr, &channel).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused, tasks) = publish_load(move || addr, channel, stop.clone());
    let before = under_load(&accepted).await?;
    let code = gateway.terminate(Duration::from_secs(20)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await?;
    }
    assert_eq!(code, Some(0), "gateway exit; log:\n{}", gateway.logs());
    let accepted = accepted.lock().unwrap().clone();
    let lost = lost(&accepted, &[&a, &b], &feed).await;
    eprintln!(
        "FIGURES gateway SIGTERM under load: {} publishes accepted ({} while it was shutting down), refused {:?} (0 = connection refused once it stopped listening); lost {lost}",
        accepted.len(),
        accepted.len() - before,
        refused.lock().unwrap(),
    );
    assert_eq!(
        lost,
        0,
        "accepted publishes lost; gateway log:\n{}",
        gateway.logs()
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_terminated_under_load_sends_out_every_publish_it_accepted() -> Result<()> {
    let installation = support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "faults-wk-term").await?;
    let feed = Feed::start().await?;
    let (a, b) = (CountingSubscriber::ok().await?, CountingSubscriber::ok().await?);
    support::apply_yaml(&client, &setup_yaml(&ns, &feed, &[&a, &b]), Some(&ns)).await?;
    let mut worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;
    let gateway = installation.gateway_addr;
    let channel = format!("{ns}/ch");
    wait_publishable(gateway, &channel).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, refused, tasks) = publish_load(move || gateway, channel.clone(), stop.clone());
    under_load(&accepted).await?;
    let code = worker.terminate(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "worker exit; log:\n{}", worker.logs());
    let at_term = accepted.lock().unwrap().len();
    // A new worker pod takes over; publishing resumes through it.
    let next = start_worker(&ns, "feed").await?;
    feed.wait_connections(2, WAIT).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while accepted.lock().unwrap().len() < at_term + 50 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "publishing did not resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await?;
    }
    let accepted = accepted.lock().unwrap().clone();
    let lost = lost(&accepted, &[&a, &b], &feed).await;
    let drained = worker
        .logs()
        .lines()
        .find(|l| l.contains("deliveries drained"))
        .and_then(|l| l.split("report").nth(1))
        .map(strip_ansi)
        .unwrap_or_default();
    eprintln!(
        "FIGURES worker SIGTERM under publish load: {} publishes accepted ({at_term} before the replacement), refused {:?} (503 while no worker is connected); lost {lost}; old worker's drain report{drained}",
        accepted.len(),
        refused.lock().unwrap(),
    );
    assert_eq!(
        lost,
        0,
        "accepted publishes lost; old worker log:\n{}\nnew worker log:\n{}",
        worker.logs(),
        next.logs()
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_terminated_under_endpoint_load_delivers_every_frame_sent_before_it_closed() -> Result<()> {
    support::install::installed().await;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "faults-wk-ep").await?;
    let feed = Arc::new(Feed::start().await?);
    let (a, b) = (CountingSubscriber::ok().await?, CountingSubscriber::ok().await?);
    support::apply_yaml(&client, &setup_yaml(&ns, &feed, &[&a, &b]), Some(&ns)).await?;
    let mut worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&a, &b]).await?;

    // A steady stream (a frame every millisecond, below what the subscribers
    // take) until the worker closes.
    let stop = Arc::new(AtomicBool::new(false));
    let streaming = {
        let (feed, stop) = (feed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = BTreeSet::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("ep {n}");
                n += 1;
                if feed.send(WsMessage::Text(body.clone().into())).await {
                    sent.insert(body);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sent
        })
    };
    // Terminated under load: once frames are flowing through to a subscriber.
    a.wait_for("frames flowing", WAIT, |s| s.count_prefix("ep ") >= 100)
        .await?;
    let code = worker.terminate(Duration::from_secs(20)).await;
    stop.store(true, Ordering::SeqCst);
    let sent = streaming.await?;
    assert_eq!(code, Some(0), "worker exit; log:\n{}", worker.logs());
    let mut lost = 0;
    for sub in [&a, &b] {
        let got: BTreeSet<String> = sub
            .bodies()
            .into_iter()
            .filter(|b| b.starts_with("ep "))
            .collect();
        lost += sent.difference(&got).count();
    }
    let drained = worker
        .logs()
        .lines()
        .find(|l| l.contains("deliveries drained"))
        .and_then(|l| l.split("report").nth(1))
        .map(strip_ansi)
        .unwrap_or_default();
    eprintln!(
        "FIGURES worker SIGTERM under endpoint load: {} frames flushed by the endpoint before the worker's close frame, delivered {} / {}; lost {lost}; drain report{drained}",
        sent.len(),
        a.count_prefix("ep "),
        b.count_prefix("ep "),
    );
    assert_eq!(lost, 0, "frames lost; worker log:\n{}", worker.logs());
    Ok(())
}
