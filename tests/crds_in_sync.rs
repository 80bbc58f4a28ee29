//! The checked-in CRDs are exactly what the Rust types generate.

use std::path::Path;

fn assert_in_sync(dir: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut expected: Vec<String> = Vec::new();
    for crd in wsbridge_api::crds() {
        let name = wsbridge_api::crd_file_name(&crd);
        expected.push(name.clone());
        let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == wsbridge_api::crd_yaml(&crd),
            "{} is out of date: run `cargo run -- crd --out-dir crds` (and copy to charts/wsbridge/crds)",
            dir.join(&name).display()
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "{} holds stray CRD files", dir.display());
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    assert_in_sync("crds");
}

#[test]
fn wsbridge_crd_prints_all_four_kinds() {
    let all = wsbridge_api::crds_yaml();
    for kind in ["Bridge", "Channel", "Endpoint", "Subscription"] {
        assert!(all.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
    assert_eq!(all.matches("kind: CustomResourceDefinition").count(), 4);
}

#[test]
fn the_field_reference_matches_the_crds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == wsbridge_api::reference::markdown(),
        "docs/reference.md is out of date: run `cargo run -- crd --reference > docs/reference.md`"
    );
}
