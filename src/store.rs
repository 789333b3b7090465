//! The Redis side of a payment record: the module data type and its
//! callbacks, and every event that tells the pending index a record came,
//! moved or went.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use redis_module::native_types::RedisType;
use redis_module::{logging, raw, Context, NotifyEvent, RedisString};

use crate::codec;
use crate::error::PayError;
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
/// `copy_to` event (see [`on_keyspace_event`]). -1: none.
static SOURCE_DB: AtomicI32 = AtomicI32::new(-1);

/// Keyspace events: RENAME and MOVE carry a value to a new name or database
/// without any type callback; the index follows it here.
///
/// Valkey 8.1 before valkey-io/valkey#4024 runs these callbacks on the
/// executing client and leaves it on the event's database, so after `MOVE`
/// (or `COPY ... DB n`) the caller would find itself in the destination
/// database. The callback puts it back where the command started. On servers
/// without that bug the context's client is a temporary one and selecting a
/// database on it changes nothing.
pub fn on_keyspace_event(ctx: &Context, _kind: NotifyEvent, event: &str, key: &[u8]) {
    match event {
        "move_from" => SOURCE_DB.store(selected_db(ctx), Ordering::Relaxed),
        // RESTORE while a diskless load fills databases aside (a writable
        // replica): loaded unindexed, the record went into a database
        // clients see.
        "restore" if LOADING_ASIDE.load(Ordering::Relaxed) => {
            let name = RedisString::create_from_slice(ctx.ctx, key);
            let db = selected_db(ctx);
            let k = PayKey::open(ctx, &name, false);
            if let Ok(Some(p)) = k.payment() {
                if p.member == Member::NONE {
                    p.member = index().admit(db, p.handle(), p.facts());
                }
            }
        }
        "rename_to" | "move_to" => {
            let name = RedisString::create_from_slice(ctx.ctx, key);
            let db = selected_db(ctx);
            let k = PayKey::open(ctx, &name, false);
            if let Ok(Some(p)) = k.payment() {
                p.rec.set_key(key);
                let f = p.facts();
                let member = index().relocate(p.member, f, db, p.handle());
                p.member = member;
            }
        }
        _ => {}
    }
    if event == "move_to" || event == "copy_to" {
        let source = SOURCE_DB.swap(-1, Ordering::Relaxed);
        if source >= 0 && source != selected_db(ctx) {
            rm!(RedisModule_SelectDb(ctx.ctx, source));
        }
    }
}

/// Subscribes to FLUSHDB/FLUSHALL, SWAPDB, loading and replication role
/// changes, then declares what the module handles: failed reads always,
/// diskless `swapdb` loads when their events could be subscribed to.
pub fn subscribe_server_events(ctx: &Context) -> Result<(), String> {
    for (id, callback) in [
        (
            raw::REDISMODULE_EVENT_FLUSHDB,
            on_flush as unsafe extern "C" fn(_, _, _, _),
        ),
        (raw::REDISMODULE_EVENT_SWAPDB, on_swapdb),
        (raw::REDISMODULE_EVENT_LOADING, on_loading),
        (
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            on_role_change,
        ),
    ] {
        if !subscribe(ctx, id, callback) {
            return Err(format!("cannot subscribe to server event {id}"));
        }
    }
    let mut options = raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS;
    if subscribe(ctx, raw::REDISMODULE_EVENT_REPL_ASYNC_LOAD, on_async_load) {
        options |= raw::REDISMODULE_OPTIONS_HANDLE_REPL_ASYNC_LOAD;
    } else {
        ctx.log_notice(
            "redis-pay: no async-load events on this server: \
             replicas load a swapdb sync from disk",
        );
    }
    rm!(RedisModule_SetModuleOptions(ctx.ctx, options as c_int));
    Ok(())
}

type ServerEventHandler =
    unsafe extern "C" fn(*mut raw::RedisModuleCtx, raw::RedisModuleEvent, u64, *mut c_void);

fn subscribe(ctx: &Context, id: u64, callback: ServerEventHandler) -> bool {
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    rm!(RedisModule_SubscribeToServerEvent(
        ctx.ctx,
        event,
        Some(callback)
    )) == raw::REDISMODULE_OK as c_int
}

/// Whether a diskless `swapdb` load is filling databases aside: from its
/// start to its end, whether completed or aborted.
static LOADING_ASIDE: AtomicBool = AtomicBool::new(false);

/// A diskless `swapdb` replica load fills databases clients do not see
/// (with async loading they are served the old data set meanwhile). Its
/// records are not indexed as they load: Redis 7.0 to 7.2 report database 0
/// for every one of them (redis/redis#12947), and an aborted load's records
/// are freed later on the lazy-free thread. So the index keeps the old data
/// set, exactly, until Redis swaps the new one in; then it is rebuilt from
/// the new keyspace. The old data set is freed later, on the lazy-free
/// thread: its entries, flushed here, are ignored by then.
unsafe extern "C" fn on_async_load(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    match subevent {
        raw::REDISMODULE_SUBEVENT_REPL_ASYNC_LOAD_STARTED => {
            LOADING_ASIDE.store(true, Ordering::Relaxed);
        }
        raw::REDISMODULE_SUBEVENT_REPL_ASYNC_LOAD_COMPLETED => {
            LOADING_ASIDE.store(false, Ordering::Relaxed);
            reindex(&Context::new(ctx));
        }
        _ => LOADING_ASIDE.store(false, Ordering::Relaxed),
    }
}

/// Forgets every index entry, then lists every payment of every database.
fn reindex(ctx: &Context) {
    let started = std::time::Instant::now();
    let mut ix = index();
    ix.flush(-1);
    ix.begin_bulk();
    let mut state = Reindex {
        index: &mut ix,
        db: 0,
        records: 0,
    };
    // SelectDb fails past the last database.
    while rm!(RedisModule_SelectDb(ctx.ctx, state.db)) == raw::REDISMODULE_OK as c_int {
        let cursor = rm!(RedisModule_ScanCursorCreate());
        let privdata = std::ptr::from_mut(&mut state).cast::<c_void>();
        while rm!(RedisModule_Scan(
            ctx.ctx,
            cursor,
            Some(reindex_key),
            privdata
        )) != 0
        {}
        rm!(RedisModule_ScanCursorDestroy(cursor));
        state.db += 1;
    }
    let records = state.records;
    ix.settle();
    drop(ix);
    ctx.log_notice(&format!(
        "redis-pay: indexed {records} payments of the swapped-in data set in {:?}",
        started.elapsed()
    ));
}

struct Reindex<'a> {
    index: &'a mut Index,
    db: i32,
    records: u64,
}

unsafe extern "C" fn reindex_key(
    _ctx: *mut raw::RedisModuleCtx,
    _name: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    // SAFETY: `privdata` is the `Reindex` that `reindex` passes to
    // RedisModule_Scan, alive and not otherwise borrowed during the scan.
    let state = unsafe { &mut *privdata.cast::<Reindex>() };
    if let Ok(Some(p)) = payment_in(key) {
        p.member = state.index.admit(state.db, p.handle(), p.facts());
        state.records += 1;
    }
}

unsafe extern "C" fn on_flush(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    if subevent != raw::REDISMODULE_SUBEVENT_FLUSHDB_START || data.is_null() {
        return;
    }
    // SAFETY: Redis passes a RedisModuleFlushInfo with this event.
    let info = unsafe { &*data.cast::<raw::RedisModuleFlushInfoV1>() };
    index().flush(info.dbnum);
}

/// An RDB file (at start, on DEBUG RELOAD, or from a primary) is listed in
/// the index in bulk when it has loaded. An AOF replays commands, which find
/// and change records as they go: it is indexed record by record.
unsafe extern "C" fn on_loading(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    match subevent {
        raw::REDISMODULE_SUBEVENT_LOADING_RDB_START
        | raw::REDISMODULE_SUBEVENT_LOADING_REPL_START => index().begin_bulk(),
        _ => index().settle(),
    }
}

unsafe extern "C" fn on_role_change(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    let ctx = Context::new(ctx);
    if subevent == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER {
        crate::sweep::start(&ctx);
    } else {
        crate::sweep::stop(&ctx);
    }
}

unsafe extern "C" fn on_swapdb(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    _subevent: u64,
    data: *mut c_void,
) {
    if data.is_null() {
        return;
    }
    // SAFETY: Redis passes a RedisModuleSwapDbInfo with this event.
    let info = unsafe { &*data.cast::<raw::RedisModuleSwapDbInfoV1>() };
    index().swap_db(info.dbnum_first, info.dbnum_second);
}

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
fn payment_in<'a>(key: *mut raw::RedisModuleKey) -> Result<Option<&'a mut Payment>, PayError> {
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

    /// An unresolved payment never expires: removes any expiry the key
    /// carries (a record written before contract v2, or an operator's
    /// EXPIRE) and replicates that as PERSIST. Called on every write that
    /// leaves a payment unresolved.
    pub fn keep_unresolved(&self, ctx: &Context, name: &RedisString) {
        if rm!(RedisModule_GetExpire(self.key)) == raw::REDISMODULE_NO_EXPIRE as raw::mstime_t {
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

impl Drop for PayKey {
    fn drop(&mut self) {
        if !self.key.is_null() {
            raw::close_key(self.key);
        }
    }
}
