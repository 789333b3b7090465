//! The module's counters, shown by `INFO pay`.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn incr(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// For gauges: the latest value.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// For high-water marks.
    pub fn raise(&self, n: u64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
}

/// PAY.CACHE calls that created a payment.
pub static CREATED: Counter = Counter::new();
/// PAY.CACHE calls that found the same payment already there.
pub static DUPLICATES: Counter = Counter::new();
/// PAY.CACHE calls refused because the key is bound to other parameters.
pub static MISMATCHES: Counter = Counter::new();
/// PAY.UPDATE calls that changed a record.
pub static UPDATES: Counter = Counter::new();
/// Error replies of any PAY.* command.
pub static ERRORS: Counter = Counter::new();
/// Records applied by PAY.LOAD (replication and AOF).
pub static LOADS: Counter = Counter::new();
/// Index entries whose key no longer held the same pending record. Always 0
/// unless the index has a bug: tests assert it.
pub static INDEX_MISSES: Counter = Counter::new();

/// Payments the sweeper flagged stale.
pub static FLAGGED: Counter = Counter::new();
/// Sweeper ticks run (on a primary).
pub static SWEEPS: Counter = Counter::new();
/// Duration of the last and of the longest sweep tick, in microseconds.
pub static SWEEP_LAST_US: Counter = Counter::new();
pub static SWEEP_MAX_US: Counter = Counter::new();
/// Most payments one tick handled: never above the sweep budget.
pub static SWEEP_MAX_BATCH: Counter = Counter::new();
/// Leases handed out by PAY.CLAIM.
pub static CLAIMS: Counter = Counter::new();
/// Claims that took over a record whose previous lease had run out.
pub static LEASES_EXPIRED: Counter = Counter::new();
/// PAY.UPDATE calls refused by FENCE: a stale worker's late write.
pub static FENCED: Counter = Counter::new();

/// Expiries removed from unresolved payments (an operator's EXPIRE, a
/// RESTORE with a TTL): see `guard`.
pub static EXPIRIES_REMOVED: Counter = Counter::new();
/// Unresolved payments that expired or were evicted anyway (reported on
/// servers with key events): each one is in the log, at warning level.
pub static UNRESOLVED_LOST: Counter = Counter::new();

pub static COUNTERS: [(&str, &Counter); 17] = [
    ("created", &CREATED),
    ("duplicates", &DUPLICATES),
    ("mismatches", &MISMATCHES),
    ("updates", &UPDATES),
    ("errors", &ERRORS),
    ("loads", &LOADS),
    ("index_misses", &INDEX_MISSES),
    ("flagged", &FLAGGED),
    ("sweeps", &SWEEPS),
    ("sweep_last_us", &SWEEP_LAST_US),
    ("sweep_max_us", &SWEEP_MAX_US),
    ("sweep_max_batch", &SWEEP_MAX_BATCH),
    ("claims", &CLAIMS),
    ("leases_expired", &LEASES_EXPIRED),
    ("fenced", &FENCED),
    ("expiries_removed", &EXPIRIES_REMOVED),
    ("unresolved_lost", &UNRESOLVED_LOST),
];
