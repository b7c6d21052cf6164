//! Where the desired state comes from. Each source publishes complete states on a watch
//! channel; the daemon does not care which one it runs with.

pub mod kube;
pub mod manifest;
pub mod manifests;

use tracing::{error, info, warn};

use crate::source::manifest::{ManifestError, Severity};

/// Logs manifest problems at their severity, so a bad file is visible in the daemon's log.
pub fn log_problems(problems: &[ManifestError]) {
    for problem in problems {
        match problem.severity {
            Severity::Error => error!("{problem}"),
            Severity::Warning => warn!("{problem}"),
            Severity::Note => info!("{problem}"),
        }
    }
}
