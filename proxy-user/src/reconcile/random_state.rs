//! Random desired states and random changes to them, drawn from small pools of names,
//! addresses and ports so services collide on frontends and share endpoints: what the tests of
//! incremental planning and applying run through. Services are of either family or both, so
//! every test of them covers both families' maps.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;
use rand::{
    Rng, SeedableRng,
    rngs::StdRng,
    seq::{IndexedMutRandom, IndexedRandom},
};

use super::plan::PlanNode;
use crate::model::{
    DesiredState, Endpoint, Hints, IpFamily, NodeState, Protocol, Service, ServiceName,
    ServicePort, ServiceType, TrafficPolicy, UnservedPort,
};

/// The node the states are planned for; endpoints are spread over it and two others.
pub const NODE: &str = "node1";

/// [`NODE`] with addresses of both families.
pub fn plan_node() -> PlanNode {
    PlanNode::dual_stack(NODE)
}

/// A seeded source of random services and changes.
pub struct RandomStates {
    rng: StdRng,
}

impl RandomStates {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A state of up to `services` random services.
    pub fn state(&mut self, services: usize) -> DesiredState {
        let mut state = DesiredState {
            // The node is in zone-a (hints for zone-a are for it).
            node: Some(NodeState {
                draining: false,
                labels: [(NodeState::ZONE_LABEL.to_owned(), "zone-a".to_owned())].into(),
            }),
            ..DesiredState::default()
        };
        for _ in 0..services {
            let service = self.service();
            state
                .services
                .insert(service.name.clone(), Arc::new(service));
        }
        state
    }

    /// Applies one to four random changes to `state`; now and then the node changes zone
    /// (which re-plans every Service).
    pub fn change(&mut self, state: &mut DesiredState) {
        for _ in 0..self.rng.random_range(1..=4) {
            self.change_one(state);
        }
        if self.rng.random_bool(0.05)
            && let Some(node) = &mut state.node
        {
            let zone = if node.zone() == Some("zone-a") {
                "zone-b"
            } else {
                "zone-a"
            };
            node.labels
                .insert(NodeState::ZONE_LABEL.to_owned(), zone.to_owned());
        }
    }

    fn change_one(&mut self, state: &mut DesiredState) {
        let names: Vec<ServiceName> = state.services.keys().cloned().collect();
        let Some(name) = names.choose(&mut self.rng).cloned() else {
            let service = self.service();
            state
                .services
                .insert(service.name.clone(), Arc::new(service));
            return;
        };
        let rng = &mut self.rng;
        let roll = rng.random_range(0..100);
        if roll < 15 {
            let service = self.service();
            state
                .services
                .insert(service.name.clone(), Arc::new(service));
            return;
        }
        if roll < 25 {
            state.services.remove(&name);
            return;
        }
        // A changed service is a new copy; the others stay shared with earlier states.
        let service = Arc::make_mut(state.services.get_mut(&name).expect("listed"));
        match roll {
            // Endpoints come, go, move between nodes, become ready or start terminating.
            25..55 => {
                let Some(port) = service.ports.choose_mut(rng) else {
                    return;
                };
                match rng.random_range(0..4) {
                    0 => port.endpoints.push(endpoint(rng)),
                    1 if !port.endpoints.is_empty() => {
                        let at = rng.random_range(0..port.endpoints.len());
                        port.endpoints.remove(at);
                    }
                    2 if !port.endpoints.is_empty() => {
                        let at = rng.random_range(0..port.endpoints.len());
                        port.endpoints[at] = endpoint(rng);
                    }
                    _ => {
                        if let Some(endpoint) = port.endpoints.choose_mut(rng) {
                            endpoint.node_name = node(rng);
                            endpoint.ready = rng.random_bool(0.6);
                            endpoint.terminating = !endpoint.ready && rng.random_bool(0.5);
                            endpoint.serving = endpoint.ready || endpoint.terminating;
                        }
                    }
                }
            }
            55..65 => service.service_type = service_type(rng),
            65..72 => service.affinity_timeout = affinity(rng),
            72..79 => service.external_traffic_policy = policy(rng),
            79..85 => service.internal_traffic_policy = policy(rng),
            85..90 => {
                service.ip_families = families(rng);
                service.cluster_ips = cluster_ips(rng, &service.ip_families);
            }
            90..94 => service.external_ips = ips(rng, 1, 3),
            94..97 => {
                service.load_balancer_ips = ips(rng, 2, 4);
                service.load_balancer_source_ranges = ranges(rng);
            }
            _ => {
                service.skip_reason = rng
                    .random_bool(0.5)
                    .then(|| "label service.kubernetes.io/service-proxy-name".into());
            }
        }
    }

    fn service(&mut self) -> Service {
        let rng = &mut self.rng;
        let name = ServiceName {
            namespace: ["a", "b"].choose(rng).expect("non-empty").to_string(),
            name: format!("s{}", rng.random_range(0..8)),
        };
        let ports = (0..rng.random_range(0..=2))
            .map(|n| ServicePort {
                name: if rng.random_bool(0.5) {
                    String::new()
                } else {
                    format!("p{n}")
                },
                protocol: if rng.random_bool(0.8) {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
                port: *[80, 443].choose(rng).expect("non-empty"),
                node_port: rng.random_bool(0.7).then(|| 30080 + rng.random_range(0..3)),
                endpoints: (0..rng.random_range(0..=4))
                    .map(|_| endpoint(rng))
                    .collect(),
            })
            .collect();
        let ip_families = families(rng);
        Service {
            name,
            service_type: service_type(rng),
            cluster_ips: cluster_ips(rng, &ip_families),
            ip_families,
            external_ips: ips(rng, 1, 3),
            load_balancer_ips: ips(rng, 2, 4),
            ports,
            unserved_ports: if rng.random_bool(0.1) {
                vec![UnservedPort {
                    name: "signalling".into(),
                    protocol: "SCTP".into(),
                    port: 9000,
                    reason: "SCTP is not served".into(),
                }]
            } else {
                Vec::new()
            },
            skip_reason: rng
                .random_bool(0.05)
                .then(|| "label service.kubernetes.io/service-proxy-name".into()),
            affinity_timeout: affinity(rng),
            external_traffic_policy: policy(rng),
            internal_traffic_policy: policy(rng),
            load_balancer_source_ranges: ranges(rng),
            health_check_node_port: rng.random_bool(0.3).then_some(32000),
        }
    }
}

fn endpoint(rng: &mut StdRng) -> Endpoint {
    let ready = rng.random_bool(0.7);
    let terminating = !ready && rng.random_bool(0.5);
    Endpoint {
        addr: pod_addr(rng),
        port: 8080 + rng.random_range(0..2),
        node_name: node(rng),
        ready,
        serving: ready || terminating,
        terminating,
        hints: hints(rng),
    }
}

/// Topology hints, often none, sometimes for this node's zone or node, sometimes elsewhere.
fn hints(rng: &mut StdRng) -> Hints {
    if rng.random_bool(0.5) {
        return Hints::default();
    }
    let zone = *["zone-a", "zone-b"].choose(rng).expect("non-empty");
    Hints {
        for_zones: vec![zone.to_owned()],
        for_nodes: if rng.random_bool(0.3) {
            vec![node(rng).unwrap_or_else(|| NODE.to_owned())]
        } else {
            Vec::new()
        },
    }
}

fn node(rng: &mut StdRng) -> Option<String> {
    [Some(NODE), Some("node2"), None]
        .choose(rng)
        .expect("non-empty")
        .map(str::to_owned)
}

fn service_type(rng: &mut StdRng) -> ServiceType {
    *[
        ServiceType::ClusterIP,
        ServiceType::ClusterIP,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
        ServiceType::ExternalName,
        ServiceType::Headless,
    ]
    .choose(rng)
    .expect("non-empty")
}

/// One of 198.18.1.1-8 or `fd00:18:1::1-8` (IPv4 more often).
fn pod_addr(rng: &mut StdRng) -> IpAddr {
    let last = rng.random_range(1..=8);
    if rng.random_bool(0.6) {
        Ipv4Addr::new(198, 18, 1, last).into()
    } else {
        Ipv6Addr::new(0xfd00, 18, 1, 0, 0, 0, 0, last.into()).into()
    }
}

/// A Service's families: single-stack of either, or dual-stack of either primary.
fn families(rng: &mut StdRng) -> Vec<IpFamily> {
    use IpFamily::{V4, V6};
    [&[V4][..], &[V4], &[V6], &[V4, V6], &[V6, V4]]
        .choose(rng)
        .expect("non-empty")
        .to_vec()
}

/// One cluster IP per family (usually: an allocation may have failed).
fn cluster_ips(rng: &mut StdRng, families: &[IpFamily]) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for family in families {
        if !rng.random_bool(0.9) {
            continue;
        }
        let last = rng.random_range(1..=6);
        ips.push(match family {
            IpFamily::V4 => Ipv4Addr::new(198, 19, 0, last).into(),
            IpFamily::V6 => Ipv6Addr::new(0xfd00, 19, 0, 0, 0, 0, 0, last.into()).into(),
        });
    }
    ips
}

/// Distinct addresses from 198.18.9.first..=last and `fd00:18:9::first..=last`, often
/// none.
fn ips(rng: &mut StdRng, first: u8, last: u8) -> Vec<IpAddr> {
    if rng.random_bool(0.6) {
        return Vec::new();
    }
    let v4 = (first..=last).map(|last| IpAddr::from(Ipv4Addr::new(198, 18, 9, last)));
    let v6 = (first..=last)
        .map(|last| IpAddr::from(Ipv6Addr::new(0xfd00, 18, 9, 0, 0, 0, 0, last.into())));
    let candidates: Vec<IpAddr> = v4.chain(v6).collect();
    candidates
        .into_iter()
        .filter(|_| rng.random_bool(0.3))
        .collect()
}

fn ranges(rng: &mut StdRng) -> Vec<IpNet> {
    [
        "198.18.0.0/24",
        "198.18.4.0/22",
        "fd00:18::/64",
        "fd00:18:4::/48",
    ]
    .into_iter()
    .filter(|_| rng.random_bool(0.3))
    .map(|net| net.parse().expect("valid"))
    .collect()
}

fn affinity(rng: &mut StdRng) -> Option<u32> {
    rng.random_bool(0.3).then(|| rng.random_range(1..=10_800))
}

fn policy(rng: &mut StdRng) -> TrafficPolicy {
    if rng.random_bool(0.7) {
        TrafficPolicy::Cluster
    } else {
        TrafficPolicy::Local
    }
}
