//! An in-process stand-in for the Kubernetes API server: list and watch of Services,
//! EndpointSlices and Nodes over HTTP/1.1 (plain, or HTTPS with a CA of its own for
//! `--in-cluster`: [`FakeApiServer::start_tls_in`]), with real Kubernetes JSON.
//!
//! There is no real API server on these machines; this one speaks just enough of the protocol
//! for `sluice run --kubeconfig` (kube-rs) to behave as against a real one:
//!
//! - `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, `/api/v1/nodes`,
//!   `/apis/networking.k8s.io/v1/servicecidrs` list every object (`kind: ServiceList`.., `metadata.resourceVersion`); `fieldSelector`
//!   `metadata.name=` / `metadata.namespace=` filter; `limit` is accepted and ignored (one
//!   page);
//! - `?watch=true&resourceVersion=N` streams (chunked) every change after N as
//!   `{"type":"ADDED|MODIFIED|DELETED","object":..}` lines, then new ones as they happen, with
//!   `BOOKMARK` events when `allowWatchBookmarks=true`; a resourceVersion older than the
//!   compacted history gets an `ERROR` event with a 410 `Status`, as the real server sends;
//! - one global resourceVersion counter, as etcd's revision.
//!
//! The test controls it: [`FakeApiServer::apply`] and [`FakeApiServer::delete`] change
//! objects; [`FakeApiServer::pause_watches`] holds events back (a network partition);
//! [`FakeApiServer::expire_watches`] compacts the history and ends every watch with 410 Gone;
//! [`FakeApiServer::drop_connections`] cuts every connection; [`FakeApiServer::stop`] and
//! [`FakeApiServer::start`] take it away and bring it back; [`FakeApiServer::withhold`]
//! answers a resource 404, as an API server without it; [`FakeApiServer::requests`] is the
//! log of what clients asked.
//!
//! It listens on 127.0.0.1:[`PORT`] inside each network namespace it is given (the socket is
//! made by a thread that joined the namespace, so it belongs there), so a daemon in a node
//! namespace reaches it at `http://127.0.0.1:6443`, and nothing listens in the root
//! namespace.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::netns::Netns;

/// The port the fake listens on in every namespace.
pub const PORT: u16 = 6443;
/// How often an idle watch gets a bookmark.
const BOOKMARK_INTERVAL: Duration = Duration::from_millis(500);

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    ServiceCidrs,
}

impl Resource {
    fn from_path(path: &str) -> Option<Resource> {
        match path {
            "/api/v1/services" => Some(Resource::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Resource::EndpointSlices),
            "/api/v1/nodes" => Some(Resource::Nodes),
            "/apis/networking.k8s.io/v1/servicecidrs" => Some(Resource::ServiceCidrs),
            _ => None,
        }
    }

    fn of_kind(kind: &str) -> Option<Resource> {
        match kind {
            "Service" => Some(Resource::Services),
            "EndpointSlice" => Some(Resource::EndpointSlices),
            "Node" => Some(Resource::Nodes),
            "ServiceCIDR" => Some(Resource::ServiceCidrs),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
            Resource::ServiceCidrs => "ServiceCIDR",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::ServiceCidrs => "networking.k8s.io/v1",
            Resource::Services | Resource::Nodes => "v1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes | Resource::ServiceCidrs)
    }
}

/// One request a client made, for assertions (`GET /api/v1/services?watch=true&..`).
#[derive(Clone, Debug)]
pub struct Request {
    pub resource: Option<Resource>,
    pub watch: bool,
    /// The `resourceVersion` parameter, if given.
    pub resource_version: Option<String>,
    pub target: String,
}

type Key = (Resource, String, String);

#[derive(Default)]
struct Store {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, in order: (revision, resource, event type, object).
    history: Vec<(u64, Resource, &'static str, Value)>,
    /// Watches from a revision below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch and connection.
    epoch: u64,
    /// Bumped to end every open watch with 410 Gone.
    expiry: u64,
    /// Events are held back from watches while set.
    paused: bool,
    requests: Vec<Request>,
    /// Every bookmark written to a watch: (resource, its fieldSelector, resourceVersion).
    bookmarks: Vec<(Resource, Option<String>, u64)>,
    /// events.k8s.io/v1 Events created (POST) and updated (PATCH, a merge), by namespace and
    /// name, as the client last left them.
    events: BTreeMap<(String, String), Value>,
    /// Resources answered 404 (an API server that does not serve them).
    withheld: Vec<Resource>,
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    /// Clones of every open connection by a serial number, to cut them.
    connections: Mutex<BTreeMap<u64, TcpStream>>,
    next_connection: std::sync::atomic::AtomicU64,
    /// Serving HTTPS (as a real API server does) rather than plain HTTP.
    tls: Option<Tls>,
}

/// The serving certificate, issued for 127.0.0.1 by a CA made at start.
struct Tls {
    config: Arc<rustls::ServerConfig>,
    ca_pem: String,
}

impl Tls {
    fn new() -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake API server CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("serving key");
        let serving = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .and_then(|params| params.signed_by(&key, &ca))
            .expect("serving certificate");
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .expect("serving key in DER");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![serving.der().clone()], key)
        .expect("serving certificate and key");
        Tls {
            config: Arc::new(config),
            ca_pem: ca.pem(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Listening {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The fake API server. Dropping it closes every listener and connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    namespaces: Vec<PathBuf>,
    /// Behind a lock so that a test can take the server away while other threads apply
    /// objects through `&self`.
    listening: Mutex<Vec<Listening>>,
}

impl FakeApiServer {
    /// Starts listening on 127.0.0.1:[`PORT`] in each of `namespaces`, over plain HTTP.
    pub fn start_in(namespaces: &[&Netns]) -> FakeApiServer {
        Self::start_with(namespaces, None)
    }

    /// Like [`FakeApiServer::start_in`], over HTTPS with a certificate for 127.0.0.1 from a
    /// CA made now ([`FakeApiServer::write_service_account`] gives clients the CA), as a
    /// Pod's `--in-cluster` client needs.
    pub fn start_tls_in(namespaces: &[&Netns]) -> FakeApiServer {
        Self::start_with(namespaces, Some(Tls::new()))
    }

    fn start_with(namespaces: &[&Netns], tls: Option<Tls>) -> FakeApiServer {
        let server = FakeApiServer {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::default()),
                changed: Condvar::new(),
                connections: Mutex::new(BTreeMap::new()),
                next_connection: std::sync::atomic::AtomicU64::new(0),
                tls,
            }),
            namespaces: namespaces.iter().map(|ns| ns.path().to_owned()).collect(),
            listening: Mutex::new(Vec::new()),
        };
        server.start();
        server
    }

    /// (Re)opens the listeners after [`FakeApiServer::stop`]. Idempotent.
    pub fn start(&self) {
        let mut listening = self
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !listening.is_empty() {
            return;
        }
        for path in self.namespaces.clone() {
            let listener = listen_in(&path)
                .unwrap_or_else(|e| panic!("fake API server in {}: {e:#}", path.display()));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let stop = stop.clone();
                let shared = self.shared.clone();
                std::thread::spawn(move || accept_loop(&listener, &stop, &shared))
            };
            listening.push(Listening {
                stop,
                thread: Some(thread),
            });
        }
    }

    /// Closes the listeners and every connection: clients get "connection refused" until
    /// [`FakeApiServer::start`]. The objects and their history stay.
    pub fn stop(&self) {
        self.listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.drop_connections();
    }

    /// Cuts every open connection (a watch then ends mid-stream); the listeners stay, so
    /// clients can reconnect and resume.
    pub fn drop_connections(&self) {
        self.shared.lock().epoch += 1;
        self.shared.changed.notify_all();
        let connections = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for connection in connections.values() {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    /// Holds every change back from open and new watches (lists still see them), until
    /// [`FakeApiServer::resume_watches`], [`FakeApiServer::expire_watches`] or a reconnect
    /// after [`FakeApiServer::drop_connections`].
    pub fn pause_watches(&self) {
        self.shared.lock().paused = true;
    }

    /// Delivers what was held back.
    pub fn resume_watches(&self) {
        self.shared.lock().paused = false;
        self.shared.changed.notify_all();
    }

    /// Compacts the history (as etcd does) and ends every open watch with an `ERROR` event
    /// carrying `410 Gone`: clients must re-list to see what changed since their last event.
    pub fn expire_watches(&self) {
        {
            let mut store = self.shared.lock();
            store.compacted = store.revision + 1;
            store.history.clear();
            store.expiry += 1;
            store.paused = false;
        }
        self.shared.changed.notify_all();
    }

    /// Creates or replaces an object (real API JSON with `kind` and `metadata`; the fake fills
    /// in `resourceVersion`, `uid`, `creationTimestamp` and `generation`).
    pub fn apply(&self, mut object: Value) {
        let resource = object["kind"]
            .as_str()
            .and_then(Resource::of_kind)
            .unwrap_or_else(|| panic!("fake API server: unknown kind in {object}"));
        let key = key_of(resource, &object);
        let mut store = self.shared.lock();
        store.revision += 1;
        let revision = store.revision;
        let previous = store.objects.get(&key).cloned();
        let meta = object["metadata"]
            .as_object_mut()
            .expect("object has metadata");
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
        let generation = previous
            .as_ref()
            .and_then(|p| p["metadata"]["generation"].as_u64())
            .map_or(1, |g| g + 1);
        meta.insert("generation".into(), json!(generation));
        let uid = previous.as_ref().map_or_else(
            || json!(format!("00000000-0000-4000-8000-{revision:012}")),
            |p| p["metadata"]["uid"].clone(),
        );
        meta.insert("uid".into(), uid);
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-01-01T00:00:00Z"));
        if resource.namespaced() {
            meta.entry("namespace").or_insert(json!("default"));
        }
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.objects.insert(key, object.clone());
        store.history.push((revision, resource, kind, object));
        drop(store);
        self.shared.changed.notify_all();
    }

    /// Answers `resource` with 404 Not Found from now on, as an API server that does not
    /// serve it (networking.k8s.io/v1 `ServiceCIDR`s before Kubernetes 1.33).
    pub fn withhold(&self, resource: Resource) {
        self.shared.lock().withheld.push(resource);
    }

    /// Deletes an object (`namespace` is ignored for Nodes and `ServiceCIDR`s); panics if it does
    /// not exist.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let resource = Resource::of_kind(kind).expect("known kind");
        let namespace = if resource.namespaced() { namespace } else { "" };
        let key = (resource, namespace.to_owned(), name.to_owned());
        let mut store = self.shared.lock();
        let mut object = store
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("fake API server: no {kind} {namespace}/{name} to delete"));
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        store.history.push((revision, resource, "DELETED", object));
        drop(store);
        self.shared.changed.notify_all();
    }

    /// The current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.shared.lock().revision
    }

    /// Every Event clients created, as last updated.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.values().cloned().collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// Waits until a request matching `pred` has been made after the first `after` requests.
    pub fn wait_for_request(
        &self,
        after: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Request) -> bool,
    ) -> Request {
        crate::wait::wait_for(
            &format!("fake API server: {what}"),
            timeout,
            Duration::from_millis(50),
            || {
                let requests = self.requests();
                match requests.iter().skip(after).find(|r| pred(r)) {
                    Some(found) => Ok(found.clone()),
                    None => Err(format!("requests:\n{requests:#?}")),
                }
            },
        )
    }

    /// Waits until every watch of `resource` with one of `selectors` (fieldSelector values)
    /// was written a bookmark at `revision` or later.
    pub fn wait_for_bookmarks(
        &self,
        resource: Resource,
        selectors: &[&str],
        revision: u64,
        timeout: Duration,
    ) {
        let bookmarked = |selector: &str| {
            self.shared.lock().bookmarks.iter().any(|(r, s, rv)| {
                *r == resource && s.as_deref() == Some(selector) && *rv >= revision
            })
        };
        crate::wait::wait_until(timeout, Duration::from_millis(50), || {
            selectors.iter().all(|selector| bookmarked(selector))
        });
    }

    /// Applies a ClusterIP Service `name` on port 81 → 8080 with one slice holding `pods` of
    /// `cluster`, ready.
    pub fn simple_service(
        &self,
        cluster: &crate::Cluster,
        name: &str,
        ip: std::net::Ipv4Addr,
        pods: &[&str],
        labels: &[(&str, &str)],
    ) {
        self.apply(objects::service(
            name,
            "ClusterIP",
            &ip.to_string(),
            &[("http", "TCP", 81, 8080, 0)],
            labels,
        ));
        let endpoints: Vec<_> = pods
            .iter()
            .map(|pod| objects::ready(cluster.pod(pod).ip, &cluster.pod(pod).node))
            .collect();
        self.apply(objects::endpoint_slice(
            &format!("{name}-1"),
            name,
            &endpoints,
            &[("http", "TCP", 8080)],
        ));
    }

    /// Writes what the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount into
    /// `dir`: a token, this server's CA (`ca.crt`) and the namespace. TLS servers only.
    pub fn write_service_account(&self, dir: &Path, namespace: &str) {
        let tls = self
            .shared
            .tls
            .as_ref()
            .expect("a service account needs the TLS server (start_tls_in)");
        for (file, content) in [
            ("token", "fake-token"),
            ("ca.crt", tls.ca_pem.as_str()),
            ("namespace", namespace),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, content)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }

    /// Writes a kubeconfig that points at this server from inside a node namespace.
    pub fn write_kubeconfig(&self, path: &Path) {
        let kubeconfig = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{PORT}
users:
- name: sluice
  user:
    token: fake-token
contexts:
- name: fake
  context:
    cluster: fake
    user: sluice
current-context: fake
"
        );
        std::fs::write(path, kubeconfig)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key_of(resource: Resource, object: &Value) -> Key {
    let meta = &object["metadata"];
    let namespace = if resource.namespaced() {
        meta["namespace"].as_str().unwrap_or("default")
    } else {
        ""
    };
    let name = meta["name"].as_str().expect("object has metadata.name");
    (resource, namespace.to_owned(), name.to_owned())
}

/// A listener on 127.0.0.1:PORT inside the namespace at `path`.
fn listen_in(path: &Path) -> Result<TcpListener> {
    use std::os::fd::AsRawFd as _;
    let ns = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<TcpListener> {
                // SAFETY: setns on an fd we own; only this short-lived thread changes
                // namespace. The socket it makes stays in that namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                // The loopback of a fresh namespace is down.
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .context("ip link set lo up")?;
                anyhow::ensure!(up.success(), "ip link set lo up: {up}");
                let listener =
                    TcpListener::bind(("127.0.0.1", PORT)).context("bind 127.0.0.1:6443")?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, shared: &Arc<Shared>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    shared
                        .connections
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id, clone);
                }
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve_connection(&stream, &shared);
                    // Closes it for the client too (the registry holds a clone).
                    let _ = stream.shutdown(Shutdown::Both);
                    shared
                        .connections
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Serves requests on one keep-alive connection until the client or the test closes it.
fn serve_connection(stream: &TcpStream, shared: &Shared) -> std::io::Result<()> {
    let stream = stream.try_clone()?;
    match &shared.tls {
        None => serve_requests(BufReader::new(stream), shared),
        Some(tls) => {
            let connection =
                rustls::ServerConnection::new(tls.config.clone()).map_err(std::io::Error::other)?;
            serve_requests(
                BufReader::new(rustls::StreamOwned::new(connection, stream)),
                shared,
            )
        }
    }
}

/// HTTP/1.1 requests, read from and answered on `reader`'s stream.
fn serve_requests<S: Read + Write>(
    mut reader: BufReader<S>,
    shared: &Shared,
) -> std::io::Result<()> {
    let epoch = shared.lock().epoch;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        if shared.lock().epoch != epoch {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params = parse_query(query);
        let resource = Resource::from_path(path);
        let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
        shared.lock().requests.push(Request {
            resource,
            watch,
            resource_version: params.get("resourceVersion").cloned(),
            target: target.to_owned(),
        });
        let out = reader.get_mut();
        if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/namespaces/") {
            serve_event(out, shared, method, rest, &body)?;
            continue;
        }
        let resource = resource.filter(|r| !shared.lock().withheld.contains(r));
        match (method, resource) {
            ("GET", Some(resource)) if watch => {
                // Keep-alive after a watch that ended properly, as a real server does.
                if !serve_watch(out, shared, resource, &params, epoch)? {
                    return Ok(());
                }
            }
            ("GET", Some(resource)) => serve_list(out, shared, resource, &params)?,
            _ => {
                let status = status_json(404, "NotFound", &format!("{method} {path}: not found"));
                respond(out, "404 Not Found", &status)?;
            }
        }
    }
}

/// `POST {ns}/events` creates an Event, `PATCH {ns}/events/{name}` merges into one (as
/// kube-runtime's recorder updates a series); both answer with the stored object.
fn serve_event(
    out: &mut impl Write,
    shared: &Shared,
    method: &str,
    rest: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return respond(
            out,
            "400 Bad Request",
            &status_json(400, "BadRequest", "not JSON"),
        );
    };
    let mut parts = rest.split('/');
    let (namespace, resource, name) = (parts.next(), parts.next(), parts.next());
    let mut store = shared.lock();
    match (method, namespace, resource, name) {
        ("POST", Some(namespace), Some("events"), None) => {
            // As a real API server: the object lands in the namespace of its URL.
            let mut object = object;
            object["metadata"]["namespace"] = json!(namespace);
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            store
                .events
                .insert((namespace.to_owned(), name), object.clone());
            drop(store);
            respond(out, "201 Created", &object)
        }
        ("PATCH", Some(namespace), Some("events"), Some(name)) => {
            let key = (namespace.to_owned(), name.to_owned());
            let Some(stored) = store.events.get_mut(&key) else {
                drop(store);
                return respond(out, "404 Not Found", &status_json(404, "NotFound", name));
            };
            if let (Some(stored), Some(patch)) = (stored.as_object_mut(), object.as_object()) {
                for (field, value) in patch {
                    stored.insert(field.clone(), value.clone());
                }
            }
            let merged = stored.clone();
            drop(store);
            respond(out, "200 OK", &merged)
        }
        _ => {
            drop(store);
            respond(
                out,
                "404 Not Found",
                &status_json(404, "NotFound", &format!("{method} events {rest}")),
            )
        }
    }
}

fn respond(out: &mut impl Write, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// `fieldSelector=metadata.name=X,metadata.namespace=Y`.
fn matches_selector(object: &Value, params: &BTreeMap<String, String>) -> bool {
    let Some(selector) = params.get("fieldSelector") else {
        return true;
    };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (field, value) = term.split_once('=').unwrap_or((term, ""));
        let value = value.trim_start_matches('=');
        match field {
            "metadata.name" => object["metadata"]["name"] == value,
            "metadata.namespace" => object["metadata"]["namespace"] == value,
            _ => true,
        }
    })
}

fn serve_list(
    out: &mut impl Write,
    shared: &Shared,
    resource: Resource,
    params: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let store = shared.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((r, _, _), object)| *r == resource && matches_selector(object, params))
        .map(|(_, object)| object.clone())
        .collect();
    let list = json!({
        "kind": format!("{}List", resource.kind()),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": store.revision.to_string()},
        "items": items,
    });
    drop(store);
    respond(out, "200 OK", &list)
}

fn write_chunk(out: &mut impl Write, line: &Value) -> std::io::Result<()> {
    let data = format!("{line}\n");
    write!(out, "{:x}\r\n{data}\r\n", data.len())?;
    out.flush()
}

/// Streams changes after the requested resourceVersion until the watch times out, the test
/// expires it (410) or cuts the connection, or the client goes away. True when the response
/// ended properly (the connection may serve more requests).
fn serve_watch(
    out: &mut impl Write,
    shared: &Shared,
    resource: Resource,
    params: &BTreeMap<String, String>,
    epoch: u64,
) -> std::io::Result<bool> {
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let deadline = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(|secs| Instant::now() + Duration::from_secs(secs));
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    out.flush()?;
    let gone = |store: &Store, at: u64| {
        status_json(
            410,
            "Expired",
            &format!(
                "too old resource version: {at} ({})",
                store.compacted.saturating_sub(1)
            ),
        )
    };
    let mut store = shared.lock();
    let expiry = store.expiry;
    // Version 0 means "any": start from now, as the real server's watch cache does.
    let mut sent_up_to = if from == 0 { store.revision } else { from };
    if from != 0 && from + 1 < store.compacted {
        let error = json!({"type": "ERROR", "object": gone(&store, from)});
        drop(store);
        write_chunk(out, &error)?;
        return finish(out);
    }
    let mut last_write = Instant::now();
    loop {
        if store.epoch != epoch {
            return Ok(false); // cut: no terminating chunk, as a broken connection
        }
        if store.expiry != expiry {
            let error = json!({"type": "ERROR", "object": gone(&store, sent_up_to)});
            drop(store);
            write_chunk(out, &error)?;
            return finish(out);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            drop(store);
            return finish(out);
        }
        let mut lines = Vec::new();
        if !store.paused {
            lines.extend(
                store
                    .history
                    .iter()
                    .filter(|(rev, r, _, object)| {
                        *rev > sent_up_to && *r == resource && matches_selector(object, params)
                    })
                    .map(|(_, _, kind, object)| json!({"type": kind, "object": object})),
            );
            sent_up_to = store.revision;
        }
        if lines.is_empty() && bookmarks && last_write.elapsed() >= BOOKMARK_INTERVAL {
            lines.push(json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": resource.kind(),
                    "apiVersion": resource.api_version(),
                    "metadata": {"resourceVersion": sent_up_to.to_string()},
                },
            }));
        }
        if lines.is_empty() {
            store = shared
                .changed
                .wait_timeout(store, BOOKMARK_INTERVAL)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
            continue;
        }
        drop(store);
        for line in &lines {
            write_chunk(out, line)?;
        }
        last_write = Instant::now();
        store = shared.lock();
        for line in &lines {
            if line["type"] == "BOOKMARK" {
                store
                    .bookmarks
                    .push((resource, params.get("fieldSelector").cloned(), sent_up_to));
            }
        }
    }
}

fn finish(out: &mut impl Write) -> std::io::Result<bool> {
    out.write_all(b"0\r\n\r\n")?;
    out.flush()?;
    Ok(true)
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(byte) = u8::from_str_radix(hex, 16) {
                    out.push(byte);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kubernetes objects as the API server returns them, for the fake to serve.
pub mod objects {
    use std::{net::Ipv4Addr, time::SystemTime};

    use serde_json::{Value, json};

    /// A Service port: (name, protocol, port, targetPort, nodePort or 0).
    pub type Port<'a> = (&'a str, &'a str, u16, u16, u16);

    /// The cluster-mode tests' `echo` Service: NodePort on 198.19.0.10, `http` TCP 80 → 8080
    /// (nodePort 30080) and `dns` UDP 53 → 8053 (nodePort 30053), the ports the pods serve.
    pub fn echo_service() -> Value {
        service(
            "echo",
            "NodePort",
            "198.19.0.10",
            &[
                ("http", "TCP", 80, 8080, 30080),
                ("dns", "UDP", 53, 8053, 30053),
            ],
            &[],
        )
    }

    /// A v1 Service of `service_type` (ClusterIP, NodePort) with the fields the API server
    /// defaults filled in, as `kubectl get -o json` shows them.
    pub fn service(
        name: &str,
        service_type: &str,
        cluster_ip: &str,
        ports: &[Port<'_>],
        labels: &[(&str, &str)],
    ) -> Value {
        let ports: Vec<Value> = ports
            .iter()
            .map(|&(port_name, protocol, port, target, node_port)| {
                let mut value = json!({
                    "name": port_name,
                    "protocol": protocol,
                    "port": port,
                    "targetPort": target,
                });
                if node_port != 0 {
                    value["nodePort"] = json!(node_port);
                }
                value
            })
            .collect();
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let mut spec = json!({
            "type": service_type,
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": ports,
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        });
        if service_type != "ClusterIP" {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": spec,
            "status": {"loadBalancer": {}},
        })
    }

    /// A v1 Service of type ExternalName.
    pub fn external_name_service(name: &str, external_name: &str) -> Value {
        json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "ExternalName",
                "externalName": external_name,
                "sessionAffinity": "None",
            },
            "status": {"loadBalancer": {}},
        })
    }

    /// An endpoint: (address, node, ready, serving, terminating).
    pub type SliceEndpoint<'a> = (Ipv4Addr, &'a str, bool, bool, bool);

    /// A ready endpoint on `node`.
    pub fn ready(addr: Ipv4Addr, node: &str) -> SliceEndpoint<'_> {
        (addr, node, true, true, false)
    }

    /// A discovery.k8s.io/v1 EndpointSlice of `service`, as the endpoint-slice controller
    /// writes it. `ports`: (name, protocol, port).
    pub fn endpoint_slice(
        name: &str,
        service: &str,
        endpoints: &[SliceEndpoint<'_>],
        ports: &[(&str, &str, u16)],
    ) -> Value {
        let endpoints: Vec<Value> = endpoints
            .iter()
            .map(|&(addr, node, ready, serving, terminating)| {
                json!({
                    "addresses": [addr.to_string()],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "nodeName": node,
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{service}-{addr}")},
                })
            })
            .collect();
        let ports: Vec<Value> = ports
            .iter()
            .map(|&(port_name, protocol, port)| {
                json!({"name": port_name, "protocol": protocol, "port": port})
            })
            .collect();
        json!({
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": {
                "name": name,
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "generateName": format!("{service}-"),
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        })
    }

    /// `object` with `endpoints.kubernetes.io/last-change-trigger-time` set to `time`, as
    /// the endpoint-slice controller stamps it (RFC 3339 in UTC, with fractional seconds).
    pub fn with_trigger_time(mut object: Value, time: SystemTime) -> Value {
        object["metadata"]["annotations"] = json!({
            "endpoints.kubernetes.io/last-change-trigger-time":
                humantime::format_rfc3339_nanos(time).to_string(),
        });
        object
    }

    /// A v1 Node with its `InternalIP` addresses (one per family, as the kubelet reports them).
    pub fn node(name: &str, ips: &[std::net::IpAddr]) -> Value {
        let mut addresses: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": name}));
        json!({
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
            },
            "spec": {},
            "status": {
                "addresses": addresses,
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    }

    /// A networking.k8s.io/v1 `ServiceCIDR` (the API server makes one named `kubernetes` from
    /// its `--service-cluster-ip-range`).
    pub fn service_cidr(name: &str, cidrs: &[&str]) -> Value {
        json!({
            "kind": "ServiceCIDR",
            "apiVersion": "networking.k8s.io/v1",
            "metadata": {"name": name},
            "spec": {"cidrs": cidrs},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let params = parse_query("fieldSelector=metadata.name%3Dnode1&watch=true&x");
        assert_eq!(params["fieldSelector"], "metadata.name=node1");
        assert_eq!(params["watch"], "true");
        assert_eq!(params["x"], "");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
