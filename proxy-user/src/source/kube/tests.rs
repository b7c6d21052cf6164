//! The watch bookkeeping, driven with the events kube-rs' watcher produces.

use serde_json::{Value, json};

use super::*;

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        },
    })
}

fn slice(name: &str, service: &str, addr: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}, "nodeName": "node1"}],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// A complete list of `what`: Init, InitApply.., InitDone.
fn list(view: &mut ClusterView, what: Watched, objects: Vec<Value>) {
    view.update((what, Ok(Event::Init)));
    for object in objects {
        view.update((what, Ok(Event::InitApply(object))));
    }
    view.update((what, Ok(Event::InitDone)));
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
        Watched::Service,
        vec![service("web", "10.96.0.10"), service("db", "10.96.0.11")],
    );
    list(
        &mut view,
        Watched::EndpointSlice,
        vec![slice("web-1", "web", "10.244.1.5")],
    );
    list(&mut view, Watched::Node, vec![node("node1", "192.0.2.11")]);
    view
}

#[test]
fn nothing_is_published_before_every_kind_is_listed() {
    let mut view = ClusterView::new("node1".into());
    assert!(view.resolve().is_none());
    list(
        &mut view,
        Watched::Service,
        vec![service("web", "10.96.0.10")],
    );
    list(&mut view, Watched::EndpointSlice, vec![]);
    // Half-way through the Node's list: still incomplete.
    view.update((Watched::Node, Ok(Event::Init)));
    assert!(!view.is_synced());
    assert!(view.resolve().is_none());
    view.update((Watched::Node, Ok(Event::InitDone)));
    assert!(view.is_synced());
    assert_eq!(services(&view), ["web"]);
    // An empty Node list is complete too, but this node is unknown.
    assert_eq!(view.node(), None);
}

#[test]
fn a_failing_watch_changes_nothing() {
    let mut view = ClusterView::new("node1".into());
    view.update((Watched::Service, Err("connection refused".into())));
    assert!(view.resolve().is_none());
    let mut view = synced_view();
    view.update((Watched::Service, Err("connection refused".into())));
    view.update((Watched::EndpointSlice, Err("connection refused".into())));
    assert_eq!(services(&view), ["db", "web"]);
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5"]);
}

#[test]
fn watch_events_apply_and_delete() {
    let mut view = synced_view();
    view.update((
        Watched::EndpointSlice,
        Ok(Event::Apply(slice("web-2", "web", "10.244.2.7"))),
    ));
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5", "10.244.2.7"]);
    view.update((
        Watched::EndpointSlice,
        Ok(Event::Delete(slice("web-1", "web", "10.244.1.5"))),
    ));
    assert_eq!(endpoints(&view, "web"), ["10.244.2.7"]);
    view.update((
        Watched::Service,
        Ok(Event::Delete(service("db", "10.96.0.11"))),
    ));
    assert_eq!(services(&view), ["web"]);
}

#[test]
fn a_relist_replaces_only_when_complete_and_forgets_what_is_gone() {
    let mut view = synced_view();
    // A re-list (after 410 Gone) in progress: the last complete view still holds.
    view.update((Watched::Service, Ok(Event::Init)));
    view.update((
        Watched::Service,
        Ok(Event::InitApply(service("web", "10.96.0.10"))),
    ));
    assert_eq!(services(&view), ["db", "web"]);
    view.update((
        Watched::Service,
        Ok(Event::InitApply(service("new", "10.96.0.12"))),
    ));
    view.update((Watched::Service, Ok(Event::InitDone)));
    // `db` was deleted while the watch was broken: gone with the re-list.
    assert_eq!(services(&view), ["new", "web"]);
    assert_eq!(endpoints(&view, "web"), ["10.244.1.5"]);
}

#[test]
fn an_interrupted_relist_is_started_over() {
    let mut view = synced_view();
    view.update((Watched::Service, Ok(Event::Init)));
    view.update((
        Watched::Service,
        Ok(Event::InitApply(service("half", "10.96.0.13"))),
    ));
    view.update((Watched::Service, Err("list failed".into())));
    list(
        &mut view,
        Watched::Service,
        vec![service("web", "10.96.0.10")],
    );
    assert_eq!(services(&view), ["web"]);
}

#[test]
fn the_node_is_this_node_only() {
    let mut view = synced_view();
    let ip: IpAddr = "192.0.2.11".parse().expect("valid");
    assert_eq!(view.node().map(|n| n.internal_ips.clone()), Some(vec![ip]));
    view.update((Watched::Node, Ok(Event::Apply(node("node2", "192.0.2.12")))));
    assert_eq!(view.node().map(|n| n.internal_ips.clone()), Some(vec![ip]));
    view.update((
        Watched::Node,
        Ok(Event::Delete(node("node1", "192.0.2.11"))),
    ));
    assert_eq!(view.node(), None);
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
fn watch_events_convert_to_json() {
    let typed: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(node("node1", "192.0.2.11")).expect("a Node");
    let Ok(Event::Apply(json)) = event_to_json(Event::Apply(typed)) else {
        panic!("not an Apply");
    };
    assert_eq!(json["kind"], "Node");
    assert_eq!(json["status"]["addresses"][0]["address"], "192.0.2.11");
}
