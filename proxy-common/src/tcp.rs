//! TCP header flags and the conntrack state machine the datapath keeps per flow.

use crate::{TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED, TCP_STATE_SYN};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The state of a flow after a segment with `flags`: SYN opens, an ACK establishes, FIN or RST
/// closes. A closing flow stays closing (the last ACKs of a close must not reopen it) unless a
/// new handshake reuses the tuple: a SYN, or the SYN-ACK answering it (the datapath only
/// records a SYN-ACK on a closed flow after [`syn_answers_flow`] said it belongs).
/// 0 means no state yet.
pub const fn next_state(state: u8, flags: u8) -> u8 {
    if flags & (FIN | RST) != 0 {
        TCP_STATE_CLOSING
    } else if flags & SYN != 0 && flags & ACK == 0 {
        TCP_STATE_SYN
    } else if flags & ACK != 0 && (state != TCP_STATE_CLOSING || flags & SYN != 0) {
        TCP_STATE_ESTABLISHED
    } else {
        state
    }
}

/// Whether a segment with SYN set that travels in the reply direction of a tracked flow
/// (backend to client) belongs to that flow, from the states of its forward entry (`None`:
/// gone) and its reply entry.
///
/// It does while the client's last segment through the translation was a SYN (a handshake,
/// new or reopening the tuple, is under way), and while neither side has closed (a
/// retransmitted SYN-ACK). Once the flow closed with no new SYN through the translation, the
/// SYN answers a connection that never went through it: the client reused its port to reach
/// the backend directly, and translating the answer would hijack that connection.
pub const fn syn_answers_flow(forward_state: Option<u8>, reply_state: u8) -> bool {
    match forward_state {
        None => false,
        Some(TCP_STATE_SYN) => true,
        Some(state) => state != TCP_STATE_CLOSING && reply_state != TCP_STATE_CLOSING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_connection_through_its_life() {
        let mut state = 0;
        for (flags, expected) in [
            (SYN, TCP_STATE_SYN),
            (SYN | ACK, TCP_STATE_ESTABLISHED),
            (ACK, TCP_STATE_ESTABLISHED),
            (PSH | ACK, TCP_STATE_ESTABLISHED),
            (FIN | ACK, TCP_STATE_CLOSING),
            (ACK, TCP_STATE_CLOSING),
            (SYN, TCP_STATE_SYN),
        ] {
            state = next_state(state, flags);
            assert_eq!(state, expected, "after flags {flags:#04x}");
        }
    }

    #[test]
    fn rst_closes_from_any_state() {
        for state in [0, TCP_STATE_SYN, TCP_STATE_ESTABLISHED, TCP_STATE_CLOSING] {
            assert_eq!(next_state(state, RST), TCP_STATE_CLOSING);
        }
    }

    #[test]
    fn a_tuple_reused_through_the_translation_reopens() {
        // The client's new SYN reopens the forward entry, the backend's SYN-ACK the reply one.
        assert_eq!(next_state(TCP_STATE_CLOSING, SYN), TCP_STATE_SYN);
        assert_eq!(
            next_state(TCP_STATE_CLOSING, SYN | ACK),
            TCP_STATE_ESTABLISHED
        );
        assert_eq!(next_state(TCP_STATE_CLOSING, ACK), TCP_STATE_CLOSING);
    }

    #[test]
    fn a_handshake_answer_belongs_to_an_open_or_reopening_flow_only() {
        use crate::TCP_STATE_ESTABLISHED as EST;
        const CLOSING: u8 = TCP_STATE_CLOSING;
        for (forward, reply, belongs, why) in [
            (
                Some(TCP_STATE_SYN),
                TCP_STATE_SYN,
                true,
                "the flow's own handshake",
            ),
            (
                Some(TCP_STATE_SYN),
                CLOSING,
                true,
                "a new SYN through the service reopened it",
            ),
            (
                Some(EST),
                EST,
                true,
                "a retransmitted SYN-ACK of an open flow",
            ),
            (
                Some(EST),
                TCP_STATE_SYN,
                true,
                "the client's ACK passed, the SYN-ACK is resent",
            ),
            (Some(CLOSING), CLOSING, false, "closed both ways"),
            (Some(CLOSING), EST, false, "the client reset the flow"),
            (Some(EST), CLOSING, false, "the backend reset the flow"),
            (None, EST, false, "the forward entry is gone"),
        ] {
            assert_eq!(syn_answers_flow(forward, reply), belongs, "{why}");
        }
    }

    #[test]
    fn a_segment_without_flags_keeps_the_state() {
        assert_eq!(next_state(TCP_STATE_SYN, 0), TCP_STATE_SYN);
        assert_eq!(next_state(0, 0), 0);
    }
}
