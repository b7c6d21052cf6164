//! Minimal HTTP/1.1 requests from inside a namespace, and reading Prometheus text samples.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Netns;

/// `GET path` from inside `netns` to `addr` (e.g. `127.0.0.1:10249`): status line and body;
/// panics if there is no HTTP answer.
pub fn get(netns: &Netns, addr: &str, path: &str) -> (String, String) {
    try_get(netns, addr, path).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Like [`get`], returning the failure.
pub fn try_get(netns: &Netns, addr: &str, path: &str) -> Result<(String, String)> {
    request(netns, addr, "GET", path)
}

/// `METHOD path` (without a body) from inside `netns` to `addr`: status line and body.
pub fn request(netns: &Netns, addr: &str, method: &str, path: &str) -> Result<(String, String)> {
    let response = netns
        .run_in(|| {
            let mut stream = TcpStream::connect(addr)?;
            write!(
                stream,
                "{method} {path} HTTP/1.1\r\nHost: sluice\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            std::io::Result::Ok(response)
        })
        .with_context(|| format!("enter {}", netns.name()))?
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("{method} http://{addr}{path}: no HTTP header in {response:?}");
    };
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// The value of the sample `series` (name with its labels exactly as exported, e.g.
/// `sluice_map_entries{map="SVC_V1"}`) in Prometheus text, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

/// The daemon's `/metrics` at its default address (`127.0.0.1:10249` in the node's
/// namespace); panics unless it answers 200.
pub fn metrics(netns: &Netns) -> String {
    let (status, body) = get(netns, "127.0.0.1:10249", "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "GET /metrics: {status}");
    body
}

/// kube-proxy's `ip_family` label (1.33+) of the IPv4 series: every test node serves IPv4.
pub const IPV4: &str = r#"{ip_family="IPv4"}"#;

/// `_count` and `_sum` of the IPv4 series of kube-proxy's histogram `name` in Prometheus text;
/// panics if it is missing.
pub fn histogram(text: &str, name: &str) -> (f64, f64) {
    let count = sample(text, &format!("{name}_count{IPV4}"));
    let sum = sample(text, &format!("{name}_sum{IPV4}"));
    match (count, sum) {
        (Some(count), Some(sum)) => (count, sum),
        _ => panic!("no histogram {name} in:\n{text}"),
    }
}

/// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: it moves once a sync is complete,
/// metrics included.
pub fn last_sync(text: &str) -> f64 {
    sample(
        text,
        &format!("kubeproxy_sync_proxy_rules_last_timestamp_seconds{IPV4}"),
    )
    .unwrap_or_else(|| panic!("no last sync timestamp in:\n{text}"))
}
