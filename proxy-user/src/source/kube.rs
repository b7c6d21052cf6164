//! Cluster mode: follow the Kubernetes API server and publish the desired state on every
//! change.
//!
//! Four kube-rs watchers (Services, discovery.k8s.io/v1 EndpointSlices, this node's Node, and
//! networking.k8s.io/v1 `ServiceCIDR`s) feed one [`ClusterView`] with the typed objects kube-rs
//! decodes (k8s-openapi). The
//! Services and EndpointSlices are converted into the subset manifest files are read into and
//! go through the same checks and the same resolve step ([`ApiObjects`]), so label filters,
//! headless and ExternalName skipping and the KEP-1669 endpoint conditions behave exactly as
//! in standalone mode.
//!
//! Watch behaviour (kube-rs' `watcher` does the protocol, this module the bookkeeping):
//! - a (re-)list arrives as `Init`, `InitApply`.., `InitDone`; its objects are buffered and
//!   replace that kind's objects at `InitDone`, so an object deleted while the watch was
//!   broken disappears, and nothing is half-listed;
//! - nothing is published (the channel stays `None`) until Services, EndpointSlices and the
//!   Node have been listed once: the daemon never deletes live services on a partial view.
//!   `ServiceCIDR`s do not hold that up: an API server without them (before Kubernetes 1.33, or
//!   RBAC without `servicecidrs`) only means that addresses of the service CIDRs no Service
//!   holds are not refused, as kube-proxy without them;
//! - a dropped watch resumes from the last resourceVersion (or bookmark); `410 Gone` makes
//!   the watcher re-list;
//! - while the API server is unreachable the watchers retry with backoff ([`RetryBackoff`])
//!   and the last published state, and so the datapath, stays as it is;
//! - an object kube-rs cannot decode into its typed struct (a field of the wrong JSON type,
//!   which a real API server does not send) is a watcher error, not a check problem: in a
//!   watch that change is skipped and the watch goes on; in a list the whole list is retried
//!   with backoff, and that kind stays as last listed until the object can be read
//!   ([`describe`] says which, once per failure).
//!
//! The objects are kept checked, not raw (as a kube-rs reflector `Store` would keep them), so
//! that each change converts one object, not the whole cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use ::kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    core::Status,
    runtime::{
        WatchStreamExt as _,
        utils::Backoff,
        watcher::{self, Event},
    },
};
use anyhow::{Context as _, Result};
use futures_util::StreamExt as _;
use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::log_problems;
use crate::{
    model::{DesiredReceiver, NodeState},
    source::manifest::{ApiObject, ApiObjects, Kind, ManifestError, Resolution},
};

/// Changes arriving within this window are applied together (a re-list, a rollout)...
const DEBOUNCE: Duration = Duration::from_millis(50);
/// ... but a steady stream of changes is still published at least this often.
const MAX_BATCH: Duration = Duration::from_millis(500);

/// How sluice reaches the API server.
#[derive(Clone, Debug)]
pub enum ApiAccess {
    /// `--kubeconfig PATH`: its current context.
    Kubeconfig(PathBuf),
    /// `--in-cluster`: the pod's service account and `KUBERNETES_SERVICE_HOST`.
    InCluster,
}

#[derive(Clone)]
pub struct KubeSourceOptions {
    pub client: Client,
    /// This node's name: its Node object is watched.
    pub node_name: String,
}

/// The resources sluice watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watched {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
}

impl Watched {
    /// What must have been listed before a state is published.
    const REQUIRED: [Watched; 3] = [Watched::Service, Watched::EndpointSlice, Watched::Node];
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Watched::Service => "Services",
            Watched::EndpointSlice => "EndpointSlices",
            Watched::Node => "Node",
            Watched::ServiceCidr => "ServiceCIDRs",
        })
    }
}

/// A client for the API server that `access` names.
pub async fn connect(access: &ApiAccess, node_name: &str) -> Result<Client> {
    let config = match access {
        ApiAccess::Kubeconfig(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("use the kubeconfig {}", path.display()))?
        }
        ApiAccess::InCluster => Config::incluster().context(
            "--in-cluster: no service account or KUBERNETES_SERVICE_HOST (run sluice in a pod, \
             or pass --kubeconfig)",
        )?,
    };
    info!(server = %config.cluster_url, node = %node_name, "following the Kubernetes API");
    Client::try_from(config).context("create the Kubernetes client")
}

/// This node's `InternalIP` addresses (both families), as kube-proxy takes its node IPs from
/// its Node at start-up. Empty, with a warning, when the Node cannot be read within
/// `NODE_IP_TIMEOUT` or has none: the datapath then uses the local addresses, as without
/// `--node-ip`.
pub async fn node_internal_ips(client: &Client, node_name: &str) -> Vec<IpAddr> {
    let nodes = Api::<Node>::all(client.clone());
    let params = ::kube::api::ListParams::default().fields(&format!("metadata.name={node_name}"));
    let why = match tokio::time::timeout(NODE_IP_TIMEOUT, nodes.list(&params)).await {
        Ok(Ok(list)) => {
            let ips: Vec<IpAddr> = list
                .items
                .iter()
                .flat_map(|node| node_info(node).internal_ips)
                .collect();
            if !ips.is_empty() {
                return ips;
            }
            "the Node has none".to_owned()
        }
        Ok(Err(e)) => format!("cannot read the Node: {e}"),
        Err(_) => format!("no answer in {NODE_IP_TIMEOUT:?}"),
    };
    warn!(
        node = %node_name,
        "this node's InternalIPs: {why}; using the local addresses (pass --node-ip to choose)"
    );
    Vec::new()
}

/// How long start-up waits for this node's Node object.
const NODE_IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Follows the API server through `client` in the background (an unreachable server is
/// retried). The receiver holds `None` until Services, EndpointSlices and the Node have all
/// been listed (`ServiceCIDR`s are not waited for). Must be called inside a Tokio runtime.
pub fn spawn(opts: KubeSourceOptions) -> DesiredReceiver {
    let client = opts.client;
    let (updates_tx, mut updates) = mpsc::channel(1024);
    follow(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        Update::Services,
        updates_tx.clone(),
    );
    follow(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        Update::EndpointSlices,
        updates_tx.clone(),
    );
    follow(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", opts.node_name)),
        Update::Node,
        updates_tx.clone(),
    );
    follow(
        Api::<ServiceCIDR>::all(client),
        watcher::Config::default(),
        Update::ServiceCidrs,
        updates_tx,
    );

    let (sender, receiver) = watch::channel(None);
    tokio::spawn(async move {
        let mut view = ClusterView::new(opts.node_name);
        let mut logged = BTreeSet::new();
        while let Some(first) = updates.recv().await {
            view.update(first);
            let batch_end = tokio::time::Instant::now() + MAX_BATCH;
            loop {
                let wait = tokio::time::Instant::now() + DEBOUNCE;
                match tokio::time::timeout_at(wait.min(batch_end), updates.recv()).await {
                    Ok(Some(update)) => view.update(update),
                    Ok(None) | Err(_) => break,
                }
            }
            let Some(resolution) = view.resolve() else {
                continue;
            };
            log_new_problems(&resolution.problems, &mut logged);
            let mut state = resolution.state;
            sender.send_if_modified(|current| {
                // Unchanged services stay shared, so the daemon only looks at changed ones.
                if let Some(current) = current.as_deref()
                    && !state.share_unchanged(current)
                {
                    return false;
                }
                info!(
                    services = state.services.len(),
                    "desired state from the API server"
                );
                *current = Some(Arc::new(state));
                true
            });
        }
    });
    receiver
}

/// One watcher's item, an event with the typed object as kube-rs decoded it (boxed: a
/// Service or a Node is more than a kilobyte, and items queue in a channel), or why the
/// watch failed (it is retried), as [`describe`] tells it.
#[derive(Clone, Debug)]
pub enum Update {
    Services(WatchItem<Service>),
    EndpointSlices(WatchItem<EndpointSlice>),
    Node(WatchItem<Node>),
    ServiceCidrs(WatchItem<ServiceCIDR>),
}

/// A watcher's event, or why it failed.
pub type WatchItem<K> = Result<Event<Box<K>>, String>;

impl Update {
    pub fn watched(&self) -> Watched {
        match self {
            Update::Services(_) => Watched::Service,
            Update::EndpointSlices(_) => Watched::EndpointSlice,
            Update::Node(_) => Watched::Node,
            Update::ServiceCidrs(_) => Watched::ServiceCidr,
        }
    }
}

/// Runs a watcher on `api` and forwards what it sees, wrapped by `update`, until the
/// receiver is gone.
fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    update: fn(WatchItem<K>) -> Update,
    updates: mpsc::Sender<Update>,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut stream =
            Box::pin(::kube::runtime::watcher(api, config).backoff(RetryBackoff::default()));
        while let Some(item) = stream.next().await {
            let item = item.map(boxed).map_err(|e| describe(&e));
            if updates.send(update(item)).await.is_err() {
                break;
            }
        }
    });
}

/// A watcher event with its object boxed, as the view takes it.
pub(crate) fn boxed<K>(event: Event<K>) -> Event<Box<K>> {
    match event {
        Event::Apply(object) => Event::Apply(Box::new(object)),
        Event::Delete(object) => Event::Delete(Box::new(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(Box::new(object)),
        Event::InitDone => Event::InitDone,
    }
}

/// What a watcher error means for the state, for the log. An object that kube-rs cannot
/// decode into its typed struct costs a list or one change, not the connection, so it is told
/// apart from the rest.
pub fn describe(error: &watcher::Error) -> String {
    use ::kube::Error::{Api, SerdeError};
    const SKIPPED: &str = "that change is skipped and the object stays as last seen; the watch \
                           goes on";
    match error {
        watcher::Error::InitialListFailed(SerdeError(e)) => format!(
            "the API server sent a list with an object sluice cannot decode ({e}); the list is \
             retried with backoff and these objects stay as last listed until it can be read"
        ),
        watcher::Error::WatchFailed(SerdeError(e)) => {
            format!("the API server sent a change sluice cannot decode ({e}); {SKIPPED}")
        }
        // kube-rs reads a watch line it cannot decode as a Status as a last resort, which any
        // JSON object passes as an empty one: the decode error itself is lost.
        watcher::Error::WatchFailed(Api(status)) if **status == Status::default() => format!(
            "the API server sent a change sluice cannot decode (a field of a JSON type the \
             typed object rejects; kube-rs does not tell which object); {SKIPPED}"
        ),
        other => {
            format!("{other}; retrying with backoff (the datapath keeps serving the last state)")
        }
    }
}

/// Exponential backoff for failed list and watch requests: 250 ms doubling to 10 s, reset by
/// any success. Shorter than kube-rs' default (up to 30 s) so a node catches up soon after
/// the API server is back; three requests per node per 10 s is nothing for it.
#[derive(Clone, Debug)]
pub struct RetryBackoff {
    next: Duration,
}

impl RetryBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(10);
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: Self::FIRST }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(now)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// What sluice knows of this node's Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `status.addresses` of type InternalIP.
    pub internal_ips: Vec<IpAddr>,
    /// What the desired state carries of it.
    pub state: NodeState,
}

/// Everything the watchers have told so far, and whether it is complete.
#[derive(Debug)]
pub struct ClusterView {
    node_name: String,
    objects: ApiObjects,
    /// Services and EndpointSlices of a (re-)list in progress, by what is listed.
    listing: BTreeMap<Watched, Vec<ApiObject>>,
    /// A Node (re-)list in progress.
    node_listing: Option<NodeListing>,
    /// What has been listed completely at least once.
    listed: BTreeSet<Watched>,
    node: Option<NodeInfo>,
    /// The watchers failing now, with what was logged last (so that each failure is logged
    /// once, and recovery once).
    failing: BTreeMap<Watched, String>,
    /// `spec.cidrs` of every `ServiceCIDR` by name, once they have been listed.
    service_cidrs: BTreeMap<String, Vec<IpNet>>,
    /// A `ServiceCIDR` (re-)list in progress.
    service_cidr_listing: Option<BTreeMap<String, Vec<IpNet>>>,
}

/// What a Node (re-)list has shown so far.
#[derive(Debug, Default)]
struct NodeListing {
    this_node: Option<NodeInfo>,
}

impl ClusterView {
    pub fn new(node_name: String) -> Self {
        ClusterView {
            node_name,
            objects: ApiObjects::new(),
            listing: BTreeMap::new(),
            node_listing: None,
            listed: BTreeSet::new(),
            node: None,
            failing: BTreeMap::new(),
            service_cidrs: BTreeMap::new(),
            service_cidr_listing: None,
        }
    }

    /// Whether every required resource has been listed once: only then is the view complete.
    pub fn is_synced(&self) -> bool {
        Watched::REQUIRED
            .iter()
            .all(|what| self.listed.contains(what))
    }

    /// This node's Node, when it exists.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// Applies one watcher item, logging what the checks found in the objects.
    pub fn update(&mut self, update: Update) {
        let what = update.watched();
        let problems = match update {
            Update::Services(item) => self.update_objects(what, Kind::Service, item),
            Update::EndpointSlices(item) => self.update_objects(what, Kind::EndpointSlice, item),
            Update::Node(item) => {
                if let Some(event) = self.event(what, item) {
                    self.update_node(event);
                }
                Vec::new()
            }
            Update::ServiceCidrs(item) => {
                if let Some(event) = self.event(what, item) {
                    self.update_service_cidrs(event);
                }
                Vec::new()
            }
        };
        log_problems(&problems);
    }

    /// The event of a watcher item; `None` when the watch failed (logged once per failure).
    fn event<K>(&mut self, what: Watched, item: WatchItem<K>) -> Option<Event<Box<K>>> {
        match item {
            Ok(event) => {
                if self.failing.remove(&what).is_some() {
                    info!("watching {what} again");
                }
                Some(event)
            }
            Err(why) => {
                if self.failing.get(&what) == Some(&why) {
                    tracing::debug!("watching {what}: {why}");
                } else {
                    warn!("watching {what}: {why}");
                    self.failing.insert(what, why);
                }
                None
            }
        }
    }

    fn update_objects<K>(
        &mut self,
        what: Watched,
        kind: Kind,
        item: WatchItem<K>,
    ) -> Vec<ManifestError>
    where
        K: Resource,
        Box<K>: Into<ApiObject>,
    {
        let Some(event) = self.event(what, item) else {
            return Vec::new();
        };
        match event {
            Event::Init => {
                self.listing.insert(what, Vec::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                self.listing.entry(what).or_default().push(object.into());
                Vec::new()
            }
            Event::InitDone => {
                let objects = self.listing.remove(&what).unwrap_or_default();
                let count = objects.len();
                let problems = self.objects.replace_kind(kind, objects);
                if self.listed.insert(what) {
                    info!(count, "listed {what}");
                } else {
                    info!(count, "listed {what} again");
                }
                problems
            }
            Event::Apply(object) => self.objects.apply(object),
            Event::Delete(object) => {
                let meta = object.meta();
                self.objects.delete(
                    kind,
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                );
                Vec::new()
            }
        }
    }

    fn update_node(&mut self, event: Event<Box<Node>>) {
        match event {
            Event::Init => self.node_listing = Some(NodeListing::default()),
            Event::InitApply(node) => {
                if self.is_this_node(&node) {
                    self.node_listing.get_or_insert_default().this_node = Some(node_info(&node));
                }
            }
            Event::InitDone => {
                let listed = self.node_listing.take().unwrap_or_default();
                self.set_node(listed.this_node);
                self.listed.insert(Watched::Node);
                if self.node.is_none() {
                    warn!(
                        "there is no Node named {:?}: no endpoint counts as local to this node \
                         (check --node-name or NODE_NAME)",
                        self.node_name
                    );
                }
            }
            Event::Apply(node) if self.is_this_node(&node) => self.set_node(Some(node_info(&node))),
            Event::Delete(node) if self.is_this_node(&node) => {
                warn!(
                    "the Node {:?} was deleted: /healthz fails from now on",
                    self.node_name
                );
                self.node = Some(NodeInfo {
                    internal_ips: Vec::new(),
                    state: NodeState {
                        draining: true,
                        labels: BTreeMap::new(),
                    },
                });
            }
            Event::Apply(_) | Event::Delete(_) => {}
        }
    }

    fn update_service_cidrs(&mut self, event: Event<Box<ServiceCIDR>>) {
        match event {
            Event::Init => self.service_cidr_listing = Some(BTreeMap::new()),
            Event::InitApply(object) => {
                let (name, cidrs) = service_cidrs_of(&object);
                self.service_cidr_listing
                    .get_or_insert_default()
                    .insert(name, cidrs);
            }
            Event::InitDone => {
                self.service_cidrs = self.service_cidr_listing.take().unwrap_or_default();
                if self.listed.insert(Watched::ServiceCidr) {
                    info!(cidrs = ?self.cidrs(), "listed ServiceCIDRs");
                }
            }
            Event::Apply(object) => {
                let (name, cidrs) = service_cidrs_of(&object);
                self.service_cidrs.insert(name, cidrs);
            }
            Event::Delete(object) => {
                self.service_cidrs
                    .remove(object.metadata.name.as_deref().unwrap_or_default());
            }
        }
    }

    /// Every `ServiceCIDR`'s CIDRs, once listed (kube-proxy's `OnServiceCIDRsChanged` set: the
    /// objects' `spec.cidrs`, whatever their status).
    fn cidrs(&self) -> Option<Vec<IpNet>> {
        self.listed.contains(&Watched::ServiceCidr).then(|| {
            let cidrs: BTreeSet<IpNet> = self.service_cidrs.values().flatten().copied().collect();
            cidrs.into_iter().collect()
        })
    }

    fn is_this_node(&self, node: &Node) -> bool {
        node.metadata.name.as_deref() == Some(self.node_name.as_str())
    }

    fn set_node(&mut self, info: Option<NodeInfo>) {
        if info != self.node
            && let Some(info) = &info
        {
            info!(node = %self.node_name, internal_ips = ?info.internal_ips, draining = info.state.draining, "this node");
        }
        self.node = info;
    }

    /// The desired state, once the view is complete.
    pub fn resolve(&self) -> Option<Resolution> {
        self.is_synced().then(|| {
            let mut resolution = self.objects.desired_state();
            resolution.state.node = self.node.as_ref().map(|node| node.state.clone());
            resolution.state.service_cidrs = self.cidrs();
            resolution
        })
    }
}

/// A `ServiceCIDR`'s name and the CIDRs of its spec that parse (the API server validates them;
/// one that does not parse is logged and left out).
fn service_cidrs_of(object: &ServiceCIDR) -> (String, Vec<IpNet>) {
    let name = object.metadata.name.clone().unwrap_or_default();
    let cidrs = object
        .spec
        .as_ref()
        .and_then(|spec| spec.cidrs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|cidr| match cidr.parse::<IpNet>() {
            Ok(net) => Some(net.trunc()),
            Err(err) => {
                warn!("ServiceCIDR {name}: spec.cidrs: {cidr:?} is not a CIDR ({err}); left out");
                None
            }
        })
        .collect();
    (name, cidrs)
}

fn node_info(node: &Node) -> NodeInfo {
    let internal_ips = node
        .status
        .iter()
        .flat_map(|status| status.addresses.iter().flatten())
        .filter(|address| address.type_ == "InternalIP")
        .filter_map(|address| address.address.parse().ok())
        .collect();
    let to_be_deleted = node
        .spec
        .iter()
        .flat_map(|spec| spec.taints.iter().flatten())
        .any(|taint| taint.key == NodeState::TO_BE_DELETED_TAINT);
    NodeInfo {
        internal_ips,
        state: NodeState {
            draining: node.metadata.deletion_timestamp.is_some() || to_be_deleted,
            labels: node.metadata.labels.clone().unwrap_or_default(),
        },
    }
}

/// Logs the cross-object problems of a resolution that were not logged last time, so a
/// steady cluster does not repeat the same notes on every change.
fn log_new_problems(problems: &[ManifestError], logged: &mut BTreeSet<String>) {
    let current: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
    let new: Vec<ManifestError> = problems
        .iter()
        .filter(|problem| !logged.contains(&problem.to_string()))
        .cloned()
        .collect();
    log_problems(&new);
    *logged = current;
}

#[cfg(test)]
mod tests;
