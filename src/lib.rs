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
//!   replicate, notify), `sweep` (the timer), `guard` (no unresolved payment
//!   disappears silently: expiries removed, losses and unsafe eviction
//!   policies reported), `stats` (INFO), `acl`, `cmdinfo` (each command's
//!   arity and key spec: what ACL key permissions it needs), `call` (the
//!   arguments Redis lends a command);
//! - `config`: every tunable.
//!
//! Every module is private: the crate is a cdylib, and Redis reaches it only
//! through `RedisModule_OnLoad`.

mod acl;
mod args;
mod call;
mod cmdinfo;
mod codec;
mod commands;
mod config;
mod error;
mod events;
mod guard;
mod index;
mod key;
#[cfg(test)]
mod props;
mod record;
mod stats;
mod store;
mod sweep;

use std::ffi::{c_int, CStr};

use call::Args;
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

/// How Redis calls a command handler.
type Handler = unsafe extern "C" fn(
    *mut raw::RedisModuleCtx,
    *mut *mut raw::RedisModuleString,
    c_int,
) -> c_int;

/// Runs a command with the arguments Redis lends it for the call (see
/// `call`), then sends its reply.
#[inline(always)]
fn run(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    command: fn(&Context, &Args<'_>) -> RedisResult,
) -> c_int {
    let context = Context::new(ctx);
    // SAFETY: Redis passes a handler `argc` strings that stay alive and
    // unchanged until it returns; `args` and everything borrowed from it
    // are gone by then (the command returns owned values only).
    let args = unsafe { Args::from_raw(ctx, argv, argc) };
    context.reply(command(&context, &args)) as c_int
}

/// A command handler: `run` with the command's function.
macro_rules! handler {
    ($(#[$doc:meta])* $name:ident => $command:path) => {
        $(#[$doc])*
        extern "C" fn $name(
            ctx: *mut raw::RedisModuleCtx,
            argv: *mut *mut raw::RedisModuleString,
            argc: c_int,
        ) -> c_int {
            run(ctx, argv, argc, $command)
        }
    };
}

handler! {
    /// PAY.CACHE key user_id amount currency [TTL seconds] [BRIEF]
    pay_cache => commands::cache
}

handler! {
    /// PAY.CHECK key [JSON]
    pay_check => commands::check
}

handler! {
    /// PAY.UPDATE key status [REASON text] [REF provider_ref] [RETRY ms] [FENCE n]
    pay_update => commands::update
}

handler! {
    /// PAY.STUCK [OLDER ms] [COUNT n]
    pay_stuck => commands::stuck
}

handler! {
    /// PAY.CLAIM consumer LEASE ms [OLDER ms] [COUNT n]
    pay_claim => commands::claim
}

handler! {
    /// PAY.LOAD key blob [PXAT unix-ms] (internal: replication and AOF).
    /// Registered apart ([`register_load`]): where the server has the
    /// `internal` command flag (Redis 8.0+) ordinary clients do not even
    /// see it.
    pay_load => commands::load
}

/// An application command: its name, handler, flags, and whether argument
/// 1 is its key. Arity and key specs: `cmdinfo`.
struct Command {
    name: &'static CStr,
    handler: Handler,
    flags: &'static CStr,
    keyed: bool,
}

/// The application commands. On servers with the Redis 7.4 module ACL API
/// they join @pay (`ACL SETUSER app +@pay`); PAY.LOAD, which writes whole
/// records, stays out of it.
const COMMANDS: [Command; 5] = [
    Command {
        name: c"PAY.CACHE",
        handler: pay_cache,
        flags: c"write deny-oom fast",
        keyed: true,
    },
    Command {
        name: c"PAY.CHECK",
        handler: pay_check,
        flags: c"readonly fast",
        keyed: true,
    },
    Command {
        name: c"PAY.UPDATE",
        handler: pay_update,
        flags: c"write fast",
        keyed: true,
    },
    Command {
        name: c"PAY.STUCK",
        handler: pay_stuck,
        flags: c"readonly",
        keyed: false,
    },
    Command {
        name: c"PAY.CLAIM",
        handler: pay_claim,
        flags: c"write deny-oom",
        keyed: false,
    },
];

/// Registers [`COMMANDS`] with their own handlers (redis-module's
/// `commands:` table would hand each call a vector of retained strings).
fn register_commands(ctx: &Context) -> Result<(), String> {
    // SAFETY: by-value reads of the API table Redis filled in at init.
    let (create, get_command, set_categories) = unsafe {
        (
            raw::RedisModule_CreateCommand,
            raw::RedisModule_GetCommand,
            raw::RedisModule_SetCommandACLCategories,
        )
    };
    let create = create.ok_or("no RedisModule_CreateCommand")?;
    for cmd in &COMMANDS {
        let name = cmd.name.to_str().unwrap_or_default();
        let key = c_int::from(cmd.keyed);
        // SAFETY: called during OnLoad with our context; the name, flags and
        // handler live for the whole program.
        let status = unsafe {
            create(
                ctx.ctx,
                cmd.name.as_ptr(),
                Some(cmd.handler),
                cmd.flags.as_ptr(),
                key,
                key,
                key,
            )
        };
        if status != raw::REDISMODULE_OK as c_int {
            return Err(format!("cannot register {name}"));
        }
        let (Some(get_command), Some(set_categories)) = (get_command, set_categories) else {
            continue;
        };
        // SAFETY: during OnLoad, with our context and the name of the command
        // just registered; the category name is a NUL-terminated constant.
        let set = unsafe {
            let command = get_command(ctx.ctx, cmd.name.as_ptr());
            !command.is_null()
                && set_categories(command, c"pay".as_ptr()) == raw::REDISMODULE_OK as c_int
        };
        if !set {
            ctx.log_warning(&format!(
                "redis-pay: {name} could not join the ACL category pay"
            ));
        }
    }
    Ok(())
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
    guard::note_main_thread();
    register_commands(ctx)?;
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
        .field("alert_after_ms", config::ALERT_AFTER_MS.get().to_string())?
        .field("eviction_unsafe", guard::eviction_unsafe().to_string())?;
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
    // The application commands' category (see COMMANDS); older servers
    // skip it with a log line.
    acl_categories: ["pay",],
    init: init,
    event_handlers: [
        [@GENERIC: on_keyspace_event],
    ],
}
