//! The command line, and every timing of the run in one place. Production
//! timings are minutes; here they are compressed to seconds so that stale
//! payments, retries, `unknown`, alerts and failovers all happen many times
//! in a minute.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Alerts {
    Named,
    Counted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Follow {
    /// `--sentinel` if this pay-sidecar has it, else the harness.
    Auto,
    /// The sidecars find the primary through the Sentinels themselves.
    Sentinel,
    /// The sidecars are pointed at the current primary and restarted by the
    /// harness after each failover.
    Harness,
}

/// redis-pay under a nemesis: a primary and a replica behind three
/// Sentinels, two pay-sidecars, application clients, a provider stand-in
/// with a ledger and a Slack stand-in; faults from a seeded schedule; then a
/// checker over the whole history. Writes the report (CHAOS.md) and exits
/// non-zero if any invariant was violated.
#[derive(Clone, Debug, Parser)]
#[command(name = "pay-chaos")]
pub struct Options {
    /// How long clients run (faults stop some seconds before the end).
    #[arg(long, env = "CHAOS_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(20..=86_400))]
    pub seconds: u64,

    /// The schedule's seed (faults, the clients' choices); random if unset.
    #[arg(long, env = "CHAOS_SEED")]
    pub seed: Option<u64>,

    /// Application threads.
    #[arg(long, env = "CHAOS_CLIENTS", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub clients: u16,

    /// Where the report goes.
    #[arg(long, env = "CHAOS_REPORT", default_value = "CHAOS.md")]
    pub report: PathBuf,

    /// Where logs, the history and the ledger go (one directory per seed).
    #[arg(long, env = "CHAOS_OUT", default_value = "target/chaos")]
    pub out: PathBuf,

    /// The Redis server binary.
    #[arg(long, env = "PAY_SERVER", default_value = "redis-server")]
    pub server: String,

    /// The Sentinel binary.
    #[arg(long, env = "CHAOS_SENTINEL", default_value = "redis-sentinel")]
    pub sentinel: String,

    /// The module (default: libredis_pay.so beside this binary).
    #[arg(long, env = "PAY_MODULE")]
    pub module: Option<PathBuf>,

    /// The sidecar under test (default: pay-sidecar beside this binary).
    #[arg(long, env = "PAY_SIDECAR")]
    pub sidecar: Option<PathBuf>,

    /// The servers' `min-replicas-to-write` (the README recommends 1): a
    /// primary without a replica (a crashed primary restarted before the
    /// Sentinels demote it) refuses writes, so nothing acts on a write that
    /// a failover will erase. 0 shows what happens without it.
    #[arg(long, env = "CHAOS_MIN_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub min_replicas_to_write: u8,

    /// What counts as "alerted" for an unknown payment: `named` (Slack saw
    /// its key: pay-sidecar names every payment that has just become
    /// unknown), or `counted` (named, or counted in a message's "… and N
    /// more" with the sidecar's alert state marking it and the outbox
    /// delivered; for a pay-sidecar older than that). Either way the report
    /// says how many were only counted.
    #[arg(long, env = "CHAOS_ALERTS", value_enum, default_value_t = Alerts::Named)]
    pub alerts: Alerts,

    /// How the sidecars follow failovers.
    #[arg(long, env = "CHAOS_FOLLOW", value_enum, default_value_t = Follow::Auto)]
    pub follow: Follow,
}

/// The module's settings (module arguments).
pub const MODULE_ARGS: &[&str] = &[
    "stale-after-ms",
    "1000",
    "sweep-interval-ms",
    "100",
    "key-prefix",
    "payment:",
];

/// The sidecars' timings: a short lease and timeout, a short retry schedule
/// and few attempts, so that `unknown` happens during provider outages. And
/// `--wait-replicas 1`, as the README recommends with a replica: the
/// provider is asked only about claims the replica has taken.
pub const SIDECAR_ARGS: &[(&str, &str)] = &[
    ("--interval", "250ms"),
    ("--lease", "2s"),
    ("--timeout", "500ms"),
    ("--connect-timeout", "250ms"),
    ("--retry-schedule", "250ms,500ms,1s"),
    ("--max-attempts", "4"),
    ("--wait-replicas", "1"),
    ("--unknown-interval", "5s"),
    ("--alert-after", "2s"),
    ("--alert-repeat", "5s"),
    ("--concurrency", "4"),
    ("--shutdown-timeout", "2s"),
];

/// `min-replicas-max-lag`: a replica silent longer than this (seconds) does
/// not count. The README's recommendation ("Server settings for payments").
pub const MIN_REPLICAS_MAX_LAG: u64 = 10;

/// Sentinel: how long a silent primary takes to be declared down, and the
/// failover timeout (a new failover of the same master waits twice that).
pub const DOWN_AFTER_MS: u64 = 1000;
pub const FAILOVER_TIMEOUT_MS: u64 = 3000;

/// The application: Redis call timeout, provider call timeout, and WAIT.
pub const APP_REDIS_TIMEOUT: Duration = Duration::from_millis(1000);
pub const APP_HTTP_TIMEOUT: Duration = Duration::from_millis(700);
pub const WAIT_MS: u64 = 300;
/// WAIT 1 tries on the connection that wrote, before the application gives
/// up and tells the customer "processing".
pub const WAIT_TRIES: u32 = 3;

/// Faults begin this long after the start.
pub const WARMUP: Duration = Duration::from_secs(3);

impl Options {
    /// Faults stop this long before the clients do.
    pub fn quiet(&self) -> Duration {
        Duration::from_secs((self.seconds / 6).clamp(8, 20))
    }

    /// How long the system may take to settle after the clients stop.
    pub fn settle_limit(&self) -> Duration {
        Duration::from_secs(60)
    }
}
