//! pay-sidecar under test: the binary started with short test defaults,
//! its log in a file, killed on drop even when a test panics; and the
//! README's least-privilege ACL user for it. testkit never links the
//! sidecar: the test names the binary (`env!("CARGO_BIN_EXE_pay-sidecar")`
//! in the sidecar's own tests, [`sidecar_bin`] elsewhere).

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use crate::*;

/// The README's least-privilege ACL user for the sidecar (password s3cret):
/// ROLE for Sentinel's check of the primary, CLUSTER SLOTS in a cluster,
/// EVALSHA/EVAL for the alert scripts (never SCRIPT LOAD).
pub const SIDECAR_ACL: &[&str] = &[
    "on",
    ">s3cret",
    "resetkeys",
    "~*",
    "resetchannels",
    "&pay:stale",
    "-@all",
    "+pay.stuck",
    "+pay.claim",
    "+pay.update",
    "+pay.check",
    "+info",
    "+ping",
    "+subscribe",
    "+role",
    "+cluster|slots",
    "+evalsha",
    "+eval",
    "+zrange",
    "+zscore",
    "+zadd",
    "+zremrangebyscore",
    "+get",
    "+set",
    "+wait",
    "+zrem",
    "+rpush",
    "+lindex",
    "+lpop",
];

/// The options every test sidecar gets unless it names them itself.
pub const SIDECAR_DEFAULTS: &[(&str, &str)] = &[
    ("--interval", "200ms"),
    ("--lease", "3s"),
    ("--timeout", "1s"),
    ("--connect-timeout", "500ms"),
    ("--alert-after", "1h"),
    ("--retry-schedule", "500ms"),
];

/// The options that point a sidecar at Redis (`redis_url`), the provider
/// (`bank`) and, if given, Slack; a test adds its own after them.
pub fn sidecar_args<'a>(redis_url: &'a str, bank: &'a str, slack: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec!["--redis-url", redis_url, "--bank-url", bank];
    if let Some(slack) = slack {
        args.extend(["--slack-webhook-url", slack]);
    }
    args
}

/// A running pay-sidecar, killed on drop.
pub struct Sidecar(Proc);

impl Sidecar {
    /// Starts `bin` with the short test defaults; `args` override them.
    pub fn start(bin: impl AsRef<OsStr>, args: &[impl AsRef<str>]) -> Sidecar {
        let mut all: Vec<&str> = Vec::new();
        for (name, value) in SIDECAR_DEFAULTS {
            if !args.iter().any(|a| a.as_ref() == *name) {
                all.extend([name, value]);
            }
        }
        all.extend(args.iter().map(AsRef::as_ref));
        Sidecar::launch(bin, &all)
    }

    /// Starts `bin` with exactly these options (logging at info).
    pub fn launch(bin: impl AsRef<OsStr>, args: &[impl AsRef<str>]) -> Sidecar {
        let mut cmd = Command::new(bin);
        cmd.args(args.iter().map(AsRef::as_ref))
            .env("RUST_LOG", "info");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = Proc::spawn(cmd, dir, "sidecar.log", true, 0);
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = p.exit_status() {
            panic!("pay-sidecar exited at once ({status}):\n{}", p.log());
        }
        Sidecar(p)
    }

    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Waits for `f`, or fails with the sidecar's log.
    pub fn wait_for(&self, what: &str, secs: u64, f: impl FnMut() -> bool) {
        assert!(
            wait_until(Duration::from_secs(secs), f),
            "timed out waiting for {what}; sidecar log:\n{}",
            self.log()
        );
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, name: &str) {
        self.0.signal(name);
    }

    /// SIGKILL (a stopped process too: SIGKILL needs no SIGCONT).
    pub fn kill(&mut self) {
        self.0.kill();
    }

    pub fn exited(&mut self) -> bool {
        self.0.exited()
    }
}
