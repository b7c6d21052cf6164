//! `ManifestStore`: the last good objects of every manifest file, reloaded one file at a
//! time as the directory changes.
//!
//! The guarantee is per object: a broken file never disturbs other files, and inside a
//! broken file the valid documents take effect while every object whose document is broken
//! keeps its last good version. While a file has errors nothing of it is removed: an object
//! that disappeared from it goes only once the file is clean again (a syntax error hides the
//! documents after it, so a missing object may just be unreadable).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    ManifestOptions,
    alloc::Allocator,
    catalog::Catalog,
    error::{ManifestError, ObjectRef},
    parse::{ParsedObject, parse_file},
    resolve::{Resolution, resolve},
};

/// Whether the directory watcher should care about `path`: a `.yaml`, `.yml` or `.json`
/// file whose name does not start with a dot (editor swap files, ConfigMap `..data`).
pub fn is_manifest_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| {
                ["yaml", "yml", "json"]
                    .iter()
                    .any(|known| ext.eq_ignore_ascii_case(known))
            })
}

/// The result of (re)loading one file.
#[derive(Clone, Debug, Default)]
pub struct FileReport {
    pub file: PathBuf,
    /// Everything found in the file this time (errors, warnings, notes).
    pub problems: Vec<ManifestError>,
    /// How many objects the store now holds from this file.
    pub objects: usize,
    /// Objects kept at their last good version because the file has errors.
    pub kept: Vec<ObjectRef>,
    /// The file is gone, and so are its objects.
    pub removed: bool,
}

impl FileReport {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(ManifestError::is_error)
    }
}

#[derive(Debug, Default)]
struct FileEntry {
    /// The path as last given, for messages.
    path: PathBuf,
    objects: Vec<ParsedObject>,
    problems: Vec<ManifestError>,
}

#[derive(Debug, Default)]
pub struct ManifestStore {
    options: ManifestOptions,
    /// By absolute path, so that `m/a.yaml` and `/srv/m/a.yaml` are one file whichever way
    /// the watcher reports it.
    files: BTreeMap<PathBuf, FileEntry>,
}

/// The key of a file: its absolute path, symlinks not resolved (ConfigMap volumes link every
/// file through `..data`, which changes on every update).
fn file_key(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl ManifestStore {
    pub fn new(options: ManifestOptions) -> Self {
        ManifestStore {
            options,
            files: BTreeMap::new(),
        }
    }

    pub fn options(&self) -> &ManifestOptions {
        &self.options
    }

    /// Loads every manifest file of `dir` (not recursive, sorted by name), and forgets files
    /// under `dir` that are gone. Use it at start and to rescan after a watcher overflow. Err
    /// only when the directory itself cannot be listed.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<FileReport>, Box<ManifestError>> {
        let paths = list_dir(dir)?;
        let wanted: BTreeSet<PathBuf> = paths.iter().map(|path| file_key(path)).collect();
        let dir_key = file_key(dir);
        let gone: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(key, _)| key.parent() == Some(&dir_key) && !wanted.contains(*key))
            .map(|(_, entry)| entry.path.clone())
            .collect();
        let mut reports: Vec<FileReport> = gone.iter().map(|path| self.remove_file(path)).collect();
        reports.extend(paths.iter().map(|path| self.reload_file(path)));
        Ok(reports)
    }

    /// Parses `path` again. Its valid objects replace their previous versions; when it has
    /// errors, the objects of its broken documents keep their last good versions (see the
    /// module doc). A file that no longer exists is removed.
    pub fn reload_file(&mut self, path: &Path) -> FileReport {
        match fs::read(path) {
            Ok(bytes) => self.load_bytes(path, bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.remove_file(path),
            Err(e) => {
                let error = ManifestError::file(path, format!("cannot read: {e}"));
                self.keep_all(path, vec![error])
            }
        }
    }

    /// [`ManifestStore::reload_file`] once the file is read: `bytes` are `path`'s content (its
    /// extension picks YAML or JSON). Also the fuzz targets' way in, with no file.
    pub fn load_bytes(&mut self, path: &Path, bytes: Vec<u8>) -> FileReport {
        let Ok(text) = String::from_utf8(bytes) else {
            let error =
                ManifestError::file(path, "is not UTF-8 text: save it as UTF-8 YAML or JSON");
            return self.keep_all(path, vec![error]);
        };
        let parsed = parse_file(path, &text, &self.options);
        let has_errors = parsed.has_errors();
        let entry = self.entry(path);
        let mut objects = parsed.objects;
        let mut kept = Vec::new();
        if has_errors {
            let fresh: BTreeSet<_> = objects.iter().map(|object| object.key.clone()).collect();
            for old in entry.objects.drain(..) {
                if !fresh.contains(&old.key) {
                    kept.push(old.key.object_ref());
                    objects.push(old);
                }
            }
        }
        entry.objects = objects;
        entry.problems = parsed.problems.clone();
        FileReport {
            file: path.to_path_buf(),
            problems: parsed.problems,
            objects: entry.objects.len(),
            kept,
            removed: false,
        }
    }

    /// Forgets `path` and its objects.
    pub fn remove_file(&mut self, path: &Path) -> FileReport {
        let removed = self.files.remove(&file_key(path)).is_some();
        FileReport {
            file: path.to_path_buf(),
            removed,
            ..FileReport::default()
        }
    }

    /// An unreadable file: keep everything it had.
    fn keep_all(&mut self, path: &Path, problems: Vec<ManifestError>) -> FileReport {
        let entry = self.entry(path);
        entry.problems.clone_from(&problems);
        FileReport {
            file: path.to_path_buf(),
            problems,
            objects: entry.objects.len(),
            kept: entry.objects.iter().map(|o| o.key.object_ref()).collect(),
            removed: false,
        }
    }

    fn entry(&mut self, path: &Path) -> &mut FileEntry {
        let entry = self.files.entry(file_key(path)).or_default();
        entry.path = path.to_path_buf();
        entry
    }

    /// The files the store holds, in order, as they were last given.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.values().map(|entry| entry.path.as_path())
    }

    /// The problems of the last load of every file.
    pub fn file_problems(&self) -> Vec<ManifestError> {
        self.files
            .values()
            .flat_map(|entry| entry.problems.iter().cloned())
            .collect()
    }

    /// The desired state of everything the store holds. Allocates missing cluster IPs and
    /// nodePorts (and saves the allocator's state file when it changed). The problems are
    /// the cross-object ones; the per-file ones are in the `FileReport`s.
    pub fn desired_state(&self, allocator: &mut Allocator) -> Resolution {
        let catalog = Catalog::build(
            self.files
                .values()
                .map(|entry| (entry.path.as_path(), entry.objects.as_slice())),
        );
        resolve(&catalog, self.options.node_name.as_deref(), allocator)
    }
}

/// The manifest files of `dir`, sorted.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, Box<ManifestError>> {
    let cannot = |e: io::Error| {
        Box::new(ManifestError::file(
            dir,
            format!("cannot list the manifests directory: {e}: check --manifests"),
        ))
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        // Follows symlinks: ConfigMap volumes link every file through `..data`.
        if is_manifest_file(&path) && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}
