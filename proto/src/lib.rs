//! redis-pay's vocabulary, defined once for both sides of the protocol: the
//! module (which enforces it) and pay-sidecar (which speaks it). Plain Rust,
//! no Redis here.
//!
//! - [`Status`]: a payment's status and its name on the wire.
//! - [`code`]: the code each error reply starts with.
//! - [`limits`]: the input bounds the module checks.
//! - [`field`]: the names of a record reply's fields.
//! - `reply` (feature `redis`): reading record replies with the `redis`
//!   crate. The module never enables it.

#[cfg(feature = "redis")]
pub mod reply;

/// A payment's status (DESIGN.md: `pending` -> `succeeded` | `failed` |
/// `unknown` | `pending`; `unknown` -> `succeeded` | `failed` | `pending`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    #[default]
    Pending = 0,
    Succeeded = 1,
    Failed = 2,
    /// The provider's outcome is not known for certain and the retries ran
    /// out: kept, never expired, until the provider or a human answers.
    Unknown = 3,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Succeeded,
        Status::Failed,
        Status::Unknown,
    ];

    /// The name on the wire (`pending`, `succeeded`, `failed`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Unknown => "unknown",
        }
    }

    /// Parses a status name, ignoring ASCII case.
    pub fn parse(s: &[u8]) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().as_bytes().eq_ignore_ascii_case(s))
    }

    /// The status stored as this byte (the record's encoding).
    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|st| *st as u8 == code)
    }

    /// Succeeded and failed never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed)
    }

    /// Pending and unknown: the payments PAY.STUCK lists and PAY.CLAIM leases.
    pub fn is_unresolved(self) -> bool {
        !self.is_terminal()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The code each error reply starts with (`MISMATCH user_id differs ...`):
/// clients match these, never the text after them.
pub mod code {
    /// A bad argument (the message names it), or the wrong arity.
    pub const ERR: &str = "ERR";
    /// The idempotency key is already bound to another user_id, amount or
    /// currency.
    pub const MISMATCH: &str = "MISMATCH";
    /// A forbidden status change.
    pub const TRANSITION: &str = "TRANSITION";
    /// A stale worker's update: the payment was claimed again since.
    pub const FENCED: &str = "FENCED";
    /// No such payment.
    pub const NOPAYMENT: &str = "NOPAYMENT";
    /// The key holds another kind of value.
    pub const WRONGTYPE: &str = "WRONGTYPE";
}

/// The bounds the module puts on its inputs.
pub mod limits {
    /// PAY.CACHE's key (the idempotency key), in bytes.
    pub const MAX_KEY_LEN: usize = 255;
    pub const MAX_USER_ID_LEN: usize = 128;
    /// PAY.UPDATE's REASON, in bytes.
    pub const MAX_REASON_LEN: usize = 1024;
    /// PAY.UPDATE's REF (the provider's reference), in bytes.
    pub const MAX_REF_LEN: usize = 255;
    /// PAY.CLAIM's consumer name, in bytes.
    pub const MAX_CONSUMER_LEN: usize = 128;
    /// Ten years: a TTL beyond this is a mistake, not a retention policy.
    pub const MAX_TTL_SECS: i64 = 315_360_000;
    /// PAY.CLAIM's LEASE: at most a day.
    pub const MAX_LEASE_MS: i64 = 86_400_000;
    /// Thirty days: the longest back-off a RETRY may set.
    pub const MAX_RETRY_MS: i64 = 30 * 86_400_000;
    /// PAY.STUCK's COUNT when none is given.
    pub const DEFAULT_STUCK_COUNT: usize = 100;
    /// One reply never carries more records than this (the event loop must
    /// not stall).
    pub const MAX_STUCK_COUNT: usize = 100_000;
}

/// The fields of a record reply (PAY.CHECK, PAY.UPDATE, PAY.STUCK,
/// PAY.CLAIM, and PAY.CACHE without BRIEF), in the order the module writes
/// them; PAY.CACHE puts [`OUTCOME`](field::OUTCOME) first.
pub mod field {
    /// PAY.CACHE's `created` or `duplicate`.
    pub const OUTCOME: &str = "outcome";
    /// The key without `pay.key-prefix`: the provider's idempotency key.
    pub const TRANSACTION_ID: &str = "transaction_id";
    pub const USER_ID: &str = "user_id";
    /// Minor units.
    pub const AMOUNT: &str = "amount";
    pub const CURRENCY: &str = "currency";
    pub const STATUS: &str = "status";
    /// Unix milliseconds, chosen by the primary.
    pub const CREATED_AT: &str = "created_at";
    pub const UPDATED_AT: &str = "updated_at";
    /// How many times the payment was claimed.
    pub const ATTEMPTS: &str = "attempts";
    /// 1 once the sweeper flagged it.
    pub const STALE: &str = "stale";
    pub const REASON: &str = "reason";
    pub const PROVIDER_REF: &str = "provider_ref";
    pub const LEASE_OWNER: &str = "lease_owner";
    /// When the lease or the RETRY back-off ends (unix ms; 0 when none).
    pub const LEASE_UNTIL: &str = "lease_until";
    /// The full Redis key.
    pub const KEY: &str = "key";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_parses_from_its_name_in_any_case_and_from_its_code() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str().as_bytes()), Some(st));
            assert_eq!(
                Status::parse(st.as_str().to_uppercase().as_bytes()),
                Some(st)
            );
            assert_eq!(Status::from_code(st as u8), Some(st));
        }
        assert_eq!(Status::parse(b"not_found"), None);
        assert_eq!(Status::from_code(4), None);
    }
}
