//! Cluster mode's half of the manifest pipeline: objects that the Kubernetes API server sends
//! one at a time, checked by the same code as manifest files and resolved by the same step.
//!
//! ```text
//! typed API object ─k8s::from_api─▶ k8s subset ─check_object─▶ checked objects (last good
//! kept) ─catalog─▶ resolve ─▶ DesiredState
//! ```
//!
//! The typed objects (k8s-openapi, as kube-rs decodes them) are converted field by field into
//! the subset a file is deserialized into, so every check and every problem's text is the
//! one a manifest file gets. The differences from files are deliberate and few: there are no
//! files or documents (a problem names the object and [`API_ORIGIN`]); any cluster IP is
//! accepted (the API server owns the service CIDR); and nothing is allocated (the API server
//! assigns cluster IPs and nodePorts), so a Service it left without one is listed but not
//! programmed.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    ManifestOptions, NodePortRange, ServiceCidrs,
    alloc::Allocator,
    catalog::Catalog,
    error::{Context, ManifestError, ObjectRef, Problems},
    k8s::from_api,
    object::{Kind, ObjectKey},
    parse::{ParsedObject, RawObject, check_object},
    resolve::{Resolution, resolve},
};
use crate::model::{self, ServiceName, ServiceType};

/// What problems about API objects name instead of a file.
pub const API_ORIGIN: &str = "kubernetes API";

/// An object of a kind sluice checks, as the API server's watch delivered it.
#[derive(Clone, Debug)]
pub enum ApiObject {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl From<Box<Service>> for ApiObject {
    fn from(service: Box<Service>) -> Self {
        ApiObject::Service(service)
    }
}

impl From<Box<EndpointSlice>> for ApiObject {
    fn from(slice: Box<EndpointSlice>) -> Self {
        ApiObject::EndpointSlice(slice)
    }
}

impl From<Service> for ApiObject {
    fn from(service: Service) -> Self {
        Box::new(service).into()
    }
}

impl From<EndpointSlice> for ApiObject {
    fn from(slice: EndpointSlice) -> Self {
        Box::new(slice).into()
    }
}

impl ApiObject {
    pub fn kind(&self) -> Kind {
        match self {
            ApiObject::Service(_) => Kind::Service,
            ApiObject::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            ApiObject::Service(service) => &service.metadata,
            ApiObject::EndpointSlice(slice) => &slice.metadata,
        }
    }

    /// Its key, as its metadata names it (before any check).
    fn key(&self) -> ObjectKey {
        let meta = self.meta();
        ObjectKey {
            kind: self.kind(),
            namespace: namespace_or_default(meta.namespace.as_deref().unwrap_or_default())
                .to_owned(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// Into the subset a manifest file is read into.
    fn into_raw(self) -> Result<RawObject, from_api::FieldError> {
        match self {
            ApiObject::Service(service) => from_api::service(*service).map(RawObject::Service),
            ApiObject::EndpointSlice(slice) => {
                from_api::endpoint_slice(*slice).map(RawObject::EndpointSlice)
            }
        }
    }
}

/// The checked Services and EndpointSlices the API server holds, as last seen.
#[derive(Debug)]
pub struct ApiObjects {
    options: ManifestOptions,
    objects: BTreeMap<ObjectKey, ParsedObject>,
    /// Services that failed the checks with no good version to keep: listed as not
    /// programmed, with their first error, so `sluice services` shows every Service the API
    /// server holds.
    rejected: BTreeMap<ObjectKey, Rejected>,
}

/// A Service sluice could not check: its type and why.
#[derive(Clone, Debug)]
struct Rejected {
    service_type: ServiceType,
    reason: String,
}

impl Default for ApiObjects {
    fn default() -> Self {
        ApiObjects {
            // Every cluster IP of either family and every nodePort is valid: the API server
            // already checked them against its own service CIDRs and NodePort range (and set
            // ipFamilies), which sluice does not know.
            options: ManifestOptions {
                service_cidrs: ServiceCidrs::any(),
                node_port_range: NodePortRange::ANY,
                // The source reads this node's Node itself.
                node_name: None,
            },
            objects: BTreeMap::new(),
            rejected: BTreeMap::new(),
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

    /// Adds or replaces one object. An object that fails the checks keeps its last good
    /// version, as in a file. Returns what the checks found.
    pub fn apply(&mut self, object: impl Into<ApiObject>) -> Vec<ManifestError> {
        let object = object.into();
        let (key, service_type) = (object.key(), service_type_of(&object));
        let (parsed, problems) = self.check(object);
        self.keep(key, parsed, service_type, &problems);
        problems
    }

    /// Holds a checked object; for one that failed, keeps its last good version or, when
    /// there is none, lists a Service as rejected.
    fn keep(
        &mut self,
        key: ObjectKey,
        parsed: Option<ParsedObject>,
        service_type: Option<ServiceType>,
        problems: &[ManifestError],
    ) {
        match parsed {
            Some(parsed) => {
                self.rejected.remove(&key);
                self.objects.insert(key, parsed);
            }
            None if self.objects.contains_key(&key) => {}
            None => {
                if let Some(service_type) = service_type {
                    let first = problems.iter().find(|p| p.is_error());
                    let reason = match first {
                        Some(p) => format!(
                            "rejected: {}{}",
                            p.field
                                .as_deref()
                                .map(|f| format!("{f}: "))
                                .unwrap_or_default(),
                            p.message
                        ),
                        None => "rejected by sluice's checks".to_owned(),
                    };
                    let rejected = Rejected {
                        service_type,
                        reason,
                    };
                    self.rejected.insert(key, rejected);
                }
            }
        }
    }

    /// Forgets an object; true when it was held.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = ObjectKey {
            kind,
            namespace: namespace_or_default(namespace).to_owned(),
            name: name.to_owned(),
        };
        let rejected = self.rejected.remove(&key).is_some();
        self.objects.remove(&key).is_some() || rejected
    }

    /// Replaces every object of `kind` with `objects` (a complete list, after a (re-)list):
    /// those not in it are gone. An object of the list that fails the checks keeps its last
    /// good version; objects of another kind are ignored.
    pub fn replace_kind(
        &mut self,
        kind: Kind,
        objects: impl IntoIterator<Item = ApiObject>,
    ) -> Vec<ManifestError> {
        let mut checked = Vec::new();
        let mut problems = Vec::new();
        for object in objects.into_iter().filter(|object| object.kind() == kind) {
            let (key, service_type) = (object.key(), service_type_of(&object));
            let (parsed, found) = self.check(object);
            checked.push((key, parsed, service_type, found.len()));
            problems.extend(found);
        }
        // Only what the list holds stays (a failing object's last good version too).
        let (other, mut last_good): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.objects)
                .into_iter()
                .partition(|(key, _)| key.kind != kind);
        self.objects = other;
        self.rejected.retain(|key, _| key.kind != kind);
        let mut at = 0;
        for (key, parsed, service_type, count) in checked {
            if let Some(object) = last_good.remove(&key) {
                self.objects.insert(key.clone(), object);
            }
            self.keep(key, parsed, service_type, &problems[at..at + count]);
            at += count;
        }
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
        let mut resolution = resolve(&catalog, None, &mut Allocator::disabled());
        for (key, rejected) in &self.rejected {
            let name = ServiceName {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            let service =
                model::Service::rejected(name.clone(), rejected.service_type, &rejected.reason);
            resolution
                .state
                .services
                .entry(name.clone())
                .or_insert_with(|| Arc::new(service));
        }
        resolution
    }

    /// The checks a manifest file's object gets, on the converted object.
    fn check(&self, object: ApiObject) -> (Option<ParsedObject>, Vec<ManifestError>) {
        let mut context = Context::new(API_ORIGIN, None);
        let meta = object.meta();
        context.object = Some(ObjectRef::named(
            object.kind().as_str(),
            meta.namespace.as_deref(),
            meta.name.as_deref(),
        ));
        let mut p = Problems::new(&context);
        let checked = match object.into_raw() {
            Ok(raw) => check_object(&raw, &self.options, &mut p),
            Err(e) => {
                p.error(&e.field, e.message);
                None
            }
        };
        let parsed = checked.map(|object| ParsedObject {
            key: object.key(),
            document: 1,
            object,
        });
        (parsed, p.list)
    }
}

/// The type of a Service as the API server sent it; `None` for other kinds.
fn service_type_of(object: &ApiObject) -> Option<ServiceType> {
    let ApiObject::Service(service) = object else {
        return None;
    };
    let spec = service.spec.as_ref();
    Some(match spec.and_then(|spec| spec.type_.as_deref()) {
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        _ if spec.and_then(|spec| spec.cluster_ip.as_deref()) == Some("None") => {
            ServiceType::Headless
        }
        _ => ServiceType::ClusterIP,
    })
}

fn namespace_or_default(namespace: &str) -> &str {
    if namespace.is_empty() {
        "default"
    } else {
        namespace
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        model::{Endpoint, ServiceName, ServiceType},
        source::manifest::Severity,
    };

    /// The typed object kube-rs decodes from the API server's JSON.
    fn api(object: Value) -> ApiObject {
        match object["kind"].as_str() {
            Some("Service") => serde_json::from_value::<Service>(object)
                .expect("a Service")
                .into(),
            Some("EndpointSlice") => serde_json::from_value::<EndpointSlice>(object)
                .expect("an EndpointSlice")
                .into(),
            kind => panic!("not a kind sluice checks: {kind:?}"),
        }
    }

    fn name(name: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    /// A Service as `kubectl get -o json` shows it: every default filled in by the API server.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the callers' `json!` literals read better without a `&`"
    )]
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

    #[expect(
        clippy::needless_pass_by_value,
        reason = "the callers' `json!` literals read better without a `&`"
    )]
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
            hints: crate::model::Hints::default(),
        }
    }

    impl ApiObjects {
        fn apply_json(&mut self, object: Value) -> Vec<ManifestError> {
            self.apply(api(object))
        }
    }

    fn state(objects: &ApiObjects) -> crate::model::DesiredState {
        objects.desired_state().state
    }

    #[test]
    fn slices_are_merged_and_addresses_come_from_the_api_server() {
        let mut objects = ApiObjects::new();
        // 10.96.0.0/12 is kubeadm's service CIDR, outside sluice's standalone default.
        assert_eq!(
            objects.apply_json(service("web", "10.96.0.10", json!({}))),
            []
        );
        let problems = objects.apply_json(slice(
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
        objects.apply_json(slice(
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
        assert_eq!(web.cluster_ip(), Some("10.96.0.10".parse().expect("valid")));
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
        objects.apply_json(service(
            "other",
            "10.96.0.11",
            labelled("service.kubernetes.io/service-proxy-name"),
        ));
        objects.apply_json(service(
            "dns-only",
            "10.96.0.12",
            labelled("service.kubernetes.io/headless"),
        ));
        let mut headless = service("headless", "None", json!({}));
        headless["spec"]["type"] = json!("ClusterIP");
        for port in headless["spec"]["ports"].as_array_mut().expect("ports") {
            port.as_object_mut().expect("port").remove("nodePort");
        }
        objects.apply_json(headless);
        objects.apply_json(json!({
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

    /// The API server's checks are trusted: a nodePort outside sluice's standalone range is
    /// programmed, an SCTP port only leaves itself out, and a Service that still fails is
    /// listed as not programmed with its first error, never silently missing.
    #[test]
    fn what_the_api_server_accepts_is_programmed_as_far_as_the_datapath_can() {
        let mut objects = ApiObjects::new();
        let mut wide = service("wide", "10.96.0.20", json!({}));
        wide["spec"]["ports"][0]["nodePort"] = json!(40000);
        assert_eq!(objects.apply_json(wide), []);
        let mut mixed = service("mixed", "10.96.0.21", json!({}));
        mixed["spec"]["ports"][1] = json!(
            {"name": "signalling", "protocol": "SCTP", "port": 9000, "targetPort": 9000, "nodePort": 31900}
        );
        let notes: Vec<String> = objects
            .apply_json(mixed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            notes,
            [format!(
                "kubernetes API (Service default/mixed): spec.ports[1].protocol: {}",
                super::super::validate::SCTP_UNSERVED
            )]
        );
        let mut broken = service("broken", "10.96.0.22", json!({}));
        broken["spec"]["ports"][0]["port"] = json!(70000);
        assert_ne!(objects.apply_json(broken.clone()), []);

        let listed = state(&objects);
        let wide = &listed.services[&name("wide")];
        assert_eq!(
            (wide.skip_reason.clone(), wide.ports[0].node_port),
            (None, Some(40000))
        );
        let mixed = &listed.services[&name("mixed")];
        assert_eq!(mixed.skip_reason, None);
        assert_eq!(mixed.ports.len(), 1);
        assert_eq!(mixed.ports[0].node_port, Some(31080));
        assert_eq!(
            (
                mixed.unserved_ports[0].name.as_str(),
                mixed.unserved_ports[0].port
            ),
            ("signalling", 9000)
        );
        let broken_state = &listed.services[&name("broken")];
        assert_eq!(broken_state.service_type, ServiceType::NodePort);
        assert!(
            broken_state
                .skip_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("rejected: spec.ports[0].port: expected")),
            "{:?}",
            broken_state.skip_reason
        );

        // A relist keeps listing it; a good version replaces the listing; a delete forgets it.
        objects.replace_kind(Kind::Service, [api(broken)]);
        assert!(
            state(&objects).services[&name("broken")]
                .skip_reason
                .is_some()
        );
        assert!(!state(&objects).services.contains_key(&name("wide")));
        objects.apply_json(service("broken", "10.96.0.22", json!({})));
        assert_eq!(state(&objects).services[&name("broken")].skip_reason, None);
        assert!(objects.delete(Kind::Service, "default", "broken"));
        assert!(state(&objects).services.is_empty());
    }

    #[test]
    fn nothing_is_allocated() {
        let mut objects = ApiObjects::new();
        let mut web = service("web", "10.96.0.10", json!({}));
        web["spec"]["ports"][0]
            .as_object_mut()
            .expect("port")
            .remove("nodePort");
        objects.apply_json(web);
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
        objects.apply_json(service("web", "10.96.0.10", json!({})));
        let mut broken = service("web", "10.96.0.99", json!({}));
        broken["spec"]["ports"][0]["port"] = json!(70000);
        let problems = objects.apply_json(broken);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|p| p
                .starts_with("kubernetes API (Service default/web): spec.ports[0].port: expected")),
            "{shown:?}"
        );
        let state = state(&objects);
        assert_eq!(
            state.services[&name("web")].cluster_ip(),
            Some("10.96.0.10".parse().expect("valid"))
        );
    }

    #[test]
    fn replacing_a_kind_forgets_what_the_list_no_longer_has() {
        let mut objects = ApiObjects::new();
        objects.apply_json(service("web", "10.96.0.10", json!({})));
        objects.apply_json(service("gone", "10.96.0.11", json!({})));
        objects.apply_json(slice(
            "web-1",
            "web",
            json!([{"addresses": ["10.244.1.5"]}]),
        ));
        let problems = objects.replace_kind(
            Kind::Service,
            [
                api(service("web", "10.96.0.10", json!({}))),
                api(service("new", "10.96.0.12", json!({}))),
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
    fn an_unknown_value_is_the_error_a_file_gets_and_the_last_good_version_stays() {
        let mut objects = ApiObjects::new();
        objects.apply_json(service("web", "10.96.0.10", json!({})));
        let mut broken = service("web", "10.96.0.99", json!({}));
        broken["spec"]["ports"][1]["protocol"] = json!("QUIC");
        let message = "spec.ports[1].protocol: unknown variant `QUIC`, expected one of `TCP`, \
                       `UDP`, `SCTP`";
        let shown: Vec<String> = objects
            .apply_json(broken.clone())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [format!("kubernetes API (Service default/web): {message}")]
        );
        // The same object in a manifest file.
        let file = crate::source::manifest::parse::parse_file(
            Path::new("web.json"),
            &broken.to_string(),
            &ManifestOptions::default(),
        );
        let shown: Vec<String> = file.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [format!(
                "web.json: document 1 (Service default/web): {message}"
            )]
        );
        assert_eq!(
            state(&objects).services[&name("web")].cluster_ip(),
            Some("10.96.0.10".parse().expect("valid"))
        );
    }

    #[test]
    fn a_broken_object_in_a_relist_keeps_its_last_good_version() {
        let mut objects = ApiObjects::new();
        objects.apply_json(service("web", "10.96.0.10", json!({})));
        let mut broken = service("web", "10.96.0.99", json!({}));
        broken["spec"]["ports"][0]["port"] = json!(0);
        let mut never_good = service("new", "10.96.0.12", json!({}));
        never_good["spec"]["type"] = json!("Nodeport");
        let problems = objects.replace_kind(
            Kind::Service,
            [
                api(broken),
                api(never_good),
                api(service("db", "10.96.0.11", json!({}))),
            ],
        );
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "kubernetes API (Service default/web): spec.ports[0].port: expected an integer \
                 1-65535, got 0",
                "kubernetes API (Service default/new): spec.type: unknown variant `Nodeport`, \
                 expected one of `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`",
            ]
        );
        let state = state(&objects);
        let names: Vec<_> = state.services.keys().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["db", "new", "web"]);
        assert_eq!(
            state.services[&name("web")].cluster_ip(),
            Some("10.96.0.10".parse().expect("valid"))
        );
        // The one never good is listed, not programmed, with its error.
        let new = &state.services[&name("new")];
        assert_eq!(
            new.skip_reason.as_deref(),
            Some(
                "rejected: spec.type: unknown variant `Nodeport`, expected one of `ClusterIP`, \
                 `NodePort`, `LoadBalancer`, `ExternalName`"
            )
        );
        assert!(new.cluster_ips.is_empty() && new.ports.is_empty());
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
        objects.apply_json(service("web", "10.96.0.10", json!({})));
        let mut timed = slice("web-1", "web", json!([{"addresses": ["10.244.1.5"]}]));
        timed["metadata"]["annotations"] = json!({ANNOTATION: "2026-11-22T05:00:00.5Z"});
        let problems = objects.apply_json(timed);
        assert!(problems.is_empty(), "{problems:?}");
        let expected = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_323_600_500);
        assert_eq!(trigger_time(&objects, "web-1"), Some(expected));

        let mut broken = slice(
            "web-1",
            "web",
            json!([{"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.1.6"]}]),
        );
        broken["metadata"]["annotations"] = json!({ANNOTATION: "22 Nov 2026 05:00"});
        let problems = objects.apply_json(broken);
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
