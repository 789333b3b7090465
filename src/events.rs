//! Server and keyspace events that tell the pending index a record came,
//! moved or went (RENAME, MOVE, flushes, loads, SWAPDB), and the role
//! changes that start and stop the sweeper.

use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering;

use redis_module::{raw, Context, NotifyEvent, RedisString};

use crate::index::{Index, Member};
use crate::key::{payment_in, PayKey};
use crate::store::*;

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
        // Any key's RENAME or MOVE: looked at only where payments live. The
        // index lists the payment where it was (for MOVE, the source
        // database, noted at `move_from`) until this handler moves it.
        "rename_to" | "move_to"
            if index().holds_records(
                if event == "move_to" {
                    SOURCE_DB.load(Ordering::Relaxed)
                } else {
                    selected_db(ctx)
                },
                false,
            ) =>
        {
            let name = RedisString::create_from_slice(ctx.ctx, key);
            let db = selected_db(ctx);
            let k = PayKey::peek(ctx, &name);
            if let Ok(Some(p)) = k.payment() {
                p.rec.set_key(key);
                let f = p.facts();
                let member = index().relocate(p.member, f, db, p.handle());
                p.member = member;
            }
        }
        _ => {}
    }
    // Still on the event's database: the key as it is now.
    if matches!(
        event,
        "expire" | "restore" | "copy_to" | "rename_to" | "move_to"
    ) {
        crate::guard::on_expiry_event(ctx, key);
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
    crate::guard::subscribe(ctx);
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
///
/// A primary that has loaded a data set has the guard audit it: an RDB file
/// can hold unresolved payments with an expiry no keyspace event announced.
unsafe extern "C" fn on_loading(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    let primary = crate::sweep::is_primary(&Context::new(ctx));
    match subevent {
        raw::REDISMODULE_SUBEVENT_LOADING_RDB_START => {
            crate::guard::rdb_loading(primary);
            index().begin_bulk();
        }
        raw::REDISMODULE_SUBEVENT_LOADING_REPL_START => index().begin_bulk(),
        raw::REDISMODULE_SUBEVENT_LOADING_ENDED => {
            crate::guard::rdb_loading(false);
            index().settle();
            if primary {
                crate::guard::audit_all();
            }
        }
        _ => {
            crate::guard::rdb_loading(false);
            index().settle();
        }
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
        // Expiries the old primary had no time to take away came with the
        // replication stream, which the guard does not act on.
        crate::guard::audit_all();
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
    crate::guard::swap_db(info.dbnum_first, info.dbnum_second);
}
