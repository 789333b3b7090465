//! The PAY.* commands: parse, act on the key, then write, replicate, notify
//! and reply. The logic lives in the pure modules; this is the glue.

use std::borrow::Cow;
use std::ffi::{c_char, c_long};
use std::ptr;

use pay_proto::field;
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult, RedisString, RedisValue};

use crate::acl::{Access, Caller};
use crate::args::{self, StuckArgs};
use crate::call::{ArgString, Args};
use crate::codec;
use crate::config;
use crate::error::PayError;
use crate::index::Handle;
use crate::key::{self, replicate_and_notify, PayKey};
use crate::record::{in_namespace, transaction_id, Applied, Record, MAX_TIMESTAMP_MS};
use crate::stats;
use crate::store::{self, index, now_ms, rm, selected_db, Payment};

/// Every error reply goes through here, so INFO counts them.
fn fail(e: PayError) -> RedisError {
    stats::ERRORS.incr();
    RedisError::String(e.to_string())
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
    fn of(args: &Args<'a>) -> Argv<'a> {
        let rest = args.after_name();
        let mut argv = Argv {
            inline: [&[]; INLINE_ARGS],
            len: rest.len(),
            heap: Vec::new(),
        };
        if rest.len() <= INLINE_ARGS {
            for (slot, arg) in argv.inline.iter_mut().zip(rest) {
                *slot = arg;
            }
        } else {
            argv.heap = rest.collect();
        }
        argv
    }

    fn get(&self) -> &[&'a [u8]] {
        self.inline.get(..self.len).unwrap_or(&self.heap[..])
    }
}

fn key_arg<'a>(args: &Args<'a>) -> Result<ArgString<'a>, RedisError> {
    args.string(1).ok_or_else(|| fail(PayError::Arity("PAY")))
}

/// `PAY.CACHE key user_id amount currency [TTL seconds] [BRIEF]`
pub fn cache(ctx: &Context, args: &Args<'_>) -> RedisResult {
    let argv = Argv::of(args);
    let a = args::parse_cache(argv.get()).map_err(fail)?;
    {
        let prefix = config::key_prefix();
        if !in_namespace(a.key, prefix.as_bytes()) {
            return Err(fail(PayError::arg(format!(
                "key must start with pay.key-prefix '{}' and name a transaction after it",
                prefix.as_str()
            ))));
        }
    }
    let name = key_arg(args)?;
    let key = PayKey::open(ctx, &name, true);
    match key.payment().map_err(fail)? {
        // Created under another key and moved here (RENAME, COPY, RESTORE):
        // another transaction, whatever its terms. Answering `duplicate`
        // would hand this idempotency key that payment's outcome.
        Some(p) if !p.rec.fields().origin.is_empty() => {
            stats::MISMATCHES.incr();
            Err(fail(PayError::Mismatch(
                "idempotency key holds a payment created under another key and moved here".into(),
            )))
        }
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
            replicate_and_notify(ctx, key, &name, None, c"pay.cache");
            Ok(RedisValue::NoReply)
        }
    }
}

/// `PAY.CHECK key [JSON]`
pub fn check(ctx: &Context, args: &Args<'_>) -> RedisResult {
    let argv = Argv::of(args);
    let a = args::parse_check(argv.get()).map_err(fail)?;
    let name = key_arg(args)?;
    let key = PayKey::open(ctx, &name, false);
    match key.payment().map_err(fail)? {
        None => Ok(RedisValue::Null),
        Some(p) if a.json => {
            reply_json(ctx, &p.rec);
            Ok(RedisValue::NoReply)
        }
        Some(p) => {
            reply_record(ctx, &p.rec, None);
            Ok(RedisValue::NoReply)
        }
    }
}

/// `PAY.UPDATE key status [REASON text] [REF ref] [RETRY ms] [FENCE n]`
pub fn update(ctx: &Context, args: &Args<'_>) -> RedisResult {
    let argv = Argv::of(args);
    let a = args::parse_update(argv.get()).map_err(fail)?;
    let name = key_arg(args)?;
    let key = PayKey::open(ctx, &name, true);
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
    match expire_at {
        Some(at) => key.expire_at(at),
        None => key.keep_unresolved(ctx, &name),
    }
    index().change(p.member, before, p.facts(), p.handle());
    stats::UPDATES.incr();
    reply_record(ctx, &p.rec, None);
    // Last: after the event, another module may have changed the key.
    replicate_and_notify(ctx, key, &name, expire_at, c"pay.update");
    Ok(RedisValue::NoReply)
}

/// The latest creation time of a record at least `older` ms old at `now`.
/// OLDER 0 is everything, even a record dated ahead of this server's clock
/// (written by a primary whose clock ran ahead).
fn created_by(now: i64, older: i64) -> i64 {
    if older == 0 {
        i64::MAX
    } else {
        now.saturating_sub(older)
    }
}

/// `PAY.STUCK [OLDER ms] [COUNT n]`
///
/// Read-only, so replicas serve it. Lists unresolved records (pending and
/// unknown, leased or not) created at least OLDER ms ago, oldest first; equal
/// ages are ordered by key, so the primary, its replicas and a restarted
/// server list the same. Only keys the caller may read are listed.
pub fn stuck(ctx: &Context, args: &Args<'_>) -> RedisResult {
    let argv = Argv::of(args);
    let a: StuckArgs = args::parse_stuck(argv.get()).map_err(fail)?;
    let caller = Caller::of(ctx).map_err(fail)?;
    let older = a.older_ms.unwrap_or_else(|| config::STALE_AFTER_MS.get());
    let cutoff = created_by(now_ms(), older);
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
pub fn claim(ctx: &Context, args: &Args<'_>) -> RedisResult {
    let argv = Argv::of(args);
    let a = args::parse_claim(argv.get()).map_err(fail)?;
    let caller = Caller::of(ctx).map_err(fail)?;
    let now = now_ms();
    let (stale_cutoff, fresh_cutoff) = match a.older_ms {
        Some(older) => {
            let cutoff = created_by(now, older);
            (cutoff, cutoff)
        }
        None => (i64::MAX, created_by(now, config::STALE_AFTER_MS.get())),
    };
    let db = selected_db(ctx);
    raw::reply_with_array(ctx.ctx, raw::REDISMODULE_POSTPONED_LEN as c_long);
    let mut sent = 0usize;
    let mut after = None;
    while sent < a.count {
        // Pages of at least 64: records the caller may not write are skipped
        // without a new index walk each.
        let want = (a.count - sent).clamp(64, 4096);
        let page = index().claim_page(db, now, stale_cutoff, fresh_cutoff, after, want);
        let Some(last) = page.last() else { break };
        after = Some(last.position());
        let exhausted = page.len() < want;
        for entry in &page {
            if sent == a.count {
                break;
            }
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
                    key.keep_unresolved(ctx, &name);
                    index().change(p.member, before, p.facts(), entry.handle);
                    stats::CLAIMS.incr();
                    reply_record(ctx, &p.rec, None);
                    sent += 1;
                    // Last: after the event, another module may have
                    // changed the key; the next entry is found afresh.
                    replicate_and_notify(ctx, key, &name, None, c"pay.claim");
                }
                // Expired as it was opened: not an index error.
                Ok(None) => {}
                _ => stats::INDEX_MISSES.incr(),
            }
        }
        if exhausted {
            break;
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
pub fn load(ctx: &Context, args: &Args<'_>) -> RedisResult {
    let flags = ctx.get_flags();
    if !flags.intersects(ContextFlags::REPLICATED | ContextFlags::LOADING) {
        return Err(fail(PayError::arg(
            "PAY.LOAD is internal: only replication and AOF loading may run it",
        )));
    }
    let argv = Argv::of(args);
    let a = args::parse_load(argv.get()).map_err(fail)?;
    let rec = codec::decode(a.key, a.blob).map_err(|e| fail(PayError::arg(e.to_string())))?;
    let name = key_arg(args)?;
    let key = PayKey::open(ctx, &name, true);
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
    // Closed before the event: a handler may delete the key, and closing a
    // key whose value is gone reads freed memory (Valkey reads its type).
    drop(key);
    key::notify(ctx, c"pay.load", &name);
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
    for s in [field::OUTCOME, outcome, field::STATUS, r.status.as_str()] {
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
        bulk(field::OUTCOME.as_bytes());
        bulk(o.as_bytes());
    }
    let text = r.fields();
    bulk(field::TRANSACTION_ID.as_bytes());
    bulk(transaction_id(
        text.identity(),
        config::key_prefix().as_bytes(),
    ));
    bulk(field::USER_ID.as_bytes());
    bulk(text.user_id.as_bytes());
    bulk(field::AMOUNT.as_bytes());
    int(r.amount);
    bulk(field::CURRENCY.as_bytes());
    bulk(&r.currency);
    bulk(field::STATUS.as_bytes());
    bulk(r.status.as_str().as_bytes());
    bulk(field::CREATED_AT.as_bytes());
    int(r.created_at);
    bulk(field::UPDATED_AT.as_bytes());
    int(r.updated_at);
    bulk(field::ATTEMPTS.as_bytes());
    int(i64::from(r.attempts));
    bulk(field::STALE.as_bytes());
    int(i64::from(r.stale));
    bulk(field::REASON.as_bytes());
    bulk(text.reason.as_bytes());
    bulk(field::PROVIDER_REF.as_bytes());
    bulk(text.provider_ref.as_bytes());
    bulk(field::LEASE_OWNER.as_bytes());
    bulk(text.lease_owner.as_bytes());
    bulk(field::LEASE_UNTIL.as_bytes());
    int(text.lease_until);
    bulk(field::KEY.as_bytes());
    bulk(text.key);
}

/// PAY.CHECK JSON's reply: the record as JSON in one bulk string, written
/// into a buffer kept for the next call.
fn reply_json(ctx: &Context, r: &Record) {
    thread_local! {
        static JSON: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    JSON.with_borrow_mut(|out| {
        out.clear();
        write_json(r, config::key_prefix().as_bytes(), out);
        raw::reply_with_string_buffer(ctx.ctx, out.as_ptr().cast::<c_char>(), out.len());
    });
}

/// The same bytes as [`Record::to_json`] (a test holds them equal), written
/// by hand: serde's serializer, its growing `String` and the timestamp's
/// formatter cost about four times as many instructions.
fn write_json(r: &Record, prefix: &[u8], out: &mut Vec<u8>) {
    let text = r.fields();
    let key = std::str::from_utf8(text.key)
        .map_or_else(|_| String::from_utf8_lossy(text.key), Cow::Borrowed);
    let id_bytes = transaction_id(text.identity(), prefix);
    // A key that is text holds its transaction id as text (unless the
    // payment moved: then the id is its origin's): no second check.
    let id = match &key {
        Cow::Borrowed(k) if text.origin.is_empty() => k.get(text.key.len() - id_bytes.len()..),
        _ => None,
    };
    out.extend_from_slice(b"{\"transaction_id\":");
    json_str(
        out,
        &id.map_or_else(|| String::from_utf8_lossy(id_bytes), Cow::Borrowed),
    );
    out.extend_from_slice(b",\"user_id\":");
    match decimal_u64(text.user_id) {
        Some(n) => json_uint(out, n),
        None => json_str(out, text.user_id),
    }
    // A status name and a currency's letters need no escaping.
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(r.status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"amount\":");
    json_int(out, r.amount);
    out.extend_from_slice(b",\"currency\":\"");
    out.extend_from_slice(r.currency_str().as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":\"");
    rfc3339_seconds_into(out, r.created_at);
    out.extend_from_slice(b"\",\"created_at\":");
    json_int(out, r.created_at);
    out.extend_from_slice(b",\"updated_at\":");
    json_int(out, r.updated_at);
    out.extend_from_slice(b",\"attempts\":");
    json_uint(out, u64::from(r.attempts));
    out.extend_from_slice(if r.stale {
        b",\"stale\":true"
    } else {
        b",\"stale\":false"
    });
    out.extend_from_slice(b",\"reason\":");
    json_str(out, text.reason);
    out.extend_from_slice(b",\"provider_ref\":");
    json_str(out, text.provider_ref);
    out.extend_from_slice(b",\"lease_owner\":");
    json_str(out, text.lease_owner);
    out.extend_from_slice(b",\"lease_until\":");
    json_int(out, text.lease_until);
    out.extend_from_slice(b",\"key\":");
    json_str(out, &key);
    out.push(b'}');
}

/// A user id that is a canonical decimal (no sign, no leading zero) fitting
/// in u64 is a number in JSON, as in [`Record::to_json`].
fn decimal_u64(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    b.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

fn json_int(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    json_uint(out, n.unsigned_abs());
}

/// A decimal, four digits per 64-bit division: timestamps have thirteen.
fn json_uint(out: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        // Attempts and an unset deadline: one digit.
        out.push(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 10_000 {
        // Below 10,000: fits any usize.
        let four = (n % 10_000) as usize;
        n /= 10_000;
        put_pair(&mut digits, &mut at, four % 100);
        put_pair(&mut digits, &mut at, four / 100);
    }
    // Below 10,000 now.
    let mut n = n as usize;
    if n >= 100 {
        put_pair(&mut digits, &mut at, n % 100);
        n /= 100;
    }
    if n >= 10 {
        put_pair(&mut digits, &mut at, n);
    } else {
        at -= 1;
        // A single digit.
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes `two` (below 100) as two digits just before `at`.
fn put_pair(digits: &mut [u8; 20], at: &mut usize, two: usize) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    *at -= 2;
    digits[*at..*at + 2].copy_from_slice(&PAIRS[two * 2..two * 2 + 2]);
}

/// A JSON string, escaped as serde_json escapes: `"`, `\` and the control
/// characters below 0x20, nothing else.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Reason, reference and lease owner are empty on most records.
    if bytes.is_empty() {
        out.extend_from_slice(b"\"\"");
        return;
    }
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `2024-01-30T12:45:00Z` for a Unix ms timestamp, clamped to 1970..=9999
/// as [`crate::record::rfc3339_seconds`] clamps it.
fn rfc3339_seconds_into(out: &mut Vec<u8>, unix_ms: i64) {
    let secs = unix_ms.clamp(0, MAX_TIMESTAMP_MS) / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut t = *b"0000-00-00T00:00:00Z";
    for (at, n) in [
        (0, year / 100),
        (2, year % 100),
        (5, month),
        (8, day),
        (11, rest / 3600),
        (14, rest / 60 % 60),
        (17, rest % 60),
    ] {
        // 0..=99 each: two decimal digits.
        t[at] = b'0' + (n / 10) as u8;
        t[at + 1] = b'0' + (n % 10) as u8;
    }
    out.extend_from_slice(&t);
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::write_json;
    use crate::props::status;
    use crate::record::{Fields, Record, MAX_TIMESTAMP_MS};

    fn json(r: &Record, prefix: &[u8]) -> String {
        let mut out = Vec::new();
        write_json(r, prefix, &mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn hand_written_json_is_serde_json_byte_for_byte_on_edge_cases() {
        for (key, user_id, reason, created_at) in [
            (&b"txn_12345"[..], "67890", "", 1_706_618_700_000),
            (b"payment:txn_9", "007", "say \"hi\"\\", 0),
            (
                b"\xff\xfe bytes",
                "u-1",
                "tab\tnew\nline\r\x08\x0c\x01\x1f\x7f",
                -5,
            ),
            (b"k", "0", "\u{e9}\u{1f600}/", MAX_TIMESTAMP_MS),
            (b"k", "99999999999999999999999", "", i64::MAX),
            (b"k", "18446744073709551615", "", 951_782_400_000), // 2000-02-29
            ("\u{e9}-1".as_bytes(), "1", "", 1),
        ] {
            let text = Fields {
                key,
                origin: b"",
                user_id,
                reason,
                provider_ref: "ch_\u{1}",
                lease_owner: "w1",
                lease_until: i64::MIN,
                ttl_secs: 60,
            };
            let mut r = Record::with_text(text, i64::MAX, *b"EUR", created_at);
            r.updated_at = i64::MIN;
            r.attempts = u32::MAX;
            r.stale = true;
            // b"\xc3": a prefix that ends inside the key's first character.
            for prefix in [&b""[..], b"payment:", b"\xff", b"\xc3"] {
                assert_eq!(
                    json(&r, prefix),
                    r.to_json(prefix),
                    "{user_id:?} {reason:?}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn hand_written_json_is_serde_json_byte_for_byte(
            key in vec(any::<u8>(), 1..40),
            origin in prop_oneof![Just(Vec::new()), vec(any::<u8>(), 0..40)],
            prefix in vec(any::<u8>(), 0..4),
            user_id in any::<String>(),
            reason in any::<String>(),
            provider_ref in any::<String>(),
            lease_owner in any::<String>(),
            lease_until in any::<i64>(),
            created_at in prop_oneof![any::<i64>(), 0..=MAX_TIMESTAMP_MS],
            updated_at in any::<i64>(),
            amount in any::<i64>(),
            attempts in any::<u32>(),
            stale in any::<bool>(),
            status in status(),
        ) {
            let text = Fields {
                key: &key,
                origin: &origin,
                user_id: &user_id,
                reason: &reason,
                provider_ref: &provider_ref,
                lease_owner: &lease_owner,
                lease_until,
                ttl_secs: 60,
            };
            let mut r = Record::with_text(text, amount, *b"USD", created_at);
            r.updated_at = updated_at;
            r.attempts = attempts;
            r.stale = stale;
            r.status = status;
            prop_assert_eq!(json(&r, &prefix), r.to_json(&prefix));
        }
    }
}
