//! A `rabbitmq` Channel while its roles die: the worker, each of two
//! dispatcher replicas and the gateway are killed with SIGKILL, one after
//! the other, 20 times in all, while the endpoint sends and a publisher
//! publishes. Every message the broker confirmed on the channel (a witness
//! queue bound to the channel's exchange holds them all, publishes answered
//! 202 among them) reaches the subscriber, and the failing Subscription's
//! dead-letter sink; repeats are counted, by body (each message's body is
//! unique), never losses.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use support::durable::{Received, Role, Traffic, Witness};
use support::peers::{Reply, ServerOpts, Subscriber, WsServer};
use support::rabbitmq::RabbitMq;

const WAIT: Duration = Duration::from_secs(120);
const KILLS: usize = 20;

#[tokio::test]
async fn killing_every_role_twenty_times_loses_no_confirmed_message() -> Result<()> {
    let broker = RabbitMq::start().await?;
    let url = broker.amqp_url();
    let mut installation = support::durable::install(&url, 2).await?;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "kills").await?;

    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let mut all = Subscriber::ok().await;
    let failing = Subscriber::start(|_| Reply::Status(500)).await;
    let mut dead_letters = Subscriber::ok().await;
    let yaml = support::durable::feed_yaml(
        &endpoint.url(),
        &[
            ("all", &all.uri.to_string(), "{maxInFlight: 16}"),
            (
                "failing",
                &failing.uri.to_string(),
                &format!("{{retry: 0, deadLetterSink: {{uri: '{}'}}}}", dead_letters.uri),
            ),
        ],
    );
    let (_witness, mut worker) = support::durable::start_feed(&url, &ns, &yaml, &mut endpoint).await?;
    let gateway = Arc::new(Mutex::new(installation.gateway.addr));
    let traffic = Traffic::start(
        endpoint.out.clone(),
        gateway.clone(),
        &ns,
        "feed",
        Duration::from_millis(20),
    );

    let mut received = Received::default();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(700)).await;
        received.take(&mut all);
        match kill % 4 {
            0 => {
                worker.kill();
                worker = support::pods::start_bridge_worker(&ns, "upstream").await?;
            }
            1 | 2 => {
                let i = kill % 4 - 1;
                installation.dispatchers[i].pod.kill();
                installation.dispatchers[i] = restart("wsbridge-dispatcher").await?;
            }
            _ => {
                installation.gateway.pod.kill();
                installation.gateway = restart("wsbridge-gateway").await?;
                *gateway.lock().unwrap() = installation.gateway.addr;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (accepted, refused, sent) = traffic.stop().await;

    // Everything the broker confirmed on the channel, and every publish
    // answered 202, reaches the subscriber and the dead-letter sink.
    let confirmed: std::collections::BTreeSet<String> =
        Witness::drain(&url, &ns, "feed").await?.into_iter().collect();
    for body in &accepted {
        assert!(
            confirmed.contains(body),
            "{body} was answered 202 but the broker does not hold it"
        );
    }
    let mut dead = Received::default();
    support::eventually(WAIT, "every confirmed message delivered", || {
        received.take(&mut all);
        dead.take(&mut dead_letters);
        let missing = confirmed.difference(&received.bodies).count();
        let missing_dead = confirmed.difference(&dead.bodies).count();
        async move { Ok((missing == 0 && missing_dead == 0).then_some(())) }
    })
    .await
    .map_err(|e| {
        let lost: Vec<_> = confirmed.difference(&received.bodies).take(10).collect();
        anyhow::anyhow!("{e}: not delivered (first 10): {lost:?}")
    })?;
    let endpoint_messages = confirmed.iter().filter(|b| b.starts_with("e-")).count();
    println!(
        "{KILLS} kills: endpoint sent {sent}, broker confirmed {endpoint_messages}; {} publishes answered 202, \
         {refused} refused with a reason; the subscriber got all {} confirmed ({} repeats), \
         the dead-letter sink all {} ({} repeats)",
        accepted.len(),
        confirmed.len(),
        received.duplicates,
        confirmed.len(),
        dead.duplicates
    );
    assert!(
        endpoint_messages > 0 && !accepted.is_empty(),
        "traffic went through"
    );
    Ok(())
}

/// Starts one replica of an installed Deployment again and waits until it
/// is ready.
async fn restart(deployment: &str) -> Result<Role> {
    let (addr, pod) = support::install::start_deployment(deployment, None).await?;
    support::install::wait_ready(deployment, addr, &pod).await?;
    Ok(Role { addr, pod })
}
