//! Polling helpers that fail with a clear message instead of hanging or sleeping blindly.

use std::{
    fmt::Display,
    time::{Duration, Instant},
};

/// Polls `cond` every `poll_interval` until it returns true; panics (at the caller's line)
/// if it is still false after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, poll_interval: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        polls += 1;
        if cond() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "wait_until: condition still false after {timeout:?} ({polls} polls, one every \
             {poll_interval:?})"
        );
        std::thread::sleep(poll_interval);
    }
}

/// Polls `f` every `poll_interval` until it returns Ok and returns that value; panics after
/// `timeout` with `what` and the last error.
#[track_caller]
pub fn wait_for<T, E: Display>(
    what: &str,
    timeout: Duration,
    poll_interval: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        polls += 1;
        match f() {
            Ok(value) => return value,
            Err(e) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} ({polls} polls) waiting for {what}; last: {e}")
            }
            Err(_) => std::thread::sleep(poll_interval),
        }
    }
}
