//! The crate graph is the architecture (docs/architecture.md): these checks
//! fail when a dependency crosses a layer, even indirectly, which a grep of
//! `use` lines would miss.

use std::process::Command;

/// Every crate `package` depends on (normal and build dependencies,
/// transitively), by name.
fn dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_none_of(package: &str, forbidden: &[&str]) {
    let deps = dependencies(package);
    assert!(
        deps.iter().any(|d| d == package),
        "{package} is in the workspace: {deps:?}"
    );
    let found: Vec<_> = deps.iter().filter(|d| forbidden.contains(&d.as_str())).collect();
    assert!(found.is_empty(), "{package} depends on {found:?}");
}

#[test]
fn the_data_plane_never_depends_on_kubernetes_or_the_command_line() {
    assert_none_of(
        "wsbridge-dataplane",
        &[
            "kube",
            "kube-client",
            "kube-core",
            "kube-runtime",
            "k8s-openapi",
            "clap",
            "wsbridge-api",
        ],
    );
}

#[test]
fn the_broker_client_is_data_plane_too() {
    // It runs in every role that handles messages of a durable channel
    // (and, later, the dispatcher): the same rule as the data plane's.
    assert_none_of(
        "wsbridge-broker",
        &[
            "kube",
            "kube-client",
            "kube-core",
            "kube-runtime",
            "k8s-openapi",
            "clap",
            "wsbridge-api",
        ],
    );
}

#[test]
fn the_shared_vocabulary_depends_on_nothing_of_ours() {
    let deps = dependencies("wsbridge-core");
    let ours: Vec<_> = deps
        .iter()
        .filter(|d| d.starts_with("wsbridge") && *d != "wsbridge-core")
        .collect();
    assert!(ours.is_empty(), "wsbridge-core depends on {ours:?}");
    assert_none_of("wsbridge-core", &["kube", "k8s-openapi", "clap", "tokio"]);
}

#[test]
fn only_the_binary_knows_the_command_line() {
    for role in [
        "wsbridge-api",
        "wsbridge-translate",
        "wsbridge-http",
        "wsbridge-k8s",
        "wsbridge-controller",
        "wsbridge-worker",
        "wsbridge-gateway",
        "wsbridge-standalone",
        "wsbridge-dispatcher",
    ] {
        assert_none_of(role, &["clap"]);
    }
}

#[test]
fn standalone_runs_without_a_kubernetes_client() {
    assert_none_of(
        "wsbridge-standalone",
        &["kube-client", "kube-runtime", "wsbridge-k8s"],
    );
}

#[test]
fn roles_do_not_depend_on_each_other() {
    let roles = [
        "wsbridge-controller",
        "wsbridge-worker",
        "wsbridge-gateway",
        "wsbridge-standalone",
        "wsbridge-dispatcher",
    ];
    for role in roles {
        let others: Vec<&str> = roles.iter().copied().filter(|r| *r != role).collect();
        assert_none_of(role, &others);
    }
}
