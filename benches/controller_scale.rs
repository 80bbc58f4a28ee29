//! Scale benchmark (not a test): creates Bridges and Subscriptions on a real
//! API server, then starts the controller (as a child process) and reports
//! the time until every object is reconciled, the controller's peak RSS and
//! the API requests it made.
//!
//! `cargo bench --bench controller_scale` runs the full size (1,000 Bridges,
//! 5,000 Subscriptions); `WSBRIDGE_BENCH_BRIDGES` and
//! `WSBRIDGE_BENCH_SUBSCRIPTIONS` change it.

#[path = "../tests/controller_support/mod.rs"]
mod controller_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::Result;
use controller_support::{ControllerProcess, install_crds, metric_sum};
use futures::{StreamExt, TryStreamExt};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use wsbridge_api::conditions::{self, READY};
use wsbridge_api::{Bridge, Channel, Subscription};

const NAMESPACES: usize = 10;
const CHANNELS_PER_NAMESPACE: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    controller_support::child_entry();
    // `cargo test --all-targets` runs bench targets too: only `cargo bench`
    // (which passes --bench) should spend minutes creating 6,000 objects.
    if !std::env::args().any(|a| a == "--bench") {
        println!("controller_scale: skipped (run it with `cargo bench --bench controller_scale`)");
        return Ok(());
    }
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn create_all(client: &Client, docs: Vec<(String, serde_json::Value)>) -> Result<()> {
    futures::stream::iter(docs)
        .map(|(ns, doc)| {
            let client = client.clone();
            async move {
                let obj: kube::api::DynamicObject = serde_json::from_value(doc)?;
                let gvk = kube::api::GroupVersionKind::try_from(obj.types.as_ref().unwrap())?;
                let ar = kube::api::ApiResource::from_gvk(&gvk);
                let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, &ns, &ar);
                api.create(&PostParams::default(), &obj).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn bench() -> Result<()> {
    let bridges = env_usize("WSBRIDGE_BENCH_BRIDGES", 1000);
    let subscriptions = env_usize("WSBRIDGE_BENCH_SUBSCRIPTIONS", 5000);
    let cp = support::ControlPlane::start(support::Options::default()).await?;
    let client = cp.client();
    install_crds(&client).await?;
    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES {
        namespaces.push(support::create_namespace(&client, "scale").await?);
    }
    let mut docs = Vec::new();
    for ns in &namespaces {
        docs.push((ns.clone(), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "t"}})));
        docs.push((
            ns.clone(),
            json!({"apiVersion": "wsbridge.io/v1alpha1", "kind": "Endpoint", "metadata": {"name": "feed"},
            "spec": {"url": "wss://feed.example/", "auth": {"secretRef": {"name": "creds"}}}}),
        ));
        docs.push((
            ns.clone(),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sink"},
            "spec": {"ports": [{"port": 8080}]}}),
        ));
        for c in 0..CHANNELS_PER_NAMESPACE {
            docs.push((ns.clone(), json!({"apiVersion": "wsbridge.io/v1alpha1", "kind": "Channel", "metadata": {"name": format!("ch-{c}")}, "spec": {}})));
        }
    }
    let channel_of = |i: usize| format!("ch-{}", (i / NAMESPACES) % CHANNELS_PER_NAMESPACE);
    for i in 0..bridges {
        docs.push((
            namespaces[i % NAMESPACES].clone(),
            json!({"apiVersion": "wsbridge.io/v1alpha1", "kind": "Bridge",
            "metadata": {"name": format!("b-{i}")}, "spec": {"channel": channel_of(i), "endpoint": "feed"}}),
        ));
    }
    for i in 0..subscriptions {
        docs.push((namespaces[i % NAMESPACES].clone(), json!({"apiVersion": "wsbridge.io/v1alpha1", "kind": "Subscription",
            "metadata": {"name": format!("s-{i}")}, "spec": {"channel": channel_of(i),
            "subscriber": {"ref": {"kind": "Service", "name": "sink", "port": 8080}, "path": format!("/s/{i}")}}})));
    }
    let total = docs.len();
    let started = Instant::now();
    create_all(&client, docs).await?;
    eprintln!("created {total} objects in {:.1?}", started.elapsed());

    let started = Instant::now();
    let controller = ControllerProcess::start(
        &cp,
        "scale",
        &["--leader-election=false", "--worker-image", "wsbridge:bench"],
    )
    .await?;
    let pid = controller.child.id().expect("controller pid");
    controller.wait_ready().await?;
    let synced = started.elapsed();
    let (b_api, s_api, c_api) = (
        Api::<Bridge>::all(client.clone()),
        Api::<Subscription>::all(client.clone()),
        Api::<Channel>::all(client.clone()),
    );
    loop {
        let b_done = b_api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|b| {
                let c = b
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default();
                conditions::find(c, READY).is_some_and(|r| r.reason == "WorkerUnavailable")
            })
            .count();
        let s_done = s_api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|s| {
                let st = s.status.clone().unwrap_or_default();
                st.subscriber_uri.is_some() && conditions::is_true(&st.conditions, READY)
            })
            .count();
        let channels = c_api.list(&ListParams::default()).await?.items;
        let c_bridges: i64 = channels
            .iter()
            .map(|c| i64::from(c.status.clone().unwrap_or_default().bridges))
            .sum();
        let c_subs: i64 = channels
            .iter()
            .map(|c| i64::from(c.status.clone().unwrap_or_default().subscriptions))
            .sum();
        if b_done == bridges
            && s_done == subscriptions
            && c_bridges == bridges as i64
            && c_subs == subscriptions as i64
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("not reconciled after 30 minutes: bridges {b_done}, subscriptions {s_done}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciled = started.elapsed();
    let metrics = controller.metrics().await?;
    let requests = |verb: &str| {
        metric_sum(
            &metrics,
            "wsbridge_controller_api_requests_total",
            &[&format!("verb=\"{verb}\"")],
        ) as u64
    };
    let writes_before = controller.writes().await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_writes = (controller.writes().await? - writes_before) as i64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    let reconciles = metric_sum(&metrics, "wsbridge_controller_reconciles_total", &[]) as u64;
    println!(
        "controller_scale: {bridges} Bridges, {subscriptions} Subscriptions, {} Channels, {NAMESPACES} namespaces",
        NAMESPACES * CHANNELS_PER_NAMESPACE
    );
    println!("  caches synced after        {synced:.2?}");
    println!("  all reconciled after       {reconciled:.2?} (from controller start)");
    println!(
        "  peak RSS                   {}",
        hwm.trim_start_matches("VmHWM:").trim()
    );
    println!(
        "  API requests               get/list {} watch {} create {} patch {} update {} delete {}",
        requests("get"),
        requests("watch"),
        requests("create"),
        requests("patch"),
        requests("update"),
        requests("delete")
    );
    println!("  reconciles                 {reconciles}");
    println!("  writes in 10 s idle        {idle_writes}");
    drop(controller);
    Ok(())
}
