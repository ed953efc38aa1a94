//! Isolation of trainer pods: NetworkPolicy `<name>-<kind>-trainer` (kind in
//! lower case: a Dataset and a FineTune may share a name) confines the pods of
//! one Dataset's, PretrainJob's or FineTune's runs (and its clean Job) to what a
//! trainer needs:
//! - ingress only from the pods of the same object: the ranks of a distributed
//!   run rendezvous and exchange gradients with each other; nothing else ever
//!   connects to a trainer;
//! - egress to the same pods, to DNS (port 53, any namespace), and to what the
//!   operator's `--trainer-egress` rules allow: the apiserver (the trainer writes
//!   its progress into status) and the artifact store and data sources, whose
//!   addresses only the cluster's administrator knows. Without that flag every
//!   destination is allowed; the chart's default allows everything but the
//!   link-local range, where cloud instance-metadata services hand out the
//!   node's credentials.
//!
//! Built when the operator runs with `--network-policies` (the default; chart
//! value `networkPolicy.enabled`). A cluster without a network plugin that
//! enforces NetworkPolicy stores the policy and enforces nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::runtime::apply::{FIELD_MANAGER, MANAGED_BY_LABEL, child_meta, parent_label_key};

/// The component label of the policy itself.
const COMPONENT: &str = "trainer-isolation";

/// `<name>-<kind>-trainer`.
pub fn trainer_policy_name<K: Resource<DynamicType = ()>>(parent: &K) -> String {
    format!(
        "{}-{}-trainer",
        parent.name_any(),
        K::kind(&()).to_lowercase()
    )
}

/// The pods of every run of `parent`: its Jobs' pods carry these labels.
fn run_pods<K: Resource<DynamicType = ()>>(parent: &K) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
            (parent_label_key::<K>(), parent.name_any()),
        ])),
        ..LabelSelector::default()
    }
}

/// The policy for `parent`'s trainer pods, with `egress` (the operator's
/// `--trainer-egress` rules) after the rules every trainer needs.
pub fn trainer_network_policy<K: Resource<DynamicType = ()>>(
    parent: &K,
    egress: &[NetworkPolicyEgressRule],
) -> NetworkPolicy {
    let same_run = || NetworkPolicyPeer {
        pod_selector: Some(run_pods(parent)),
        ..NetworkPolicyPeer::default()
    };
    let dns = NetworkPolicyEgressRule {
        to: None,
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    port: Some(IntOrString::Int(53)),
                    protocol: Some(protocol.into()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
    };
    let peers = NetworkPolicyEgressRule {
        to: Some(vec![same_run()]),
        ports: None,
    };
    NetworkPolicy {
        metadata: child_meta(parent, trainer_policy_name(parent), COMPONENT),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(run_pods(parent)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_run()]),
                ports: None,
            }]),
            egress: Some(
                [peers, dns]
                    .into_iter()
                    .chain(egress.iter().cloned())
                    .collect(),
            ),
        }),
    }
}

/// `--trainer-egress`: a JSON (or YAML) list of NetworkPolicy egress rules.
pub fn parse_egress(text: &str) -> Result<Vec<NetworkPolicyEgressRule>, String> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        format!(
            "--trainer-egress must be a list of NetworkPolicy egress rules ({{to, ports}}): {e}"
        )
    })
}

/// What trainers may reach when the operator is given no rules: everything.
pub fn allow_all() -> Vec<NetworkPolicyEgressRule> {
    vec![NetworkPolicyEgressRule::default()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmops_crds::Dataset;
    use serde_json::json;

    fn dataset() -> Dataset {
        serde_json::from_value(json!({
            "apiVersion": "llmops.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": "chats", "namespace": "ml", "uid": "u1"},
            "spec": {"type": "pretraining", "sources": [{"inline": {"content": "x"}}],
                     "tokenizer": {"train": {"vocabSize": 512}}}
        }))
        .unwrap()
    }

    #[test]
    fn trainers_talk_to_their_own_run_dns_and_the_configured_destinations_only() {
        let rules = parse_egress(
            r#"[{"to": [{"namespaceSelector": {"matchLabels": {"name": "store"}}}], "ports": [{"port": 9000}]}]"#,
        )
        .unwrap();
        let policy = serde_json::to_value(trainer_network_policy(&dataset(), &rules)).unwrap();
        assert_eq!(policy["metadata"]["name"], "chats-dataset-trainer");
        assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "u1");
        let selector = json!({"matchLabels": {
            "app.kubernetes.io/managed-by": "llmops-operator", "llmops.dev/dataset": "chats"}});
        let spec = &policy["spec"];
        assert_eq!(spec["podSelector"], selector);
        assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            spec["ingress"],
            json!([{"from": [{"podSelector": selector}]}])
        );
        let egress = spec["egress"].as_array().unwrap();
        assert_eq!(egress[0], json!({"to": [{"podSelector": selector}]}));
        assert_eq!(
            egress[1]["ports"],
            json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
        );
        assert_eq!(egress[2]["ports"], json!([{"port": 9000}]));
        assert_eq!(egress.len(), 3);
    }

    #[test]
    fn without_rules_every_destination_is_allowed() {
        let policy = trainer_network_policy(&dataset(), &allow_all());
        let egress = policy.spec.unwrap().egress.unwrap();
        // An empty rule matches every destination and port.
        assert_eq!(serde_json::to_value(&egress[2]).unwrap(), json!({}));
    }

    #[test]
    fn the_charts_default_rules_parse_and_keep_trainers_off_link_local_addresses() {
        // The chart passes networkPolicy.trainerEgress as JSON (`toJson`).
        let values: serde_json::Value =
            serde_yaml_ng::from_str(include_str!("../../../charts/llmops/values.yaml")).unwrap();
        let rules = values["networkPolicy"]["trainerEgress"].to_string();
        let parsed = parse_egress(&rules).unwrap();
        let blocks: Vec<_> = parsed
            .iter()
            .flat_map(|r| r.to.iter().flatten())
            .filter_map(|peer| peer.ip_block.as_ref())
            .collect();
        assert_eq!(blocks.len(), 2, "{rules}");
        for block in blocks {
            let except = block.except.as_ref().expect("an except list");
            assert!(
                except
                    .iter()
                    .any(|e| e.starts_with("169.254.") || e.starts_with("fe80:")),
                "{except:?}"
            );
        }
    }

    #[test]
    fn a_rule_that_is_not_a_list_is_refused_naming_the_flag() {
        let err = parse_egress(r#"{"to": []}"#).unwrap_err();
        assert!(err.starts_with("--trainer-egress must be a list"), "{err}");
    }
}
