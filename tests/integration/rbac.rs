//! The chart's RBAC is enough for the operator and no more: a client holding a
//! token of the chart's ServiceAccount asks SelfSubjectAccessReview.

use std::fmt;
use std::time::Duration;

use anyhow::ensure;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use llmops_tests::{Cluster, TestNamespace, eventually};

use crate::chart;

const KINDS: [&str; 4] = ["datasets", "pretrainjobs", "finetunes", "modeldeployments"];
const CHILD_VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "patch", "update", "delete",
];
const CHILDREN: [(&str, &str); 9] = [
    ("batch", "jobs"),
    ("apps", "deployments"),
    ("", "configmaps"),
    ("", "services"),
    ("", "serviceaccounts"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "networkpolicies"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
];

/// One access question; `namespace: None` asks across all namespaces.
#[derive(Clone)]
struct Ask {
    verb: &'static str,
    group: &'static str,
    resource: String,
    subresource: Option<&'static str>,
    namespace: Option<String>,
}

fn ask(verb: &'static str, group: &'static str, resource: &str, namespace: Option<&str>) -> Ask {
    Ask {
        verb,
        group,
        resource: resource.to_string(),
        subresource: None,
        namespace: namespace.map(str::to_string),
    }
}

impl fmt::Display for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in {ns}"),
            None => write!(f, " in all namespaces"),
        }
    }
}

async fn allowed(client: &Client, ask: &Ask) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(ask.verb.to_string()),
                group: Some(ask.group.to_string()),
                resource: Some(ask.resource.clone()),
                subresource: ask.subresource.map(str::to_string),
                namespace: ask.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = reviews.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Everything the operator does with the resources it manages, in `namespace`.
fn operator_access(namespace: Option<&str>) -> Vec<Ask> {
    let mut asks = Vec::new();
    for kind in KINDS {
        for verb in ["get", "list", "watch", "patch", "update"] {
            asks.push(ask(verb, "llmops.dev", kind, namespace));
        }
        for verb in ["get", "patch", "update"] {
            asks.push(Ask {
                subresource: Some("status"),
                ..ask(verb, "llmops.dev", kind, namespace)
            });
        }
        asks.push(Ask {
            subresource: Some("finalizers"),
            ..ask("update", "llmops.dev", kind, namespace)
        });
    }
    for (group, resource) in CHILDREN {
        for verb in CHILD_VERBS {
            asks.push(ask(verb, group, resource, namespace));
        }
    }
    for verb in ["get", "list", "watch"] {
        asks.push(ask(verb, "", "pods", namespace));
    }
    for verb in ["create", "patch"] {
        asks.push(ask(verb, "events.k8s.io", "events", namespace));
    }
    // Whether a namespace is being deleted (a RoleBinding in it grants reading it).
    asks.push(ask("get", "", "namespaces", namespace));
    for verb in ["get", "update"] {
        asks.push(ask(
            verb,
            "gateway.networking.k8s.io",
            "httproutes",
            namespace,
        ));
    }
    asks
}

/// Leader election, in the release namespace.
fn lease_access(namespace: &str) -> Vec<Ask> {
    ["get", "create", "update"]
        .into_iter()
        .map(|verb| ask(verb, "coordination.k8s.io", "leases", Some(namespace)))
        .collect()
}

/// What the operator must never be able to do; `namespaces` are ones it works in.
fn forbidden(namespaces: &[Option<&str>], release_namespace: &str) -> Vec<Ask> {
    let mut asks = Vec::new();
    for &ns in namespaces {
        for verb in ["get", "list", "watch"] {
            asks.push(ask(verb, "", "secrets", ns));
        }
        for verb in ["create", "update", "patch", "delete"] {
            asks.push(ask(verb, "", "pods", ns));
        }
        asks.push(Ask {
            subresource: Some("exec"),
            ..ask("create", "", "pods", ns)
        });
        for kind in KINDS {
            asks.push(ask("create", "llmops.dev", kind, ns));
            asks.push(ask("delete", "llmops.dev", kind, ns));
        }
        for verb in ["get", "create", "update", "delete"] {
            asks.push(ask(verb, "coordination.k8s.io", "leases", ns));
        }
        // A route is the user's: weighted, never created or deleted.
        for verb in ["create", "delete"] {
            asks.push(ask(verb, "gateway.networking.k8s.io", "httproutes", ns));
        }
        // Namespaces are read, never listed or changed.
        for verb in ["list", "watch", "update", "patch", "delete"] {
            asks.push(ask(verb, "", "namespaces", ns));
        }
        // Wildcards.
        asks.push(ask("*", "*", "*", ns));
        asks.push(ask("*", "batch", "jobs", ns));
        asks.push(ask("get", "", "*", ns));
        asks.push(ask("get", "*", "datasets", ns));
    }
    asks.push(ask("get", "", "secrets", Some(release_namespace)));
    for verb in ["list", "watch", "delete", "patch"] {
        asks.push(ask(
            verb,
            "coordination.k8s.io",
            "leases",
            Some(release_namespace),
        ));
    }
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete", "bind", "escalate", "*",
    ] {
        asks.push(ask(verb, "rbac.authorization.k8s.io", "clusterroles", None));
    }
    for verb in ["create", "update", "delete"] {
        asks.push(ask(
            verb,
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
        ));
        asks.push(ask(
            verb,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
        ));
    }
    asks.push(ask("*", "*", "*", None));
    asks
}

/// Ask everything; an error lists every answer that was not the expected one.
async fn expect(client: &Client, allow: &[Ask], deny: &[Ask]) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for a in allow {
        if !allowed(client, a).await? {
            wrong.push(format!("denied but needed: {a}"));
        }
    }
    for a in deny {
        if allowed(client, a).await? {
            wrong.push(format!("allowed but must not be: {a}"));
        }
    }
    for line in &wrong {
        eprintln!("{line}");
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} access checks wrong",
        wrong.len(),
        allow.len() + deny.len()
    );
    Ok(())
}

/// The RBAC authorizer sees new bindings a moment after they are created: wait
/// until one permission of each binding is granted.
async fn wait_for_bindings(client: &Client, probes: &[Ask]) -> anyhow::Result<()> {
    for probe in probes {
        eventually(
            &format!("{probe} to be allowed"),
            Duration::from_secs(30),
            || async {
                ensure!(allowed(client, probe).await?, "still denied");
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn chart_rbac_is_enough_and_no_more() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let admin = cluster.client().await?;
    let release_ns = TestNamespace::create(cluster, "rbac").await?;
    let work_ns = TestNamespace::create(cluster, "rbac-work").await?;
    let release = chart::install(cluster, &release_ns, &[]).await?;
    let account = release.service_account(&admin).await?;
    let operator = cluster
        .service_account_client(release_ns.name(), &account)
        .await?;
    let probes = [
        ask("get", "llmops.dev", "datasets", Some(work_ns.name())),
        ask(
            "get",
            "coordination.k8s.io",
            "leases",
            Some(release_ns.name()),
        ),
    ];
    wait_for_bindings(&operator, &probes).await?;

    let mut allow = operator_access(Some(work_ns.name()));
    allow.extend(operator_access(None));
    allow.extend(lease_access(release_ns.name()));
    let deny = forbidden(&[None, Some(work_ns.name())], release_ns.name());
    expect(&operator, &allow, &deny).await?;

    release.uninstall().await?;
    work_ns.delete(cluster).await?;
    release_ns.delete(cluster).await
}

#[tokio::test]
async fn chart_rbac_with_watch_namespaces_stays_in_them() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::get()? else {
        return Ok(());
    };
    let admin = cluster.client().await?;
    let release_ns = TestNamespace::create(cluster, "rbac-watch").await?;
    let a = TestNamespace::create(cluster, "rbac-watch-a").await?;
    let b = TestNamespace::create(cluster, "rbac-watch-b").await?;
    let other = TestNamespace::create(cluster, "rbac-watch-other").await?;
    let set = format!("watchNamespaces={{{},{}}}", a.name(), b.name());
    let release = chart::install(cluster, &release_ns, &["--set", &set]).await?;
    let account = release.service_account(&admin).await?;
    let operator = cluster
        .service_account_client(release_ns.name(), &account)
        .await?;
    let probes = [
        ask("get", "llmops.dev", "datasets", Some(a.name())),
        ask("get", "llmops.dev", "datasets", Some(b.name())),
        ask(
            "get",
            "coordination.k8s.io",
            "leases",
            Some(release_ns.name()),
        ),
    ];
    wait_for_bindings(&operator, &probes).await?;

    let mut allow = operator_access(Some(a.name()));
    allow.extend(operator_access(Some(b.name())));
    allow.extend(lease_access(release_ns.name()));
    let mut deny = forbidden(&[None, Some(a.name())], release_ns.name());
    // Nothing of the operator's access outside the listed namespaces.
    for unlisted in [None, Some(other.name()), Some(release_ns.name())] {
        deny.extend(operator_access(unlisted));
    }
    expect(&operator, &allow, &deny).await?;

    release.uninstall().await?;
    for ns in [a, b, other, release_ns] {
        ns.delete(cluster).await?;
    }
    Ok(())
}
