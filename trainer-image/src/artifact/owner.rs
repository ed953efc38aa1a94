//! Which object an artifact belongs to, for the ownership marker the store writes
//! and checks (`llmops_store::OWNER_FILE`).

use kube::Resource;
use llmops_store::Owner;

/// The owner recorded for `resource`'s artifact: its kind and API version, and
/// the namespace, name and uid the apiserver gave it (empty in a local run of a
/// resource file without them).
pub fn owner_of<K: Resource<DynamicType = ()>>(resource: &K) -> Owner {
    let meta = resource.meta();
    Owner {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmops_crds::Dataset;

    #[test]
    fn a_dataset_owns_its_artifact_by_namespace_name_and_uid() {
        let ds: Dataset = crate::resource::parse(
            "metadata: {name: chats, namespace: ml, uid: u-1234}\nspec:\n  sources: [{inline: {content: x}}]\n  tokenizer: {train: {vocabSize: 300}}\n",
            "Dataset",
            "test",
        )
        .unwrap();
        let owner = owner_of(&ds);
        assert_eq!(owner.kind, "Dataset");
        assert_eq!(owner.api_version, "llmops.dev/v1alpha1");
        assert_eq!(
            (
                owner.namespace.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            ("ml", "chats", "u-1234")
        );
    }
}
