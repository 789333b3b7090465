//! The guard: an unresolved payment never disappears silently.
//!
//! Three ways Redis itself can drop a key, and what the module does:
//!
//! - **An expiry** set on an unresolved payment (an operator's `EXPIRE`, a
//!   `RESTORE ... TTL`, a `COPY` or `RENAME` of a key that had one): the
//!   keyspace event queues the key, and the primary's next timer tick (within
//!   [`crate::sweep::MAX_TICK_MS`]) removes the expiry and replicates
//!   `PERSIST`. Counted in `pay_expiries_removed`.
//! - **Eviction** under an `allkeys-*` `maxmemory-policy` (the only policies
//!   that may evict a key without an expiry): the primary reads the policy
//!   about every second; `pay_eviction_unsafe` is 1 while it is one of those,
//!   and the log says so once per change. pay-sidecar alerts on it.
//! - **Lost anyway** (an expiry shorter than a tick, an eviction): on servers
//!   with the key-event API (Redis 7.2+, Valkey) each unresolved payment that
//!   expires or is evicted is logged at warning level with everything needed
//!   to find it at the provider, and counted in `pay_unresolved_lost`.
//!   pay-sidecar alerts on it.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;

use redis_module::{logging, raw, Context, RedisString};

use crate::config;
use crate::index::Age;
use crate::key::{payment_in, PayKey};
use crate::record::{transaction_id, Record};
use crate::stats;
use crate::store::{index, listed_key, now_ms, rm, selected_db, Payment};

/// Keys (database, name) whose unresolved payment got an expiry, for the
/// next tick. Touched on the main thread only.
static EXPIRING: Mutex<Vec<(i32, Vec<u8>)>> = Mutex::new(Vec::new());

/// Whether the eviction policy may evict unresolved payments, and when it
/// was last read (Unix ms).
static EVICTION_UNSAFE: AtomicBool = AtomicBool::new(false);
static POLICY_READ_AT: AtomicI64 = AtomicI64::new(0);
const POLICY_EVERY_MS: i64 = 1000;

fn expiring() -> std::sync::MutexGuard<'static, Vec<(i32, Vec<u8>)>> {
    EXPIRING.lock().unwrap_or_else(|p| p.into_inner())
}

/// 1 while the primary's `maxmemory-policy` may evict unresolved payments.
pub fn eviction_unsafe() -> u64 {
    u64::from(EVICTION_UNSAFE.load(Ordering::Relaxed))
}

/// A keyspace event that may have given a key an expiry (`expire`,
/// `restore`, `copy_to`, `rename_to`, `move_to`): on a primary, queues the
/// key if it holds an unresolved payment that now expires.
pub fn on_expiry_event(ctx: &Context, key: &[u8]) {
    // Every SET ... EX of a cache comes here: most servers' keys are no
    // unresolved payment, and most databases hold none.
    if !index().holds_records(selected_db(ctx), true) || !crate::sweep::is_primary(ctx) {
        return;
    }
    let name = RedisString::create_from_slice(ctx.ctx, key);
    let k = PayKey::peek(ctx, &name);
    if let Ok(Some(p)) = k.payment() {
        if p.rec.status.is_unresolved() && k.expires() {
            expiring().push((selected_db(ctx), key.to_vec()));
        }
    }
}

/// Called by the primary's timer tick: removes the queued expiries, goes on
/// with an audit (see [`audit_all`]), and reads the eviction policy about
/// every second. Returns whether the audit has more to do: the caller ticks
/// again at once.
pub fn tick(ctx: &Context) -> bool {
    let queued = std::mem::take(&mut *expiring());
    let db = selected_db(ctx);
    if !queued.is_empty() {
        for (key_db, key) in queued {
            rm!(RedisModule_SelectDb(ctx.ctx, key_db));
            let name = RedisString::create_from_slice(ctx.ctx, &key);
            let k = PayKey::open(ctx, &name, true);
            if let Ok(Some(p)) = k.payment() {
                if p.rec.status.is_unresolved() && k.expires() {
                    remove_expiry(ctx, &k, &name, key_db);
                }
            }
        }
    }
    let auditing = audit_step(ctx);
    rm!(RedisModule_SelectDb(ctx.ctx, db));
    let now = now_ms();
    if now.saturating_sub(POLICY_READ_AT.load(Ordering::Relaxed)) >= POLICY_EVERY_MS {
        POLICY_READ_AT.store(now, Ordering::Relaxed);
        read_eviction_policy(ctx);
    }
    auditing
}

/// Takes the expiry away from the unresolved payment under the open key
/// `k`, replicated as PERSIST, counted and logged.
fn remove_expiry(ctx: &Context, k: &PayKey, name: &RedisString, db: i32) {
    k.keep_unresolved(ctx, name);
    stats::EXPIRIES_REMOVED.incr();
    ctx.log_notice(&format!(
        "redis-pay: removed the expiry of unresolved payment {} (db {db}): \
         pending and unknown payments never expire",
        shown(name.as_slice())
    ));
}

/// SWAPDB: the keys queued in one database are now in the other, and an
/// audit under way starts again (its place named a database).
pub fn swap_db(a: i32, b: i32) {
    for (db, _) in expiring().iter_mut() {
        if *db == a {
            *db = b;
        } else if *db == b {
            *db = a;
        }
    }
    if let Some(audit) = audit().as_mut() {
        *audit = Audit {
            db: None,
            after: None,
        };
    }
}

/// Where an audit of every unresolved payment stands: the database and the
/// index position it goes on from.
#[derive(Clone, Copy)]
struct Audit {
    db: Option<i32>,
    after: Option<Age>,
}

static AUDIT: Mutex<Option<Audit>> = Mutex::new(None);

/// Payments an audit looks at per tick: the event loop is not held up by a
/// million of them at once.
const AUDIT_BATCH: usize = 1024;

fn audit() -> std::sync::MutexGuard<'static, Option<Audit>> {
    AUDIT.lock().unwrap_or_else(|p| p.into_inner())
}

/// A primary that has just loaded a data set (RDB, AOF, a full sync) or
/// been promoted holds payments whose expiries no keyspace event told it
/// about: an RDB file saved within a tick of an operator's EXPIRE, one a
/// module before the guard wrote, a replica whose primary died before its
/// tick. From the next tick on, the primary looks at every unresolved
/// payment, [`AUDIT_BATCH`] at a time, and takes such expiries away.
pub fn audit_all() {
    *audit() = Some(Audit {
        db: None,
        after: None,
    });
}

/// One batch of the audit, if one is under way: whether more is left.
fn audit_step(ctx: &Context) -> bool {
    let Some(mut a) = audit().take() else {
        return false;
    };
    let mut left = AUDIT_BATCH;
    while left > 0 {
        let db = match a.db {
            Some(db) => db,
            None => match index().next_unresolved_db(None) {
                Some(db) => db,
                None => return false,
            },
        };
        a.db = Some(db);
        let page = index().unresolved_page(db, i64::MAX, a.after, left);
        rm!(RedisModule_SelectDb(ctx.ctx, db));
        for entry in &page {
            let Some(name) = listed_key(ctx, db, entry) else {
                continue;
            };
            // Looked at without side effects; opened for writing only to
            // take an expiry away.
            let expires = {
                let k = PayKey::peek(ctx, &name);
                matches!(k.payment(), Ok(Some(p)) if ptr::eq(p, entry.handle as *const Payment)
                    && p.rec.status.is_unresolved())
                    && k.expires()
            };
            if expires {
                let k = PayKey::open(ctx, &name, true);
                if matches!(k.payment(), Ok(Some(p)) if p.rec.status.is_unresolved()) {
                    remove_expiry(ctx, &k, &name, db);
                }
            }
        }
        if page.len() < left {
            // This database is done: on to the next one, if any.
            match index().next_unresolved_db(Some(db)) {
                Some(next) => {
                    a = Audit {
                        db: Some(next),
                        after: None,
                    }
                }
                None => return false,
            }
        } else {
            a.after = page.last().map(|e| e.position());
        }
        left -= page.len();
    }
    *audit() = Some(a);
    true
}

/// Whether a `maxmemory-policy` may evict a key that has no expiry: an
/// `allkeys-*` policy under a memory limit (`maxmemory 0` evicts nothing).
fn evicts_any_key(policy: &str, maxmemory: u64) -> bool {
    policy.starts_with("allkeys") && maxmemory > 0
}

fn read_eviction_policy(ctx: &Context) {
    let info = rm!(RedisModule_GetServerInfo(ctx.ctx, c"memory".as_ptr()));
    if info.is_null() {
        return;
    }
    let field = |name: &CStr| {
        let value = rm!(RedisModule_ServerInfoGetFieldC(info, name.as_ptr()));
        if value.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string owned by `info`, freed below,
            // after this copy.
            unsafe { CStr::from_ptr(value) }
                .to_string_lossy()
                .into_owned()
        }
    };
    let policy = field(c"maxmemory_policy");
    // Unreadable: taken as a limit, so the policy alone decides.
    let maxmemory = field(c"maxmemory").parse::<u64>().unwrap_or(1);
    rm!(RedisModule_FreeServerInfo(ctx.ctx, info));
    let unsafe_now = evicts_any_key(&policy, maxmemory);
    if EVICTION_UNSAFE.swap(unsafe_now, Ordering::Relaxed) != unsafe_now {
        if unsafe_now {
            ctx.log_warning(&format!(
                "redis-pay: maxmemory-policy {policy} with maxmemory {maxmemory} may evict \
                 unresolved payments, which never expire: use noeviction or a volatile-* policy"
            ));
        } else {
            ctx.log_notice(&format!(
                "redis-pay: maxmemory-policy {policy} (maxmemory {maxmemory}) keeps unresolved payments"
            ));
        }
    }
}

/// Subscribes to the key events of Redis 7.2+ and Valkey (a key expired or
/// evicted, with its value still readable). Older servers lack them: the
/// expiry and the policy are still guarded, a loss is not reported.
pub fn subscribe(ctx: &Context) {
    let event = raw::RedisModuleEvent {
        id: raw::REDISMODULE_EVENT_KEY,
        dataver: 1,
    };
    let ok = rm!(RedisModule_SubscribeToServerEvent(
        ctx.ctx,
        event,
        Some(on_key_event)
    )) == raw::REDISMODULE_OK as c_int;
    if !ok {
        ctx.log_notice(
            "redis-pay: no key events on this server: an unresolved payment \
             lost to eviction is not reported (the eviction policy still is)",
        );
    }
}

unsafe extern "C" fn on_key_event(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    let how = match subevent {
        raw::REDISMODULE_SUBEVENT_KEY_EXPIRED => "expired",
        raw::REDISMODULE_SUBEVENT_KEY_EVICTED => "was evicted",
        _ => return,
    };
    if data.is_null() {
        return;
    }
    // SAFETY: Redis passes a RedisModuleKeyInfo (version 1) with this event;
    // its key is open, read-only, for the duration of the callback.
    let info = unsafe { &*data.cast::<raw::RedisModuleKeyInfoV1>() };
    let Ok(Some(p)) = payment_in(info.key) else {
        return;
    };
    if p.rec.status.is_terminal() {
        return;
    }
    stats::UNRESOLVED_LOST.incr();
    let ctx = Context::new(ctx);
    ctx.log_warning(&lost_line(&p.rec, how));
}

/// Whether an RDB file is loading on a primary: Redis drops, as it reads
/// them, the keys whose expiry passed while the server was down, with no key
/// event; the module sees only its value freed.
static LOADING_RDB_ON_PRIMARY: AtomicBool = AtomicBool::new(false);

/// The thread Redis runs commands and loads on (the lazy-free thread frees
/// values too).
static MAIN_THREAD: OnceLock<ThreadId> = OnceLock::new();

/// Called once, on the main thread, as the module loads.
pub fn note_main_thread() {
    let _ = MAIN_THREAD.set(std::thread::current().id());
}

/// An RDB load starts (`on_primary`: where Redis drops expired keys) or
/// ends.
pub fn rdb_loading(on_primary: bool) {
    LOADING_RDB_ON_PRIMARY.store(on_primary, Ordering::Relaxed);
}

/// A payment's value is freed: while a primary loads an RDB file, on the
/// main thread, that is Redis dropping a key that expired while the server
/// was down. An unresolved one is a loss, reported like any other.
pub fn on_free(r: &Record) {
    if r.status.is_unresolved()
        && LOADING_RDB_ON_PRIMARY.load(Ordering::Relaxed)
        && MAIN_THREAD.get() == Some(&std::thread::current().id())
    {
        stats::UNRESOLVED_LOST.incr();
        logging::log_warning(lost_line(r, "expired while the server was down"));
    }
}

/// The log line of a lost payment: what an operator needs to find it at the
/// provider and settle it by hand.
fn lost_line(r: &Record, how: &str) -> String {
    let t = r.fields();
    let id = transaction_id(t.identity(), config::key_prefix().as_bytes());
    format!(
        "redis-pay: UNRESOLVED PAYMENT LOST: key {} {how}; transaction_id {} user_id {} \
         amount {} {} status {} created_at {} attempts {}",
        shown(t.key),
        shown(id),
        t.user_id,
        r.amount,
        r.currency_str(),
        r.status,
        r.created_at,
        r.attempts,
    )
}

/// Key bytes as a log line can carry them: text as it is, control
/// characters and bytes that are not UTF-8 as `\xNN`. A key may hold any
/// bytes (RENAME, COPY, RESTORE), and redis-module's logging panics on a NUL
/// byte: a panic here would abort the server.
fn shown(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allkeys_policies_under_a_limit_may_evict_keys_without_expiry() {
        for p in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(evicts_any_key(p, 1 << 30), "{p}");
            assert!(!evicts_any_key(p, 0), "{p} without a limit");
        }
        for p in [
            "noeviction",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "",
        ] {
            assert!(!evicts_any_key(p, 1 << 30), "{p}");
        }
    }

    #[test]
    fn keys_are_shown_without_bytes_a_log_line_cannot_carry() {
        assert_eq!(shown(b"payment:txn_1"), "payment:txn_1");
        assert_eq!(shown("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(shown(b"a\0b\n\xffc\x7f"), "a\\x00b\\x0a\\xffc\\x7f");
        let mut r = Record::new(b"txn_9", "u1", 1250, *b"EUR", 7, 60);
        r.set_key(b"held\0");
        assert!(!lost_line(&r, "expired").contains('\0'));
    }

    #[test]
    fn a_lost_payment_is_logged_with_what_finds_it_at_the_provider() {
        let mut r = Record::new(b"txn_9", "u1", 1250, *b"EUR", 7, 60);
        r.set_key(b"moved");
        let line = lost_line(&r, "was evicted");
        assert!(line.contains("key moved was evicted"), "{line}");
        assert!(
            line.contains("transaction_id txn_9 user_id u1 amount 1250 EUR status pending"),
            "{line}"
        );
    }
}
