//! Live progress of a trainer command.
//!
//! In a pod (`KUBERNETES_SERVICE_HOST` set) the latest snapshot is server-side
//! applied into one field of the resource's `status` (e.g. `status.stats` of a
//! Dataset, `status.progress` of a PretrainJob) with field manager
//! `llmops-trainer`, at most every [`STATUS_INTERVAL`]; failures are logged and
//! retried with the next snapshot, never fatal. Outside a cluster, progress is a
//! bar on a terminal and JSON lines on stderr otherwise.

use std::fmt::Debug;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The field manager of everything the trainer writes.
pub const FIELD_MANAGER: &str = llmops_contract::TRAINER_FIELD_MANAGER;
/// Minimum time between two status writes or two JSON progress lines.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);

type PatchFn = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<(), kube::Error>> + Send + Sync>;

enum Sink {
    Status {
        tx: watch::Sender<Option<Value>>,
        patch: PatchFn,
        task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    },
    Bar(ProgressBar),
    JsonLines {
        last: Mutex<Option<Instant>>,
    },
}

/// Reports snapshots of progress; cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Reporter {
    sink: Arc<Sink>,
    field: &'static str,
}

impl Reporter {
    /// Chooses the sink for the resource `K` named `name` in `namespace`, writing
    /// `status.<field>` when running in a cluster.
    pub async fn start<K>(namespace: Option<&str>, name: &str, field: &'static str) -> Self
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            match (namespace, Client::try_default().await) {
                (Some(ns), Ok(client)) => {
                    return Self::status::<K>(Api::namespaced(client, ns), name, field);
                }
                (None, _) => {
                    tracing::warn!("the resource has no namespace; progress goes to stderr")
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "no in-cluster client; progress goes to stderr")
                }
            }
        }
        Self::local(field)
    }

    /// A reporter for a local run: a bar on a terminal, JSON lines otherwise.
    pub fn local(field: &'static str) -> Self {
        let sink = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Sink::Bar(bar)
        } else {
            Sink::JsonLines {
                last: Mutex::new(None),
            }
        };
        Self {
            sink: Arc::new(sink),
            field,
        }
    }

    fn status<K>(api: Api<K>, name: &str, field: &'static str) -> Self
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let name = name.to_string();
        let patch: PatchFn = Arc::new(move |value: Value| {
            let (api, name) = (api.clone(), name.clone());
            Box::pin(async move {
                let body = json!({
                    "apiVersion": K::api_version(&()),
                    "kind": K::kind(&()),
                    "status": { field: value },
                });
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch_status(&name, &params, &Patch::Apply(body))
                    .await
                    .map(|_| ())
            })
        });
        let (tx, mut rx) = watch::channel(None::<Value>);
        let writer = patch.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let latest = rx.borrow_and_update().clone();
                if let Some(value) = latest
                    && let Err(e) = writer(value).await
                {
                    tracing::warn!(error = %e, "progress not written to status; retrying with the next update");
                }
                tokio::time::sleep(STATUS_INTERVAL).await;
            }
        });
        Self {
            sink: Arc::new(Sink::Status {
                tx,
                patch,
                task: Mutex::new(Some(task)),
            }),
            field,
        }
    }

    /// Records a snapshot: `value` is what goes into `status.<field>`, `summary`
    /// a short human line for the terminal.
    pub fn report(&self, value: Value, summary: &str) {
        match &*self.sink {
            Sink::Status { tx, .. } => {
                tx.send_replace(Some(value));
            }
            Sink::Bar(bar) => bar.set_message(summary.to_string()),
            Sink::JsonLines { last } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() >= STATUS_INTERVAL) {
                    *last = Some(Instant::now());
                    eprintln!("{}", json!({ self.field: value, "message": summary }));
                }
            }
        }
    }

    /// Writes the final snapshot unthrottled and stops the background writer.
    pub async fn finish(&self, value: Value, summary: &str) {
        match &*self.sink {
            Sink::Status { patch, task, .. } => {
                let handle = task.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(handle) = handle {
                    handle.abort();
                }
                if let Err(e) = patch(value).await {
                    tracing::warn!(error = %e, "final progress not written to status");
                }
            }
            Sink::Bar(bar) => bar.finish_with_message(summary.to_string()),
            Sink::JsonLines { .. } => {
                eprintln!("{}", json!({ self.field: value, "message": summary }))
            }
        }
    }

    /// Stops a bar without a final snapshot (on failure, before the error line).
    pub fn abandon(&self) {
        if let Sink::Bar(bar) = &*self.sink {
            bar.finish_and_clear();
        }
    }
}
