//! From desired state to map contents: `plan` decides what the datapath should hold, `apply`
//! writes only the difference, in an order that never shows the datapath a half-written service.

mod apply;
mod plan;

pub use apply::{AffinityView, ApplyStats, Reconciler};
pub use plan::{BackendAddr, Frontend, FrontendPlan, Plan, SkippedPlan, local_ready_endpoints};
