//! The identity of a trainer pod: a ServiceAccount whose Role lets it read its own
//! object and patch that object's status (live progress) — nothing else,
//! and no other object (`resourceNames`).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::{Client, Resource, ResourceExt};

use crate::runtime::apply::{ApplyChildError, apply_child, child_meta};

/// The ServiceAccount, Role and RoleBinding, all named alike.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerRbac {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
}

/// RBAC named `name` for the trainer of `parent`.
pub fn trainer_rbac<K: Resource<DynamicType = ()>>(
    parent: &K,
    name: &str,
    component: &str,
) -> TrainerRbac {
    let group = K::group(&()).into_owned();
    let plural = K::plural(&()).into_owned();
    let own = vec![parent.name_any()];
    let rule = |resource: String, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.clone()]),
        resources: Some(vec![resource]),
        resource_names: Some(own.clone()),
        verbs: verbs.iter().map(|v| (*v).to_string()).collect(),
        ..PolicyRule::default()
    };
    let service_account = ServiceAccount {
        metadata: child_meta(parent, name.into(), component),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: child_meta(parent, name.into(), component),
        rules: Some(vec![
            rule(format!("{plural}/status"), &["get", "patch"]),
            rule(plural.clone(), &["get"]),
        ]),
    };
    let role_binding = RoleBinding {
        metadata: child_meta(parent, name.into(), component),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: parent.namespace(),
            ..Subject::default()
        }]),
    };
    TrainerRbac {
        service_account,
        role,
        role_binding,
    }
}

/// Apply the ServiceAccount, then the Role and RoleBinding.
pub async fn apply_rbac(client: &Client, rbac: &TrainerRbac) -> Result<(), ApplyChildError> {
    apply_child(client, &rbac.service_account).await?;
    apply_child(client, &rbac.role).await?;
    apply_child(client, &rbac.role_binding).await?;
    Ok(())
}
