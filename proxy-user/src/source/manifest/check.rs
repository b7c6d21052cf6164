//! `validate_dir`: every problem of a manifests directory, for `sluice validate DIR`.

use std::path::Path;

use super::{ManifestOptions, error::ManifestError, store::ManifestStore};

/// Every problem of every file in `dir`, including cross-object ones (an object defined
/// twice, a cluster IP or nodePort claimed by two Services, ports that get no endpoints).
/// Sorted by file and document. Allocation is simulated in memory: no state is written.
/// `sluice validate` fails when any of them `is_error()`.
pub fn validate_dir(dir: &Path, options: &ManifestOptions) -> Vec<ManifestError> {
    let mut store = ManifestStore::new(options.clone());
    let reports = match store.load_dir(dir) {
        Ok(reports) => reports,
        Err(error) => return vec![*error],
    };
    let mut problems: Vec<ManifestError> = reports
        .into_iter()
        .flat_map(|report| report.problems)
        .collect();
    if store.files().next().is_none() {
        problems.push(
            ManifestError::file(dir, "has no .yaml, .yml or .json file: nothing to serve")
                .with_severity(super::error::Severity::Warning),
        );
    }
    let mut allocator = options.in_memory_allocator();
    problems.extend(store.desired_state(&mut allocator).problems);
    problems.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
    problems.dedup();
    problems
}
