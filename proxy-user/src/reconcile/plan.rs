//! Turns the desired state into the frontends and backends this node must program.
//!
//! Traffic policies are programmed as lookup scopes (the Cilium way): the default entry of a
//! frontend serves every path, and where in-cluster clients must get a different backend set
//! (an external frontend with `externalTrafficPolicy: Local`) the default entry carries
//! `SVC_F_TWO_SCOPES` and an internal-scope entry holds the set the socket path uses.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    net::IpAddr,
};

use ipnet::IpNet;
use proxy_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, POLICY_F_EXTERNAL_LOCAL, POLICY_F_INTERNAL_LOCAL,
    SVC_F_EXTERNAL, SVC_F_NO_LOCAL_ENDPOINT, SVC_F_NODEPORT, SVC_F_SOURCE_RANGES, SVC_F_TWO_SCOPES,
    SVC_KIND_CLUSTER_IP, SVC_KIND_EXTERNAL_IP, SVC_KIND_LOAD_BALANCER, SVC_KIND_NODE_PORT,
    SVC_SCOPE_DEFAULT, SVC_SCOPE_INTERNAL, SVC_TYPE_CLUSTER_IP, SVC_TYPE_EXTERNAL_NAME,
    SVC_TYPE_HEADLESS, SVC_TYPE_LOAD_BALANCER, SVC_TYPE_NODE_PORT,
};
use tracing::warn;

use crate::model::{
    DesiredState, Endpoint, IpFamily, Protocol, Service, ServicePort, ServiceType, TrafficPolicy,
};

/// The node a plan is for: its name (endpoints there are local) and the IP families it has an
/// address of. As kube-proxy, which runs one proxier per family the node has, a Service's
/// addresses of another family are not programmed (and listed as skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanNode {
    pub name: String,
    /// Sorted, distinct.
    pub families: Vec<IpFamily>,
    /// `topology.kubernetes.io/zone` of its Node, which topology hints are matched against;
    /// taken from each desired state ([`PlanNode::for_state`]).
    pub zone: Option<String>,
}

impl PlanNode {
    pub fn new(name: &str, families: impl IntoIterator<Item = IpFamily>) -> Self {
        let mut families: Vec<IpFamily> = families.into_iter().collect();
        families.sort_unstable();
        families.dedup();
        Self {
            name: name.to_owned(),
            families,
            zone: None,
        }
    }

    /// This node with the zone `state`'s Node object gives it.
    #[must_use]
    pub fn for_state(&self, state: &DesiredState) -> Self {
        Self {
            zone: state
                .node
                .as_ref()
                .and_then(|node| node.zone())
                .map(str::to_owned),
            ..self.clone()
        }
    }

    /// A node with addresses of both families.
    pub fn dual_stack(name: &str) -> Self {
        Self::new(name, [IpFamily::V4, IpFamily::V6])
    }

    pub fn has(&self, family: IpFamily) -> bool {
        self.families.contains(&family)
    }
}

/// One address the datapath answers on, in one lookup scope. A NodePort has the unspecified
/// address of its family: it is served on every node address of that family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// `SVC_SCOPE_*`.
    pub scope: u8,
}

/// A backend as the datapath sees it: one pod address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub addr: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendPlan {
    /// `namespace/name:port-name`, for the CLI.
    pub name: String,
    /// `SVC_KIND_*`.
    pub kind: u8,
    /// `SVC_TYPE_*` of the service, for the CLI.
    pub svc_type: u8,
    /// `POLICY_F_*` of the service, for the CLI.
    pub policy: u8,
    /// The service's health check NodePort, for the CLI; 0 when none.
    pub health_check_port: u16,
    /// `SVC_F_*`.
    pub flags: u16,
    /// The backends new connections are spread over, sorted.
    pub backends: Vec<BackendAddr>,
    /// UDP only: the backends of the port's serving endpoints (ready, or terminating and still
    /// serving), sorted. Flows to one of these stay when it leaves `backends`; flows to a
    /// backend that leaves both are removed, as kube-proxy deletes their conntrack entries.
    pub serving: Vec<BackendAddr>,
    /// ClientIP session affinity timeout in seconds; 0 when affinity is off.
    pub affinity_timeout: u32,
    /// `loadBalancerSourceRanges` enforced on this frontend (with `SVC_F_SOURCE_RANGES`): those
    /// of the frontend's family.
    pub source_ranges: Vec<IpNet>,
}

/// A service that is listed but not programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedPlan {
    /// `SVC_TYPE_*`.
    pub svc_type: u8,
    pub reason: String,
}

/// Everything this node's maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub frontends: BTreeMap<Frontend, FrontendPlan>,
    /// Backend flags (`BACKEND_F_*`) by address: every endpoint of a programmed service, also
    /// those new connections do not use (terminating, not ready), so established flows to them
    /// keep their translation until the endpoint goes away.
    pub backends: BTreeMap<BackendAddr, u8>,
    /// Services not programmed, by `namespace/name`, for the CLI; a Service programmed in one
    /// family but not the other (the node has no address of it) is listed under
    /// `namespace/name (IPv6)` (or IPv4).
    pub skipped: BTreeMap<String, SkippedPlan>,
}

/// What one service puts into the plan: the plan is the merge of every service's
/// contribution, in service-name order, so it can also be kept up to date one service at a time
/// (`Planner`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Contribution {
    /// Sorted by frontend, distinct: when the service claims one frontend twice, its first
    /// claim (in port order, cluster IP before external addresses) wins.
    pub frontends: Vec<(Frontend, FrontendPlan)>,
    /// Sorted by address, distinct, flags OR'ed over the service's ports.
    pub backends: Vec<(BackendAddr, u8)>,
    /// The listings of what is not programmed: the service (it then has no frontends and no
    /// backends), or the family of it this node lacks. Sorted by name, distinct.
    pub skipped: Vec<(String, SkippedPlan)>,
}

impl Contribution {
    /// Plans one service for `node`.
    pub fn of(service: &Service, node: &PlanNode) -> Self {
        let mut contribution = Contribution::default();
        let skip = |name: String, reason: String| {
            let svc_type = svc_type(service.service_type);
            (name, SkippedPlan { svc_type, reason })
        };
        if let Some(reason) = not_programmed(service) {
            contribution
                .skipped
                .push(skip(service.name.to_string(), reason));
            return contribution;
        }
        let (served, lacking): (Vec<IpFamily>, Vec<IpFamily>) = service
            .ip_families
            .iter()
            .partition(|&&family| node.has(family));
        for &family in &lacking {
            let addrs: Vec<String> = service
                .cluster_ips
                .iter()
                .filter(|&&ip| IpFamily::of(ip) == family)
                .map(ToString::to_string)
                .collect();
            let reason = format!(
                "{family} cluster IP {}: this node has no {family} address (--node-ip), so its \
                 {family} addresses are not served here",
                addrs.join(", ")
            );
            let name = if served.is_empty() {
                service.name.to_string()
            } else {
                format!("{} ({family})", service.name)
            };
            contribution.skipped.push(skip(name, reason));
        }
        for &family in &served {
            for port in &service.ports {
                contribution.add_port(service, port, family, node);
            }
        }
        for port in &service.unserved_ports {
            let label = if port.name.is_empty() {
                format!("{}/{}", port.port, port.protocol)
            } else {
                format!("{} {}/{}", port.name, port.port, port.protocol)
            };
            let name = format!("{} (port {label})", service.name);
            contribution.skipped.push(skip(name, port.reason.clone()));
        }
        contribution.skipped.sort_by(|a, b| a.0.cmp(&b.0));
        contribution
            .skipped
            .dedup_by(|later, first| later.0 == first.0);
        // A stable sort keeps the claims of one frontend in the order they were made.
        contribution
            .frontends
            .sort_by_key(|(frontend, _)| *frontend);
        contribution.frontends.dedup_by(|later, first| {
            if later.0 != first.0 {
                return false;
            }
            warn_conflict(first.0, &first.1.name, &later.1.name);
            true
        });
        contribution
            .backends
            .sort_unstable_by_key(|(addr, _)| *addr);
        contribution.backends.dedup_by(|later, first| {
            if later.0 != first.0 {
                return false;
            }
            first.1 |= later.1;
            true
        });
        contribution
    }
}

fn warn_conflict(frontend: Frontend, kept: &str, ignored: &str) {
    warn!(
        frontend = ?frontend,
        kept = %kept,
        ignored = %ignored,
        "two services claim the same frontend; keeping the first"
    );
}

/// The backend sets of one service port on this node.
struct PortBackends {
    /// Every endpoint's set (policy Cluster).
    cluster: Vec<BackendAddr>,
    /// The local endpoints' set (policy Local).
    local: Vec<BackendAddr>,
}

impl PortBackends {
    fn for_policy(&self, policy: TrafficPolicy) -> &[BackendAddr] {
        match policy {
            TrafficPolicy::Cluster => &self.cluster,
            TrafficPolicy::Local => &self.local,
        }
    }
}

impl Plan {
    /// Plans the frontends of every programmable service for `node`: the merge of the
    /// services' contributions in name order. Two services claiming one frontend: the first by
    /// name keeps it. Backend flags are OR'ed over the services sharing an endpoint.
    pub fn build(desired: &DesiredState, node: &PlanNode) -> Self {
        let node = &node.for_state(desired);
        let mut plan = Plan::default();
        for service in desired.services.values() {
            let contribution = Contribution::of(service, node);
            for (name, skipped) in contribution.skipped {
                plan.skipped.insert(name, skipped);
            }
            for (addr, flags) in contribution.backends {
                *plan.backends.entry(addr).or_default() |= flags;
            }
            for (frontend, planned) in contribution.frontends {
                match plan.frontends.entry(frontend) {
                    Entry::Vacant(entry) => {
                        entry.insert(planned);
                    }
                    Entry::Occupied(entry) => {
                        warn_conflict(frontend, &entry.get().name, &planned.name);
                    }
                }
            }
        }
        plan
    }
}

impl Contribution {
    /// Plans the frontends of `port` in `family`, with the endpoints of that family.
    fn add_port(
        &mut self,
        service: &Service,
        port: &ServicePort,
        family: IpFamily,
        node: &PlanNode,
    ) {
        let node_name = node.name.as_str();
        let is_local = |e: &Endpoint| e.node_name.as_deref() == Some(node_name);
        let of_family = |ip: &&IpAddr| IpFamily::of(**ip) == family;
        let endpoints: Vec<Endpoint> = port
            .endpoints
            .iter()
            .filter(|e| IpFamily::of(e.addr) == family)
            .cloned()
            .collect();
        for endpoint in &endpoints {
            let mut flags = 0;
            if is_local(endpoint) {
                flags |= BACKEND_F_LOCAL;
            }
            if endpoint.terminating {
                flags |= BACKEND_F_TERMINATING;
            }
            self.backends.push((backend_addr(endpoint), flags));
        }
        let local: Vec<Endpoint> = endpoints.iter().filter(|e| is_local(e)).cloned().collect();
        let sets = PortBackends {
            cluster: addrs(cluster_endpoints(&endpoints, node)),
            local: addrs(choose_endpoints(&local)),
        };
        let mut base = base_plan(service, port);
        if port.protocol == Protocol::Udp {
            base.serving = addrs(endpoints.iter().filter(|e| e.serving).collect());
        }

        // The cluster IP follows internalTrafficPolicy for every client, as kube-proxy does.
        for &ip in service.cluster_ips.iter().filter(of_family) {
            let backends = sets.for_policy(service.internal_traffic_policy);
            let planned = FrontendPlan {
                kind: SVC_KIND_CLUSTER_IP,
                ..base.clone()
            };
            self.insert(
                frontend(ip, port.port, port.protocol, SVC_SCOPE_DEFAULT),
                with_backends(planned, backends, !sets.cluster.is_empty()),
            );
        }

        // External frontends follow externalTrafficPolicy for off-node clients; in-cluster
        // clients (the socket path) reach every endpoint, like kube-proxy's short-circuit.
        let mut external = Vec::new();
        for &ip in service.external_ips.iter().filter(of_family) {
            external.push((ip, port.port, SVC_KIND_EXTERNAL_IP, 0, Vec::new()));
        }
        let ranges: Vec<IpNet> = service
            .load_balancer_source_ranges
            .iter()
            .filter(|net| IpFamily::of_net(net) == family)
            .copied()
            .collect();
        for &ip in service.load_balancer_ips.iter().filter(of_family) {
            let ranges = ranges.clone();
            let flags = if ranges.is_empty() {
                0
            } else {
                SVC_F_SOURCE_RANGES
            };
            external.push((ip, port.port, SVC_KIND_LOAD_BALANCER, flags, ranges));
        }
        if matches!(
            service.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) && let Some(node_port) = port.node_port
        {
            external.push((
                family.unspecified(),
                node_port,
                SVC_KIND_NODE_PORT,
                SVC_F_NODEPORT,
                Vec::new(),
            ));
        }
        let two_scopes = service.external_traffic_policy == TrafficPolicy::Local;
        for (addr, frontend_port, kind, flags, source_ranges) in external {
            let mut planned = FrontendPlan {
                kind,
                flags: base.flags | flags,
                source_ranges,
                ..base.clone()
            };
            let backends = sets.for_policy(service.external_traffic_policy);
            if two_scopes {
                planned.flags |= SVC_F_TWO_SCOPES;
                let internal = FrontendPlan {
                    flags: base.flags | (flags & SVC_F_NODEPORT),
                    source_ranges: Vec::new(),
                    ..planned.clone()
                };
                self.insert(
                    frontend(addr, frontend_port, port.protocol, SVC_SCOPE_INTERNAL),
                    with_backends(internal, &sets.cluster, false),
                );
            }
            self.insert(
                frontend(addr, frontend_port, port.protocol, SVC_SCOPE_DEFAULT),
                with_backends(planned, backends, !sets.cluster.is_empty()),
            );
        }
    }

    fn insert(&mut self, frontend: Frontend, planned: FrontendPlan) {
        self.frontends.push((frontend, planned));
    }
}

/// What every frontend of `port` shares; each sets its kind, flags, backends and ranges.
fn base_plan(service: &Service, port: &ServicePort) -> FrontendPlan {
    let name = if port.name.is_empty() {
        service.name.to_string()
    } else {
        format!("{}:{}", service.name, port.name)
    };
    let mut policy = 0;
    if service.external_traffic_policy == TrafficPolicy::Local {
        policy |= POLICY_F_EXTERNAL_LOCAL;
    }
    if service.internal_traffic_policy == TrafficPolicy::Local {
        policy |= POLICY_F_INTERNAL_LOCAL;
    }
    FrontendPlan {
        name,
        kind: 0,
        svc_type: svc_type(service.service_type),
        policy,
        health_check_port: service.health_check_node_port.unwrap_or(0),
        flags: SVC_F_EXTERNAL,
        backends: Vec::new(),
        serving: Vec::new(),
        affinity_timeout: service.affinity_timeout.unwrap_or(0),
        source_ranges: Vec::new(),
    }
}

fn frontend(addr: IpAddr, port: u16, protocol: Protocol, scope: u8) -> Frontend {
    Frontend {
        addr,
        port,
        protocol,
        scope,
    }
}

/// Sets the backends; an empty set while other endpoints exist (a `Local` policy on a node
/// without local endpoints) is marked so the datapath drops instead of refusing.
fn with_backends(
    mut planned: FrontendPlan,
    backends: &[BackendAddr],
    service_has_endpoints: bool,
) -> FrontendPlan {
    planned.backends = backends.to_vec();
    if backends.is_empty() && service_has_endpoints {
        planned.flags |= SVC_F_NO_LOCAL_ENDPOINT;
    }
    planned
}

fn backend_addr(endpoint: &Endpoint) -> BackendAddr {
    BackendAddr {
        addr: endpoint.addr,
        port: endpoint.port,
    }
}

/// The distinct backend addresses of `endpoints`, sorted.
fn addrs(endpoints: Vec<&Endpoint>) -> Vec<BackendAddr> {
    let set: BTreeSet<BackendAddr> = endpoints.into_iter().map(backend_addr).collect();
    set.into_iter().collect()
}

fn svc_type(service_type: ServiceType) -> u8 {
    match service_type {
        ServiceType::ClusterIP => SVC_TYPE_CLUSTER_IP,
        ServiceType::NodePort => SVC_TYPE_NODE_PORT,
        ServiceType::LoadBalancer => SVC_TYPE_LOAD_BALANCER,
        ServiceType::ExternalName => SVC_TYPE_EXTERNAL_NAME,
        ServiceType::Headless => SVC_TYPE_HEADLESS,
    }
}

/// Why a service is listed but not programmed; `None` when it is programmed.
fn not_programmed(service: &Service) -> Option<String> {
    if let Some(reason) = &service.skip_reason {
        return Some(reason.clone());
    }
    match service.service_type {
        ServiceType::ExternalName => Some("type ExternalName: served by DNS, not proxied".into()),
        ServiceType::Headless => {
            Some("headless (clusterIP: None): served by DNS, not proxied".into())
        }
        ServiceType::ClusterIP | ServiceType::NodePort | ServiceType::LoadBalancer => None,
    }
}

/// The endpoints Cluster-policy traffic goes to, as kube-proxy's `CategorizeEndpoints`: the
/// ready ones, narrowed by topology hints when they apply ([`topology`]); when none is ready,
/// the serving-terminating ones (KEP-1669), hints ignored.
fn cluster_endpoints<'a>(endpoints: &'a [Endpoint], node: &PlanNode) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return choose_endpoints(endpoints);
    }
    match topology(&ready, node) {
        Some(Topology::SameNode) => ready
            .into_iter()
            .filter(|e| e.hints.for_nodes.contains(&node.name))
            .collect(),
        Some(Topology::SameZone(zone)) => ready
            .into_iter()
            .filter(|e| e.hints.for_zones.iter().any(|z| z == zone))
            .collect(),
        None => ready,
    }
}

/// Which topology hints narrow a port's ready endpoints on `node`.
#[derive(Debug, PartialEq, Eq)]
enum Topology<'a> {
    /// `forNodes` (`trafficDistribution: PreferSameNode`, KEP-3015).
    SameNode,
    /// `forZones` (`PreferSameZone`/`PreferClose`, or `topology-mode: Auto`), for this zone.
    SameZone(&'a str),
}

/// kube-proxy's `topologyModeFromHints`: node hints when every ready endpoint has some and one
/// is for this node; else zone hints when every ready endpoint has some and one is for this
/// node's zone; else none (a missing hint, or none for this node or zone, means the hints
/// cannot be trusted and every ready endpoint is used).
fn topology<'a>(ready: &[&Endpoint], node: &'a PlanNode) -> Option<Topology<'a>> {
    let all_have =
        |hints: fn(&Endpoint) -> &Vec<String>| ready.iter().all(|e| !hints(e).is_empty());
    if all_have(|e| &e.hints.for_nodes)
        && ready.iter().any(|e| e.hints.for_nodes.contains(&node.name))
    {
        return Some(Topology::SameNode);
    }
    let zone = node.zone.as_deref()?;
    (all_have(|e| &e.hints.for_zones)
        && ready
            .iter()
            .any(|e| e.hints.for_zones.iter().any(|z| z == zone)))
    .then_some(Topology::SameZone(zone))
}

/// New connections go to ready endpoints; when none is ready, to serving-terminating ones
/// (KEP-1669), so a rolling update never leaves a service refusing while pods drain.
pub fn choose_endpoints(endpoints: &[Endpoint]) -> Vec<&Endpoint> {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

/// Local ready endpoints of a service (distinct addresses, over all its ports), as kube-proxy's
/// health check server counts them. A dual-stack pod has an address of each family: kube-proxy
/// counts per family (one proxier each), so this is the larger family's count, not the sum.
pub fn local_ready_endpoints(service: &Service, node_name: &str) -> usize {
    let addrs: BTreeSet<IpAddr> = service
        .ports
        .iter()
        .flat_map(|port| &port.endpoints)
        .filter(|e| e.ready && e.node_name.as_deref() == Some(node_name))
        .map(|e| e.addr)
        .collect();
    let v4 = addrs.iter().filter(|addr| addr.is_ipv4()).count();
    v4.max(addrs.len() - v4)
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::model::{Hints, ServiceName, UnservedPort};

    fn endpoint(last: u8, node: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: Ipv4Addr::new(198, 18, 1, last).into(),
            port: 8080,
            node_name: Some(node.into()),
            ready,
            serving: ready || terminating,
            terminating,
            hints: Hints::default(),
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
            cluster_ips: vec![Ipv4Addr::new(198, 19, 0, 10).into()],
            ip_families: vec![IpFamily::V4],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                endpoints,
            }],
            unserved_ports: Vec::new(),
            skip_reason: None,
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::default(),
            internal_traffic_policy: TrafficPolicy::default(),
            load_balancer_source_ranges: vec![],
            health_check_node_port: None,
        };
        DesiredState {
            services: [(name, Arc::new(service))].into(),
            ..DesiredState::default()
        }
    }

    #[test]
    fn cluster_ip_programs_only_the_cluster_ip() {
        let desired = service(
            ServiceType::ClusterIP,
            vec![endpoint(10, "node1", true, false)],
        );
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
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
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node2"));
        let node_port = Frontend {
            addr: Ipv4Addr::UNSPECIFIED.into(),
            port: 30080,
            protocol: Protocol::Tcp,
            scope: SVC_SCOPE_DEFAULT,
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
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        assert_eq!(plan.frontends.values().next().unwrap().backends.len(), 1);

        let desired = service(
            ServiceType::ClusterIP,
            vec![
                endpoint(10, "node1", false, false),
                endpoint(11, "node1", false, true),
            ],
        );
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        let backends = &plan.frontends.values().next().unwrap().backends;
        assert_eq!(backends.len(), 1);
        assert_eq!(backends[0].addr, Ipv4Addr::new(198, 18, 1, 11));
        // Both stay in the backends map: flows already on them keep their translation.
        assert_eq!(
            plan.backends.values().copied().collect::<Vec<_>>(),
            [BACKEND_F_LOCAL, BACKEND_F_LOCAL | BACKEND_F_TERMINATING]
        );
    }

    #[test]
    fn skipped_and_headless_services_are_not_programmed_but_listed() {
        let mut desired = service(ServiceType::Headless, vec![]);
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        assert!(plan.frontends.is_empty());
        assert_eq!(plan.skipped["default/web"].svc_type, SVC_TYPE_HEADLESS);
        let service = Arc::make_mut(desired.services.values_mut().next().unwrap());
        service.service_type = ServiceType::ClusterIP;
        service.skip_reason = Some("label service.kubernetes.io/service-proxy-name".into());
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        assert!(plan.frontends.is_empty());
        assert_eq!(
            plan.skipped["default/web"].reason,
            "label service.kubernetes.io/service-proxy-name"
        );
    }

    /// kube-proxy's topology cases (`pkg/proxy/topology_test.go` in spirit): hints are used
    /// only when every ready endpoint has them and some are for this node or zone.
    #[test]
    fn topology_hints_narrow_cluster_endpoints_as_kube_proxy_does() {
        let hinted = |last: u8, zones: &[&str], nodes: &[&str]| Endpoint {
            hints: Hints {
                for_zones: zones.iter().map(|z| (*z).to_owned()).collect(),
                for_nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            },
            ..endpoint(
                last,
                if last.is_multiple_of(2) {
                    "node1"
                } else {
                    "node2"
                },
                true,
                false,
            )
        };
        let mut node = PlanNode::dual_stack("node1");
        node.zone = Some("zone-a".into());
        let picked = |endpoints: &[Endpoint], node: &PlanNode| -> Vec<u8> {
            cluster_endpoints(endpoints, node)
                .into_iter()
                .map(|e| match e.addr {
                    IpAddr::V4(ip) => ip.octets()[3],
                    IpAddr::V6(_) => 0,
                })
                .collect()
        };
        let zoned = [
            hinted(10, &["zone-a"], &[]),
            hinted(11, &["zone-b"], &[]),
            hinted(12, &["zone-a"], &[]),
        ];
        assert_eq!(picked(&zoned, &node), [10, 12], "this zone's");
        let mut elsewhere = node.clone();
        elsewhere.zone = Some("zone-c".into());
        assert_eq!(
            picked(&zoned, &elsewhere),
            [10, 11, 12],
            "none for this zone: all"
        );
        let mut no_zone = node.clone();
        no_zone.zone = None;
        assert_eq!(
            picked(&zoned, &no_zone),
            [10, 11, 12],
            "the node has no zone: all"
        );
        let partly = [hinted(10, &["zone-a"], &[]), hinted(11, &[], &[])];
        assert_eq!(picked(&partly, &node), [10, 11], "one without hints: all");
        let by_node = [
            hinted(10, &["zone-a"], &["node1"]),
            hinted(11, &["zone-a"], &["node2"]),
            hinted(12, &["zone-b"], &["node1"]),
        ];
        assert_eq!(
            picked(&by_node, &node),
            [10, 12],
            "this node's, before zones"
        );
        let node_hint_missing = [
            hinted(10, &["zone-a"], &["node1"]),
            hinted(11, &["zone-a"], &[]),
        ];
        assert_eq!(
            picked(&node_hint_missing, &node),
            [10, 11],
            "falls back to zones"
        );
        // Not ready anywhere: serving-terminating ones, hints ignored.
        let terminating = [Endpoint {
            hints: Hints {
                for_zones: vec!["zone-b".into()],
                for_nodes: Vec::new(),
            },
            ..endpoint(13, "node2", false, true)
        }];
        assert_eq!(picked(&terminating, &node), [13]);
    }

    #[test]
    fn an_unserved_port_is_listed_and_the_other_ports_are_programmed() {
        let mut desired = service(
            ServiceType::ClusterIP,
            vec![endpoint(10, "node1", true, false)],
        );
        let service = Arc::make_mut(desired.services.values_mut().next().unwrap());
        service.unserved_ports = vec![UnservedPort {
            name: "signalling".into(),
            protocol: "SCTP".into(),
            port: 9000,
            reason: "SCTP is not served".into(),
        }];
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        assert_eq!(plan.frontends.len(), 1);
        let listed: Vec<(&str, &str)> = plan
            .skipped
            .iter()
            .map(|(name, skipped)| (name.as_str(), skipped.reason.as_str()))
            .collect();
        assert_eq!(
            listed,
            [(
                "default/web (port signalling 9000/SCTP)",
                "SCTP is not served"
            )]
        );
    }

    fn key(addr: Ipv4Addr, port: u16, scope: u8) -> Frontend {
        frontend(addr.into(), port, Protocol::Tcp, scope)
    }

    #[test]
    fn external_policy_local_keeps_off_node_clients_on_local_endpoints() {
        let mut desired = service(
            ServiceType::LoadBalancer,
            vec![
                endpoint(10, "node1", true, false),
                endpoint(11, "node2", true, false),
            ],
        );
        let svc = Arc::make_mut(desired.services.values_mut().next().unwrap());
        svc.external_traffic_policy = TrafficPolicy::Local;
        svc.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 9, 1).into()];
        svc.load_balancer_source_ranges = vec!["198.18.0.0/24".parse().unwrap()];
        let lb = Ipv4Addr::new(198, 18, 9, 1);
        let any = Ipv4Addr::UNSPECIFIED;

        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        let local = [BackendAddr {
            addr: Ipv4Addr::new(198, 18, 1, 10).into(),
            port: 8080,
        }];
        for addr_port in [(lb, 80), (any, 30080)] {
            let default = &plan.frontends[&key(addr_port.0, addr_port.1, SVC_SCOPE_DEFAULT)];
            assert_eq!(default.backends, local, "{addr_port:?}");
            assert_ne!(default.flags & SVC_F_TWO_SCOPES, 0);
            let internal = &plan.frontends[&key(addr_port.0, addr_port.1, SVC_SCOPE_INTERNAL)];
            assert_eq!(
                internal.backends.len(),
                2,
                "in-cluster clients reach every endpoint"
            );
        }
        let lb_entry = &plan.frontends[&key(lb, 80, SVC_SCOPE_DEFAULT)];
        assert_eq!(lb_entry.kind, SVC_KIND_LOAD_BALANCER);
        assert_ne!(lb_entry.flags & SVC_F_SOURCE_RANGES, 0);
        assert_eq!(lb_entry.source_ranges.len(), 1);
        // The cluster IP follows internalTrafficPolicy (Cluster): one scope, both endpoints.
        let cluster = &plan.frontends[&key(Ipv4Addr::new(198, 19, 0, 10), 80, 0)];
        assert_eq!(cluster.backends.len(), 2);
        assert_eq!(cluster.flags & SVC_F_TWO_SCOPES, 0);

        // A node without a local endpoint drops off-node traffic instead of refusing it.
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node3"));
        let default = &plan.frontends[&key(any, 30080, SVC_SCOPE_DEFAULT)];
        assert_eq!(default.backends, []);
        assert_ne!(default.flags & SVC_F_NO_LOCAL_ENDPOINT, 0);
    }

    #[test]
    fn internal_policy_local_limits_the_cluster_ip_to_local_endpoints() {
        let mut desired = service(
            ServiceType::ClusterIP,
            vec![
                endpoint(10, "node1", true, false),
                endpoint(11, "node2", true, false),
                endpoint(12, "node2", false, true),
            ],
        );
        let svc = Arc::make_mut(desired.services.values_mut().next().unwrap());
        svc.internal_traffic_policy = TrafficPolicy::Local;
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node2"));
        let cluster = plan.frontends.values().next().unwrap();
        assert_eq!(cluster.backends.len(), 1);
        assert_eq!(cluster.backends[0].addr, Ipv4Addr::new(198, 18, 1, 11));
        assert_eq!(cluster.policy, POLICY_F_INTERNAL_LOCAL);
        // Only a terminating local endpoint left: it serves (KEP-1669, per locality).
        let svc = Arc::make_mut(desired.services.values_mut().next().unwrap());
        svc.ports[0].endpoints[1].ready = false;
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node2"));
        let cluster = plan.frontends.values().next().unwrap();
        assert_eq!(cluster.backends[0].addr, Ipv4Addr::new(198, 18, 1, 12));
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node3"));
        let cluster = plan.frontends.values().next().unwrap();
        assert_eq!(cluster.backends, []);
        assert_ne!(cluster.flags & SVC_F_NO_LOCAL_ENDPOINT, 0);
    }

    #[test]
    fn no_endpoints_still_programs_the_frontend_to_refuse() {
        let desired = service(ServiceType::ClusterIP, vec![]);
        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        assert_eq!(plan.frontends.values().next().unwrap().backends, []);
    }

    /// A dual-stack Service: each family's frontends get that family's endpoints, ranges and
    /// NodePort; on a node of one family the other family is listed as skipped.
    #[test]
    fn each_family_is_served_with_its_own_endpoints_and_ranges() {
        let v6 = |text: &str| -> IpAddr { text.parse().unwrap() };
        let mut v6_endpoint = endpoint(20, "node1", true, false);
        v6_endpoint.addr = v6("fd00:18:1::20");
        let mut desired = service(
            ServiceType::LoadBalancer,
            vec![endpoint(10, "node1", true, false), v6_endpoint],
        );
        let svc = Arc::make_mut(desired.services.values_mut().next().unwrap());
        svc.ip_families = vec![IpFamily::V4, IpFamily::V6];
        svc.cluster_ips.push(v6("fd00:19::10"));
        svc.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 9, 1).into(), v6("fd00:18:9::1")];
        svc.load_balancer_source_ranges = vec![
            "198.18.0.0/24".parse().unwrap(),
            "fd00:18::/64".parse().unwrap(),
        ];

        let plan = Plan::build(&desired, &PlanNode::dual_stack("node1"));
        let at = |addr: IpAddr, port| &plan.frontends[&frontend(addr, port, Protocol::Tcp, 0)];
        for (family, addrs) in [
            (IpFamily::V4, [v6("198.19.0.10"), v6("198.18.9.1")]),
            (IpFamily::V6, [v6("fd00:19::10"), v6("fd00:18:9::1")]),
        ] {
            for addr in addrs.into_iter().chain([family.unspecified()]) {
                let port = if addr.is_unspecified() { 30080 } else { 80 };
                let planned = at(addr, port);
                assert_eq!(planned.backends.len(), 1, "{addr}");
                assert!(
                    planned
                        .backends
                        .iter()
                        .all(|b| IpFamily::of(b.addr) == family)
                );
                assert!(
                    planned
                        .source_ranges
                        .iter()
                        .all(|net| IpFamily::of_net(net) == family),
                    "{addr}"
                );
            }
        }
        assert_eq!(at(v6("fd00:18:9::1"), 80).source_ranges.len(), 1);
        assert!(plan.skipped.is_empty());

        let plan = Plan::build(&desired, &PlanNode::new("node1", [IpFamily::V4]));
        assert!(plan.frontends.keys().all(|f| f.addr.is_ipv4()));
        assert!(plan.backends.keys().all(|b| b.addr.is_ipv4()));
        let skipped = &plan.skipped["default/web (IPv6)"];
        assert!(skipped.reason.contains("fd00:19::10"), "{}", skipped.reason);
        // An IPv6-only Service on that node is skipped under its own name.
        let svc = Arc::make_mut(desired.services.values_mut().next().unwrap());
        svc.ip_families = vec![IpFamily::V6];
        svc.cluster_ips = vec![v6("fd00:19::10")];
        let plan = Plan::build(&desired, &PlanNode::new("node1", [IpFamily::V4]));
        assert!(plan.frontends.is_empty() && plan.backends.is_empty());
        assert!(
            plan.skipped["default/web"]
                .reason
                .contains("no IPv6 address")
        );
    }
}
