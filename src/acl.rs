//! ACL permissions for the commands that find their keys themselves.
//!
//! PAY.STUCK and PAY.CLAIM name no key in their arguments (their key spec is
//! empty), so Redis checks no key pattern for them. Each record they list or
//! lease is checked here as the command the caller could have sent for it:
//! PAY.STUCK lists a payment only if the caller may `PAY.CHECK` it, and
//! PAY.CLAIM leases it only if the caller may `PAY.UPDATE` it. Checking the
//! whole command, not the key alone, keeps ACL selectors honest: a selector
//! that grants a key pattern for other commands grants nothing here. A tenant
//! limited to `~tenantA:*` never sees or leases another tenant's payments.
//! Which key permission each check needs follows from the stand-in
//! command's key spec (`cmdinfo.rs`): read for PAY.CHECK, so a `%R~` user
//! sees its payments listed; read and write for PAY.UPDATE.

use std::ffi::c_int;
use std::ptr::NonNull;

use redis_module::{raw, Context, RedisString};

use crate::error::PayError;

/// What a caller wants to do with a key.
#[derive(Clone, Copy)]
pub enum Access {
    /// List it (PAY.STUCK): as `PAY.CHECK key`.
    Read,
    /// Lease it (PAY.CLAIM): as `PAY.UPDATE key pending`.
    Write,
}

/// The calling user, looked up once per command.
pub struct Caller {
    user: NonNull<raw::RedisModuleUser>,
    check: unsafe extern "C" fn(
        *mut raw::RedisModuleUser,
        *mut *mut raw::RedisModuleString,
        c_int,
    ) -> c_int,
    free: unsafe extern "C" fn(*mut raw::RedisModuleUser),
    /// The words of the stand-in commands: PAY.CHECK, PAY.UPDATE, pending.
    words: [RedisString; 3],
}

impl Caller {
    /// The user of the client running the command. A server without the ACL
    /// API, or a command without a client, is an error: never fail open.
    pub fn of(ctx: &Context) -> Result<Caller, PayError> {
        // SAFETY: by-value reads of the table Redis filled in at load.
        let api = unsafe {
            (
                raw::RedisModule_GetCurrentUserName,
                raw::RedisModule_GetModuleUserFromUserName,
                raw::RedisModule_ACLCheckCommandPermissions,
                raw::RedisModule_FreeModuleUser,
            )
        };
        let (Some(name_of), Some(user_of), Some(check), Some(free)) = api else {
            return Err(PayError::arg(
                "this server cannot check ACL key permissions (Redis 7.0 or later needed)",
            ));
        };
        // SAFETY: `ctx` is the live context of the running command.
        let name = unsafe { name_of(ctx.ctx) };
        if name.is_null() {
            return Err(PayError::arg(
                "no calling user to check key permissions for",
            ));
        }
        // SAFETY: `name` is a string Redis just returned; the user does not
        // borrow it.
        let user = unsafe { user_of(name) };
        // Frees the name (Redis asks callers to).
        drop(RedisString::from_redis_module_string(ctx.ctx, name));
        let user =
            NonNull::new(user).ok_or_else(|| PayError::arg("the calling user no longer exists"))?;
        let words = ["PAY.CHECK", "PAY.UPDATE", "pending"].map(|w| RedisString::create(None, w));
        Ok(Caller {
            user,
            check,
            free,
            words,
        })
    }

    /// Whether this user may `access` the key `name`.
    pub fn may(&self, name: &RedisString, access: Access) -> bool {
        let [check_cmd, update_cmd, pending] = &self.words;
        let mut argv = match access {
            Access::Read => vec![check_cmd.inner, name.inner],
            Access::Write => vec![update_cmd.inner, name.inner, pending.inner],
        };
        let argc = argv.len() as c_int;
        // SAFETY: `user` is alive until our drop; every string in `argv` is
        // alive for the call, and Redis only reads them.
        let status = unsafe { (self.check)(self.user.as_ptr(), argv.as_mut_ptr(), argc) };
        status == raw::REDISMODULE_OK as c_int
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        // SAFETY: the user came from GetModuleUserFromUserName and is freed
        // exactly once, here.
        unsafe { (self.free)(self.user.as_ptr()) };
    }
}
