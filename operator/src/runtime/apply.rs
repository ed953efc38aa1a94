//! Server-side apply of children, their labels and owner references, and deletion of
//! children that the current pass no longer produces.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The one field manager the operator applies with.
pub const FIELD_MANAGER: &str = llmops_contract::OPERATOR_FIELD_MANAGER;

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";

/// `llmops.dev/<kind lowercase>`: the label naming a child's parent, used to find
/// a parent's children and to map child events back to the parent.
pub fn parent_label_key<K: Resource<DynamicType = ()>>() -> String {
    format!("llmops.dev/{}", K::kind(&()).to_lowercase())
}

/// The labels every child of `parent` carries.
pub fn child_labels<K: Resource<DynamicType = ()>>(
    parent: &K,
    component: &str,
) -> BTreeMap<String, String> {
    let name = parent.name_any();
    BTreeMap::from([
        (NAME_LABEL.into(), "llmops".into()),
        (INSTANCE_LABEL.into(), name.clone()),
        (COMPONENT_LABEL.into(), component.into()),
        (MANAGED_BY_LABEL.into(), FIELD_MANAGER.into()),
        (PART_OF_LABEL.into(), "llmops".into()),
        (parent_label_key::<K>(), name),
    ])
}

/// Label selector matching every child of `parent`.
pub fn children_selector<K: Resource<DynamicType = ()>>(parent: &K) -> String {
    format!(
        "{MANAGED_BY_LABEL}={FIELD_MANAGER},{}={}",
        parent_label_key::<K>(),
        parent.name_any()
    )
}

/// An owner reference making `parent` the controller of a child, so the garbage
/// collector deletes the child with its parent.
pub fn controller_owner_ref<K: Resource<DynamicType = ()>>(parent: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: parent.name_any(),
        uid: parent.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child: name, the parent's namespace, labels and owner reference.
pub fn child_meta<K: Resource<DynamicType = ()>>(
    parent: &K,
    name: String,
    component: &str,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: parent.namespace(),
        labels: Some(child_labels(parent, component)),
        owner_references: Some(vec![controller_owner_ref(parent)]),
        ..ObjectMeta::default()
    }
}

/// A child that could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("failed to apply {kind} {name} (check the operator's RBAC for it): {source}")]
pub struct ApplyChildError {
    pub kind: &'static str,
    pub name: String,
    pub source: kube::Error,
}

/// [`apply`], with an error naming the child.
pub async fn apply_child<C>(client: &Client, child: &C) -> Result<C, ApplyChildError>
where
    C: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    apply(client, child)
        .await
        .map_err(|source| ApplyChildError {
            kind: <C as k8s_openapi::Resource>::KIND,
            name: child.name_any(),
            source,
        })
}

/// Server-side apply `child` (forcing ownership of its fields) and return the live object.
pub async fn apply<C>(client: &Client, child: &C) -> Result<C, kube::Error>
where
    C: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<C> = Api::namespaced(
        client.clone(),
        child.meta().namespace.as_deref().unwrap_or_default(),
    );
    api.patch(
        &child.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(child),
    )
    .await
}

/// The server-side apply body for the status subresource of a `K`: only the
/// fields in `status`, so fields other writers own (the trainer's) stay theirs.
pub fn status_body<K: Resource<DynamicType = ()>>(status: &impl Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Server-side apply `status` to the status subresource of `obj`.
pub async fn apply_status<K>(
    api: &Api<K>,
    obj: &K,
    status: &impl Serialize,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(status_body::<K>(status)),
    )
    .await
}

/// Delete the children of type `C` matching `selector` whose names are not in
/// `keep`. Dependents (a Job's pods) go with them in the background.
pub async fn delete_orphans<C>(
    client: &Client,
    namespace: &str,
    selector: &str,
    keep: &[String],
) -> Result<Vec<String>, kube::Error>
where
    C: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api: Api<C> = Api::namespaced(client.clone(), namespace);
    let mut deleted = Vec::new();
    for child in api
        .list_metadata(&ListParams::default().labels(selector))
        .await?
    {
        let name = child.name_any();
        if keep.contains(&name) || child.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(deleted)
}

/// Names of the children a reconcile pass produced; every other child labelled as
/// the parent's is deleted. `services: None` means the kind never makes Services,
/// so they are not even listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptChildren {
    pub jobs: Vec<String>,
    pub config_maps: Vec<String>,
    pub services: Option<Vec<String>>,
    /// The per-object ServiceAccount, Role and RoleBinding share one name.
    pub rbac: Vec<String>,
}

/// Children of one kind that could not be cleaned up.
#[derive(Debug, thiserror::Error)]
#[error("failed to delete outdated {kind} children: {source}")]
pub struct DeleteOrphansError {
    pub kind: &'static str,
    pub source: kube::Error,
}

/// Delete the children of `parent` not in `kept`.
pub async fn delete_unkept_children<K: Resource<DynamicType = ()>>(
    client: &Client,
    parent: &K,
    kept: &KeptChildren,
) -> Result<Vec<String>, DeleteOrphansError> {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

    let namespace = parent.namespace().unwrap_or_default();
    let selector = children_selector(parent);
    let (ns, sel) = (namespace.as_str(), selector.as_str());
    let tag = |kind: &'static str| move |source| DeleteOrphansError { kind, source };
    let mut deleted = delete_orphans::<Job>(client, ns, sel, &kept.jobs)
        .await
        .map_err(tag("Job"))?;
    if let Some(services) = &kept.services {
        deleted.extend(
            delete_orphans::<Service>(client, ns, sel, services)
                .await
                .map_err(tag("Service"))?,
        );
    }
    deleted.extend(
        delete_orphans::<ConfigMap>(client, ns, sel, &kept.config_maps)
            .await
            .map_err(tag("ConfigMap"))?,
    );
    deleted.extend(
        delete_orphans::<RoleBinding>(client, ns, sel, &kept.rbac)
            .await
            .map_err(tag("RoleBinding"))?,
    );
    deleted.extend(
        delete_orphans::<Role>(client, ns, sel, &kept.rbac)
            .await
            .map_err(tag("Role"))?,
    );
    deleted.extend(
        delete_orphans::<ServiceAccount>(client, ns, sel, &kept.rbac)
            .await
            .map_err(tag("ServiceAccount"))?,
    );
    if !deleted.is_empty() {
        tracing::info!(?deleted, "deleted children no longer produced");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmops_crds::Dataset;

    fn dataset() -> Dataset {
        serde_yaml_ng::from_str(
            r#"
apiVersion: llmops.dev/v1alpha1
kind: Dataset
metadata: {name: chats, namespace: ml, uid: 1234-abcd, generation: 2}
spec:
  sources: [{inline: {content: "hello"}}]
  tokenizer: {train: {vocabSize: 512}}
"#,
        )
        .unwrap()
    }

    #[test]
    fn children_carry_the_standard_labels() {
        let labels = child_labels(&dataset(), "prepare");
        assert_eq!(labels[NAME_LABEL], "llmops");
        assert_eq!(labels[INSTANCE_LABEL], "chats");
        assert_eq!(labels[COMPONENT_LABEL], "prepare");
        assert_eq!(labels[MANAGED_BY_LABEL], "llmops-operator");
        assert_eq!(labels[PART_OF_LABEL], "llmops");
        assert_eq!(labels["llmops.dev/dataset"], "chats");
        assert_eq!(
            children_selector(&dataset()),
            "app.kubernetes.io/managed-by=llmops-operator,llmops.dev/dataset=chats"
        );
    }

    #[test]
    fn the_status_body_names_the_kind_and_holds_only_the_given_fields() {
        let body = status_body::<Dataset>(&serde_json::json!({"observedGeneration": 2}));
        assert_eq!(
            body,
            serde_json::json!({
                "apiVersion": "llmops.dev/v1alpha1",
                "kind": "Dataset",
                "status": {"observedGeneration": 2},
            })
        );
    }

    #[test]
    fn owner_reference_marks_the_parent_as_controller() {
        let meta = child_meta(&dataset(), "chats-prepare".into(), "prepare");
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.api_version, "llmops.dev/v1alpha1");
        assert_eq!(owner.kind, "Dataset");
        assert_eq!(owner.name, "chats");
        assert_eq!(owner.uid, "1234-abcd");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("ml"));
    }
}
