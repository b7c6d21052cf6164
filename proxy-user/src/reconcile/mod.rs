//! From desired state to map contents: `plan` decides what the datapath should hold, `planner`
//! keeps that up to date one changed service at a time, and `apply` writes only the
//! difference, in an order that never shows the datapath a half-written service.

mod apply;
mod plan;
mod planner;
/// For tests (here and in the test and bench crates); always built, so those crates build
/// the same proxy-user as the binary.
#[doc(hidden)]
pub mod random_state;
pub mod tables;
#[cfg(test)]
mod tests;

pub use apply::{AffinityView, ApplyStats, Reconciler, RetiredUdpSlot};
pub use plan::{
    BackendAddr, Frontend, FrontendPlan, Plan, PlanNode, SkippedPlan, choose_endpoints,
    local_ready_endpoints,
};
pub use planner::{PlanChanges, Planner};
