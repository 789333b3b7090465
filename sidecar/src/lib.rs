//! pay-sidecar: finishes stuck redis-pay payments through the payment
//! provider and alerts Slack. [`run`] wires the parts; each part sits behind
//! a seam so tests can swap it.

pub mod alerts;
pub mod daemon;
pub mod metrics;
pub mod options;
pub mod provider;
pub mod standin;
pub mod store;
pub mod worker;

pub use daemon::run;
