//! The sweeper: a server-side timer that flags payments unresolved too long.
//!
//! It runs on a primary only: armed at load when the server is a primary,
//! armed when a replica is promoted, stopped when a primary is demoted. A
//! sweep runs every `pay.sweep-interval-ms` and flags at most
//! [`SWEEP_BATCH`] payments, for at most [`SWEEP_BUDGET`], replicating each
//! flag as a value; after a full batch (or a spent budget) the next sweep
//! comes 1 ms later, so a mass of newly stale payments
//! drains quickly while clients are served between batches. The timer wakes
//! at least every [`MAX_TICK_MS`], so `CONFIG SET pay.sweep-interval-ms`
//! takes effect within that time.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis_module::{raw, Context, RedisString};

use crate::config::{STALE_AFTER_MS, SWEEP_BATCH, SWEEP_BUDGET, SWEEP_INTERVAL_MS};
use crate::key::{replicate_and_notify, PayKey};
use crate::stats;
use crate::store::{index, listed_key, now_ms, rm, Payment};

/// The armed timer, if any. Touched on the main thread only.
static TIMER: Mutex<Option<raw::RedisModuleTimerID>> = Mutex::new(None);

/// When the last sweep ran (Unix ms), and whether it left work behind.
static LAST_SWEEP: AtomicI64 = AtomicI64::new(0);
static BACKLOG: AtomicBool = AtomicBool::new(false);
/// The database the next sweep starts from: after a full batch, the one
/// after the batch's last, so every database gets its turn.
static NEXT_DB: AtomicI32 = AtomicI32::new(0);

/// The longest the timer sleeps, so a new interval applies promptly.
pub const MAX_TICK_MS: i64 = 100;

/// The Pub/Sub channel that hears how many payments a tick flagged.
pub const CHANNEL: &str = "pay:stale";

fn timer() -> std::sync::MutexGuard<'static, Option<raw::RedisModuleTimerID>> {
    TIMER.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn is_primary(ctx: &Context) -> bool {
    let flags = rm!(RedisModule_GetContextFlags(ctx.ctx)) as u32;
    flags & raw::REDISMODULE_CTX_FLAGS_MASTER != 0
}

/// Arms the timer if this server is a primary and none is armed.
pub fn start(ctx: &Context) {
    if is_primary(ctx) && timer().is_none() {
        LAST_SWEEP.store(now_ms(), Ordering::Relaxed);
        arm(ctx, MAX_TICK_MS.min(SWEEP_INTERVAL_MS.get()));
    }
}

/// Stops the timer (demotion to replica).
pub fn stop(ctx: &Context) {
    if let Some(id) = timer().take() {
        let _ = ctx.stop_timer::<()>(id);
    }
}

fn arm(ctx: &Context, delay_ms: i64) {
    let delay = Duration::from_millis(u64::try_from(delay_ms).unwrap_or(1));
    let id = ctx.create_timer(delay, tick, ());
    *timer() = Some(id);
}

fn tick(ctx: &Context, _: ()) {
    *timer() = None;
    if !is_primary(ctx) {
        return;
    }
    let auditing = crate::guard::tick(ctx);
    let now = now_ms();
    let interval = SWEEP_INTERVAL_MS.get();
    let due = if BACKLOG.load(Ordering::Relaxed) {
        now
    } else {
        LAST_SWEEP.load(Ordering::Relaxed).saturating_add(interval)
    };
    if now >= due {
        BACKLOG.store(sweep(ctx), Ordering::Relaxed);
        LAST_SWEEP.store(now, Ordering::Relaxed);
    }
    let next = if BACKLOG.load(Ordering::Relaxed) || auditing {
        1
    } else {
        (LAST_SWEEP.load(Ordering::Relaxed) + interval - now_ms()).clamp(1, MAX_TICK_MS)
    };
    arm(ctx, next);
}

/// One bounded sweep: flags up to SWEEP_BATCH newly stale payments over
/// every database. Returns whether the batch was full (more may be waiting).
fn sweep(ctx: &Context) -> bool {
    let started = Instant::now();
    let now = now_ms();
    let stale_after = STALE_AFTER_MS.get();
    let cutoff = now.saturating_sub(stale_after);
    // A record dated more than the stale window ahead of this clock (written
    // by a primary whose clock ran ahead) cannot be aged here: due now.
    let future = now.saturating_add(stale_after);
    let first_db = NEXT_DB.load(Ordering::Relaxed);
    let batch = index().stale_candidates(now, cutoff, future, SWEEP_BATCH, first_db);
    let mut flagged = 0u64;
    let mut db = None;
    let mut done = 0;
    for (entry_db, entry) in &batch {
        if done % 32 == 0 && done > 0 && started.elapsed() >= SWEEP_BUDGET {
            break;
        }
        done += 1;
        if db != Some(*entry_db) {
            rm!(RedisModule_SelectDb(ctx.ctx, *entry_db));
            db = Some(*entry_db);
        }
        let Some(name) = listed_key(ctx, *entry_db, entry) else {
            continue;
        };
        let key = PayKey::open(ctx, &name, true);
        match key.payment() {
            Ok(Some(p))
                if ptr::eq(p, entry.handle as *const Payment) && !p.rec.status.is_terminal() =>
            {
                let before = p.facts();
                p.rec.stale = true;
                key.keep_unresolved(ctx, &name);
                index().change(p.member, before, p.facts(), entry.handle);
                replicate_and_notify(ctx, key, &name, None, c"pay.stale");
                flagged += 1;
            }
            // Expired as the sweep opened it: the free callback dropped it.
            Ok(None) => {}
            _ => stats::INDEX_MISSES.incr(),
        }
    }
    if flagged > 0 {
        let channel = RedisString::create(None, CHANNEL);
        let message = RedisString::create(None, flagged.to_string());
        rm!(RedisModule_PublishMessage(
            ctx.ctx,
            channel.inner,
            message.inner
        ));
    }
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    stats::SWEEPS.incr();
    stats::FLAGGED.add(flagged);
    stats::SWEEP_LAST_US.set(micros);
    stats::SWEEP_MAX_US.raise(micros);
    stats::SWEEP_MAX_BATCH.raise(done as u64);
    let full = done < batch.len() || batch.len() >= SWEEP_BATCH;
    let next = match batch.get(..done).and_then(<[_]>::last) {
        Some((last_db, _)) if full => last_db + 1,
        _ => 0,
    };
    NEXT_DB.store(next, Ordering::Relaxed);
    full
}
