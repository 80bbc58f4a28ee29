//! Signed Subscriptions: the gateway signs what it delivers to them (the
//! publishes on memory Channels) with the key the controller copied into
//! the delivery keys Secret, mounted here ([`DeliveryKeys`]), as their
//! worker signs endpoint messages. Until that key is here (the kubelet
//! updates a mounted Secret within about a minute), such a Subscription
//! gets nothing from the gateway: never an unsigned delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use wsbridge_api::SubscriptionSpec;
use wsbridge_core::ObjectKey;
use wsbridge_dataplane::delivery::delivery_keys::DeliveryKeys;
use wsbridge_dataplane::routing::{RoutingIndex, SubscriptionInfo};
use wsbridge_translate as translate;

/// The signing keys and the signed Subscriptions they apply to.
pub(crate) struct Signing {
    keys: watch::Receiver<Arc<DeliveryKeys>>,
    /// Specs of the Subscriptions that name a signing secret, applied again
    /// whenever the keys change.
    signed: Mutex<HashMap<ObjectKey, SubscriptionSpec>>,
}

impl Signing {
    pub(crate) fn new(keys: watch::Receiver<Arc<DeliveryKeys>>) -> Self {
        Self {
            keys,
            signed: Mutex::default(),
        }
    }

    /// Puts Subscription `key` into `index`, signed when it names a signing
    /// secret, or takes it out (with a warning) when it cannot be used.
    pub(crate) fn apply(&self, index: &RoutingIndex, key: ObjectKey, spec: &SubscriptionSpec) {
        {
            let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
            if spec.signing_secret_ref.is_some() {
                signed.insert(key.clone(), spec.clone());
            } else {
                signed.remove(&key);
            }
        }
        match self.info(&key, spec) {
            Ok(info) => index.apply_subscription(key, info),
            Err(e) => {
                tracing::warn!(subscription = %key, error = %e, "not delivering to this Subscription");
                index.delete_subscription(&key);
            }
        }
    }

    /// Takes Subscription `key` out of `index`.
    pub(crate) fn delete(&self, index: &RoutingIndex, key: &ObjectKey) {
        self.signed.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        index.delete_subscription(key);
    }

    fn info(&self, key: &ObjectKey, spec: &SubscriptionSpec) -> Result<SubscriptionInfo, String> {
        let mut info = translate::subscription_info(&key.namespace, spec).map_err(|e| e.to_string())?;
        if spec.signing_secret_ref.is_some() {
            let keys = self.keys.borrow().clone();
            let key = keys.signing(key).cloned().ok_or(
                "its signing key is not in the delivery keys yet (the controller copies each usable \
                 signing secret there); nothing is delivered unsigned",
            )?;
            info.signing = Some(key);
        }
        Ok(info)
    }

    /// Applies every signed Subscription again each time the keys change.
    /// Runs until the keys' sender is gone.
    pub(crate) async fn follow_keys(self: Arc<Self>, index: Arc<RoutingIndex>) {
        let mut keys = self.keys.clone();
        while keys.changed().await.is_ok() {
            let signed: Vec<(ObjectKey, SubscriptionSpec)> = self
                .signed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect();
            for (key, spec) in signed {
                self.apply(&index, key, &spec);
            }
        }
    }
}
