//! Command info: each command's arity and what it does with its key.
//!
//! `redis_module!` registers the commands with legacy key positions
//! (first, last, step), which Redis takes as full read-write access: an ACL
//! user with only `%R~` on the keys would be refused PAY.CHECK, and
//! PAY.STUCK, which lists a record only if the caller could PAY.CHECK it,
//! would hide every record from that user. Where the server has the
//! Redis 7.0 command-info API, [`declare`] replaces them with key specs
//! flagged as Redis flags its own comparable commands (`src/commands/*.json`):
//!
//! - PAY.CHECK `RO ACCESS`, like GET: reads need `%R~`;
//! - PAY.CACHE `RW ACCESS INSERT`, like `SET ... NX GET` but adding, never
//!   changing: it creates a record or returns the one that is there, so it
//!   needs both `%R~` and `%W~`;
//! - PAY.UPDATE `RW ACCESS UPDATE`, like GETEX: it changes the record and
//!   returns it;
//! - PAY.LOAD `OW UPDATE`, like RESTORE: a whole value written as it comes.
//!
//! PAY.STUCK and PAY.CLAIM name no key (see `acl.rs`); they get their arity.
//! Setting the arity lets the server refuse a wrong argument count itself,
//! before ACL checks and when a MULTI queues the command, with the same
//! `ERR wrong number of arguments` the module gives.
//!
//! The `#[command]` macro and redis-module's `7-0` feature would do this
//! too, but also call `RedisModule_SetCommandACLCategories` (Redis 7.2),
//! which stops the module loading on Redis 7.0. Here the API is looked up at
//! run time; without it (before Redis 7.0) the legacy key positions stay,
//! which only ever ask for more permission, never less.

use std::ffi::{c_int, CStr};
use std::mem::size_of;
use std::ptr;

use redis_module::{raw, Context};

/// What a command does with its key: `REDISMODULE_CMD_KEY_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFlags(u32);

impl KeyFlags {
    pub const CHECK: KeyFlags =
        KeyFlags(raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS);
    pub const CACHE: KeyFlags = KeyFlags(
        raw::REDISMODULE_CMD_KEY_RW
            | raw::REDISMODULE_CMD_KEY_ACCESS
            | raw::REDISMODULE_CMD_KEY_INSERT,
    );
    pub const UPDATE: KeyFlags = KeyFlags(
        raw::REDISMODULE_CMD_KEY_RW
            | raw::REDISMODULE_CMD_KEY_ACCESS
            | raw::REDISMODULE_CMD_KEY_UPDATE,
    );
    pub const LOAD: KeyFlags =
        KeyFlags(raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE);
}

/// One command's info.
pub struct Spec {
    pub name: &'static CStr,
    /// Redis's convention: `n` exactly n words with the name, `-n` at least n.
    pub arity: c_int,
    /// The key at argument 1, or `None` for a command that names no key.
    pub key: Option<KeyFlags>,
}

/// Every command the module registers.
pub const SPECS: [Spec; 6] = [
    Spec {
        name: c"PAY.CACHE",
        arity: -5,
        key: Some(KeyFlags::CACHE),
    },
    Spec {
        name: c"PAY.CHECK",
        arity: -2,
        key: Some(KeyFlags::CHECK),
    },
    Spec {
        name: c"PAY.UPDATE",
        arity: -3,
        key: Some(KeyFlags::UPDATE),
    },
    Spec {
        name: c"PAY.STUCK",
        arity: -1,
        key: None,
    },
    Spec {
        name: c"PAY.CLAIM",
        arity: -2,
        key: None,
    },
    Spec {
        name: c"PAY.LOAD",
        arity: -3,
        key: Some(KeyFlags::LOAD),
    },
];

/// The layout this module was built against; Redis walks our arrays with
/// these sizes, so a server with larger structs still reads ours right.
const VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: size_of::<raw::RedisModuleCommandArg>(),
};

/// The key at argument 1, alone: begin at index 1, a range of one key.
fn key_spec(flags: KeyFlags) -> raw::RedisModuleCommandKeySpec {
    raw::RedisModuleCommandKeySpec {
        notes: ptr::null(),
        flags: u64::from(flags.0),
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
        fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
            range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                lastkey: 0,
                keystep: 1,
                limit: 0,
            },
        },
    }
}

/// The zeroed element that ends a key-spec array (`begin_search_type` 0).
fn end_of_specs() -> raw::RedisModuleCommandKeySpec {
    raw::RedisModuleCommandKeySpec {
        notes: ptr::null(),
        flags: 0,
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INVALID,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 0 },
        },
        find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_OMITTED,
        fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
            range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                lastkey: 0,
                keystep: 0,
                limit: 0,
            },
        },
    }
}

/// Declares every command's [`SPECS`] entry, after the commands are
/// registered (during OnLoad). A server without the API keeps the legacy
/// key positions, and so does a command whose info the server refuses (it
/// validates the whole info before it changes anything): either way with a
/// log line, and never with less permission asked than documented.
pub fn declare(ctx: &Context) {
    // SAFETY: by-value reads of the API table Redis filled in at init.
    let api = unsafe { (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandInfo) };
    let (Some(get_command), Some(set_info)) = api else {
        ctx.log_notice(
            "redis-pay: no command-info API on this server (Redis 7.0+ has it): PAY.* keep \
             legacy key specs, so ACL users need read and write permission on payment keys",
        );
        return;
    };
    let mut declared = 0;
    for spec in &SPECS {
        let name = spec.name.to_str().unwrap_or_default();
        // SAFETY: called during OnLoad with our context and a NUL-terminated
        // name; Redis returns null for a command that is not ours.
        let command = unsafe { get_command(ctx.ctx, spec.name.as_ptr()) };
        if command.is_null() {
            ctx.log_warning(&format!(
                "redis-pay: {name} not found to declare its key spec"
            ));
            continue;
        }
        // The info, its version and the key-spec array live on this stack
        // frame until SetCommandInfo returns, which is all Redis needs:
        // RM_SetCommandInfo (module.c) copies the key specs into an array of
        // its own and every string with zstrdup, and keeps no pointer of ours.
        let mut key_specs = spec.key.map(|flags| [key_spec(flags), end_of_specs()]);
        let info = raw::RedisModuleCommandInfo {
            version: &VERSION,
            summary: ptr::null(),
            complexity: ptr::null(),
            since: ptr::null(),
            history: ptr::null_mut(),
            tips: ptr::null(),
            arity: spec.arity,
            key_specs: key_specs
                .as_mut()
                .map_or(ptr::null_mut(), |specs| specs.as_mut_ptr()),
            args: ptr::null_mut(),
        };
        // SAFETY: `command` is ours (GetCommand above, during OnLoad);
        // `info`, its version and the key-spec array (ended by a zeroed
        // element) are valid for the call, and Redis only reads them.
        let status = unsafe { set_info(command, &info) };
        if status == raw::REDISMODULE_OK as c_int {
            declared += 1;
        } else {
            ctx.log_warning(&format!(
                "redis-pay: the server refused {name}'s command info; it keeps legacy key specs"
            ));
        }
    }
    ctx.log_notice(&format!(
        "redis-pay: key specs and arity declared for {declared} of {} commands",
        SPECS.len()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_spec_has_exactly_one_of_ro_rw_ow_rm_and_at_most_one_write() {
        // What Redis's moduleValidateCommandInfo demands.
        let kinds = raw::REDISMODULE_CMD_KEY_RO
            | raw::REDISMODULE_CMD_KEY_RW
            | raw::REDISMODULE_CMD_KEY_OW
            | raw::REDISMODULE_CMD_KEY_RM;
        let writes = raw::REDISMODULE_CMD_KEY_INSERT
            | raw::REDISMODULE_CMD_KEY_DELETE
            | raw::REDISMODULE_CMD_KEY_UPDATE;
        for spec in &SPECS {
            if let Some(KeyFlags(f)) = spec.key {
                assert_eq!((f & kinds).count_ones(), 1, "{:?}", spec.name);
                assert!((f & writes).count_ones() <= 1, "{:?}", spec.name);
            }
        }
    }

    #[test]
    fn every_registered_command_has_its_info_and_keys_agree() {
        let registered = crate::COMMANDS
            .iter()
            .map(|c| (c.name, c.keyed))
            .chain([(c"PAY.LOAD", true)]);
        let mut n = 0;
        for (name, keyed) in registered {
            let spec = SPECS.iter().find(|s| s.name == name);
            assert_eq!(spec.map(|s| s.key.is_some()), Some(keyed), "{name:?}");
            n += 1;
        }
        assert_eq!(n, SPECS.len());
    }
}
