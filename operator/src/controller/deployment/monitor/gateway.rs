//! The gateway's demand on each ModelDeployment: requests admitted, in flight
//! and queued for a ready pod, summed over the gateway's replicas. The
//! autoscaler reads it to keep a deployment scaled to zero while nobody asks
//! for it and to wake it on the first request ([`super::super::zero`]).
//!
//! `--gateway-metrics-url` names the replicas: every address its host resolves
//! to is one replica, read at the URL's port and path (the chart's headless
//! Service `<release>-gateway-pods` resolves to each ready gateway pod, as
//! Prometheus' DNS discovery reads it). A replica that does not answer makes
//! the whole reading fail: a sum without it could hide a queued request, and
//! nothing is scaled to zero on a guess. Readings are kept for [`FRESH`], so
//! the wake loop and the reconciles share one scrape a second.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::exposition;

/// How long one reading of the gateway is used before it is read again.
pub const FRESH: Duration = Duration::from_secs(1);

/// The series the gateway exports per ModelDeployment (`gateway/src/metrics.rs`).
pub mod series {
    pub const ADMITTED: &str = "llmops_gateway_deployment_requests_total";
    pub const IN_FLIGHT: &str = "llmops_gateway_deployment_in_flight_requests";
    pub const QUEUED: &str = "llmops_gateway_deployment_queued_requests";
}

/// One ModelDeployment's demand at the gateway, summed over its replicas.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// Requests admitted since the replicas started (a counter).
    pub admitted: f64,
    /// Requests admitted and not finished, queued ones included.
    pub in_flight: f64,
    /// Requests waiting for a ready pod.
    pub queued: f64,
}

impl Demand {
    /// Requests the deployment has to answer now.
    pub fn waiting(&self) -> f64 {
        self.in_flight.max(self.queued)
    }
}

/// Every ModelDeployment's demand, by (namespace, name).
pub type Demands = BTreeMap<(String, String), Demand>;

/// Where the gateway's metrics are read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayMetrics {
    /// The host, resolved on every reading (replicas come and go).
    pub host: String,
    pub port: u16,
    /// Path and query, e.g. `/metrics`.
    pub path: String,
}

impl GatewayMetrics {
    /// An `http://host[:port]/path` URL (port 80 when none is given).
    pub fn parse(url: &str) -> Result<GatewayMetrics, String> {
        let bad = |why: &str| {
            format!(
                "{url:?} is not an http:// URL of the gateway's /metrics ({why}), e.g. http://llmops-gateway-pods.llmops-system.svc:8080/metrics"
            )
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is read"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].to_string()),
            None => (rest, "/metrics".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 address without a port is all colons inside brackets.
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(GatewayMetrics {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The replicas: every address the host resolves to.
    async fn replicas(&self) -> Result<Vec<SocketAddr>, String> {
        let mut addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("resolving {}: {e}", self.host))?
                .collect();
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            return Err(format!(
                "{} resolves to no address (no gateway replica is ready)",
                self.host
            ));
        }
        Ok(addresses)
    }

    /// Reads every replica and sums their demands.
    pub async fn read(&self, timeout: Duration) -> Result<Demands, String> {
        let replicas = self.replicas().await?;
        let client = super::http(timeout);
        let texts = join_all(replicas.iter().map(|addr| async move {
            let url = format!("http://{addr}{}", self.path);
            let text = client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("gateway replica {addr}: {e}"))?
                .text()
                .await
                .map_err(|e| format!("gateway replica {addr}: {e}"))?;
            Ok::<String, String>(text)
        }))
        .await;
        let mut total = Demands::new();
        for text in texts {
            let text = text?;
            let demands = demands(&text).map_err(|e| format!("the gateway's metrics: {e}"))?;
            for (key, demand) in demands {
                let sum = total.entry(key).or_default();
                sum.admitted += demand.admitted;
                sum.in_flight += demand.in_flight;
                sum.queued += demand.queued;
            }
        }
        Ok(total)
    }
}

/// The demands one gateway replica's metrics text reports.
pub fn demands(text: &str) -> Result<Demands, exposition::ParseError> {
    let mut out = Demands::new();
    for sample in exposition::samples(text)? {
        let field: fn(&mut Demand) -> &mut f64 = match sample.name.as_str() {
            series::ADMITTED => |d| &mut d.admitted,
            series::IN_FLIGHT => |d| &mut d.in_flight,
            series::QUEUED => |d| &mut d.queued,
            _ => continue,
        };
        let (Some(namespace), Some(name)) = (
            sample.labels.get("namespace"),
            sample.labels.get("modeldeployment"),
        ) else {
            continue;
        };
        if sample.value.is_finite() && sample.value >= 0.0 {
            *field(out.entry((namespace.clone(), name.clone())).or_default()) += sample.value;
        }
    }
    Ok(out)
}

/// A reading of the gateway: every deployment's demand, or why there is none.
pub type Reading = Result<Arc<Demands>, String>;

/// The last reading and when it was taken, shared by every caller for [`FRESH`].
#[derive(Debug, Default)]
pub struct Cache {
    last: tokio::sync::Mutex<Option<(f64, Reading)>>,
}

impl Cache {
    /// The gateway's demands, read again when the last reading is older than
    /// [`FRESH`]. Callers at the same time wait for one reading.
    pub async fn read(&self, gateway: &GatewayMetrics, timeout: Duration) -> Reading {
        let mut last = self.last.lock().await;
        let now = super::now();
        if let Some((at, reading)) = last.as_ref()
            && now - at < FRESH.as_secs_f64()
        {
            return reading.clone();
        }
        let reading = gateway.read(timeout).await.map(Arc::new);
        if let Err(e) = &reading {
            tracing::debug!(error = %e, "the gateway's demand cannot be read");
        }
        *last = Some((super::now(), reading.clone()));
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_a_port_and_a_path() {
        let parsed = GatewayMetrics::parse("http://gw-pods.llmops.svc:8080/metrics").unwrap();
        assert_eq!(
            parsed,
            GatewayMetrics {
                host: "gw-pods.llmops.svc".into(),
                port: 8080,
                path: "/metrics".into()
            }
        );
        let loopback = GatewayMetrics::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((loopback.port, loopback.path.as_str()), (9000, "/metrics"));
        let v6 = GatewayMetrics::parse("http://[::1]:8080/metrics").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8080));
        assert_eq!(GatewayMetrics::parse("http://gw/m").unwrap().port, 80);
        for bad in [
            "https://gw:8080/metrics",
            "gw:8080",
            "http://:8080/",
            "http://gw:x/",
        ] {
            let err = GatewayMetrics::parse(bad).unwrap_err();
            assert!(err.contains("gateway's /metrics"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_demand_of_each_deployment_is_read_from_its_series() {
        let text = r#"# HELP llmops_gateway_deployment_requests Requests admitted per ModelDeployment.
# TYPE llmops_gateway_deployment_requests counter
llmops_gateway_deployment_requests_total{namespace="team-a",modeldeployment="chat"} 12
llmops_gateway_deployment_requests_total{namespace="team-b",modeldeployment="chat"} 3
# TYPE llmops_gateway_deployment_in_flight_requests gauge
llmops_gateway_deployment_in_flight_requests{namespace="team-a",modeldeployment="chat"} 2
# TYPE llmops_gateway_deployment_queued_requests gauge
llmops_gateway_deployment_queued_requests{namespace="team-a",modeldeployment="chat"} 1
llmops_gateway_queued_requests{model="chat"} 7
llmops_gateway_deployment_queued_requests{namespace="team-a"} 9
# EOF
"#;
        let read = demands(text).unwrap();
        assert_eq!(
            read[&("team-a".to_string(), "chat".to_string())],
            Demand {
                admitted: 12.0,
                in_flight: 2.0,
                queued: 1.0
            }
        );
        assert_eq!(
            read[&("team-b".to_string(), "chat".to_string())],
            Demand {
                admitted: 3.0,
                ..Demand::default()
            }
        );
        // Per-model series and samples without both labels are not demands.
        assert_eq!(read.len(), 2);
        assert!(demands("llmops_gateway_deployment_queued_requests{namespace=\"a\" 1").is_err());
    }

    #[tokio::test]
    async fn every_replica_is_read_and_one_that_does_not_answer_fails_the_reading() {
        let text =
            "llmops_gateway_deployment_queued_requests{namespace=\"a\",modeldeployment=\"m\"} 2\n";
        let app = serve_text(text).await;
        let gateway = GatewayMetrics::parse(&format!("http://{app}/metrics")).unwrap();
        let read = gateway.read(Duration::from_secs(2)).await.unwrap();
        assert_eq!(read[&("a".to_string(), "m".to_string())].queued, 2.0);
        // Nothing listens on the port any more: no reading, and it says where.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let gone = GatewayMetrics::parse(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
        let err = gone.read(Duration::from_secs(2)).await.unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }

    /// A loopback HTTP server answering every request with `body`.
    async fn serve_text(body: &'static str) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }
}
