//! Standalone mode: follow a manifests directory and publish the desired state on every change.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::log_problems;
use crate::{
    model::DesiredReceiver,
    source::manifest::{Allocator, ManifestOptions, ManifestStore, is_manifest_file},
};

/// Changes arriving within this window are applied together (an editor's save is several
/// events; so is `kubectl`-style rewriting of several files).
const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct ManifestSourceOptions {
    pub dir: PathBuf,
    /// Holds `allocations.json`: cluster IPs and NodePorts handed out, stable across restarts.
    pub state_dir: PathBuf,
    /// `--service-cidr` and `--service-node-port-range`.
    pub manifest: ManifestOptions,
}

/// Loads the directory once (so the first sync sees every file), then follows it in the
/// background. Must be called inside a Tokio runtime.
pub fn spawn(opts: ManifestSourceOptions) -> Result<DesiredReceiver> {
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("create the state directory {}", opts.state_dir.display()))?;
    let mut allocator = Allocator::open(
        opts.state_dir.join("allocations.json"),
        opts.manifest.service_cidrs.clone(),
    )
    .map_err(|err| anyhow!("{err}"))?
    .with_node_port_range(opts.manifest.node_port_range);
    let mut store = ManifestStore::new(opts.manifest);
    let reports = store.load_dir(&opts.dir).map_err(|err| anyhow!("{err}"))?;
    for report in &reports {
        log_problems(&report.problems);
    }
    let resolution = store.desired_state(&mut allocator);
    log_problems(&resolution.problems);
    info!(
        dir = %opts.dir.display(),
        files = reports.len(),
        services = resolution.state.services.len(),
        "manifests loaded"
    );
    let (sender, receiver) = watch::channel(Some(Arc::new(resolution.state)));

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        // The receiver lives as long as the daemon; a send error only means it is stopping.
        let _ = events_tx.send(event);
    })
    .context("start watching the manifests directory")?;
    watcher
        .watch(&opts.dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watch {}", opts.dir.display()))?;

    let dir = opts.dir;
    tokio::spawn(async move {
        let _watcher = watcher;
        while let Some(first) = events.recv().await {
            let mut batch = vec![first];
            while let Ok(Some(event)) = tokio::time::timeout(DEBOUNCE, events.recv()).await {
                batch.push(event);
            }
            let mut changed = BTreeSet::new();
            let mut rescan = false;
            for event in batch {
                match event {
                    // Reading a file is an event too: only changes count, or reloads would loop.
                    Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
                    Ok(event) => {
                        rescan |= event.need_rescan();
                        changed.extend(event.paths.into_iter().filter(|p| is_manifest_file(p)));
                    }
                    Err(err) => {
                        warn!(%err, "watching the manifests directory; rescanning it");
                        rescan = true;
                    }
                }
            }
            if rescan {
                match store.load_dir(&dir) {
                    Ok(reports) => reports.iter().for_each(|r| log_problems(&r.problems)),
                    Err(err) => warn!("{err}"),
                }
            } else if changed.is_empty() {
                continue;
            } else {
                for path in &changed {
                    let report = store.reload_file(path);
                    log_problems(&report.problems);
                    info!(file = %path.display(), objects = report.objects, "manifest reloaded");
                }
            }
            let resolution = store.desired_state(&mut allocator);
            log_problems(&resolution.problems);
            let mut state = resolution.state;
            sender.send_if_modified(|current| {
                // Unchanged services stay shared, so the daemon only looks at changed ones.
                if let Some(current) = current.as_deref()
                    && !state.share_unchanged(current)
                {
                    return false;
                }
                *current = Some(Arc::new(state));
                true
            });
        }
    });
    Ok(receiver)
}
