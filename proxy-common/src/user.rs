//! `aya::Pod` for every map type, so the daemon can read and write them.

use crate::{
    AffinityKey, AffinityKey6, AffinityMatchKey, AffinityValue, Backend, Backend6, Config, Config6,
    CtEntry, CtEntry6, CtKey, CtKey6, NodeAddr, ServiceKey, ServiceKey6, ServiceMeta, ServiceValue,
    SkippedKey, SkippedService, SockRevNatKey, SockRevNatKey6, SockRevNatValue, SockRevNatValue6,
    SockTermKey, SockTermKey6, SourceRange, SourceRange6, stats::Traffic,
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
    SkippedKey,
    SkippedService,
    SockRevNatKey,
    SockRevNatValue,
    SockTermKey,
    Traffic,
    SourceRange,
    AffinityKey6,
    Backend6,
    Config6,
    CtEntry6,
    CtKey6,
    ServiceKey6,
    SockRevNatKey6,
    SockRevNatValue6,
    SockTermKey6,
    SourceRange6,
);

/// The metadata of one frontend, as [`ServiceMeta::new`] takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaFields {
    /// `SVC_KIND_*`.
    pub kind: u8,
    /// `SVC_TYPE_*`.
    pub svc_type: u8,
    /// `POLICY_F_*`.
    pub policy: u8,
    pub proto: u8,
    /// Host byte order.
    pub port: u16,
    /// Host byte order; 0 when none.
    pub health_check_port: u16,
}

impl ServiceMeta {
    /// Builds the metadata record, truncating the name to fit.
    pub fn new(name: &str, fields: MetaFields) -> Self {
        let mut meta = Self {
            name: [0; 112],
            kind: fields.kind,
            svc_type: fields.svc_type,
            policy: fields.policy,
            proto: fields.proto,
            port: fields.port.to_be(),
            health_check_port: fields.health_check_port.to_be(),
            _pad: [0; 8],
        };
        copy_str(&mut meta.name, name);
        meta
    }

    /// The name, up to the first NUL.
    pub fn name(&self) -> &str {
        str_of(&self.name)
    }
}

impl SkippedKey {
    pub fn new(name: &str) -> Self {
        let mut key = Self { name: [0; 128] };
        copy_str(&mut key.name, name);
        key
    }

    pub fn name(&self) -> &str {
        str_of(&self.name)
    }
}

impl SkippedService {
    pub fn new(svc_type: u8, reason: &str) -> Self {
        let mut value = Self {
            svc_type,
            _pad: [0; 3],
            reason: [0; 188],
        };
        copy_str(&mut value.reason, reason);
        value
    }

    pub fn reason(&self) -> &str {
        str_of(&self.reason)
    }
}

/// Copies `text` into a NUL-padded field, truncated at a character boundary.
fn copy_str(field: &mut [u8], text: &str) {
    let mut len = text.len().min(field.len());
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
}

/// A NUL-padded UTF-8 field, up to the first NUL.
fn str_of(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..end]).unwrap_or("?")
}

/// The one encoding of `SVC_V1` entries, shared by the reconciler, the tests and the bench.
impl ServiceKey {
    /// The key of `slot` of a frontend: slot 0 is the service entry, 1..=count its backends.
    pub fn new(frontend: core::net::SocketAddrV4, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            addr: crate::net::ip_to_net(*frontend.ip()),
            port: crate::net::port_to_net(frontend.port()),
            slot,
            proto,
            scope,
            _pad: 0,
        }
    }
}

impl ServiceValue {
    /// Slot 0 of a frontend: `count` backend slots to choose from (0: refuse).
    pub fn head(service_id: u32, count: u16, flags: u16, affinity_timeout: u32) -> Self {
        Self {
            backend_id: 0,
            count,
            flags,
            service_id,
            affinity_timeout,
        }
    }

    /// A backend slot of the frontend whose slot 0 is `self`.
    #[must_use]
    pub fn slot(self, backend_id: u32) -> Self {
        Self { backend_id, ..self }
    }
}
