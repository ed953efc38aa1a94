//! Exact canary weights on a Gateway API HTTPRoute the user names
//! (`rollout.canary.trafficRouting.httpRoute`).
//!
//! With traffic routing the ModelDeployment has two more Services,
//! `<name>-stable` and `<name>-canary`, each selecting one revision's pods. The
//! HTTPRoute stays the user's: the operator never creates or deletes it, and
//! rewrites only the rules whose backendRefs name one of those two Services.
//! In them the two backendRefs become `<name>-stable` with `100 − w` and
//! `<name>-canary` with `w` during a canary step, and `<name>-stable` alone
//! outside a canary (after a promotion or a rollback too); other backendRefs
//! and rules are left as they are.
//!
//! A pass writes the weights before it deletes anything, so a rolled-back or
//! promoted canary's Deployment and Service go only once the route no longer
//! sends to them.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Client, ResourceExt};
use llmops_crds::ModelDeployment;
use serde_json::{Value, json};

/// The field naming the route, for messages.
pub const FIELD_PATH: &str = "spec.rollout.canary.trafficRouting.httpRoute.name";

/// The Service of the stable pods alone.
pub fn stable_service_name(name: &str) -> String {
    format!("{name}-stable")
}

/// The Service of the canary pods alone.
pub fn canary_service_name(name: &str) -> String {
    format!("{name}-canary")
}

/// The HTTPRoute whose weights this ModelDeployment's canaries set, if any.
pub fn route_name(md: &ModelDeployment) -> Option<&str> {
    md.spec
        .rollout
        .canary
        .as_ref()?
        .traffic_routing
        .as_ref()
        .map(|t| t.http_route.name.as_str())
}

/// Why the route's weights could not be set. A missing route or rule is
/// reported in the status (Stalled `RouteNotUsable`) and looked at again on the
/// next pass; API failures are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "HTTPRoute {name} ({FIELD_PATH}) does not exist in namespace {namespace}; create it, or remove trafficRouting to weight the canary by replicas"
    )]
    NotFound { name: String, namespace: String },
    #[error(
        "HTTPRoute {name} ({FIELD_PATH}) has no rule whose backendRefs name Service {stable}; point a rule at it so the operator can weight it"
    )]
    NoRule { name: String, stable: String },
    #[error("failed to read HTTPRoute {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("failed to write the weights of HTTPRoute {name}: {source}")]
    Write { name: String, source: kube::Error },
}

impl RouteError {
    /// Whether the user must change something (the status says what), rather
    /// than the API failing for a while.
    pub fn is_users(&self) -> bool {
        matches!(
            self,
            RouteError::NotFound { .. } | RouteError::NoRule { .. }
        )
    }
}

/// `gateway.networking.k8s.io/v1` HTTPRoute.
fn http_route() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ))
}

/// Send `canary_weight` percent of the route's traffic to the canary Service and
/// the rest to the stable one (see the module docs). Writes only on a change.
pub async fn set_canary_weight(
    client: &Client,
    md: &ModelDeployment,
    route: &str,
    canary_weight: i32,
) -> Result<(), RouteError> {
    let namespace = md.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &http_route());
    let name = route.to_string();
    let Some(mut live) = api
        .get_opt(route)
        .await
        .map_err(|source| RouteError::Read {
            name: name.clone(),
            source,
        })?
    else {
        return Err(RouteError::NotFound { name, namespace });
    };
    let services = Backends::of(md);
    let rules = live
        .data
        .pointer("/spec/rules")
        .cloned()
        .unwrap_or(json!([]));
    let Some(weighted) = weighted_rules(&rules, &services, canary_weight) else {
        return Err(RouteError::NoRule {
            name,
            stable: services.stable,
        });
    };
    if weighted == rules {
        return Ok(());
    }
    if let Some(spec) = live.data.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("rules".into(), weighted);
    }
    let params = PostParams {
        field_manager: Some(llmops_contract::OPERATOR_FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    // A replace carries the resourceVersion read above: an edit in between is a
    // conflict, retried on the next pass, never overwritten.
    api.replace(route, &params, &live)
        .await
        .map_err(|source| RouteError::Write { name, source })?;
    tracing::info!(
        route,
        canary_weight,
        "set the canary's weight on the HTTPRoute"
    );
    Ok(())
}

/// The two Services a route's managed backendRefs name, and the port used when
/// a rule names neither with one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backends {
    pub stable: String,
    pub canary: String,
    pub port: i32,
}

impl Backends {
    pub fn of(md: &ModelDeployment) -> Backends {
        let name = md.name_any();
        Backends {
            stable: stable_service_name(&name),
            canary: canary_service_name(&name),
            port: md.spec.service.port,
        }
    }

    /// Whether a backendRef names one of the two Services (a core Service in the
    /// route's own namespace).
    fn manages(&self, backend: &Value) -> bool {
        let text = |key: &str| backend.get(key).and_then(Value::as_str);
        let name = text("name");
        text("group").unwrap_or("").is_empty()
            && text("kind").unwrap_or("Service") == "Service"
            && backend.get("namespace").is_none()
            && (name == Some(self.stable.as_str()) || name == Some(self.canary.as_str()))
    }
}

/// The route's `rules` with the managed backendRefs weighted for
/// `canary_weight` percent; `None` when no rule names the stable or canary
/// Service. A managed rule keeps its other backendRefs, and the managed ones keep
/// their port and filters (taken from whichever of the two it had).
pub fn weighted_rules(rules: &Value, services: &Backends, canary_weight: i32) -> Option<Value> {
    let canary_weight = canary_weight.clamp(0, 100);
    let mut managed_any = false;
    let rules: Vec<Value> = rules
        .as_array()?
        .iter()
        .map(|rule| {
            let backends = rule
                .get("backendRefs")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let (managed, mut kept): (Vec<Value>, Vec<Value>) =
                backends.into_iter().partition(|b| services.manages(b));
            let Some(template) = managed.first() else {
                return rule.clone();
            };
            managed_any = true;
            let backend = |name: &str, weight: i32| {
                let mut backend = template.clone();
                if let Some(fields) = backend.as_object_mut() {
                    fields.insert("name".into(), json!(name));
                    fields.insert("weight".into(), json!(weight));
                    fields.entry("port").or_insert_with(|| json!(services.port));
                }
                backend
            };
            kept.push(backend(&services.stable, 100 - canary_weight));
            if canary_weight > 0 {
                kept.push(backend(&services.canary, canary_weight));
            }
            let mut rule = rule.clone();
            if let Some(fields) = rule.as_object_mut() {
                fields.insert("backendRefs".into(), Value::Array(kept));
            }
            rule
        })
        .collect();
    managed_any.then_some(Value::Array(rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Backends {
        Backends {
            stable: "chat-stable".into(),
            canary: "chat-canary".into(),
            port: 80,
        }
    }

    fn rules() -> Value {
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
             "backendRefs": [{"name": "chat-stable", "port": 8080}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/docs"}}],
             "backendRefs": [{"name": "docs", "port": 80}]}
        ])
    }

    #[test]
    fn a_step_splits_the_managed_rule_and_leaves_the_others() {
        let weighted = weighted_rules(&rules(), &services(), 25).unwrap();
        assert_eq!(
            weighted[0]["backendRefs"],
            json!([
                {"name": "chat-stable", "port": 8080, "weight": 75},
                {"name": "chat-canary", "port": 8080, "weight": 25}
            ])
        );
        assert_eq!(weighted[0]["matches"], rules()[0]["matches"]);
        assert_eq!(weighted[1], rules()[1]);
    }

    #[test]
    fn outside_a_canary_the_stable_service_takes_everything() {
        let during = weighted_rules(&rules(), &services(), 50).unwrap();
        let restored = weighted_rules(&during, &services(), 0).unwrap();
        assert_eq!(
            restored[0]["backendRefs"],
            json!([{"name": "chat-stable", "port": 8080, "weight": 100}])
        );
        // Idempotent: the same weights again change nothing.
        assert_eq!(weighted_rules(&restored, &services(), 0).unwrap(), restored);
    }

    #[test]
    fn other_backends_of_a_managed_rule_are_kept() {
        let rules = json!([{"backendRefs": [
            {"name": "mirror", "port": 80, "weight": 0},
            {"name": "chat-stable"}
        ]}]);
        let weighted = weighted_rules(&rules, &services(), 10).unwrap();
        assert_eq!(
            weighted[0]["backendRefs"],
            json!([
                {"name": "mirror", "port": 80, "weight": 0},
                {"name": "chat-stable", "port": 80, "weight": 90},
                {"name": "chat-canary", "port": 80, "weight": 10}
            ])
        );
    }

    #[test]
    fn a_route_that_names_neither_service_is_refused() {
        let rules = json!([{"backendRefs": [{"name": "chat", "port": 80}]}]);
        assert_eq!(weighted_rules(&rules, &services(), 10), None);
        // Same name in another namespace, or another kind, is not ours either.
        let rules = json!([{"backendRefs": [
            {"name": "chat-stable", "namespace": "other"},
            {"name": "chat-stable", "kind": "ServiceImport", "group": "multicluster.x-k8s.io"}
        ]}]);
        assert_eq!(weighted_rules(&rules, &services(), 10), None);
    }
}
