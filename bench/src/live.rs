//! Packet rate of the NodePort path: a generator in the bench's own namespace sends one
//! established TCP flow's frames to the NodePort with `AF_PACKET` (`sendmmsg`, batches of 64)
//! from the node interface's veth peer; the node interface receives them (through Sluice's
//! XDP program when attached, native veth XDP), and the stack forwards the translated frames
//! to the backend, routed out of a second veth whose peer drops them. What left that veth is
//! counted, over the same wall time, for:
//!
//! - **floor**: no XDP program, no rules, the frame already addressed to the backend: plain
//!   forwarding, the stack's own cost;
//! - **Sluice**: `xdp_ingress` attached to the node interface DNATs in XDP;
//! - **iptables** / **nftables**: kube-proxy's rule set DNATs in PREROUTING (conntrack's
//!   cached NAT after the first frame, as for an established connection).
//!
//! Sender and receiver share the machine's CPUs, so the rate is of the whole path, sender
//! included, and ratios against the floor understate per-packet differences. (XDP live frames
//! through `BPF_PROG_TEST_RUN` were tried first: the kernel recycles pages the stack has already
//! rewritten — MAC, TTL, NAT — so later frames are not the template, and most are dropped.)
//! Every variant gets a fresh namespace and its own floor measured there right before it.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{Xdp, XdpMode};
use proxy_common::{program_names, tcp};
use proxy_tests::{isolated_netns::IsolatedNetns, packet};

use crate::{
    fixture::{self, Loaded, NODE_IP, NODE_PORT},
    plot, rules,
    stats::{Samples, ToF64 as _, ratio},
};

const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 5, 2), 8080);

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub services: usize,
    pub millis: u64,
    pub rounds: usize,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub variant: &'static str,
    pub services: usize,
    /// Frames forwarded per second: floor and variant, per round.
    pub floor: Samples,
    /// The empty XDP program attached, no rules (Sluice's row only).
    pub xdp_floor: Samples,
    pub rate: Samples,
    /// Frames forwarded per frame sent, variant runs.
    pub delivered: f64,
}

impl Row {
    pub fn rate_ratio(&self) -> Samples {
        ratio(&self.rate, &self.floor)
    }
}

fn links(netns: &IsolatedNetns) {
    netns.ip("link add sl0 address 02:00:00:00:00:01 type veth peer name sl1");
    netns.ip("link set sl0 up");
    netns.ip("link set sl1 up");
    netns.ip("addr add 198.18.0.1/24 dev sl0");
    netns.sysctl("net.ipv4.ip_forward", "1");
    // No dummy driver on these kernels: a veth whose peer drops frames not addressed to it.
    netns.ip("link add dum0 type veth peer name dum1");
    netns.ip("link set dum0 up");
    netns.ip("link set dum1 up");
    netns.ip("route add 198.18.5.0/24 dev dum0");
    netns.ip("neigh replace 198.18.5.2 lladdr 02:00:00:00:05:02 dev dum0 nud permanent");
}

fn path_str(path: &Path) -> Result<String> {
    Ok(path.to_str().context("non-UTF-8 path")?.to_owned())
}

/// `ip link ARGS` in the current namespace.
fn ip_link(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").arg("link").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip link {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn tx_packets() -> Result<u64> {
    let out = Command::new("ip")
        .args(["-j", "-s", "link", "show", "dev", "dum0"])
        .output()
        .context("run ip")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .context("no tx packet count for dum0")
}

fn frame(to: SocketAddrV4) -> Vec<u8> {
    packet::tcp(
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 40_000),
        to,
        tcp::ACK,
    )
    .build()
}

/// An `AF_PACKET` socket sending on `ifname` of the current namespace.
struct Sender {
    fd: std::os::fd::OwnedFd,
}

impl Sender {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "AF_PACKET (17) in sockaddr_ll's u16 family; the size of a sockaddr_ll"
    )]
    fn new(ifindex: u32) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor we now own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = i32::try_from(ifindex).context("interface index")?;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret != 0 {
            bail!("bind AF_PACKET: {}", std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends `frame` as fast as it can for `millis`; returns frames sent.
    fn blast(&self, frame: &[u8], millis: u64) -> Result<u64> {
        use std::os::fd::AsRawFd;
        const BATCH: u32 = 64;
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        // SAFETY: mmsghdr is plain data; zero is a valid start.
        let mut msgs: [libc::mmsghdr; BATCH as usize] = unsafe { std::mem::zeroed() };
        for msg in &mut msgs {
            msg.msg_hdr.msg_iov = &raw mut iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        let deadline = Instant::now() + Duration::from_millis(millis);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            // SAFETY: msgs point at iov, which points at frame; all outlive the call.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH, 0) };
            // Negative: an error.
            let Ok(n) = u64::try_from(n) else {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ENOBUFS) {
                    continue;
                }
                bail!("sendmmsg: {err}");
            };
            sent += n;
        }
        Ok(sent)
    }
}

/// One timed burst: (frames forwarded per second, forwarded / sent).
fn measure(sender: &Sender, frame: &[u8], millis: u64) -> Result<(f64, f64)> {
    let before = tx_packets()?;
    let started = Instant::now();
    let sent = sender.blast(frame, millis)?;
    // Let the backlog drain before counting.
    std::thread::sleep(Duration::from_millis(20));
    let secs = started.elapsed().as_secs_f64() - 0.02;
    let forwarded = tx_packets()? - before;
    Ok((
        forwarded.to_f64() / secs,
        forwarded.to_f64() / sent.max(1).to_f64(),
    ))
}

pub fn run(params: &Params, log: &mut dyn FnMut(&str)) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let node_port = SocketAddrV4::new(NODE_IP, NODE_PORT);
    for variant in [
        "Sluice XDP",
        "iptables (kube-proxy)",
        "nftables (kube-proxy)",
    ] {
        let netns = IsolatedNetns::enter()?;
        links(&netns);
        let sender = Sender::new(netns.ifindex("sl1"))?;
        let mut floor = Samples::default();
        for _ in 0..params.rounds {
            floor.push(measure(&sender, &frame(BACKEND), params.millis)?.0);
        }
        let mut loaded = None;
        let mut xdp_floor = Samples::default();
        match variant {
            "Sluice XDP" => {
                let mut sluice =
                    Loaded::with_netns(netns, &fixture::sizes(params.services, 2, 1024)?)?;
                sluice.load_xdp()?;
                sluice.fill(params.services, 2, &[BACKEND, BACKEND])?;
                let xdp: &mut Xdp = sluice
                    .ebpf
                    .program_mut(program_names::XDP_INGRESS)
                    .context("no xdp_ingress")?
                    .try_into()?;
                // The veth's own XDP cost (it copies skbs into XDP buffers once any program
                // is attached), measured with the empty program before Sluice's replaces it.
                // An owned name: if the bench is killed, the next harness run sweeps it.
                let name = format!("{}-bench-bpffs", proxy_tests::unique::next_prefix());
                let bpffs = proxy_tests::bpffs::Bpffs::mount_temp(&name)?;
                let pin = bpffs.path().join("xdp_pass");
                proxy_tests::xdp_pass::load_and_pin(&pin)?;
                let attached =
                    ip_link(&["set", "dev", "sl0", "xdpdrv", "pinned", &path_str(&pin)?]);
                let _ = std::fs::remove_file(&pin);
                drop(bpffs);
                attached?;
                for _ in 0..params.rounds {
                    xdp_floor.push(measure(&sender, &frame(BACKEND), params.millis)?.0);
                }
                ip_link(&["set", "dev", "sl0", "xdpdrv", "off"])?;
                xdp.attach(c"sl0", XdpMode::default())
                    .context("attach xdp_ingress to sl0")?;
                loaded = Some(sluice);
            }
            "iptables (kube-proxy)" => load_rules(
                &["iptables-restore", "-w"],
                &rules::iptables_with_nodeport(params.services, 2, NODE_PORT, BACKEND),
            )?,
            _ => load_rules(
                &["nft", "-f", "-"],
                &rules::nft_with_nodeport(params.services, 2, NODE_PORT, BACKEND),
            )?,
        }
        let mut rate = Samples::default();
        let mut delivered = Vec::new();
        for _ in 0..params.rounds {
            let (r, d) = measure(&sender, &frame(node_port), params.millis)?;
            rate.push(r);
            delivered.push(d);
        }
        drop(sender);
        drop(loaded);
        rows.push(Row {
            variant,
            services: params.services,
            floor,
            xdp_floor,
            rate,
            delivered: delivered.iter().sum::<f64>() / delivered.len().to_f64(),
        });
    }
    for row in &rows {
        log(&format!(
            "packet rate: {}: {:.0} frames/s vs floor {:.0} (empty XDP {:.0}), forwarded {:.3} of sent",
            row.variant,
            row.rate.median(),
            row.floor.median(),
            row.xdp_floor.median(),
            row.delivered
        ));
        if row.rate.median() <= 0.0 {
            bail!("{}: no frame was translated and forwarded", row.variant);
        }
    }
    Ok(rows)
}

fn load_rules(argv: &[&str], rules: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", argv[0]))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn report(
    md: &mut String,
    rows: &[Row],
    error: Option<&str>,
    plots: &Path,
    rel: &str,
) -> Result<()> {
    use std::fmt::Write as _;
    md.push_str(
        "## 5. Packet rate of the NodePort path\n\n\
         No pktgen on these kernels and no trafgen installed: the bench sends one established \
         TCP flow's frames to the NodePort with AF_PACKET `sendmmsg` (64 per call) from the node \
         interface's veth peer. The node interface receives them — through Sluice's XDP \
         program when attached (native veth XDP) — and the stack forwards what was translated \
         to the backend, routed out of a second veth whose peer drops it; that veth's tx count \
         over the wall time is the rate. **floor**: no XDP, no rules, frames already addressed \
         to the backend (plain forwarding), measured in the same fresh namespace right before \
         each variant; for Sluice also **empty-XDP floor**: the same with the empty XDP_PASS \
         program attached (a veth copies every skb into an XDP buffer once any XDP program is \
         attached; that cost is the veth's, not Sluice's). iptables and nftables hold kube-proxy's rule set for the given number \
         of services plus the NodePort (its DNAT is cached in conntrack after the first frame, \
         as for an established connection). Sender and receiver share the 2 CPUs, so these are \
         rates of the whole path, sender included: ratios understate per-packet differences \
         (section 1 has those).\n\n\
         XDP live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES) were tried first \
         and dropped: pages passed to the stack come back to the test run's page pool already \
         rewritten by the stack (destination MAC, TTL, NAT), so after the first two batches \
         the frames were no longer the template and only 0.6% reached the backend, even with \
         the empty program.\n\n",
    );
    if let Some(error) = error {
        let _ = writeln!(md, "**Not measured in this run**: {error}\n");
        return Ok(());
    }
    md.push_str(
        "| variant | services | floor frames/s | variant frames/s | rate / floor | empty-XDP \
         floor frames/s | rate / empty-XDP floor | forwarded of sent |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (xdp_floor, xdp_ratio) = if row.xdp_floor.0.is_empty() {
            ("–".to_owned(), "–".to_owned())
        } else {
            (
                row.xdp_floor.show(0),
                ratio(&row.rate, &row.xdp_floor).show(3),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {xdp_floor} | {xdp_ratio} | {:.1}% |",
            row.variant,
            row.services,
            row.floor.show(0),
            row.rate.show(0),
            row.rate_ratio().show(3),
            row.delivered * 100.0
        );
    }
    let bars: Vec<(String, f64, f64, f64)> = rows
        .iter()
        .map(|row| {
            let r = row.rate_ratio();
            (row.variant.to_owned(), r.median(), r.min(), r.max())
        })
        .collect();
    if !bars.is_empty() {
        plot::bars(
            &plots.join("packet_rate.png"),
            "NodePort packet rate relative to plain forwarding",
            "rate / floor (higher is better)",
            &bars,
        )?;
        let _ = writeln!(md, "\n![packet rate]({rel}/packet_rate.png)\n");
    }
    Ok(())
}
