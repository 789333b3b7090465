//! The PAY.* commands: parse, act on the key, then write, replicate, notify
//! and reply. The logic lives in the pure modules; this is the glue.

use std::ffi::{c_char, c_long};
use std::ptr;

use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

use crate::args::{self, StuckArgs};
use crate::codec;
use crate::config;
use crate::error::PayError;
use crate::record::{Applied, Record};
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

fn key_arg(args: &[RedisString]) -> Result<&RedisString, RedisError> {
    args.get(1).ok_or_else(|| fail(PayError::Arity("PAY")))
}

/// `PAY.CACHE key user_id amount currency [TTL seconds] [BRIEF]`
pub fn cache(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = argv(&args);
    let a = args::parse_cache(&argv).map_err(fail)?;
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
            let ttl_ms = a.ttl_secs.unwrap_or_else(|| config::DEFAULT_TTL.get()) * 1000;
            let expire_at = now.saturating_add(ttl_ms);
            let rec = Record::new(a.key, a.user_id, a.amount, a.currency, now);
            key.set(Payment::admitted(selected_db(ctx), rec))
                .map_err(fail)?;
            key.expire_at(expire_at);
            let Some(p) = key.payment().map_err(fail)? else {
                return Err(fail(PayError::NoPayment));
            };
            publish(ctx, name, &p.rec, Some(expire_at), c"pay.cache");
            stats::CREATED.incr();
            reply_cached(ctx, &p.rec, "created", a.brief);
            Ok(RedisValue::NoReply)
        }
    }
}

/// `PAY.CHECK key [JSON]`
pub fn check(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = argv(&args);
    let a = args::parse_check(&argv).map_err(fail)?;
    let key = PayKey::open(ctx, key_arg(&args)?, false);
    match key.payment().map_err(fail)? {
        None => Ok(RedisValue::Null),
        Some(p) if a.json => Ok(RedisValue::BulkString(p.rec.to_json())),
        Some(p) => {
            reply_record(ctx, &p.rec, None);
            Ok(RedisValue::NoReply)
        }
    }
}

/// `PAY.UPDATE key status [REASON text] [REF provider_ref]`
pub fn update(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = argv(&args);
    let a = args::parse_update(&argv).map_err(fail)?;
    let name = key_arg(&args)?;
    let key = PayKey::open(ctx, name, true);
    let Some(p) = key.payment().map_err(fail)? else {
        return Err(fail(PayError::NoPayment));
    };
    let before = p.facts();
    match p.rec.apply(&a.update, now_ms()).map_err(fail)? {
        Applied::Unchanged => {}
        Applied::Changed => {
            index().change(p.member, before, p.facts(), p.handle());
            publish(ctx, name, &p.rec, None, c"pay.update");
            stats::UPDATES.incr();
        }
    }
    reply_record(ctx, &p.rec, None);
    Ok(RedisValue::NoReply)
}

/// `PAY.STUCK [OLDER ms] [COUNT n] [CLAIM consumer LEASE ms]`
///
/// Walks the pending index oldest first. With CLAIM, records under a live
/// lease are skipped (in memory, without opening their keys) and each record
/// returned is leased to the consumer, with one more attempt counted, in the
/// same atomic step.
pub fn stuck(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let argv = argv(&args);
    let a: StuckArgs = args::parse_stuck(&argv).map_err(fail)?;
    let older = a.older_ms.unwrap_or_else(|| config::STALE_AFTER_MS.get());
    let now = now_ms();
    let cutoff = now.saturating_sub(older);
    let claiming = a.claim.is_some();
    // SAFETY: the index calls this on its own entries, under its lock.
    let leased = |h| claiming && unsafe { store::payment_at(h) }.rec.leased_at(now);
    let db = selected_db(ctx);
    raw::reply_with_array(ctx.ctx, raw::REDISMODULE_POSTPONED_LEN as c_long);
    let mut sent = 0usize;
    let mut after = None;
    while sent < a.count {
        let page = index().pending_page(db, cutoff, after, a.count - sent, leased);
        let Some(last) = page.last() else { break };
        after = Some(last.position());
        for entry in &page {
            // Gone since the page was read (a CLAIM's notification may have
            // let another module act): skip it.
            let Some(name) = store::listed_key(ctx, db, entry) else {
                continue;
            };
            let key = PayKey::open(ctx, &name, claiming);
            match key.payment() {
                Ok(Some(p))
                    if ptr::eq(p, entry.handle as *const Payment)
                        && !p.rec.status.is_terminal() =>
                {
                    if let Some(claim) = &a.claim {
                        let before = p.facts();
                        if p.rec.lease().is_some() {
                            stats::LEASES_EXPIRED.incr();
                        }
                        p.rec.claim(claim.consumer, now, claim.lease_ms);
                        index().change(p.member, before, p.facts(), entry.handle);
                        publish(ctx, &name, &p.rec, None, c"pay.claim");
                        stats::CLAIMS.incr();
                    }
                    reply_record(ctx, &p.rec, None);
                    sent += 1;
                }
                // Expired just now (opening the key deleted it, and the free
                // callback dropped the entry): not an index error.
                Ok(None) => {}
                _ => stats::INDEX_MISSES.incr(),
            }
        }
    }
    rm!(RedisModule_ReplySetArrayLength(ctx.ctx, sent as c_long));
    Ok(RedisValue::NoReply)
}

/// `PAY.LOAD key blob [PXAT unix-ms]`: applies a record exactly as the
/// primary wrote it. Internal: only the replication link and an AOF being
/// loaded may run it, never a client (nor its MULTI, script or function).
/// The key is taken as it is: whatever name Redis let the record live
/// under (RENAME, COPY, RESTORE) travels unchanged.
pub fn load(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let flags = ctx.get_flags();
    if !flags.intersects(ContextFlags::REPLICATED | ContextFlags::LOADING) {
        return Err(fail(PayError::arg(
            "PAY.LOAD is internal: only replication and AOF loading may run it",
        )));
    }
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
    let fields = 13 + c_long::from(outcome.is_some());
    raw::reply_with_map(c, fields);
    if let Some(o) = outcome {
        bulk(b"outcome");
        bulk(o.as_bytes());
    }
    let text = r.text();
    bulk(b"transaction_id");
    bulk(text.key);
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
}
