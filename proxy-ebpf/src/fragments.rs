//! Fragmented datagrams: a first fragment's ports are remembered by what a datagram's
//! fragments share (addresses, protocol, IP ID), so the later ones, which carry no L4 header,
//! are translated with their flow (kube-proxy gets this from netfilter's defragmentation;
//! Cilium keeps a map like this one).

use proxy_common::{FragKeyOf, FragPorts};

use crate::{
    error::Error,
    family::Family,
    packet::{Fragment, Packet},
};

/// Remembers a first fragment's ports, and gives a later fragment its datagram's; a later
/// fragment whose first one was not seen here (it overtook it, or was forgotten) is
/// `Fragment`: passed untranslated.
#[inline(always)]
pub fn resolve<F: Family>(pkt: &mut Packet<F::Addr>) -> Result<(), Error> {
    let id = match pkt.fragment {
        Fragment::Whole => return Ok(()),
        Fragment::First { id } | Fragment::Later { id } => id,
    };
    let key = FragKeyOf {
        saddr: pkt.tuple.saddr,
        daddr: pkt.tuple.daddr,
        id,
        proto: pkt.tuple.proto,
        _pad: [0; 3],
    };
    if pkt.has_l4() {
        let ports = FragPorts {
            sport: pkt.tuple.sport,
            dport: pkt.tuple.dport,
        };
        F::remember_fragment(&key, ports);
        return Ok(());
    }
    let ports = F::fragment_ports(&key).ok_or(Error::Fragment)?;
    pkt.tuple.sport = ports.sport;
    pkt.tuple.dport = ports.dport;
    Ok(())
}
