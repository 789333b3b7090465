//! A command's arguments as Redis passed them, borrowed for the call.
//!
//! redis-module's handlers (`redis_module!`'s `commands:` table) hand each
//! command a `Vec<RedisString>`: every argument retained and later freed,
//! and a vector allocated and freed, on every call (about 550 server
//! instructions for PAY.CACHE's six words). Redis keeps a command's
//! arguments alive and unchanged until its handler returns, so the
//! handlers in `lib.rs` lend them instead: [`Args`] is a view of Redis's own
//! array that cannot outlive the call, and [`ArgString`] one argument as a
//! `RedisString` that is never retained nor freed.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;

use redis_module::{raw, RedisString};

/// The arguments of one command call, the command name first.
pub struct Args<'a> {
    ctx: *mut raw::RedisModuleCtx,
    argv: &'a [*mut raw::RedisModuleString],
}

impl<'a> Args<'a> {
    /// The arguments a command handler received.
    ///
    /// # Safety
    ///
    /// `argv` must point to `argc` valid strings (or be null with no
    /// arguments) that stay alive and unchanged for `'a`: true of a handler's
    /// own arguments until it returns, so `'a` must not outlive the handler.
    pub unsafe fn from_raw(
        ctx: *mut raw::RedisModuleCtx,
        argv: *mut *mut raw::RedisModuleString,
        argc: c_int,
    ) -> Args<'a> {
        let argv = match usize::try_from(argc) {
            // SAFETY: the caller guarantees `argc` valid elements for 'a.
            Ok(n) if n > 0 && !argv.is_null() => unsafe { std::slice::from_raw_parts(argv, n) },
            _ => &[],
        };
        Args { ctx, argv }
    }

    /// The arguments after the command name, as bytes.
    pub fn after_name(&self) -> impl ExactSizeIterator<Item = &'a [u8]> {
        let rest: &'a [*mut raw::RedisModuleString] = self.argv.get(1..).unwrap_or_default();
        // Redis's pointer and length of each string, alive for 'a.
        rest.iter().map(|&s| RedisString::string_as_slice(s))
    }

    /// Argument `i` as a `RedisString`, for the APIs that take one (open a
    /// key, replicate, notify).
    pub fn string(&self, i: usize) -> Option<ArgString<'a>> {
        let s = *self.argv.get(i)?;
        Some(ArgString {
            s: ManuallyDrop::new(RedisString::from_redis_module_string(self.ctx, s)),
            _call: PhantomData,
        })
    }
}

/// One argument of the call as a `RedisString`, without a reference of its
/// own: Redis owns the string, so it is neither retained nor freed here,
/// and the lifetime keeps it inside the call.
pub struct ArgString<'a> {
    s: ManuallyDrop<RedisString>,
    _call: PhantomData<&'a raw::RedisModuleString>,
}

impl Deref for ArgString<'_> {
    type Target = RedisString;

    fn deref(&self) -> &RedisString {
        &self.s
    }
}
