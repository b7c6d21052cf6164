//! Sluice's test harness: packet fixtures, packet capture and network-namespace guards shared
//! by the integration tests.

pub mod capture;
pub mod datapath;
pub mod netns;
pub mod packet;
