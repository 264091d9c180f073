//! The tools `scripts/install-deploy-tools.sh` puts in `<repo>/.tools` for the deploy tests:
//! helm and kubernetes-validate in `.tools/bin`, and the PyYAML that came with
//! kubernetes-validate in `.tools/pip`.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// The repository's root.
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool in `.tools/bin`, or an error saying how to install it.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = repo().join(".tools/bin").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/install-deploy-tools.sh (scripts/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// The directory to put on `PYTHONPATH` for `import yaml`.
pub fn pyyaml_path() -> anyhow::Result<PathBuf> {
    let pip = repo().join(".tools/pip");
    std::fs::read_dir(&pip)
        .with_context(|| {
            format!(
                "read {} (run scripts/install-deploy-tools.sh)",
                pip.display()
            )
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubernetes-validate-"))
        })
        .context("kubernetes-validate is missing: run scripts/install-deploy-tools.sh")
}
