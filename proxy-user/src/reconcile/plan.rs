//! Turns the desired state into the frontends and backends this node must program.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use proxy_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, SVC_F_EXTERNAL, SVC_F_NODEPORT, SVC_KIND_CLUSTER_IP,
    SVC_KIND_EXTERNAL_IP, SVC_KIND_NODE_PORT,
};
use tracing::warn;

use crate::model::{DesiredState, Endpoint, Protocol, Service, ServicePort, ServiceType};

/// One address the datapath answers on. A NodePort has the unspecified address: it is served
/// on every node address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

/// A backend as the datapath sees it: one pod address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendPlan {
    /// `namespace/name:port-name`, for the CLI.
    pub name: String,
    /// `SVC_KIND_*`.
    pub kind: u8,
    /// `SVC_F_*`.
    pub flags: u16,
    /// The backends new connections are spread over, sorted.
    pub backends: Vec<BackendAddr>,
    /// ClientIP session affinity timeout in seconds; 0 when affinity is off.
    pub affinity_timeout: u32,
}

/// Everything this node's maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub frontends: BTreeMap<Frontend, FrontendPlan>,
    /// Backend flags (`BACKEND_F_*`) by address.
    pub backends: BTreeMap<BackendAddr, u8>,
}

impl Plan {
    /// Plans the frontends of every programmable service for the node `node_name`.
    pub fn build(desired: &DesiredState, node_name: &str) -> Self {
        let mut plan = Plan::default();
        for service in desired.services.values() {
            if !is_programmed(service) {
                continue;
            }
            for port in &service.ports {
                plan.add_port(service, port, node_name);
            }
        }
        plan
    }

    fn add_port(&mut self, service: &Service, port: &ServicePort, node_name: &str) {
        let chosen = choose_endpoints(&port.endpoints);
        let mut backends = BTreeSet::new();
        for endpoint in chosen {
            let addr = BackendAddr {
                addr: endpoint.addr,
                port: endpoint.port,
            };
            let mut flags = 0;
            if endpoint.node_name.as_deref() == Some(node_name) {
                flags |= BACKEND_F_LOCAL;
            }
            if endpoint.terminating {
                flags |= BACKEND_F_TERMINATING;
            }
            *self.backends.entry(addr).or_default() |= flags;
            backends.insert(addr);
        }
        let backends: Vec<BackendAddr> = backends.into_iter().collect();
        let name = if port.name.is_empty() {
            service.name.to_string()
        } else {
            format!("{}:{}", service.name, port.name)
        };

        let mut frontends = Vec::new();
        if let Some(ip) = service.cluster_ip {
            frontends.push((ip, port.port, SVC_KIND_CLUSTER_IP, SVC_F_EXTERNAL));
        }
        for &ip in &service.external_ips {
            frontends.push((ip, port.port, SVC_KIND_EXTERNAL_IP, SVC_F_EXTERNAL));
        }
        if matches!(
            service.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) && let Some(node_port) = port.node_port
        {
            frontends.push((
                Ipv4Addr::UNSPECIFIED,
                node_port,
                SVC_KIND_NODE_PORT,
                SVC_F_NODEPORT | SVC_F_EXTERNAL,
            ));
        }
        for (addr, frontend_port, kind, flags) in frontends {
            let frontend = Frontend {
                addr,
                port: frontend_port,
                protocol: port.protocol,
            };
            let planned = FrontendPlan {
                name: name.clone(),
                kind,
                flags,
                backends: backends.clone(),
                affinity_timeout: service.affinity_timeout.unwrap_or(0),
            };
            if let Some(other) = self.frontends.get(&frontend) {
                warn!(
                    frontend = ?frontend,
                    kept = %other.name,
                    ignored = %name,
                    "two services claim the same frontend; keeping the first"
                );
                continue;
            }
            self.frontends.insert(frontend, planned);
        }
    }
}

fn is_programmed(service: &Service) -> bool {
    service.skip_reason.is_none()
        && !matches!(
            service.service_type,
            ServiceType::ExternalName | ServiceType::Headless
        )
}

/// New connections go to ready endpoints; when none is ready, to serving-terminating ones
/// (KEP-1669), so a rolling update never leaves a service refusing while pods drain.
fn choose_endpoints(endpoints: &[Endpoint]) -> Vec<&Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceName;

    fn endpoint(last: u8, node: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: Ipv4Addr::new(198, 18, 1, last),
            port: 8080,
            node_name: Some(node.into()),
            ready,
            serving: ready || terminating,
            terminating,
        }
    }

    fn service(service_type: ServiceType, endpoints: Vec<Endpoint>) -> DesiredState {
        let name = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        let service = Service {
            name: name.clone(),
            service_type,
            cluster_ip: Some(Ipv4Addr::new(198, 19, 0, 10)),
            external_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                endpoints,
            }],
            skip_reason: None,
            affinity_timeout: None,
            external_traffic_policy: Default::default(),
            internal_traffic_policy: Default::default(),
            load_balancer_source_ranges: vec![],
        };
        DesiredState {
            services: [(name, service)].into(),
        }
    }

    #[test]
    fn cluster_ip_programs_only_the_cluster_ip() {
        let desired = service(
            ServiceType::ClusterIP,
            vec![endpoint(10, "node1", true, false)],
        );
        let plan = Plan::build(&desired, "node1");
        assert_eq!(plan.frontends.len(), 1);
        let (frontend, planned) = plan.frontends.iter().next().unwrap();
        assert_eq!(frontend.addr, Ipv4Addr::new(198, 19, 0, 10));
        assert_eq!(planned.name, "default/web:http");
        assert_eq!(
            plan.backends.values().copied().collect::<Vec<_>>(),
            [BACKEND_F_LOCAL]
        );
    }

    #[test]
    fn node_port_adds_a_wildcard_frontend_and_marks_remote_backends() {
        let desired = service(
            ServiceType::NodePort,
            vec![
                endpoint(10, "node1", true, false),
                endpoint(11, "node2", true, false),
            ],
        );
        let plan = Plan::build(&desired, "node2");
        let node_port = Frontend {
            addr: Ipv4Addr::UNSPECIFIED,
            port: 30080,
            protocol: Protocol::Tcp,
        };
        let planned = &plan.frontends[&node_port];
        assert_eq!(planned.flags & SVC_F_NODEPORT, SVC_F_NODEPORT);
        assert_eq!(planned.backends.len(), 2);
        let flags: Vec<u8> = plan.backends.values().copied().collect();
        assert_eq!(flags, [0, BACKEND_F_LOCAL]);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let desired = service(
            ServiceType::ClusterIP,
            vec![
                endpoint(10, "node1", true, false),
                endpoint(11, "node1", false, true),
            ],
        );
        let plan = Plan::build(&desired, "node1");
        assert_eq!(plan.frontends.values().next().unwrap().backends.len(), 1);

        let desired = service(
            ServiceType::ClusterIP,
            vec![
                endpoint(10, "node1", false, false),
                endpoint(11, "node1", false, true),
            ],
        );
        let plan = Plan::build(&desired, "node1");
        let backends = &plan.frontends.values().next().unwrap().backends;
        assert_eq!(backends.len(), 1);
        assert_eq!(backends[0].addr, Ipv4Addr::new(198, 18, 1, 11));
        assert_eq!(
            plan.backends.values().copied().collect::<Vec<_>>(),
            [BACKEND_F_LOCAL | BACKEND_F_TERMINATING]
        );
    }

    #[test]
    fn skipped_and_headless_services_are_not_programmed() {
        let mut desired = service(ServiceType::Headless, vec![]);
        assert!(Plan::build(&desired, "node1").frontends.is_empty());
        let service = desired.services.values_mut().next().unwrap();
        service.service_type = ServiceType::ClusterIP;
        service.skip_reason = Some("label service.kubernetes.io/service-proxy-name".into());
        assert!(Plan::build(&desired, "node1").frontends.is_empty());
    }

    #[test]
    fn no_endpoints_still_programs_the_frontend_to_refuse() {
        let desired = service(ServiceType::ClusterIP, vec![]);
        let plan = Plan::build(&desired, "node1");
        assert!(plan.frontends.values().next().unwrap().backends.is_empty());
    }
}
