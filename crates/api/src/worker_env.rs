//! The worker pod's environment: the contract between the controller, which
//! writes these variables into each worker Deployment, and the worker, which
//! reads them (see `docs/architecture.md`, "The worker pod contract").
//!
//! Secret values never pass through an object: the controller points these
//! variables at Secret keys (`valueFrom.secretKeyRef`) and the kubelet
//! resolves them.

/// Bearer token of the Endpoint (`token` of `auth.secretRef`).
pub const ENDPOINT_TOKEN: &str = "WSBRIDGE_ENDPOINT_TOKEN";
/// Basic-auth user of the Endpoint (`username` of `auth.secretRef`).
pub const ENDPOINT_USERNAME: &str = "WSBRIDGE_ENDPOINT_USERNAME";
/// Basic-auth password of the Endpoint (`password` of `auth.secretRef`).
pub const ENDPOINT_PASSWORD: &str = "WSBRIDGE_ENDPOINT_PASSWORD";
/// Prefix of the i-th `auth.secretHeaders` value (entries sorted by header name).
pub const ENDPOINT_HEADER_PREFIX: &str = "WSBRIDGE_ENDPOINT_HEADER_";
/// PEM CA bundle of the Endpoint's `tls`.
pub const ENDPOINT_CA: &str = "WSBRIDGE_ENDPOINT_CA";
/// The Bridge's token for subscribers (`tokenSecretRef`).
pub const BRIDGE_TOKEN: &str = "WSBRIDGE_BRIDGE_TOKEN";
/// The credential the gateway presents on the worker's `POST /v1/send`
/// (from the Bridge's own Secret, written by the controller).
pub const SEND_CREDENTIAL: &str = "WSBRIDGE_SEND_CREDENTIAL";
/// The broker's URL (`amqp://` or `amqps://`, credentials inside) for a
/// Bridge on a `rabbitmq` Channel: from the Bridge's own Secret, where the
/// controller copies the installation's broker URL.
pub const RABBITMQ_URL: &str = "WSBRIDGE_RABBITMQ_URL";
/// The worker's HTTP listener.
pub const LISTEN: &str = "WSBRIDGE_LISTEN";
/// The pod's IP, from the downward API: the worker's publish address.
pub const POD_IP: &str = "POD_IP";
/// The pod's name, from the downward API.
pub const POD_NAME: &str = "POD_NAME";
/// The pod's namespace, from the downward API.
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";

/// The environment variable of the i-th secret header.
pub fn header_var(index: usize) -> String {
    format!("{ENDPOINT_HEADER_PREFIX}{index}")
}

/// Prefix of a signed Subscription's signing secret (its `signingSecretRef`,
/// through `secretKeyRef`), followed by the Subscription's name. Only
/// Subscriptions of the Bridge's channel whose Secret holds a valid
/// `whsec_` secret get one.
pub const SIGNING_SECRET_PREFIX: &str = "WSBRIDGE_SIGNING_SECRET_";
/// Prefix of the reference that signing secret was read from (a plain
/// `SECRET/KEY`), followed by the Subscription's name: a Subscription that
/// names another reference than the pod was started with is not delivered
/// to until the worker rolls, rather than signed with a stale key.
pub const SIGNING_REF_PREFIX: &str = "WSBRIDGE_SIGNING_REF_";

/// The variable holding the signing secret of Subscription `subscription`
/// (DNS-1123 names are valid in environment variable names).
pub fn signing_secret_var(subscription: &str) -> String {
    format!("{SIGNING_SECRET_PREFIX}{subscription}")
}

/// The variable naming where [`signing_secret_var`] was read from.
pub fn signing_ref_var(subscription: &str) -> String {
    format!("{SIGNING_REF_PREFIX}{subscription}")
}

/// The value of [`signing_ref_var`] for the key `key` of Secret `secret`.
pub fn signing_ref_value(secret: &str, key: &str) -> String {
    format!("{secret}/{key}")
}
