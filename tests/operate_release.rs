//! The release pipeline, which cannot run here: its GitHub Actions
//! workflows pass actionlint (built from its Go module at a pinned release
//! by `tests/tools/build.sh`), pull requests run `.ci/run`, and a tag
//! publishes the image and the chart under one version.

#[allow(dead_code)] // shared with deploy_manifests, which uses all of it
mod deploy_support;
mod operate_support;
mod support;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use deploy_support::{repo, run};
use operate_support::tool;
use serde_json::Value;

fn workflows() -> Result<Vec<PathBuf>> {
    let dir = repo().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn workflow(name: &str) -> Result<Value> {
    let text = std::fs::read_to_string(repo().join(".github/workflows").join(name))?;
    Ok(serde_json::to_value(serde_norway::from_str::<
        serde_norway::Value,
    >(&text)?)?)
}

/// Every `run:` script of a workflow, joined.
fn scripts(workflow: &Value) -> String {
    let mut all = String::new();
    for job in workflow["jobs"].as_object().into_iter().flat_map(|j| j.values()) {
        for step in job["steps"].as_array().into_iter().flatten() {
            if let Some(script) = step["run"].as_str() {
                all.push_str(script);
                all.push('\n');
            }
        }
    }
    all
}

fn uses(workflow: &Value) -> Vec<String> {
    workflow["jobs"]
        .as_object()
        .into_iter()
        .flat_map(|j| j.values())
        .flat_map(|job| job["steps"].as_array().into_iter().flatten())
        .filter_map(|s| s["uses"].as_str().map(String::from))
        .collect()
}

fn actionlint(files: &[PathBuf]) -> Result<String> {
    let mut cmd = Command::new(tool("actionlint"));
    cmd.current_dir(repo()).arg("-color=false").args(files);
    run(cmd, None)
}

#[test]
fn the_workflows_pass_actionlint() -> Result<()> {
    let files = workflows()?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(
        names.contains(&"ci.yml".into()) && names.contains(&"release.yml".into()),
        "{names:?}"
    );
    actionlint(&files)?;
    Ok(())
}

#[test]
fn actionlint_refuses_a_broken_workflow() -> Result<()> {
    // The check above can fail: an unknown expression context is an error.
    let dir = std::env::temp_dir().join(format!(
        "wsbridge-actionlint-{}-{}",
        std::process::id(),
        support::controlplane::random_hex(4)
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("broken.yml");
    std::fs::write(
        &file,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.no_such_thing.x }}\n",
    )?;
    let result = actionlint(std::slice::from_ref(&file));
    let _ = std::fs::remove_dir_all(&dir);
    let err = result.expect_err("actionlint accepts a broken workflow");
    assert!(format!("{err:#}").contains("no_such_thing"), "{err:#}");
    Ok(())
}

#[test]
fn pull_requests_run_the_ci_script() -> Result<()> {
    let ci = workflow("ci.yml")?;
    assert!(ci["on"]["pull_request"].is_null() && ci["on"].get("pull_request").is_some());
    assert_eq!(scripts(&ci).trim(), "bash .ci/run");
    assert!(
        ci["jobs"]["test"]["timeout-minutes"]
            .as_u64()
            .is_some_and(|m| m <= 90)
    );
    Ok(())
}

#[test]
fn a_tag_publishes_a_signed_multi_arch_image_with_an_sbom_and_the_chart_in_step() -> Result<()> {
    let release = workflow("release.yml")?;
    let tags = release["on"]["push"]["tags"].to_string();
    assert!(tags.contains("v[0-9]"), "released on version tags: {tags}");
    assert!(release["on"].get("pull_request").is_none());

    let image = &release["jobs"]["image"];
    assert_eq!(
        image["permissions"]["id-token"], "write",
        "cosign keyless needs the OIDC token"
    );
    let steps = image["steps"].as_array().context("image steps")?;
    let build = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action@"))
        })
        .context("no docker/build-push-action step")?;
    assert_eq!(build["with"]["push"], true);
    assert_eq!(
        build["with"]["context"], ".",
        "built from the repository's Dockerfile"
    );
    let platforms = build["with"]["platforms"].as_str().unwrap_or_default();
    assert!(
        platforms.contains("linux/amd64") && platforms.contains("linux/arm64"),
        "{platforms}"
    );
    let all_uses = uses(&release);
    for action in [
        "docker/setup-qemu-action@",
        "docker/setup-buildx-action@",
        "sigstore/cosign-installer@",
        "anchore/sbom-action@",
    ] {
        assert!(all_uses.iter().any(|u| u.starts_with(action)), "no {action}");
    }
    let scripts = scripts(&release);
    assert!(scripts.contains("cosign sign --yes"), "the image is signed");
    assert!(
        scripts.contains("cosign attest --yes --type spdxjson"),
        "the SBOM is attached"
    );

    // One version for the image tag and the chart: the tag without its "v".
    assert!(scripts.contains(r#"version=${GITHUB_REF_NAME#v}"#), "{scripts}");
    assert!(
        build["with"]["tags"]
            .as_str()
            .is_some_and(|t| t.ends_with(":${{ steps.names.outputs.version }}")),
        "{}",
        build["with"]["tags"]
    );
    assert!(
        scripts.contains(r#"--version "$VERSION" --app-version "$VERSION""#),
        "the chart's version and appVersion are the image's: {scripts}"
    );
    assert!(scripts.contains(r#"helm push "dist/wsbridge-${VERSION}.tgz" "oci://"#));

    // The chart deploys its appVersion unless told otherwise, and the
    // checked-in chart keeps version and appVersion equal.
    let chart: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(
        repo().join("charts/wsbridge/Chart.yaml"),
    )?)?;
    assert_eq!(chart["version"], chart["appVersion"]);
    let values: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(
        repo().join("charts/wsbridge/values.yaml"),
    )?)?;
    assert_eq!(values["image"]["tag"], "");
    Ok(())
}
