//! Controller chaos: two leader-elected controller replicas; the leader is
//! killed with SIGKILL 20 times (a fresh replica replaces it each time)
//! while Bridges are created, changed and deleted. The system converges:
//! exactly one worker Deployment per Bridge, pointing at the Bridge's
//! current Endpoint, owned by the current Bridge; no orphans (the garbage
//! collector removes the workers of deleted Bridges); status observed at
//! the current generation. Prints the time to converge after the last kill.

mod controller_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use controller_support::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use rand::RngExt;
use serde_json::json;
use wsbridge_api::{Bridge, conditions};

const KILLS: usize = 20;
const LEASE: &str = "chaos";

#[test]
fn controller_child_process() {
    controller_support::child_entry();
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases.get_opt(LEASE).await?.and_then(|l| l.spec?.holder_identity))
}

fn bridge(name: &str, endpoint: &str) -> String {
    format!(
        "apiVersion: wsbridge.io/v1alpha1\nkind: Bridge\nmetadata: {{name: {name}}}\nspec: {{channel: ch, endpoint: {endpoint}}}\n"
    )
}

/// What is wrong with the worker Deployments and statuses now (empty when converged).
async fn divergence(bridges: &Api<Bridge>, deployments: &Api<Deployment>) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut want = BTreeMap::new();
    for b in bridges.list(&ListParams::default()).await? {
        if b.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let generation = b.metadata.generation;
        let observed = b
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, conditions::READY).cloned())
            .and_then(|c| c.observed_generation);
        if observed != generation {
            problems.push(format!(
                "{}: Ready observed {observed:?}, generation {generation:?}",
                b.name_any()
            ));
        }
        want.insert(
            format!("wsbridge-worker-{}", b.name_any()),
            (
                b.uid().unwrap_or_default(),
                format!("cred-{}", &b.spec.endpoint[3..]),
            ),
        );
    }
    let mut have = BTreeSet::new();
    for d in deployments.list(&ListParams::default()).await? {
        let name = d.name_any();
        have.insert(name.clone());
        let Some((uid, secret)) = want.get(&name) else {
            problems.push(format!("orphan {name}"));
            continue;
        };
        if !d.owner_references().iter().any(|o| &o.uid == uid) {
            problems.push(format!("{name} not owned by the current Bridge"));
        }
        let env = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.env.clone())
            .unwrap_or_default();
        let token_secret = env
            .iter()
            .find(|e| e.name == "WSBRIDGE_ENDPOINT_TOKEN")
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|r| r.name.clone());
        if token_secret.as_deref() != Some(secret.as_str()) {
            problems.push(format!("{name} reads {token_secret:?}, want {secret}"));
        }
    }
    for name in want.keys() {
        if !have.contains(name) {
            problems.push(format!("missing {name}"));
        }
    }
    Ok(problems)
}

#[tokio::test]
async fn killing_the_leader_20_times_during_changes_converges_to_one_worker_per_bridge() -> Result<()> {
    let cp = support::shared_with_controller_manager().await;
    let client = cp.client();
    install_crds(&client).await?;
    let ns = support::create_namespace(&client, "faults-chaos").await?;
    support::apply_yaml(
        &client,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: cred-a}\nstringData: {token: a}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: cred-b}\nstringData: {token: b}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Channel\nmetadata: {name: ch}\nspec: {}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: ep-a}\nspec: {url: 'ws://feed-a.example/', auth: {secretRef: {name: cred-a}}}\n---\napiVersion: wsbridge.io/v1alpha1\nkind: Endpoint\nmetadata: {name: ep-b}\nspec: {url: 'ws://feed-b.example/', auth: {secretRef: {name: cred-b}}}\n",
        Some(&ns),
    )
    .await?;
    let args = [
        "--namespace",
        &ns,
        "--lease-namespace",
        &ns,
        "--lease-name",
        LEASE,
        "--lease-duration-seconds",
        "2",
        "--lease-grace-seconds",
        "1",
        "--worker-image",
        "wsbridge:test",
    ];
    let mut replicas = Vec::new();
    for name in ["r0", "r1"] {
        replicas.push((name.to_string(), ControllerProcess::start(cp, name, &args).await?));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let bridges: Api<Bridge> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let mut rng = rand::rng();
    let mut takeovers = Vec::new();
    let mut live: BTreeSet<usize> = BTreeSet::new();
    let mut moved = 0;
    for i in 0..KILLS {
        let wait_start = Instant::now();
        let names: Vec<String> = replicas.iter().map(|(n, _)| n.clone()).collect();
        let leader = support::eventually(WAIT, "a live lease holder", || {
            let (leases, names) = (leases.clone(), names.clone());
            async move { Ok(holder(&leases).await?.filter(|h| names.contains(h))) }
        })
        .await?;
        takeovers.push(wait_start.elapsed());
        // Changes: a new Bridge; an older one moves to the other Endpoint;
        // every third round one is deleted. The leader gets a random part
        // of the way through them before it dies.
        support::apply_yaml(&client, &bridge(&format!("b{i}"), "ep-a"), Some(&ns)).await?;
        live.insert(i);
        if i >= 2 && live.contains(&(i - 2)) {
            bridges
                .patch(
                    &format!("b{}", i - 2),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"endpoint": "ep-b"}})),
                )
                .await?;
            moved += 1;
        }
        if i % 3 == 2 && live.remove(&(i - 1)) {
            bridges
                .delete(&format!("b{}", i - 1), &DeleteParams::background())
                .await?;
        }
        // The last kill comes right after the changes: the next leader has to
        // finish them, so the time to converge includes a takeover.
        let pause = if i == KILLS - 1 {
            0
        } else {
            rng.random_range(0..300)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let at = replicas
            .iter()
            .position(|(n, _)| *n == leader)
            .expect("the holder is a replica");
        let (_, mut dead) = replicas.remove(at);
        dead.child.kill().await?; // SIGKILL: the lease is not released
        let name = format!("n{i}");
        replicas.push((name.clone(), ControllerProcess::start(cp, &name, &args).await?));
    }
    let last_kill = Instant::now();
    let converged = support::eventually(Duration::from_secs(60), "convergence", || {
        let (bridges, deployments) = (bridges.clone(), deployments.clone());
        async move { Ok(divergence(&bridges, &deployments).await?.is_empty().then_some(())) }
    })
    .await;
    if converged.is_err() {
        let now = divergence(&bridges, &deployments).await?;
        anyhow::bail!("not converged 60 s after the last kill: {now:?}");
    }
    let converge = last_kill.elapsed();
    let count = deployments.list(&ListParams::default()).await?.items.len();
    assert_eq!(count, live.len(), "one worker Deployment per Bridge");
    takeovers.sort();
    eprintln!(
        "FIGURES controller chaos: {KILLS} leader SIGKILLs; {} Bridges created, {} deleted, {} moved to another Endpoint; waited for a live leader p50 {:.1}s max {:.1}s (lease 2s); converged {:.1}s after the last kill: {count} worker Deployments for {} Bridges, no orphans, status at the current generation",
        KILLS,
        KILLS - live.len(),
        moved,
        takeovers[takeovers.len() / 2].as_secs_f64(),
        takeovers.last().unwrap().as_secs_f64(),
        converge.as_secs_f64(),
        live.len(),
    );
    Ok(())
}
