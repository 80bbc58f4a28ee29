//! A `rabbitmq` Channel while RabbitMQ itself goes away: restarted
//! mid-stream, then stopped for 30 s. No role crashes or stops
//! consuming; publishes during the outage are refused with a JSON reason
//! (none is answered 202 and then lost); every message the broker confirmed
//! (a witness queue bound to the channel's exchange holds them all) is
//! delivered once it is back.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use support::durable::{Received, Traffic, Witness};
use support::peers::{ServerOpts, Subscriber, WsServer};
use support::rabbitmq::RabbitMq;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_broker_restart_and_a_thirty_second_outage_lose_no_confirmed_message() -> Result<()> {
    let broker = RabbitMq::start().await?;
    let url = broker.amqp_url();
    let mut installation = support::durable::install(&url, 2).await?;
    let client = support::shared().await.client();
    let ns = support::create_namespace(&client, "outage").await?;

    let mut endpoint = WsServer::start(ServerOpts::default()).await;
    let mut all = Subscriber::ok().await;
    let yaml = support::durable::feed_yaml(&endpoint.url(), &[("all", &all.uri.to_string(), "")]);
    let (_witness, mut worker) = support::durable::start_feed(&url, &ns, &yaml, &mut endpoint).await?;
    let gateway = Arc::new(Mutex::new(installation.gateway.addr));
    let traffic = Traffic::start(
        endpoint.out.clone(),
        gateway.clone(),
        &ns,
        "feed",
        Duration::from_millis(20),
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    // Restarted as an operator would (SIGTERM): RabbitMQ 3.10 may leave a
    // single-node quorum queue without a leader after a SIGKILL
    // (rabbitmq-server#10070), which is the broker's problem, not ours.
    broker.stop()?;
    broker.start_again().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.stop()?;
    let refused_before = traffic.refused.load(std::sync::atomic::Ordering::SeqCst);
    let accepted_before = traffic.accepted.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let refused_during = traffic.refused.load(std::sync::atomic::Ordering::SeqCst) - refused_before;
    let accepted_during = traffic.accepted.lock().unwrap().len() - accepted_before;
    broker.start_again().await?;
    // Traffic goes on until the roles are back on the broker.
    let publish_path = format!("/channels/{ns}/feed");
    let gw = installation.gateway.addr;
    support::eventually(WAIT, "publishes accepted again", || {
        let path = publish_path.clone();
        async move {
            let (code, _) = support::http::request(gw, "POST", &path, &[], b"probe").await?;
            Ok((code == 202).then_some(()))
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (accepted, refused, sent) = traffic.stop().await;

    // Nothing crashed, and every role is ready on the broker again.
    let (first, rest) = installation.dispatchers.split_at_mut(1);
    for (what, pod) in [
        ("worker", &mut worker),
        ("controller", &mut installation.controller.pod),
        ("gateway", &mut installation.gateway.pod),
        ("dispatcher 0", &mut first[0].pod),
        ("dispatcher 1", &mut rest[0].pod),
    ] {
        assert!(pod.is_running(), "the {what} exited:\n{}", pod.logs());
    }
    for (i, d) in installation.dispatchers.iter().enumerate() {
        support::install::wait_ready(&format!("dispatcher {i}"), d.addr, &d.pod).await?;
    }

    // The 30 s outage: publishes were refused, none accepted.
    assert!(
        refused_during > 0,
        "no publish was refused while the broker was down"
    );
    assert_eq!(
        accepted_during, 0,
        "a publish was answered 202 while the broker was down"
    );

    let mut confirmed: std::collections::BTreeSet<String> =
        Witness::drain(&url, &ns, "feed").await?.into_iter().collect();
    confirmed.remove("probe");
    for body in &accepted {
        assert!(
            confirmed.contains(body),
            "{body} was answered 202 but the broker does not hold it"
        );
    }
    let mut received = Received::default();
    support::eventually(WAIT, "every confirmed message delivered", || {
        received.take(&mut all);
        let missing = confirmed.difference(&received.bodies).count();
        async move { Ok((missing == 0).then_some(())) }
    })
    .await?;
    println!(
        "broker restarted, then down 30 s: endpoint sent {sent}, broker confirmed {} messages, \
         {} publishes answered 202, {refused} refused with a reason ({refused_during} during the outage, \
         none accepted); the subscriber got all of them ({} repeats)",
        confirmed.len(),
        accepted.len(),
        received.duplicates
    );
    Ok(())
}
