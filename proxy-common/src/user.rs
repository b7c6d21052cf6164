//! `aya::Pod` for every map type, so the daemon can read and write them.

use crate::{
    AffinityKey, AffinityMatchKey, AffinityValue, Backend, Config, CtEntry, CtKey, NodeAddr,
    ServiceKey, ServiceMeta, ServiceValue, SockRevNatKey, SockRevNatValue, klog::LogRecord,
    stats::Traffic,
};

macro_rules! aya_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]` and `bytemuck::Pod`: plain bytes, no padding.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

aya_pod!(
    AffinityKey,
    AffinityMatchKey,
    AffinityValue,
    Backend,
    Config,
    CtEntry,
    CtKey,
    NodeAddr,
    ServiceKey,
    ServiceMeta,
    ServiceValue,
    SockRevNatKey,
    SockRevNatValue,
    Traffic,
    LogRecord,
);

impl ServiceMeta {
    /// Builds the metadata record, truncating the name to fit.
    pub fn new(name: &str, kind: u8, port: u16, proto: u8) -> Self {
        let mut meta = Self {
            name: [0; 120],
            kind,
            _pad: [0; 3],
            port: port.to_be(),
            proto,
            _pad2: 0,
        };
        let mut len = name.len().min(meta.name.len());
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        meta.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        meta
    }

    /// The name, up to the first NUL.
    pub fn name(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}
