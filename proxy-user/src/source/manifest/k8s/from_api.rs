//! The API server's typed objects (k8s-openapi, as the kube-rs watchers decode them) into the
//! same subset a manifest file is read into, field by field, so both go through one set of
//! checks.
//!
//! k8s-openapi keeps enum-like fields (`type`, `protocol`, `sessionAffinity`, the traffic
//! policies) as strings; they are read here with the subset's own serde enums, so an unknown
//! value is the same error, naming the same field, as in a file. Like a file's deserializer,
//! the conversion stops at the first such error. Fields sluice does not read (`appProtocol`,
//! `zone`, `hints`, `ipFamilies`..) are not carried over, as they are not read from files.

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery},
    apimachinery::pkg::{apis::meta::v1 as meta, util::intstr},
};
use serde::{
    Deserialize,
    de::{IntoDeserializer as _, value::Error as ValueError},
};
use yaml_serde::Value;

use super::{
    ClientIpConfig, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, HintName,
    IntOrString, Integer, LoadBalancerIngress, LoadBalancerStatus, ObjectMeta, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig, SliceEndpoint,
};

/// A field the subset cannot take as the API server sent it: `field` is the path (as a
/// file's type errors name it), `message` what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A string field read with the subset's serde enum (`None` stays `None`).
fn variant<'a, T: Deserialize<'a>>(
    text: Option<&'a str>,
    field: impl FnOnce() -> String,
) -> Result<Option<T>, FieldError> {
    text.map(|text| {
        T::deserialize(text.into_deserializer()).map_err(|e: ValueError| FieldError {
            field: field(),
            message: e.to_string(),
        })
    })
    .transpose()
}

fn metadata(meta: meta::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        labels: meta.labels.unwrap_or_default(),
        deletion_timestamp: meta.deletion_timestamp.map(|time| time.0.to_string()),
        annotations: meta.annotations.map(|annotations| {
            Value::Mapping(
                annotations
                    .into_iter()
                    .map(|(key, value)| (Value::String(key), Value::String(value)))
                    .collect(),
            )
        }),
    }
}

fn integer(value: i32) -> Integer {
    Integer(i64::from(value))
}

/// A v1 Service.
pub fn service(service: core::Service) -> Result<Service, FieldError> {
    let spec = service.spec.unwrap_or_default();
    // In the order a file's deserializer meets them in the API server's JSON (alphabetical),
    // so that the first error is the same one.
    let external_traffic_policy = variant(spec.external_traffic_policy.as_deref(), || {
        "spec.externalTrafficPolicy".into()
    })?;
    let internal_traffic_policy = variant(spec.internal_traffic_policy.as_deref(), || {
        "spec.internalTrafficPolicy".into()
    })?;
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, port)| service_port(port, i))
        .collect::<Result<_, _>>()?;
    let session_affinity = variant(spec.session_affinity.as_deref(), || {
        "spec.sessionAffinity".into()
    })?;
    let type_ = variant(spec.type_.as_deref(), || "spec.type".into())?;
    let session_affinity_config =
        spec.session_affinity_config
            .map(|config| SessionAffinityConfig {
                client_ip: config.client_ip.map(|client_ip| ClientIpConfig {
                    timeout_seconds: client_ip.timeout_seconds.map(integer),
                }),
            });
    let spec = ServiceSpec {
        type_,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips.unwrap_or_default(),
        ip_families: spec.ip_families.unwrap_or_default(),
        ip_family_policy: spec.ip_family_policy,
        ports,
        selector: spec.selector,
        external_ips: spec.external_ips.unwrap_or_default(),
        session_affinity,
        session_affinity_config,
        external_traffic_policy,
        internal_traffic_policy,
        load_balancer_ip: spec.load_balancer_ip,
        load_balancer_source_ranges: spec.load_balancer_source_ranges.unwrap_or_default(),
        publish_not_ready_addresses: spec.publish_not_ready_addresses,
        external_name: spec.external_name,
        allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
        health_check_node_port: spec.health_check_node_port.map(integer),
        // The API server's EndpointSlices carry the hints it calls for.
        traffic_distribution: None,
    };
    let ingress = service
        .status
        .and_then(|status| status.load_balancer)
        .and_then(|load_balancer| load_balancer.ingress)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, ingress)| {
            let ip_mode = variant(ingress.ip_mode.as_deref(), || {
                format!("status.loadBalancer.ingress[{i}].ipMode")
            })?;
            Ok(LoadBalancerIngress {
                ip: ingress.ip,
                ip_mode,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Service {
        metadata: metadata(service.metadata),
        spec,
        status: ServiceStatus {
            load_balancer: LoadBalancerStatus { ingress },
        },
    })
}

fn service_port(port: core::ServicePort, i: usize) -> Result<ServicePort, FieldError> {
    Ok(ServicePort {
        protocol: variant(port.protocol.as_deref(), || {
            format!("spec.ports[{i}].protocol")
        })?,
        name: port.name,
        // Required in the API: k8s-openapi reads a missing one as 0, which the checks reject.
        port: Some(integer(port.port)),
        target_port: port.target_port.map(|target| match target {
            intstr::IntOrString::Int(number) => IntOrString::Int(i64::from(number)),
            intstr::IntOrString::String(name) => IntOrString::String(name),
        }),
        node_port: port.node_port.map(integer),
    })
}

/// A discovery.k8s.io/v1 EndpointSlice.
pub fn endpoint_slice(slice: discovery::EndpointSlice) -> Result<EndpointSlice, FieldError> {
    let endpoints = slice
        .endpoints
        .into_iter()
        .map(|endpoint| SliceEndpoint {
            addresses: endpoint.addresses,
            conditions: endpoint
                .conditions
                .map(|conditions| EndpointConditions {
                    ready: conditions.ready,
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                })
                .unwrap_or_default(),
            node_name: endpoint.node_name,
            hints: endpoint
                .hints
                .map(|hints| {
                    let names = |names: Option<Vec<String>>| {
                        names
                            .unwrap_or_default()
                            .into_iter()
                            .map(|name| HintName { name })
                            .collect()
                    };
                    EndpointHints {
                        for_zones: names(
                            hints
                                .for_zones
                                .map(|zones| zones.into_iter().map(|zone| zone.name).collect()),
                        ),
                        for_nodes: names(
                            hints
                                .for_nodes
                                .map(|nodes| nodes.into_iter().map(|node| node.name).collect()),
                        ),
                    }
                })
                .unwrap_or_default(),
        })
        .collect();
    let ports = slice
        .ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, port)| {
            Ok(EndpointPort {
                protocol: variant(port.protocol.as_deref(), || format!("ports[{i}].protocol"))?,
                name: port.name,
                port: port.port.map(integer),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(EndpointSlice {
        metadata: metadata(slice.metadata),
        // Required in the API: k8s-openapi reads a missing one as "", which the checks reject.
        address_type: Some(slice.address_type),
        endpoints,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::source::manifest::k8s::{
        PortProtocol, ServiceSpecType, SessionAffinity, TrafficPolicySpec,
    };

    /// What kube-rs decodes from the API server's JSON.
    fn typed<K: DeserializeOwned>(json: Json) -> K {
        serde_json::from_value(json).expect("decodes as kube-rs does")
    }

    /// How the object reached the subset before: the typed object serialized back to JSON
    /// and deserialized as a file is. The conversion must give the same.
    fn through_json<K: serde::Serialize, T: DeserializeOwned>(object: &K) -> T {
        let json = serde_json::to_value(object).expect("serializes");
        serde_json::from_value(json).expect("the subset reads it")
    }

    /// A LoadBalancer Service with every field sluice reads set, and some it does not.
    fn rich_service() -> core::Service {
        typed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "web", "namespace": "shop", "resourceVersion": "7",
                "labels": {"service.kubernetes.io/service-proxy-name": "other",
                           "service.kubernetes.io/headless": ""},
                "annotations": {"example.org/note": "kept as written"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                "ports": [
                    {"name": "http", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c",
                     "port": 80, "targetPort": "http", "nodePort": 31080},
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 8053,
                     "nodePort": 31053},
                    {"name": "bare", "port": 81},
                ],
                "selector": {"app": "web"},
                "externalIPs": ["198.51.100.7", "2001:db8::7"],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000,
                "loadBalancerIP": "203.0.113.9",
                "loadBalancerSourceRanges": ["203.0.113.0/24"],
                "allocateLoadBalancerNodePorts": false,
                "publishNotReadyAddresses": true,
                "trafficDistribution": "PreferClose",
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.10", "ipMode": "VIP"},
                {"hostname": "lb.example.org"},
            ]}},
        }))
    }

    fn rich_slice() -> discovery::EndpointSlice {
        typed(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abc", "namespace": "shop", "resourceVersion": "8",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {
                    "endpoints.kubernetes.io/last-change-trigger-time": "2026-11-22T05:00:00Z",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "node1", "zone": "a",
                 "conditions": {"ready": true, "serving": true, "terminating": false},
                 "hints": {"forZones": [{"name": "a"}]},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
                {"addresses": ["10.244.2.7"], "nodeName": "node2",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                // Conditions left out: Kubernetes' defaults apply in the checks.
                {"addresses": ["10.244.3.9"]},
                {"addresses": ["10.244.3.10"], "conditions": {}},
            ],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"},
                {"name": "dns", "protocol": "UDP", "port": 8053},
                {"name": "sctp", "protocol": "SCTP", "port": 9000},
                {"port": 8081},
            ],
        }))
    }

    #[test]
    fn a_service_converts_as_its_json_read_as_a_file_does() {
        let api = rich_service();
        let mut expected: Service = through_json(&api);
        // Not converted: in cluster mode the API server's slices carry the hints it asks for.
        assert_eq!(
            expected.spec.traffic_distribution.as_deref(),
            Some("PreferClose")
        );
        expected.spec.traffic_distribution = None;
        let converted = service(api).expect("converts");
        assert_eq!(converted, expected);
        // And the fields that matter, spelled out.
        let spec = &converted.spec;
        assert_eq!(converted.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            converted.metadata.labels.keys().collect::<Vec<_>>(),
            [
                "service.kubernetes.io/headless",
                "service.kubernetes.io/service-proxy-name"
            ]
        );
        assert!(converted.metadata.deletion_timestamp.is_some());
        assert_eq!(spec.type_, Some(ServiceSpecType::LoadBalancer));
        assert_eq!(spec.cluster_ips, ["10.96.0.10", "fd00::10"]);
        assert_eq!(spec.external_ips, ["198.51.100.7", "2001:db8::7"]);
        assert_eq!(spec.session_affinity, Some(SessionAffinity::ClientIP));
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref());
        assert_eq!(timeout.and_then(|c| c.timeout_seconds), Some(Integer(600)));
        assert_eq!(spec.external_traffic_policy, Some(TrafficPolicySpec::Local));
        assert_eq!(spec.internal_traffic_policy, Some(TrafficPolicySpec::Local));
        assert_eq!(spec.health_check_node_port, Some(Integer(32000)));
        assert_eq!(spec.allocate_load_balancer_node_ports, Some(false));
        let ports: Vec<_> = spec
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.as_deref(),
                    p.protocol,
                    p.port,
                    p.target_port.clone(),
                    p.node_port,
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                (
                    Some("http"),
                    Some(PortProtocol::Tcp),
                    Some(Integer(80)),
                    Some(IntOrString::String("http".into())),
                    Some(Integer(31080))
                ),
                (
                    Some("dns"),
                    Some(PortProtocol::Udp),
                    Some(Integer(53)),
                    Some(IntOrString::Int(8053)),
                    Some(Integer(31053))
                ),
                (Some("bare"), None, Some(Integer(81)), None, None),
            ]
        );
        let ingress: Vec<_> = converted
            .status
            .load_balancer
            .ingress
            .iter()
            .map(|i| i.ip.as_deref())
            .collect();
        assert_eq!(ingress, [Some("203.0.113.10"), None]);
    }

    #[test]
    fn a_slice_converts_as_its_json_read_as_a_file_does() {
        let api = rich_slice();
        let expected: EndpointSlice = through_json(&api);
        let converted = endpoint_slice(api).expect("converts");
        assert_eq!(converted, expected);
        let conditions: Vec<_> = converted
            .endpoints
            .iter()
            .map(|e| {
                let c = &e.conditions;
                (e.node_name.as_deref(), c.ready, c.serving, c.terminating)
            })
            .collect();
        assert_eq!(
            conditions,
            [
                (Some("node1"), Some(true), Some(true), Some(false)),
                (Some("node2"), Some(false), Some(true), Some(true)),
                (None, None, None, None),
                (None, None, None, None),
            ]
        );
        let protocols: Vec<_> = converted.ports.iter().map(|p| p.protocol).collect();
        assert_eq!(
            protocols,
            [
                Some(PortProtocol::Tcp),
                Some(PortProtocol::Udp),
                Some(PortProtocol::Sctp),
                None
            ]
        );
    }

    #[test]
    fn an_empty_object_converts_as_its_json_does() {
        // k8s-openapi reads required fields that are missing as empty: the same as before.
        let api: core::Service =
            typed(json!({"metadata": {"name": "web"}, "spec": {"ports": [{}]}}));
        assert_eq!(service(api.clone()), Ok(through_json(&api)));
        let api: discovery::EndpointSlice = typed(json!({"metadata": {}, "endpoints": null}));
        assert_eq!(endpoint_slice(api.clone()), Ok(through_json(&api)));
    }

    #[test]
    fn an_unknown_enum_value_names_its_field_as_a_file_error_does() {
        let with = |path: &[&str], value: &str| {
            let mut json = serde_json::to_value(rich_service()).expect("serializes");
            let mut at = &mut json;
            for key in path {
                at = match key.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*key],
                };
            }
            *at = json!(value);
            typed::<core::Service>(json)
        };
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["spec", "type"],
                "spec.type",
                "unknown variant `Nodeport`, expected one of `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`",
            ),
            (
                &["spec", "ports", "1", "protocol"],
                "spec.ports[1].protocol",
                "unknown variant `Nodeport`, expected one of `TCP`, `UDP`, `SCTP`",
            ),
            (
                &["spec", "sessionAffinity"],
                "spec.sessionAffinity",
                "unknown variant `Nodeport`, expected `None` or `ClientIP`",
            ),
            (
                &["spec", "externalTrafficPolicy"],
                "spec.externalTrafficPolicy",
                "unknown variant `Nodeport`, expected `Cluster` or `Local`",
            ),
            (
                &["spec", "internalTrafficPolicy"],
                "spec.internalTrafficPolicy",
                "unknown variant `Nodeport`, expected `Cluster` or `Local`",
            ),
        ];
        for (path, field, message) in cases {
            let error = service(with(path, "Nodeport")).expect_err("an unknown value");
            assert_eq!(
                (error.field.as_str(), error.message.as_str()),
                (*field, *message)
            );
        }
        let mut slice = rich_slice();
        slice.ports.as_mut().expect("ports")[2].protocol = Some("QUIC".into());
        assert_eq!(
            endpoint_slice(slice),
            Err(FieldError {
                field: "ports[2].protocol".into(),
                message: "unknown variant `QUIC`, expected one of `TCP`, `UDP`, `SCTP`".into(),
            })
        );
    }
}
