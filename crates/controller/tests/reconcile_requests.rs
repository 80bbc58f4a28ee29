//! The reconcilers against a mocked API server (tower-test, as kube-rs's
//! controller-rs does): the exact requests a reconcile sends — methods,
//! paths, field manager, the fields that matter — in milliseconds, with no
//! cluster. The real-API-server tests (tests/controller_*.rs in the root
//! package) prove the same behaviour end to end.

use std::sync::Arc;

use http::{Method, Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock;

use wsbridge_api::{Bridge, BridgeSpec, BridgeStatus, Channel, ChannelSpec, Endpoint, EndpointSpec};
use wsbridge_controller::metrics::Metrics;
use wsbridge_controller::reconcile::{self, Context, Stores};
use wsbridge_controller::worker_objects::{PodsIn, WorkerIngress};
use wsbridge_dataplane::DestinationPolicy;

const NS: &str = "ns";
const APPLY: &str = "?&force=true&fieldManager=wsbridge-controller";
/// The installation key of the send path's credentials.
const SEND_KEY: &[u8] = b"test-installation-key";

/// A Secret as the controller's watch caches it (`digest_secret`): each
/// value replaced by SHA-256 over the Secret's UID, a zero byte and the value.
fn cached_secret(mut secret: Secret, uid: &str) -> Secret {
    use sha2::{Digest, Sha256};
    secret.metadata.uid = Some(uid.into());
    for v in secret.data.iter_mut().flat_map(|d| d.values_mut()) {
        let mut h = Sha256::new();
        h.update(uid.as_bytes());
        h.update([0]);
        h.update(&v.0);
        *v = ByteString(h.finalize().to_vec());
    }
    secret
}

/// One request as the API server received it.
#[derive(Debug)]
struct Sent {
    method: Method,
    uri: String,
    content_type: String,
    body: Value,
}

/// Answers every request the way the API server would for these tests
/// (an applied object comes back as sent; a status comes back on `object`;
/// an Event as sent; a GET finds what `found` holds at its path, else 404)
/// and hands back the GET paths and what was written once the client is gone.
fn fake_api_server(
    mut handle: mock::Handle<Request<Body>, Response<Body>>,
    object: Value,
    found: Vec<(String, Value)>,
) -> JoinHandle<(Vec<String>, Vec<Sent>)> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut looked_up = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            if parts.method == Method::GET {
                let path = parts.uri.path().to_owned();
                let response = match found.iter().find(|(p, _)| *p == path) {
                    Some((_, o)) => Response::builder().body(Body::from(serde_json::to_vec(o).unwrap())),
                    None => Response::builder().status(404).body(Body::from(
                        serde_json::to_vec(&json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404, "message": "not found"
                        }))
                        .unwrap(),
                    )),
                };
                respond.send_response(response.unwrap());
                looked_up.push(path);
                continue;
            }
            let bytes = body.collect_bytes().await.expect("a request body");
            let body: Value = serde_json::from_slice(&bytes).expect("a JSON body");
            let answer = if parts.uri.path().ends_with("/status") {
                let mut o = object.clone();
                o["status"] = body["status"].clone();
                o
            } else {
                body.clone()
            };
            respond.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
            sent.push(Sent {
                method: parts.method,
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                body,
            });
        }
        (looked_up, sent)
    })
}

fn store<K>(objects: impl IntoIterator<Item = K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = reflector::store();
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    reader
}

/// What the caches hold besides the Bridge itself.
#[derive(Default)]
struct Cluster {
    bridges: Vec<Bridge>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    network_policies: Vec<NetworkPolicy>,
    /// As the controller's watch caches them: values salted-digested.
    secrets: Vec<Secret>,
}

fn stores(c: Cluster) -> Stores {
    let mut channel = Channel::new("ticker", ChannelSpec::default());
    channel.metadata.namespace = Some(NS.into());
    let spec: EndpointSpec = serde_norway::from_str("url: wss://feed.example/").unwrap();
    let mut endpoint = Endpoint::new("market", spec);
    endpoint.metadata.namespace = Some(NS.into());
    Stores {
        bridges: store(c.bridges),
        channels: store([channel]),
        endpoints: store([endpoint]),
        subscriptions: store([]),
        secrets: store(c.secrets),
        config_maps: store([]),
        services: store([]),
        deployments: store(c.deployments),
        service_accounts: store(c.service_accounts),
        roles: store(c.roles),
        role_bindings: store(c.role_bindings),
        network_policies: store(c.network_policies),
    }
}

fn bridge() -> Bridge {
    let mut b = Bridge::new(
        "feed",
        BridgeSpec {
            channel: "ticker".into(),
            endpoint: "market".into(),
            token_secret_ref: None,
            worker: None,
        },
    );
    b.metadata.namespace = Some(NS.into());
    b.metadata.uid = Some("5f0e-uid".into());
    b.metadata.generation = Some(1);
    b
}

/// Runs one reconcile of `obj` against the fake API server; returns what was
/// written (GETs aside).
async fn reconcile_once<K, F, Fut>(obj: K, cluster: Stores, reconcile: F) -> Vec<Sent>
where
    K: serde::Serialize,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<kube::runtime::controller::Action, reconcile::Error>>,
{
    reconcile_in(obj, cluster, reconcile, Vec::new(), None).await.1
}

/// Like [`reconcile_once`], with objects a GET finds outside the caches and
/// who may reach workers; returns the GET paths too.
async fn reconcile_in<K, F, Fut>(
    obj: K,
    cluster: Stores,
    reconcile: F,
    found: Vec<(String, Value)>,
    worker_ingress: Option<WorkerIngress>,
) -> (Vec<String>, Vec<Sent>)
where
    K: serde::Serialize,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<kube::runtime::controller::Action, reconcile::Error>>,
{
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = fake_api_server(handle, serde_json::to_value(&obj).unwrap(), found);
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "wsbridge-controller".into(),
        instance: Some("test".into()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: cluster,
        metrics: Metrics::register(&mut Registry::default()),
        recorder: Recorder::new(client, reporter),
        worker_image: "ghcr.io/wsbridge/wsbridge:test".into(),
        gateway_url: "http://gateway.wsbridge-system:8080/".into(),
        cluster_domain: "cluster.local".into(),
        destinations: Arc::new(DestinationPolicy::default()),
        worker_ingress,
        worker_pod_defaults: Default::default(),
        send_key: tokio::sync::watch::channel(Some(Arc::from(SEND_KEY))).1,
        broker: None,
    });
    reconcile(Arc::new(obj), ctx).await.expect("reconcile succeeds");
    // The reconcile's clients are gone: the server sees its channel close.
    server.await.unwrap()
}

fn parse<K: DeserializeOwned>(s: &Sent) -> K {
    serde_json::from_value(s.body.clone()).unwrap()
}

fn requests(sent: &[Sent]) -> Vec<(Method, &str)> {
    sent.iter().map(|s| (s.method.clone(), s.uri.as_str())).collect()
}

/// A new Bridge, its Channel and Endpoint present: what the first reconcile sends.
async fn first_reconcile() -> Vec<Sent> {
    reconcile_once(
        bridge(),
        stores(Cluster {
            bridges: vec![bridge()],
            ..Default::default()
        }),
        reconcile::reconcile_bridge,
    )
    .await
}

/// What the cluster holds after the first reconcile: the applied objects and
/// the Bridge with the status written.
fn after_first_reconcile(sent: &[Sent]) -> (Bridge, Cluster) {
    let mut b = bridge();
    b.status = Some(serde_json::from_value(sent[5].body["status"].clone()).unwrap());
    let cluster = Cluster {
        bridges: vec![b.clone()],
        service_accounts: vec![parse(&sent[0])],
        roles: vec![parse(&sent[1])],
        role_bindings: vec![parse(&sent[2])],
        secrets: vec![cached_secret(parse(&sent[3]), "secret-uid")],
        deployments: vec![parse(&sent[4])],
        network_policies: Vec::new(),
    };
    (b, cluster)
}

#[tokio::test]
async fn a_new_bridge_gets_its_worker_objects_applied_then_its_status_and_an_event() {
    let sent = first_reconcile().await;
    let worker = "wsbridge-worker-feed";
    assert_eq!(
        requests(&sent),
        [
            (
                Method::PATCH,
                &*format!("/api/v1/namespaces/{NS}/serviceaccounts/{worker}{APPLY}")
            ),
            (
                Method::PATCH,
                &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles/{worker}{APPLY}")
            ),
            (
                Method::PATCH,
                &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/{worker}{APPLY}")
            ),
            (
                Method::PATCH,
                &format!("/api/v1/namespaces/{NS}/secrets/{worker}{APPLY}")
            ),
            (
                Method::PATCH,
                &format!("/apis/apps/v1/namespaces/{NS}/deployments/{worker}{APPLY}")
            ),
            (
                Method::PATCH,
                &format!("/apis/wsbridge.io/v1alpha1/namespaces/{NS}/bridges/feed/status{APPLY}")
            ),
            (
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?")
            ),
        ]
    );
    for (s, kind) in sent[..6].iter().zip([
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Secret",
        "Deployment",
        "Bridge",
    ]) {
        assert_eq!(
            s.content_type, "application/apply-patch+yaml",
            "{kind}: server-side apply"
        );
        assert_eq!(s.body["kind"], kind);
    }
    for s in &sent[..5] {
        let meta = &s.body["metadata"];
        assert_eq!(meta["name"], worker);
        assert_eq!(meta["namespace"], NS);
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"],
            "wsbridge-controller"
        );
        assert_eq!(
            meta["ownerReferences"],
            json!([{
                "apiVersion": "wsbridge.io/v1alpha1", "kind": "Bridge", "name": "feed",
                "uid": "5f0e-uid", "controller": true
            }]),
            "owned by the Bridge, so the garbage collector removes it"
        );
    }
    // The send credential: HMAC of the installation key and the Bridge's
    // UID, in the Bridge's own Secret, which the worker reads by reference.
    let secret: Secret = parse(&sent[3]);
    let credential = wsbridge_dataplane::send_auth::credential(SEND_KEY, "5f0e-uid");
    assert_eq!(
        secret.data.unwrap()["send-credential"].0,
        credential.expose().as_bytes()
    );
    let deployment: Deployment = parse(&sent[4]);
    let env = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    let send = env.iter().find(|v| v.name == "WSBRIDGE_SEND_CREDENTIAL").unwrap();
    assert!(send.value.is_none());
    let reference = send.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        (worker, "send-credential")
    );
    assert!(
        deployment.metadata.annotations.unwrap()["wsbridge.io/applied-hash"].len() == 32,
        "the hash that makes the next reconcile skip the apply"
    );
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(worker));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/wsbridge/wsbridge:test")
    );

    // The status: only what the controller owns (`Ready`, not the worker's
    // `Connected`), for generation 1, naming the worker.
    let status = &sent[5].body["status"];
    let keys: Vec<&String> = status.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["conditions", "observedGeneration", "worker"]);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["worker"], worker);
    let conditions: Vec<Condition> = serde_json::from_value(status["conditions"].clone()).unwrap();
    assert_eq!(conditions.len(), 1);
    let ready = &conditions[0];
    assert_eq!(
        (ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()),
        ("Ready", "False", "WorkerUnavailable")
    );
    assert_eq!(ready.observed_generation, Some(1));

    let event = &sent[6].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "WorkerUnavailable");
    assert_eq!(event["note"], "the worker Deployment is not available yet");
    assert_eq!(event["action"], "Reconcile");
    assert_eq!(event["reportingController"], "wsbridge-controller");
    assert_eq!(event["regarding"]["kind"], "Bridge");
    assert_eq!(event["regarding"]["name"], "feed");
    assert_eq!(event["regarding"]["namespace"], NS);
}

#[tokio::test]
async fn an_unchanged_bridge_sends_nothing() {
    let first = first_reconcile().await;
    let (b, cluster) = after_first_reconcile(&first);
    // Later: only the clock moved.
    let sent = reconcile_once(b, stores(cluster), reconcile::reconcile_bridge).await;
    assert!(
        sent.is_empty(),
        "no apply, no status, no Event: {:?}",
        requests(&sent)
    );
}

#[tokio::test]
async fn a_ready_bridge_gets_its_status_and_one_normal_event_and_keeps_the_workers_condition() {
    let first = first_reconcile().await;
    let (mut b, mut cluster) = after_first_reconcile(&first);
    // The worker came up and reported its connection.
    let status: &mut BridgeStatus = b.status.as_mut().unwrap();
    status.conditions.push(Condition {
        type_: "Connected".into(),
        status: "True".into(),
        reason: "Connected".into(),
        message: "connected".into(),
        observed_generation: Some(1),
        last_transition_time: Time(Timestamp::now()),
    });
    cluster.bridges = vec![b.clone()];
    cluster.deployments[0].status = Some(DeploymentStatus {
        conditions: Some(vec![DeploymentCondition {
            type_: "Available".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let sent = reconcile_once(b, stores(cluster), reconcile::reconcile_bridge).await;
    assert_eq!(
        requests(&sent),
        [
            (
                Method::PATCH,
                &*format!("/apis/wsbridge.io/v1alpha1/namespaces/{NS}/bridges/feed/status{APPLY}")
            ),
            (
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?")
            ),
        ],
        "the worker objects are unchanged: not applied again"
    );
    let conditions = &sent[0].body["status"]["conditions"];
    assert_eq!(conditions.as_array().unwrap().len(), 1, "{conditions}");
    assert_eq!(conditions[0]["type"], "Ready", "Connected stays the worker's");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(sent[1].body["type"], "Normal");
    assert_eq!(sent[1].body["reason"], "Ready");
}

#[tokio::test]
async fn a_new_channel_gets_its_address_and_an_event_then_nothing() {
    let mut channel = Channel::new("ticker", ChannelSpec::default());
    channel.metadata.namespace = Some(NS.into());
    channel.metadata.generation = Some(1);
    let cluster = || {
        stores(Cluster {
            bridges: vec![bridge()],
            ..Default::default()
        })
    };
    let sent = reconcile_once(channel.clone(), cluster(), reconcile::reconcile_channel).await;
    assert_eq!(
        requests(&sent),
        [
            (
                Method::PATCH,
                &*format!("/apis/wsbridge.io/v1alpha1/namespaces/{NS}/channels/ticker/status{APPLY}")
            ),
            (
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?")
            ),
        ]
    );
    let status = &sent[0].body["status"];
    assert_eq!(
        status["address"]["url"],
        "http://gateway.wsbridge-system:8080/channels/ns/ticker"
    );
    assert_eq!(
        (&status["bridges"], &status["subscriptions"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["conditions"][0]["reason"], "Addressable");
    assert_eq!(sent[1].body["type"], "Normal");

    channel.status = Some(serde_json::from_value(status.clone()).unwrap());
    let sent = reconcile_once(channel, cluster(), reconcile::reconcile_channel).await;
    assert!(sent.is_empty(), "{:?}", requests(&sent));
}

const WORKER_PATHS: [&str; 4] = [
    "/api/v1/namespaces/ns/serviceaccounts/wsbridge-worker-feed",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/wsbridge-worker-feed",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/wsbridge-worker-feed",
    "/apis/apps/v1/namespaces/ns/deployments/wsbridge-worker-feed",
];

#[tokio::test]
async fn worker_objects_missing_from_the_caches_are_looked_up_before_they_are_applied() {
    let (looked_up, _) = reconcile_in(
        bridge(),
        stores(Cluster {
            bridges: vec![bridge()],
            ..Default::default()
        }),
        reconcile::reconcile_bridge,
        Vec::new(),
        None,
    )
    .await;
    let mut expected = WORKER_PATHS.to_vec();
    expected.push(SECRET_PATH);
    assert_eq!(looked_up, expected);
}

/// The Bridge's send credential Secret.
const SECRET_PATH: &str = "/api/v1/namespaces/ns/secrets/wsbridge-worker-feed";

#[tokio::test]
async fn a_hand_edited_send_credential_is_applied_again_and_alone() {
    let first = first_reconcile().await;
    let (b, mut cluster) = after_first_reconcile(&first);
    let mut edited: Secret = parse(&first[3]);
    edited
        .data
        .as_mut()
        .unwrap()
        .insert("send-credential".into(), ByteString(b"guessed".to_vec()));
    cluster.secrets = vec![cached_secret(edited, "secret-uid")];
    let sent = reconcile_once(b, stores(cluster), reconcile::reconcile_bridge).await;
    assert_eq!(
        requests(&sent),
        [(Method::PATCH, &*format!("{SECRET_PATH}{APPLY}"))]
    );
    let credential = wsbridge_dataplane::send_auth::credential(SEND_KEY, "5f0e-uid");
    let applied: Secret = parse(&sent[0]);
    assert_eq!(
        applied.data.unwrap()["send-credential"].0,
        credential.expose().as_bytes()
    );
}

#[tokio::test]
async fn a_foreign_secret_with_the_worker_name_is_never_overwritten() {
    let foreign = json!({
        "apiVersion": "v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "wsbridge-worker-feed", "namespace": NS, "uid": "someone-else"}
    });
    let (_, sent) = reconcile_in(
        bridge(),
        stores(Cluster {
            bridges: vec![bridge()],
            ..Default::default()
        }),
        reconcile::reconcile_bridge,
        vec![(SECRET_PATH.to_owned(), foreign)],
        None,
    )
    .await;
    assert!(
        !sent
            .iter()
            .any(|s| s.uri.contains("/secrets/") || s.uri.contains("/deployments/")),
        "neither the Secret nor the worker is applied: {:?}",
        requests(&sent)
    );
    let ready = &sent[0].body["status"]["conditions"][0];
    assert_eq!(ready["reason"], "WorkerObjectConflict");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("Secret wsbridge-worker-feed"),
        "{ready}"
    );
}

#[tokio::test]
async fn a_hand_edited_deployment_is_applied_again_and_alone() {
    let first = first_reconcile().await;
    let (b, mut cluster) = after_first_reconcile(&first);
    let pod = cluster.deployments[0]
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap();
    pod.containers[0].security_context = None;
    let sent = reconcile_once(b, stores(cluster), reconcile::reconcile_bridge).await;
    assert_eq!(
        requests(&sent),
        [(Method::PATCH, &*format!("{}{APPLY}", WORKER_PATHS[3]))]
    );
    let applied: Deployment = parse(&sent[0]);
    let container = &applied.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        container
            .security_context
            .as_ref()
            .unwrap()
            .read_only_root_filesystem,
        Some(true)
    );
}

#[tokio::test]
async fn a_foreign_object_with_the_worker_name_is_never_taken_over() {
    let foreign = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "wsbridge-worker-feed", "namespace": NS, "uid": "someone-else"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "x", "image": "x"}]}}}
    });
    let (_, sent) = reconcile_in(
        bridge(),
        stores(Cluster {
            bridges: vec![bridge()],
            ..Default::default()
        }),
        reconcile::reconcile_bridge,
        vec![(WORKER_PATHS[3].to_owned(), foreign)],
        None,
    )
    .await;
    assert_eq!(
        requests(&sent),
        [
            (
                Method::PATCH,
                &*format!("/apis/wsbridge.io/v1alpha1/namespaces/{NS}/bridges/feed/status{APPLY}")
            ),
            (
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events?")
            ),
        ],
        "no worker object is applied"
    );
    let ready = &sent[0].body["status"]["conditions"][0];
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("WorkerObjectConflict"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("Deployment wsbridge-worker-feed") && message.contains("not owned by this Bridge"),
        "{message}"
    );
}

#[tokio::test]
async fn the_worker_network_policy_admits_only_the_gateway_and_the_scraper_to_the_worker_port() {
    let pods = |ns: &str, component: &str| PodsIn {
        namespace: ns.into(),
        labels: [("app.kubernetes.io/component".to_string(), component.to_string())].into(),
    };
    let (looked_up, sent) = reconcile_in(
        bridge(),
        stores(Cluster {
            bridges: vec![bridge()],
            ..Default::default()
        }),
        reconcile::reconcile_bridge,
        Vec::new(),
        Some(WorkerIngress {
            gateway: pods("wsbridge-system", "gateway"),
            scraper: Some(pods("monitoring", "prometheus")),
        }),
    )
    .await;
    let path = format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/wsbridge-worker-feed");
    assert!(looked_up.contains(&path), "{looked_up:?}");
    let applied = sent
        .iter()
        .find(|s| s.uri == format!("{path}{APPLY}"))
        .expect("the NetworkPolicy is applied");
    assert!(
        sent.iter().position(|s| s.uri == applied.uri)
            < sent.iter().position(|s| s.uri.contains("/deployments/")),
        "in place before the worker pod starts"
    );
    let policy: NetworkPolicy = parse(applied);
    assert_eq!(policy.metadata.owner_references.unwrap()[0].uid, "5f0e-uid");
    let spec = policy.spec.unwrap();
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["wsbridge.io/bridge"],
        "feed"
    );
    assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 1);
    let ports = rules[0].ports.as_ref().unwrap();
    assert_eq!(
        serde_json::to_value(ports).unwrap(),
        json!([{"port": 8080, "protocol": "TCP"}])
    );
    let from = serde_json::to_value(rules[0].from.as_ref().unwrap()).unwrap();
    assert_eq!(
        from,
        json!([
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "wsbridge-system"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/component": "prometheus"}}},
        ])
    );
}
