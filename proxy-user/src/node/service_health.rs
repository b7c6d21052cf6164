//! The service health check server, like kube-proxy's: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` tells load
//! balancers whether this node has a local ready endpoint (200) or not (503), so they only
//! send traffic to nodes that can serve it without a hop.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    model::{DesiredState, Service, ServiceName, TrafficPolicy},
    reconcile::{PlanChanges, local_ready_endpoints},
};

/// What one health check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ServiceName,
    pub local_endpoints: usize,
}

/// The health check of every programmed LoadBalancer Service with `externalTrafficPolicy:
/// Local` and a health check port, by port.
pub fn wanted(desired: &DesiredState, node_name: &str) -> BTreeMap<u16, HealthCheck> {
    wanted_of(desired.services.values(), node_name)
}

/// `wanted` over `services`, in name order: the first Service claiming a port gets it.
fn wanted_of<'a>(
    services: impl Iterator<Item = &'a Arc<Service>>,
    node_name: &str,
) -> BTreeMap<u16, HealthCheck> {
    let mut checks = BTreeMap::new();
    for service in services.filter(|service| has_health_check(service)) {
        let Some(port) = service.health_check_node_port else {
            continue;
        };
        checks.entry(port).or_insert_with(|| HealthCheck {
            service: service.name.clone(),
            local_endpoints: local_ready_endpoints(service, node_name),
        });
    }
    checks
}

fn has_health_check(service: &Service) -> bool {
    service.health_check_node_port.is_some()
        && service.skip_reason.is_none()
        && service.external_traffic_policy == TrafficPolicy::Local
}

/// The Services that have a health check, kept up to date from the planner's changes, so a
/// sync looks at those few instead of every Service.
#[derive(Debug, Default)]
pub struct HealthCheckIndex {
    services: BTreeMap<ServiceName, Arc<Service>>,
}

impl HealthCheckIndex {
    /// Takes in `state`, which differs from the last one only in `changes.services` (unless
    /// `changes.everything`).
    pub fn update(&mut self, state: &DesiredState, changes: &PlanChanges) {
        if changes.everything {
            self.services = state
                .services
                .iter()
                .filter(|(_, service)| has_health_check(service))
                .map(|(name, service)| (name.clone(), service.clone()))
                .collect();
            return;
        }
        for name in &changes.services {
            match state.services.get(name) {
                Some(service) if has_health_check(service) => {
                    self.services.insert(name.clone(), service.clone());
                }
                _ => {
                    self.services.remove(name);
                }
            }
        }
    }

    /// What `wanted` gives for the last state.
    pub fn wanted(&self, node_name: &str) -> BTreeMap<u16, HealthCheck> {
        wanted_of(self.services.values(), node_name)
    }
}

type Shared = Arc<Mutex<Option<HealthCheck>>>;

/// The running servers, one per port.
#[derive(Default)]
pub struct HealthCheckServers {
    servers: BTreeMap<u16, (Shared, JoinHandle<()>)>,
}

impl HealthCheckServers {
    /// Serves exactly `wanted`: new ports are bound, gone ones closed, counts updated. A port
    /// that cannot be bound is logged and tried again on the next update.
    pub async fn update(&mut self, wanted: &BTreeMap<u16, HealthCheck>) {
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|port| !wanted.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            if let Some((_, task)) = self.servers.remove(&port) {
                task.abort();
                info!(port, "health check port closed");
            }
        }
        for (&port, check) in wanted {
            if let Some((shared, _)) = self.servers.get(&port) {
                *shared.lock().expect("not poisoned") = Some(check.clone());
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let shared: Shared = Arc::new(Mutex::new(Some(check.clone())));
            let app = Router::new().fallback(answer).with_state(shared.clone());
            let task = match crate::node::http_server::serve(addr, app, "health check").await {
                Ok((_, task)) => task,
                Err(err) => {
                    warn!(%addr, service = %check.service, %err, "cannot serve healthCheckNodePort");
                    continue;
                }
            };
            info!(port, service = %check.service, "serving healthCheckNodePort");
            self.servers.insert(port, (shared, task));
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    service: ServiceRef,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceRef {
    namespace: String,
    name: String,
}

/// kube-proxy's answer, on any path: 200 with local endpoints, 503 without.
async fn answer(State(shared): State<Shared>) -> impl IntoResponse {
    let check = shared.lock().expect("not poisoned").clone();
    let Some(check) = check else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no service\n").into_response();
    };
    let status = if check.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Body {
        service: ServiceRef {
            namespace: check.service.namespace,
            name: check.service.name,
        },
        local_endpoints: check.local_endpoints,
        service_proxy_healthy: true,
    };
    (
        status,
        [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Endpoint, Protocol, Service, ServicePort, ServiceType};

    fn endpoint(last: u8, node: &str, ready: bool) -> Endpoint {
        Endpoint {
            addr: Ipv4Addr::new(198, 18, 1, last).into(),
            port: 8080,
            node_name: Some(node.into()),
            ready,
            serving: ready,
            terminating: false,
        }
    }

    #[test]
    fn counts_local_ready_endpoints_of_local_policy_load_balancers() {
        let name = ServiceName {
            namespace: "default".into(),
            name: "lb".into(),
        };
        let port = |protocol| ServicePort {
            name: String::new(),
            protocol,
            port: 80,
            node_port: Some(30080),
            endpoints: vec![
                endpoint(10, "node1", true),
                endpoint(11, "node1", false),
                endpoint(12, "node2", true),
            ],
        };
        let service = Service {
            name: name.clone(),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec![Ipv4Addr::new(198, 19, 0, 10).into()],
            ip_families: vec![crate::model::IpFamily::V4],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![port(Protocol::Tcp), port(Protocol::Udp)],
            unserved_ports: Vec::new(),
            skip_reason: None,
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Local,
            internal_traffic_policy: TrafficPolicy::Cluster,
            load_balancer_source_ranges: vec![],
            health_check_node_port: Some(30999),
        };
        let mut desired = DesiredState {
            services: [(name.clone(), Arc::new(service))].into(),
            ..DesiredState::default()
        };
        let checks = wanted(&desired, "node1");
        assert_eq!(
            checks[&30999].local_endpoints, 1,
            "one address, ready, on node1"
        );
        assert_eq!(wanted(&desired, "node3")[&30999].local_endpoints, 0);

        // Dual-stack: the same pod by its IPv6 address is still one pod, and a second pod
        // with only an IPv6 endpoint ready makes two (kube-proxy counts per family).
        let service = Arc::make_mut(desired.services.get_mut(&name).expect("present"));
        let endpoint6 = |last: u16| Endpoint {
            addr: std::net::Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, last).into(),
            ..endpoint(0, "node1", true)
        };
        service.ports[0].endpoints.push(endpoint6(10));
        assert_eq!(wanted(&desired, "node1")[&30999].local_endpoints, 1);
        let service = Arc::make_mut(desired.services.get_mut(&name).expect("present"));
        service.ports[1].endpoints.push(endpoint6(11));
        assert_eq!(wanted(&desired, "node1")[&30999].local_endpoints, 2);

        let service = Arc::make_mut(desired.services.get_mut(&name).expect("present"));
        service.external_traffic_policy = TrafficPolicy::Cluster;
        assert!(wanted(&desired, "node1").is_empty());
    }

    /// Kept up to date from the planner's changes, the index wants what a look at every
    /// Service wants.
    #[test]
    fn the_index_wants_what_the_whole_state_wants() {
        use crate::reconcile::{
            Planner,
            random_state::{NODE, RandomStates, plan_node},
        };
        let mut checks_seen = 0;
        for seed in 0..100 {
            let mut random = RandomStates::new(seed);
            let mut state = random.state(10);
            let mut planner = Planner::new(plan_node());
            let mut index = HealthCheckIndex::default();
            for step in 0..30 {
                let changes = planner.update(Arc::new(state.clone()));
                index.update(&state, &changes);
                let checks = wanted(&state, NODE);
                assert_eq!(index.wanted(NODE), checks, "seed {seed} step {step}");
                checks_seen += checks.len();
                random.change(&mut state);
            }
        }
        assert!(checks_seen > 100, "only {checks_seen} health checks seen");
    }
}
