//! A namespace per test.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::Cluster;

/// Set to `1` to keep test namespaces for inspection.
const KEEP_ENV: &str = "LLMOPS_KEEP_NAMESPACES";

/// A uniquely named namespace labelled `pod-security.kubernetes.io/enforce=restricted`
/// (and `llmops.dev/test=true`), deleted by [`TestNamespace::delete`] or, failing
/// that, when dropped (also when the test panics). Deletion does not wait for the
/// namespace to be gone.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubeconfig: std::path::PathBuf,
    deleted: bool,
}

impl TestNamespace {
    /// Create `<prefix>-<unique suffix>`; `prefix` is cut to 40 characters.
    pub async fn create(cluster: &Cluster, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("pod-security.kubernetes.io/enforce", "restricted"),
                        ("llmops.dev/test", "true"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<Namespace> = Api::all(cluster.client().await?);
        api.create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            kubeconfig: cluster.kubeconfig().to_path_buf(),
            deleted: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `kubectl apply --server-side` of `path` (a manifest or a directory of
    /// them) into this namespace, as the tests' field manager.
    pub async fn apply(&self, cluster: &Cluster, path: &std::path::Path) -> anyhow::Result<()> {
        cluster
            .kubectl([
                "apply",
                "--server-side",
                "--field-manager=llmops-tests",
                "-n",
                self.name(),
                "-f",
                &path.display().to_string(),
            ])
            .await?
            .check()?;
        Ok(())
    }

    /// Check that every address in the namespace is on loopback
    /// ([`crate::loopback`]), then delete it (unless `LLMOPS_KEEP_NAMESPACES=1`);
    /// a non-loopback address fails the test, naming the object and field.
    pub async fn delete(mut self, cluster: &Cluster) -> anyhow::Result<()> {
        let client = cluster.client().await?;
        let violations = crate::loopback::check_namespace(&client, &self.name).await?;
        if !violations.is_empty() {
            // Dropped: deleted all the same.
            bail!(
                "namespace {}: addresses outside loopback (127.0.0.0/8, ::1), which tests must never reach: {}",
                self.name,
                violations.join(", ")
            );
        }
        self.deleted = true;
        if keep() {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(client);
        match api.delete(&self.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(err).with_context(|| format!("deleting namespace {}", self.name)),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if keep() {
            eprintln!("keeping namespace {}", self.name);
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: use kubectl.
        let result = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !result.is_ok_and(|s| s.success()) {
            eprintln!("could not delete namespace {}", self.name);
        }
    }
}

fn keep() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| v == "1")
}

/// `<prefix>-<8 hex digits>`, unique across processes and calls.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mixed = std::process::id()
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(nanos)
        .rotate_left(13)
        .wrapping_add(
            COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x85EB_CA6B),
        );
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{}-{mixed:08x}", prefix.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn names_are_dns_labels_and_unique() {
        let a = unique_name("Helm_Install/with a very long name that goes on and on");
        let b = unique_name("Helm_Install/with a very long name that goes on and on");
        assert_ne!(a, b);
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
