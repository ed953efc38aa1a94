//! Training runs: the trainer Jobs of PretrainJobs and FineTunes, which share how
//! their pods are built, how their Job is kept, replaced and suspended, how its
//! state becomes a status, and the reconcile pass itself ([`reconcile`]).
//!
//! - **Children.** For `<name>` running `trainer <command>`: ConfigMap
//!   `<name>-<command>` (the resolved resource), ServiceAccount, Role and
//!   RoleBinding `<name>-trainer`, Job `<name>-<command>`, and with more than one
//!   replica the headless Service `<name>-workers`.
//! - **Pods.** One per replica (an Indexed Job with `RANK`, `WORLD_SIZE`,
//!   `MASTER_ADDR`, `MASTER_PORT` when there are several), `LLMOPS_PROCS_PER_POD`
//!   with more than one GPU per pod, GPUs as an extended resource, a memory-backed
//!   `/dev/shm`, the spec's scheduling, and time to save a checkpoint on SIGTERM.
//! - **Failures.** Disruptions and exit 143 (SIGTERM, checkpoint saved) are retried
//!   without counting; exit 2 fails the Job at once; other failures are retried up
//!   to `failurePolicy.maxRestarts` group restarts.
//! - **Runs.** The Job carries a hash of the spec without `suspend`; only a change
//!   to it replaces the Job, and only after the old pods stopped. `suspend` is set
//!   on the live Job.

pub mod build;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod validate;

use llmops_contract::exit;

/// Exit statuses that no retry can fix: [`exit::INVALID`] is an error only a spec,
/// data or output change can fix (invalid spec, an input digest mismatch, a
/// foreign checkpoint, divergence) or a command line the trainer rejects.
pub const FATAL_EXIT_CODES: [i32; 1] = [exit::INVALID as i32];
/// The pod annotation holding an Indexed Job pod's index (the rank).
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Annotation on the Job: hash of the spec it runs, `suspend` aside.
pub const RUN_HASH_ANNOTATION: &str = "llmops.dev/run-hash";

/// Job and ConfigMap of a run: `<name>-<command>`.
pub fn job_name(name: &str, command: &str) -> String {
    format!("{name}-{command}")
}

/// ServiceAccount, Role and RoleBinding of the trainer.
pub fn trainer_name(name: &str) -> String {
    format!("{name}-trainer")
}

/// The headless Service through which ranks find rank 0.
pub fn service_name(name: &str) -> String {
    format!("{name}-workers")
}
