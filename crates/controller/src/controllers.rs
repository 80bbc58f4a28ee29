//! The four kube-runtime `Controller`s, wired to the shared caches: each
//! follows its kind's stream, the objects it owns, and the kinds that
//! [`triggers`] maps to it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use tracing::info;

use super::caches::{self, Caches};
use super::metrics::Metrics;
use super::reconcile::{self, Context, error_policy};
use super::triggers::{self, over};
use super::{Options, broker_topology, delivery_keys, send_key, worker_objects};
use wsbridge_http::ops::Readiness;

/// Starts the watches and the four controllers; returns only if they end.
/// Reports ready once every cache is synced.
pub(crate) async fn run(
    client: &Client,
    args: &Options,
    metrics: &Metrics,
    readiness: &Readiness,
    identity: &str,
) -> anyhow::Result<()> {
    // Every Bridge's send credential is derived from it: read (or created)
    // before anything is reconciled, then followed.
    let key = loop {
        match send_key::ensure(client, &args.send_key).await {
            Ok(key) => break key,
            Err(e) => {
                tracing::warn!(error = %e, "reading the send key; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let (key_tx, key_rx) = tokio::sync::watch::channel(Some(key));
    let follow_key = send_key::follow(client.clone(), args.send_key.clone(), key_tx);
    let caches = Caches::new();
    let stores = caches.stores();
    let reporter = Reporter {
        controller: worker_objects::FIELD_MANAGER.into(),
        instance: Some(identity.to_owned()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        worker_image: args.worker_image.clone(),
        gateway_url: args.gateway_url.clone(),
        cluster_domain: args.cluster_domain.clone(),
        destinations: args.destinations.clone(),
        worker_ingress: args.worker_ingress.clone(),
        worker_pod_defaults: args.worker_pod_defaults.clone(),
        send_key: key_rx.clone(),
        broker: args.broker.clone(),
    });
    let config = Config::default()
        .concurrency(args.concurrency)
        .debounce(Duration::from_millis(50));
    // Subscribed before the watches start, so no change is missed.
    let bridges = bridge_controller(&caches, ctx.clone(), config.clone(), send_key::changes(key_rx));
    let subscriptions = subscription_controller(&caches, ctx.clone(), config.clone());
    let channels = channel_controller(&caches, ctx.clone(), config.clone());
    let endpoints = endpoint_controller(&caches, ctx.clone(), config.clone());
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let broker = args.broker.clone().map(|url| {
        info!(broker = %url, "reconciling the broker topology of rabbitmq channels");
        wsbridge_broker::Broker::connect(
            url,
            wsbridge_broker::BrokerOptions {
                connection_name: "wsbridge-controller".into(),
                ..Default::default()
            },
        )
    });
    let topology = broker_topology::controllers(
        &caches,
        broker_topology::TopologyContext::new(
            client.clone(),
            stores.clone(),
            metrics.clone(),
            broker,
            synced_rx.clone(),
        ),
        config,
    );
    let signing_changes = futures::stream::select_all([
        caches.subscriptions.triggers().map(|_| ()).boxed(),
        caches.secrets.triggers().map(|_| ()).boxed(),
        caches.bridges.triggers().map(|_| ()).boxed(),
        caches.channels.triggers().map(|_| ()).boxed(),
    ]);
    let delivery_keys = delivery_keys::run(
        client.clone(),
        stores.clone(),
        args.delivery_keys.clone(),
        signing_changes,
        synced_rx.clone(),
    );
    let watches = caches.run(client, args.namespace.as_deref());
    let synced = async {
        caches::synced(&stores).await;
        info!("caches synced");
        readiness.set(true);
        let _ = synced_tx.send(true);
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = watches => {},
        _ = follow_key => {},
        _ = bridges => {},
        _ = subscriptions => {},
        _ = channels => {},
        _ = endpoints => {},
        _ = topology => {},
        _ = delivery_keys => {},
        _ = synced => {},
    }
    anyhow::bail!("controllers stopped unexpectedly")
}

/// Bridges: their worker objects, their Channel and Endpoint, the
/// Subscriptions their workers deliver to, and the Secrets and ConfigMaps
/// those read; their send credential's Secret; and every Bridge when the
/// send key changes.
fn bridge_controller<S>(
    c: &Caches,
    ctx: Arc<Context>,
    config: Config,
    key_changes: S,
) -> impl Future<Output = ()> + Send + use<S>
where
    S: futures::Stream<Item = ()> + Send + 'static,
{
    let s = &ctx.stores;
    Controller::for_shared_stream(c.bridges.primary(), s.bridges.clone())
        .with_config(config)
        .owns_shared_stream(c.deployments.triggers())
        .owns_shared_stream(c.service_accounts.triggers())
        .owns_shared_stream(c.roles.triggers())
        .owns_shared_stream(c.role_bindings.triggers())
        .owns_shared_stream(c.network_policies.triggers())
        .owns_shared_stream(c.secrets.triggers())
        .reconcile_all_on(key_changes)
        .watches_shared_stream(c.channels.triggers(), over(s, triggers::bridges_of_channel))
        .watches_shared_stream(c.endpoints.triggers(), over(s, triggers::bridges_of_endpoint))
        .watches_shared_stream(c.secrets.triggers(), over(s, triggers::bridges_using_secret))
        .watches_shared_stream(
            c.subscriptions.triggers(),
            over(s, triggers::bridges_of_subscription),
        )
        .watches_shared_stream(
            c.config_maps.triggers(),
            over(s, triggers::bridges_using_config_map),
        )
        .run(reconcile::reconcile_bridge, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()))
}

/// Subscriptions: their Channel, the Services they deliver to and their
/// signing Secret.
fn subscription_controller(
    c: &Caches,
    ctx: Arc<Context>,
    config: Config,
) -> impl Future<Output = ()> + Send + use<> {
    let s = &ctx.stores;
    Controller::for_shared_stream(c.subscriptions.primary(), s.subscriptions.clone())
        .with_config(config)
        .watches_shared_stream(c.channels.triggers(), over(s, triggers::subscriptions_of_channel))
        .watches_shared_stream(c.services.triggers(), over(s, triggers::subscriptions_of_service))
        .watches_shared_stream(
            c.secrets.triggers(),
            over(s, triggers::subscriptions_using_secret),
        )
        .run(reconcile::reconcile_subscription, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()))
}

/// Channels: the Bridges and Subscriptions they count.
fn channel_controller(
    c: &Caches,
    ctx: Arc<Context>,
    config: Config,
) -> impl Future<Output = ()> + Send + use<> {
    Controller::for_shared_stream(c.channels.primary(), ctx.stores.channels.clone())
        .with_config(config)
        .watches_shared_stream(c.bridges.triggers(), triggers::channel_of_bridge)
        .watches_shared_stream(c.subscriptions.triggers(), triggers::channel_of_subscription)
        .run(reconcile::reconcile_channel, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
}

/// Endpoints: the Secrets and ConfigMaps they read.
fn endpoint_controller(
    c: &Caches,
    ctx: Arc<Context>,
    config: Config,
) -> impl Future<Output = ()> + Send + use<> {
    let s = &ctx.stores;
    Controller::for_shared_stream(c.endpoints.primary(), s.endpoints.clone())
        .with_config(config)
        .watches_shared_stream(c.secrets.triggers(), over(s, triggers::endpoints_using_secret))
        .watches_shared_stream(
            c.config_maps.triggers(),
            over(s, triggers::endpoints_using_config_map),
        )
        .run(reconcile::reconcile_endpoint, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()))
}
