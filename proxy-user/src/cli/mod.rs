//! The read-only commands: they work from the pinned maps alone, daemon or not, like bpftool.

pub mod affinity;
pub mod args;
pub mod backends;
pub mod conntrack;
pub mod log_level;
pub mod services;
pub mod stats;
pub mod validate;

/// How a read command prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document for scripts.
    Json,
}

/// Prints `rows` as one JSON document, or as a table: `header`, then `cells(row)` per row.
pub fn print_rows<T: serde::Serialize>(
    rows: &[T],
    output: Output,
    header: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => {
            let table: Vec<Vec<String>> = rows.iter().map(cells).collect();
            print_table(header, &table);
        }
    }
    Ok(())
}

/// Prints rows as aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        // The last column's padding goes too.
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
