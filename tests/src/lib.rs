//! Sluice's netns test harness: namespaces, cgroups, bpffs, a two-node cluster and its workloads.
//!
//! Everything here creates its own uniquely named resources (see [`unique`]) and removes them
//! in `Drop`, so tests can run in parallel and clean up even when they panic. A test process
//! that dies without unwinding (SIGKILL, abort, a CI timeout) takes its child processes with
//! it ([`spawner`]), and the next harness run removes the rest ([`sweep`]). Build the
//! cluster with [`Cluster::new`], start the echo servers with [`Cluster::start_pods`], send
//! traffic with [`Cluster::request`], and run the daemon with [`SluiceDaemon::start`].

pub mod addresses;
pub mod bins;
pub mod bpffs;
pub mod capture;
pub mod cgroup;
pub mod cluster_mode;
pub mod container;
pub mod datapath;
pub mod echo;
pub mod fake_apiserver;
pub mod http;
pub mod isolated_netns;
pub mod machine;
pub mod manifests;
pub mod netns;
pub mod packet;
pub mod packet_fuzz;
pub mod process;
pub mod scenario;
pub mod sluice;
pub mod spawner;
pub mod sweep;
pub mod tempdir;
pub mod topology;
pub mod udp_session;
pub mod unique;
pub mod wait;
pub mod wiring;
pub mod workload;
pub mod xdp_pass;

pub use echo::{Proto, Reply};
pub use process::{Child, Finished};
pub use sluice::SluiceDaemon;
pub use topology::{
    CLIENT_IP, CLIENT_IP6, Cluster, Family, Host, Node, Pod, SERVICE_CIDR, SERVICE_CIDR6,
};
pub use udp_session::UdpSession;
pub use wait::{wait_for, wait_until};
pub use workload::{HeldConn, Place, TCP_PORTS, UDP_PORTS};
