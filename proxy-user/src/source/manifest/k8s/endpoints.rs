//! discovery.k8s.io/v1 EndpointSlice and v1 Endpoints.

use serde::Deserialize;

use super::{Integer, ObjectMeta, PortProtocol, nullable};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    pub address_type: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: EndpointConditions,
    pub node_name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub hints: EndpointHints,
}

/// `endpoints[].hints`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHints {
    #[serde(default, deserialize_with = "nullable")]
    pub for_zones: Vec<HintName>,
    #[serde(default, deserialize_with = "nullable")]
    pub for_nodes: Vec<HintName>,
}

/// A `forZones[]` or `forNodes[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HintName {
    #[serde(default)]
    pub name: String,
}

/// Conditions as written; `None` takes Kubernetes' default (see `validate`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// A port of an EndpointSlice or an Endpoints subset.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: Option<Integer>,
    pub protocol: Option<PortProtocol>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Endpoints {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<EndpointAddress>,
    #[serde(default, deserialize_with = "nullable")]
    pub not_ready_addresses: Vec<EndpointAddress>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: Option<String>,
    pub node_name: Option<String>,
}
