//! TCP header flags and the conntrack state machine the datapath keeps per flow.

use crate::{TCP_STATE_CLOSING, TCP_STATE_ESTABLISHED, TCP_STATE_SYN};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The state of a flow after a segment with `flags`: SYN opens, an ACK establishes, FIN or RST
/// closes. A closing flow stays closing (the last ACKs of a close must not reopen it) unless a
/// new SYN reuses the tuple. 0 means no state yet.
pub const fn next_state(state: u8, flags: u8) -> u8 {
    if flags & (FIN | RST) != 0 {
        TCP_STATE_CLOSING
    } else if flags & SYN != 0 && flags & ACK == 0 {
        TCP_STATE_SYN
    } else if flags & ACK != 0 && state != TCP_STATE_CLOSING {
        TCP_STATE_ESTABLISHED
    } else {
        state
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
    fn a_segment_without_flags_keeps_the_state() {
        assert_eq!(next_state(TCP_STATE_SYN, 0), TCP_STATE_SYN);
        assert_eq!(next_state(0, 0), 0);
    }
}
