//! ACL key permissions for the commands that find their keys themselves.
//!
//! PAY.STUCK and PAY.CLAIM name no key in their arguments (their key spec is
//! empty), so Redis checks no key pattern for them. Each record they list or
//! lease is checked here against the calling user's key permissions: a
//! tenant limited to `~tenantA:*` never sees or leases another tenant's
//! payments.

use std::ffi::c_int;
use std::ptr::NonNull;

use redis_module::{raw, Context, RedisString};

use crate::error::PayError;

/// What a caller wants to do with a key.
#[derive(Clone, Copy)]
pub enum Access {
    /// List it (PAY.STUCK).
    Read,
    /// Lease it (PAY.CLAIM): read and write.
    Write,
}

/// The calling user, looked up once per command.
pub struct Caller {
    user: NonNull<raw::RedisModuleUser>,
    check: unsafe extern "C" fn(
        *mut raw::RedisModuleUser,
        *mut raw::RedisModuleString,
        c_int,
    ) -> c_int,
    free: unsafe extern "C" fn(*mut raw::RedisModuleUser),
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
                raw::RedisModule_ACLCheckKeyPermissions,
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
        Ok(Caller { user, check, free })
    }

    /// Whether this user may `access` the key `name`.
    pub fn may(&self, name: &RedisString, access: Access) -> bool {
        let flags = match access {
            Access::Read => raw::REDISMODULE_CMD_KEY_ACCESS,
            Access::Write => raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE,
        };
        // SAFETY: `user` is alive until our drop; `name` is a live string.
        let status = unsafe { (self.check)(self.user.as_ptr(), name.inner, flags as c_int) };
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
