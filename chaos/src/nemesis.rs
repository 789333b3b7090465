//! The nemesis: a schedule drawn from the seed, then carried out.
//!
//! Process faults run one at a time: SIGKILL, SIGSTOP/SIGCONT and SIGTERM
//! of the primary (the Sentinels fail over), SIGKILL of the replica, SIGKILL
//! of a sidecar in the middle of a provider call, SIGTERM of a sidecar; each
//! followed by a restart. A fault on a server waits until the system is whole
//! again (both servers up, the replica linked, the Sentinels agreeing): one
//! replica and `WAIT 1` promise to survive one failure at a time, not two.
//! Provider faults are time windows the provider stand-in applies.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock;
use crate::provider::{Fault, Provider, Window};
use crate::system::System;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Kind {
    KillPrimary,
    PausePrimary,
    RestartPrimary,
    KillReplica,
    KillSidecar,
    RestartSidecar,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillPrimary => "SIGKILL the primary, restart it",
            Kind::PausePrimary => "SIGSTOP the primary, SIGCONT",
            Kind::RestartPrimary => "SIGTERM the primary, restart it",
            Kind::KillReplica => "SIGKILL the replica, restart it",
            Kind::KillSidecar => "SIGKILL a sidecar (mid-call when one is in flight), restart it",
            Kind::RestartSidecar => "SIGTERM a sidecar, restart it",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub kind: Kind,
    /// How long it is down or stopped.
    pub hold_ms: u64,
    /// Which sidecar.
    pub sidecar: usize,
    /// A server comes back as a replica of the current primary (as an
    /// orchestrator that asks the Sentinels first restarts it), else with
    /// its own configuration (a primary until the Sentinels demote it).
    pub rejoin: bool,
}

/// What happened to one scheduled fault.
#[derive(Clone, Debug, Serialize)]
pub struct Done {
    /// When it was over (the detail says when it struck).
    pub at_ms: u64,
    pub kind: Kind,
    pub injected: bool,
    pub detail: String,
}

pub struct Schedule {
    pub events: Vec<Event>,
    pub windows: Vec<Window>,
}

/// The faults of a run, from its seed: process faults every 2-6 s and
/// provider windows every 3-9 s, from `warmup` until `end`.
pub fn schedule(seed: u64, warmup: Duration, end: Duration) -> Schedule {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (from, to) = (warmup.as_millis() as u64, end.as_millis() as u64);
    let mut events = Vec::new();
    let mut t = from;
    loop {
        t += rng.u64(2000..6000);
        if t >= to {
            break;
        }
        let kind = match rng.u32(..100) {
            0..=21 => Kind::KillPrimary,
            22..=39 => Kind::PausePrimary,
            40..=49 => Kind::RestartPrimary,
            50..=61 => Kind::KillReplica,
            62..=87 => Kind::KillSidecar,
            _ => Kind::RestartSidecar,
        };
        let hold_ms = match kind {
            Kind::PausePrimary => rng.u64(300..4000),
            Kind::KillSidecar | Kind::RestartSidecar => rng.u64(200..1500),
            _ => rng.u64(500..3000),
        };
        events.push(Event {
            at_ms: t,
            kind,
            hold_ms,
            sidecar: rng.usize(..2),
            rejoin: rng.bool(),
        });
    }
    let mut windows = Vec::new();
    let mut t = from;
    loop {
        t += rng.u64(3000..9000);
        if t >= to {
            break;
        }
        let (fault, len) = match rng.u32(..100) {
            0..=24 => (Fault::Outage, rng.u64(2000..6000)),
            25..=44 => (Fault::Errors, rng.u64(1000..3000)),
            45..=64 => (Fault::Slow, rng.u64(1500..4000)),
            65..=84 => (Fault::DropReplies, rng.u64(1000..3000)),
            _ => (Fault::Declines, rng.u64(1000..3000)),
        };
        windows.push(Window {
            start_ms: t,
            end_ms: (t + len).min(to),
            fault,
        });
        t += len;
    }
    Schedule { events, windows }
}

impl Event {
    fn on_sidecar(&self) -> bool {
        matches!(self.kind, Kind::KillSidecar | Kind::RestartSidecar)
    }
}

/// Carries out the process faults, none after `end`: the servers' in order
/// on one thread, the sidecars' on another; returns when the last one is
/// over (every process they stopped is running again).
pub fn run(
    events: &[Event],
    start: Instant,
    end: Duration,
    sys: &System,
    provider: &Provider,
    log: &Mutex<Vec<Done>>,
) {
    std::thread::scope(|scope| {
        for sidecars in [false, true] {
            scope.spawn(move || {
                let mine: Vec<Event> = events
                    .iter()
                    .filter(|e| e.on_sidecar() == sidecars)
                    .copied()
                    .collect();
                run_in_order(&mine, start, start + end, sys, provider, log);
            });
        }
    });
}

fn run_in_order(
    events: &[Event],
    start: Instant,
    end: Instant,
    sys: &System,
    provider: &Provider,
    log: &Mutex<Vec<Done>>,
) {
    for e in events {
        let at = start + Duration::from_millis(e.at_ms);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let (injected, detail) = match inject(e, sys, provider, end) {
            Ok(detail) => (true, detail),
            Err(why) => (false, why),
        };
        lock(log).push(Done {
            at_ms: clock::ms(),
            kind: e.kind,
            injected,
            detail,
        });
    }
}

fn hold(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// One fault; Ok with what it did (when it struck, on the run's clock).
fn inject(e: &Event, sys: &System, provider: &Provider, end: Instant) -> Result<String, String> {
    if Instant::now() >= end {
        return Err("skipped: past the end of the fault window".into());
    }
    match e.kind {
        Kind::KillSidecar | Kind::RestartSidecar => {
            let s = &sys.sidecars[e.sidecar];
            let mut mid_call = false;
            if e.kind == Kind::KillSidecar {
                // Wait (a while) for it to be talking to the provider.
                let deadline = Instant::now() + Duration::from_secs(8);
                while Instant::now() < deadline {
                    if provider.sidecar_in_flight(e.sidecar) > 0 {
                        mid_call = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let struck = clock::ms();
            {
                let mut p = lock(&s.proc);
                if !p.running() {
                    return Err(format!("{} is not running", s.name));
                }
                let sig = if e.kind == Kind::KillSidecar {
                    libc::SIGKILL
                } else {
                    libc::SIGTERM
                };
                p.stop(sig, Duration::from_secs(5));
            }
            hold(e.hold_ms);
            sys.restart_sidecar(e.sidecar)
                .map_err(|err| format!("restart failed: {err}"))?;
            Ok(format!(
                "at {:.1}s: {}{}, down {} ms",
                struck as f64 / 1000.0,
                s.name,
                if mid_call { " mid-call" } else { "" },
                e.hold_ms
            ))
        }
        _ => {
            // One failure at a time: the system is whole again, and has
            // been for a moment, before the next server fault.
            let limit = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(20));
            let was_whole = sys.health().is_ok();
            let (mut primary, mut replica) = sys
                .wait_healthy(limit)
                .map_err(|why| format!("skipped: the system is not whole ({why})"))?;
            if !was_whole {
                std::thread::sleep(Duration::from_millis(1500));
                (primary, replica) = sys
                    .health()
                    .map_err(|why| format!("skipped: the system is not whole ({why})"))?;
            }
            if Instant::now() >= end {
                return Err("skipped: past the end of the fault window".into());
            }
            let struck = clock::ms();
            let port = if e.kind == Kind::KillReplica {
                replica
            } else {
                primary
            };
            let server = sys.server(port).ok_or("no such server")?;
            match e.kind {
                Kind::PausePrimary => {
                    lock(&server.proc).pause(true);
                    hold(e.hold_ms);
                    lock(&server.proc).pause(false);
                }
                kind => {
                    let sig = if kind == Kind::RestartPrimary {
                        libc::SIGTERM
                    } else {
                        libc::SIGKILL
                    };
                    lock(&server.proc).stop(sig, Duration::from_secs(10));
                    hold(e.hold_ms);
                    let how = sys
                        .restart_server(port, e.rejoin)
                        .map_err(|err| format!("restart failed: {err}"))?;
                    return Ok(format!(
                        "at {:.1}s: {} ({port}), down {} ms, back {how}",
                        struck as f64 / 1000.0,
                        server.name,
                        e.hold_ms
                    ));
                }
            }
            Ok(format!(
                "at {:.1}s: {} ({port}), stopped {} ms",
                struck as f64 / 1000.0,
                server.name,
                e.hold_ms
            ))
        }
    }
}

/// Faults by kind: (scheduled, injected).
pub fn tally(done: &[Done]) -> BTreeMap<Kind, (u32, u32)> {
    let mut t: BTreeMap<Kind, (u32, u32)> = BTreeMap::new();
    for d in done {
        let e = t.entry(d.kind).or_default();
        e.0 += 1;
        e.1 += u32::from(d.injected);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_inside_the_window() {
        let (warmup, end) = (Duration::from_secs(3), Duration::from_secs(120));
        let a = schedule(7, warmup, end);
        let b = schedule(7, warmup, end);
        let key = |s: &Schedule| {
            s.events
                .iter()
                .map(|e| (e.at_ms, e.kind, e.hold_ms, e.sidecar, e.rejoin))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert!(!a.events.is_empty() && !a.windows.is_empty());
        assert!(a.events.iter().all(|e| (3000..120_000).contains(&e.at_ms)));
        assert!(a
            .windows
            .iter()
            .all(|w| w.start_ms >= 3000 && w.start_ms < w.end_ms && w.end_ms <= 120_000));
        assert_ne!(key(&a), key(&schedule(8, warmup, end)));
    }
}
