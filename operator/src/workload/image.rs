//! How the pods the operator creates pull their images: the pull policy of their
//! containers and the Secrets the kubelet authenticates to the registry with.
//! Operator-wide (`--image-pull-policy`, `--image-pull-secrets`, set from the
//! chart's `trainerImage.pullPolicy`, `serverImage.pullPolicy` and
//! `imagePullSecrets`), applied to trainer Jobs and serving Deployments alike.

use k8s_openapi::api::core::v1::{LocalObjectReference, PodSpec};

/// The pull settings of one image's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePull {
    /// `Always`, `IfNotPresent` or `Never`; `None` leaves the Kubernetes default
    /// (`Always` for `:latest` or an untagged image, else `IfNotPresent`).
    pub policy: Option<String>,
    /// Secrets of type `kubernetes.io/dockerconfigjson`, by name, in the namespace
    /// of each pod. The operator does not create or copy them: they must exist
    /// in every namespace whose resources pull from the private registry.
    pub secrets: Vec<String>,
}

/// The values `--image-pull-policy` accepts.
pub const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];

impl ImagePull {
    /// Set the pull policy of every container of `pod` and its pull Secrets
    /// (after any it already names, without repeating one).
    pub fn apply(&self, pod: &mut PodSpec) {
        if let Some(policy) = &self.policy {
            for container in pod
                .containers
                .iter_mut()
                .chain(pod.init_containers.iter_mut().flatten())
            {
                container.image_pull_policy = Some(policy.clone());
            }
        }
        if self.secrets.is_empty() {
            return;
        }
        let refs = pod.image_pull_secrets.get_or_insert_default();
        for name in &self.secrets {
            if !refs.iter().any(|r| &r.name == name) {
                refs.push(LocalObjectReference { name: name.clone() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Container;

    use super::*;

    fn pod() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "main".into(),
                ..Container::default()
            }],
            init_containers: Some(vec![Container {
                name: "init".into(),
                ..Container::default()
            }]),
            ..PodSpec::default()
        }
    }

    #[test]
    fn the_default_changes_nothing() {
        let mut spec = pod();
        ImagePull::default().apply(&mut spec);
        assert_eq!(spec, pod());
    }

    #[test]
    fn policy_reaches_every_container_and_secrets_the_pod() {
        let mut spec = pod();
        ImagePull {
            policy: Some("Always".into()),
            secrets: vec!["regcred".into(), "mirror".into()],
        }
        .apply(&mut spec);
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(
            spec.init_containers.as_ref().unwrap()[0]
                .image_pull_policy
                .as_deref(),
            Some("Always")
        );
        let names: Vec<_> = spec
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["regcred", "mirror"]);
    }

    #[test]
    fn secrets_the_pod_names_already_are_not_repeated() {
        let mut spec = pod();
        spec.image_pull_secrets = Some(vec![LocalObjectReference {
            name: "regcred".into(),
        }]);
        ImagePull {
            policy: None,
            secrets: vec!["regcred".into(), "other".into()],
        }
        .apply(&mut spec);
        let names: Vec<_> = spec
            .image_pull_secrets
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["regcred", "other"]);
        assert_eq!(spec.containers[0].image_pull_policy, None);
    }
}
