//! Several training processes in one pod, one per GPU (as `torchrun
//! --nproc-per-node` does): the pod's process becomes a launcher that starts
//! itself once per local device and waits for them.
//!
//! The pod's environment describes pods: `RANK` is the pod's index and
//! `WORLD_SIZE` the number of pods. Each child gets process-level values:
//! `LOCAL_RANK = i`, `RANK = pod × n + i`, `WORLD_SIZE = pods × n`. Kubernetes
//! signals only the launcher, so it forwards termination by closing the
//! children's stdin, which they watch ([`env::STOP_ON_STDIN_EOF`]); a launcher
//! that dies outright closes it too.

use std::process::Stdio;

use llmops_contract::{env, exit};
use tokio::process::{Child, Command};

use super::interrupt::Interrupt;

/// How many processes this pod should run ([`env::PROCS_PER_POD`], else the
/// number of visible GPUs), when more than one and this process is not already
/// one of them.
pub fn processes_to_launch() -> Option<usize> {
    if std::env::var_os(env::LOCAL_RANK).is_some() {
        return None;
    }
    let n = match std::env::var(env::PROCS_PER_POD)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => n,
        None => tch::Cuda::device_count().max(1) as usize,
    };
    (n > 1).then_some(n)
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `n` copies of this command and waits for all of them. Returns the
/// exit code of the pod: the first failure's, else 143 if any child was
/// interrupted, else 0.
pub async fn launch(n: usize, interrupt: Interrupt) -> std::io::Result<i32> {
    let pod = env_number(env::RANK, 0);
    let pods = env_number(env::WORLD_SIZE, 1);
    let exe = std::env::current_exe()?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let mut children: Vec<Child> = Vec::with_capacity(n);
    for local in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env(env::LOCAL_RANK, local.to_string())
            .env(env::RANK, (pod * n + local).to_string())
            .env(env::WORLD_SIZE, (pods * n).to_string())
            .env(env::STOP_ON_STDIN_EOF, "1")
            .stdin(Stdio::piped());
        if local > 0 {
            // One termination message per pod: the first process's.
            cmd.env(env::TERMINATION_LOG, "/dev/null");
        }
        children.push(cmd.spawn()?);
    }
    let mut stdins: Vec<_> = children.iter_mut().map(|c| c.stdin.take()).collect();
    let waits = futures::future::join_all(children.iter_mut().map(Child::wait));
    tokio::pin!(waits);
    let statuses = loop {
        tokio::select! {
            statuses = &mut waits => break statuses,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if !stdins.is_empty() => {
                if interrupt.requested() {
                    stdins.clear();
                }
            }
        }
    };
    let codes: Vec<i32> = statuses
        .into_iter()
        .map(|s| s.map(|s| s.code().unwrap_or(1)).unwrap_or(1))
        .collect();
    let interrupted = i32::from(exit::INTERRUPTED);
    Ok(codes
        .iter()
        .copied()
        .find(|&c| c != 0 && c != interrupted)
        .or_else(|| codes.iter().copied().find(|&c| c == interrupted))
        .unwrap_or(0))
}
