//! Sluice's test harness: packet fixtures and network-namespace guards shared by the
//! integration tests.

pub mod netns;
pub mod packet;
