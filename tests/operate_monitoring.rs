//! What a platform team installs to watch wsbridge: the chart's Grafana
//! dashboard, its alerts (a PrometheusRule) and the monitors that scrape
//! every role. The rules pass `promtool check rules` and their unit tests
//! (`tests/operate/alerts_test.yaml`, `promtool test rules`); every alert
//! links a runbook section that exists; `helm install` with the monitoring
//! values on creates them in the test API server, against the Prometheus
//! Operator's real CRDs (from its Go module at a pinned release, see
//! `tests/tools/build.sh`). That the queries name real metrics is
//! `operate_metrics`.

#[allow(dead_code)] // shared with deploy_manifests, which uses all of it
mod deploy_support;
mod operate_support;
mod support;

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use deploy_support::{
    crds_installed, documents, helm, installable_chart, kubectl, namespace, of_kind, render, repo, run,
};
use operate_support::{
    MONITORING_ON, NAMESPACE, dashboard, monitoring_crd_files, rendered_rule, rules, tool,
};
use serde_json::Value;

const RUNBOOKS: &str = "https://github.com/wsbridge/wsbridge/blob/main/docs/runbooks.md";

/// The alerts the issue asks for, by the condition each one watches.
const ALERTS: [&str; 7] = [
    "WsbridgeBridgeDisconnected",
    "WsbridgeDeadLettering",
    "WsbridgeDropping",
    "WsbridgeDeliveryLatencyHigh",
    "WsbridgeSubscriberFailing",
    "WsbridgeReconcileFailing",
    "WsbridgeNoLeader",
];

/// A fresh folder under the system temp dir, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "wsbridge-{prefix}-{}-{}",
            std::process::id(),
            support::controlplane::random_hex(4)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The rendered rule groups as a Prometheus rule file, beside the unit tests.
fn rule_files() -> Result<Scratch> {
    let dir = Scratch::new("rules")?;
    let rule = rendered_rule()?;
    std::fs::write(dir.0.join("rules.yaml"), serde_norway::to_string(&rule["spec"])?)?;
    std::fs::copy(
        repo().join("tests/operate/alerts_test.yaml"),
        dir.0.join("alerts_test.yaml"),
    )?;
    Ok(dir)
}

fn promtool(args: &[&str], dir: &Scratch) -> Result<String> {
    let mut cmd = std::process::Command::new(tool("promtool"));
    cmd.current_dir(&dir.0).args(args);
    run(cmd, None)
}

#[test]
fn alert_rules_pass_promtool_check() -> Result<()> {
    let dir = rule_files()?;
    let out = promtool(&["check", "rules", "rules.yaml"], &dir)?;
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{out}"
    );
    Ok(())
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() -> Result<()> {
    let dir = rule_files()?;
    let out = promtool(&["test", "rules", "alerts_test.yaml"], &dir)?;
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert is exercised, firing and quiet.
    let tests = std::fs::read_to_string(dir.0.join("alerts_test.yaml"))?;
    for alert in ALERTS {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no unit test for {alert}"
        );
    }
    Ok(())
}

#[test]
fn a_broken_rule_fails_promtool() -> Result<()> {
    // The checks above can fail: a rule with an unknown function does.
    let dir = Scratch::new("bad-rules")?;
    std::fs::write(
        dir.0.join("rules.yaml"),
        "groups:\n- name: bad\n  rules:\n  - alert: Bad\n    expr: rate_of(wsbridge_endpoint_connected[5m]) > 0\n",
    )?;
    let err = promtool(&["check", "rules", "rules.yaml"], &dir).expect_err("promtool accepts a bad rule");
    assert!(format!("{err:#}").contains("rate_of"), "{err:#}");
    Ok(())
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to dashes,
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_section_severity_and_text() -> Result<()> {
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md"))?;
    let sections: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let rule = rendered_rule()?;
    let names: Vec<&str> = rules(&rule).iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(names, ALERTS);
    for r in rules(&rule) {
        let name = r["alert"].as_str().unwrap_or_default();
        let url = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
        let section = url
            .strip_prefix(&format!("{RUNBOOKS}#"))
            .with_context(|| format!("{name}: runbook_url {url:?} is not into docs/runbooks.md"))?;
        ensure!(
            sections.contains(section),
            "{name}: docs/runbooks.md has no section #{section}"
        );
        assert_eq!(anchor(name), section, "{name}'s section is named after it");
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key].as_str().is_some_and(|t| t.len() > 20),
                "{name} has no {key}"
            );
        }
        assert!(
            matches!(r["labels"]["severity"].as_str(), Some("critical" | "warning")),
            "{name}: severity {}",
            r["labels"]["severity"]
        );
        assert!(r["for"].as_str().is_some(), "{name} fires without a `for`");
    }
    Ok(())
}

#[test]
fn alert_thresholds_are_values() -> Result<()> {
    let yaml = render(
        "wsbridge",
        NAMESPACE,
        &[
            "alerts.enabled=true",
            "alerts.bridgeDisconnected.for=2m",
            "alerts.deliveryLatency.p99Seconds=1",
            "alerts.runbookBaseUrl=https://runbooks.example.com/wsbridge",
        ],
    )?;
    let docs = documents(&yaml)?;
    let rule = of_kind(&docs, "PrometheusRule")
        .next()
        .context("no PrometheusRule")?;
    let by_name = |name: &str| {
        rules(rule)
            .into_iter()
            .find(|r| r["alert"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_name("WsbridgeBridgeDisconnected")["for"], "2m");
    assert!(
        by_name("WsbridgeDeliveryLatencyHigh")["expr"]
            .as_str()
            .is_some_and(|e| e.ends_with("> 1")),
        "{}",
        by_name("WsbridgeDeliveryLatencyHigh")["expr"]
    );
    assert_eq!(
        by_name("WsbridgeNoLeader")["annotations"]["runbook_url"],
        "https://runbooks.example.com/wsbridge#wsbridgenoleader"
    );
    Ok(())
}

#[test]
fn monitoring_is_off_by_default() -> Result<()> {
    let docs = documents(&render("wsbridge", NAMESPACE, &[])?)?;
    for kind in ["PrometheusRule", "PodMonitor", "ServiceMonitor"] {
        assert_eq!(of_kind(&docs, kind).count(), 0, "{kind} rendered by default");
    }
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["labels"]["grafana_dashboard"].is_string()),
        "a dashboard ConfigMap rendered by default"
    );
    Ok(())
}

#[test]
fn the_dashboard_for_import_is_the_charts_and_is_parameterised() -> Result<()> {
    let chart = std::fs::read(repo().join("charts/wsbridge/dashboards/wsbridge.json"))?;
    let import = std::fs::read(repo().join("deploy/grafana/wsbridge.json"))?;
    ensure!(
        chart == import,
        "deploy/grafana/wsbridge.json differs from the chart's dashboard: run deploy/generate.sh"
    );
    let dash = dashboard()?;
    let variables: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "channel"]);
    let panels: Vec<&Value> = dash["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}"
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{title}"
        );
    }
    // The selected channel narrows every per-channel panel.
    let titles_filtered: Vec<&str> = panels
        .iter()
        .filter(|p| p.to_string().contains(r#"channel=~\"$channel\""#))
        .filter_map(|p| p["title"].as_str())
        .collect();
    for title in [
        "Delivered per subscriber",
        "Delivery latency",
        "Dead letters by reason",
    ] {
        assert!(titles_filtered.contains(&title), "{title} ignores $channel");
    }
    Ok(())
}

#[tokio::test]
async fn helm_install_with_monitoring_on_creates_the_dashboard_rule_and_monitors() -> Result<()> {
    let cp = support::shared().await;
    crds_installed(cp).await?;
    let mut apply = kubectl(cp);
    apply.args(["apply", "--server-side", "--field-manager=wsbridge-tests"]);
    for file in monitoring_crd_files(&["prometheusrules", "podmonitors"])? {
        apply.arg("-f").arg(file);
    }
    run(apply, None)?;
    support::wait_crds_established(
        &cp.client(),
        &[
            "prometheusrules.monitoring.coreos.com",
            "podmonitors.monitoring.coreos.com",
        ],
        std::time::Duration::from_secs(30),
    )
    .await?;

    let ns = namespace(cp, "operate", &[]).await?;
    let release = format!("mon-{}", support::controlplane::random_hex(3));
    let mut install = helm(Some(cp));
    install
        .args(["install", &release])
        .arg(installable_chart(cp).await?)
        .args(["--namespace", &ns, "--timeout", "60s"]);
    for value in MONITORING_ON {
        install.args(["--set", value]);
    }
    let out = run(install, None)?;
    assert!(out.contains("STATUS: deployed"), "{out}");

    let get = |kind: &str, name: &str| -> Result<Value> {
        let mut cmd = kubectl(cp);
        cmd.args(["get", kind, name, "-n", &ns, "-o", "json"]);
        Ok(serde_json::from_str(&run(cmd, None)?)?)
    };
    let prefix = format!("{release}-wsbridge");

    let dashboard_map = get("configmap", &format!("{prefix}-dashboard"))?;
    assert_eq!(dashboard_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        dashboard_map["data"]["wsbridge.json"]
            .as_str()
            .context("no wsbridge.json in the ConfigMap")?,
    )?;
    assert_eq!(
        shipped,
        dashboard()?,
        "the ConfigMap holds the dashboard as shipped"
    );

    // Stored as the real CRD's schema accepts it, every alert intact.
    let rule = get("prometheusrule.monitoring.coreos.com", &prefix)?;
    let alerts: Vec<&str> = rules(&rule).iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(alerts, ALERTS);
    let no_leader = rules(&rule)
        .into_iter()
        .find(|r| r["alert"] == "WsbridgeNoLeader")
        .context("WsbridgeNoLeader")?;
    assert!(
        no_leader["expr"]
            .as_str()
            .is_some_and(|e| e.contains(&format!(r#"namespace="{ns}""#))),
        "the leader alert watches this release's namespace: {}",
        no_leader["expr"]
    );

    let workers = get("podmonitor.monitoring.coreos.com", &format!("{prefix}-workers"))?;
    assert_eq!(workers["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        workers["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "worker"
    );
    get("servicemonitor.monitoring.coreos.com", &prefix)?;

    let mut uninstall = helm(Some(cp));
    uninstall.args(["uninstall", &release, "--namespace", &ns]);
    run(uninstall, None)?;
    Ok(())
}
