//! Signed deliveries, checked by an implementation nobody here wrote: the
//! `standardwebhooks` package from PyPI verifies every request a Subscription
//! with a `signingSecretRef` gets, whether the message came from the bridged
//! endpoint or from a publisher; a subscriber holding another secret refuses
//! them. The package is installed by tests/run.sh; without it this test fails.

mod standalone_support;
mod webhook_support;

use base64::Engine as _;
use standalone_support::{Endpoint, Standalone, TempDir};
use webhook_support::{Verifier, new_secret};

fn config(endpoint_url: &str, secret: &str, trusting: &str, doubting: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
    let signed = "  signingSecretRef: {name: hook-signing, key: secret}\n  delivery: {retry: 0}\n";
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: hook-signing}}\ndata: {{secret: {encoded}}}\n---{}{}{}",
        standalone_support::bridged_channel_yaml(endpoint_url, "orders"),
        standalone_support::subscription_yaml("trusting", "orders", trusting, signed),
        standalone_support::subscription_yaml("doubting", "orders", doubting, signed),
    )
}

#[tokio::test]
async fn standalone_deliveries_verify_with_the_standardwebhooks_package() {
    let secret = new_secret(32);
    let mut trusting = Verifier::start(&secret).await;
    let mut doubting = Verifier::start(&new_secret(32)).await;
    let endpoint = Endpoint::start().await;
    let dir = TempDir::new("signed-deliveries");
    let file = dir.write(
        "config.yaml",
        &config(&endpoint.url(), &secret, &trusting.uri(), &doubting.uri()),
    );
    let standalone = Standalone::start(&[&file], &dir.0).await;

    let published = standalone
        .publish_accepted("default/orders", "from a publisher")
        .await;
    let id = published["id"].as_str().unwrap().to_string();
    assert_eq!(trusting.next().await, format!("verified {id} from a publisher"));
    assert!(doubting.next().await.starts_with("refused No matching signature"));

    endpoint.send("from the endpoint").await;
    let verdict = trusting.next().await;
    assert!(
        verdict.starts_with("verified ") && verdict.ends_with(" from the endpoint"),
        "{verdict}"
    );
    assert!(doubting.next().await.starts_with("refused No matching signature"));

    assert!(
        !standalone.logs().contains(&secret[6..]),
        "the secret is in the log"
    );
}

#[tokio::test]
async fn a_signing_secret_that_is_not_whsec_base64_is_refused_at_load() {
    let dir = TempDir::new("signed-bad-secret");
    let file = dir.write(
        "config.yaml",
        &config(
            "ws://127.0.0.1:9/feed",
            "not-a-whsec-secret",
            "http://127.0.0.1:9/",
            "http://127.0.0.1:9/",
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["standalone", "--check", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("spec.signingSecretRef"), "{stderr}");
    assert!(stderr.contains("whsec_"), "{stderr}");
    assert!(
        !stderr.contains("not-a-whsec-secret"),
        "the secret is in the error: {stderr}"
    );
}
