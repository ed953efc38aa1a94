//! Integration tests against a real Kubernetes control plane: the one `$KUBECONFIG`
//! names when it answers, else the loopback cluster of `tests/cluster`, started on
//! demand and left running for the next run. Each test works in its own namespace.
//!
//! ```sh
//! cargo test -p llmops-tests --test integration
//! LLMOPS_SKIP_CLUSTER_TESTS=1 cargo test -p llmops-tests   # skip them
//! ```

mod chart;
mod chart_templates;
mod crds;
mod dockerfiles;
mod e2e_adapters;
mod e2e_apifaults;
mod e2e_dataset;
mod e2e_deployment;
mod e2e_faults;
mod e2e_finetune;
mod e2e_hub;
mod e2e_pipeline;
mod e2e_pretrain;
mod e2e_secrets;
mod e2e_serving;
mod e2e_vllm;
mod examples;
mod gateway;
mod gitops;
mod helm;
mod invalid;
mod rbac;
mod scheduling;
mod telemetry;
