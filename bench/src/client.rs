//! The connection benchmark's two halves, run by the bench as child processes inside the
//! cluster's namespaces: `serve` (accept, read the request, answer, close: the server closes
//! first, so `TIME_WAIT` stays on its side and the client's source ports are free to reuse) and
//! `client` (connect, request, read the answer to EOF, close, sequentially, recording each
//! connection's latency in an HDR histogram; every connection uses a new source port).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A latency in whole microseconds (saturating: u64 holds half a million years of them).
fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

pub fn serve(port: u16, ipv6: bool) -> Result<()> {
    let host = if ipv6 { "::" } else { "0.0.0.0" };
    let listener = TcpListener::bind((host, port)).with_context(|| format!("bind :{port}"))?;
    println!("ready");
    let mut buf = [0u8; 64];
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"OK\n");
    }
    Ok(())
}

/// Prints one JSON line: connections, seconds, errors, p50/p90/p99 in microseconds.
pub fn client(target: SocketAddr, millis: u64) -> Result<()> {
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut errors = 0u64;
    let mut buf = [0u8; 64];
    let deadline = Duration::from_millis(millis);
    // Warm-up: caches, neighbours, conntrack of the service.
    let mut warm_errors = Vec::new();
    for _ in 0..50 {
        if let Err(err) = one(target, &mut buf) {
            warm_errors.push(err);
            if warm_errors.len() >= 3 {
                bail!("connections to {target} fail: {}", warm_errors[0]);
            }
        }
    }
    let started = Instant::now();
    while started.elapsed() < deadline {
        let t = Instant::now();
        match one(target, &mut buf) {
            Ok(()) => histogram.record(micros(t.elapsed()).max(1))?,
            Err(_) => errors += 1,
        }
        if errors > 1000 && histogram.is_empty() {
            bail!("no connection to {target} succeeds");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"count\":{},\"secs\":{secs},\"errors\":{errors},\"p50\":{},\"p90\":{},\"p99\":{}}}",
        histogram.len(),
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.9),
        histogram.value_at_quantile(0.99)
    );
    Ok(())
}

fn one(target: SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_nodelay(true)?;
    stream.write_all(b"GET\n")?;
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf[total..])?;
        if n == 0 {
            break;
        }
        total += n;
    }
    if total == 0 {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(())
}
