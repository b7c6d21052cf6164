//! Manifests for the test cluster: its pods as v1 Pods and the services the tests use, written
//! atomically into a directory that `sluice run --manifests` follows.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use crate::{Cluster, tempdir::TempDir};

/// ClusterIP of the `echo` service (TCP 80 and 81, UDP 53, TCP 53).
pub const ECHO_IP: &str = "198.19.0.10";
/// NodePorts of `echo`: TCP 80 → 30080, UDP 53 → 30053.
pub const ECHO_NODE_PORT_TCP: u16 = 30080;
pub const ECHO_NODE_PORT_UDP: u16 = 30053;
/// ClusterIP of `empty`, a service whose selector matches no pod.
pub const EMPTY_IP: &str = "198.19.0.20";
pub const EMPTY_NODE_PORT_TCP: u16 = 30090;
pub const EMPTY_NODE_PORT_UDP: u16 = 30091;

/// A manifests directory owned by a test.
pub struct ManifestDir {
    dir: TempDir,
}

impl ManifestDir {
    pub fn new(name: &str) -> Self {
        let name = format!("{}-{name}", crate::unique::next_prefix());
        let dir = TempDir::new(&name).unwrap_or_else(|e| panic!("manifest dir: {e:#}"));
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `file` whole: a temporary name first, then a rename, so the daemon never reads
    /// half a file.
    pub fn write(&self, file: &str, content: &str) {
        let tmp: PathBuf = self.path().join(format!(".{file}.tmp"));
        fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, self.path().join(file)).unwrap_or_else(|e| panic!("rename {file}: {e}"));
    }

    pub fn remove(&self, file: &str) {
        fs::remove_file(self.path().join(file)).unwrap_or_else(|e| panic!("remove {file}: {e}"));
    }

    /// The standard set: every pod ready, the `echo` and `empty` services.
    pub fn standard(cluster: &Cluster) -> Self {
        let dir = Self::new("manifests");
        dir.write("pods.yaml", &pods_yaml(cluster, |_| true));
        dir.write("services.yaml", SERVICES_YAML);
        dir
    }
}

/// One v1 Pod per cluster pod, labelled `app: echo`; `ready(name)` sets its Ready condition.
pub fn pods_yaml(cluster: &Cluster, ready: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for pod in cluster.pods() {
        let status = if ready(&pod.name) { "True" } else { "False" };
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: echo}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    ports:
    - {{name: http, containerPort: 8080, protocol: TCP}}
    - {{name: web, containerPort: 80, protocol: TCP}}
    - {{name: dns, containerPort: 8053, protocol: UDP}}
status:
  podIP: {ip}
  conditions:
  - {{type: Ready, status: \"{status}\"}}
",
            name = pod.name,
            node = pod.node,
            ip = pod.ip,
        );
    }
    out
}

/// How [`dual_stack_pods_yaml`] writes a pod: its `app` label and whether it is ready.
#[derive(Clone, Copy, Debug)]
pub struct PodAs {
    pub app: &'static str,
    pub ready: bool,
}

impl PodAs {
    /// A ready backend of the `app: echo` Services.
    pub const BACKEND: PodAs = PodAs {
        app: "echo",
        ready: true,
    };
}

/// Every pod with both of its addresses (`status.podIPs`), labelled `app` and `pod: <name>`,
/// as `how(name)` says.
pub fn dual_stack_pods_yaml(cluster: &Cluster, how: impl Fn(&str) -> PodAs) -> String {
    let mut out = String::new();
    for pod in cluster.pods() {
        let PodAs { app, ready } = how(&pod.name);
        let status = if ready { "True" } else { "False" };
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: {app}, pod: {name}}}}}
spec:
  nodeName: {node}
  containers:
  - name: echo
    ports:
    - {{containerPort: 8080, protocol: TCP}}
    - {{containerPort: 8053, protocol: UDP}}
status:
  podIP: {ip}
  podIPs: [{{ip: {ip}}}, {{ip: \"{ip6}\"}}]
  conditions:
  - {{type: Ready, status: \"{status}\"}}
",
            name = pod.name,
            node = pod.node,
            ip = pod.ip,
            ip6 = pod.ip6,
        );
    }
    out
}

/// `echo`: several ports, named and numeric target ports, TCP and UDP on port 53.
/// `empty`: no endpoints, so it must refuse.
pub const SERVICES_YAML: &str = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  type: NodePort
  clusterIP: 198.19.0.10
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: alt, port: 81, targetPort: 80}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: web}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  type: NodePort
  clusterIP: 198.19.0.20
  selector: {app: nothing}
  ports:
  - {name: http, port: 80, nodePort: 30090}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30091}
";
