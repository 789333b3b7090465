//! Every tunable in one place: name, default and range next to the static
//! that Redis reads and writes through `CONFIG GET/SET`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

use redis_module::configuration::{ConfigurationContext, ConfigurationValue};
use redis_module::{RedisError, RedisString};

use pay_proto::limits::{MAX_KEY_LEN, MAX_TTL_SECS};

use crate::args::parse_int;

/// One `pay.*` setting.
pub struct Tunable {
    /// The name without the module prefix (Redis adds `pay.`).
    pub name: &'static str,
    pub value: AtomicI64,
    pub default: i64,
    pub min: i64,
    pub max: i64,
}

impl Tunable {
    const fn new(name: &'static str, default: i64, min: i64, max: i64) -> Tunable {
        Tunable {
            name,
            value: AtomicI64::new(default),
            default,
            min,
            max,
        }
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

const DAY_MS: i64 = 86_400_000;

/// Pending this long since creation = stale, ready for a retry.
pub static STALE_AFTER_MS: Tunable = Tunable::new("stale-after-ms", 300_000, 1, 30 * DAY_MS);
/// Pending this long = worth a human's attention.
pub static ALERT_AFTER_MS: Tunable = Tunable::new("alert-after-ms", 600_000, 1, 30 * DAY_MS);
/// How often the timer looks for newly stale payments.
pub static SWEEP_INTERVAL_MS: Tunable = Tunable::new("sweep-interval-ms", 1000, 10, 3_600_000);
/// Seconds a record lives when PAY.CACHE gives no TTL.
pub static DEFAULT_TTL: Tunable = Tunable::new("default-ttl", 86_400, 1, MAX_TTL_SECS);

/// Most payments one sweeper tick flags: bounds the event-loop stall.
pub const SWEEP_BATCH: usize = 500;
/// Most time one sweeper tick spends flagging, whatever the machine's speed:
/// it stops early and comes back 1 ms later.
pub const SWEEP_BUDGET: std::time::Duration = std::time::Duration::from_millis(1);

/// `pay.key-prefix`: the namespace stripped from keys to give the
/// transaction id (`payment:` makes `payment:txn_1` transaction `txn_1`).
/// Empty by default. Immutable once loaded: changing it would change the
/// transaction id, and so the provider's idempotency key, of every payment
/// in flight.
pub struct KeyPrefix(Mutex<String>);

pub static KEY_PREFIX: KeyPrefix = KeyPrefix(Mutex::new(String::new()));
pub const KEY_PREFIX_NAME: &str = "key-prefix";
/// The longest prefix: shorter than the longest key PAY.CACHE accepts.
pub const MAX_KEY_PREFIX_LEN: usize = MAX_KEY_LEN - 1;

/// The current key prefix.
pub fn key_prefix() -> MutexGuard<'static, String> {
    KEY_PREFIX.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// A key prefix as given: UTF-8, at most MAX_KEY_PREFIX_LEN bytes, no
/// control characters (a NUL would also break Redis's C strings).
pub fn check_key_prefix(bytes: &[u8]) -> Result<&str, String> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| "pay.key-prefix must be UTF-8 text".to_string())?;
    if text.len() > MAX_KEY_PREFIX_LEN || text.chars().any(char::is_control) {
        return Err(format!(
            "pay.key-prefix must be at most {MAX_KEY_PREFIX_LEN} bytes without control characters"
        ));
    }
    Ok(text)
}

impl ConfigurationValue<RedisString> for KeyPrefix {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create_from_slice(std::ptr::null_mut(), key_prefix().as_bytes())
    }

    fn set(&self, _ctx: &ConfigurationContext, value: RedisString) -> Result<(), RedisError> {
        let text = check_key_prefix(value.as_slice()).map_err(RedisError::String)?;
        *key_prefix() = text.to_string();
        Ok(())
    }
}

pub static TUNABLES: [&Tunable; 4] = [
    &STALE_AFTER_MS,
    &ALERT_AFTER_MS,
    &SWEEP_INTERVAL_MS,
    &DEFAULT_TTL,
];

/// What the module arguments set at start-up.
#[derive(Debug, PartialEq, Eq)]
pub struct StartValues {
    /// One per tunable, in `TUNABLES` order.
    pub ints: [i64; 4],
    pub key_prefix: String,
}

/// Reads module arguments (`--loadmodule path stale-after-ms 500 ...`) into
/// start-up values. The name may carry the `pay.` prefix. Anything unknown or
/// malformed is an error: a payment server must not start on settings it
/// silently ignored.
pub fn start_values(args: &[&[u8]]) -> Result<StartValues, String> {
    let mut values = TUNABLES.map(|t| t.default);
    let mut seen = [false; 5];
    let mut key_prefix = String::new();
    let mut rest = args;
    while let [name, tail @ ..] = rest {
        let shown = String::from_utf8_lossy(name);
        let bare = name.strip_prefix(b"pay.").unwrap_or(name);
        let [value, tail @ ..] = tail else {
            return Err(format!("module argument '{shown}' needs a value"));
        };
        let i = if bare == KEY_PREFIX_NAME.as_bytes() {
            key_prefix = check_key_prefix(value)?.to_string();
            TUNABLES.len()
        } else {
            let Some(i) = TUNABLES.iter().position(|t| t.name.as_bytes() == bare) else {
                let known: Vec<&str> = TUNABLES.iter().map(|t| t.name).collect();
                return Err(format!(
                    "unknown module argument '{shown}' (known: {}, {KEY_PREFIX_NAME})",
                    known.join(", ")
                ));
            };
            let t = TUNABLES[i];
            match parse_int(value) {
                Some(v) if (t.min..=t.max).contains(&v) => values[i] = v,
                _ => {
                    return Err(format!(
                        "module argument '{shown}' must be an integer from {} to {}, got '{}'",
                        t.min,
                        t.max,
                        String::from_utf8_lossy(value)
                    ))
                }
            }
            i
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("module argument '{shown}' given more than once"));
        }
        rest = tail;
    }
    Ok(StartValues {
        ints: values,
        key_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_give_the_defaults() {
        let v = start_values(&[]).unwrap();
        assert_eq!(v.ints, [300_000, 600_000, 1000, 86_400]);
        assert_eq!(v.key_prefix, "");
    }

    #[test]
    fn plain_and_prefixed_names_are_accepted() {
        let v = start_values(&[b"stale-after-ms", b"500", b"pay.default-ttl", b"60"]).unwrap();
        assert_eq!(v.ints, [500, 600_000, 1000, 60]);
        let v = start_values(&[b"pay.key-prefix", b"payment:"]).unwrap();
        assert_eq!(v.key_prefix, "payment:");
        let e = start_values(&[b"key-prefix", b"a", b"key-prefix", b"b"]).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
        for bad in [&b"a\0b"[..], b"tab\t", b"\xff", &[b'p'; 255]] {
            let e = start_values(&[b"key-prefix", bad]).unwrap_err();
            assert!(e.starts_with("pay.key-prefix must be"), "{e}");
        }
    }

    #[test]
    fn unknown_missing_and_out_of_range_fail_clearly() {
        let e = start_values(&[b"stale-after", b"5"]).unwrap_err();
        assert!(
            e.starts_with("unknown module argument 'stale-after'"),
            "{e}"
        );
        let e = start_values(&[b"stale-after-ms"]).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = start_values(&[b"sweep-interval-ms", b"5"]).unwrap_err();
        assert!(e.contains("from 10 to 3600000"), "{e}");
        let e = start_values(&[b"default-ttl", b"1.5"]).unwrap_err();
        assert!(e.contains("got '1.5'"), "{e}");
        let e = start_values(&[b"default-ttl", b"5", b"default-ttl", b"6"]).unwrap_err();
        assert!(e.contains("more than once"), "{e}");
    }
}
