//! The quickstart script runs to completion and shows messages flowing
//! both ways.

mod standalone_support;
mod support;

use std::process::Command;
use std::sync::Mutex;

use standalone_support::{free_addr, repo};

/// The quickstart's demo peers listen on fixed ports: one run at a time.
static PORTS: Mutex<()> = Mutex::new(());

#[test]
fn quickstart_runs_to_completion_showing_messages_both_ways() {
    quickstart(&[], &[]);
}

/// The same YAML with `backend: rabbitmq` on the Channel, through a real
/// broker given in the environment: the same messages flow both ways.
#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_yaml_works_unchanged_with_backend_rabbitmq() {
    let rabbit = support::rabbitmq::shared().await;
    let url = rabbit.amqp_url();
    let stdout = tokio::task::spawn_blocking(move || {
        quickstart(
            &["--backend", "rabbitmq"],
            &[("WSBRIDGE_RABBITMQ_URL", url.as_str())],
        )
    })
    .await
    .unwrap();
    assert!(stdout.contains("backend rabbitmq"), "{stdout}");
    assert!(
        stdout.contains("consuming the subscription's backlog from the broker"),
        "{stdout}"
    );
    assert!(!stdout.contains(rabbit.password()), "the password is never shown");
}

/// Runs the quickstart with `args` and `env`, checks what it shows and
/// returns its output.
fn quickstart(args: &[&str], env: &[(&str, &str)]) -> String {
    let _one_at_a_time = PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new("bash")
        .arg("examples/quickstart/run.sh")
        .args(["--duration", "8"])
        .args(args)
        .env("WSBRIDGE_BIN", env!("CARGO_BIN_EXE_wsbridge"))
        .env("WSBRIDGE_LISTEN", free_addr().to_string())
        .envs(env.iter().copied())
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}\n{stdout}\n{stderr}", out.status);
    for expected in [
        // endpoint -> both subscribers, with the Bridge's token
        "[subscriber] /pricing <- io.wsbridge.endpoint.message from /namespaces/default/bridges/demo-feed (bearer token ok)",
        "[subscriber] /audit <- io.wsbridge.endpoint.message from /namespaces/default/bridges/demo-feed (bearer token ok)",
        // publisher -> endpoint (which echoes it) and subscribers
        "(HTTP 202)",
        r#"[feed]       <- received from wsbridge: {"order":"buy","symbol":"DEMO","qty":1}"#,
        r#"[subscriber] /pricing <- io.wsbridge.channel.published from /namespaces/default/channels/demo (no token): {"order":"buy","symbol":"DEMO","qty":1}"#,
        r#"[subscriber] /audit <- io.wsbridge.channel.published from /namespaces/default/channels/demo (no token): {"order":"buy","symbol":"DEMO","qty":1}"#,
        r#"{"received":{"order":"buy","qty":1,"symbol":"DEMO"},"type":"echo"}"#,
        "==> done",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    // The echo came back as an endpoint message only: the feed received one message.
    assert_eq!(stdout.matches("<- received from wsbridge").count(), 1, "{stdout}");
    // A newcomer's run ends clean: wsbridge stops first and says so, and
    // nothing warns about the shutdown.
    let (_, ending) = stdout.split_once("==> stopping").expect("a stop");
    assert!(ending.contains("wsbridge_standalone: stopped"), "{ending}");
    for noise in [" WARN ", " ERROR ", "reset"] {
        assert!(!ending.contains(noise), "{noise:?} in the ending:\n{ending}");
    }
    stdout.into_owned()
}
