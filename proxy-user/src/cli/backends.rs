//! `sluice backends`: every backend in the maps and the frontends that use it.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::Result;
use serde::Serialize;

use super::{Output, print_rows};
use crate::datapath::{
    Maps,
    view::{self, services},
};

#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub local: bool,
    pub terminating: bool,
    /// `name (frontend)` of every frontend whose slots hold this backend.
    pub used_by: Vec<String>,
}

pub fn read(maps: &Maps) -> Result<Vec<BackendRow>> {
    let mut rows: BTreeMap<u32, BackendRow> = BTreeMap::new();
    for backend in view::all_backends(maps)? {
        let (id, flags) = (backend.id, backend.flags);
        rows.insert(
            id,
            BackendRow {
                id,
                addr: backend.addr,
                port: backend.port,
                local: flags & proxy_common::BACKEND_F_LOCAL != 0,
                terminating: flags & proxy_common::BACKEND_F_TERMINATING != 0,
                used_by: Vec::new(),
            },
        );
    }
    for service in services::read(maps)? {
        for backend in &service.backends {
            if let Some(row) = rows.get_mut(&backend.id) {
                row.used_by.push(format!(
                    "{} ({} {})",
                    service.name, service.frontend, service.protocol
                ));
            }
        }
    }
    Ok(rows.into_values().collect())
}

pub fn run(pin_dir: &Path, output: Output) -> Result<()> {
    let rows = read(&Maps::open_pinned(pin_dir)?)?;
    print_rows(
        &rows,
        output,
        &["ID", "BACKEND", "FLAGS", "USED BY"],
        |row| {
            let mut flags = Vec::new();
            if row.local {
                flags.push("local");
            }
            if row.terminating {
                flags.push("terminating");
            }
            vec![
                row.id.to_string(),
                view::socket(row.addr, row.port),
                flags.join(","),
                row.used_by.join(", "),
            ]
        },
    )
}
