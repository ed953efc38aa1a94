//! A local node: the kubelet's part for a control plane whose nodes run no
//! containers (kwok), where the operator's pods run as local processes instead.
//!
//! [`replay::Replayer`] runs one pod's container — the `trainer` or `server`
//! binary its command names — with the pod's env, volumes, ServiceAccount token
//! and termination message, after its init containers ([`init`]), and writes
//! the pod's status as the kubelet would; a container running vLLM's OpenAI
//! server gets the `server` binary as a stand-in ([`vllm_standin`]);
//! [`config_sync`] keeps its ConfigMap volumes current while it runs; [`probe`] is the kubelet's readiness prober for it; [`runner::PodRunner`] does
//! this for every pod it is given (all of a namespace, or of a label selector)
//! for as long as each lives, with restarts; [`services::ServiceProxy`] is
//! kube-proxy's part, so that Services' ClusterIPs answer. The `local-node`
//! binary is the two as a process, for `scripts/local-cluster`; the end-to-end
//! tests use the same library.
//!
//! Everything it connects to is what the API gives: the apiserver of the
//! kubeconfig, and pod IPs (which the local cluster takes from a loopback
//! range, so serving pods listen on this machine only).

pub mod config_sync;
pub mod init;
pub mod probe;
pub mod replay;
pub mod runner;
pub mod services;
pub mod token;
pub mod vllm_standin;

use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The control plane a node works for: its admin kubeconfig and a client.
#[derive(Clone)]
pub struct Node {
    kubeconfig: PathBuf,
    config: Config,
    client: Client,
}

impl Node {
    /// Connect as the user of the kubeconfig at `kubeconfig`. Needs a tokio
    /// runtime; the client is bound to it.
    pub async fn connect(kubeconfig: &Path) -> anyhow::Result<Node> {
        // A workspace build may enable both of rustls's providers, and then rustls
        // picks none by itself; choose one (a no-op once one is installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let parsed = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config.clone())?;
        Ok(Node {
            kubeconfig: kubeconfig.to_path_buf(),
            config,
            client,
        })
    }

    /// The admin kubeconfig's path.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client authenticated as the kubeconfig's user.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Host and port of the apiserver, as pods get them in
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.
    pub fn apiserver(&self) -> anyhow::Result<(String, String)> {
        let url = &self.config.cluster_url;
        let host = url
            .host()
            .context("the apiserver URL has no host")?
            .to_string();
        let port = url.port_u16().unwrap_or(443).to_string();
        Ok((host, port))
    }
}

/// The programs a pod's container command may name.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `trainer` binary (every Job pod the operator creates).
    pub trainer: PathBuf,
    /// The `server` binary (every serving pod).
    pub server: PathBuf,
}

impl Programs {
    /// `trainer` and `server` in `dir`, such as cargo's `target/debug`.
    pub fn in_dir(dir: &Path) -> Programs {
        Programs {
            trainer: dir.join("trainer"),
            server: dir.join("server"),
        }
    }
}
