//! Parsing: documents, kinds, and errors that name file, document, object and field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{errors, only, parse, svc};
use crate::{
    model::Protocol,
    source::manifest::{
        Severity,
        k8s::ServiceSpecType,
        object::{Kind, Object, TargetPort},
        parse::ParsedFile,
    },
};

const PORT: &str = "    - port: 80\n";

#[test]
fn multi_document_yaml_counts_empty_documents_and_skips_them() {
    let text = format!(
        "# only a comment\n---\n{}\n---\n---\n{}",
        svc("a", "", PORT),
        svc("b", "", PORT)
    );
    let parsed = parse("t.yaml", &text);
    assert_eq!(parsed.problems, vec![]);
    let found: Vec<_> = parsed
        .objects
        .iter()
        .map(|o| (o.key.name.as_str(), o.document))
        .collect();
    // A comment before the first `---` is no document; `---` twice makes an empty one.
    assert_eq!(found, [("a", 1), ("b", 3)]);
}

#[test]
fn json_files_and_lists_are_read() {
    let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
         "spec": {"ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    ]}
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b", "namespace": "x"},
     "spec": {"ports": [{"port": 81}]}}"#;
    let parsed = parse("t.json", text);
    assert_eq!(
        only(&parsed.problems, Severity::Error),
        Vec::<String>::new()
    );
    let keys: Vec<_> = parsed.objects.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(keys, ["Service default/a", "Service x/b"]);
    assert_eq!(
        only(&parsed.problems, Severity::Note),
        [
            "t.json: document 1 (ConfigMap default/c): items[1].kind: ConfigMap is ignored: \
          sluice reads Service, EndpointSlice, Endpoints, Pod, Node and List"
        ]
    );
}

#[test]
fn typed_lists_may_omit_the_kind_of_their_items() {
    let text = "apiVersion: v1\nkind: ServiceList\nitems:\n  - metadata: {name: a}\n    spec: \
                {ports: [{port: 80}]}\n  - metadata: {name: b}\n    spec: {ports: [{port: 0}]}\n";
    let parsed = parse("t.yaml", text);
    assert_eq!(parsed.objects.len(), 1);
    assert_eq!(
        only(&parsed.problems, Severity::Error),
        [
            "t.yaml: document 1 (Service default/b): items[1].spec.ports[0].port: expected an \
          integer 1-65535, got 0"
        ]
    );
}

#[test]
fn unknown_kinds_are_a_note_not_an_error() {
    let parsed = parse(
        "t.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    );
    assert_eq!(parsed.objects, []);
    assert!(!parsed.has_errors());
    assert_eq!(parsed.problems[0].severity, Severity::Note);
}

#[test]
fn the_error_names_file_document_object_and_field() {
    let text = format!(
        "{}\n---\n{}",
        svc("ok", "", PORT),
        svc("web", "", "    - port: 80\n      targetPort: web_80\n")
    );
    let parsed = parse("examples/web.yaml", &text);
    assert_eq!(
        only(&parsed.problems, Severity::Error),
        [
            "examples/web.yaml: document 2 (Service default/web): spec.ports[0].targetPort: \
          expected an integer 1-65535 or an IANA port name, got \"web_80\""
        ]
    );
    let error = &parsed.problems[0];
    assert_eq!(error.document, Some(2));
    assert_eq!(error.field.as_deref(), Some("spec.ports[0].targetPort"));
    assert_eq!(
        error.object.as_ref().unwrap().to_string(),
        "Service default/web"
    );
    // The valid document still parsed.
    assert_eq!(parsed.objects.len(), 1);
}

#[test]
fn type_errors_carry_the_serde_path() {
    let text = svc("web", "", "    - port: [80]\n");
    assert_eq!(
        errors(&text),
        [
            "t.yaml: document 1 (Service default/web): spec.ports[0].port: invalid type: \
          sequence, expected an integer"
        ]
    );
    let text = svc("web", "", "    - port: \"80\"\n");
    assert_eq!(
        errors(&text),
        [
            "t.yaml: document 1 (Service default/web): spec.ports[0].port: expected an integer, \
          got the string \"80\" (write numbers without quotes)"
        ]
    );
    let text = svc("web", "  type: Nodeport\n", PORT);
    let errors = errors(&text);
    assert!(
        errors[0].starts_with(
            "t.yaml: document 1 (Service default/web): spec.type: unknown variant `Nodeport`"
        ),
        "{errors:?}"
    );
}

/// Each Service rule, with the field its error names.
#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases, one per rule")]
fn service_rules() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "",
            "    - port: 70000\n",
            "spec.ports[0].port",
            "expected an integer 1-65535, got 70000",
        ),
        (
            "",
            "    - protocol: TCP\n",
            "spec.ports[0].port",
            "is missing",
        ),
        (
            "",
            "    - port: 80\n      targetPort: \"8080\"\n",
            "spec.ports[0].targetPort",
            "write 8080 without quotes",
        ),
        (
            "",
            "    - port: 80\n      targetPort: 65536\n",
            "spec.ports[0].targetPort",
            "got 65536",
        ),
        (
            "  type: NodePort\n  healthCheckNodePort: 30100\n",
            PORT,
            "spec.healthCheckNodePort",
            "may only be set for type LoadBalancer with externalTrafficPolicy: Local",
        ),
        (
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 80\n",
            PORT,
            "spec.healthCheckNodePort",
            "expected a port in the NodePort range",
        ),
        (
            "  type: NodePort\n",
            "    - port: 80\n      nodePort: 80\n",
            "spec.ports[0].nodePort",
            "NodePort range 30000-32767 (--service-node-port-range), got 80",
        ),
        (
            "",
            "    - port: 80\n      nodePort: 30080\n",
            "spec.ports[0].nodePort",
            "only allowed for type NodePort or LoadBalancer",
        ),
        (
            "",
            "    - {name: a, port: 80}\n    - {name: a, port: 81}\n",
            "spec.ports[1].name",
            "duplicate port name \"a\"",
        ),
        (
            "",
            "    - {name: a, port: 80}\n    - {name: b, port: 80}\n",
            "spec.ports[1].port",
            "duplicate port 80/TCP",
        ),
        (
            "",
            "    - {name: a, port: 80}\n    - {port: 81}\n",
            "spec.ports[1].name",
            "every port needs a name",
        ),
        (
            "  clusterIP: 198.19.0.300\n",
            PORT,
            "spec.clusterIP",
            "expected an IP address, \"None\"",
        ),
        (
            "  clusterIP: 10.0.0.1\n",
            PORT,
            "spec.clusterIP",
            "outside the service CIDR 198.19.0.0/16",
        ),
        (
            "  clusterIP: None\n  type: NodePort\n",
            PORT,
            "spec.clusterIP",
            "headless",
        ),
        (
            "  externalIPs: [\"1.2.3\"]\n",
            PORT,
            "spec.externalIPs[0]",
            "expected an IP address",
        ),
        (
            "  loadBalancerSourceRanges: [\"10.0.0.0/40\"]\n",
            PORT,
            "spec.loadBalancerSourceRanges[0]",
            "expected a CIDR",
        ),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
            PORT,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "1-86400",
        ),
        (
            "  type: ExternalName\n",
            "",
            "spec.externalName",
            "is missing",
        ),
        ("", "", "spec.ports", "needs at least one port"),
    ];
    for (extra, ports, field, message) in cases {
        let text = svc("web", extra, ports);
        let parsed = parse("t.yaml", &text);
        let found = parsed
            .problems
            .iter()
            .find(|p| p.is_error() && p.field.as_deref() == Some(field))
            .unwrap_or_else(|| {
                panic!(
                    "no error on {field} for:\n{text}\ngot {:#?}",
                    parsed.problems
                )
            });
        assert!(
            found.message.contains(message),
            "{found}\nwanted {message:?}"
        );
        assert_eq!(
            found.object.as_ref().unwrap().to_string(),
            "Service default/web"
        );
        assert!(
            parsed.objects.is_empty(),
            "an invalid Service is not an object"
        );
    }
}

#[test]
fn object_level_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "apiVersion: v1\nkind: Service\nspec: {ports: [{port: 80}]}\n",
            "t.yaml: document 1 (Service): metadata.name",
            "is missing",
        ),
        (
            "apiVersion: v2\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
            "t.yaml: document 1 (Service default/a): apiVersion",
            "expected v1 for Service, got \"v2\"",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\n",
            "t.yaml: document 1 (Pod default/p): apiVersion",
            "is missing",
        ),
        (
            "apiVersion: v1\nmetadata: {name: a}\n",
            "t.yaml: document 1 (object default/a): kind",
            "is missing",
        ),
        (
            "- a\n- b\n",
            "t.yaml: document 1",
            "expected a Kubernetes object",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {ports: [{port: 80}]}\n",
            "t.yaml: document 1 (Service default/Web): metadata.name",
            "not a valid name",
        ),
    ];
    for (text, prefix, message) in cases {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(prefix), "{} / {prefix}", errors[0]);
        assert!(errors[0].contains(message), "{} / {message}", errors[0]);
    }
}

#[test]
fn a_syntax_error_names_its_document_and_keeps_those_before() {
    let text = format!(
        "{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b\n---\n{}",
        svc("a", "", PORT),
        svc("c", "", PORT)
    );
    let parsed = parse("t.yaml", &text);
    let errors = only(&parsed.problems, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("t.yaml: document 2: invalid YAML: "),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("at line 12 column 11"),
        "names the line: {}",
        errors[0]
    );
    assert!(errors[0].ends_with("the documents after this one are not read until it is fixed"));
    let names: Vec<_> = parsed.objects.iter().map(|o| o.key.name.as_str()).collect();
    assert_eq!(names, ["a"]);
}

#[test]
fn a_duplicate_key_spoils_only_its_document() {
    let text = format!(
        "{}\n---\napiVersion: v1\nkind: Service\nkind: Pod\n---\n{}",
        svc("a", "", PORT),
        svc("c", "", PORT)
    );
    let parsed = parse("t.yaml", &text);
    let errors = only(&parsed.problems, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("t.yaml: document 2: invalid YAML: duplicate entry with key \"kind\""),
        "{}",
        errors[0]
    );
    let names: Vec<_> = parsed.objects.iter().map(|o| o.key.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn yaml_anchors_and_merge_keys_are_applied() {
    let text = svc(
        "web",
        "",
        "    - &http {name: http, port: 80, targetPort: 8080}\n    - <<: *http\n      name: alt\n      \
         port: 81\n",
    );
    let parsed = parse("t.yaml", &text);
    assert_eq!(parsed.problems, vec![]);
    let Object::Service(service) = &parsed.objects[0].object else {
        panic!("not a Service: {parsed:?}")
    };
    let ports: Vec<_> = service
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.target.clone()))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 80, TargetPort::Number(8080)),
            ("alt", 81, TargetPort::Number(8080))
        ]
    );
    let errors = errors(&svc("web", "", "    - <<: 5\n      port: 80\n"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("t.yaml: document 1: invalid YAML merge key: "),
        "{}",
        errors[0]
    );
}

#[test]
fn a_json_syntax_error_is_reported() {
    let errors = errors_of("t.json", "{\"apiVersion\": \"v1\",, }");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("t.json: document 1: invalid JSON: "),
        "{}",
        errors[0]
    );
}

fn errors_of(name: &str, text: &str) -> Vec<String> {
    only(&parse(name, text).problems, Severity::Error)
}

#[test]
fn the_same_object_twice_in_a_file_is_an_error_and_the_first_wins() {
    let text = format!(
        "{}\n---\n{}",
        svc("a", "", PORT),
        svc("a", "", "    - port: 81\n")
    );
    let parsed = parse("t.yaml", &text);
    assert_eq!(
        only(&parsed.problems, Severity::Error),
        [
            "t.yaml: document 2 (Service default/a): metadata.name: Service default/a is already \
          defined in document 1 of this file: rename or remove one of them"
        ]
    );
    let Object::Service(service) = &parsed.objects[0].object else {
        panic!()
    };
    assert_eq!(service.ports[0].port, 80);
}

#[test]
fn service_defaults_and_fields() {
    let text = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels:
spec:
  type: LoadBalancer
  clusterIPs: [198.19.3.4]
  selector: {app: web}
  externalIPs: [198.18.9.9, \"fd00::9\"]
  loadBalancerIP: 198.18.9.10
  loadBalancerSourceRanges: [198.18.0.7/16]
  sessionAffinity: ClientIP
  externalTrafficPolicy: Local
  ports:
    - name: http
      port: 80
      targetPort: http-web
    - name: dns
      protocol: UDP
      port: 53
      nodePort: 30053
status:
  loadBalancer:
    ingress: [{ip: 198.18.9.11}, {hostname: lb.example}, {ip: 198.18.9.12, ipMode: VIP},
      {ip: 198.18.9.13, ipMode: Proxy}]
";
    let parsed = parse("t.yaml", text);
    assert!(!parsed.has_errors(), "{:#?}", parsed.problems);
    let Object::Service(s) = &parsed.objects[0].object else {
        panic!()
    };
    assert_eq!(s.name.to_string(), "shop/web");
    assert_eq!(s.spec_type, ServiceSpecType::LoadBalancer);
    assert_eq!(s.cluster_ips.given, [Some("198.19.3.4".parse().unwrap())]);
    assert_eq!(s.cluster_ips.families, [crate::model::IpFamily::V4]);
    assert_eq!(s.ports[0].target, TargetPort::Name("http-web".into()));
    assert_eq!(s.ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.ports[1].target, TargetPort::Number(53));
    assert_eq!(s.ports[1].node_port, Some(30053));
    assert_eq!(
        s.external_ips,
        ["198.18.9.9".parse::<std::net::IpAddr>().unwrap()]
    );
    // The status's VIP-mode IPs; not the requested loadBalancerIP, not the Proxy-mode one.
    assert_eq!(
        s.load_balancer_ips,
        ["198.18.9.11", "198.18.9.12"].map(|ip| ip.parse::<std::net::IpAddr>().unwrap())
    );
    assert_eq!(
        s.load_balancer_source_ranges[0].to_string(),
        "198.18.0.0/16"
    );
    assert_eq!(s.affinity_timeout, Some(10_800));
    assert!(s.wants_node_ports);
    // Notes: the IPv6 external IP of this IPv4-only Service is skipped, and neither
    // loadBalancerIP nor the Proxy-mode ingress IP is served.
    let notes = only(&parsed.problems, Severity::Note);
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(notes[1].contains("status.loadBalancer.ingress[3].ip: 198.18.9.13 has ipMode: Proxy"));
    assert!(notes[2].contains("spec.loadBalancerIP: 198.18.9.10 is not served until"));
}

#[test]
fn headless_and_quoted_none() {
    let parsed = parse("t.yaml", &svc("h", "  clusterIP: None\n", ""));
    let Object::Service(s) = &parsed.objects[0].object else {
        panic!("{:#?}", parsed.problems)
    };
    assert!(s.cluster_ips.headless);
    assert_eq!(s.cluster_ips.given, []);
}

#[test]
fn slice_conditions_take_kubernetes_defaults() {
    let text = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [198.18.1.1]
  - addresses: [198.18.1.2]
    conditions: {ready: false}
  - addresses: [198.18.1.3]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: node1
ports:
  - {name: http, port: 8080}
";
    let parsed = parse("t.yaml", text);
    assert!(parsed.problems.is_empty(), "{:#?}", parsed.problems);
    let Object::EndpointSlice(slice) = &parsed.objects[0].object else {
        panic!()
    };
    let conditions: Vec<_> = slice
        .endpoints
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conditions,
        [
            (true, true, false),
            (false, false, false),
            (false, true, true)
        ]
    );
    assert_eq!(slice.service.as_deref(), Some("web"));
    assert_eq!(slice.ports[0].protocol, Protocol::Tcp);
}

#[test]
fn slice_problems() {
    let base = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {kubernetes.io/service-name: web}\n";
    // IPv6 slices are read; FQDN ones are skipped, not errors.
    let parsed = parse(
        "t.yaml",
        &format!("{base}addressType: IPv6\nendpoints: [{{addresses: [\"fd00::1\"]}}]\n"),
    );
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    let Object::EndpointSlice(slice) = &parsed.objects[0].object else {
        panic!("{:?}", parsed.objects)
    };
    assert_eq!(slice.family, Some(crate::model::IpFamily::V6));
    assert_eq!(
        slice.endpoints[0].addresses,
        ["fd00::1".parse::<std::net::IpAddr>().unwrap()]
    );
    let parsed = parse(
        "t.yaml",
        &format!("{base}addressType: FQDN\nendpoints: [{{addresses: [\"a.example\"]}}]\n"),
    );
    assert!(!parsed.has_errors());
    assert_eq!(parsed.objects[0].key.kind, Kind::EndpointSlice);
    assert!(only(&parsed.problems, Severity::Note)[0].contains("FQDN slices are not programmed"));
    assert_eq!(
        errors(&format!(
            "{base}addressType: IPv6\nendpoints: [{{addresses: [198.18.1.1]}}]\n"
        )),
        [
            "t.yaml: document 1 (EndpointSlice default/s): endpoints[0].addresses[0]: 198.18.1.1 \
             is an IPv4 address in an IPv6 slice: move it to a slice with addressType IPv4"
        ]
    );
    assert_eq!(
        errors(&format!("{base}endpoints: []\n")),
        [
            "t.yaml: document 1 (EndpointSlice default/s): addressType: is missing: set it to \
             IPv4 or IPv6"
        ]
    );
    assert_eq!(
        errors(&format!(
            "{base}addressType: IPv4\nendpoints: [{{addresses: [198.18.1.x]}}]\n"
        )),
        [
            "t.yaml: document 1 (EndpointSlice default/s): endpoints[0].addresses[0]: expected an \
          IP address, got \"198.18.1.x\""
        ]
    );
    let parsed = parse(
        "t.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n",
    );
    assert!(!parsed.has_errors());
    assert!(only(&parsed.problems, Severity::Warning)[0].contains("belongs to no Service"));
}

/// A slice with `annotations` (YAML flow mapping) and one endpoint.
fn annotated_slice(annotations: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: s
  labels: {{kubernetes.io/service-name: web}}
  annotations: {annotations}
addressType: IPv4
endpoints: [{{addresses: [198.18.1.1]}}]
"
    )
}

fn trigger_time_of(parsed: &ParsedFile) -> Option<SystemTime> {
    let Object::EndpointSlice(slice) = &parsed.objects[0].object else {
        panic!("not a slice: {:?}", parsed.objects)
    };
    slice.trigger_time
}

#[test]
fn slice_trigger_times_are_rfc3339() {
    let unix = |seconds: u64, nanos: u32| UNIX_EPOCH + Duration::new(seconds, nanos);
    // 2026-11-22T05:00:00Z is 1795323600 s after the epoch.
    for (written, expected) in [
        ("2026-11-22T05:00:00Z", unix(1_795_323_600, 0)),
        // What the endpoint-slice controller writes: Go's RFC3339Nano, in UTC.
        (
            "2026-11-22T05:00:00.123456789Z",
            unix(1_795_323_600, 123_456_789),
        ),
        ("2026-11-22T05:00:00.5Z", unix(1_795_323_600, 500_000_000)),
        ("2026-11-22T07:00:00+02:00", unix(1_795_323_600, 0)),
    ] {
        let parsed = parse(
            "t.yaml",
            &annotated_slice(&format!(
                "{{endpoints.kubernetes.io/last-change-trigger-time: \"{written}\"}}"
            )),
        );
        assert!(
            parsed.problems.is_empty(),
            "{written}: {:#?}",
            parsed.problems
        );
        assert_eq!(trigger_time_of(&parsed), Some(expected), "{written}");
    }
    // No annotation (or other annotations only): no trigger time, and nothing to say.
    for annotations in ["{}", "null", "{other: x}"] {
        let parsed = parse("t.yaml", &annotated_slice(annotations));
        assert!(parsed.problems.is_empty(), "{:#?}", parsed.problems);
        assert_eq!(trigger_time_of(&parsed), None);
    }
}

#[test]
fn a_bad_trigger_time_is_a_warning_and_the_slice_is_still_used() {
    let field = "t.yaml: document 1 (EndpointSlice default/s): \
                 metadata.annotations.endpoints.kubernetes.io/last-change-trigger-time: ";
    for (annotation, says) in [
        ("\"yesterday\"", "\"yesterday\" is not an RFC 3339 time ("),
        // Without an offset the time is ambiguous: RFC 3339 requires one.
        (
            "\"2026-11-22T05:00:00\"",
            "\"2026-11-22T05:00:00\" is not an RFC 3339 time (",
        ),
        ("1795323600", "expected an RFC 3339 time string"),
    ] {
        let parsed = parse(
            "t.yaml",
            &annotated_slice(&format!(
                "{{endpoints.kubernetes.io/last-change-trigger-time: {annotation}}}"
            )),
        );
        let warnings = only(&parsed.problems, Severity::Warning);
        assert_eq!(warnings.len(), 1, "{annotation}: {:#?}", parsed.problems);
        assert!(
            warnings[0].starts_with(&format!("{field}{says}")),
            "{annotation}: {}",
            warnings[0]
        );
        assert!(
            warnings[0].contains("kubeproxy_network_programming_duration_seconds"),
            "{}",
            warnings[0]
        );
        assert!(!parsed.has_errors());
        let Object::EndpointSlice(slice) = &parsed.objects[0].object else {
            panic!()
        };
        assert_eq!(slice.trigger_time, None);
        assert_eq!(slice.endpoints.len(), 1, "the endpoints are kept");
    }
    // Annotations that are not even a mapping cost nothing either.
    let parsed = parse("t.yaml", &annotated_slice("[a, b]"));
    assert!(parsed.problems.is_empty(), "{:#?}", parsed.problems);
    assert_eq!(parsed.objects.len(), 1);
}

#[test]
fn endpoints_and_pods() {
    let text = "apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
  - addresses: [{ip: 198.18.1.1, nodeName: node1}]
    notReadyAddresses: [{ip: 198.18.1.2}]
    ports: [{name: http, port: 8080}]
  - addresses: [{ip: 198.18.1.999}]
    ports: [{port: 8080}]
";
    assert_eq!(
        errors(text),
        [
            "t.yaml: document 1 (Endpoints default/web): subsets[1].addresses[0].ip: expected an \
          IP address, got \"198.18.1.999\""
        ]
    );

    let text = "apiVersion: v1
kind: Pod
metadata:
  name: p
  labels: {app: echo}
  deletionTimestamp: \"2024-01-01T00:00:00Z\"
spec:
  nodeName: node1
  containers:
    - ports: [{name: web, containerPort: 8080}]
status:
  podIP: 198.18.1.1
  conditions: [{type: Initialized, status: \"True\"}, {type: Ready, status: \"False\"}]
";
    let parsed = parse("t.yaml", text);
    assert!(parsed.problems.is_empty(), "{:#?}", parsed.problems);
    let Object::Pod(pod) = &parsed.objects[0].object else {
        panic!()
    };
    assert!(!pod.ready);
    assert!(pod.terminating);
    assert_eq!(pod.node_name.as_deref(), Some("node1"));
    assert_eq!(pod.ports[0].port, 8080);

    assert_eq!(
        errors(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{ports: [{containerPort: 0}]}]\nstatus: {podIP: 198.18.1.1}\n"
        ),
        [
            "t.yaml: document 1 (Pod default/p): spec.containers[0].ports[0].containerPort: \
          expected an integer 1-65535, got 0"
        ]
    );
}
