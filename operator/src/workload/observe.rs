//! Reading a trainer Job: where it stands, the trainer's termination message, and
//! why its pod cannot start. Shared by every kind that runs the trainer.

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::job::TRAINER_CONTAINER;

/// Waiting reasons that never resolve by themselves: the pod needs a Secret,
/// ConfigMap or image name fixed.
pub const BLOCKING_WAIT_REASONS: [&str; 4] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// Where a Job stands, read from its conditions and its newest pod.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Running {
        /// The pod's waiting reason and message while it cannot start.
        waiting: Option<(String, String)>,
    },
    Succeeded {
        /// The termination message of the trainer container.
        message: Option<String>,
    },
    Failed {
        /// The trainer's one-line error, or why the pod or Job failed.
        error: String,
    },
}

/// The state of `job`, given its pods.
pub fn job_state(job: &Job, pods: &[Pod]) -> JobState {
    let pod = newest(pods);
    let container = pod.and_then(|p| {
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == TRAINER_CONTAINER)
    });
    let terminated_message = container
        .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .filter(|m| !m.trim().is_empty());

    if job_condition(job, "Complete").is_some() {
        return JobState::Succeeded {
            message: terminated_message,
        };
    }
    if let Some(failed) = job_condition(job, "Failed") {
        let error = terminated_message
            .as_deref()
            .map(trainer_error)
            .or_else(|| {
                let status = pod?.status.as_ref()?;
                let reason = status.reason.as_deref()?;
                Some(format!(
                    "pod {reason}: {}",
                    status.message.as_deref().unwrap_or_default()
                ))
            })
            .unwrap_or_else(|| {
                format!(
                    "{}: {}",
                    failed.reason.as_deref().unwrap_or("JobFailed"),
                    failed.message.as_deref().unwrap_or("the Job failed")
                )
            });
        return JobState::Failed { error };
    }
    let waiting = container
        .and_then(|c| c.state.as_ref()?.waiting.as_ref())
        .and_then(|w| Some((w.reason.clone()?, w.message.clone().unwrap_or_default())))
        .or_else(|| unschedulable(pod?));
    JobState::Running { waiting }
}

pub fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Why a pending pod has no node yet (a missing PVC, no capacity), if it has none.
fn unschedulable(pod: &Pod) -> Option<(String, String)> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    Some((
        condition
            .reason
            .clone()
            .unwrap_or_else(|| "Unschedulable".into()),
        condition.message.clone().unwrap_or_default(),
    ))
}

fn newest(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .max_by_key(|p| p.metadata.creation_timestamp.clone())
}

/// The one-line error of a failed trainer: the `error: ...` line it wrote, or the
/// last line of its log when it died before writing one.
pub fn trainer_error(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    let line = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            ["error", "message"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_string))
        })
        .unwrap_or_else(|| line.to_string());
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    crate::runtime::events::truncate(line, 1024)
}

/// The pods of `job` (one, unless a pod was replaced).
pub async fn job_pods(client: &Client, job: &Job) -> Result<Vec<Pod>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}
