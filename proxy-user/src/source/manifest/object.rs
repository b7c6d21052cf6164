//! Checked objects: manifests after validation, with addresses parsed and defaults applied.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::SystemTime};

use ipnet::IpNet;

use super::{error::ObjectRef, k8s::ServiceSpecType};
use crate::model::{
    Hints, IpFamily, NodeState, Protocol, ServiceName, TrafficPolicy, UnservedPort,
};

/// The kinds sluice reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Endpoints,
    Pod,
    /// Cluster-scoped: its key's namespace is empty.
    Node,
}

impl Kind {
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Some(match kind {
            "Service" => Kind::Service,
            "EndpointSlice" => Kind::EndpointSlice,
            "Endpoints" => Kind::Endpoints,
            "Pod" => Kind::Pod,
            "Node" => Kind::Node,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Endpoints => "Endpoints",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
        }
    }

    /// Objects of this kind have no namespace.
    pub fn is_cluster_scoped(self) -> bool {
        self == Kind::Node
    }

    /// The `apiVersion` this kind must come with.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Service | Kind::Endpoints | Kind::Pod | Kind::Node => "v1",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object: two documents with the same key define the same object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.kind.as_str(), &self.namespace, &self.name)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.object_ref().fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(ServiceDef),
    EndpointSlice(SliceDef),
    Endpoints(EndpointsDef),
    Pod(PodDef),
    Node(NodeDef),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Object::Service(service) => {
                (Kind::Service, &service.name.namespace, &service.name.name)
            }
            Object::EndpointSlice(slice) => (Kind::EndpointSlice, &slice.namespace, &slice.name),
            Object::Endpoints(endpoints) => {
                (Kind::Endpoints, &endpoints.namespace, &endpoints.name)
            }
            Object::Pod(pod) => (Kind::Pod, &pod.namespace, &pod.name),
            Object::Node(node) => {
                return ObjectKey {
                    kind: Kind::Node,
                    namespace: String::new(),
                    name: node.name.clone(),
                };
            }
        };
        ObjectKey {
            kind,
            namespace: namespace.clone(),
            name: name.clone(),
        }
    }
}

/// `spec.clusterIP(s)` and `spec.ipFamilies` as decided for the cluster's families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterIps {
    /// `clusterIP: None`: a headless service (no addresses, never allocated).
    pub headless: bool,
    /// The Service's families, primary first (empty for ExternalName).
    pub families: Vec<IpFamily>,
    /// The address given for each of `families` (same order); `None`: allocate one from that
    /// family's service CIDR. Empty when headless.
    pub given: Vec<Option<IpAddr>>,
}

impl ClusterIps {
    /// The addresses named explicitly.
    pub fn explicit(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.given.iter().flatten().copied()
    }

    /// The families whose address must be allocated.
    pub fn to_allocate(&self) -> impl Iterator<Item = IpFamily> + '_ {
        self.families
            .iter()
            .zip(&self.given)
            .filter(|(_, given)| given.is_none())
            .map(|(family, _)| *family)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(port) => write!(f, "{port}"),
            TargetPort::Name(name) => write!(f, "{name:?}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortDef {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
    /// Explicit `nodePort` (0 and missing both mean none).
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: ServiceName,
    pub labels: BTreeMap<String, String>,
    pub spec_type: ServiceSpecType,
    pub cluster_ips: ClusterIps,
    pub ports: Vec<PortDef>,
    /// Ports listed but not served (SCTP).
    pub unserved_ports: Vec<UnservedPort>,
    /// Empty when the service has no selector.
    pub selector: BTreeMap<String, String>,
    /// Of the Service's families (others are dropped with a note, as kube-proxy ignores them).
    pub external_ips: Vec<IpAddr>,
    /// `spec.loadBalancerIP` and `status.loadBalancer.ingress[].ip` (type LoadBalancer only).
    pub load_balancer_ips: Vec<IpAddr>,
    pub affinity_timeout: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub publish_not_ready: bool,
    /// Whether missing nodePorts are allocated (NodePort, and LoadBalancer unless
    /// `allocateLoadBalancerNodePorts: false`).
    pub wants_node_ports: bool,
    /// Explicit `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// Whether the Service has a health check NodePort (allocated when missing):
    /// type LoadBalancer with `externalTrafficPolicy: Local`.
    pub wants_health_check: bool,
    /// `spec.trafficDistribution`: the hints selected pods' endpoints get.
    pub traffic_distribution: Option<TrafficDistribution>,
}

/// `spec.trafficDistribution`, as the endpoint-slice controller turns it into hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficDistribution {
    /// `PreferSameZone` and its older name `PreferClose`: a zone hint.
    PreferSameZone,
    /// `PreferSameNode`: a node hint, and a zone hint as the fallback.
    PreferSameNode,
}

/// A port of an EndpointSlice or Endpoints subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPortDef {
    /// Matches the Service port of the same name ("" for an unnamed one).
    pub name: String,
    pub port: Option<u16>,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpointDef {
    /// Of the slice's address type.
    pub addresses: Vec<IpAddr>,
    pub node_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub hints: Hints,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceDef {
    pub namespace: String,
    pub name: String,
    /// `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// `addressType` IPv4 or IPv6; `None` for FQDN slices, kept (for identity) but unused.
    pub family: Option<IpFamily>,
    pub endpoints: Vec<SliceEndpointDef>,
    pub ports: Vec<EndpointPortDef>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, when set and valid.
    pub trigger_time: Option<SystemTime>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressDef {
    pub ip: IpAddr,
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsetDef {
    pub addresses: Vec<AddressDef>,
    pub not_ready_addresses: Vec<AddressDef>,
    pub ports: Vec<EndpointPortDef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointsDef {
    pub namespace: String,
    pub name: String,
    pub subsets: Vec<SubsetDef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPortDef {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<String>,
    /// `status.podIPs` (or `podIP`): at most one per family.
    pub ips: Vec<IpAddr>,
    /// The Ready condition is "True".
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Phase Succeeded or Failed: never an endpoint.
    pub finished: bool,
    pub ports: Vec<ContainerPortDef>,
}

/// A v1 Node: what topology and /healthz read of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDef {
    pub name: String,
    pub state: NodeState,
}
