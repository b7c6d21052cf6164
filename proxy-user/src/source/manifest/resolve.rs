//! Resolution: the catalog of checked objects, plus allocations, into `model::DesiredState`.
//! Conflicts between Services (one cluster IP or nodePort claimed twice) are reported and
//! the later Service (by name) is listed but not programmed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{
    alloc::{AllocRequest, Allocator, Assignments},
    backends::{Source, port_endpoints},
    catalog::{Catalog, LocatedService},
    error::{ManifestError, Problems, Severity},
    k8s::ServiceSpecType,
    object::{PortDef, ServiceDef},
};
use crate::model::{
    DesiredState, Service, ServiceName, ServicePort, ServiceType, SliceName, TriggerTimes,
};

/// Services with this label (any value) belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services with this label are served by DNS only.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The allocation key of a Service's health check NodePort (port keys are `name/PROTO`).
const HEALTH_CHECK_PORT_KEY: &str = "healthCheckNodePort";

/// The desired state, and the problems found while computing it (cross-object conflicts,
/// ports without endpoints, allocation failures).
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    pub state: DesiredState,
    pub problems: Vec<ManifestError>,
}

/// Key of a service port in the allocation state: `name/PROTO`, or `port/PROTO` when unnamed.
pub(crate) fn port_key(port: &PortDef) -> String {
    if port.name.is_empty() {
        format!("{}/{}", port.port, port.protocol)
    } else {
        format!("{}/{}", port.name, port.protocol)
    }
}

/// `node_name` picks this node's Node from the catalog for the state's `node`.
pub(crate) fn resolve(
    catalog: &Catalog,
    node_name: Option<&str>,
    allocator: &mut Allocator,
) -> Resolution {
    let mut problems = catalog.problems.clone();
    let conflicts = find_conflicts(catalog, &mut problems);

    let mut claimed_ips = BTreeSet::new();
    let mut claimed_ports = BTreeSet::new();
    let mut requests = Vec::new();
    for service in catalog.services.values() {
        let def = service.def;
        claimed_ips.extend(def.cluster_ips.explicit());
        claimed_ports.extend(def.ports.iter().filter_map(|port| port.node_port));
        claimed_ports.extend(def.health_check_node_port);
        if def.spec_type == ServiceSpecType::ExternalName {
            continue;
        }
        let mut node_ports: Vec<_> = def
            .ports
            .iter()
            .filter(|port| def.wants_node_ports && port.node_port.is_none())
            .map(port_key)
            .collect();
        if def.wants_health_check && def.health_check_node_port.is_none() {
            node_ports.push(HEALTH_CHECK_PORT_KEY.to_owned());
        }
        let cluster_ips: Vec<_> = if def.cluster_ips.headless {
            Vec::new()
        } else {
            def.cluster_ips.to_allocate().collect()
        };
        if !cluster_ips.is_empty() || !node_ports.is_empty() {
            requests.push(AllocRequest {
                service: def.name.clone(),
                cluster_ips,
                node_ports,
            });
        }
    }
    let assignments = allocator.assign(&requests, &claimed_ips, &claimed_ports);
    for (name, why) in &assignments.moved {
        let service = &catalog.services[name];
        let context = service.context();
        problems.push(context.problem(
            Severity::Note,
            None,
            format!("{why}: it was given a new one"),
        ));
    }
    if let Err(e) = allocator.save() {
        problems.push(
            ManifestError::file(
                allocator.path().unwrap_or_else(|| "allocations".as_ref()),
                format!("{e}: allocations made now may change after a restart"),
            )
            .with_severity(Severity::Warning),
        );
    }

    let mut state = DesiredState::default();
    for (name, service) in &catalog.services {
        let skip = skip_reason(service.def, &conflicts, &assignments);
        let model = build_service(service, catalog, &assignments, skip, &mut problems);
        state.services.insert(name.clone(), Arc::new(model));
    }
    state.trigger_times = trigger_times(catalog);
    state.node = node_name
        .and_then(|name| catalog.nodes.get(name))
        .map(|node| node.state.clone());
    Resolution { state, problems }
}

/// The trigger times of the slices that feed the state (IPv4, naming a Service), whether or
/// not that Service exists or is programmed: like kube-proxy, which times every slice
/// change it processes.
fn trigger_times(catalog: &Catalog) -> TriggerTimes {
    catalog
        .slices
        .values()
        .flatten()
        .filter_map(|slice| {
            let name = SliceName {
                namespace: slice.namespace.clone(),
                name: slice.name.clone(),
            };
            Some((name, slice.trigger_time?))
        })
        .collect()
}

/// Cluster IPs and nodePorts that two Services claim explicitly: the first Service (by
/// name) keeps it, the other is not programmed.
fn find_conflicts(
    catalog: &Catalog,
    problems: &mut Vec<ManifestError>,
) -> BTreeMap<ServiceName, String> {
    let mut conflicts = BTreeMap::new();
    let mut ips: BTreeMap<_, &ServiceName> = BTreeMap::new();
    let mut node_ports: BTreeMap<u16, &ServiceName> = BTreeMap::new();
    for (name, service) in &catalog.services {
        let context = service.context();
        let mut p = Problems::new(&context);
        for (i, ip) in service.def.cluster_ips.explicit().enumerate() {
            if let Some(owner) = ips.get(&ip) {
                let why = format!("cluster IP {ip} is also claimed by Service {owner}");
                let field = if i == 0 {
                    "spec.clusterIP".to_owned()
                } else {
                    format!("spec.clusterIPs[{i}]")
                };
                p.error(
                    &field,
                    format!("{why}, which keeps it: pick another address, or leave clusterIP out"),
                );
                conflicts.entry(name.clone()).or_insert(why);
            } else {
                ips.insert(ip, name);
            }
        }
        let mut own = BTreeSet::new();
        for (i, port) in service.def.ports.iter().enumerate() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            match node_ports.get(&node_port) {
                Some(owner) if *owner != name => {
                    let why = format!("nodePort {node_port} is also claimed by Service {owner}");
                    p.error(
                        &format!("spec.ports[{i}].nodePort"),
                        format!("{why}, which keeps it: pick another, or leave nodePort out"),
                    );
                    conflicts.entry(name.clone()).or_insert(why);
                }
                _ => {
                    own.insert(node_port);
                }
            }
        }
        if !conflicts.contains_key(name) {
            node_ports.extend(own.into_iter().map(|port| (port, name)));
        }
        problems.append(&mut p.list);
    }
    conflicts
}

fn skip_reason(
    def: &ServiceDef,
    conflicts: &BTreeMap<ServiceName, String>,
    assignments: &Assignments,
) -> Option<String> {
    if def.spec_type == ServiceSpecType::ExternalName {
        return Some("type ExternalName: served by DNS, not proxied".into());
    }
    if def.cluster_ips.headless {
        return Some("headless (clusterIP: None): served by DNS, not proxied".into());
    }
    if let Some(proxy) = def.labels.get(SERVICE_PROXY_NAME_LABEL) {
        return Some(format!(
            "labelled {SERVICE_PROXY_NAME_LABEL}={proxy}: served by another proxy"
        ));
    }
    if def.labels.contains_key(HEADLESS_LABEL) {
        return Some(format!(
            "labelled {HEADLESS_LABEL}: served by DNS, not proxied"
        ));
    }
    if let Some(why) = conflicts.get(&def.name) {
        return Some(why.clone());
    }
    assignments.failures.get(&def.name).cloned()
}

fn build_service(
    service: &LocatedService,
    catalog: &Catalog,
    assignments: &Assignments,
    skip_reason: Option<String>,
    problems: &mut Vec<ManifestError>,
) -> Service {
    let def = service.def;
    let service_type = match (def.spec_type, def.cluster_ips.headless) {
        (ServiceSpecType::ExternalName, _) => ServiceType::ExternalName,
        (_, true) => ServiceType::Headless,
        (ServiceSpecType::ClusterIP, _) => ServiceType::ClusterIP,
        (ServiceSpecType::NodePort, _) => ServiceType::NodePort,
        (ServiceSpecType::LoadBalancer, _) => ServiceType::LoadBalancer,
    };
    // In the order of the families, primary first; one whose allocation failed is missing
    // (and the Service is skipped with the failure as its reason).
    let cluster_ips = def
        .cluster_ips
        .families
        .iter()
        .zip(&def.cluster_ips.given)
        .filter_map(|(&family, given)| {
            given.or_else(|| {
                let key = (def.name.clone(), family);
                assignments.cluster_ips.get(&key).copied()
            })
        })
        .collect();
    let mut external_ips = def.external_ips.clone();
    external_ips.sort_unstable();
    external_ips.dedup();
    let mut load_balancer_ips = def.load_balancer_ips.clone();
    load_balancer_ips.sort_unstable();
    load_balancer_ips.dedup();
    let health_check_node_port = def.wants_health_check.then(|| {
        def.health_check_node_port.or_else(|| {
            assignments
                .node_ports
                .get(&(def.name.clone(), HEALTH_CHECK_PORT_KEY.to_owned()))
                .copied()
        })
    });

    let source = if service_type == ServiceType::ExternalName {
        Source::Nothing
    } else {
        Source::of(service, catalog)
    };
    let programmed = skip_reason.is_none();
    if programmed {
        note_missing_endpoints(service, &source, problems);
    }
    let ports = def
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let node_port = port.node_port.or_else(|| {
                assignments
                    .node_ports
                    .get(&(def.name.clone(), port_key(port)))
                    .copied()
            });
            // Only programmed services get warnings about their endpoints.
            let mut port_problems = Vec::new();
            let endpoints = port_endpoints(service, i, port, &source, &mut port_problems);
            if programmed {
                problems.append(&mut port_problems);
            }
            ServicePort {
                name: port.name.clone(),
                protocol: port.protocol,
                port: port.port,
                node_port: if def.wants_node_ports || port.node_port.is_some() {
                    node_port
                } else {
                    None
                },
                endpoints,
            }
        })
        .collect();
    Service {
        name: def.name.clone(),
        service_type,
        cluster_ips,
        ip_families: def.cluster_ips.families.clone(),
        external_ips,
        load_balancer_ips,
        ports,
        unserved_ports: def.unserved_ports.clone(),
        skip_reason,
        affinity_timeout: def.affinity_timeout,
        external_traffic_policy: def.external_traffic_policy,
        internal_traffic_policy: def.internal_traffic_policy,
        load_balancer_source_ranges: def.load_balancer_source_ranges.clone(),
        health_check_node_port: health_check_node_port.flatten(),
    }
}

/// A note when a programmed service can have no endpoints at all.
fn note_missing_endpoints(
    service: &LocatedService,
    source: &Source,
    problems: &mut Vec<ManifestError>,
) {
    let context = service.context();
    let mut p = Problems::new(&context);
    match source {
        Source::Nothing => p.note(
            "spec.selector",
            "is not set and no EndpointSlice or Endpoints belongs to this Service: it has no \
             endpoints (connections are refused)",
        ),
        Source::Pods(selected) if selected.pods.is_empty() => p.note(
            "spec.selector",
            format!(
                "matches no pod in namespace {}: the Service has no endpoints (connections are \
                 refused)",
                service.def.name.namespace
            ),
        ),
        _ => {}
    }
    problems.append(&mut p.list);
}
