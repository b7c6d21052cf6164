//! The `DaemonSet`'s `sluice` container, run with podman inside a harness node as a kubelet
//! would run it: the image `cargo xtask image` builds, and the securityContext, mounts,
//! environment, resources and arguments read from deploy/daemonset.yaml (never copied).
//!
//! [`DaemonSetContainer::read`] takes the container apart and refuses fields it does not know
//! how to turn into podman flags, so the test cannot silently run something else than the
//! manifest says. [`Podman`] keeps its images and containers in a private storage directory
//! (vfs driver, cgroupfs manager, file events: nothing of the machine's own podman state is
//! touched) and removes every container on drop. A test killed without unwinding leaves the
//! container's process in the node's network namespace, where the sweep finds and kills it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    process::{self, Finished},
    tempdir::TempDir,
};

/// Where the kubelet mounts a Pod's service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long one podman command may take (loading the image copies it into vfs storage).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The image archive: `$SLUICE_IMAGE`, else where `cargo xtask image` writes it.
pub fn image_archive() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_IMAGE") {
        return Ok(PathBuf::from(path));
    }
    let target = crate::bins::target_profile_dir()?
        .parent()
        .map(Path::to_path_buf)
        .context("the profile dir has no parent")?;
    let path = target.join("image/sluice.oci.tar");
    if !path.is_file() {
        bail!(
            "no image at {}: build it with `cargo xtask image` (`cargo xtask test` does) or \
             point SLUICE_IMAGE at it",
            path.display()
        );
    }
    Ok(path)
}

/// One volume mount of the container, with its volume's `hostPath`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    pub mount_path: String,
    pub read_only: bool,
    /// `mountPropagation`.
    pub propagation: Option<String>,
}

/// The `sluice` container of deploy/daemonset.yaml.
#[derive(Clone, Debug)]
pub struct DaemonSetContainer {
    pub image: String,
    pub args: Vec<String>,
    /// Literal `value`s.
    pub env: BTreeMap<String, String>,
    /// `valueFrom.fieldRef.fieldPath` by variable.
    pub env_fields: BTreeMap<String, String>,
    pub host_network: bool,
    pub security: SecurityContext,
    pub mounts: Vec<Mount>,
    /// `resources.limits.memory`, as written (`256Mi`).
    pub memory_limit: Option<String>,
    /// The readiness probe's `httpGet` path and port.
    pub readiness: (String, u16),
}

/// The container's `securityContext`.
#[derive(Clone, Debug)]
pub struct SecurityContext {
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub read_only_root_filesystem: bool,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
}

/// What the node gives the container: where each `hostPath` is on this harness node, and
/// the values of the `fieldRef`s and of the variables the manifest says to edit.
pub struct NodeContext<'a> {
    pub netns: &'a Path,
    pub node_name: &'a str,
    pub host_paths: BTreeMap<String, PathBuf>,
    /// Replaces the manifest's literal values (the API server address it says to edit).
    pub env_overrides: BTreeMap<String, String>,
    /// Mounted at [`SERVICE_ACCOUNT_DIR`], as the kubelet does for every Pod.
    pub service_account: &'a Path,
}

impl DaemonSetContainer {
    /// The container named `sluice` of the `DaemonSet` in `path`.
    pub fn read(path: &Path) -> Result<DaemonSetContainer> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let daemonset: Value =
            yaml_serde::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .and_then(|containers| containers.iter().find(|c| c["name"] == "sluice"))
            .context("no container named sluice")?;
        let (env, env_fields) = read_env(container)?;
        let probe = &container["readinessProbe"]["httpGet"];
        Ok(DaemonSetContainer {
            image: container["image"].as_str().context("no image")?.to_owned(),
            args: strings(&container["args"]),
            env,
            env_fields,
            host_network: pod["hostNetwork"].as_bool().unwrap_or(false),
            security: read_security(&container["securityContext"])?,
            mounts: read_mounts(pod, container)?,
            memory_limit: container["resources"]["limits"]["memory"]
                .as_str()
                .map(str::to_owned),
            readiness: (
                probe["path"]
                    .as_str()
                    .context("no readiness path")?
                    .to_owned(),
                probe["port"]
                    .as_u64()
                    .and_then(|port| u16::try_from(port).ok())
                    .context("no readiness port")?,
            ),
        })
    }

    /// `podman run` arguments after `run`: the container as the kubelet would create it on
    /// `node`, detached, named `name`.
    pub fn podman_run_args(&self, name: &str, node: &NodeContext) -> Result<Vec<String>> {
        if !self.host_network {
            bail!("the daemon set is not hostNetwork: the test gives it the node's namespace");
        }
        let mut args: Vec<String> = vec![
            "--detach".into(),
            format!("--name={name}"),
            "--pull=never".into(),
            // crun refuses this machine's hybrid cgroup layout.
            "--runtime=runc".into(),
            // podman's defaults are above this machine's hard limits, which runc cannot raise.
            "--ulimit=nofile=20000:20000".into(),
            "--ulimit=nproc=4096:4096".into(),
            format!("--network=ns:{}", node.netns.display()),
        ];
        let security = &self.security;
        if security.privileged {
            args.push("--privileged".into());
        }
        if !security.allow_privilege_escalation {
            args.push("--security-opt=no-new-privileges".into());
        }
        if security.read_only_root_filesystem {
            args.push("--read-only".into());
        }
        args.extend(
            security
                .cap_drop
                .iter()
                .map(|cap| format!("--cap-drop={cap}")),
        );
        args.extend(
            security
                .cap_add
                .iter()
                .map(|cap| format!("--cap-add={cap}")),
        );
        if let Some(limit) = &self.memory_limit {
            args.push(format!("--memory={}", podman_memory(limit)?));
        }
        for mount in &self.mounts {
            let host = node
                .host_paths
                .get(&mount.host_path)
                .with_context(|| format!("no node path for hostPath {}", mount.host_path))?;
            let mut options = Vec::new();
            if mount.read_only {
                options.push("ro");
            }
            match mount.propagation.as_deref() {
                None | Some("None") => {}
                Some("HostToContainer") => options.push("rslave"),
                Some("Bidirectional") => options.push("rshared"),
                Some(other) => bail!("mountPropagation {other}: not understood"),
            }
            let options = if options.is_empty() {
                String::new()
            } else {
                format!(":{}", options.join(","))
            };
            args.push(format!(
                "--volume={}:{}{options}",
                host.display(),
                mount.mount_path
            ));
        }
        args.push(format!(
            "--volume={}:{SERVICE_ACCOUNT_DIR}:ro",
            node.service_account.display()
        ));
        for (var, field) in &self.env_fields {
            match field.as_str() {
                "spec.nodeName" => args.push(format!("--env={var}={}", node.node_name)),
                other => bail!("env {var}: fieldRef {other} not understood"),
            }
        }
        for (var, value) in &self.env {
            let value = node.env_overrides.get(var).unwrap_or(value);
            args.push(format!("--env={var}={value}"));
        }
        args.push(self.image.clone());
        args.extend(self.args.iter().cloned());
        Ok(args)
    }
}

/// The strings of a YAML list (none when it is missing).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The literal `value`s, and the `fieldRef` paths, of the container's `env`.
fn read_env(container: &Value) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let mut env = BTreeMap::new();
    let mut env_fields = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"]
            .as_str()
            .context("env without a name")?
            .to_owned();
        if let Some(value) = var["value"].as_str() {
            env.insert(name, value.to_owned());
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            env_fields.insert(name, field.to_owned());
        } else {
            bail!("env {name}: only value and valueFrom.fieldRef are understood");
        }
    }
    Ok((env, env_fields))
}

/// The `securityContext` fields podman flags stand for; any other is an error.
const KNOWN_SECURITY: [&str; 4] = [
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
];

fn read_security(security: &Value) -> Result<SecurityContext> {
    for key in security.as_object().into_iter().flatten().map(|(k, _)| k) {
        if !KNOWN_SECURITY.contains(&key.as_str()) {
            bail!("securityContext.{key}: not turned into a podman flag yet");
        }
    }
    Ok(SecurityContext {
        privileged: security["privileged"].as_bool().unwrap_or(false),
        allow_privilege_escalation: security["allowPrivilegeEscalation"]
            .as_bool()
            .unwrap_or(true),
        read_only_root_filesystem: security["readOnlyRootFilesystem"]
            .as_bool()
            .unwrap_or(false),
        cap_drop: strings(&security["capabilities"]["drop"]),
        cap_add: strings(&security["capabilities"]["add"]),
    })
}

/// The container's `volumeMounts`, each with its (`hostPath`) volume's path.
fn read_mounts(pod: &Value, container: &Value) -> Result<Vec<Mount>> {
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|volume| {
            let name = volume["name"].as_str().unwrap_or_default();
            let host = volume["hostPath"]["path"].as_str();
            host.map(|host| (name, host))
                .with_context(|| format!("volume {name}: only hostPath volumes are understood"))
        })
        .collect::<Result<_>>()?;
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mount| {
            let name = mount["name"].as_str().unwrap_or_default();
            let host_path = volumes
                .get(name)
                .with_context(|| format!("volumeMount {name}: no such volume"))?;
            Ok(Mount {
                host_path: (*host_path).to_owned(),
                mount_path: mount["mountPath"]
                    .as_str()
                    .with_context(|| format!("volumeMount {name}: no mountPath"))?
                    .to_owned(),
                read_only: mount["readOnly"].as_bool().unwrap_or(false),
                propagation: mount["mountPropagation"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

/// `256Mi` (Kubernetes quantity) as podman's `256m`; only binary suffixes.
fn podman_memory(limit: &str) -> Result<String> {
    for (suffix, unit) in [("Ki", "k"), ("Mi", "m"), ("Gi", "g")] {
        if let Some(number) = limit.strip_suffix(suffix) {
            return Ok(format!("{number}{unit}"));
        }
    }
    bail!("memory limit {limit}: only Ki, Mi and Gi are understood")
}

/// podman with a storage of its own, removed (containers first) on drop.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    pub fn new() -> Result<Podman> {
        let dir = TempDir::new(&format!("{}-podman", crate::unique::next_prefix()))?;
        Ok(Podman { dir })
    }

    fn command(&self) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new("podman");
        command
            .arg(format!("--root={}", dir.join("root").display()))
            .arg(format!("--runroot={}", dir.join("run").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .args([
                "--storage-driver=vfs",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
            ]);
        command
    }

    /// Runs `podman ARGS`; an error with its stderr unless it succeeded.
    pub fn run(&self, args: &[&str]) -> Result<Finished> {
        let mut command = self.command();
        command.args(args);
        let what = format!("podman {}", args.join(" "));
        let finished = process::run(&what, command, PODMAN_TIMEOUT)
            .with_context(|| format!("{what} (is podman installed? `cargo xtask setup`)"))?;
        if !finished.status.success() {
            bail!(
                "{what} failed ({}): {}",
                finished.status,
                finished.stderr.trim()
            );
        }
        Ok(finished)
    }

    /// Loads an OCI archive; returns the image reference it carries.
    pub fn load(&self, archive: &Path) -> Result<String> {
        let archive = archive.to_string_lossy();
        let out = self.run(&["load", "--input", &archive])?;
        out.stdout
            .lines()
            .find_map(|line| line.strip_prefix("Loaded image: "))
            .map(|reference| reference.trim().to_owned())
            .with_context(|| format!("podman load printed no image name: {}", out.stdout))
    }

    /// The container's output so far (stdout and stderr).
    pub fn logs(&self, name: &str) -> String {
        match self.run(&["logs", name]) {
            Ok(out) => format!("{}{}", out.stdout, out.stderr),
            Err(e) => format!("(no logs: {e:#})"),
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Err(e) = self.run(&["rm", "--force", "--all", "--time=0"]) {
            eprintln!("warning: removing the test's containers: {e:#}");
        }
    }
}
