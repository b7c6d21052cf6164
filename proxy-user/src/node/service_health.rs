//! The service health check server, like kube-proxy's: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort`, on each of the
//! node's NodePort addresses, tells load balancers whether this node has a local ready endpoint
//! and a healthy proxy (200) or not (503), so they only send traffic to nodes that can serve it
//! without a hop.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderName, StatusCode, header},
    response::IntoResponse,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    model::{DesiredState, Service, ServiceName, TrafficPolicy},
    node::{events::Events, healthz::Health, service_index::ServiceIndex},
    reconcile::local_ready_endpoints,
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

/// The index of the Services that have a health check.
pub fn index() -> ServiceIndex {
    ServiceIndex::new(has_health_check)
}

/// What `wanted` gives for the Services of an [`index`].
pub fn wanted_in(index: &ServiceIndex, node_name: &str) -> BTreeMap<u16, HealthCheck> {
    wanted_of(index.services(), node_name)
}

type Shared = Arc<Mutex<Option<HealthCheck>>>;

/// The running servers, one per port, each listening on every NodePort address.
pub struct HealthCheckServers {
    /// Where they listen: the node's NodePort addresses (kube-proxy binds its
    /// `--nodeport-addresses`).
    addrs: Vec<IpAddr>,
    health: Health,
    /// Where a port that cannot be bound is reported (cluster mode).
    events: Option<Events>,
    servers: BTreeMap<u16, (Shared, Vec<JoinHandle<()>>)>,
}

impl HealthCheckServers {
    /// Listens on `addrs` but IPv6 link-local ones (load balancers do not probe those, and
    /// binding them needs an interface scope).
    pub fn new(addrs: Vec<IpAddr>, health: Health, events: Option<Events>) -> Self {
        Self {
            addrs: Self::listen_addrs(addrs),
            health,
            events,
            servers: BTreeMap::new(),
        }
    }

    /// Listens on `addrs` from now on: every port is closed, to be bound again by the next
    /// `update` on the new addresses.
    pub fn set_addrs(&mut self, addrs: Vec<IpAddr>) {
        for (_, (_, tasks)) in std::mem::take(&mut self.servers) {
            tasks.iter().for_each(JoinHandle::abort);
        }
        self.addrs = Self::listen_addrs(addrs);
    }

    fn listen_addrs(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
        addrs
            .into_iter()
            .filter(|addr| !matches!(addr, IpAddr::V6(ip) if ip.is_unicast_link_local()))
            .collect()
    }

    /// Serves exactly `wanted`: new ports are bound, gone ones closed, counts updated. A port
    /// that cannot be bound on every address is logged, closed, and tried again on the next
    /// update.
    pub async fn update(&mut self, wanted: &BTreeMap<u16, HealthCheck>) {
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|port| !wanted.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            if let Some((_, tasks)) = self.servers.remove(&port) {
                tasks.iter().for_each(JoinHandle::abort);
                info!(port, "health check port closed");
            }
        }
        for (&port, check) in wanted {
            if let Some((shared, _)) = self.servers.get(&port) {
                *shared.lock().expect("not poisoned") = Some(check.clone());
                continue;
            }
            let shared: Shared = Arc::new(Mutex::new(Some(check.clone())));
            let app = Router::new().fallback(answer).with_state(Answering {
                check: shared.clone(),
                health: self.health.clone(),
            });
            let mut tasks = Vec::new();
            for &ip in &self.addrs {
                let addr = SocketAddr::from((ip, port));
                match crate::node::http_server::serve(addr, app.clone(), "health check").await {
                    Ok((_, task)) => tasks.push(task),
                    Err(err) => {
                        warn!(%addr, service = %check.service, %err, "cannot serve healthCheckNodePort");
                        if let Some(events) = &self.events {
                            events.health_check_failed(&check.service, port, &err.to_string());
                        }
                        tasks.iter().for_each(JoinHandle::abort);
                        tasks.clear();
                        break;
                    }
                }
            }
            if tasks.is_empty() {
                continue;
            }
            info!(port, addrs = ?self.addrs, service = %check.service, "serving healthCheckNodePort");
            self.servers.insert(port, (shared, tasks));
        }
    }
}

#[derive(Clone)]
struct Answering {
    check: Shared,
    health: Health,
}

/// kube-proxy's `X-Load-Balancing-Endpoint-Weight`: the local endpoint count.
static ENDPOINT_WEIGHT: HeaderName = HeaderName::from_static("x-load-balancing-endpoint-weight");

/// kube-proxy's answer, on any path: 200 with local endpoints and a healthy proxy, else 503;
/// its body byte for byte (tab-indented, no trailing newline).
async fn answer(State(answering): State<Answering>) -> impl IntoResponse {
    let check = answering.check.lock().expect("not poisoned").clone();
    let Some(check) = check else {
        // A closed service: kube-proxy writes nothing, which Go sends as an empty 200.
        return StatusCode::OK.into_response();
    };
    let proxy_healthy = answering.health.proxy_healthy();
    let status = if check.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (ENDPOINT_WEIGHT.clone(), check.local_endpoints.to_string()),
        ],
        body(&check, proxy_healthy),
    )
        .into_response()
}

fn body(check: &HealthCheck, proxy_healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\
         \"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        check.service.namespace, check.service.name, check.local_endpoints, proxy_healthy
    )
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
            hints: crate::model::Hints::default(),
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

    #[test]
    fn the_body_is_kube_proxys_byte_for_byte() {
        let check = HealthCheck {
            service: ServiceName {
                namespace: "default".into(),
                name: "lb".into(),
            },
            local_endpoints: 2,
        };
        assert_eq!(
            body(&check, true),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"lb\"\n\t},\n\t\
             \"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&body(&check, false)).unwrap();
        assert_eq!(parsed["serviceProxyHealthy"], false);
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
            let mut index = index();
            for step in 0..30 {
                let changes = planner.update(Arc::new(state.clone()));
                index.update(&state, &changes);
                let checks = wanted(&state, NODE);
                assert_eq!(wanted_in(&index, NODE), checks, "seed {seed} step {step}");
                checks_seen += checks.len();
                random.change(&mut state);
            }
        }
        assert!(checks_seen > 100, "only {checks_seen} health checks seen");
    }
}
