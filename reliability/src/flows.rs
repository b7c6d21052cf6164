//! The soak's traffic, run inside a namespace: long-lived TCP and connected-UDP flows pinged
//! in rounds, plus a stream of new connections; prints one JSON summary when the time is up.
//!
//! A flow is broken when a ping goes unanswered, errs, or is answered by another pod than the
//! one that took the flow. A datagram is lost when no answer to it comes within
//! [`UDP_ANSWER_WAIT`]; answers carry a hash of their datagram (netns-echo answers a
//! datagram longer than `ping\n` with its length and FNV-1a), so a late answer is never taken
//! for the next one's.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use proxy_tests::{Child, Cluster, Place};
use serde::{Deserialize, Serialize};

const TCP_ANSWER_WAIT: Duration = Duration::from_secs(3);
const UDP_ANSWER_WAIT: Duration = Duration::from_secs(1);
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Threads opening the TCP flows at once.
const OPEN_THREADS: usize = 16;

/// Opens the TCP flows, [`OPEN_THREADS`] at a time: the flows and how many failed.
fn open_tcp_flows(
    spec: &Spec,
    began: Instant,
    examples: &mut Vec<String>,
) -> (Vec<TcpFlow>, usize) {
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let workers: Vec<_> = (0..OPEN_THREADS)
        .map(|t| {
            let share =
                spec.tcp_flows / OPEN_THREADS + usize::from(t < spec.tcp_flows % OPEN_THREADS);
            let target = spec.tcp_target;
            thread::spawn(move || {
                (0..share)
                    .map(|_| TcpFlow::open(target, timeout).map_err(|e| (began.elapsed(), e)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let (mut flows, mut failed) = (Vec::new(), 0);
    for worker in workers {
        for opened in worker.join().expect("an opening thread does not panic") {
            match opened {
                Ok(flow) => flows.push(flow),
                Err((at, e)) => {
                    failed += 1;
                    if examples.len() < EXAMPLES {
                        examples.push(format!("{at:.1?}: opening a TCP flow: {:?}: {e}", e.kind()));
                    }
                }
            }
        }
    }
    (flows, failed)
}

/// The least time between two rounds of pings over every flow.
const ROUND: Duration = Duration::from_millis(200);
/// Pause between two new connections of the stream (about 40 a second).
const NEW_CONNECTION_GAP: Duration = Duration::from_millis(25);
/// How many failures a summary spells out.
const EXAMPLES: usize = 5;

/// What to run: the command line of the hidden `flows` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Spec {
    /// Where the long-lived TCP flows and the new connections go.
    #[arg(long)]
    pub tcp_target: SocketAddr,
    /// Where the connected-UDP flows go.
    #[arg(long)]
    pub udp_target: SocketAddr,
    #[arg(long)]
    pub tcp_flows: usize,
    #[arg(long)]
    pub udp_flows: usize,
    /// How long the flows are pinged after they are all open.
    #[arg(long)]
    pub seconds: u64,
    /// How long opening one TCP flow may take (a SYN the datapath drops is retransmitted
    /// after 1 s).
    #[arg(long, default_value_t = 3000)]
    pub connect_timeout_ms: u64,
}

/// What one generator saw.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Summary {
    /// Flows asked for; those that could not be opened are not pinged.
    pub tcp_flows: usize,
    pub tcp_open_failed: usize,
    pub tcp_broken: usize,
    pub udp_flows: usize,
    pub udp_open_failed: usize,
    pub udp_broken: usize,
    pub datagrams_sent: u64,
    pub datagrams_lost: u64,
    pub new_connections: u64,
    pub new_failed: u64,
    pub rounds: u64,
    /// Which pods took the TCP flows (name, count): shows local and remote backends served.
    pub tcp_pods: Vec<(String, usize)>,
    /// The first few failures, each `when: what`.
    pub examples: Vec<String>,
}

/// Runs `spec` to the end and prints its summary as one JSON line.
pub fn run(spec: &Spec) -> anyhow::Result<()> {
    raise_fd_limit();
    let began = Instant::now();
    let mut examples = Vec::new();
    let (mut tcp, tcp_open_failed) = open_tcp_flows(spec, began, &mut examples);
    let mut udp = Vec::with_capacity(spec.udp_flows);
    let mut udp_open_failed = 0;
    for i in 0..spec.udp_flows {
        match UdpFlow::open(spec.udp_target, i) {
            Ok(flow) => udp.push(flow),
            Err(e) => {
                udp_open_failed += 1;
                note(&mut examples, began, format!("opening UDP flow {i}: {e}"));
            }
        }
    }
    println!("open");
    let _ = std::io::stdout().flush();

    let stop = Arc::new(AtomicBool::new(false));
    let stream = {
        let stop = stop.clone();
        let target = spec.tcp_target;
        thread::spawn(move || new_connections(target, &stop, began))
    };
    let deadline = Instant::now() + Duration::from_secs(spec.seconds);
    let mut summary = Summary {
        tcp_flows: spec.tcp_flows,
        tcp_open_failed,
        udp_flows: spec.udp_flows,
        udp_open_failed,
        ..Summary::default()
    };
    while Instant::now() < deadline {
        let round = Instant::now();
        for (i, flow) in tcp.iter_mut().enumerate() {
            if let Err(why) = flow.ping() {
                summary.tcp_broken += 1;
                note(
                    &mut examples,
                    began,
                    format!("TCP flow {i} ({}): {why}", flow.pod),
                );
            }
        }
        for (i, flow) in udp.iter_mut().enumerate() {
            summary.datagrams_sent += 1;
            match flow.ping() {
                Ok(()) => {}
                Err(Failure::Lost) => summary.datagrams_lost += 1,
                Err(Failure::Broken(why)) => {
                    summary.udp_broken += 1;
                    note(
                        &mut examples,
                        began,
                        format!("UDP flow {i} ({}): {why}", flow.pod),
                    );
                }
            }
        }
        tcp.retain(|flow| !flow.broken);
        udp.retain(|flow| !flow.broken);
        summary.rounds += 1;
        thread::sleep(ROUND.saturating_sub(round.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let (made, failed, failures) = stream.join().expect("the connection stream does not panic");
    summary.new_connections = made;
    summary.new_failed = failed;
    for failure in failures {
        note(&mut examples, began, failure);
    }
    let mut pods = std::collections::BTreeMap::<String, usize>::new();
    for flow in &tcp {
        *pods.entry(flow.pod.clone()).or_default() += 1;
    }
    summary.tcp_pods = pods.into_iter().collect();
    summary.examples = examples;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn note(examples: &mut Vec<String>, began: Instant, what: impl std::fmt::Display) {
    if examples.len() < EXAMPLES {
        examples.push(format!("{:.1?}: {what}", began.elapsed()));
    }
}

/// Rounds of 10k connections from one address to one NodePort outrun the default source
/// ports (32768-60999) while the last round's sit in `TIME_WAIT` (60 s): this namespace (the
/// test client's; `/proc/sys/net` is the opener's namespace) gets a wider range and reuses
/// `TIME_WAIT` ports for new connections, as busy clients are tuned.
fn widen_source_ports() -> anyhow::Result<()> {
    use anyhow::Context as _;
    for (knob, value) in [
        ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535"),
        ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
    ] {
        std::fs::write(knob, value).with_context(|| format!("setting {knob} to {value}"))?;
    }
    Ok(())
}

/// A thousand sockets need more than the default 1024 descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// The pod name that starts an echo answer (`NAME PEER LOCAL ...`).
fn pod_of(answer: &str) -> String {
    answer
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

struct TcpFlow {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    pod: String,
    broken: bool,
}

impl TcpFlow {
    fn open(target: SocketAddr, timeout: Duration) -> std::io::Result<TcpFlow> {
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TCP_ANSWER_WAIT))?;
        let mut flow = TcpFlow {
            reader: BufReader::new(stream.try_clone()?),
            stream,
            pod: String::new(),
            broken: false,
        };
        flow.pod = pod_of(&flow.read_line()?);
        flow.stream.write_all(b"hold\n")?;
        flow.read_line()?;
        Ok(flow)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line)
    }

    fn ping(&mut self) -> Result<(), String> {
        let answer = self
            .stream
            .write_all(b"ping\n")
            .and_then(|()| self.read_line());
        let result = match answer {
            Ok(line) if pod_of(&line) == self.pod => Ok(()),
            Ok(line) => Err(format!("answered by another pod: {}", line.trim_end())),
            Err(e) => Err(format!("{:?}: {e}", e.kind())),
        };
        self.broken = result.is_err();
        result
    }
}

enum Failure {
    Lost,
    Broken(String),
}

struct UdpFlow {
    socket: UdpSocket,
    index: usize,
    seq: u64,
    pod: String,
    broken: bool,
}

impl UdpFlow {
    fn open(target: SocketAddr, index: usize) -> std::io::Result<UdpFlow> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(target)?;
        let mut flow = UdpFlow {
            socket,
            index,
            seq: 0,
            pod: String::new(),
            broken: false,
        };
        // The first answer says which pod took the flow (retried: the first datagram of a
        // flow is the one a busy moment may drop).
        for _ in 0..3 {
            if let Ok(answer) = flow.exchange() {
                flow.pod = pod_of(&answer);
                return Ok(flow);
            }
        }
        Err(std::io::Error::other("no answer to three datagrams"))
    }

    /// One datagram and its own answer (answers to earlier ones are skipped).
    fn exchange(&mut self) -> std::io::Result<String> {
        self.seq += 1;
        let datagram = format!("soak flow {} datagram {:>12}\n", self.index, self.seq);
        let expected = format!("{}:{:08x}", datagram.len(), fnv1a(datagram.as_bytes()));
        self.socket.send(datagram.as_bytes())?;
        let deadline = Instant::now() + UDP_ANSWER_WAIT;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.socket.set_read_timeout(Some(left))?;
            let n = self.socket.recv(&mut buf)?;
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            if answer.split_whitespace().nth(3) == Some(expected.as_str()) {
                return Ok(answer);
            }
        }
    }

    fn ping(&mut self) -> Result<(), Failure> {
        let result = match self.exchange() {
            Ok(answer) if pod_of(&answer) == self.pod => Ok(()),
            Ok(answer) => Err(Failure::Broken(format!(
                "answered by another pod: {}",
                answer.trim_end()
            ))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Failure::Lost)
            }
            Err(e) => Err(Failure::Broken(format!("{:?}: {e}", e.kind()))),
        };
        self.broken = matches!(result, Err(Failure::Broken(_)));
        result
    }
}

/// netns-echo's checksum of a datagram (FNV-1a, 32 bits).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// New TCP connections to `target` until `stop`, each answered by a pod's greeting:
/// (made, failed, the first failures).
fn new_connections(
    target: SocketAddr,
    stop: &AtomicBool,
    began: Instant,
) -> (u64, u64, Vec<String>) {
    let (mut made, mut failed, mut failures) = (0, 0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let attempt = greeting(target);
        made += 1;
        if let Err((e, port)) = attempt {
            failed += 1;
            if failures.len() < EXAMPLES {
                let port = port.map_or_else(|| "?".to_owned(), |port| port.to_string());
                failures.push(format!(
                    "new connection at {:.1?} from port {port}: {:?}: {e}",
                    began.elapsed(),
                    e.kind()
                ));
            }
        }
        thread::sleep(NEW_CONNECTION_GAP);
    }
    (made, failed, failures)
}

/// The command line of the hidden `connect-many` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Many {
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long)]
    pub count: usize,
}

/// Threads opening connections at once for [`connect_many`].
const MANY_THREADS: usize = 8;

/// What [`connect_many`] saw, printed as one JSON line.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct ManySummary {
    pub made: usize,
    pub failed: usize,
    pub examples: Vec<String>,
    /// The source ports of the first failed connections (their flows can be looked up).
    pub failed_ports: Vec<u16>,
}

/// Opens and closes `many.count` TCP connections, each to be answered by a pod's greeting,
/// and prints how many were not.
pub fn connect_many(many: &Many) -> anyhow::Result<()> {
    raise_fd_limit();
    widen_source_ports()?;
    let began = Instant::now();
    let workers: Vec<_> = (0..MANY_THREADS)
        .map(|t| {
            let share = many.count / MANY_THREADS + usize::from(t < many.count % MANY_THREADS);
            let target = many.target;
            thread::spawn(move || {
                let mut failures = Vec::new();
                for _ in 0..share {
                    if let Err((e, port)) = greeting(target) {
                        let what = format!("{:.1?}: {:?}: {e}", began.elapsed(), e.kind());
                        failures.push((what, port));
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<(String, Option<u16>)> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a connecting thread does not panic"))
        .collect();
    let summary = ManySummary {
        made: many.count,
        failed: failures.len(),
        failed_ports: failures
            .iter()
            .filter_map(|(_, port)| *port)
            .take(EXAMPLES)
            .collect(),
        examples: failures
            .into_iter()
            .map(|(what, _)| what)
            .take(EXAMPLES)
            .collect(),
    };
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// One connection: connect, read the pod's greeting, close. A failure comes with the
/// connection's source port, once it had one.
fn greeting(target: SocketAddr) -> Result<(), (std::io::Error, Option<u16>)> {
    use socket2::{Domain, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(target), Type::STREAM, None).map_err(|e| (e, None))?;
    let port = || {
        socket
            .local_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .map(|addr| addr.port())
    };
    let answered = socket
        .connect_timeout(&target.into(), CONNECT_WAIT)
        .and_then(|()| socket.set_read_timeout(Some(TCP_ANSWER_WAIT)))
        .and_then(|()| {
            let mut line = String::new();
            BufReader::new(&socket).read_line(&mut line)?;
            if line.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(())
        });
    answered.map_err(|e| (e, port()))
}

/// The command line of the hidden `affinity-clients` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct AffinityClients {
    #[arg(long)]
    pub target: SocketAddr,
    /// The first client address; the others follow it.
    #[arg(long)]
    pub first: std::net::Ipv4Addr,
    #[arg(long)]
    pub clients: u32,
    /// How many of the last clients connect a second time.
    #[arg(long)]
    pub recheck: u32,
}

/// What [`affinity_clients`] saw, printed as one JSON line.
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct AffinitySummary {
    pub connections: usize,
    pub failed: usize,
    /// Second connections of the last clients answered by the pod of their first.
    pub kept: usize,
    pub rechecked: usize,
    pub examples: Vec<String>,
}

/// Each client address connects once, in order; then the last `recheck` of them once more.
/// Counts failures and second connections that reached the first one's pod.
pub fn affinity_clients(args: &AffinityClients) -> anyhow::Result<()> {
    let source = |i: u32| std::net::Ipv4Addr::from(u32::from(args.first) + i);
    let mut summary = AffinitySummary::default();
    let mut first_pod = std::collections::HashMap::new();
    let connect = |i: u32, summary: &mut AffinitySummary| {
        summary.connections += 1;
        match greeting_from(source(i), args.target) {
            Ok(pod) => Some(pod),
            Err(e) => {
                summary.failed += 1;
                if summary.examples.len() < EXAMPLES {
                    summary.examples.push(format!("from {}: {e}", source(i)));
                }
                None
            }
        }
    };
    for i in 0..args.clients {
        if let Some(pod) = connect(i, &mut summary) {
            first_pod.insert(i, pod);
        }
    }
    for i in args.clients.saturating_sub(args.recheck)..args.clients {
        summary.rechecked += 1;
        if let Some(pod) = connect(i, &mut summary)
            && first_pod.get(&i) == Some(&pod)
        {
            summary.kept += 1;
        }
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// One connection from `source`: the greeting line of the pod that answered.
fn greeting_from(source: std::net::Ipv4Addr, target: SocketAddr) -> std::io::Result<String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source.into(), 0).into())?;
    socket.connect_timeout(&target.into(), CONNECT_WAIT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TCP_ANSWER_WAIT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    // `NAME PEER LOCAL`: the pod's name first.
    line.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

/// This binary with `args` at `place` in `cluster` (its namespace and cgroup).
pub fn spawn_at(cluster: &Cluster, place: Place<'_>, args: &[String]) -> anyhow::Result<Child> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args);
    let (netns, cgroup) = cluster.place(place);
    netns.prepare(&mut cmd, cgroup)?;
    Child::spawn(format!("{} at {place:?}", args[0]), cmd)
}

/// [`connect_many`] run at `place`, to the end.
pub fn connect_many_at(
    cluster: &Cluster,
    place: Place<'_>,
    target: SocketAddr,
    count: usize,
) -> anyhow::Result<ManySummary> {
    let args = [
        "connect-many",
        "--target",
        &target.to_string(),
        "--count",
        &count.to_string(),
    ];
    let mut child = spawn_at(cluster, place, &args.map(str::to_owned))?;
    last_json_line(&mut child, Duration::from_secs(300))
}

/// Waits for `child` to succeed and reads the JSON summary it printed last.
pub fn last_json_line<T: serde::de::DeserializeOwned>(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let status = child
        .wait_timeout(timeout)?
        .with_context(|| format!("{} did not finish in {timeout:?}", child.name()))?;
    // The output is read by threads of its own: all of it is in once they see it close.
    child.wait_output_closed(Duration::from_secs(5));
    if !status.success() {
        anyhow::bail!(
            "{} failed ({status})\n{}",
            child.name(),
            child.output_report()
        );
    }
    let line = child.stdout_lines().last().cloned().unwrap_or_default();
    serde_json::from_str(&line).with_context(|| format!("{}: its summary {line:?}", child.name()))
}

impl Spec {
    /// The command line that runs this spec.
    pub fn args(&self) -> Vec<String> {
        [
            "flows",
            "--tcp-target",
            &self.tcp_target.to_string(),
            "--udp-target",
            &self.udp_target.to_string(),
            "--tcp-flows",
            &self.tcp_flows.to_string(),
            "--udp-flows",
            &self.udp_flows.to_string(),
            "--seconds",
            &self.seconds.to_string(),
            "--connect-timeout-ms",
            &self.connect_timeout_ms.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}
