//! A temporary directory removed (recursively) on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<name>`; fails if it already exists (names are meant to be unique).
    pub fn new(name: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating temp dir {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing temp dir {}: {e}", self.path.display());
        }
    }
}
