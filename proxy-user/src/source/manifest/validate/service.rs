//! Checks of a v1 Service.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::{
    NameRule, check_meta, check_port,
    families::{FamilyPolicy, FamilyRequest, decide},
    is_dns1123_label, is_port_name, parse_ip,
};
use crate::{
    model::{IpFamily, Protocol, ServiceName, TrafficPolicy, UnservedPort},
    source::manifest::{
        ManifestOptions, ServiceCidrs,
        error::Problems,
        k8s::{
            self, IntOrString, Integer, IpMode, PortProtocol, ServiceSpecType, SessionAffinity,
            TrafficPolicySpec,
        },
        object::{ClusterIps, PortDef, ServiceDef, TargetPort, TrafficDistribution},
    },
};

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
const MAX_AFFINITY_TIMEOUT: i64 = 86_400;
/// Why an SCTP port is listed but not served: the kernel runs no cgroup connect hook for SCTP
/// sockets (`sctp_connect` has none), so the socket LB never sees them, and the XDP and tc
/// programs translate TCP and UDP only.
pub(crate) const SCTP_UNSERVED: &str = "SCTP is not served by sluice (its datapath carries TCP \
                                        and UDP only); the Service's other ports are served";

pub(crate) fn check_service(
    raw: &k8s::Service,
    options: &ManifestOptions,
    p: &mut Problems,
) -> Option<ServiceDef> {
    let meta = check_meta(&raw.metadata, NameRule::Label1035, p);
    let spec = &raw.spec;
    let spec_type = spec.type_.unwrap_or_default();
    let cluster_ips = check_cluster_ips(spec, spec_type, &options.service_cidrs, p);
    let (ports, unserved_ports) = check_ports(spec, spec_type, cluster_ips.headless, options, p);
    let families = &cluster_ips.families;
    let external_ips = spec
        .external_ips
        .iter()
        .enumerate()
        .filter_map(|(i, ip)| of_families(ip, families, &format!("spec.externalIPs[{i}]"), p))
        .collect();
    let load_balancer_ips = check_load_balancer_ips(raw, families, p);
    let load_balancer_ips = if spec_type == ServiceSpecType::LoadBalancer {
        load_balancer_ips
    } else {
        // Kubernetes ignores these for other types; so do we.
        Vec::new()
    };
    let load_balancer_source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .enumerate()
        .filter_map(|(i, cidr)| {
            source_range(cidr, &format!("spec.loadBalancerSourceRanges[{i}]"), p)
        })
        .collect();
    let affinity_timeout = check_affinity(spec, p);
    if spec_type == ServiceSpecType::ExternalName
        && spec.external_name.as_deref().unwrap_or("").is_empty()
    {
        p.error(
            "spec.externalName",
            "is missing: a Service of type ExternalName needs the DNS name it points to",
        );
    }
    let external_traffic_policy = traffic_policy(spec.external_traffic_policy);
    let wants_health_check = spec_type == ServiceSpecType::LoadBalancer
        && external_traffic_policy == TrafficPolicy::Local;
    let health_check_node_port =
        check_health_check_node_port(spec.health_check_node_port, wants_health_check, options, p);
    let traffic_distribution = check_traffic_distribution(spec.traffic_distribution.as_deref(), p);
    if p.has_errors() {
        return None;
    }
    let (namespace, name) = meta?;
    Some(ServiceDef {
        name: ServiceName { namespace, name },
        labels: raw.metadata.labels.clone(),
        spec_type,
        cluster_ips,
        ports,
        unserved_ports,
        selector: spec.selector.clone().unwrap_or_default(),
        external_ips,
        load_balancer_ips,
        affinity_timeout,
        external_traffic_policy,
        internal_traffic_policy: traffic_policy(spec.internal_traffic_policy),
        load_balancer_source_ranges,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        wants_node_ports: match spec_type {
            ServiceSpecType::NodePort => true,
            ServiceSpecType::LoadBalancer => spec.allocate_load_balancer_node_ports != Some(false),
            ServiceSpecType::ClusterIP | ServiceSpecType::ExternalName => false,
        },
        health_check_node_port,
        wants_health_check,
        traffic_distribution,
    })
}

/// `spec.trafficDistribution`: the values kube-apiserver accepts.
fn check_traffic_distribution(
    value: Option<&str>,
    p: &mut Problems,
) -> Option<TrafficDistribution> {
    match value? {
        "PreferClose" | "PreferSameZone" => Some(TrafficDistribution::PreferSameZone),
        "PreferSameNode" => Some(TrafficDistribution::PreferSameNode),
        other => {
            p.error(
                "spec.trafficDistribution",
                format!(
                    "{other:?} is not a traffic distribution: use PreferSameZone (or its older \
                     name PreferClose) or PreferSameNode, or leave it out"
                ),
            );
            None
        }
    }
}

/// The LoadBalancer IPs nodes answer for, as kube-proxy picks them: the
/// `status.loadBalancer.ingress[].ip`s whose `ipMode` is `VIP` (the default). `ipMode: Proxy`
/// (KEP-1860) means the load balancer rewrites the traffic, so in-cluster clients must go
/// through it rather than be short-circuited to the pods. `spec.loadBalancerIP` is only a
/// request to the cloud provider, which publishes what it assigned in the status.
fn check_load_balancer_ips(
    raw: &k8s::Service,
    families: &[IpFamily],
    p: &mut Problems,
) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for (i, ingress) in raw.status.load_balancer.ingress.iter().enumerate() {
        let Some(ip) = ingress.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        if ingress.ip_mode == Some(IpMode::Proxy) {
            p.note(
                &field,
                format!(
                    "{ip} has ipMode: Proxy: not served by the nodes, so its traffic goes \
                     through the load balancer, as kube-proxy does"
                ),
            );
            continue;
        }
        ips.extend(of_families(ip, families, &field, p));
    }
    let requested = raw
        .spec
        .load_balancer_ip
        .as_deref()
        .filter(|ip| !ip.is_empty());
    if let Some(requested) = requested
        && !raw
            .status
            .load_balancer
            .ingress
            .iter()
            .any(|ingress| ingress.ip.as_deref() == Some(requested))
    {
        p.note(
            "spec.loadBalancerIP",
            format!(
                "{requested} is not served until the load balancer publishes it in \
                 status.loadBalancer.ingress (as kube-proxy); to serve an address on the nodes \
                 without one, put it in spec.externalIPs"
            ),
        );
    }
    ips
}

/// `spec.healthCheckNodePort`: only for LoadBalancer with `externalTrafficPolicy: Local`, as
/// Kubernetes requires; in the NodePort range.
fn check_health_check_node_port(
    port: Option<Integer>,
    wanted: bool,
    options: &ManifestOptions,
    p: &mut Problems,
) -> Option<u16> {
    const FIELD: &str = "spec.healthCheckNodePort";
    let Integer(value) = port?;
    if value == 0 {
        return None;
    }
    if !wanted {
        p.error(
            FIELD,
            "may only be set for type LoadBalancer with externalTrafficPolicy: Local: remove it",
        );
        return None;
    }
    in_node_port_range(value, options, FIELD, p)
}

fn traffic_policy(policy: Option<TrafficPolicySpec>) -> TrafficPolicy {
    match policy.unwrap_or_default() {
        TrafficPolicySpec::Cluster => TrafficPolicy::Cluster,
        TrafficPolicySpec::Local => TrafficPolicy::Local,
    }
}

/// `spec.clusterIP(s)`, `spec.ipFamilies` and `spec.ipFamilyPolicy`: the families the Service
/// gets on this cluster (`families::decide`) and the address given for each.
fn check_cluster_ips(
    spec: &k8s::ServiceSpec,
    spec_type: ServiceSpecType,
    cidrs: &ServiceCidrs,
    p: &mut Problems,
) -> ClusterIps {
    let cluster_ip = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    if let (Some(ip), Some(first)) = (cluster_ip, spec.cluster_ips.first())
        && ip != first
    {
        p.error(
            "spec.clusterIPs[0]",
            format!("{first:?} differs from spec.clusterIP {ip:?}: make them equal or drop one"),
        );
        return ClusterIps::default();
    }
    // (text, field) of every address given.
    let texts: Vec<(&str, String)> = if spec.cluster_ips.is_empty() {
        cluster_ip
            .map(|ip| (ip, "spec.clusterIP".to_owned()))
            .into_iter()
            .collect()
    } else {
        spec.cluster_ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (ip.as_str(), format!("spec.clusterIPs[{i}]")))
            .collect()
    };
    if spec_type == ServiceSpecType::ExternalName {
        if let Some((text, field)) = texts.first()
            && *text != "None"
        {
            p.warning(field, "is ignored for type ExternalName");
        }
        return ClusterIps::default();
    }
    let headless = texts.first().is_some_and(|(text, _)| *text == "None");
    if headless {
        check_headless(&texts, spec_type, p);
    }
    let mut given = Vec::new();
    let mut ok = true;
    for (text, field) in texts.iter().filter(|_| !headless) {
        if let Ok(ip) = text.parse::<IpAddr>() {
            given.push(ip);
        } else {
            ok = false;
            p.error(
                field,
                format!(
                    "expected an IP address, \"None\" (headless) or nothing (allocate one), got \
                     {text:?}"
                ),
            );
        }
    }
    let requested = FamilyRequest {
        policy: check_policy(spec.ip_family_policy.as_deref(), p),
        families: check_families(&spec.ip_families, p),
        cluster_ips: given.clone(),
        headless_selectorless: headless && spec.selector.as_ref().is_none_or(BTreeMap::is_empty),
    };
    if !ok || p.has_errors() {
        return ClusterIps::default();
    }
    let families = match decide(&cidrs.families(), &requested) {
        Ok(families) => families,
        Err(err) => {
            p.error(&err.field, err.message);
            return ClusterIps::default();
        }
    };
    let mut given: Vec<Option<IpAddr>> = given.into_iter().map(Some).collect();
    given.resize(if headless { 0 } else { families.len() }, None);
    for (ip, (_, field)) in given.iter().flatten().zip(&texts) {
        let cidr = cidrs.of(IpFamily::of(*ip));
        if let Some(cidr) = cidr.filter(|cidr| !cidr.contains(ip)) {
            p.error(
                field,
                format!(
                    "{ip} is outside the service CIDR {cidr}: use an address inside it, or \
                     leave it out to have one allocated"
                ),
            );
        }
    }
    ClusterIps {
        headless,
        families,
        given,
    }
}

/// A headless Service is of type ClusterIP and has no other cluster IP.
fn check_headless(texts: &[(&str, String)], spec_type: ServiceSpecType, p: &mut Problems) {
    if matches!(
        spec_type,
        ServiceSpecType::NodePort | ServiceSpecType::LoadBalancer
    ) {
        p.error(
            &texts[0].1,
            format!(
                "a headless Service (clusterIP: None) cannot be of type {spec_type:?}: drop \
                 clusterIP or use type ClusterIP"
            ),
        );
    }
    if let Some((_, field)) = texts.get(1) {
        p.error(
            field,
            "a headless Service (clusterIPs[0]: None) has no other cluster IP: remove it",
        );
    }
}

fn check_policy(text: Option<&str>, p: &mut Problems) -> Option<FamilyPolicy> {
    Some(match text? {
        "SingleStack" => FamilyPolicy::SingleStack,
        "PreferDualStack" => FamilyPolicy::PreferDualStack,
        "RequireDualStack" => FamilyPolicy::RequireDualStack,
        other => {
            p.error(
                "spec.ipFamilyPolicy",
                format!("expected SingleStack, PreferDualStack or RequireDualStack, got {other:?}"),
            );
            return None;
        }
    })
}

fn check_families(texts: &[String], p: &mut Problems) -> Vec<IpFamily> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(i, text)| match text.as_str() {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            other => {
                p.error(
                    &format!("spec.ipFamilies[{i}]"),
                    format!("expected IPv4 or IPv6, got {other:?}"),
                );
                None
            }
        })
        .collect()
}

/// The ports the datapath serves, and the ones it lists as not served (SCTP).
fn check_ports(
    spec: &k8s::ServiceSpec,
    spec_type: ServiceSpecType,
    headless: bool,
    options: &ManifestOptions,
    p: &mut Problems,
) -> (Vec<PortDef>, Vec<UnservedPort>) {
    if spec.ports.is_empty() && spec_type != ServiceSpecType::ExternalName && !headless {
        p.error(
            "spec.ports",
            "is empty: a Service needs at least one port (only headless and ExternalName \
             Services may have none)",
        );
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ports: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
    let mut node_ports: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
    let mut defs = Vec::new();
    let mut unserved = Vec::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        let name = port.name.as_deref().unwrap_or("");
        if name.is_empty() && spec.ports.len() > 1 {
            p.error(
                &at("name"),
                "is missing: every port needs a name when a Service has more than one port",
            );
        } else if !name.is_empty() && !is_dns1123_label(name) {
            p.error(
                &at("name"),
                format!(
                    "{name:?} is not a valid port name: use lower-case letters, digits and '-', \
                     at most 63 characters"
                ),
            );
        }
        if let Some(first) = names.insert(name, i)
            && !name.is_empty()
        {
            p.error(
                &at("name"),
                format!("duplicate port name {name:?}: spec.ports[{first}] has it too"),
            );
        }
        let number = if port.port.is_none() {
            p.error(&at("port"), "is missing: give the Service port, 1-65535");
            None
        } else {
            check_port(port.port, &at("port"), p)
        };
        let protocol = match port.protocol.unwrap_or(PortProtocol::Tcp) {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
            PortProtocol::Sctp => {
                p.note(&at("protocol"), SCTP_UNSERVED);
                unserved.extend(number.map(|port| UnservedPort {
                    name: name.to_owned(),
                    protocol: "SCTP".to_owned(),
                    port,
                    reason: SCTP_UNSERVED.to_owned(),
                }));
                continue;
            }
        };
        if let Some(number) = number
            && let Some(first) = ports.insert((number, protocol), i)
        {
            p.error(
                &at("port"),
                format!("duplicate port {number}/{protocol}: spec.ports[{first}] has it too"),
            );
        }
        let target = check_target_port(port.target_port.as_ref(), number, &at("targetPort"), p);
        let node_port = check_node_port(port.node_port, spec_type, options, &at("nodePort"), p);
        if let Some(node_port) = node_port
            && let Some(first) = node_ports.insert((node_port, protocol), i)
        {
            p.error(
                &at("nodePort"),
                format!(
                    "duplicate nodePort {node_port}/{protocol}: spec.ports[{first}] has it too"
                ),
            );
        }
        if let (Some(port), Some(target)) = (number, target) {
            defs.push(PortDef {
                name: name.to_owned(),
                protocol,
                port,
                target,
                node_port,
            });
        }
    }
    (defs, unserved)
}

fn check_target_port(
    target: Option<&IntOrString>,
    port: Option<u16>,
    field: &str,
    p: &mut Problems,
) -> Option<TargetPort> {
    const EXPECTED: &str = "expected an integer 1-65535 or an IANA port name";
    match target {
        None | Some(IntOrString::Int(0)) => port.map(TargetPort::Number),
        Some(IntOrString::Int(value)) => {
            if let Ok(target) = u16::try_from(*value) {
                Some(TargetPort::Number(target))
            } else {
                p.error(field, format!("{EXPECTED}, got {value}"));
                None
            }
        }
        Some(IntOrString::String(name)) if is_port_name(name) => {
            Some(TargetPort::Name(name.clone()))
        }
        Some(IntOrString::String(name)) => {
            let hint = if name.parse::<u16>().is_ok() {
                format!(" (a quoted number is a port name: write {name} without quotes)")
            } else {
                String::new()
            };
            p.error(field, format!("{EXPECTED}, got {name:?}{hint}"));
            None
        }
    }
}

fn check_node_port(
    node_port: Option<Integer>,
    spec_type: ServiceSpecType,
    options: &ManifestOptions,
    field: &str,
    p: &mut Problems,
) -> Option<u16> {
    let Integer(value) = node_port?;
    if value == 0 {
        return None;
    }
    if !matches!(
        spec_type,
        ServiceSpecType::NodePort | ServiceSpecType::LoadBalancer
    ) {
        p.error(
            field,
            format!(
                "nodePort is only allowed for type NodePort or LoadBalancer, this Service is \
                 {spec_type:?}: remove it or change spec.type"
            ),
        );
        return None;
    }
    in_node_port_range(value, options, field, p)
}

/// A nodePort inside `--service-node-port-range` (any port in cluster mode, where the API
/// server checked it against its own range).
fn in_node_port_range(
    value: i64,
    options: &ManifestOptions,
    field: &str,
    p: &mut Problems,
) -> Option<u16> {
    let range = options.node_port_range;
    match u16::try_from(value) {
        Ok(port) if range.contains(port) => Some(port),
        _ => {
            p.error(
                field,
                format!(
                    "expected a port in the NodePort range {range} (--service-node-port-range), \
                     got {value}: pick one in the range or leave it out to have one allocated"
                ),
            );
            None
        }
    }
}

fn check_affinity(spec: &k8s::ServiceSpec, p: &mut Problems) -> Option<u32> {
    if spec.session_affinity.unwrap_or_default() != SessionAffinity::ClientIP {
        return None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|config| config.client_ip.as_ref())
        .and_then(|client_ip| client_ip.timeout_seconds);
    match timeout {
        None => Some(DEFAULT_AFFINITY_TIMEOUT),
        Some(Integer(seconds)) if (1..=MAX_AFFINITY_TIMEOUT).contains(&seconds) => {
            u32::try_from(seconds).ok()
        }
        Some(Integer(seconds)) => {
            p.error(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("expected an integer 1-{MAX_AFFINITY_TIMEOUT} (seconds), got {seconds}"),
            );
            None
        }
    }
}

/// An address of one of the Service's families; one of another family is dropped with a note,
/// as kube-proxy serves a Service in its own families only.
fn of_families(text: &str, families: &[IpFamily], field: &str, p: &mut Problems) -> Option<IpAddr> {
    let ip = parse_ip(text, field, p)?;
    let family = IpFamily::of(ip);
    if families.is_empty() || families.contains(&family) {
        return Some(ip);
    }
    p.note(
        field,
        format!("{ip} is not served: the Service has no {family} cluster IP (spec.ipFamilies)"),
    );
    None
}

fn source_range(text: &str, field: &str, p: &mut Problems) -> Option<IpNet> {
    let Ok(net) = text.trim().parse::<IpNet>() else {
        p.error(
            field,
            format!("expected a CIDR like 203.0.113.0/24 or 2001:db8::/64, got {text:?}"),
        );
        return None;
    };
    Some(net.trunc())
}
