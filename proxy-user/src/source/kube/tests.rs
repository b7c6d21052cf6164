//! The watch bookkeeping, driven with the events kube-rs' watcher produces.

use k8s_openapi::{
    api::{
        core::v1::{NodeAddress, NodeStatus, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::*;

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        resource_version: Some("1".into()),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, ip: &str) -> Box<Service> {
    Box::new(Service {
        metadata: meta(name, Some("default")),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn slice(name: &str, service: &str, addr: &str) -> Box<EndpointSlice> {
    let mut metadata = meta(name, Some("default"));
    metadata.labels = Some([("kubernetes.io/service-name".into(), service.into())].into());
    Box::new(EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![addr.into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            node_name: Some("node1".into()),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            ..EndpointPort::default()
        }]),
    })
}

fn node(name: &str, ip: &str) -> Box<Node> {
    let address = |type_: &str, address: &str| NodeAddress {
        type_: type_.into(),
        address: address.into(),
    };
    Box::new(Node {
        metadata: meta(name, None),
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![address("InternalIP", ip), address("Hostname", name)]),
            ..NodeStatus::default()
        }),
    })
}

/// A complete list through the watcher item wrapper `what`: `Init`, `InitApply`.., `InitDone`.
fn list<K>(view: &mut ClusterView, what: fn(WatchItem<K>) -> Update, objects: Vec<Box<K>>) {
    view.update(what(Ok(Event::Init)));
    for object in objects {
        view.update(what(Ok(Event::InitApply(object))));
    }
    view.update(what(Ok(Event::InitDone)));
}

fn services(view: &ClusterView) -> Vec<String> {
    view.resolve()
        .expect("synced")
        .state
        .services
        .keys()
        .map(|name| name.name.clone())
        .collect()
}

fn endpoints(view: &ClusterView, service: &str) -> Vec<String> {
    let state = view.resolve().expect("synced").state;
    state
        .services
        .values()
        .find(|s| s.name.name == service)
        .map(|s| {
            s.ports[0]
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn synced_view() -> ClusterView {
    let mut view = ClusterView::new("node1".into());
    list(
        &mut view,
        Update::Services,
        vec![service("web", "10.96.0.10"), service("db", "10.96.0.11")],
    );
    list(
        &mut view,
        Update::EndpointSlices,
        vec![slice("web-1", "web", "10.244.1.5")],
    );
    list(&mut view, Update::Node, vec![node("node1", "192.0.2.11")]);
    view
}

#[test]
fn nothing_is_published_before_every_kind_is_listed() {
    let mut view = ClusterView::new("node1".into());
    assert!(view.resolve().is_none());
    list(
        &mut view,
        Update::Services,
        vec![service("web", "10.96.0.10")],
    );
    list(&mut view, Update::EndpointSlices, vec![]);
    // Half-way through the Node's list: still incomplete.
    view.update(Update::Node(Ok(Event::Init)));
    assert!(!view.is_synced());
    assert!(view.resolve().is_none());
    view.update(Update::Node(Ok(Event::InitDone)));
    assert!(view.is_synced());
    assert_eq!(services(&view), ["web"]);
    // An empty Node list is complete too, but this node is unknown.
    assert_eq!(view.node(), None);
}

#[test]
fn a_failing_watch_changes_nothing() {
    let mut view = ClusterView::new("node1".into());
    view.update(Update::Services(Err("connection refused".into())));
    assert!(view.resolve().is_none());
    let mut view = synced_view();
    view.update(Update::Services(Err("connection refused".into())));
    view.update(Update::EndpointSlices(Err("connection refused".into())));
    assert_eq!(services(&view), ["db", "web"]);
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5"]);
}

#[test]
fn watch_events_apply_and_delete() {
    let mut view = synced_view();
    view.update(Update::EndpointSlices(Ok(Event::Apply(slice(
        "web-2",
        "web",
        "10.244.2.7",
    )))));
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5", "10.244.2.7"]);
    view.update(Update::EndpointSlices(Ok(Event::Delete(slice(
        "web-1",
        "web",
        "10.244.1.5",
    )))));
    assert_eq!(endpoints(&view, "web"), ["10.244.2.7"]);
    view.update(Update::Services(Ok(Event::Delete(service(
        "db",
        "10.96.0.11",
    )))));
    assert_eq!(services(&view), ["web"]);
}

#[test]
fn a_relist_replaces_only_when_complete_and_forgets_what_is_gone() {
    let mut view = synced_view();
    // A re-list (after 410 Gone) in progress: the last complete view still holds.
    view.update(Update::Services(Ok(Event::Init)));
    view.update(Update::Services(Ok(Event::InitApply(service(
        "web",
        "10.96.0.10",
    )))));
    assert_eq!(services(&view), ["db", "web"]);
    view.update(Update::Services(Ok(Event::InitApply(service(
        "new",
        "10.96.0.12",
    )))));
    view.update(Update::Services(Ok(Event::InitDone)));
    // `db` was deleted while the watch was broken: gone with the re-list.
    assert_eq!(services(&view), ["new", "web"]);
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5"]);
}

#[test]
fn an_interrupted_relist_is_started_over() {
    let mut view = synced_view();
    view.update(Update::Services(Ok(Event::Init)));
    view.update(Update::Services(Ok(Event::InitApply(service(
        "half",
        "10.96.0.13",
    )))));
    view.update(Update::Services(Err("list failed".into())));
    list(
        &mut view,
        Update::Services,
        vec![service("web", "10.96.0.10")],
    );
    assert_eq!(services(&view), ["web"]);
}

#[test]
fn the_node_is_this_node_only() {
    let mut view = synced_view();
    let ip: IpAddr = "192.0.2.11".parse().expect("valid");
    assert_eq!(view.node().map(|n| n.internal_ips.clone()), Some(vec![ip]));
    view.update(Update::Node(Ok(Event::Apply(node("node2", "192.0.2.12")))));
    assert_eq!(view.node().map(|n| n.internal_ips.clone()), Some(vec![ip]));
    let draining = |view: &ClusterView| {
        view.resolve()
            .and_then(|resolution| resolution.state.node)
            .map(|node| node.draining)
    };
    assert_eq!(draining(&view), Some(false));

    // Tainted for deletion by the cluster autoscaler, then deleted: draining (kube-proxy's
    // nodeEligible false), until a Node of that name is back.
    let mut tainted = node("node1", "192.0.2.11");
    tainted.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        taints: Some(vec![k8s_openapi::api::core::v1::Taint {
            key: "ToBeDeletedByClusterAutoscaler".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    view.update(Update::Node(Ok(Event::Apply(tainted))));
    assert_eq!(draining(&view), Some(true));
    view.update(Update::Node(Ok(Event::Apply(node("node1", "192.0.2.11")))));
    assert_eq!(draining(&view), Some(false));
    view.update(Update::Node(Ok(Event::Delete(node("node1", "192.0.2.11")))));
    assert_eq!(view.node().map(|n| n.internal_ips.len()), Some(0));
    assert_eq!(draining(&view), Some(true));
    // The services do not depend on it.
    assert_eq!(services(&view), ["db", "web"]);
}

#[test]
fn backoff_doubles_to_a_ceiling_and_resets() {
    let mut backoff = RetryBackoff::default();
    let delays: Vec<u128> = backoff.by_ref().take(8).map(|d| d.as_millis()).collect();
    assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
    backoff.reset();
    assert_eq!(backoff.next(), Some(Duration::from_millis(250)));
}

#[test]
fn an_object_kube_rs_cannot_decode_is_told_apart_from_a_lost_connection() {
    // What kube-rs reports when a Service's port comes as a string: k8s-openapi rejects it.
    const LINE: &str = r#"{"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"}, "spec": {"ports": [{"port": "eighty"}]}}}"#;
    let decode = || {
        let error = serde_json::from_str::<::kube::core::WatchEvent<Service>>(LINE)
            .expect_err("a string port does not decode");
        ::kube::Error::SerdeError(error)
    };
    let listed = describe(&watcher::Error::InitialListFailed(decode()));
    assert!(
        listed.starts_with("the API server sent a list with an object sluice cannot decode (")
            && listed.contains("invalid type: string \"eighty\", expected i32")
            && listed.ends_with("these objects stay as last listed until it can be read"),
        "{listed}"
    );
    let skipped = "that change is skipped and the object stays as last seen; the watch goes on";
    let watched = describe(&watcher::Error::WatchFailed(decode()));
    assert!(
        watched.starts_with("the API server sent a change sluice cannot decode (")
            && watched.ends_with(skipped),
        "{watched}"
    );
    // In a watch, kube-rs falls back to reading the line as a Status, and any object passes
    // as an empty one: that is what arrives.
    let status: Status = serde_json::from_str(LINE).expect("any object reads as a Status");
    assert_eq!(status, Status::default());
    let watched = describe(&watcher::Error::WatchFailed(::kube::Error::Api(Box::new(
        status,
    ))));
    assert!(
        watched.starts_with("the API server sent a change sluice cannot decode (")
            && watched.ends_with(skipped),
        "{watched}"
    );
    // A real Status from the server is not mistaken for one.
    let forbidden = Status {
        code: 403,
        message: "services is forbidden".into(),
        reason: "Forbidden".into(),
        ..Status::default()
    };
    let watched = describe(&watcher::Error::WatchFailed(::kube::Error::Api(Box::new(
        forbidden,
    ))));
    assert!(watched.contains("services is forbidden"), "{watched}");
    assert!(
        watched.ends_with("; retrying with backoff (the datapath keeps serving the last state)"),
        "{watched}"
    );
}

#[test]
fn a_failure_is_logged_once_and_a_new_one_again() {
    let mut view = synced_view();
    view.update(Update::Services(Err("connection refused".into())));
    view.update(Update::Services(Err("connection refused".into())));
    assert_eq!(
        view.failing.get(&Watched::Service).map(String::as_str),
        Some("connection refused")
    );
    view.update(Update::Services(Err("a change sluice cannot read".into())));
    assert_eq!(
        view.failing.get(&Watched::Service).map(String::as_str),
        Some("a change sluice cannot read")
    );
    // The next event that arrives ends the failure.
    view.update(Update::Services(Ok(Event::Apply(service(
        "new",
        "10.96.0.12",
    )))));
    assert!(view.failing.is_empty());
    assert_eq!(services(&view), ["db", "new", "web"]);
}

/// A dual-stack Service from the API server (its `clusterIPs` and `ipFamilies` as the server
/// set them, IPv6 primary), its IPv4 and IPv6 slices, and a Node with `InternalIP` addresses of both
/// families.
#[test]
fn dual_stack_services_slices_and_node_addresses_come_through() {
    let mut web = service("web", "fd00:96::10");
    let spec = web.spec.as_mut().expect("set");
    spec.cluster_ips = Some(vec!["fd00:96::10".into(), "10.96.0.10".into()]);
    spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    spec.ip_family_policy = Some("RequireDualStack".into());
    let mut v6 = slice("web-v6", "web", "fd00:244::5");
    v6.address_type = "IPv6".into();
    let mut fqdn = slice("web-fqdn", "web", "pod.example");
    fqdn.address_type = "FQDN".into();
    let mut view = ClusterView::new("node1".into());
    list(&mut view, Update::Services, vec![web]);
    list(
        &mut view,
        Update::EndpointSlices,
        vec![slice("web-v4", "web", "10.244.1.5"), v6, fqdn],
    );
    let mut this = node("node1", "192.0.2.11");
    let status = this.status.as_mut().expect("set");
    status.addresses.as_mut().expect("set").push(NodeAddress {
        type_: "InternalIP".into(),
        address: "fd00:2::11".into(),
    });
    list(&mut view, Update::Node, vec![this]);

    let state = view.resolve().expect("synced").state;
    let web = state.services.values().next().expect("web");
    let ip = |text: &str| text.parse::<IpAddr>().expect("valid");
    assert_eq!(web.cluster_ips, [ip("fd00:96::10"), ip("10.96.0.10")]);
    assert_eq!(
        web.ip_families,
        [crate::model::IpFamily::V6, crate::model::IpFamily::V4]
    );
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5", "fd00:244::5"]);
    assert_eq!(
        view.node().map(|n| n.internal_ips.clone()),
        Some(vec![ip("192.0.2.11"), ip("fd00:2::11")])
    );
}

fn service_cidr(name: &str, cidrs: &[&str]) -> Box<ServiceCIDR> {
    Box::new(ServiceCIDR {
        metadata: meta(name, None),
        spec: Some(k8s_openapi::api::networking::v1::ServiceCIDRSpec {
            cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
        }),
        status: None,
    })
}

fn cidrs(view: &ClusterView) -> Option<Vec<String>> {
    let state = view.resolve().expect("synced").state;
    state
        .service_cidrs
        .map(|cidrs| cidrs.iter().map(ToString::to_string).collect())
}

#[test]
fn service_cidrs_are_the_union_of_every_objects_and_never_hold_up_the_first_state() {
    let mut view = synced_view();
    // Not listed (an API server without them): the state goes out, and says nothing of them.
    assert_eq!(cidrs(&view), None);
    view.update(Update::ServiceCidrs(Err("404 Not Found".into())));
    assert_eq!(cidrs(&view), None);
    list(
        &mut view,
        Update::ServiceCidrs,
        vec![
            service_cidr("kubernetes", &["10.96.0.0/16", "fd00:96::/108"]),
            // Host bits are dropped; what does not parse is left out.
            service_cidr("extra", &["10.97.0.1/16", "10.96.0.0/16", "nope"]),
        ],
    );
    assert_eq!(
        cidrs(&view),
        Some(vec![
            "10.96.0.0/16".into(),
            "10.97.0.0/16".into(),
            "fd00:96::/108".into()
        ])
    );
    view.update(Update::ServiceCidrs(Ok(Event::Delete(service_cidr(
        "extra",
        &[],
    )))));
    assert_eq!(
        cidrs(&view),
        Some(vec!["10.96.0.0/16".into(), "fd00:96::/108".into()])
    );
    view.update(Update::ServiceCidrs(Ok(Event::Apply(service_cidr(
        "kubernetes",
        &["10.96.0.0/12"],
    )))));
    assert_eq!(cidrs(&view), Some(vec!["10.96.0.0/12".into()]));
}
