//! The wake loop: with `--gateway-metrics-url`, the gateway is read every
//! [`POLL`], and each ModelDeployment left at zero replicas that it holds
//! requests for is reconciled at once, not at its next pass (every
//! `--metrics-interval`). The reconcile scales it up ([`super::zero`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::runtime::reflector::ObjectRef;
use llmops_crds::ModelDeployment;

use super::monitor::gateway::Demands;
use crate::runtime::Context;

/// How often the gateway is read for deployments at zero.
pub const POLL: Duration = Duration::from_secs(1);

/// The reconciles the loop asks for, among the ModelDeployments of `namespace`
/// (every namespace: none). Without a gateway it asks for none.
pub fn triggers(
    ctx: Arc<Context>,
    namespace: Option<String>,
) -> BoxStream<'static, ObjectRef<ModelDeployment>> {
    let Some(gateway) = ctx.config.gateway_metrics.clone() else {
        return futures::stream::pending().boxed();
    };
    futures::stream::unfold((), move |()| {
        let (ctx, gateway, namespace) = (ctx.clone(), gateway.clone(), namespace.clone());
        async move {
            tokio::time::sleep(POLL).await;
            let timeout = ctx.config.monitoring.scrape_timeout;
            let due = match ctx.monitor.gateway.read(&gateway, timeout).await {
                Ok(demands) => waking(&demands, namespace.as_deref(), |ns, name| {
                    ctx.monitor.at_zero(ns, name)
                }),
                Err(_) => Vec::new(),
            };
            Some((futures::stream::iter(due), ()))
        }
    })
    .flatten()
    .boxed()
}

/// The deployments of `namespace` (all: none) that `at_zero` says have no
/// replicas and the gateway holds requests for.
pub fn waking(
    demands: &Demands,
    namespace: Option<&str>,
    at_zero: impl Fn(&str, &str) -> bool,
) -> Vec<ObjectRef<ModelDeployment>> {
    demands
        .iter()
        .filter(|((ns, name), demand)| {
            demand.waiting() > 0.0 && namespace.is_none_or(|n| n == ns) && at_zero(ns, name)
        })
        .map(|((ns, name), _)| ObjectRef::new(name).within(ns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::deployment::monitor::gateway::Demand;

    #[test]
    fn only_deployments_at_zero_with_requests_held_are_woken() {
        let demand = |queued: f64| Demand {
            admitted: 9.0,
            in_flight: queued,
            queued,
        };
        let demands = Demands::from([
            (("a".to_string(), "asleep".to_string()), demand(1.0)),
            (("a".to_string(), "quiet".to_string()), demand(0.0)),
            (("a".to_string(), "awake".to_string()), demand(3.0)),
            (("b".to_string(), "asleep".to_string()), demand(2.0)),
        ]);
        let at_zero = |_: &str, name: &str| name != "awake";
        let names = |refs: Vec<ObjectRef<ModelDeployment>>| {
            refs.iter()
                .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(""), r.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(waking(&demands, None, at_zero)),
            ["a/asleep", "b/asleep"]
        );
        assert_eq!(names(waking(&demands, Some("b"), at_zero)), ["b/asleep"]);
    }
}
