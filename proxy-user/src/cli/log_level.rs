//! `sluice log-level LEVEL`: how verbose the kernel programs are, changed in the pinned
//! configuration map while they run.

use std::path::Path;

use anyhow::{Context as _, Result};
use proxy_common::{
    LOG_LEVEL_DEBUG, LOG_LEVEL_ERROR, LOG_LEVEL_INFO, LOG_LEVEL_OFF, LOG_LEVEL_TRACE,
    LOG_LEVEL_WARN,
};

use crate::datapath::Maps;

/// Kernel log levels, as aya-log numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<KernelLogLevel> for u32 {
    fn from(level: KernelLogLevel) -> u32 {
        match level {
            KernelLogLevel::Off => LOG_LEVEL_OFF,
            KernelLogLevel::Error => LOG_LEVEL_ERROR,
            KernelLogLevel::Warn => LOG_LEVEL_WARN,
            KernelLogLevel::Info => LOG_LEVEL_INFO,
            KernelLogLevel::Debug => LOG_LEVEL_DEBUG,
            KernelLogLevel::Trace => LOG_LEVEL_TRACE,
        }
    }
}

pub fn run(pin_dir: &Path, level: u32) -> Result<()> {
    let mut maps = Maps::open_pinned(pin_dir)?;
    let mut config = maps
        .config
        .get(&0, 0)
        .context("read the datapath configuration")?;
    let before = config.log_level;
    config.log_level = level;
    maps.config
        .set(0, &config, 0)
        .context("write the datapath configuration")?;
    println!("kernel log level: {level} (was {before}; 0 off .. 5 trace)");
    Ok(())
}
