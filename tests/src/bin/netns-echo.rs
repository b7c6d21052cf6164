//! netns-echo: tiny TCP/UDP servers that answer with their name, and the matching clients.
//!
//! ```text
//! netns-echo serve --name NAME [--tcp PORT[,PORT..]] [--udp PORT[,PORT..]]
//! netns-echo request tcp|udp|udp-connected ADDR:PORT [--count N] [--timeout-ms T]
//!                    [--source-port P] [--size BYTES]
//! netns-echo hold ADDR:PORT [--timeout-ms T]
//! netns-echo udp-session ADDR:PORT [--timeout-ms T]
//! ```
//!
//! `serve` binds 0.0.0.0 and [::] (IPv6 only: IPv4 peers stay IPv4) on every port, prints
//! `ready`, then answers every TCP connection and every UDP datagram, of either family, with
//! `NAME PEER LOCAL` (the client address it saw and its own, e.g. `[fd00:18::100]:4000`).
//! A TCP client that sends `hold` keeps its connection, and each further line gets the
//! same answer. A plain TCP connection is closed once the client closes or stays silent.
//!
//! The clients take `ADDR:PORT` of either family (`198.19.0.10:80`, `[fd00:19::10]:80`); an
//! IPv4-mapped address (`[::ffff:198.19.0.10]:80`) is reached from an `AF_INET6` socket that
//! is not IPv6-only, as the JVM does.
//!
//! `request` makes N fresh connections/datagrams, one socket each, and prints per answer
//! `NAME PEER LOCAL REMOTE` (REMOTE: where the client saw the answer come from) or
//! `error: KIND: message`, KIND one of refused, timeout, reset, unreachable, eof, other.
//! With `--source-port` (TCP only) every connection binds that local port first, with
//! `SO_REUSEADDR`, so a test can reuse one client port across destinations. With `--size`
//! (UDP only) each datagram is that long (`ping` and a pattern); the server answers a datagram
//! longer than `ping\n` with `LEN:HASH` after its address (its length and FNV-1a as it
//! received them), the client checks both against what it sent and prints `NAME PEER LOCAL
//! LEN REMOTE`, or `error: other: ...` when the datagram arrived changed.
//!
//! `hold` opens one TCP connection, prints the greeting and the `hold` acknowledgement, then
//! for each stdin line sends it and prints the answer; it exits on stdin EOF or on error.
//!
//! `udp-session` connects one UDP socket, prints `connected`, then runs stdin commands on that
//! same socket until EOF, one output line each: `ping` (send, then the answer or error, as
//! `request` prints them), `recv MS` (wait up to MS ms for a datagram or a socket error) and
//! `connect` (connect again to ADDR:PORT; `connected` or the error). Errors do not end it.

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
    },
    process::ExitCode,
    sync::Arc,
    thread,
    time::Duration,
};

use socket2::{Domain, Socket, Type};

/// A plain TCP client reads the answer and closes; clients that send nothing (nc, curl)
/// get the connection closed after this long.
const FIRST_LINE_WAIT: Duration = Duration::from_secs(2);

const USAGE: &str = "usage:
  netns-echo serve --name NAME [--tcp PORT[,PORT..]] [--udp PORT[,PORT..]]
  netns-echo request tcp|udp|udp-connected ADDR:PORT [--count N] [--timeout-ms T]
                     [--source-port P] [--size BYTES]
  netns-echo hold ADDR:PORT [--timeout-ms T]
  netns-echo udp-session ADDR:PORT [--timeout-ms T]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("netns-echo: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let Some((mode, rest)) = args.split_first() else {
        return Err("missing mode".into());
    };
    match mode.as_str() {
        "serve" => {
            let opts = Opts::parse(rest, &["--name", "--tcp", "--udp"])?;
            let name = opts.value("--name").ok_or("serve needs --name")?;
            serve(
                name,
                &ports(opts.value("--tcp"))?,
                &ports(opts.value("--udp"))?,
            )
        }
        "request" => {
            let opts = Opts::parse(
                rest,
                &["--count", "--timeout-ms", "--source-port", "--size"],
            )?;
            let [proto, addr] = opts.positional[..] else {
                return Err("request needs PROTO and ADDR:PORT".into());
            };
            let count = opts.number("--count", 1)?;
            let timeout = Duration::from_millis(opts.number("--timeout-ms", 1000)?);
            let source_port = opts.number("--source-port", 0)?;
            if source_port != 0 && proto != "tcp" {
                return Err("--source-port is for tcp requests".into());
            }
            let size = opts.number("--size", 0)?;
            if size != 0 && proto == "tcp" {
                return Err("--size is for udp requests".into());
            }
            let shape = Shape { source_port, size };
            request(proto, resolve(addr)?, count, timeout, shape)
        }
        "hold" => {
            let opts = Opts::parse(rest, &["--timeout-ms"])?;
            let [addr] = opts.positional[..] else {
                return Err("hold needs ADDR:PORT".into());
            };
            let timeout = Duration::from_millis(opts.number("--timeout-ms", 2000)?);
            Ok(hold(resolve(addr)?, timeout))
        }
        "udp-session" => {
            let opts = Opts::parse(rest, &["--timeout-ms"])?;
            let [addr] = opts.positional[..] else {
                return Err("udp-session needs ADDR:PORT".into());
            };
            let timeout = Duration::from_millis(opts.number("--timeout-ms", 2000)?);
            Ok(udp_session(resolve(addr)?, timeout))
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown mode {other:?}")),
    }
}

/// `--flag value` options and positional arguments.
struct Opts<'a> {
    flags: Vec<(&'a str, &'a str)>,
    positional: Vec<&'a str>,
}

impl<'a> Opts<'a> {
    fn parse(args: &'a [String], known: &[&str]) -> Result<Opts<'a>, String> {
        let mut opts = Opts {
            flags: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg.starts_with("--") {
                if !known.contains(&arg.as_str()) {
                    return Err(format!("unknown option {arg}"));
                }
                let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                opts.flags.push((arg, value));
            } else {
                opts.positional.push(arg);
            }
        }
        Ok(opts)
    }

    fn value(&self, flag: &str) -> Option<&'a str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| *v)
    }

    fn number<T: std::str::FromStr>(&self, flag: &str, default: T) -> Result<T, String> {
        match self.value(flag) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{flag}: bad number {v:?}")),
        }
    }
}

fn ports(list: Option<&str>) -> Result<Vec<u16>, String> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| format!("bad port {p:?}")))
        .collect()
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("bad address {addr:?}"))
}

// ---- server ----

fn serve(name: &str, tcp: &[u16], udp: &[u16]) -> Result<ExitCode, String> {
    if tcp.is_empty() && udp.is_empty() {
        return Err("serve needs --tcp or --udp ports".into());
    }
    // Bind everything before saying `ready`, so a test never races the server.
    let mut listeners = Vec::new();
    let mut sockets = Vec::new();
    for any in [
        IpAddr::from(Ipv4Addr::UNSPECIFIED),
        Ipv6Addr::UNSPECIFIED.into(),
    ] {
        for &port in tcp {
            let addr = SocketAddr::new(any, port);
            listeners.push(listen_tcp(addr).map_err(|e| format!("binding tcp {addr}: {e}"))?);
        }
        for &port in udp {
            let addr = SocketAddr::new(any, port);
            sockets.push(bind_udp(addr).map_err(|e| format!("binding udp {addr}: {e}"))?);
        }
    }
    println!("ready");
    let _ = io::stdout().flush();

    let name: Arc<str> = name.into();
    let mut threads = Vec::new();
    for listener in listeners {
        let name = name.clone();
        threads.push(thread::spawn(move || accept_loop(&listener, &name)));
    }
    for socket in sockets {
        let name = name.clone();
        threads.push(thread::spawn(move || udp_loop(&socket, &name)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// A socket of `addr`'s family. IPv6 sockets are IPv6-only when `v6_only`, else they also
/// reach IPv4-mapped addresses, whatever `net.ipv6.bindv6only` says.
fn socket_for(addr: SocketAddr, kind: Type, v6_only: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(v6_only)?;
    }
    Ok(socket)
}

/// A TCP listener on `addr`; on `[::]` for IPv6 peers only (IPv4 has its own listener).
fn listen_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr, Type::STREAM, true)?;
    // As std's TcpListener::bind does: a restarted server binds at once.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// A UDP socket on `addr`; on `[::]` for IPv6 peers only.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket_for(addr, Type::DGRAM, true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn accept_loop(listener: &TcpListener, name: &Arc<str>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let name = name.clone();
                thread::spawn(move || {
                    if let Err(e) = tcp_session(&stream, &name) {
                        // Timeouts and resets are how plain sessions usually end.
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::BrokenPipe
                        ) {
                            eprintln!("netns-echo: tcp session: {e}");
                        }
                    }
                });
            }
            Err(e) => eprintln!("netns-echo: accept: {e}"),
        }
    }
}

fn tcp_session(stream: &TcpStream, name: &str) -> io::Result<()> {
    let answer = format!("{name} {} {}\n", stream.peer_addr()?, stream.local_addr()?);
    stream.set_nodelay(true)?;
    let mut writer = stream;
    writer.write_all(answer.as_bytes())?;
    stream.set_read_timeout(Some(FIRST_LINE_WAIT))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 || line.trim() != "hold" {
        return Ok(());
    }
    // Long-lived connection: answer the `hold` and every later line until the client closes.
    stream.set_read_timeout(None)?;
    loop {
        writer.write_all(answer.as_bytes())?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
    }
}

fn udp_loop(socket: &UdpSocket, name: &Arc<str>) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("netns-echo: udp local_addr: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let answer = if n > PING.len() {
                    format!("{name} {peer} {local} {n}:{:08x}\n", fnv1a(&buf[..n]))
                } else {
                    format!("{name} {peer} {local}\n")
                };
                if let Err(e) = socket.send_to(answer.as_bytes(), peer) {
                    eprintln!("netns-echo: udp reply to {peer}: {e}");
                }
            }
            Err(e) => eprintln!("netns-echo: udp recv: {e}"),
        }
    }
}

// ---- clients ----

/// `KIND: message`, KIND a stable word tests can match on.
fn describe(e: &io::Error) -> String {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => "reset",
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
        io::ErrorKind::UnexpectedEof => "eof",
        _ => "other",
    };
    format!("{kind}: {e}")
}

/// What each request of `request` looks like.
#[derive(Clone, Copy)]
struct Shape {
    /// TCP: the local port to bind (0: any).
    source_port: u16,
    /// UDP: the datagram's length (0: just `ping\n`).
    size: usize,
}

/// The datagram a UDP request sends.
const PING: &[u8] = b"ping\n";

/// 32-bit FNV-1a: what the server and the client compare a large datagram by.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// A UDP request's datagram: `ping\n`, padded with a pattern to `size` bytes.
fn datagram(size: usize) -> Vec<u8> {
    let mut bytes = PING.to_vec();
    bytes.extend((0..=250u8).cycle().take(size.saturating_sub(PING.len())));
    bytes
}

fn request(
    proto: &str,
    addr: SocketAddr,
    count: u32,
    timeout: Duration,
    shape: Shape,
) -> Result<ExitCode, String> {
    let once: fn(SocketAddr, Duration, Shape) -> io::Result<String> = match proto {
        "tcp" => |a, t, shape| tcp_once(a, t, shape.source_port),
        "udp" => |a, t, shape| udp_once(a, t, false, shape.size),
        "udp-connected" => |a, t, shape| udp_once(a, t, true, shape.size),
        other => return Err(format!("unknown protocol {other:?}")),
    };
    for _ in 0..count {
        match once(addr, timeout, shape) {
            Ok(line) => println!("{line}"),
            Err(e) => println!("error: {}", describe(&e)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_answer(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before an answer",
        ));
    }
    Ok(line.trim_end().to_owned())
}

fn tcp_once(addr: SocketAddr, timeout: Duration, source_port: u16) -> io::Result<String> {
    let stream = connect_tcp(addr, timeout, source_port)?;
    stream.set_read_timeout(Some(timeout))?;
    let remote = stream.peer_addr()?;
    let answer = read_answer(&mut BufReader::new(&stream))?;
    Ok(format!("{answer} {remote}"))
}

/// A TCP connection to `addr` (IPv4, IPv6 or IPv4-mapped), from local port `source_port`
/// unless 0. `SO_REUSEADDR` lets a port be bound again while an earlier connection from it to
/// another destination is still in `TIME_WAIT`.
fn connect_tcp(addr: SocketAddr, timeout: Duration, source_port: u16) -> io::Result<TcpStream> {
    let socket = socket_for(addr, Type::STREAM, false)?;
    if source_port != 0 {
        socket.set_reuse_address(true)?;
        socket.bind(&unspecified(addr, source_port).into())?;
    }
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// A UDP socket, bound to an ephemeral port, that can send to `addr` (of any of the three
/// kinds).
fn udp_socket_for(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket_for(addr, Type::DGRAM, false)?;
    socket.bind(&unspecified(addr, 0).into())?;
    Ok(socket.into())
}

/// The wildcard address of `addr`'s socket family, with `port`.
fn unspecified(addr: SocketAddr, port: u16) -> SocketAddr {
    let any = if addr.is_ipv4() {
        IpAddr::from(Ipv4Addr::UNSPECIFIED)
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(any, port)
}

fn udp_once(addr: SocketAddr, timeout: Duration, connect: bool, size: usize) -> io::Result<String> {
    let socket = udp_socket_for(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    let sent = datagram(size);
    let mut buf = [0u8; 2048];
    let (n, from) = if connect {
        socket.connect(addr)?;
        socket.send(&sent)?;
        let n = socket.recv(&mut buf)?;
        (n, socket.peer_addr()?)
    } else {
        socket.send_to(&sent, addr)?;
        socket.recv_from(&mut buf)?
    };
    let answer = String::from_utf8_lossy(&buf[..n]);
    let answer = answer.trim_end();
    if sent.len() == PING.len() {
        return Ok(format!("{answer} {from}"));
    }
    // `NAME PEER LOCAL LEN:HASH`: the server saw the whole datagram, unchanged.
    let expected = format!("{}:{:08x}", sent.len(), fnv1a(&sent));
    match answer.rsplit_once(' ') {
        Some((head, received)) if received == expected => {
            Ok(format!("{head} {} {from}", sent.len()))
        }
        _ => Err(io::Error::other(format!(
            "sent {expected} (LEN:FNV-1a), the server answered {answer:?}"
        ))),
    }
}

fn hold(addr: SocketAddr, timeout: Duration) -> ExitCode {
    match hold_session(addr, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

fn hold_session(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let stream = connect_tcp(addr, timeout, 0)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let remote = stream.peer_addr()?;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    println!("{} {remote}", read_answer(&mut reader)?);
    writer.write_all(b"hold\n")?;
    println!("{} {remote}", read_answer(&mut reader)?);
    for line in io::stdin().lock().lines() {
        let line = line?;
        writer.write_all(format!("{}\n", line.trim_end()).as_bytes())?;
        println!("{} {remote}", read_answer(&mut reader)?);
    }
    Ok(())
}

fn udp_session(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let socket = match udp_socket_for(addr).and_then(|socket| {
        socket.connect(addr)?;
        Ok(socket)
    }) {
        Ok(socket) => socket,
        Err(e) => {
            println!("error: {}", describe(&e));
            return ExitCode::from(1);
        }
    };
    println!("connected");
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else {
            break;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words[..] {
            ["ping"] => socket
                .send(b"ping\n")
                .and_then(|_| udp_answer(&socket, timeout)),
            ["recv", ms] => match ms.parse() {
                Ok(ms) => udp_answer(&socket, Duration::from_millis(ms)),
                Err(_) => Err(io::Error::other(format!("bad milliseconds {ms:?}"))),
            },
            ["connect"] => socket.connect(addr).map(|()| "connected".to_owned()),
            _ => Err(io::Error::other(format!("unknown command {line:?}"))),
        };
        match result {
            Ok(answer) => println!("{answer}"),
            Err(e) => println!("error: {}", describe(&e)),
        }
        let _ = io::stdout().flush();
    }
    ExitCode::SUCCESS
}

/// The next datagram on a connected socket, as `NAME PEER LOCAL REMOTE`.
fn udp_answer(socket: &UdpSocket, timeout: Duration) -> io::Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf)?;
    let answer = String::from_utf8_lossy(&buf[..n]);
    Ok(format!("{} {}", answer.trim_end(), socket.peer_addr()?))
}
