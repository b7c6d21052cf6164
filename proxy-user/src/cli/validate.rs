//! `sluice validate DIR`: every problem of every manifest, with file, document and field.

use std::path::Path;

use anyhow::{Result, bail};

use crate::source::manifest::{ManifestOptions, Severity, validate_dir};

pub fn run(dir: &Path, options: &ManifestOptions) -> Result<()> {
    let problems = validate_dir(dir, options);
    let mut errors = 0;
    for problem in &problems {
        let label = match problem.severity {
            Severity::Error => {
                errors += 1;
                "error"
            }
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        println!("{label}: {problem}");
    }
    if errors > 0 {
        bail!("{errors} error(s) in {}", dir.display());
    }
    println!(
        "{}: valid ({} warning(s) or note(s))",
        dir.display(),
        problems.len()
    );
    Ok(())
}
