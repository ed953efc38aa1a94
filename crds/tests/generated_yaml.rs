//! The committed CRD YAML must be exactly what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in llmops_crds::CRD_OUTPUT_DIRS {
        for crd in llmops_crds::all_crds() {
            let path = root.join(dir).join(llmops_crds::crd_file_name(&crd));
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "cannot read {}: {e}; run `cargo run -p llmops-crds --bin crdgen`",
                    path.display()
                )
            });
            let generated = llmops_crds::render_crd(&crd).unwrap();
            assert!(
                committed == generated,
                "{} is stale; run `cargo run -p llmops-crds --bin crdgen` and commit the result",
                path.display()
            );
        }
    }
}
