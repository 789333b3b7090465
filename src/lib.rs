//! redis-pay: payment records that de-duplicate atomically inside Redis.
//!
//! This file is the table of contents: the module registration, and one thin
//! wrapper per command showing its syntax. The logic lives in one file per
//! concern:
//!
//! - the pure core, which knows nothing of Redis: `args` (parsing and
//!   validation), `record` (the record and its state machine), `codec` (its
//!   bytes), `index` (the stale-payment index), `error`; the statuses, error
//!   codes and limits come from the `pay-proto` crate, shared with the sidecar;
//! - the Redis glue: `commands` (one function per command), `store` (the data
//!   type and its callbacks, the index it feeds, FFI helpers), `events` (server
//!   and keyspace events), `key` (`PayKey` and the write path: write,
//!   replicate, notify), `sweep` (the timer), `stats` (INFO), `acl`,
//!   `cmdinfo` (each command's arity and key spec: what ACL key
//!   permissions it needs);
//! - `config`: every tunable.
//!
//! Every module is private: the crate is a cdylib, and Redis reaches it only
//! through `RedisModule_OnLoad`.

mod acl;
mod args;
mod cmdinfo;
mod codec;
mod commands;
mod config;
mod error;
mod events;
mod index;
mod key;
#[cfg(test)]
mod props;
mod record;
mod stats;
mod store;
mod sweep;

use std::ffi::c_int;

use redis_module::configuration::{
    register_i64_configuration, register_string_configuration, ConfigurationFlags,
};
use redis_module::{
    raw, redis_module, AclCategory, Context, InfoContext, NotifyEvent, RedisResult, RedisString,
    Status,
};
use redis_module_macros::info_command_handler;
use store::PAY_TYPE;

// The Redis allocator aborts any process that is not Redis: unit tests use the
// system allocator.
#[cfg(not(test))]
type ModuleAllocator = redis_module::alloc::RedisAlloc;
#[cfg(not(test))]
const MODULE_ALLOCATOR: ModuleAllocator = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type ModuleAllocator = std::alloc::System;
#[cfg(test)]
const MODULE_ALLOCATOR: ModuleAllocator = std::alloc::System;

/// PAY.CACHE key user_id amount currency [TTL seconds]
fn pay_cache(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    commands::cache(ctx, args)
}

/// PAY.CHECK key [JSON]
fn pay_check(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    commands::check(ctx, args)
}

/// PAY.UPDATE key status [REASON text] [REF provider_ref] [RETRY ms] [FENCE n]
fn pay_update(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    commands::update(ctx, args)
}

/// PAY.STUCK [OLDER ms] [COUNT n]
fn pay_stuck(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    commands::stuck(ctx, args)
}

/// PAY.CLAIM consumer LEASE ms [OLDER ms] [COUNT n]
fn pay_claim(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    commands::claim(ctx, args)
}

/// PAY.LOAD key blob [PXAT unix-ms] (internal: replication and AOF).
/// Registered in [`setup`], not in the table below: where the server has the
/// `internal` command flag (Redis 8.0+) ordinary clients do not even see it.
extern "C" fn pay_load(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let context = Context::new(ctx);
    let args = redis_module::decode_args(ctx, argv, argc);
    context.reply(commands::load(&context, args)) as c_int
}

/// Registers PAY.LOAD, as an internal command where the server knows the
/// flag (an unknown flag fails the registration, so older servers get the
/// second form). Either way the command itself refuses every client.
fn register_load(ctx: &Context) -> Result<(), String> {
    for flags in [c"write deny-oom internal", c"write deny-oom"] {
        // SAFETY: called during OnLoad with our context; the name, flags and
        // handler live for the whole program.
        let status = unsafe {
            raw::RedisModule_CreateCommand.map(|create| {
                create(
                    ctx.ctx,
                    c"PAY.LOAD".as_ptr(),
                    Some(pay_load),
                    flags.as_ptr(),
                    1,
                    1,
                    1,
                )
            })
        };
        if status == Some(raw::REDISMODULE_OK as c_int) {
            let how = flags.to_str().unwrap_or_default();
            ctx.log_notice(&format!("redis-pay: PAY.LOAD registered ({how})"));
            return Ok(());
        }
    }
    Err("cannot register PAY.LOAD".into())
}

/// RENAME and MOVE: the pending index follows the record.
fn on_keyspace_event(ctx: &Context, kind: NotifyEvent, event: &str, key: &[u8]) {
    events::on_keyspace_event(ctx, kind, event, key);
}

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    match setup(ctx, args) {
        Ok(()) => Status::Ok,
        Err(msg) => {
            ctx.log_warning(&format!("redis-pay: module not loaded: {msg}"));
            Status::Err
        }
    }
}

fn setup(ctx: &Context, args: &[RedisString]) -> Result<(), String> {
    store::check_api()?;
    register_load(ctx)?;
    // Every command is registered by now: PAY.CHECK reads, PAY.CACHE reads
    // and inserts, ... (legacy key positions ask for read and write).
    cmdinfo::declare(ctx);
    let args: Vec<&[u8]> = args.iter().map(RedisString::as_slice).collect();
    let start = config::start_values(&args)?;
    *config::key_prefix() = start.key_prefix.clone();
    register_string_configuration(
        ctx,
        config::KEY_PREFIX_NAME,
        &config::KEY_PREFIX,
        &start.key_prefix,
        ConfigurationFlags::IMMUTABLE,
        None,
    );
    for (t, value) in config::TUNABLES.iter().zip(start.ints) {
        register_i64_configuration(
            ctx,
            t.name,
            &t.value,
            value,
            t.min,
            t.max,
            ConfigurationFlags::DEFAULT,
            None,
        );
    }
    // SAFETY: presence checked by check_api; called once, during OnLoad.
    let loaded = unsafe { raw::RedisModule_LoadConfigs.map(|f| f(ctx.ctx)) };
    if loaded != Some(raw::REDISMODULE_OK as i32) {
        return Err("a pay.* configuration value was rejected".into());
    }
    // Also declares HANDLE_IO_ERRORS (and async-load awareness) with
    // RedisModule_SetModuleOptions.
    events::subscribe_server_events(ctx)?;
    sweep::start(ctx);
    Ok(())
}

/// INFO pay: records by status (every database), the settings a sidecar
/// reads, then the counters.
#[info_command_handler]
fn info(ctx: &InfoContext, for_crash_report: bool) -> RedisResult<()> {
    // A crash report must never wait for the lock; otherwise wait: the
    // lazy-free thread holds it only for one record at a time.
    let totals = if for_crash_report {
        store::try_index().map(|ix| ix.totals())
    } else {
        Some(store::index().totals())
    };
    let mut section = ctx.builder().add_section("records");
    if let Some(t) = totals {
        for (name, n) in [
            ("records_pending", t.pending),
            ("records_unknown", t.unknown),
            ("records_succeeded", t.succeeded),
            ("records_failed", t.failed),
            ("records_stale", t.stale),
        ] {
            section = section.field(name, n.to_string())?;
        }
    }
    let section = section
        .build_section()?
        .add_section("settings")
        .field("stale_after_ms", config::STALE_AFTER_MS.get().to_string())?
        .field("alert_after_ms", config::ALERT_AFTER_MS.get().to_string())?;
    let mut section = section.build_section()?.add_section("stats");
    for (name, counter) in stats::COUNTERS {
        section = section.field(name, counter.get().to_string())?;
    }
    section.build_section()?.build_info()?;
    Ok(())
}

redis_module! {
    name: "pay",
    version: 1,
    allocator: (ModuleAllocator, MODULE_ALLOCATOR),
    data_types: [PAY_TYPE],
    // On servers with the Redis 7.4 module ACL API the application commands
    // join @pay (`ACL SETUSER app +@pay`); PAY.LOAD, which writes whole
    // records, stays out of it. Older servers skip this with a log line.
    acl_categories: ["pay",],
    init: init,
    commands: [
        ["PAY.CACHE", pay_cache, "write deny-oom fast", 1, 1, 1, "", "pay"],
        ["PAY.CHECK", pay_check, "readonly fast", 1, 1, 1, "", "pay"],
        ["PAY.UPDATE", pay_update, "write fast", 1, 1, 1, "", "pay"],
        ["PAY.STUCK", pay_stuck, "readonly", 0, 0, 0, "", "pay"],
        ["PAY.CLAIM", pay_claim, "write deny-oom", 0, 0, 0, "", "pay"],
    ],
    event_handlers: [
        [@GENERIC: on_keyspace_event],
    ],
}
