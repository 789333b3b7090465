//! The Redis side of a payment record: the module data type and its
//! callbacks (RDB, AOF, digest, memory, copy), the pending index it feeds,
//! and the FFI helpers the rest of the glue shares. Events are in
//! `events.rs`, key access and the write path in `key.rs`.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use redis_module::native_types::RedisType;
use redis_module::{logging, raw, Context, RedisString};

use crate::codec;
use crate::index::{Facts, Handle, Index, Member, Pending};
use crate::record::Record;

/// Calls a Redis module API function whose presence [`check_api`] verified at load.
macro_rules! rm {
    ($f:ident ( $($arg:expr),* $(,)? )) => {
        // SAFETY: the function pointer was checked at load time; every caller
        // runs on a thread Redis allows for it and passes pointers Redis gave us.
        unsafe { raw::$f.expect(concat!(stringify!($f), " is checked at load"))($($arg),*) }
    };
}
pub(crate) use rm;

/// Type name (exactly 9 characters) and RDB encoding version.
pub const TYPE_NAME: &str = "payrecord";
pub const ENCODING_VERSION: i32 = 1;

/// A record as Redis holds it: the persisted record and its index membership.
pub struct Payment {
    pub rec: Record,
    pub member: Member,
}

// One allocator size class: 64 bytes per payment, plus its text.
const _: () = assert!(std::mem::size_of::<Payment>() == 64);

impl Payment {
    /// A new payment in database `db`, entered in the index under its address.
    pub fn admitted(db: i32, rec: Record) -> Box<Payment> {
        let mut p = Box::new(Payment {
            rec,
            member: Member::NONE,
        });
        p.member = index().admit(db, p.handle(), p.facts());
        p
    }

    /// A payment an RDB load brings into database `db`. While a diskless
    /// `swapdb` load fills databases aside it is not indexed: those
    /// databases are indexed whole if and when Redis swaps them in (see
    /// [`on_async_load`]).
    fn loaded(db: i32, rec: Record) -> Box<Payment> {
        if LOADING_ASIDE.load(Ordering::Relaxed) {
            Box::new(Payment {
                rec,
                member: Member::NONE,
            })
        } else {
            Payment::admitted(db, rec)
        }
    }

    pub fn facts(&self) -> Facts {
        Facts {
            created_at: self.rec.created_at,
            status: self.rec.status,
            stale: self.rec.stale,
            until: self.rec.held_until(),
        }
    }

    /// The index's name for this payment: its address, which stays put from
    /// the moment Redis holds it until the free callback.
    pub fn handle(&self) -> Handle {
        std::ptr::from_ref(self) as Handle
    }
}

/// The payment an index entry names.
///
/// # Safety
/// The entry must be in the index ([`Index::holds`], or read while the index
/// lock is held): every payment leaves the index in its free callback, so the
/// handle is the address of a live `Payment`. The reference must not outlive
/// anything that could free the payment (opening its key may expire it).
pub unsafe fn payment_at<'a>(handle: Handle) -> &'a Payment {
    // SAFETY: per the contract above.
    unsafe { &*(handle as *const Payment) }
}

/// The key of a listed payment, copied into a Redis string, if the payment is
/// still in the index.
pub fn listed_key(ctx: &Context, db: i32, entry: &Pending) -> Option<RedisString> {
    if !index().holds(db, entry) {
        return None;
    }
    // SAFETY: held by the index just now, and nothing ran since.
    let p = unsafe { payment_at(entry.handle) };
    Some(RedisString::create_from_slice(ctx.ctx, p.rec.key()))
}

pub static PAY_TYPE: RedisType = RedisType::new(
    TYPE_NAME,
    ENCODING_VERSION,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: None,
        aux_save: None,
        aux_save_triggers: 0,
        free_effort: Some(free_effort),
        unlink: None,
        copy: None,
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: None,
        copy2: Some(copy2),
        aux_save2: None,
    },
);

static INDEX: Mutex<Index> = Mutex::new(Index::new());

/// The pending index. Locked only briefly: the main thread uses it, and the
/// lazy-free thread touches it when FLUSHALL ASYNC frees values.
pub fn index() -> MutexGuard<'static, Index> {
    INDEX
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The index for INFO, which may run in a crash report: never wait for the lock.
pub fn try_index() -> Option<MutexGuard<'static, Index>> {
    match INDEX.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

pub fn now_ms() -> i64 {
    rm!(RedisModule_Milliseconds())
}

pub fn selected_db(ctx: &Context) -> i32 {
    rm!(RedisModule_GetSelectedDb(ctx.ctx))
}

/// Fails the load, with a clear log line, on a server that lacks an API the
/// module relies on.
pub fn check_api() -> Result<(), String> {
    macro_rules! present {
        ($($f:ident),*) => {
            [$((
                stringify!($f),
                // SAFETY: a by-value read of the table Redis filled in at init.
                unsafe { raw::$f }.is_some(),
            )),*]
        };
    }
    let present = present!(
        RedisModule_Milliseconds,
        RedisModule_GetSelectedDb,
        RedisModule_GetKeyNameFromIO,
        RedisModule_GetDbIdFromIO,
        RedisModule_GetToKeyNameFromOptCtx,
        RedisModule_GetToDbIdFromOptCtx,
        RedisModule_GetDbIdFromOptCtx,
        RedisModule_SelectDb,
        RedisModule_PublishMessage,
        RedisModule_NotifyKeyspaceEvent,
        RedisModule_CreateTimer,
        RedisModule_StopTimer,
        RedisModule_EmitAOF,
        RedisModule_Replicate,
        RedisModule_ReplicateVerbatim,
        RedisModule_DigestAddStringBuffer,
        RedisModule_DigestEndSequence,
        RedisModule_ReplyWithMap,
        RedisModule_ReplySetArrayLength,
        RedisModule_SubscribeToServerEvent,
        RedisModule_RegisterNumericConfig,
        RedisModule_LoadConfigs,
        RedisModule_SetExpire,
        RedisModule_GetExpire,
        RedisModule_GetContextFlags,
        RedisModule_KeyType,
        RedisModule_ModuleTypeGetType,
        RedisModule_ModuleTypeGetValue,
        RedisModule_ModuleTypeSetValue,
        RedisModule_IsIOError,
        RedisModule_GetServerInfo,
        RedisModule_ServerInfoGetFieldC,
        RedisModule_FreeServerInfo,
        RedisModule_LoadStringBuffer,
        RedisModule_Free,
        RedisModule_SetModuleOptions,
        RedisModule_CreateCommand,
        RedisModule_Scan,
        RedisModule_ScanCursorCreate,
        RedisModule_ScanCursorDestroy
    );
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name.trim_start_matches("RedisModule_"))
        .collect();
    if missing.is_empty() {
        // Looked up now, so the first write does not pay for it.
        set_abs_expire();
        Ok(())
    } else {
        Err(format!(
            "this server lacks module APIs redis-pay needs (Redis 7.0 or later): {}",
            missing.join(", ")
        ))
    }
}

/// `RedisModule_SetAbsExpire` (Redis 6.2.2 and later, Valkey).
type SetAbsExpire = unsafe extern "C" fn(*mut raw::RedisModuleKey, raw::mstime_t) -> c_int;

/// The server's `RedisModule_SetAbsExpire`, if it has one: the pointer the
/// crate's API table holds, or else asked of the server by name, once.
fn set_abs_expire() -> Option<SetAbsExpire> {
    static FOUND: OnceLock<Option<SetAbsExpire>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: a by-value read of the table Redis filled in at init.
        if let Some(f) = unsafe { raw::RedisModule_SetAbsExpire } {
            return Some(f);
        }
        // SAFETY: as above.
        let get_api = unsafe { raw::RedisModule_GetApi }?;
        let mut found: Option<SetAbsExpire> = None;
        // SAFETY: GetApi writes the function's address (a nullable function
        // pointer, which is what `found` is) or nothing; the name is a C string.
        let status = unsafe {
            get_api(
                c"RedisModule_SetAbsExpire".as_ptr(),
                std::ptr::from_mut(&mut found).cast(),
            )
        };
        if status == raw::REDISMODULE_OK as c_int {
            found
        } else {
            None
        }
    })
}

/// Sets a key's expiry to an absolute Unix ms time: exact, so a replica and
/// a reloaded AOF hold the primary's deadline to the millisecond. A server
/// without `RedisModule_SetAbsExpire` (older than 6.2.2) gets it relative to
/// its own clock, which can land 1 ms later.
pub fn set_expire_at(key: *mut raw::RedisModuleKey, at_ms: i64) {
    if let Some(set_abs) = set_abs_expire() {
        // SAFETY: `key` is an open writable key of the calling command.
        unsafe { set_abs(key, at_ms) };
    } else {
        let relative = at_ms.saturating_sub(now_ms()).max(1);
        rm!(RedisModule_SetExpire(key, relative));
    }
}

/// A string buffer read from an RDB stream, freed on drop.
struct IoBuffer {
    ptr: *mut c_char,
    len: usize,
}

impl IoBuffer {
    /// The next string of `io`, or `None` when the read failed: with
    /// `HANDLE_IO_ERRORS` declared, Redis flags the error and returns.
    fn load(io: *mut raw::RedisModuleIO) -> Option<IoBuffer> {
        let mut len = 0usize;
        let ptr = rm!(RedisModule_LoadStringBuffer(io, &mut len));
        let buffer = IoBuffer { ptr, len };
        if ptr.is_null() || rm!(RedisModule_IsIOError(io)) != 0 {
            return None;
        }
        Some(buffer)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: Redis returned `len` readable bytes at `ptr` (not null:
        // checked in `load`), which live until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for IoBuffer {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            rm!(RedisModule_Free(self.ptr.cast()));
        }
    }
}

unsafe extern "C" fn rdb_load(io: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver != ENCODING_VERSION {
        logging::log_io_error(
            io,
            logging::RedisLogLevel::Warning,
            &format!("redis-pay: cannot load record encoding version {encver}"),
        );
        return std::ptr::null_mut();
    }
    // Every read is checked: a short or malformed payload (RESTORE, a
    // corrupted file, a broken replication stream) fails this value's load,
    // which Redis reports as an error instead of stopping the server.
    let Some(buffer) = IoBuffer::load(io) else {
        return std::ptr::null_mut();
    };
    let name = rm!(RedisModule_GetKeyNameFromIO(io));
    let key = if name.is_null() {
        &[][..]
    } else {
        RedisString::string_as_slice(name)
    };
    let rec = match codec::decode(key, buffer.bytes()) {
        Ok(rec) => rec,
        Err(e) => {
            logging::log_io_error(
                io,
                logging::RedisLogLevel::Warning,
                &format!("redis-pay: {e}"),
            );
            return std::ptr::null_mut();
        }
    };
    let db = rm!(RedisModule_GetDbIdFromIO(io));
    Box::into_raw(Payment::loaded(db, rec)).cast()
}

/// # Safety
/// `value` must be a `Payment` this module made.
unsafe fn payment<'a>(value: *const c_void) -> &'a Payment {
    // SAFETY: Redis hands back only values of this type to its callbacks.
    unsafe { &*value.cast::<Payment>() }
}

unsafe extern "C" fn rdb_save(io: *mut raw::RedisModuleIO, value: *mut c_void) {
    // SAFETY: a value of this type.
    let p = unsafe { payment(value) };
    raw::save_slice(io, &codec::encode(&p.rec));
}

unsafe extern "C" fn aof_rewrite(
    io: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    // SAFETY: a value of this type.
    let p = unsafe { payment(value) };
    let blob = codec::encode(&p.rec);
    // Redis appends PEXPIREAT itself for keys with a TTL.
    rm!(RedisModule_EmitAOF(
        io,
        c"PAY.LOAD".as_ptr(),
        c"sb".as_ptr(),
        key,
        blob.as_ptr().cast::<c_char>(),
        blob.len(),
    ));
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    // SAFETY: a value of this type.
    let p = unsafe { payment(value) };
    let index_entry = if p.rec.status.is_terminal() {
        0
    } else {
        INDEX_ENTRY_BYTES
    };
    std::mem::size_of::<Payment>() + p.rec.heap_size() + index_entry
}

/// What a pending payment's index entry costs: 16 bytes in a B-tree leaf
/// that appends keep about half full.
const INDEX_ENTRY_BYTES: usize = 32;

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    // SAFETY: a value of this type.
    let p = unsafe { payment(value) };
    let blob = codec::encode(&p.rec);
    rm!(RedisModule_DigestAddStringBuffer(
        md,
        blob.as_ptr().cast::<c_char>(),
        blob.len()
    ));
    rm!(RedisModule_DigestEndSequence(md));
}

unsafe extern "C" fn free(value: *mut c_void) {
    // SAFETY: Redis frees each value exactly once, and only values of this type.
    let p = unsafe { Box::from_raw(value.cast::<Payment>()) };
    index().release(p.member, p.facts(), p.handle());
    crate::guard::on_free(&p.rec);
}

/// A record is small: Redis frees it at once, on the main thread, even for
/// UNLINK; only FLUSHALL/FLUSHDB ASYNC hand it to the lazy-free thread.
unsafe extern "C" fn free_effort(
    _key: *mut raw::RedisModuleString,
    _value: *const c_void,
) -> usize {
    1
}

unsafe extern "C" fn copy2(
    ctx: *mut raw::RedisModuleKeyOptCtx,
    value: *const c_void,
) -> *mut c_void {
    // SAFETY: a value of this type.
    let p = unsafe { payment(value) };
    let to_key = RedisString::string_as_slice(rm!(RedisModule_GetToKeyNameFromOptCtx(ctx)));
    let to_db = rm!(RedisModule_GetToDbIdFromOptCtx(ctx));
    SOURCE_DB.store(rm!(RedisModule_GetDbIdFromOptCtx(ctx)), Ordering::Relaxed);
    let mut rec = p.rec.clone();
    rec.set_key(to_key);
    Box::into_raw(Payment::admitted(to_db, rec)).cast()
}

/// The database a MOVE or COPY started from, kept until its `move_to` or
/// `copy_to` event (see [`crate::events::on_keyspace_event`]). -1: none.
pub(crate) static SOURCE_DB: AtomicI32 = AtomicI32::new(-1);

/// Whether a diskless `swapdb` load is filling databases aside: from its
/// start to its end, whether completed or aborted.
pub(crate) static LOADING_ASIDE: AtomicBool = AtomicBool::new(false);
