//! kube-proxy's `sync_proxy_rules_no_local_endpoints_total`: per traffic policy and family,
//! the Services with a Local policy that have endpoints, but none on this node, so that kind of
//! their traffic is dropped here.

use crate::{
    model::{Endpoint, IpFamily, Service, ServiceType, TrafficPolicy},
    node::service_index::ServiceIndex,
    reconcile::choose_endpoints,
};

/// The index of the Services with a Local traffic policy.
pub fn index() -> ServiceIndex {
    ServiceIndex::new(|service| {
        service.skip_reason.is_none()
            && (service.internal_traffic_policy == TrafficPolicy::Local
                || service.external_traffic_policy == TrafficPolicy::Local)
    })
}

/// How many Services of `index` have no local endpoint of `family` for their internal
/// (`internalTrafficPolicy: Local`) and their external (`externalTrafficPolicy: Local`)
/// traffic, as kube-proxy counts them: only Services that have endpoints elsewhere.
pub fn count(index: &ServiceIndex, node_name: &str, family: IpFamily) -> (i64, i64) {
    let (mut internal, mut external) = (0, 0);
    for service in index.services() {
        if !service.ip_families.contains(&family) {
            continue;
        }
        let (anywhere, local) = usable_endpoints(service, node_name, family);
        if anywhere == 0 || local > 0 {
            continue;
        }
        if service.internal_traffic_policy == TrafficPolicy::Local {
            internal += 1;
        }
        if service.external_traffic_policy == TrafficPolicy::Local
            && externally_accessible(service, family)
        {
            external += 1;
        }
    }
    (internal, external)
}

/// Endpoints of `family` that take new connections (`choose_endpoints`: ready; serving-
/// terminating when none is ready), everywhere and on `node_name`.
fn usable_endpoints(service: &Service, node_name: &str, family: IpFamily) -> (usize, usize) {
    let endpoints: Vec<Endpoint> = service
        .ports
        .iter()
        .flat_map(|port| &port.endpoints)
        .filter(|e| IpFamily::of(e.addr) == family)
        .cloned()
        .collect();
    let usable = choose_endpoints(&endpoints);
    let local = usable
        .iter()
        .filter(|e| e.node_name.as_deref() == Some(node_name))
        .count();
    (usable.len(), local)
}

/// kube-proxy's `ExternallyAccessible`, in one family: a NodePort, or a LoadBalancer or
/// external IP of the family.
fn externally_accessible(service: &Service, family: IpFamily) -> bool {
    let of_family = |ips: &[std::net::IpAddr]| ips.iter().any(|ip| IpFamily::of(*ip) == family);
    matches!(
        service.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) && service.ports.iter().any(|port| port.node_port.is_some())
        || of_family(&service.load_balancer_ips)
        || of_family(&service.external_ips)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::{
        model::{DesiredState, Protocol, ServiceName, ServicePort},
        reconcile::PlanChanges,
    };

    fn service(name: &str, itp: TrafficPolicy, etp: TrafficPolicy, nodes: &[&str]) -> Service {
        let endpoints = nodes
            .iter()
            .zip(10..)
            .map(|(node, last)| Endpoint {
                addr: Ipv4Addr::new(198, 18, 1, last).into(),
                port: 8080,
                node_name: Some((*node).into()),
                ready: true,
                serving: true,
                terminating: false,
                hints: crate::model::Hints::default(),
            })
            .collect();
        let mut service = Service::rejected(
            ServiceName {
                namespace: "default".into(),
                name: name.into(),
            },
            ServiceType::NodePort,
            "",
        );
        service.skip_reason = None;
        service.ip_families = vec![IpFamily::V4];
        service.cluster_ips = vec![Ipv4Addr::new(198, 19, 0, 1).into()];
        service.internal_traffic_policy = itp;
        service.external_traffic_policy = etp;
        service.ports = vec![ServicePort {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
            endpoints,
        }];
        service
    }

    #[test]
    fn counts_local_policy_services_with_endpoints_elsewhere_only() {
        use TrafficPolicy::{Cluster, Local};
        let services = [
            service("both-remote", Local, Local, &["node2"]),
            service("internal-local-here", Local, Cluster, &["node1", "node2"]),
            service("external-remote", Cluster, Local, &["node2"]),
            service("none-at-all", Local, Local, &[]),
            service("cluster", Cluster, Cluster, &["node2"]),
        ];
        let state = DesiredState {
            services: services
                .into_iter()
                .map(|s| (s.name.clone(), Arc::new(s)))
                .collect(),
            ..DesiredState::default()
        };
        let mut index = index();
        index.update(&state, &PlanChanges::everything());
        assert_eq!(count(&index, "node1", IpFamily::V4), (1, 2));
        assert_eq!(count(&index, "node2", IpFamily::V4), (0, 0));
        assert_eq!(count(&index, "node1", IpFamily::V6), (0, 0));
    }
}
