//! The API server goes away and comes back (same port, same data): the
//! controller, the gateway and a worker ride it out without restarting
//! (same PIDs), the data plane keeps delivering while it is down, and
//! objects created after it is back are reconciled and delivered to.

mod faults_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use faults_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const DOWNTIME: Duration = Duration::from_secs(5);

#[tokio::test]
async fn controller_gateway_and_worker_recover_from_an_apiserver_restart_without_restarting() -> Result<()> {
    let installation = support::install::installed().await;
    let cp = support::shared().await;
    let client = cp.client();
    let ns = support::create_namespace(&client, "faults-apiserver").await?;
    let feed = Arc::new(Feed::start().await?);
    let a = CountingSubscriber::ok().await?;
    let yaml = objects(
        &ns,
        &feed.url(),
        "{allowAnonymousPublish: true}",
        &[("a", &a.uri, "{}")],
    );
    support::apply_yaml(&client, &yaml, Some(&ns)).await?;
    let mut worker = start_worker(&ns, "feed").await?;
    feed.wait_connections(1, WAIT).await?;
    wait_routed(&feed, &[&a]).await?;
    let pids = [
        ("controller", installation.controller.lock().unwrap().child.id()),
        ("gateway", installation.gateway.lock().unwrap().child.id()),
        ("worker", worker.child.id()),
    ];

    // Endpoint frames keep flowing while the API server is away.
    let streaming = {
        let feed = feed.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            for n in 0..200 {
                if feed.send(WsMessage::Text(format!("during {n}").into())).await {
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };
    let stopped = Instant::now();
    cp.restart("kube-apiserver", DOWNTIME).await?;
    let unavailable = stopped.elapsed();
    let sent_during = streaming.await?;
    a.wait_for("frames sent around the restart", Duration::from_secs(20), |s| {
        s.count_prefix("during ") >= sent_during
    })
    .await?;

    for (role, pid) in pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the {role} (pid {pid}) exited"
        );
    }
    assert!(worker.is_running(), "worker log:\n{}", worker.logs());
    assert!(
        installation.controller.lock().unwrap().is_running(),
        "the controller exited"
    );
    assert!(
        installation.gateway.lock().unwrap().is_running(),
        "the gateway exited"
    );

    // A Subscription created now: the controller resolves it, the worker
    // follows it, the gateway delivers publishes to it.
    let late = CountingSubscriber::ok().await?;
    support::apply_yaml(&client, &subscription(&ns, "late", &late.uri, "{}"), Some(&ns)).await?;
    let created = Instant::now();
    support::eventually(WAIT, "the worker delivers to the new subscriber", || {
        let (feed, late) = (&feed, &late);
        async move {
            feed.send(WsMessage::Text("after restart".into())).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok((late.count_prefix("after restart") > 0).then_some(()))
        }
    })
    .await?;
    let worker_followed = created.elapsed();
    let gateway = installation.gateway_addr;
    let channel = format!("/channels/{ns}/ch");
    support::eventually(WAIT, "the gateway delivers to the new subscriber", || {
        let (late, channel) = (&late, &channel);
        async move {
            let (code, _) = support::http::request(gateway, "POST", channel, &[], b"published after restart")
                .await
                .unwrap_or((0, String::new()));
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok((code == 202 && late.count_prefix("published after restart") > 0).then_some(()))
        }
    })
    .await?;
    let gateway_followed = created.elapsed();

    // A Bridge created now gets its worker Deployment.
    let created = Instant::now();
    support::apply_yaml(
        &client,
        &format!(
            "apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: second, namespace: {ns}}}\nspec: {{channel: ch, endpoint: feed}}\n"
        ),
        Some(&ns),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    support::eventually(WAIT, "the controller writes the new worker Deployment", || {
        let deployments = deployments.clone();
        async move { Ok(deployments.get_opt("wsbridge-worker-second").await?) }
    })
    .await?;
    let controller_reconciled = created.elapsed();

    eprintln!(
        "FIGURES apiserver restart: API unavailable {:.1}s (down {DOWNTIME:?} + start); same PIDs {:?}; frames sent during the outage {sent_during}, all delivered; after the restart a new Subscription was delivered to by the worker in {:.1}s and by the gateway in {:.1}s, a new Bridge got its Deployment in {:.1}s",
        unavailable.as_secs_f64(),
        pids,
        worker_followed.as_secs_f64(),
        gateway_followed.as_secs_f64(),
        controller_reconciled.as_secs_f64(),
    );
    Ok(())
}
