//! Cluster mode's half of the manifest pipeline: objects that the Kubernetes API server sends
//! one at a time, checked by the same code as manifest files and resolved by the same step.
//!
//! ```text
//! API JSON ─parse_object─▶ checked objects (last good kept) ─catalog─▶ resolve ─▶ DesiredState
//! ```
//!
//! The differences from files are deliberate and few: there are no files or documents (a
//! problem names the object and [`API_ORIGIN`]); any cluster IP is accepted (the API server
//! owns the service CIDR); and nothing is allocated (the API server assigns cluster IPs and
//! nodePorts), so a Service it left without one is listed but not programmed.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

use super::{
    ManifestOptions,
    alloc::Allocator,
    catalog::Catalog,
    error::{Context, ManifestError, Severity},
    object::{Kind, ObjectKey},
    parse::{ParsedFile, ParsedObject, parse_object},
    resolve::{Resolution, resolve},
};

/// What problems about API objects name instead of a file.
pub const API_ORIGIN: &str = "kubernetes API";

/// The checked Services and EndpointSlices the API server holds, as last seen.
#[derive(Debug)]
pub struct ApiObjects {
    options: ManifestOptions,
    objects: BTreeMap<ObjectKey, ParsedObject>,
}

impl Default for ApiObjects {
    fn default() -> Self {
        ApiObjects {
            // Every cluster IP is valid: the API server already checked it against its own
            // service CIDR, which sluice does not know.
            options: ManifestOptions {
                service_cidr: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid CIDR"),
            },
            objects: BTreeMap::new(),
        }
    }
}

impl ApiObjects {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Adds or replaces one object, given as the API server's JSON (with `apiVersion` and
    /// `kind`). An object that fails the checks keeps its last good version, as in a file.
    /// Returns what the checks found.
    pub fn apply(&mut self, object: serde_json::Value) -> Vec<ManifestError> {
        let (parsed, problems) = self.check(object);
        if let Some(parsed) = parsed {
            self.objects.insert(parsed.key.clone(), parsed);
        }
        problems
    }

    /// Forgets an object; true when it was held.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = ObjectKey {
            kind,
            namespace: namespace_or_default(namespace).to_owned(),
            name: name.to_owned(),
        };
        self.objects.remove(&key).is_some()
    }

    /// Replaces every object of `kind` with `objects` (a complete list, after a (re-)list):
    /// those not in it are gone. An object of the list that fails the checks keeps its last
    /// good version.
    pub fn replace_kind(
        &mut self,
        kind: Kind,
        objects: impl IntoIterator<Item = serde_json::Value>,
    ) -> Vec<ManifestError> {
        let mut fresh = BTreeMap::new();
        let mut problems = Vec::new();
        let mut broken = Vec::new();
        for object in objects {
            let (namespace, name) = object_name(&object);
            let (parsed, mut found) = self.check(object);
            problems.append(&mut found);
            match parsed {
                Some(parsed) if parsed.key.kind == kind => {
                    fresh.insert(parsed.key.clone(), parsed);
                }
                Some(_) => {}
                None => broken.push(ObjectKey {
                    kind,
                    namespace,
                    name,
                }),
            }
        }
        for key in broken {
            if let Some(old) = self.objects.get(&key) {
                fresh.insert(key, old.clone());
            }
        }
        self.objects.retain(|key, _| key.kind != kind);
        self.objects.extend(fresh);
        problems
    }

    /// The desired state of everything held. Nothing is allocated.
    pub fn desired_state(&self) -> Resolution {
        let origin = Path::new(API_ORIGIN);
        let catalog = Catalog::build(
            self.objects
                .values()
                .map(|object| (origin, std::slice::from_ref(object))),
        );
        resolve(&catalog, &mut Allocator::disabled())
    }

    fn check(&self, object: serde_json::Value) -> (Option<ParsedObject>, Vec<ManifestError>) {
        let mut parsed = ParsedFile::default();
        let context = Context::new(PathBuf::from(API_ORIGIN), None);
        match serde_yaml::to_value(object) {
            Ok(value) => parse_object(value, &context, None, &self.options, &mut parsed),
            Err(e) => parsed.problems.push(context.problem(
                Severity::Error,
                None,
                format!("cannot read the object: {e}"),
            )),
        }
        let valid = !parsed.has_errors();
        let object = parsed.objects.pop().filter(|object| {
            valid && matches!(object.key.kind, Kind::Service | Kind::EndpointSlice)
        });
        (object, parsed.problems)
    }
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        "default"
    } else {
        namespace
    }
}

/// `metadata.namespace` and `metadata.name` of raw JSON, for keeping a broken object's last
/// good version.
fn object_name(object: &serde_json::Value) -> (String, String) {
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or_default();
    (
        namespace_or_default(namespace).to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::model::{Endpoint, ServiceName, ServiceType};

    fn name(name: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A Service as `kubectl get -o json` shows it: every default filled in by the API server.
    fn service(name: &str, cluster_ip: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name, "namespace": "default", "labels": labels,
                "resourceVersion": "812", "uid": "5d0f4bc6-7d3c-4c57-9a40-7d1a3b3f2f01",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {
                "type": "NodePort",
                "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 31080},
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 8053, "nodePort": 31053},
                ],
                "selector": {"app": name},
                "sessionAffinity": "None",
                "externalTrafficPolicy": "Cluster",
                "internalTrafficPolicy": "Cluster",
            },
            "status": {"loadBalancer": {}},
        })
    }

    fn slice(name: &str, service: &str, endpoints: Value) -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name, "namespace": "default", "resourceVersion": "813",
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 8080},
                {"name": "dns", "protocol": "UDP", "port": 8053},
            ],
        })
    }

    fn endpoint(addr: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: addr.parse().expect("valid address"),
            port: 8080,
            node_name: Some(node.into()),
            ready,
            serving,
            terminating,
        }
    }

    fn state(objects: &ApiObjects) -> crate::model::DesiredState {
        objects.desired_state().state
    }

    #[test]
    fn slices_are_merged_and_addresses_come_from_the_api_server() {
        let mut objects = ApiObjects::new();
        // 10.96.0.0/12 is kubeadm's service CIDR, outside sluice's standalone default.
        assert!(
            objects
                .apply(service("web", "10.96.0.10", json!({})))
                .is_empty()
        );
        let problems = objects.apply(slice(
            "web-abcde",
            "web",
            json!([
                {"addresses": ["10.244.1.5"], "nodeName": "node1",
                 "conditions": {"ready": true, "serving": true, "terminating": false}},
                // Conditions left out take Kubernetes' defaults: ready, serving.
                {"addresses": ["10.244.2.7"], "nodeName": "node2"},
            ]),
        ));
        assert!(problems.is_empty(), "{problems:?}");
        objects.apply(slice(
            "web-fghij",
            "web",
            json!([
                {"addresses": ["10.244.2.9"], "nodeName": "node2",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                // The same endpoint in two slices counts once.
                {"addresses": ["10.244.1.5"], "nodeName": "node1",
                 "conditions": {"ready": false, "serving": false, "terminating": false}},
            ]),
        ));
        let state = state(&objects);
        let web = &state.services[&name("web")];
        assert_eq!(web.service_type, ServiceType::NodePort);
        assert_eq!(web.cluster_ip, Some("10.96.0.10".parse().expect("valid")));
        assert_eq!(web.skip_reason, None);
        assert_eq!(web.ports[0].node_port, Some(31080));
        assert_eq!(web.ports[1].node_port, Some(31053));
        assert_eq!(
            web.ports[0].endpoints,
            [
                endpoint("10.244.1.5", "node1", true, true, false),
                endpoint("10.244.2.7", "node2", true, true, false),
                endpoint("10.244.2.9", "node2", false, true, true),
            ]
        );
        assert_eq!(web.ports[1].endpoints.len(), 3);
        assert!(web.ports[1].endpoints.iter().all(|e| e.port == 8053));
    }

    #[test]
    fn skip_rules_are_the_standalone_ones() {
        let mut objects = ApiObjects::new();
        let labelled = |key: &str| json!({ key: "x" });
        objects.apply(service(
            "other",
            "10.96.0.11",
            labelled("service.kubernetes.io/service-proxy-name"),
        ));
        objects.apply(service(
            "dns-only",
            "10.96.0.12",
            labelled("service.kubernetes.io/headless"),
        ));
        let mut headless = service("headless", "None", json!({}));
        headless["spec"]["type"] = json!("ClusterIP");
        for port in headless["spec"]["ports"].as_array_mut().expect("ports") {
            port.as_object_mut().expect("port").remove("nodePort");
        }
        objects.apply(headless);
        objects.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "outside", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.org", "sessionAffinity": "None"},
        }));
        let state = state(&objects);
        let reason = |n: &str| {
            state.services[&name(n)]
                .skip_reason
                .clone()
                .unwrap_or_default()
        };
        assert!(
            reason("other").contains("another proxy"),
            "{}",
            reason("other")
        );
        assert!(
            reason("dns-only").contains("headless"),
            "{}",
            reason("dns-only")
        );
        assert!(
            reason("headless").contains("headless"),
            "{}",
            reason("headless")
        );
        assert!(
            reason("outside").contains("ExternalName"),
            "{}",
            reason("outside")
        );
        assert_eq!(
            state.services[&name("headless")].service_type,
            ServiceType::Headless
        );
    }

    #[test]
    fn nothing_is_allocated() {
        let mut objects = ApiObjects::new();
        let mut web = service("web", "10.96.0.10", json!({}));
        web["spec"]["ports"][0]
            .as_object_mut()
            .expect("port")
            .remove("nodePort");
        objects.apply(web);
        let resolution = objects.desired_state();
        let web = &resolution.state.services[&name("web")];
        assert!(
            web.skip_reason
                .as_deref()
                .is_some_and(|why| why.contains("API server")),
            "{web:?}"
        );
    }

    #[test]
    fn a_broken_update_keeps_the_last_good_version_and_names_the_object() {
        let mut objects = ApiObjects::new();
        objects.apply(service("web", "10.96.0.10", json!({})));
        let mut broken = service("web", "10.96.0.99", json!({}));
        broken["spec"]["ports"][0]["protocol"] = json!("SCTP");
        let problems = objects.apply(broken);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|p| p
                .starts_with("kubernetes API (Service default/web): spec.ports[0].protocol: SCTP")),
            "{shown:?}"
        );
        let state = state(&objects);
        assert_eq!(
            state.services[&name("web")].cluster_ip,
            Some("10.96.0.10".parse().expect("valid"))
        );
    }

    #[test]
    fn replacing_a_kind_forgets_what_the_list_no_longer_has() {
        let mut objects = ApiObjects::new();
        objects.apply(service("web", "10.96.0.10", json!({})));
        objects.apply(service("gone", "10.96.0.11", json!({})));
        objects.apply(slice(
            "web-1",
            "web",
            json!([{"addresses": ["10.244.1.5"]}]),
        ));
        let problems = objects.replace_kind(
            Kind::Service,
            [
                service("web", "10.96.0.10", json!({})),
                service("new", "10.96.0.12", json!({})),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        let state = state(&objects);
        let names: Vec<_> = state.services.keys().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["new", "web"]);
        // Slices are another kind: untouched.
        assert_eq!(state.services[&name("web")].ports[0].endpoints.len(), 1);
        assert!(objects.delete(Kind::EndpointSlice, "", "web-1"));
        assert!(!objects.delete(Kind::EndpointSlice, "default", "web-1"));
        assert!(state_has_no_endpoints(&objects, "web"));
    }

    fn state_has_no_endpoints(objects: &ApiObjects, service: &str) -> bool {
        state(objects).services[&name(service)]
            .ports
            .iter()
            .all(|port| port.endpoints.is_empty())
    }

    #[test]
    fn objects_through_k8s_openapi_types_check_the_same() {
        // What the watcher hands over: the typed object, serialized back to JSON.
        let typed: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(service("web", "10.96.0.10", json!({}))).expect("a Service");
        let mut objects = ApiObjects::new();
        let problems = objects.apply(serde_json::to_value(typed).expect("serializes"));
        assert!(problems.is_empty(), "{problems:?}");
        let typed: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(slice(
            "web-1",
            "web",
            json!([{"addresses": ["10.244.1.5"], "nodeName": "node1"}]),
        ))
        .expect("an EndpointSlice");
        objects.apply(serde_json::to_value(typed).expect("serializes"));
        let state = state(&objects);
        assert_eq!(
            state.services[&name("web")].ports[0].endpoints,
            [endpoint("10.244.1.5", "node1", true, true, false)]
        );
    }

    fn trigger_time(objects: &ApiObjects, slice: &str) -> Option<std::time::SystemTime> {
        let name = crate::model::SliceName {
            namespace: "default".into(),
            name: slice.into(),
        };
        state(objects).trigger_times.get(&name).copied()
    }

    #[test]
    fn trigger_times_come_through_the_watch_and_bad_ones_are_only_warned_about() {
        const ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
        let mut objects = ApiObjects::new();
        objects.apply(service("web", "10.96.0.10", json!({})));
        let mut timed = slice("web-1", "web", json!([{"addresses": ["10.244.1.5"]}]));
        timed["metadata"]["annotations"] = json!({ANNOTATION: "2026-11-22T05:00:00.5Z"});
        // Through the typed object, as the watcher hands it over.
        let typed: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(timed).expect("an EndpointSlice");
        let problems = objects.apply(serde_json::to_value(typed).expect("serializes"));
        assert!(problems.is_empty(), "{problems:?}");
        let expected = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_323_600_500);
        assert_eq!(trigger_time(&objects, "web-1"), Some(expected));

        let mut broken = slice(
            "web-1",
            "web",
            json!([{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.1.6"]}]),
        );
        broken["metadata"]["annotations"] = json!({ANNOTATION: "22 Nov 2026 05:00"});
        let problems = objects.apply(broken);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with(&format!(
                "kubernetes API (EndpointSlice default/web-1): metadata.annotations.{ANNOTATION}: \
                 \"22 Nov 2026 05:00\" is not an RFC 3339 time"
            )),
            "{shown:?}"
        );
        assert_eq!(problems[0].severity, Severity::Warning);
        // The update itself took effect; only its time is unknown.
        assert_eq!(trigger_time(&objects, "web-1"), None);
        assert_eq!(
            state(&objects).services[&name("web")].ports[0]
                .endpoints
                .len(),
            2
        );
    }
}
