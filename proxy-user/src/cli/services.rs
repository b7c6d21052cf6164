//! `sluice services`: every service with its frontends, policies and backends, and the
//! services that are listed but not programmed, read from the pins.

use std::path::Path;

use anyhow::Result;

use super::{Output, print_rows};
use crate::datapath::{
    Maps,
    view::{
        services::{BackendRow, ServiceRow, read},
        socket,
    },
};

fn backends_cell(row: &ServiceRow, backends: &[BackendRow]) -> String {
    if backends.is_empty() {
        return if row.no_local_endpoint {
            "(no local endpoint: dropped)".to_owned()
        } else {
            "(none: refused)".to_owned()
        };
    }
    backends
        .iter()
        .map(|b| {
            let mut s = socket(b.addr, b.port);
            if b.local {
                s.push_str(" local");
            }
            if b.terminating {
                s.push_str(" terminating");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(pin_dir: &Path, output: Output) -> Result<()> {
    let maps = Maps::open_pinned(pin_dir)?;
    let rows = read(&maps)?;
    print_rows(
        &rows,
        output,
        &[
            "SERVICE",
            "TYPE",
            "FRONTEND-KIND",
            "FRONTEND",
            "PROTO",
            "POLICY",
            "BACKENDS",
        ],
        |row| {
            if !row.programmed {
                let reason = row.reason.as_deref().unwrap_or("");
                return vec![
                    row.name.clone(),
                    row.service_type.to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("not programmed: {reason}"),
                ];
            }
            let mut policy = vec![
                format!("ext={}", row.external_traffic_policy),
                format!("int={}", row.internal_traffic_policy),
            ];
            if let Some(port) = row.health_check_node_port {
                policy.push(format!("hc={port}"));
            }
            if !row.source_ranges.is_empty() {
                let ranges: Vec<String> =
                    row.source_ranges.iter().map(ToString::to_string).collect();
                policy.push(format!("from={}", ranges.join(",")));
            }
            let mut backends = backends_cell(row, &row.backends);
            if let Some(internal) = &row.internal_backends {
                backends = format!(
                    "off-node: {backends}; in-cluster: {}",
                    backends_cell(row, internal)
                );
            }
            vec![
                row.name.clone(),
                row.service_type.to_owned(),
                row.kind.to_owned(),
                row.frontend.clone(),
                row.protocol.to_owned(),
                policy.join(" "),
                backends,
            ]
        },
    )
}
