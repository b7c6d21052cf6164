//! The desired state: what every source (manifests, Kubernetes API) produces and the
//! reconciler programs into the maps. Plain data, independent of where it came from.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::SystemTime,
};

use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::watch;

/// Layer-4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::IPPROTO_TCP,
            Protocol::Udp => proxy_common::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Service `spec.type`, plus the kinds that are listed but never programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// `type: ExternalName`: served by DNS, not programmed.
    ExternalName,
    /// `clusterIP: None`: served by DNS, not programmed.
    Headless,
}

/// An IP family, as `spec.ipFamilies` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Self {
        Self::of(net.addr())
    }

    /// The other family (of a dual-stack pair).
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }

    /// The unspecified address of the family: a NodePort frontend's.
    pub fn unspecified(self) -> IpAddr {
        match self {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Service as the datapath should serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: ServiceName,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (allocated when missing): the primary family's first, at most one
    /// per family, in the order of `ip_families`; empty for headless and ExternalName.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies` as decided for this Service (primary first); the families its
    /// NodePorts are served in.
    pub ip_families: Vec<IpFamily>,
    /// `spec.externalIPs` (either family); sorted, no duplicates.
    pub external_ips: Vec<IpAddr>,
    /// For type LoadBalancer: `spec.loadBalancerIP` and the `status.loadBalancer.ingress` IPs;
    /// sorted, no duplicates. Served like external IPs, with `loadBalancerSourceRanges`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `spec.ports[]` entries the datapath cannot carry (SCTP): listed by `sluice services`
    /// with the reason; the other ports are served.
    pub unserved_ports: Vec<UnservedPort>,
    /// Why the service is not programmed, when it is not (shown by `sluice services`).
    /// A skipped service may still have cluster IPs (e.g. one labelled for another proxy):
    /// the reconciler must check this, not `cluster_ips`.
    pub skip_reason: Option<String>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` when affinity is off.
    pub affinity_timeout: Option<u32>,
    /// `spec.externalTrafficPolicy`: for NodePort, LoadBalancer and external IPs.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`: for the cluster IP.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.loadBalancerSourceRanges` (either family): clients allowed on LoadBalancer IPs
    /// (empty: all). A range applies to the LoadBalancer IPs of its family.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `spec.healthCheckNodePort` (allocated when missing) for LoadBalancer services with
    /// `externalTrafficPolicy: Local`: the daemon answers there whether this node has a local
    /// ready endpoint.
    pub health_check_node_port: Option<u16>,
}

impl Service {
    /// A Service listed but not programmed at all, with nothing but its name, type and why.
    pub fn rejected(name: ServiceName, service_type: ServiceType, reason: &str) -> Self {
        Service {
            name,
            service_type,
            cluster_ips: Vec::new(),
            ip_families: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            ports: Vec::new(),
            unserved_ports: Vec::new(),
            skip_reason: Some(reason.to_owned()),
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            load_balancer_source_ranges: Vec::new(),
            health_check_node_port: None,
        }
    }

    /// The primary cluster IP (`spec.clusterIP`), if any.
    pub fn cluster_ip(&self) -> Option<IpAddr> {
        self.cluster_ips.first().copied()
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// One `spec.ports[]` entry with the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// `spec.ports[].name` ("" when unnamed).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Allocated when missing for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// Endpoints with the target port resolved (numeric or named).
    pub endpoints: Vec<Endpoint>,
}

/// A Service port listed but not served, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnservedPort {
    /// `spec.ports[].name` ("" when unnamed).
    pub name: String,
    /// As the manifest names it (`SCTP`).
    pub protocol: String,
    pub port: u16,
    pub reason: String,
}

/// One endpoint address and port, with its KEP-1669 conditions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    /// Of the family of the Service addresses it serves (a slice's `addressType`).
    pub addr: IpAddr,
    pub port: u16,
    /// `nodeName` of the endpoint, when known: endpoints on this node are local.
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The slice's topology hints for it (KEP-2433, KEP-3015).
    pub hints: Hints,
}

/// EndpointSlice `hints`: where the endpoint-slice controller wants an endpoint used.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Hints {
    /// `forZones[].name`: the zones whose nodes should use it.
    pub for_zones: Vec<String>,
    /// `forNodes[].name` (`trafficDistribution: PreferSameNode`): the nodes that should.
    pub for_nodes: Vec<String>,
}

/// `namespace/name` of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SliceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SliceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The `endpoints.kubernetes.io/last-change-trigger-time` of every EndpointSlice that feeds
/// the state (IPv4, with a Service name) and has one: when the Pod or Service change that
/// last rewrote the slice happened.
pub type TriggerTimes = BTreeMap<SliceName, SystemTime>;

/// Everything the datapath should serve, keyed by service name (`services[n].name == n`).
///
/// Services are shared (`Arc`): a source that publishes a new state gives every unchanged
/// service the previous state's copy (`share_unchanged`), so the daemon finds the changed ones
/// by pointer instead of comparing every service (see `reconcile::Planner`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<ServiceName, Arc<Service>>,
    /// Not served, measured: the daemon turns the trigger times that are new since its last
    /// sync into kube-proxy's network programming latency. A complete snapshot rather than
    /// the changes since the last publish, so states the daemon never saw (the channel keeps
    /// only the latest) lose nothing but intermediate times.
    pub trigger_times: TriggerTimes,
    /// This node's Node object, when a source knows it (cluster mode).
    pub node: Option<NodeState>,
    /// The service CIDRs, when a source knows them (cluster mode: the `ServiceCIDR` objects',
    /// once listed); `None` leaves the daemon's (`--service-cidr` in standalone mode).
    pub service_cidrs: Option<Vec<ipnet::IpNet>>,
}

/// What a Node object says about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Being deleted (`metadata.deletionTimestamp`, or the Node is gone) or tainted
    /// `ToBeDeletedByClusterAutoscaler`: kube-proxy's `nodeEligible` is false, /healthz fails,
    /// and load balancers drain the node before it goes.
    pub draining: bool,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl NodeState {
    /// The taint the cluster autoscaler puts on a node it is about to delete.
    pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
    /// The label topology hints are matched against.
    pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

    /// `topology.kubernetes.io/zone`, if set and not empty.
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .get(Self::ZONE_LABEL)
            .map(String::as_str)
            .filter(|zone| !zone.is_empty())
    }
}

impl DesiredState {
    /// Replaces every service equal to `previous`'s by `previous`'s copy; says whether the two
    /// states differ (in anything). Costs one comparison of each service, like `==` on the
    /// states.
    pub fn share_unchanged(&mut self, previous: &DesiredState) -> bool {
        let mut changed = self.services.len() != previous.services.len();
        let previous_trigger_times = &previous.trigger_times;
        let previous_node = &previous.node;
        let previous_cidrs = &previous.service_cidrs;
        let mut previous = previous.services.iter().peekable();
        for (name, service) in &mut self.services {
            while previous.next_if(|(old, _)| *old < name).is_some() {
                changed = true;
            }
            match previous.next_if(|(old, _)| *old == name) {
                Some((_, old)) if **old == **service => *service = old.clone(),
                _ => changed = true,
            }
        }
        changed
            || previous.next().is_some()
            || self.trigger_times != *previous_trigger_times
            || self.node != *previous_node
            || self.service_cidrs != *previous_cidrs
    }
}

/// Service and endpoint changes, as kube-proxy's change trackers count them for
/// `sync_proxy_rules_{service,endpoint}_changes_total`. kube-proxy counts watch events per
/// object (each EndpointSlice update); sluice counts per Service, as its sources publish
/// whole states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub services: u64,
    pub endpoints: u64,
}

impl std::ops::AddAssign for ChangeCounts {
    fn add_assign(&mut self, other: Self) {
        self.services += other.services;
        self.endpoints += other.endpoints;
    }
}

impl ChangeCounts {
    /// One Service going from `old` to `new` (`None`: absent): a Service added, removed or
    /// changed apart from its endpoints is a service change; one whose endpoints changed (or
    /// that came or went with endpoints) is an endpoint change.
    pub fn of(old: Option<&Service>, new: Option<&Service>) -> Self {
        fn has_endpoints(service: &Service) -> bool {
            service.ports.iter().any(|port| !port.endpoints.is_empty())
        }
        fn without_endpoints(service: &Service) -> Service {
            let mut spec = service.clone();
            for port in &mut spec.ports {
                port.endpoints.clear();
            }
            spec
        }
        match (old, new) {
            (Some(old), Some(new)) if old == new => Self::default(),
            (Some(old), Some(new)) => {
                let same_endpoints = old.ports.len() == new.ports.len()
                    && old
                        .ports
                        .iter()
                        .zip(&new.ports)
                        .all(|(a, b)| a.endpoints == b.endpoints);
                Self {
                    services: u64::from(without_endpoints(old) != without_endpoints(new)),
                    endpoints: u64::from(!same_endpoints),
                }
            }
            (Some(one), None) | (None, Some(one)) => Self {
                services: 1,
                endpoints: u64::from(has_endpoints(one)),
            },
            (None, None) => Self::default(),
        }
    }
}

/// Where sources publish the complete desired state; `None` until their first full view,
/// so the daemon never deletes live services before it knows the whole picture.
pub type DesiredSender = watch::Sender<Option<Arc<DesiredState>>>;
pub type DesiredReceiver = watch::Receiver<Option<Arc<DesiredState>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn name(name: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn state(services: &[(&str, u16)]) -> DesiredState {
        let services = services.iter().map(|&(name, port)| {
            let name = ServiceName {
                namespace: "default".into(),
                name: name.into(),
            };
            let service = Service {
                name: name.clone(),
                service_type: ServiceType::ClusterIP,
                cluster_ips: vec![Ipv4Addr::new(198, 19, 0, 1).into()],
                ip_families: vec![IpFamily::V4],
                external_ips: vec![],
                load_balancer_ips: vec![],
                ports: vec![ServicePort {
                    name: String::new(),
                    protocol: Protocol::Tcp,
                    port,
                    node_port: None,
                    endpoints: vec![],
                }],
                unserved_ports: Vec::new(),
                skip_reason: None,
                affinity_timeout: None,
                external_traffic_policy: TrafficPolicy::Cluster,
                internal_traffic_policy: TrafficPolicy::Cluster,
                load_balancer_source_ranges: vec![],
                health_check_node_port: None,
            };
            (name, Arc::new(service))
        });
        DesiredState {
            services: services.collect(),
            ..DesiredState::default()
        }
    }

    #[test]
    fn changes_are_counted_as_kube_proxy_counts_them() {
        let previous = state(&[("a", 80), ("b", 80)]);
        let mut next = state(&[("a", 80), ("b", 81)]);
        // `a` gains an endpoint: an endpoint change only.
        let a = Arc::make_mut(next.services.values_mut().next().unwrap());
        a.ports[0].endpoints.push(Endpoint {
            addr: Ipv4Addr::new(198, 18, 1, 10).into(),
            port: 8080,
            node_name: None,
            ready: true,
            serving: true,
            terminating: false,
            hints: Hints::default(),
        });
        let (old_a, old_b) = (
            &previous.services[&name("a")],
            &previous.services[&name("b")],
        );
        let (new_a, new_b) = (&next.services[&name("a")], &next.services[&name("b")]);
        let counts =
            |old: &Arc<Service>, new: &Arc<Service>| ChangeCounts::of(Some(old), Some(new));
        let changes = |services, endpoints| ChangeCounts {
            services,
            endpoints,
        };
        assert_eq!(counts(old_a, new_a), changes(0, 1));
        // b changed its port: a service change.
        assert_eq!(counts(old_b, new_b), changes(1, 0));
        assert_eq!(counts(new_a, new_a), changes(0, 0));
        // Coming and going: a service change, and an endpoint change with endpoints.
        assert_eq!(ChangeCounts::of(None, Some(new_a)), changes(1, 1));
        assert_eq!(ChangeCounts::of(Some(old_b), None), changes(1, 0));
    }

    #[test]
    fn unchanged_services_are_shared_with_the_previous_state() {
        let previous = state(&[("a", 80), ("b", 80), ("c", 80)]);
        let mut next = state(&[("a", 80), ("b", 81), ("c", 80)]);
        assert!(next.share_unchanged(&previous));
        let shared = |name: &str| {
            let (key, service) = next
                .services
                .iter()
                .find(|(key, _)| key.name == name)
                .expect("present");
            Arc::ptr_eq(service, &previous.services[key])
        };
        assert!(shared("a") && !shared("b") && shared("c"));

        let mut same = state(&[("a", 80), ("b", 80), ("c", 80)]);
        assert!(!same.share_unchanged(&previous));
        for (name, service) in &same.services {
            assert!(Arc::ptr_eq(service, &previous.services[name]));
        }
        for services in [
            &[("a", 80), ("b", 80)][..],
            &[("a", 80), ("b", 80), ("c", 80), ("d", 80)],
            &[("b", 80), ("c", 80)],
            &[],
        ] {
            assert!(state(services).share_unchanged(&previous), "{services:?}");
        }
    }
}
