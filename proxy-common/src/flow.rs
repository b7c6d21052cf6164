//! The two conntrack keys of one flow, each derived from the other key and its entry.

use crate::{
    Address, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, CtEntryOf, CtKeyOf, IPPROTO_TCP,
    TCP_STATE_ESTABLISHED, tcp,
};

/// The reply key a forward entry implies: its rewritten tuple, reversed.
#[inline]
pub fn reply_key<A: Address>(forward_key: &CtKeyOf<A>, forward: &CtEntryOf<A>) -> CtKeyOf<A> {
    CtKeyOf {
        saddr: or_addr(forward.new_daddr, forward_key.daddr),
        daddr: or_addr(forward.new_saddr, forward_key.saddr),
        sport: or_u16(forward.new_dport, forward_key.dport),
        dport: or_u16(forward.new_sport, forward_key.sport),
        proto: forward_key.proto,
        dir: CT_DIR_REPLY,
        _pad: 0,
    }
}

/// The forward key a reply entry belongs to: the client and the frontend it restores. A local
/// reply goes to the client itself; a SNAT reply goes to the SNAT address and its entry names
/// the client.
#[inline]
pub fn forward_key<A: Address>(reply_key: &CtKeyOf<A>, reply: &CtEntryOf<A>) -> CtKeyOf<A> {
    let (client, client_port) = if reply.flags & CT_F_SNAT != 0 {
        (reply.new_daddr, reply.new_dport)
    } else {
        (reply_key.daddr, reply_key.dport)
    };
    CtKeyOf {
        saddr: client,
        daddr: reply.new_saddr,
        sport: client_port,
        dport: reply.new_sport,
        proto: reply_key.proto,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

/// Whether a reply packet (`flags` its TCP flags) that left its flow's reply entry in
/// `tcp_state` (the state after it) confirms the flow, which then leaves the LRU map of new
/// flows for the established map: any UDP reply; a TCP reply once the connection is
/// established, not by a SYN-ACK (the handshake is not complete) and not while closing.
#[inline]
pub const fn reply_confirms(proto: u8, tcp_state: u8, flags: u8) -> bool {
    if proto != IPPROTO_TCP {
        return true;
    }
    tcp_state == TCP_STATE_ESTABLISHED && flags & tcp::SYN == 0
}

/// A zero `new_*` field leaves the header field as it is.
#[inline]
fn or_addr<A: Address>(new: A, old: A) -> A {
    if new.is_unset() { old } else { new }
}

const fn or_u16(new: u16, old: u16) -> u16 {
    if new != 0 { new } else { old }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CT_F_LOCAL, CtEntry, CtKey, IPPROTO_TCP};

    const CLIENT: u32 = 0x6400_12c6;
    const FRONTEND: u32 = 0x0b00_12c6;
    const BACKEND: u32 = 0x0a01_12c6;
    const SNAT: u32 = 0x0c00_12c6;

    fn client_key() -> CtKey {
        CtKey {
            saddr: CLIENT,
            daddr: FRONTEND,
            sport: 40000u16.to_be(),
            dport: 30080u16.to_be(),
            proto: IPPROTO_TCP,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        }
    }

    #[test]
    fn local_flow_keys_round_trip() {
        let forward = CtEntry {
            new_daddr: BACKEND,
            new_dport: 8080u16.to_be(),
            flags: CT_F_LOCAL,
            ..CtEntry::default()
        };
        let reply = CtEntry {
            new_saddr: FRONTEND,
            new_sport: 30080u16.to_be(),
            flags: CT_F_LOCAL,
            ..CtEntry::default()
        };
        let key = reply_key(&client_key(), &forward);
        assert_eq!((key.saddr, key.daddr), (BACKEND, CLIENT));
        assert_eq!((key.sport, key.dport), (8080u16.to_be(), 40000u16.to_be()));
        assert_eq!(key.dir, CT_DIR_REPLY);
        assert_eq!(forward_key(&key, &reply), client_key());
    }

    #[test]
    fn snat_flow_keys_round_trip() {
        let forward = CtEntry {
            new_saddr: SNAT,
            new_sport: 61000u16.to_be(),
            new_daddr: BACKEND,
            new_dport: 8080u16.to_be(),
            flags: CT_F_SNAT,
            ..CtEntry::default()
        };
        let reply = CtEntry {
            new_saddr: FRONTEND,
            new_sport: 30080u16.to_be(),
            new_daddr: CLIENT,
            new_dport: 40000u16.to_be(),
            flags: CT_F_SNAT,
            ..CtEntry::default()
        };
        let key = reply_key(&client_key(), &forward);
        assert_eq!((key.saddr, key.daddr), (BACKEND, SNAT));
        assert_eq!((key.sport, key.dport), (8080u16.to_be(), 61000u16.to_be()));
        assert_eq!(forward_key(&key, &reply), client_key());
    }

    #[test]
    fn replies_confirm_udp_at_once_and_tcp_once_established() {
        use tcp::{ACK, FIN, PSH, RST, SYN};

        use crate::{IPPROTO_UDP, TCP_STATE_CLOSING, TCP_STATE_SYN};
        assert!(reply_confirms(IPPROTO_UDP, 0, 0));
        // The SYN-ACK leaves the reply entry established, but the handshake is not complete.
        let after_syn_ack = tcp::next_state(TCP_STATE_SYN, SYN | ACK);
        assert_eq!(after_syn_ack, TCP_STATE_ESTABLISHED);
        assert!(!reply_confirms(IPPROTO_TCP, after_syn_ack, SYN | ACK));
        // The backend's next segment does.
        let after_ack = tcp::next_state(after_syn_ack, ACK);
        assert!(reply_confirms(IPPROTO_TCP, after_ack, ACK));
        assert!(reply_confirms(IPPROTO_TCP, after_ack, PSH | ACK));
        // A reply that closes, or arrives while closing, does not.
        for flags in [FIN | ACK, RST] {
            let state = tcp::next_state(after_ack, flags);
            assert_eq!(state, TCP_STATE_CLOSING);
            assert!(!reply_confirms(IPPROTO_TCP, state, flags));
        }
        assert!(!reply_confirms(
            IPPROTO_TCP,
            tcp::next_state(TCP_STATE_CLOSING, ACK),
            ACK
        ));
    }
}
