//! Shared by the `operate_*` tests: the tools `tests/tools/build.sh` builds
//! (promtool, actionlint, the Prometheus Operator's CRDs), the chart's
//! monitoring objects rendered, and the metric names their queries use.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::deploy_support::{documents, helm_binary, of_kind, render, repo};

/// Values that switch every monitoring object of the chart on.
pub const MONITORING_ON: &[&str] = &[
    "dashboards.enabled=true",
    "alerts.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
];

/// The release namespace the rules are rendered for (the documented one).
pub const NAMESPACE: &str = "wsbridge-system";

/// A CLI built by `tests/tools/build.sh` (which builds them all, once, when
/// helm is first asked for).
pub fn tool(name: &str) -> PathBuf {
    helm_binary().with_file_name(name)
}

/// The Prometheus Operator's CRD files for `kinds` (e.g. `prometheusrules`),
/// taken from its module at the release `tests/tools/build.sh` pins.
pub fn monitoring_crd_files(kinds: &[&str]) -> Result<Vec<PathBuf>> {
    let root = tool("helm")
        .parent()
        .and_then(|bin| bin.parent())
        .context("tools dir")?
        .join("crds");
    let release = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .max()
        .context("no Prometheus Operator CRDs: run tests/tools/build.sh")?;
    kinds
        .iter()
        .map(|kind| {
            let file = release.join(format!("monitoring.coreos.com_{kind}.yaml"));
            ensure!(file.is_file(), "{} is missing", file.display());
            Ok(file)
        })
        .collect()
}

/// The chart's PrometheusRule with the default thresholds.
pub fn rendered_rule() -> Result<Value> {
    let docs = documents(&render("wsbridge", NAMESPACE, &["alerts.enabled=true"])?)?;
    let rule = of_kind(&docs, "PrometheusRule")
        .next()
        .context("no PrometheusRule rendered")?;
    Ok(rule.clone())
}

/// Every rule of the PrometheusRule, across its groups.
pub fn rules(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect()
}

/// The dashboard as the chart ships it.
pub fn dashboard() -> Result<Value> {
    let path = repo().join("charts/wsbridge/dashboards/wsbridge.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("dashboard JSON")
}

/// Every PromQL expression of the dashboard: panel targets and the
/// variables' queries.
pub fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.extend(target["expr"].as_str().map(String::from));
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        queries.extend(var["query"]["query"].as_str().map(String::from));
    }
    queries
}

/// The metric names a PromQL expression uses. Every wsbridge metric starts
/// with `wsbridge_` and nothing else in our queries does (label values are
/// `namespace/name`, never with an underscore after "wsbridge"), so the
/// names are the maximal `wsbridge_[a-z0-9_:]+` words.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wsbridge_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if !preceded_by_word {
            names.insert(word.clone());
        }
        rest = &rest[at + word.len()..];
    }
    names
}

/// The sample names an OpenMetrics/Prometheus text exposition offers, from
/// its `# TYPE` lines (present for every registered family, samples or
/// not), with the suffixes each type's samples carry: counters `_total`,
/// histograms `_bucket`, `_sum` and `_count`, gauges none. A handful of
/// lines of the exposition format's grammar: no parser crate needed.
pub fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}
