//! `wsbridge standalone` validates its files against the same schema and CEL
//! rules as the API server: the invalid corpus the API server refuses is
//! refused here too, naming file, object and field; every example passes.

#[path = "support/local.rs"]
mod local;
mod standalone_support;

use std::process::{Command, Output};

use local::yaml_files;
use standalone_support::{TempDir, repo};

fn wsbridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(args)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_invalid_object_makes_standalone_exit_non_zero_naming_file_and_field() {
    let files = yaml_files(&repo().join("tests/corpus/invalid"));
    assert!(files.len() >= 20, "only {} files in the corpus", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        let field = source
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks `# expect: FIELD`", file.display()))
            .trim();
        let rel = file.strip_prefix(repo()).unwrap().to_str().unwrap();
        // Not --check: the real command refuses to start.
        let out = wsbridge(&["standalone", "-f", rel, "--listen", "127.0.0.1:0"]);
        let text = text(&out);
        let name = source
            .lines()
            .find_map(|l| l.strip_prefix("metadata: {name: "))
            .map(|n| n.trim_end_matches('}'))
            .unwrap_or("bad");
        let kind = source.lines().find_map(|l| l.strip_prefix("kind: ")).unwrap();
        let prefix = format!("{rel}: {kind} default/{name}: {field}");
        if out.status.success() {
            failures.push(format!("{rel}: accepted"));
        } else if !text.contains(&prefix) {
            failures.push(format!("{rel}: no line starting {prefix:?} in: {text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_example_passes_check() {
    let mut checked = 0;
    for file in yaml_files(&repo().join("examples")) {
        if file.components().any(|c| c.as_os_str() == "gitops") {
            continue;
        }
        let rel = file.strip_prefix(repo()).unwrap().to_str().unwrap();
        let out = wsbridge(&["standalone", "--check", "-f", rel]);
        assert!(out.status.success(), "{rel}:\n{}", text(&out));
        assert!(text(&out).contains("configuration is valid"), "{}", text(&out));
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} examples");
}

#[test]
fn missing_references_are_named() {
    let dir = TempDir::new("refs");
    let file = dir.write(
        "refs.yaml",
        r#"
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {name: feed, namespace: trading}
spec:
  url: wss://feed.example.com/
  auth: {secretRef: {name: feed-credentials}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {name: ticker, namespace: trading}
spec: {}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: no-channel, namespace: trading}
spec: {channel: news, endpoint: feed}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: no-endpoint, namespace: trading}
spec: {channel: ticker, endpoint: other}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: no-secret, namespace: trading}
spec: {channel: ticker, endpoint: feed}
---
apiVersion: wsbridge.io/v1alpha1
kind: Subscription
metadata: {name: lost, namespace: trading}
spec: {channel: sports, subscriber: {uri: "http://127.0.0.1:1/"}}
"#,
    );
    let path = file.to_str().unwrap();
    let out = wsbridge(&["standalone", "--check", "-f", path]);
    assert!(!out.status.success());
    let text = text(&out);
    for line in [
        format!("{path}: Bridge trading/no-channel: spec.channel: Channel trading/news not found"),
        format!("{path}: Bridge trading/no-endpoint: spec.endpoint: Endpoint trading/other not found"),
        format!("{path}: Endpoint trading/feed: spec.auth.secretRef: Secret \"feed-credentials\" not found"),
        format!("{path}: Subscription trading/lost: spec.channel: Channel trading/sports not found"),
    ] {
        assert!(text.contains(&line), "expected {line:?} in:\n{text}");
    }
}

#[test]
fn secrets_from_data_and_string_data_satisfy_references_and_never_show() {
    let dir = TempDir::new("secrets");
    let file = dir.write(
        "ok.yaml",
        r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
data: {username: dXNlcg==}
stringData: {password: hunter2}
---
apiVersion: wsbridge.io/v1alpha1
kind: Endpoint
metadata: {name: feed}
spec: {url: "wss://feed.example.com/", auth: {secretRef: {name: creds}}}
---
apiVersion: wsbridge.io/v1alpha1
kind: Channel
metadata: {name: ticker}
spec: {}
---
apiVersion: wsbridge.io/v1alpha1
kind: Bridge
metadata: {name: b}
spec: {channel: ticker, endpoint: feed, tokenSecretRef: {name: creds, key: token}}
"#,
    );
    let out = wsbridge(&["standalone", "--check", "-f", file.to_str().unwrap()]);
    let text = text(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("Bridge default/b: spec.tokenSecretRef: Secret \"creds\" has no key \"token\""),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    // Without the token reference, the same Secret is enough (basic auth).
    let fixed = std::fs::read_to_string(&file)
        .unwrap()
        .replace(", tokenSecretRef: {name: creds, key: token}", "");
    let file = dir.write("ok.yaml", &fixed);
    let out = wsbridge(&["standalone", "--check", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", self::text(&out));
}

/// The CLI validates in a child process (`wsbridge validate-config`). Its
/// verdict is the in-process one; a validator that cannot start leaves the
/// check to the parent; one that dies or hangs refuses the configuration
/// rather than letting it through unchecked.
mod isolated_validation {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::standalone_support::{TempDir, repo};
    use wsbridge_standalone::{Validation, load, validator};

    fn isolated(program: impl Into<PathBuf>, timeout: Duration) -> Validation {
        Validation::Isolated {
            program: program.into(),
            timeout,
        }
    }

    fn real() -> Validation {
        isolated(env!("CARGO_BIN_EXE_wsbridge"), Duration::from_secs(60))
    }

    #[tokio::test]
    async fn the_child_gives_the_in_process_verdict() {
        let example = repo().join("examples/quickstart/wsbridge.yaml");
        let plan = validator::load(std::slice::from_ref(&example), &real())
            .await
            .expect("the quickstart is valid");
        assert_eq!(plan, load(&[example]).unwrap());
        for name in ["bridge-bad-channel-name.yaml", "channel-publish-not-bool.yaml"] {
            let file = repo().join("tests/corpus/invalid").join(name);
            let in_child = validator::load(std::slice::from_ref(&file), &real())
                .await
                .expect_err("invalid");
            assert_eq!(in_child, load(&[file]).expect_err("invalid"), "{name}");
        }
    }

    #[tokio::test]
    async fn a_validator_that_cannot_start_leaves_the_check_to_the_parent() {
        let missing = isolated("/nonexistent/wsbridge", Duration::from_secs(10));
        let example = repo().join("examples/quickstart/wsbridge.yaml");
        assert!(validator::load(&[example], &missing).await.is_ok());
        let invalid = repo().join("tests/corpus/invalid/channel-publish-not-bool.yaml");
        let errors = validator::load(&[invalid], &missing)
            .await
            .expect_err("still checked");
        assert!(
            errors.to_string().contains("spec.allowAnonymousPublish"),
            "{errors}"
        );
    }

    #[tokio::test]
    async fn a_validator_that_dies_or_hangs_refuses_the_configuration() {
        let example = repo().join("examples/quickstart/wsbridge.yaml");
        let died = validator::load(
            std::slice::from_ref(&example),
            &isolated("false", Duration::from_secs(10)),
        )
        .await
        .expect_err("no verdict, no configuration");
        assert!(died.to_string().contains("validation failed"), "{died}");

        let dir = TempDir::new("hung-validator");
        let script = dir.write("hang.sh", "#!/bin/sh\nexec sleep 30\n");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let started = std::time::Instant::now();
        let hung = validator::load(&[example], &isolated(&script, Duration::from_millis(500)))
            .await
            .expect_err("a hung validator gives no verdict");
        assert!(hung.to_string().contains("did not finish"), "{hung}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the hung child was not cut off"
        );
    }
}
