//! Key access and the write path: [`PayKey`] opens a key as a payment, and
//! [`replicate_and_notify`] does every write's companions in order.

use std::ffi::{c_char, c_int, CStr};

use redis_module::{raw, Context, RedisString};

use crate::codec;
use crate::error::PayError;
use crate::store::*;

/// Every write's companions, in the only safe order: replicate the exact
/// record the primary chose (with its absolute expiry, when it was set now),
/// close the key, and only then announce the change. Nothing may touch the
/// record after the event: another module's handler may delete it, and
/// closing the key would read the freed value.
pub fn replicate_and_notify(
    ctx: &Context,
    key: PayKey,
    name: &RedisString,
    expire_at: Option<i64>,
    event: &CStr,
) {
    thread_local! {
        /// Reused for every write: one allocation less on the hot path.
        static BLOB: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BLOB.with_borrow_mut(|blob| {
        if let Ok(Some(p)) = key.payment() {
            blob.clear();
            codec::encode_into(&p.rec, blob);
            replicate(ctx, name, blob, expire_at);
        }
    });
    drop(key);
    notify(ctx, event, name);
}

/// Raises a keyspace event of the module class.
pub fn notify(ctx: &Context, event: &CStr, key: &RedisString) {
    rm!(RedisModule_NotifyKeyspaceEvent(
        ctx.ctx,
        raw::REDISMODULE_NOTIFY_MODULE as c_int,
        event.as_ptr(),
        key.inner
    ));
}

fn replicate(ctx: &Context, key: &RedisString, blob: &[u8], expire_at: Option<i64>) {
    let (ptr, len) = (blob.as_ptr().cast::<c_char>(), blob.len());
    match expire_at {
        Some(at) => rm!(RedisModule_Replicate(
            ctx.ctx,
            c"PAY.LOAD".as_ptr(),
            c"sbcl".as_ptr(),
            key.inner,
            ptr,
            len,
            c"PXAT".as_ptr(),
            at,
        )),
        None => rm!(RedisModule_Replicate(
            ctx.ctx,
            c"PAY.LOAD".as_ptr(),
            c"sb".as_ptr(),
            key.inner,
            ptr,
            len,
        )),
    };
}

/// The payment under an open key: `None` if the key is empty (or null),
/// `WrongType` if it holds anything else.
pub(crate) fn payment_in<'a>(
    key: *mut raw::RedisModuleKey,
) -> Result<Option<&'a mut Payment>, PayError> {
    if key.is_null() {
        return Ok(None);
    }
    let kind = rm!(RedisModule_KeyType(key));
    if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
        return Ok(None);
    }
    if kind != raw::REDISMODULE_KEYTYPE_MODULE as c_int
        || rm!(RedisModule_ModuleTypeGetType(key)) != *PAY_TYPE.raw_type.borrow()
    {
        return Err(PayError::WrongType);
    }
    let value = rm!(RedisModule_ModuleTypeGetValue(key)).cast::<Payment>();
    // SAFETY: a value of our type; Redis runs one command at a time, so no
    // other reference to it is live while its key is open.
    Ok(unsafe { value.as_mut() })
}

/// An open key, seen as a payment slot. Closed on drop.
pub struct PayKey {
    key: *mut raw::RedisModuleKey,
}

impl PayKey {
    /// Opens `name` in the context's database, for reading or for writing.
    pub fn open(ctx: &Context, name: &RedisString, write: bool) -> PayKey {
        let mode = if write {
            raw::KeyMode::READ | raw::KeyMode::WRITE
        } else {
            raw::KeyMode::READ
        };
        PayKey {
            key: raw::open_key(ctx.ctx, name.inner, mode),
        }
    }

    /// Opens `name` in the context's database to look at it from an event
    /// raised for any key of the server: read-only and, where the server
    /// knows the flags (Redis 7.2+, Valkey), without touching its LRU/LFU,
    /// counting a keyspace hit or miss, or raising `keymiss`. Redis's own
    /// statistics must not see the module look.
    pub fn peek(ctx: &Context, name: &RedisString) -> PayKey {
        let mode = raw::REDISMODULE_READ as c_int | peek_flags();
        PayKey {
            key: rm!(RedisModule_OpenKey(ctx.ctx, name.inner, mode)).cast(),
        }
    }

    /// The payment under this key: `None` if the key is empty, `WrongType` if
    /// it holds anything else.
    #[allow(clippy::mut_from_ref)]
    pub fn payment(&self) -> Result<Option<&mut Payment>, PayError> {
        payment_in(self.key)
    }

    /// Stores a new payment under this (empty, writable) key.
    pub fn set(&self, p: Box<Payment>) -> Result<(), PayError> {
        let value = Box::into_raw(p);
        let status = rm!(RedisModule_ModuleTypeSetValue(
            self.key,
            *PAY_TYPE.raw_type.borrow(),
            value.cast()
        ));
        if status == raw::REDISMODULE_OK as c_int {
            Ok(())
        } else {
            // SAFETY: Redis did not take the value; it is still ours to free.
            let p = unsafe { Box::from_raw(value) };
            index().release(p.member, p.facts(), p.handle());
            Err(PayError::WrongType)
        }
    }

    pub fn expire_at(&self, at_ms: i64) {
        set_expire_at(self.key, at_ms);
    }

    /// Whether the key has an expiry.
    pub fn expires(&self) -> bool {
        rm!(RedisModule_GetExpire(self.key)) != raw::REDISMODULE_NO_EXPIRE as raw::mstime_t
    }

    /// An unresolved payment never expires: removes any expiry the key
    /// carries (a record written before contract v2, or an operator's
    /// EXPIRE) and replicates that as PERSIST. Called on every write that
    /// leaves a payment unresolved.
    pub fn keep_unresolved(&self, ctx: &Context, name: &RedisString) {
        if !self.expires() {
            return;
        }
        rm!(RedisModule_SetExpire(
            self.key,
            raw::REDISMODULE_NO_EXPIRE as raw::mstime_t
        ));
        rm!(RedisModule_Replicate(
            ctx.ctx,
            c"PERSIST".as_ptr(),
            c"s".as_ptr(),
            name.inner
        ));
    }
}

/// The open-key flags [`PayKey::peek`] passes: those of NOTOUCH, NOSTATS and
/// NONOTIFY the server supports (Redis 7.0 knows only NOTOUCH, and ignores
/// flags it does not know).
fn peek_flags() -> c_int {
    static FLAGS: std::sync::OnceLock<c_int> = std::sync::OnceLock::new();
    *FLAGS.get_or_init(|| {
        let wanted = (raw::REDISMODULE_OPEN_KEY_NOTOUCH
            | raw::REDISMODULE_OPEN_KEY_NOSTATS
            | raw::REDISMODULE_OPEN_KEY_NONOTIFY) as c_int;
        // SAFETY: a by-value read of the table Redis filled in at init.
        match unsafe { raw::RedisModule_GetOpenKeyModesAll } {
            // SAFETY: takes nothing, returns a mask; main thread.
            Some(all) => wanted & unsafe { all() },
            None => raw::REDISMODULE_OPEN_KEY_NOTOUCH as c_int,
        }
    })
}

impl Drop for PayKey {
    fn drop(&mut self) {
        if !self.key.is_null() {
            raw::close_key(self.key);
        }
    }
}
