//! v1 Service.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{IntOrString, Integer, ObjectMeta, PortProtocol, nullable};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: ServiceSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: ServiceStatus,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum ServiceSpecType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum TrafficPolicySpec {
    #[default]
    Cluster,
    Local,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<ServiceSpecType>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs", default, deserialize_with = "nullable")]
    pub cluster_ips: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ip_families: Vec<String>,
    pub ip_family_policy: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    /// `None` when absent: the service has no selector (endpoints come from slices).
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(rename = "externalIPs", default, deserialize_with = "nullable")]
    pub external_ips: Vec<String>,
    pub session_affinity: Option<SessionAffinity>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    pub external_traffic_policy: Option<TrafficPolicySpec>,
    pub internal_traffic_policy: Option<TrafficPolicySpec>,
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub load_balancer_source_ranges: Vec<String>,
    pub publish_not_ready_addresses: Option<bool>,
    pub external_name: Option<String>,
    pub allocate_load_balancer_node_ports: Option<bool>,
    pub health_check_node_port: Option<Integer>,
    /// `PreferClose`, `PreferSameZone` or `PreferSameNode` (KEP-4444, KEP-3015): the hints
    /// the endpoint-slice controller writes for the endpoints of selected pods.
    pub traffic_distribution: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<PortProtocol>,
    pub port: Option<Integer>,
    pub target_port: Option<IntOrString>,
    pub node_port: Option<Integer>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: Option<Integer>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub load_balancer: LoadBalancerStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    pub ip: Option<String>,
    /// KEP-1860; `None` means `VIP`.
    pub ip_mode: Option<IpMode>,
}

/// How a load balancer delivers traffic for its IP (`status.loadBalancer.ingress[].ipMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum IpMode {
    /// With the LB IP as destination: the node answers for it, as for an external IP.
    #[default]
    VIP,
    /// Rewritten by the load balancer (a proxy, PROXY protocol, TLS termination): traffic to
    /// the IP must reach the load balancer, so nodes do not answer for it.
    Proxy,
}
