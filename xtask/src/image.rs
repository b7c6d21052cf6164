//! `cargo xtask image`: sluice's OCI image, assembled from the release binary and the shared
//! libraries it links, with no base image (nothing can be pulled), as an OCI archive that
//! `podman load` (or `skopeo copy oci-archive:...`) takes.
//!
//! One layer, written reproducibly (entries sorted, owner root, mtime 0), so the same binary
//! gives the same image digest. The OCI JSON is a few fixed fields, written with `serde_json`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::cmd::output;

/// Where the image is published; deploy/daemonset.yaml names `REPOSITORY:VERSION`.
pub const REPOSITORY: &str = "ghcr.io/sluice-proxy/sluice";
/// Where `cargo xtask image` writes the archive, in the target directory.
pub const DEFAULT_PATH: &str = "image/sluice.oci.tar";
/// The variable that gives the container test the archive.
pub const ARCHIVE_ENV: &str = "SLUICE_IMAGE";
/// The binary's path in the image: its entrypoint (a Pod's `args` follow it).
const ENTRYPOINT: &str = "/usr/local/bin/sluice";

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// The image reference of this version.
pub fn reference() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Writes the OCI archive of the image holding `binary` to `out`.
pub fn build(binary: &Path, out: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    files.insert(PathBuf::from(ENTRYPOINT), binary.to_path_buf());
    for library in linked_libraries(binary)? {
        files.insert(library.clone(), library);
    }
    let layer = layer_tar(&files)?;
    let layer_digest = digest(&layer);

    let config = to_bytes(&json!({
        "architecture": architecture()?,
        "os": "linux",
        "config": {
            "Entrypoint": [ENTRYPOINT],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": "sluice",
                "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
            },
        },
        // Uncompressed: the layer's digest is its diff ID.
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "cargo xtask image"}],
    }));
    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
    }));
    let mut manifest_descriptor = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    manifest_descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": reference()});
    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_descriptor],
    }));

    let mut archive = Archive::new();
    archive.add_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    archive.add_file("index.json", &index, 0o644)?;
    for blob in [&layer, &config, &manifest] {
        let name = format!("blobs/sha256/{}", hex(&Sha256::digest(blob)));
        archive.add_file(&name, blob, 0o644)?;
    }
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    fs::write(out, archive.finish()?).with_context(|| format!("write {}", out.display()))?;
    println!(
        "image {} ({} MiB, layer {layer_digest}): {}",
        reference(),
        layer.len() >> 20,
        out.display()
    );
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader among them, as `ldd` resolves
/// them on this machine (each at the path the loader looks for it).
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))
        .context("list the binary's libraries (ldd, from libc-bin)")?;
    let mut libraries = Vec::new();
    for line in listing.lines().map(str::trim) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
        // (0x...)`, or the kernel's `linux-vdso.so.1 (0x...)`, which is no file.
        let path = match line.split_once("=>") {
            Some((name, resolved)) => {
                let resolved = resolved.trim();
                if resolved.starts_with("not found") {
                    bail!(
                        "{} needs {}, which is not installed",
                        binary.display(),
                        name.trim()
                    );
                }
                resolved.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// The layer: every file at its image path, with the directories above it.
fn layer_tar(files: &BTreeMap<PathBuf, PathBuf>) -> Result<Vec<u8>> {
    let mut archive = Archive::new();
    let mut directories = BTreeSet::new();
    for image_path in files.keys() {
        let mut parent = image_path.parent();
        while let Some(dir) = parent.filter(|dir| *dir != Path::new("/")) {
            directories.insert(dir.to_path_buf());
            parent = dir.parent();
        }
    }
    for dir in &directories {
        archive.add_dir(&relative(dir))?;
    }
    for (image_path, source) in files {
        // Follows symlinks: the loader opens the path, whatever it links to on this host.
        let content = fs::read(source).with_context(|| format!("read {}", source.display()))?;
        archive.add_file(&relative(image_path), &content, 0o755)?;
    }
    archive.finish()
}

fn relative(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

/// A tar archive built in memory, every entry owned by root with mtime 0.
struct Archive {
    builder: tar::Builder<Vec<u8>>,
}

impl Archive {
    fn new() -> Self {
        Archive {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn add_file(&mut self, path: &str, content: &[u8], mode: u32) -> Result<()> {
        let mut header = header(tar::EntryType::Regular, mode);
        header.set_size(content.len() as u64);
        self.builder
            .append_data(&mut header, path, content)
            .with_context(|| format!("add {path} to the archive"))
    }

    fn add_dir(&mut self, path: &str) -> Result<()> {
        let mut header = header(tar::EntryType::Directory, 0o755);
        header.set_size(0);
        self.builder
            .append_data(&mut header, format!("{path}/"), std::io::empty())
            .with_context(|| format!("add {path}/ to the archive"))
    }

    fn finish(self) -> Result<Vec<u8>> {
        self.builder.into_inner().context("finish the archive")
    }
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(blob), "size": blob.len()})
}

fn digest(blob: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(blob)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialize")
}

/// The OCI name of this machine's architecture (the binary's).
fn architecture() -> Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name for {other}"),
    })
}
