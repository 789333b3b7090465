//! The PAY.* commands: parse, act on the key, then write, replicate, notify
//! and reply. The logic lives in the pure modules; this is the glue.

use std::ffi::{c_char, c_long};
use std::ptr;

use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::acl::{Access, Caller};
use crate::args::{self, StuckArgs};
use crate::codec;
use crate::config;
use crate::error::PayError;
use crate::index::Handle;
use crate::record::{transaction_id, Applied, Record};
use crate::stats;
use crate::store::{self, index, now_ms, publish, rm, selected_db, PayKey, Payment};

/// Every error reply goes through here, so INFO counts them.
fn fail(e: PayError) -> RedisError {
    stats::ERRORS.incr();
    RedisError::String(e.to_string())
}

/// The arguments after the command name, as bytes.
fn argv(args: &[RedisString]) -> Vec<&[u8]> {
    args.iter().skip(1).map(RedisString::as_slice).collect()
}

/// More arguments than any well-formed PAY.* call has (PAY.UPDATE with every
/// option: 10).
const INLINE_ARGS: usize = 12;

/// The arguments after the command name, as bytes, on the stack: a vector
/// would cost an allocation and a free on every call. Only a call too long
/// to be valid goes to the heap (and fails parsing).
struct Argv<'a> {
    inline: [&'a [u8]; INLINE_ARGS],
    len: usize,
    heap: Vec<&'a [u8]>,
}

impl<'a> Argv<'a> {
    // Inlined: built in the caller's frame, not copied into it.
    #[inline(always)]
    fn of(args: &'a [RedisString]) -> Argv<'a> {
        let rest = args.get(1..).unwrap_or_default();
        let mut argv = Argv {
            inline: [&[]; INLINE_ARGS],
            len: rest.len(),
            heap: Vec::new(),
        };
        if rest.len() <= INLINE_ARGS {
            for (slot, arg) in argv.inline.iter_mut().zip(rest) {
                *slot = arg.as_slice();
            }
        } else {
            argv.heap = rest.iter().map(RedisString::as_slice).collect();
        }
        argv
    }

    fn get(&self) -> &[&'a [u8]] {
        self.inline.get(..self.len).unwrap_or(&self.heap[..])
    }
}

fn key_arg(args: &[RedisString]) -> Result<&RedisString, RedisError> {
    args.get(1).ok_or_else(|| fail(PayError::Arity("PAY")))
}

/// `PAY.CACHE key user_id amount currency [TTL seconds] [BRIEF]`
pub fn cache(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = Argv::of(&args);
    let a = args::parse_cache(argv.get()).map_err(fail)?;
    let name = key_arg(&args)?;
    let key = PayKey::open(ctx, name, true);
    match key.payment().map_err(fail)? {
        Some(p) => match p.rec.check_same_terms(a.user_id, a.amount, a.currency) {
            Ok(()) => {
                stats::DUPLICATES.incr();
                reply_cached(ctx, &p.rec, "duplicate", a.brief);
                Ok(RedisValue::NoReply)
            }
            Err(e) => {
                stats::MISMATCHES.incr();
                Err(fail(e))
            }
        },
        None => {
            let now = now_ms();
            let ttl = a.ttl_secs.unwrap_or_else(|| config::DEFAULT_TTL.get());
            // Both sources are bounded by MAX_TTL_SECS, far below u32::MAX.
            let ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
            // No expiry yet: an unresolved payment never expires. It gets
            // `ttl` when it resolves.
            let rec = Record::new(a.key, a.user_id, a.amount, a.currency, now, ttl);
            key.set(Payment::admitted(selected_db(ctx), rec))
                .map_err(fail)?;
            let Some(p) = key.payment().map_err(fail)? else {
                return Err(fail(PayError::NoPayment));
            };
            stats::CREATED.incr();
            reply_cached(ctx, &p.rec, "created", a.brief);
            // Last: after the event, another module may have changed the key.
            publish(ctx, name, &p.rec, None, c"pay.cache");
            Ok(RedisValue::NoReply)
        }
    }
}

/// `PAY.CHECK key [JSON]`
pub fn check(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = Argv::of(&args);
    let a = args::parse_check(argv.get()).map_err(fail)?;
    let key = PayKey::open(ctx, key_arg(&args)?, false);
    match key.payment().map_err(fail)? {
        None => Ok(RedisValue::Null),
        Some(p) if a.json => Ok(RedisValue::BulkString(
            p.rec.to_json(config::key_prefix().as_bytes()),
        )),
        Some(p) => {
            reply_record(ctx, &p.rec, None);
            Ok(RedisValue::NoReply)
        }
    }
}

/// `PAY.UPDATE key status [REASON text] [REF ref] [RETRY ms] [FENCE n]`
pub fn update(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = Argv::of(&args);
    let a = args::parse_update(argv.get()).map_err(fail)?;
    let name = key_arg(&args)?;
    let key = PayKey::open(ctx, name, true);
    let Some(p) = key.payment().map_err(fail)? else {
        return Err(fail(PayError::NoPayment));
    };
    let before = p.facts();
    let now = now_ms();
    let applied = p.rec.apply(&a.update, now).map_err(|e| {
        if matches!(e, PayError::Fenced { .. }) {
            stats::FENCED.incr();
        }
        fail(e)
    })?;
    if applied == Applied::Unchanged {
        reply_record(ctx, &p.rec, None);
        return Ok(RedisValue::NoReply);
    }
    // Resolved: the key lives its TTL from now, as an absolute time that
    // replicas and the AOF receive as it is.
    let expire_at = (applied == Applied::Resolved)
        .then(|| now.saturating_add(i64::from(p.rec.ttl_secs()).saturating_mul(1000)));
    if let Some(at) = expire_at {
        key.expire_at(at);
    }
    index().change(p.member, before, p.facts(), p.handle());
    stats::UPDATES.incr();
    reply_record(ctx, &p.rec, None);
    // Last: after the event, another module may have changed the key.
    publish(ctx, name, &p.rec, expire_at, c"pay.update");
    Ok(RedisValue::NoReply)
}

/// `PAY.STUCK [OLDER ms] [COUNT n]`
///
/// Read-only, so replicas serve it. Lists unresolved records (pending and
/// unknown, leased or not) created at least OLDER ms ago, oldest first; equal
/// ages are ordered by key, so the primary, its replicas and a restarted
/// server list the same. Only keys the caller may read are listed.
pub fn stuck(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = Argv::of(&args);
    let a: StuckArgs = args::parse_stuck(argv.get()).map_err(fail)?;
    let caller = Caller::of(ctx).map_err(fail)?;
    let older = a.older_ms.unwrap_or_else(|| config::STALE_AFTER_MS.get());
    // OLDER 0 is everything, even a record dated ahead of this server's
    // clock (written by a primary whose clock ran ahead).
    let cutoff = if older == 0 {
        i64::MAX
    } else {
        now_ms().saturating_sub(older)
    };
    let db = selected_db(ctx);
    // Gather COUNT records, and every other record of the last one's age,
    // then order each age by key and cut at COUNT.
    let mut picked: Vec<(i64, RedisString, Handle)> = Vec::new();
    let mut after = None;
    'pages: loop {
        let want = a.count.saturating_sub(picked.len()).clamp(16, 4096);
        let page = index().unresolved_page(db, cutoff, after, want);
        let Some(last) = page.last() else { break };
        after = Some(last.position());
        for entry in &page {
            let full = picked.len() >= a.count;
            if full && picked.last().map(|p| p.0) != Some(entry.created_at) {
                break 'pages;
            }
            let Some(name) = store::listed_key(ctx, db, entry) else {
                continue;
            };
            if caller.may(&name, Access::Read) {
                picked.push((entry.created_at, name, entry.handle));
            }
        }
        if page.len() < want {
            break;
        }
    }
    picked.sort_by(|x, y| {
        x.0.cmp(&y.0)
            .then_with(|| x.1.as_slice().cmp(y.1.as_slice()))
    });
    picked.truncate(a.count);
    raw::reply_with_array(ctx.ctx, raw::REDISMODULE_POSTPONED_LEN as c_long);
    let mut sent = 0usize;
    for (_, name, handle) in &picked {
        let key = PayKey::open(ctx, name, false);
        match key.payment() {
            Ok(Some(p)) if ptr::eq(p, *handle as *const Payment) && !p.rec.status.is_terminal() => {
                reply_record(ctx, &p.rec, None);
                sent += 1;
            }
            // Expired as it was opened: not an index error.
            Ok(None) => {}
            _ => stats::INDEX_MISSES.incr(),
        }
    }
    rm!(RedisModule_ReplySetArrayLength(ctx.ctx, sent as c_long));
    Ok(RedisValue::NoReply)
}

/// `PAY.CLAIM consumer LEASE ms [OLDER ms] [COUNT n]`
///
/// Leases unresolved records that are stale (without OLDER: flagged by the
/// sweeper, or older than `pay.stale-after-ms`; with OLDER: created at least
/// that long ago) and not held, oldest first, to `consumer` for LEASE ms,
/// counting an attempt on each, in one atomic step. Held records are kept
/// apart by the index, so this costs O(log N + k) however many are leased.
/// Only keys the caller may write are leased.
pub fn claim(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = Argv::of(&args);
    let a = args::parse_claim(argv.get()).map_err(fail)?;
    let caller = Caller::of(ctx).map_err(fail)?;
    let now = now_ms();
    let (stale_cutoff, fresh_cutoff) = match a.older_ms {
        Some(0) => (i64::MAX, i64::MAX),
        Some(older) => {
            let cutoff = now.saturating_sub(older);
            (cutoff, cutoff)
        }
        None => (i64::MAX, now.saturating_sub(config::STALE_AFTER_MS.get())),
    };
    let db = selected_db(ctx);
    raw::reply_with_array(ctx.ctx, raw::REDISMODULE_POSTPONED_LEN as c_long);
    let mut sent = 0usize;
    let mut after = None;
    while sent < a.count {
        let page = index().claim_page(db, now, stale_cutoff, fresh_cutoff, after, a.count - sent);
        let Some(last) = page.last() else { break };
        after = Some(last.position());
        for entry in &page {
            let Some(name) = store::listed_key(ctx, db, entry) else {
                continue;
            };
            if !caller.may(&name, Access::Write) {
                continue;
            }
            let key = PayKey::open(ctx, &name, true);
            match key.payment() {
                Ok(Some(p))
                    if ptr::eq(p, entry.handle as *const Payment)
                        && !p.rec.status.is_terminal() =>
                {
                    // A hold still live although listed as ready: this
                    // server's clock went back since it was released.
                    if p.rec.leased_at(now) {
                        continue;
                    }
                    let before = p.facts();
                    if p.rec.lease().is_some() {
                        stats::LEASES_EXPIRED.incr();
                    }
                    p.rec.claim(a.consumer, now, a.lease_ms);
                    index().change(p.member, before, p.facts(), entry.handle);
                    stats::CLAIMS.incr();
                    reply_record(ctx, &p.rec, None);
                    sent += 1;
                    // Last: after the event, another module may have
                    // changed the key; the next entry is found afresh.
                    publish(ctx, &name, &p.rec, None, c"pay.claim");
                }
                // Expired as it was opened: not an index error.
                Ok(None) => {}
                _ => stats::INDEX_MISSES.incr(),
            }
        }
    }
    rm!(RedisModule_ReplySetArrayLength(ctx.ctx, sent as c_long));
    Ok(RedisValue::NoReply)
}

/// `PAY.LOAD key blob [PXAT unix-ms]`: applies a record exactly as the
/// primary wrote it. Replication and AOF use it; applications do not.
pub fn load(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = argv(&args);
    let a = args::parse_load(&argv).map_err(fail)?;
    let rec = codec::decode(a.key, a.blob).map_err(|e| fail(PayError::arg(e.to_string())))?;
    let name = key_arg(&args)?;
    let key = PayKey::open(ctx, name, true);
    match key.payment().map_err(fail)? {
        Some(p) => {
            // In place: the key keeps its TTL unless PXAT says otherwise.
            let before = p.facts();
            p.rec = rec;
            index().change(p.member, before, p.facts(), p.handle());
        }
        None => {
            key.set(Payment::admitted(selected_db(ctx), rec))
                .map_err(fail)?;
        }
    }
    if let Some(at) = a.expire_at {
        key.expire_at(at);
    }
    ctx.replicate_verbatim();
    store::notify(ctx, c"pay.load", name);
    stats::LOADS.incr();
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// PAY.CACHE's reply: the outcome, then the record, or with BRIEF only its
/// status (a map of two fields, in the same shape).
fn reply_cached(ctx: &Context, r: &Record, outcome: &str, brief: bool) {
    if !brief {
        return reply_record(ctx, r, Some(outcome));
    }
    let c = ctx.ctx;
    raw::reply_with_map(c, 2);
    for s in ["outcome", outcome, "status", r.status.as_str()] {
        raw::reply_with_string_buffer(c, s.as_ptr().cast::<c_char>(), s.len());
    }
}

/// One record as a map (RESP3) or a flat field/value array (RESP2).
fn reply_record(ctx: &Context, r: &Record, outcome: Option<&str>) {
    let c = ctx.ctx;
    let bulk = |s: &[u8]| {
        raw::reply_with_string_buffer(c, s.as_ptr().cast::<c_char>(), s.len());
    };
    let int = |n: i64| {
        raw::reply_with_long_long(c, n);
    };
    let fields = 14 + c_long::from(outcome.is_some());
    raw::reply_with_map(c, fields);
    if let Some(o) = outcome {
        bulk(b"outcome");
        bulk(o.as_bytes());
    }
    let text = r.text();
    bulk(b"transaction_id");
    bulk(transaction_id(text.key, config::key_prefix().as_bytes()));
    bulk(b"user_id");
    bulk(text.user_id.as_bytes());
    bulk(b"amount");
    int(r.amount);
    bulk(b"currency");
    bulk(&r.currency);
    bulk(b"status");
    bulk(r.status.as_str().as_bytes());
    bulk(b"created_at");
    int(r.created_at);
    bulk(b"updated_at");
    int(r.updated_at);
    bulk(b"attempts");
    int(i64::from(r.attempts));
    bulk(b"stale");
    int(i64::from(r.stale));
    bulk(b"reason");
    bulk(text.reason.as_bytes());
    bulk(b"provider_ref");
    bulk(text.provider_ref.as_bytes());
    bulk(b"lease_owner");
    bulk(text.lease_owner.as_bytes());
    bulk(b"lease_until");
    int(text.lease_until);
    bulk(b"key");
    bulk(text.key);
}
