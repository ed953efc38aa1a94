//! The rule every test of this project keeps: test traffic goes only to loopback
//! addresses (127.0.0.0/8, ::1). The test control plane hands out loopback
//! addresses only (`tests/cluster/up`: Services from 127.96.0.0/16, pods from
//! 127.244.0.0/16, nodes at 127.0.0.1), so whatever the operator under test
//! connects to — a pod IP it read from the API — is a process of this machine or
//! nothing. [`check_namespace`] enforces it: [`crate::TestNamespace::delete`]
//! fails the test when one of its Pods, Services or EndpointSlices carries any
//! other address.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

/// Every address of `pod` that is not on loopback, as `pod/<name> <field>=<ip>`.
pub fn pod_violations(pod: &Pod) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(status) = &pod.status {
        let addresses = status
            .pod_ip
            .iter()
            .map(|ip| ("status.podIP", ip))
            .chain(
                status
                    .pod_ips
                    .iter()
                    .flatten()
                    .map(|p| ("status.podIPs", &p.ip)),
            )
            .chain(status.host_ip.iter().map(|ip| ("status.hostIP", ip)))
            .chain(
                status
                    .host_ips
                    .iter()
                    .flatten()
                    .map(|h| ("status.hostIPs", &h.ip)),
            );
        for (field, ip) in addresses {
            flag(&mut found, "pod", &pod.name_any(), field, ip);
        }
    }
    found
}

/// Every address of `service` that is not on loopback (headless `None` is none).
pub fn service_violations(service: &Service) -> Vec<String> {
    let mut found = Vec::new();
    let name = service.name_any();
    if let Some(spec) = &service.spec {
        let addresses = spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP", ip))
            .chain(
                spec.cluster_ips
                    .iter()
                    .flatten()
                    .map(|ip| ("spec.clusterIPs", ip)),
            )
            .chain(
                spec.external_ips
                    .iter()
                    .flatten()
                    .map(|ip| ("spec.externalIPs", ip)),
            )
            .chain(
                spec.load_balancer_ip
                    .iter()
                    .map(|ip| ("spec.loadBalancerIP", ip)),
            )
            .filter(|(_, ip)| ip.as_str() != "None");
        for (field, ip) in addresses {
            flag(&mut found, "service", &name, field, ip);
        }
    }
    let ingress = service
        .status
        .iter()
        .filter_map(|s| s.load_balancer.as_ref())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| i.ip.as_ref());
    for ip in ingress {
        flag(
            &mut found,
            "service",
            &name,
            "status.loadBalancer.ingress",
            ip,
        );
    }
    found
}

/// Every IP address of `slice` that is not on loopback (FQDN slices hold none).
pub fn endpoint_slice_violations(slice: &EndpointSlice) -> Vec<String> {
    let mut found = Vec::new();
    if slice.address_type == "FQDN" {
        return found;
    }
    for ip in slice.endpoints.iter().flat_map(|e| &e.addresses) {
        flag(
            &mut found,
            "endpointslice",
            &slice.name_any(),
            "endpoints.addresses",
            ip,
        );
    }
    found
}

fn flag(found: &mut Vec<String>, kind: &str, name: &str, field: &str, ip: &str) {
    let loopback = ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        found.push(format!("{kind}/{name} {field}={ip}"));
    }
}

/// Every non-loopback address held by the Pods, Services and EndpointSlices of
/// `namespace`; empty when the namespace keeps the rule.
pub async fn check_namespace(client: &Client, namespace: &str) -> anyhow::Result<Vec<String>> {
    let all = ListParams::default();
    let mut found = Vec::new();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for pod in pods.list(&all).await? {
        found.extend(pod_violations(&pod));
    }
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for service in services.list(&all).await? {
        found.extend(service_violations(&service));
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    for slice in slices.list(&all).await? {
        found.extend(endpoint_slice_violations(&slice));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn loopback_pod_addresses_pass() {
        let p = pod(
            json!({"podIP": "127.244.0.7", "podIPs": [{"ip": "127.244.0.7"}],
                           "hostIP": "127.0.0.1", "hostIPs": [{"ip": "::1"}]}),
        );
        assert!(pod_violations(&p).is_empty());
    }

    #[test]
    fn a_private_or_public_pod_address_is_named_with_its_field() {
        let p = pod(json!({"podIP": "10.244.0.7", "hostIP": "203.0.113.9"}));
        assert_eq!(
            pod_violations(&p),
            [
                "pod/p status.podIP=10.244.0.7",
                "pod/p status.hostIP=203.0.113.9"
            ]
        );
    }

    #[test]
    fn headless_services_pass_and_cluster_ips_are_checked() {
        let headless: Service = serde_json::from_value(
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}),
        )
        .unwrap();
        assert!(service_violations(&headless).is_empty());
        let leaky: Service = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "spec": {"clusterIP": "127.96.0.10", "externalIPs": ["192.168.1.4"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}
        }))
        .unwrap();
        assert_eq!(
            service_violations(&leaky),
            [
                "service/s spec.externalIPs=192.168.1.4",
                "service/s status.loadBalancer.ingress=198.51.100.1"
            ]
        );
    }

    #[test]
    fn endpoint_slices_are_checked_unless_fqdn() {
        let slice = |kind: &str, address: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "e"}, "addressType": kind,
                "endpoints": [{"addresses": [address]}]
            }))
            .unwrap()
        };
        assert!(endpoint_slice_violations(&slice("IPv4", "127.244.1.2")).is_empty());
        assert!(endpoint_slice_violations(&slice("FQDN", "example.org")).is_empty());
        assert_eq!(
            endpoint_slice_violations(&slice("IPv6", "fd00::1")),
            ["endpointslice/e endpoints.addresses=fd00::1"]
        );
    }

    #[test]
    fn an_unparseable_address_is_a_violation() {
        let p = pod(json!({"podIP": "not-an-ip"}));
        assert_eq!(pod_violations(&p), ["pod/p status.podIP=not-an-ip"]);
    }
}
