//! Writes the CRD YAML rendered from the Rust types into `crds/generated/` and the
//! Helm chart's `files/crds/` (rendered by its `templates/crds/`), replacing what
//! is there.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in llmops_crds::CRD_OUTPUT_DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for crd in llmops_crds::all_crds() {
            let path = dir.join(llmops_crds::crd_file_name(&crd));
            std::fs::write(&path, llmops_crds::render_crd(&crd)?)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
