//! `sluice stats`: traffic per frontend and backend, drops by reason, packets passed
//! untranslated by reason, verdicts per hook.

use std::path::Path;

use anyhow::Result;

use super::{Output, print_table};
use crate::datapath::{Maps, view::stats};

pub fn run(pin_dir: &Path, output: Output) -> Result<()> {
    let stats = stats::read(&Maps::open_pinned(pin_dir)?)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    let traffic = |t: &stats::TrafficRow| {
        vec![
            t.connections.to_string(),
            t.packets_in.to_string(),
            t.bytes_in.to_string(),
            t.packets_out.to_string(),
            t.bytes_out.to_string(),
        ]
    };
    let header = ["CONNS", "PKTS IN", "BYTES IN", "PKTS OUT", "BYTES OUT"];

    let rows: Vec<Vec<String>> = stats
        .services
        .iter()
        .map(|s| {
            let mut row = vec![s.name.clone(), format!("{} {}", s.frontend, s.protocol)];
            row.extend(traffic(&s.traffic));
            row
        })
        .collect();
    print_table(&[&["SERVICE", "FRONTEND"][..], &header].concat(), &rows);
    println!();
    let rows: Vec<Vec<String>> = stats
        .backends
        .iter()
        .map(|b| {
            let mut row = vec![format!("{}:{}", b.addr, b.port)];
            row.extend(traffic(&b.traffic));
            row
        })
        .collect();
    print_table(&[&["BACKEND"][..], &header].concat(), &rows);
    println!();
    let rows: Vec<Vec<String>> = stats
        .drops
        .iter()
        .map(|d| vec![d.reason.to_owned(), d.count.to_string()])
        .collect();
    print_table(&["DROP REASON", "COUNT"], &rows);
    println!();
    let rows: Vec<Vec<String>> = stats
        .passes
        .iter()
        .map(|p| vec![p.reason.to_owned(), p.count.to_string()])
        .collect();
    print_table(&["PASSED (REASON)", "COUNT"], &rows);
    println!();
    let rows: Vec<Vec<String>> = stats
        .hooks
        .iter()
        .map(|h| vec![h.hook.to_owned(), h.verdict.to_owned(), h.count.to_string()])
        .collect();
    print_table(&["HOOK", "VERDICT", "COUNT"], &rows);
    Ok(())
}
