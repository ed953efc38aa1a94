//! kube-proxy's part for a local node: each Service's ClusterIP answers on this
//! machine. For every Service with a ClusterIP (the local cluster hands them out
//! from a loopback range) [`ServiceProxy`] listens on `clusterIP:port` for each
//! TCP port and forwards every connection to a ready pod the Service selects, at
//! the port's `targetPort` (a number, or a container port's name), taking the
//! ready pods in turn. Services are listed every [`POLL`]; a listener goes with
//! its Service. A connection that finds no ready pod is closed at once, as
//! kube-proxy rejects one to a Service without endpoints.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::probe::pod_ready;

/// How often Services are listed.
pub const POLL: Duration = Duration::from_secs(1);

/// One forwarded Service port: where it listens, and what it forwards to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Forward {
    namespace: String,
    service: String,
    listen: SocketAddr,
    selector: BTreeMap<String, String>,
    target: Target,
}

/// A Service port's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Number(u16),
    Name(String),
}

/// Forwards the ClusterIPs of the Services of a namespace (or of all); stops its
/// listeners when dropped.
pub struct ServiceProxy {
    task: JoinHandle<()>,
}

impl ServiceProxy {
    /// Start forwarding the Services of `namespace` (all when `None`). With
    /// `report`, each listener started or stopped is printed on stderr.
    pub fn start(client: Client, namespace: Option<&str>, report: bool) -> ServiceProxy {
        let namespace = namespace.map(str::to_string);
        ServiceProxy {
            task: tokio::spawn(supervise(client, namespace, report)),
        }
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn supervise(client: Client, namespace: Option<String>, report: bool) {
    let services: Api<Service> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut running: BTreeMap<Forward, JoinHandle<()>> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let Ok(list) = services.list(&ListParams::default()).await else {
            continue;
        };
        let wanted: Vec<Forward> = list.items.iter().flat_map(forwards).collect();
        running.retain(|forward, task| {
            let keep = wanted.contains(forward) && !task.is_finished();
            if !keep {
                task.abort();
                if report {
                    eprintln!(
                        "local-node: stopped forwarding {} (service {}/{})",
                        forward.listen, forward.namespace, forward.service
                    );
                }
            }
            keep
        });
        for forward in wanted {
            if running.contains_key(&forward) {
                continue;
            }
            match TcpListener::bind(forward.listen).await {
                Ok(listener) => {
                    if report {
                        eprintln!(
                            "local-node: forwarding {} to the ready pods of service {}/{}",
                            forward.listen, forward.namespace, forward.service
                        );
                    }
                    let task = tokio::spawn(serve(client.clone(), forward.clone(), listener));
                    running.insert(forward, task);
                }
                // Taken (another local cluster, a stale process): tried again next
                // poll.
                Err(err) if report => {
                    eprintln!("local-node: cannot listen on {}: {err}", forward.listen)
                }
                Err(_) => {}
            }
        }
    }
}

/// The TCP ports of `service` that have a loopback ClusterIP and a selector.
fn forwards(service: &Service) -> Vec<Forward> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(IpAddr::is_loopback);
    let (Some(ip), Some(selector)) = (ip, spec.selector.clone()) else {
        return Vec::new();
    };
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|port| {
            Some(Forward {
                namespace: service.namespace().unwrap_or_default(),
                service: service.name_any(),
                listen: SocketAddr::new(ip, u16::try_from(port.port).ok()?),
                selector: selector.clone(),
                target: target(port)?,
            })
        })
        .collect()
}

fn target(port: &ServicePort) -> Option<Target> {
    Some(match &port.target_port {
        None => Target::Number(u16::try_from(port.port).ok()?),
        Some(IntOrString::Int(n)) => Target::Number(u16::try_from(*n).ok()?),
        Some(IntOrString::String(name)) => Target::Name(name.clone()),
    })
}

async fn serve(client: Client, forward: Forward, listener: TcpListener) {
    let pods: Api<Pod> = Api::namespaced(client, &forward.namespace);
    let selector = forward
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let (pods, selector, next, target) = (
            pods.clone(),
            selector.clone(),
            next.clone(),
            forward.target.clone(),
        );
        tokio::spawn(async move {
            let Some(address) = endpoint(&pods, &selector, &target, &next).await else {
                return;
            };
            if let Ok(mut outbound) = TcpStream::connect(address).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The next ready pod's address for `target`, round robin.
async fn endpoint(
    pods: &Api<Pod>,
    selector: &str,
    target: &Target,
    next: &AtomicUsize,
) -> Option<SocketAddr> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .ok()?;
    let mut ready: Vec<SocketAddr> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .filter_map(|p| pod_address(p, target))
        .collect();
    ready.sort();
    if ready.is_empty() {
        return None;
    }
    Some(ready[next.fetch_add(1, Ordering::Relaxed) % ready.len()])
}

/// `podIP:port` of `pod` for `target`, a named port resolved against its
/// containers' ports.
fn pod_address(pod: &Pod, target: &Target) -> Option<SocketAddr> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    let port = match target {
        Target::Number(n) => *n,
        Target::Name(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn loopback_cluster_ips_with_a_selector_are_forwarded_by_port() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ml"},
            "spec": {"clusterIP": "127.97.0.12", "selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": "http"},
                               {"port": 9090},
                               {"port": 53, "protocol": "UDP"}]}
        }))
        .unwrap();
        let got = forwards(&service);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].listen, "127.97.0.12:80".parse().unwrap());
        assert_eq!(got[0].target, Target::Name("http".into()));
        assert_eq!(got[1].target, Target::Number(9090));
        // Headless, off loopback, or without a selector: nothing to forward.
        for spec in [
            json!({"clusterIP": "None", "selector": {"a": "b"}, "ports": [{"port": 80}]}),
            json!({"clusterIP": "192.0.2.10", "selector": {"a": "b"}, "ports": [{"port": 80}]}),
            json!({"clusterIP": "127.97.0.13", "ports": [{"port": 80}]}),
        ] {
            let s: Service =
                serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": spec})).unwrap();
            assert!(forwards(&s).is_empty(), "{spec}");
        }
    }

    #[test]
    fn named_target_ports_resolve_against_the_pods_containers() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"podIP": "127.245.0.4"}
        }))
        .unwrap();
        assert_eq!(
            pod_address(&pod, &Target::Name("http".into())),
            Some("127.245.0.4:8000".parse().unwrap())
        );
        assert_eq!(pod_address(&pod, &Target::Name("metrics".into())), None);
        assert_eq!(
            pod_address(&pod, &Target::Number(81)),
            Some("127.245.0.4:81".parse().unwrap())
        );
    }
}
