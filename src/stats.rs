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

pub static COUNTERS: [(&str, &Counter); 7] = [
    ("created", &CREATED),
    ("duplicates", &DUPLICATES),
    ("mismatches", &MISMATCHES),
    ("updates", &UPDATES),
    ("errors", &ERRORS),
    ("loads", &LOADS),
    ("index_misses", &INDEX_MISSES),
];
