//! Resolution: endpoint sources, target ports, conditions, skips, conflicts, allocation.

use std::{fs, path::Path, time::UNIX_EPOCH};

use super::{errors, only, parse, pod, resolve_dir, resolve_dir_with, service, svc, write};
use crate::{
    model::{Endpoint, Protocol, ServiceType, TrafficPolicy},
    source::manifest::{Allocator, ManifestOptions, ManifestStore, Severity, validate_dir},
};

fn ip(text: &str) -> std::net::IpAddr {
    text.parse().unwrap()
}

/// (address, port, node, ready, serving, terminating) of each endpoint.
fn endpoints(endpoints: &[Endpoint]) -> Vec<(String, u16, String, bool, bool, bool)> {
    endpoints
        .iter()
        .map(|e| {
            (
                e.addr.to_string(),
                e.port,
                e.node_name.clone().unwrap_or_default(),
                e.ready,
                e.serving,
                e.terminating,
            )
        })
        .collect()
}

fn ready(addr: &str, port: u16, node: &str) -> (String, u16, String, bool, bool, bool) {
    (addr.into(), port, node.into(), true, true, false)
}

#[test]
fn the_examples_are_valid_and_resolve_as_documented() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    // The examples are a dual-stack cluster, as the demo runs them.
    let options = ManifestOptions {
        service_cidrs: "198.19.0.0/16,fd00:19::/108".parse().expect("valid"),
        ..ManifestOptions::default()
    };
    let problems = validate_dir(&dir, &options);
    assert_eq!(
        problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    let resolution = resolve_dir_with(&dir, &options);
    assert_eq!(resolution.state.services.len(), 6);
    let dual = service(&resolution, "echo-dual");
    assert_eq!(dual.cluster_ips, [ip("198.19.0.14"), ip("fd00:19::14")]);

    let lb = service(&resolution, "echo-lb");
    assert_eq!(lb.service_type, ServiceType::LoadBalancer);
    assert_eq!(lb.load_balancer_ips, [ip("198.19.200.1")]);
    assert_eq!(lb.health_check_node_port, Some(30090));
    assert_eq!(lb.load_balancer_source_ranges.len(), 1);
    let headless = service(&resolution, "echo-headless");
    assert_eq!(headless.service_type, ServiceType::Headless);
    assert!(headless.skip_reason.is_some());

    let echo = service(&resolution, "echo");
    assert_eq!(echo.service_type, ServiceType::ClusterIP);
    assert_eq!(echo.cluster_ip(), Some(ip("198.19.0.10")));
    assert_eq!(echo.skip_reason, None);
    // Every pod of both families: the model keeps them; each frontend is served by its own
    // family's (the planner's choice).
    let all = |port| {
        vec![
            ready("198.18.1.10", port, "node1"),
            ready("198.18.1.11", port, "node1"),
            ready("198.18.2.10", port, "node2"),
            ready("fd00:18:1::10", port, "node1"),
            ready("fd00:18:1::11", port, "node1"),
            ready("fd00:18:2::10", port, "node2"),
        ]
    };
    assert_eq!(
        (echo.ports[0].port, echo.ports[0].protocol),
        (80, Protocol::Tcp)
    );
    assert_eq!(endpoints(&echo.ports[0].endpoints), all(8080));
    assert_eq!(
        (echo.ports[1].port, echo.ports[1].protocol),
        (53, Protocol::Udp)
    );
    assert_eq!(endpoints(&echo.ports[1].endpoints), all(8081));

    let nodeport = service(&resolution, "echo-nodeport");
    assert_eq!(nodeport.service_type, ServiceType::NodePort);
    assert_eq!(nodeport.ports[0].node_port, Some(30080));
    assert_eq!(nodeport.ports[1].node_port, Some(30081));
    assert_eq!(endpoints(&nodeport.ports[1].endpoints), all(8081));

    let slice = service(&resolution, "echo-slice");
    let from_slice = |port| {
        vec![
            ready("198.18.1.10", port, "node1"),
            ready("198.18.2.10", port, "node2"),
        ]
    };
    assert_eq!(endpoints(&slice.ports[0].endpoints), from_slice(8080));
    assert_eq!(endpoints(&slice.ports[1].endpoints), from_slice(8081));

    // Every address of the demo is inside 198.18.0.0/15 or fd00::/8.
    let test_nets: [ipnet::IpNet; 2] = [
        "198.18.0.0/15".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ];
    let in_test_nets = |ip: &std::net::IpAddr| test_nets.iter().any(|net| net.contains(ip));
    for service in resolution.state.services.values() {
        let addresses = service.cluster_ips.iter().chain(&service.load_balancer_ips);
        assert!(addresses.into_iter().all(in_test_nets));
        for port in &service.ports {
            assert!(port.endpoints.iter().all(|e| in_test_nets(&e.addr)));
        }
    }
}

#[test]
fn selectors_derive_endpoints_like_the_endpoint_slice_controller() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &svc(
            "echo",
            "  selector: {app: echo}\n",
            "    - port: 80\n      targetPort: tcp-echo\n",
        ),
    );
    let pods = [
        pod("ready", "198.18.1.1", "node1", ""),
        // Not ready.
        pod("not-ready", "198.18.1.2", "node1", "")
            .replace("status: \"True\"", "status: \"False\""),
        // Ready but being deleted: serving and terminating, not ready.
        pod("deleting", "198.18.1.3", "node2", "").replace(
            "labels: {app: echo}",
            "labels: {app: echo}\n  deletionTimestamp: \"2024-01-01T00:00:00Z\"",
        ),
        // Finished pods are never endpoints.
        pod("done", "198.18.1.4", "node1", "  phase: Succeeded\n"),
        // Other labels, other namespace, no IP: not selected.
        pod("other", "198.18.1.5", "node1", "").replace("app: echo", "app: other"),
        pod("elsewhere", "198.18.1.6", "node1", "")
            .replace("labels:", "namespace: shop\n  labels:"),
        pod("no-ip", "198.18.1.7", "node1", "").replace("  podIP: 198.18.1.7\n", ""),
    ];
    write(dir.path(), "pods.yaml", &pods.join("---\n"));
    let resolution = resolve_dir(dir.path());
    let echo = service(&resolution, "echo");
    assert_eq!(
        endpoints(&echo.ports[0].endpoints),
        [
            ready("198.18.1.1", 8080, "node1"),
            (
                "198.18.1.2".into(),
                8080,
                "node1".into(),
                false,
                false,
                false
            ),
            ("198.18.1.3".into(), 8080, "node2".into(), false, true, true),
        ]
    );
}

#[test]
fn named_target_ports_resolve_per_pod_and_by_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let ports = "    - {name: tcp, port: 80, targetPort: web}
    - {name: udp, port: 80, targetPort: web, protocol: UDP}
    - {name: missing, port: 81, targetPort: nope}
";
    write(
        dir.path(),
        "svc.yaml",
        &svc("echo", "  selector: {app: echo}\n", ports),
    );
    let a = pod("a", "198.18.1.1", "node1", "").replace(
        "name: tcp-echo, containerPort: 8080",
        "name: web, containerPort: 8080",
    );
    let b = pod("b", "198.18.1.2", "node1", "").replace(
        "name: tcp-echo, containerPort: 8080",
        "name: web, containerPort: 9090",
    );
    // c names its UDP port "web": only the UDP service port finds it.
    let c = pod("c", "198.18.1.3", "node2", "").replace("name: udp-echo", "name: web");
    write(dir.path(), "pods.yaml", &[a, b, c].join("---\n"));
    let resolution = resolve_dir(dir.path());
    let echo = service(&resolution, "echo");
    assert_eq!(
        endpoints(&echo.ports[0].endpoints),
        [
            ready("198.18.1.1", 8080, "node1"),
            ready("198.18.1.2", 9090, "node1")
        ]
    );
    assert_eq!(
        endpoints(&echo.ports[1].endpoints),
        [ready("198.18.1.3", 8081, "node2")]
    );
    assert_eq!(echo.ports[2].endpoints, []);
    // A name no pod defines is not an error, but worth a warning.
    let warnings = only(&resolution.problems, Severity::Warning);
    assert_eq!(
        warnings,
        [
            "svc.yaml: document 1 (Service default/echo): spec.ports[2].targetPort: no pod \
          selected by this Service has a container port named \"nope\" for TCP: this port has \
          no endpoints"
                .replace(
                    "svc.yaml",
                    &dir.path().join("svc.yaml").display().to_string()
                )
        ]
    );
    assert_eq!(
        only(&resolution.problems, Severity::Error),
        Vec::<String>::new()
    );
}

const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: NAME
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
";

#[test]
fn slices_are_merged_deduplicated_and_win_over_pods() {
    let dir = tempfile::tempdir().unwrap();
    let ports = "    - {name: http, port: 80, targetPort: 8080}\n    - {name: dns, port: 53, protocol: UDP}\n";
    write(
        dir.path(),
        "svc.yaml",
        &svc("web", "  selector: {app: echo}\n", ports),
    );
    write(
        dir.path(),
        "pods.yaml",
        &pod("a", "198.18.1.1", "node1", ""),
    );
    let one = SLICE.replace("NAME", "web-1")
        + "endpoints:
  - {addresses: [198.18.2.1], nodeName: node2}
  - {addresses: [198.18.2.2], conditions: {ready: false}}
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
";
    // The second slice repeats 198.18.2.2 (now ready) and adds one; a third is IPv6 (its
    // endpoints are kept: the planner serves each frontend with those of its family).
    let two = SLICE.replace("NAME", "web-2")
        + "endpoints:
  - {addresses: [198.18.2.2], nodeName: node2}
  - {addresses: [198.18.2.3], conditions: {ready: false, serving: true, terminating: true}}
ports: [{name: http, port: 8080}]
";
    let v6 = SLICE.replace("NAME", "web-3").replace("IPv4", "IPv6")
        + "endpoints: [{addresses: [\"fd00::1\"]}]\nports: [{name: http, port: 8080}]\n";
    write(dir.path(), "slices.yaml", &[one, two, v6].join("---\n"));
    let resolution = resolve_dir(dir.path());
    let web = service(&resolution, "web");
    assert_eq!(
        endpoints(&web.ports[0].endpoints),
        [
            ready("198.18.2.1", 8080, "node2"),
            ready("198.18.2.2", 8080, "node2"),
            ("198.18.2.3".into(), 8080, String::new(), false, true, true),
            ready("fd00::1", 8080, ""),
        ]
    );
    assert_eq!(
        endpoints(&web.ports[1].endpoints),
        [
            ready("198.18.2.1", 5353, "node2"),
            (
                "198.18.2.2".into(),
                5353,
                String::new(),
                false,
                false,
                false
            ),
        ]
    );
    assert_eq!(
        only(&resolution.problems, Severity::Warning),
        Vec::<String>::new()
    );

    // A Service port no slice names gets a warning explaining how slices match.
    write(
        dir.path(),
        "svc.yaml",
        &svc("web", "", "    - {name: web, port: 80}\n"),
    );
    let resolution = resolve_dir(dir.path());
    let warnings = only(&resolution.problems, Severity::Warning);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(
            "spec.ports[0].name: no EndpointSlice of this Service has a port named \"web\""
        )
    );
}

#[test]
fn the_state_carries_the_trigger_times_of_the_slices_it_uses() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &svc("web", "", "    - {name: http, port: 80}\n"),
    );
    let annotated = |name: &str, time: &str| {
        SLICE.replace("NAME", name).replace(
            "  labels:",
            &format!(
                "  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{time}\"}}\n  labels:"
            ),
        ) + "endpoints: [{addresses: [198.18.2.1]}]\nports: [{name: http, port: 8080}]\n"
    };
    let plain = SLICE.replace("NAME", "web-plain")
        + "endpoints: [{addresses: [198.18.2.2]}]\nports: [{name: http, port: 8080}]\n";
    // IPv6 slices are not programmed, so their changes are not timed either.
    let v6 = annotated("web-v6", "2026-11-22T05:00:03Z").replace("IPv4", "IPv6");
    write(
        dir.path(),
        "slices.yaml",
        &[
            annotated("web-1", "2026-11-22T05:00:01Z"),
            annotated("web-2", "2026-11-22T05:00:02.25Z"),
            plain,
            v6,
        ]
        .join("---\n"),
    );
    let resolution = resolve_dir(dir.path());
    let times: Vec<(String, f64)> = resolution
        .state
        .trigger_times
        .iter()
        .map(|(slice, time)| {
            let unix = time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
            (slice.to_string(), unix - 1_795_323_600.0)
        })
        .collect();
    assert_eq!(
        times,
        [
            ("default/web-1".into(), 1.0),
            ("default/web-2".into(), 2.25)
        ]
    );
    assert_eq!(service(&resolution, "web").ports[0].endpoints.len(), 2);
}

#[test]
fn v1_endpoints_are_used_without_slices() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &svc("web", "", "    - {name: http, port: 80}\n"),
    );
    write(
        dir.path(),
        "endpoints.yaml",
        "apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
  - addresses: [{ip: 198.18.1.1, nodeName: node1}]
    notReadyAddresses: [{ip: 198.18.1.2}]
    ports: [{name: http, port: 8080}]
",
    );
    let resolution = resolve_dir(dir.path());
    assert_eq!(
        endpoints(&service(&resolution, "web").ports[0].endpoints),
        [
            ready("198.18.1.1", 8080, "node1"),
            (
                "198.18.1.2".into(),
                8080,
                String::new(),
                false,
                false,
                false
            ),
        ]
    );
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "svc.yaml",
        &svc(
            "echo",
            "  selector: {app: echo}\n  publishNotReadyAddresses: true\n",
            "    - port: 80\n      targetPort: 8080\n",
        ),
    );
    write(
        dir.path(),
        "pods.yaml",
        &pod("a", "198.18.1.1", "node1", "").replace("\"True\"", "\"False\""),
    );
    let resolution = resolve_dir(dir.path());
    assert_eq!(
        endpoints(&service(&resolution, "echo").ports[0].endpoints),
        [ready("198.18.1.1", 8080, "node1")]
    );
}

#[test]
fn skipped_services_are_listed_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = "    - port: 80\n";
    let labelled = |n: &str, label: &str| {
        svc(n, "", port).replace("  name: ", &format!("  labels: {{{label}}}\n  name: "))
    };
    let docs = [
        svc("headless", "  clusterIP: None\n", port),
        svc(
            "external",
            "  type: ExternalName\n  externalName: db.example\n",
            "",
        ),
        labelled(
            "other-proxy",
            "service.kubernetes.io/service-proxy-name: cilium",
        ),
        labelled("dns-only", "service.kubernetes.io/headless: \"\""),
        svc("plain", "", port),
    ];
    write(dir.path(), "svc.yaml", &docs.join("---\n"));
    let resolution = resolve_dir(dir.path());
    let reason = |n: &str| {
        service(&resolution, n)
            .skip_reason
            .clone()
            .unwrap_or_default()
    };
    assert_eq!(
        service(&resolution, "headless").service_type,
        ServiceType::Headless
    );
    assert_eq!(service(&resolution, "headless").cluster_ip(), None);
    assert!(reason("headless").contains("headless"));
    assert_eq!(
        service(&resolution, "external").service_type,
        ServiceType::ExternalName
    );
    assert!(reason("external").contains("ExternalName"));
    assert!(reason("other-proxy").contains("service-proxy-name=cilium"));
    assert!(service(&resolution, "other-proxy").cluster_ip().is_some());
    assert!(reason("dns-only").contains("service.kubernetes.io/headless"));
    assert_eq!(service(&resolution, "plain").skip_reason, None);
}

#[test]
fn service_fields_reach_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "  type: LoadBalancer
  externalIPs: [198.18.9.2, 198.18.9.1]
  loadBalancerSourceRanges: [198.18.0.0/16]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
";
    let status = "status:\n  loadBalancer:\n    ingress: [{ip: 198.18.9.3}]\n";
    write(
        dir.path(),
        "svc.yaml",
        &format!("{}{status}", svc("lb", extra, "    - port: 80\n")),
    );
    let resolution = resolve_dir(dir.path());
    let lb = service(&resolution, "lb");
    assert_eq!(lb.service_type, ServiceType::LoadBalancer);
    assert_eq!(lb.external_ips, [ip("198.18.9.1"), ip("198.18.9.2")]);
    assert_eq!(lb.load_balancer_ips, [ip("198.18.9.3")]);
    let health_check = lb
        .health_check_node_port
        .expect("allocated healthCheckNodePort");
    assert!((30_000..=32_767).contains(&health_check));
    assert_ne!(Some(health_check), lb.ports[0].node_port);
    assert_eq!(lb.affinity_timeout, Some(60));
    assert_eq!(lb.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(lb.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(lb.load_balancer_source_ranges.len(), 1);
    let node_port = lb.ports[0].node_port.expect("allocated nodePort");
    assert!((30_000..=32_767).contains(&node_port));
}

#[test]
fn allocations_are_stable_across_a_restart_and_freed_when_services_go() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    fs::create_dir(&manifests).unwrap();
    let state = dir.path().join("state/allocations.json");
    write(
        &manifests,
        "a.yaml",
        &svc(
            "a",
            "  type: NodePort\n",
            "    - {name: http, port: 80}\n    - {name: dns, port: 53, protocol: UDP}\n",
        ),
    );
    write(&manifests, "b.yaml", &svc("b", "", "    - port: 80\n"));
    let cidr = ManifestOptions::default().service_cidrs;

    let run = || {
        let mut store = ManifestStore::default();
        store.load_dir(&manifests).unwrap();
        let mut allocator = Allocator::open(&state, cidr.clone()).unwrap();
        let resolution = store.desired_state(&mut allocator);
        assert!(!allocator.is_dirty(), "saved");
        resolution
    };
    let first = run();
    assert!(state.exists());
    let a = service(&first, "a");
    assert!(a.cluster_ip().is_some());
    assert!(a.ports.iter().all(|p| p.node_port.is_some()));
    assert_ne!(a.ports[0].node_port, a.ports[1].node_port);
    assert_ne!(a.cluster_ip(), service(&first, "b").cluster_ip());

    // A restart (new store, allocator reopened from the file) gives the same answers, even
    // with a newcomer whose hash might have wanted the same addresses.
    write(
        &manifests,
        "0.yaml",
        &svc("aa", "  type: NodePort\n", "    - port: 80\n"),
    );
    let second = run();
    for n in ["a", "b"] {
        assert_eq!(service(&first, n), service(&second, n));
    }

    // b goes: its address is freed from the state file.
    fs::remove_file(manifests.join("b.yaml")).unwrap();
    run();
    let saved = fs::read_to_string(&state).unwrap();
    assert!(saved.contains("default/a"));
    assert!(!saved.contains("default/b\""), "{saved}");
}

#[test]
fn explicit_claims_win_over_allocations() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &svc("a", "", "    - port: 80\n"));
    let mut store = ManifestStore::default();
    store.load_dir(dir.path()).unwrap();
    let mut allocator = Allocator::in_memory(ManifestOptions::default().service_cidrs);
    let first = store.desired_state(&mut allocator);
    let taken = service(&first, "a").cluster_ip().unwrap();

    // A new manifest claims a's allocated address: it gets it, and a moves.
    write(
        dir.path(),
        "b.yaml",
        &svc("b", &format!("  clusterIP: {taken}\n"), "    - port: 80\n"),
    );
    store.load_dir(dir.path()).unwrap();
    let second = store.desired_state(&mut allocator);
    assert_eq!(service(&second, "b").cluster_ip(), Some(taken));
    let moved = service(&second, "a").cluster_ip().unwrap();
    assert_ne!(moved, taken);
    assert!(only(&second.problems, Severity::Note)[0].contains("now claimed by a manifest"));
}

#[test]
fn conflicting_claims_are_errors_and_the_later_service_is_not_programmed() {
    let dir = tempfile::tempdir().unwrap();
    let docs = [
        svc(
            "a",
            "  clusterIP: 198.19.0.5\n  type: NodePort\n",
            "    - {port: 80, nodePort: 30001}\n",
        ),
        svc("b", "  clusterIP: 198.19.0.5\n", "    - port: 80\n"),
        svc(
            "c",
            "  type: NodePort\n",
            "    - {port: 80, nodePort: 30001, protocol: UDP}\n",
        ),
    ];
    write(dir.path(), "svc.yaml", &docs.join("---\n"));
    // The same object in another file.
    write(dir.path(), "z.yaml", &svc("a", "", "    - port: 81\n"));

    let problems = validate_dir(dir.path(), &ManifestOptions::default());
    let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
    let shown: Vec<_> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{shown:#?}");
    assert_eq!(
        (errors[0].document, errors[0].field.as_deref()),
        (Some(2), Some("spec.clusterIP"))
    );
    assert!(shown[0].contains("cluster IP 198.19.0.5 is also claimed by Service default/a"));
    assert_eq!(
        (errors[1].document, errors[1].field.as_deref()),
        (Some(3), Some("spec.ports[0].nodePort"))
    );
    assert!(shown[2].contains("z.yaml: document 1 (Service default/a): metadata.name: Service default/a is also defined in"));

    let resolution = resolve_dir(dir.path());
    assert_eq!(service(&resolution, "a").skip_reason, None);
    assert_eq!(
        service(&resolution, "a").ports[0].port,
        80,
        "the first file wins"
    );
    assert!(
        service(&resolution, "b")
            .skip_reason
            .as_ref()
            .unwrap()
            .contains("198.19.0.5")
    );
    assert!(
        service(&resolution, "c")
            .skip_reason
            .as_ref()
            .unwrap()
            .contains("30001")
    );
}

#[test]
fn validate_dir_collects_every_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &svc("a", "", "    - port: 0\n"));
    write(
        dir.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {}\n",
    );
    let problems = validate_dir(dir.path(), &ManifestOptions::default());
    let errors: Vec<_> = problems
        .iter()
        .filter(|p| p.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("a.yaml: document 1 (Service default/a): spec.ports[0].port"));
    assert!(errors[1].contains("b.yaml: document 1 (Pod): metadata.name: is missing"));

    let empty = tempfile::tempdir().unwrap();
    let problems = validate_dir(empty.path(), &ManifestOptions::default());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].severity, Severity::Warning);
}

#[test]
fn an_sctp_port_is_listed_as_not_served_and_the_other_ports_are() {
    let text = svc(
        "web",
        "",
        "    - name: http\n      port: 80\n    - name: signalling\n      port: 9000\n      \
         protocol: SCTP\n",
    );
    let parsed = parse("t.yaml", &text);
    assert_eq!(
        only(&parsed.problems, Severity::Error),
        Vec::<String>::new()
    );
    assert_eq!(
        only(&parsed.problems, Severity::Note),
        [format!(
            "t.yaml: document 1 (Service default/web): spec.ports[1].protocol: {}",
            crate::source::manifest::validate::SCTP_UNSERVED
        )]
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &text);
    let resolution = resolve_dir(dir.path());
    let web = service(&resolution, "web");
    assert_eq!(web.skip_reason, None);
    assert_eq!(
        web.ports
            .iter()
            .map(|p| (p.name.as_str(), p.port))
            .collect::<Vec<_>>(),
        [("http", 80)]
    );
    assert_eq!(
        web.unserved_ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol.as_str(), p.port))
            .collect::<Vec<_>>(),
        [("signalling", "SCTP", 9000)]
    );
}

#[test]
fn node_ports_follow_the_service_node_port_range() {
    let text = svc(
        "web",
        "  type: NodePort\n",
        "    - name: a\n      port: 80\n      nodePort: 40000\n    - name: b\n      port: 81\n",
    );
    assert_eq!(
        errors(&text),
        [
            "t.yaml: document 1 (Service default/web): spec.ports[0].nodePort: expected a port in \
          the NodePort range 30000-32767 (--service-node-port-range), got 40000: pick one in the \
          range or leave it out to have one allocated"
        ]
    );
    let options = ManifestOptions {
        node_port_range: "40000-40999".parse().unwrap(),
        ..ManifestOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &text);
    let resolution = resolve_dir_with(dir.path(), &options);
    assert_eq!(
        only(&resolution.problems, Severity::Error),
        Vec::<String>::new()
    );
    let ports: Vec<u16> = service(&resolution, "web")
        .ports
        .iter()
        .map(|p| p.node_port.expect("a nodePort"))
        .collect();
    assert_eq!(ports[0], 40000);
    assert!(
        (40_001..=40_999).contains(&ports[1]),
        "allocated from the range: {ports:?}"
    );
}

/// A Node manifest named `name`, with `extra` lines under `metadata` and `spec` text.
fn node(name: &str, zone: Option<&str>, extra: &str) -> String {
    let labels = zone.map_or(String::new(), |zone| {
        format!("  labels: {{topology.kubernetes.io/zone: {zone}}}\n")
    });
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{labels}{extra}")
}

/// (address, zone hints, node hints) of each endpoint.
fn hints(endpoints: &[Endpoint]) -> Vec<(String, Vec<String>, Vec<String>)> {
    endpoints
        .iter()
        .map(|e| {
            (
                e.addr.to_string(),
                e.hints.for_zones.clone(),
                e.hints.for_nodes.clone(),
            )
        })
        .collect()
}

#[test]
fn traffic_distribution_gives_selected_pods_the_hints_the_endpoint_slice_controller_writes() {
    let dir = tempfile::tempdir().unwrap();
    let port = "    - {name: tcp, port: 80, targetPort: 8080}\n";
    let services = [
        svc(
            "zonal",
            "  selector: {app: echo}\n  trafficDistribution: PreferClose\n",
            port,
        ),
        svc(
            "same-zone",
            "  selector: {app: echo}\n  trafficDistribution: PreferSameZone\n",
            port,
        ),
        svc(
            "same-node",
            "  selector: {app: echo}\n  trafficDistribution: PreferSameNode\n",
            port,
        ),
        svc("anywhere", "  selector: {app: echo}\n", port),
    ];
    write(dir.path(), "svc.yaml", &services.join("---\n"));
    // node3 has no Node manifest, node2's has no zone; d is not ready.
    let pods = [
        pod("a", "198.18.1.1", "node1", ""),
        pod("b", "198.18.2.1", "node2", ""),
        pod("c", "198.18.3.1", "node3", ""),
        pod("d", "198.18.1.2", "node1", "").replace("status: \"True\"", "status: \"False\""),
    ];
    write(dir.path(), "pods.yaml", &pods.join("---\n"));
    let nodes = [node("node1", Some("zone-a"), ""), node("node2", None, "")];
    write(dir.path(), "nodes.yaml", &nodes.join("---\n"));
    let resolution = resolve_dir(dir.path());
    let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let zone_hints = vec![
        ("198.18.1.1".to_owned(), strings(&["zone-a"]), vec![]),
        ("198.18.1.2".to_owned(), vec![], vec![]),
        ("198.18.2.1".to_owned(), vec![], vec![]),
        ("198.18.3.1".to_owned(), vec![], vec![]),
    ];
    for name in ["zonal", "same-zone"] {
        let endpoints = &service(&resolution, name).ports[0].endpoints;
        assert_eq!(hints(endpoints), zone_hints, "{name}");
    }
    assert_eq!(
        hints(&service(&resolution, "same-node").ports[0].endpoints),
        [
            (
                "198.18.1.1".to_owned(),
                strings(&["zone-a"]),
                strings(&["node1"])
            ),
            ("198.18.1.2".to_owned(), vec![], vec![]),
            ("198.18.2.1".to_owned(), vec![], strings(&["node2"])),
            ("198.18.3.1".to_owned(), vec![], strings(&["node3"])),
        ]
    );
    let none = hints(&service(&resolution, "anywhere").ports[0].endpoints);
    assert!(
        none.iter()
            .all(|(_, zones, nodes)| zones.is_empty() && nodes.is_empty())
    );
}

#[test]
fn an_unknown_traffic_distribution_is_the_api_servers_error() {
    let text = svc(
        "web",
        "  trafficDistribution: PreferNearby\n",
        "    - {port: 80}\n",
    );
    assert_eq!(
        errors(&text),
        [
            "t.yaml: document 1 (Service default/web): spec.trafficDistribution: \"PreferNearby\" \
          is not a traffic distribution: use PreferSameZone (or its older name PreferClose) or \
          PreferSameNode, or leave it out"
        ]
    );
}

#[test]
fn this_nodes_node_manifest_gives_its_zone_and_drain_state() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [
        node("node1", Some("zone-a"), ""),
        node(
            "node2",
            Some("zone-b"),
            "spec:\n  taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]\n",
        ),
        node(
            "node3",
            None,
            "  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n",
        ),
    ];
    write(dir.path(), "nodes.yaml", &nodes.join("---\n"));
    let state_of = |node_name: Option<&str>| {
        let options = ManifestOptions {
            node_name: node_name.map(str::to_owned),
            ..ManifestOptions::default()
        };
        resolve_dir_with(dir.path(), &options).state.node
    };
    for (name, zone, draining) in [
        ("node1", Some("zone-a"), false),
        ("node2", Some("zone-b"), true),
        ("node3", None, true),
    ] {
        let state = state_of(Some(name)).unwrap_or_else(|| panic!("{name}'s Node"));
        assert_eq!((state.zone(), state.draining), (zone, draining), "{name}");
    }
    assert_eq!(state_of(Some("node4")), None);
    assert_eq!(state_of(None), None);
}

#[test]
fn a_node_is_cluster_scoped_and_named_without_a_namespace() {
    let text = node("Node_1", None, "  namespace: kube-system\n");
    let parsed = parse("t.yaml", &text);
    assert_eq!(
        parsed
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "t.yaml: document 1 (Node Node_1): metadata.namespace: is ignored: Nodes are \
             cluster-scoped",
            "t.yaml: document 1 (Node Node_1): metadata.name: \"Node_1\" is not a valid name: \
             use lower-case letters, digits, '-' and '.', at most 253 characters",
        ]
    );
}
