//! Isolation: NetworkPolicy `<name>-server` opens the serving pods' port to the
//! traffic a ModelDeployment expects and closes every other port:
//! - from every pod of its own namespace (its clients) and from the operator's
//!   namespace (the operator scrapes `/metrics` on the same port);
//! - from anywhere when the Service is a NodePort or a LoadBalancer (traffic
//!   from outside the cluster) or an HTTPRoute weights it (a gateway's pods run
//!   in a namespace of their own).
//!
//! Built when the operator runs with `--network-policies` (the default; chart
//! value `networkPolicy.enabled`): clusters whose own policies govern serving
//! traffic turn it off. A cluster without a network plugin that enforces
//! NetworkPolicy stores the policy and enforces nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use llmops_crds::ModelDeployment;
use llmops_crds::deployment::ServiceType;

use super::build::{PORT_NAME, SERVER_COMPONENT, pod_selector};
use super::route;
use crate::runtime::apply::child_meta;

/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `<name>-server`.
pub fn network_policy_name(md_name: &str) -> String {
    format!("{md_name}-server")
}

/// Whether traffic reaches the pods from outside the namespace by design.
fn open_to_all(md: &ModelDeployment) -> bool {
    md.spec.service.kind != ServiceType::ClusterIP || route::route_name(md).is_some()
}

/// The policy for `md`'s serving pods (stable and canary). `operator_namespace`
/// is where the operator runs, when it runs in the cluster.
pub fn build_network_policy(
    md: &ModelDeployment,
    operator_namespace: Option<&str>,
) -> NetworkPolicy {
    let port = vec![NetworkPolicyPort {
        port: Some(IntOrString::String(PORT_NAME.into())),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }];
    let from = if open_to_all(md) {
        None
    } else {
        let own_namespace = NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        };
        let operator = operator_namespace.map(|ns| NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    ns.to_string(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        });
        Some(std::iter::once(own_namespace).chain(operator).collect())
    };
    NetworkPolicy {
        metadata: child_meta(md, network_policy_name(&md.name_any()), SERVER_COMPONENT),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_selector(md)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from,
                ports: Some(port),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::with_overlay;

    const BASE: &str = r#"
apiVersion: llmops.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat, namespace: team-a, uid: u1}
spec:
  model: {uri: "s3://models/chat-v1"}
"#;

    fn md(overlay: &str) -> ModelDeployment {
        with_overlay(BASE, overlay)
    }

    fn rule(policy: &NetworkPolicy) -> &NetworkPolicyIngressRule {
        let spec = policy.spec.as_ref().unwrap();
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        let [rule] = spec.ingress.as_deref().unwrap() else {
            panic!("one ingress rule");
        };
        let [port] = rule.ports.as_deref().unwrap() else {
            panic!("one port");
        };
        assert_eq!(port.port, Some(IntOrString::String(PORT_NAME.into())));
        rule
    }

    #[test]
    fn a_cluster_ip_model_is_open_to_its_namespace_and_the_operator_only() {
        let md = md("{}");
        let policy = build_network_policy(&md, Some("llmops-system"));
        assert_eq!(policy.metadata.name.as_deref(), Some("chat-server"));
        assert_eq!(
            policy
                .spec
                .as_ref()
                .unwrap()
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels,
            Some(pod_selector(&md)),
        );
        let from = rule(&policy).from.as_deref().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert!(from[0].namespace_selector.is_none());
        let operator = from[1].namespace_selector.as_ref().unwrap();
        assert_eq!(
            operator.match_labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL],
            "llmops-system"
        );
        // An operator outside the cluster has no namespace to open to.
        let policy = build_network_policy(&md, None);
        assert_eq!(rule(&policy).from.as_deref().unwrap().len(), 1);
    }

    #[test]
    fn a_model_reached_from_outside_the_namespace_opens_its_port_to_all() {
        for spec in [
            "spec: {service: {type: LoadBalancer}}",
            "spec: {service: {type: NodePort}}",
            "spec: {rollout: {strategy: Canary, canary: {steps: [{weight: 10}], trafficRouting: {httpRoute: {name: r}}}}}",
        ] {
            let policy = build_network_policy(&md(spec), Some("llmops-system"));
            assert_eq!(rule(&policy).from, None, "{spec}");
        }
    }
}
