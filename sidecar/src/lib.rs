//! pay-sidecar: finishes stuck redis-pay payments through the payment
//! provider and alerts Slack. [`run`] wires the parts; each part sits behind
//! a seam so tests can swap it.

pub mod alerts;
pub mod daemon;
pub mod metrics;
pub mod options;
pub mod provider;
pub mod store;
#[cfg(test)]
mod testing;
pub mod worker;

pub use daemon::run;

/// Wall-clock Unix milliseconds: alert bookkeeping and health ages (the
/// records' own times come from the server's clock).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
