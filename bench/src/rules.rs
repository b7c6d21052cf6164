//! kube-proxy-shaped rule sets for the same services the maps hold: iptables (KUBE-SERVICES ->
//! KUBE-SVC-* with `statistic --mode random` -> KUBE-SEP-* DNAT, the last endpoint taken
//! without a test) and nftables (a verdict map on address . protocol . port, `numgen random`
//! over the endpoint chains, `dnat`), as kube-proxy's iptables and nftables modes write them.

use std::fmt::Write as _;

use crate::{
    fixture::{cluster_frontend, pod_addr},
    stats::ToF64 as _,
};

const CHANGED_POD: &str = "198.18.64.1:9090";

fn endpoint_addr(service: usize, endpoints: usize, j: usize, changed: Option<usize>) -> String {
    if changed == Some(service) && j == endpoints - 1 {
        CHANGED_POD.to_owned()
    } else {
        pod_addr(service * endpoints + j).to_string()
    }
}

fn sep_name(service: usize, j: usize, changed: Option<usize>, endpoints: usize) -> String {
    let new = u8::from(changed == Some(service) && j == endpoints - 1);
    format!("KUBE-SEP-{service:07X}{new}{j:08X}")
}

/// Rules in the iptables set: per service one KUBE-SERVICES jump, one KUBE-SVC rule per
/// endpoint, two KUBE-SEP rules per endpoint.
pub fn iptables_rule_count(services: usize, endpoints: usize) -> usize {
    services * (1 + 3 * endpoints) + 4
}

pub fn svc_chain(i: usize) -> String {
    format!("KUBE-SVC-{i:016X}")
}

fn service_rules(out: &mut String, i: usize, endpoints: usize, changed: Option<usize>) {
    let svc = svc_chain(i);
    for j in 0..endpoints {
        let sep = sep_name(i, j, changed, endpoints);
        let addr = endpoint_addr(i, endpoints, j, changed);
        let remaining = endpoints - j;
        if remaining > 1 {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"bench/svc-{i} -> {addr}\" -m statistic \
                 --mode random --probability {:.10} -j {sep}",
                1.0 / remaining.to_f64()
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"bench/svc-{i} -> {addr}\" -j {sep}"
            );
        }
        let ip = addr.split(':').next().expect("ip:port");
        let _ = writeln!(out, "-A {sep} -s {ip}/32 -j KUBE-MARK-MASQ");
        let _ = writeln!(
            out,
            "-A {sep} -p tcp -m tcp -j DNAT --to-destination {addr}"
        );
    }
}

/// The whole nat table, as kube-proxy's full sync restores it; `changed` replaces the last
/// endpoint of that service.
pub fn iptables(services: usize, endpoints: usize, changed: Option<usize>) -> String {
    let mut out = String::with_capacity(services * endpoints * 200);
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    out.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    for i in 0..services {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(i));
        for j in 0..endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_name(i, j, changed, endpoints));
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    for i in 0..services {
        let frontend = cluster_frontend(i);
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc-{i} cluster IP\" \
             -m tcp --dport {} -j {}",
            frontend.ip(),
            frontend.port(),
            svc_chain(i)
        );
    }
    for i in 0..services {
        service_rules(&mut out, i, endpoints, changed);
    }
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's partial sync (1.28+): only the changed service's chains, `--noflush`.
pub fn iptables_change(services: usize, endpoints: usize, changed: usize) -> String {
    let _ = services;
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(changed));
    for j in 0..endpoints {
        let _ = writeln!(
            out,
            ":{} - [0:0]",
            sep_name(changed, j, Some(changed), endpoints)
        );
    }
    // The old endpoint's chain: declared (so flushed), then deleted.
    let old = sep_name(changed, endpoints - 1, None, endpoints);
    let _ = writeln!(out, ":{old} - [0:0]");
    service_rules(&mut out, changed, endpoints, Some(changed));
    let _ = writeln!(out, "-X {old}");
    out.push_str("COMMIT\n");
    out
}

fn nft_service_chain(out: &mut String, i: usize, endpoints: usize, changed: Option<usize>) {
    let arms: Vec<String> = (0..endpoints)
        .map(|j| format!("{j} : goto {}", nft_endpoint(i, j, changed, endpoints)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip kube-proxy service-{i} numgen random mod {endpoints} vmap {{ {} }}",
        arms.join(", ")
    );
}

fn nft_endpoint(i: usize, j: usize, changed: Option<usize>, endpoints: usize) -> String {
    let new = u8::from(changed == Some(i) && j == endpoints - 1);
    format!("endpoint-{i}-{j}-{new}")
}

fn nft_endpoint_chain(
    out: &mut String,
    i: usize,
    j: usize,
    endpoints: usize,
    changed: Option<usize>,
) {
    let chain = nft_endpoint(i, j, changed, endpoints);
    let addr = endpoint_addr(i, endpoints, j, changed);
    let ip = addr.split(':').next().expect("ip:port");
    let _ = writeln!(out, "add chain ip kube-proxy {chain}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} ip saddr {ip} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} meta l4proto tcp dnat to {addr}"
    );
}

/// kube-proxy's nftables mode: one table, a verdict map of service IPs, a chain per service
/// and per endpoint.
pub fn nft(services: usize, endpoints: usize) -> String {
    let mut out = String::with_capacity(services * endpoints * 250);
    out.push_str("add table ip kube-proxy\n");
    out.push_str(
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n",
    );
    out.push_str("add chain ip kube-proxy mark-for-masquerade\n");
    out.push_str("add rule ip kube-proxy mark-for-masquerade meta mark set meta mark or 0x4000\n");
    out.push_str("add chain ip kube-proxy services\n");
    out.push_str(
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n",
    );
    out.push_str(
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; policy accept ; }\n",
    );
    out.push_str("add rule ip kube-proxy nat-prerouting jump services\n");
    out.push_str(
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; policy accept ; }\n",
    );
    out.push_str("add rule ip kube-proxy nat-output jump services\n");
    for i in 0..services {
        for j in 0..endpoints {
            nft_endpoint_chain(&mut out, i, j, endpoints, None);
        }
        let _ = writeln!(out, "add chain ip kube-proxy service-{i}");
        nft_service_chain(&mut out, i, endpoints, None);
    }
    for chunk in (0..services).collect::<Vec<_>>().chunks(1000) {
        let elements: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let frontend = cluster_frontend(i);
                format!(
                    "{} . tcp . {} : goto service-{i}",
                    frontend.ip(),
                    frontend.port()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} }}",
            elements.join(", ")
        );
    }
    out
}

/// One service's last endpoint replaced, as kube-proxy's nftables mode syncs it.
pub fn nft_change(services: usize, endpoints: usize, changed: usize) -> String {
    let _ = services;
    let mut out = String::new();
    nft_endpoint_chain(&mut out, changed, endpoints - 1, endpoints, Some(changed));
    let _ = writeln!(out, "flush chain ip kube-proxy service-{changed}");
    nft_service_chain(&mut out, changed, endpoints, Some(changed));
    let _ = writeln!(
        out,
        "delete chain ip kube-proxy {}",
        nft_endpoint(changed, endpoints - 1, None, endpoints)
    );
    out
}

/// A NodePort for `backend` on `port`, as kube-proxy adds it: the last KUBE-SERVICES rule
/// sends local destinations to KUBE-NODEPORTS. Added to a full `iptables` set.
pub fn iptables_with_nodeport(
    services: usize,
    endpoints: usize,
    port: u16,
    backend: std::net::SocketAddrV4,
) -> String {
    let base = iptables(services, endpoints, None);
    let chains =
        ":KUBE-NODEPORTS - [0:0]\n:KUBE-EXT-NODEPORT - [0:0]\n:KUBE-SEP-NODEPORT - [0:0]\n";
    let rules = format!(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype \
         --dst-type LOCAL -j KUBE-NODEPORTS\n\
         -A KUBE-NODEPORTS -p tcp -m comment --comment \"bench/nodeport\" -m tcp --dport {port} \
         -j KUBE-EXT-NODEPORT\n\
         -A KUBE-EXT-NODEPORT -j KUBE-MARK-MASQ\n\
         -A KUBE-EXT-NODEPORT -j KUBE-SEP-NODEPORT\n\
         -A KUBE-SEP-NODEPORT -p tcp -m tcp -j DNAT --to-destination {backend}\n"
    );
    let with_chains = base.replacen("*nat\n", &format!("*nat\n{chains}"), 1);
    with_chains.replacen("COMMIT\n", &format!("{rules}COMMIT\n"), 1)
}

/// The nftables set plus a NodePort, as kube-proxy's nftables mode adds it.
pub fn nft_with_nodeport(
    services: usize,
    endpoints: usize,
    port: u16,
    backend: std::net::SocketAddrV4,
) -> String {
    let mut out = nft(services, endpoints);
    out.push_str(
        "add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; }\n",
    );
    out.push_str(
        "add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n",
    );
    out.push_str("add chain ip kube-proxy endpoint-nodeport\n");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy endpoint-nodeport meta l4proto tcp dnat to {backend}"
    );
    out.push_str("add chain ip kube-proxy external-nodeport\n");
    out.push_str("add rule ip kube-proxy external-nodeport jump mark-for-masquerade\n");
    out.push_str("add rule ip kube-proxy external-nodeport goto endpoint-nodeport\n");
    let _ = writeln!(
        out,
        "add element ip kube-proxy service-nodeports {{ tcp . {port} : goto external-nodeport }}"
    );
    out
}
