//! Child-process guards: output drained in the background, killed by PID and reaped on drop.
//!
//! Children are started through [`crate::spawner`], so they also die when the test process
//! dies without running any Drop (SIGKILL, abort, a CI timeout).

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How many trailing lines of each stream go into error messages.
const REPORT_LINES: usize = 60;

/// What a child wrote so far. Reader threads keep draining the pipes so they never fill up
/// and block the child.
#[derive(Default)]
struct Streams {
    stdout: Vec<String>,
    stderr: Vec<String>,
    stdout_open: bool,
    stderr_open: bool,
}

struct Captured {
    streams: Mutex<Streams>,
    changed: Condvar,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on the condvar until `deadline`; returns the guard again.
    fn wait_until<'a>(
        &self,
        guard: MutexGuard<'a, Streams>,
        deadline: Instant,
    ) -> MutexGuard<'a, Streams> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(guard, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

fn drain(reader: impl Read + Send + 'static, captured: Arc<Captured>, is_stdout: bool) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    let mut s = captured.lock();
                    if is_stdout {
                        s.stdout.push(line);
                    } else {
                        s.stderr.push(line);
                    }
                    drop(s);
                    captured.changed.notify_all();
                }
            }
        }
        let mut s = captured.lock();
        if is_stdout {
            s.stdout_open = false;
        } else {
            s.stderr_open = false;
        }
        drop(s);
        captured.changed.notify_all();
    });
}

fn tail(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(REPORT_LINES);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "  ... ({start} earlier lines)");
    }
    for line in &lines[start..] {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A running child process. Dropping it kills it (SIGKILL, by PID) and reaps it; if this
/// process dies first, the kernel kills it (`PR_SET_PDEATHSIG`, see [`crate::spawner`]).
pub struct Child {
    name: String,
    inner: std::process::Child,
    captured: Arc<Captured>,
    stdin: Option<ChildStdin>,
}

impl Child {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr captured.
    pub fn spawn(name: impl Into<String>, cmd: Command) -> Result<Child> {
        Self::spawn_inner(name.into(), cmd, false)
    }

    /// Like [`Child::spawn`], with a pipe to the child's stdin (see [`Child::write_line`]).
    pub fn spawn_with_stdin(name: impl Into<String>, cmd: Command) -> Result<Child> {
        Self::spawn_inner(name.into(), cmd, true)
    }

    fn spawn_inner(name: String, mut cmd: Command, stdin: bool) -> Result<Child> {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("spawning {name}: {cmd:?}");
        let mut inner = crate::spawner::spawn(cmd).context(what)?;
        let captured = Arc::new(Captured {
            streams: Mutex::new(Streams {
                stdout_open: true,
                stderr_open: true,
                ..Streams::default()
            }),
            changed: Condvar::new(),
        });
        drain(
            inner.stdout.take().expect("stdout is piped"),
            captured.clone(),
            true,
        );
        drain(
            inner.stderr.take().expect("stderr is piped"),
            captured.clone(),
            false,
        );
        let stdin = inner.stdin.take();
        Ok(Child {
            name,
            inner,
            captured,
            stdin,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Everything written to stdout so far, one entry per line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.captured.lock().stdout.clone()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        join_lines(&self.captured.lock().stdout)
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        join_lines(&self.captured.lock().stderr)
    }

    /// The last lines of stdout and stderr, for error messages.
    pub fn output_report(&self) -> String {
        let s = self.captured.lock();
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.name,
            tail(&s.stdout),
            self.name,
            tail(&s.stderr)
        )
    }

    /// Waits for a stdout line (from the start of the output) matching `pred` and returns it.
    /// Fails on timeout or when stdout closes first (the child died), showing its output.
    pub fn wait_for_stdout(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut s = self.captured.lock();
        loop {
            if let Some(line) = s.stdout[seen..].iter().find(|l| pred(l)) {
                return Ok(line.clone());
            }
            seen = s.stdout.len();
            if !s.stdout_open {
                drop(s);
                return Err(self.died_error("before printing the expected line"));
            }
            if Instant::now() >= deadline {
                drop(s);
                bail!(
                    "{} did not print the expected line within {timeout:?}\n{}",
                    self.name,
                    self.output_report()
                );
            }
            s = self.captured.wait_until(s, deadline);
        }
    }

    /// Waits until stdout has more than `index` lines and returns line `index` (0-based).
    pub fn wait_stdout_line(&mut self, index: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut s = self.captured.lock();
        loop {
            if let Some(line) = s.stdout.get(index) {
                return Ok(line.clone());
            }
            if !s.stdout_open {
                drop(s);
                return Err(self.died_error(&format!("before stdout line {}", index + 1)));
            }
            if Instant::now() >= deadline {
                drop(s);
                bail!(
                    "{} printed no stdout line {} within {timeout:?}\n{}",
                    self.name,
                    index + 1,
                    self.output_report()
                );
            }
            s = self.captured.wait_until(s, deadline);
        }
    }

    /// Waits (bounded) until both pipes reached EOF, so the captured output is complete.
    pub fn wait_output_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.captured.lock();
        while s.stdout_open || s.stderr_open {
            if Instant::now() >= deadline {
                return false;
            }
            s = self.captured.wait_until(s, deadline);
        }
        true
    }

    fn died_error(&mut self, what: &str) -> anyhow::Error {
        // stdout closing usually means the process exited; give it a moment to be reaped.
        let status = match self.wait_timeout(Duration::from_secs(1)) {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_owned(),
            Err(e) => format!("unknown ({e})"),
        };
        self.wait_output_closed(Duration::from_secs(1));
        anyhow::anyhow!(
            "{} closed stdout {what} (status: {status})\n{}",
            self.name,
            self.output_report()
        )
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("{}: stdin is not piped or already closed", self.name);
        };
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}'s stdin", self.name))
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// `Some(status)` once the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.inner.try_wait()?)
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.inner.try_wait()? {
            return Ok(Some(status));
        }
        let deadline = Instant::now() + timeout;
        // A pidfd becomes readable when the process exits: no sleep-polling needed.
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot be reused.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid() as libc::pid_t, 0) };
        if raw >= 0 {
            // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
            let fd = i32::try_from(raw).expect("pidfd_open returns a descriptor, an int");
            // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut pfd = libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&raw mut pfd, 1, ms) };
                if r < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return Ok(self.inner.try_wait()?);
            }
        }
        // Kernels without pidfd_open: poll.
        loop {
            if let Some(status) = self.inner.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to the child unless it has already exited and been reaped (its PID
    /// might belong to someone else by then).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.inner.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on our own unreaped child.
        if unsafe { libc::kill(self.pid() as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signalling {} (pid {})", self.name, self.pid()));
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        Ok(self.inner.wait()?)
    }

    /// SIGTERM, then SIGKILL if the child has not exited after `grace`.
    /// Returns the exit status and whether SIGKILL was needed.
    pub fn terminate(&mut self, grace: Duration) -> Result<(ExitStatus, bool)> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok((status, false));
        }
        Ok((self.kill()?, true))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.inner.try_wait() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGKILL) };
            if let Err(e) = self.inner.wait() {
                eprintln!("warning: reaping {} (pid {}): {e}", self.name, self.pid());
            }
        }
    }
}

fn join_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The result of a finished command.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Fails (with the output) unless the command exited 0.
    pub fn check(self, what: &str) -> Result<Finished> {
        if !self.status.success() {
            bail!(
                "{what} failed ({})\n--- stdout ---\n{}--- stderr ---\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs `cmd` to completion, killing it if it takes longer than `timeout`.
pub fn run(name: impl Into<String>, cmd: Command, timeout: Duration) -> Result<Finished> {
    let mut child = Child::spawn(name, cmd)?;
    let Some(status) = child.wait_timeout(timeout)? else {
        child.kill()?;
        child.wait_output_closed(Duration::from_secs(1));
        bail!(
            "{} did not finish within {timeout:?}; killed\n{}",
            child.name,
            child.output_report()
        );
    };
    // A grandchild could keep the pipes open; do not hang on it.
    child.wait_output_closed(Duration::from_secs(5));
    Ok(Finished {
        status,
        stdout: child.stdout(),
        stderr: child.stderr(),
    })
}
