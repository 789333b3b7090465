//! The run's clock: milliseconds since the clients started (0 before), so
//! the history, the ledger, the alerts and the fault schedule share one time.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Starts the clock (once); returns the epoch.
pub fn begin() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

pub fn ms() -> u64 {
    EPOCH.get().map_or(0, |e| e.elapsed().as_millis() as u64)
}
