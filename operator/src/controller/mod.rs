//! One controller per kind, each a pipeline resolve → validate → build → apply → status.
//! PretrainJobs and FineTunes share one such pass ([`training`]).

pub mod dataset;
pub mod deployment;
pub mod finetune;
pub mod pretrain;
pub mod training;

use std::sync::Arc;

use crate::runtime::Context;
use crate::runtime::controller::{ControllerRun, Scope};
use crate::runtime::stop::Stop;

/// The controllers of every kind, for each namespace in `scope`. A new kind plugs in
/// here with its own `controllers` function.
pub fn start_all(ctx: &Arc<Context>, scope: &Scope, stop: &Stop) -> Vec<ControllerRun> {
    let mut runs = Vec::new();
    runs.extend(dataset::controllers(ctx, scope, stop));
    runs.extend(pretrain::controllers(ctx, scope, stop));
    runs.extend(finetune::controllers(ctx, scope, stop));
    runs.extend(deployment::controllers(ctx, scope, stop));
    runs
}
