//! The map fill levels for /metrics, counted off the sync loop.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::Notify;

use crate::{datapath::Maps, node::metrics::Metrics};

/// How often the map fill levels are counted for /metrics.
const MAP_FILL_INTERVAL: Duration = Duration::from_secs(10);

/// Counts every map's entries after each sync and now and then, off the sync loop (a full
/// conntrack walk takes a while).
pub async fn run(pin_dir: PathBuf, metrics: Metrics, count_now: Arc<Notify>) {
    let mut interval = tokio::time::interval(MAP_FILL_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = count_now.notified() => {}
        }
        let dir = pin_dir.clone();
        let fill = tokio::task::spawn_blocking(move || Maps::open_pinned(&dir)?.fill(&dir)).await;
        match fill {
            Ok(Ok(fill)) => {
                for map in fill {
                    metrics.set_map_fill(map.map, map.entries, map.max_entries);
                }
            }
            Ok(Err(err)) => tracing::warn!("counting map entries: {err:#}"),
            Err(err) => tracing::warn!("counting map entries: {err}"),
        }
    }
}
