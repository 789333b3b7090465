//! The payment record and its state machine. Plain Rust: no Redis here.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::error::PayError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Pending = 0,
    Succeeded = 1,
    Failed = 2,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Pending, Status::Succeeded, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    /// Parses a status name, ignoring ASCII case.
    pub fn parse(s: &[u8]) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().as_bytes().eq_ignore_ascii_case(s))
    }

    pub fn from_code(code: u8) -> Option<Status> {
        Status::ALL.into_iter().find(|st| *st as u8 == code)
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Pending
    }
}

/// A retry worker's claim on a pending payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: Box<str>,
    /// Unix ms at which the lease runs out.
    pub until: i64,
}

/// One payment. Strings are boxed slices: a record is mostly read, rarely grown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub user_id: Box<str>,
    /// Minor units (1000 = 10.00).
    pub amount: i64,
    /// ISO 4217 letters, upper-case.
    pub currency: [u8; 3],
    pub status: Status,
    pub stale: bool,
    /// Unix ms, chosen once on the primary.
    pub created_at: i64,
    pub updated_at: i64,
    pub attempts: u32,
    pub reason: Box<str>,
    pub provider_ref: Box<str>,
    pub lease: Option<Box<Lease>>,
}

/// What PAY.UPDATE asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update<'a> {
    pub status: Status,
    pub reason: Option<&'a str>,
    pub provider_ref: Option<&'a str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record changed and must be written, replicated and announced.
    Changed,
    /// The same terminal status again: an idempotent no-op.
    Unchanged,
}

impl Record {
    pub fn new(user_id: &str, amount: i64, currency: [u8; 3], now: i64) -> Record {
        Record {
            user_id: user_id.into(),
            amount,
            currency,
            status: Status::Pending,
            stale: false,
            created_at: now,
            updated_at: now,
            attempts: 0,
            reason: "".into(),
            provider_ref: "".into(),
            lease: None,
        }
    }

    pub fn currency_str(&self) -> &str {
        // Currency bytes are checked ASCII letters wherever a record is made.
        std::str::from_utf8(&self.currency).unwrap_or("???")
    }

    /// Stripe's rule: an idempotency key is bound to its parameters.
    pub fn check_same_terms(
        &self,
        user_id: &str,
        amount: i64,
        currency: [u8; 3],
    ) -> Result<(), PayError> {
        let mut differ = Vec::new();
        if &*self.user_id != user_id {
            differ.push("user_id");
        }
        if self.amount != amount {
            differ.push("amount");
        }
        if self.currency != currency {
            differ.push("currency");
        }
        if differ.is_empty() {
            Ok(())
        } else {
            Err(PayError::Mismatch(format!(
                "idempotency key already used with a different {}",
                differ.join(", ")
            )))
        }
    }

    /// The state machine: `pending -> pending` (a transient error), `pending ->
    /// succeeded|failed`, and the same terminal status again as a no-op.
    pub fn apply(&mut self, update: &Update<'_>, now: i64) -> Result<Applied, PayError> {
        match (self.status, update.status) {
            (from, to) if from.is_terminal() && from == to => Ok(Applied::Unchanged),
            (from, to) if from.is_terminal() => Err(PayError::Transition { from, to }),
            (_, to) => {
                self.status = to;
                if let Some(reason) = update.reason {
                    self.reason = reason.into();
                }
                if let Some(reference) = update.provider_ref {
                    self.provider_ref = reference.into();
                }
                if to.is_terminal() {
                    // Resolved: no retry is due, and no worker holds it any more.
                    self.lease = None;
                    self.stale = false;
                }
                self.updated_at = self.updated_at.max(now);
                Ok(Applied::Changed)
            }
        }
    }

    /// Leases the record to `consumer` for `lease_ms` from `now`, counting an
    /// attempt. The caller has checked that no live lease is held.
    pub fn claim(&mut self, consumer: &str, now: i64, lease_ms: i64) {
        self.lease = Some(Box::new(Lease {
            owner: consumer.into(),
            until: now.saturating_add(lease_ms),
        }));
        self.attempts = self.attempts.saturating_add(1);
    }

    /// Whether a live lease (one that has not run out at `now`) is held.
    pub fn leased_at(&self, now: i64) -> bool {
        self.lease.as_ref().is_some_and(|l| l.until > now)
    }

    /// Heap bytes owned by the record (for MEMORY USAGE).
    pub fn heap_size(&self) -> usize {
        self.user_id.len()
            + self.reason.len()
            + self.provider_ref.len()
            + self
                .lease
                .as_ref()
                .map_or(0, |l| std::mem::size_of::<Lease>() + l.owner.len())
    }

    /// The JSON shape the payment service already knows, then the other fields.
    pub fn to_json(&self, transaction_id: &str) -> String {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum UserId<'a> {
            Number(u64),
            Text(&'a str),
        }
        #[derive(Serialize)]
        struct Json<'a> {
            transaction_id: &'a str,
            user_id: UserId<'a>,
            status: &'a str,
            amount: i64,
            currency: &'a str,
            timestamp: String,
            created_at: i64,
            updated_at: i64,
            attempts: u32,
            stale: bool,
            reason: &'a str,
            provider_ref: &'a str,
            lease_owner: &'a str,
            lease_until: i64,
        }
        let user_id = match decimal_u64(&self.user_id) {
            Some(n) => UserId::Number(n),
            None => UserId::Text(&self.user_id),
        };
        let json = Json {
            transaction_id,
            user_id,
            status: self.status.as_str(),
            amount: self.amount,
            currency: self.currency_str(),
            timestamp: rfc3339_seconds(self.created_at),
            created_at: self.created_at,
            updated_at: self.updated_at,
            attempts: self.attempts,
            stale: self.stale,
            reason: &self.reason,
            provider_ref: &self.provider_ref,
            lease_owner: self.lease.as_ref().map_or("", |l| &l.owner),
            lease_until: self.lease.as_ref().map_or(0, |l| l.until),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }
}

/// A user id written as a canonical decimal (no sign, no leading zero) that
/// fits in u64 is a number in JSON; anything else stays a string.
fn decimal_u64(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59.999Z): no
/// record holds a later timestamp.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// `2024-01-30T12:45:00Z` for a Unix ms timestamp. Out-of-range values are
/// clamped: humantime's formatter fails past year 9999, and `to_string` would
/// turn that failure into a panic (which kills Redis).
pub fn rfc3339_seconds(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms.clamp(0, MAX_TIMESTAMP_MS)).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Record {
        Record::new("67890", 1000, *b"USD", 1_706_618_700_000)
    }

    #[test]
    fn status_parses_any_case_and_rejects_unknown() {
        assert_eq!(Status::parse(b"PENDING"), Some(Status::Pending));
        assert_eq!(Status::parse(b"succeeded"), Some(Status::Succeeded));
        assert_eq!(Status::parse(b"Failed"), Some(Status::Failed));
        assert_eq!(Status::parse(b"done"), None);
        assert_eq!(Status::parse(b""), None);
        for st in Status::ALL {
            assert_eq!(Status::from_code(st as u8), Some(st));
        }
        assert_eq!(Status::from_code(3), None);
    }

    #[test]
    fn same_terms_accepts_identical_and_names_each_difference() {
        let r = pending();
        assert!(r.check_same_terms("67890", 1000, *b"USD").is_ok());
        let err = r.check_same_terms("1", 999, *b"EUR").unwrap_err();
        assert_eq!(
            err.to_string(),
            "MISMATCH idempotency key already used with a different user_id, amount, currency"
        );
        let err = r.check_same_terms("67890", 1001, *b"USD").unwrap_err();
        assert!(err.to_string().ends_with("different amount"));
    }

    #[test]
    fn pending_to_pending_records_reason_and_keeps_lease() {
        let mut r = pending();
        r.lease = Some(Box::new(Lease {
            owner: "w1".into(),
            until: r.created_at + 5000,
        }));
        let upd = Update {
            status: Status::Pending,
            reason: Some("bank timeout"),
            provider_ref: None,
        };
        assert_eq!(r.apply(&upd, r.created_at + 10), Ok(Applied::Changed));
        assert_eq!(&*r.reason, "bank timeout");
        assert_eq!(r.status, Status::Pending);
        assert!(r.lease.is_some());
        assert_eq!(r.updated_at, r.created_at + 10);
    }

    #[test]
    fn resolving_ends_lease_and_stale_flag() {
        let mut r = pending();
        r.stale = true;
        r.lease = Some(Box::new(Lease {
            owner: "w1".into(),
            until: i64::MAX,
        }));
        let upd = Update {
            status: Status::Succeeded,
            reason: None,
            provider_ref: Some("ch_1"),
        };
        assert_eq!(r.apply(&upd, r.created_at + 1), Ok(Applied::Changed));
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(&*r.provider_ref, "ch_1");
        assert!(r.lease.is_none());
        assert!(!r.stale);
    }

    #[test]
    fn terminal_status_is_final_and_idempotent() {
        let mut r = pending();
        let ok = Update {
            status: Status::Succeeded,
            reason: None,
            provider_ref: Some("ch_1"),
        };
        r.apply(&ok, r.created_at + 1).unwrap();
        let before = r.clone();
        let again = Update {
            status: Status::Succeeded,
            reason: Some("ignored"),
            provider_ref: Some("other"),
        };
        assert_eq!(r.apply(&again, r.created_at + 9), Ok(Applied::Unchanged));
        assert_eq!(r, before);
        for to in [Status::Failed, Status::Pending] {
            let err = r
                .apply(
                    &Update {
                        status: to,
                        reason: None,
                        provider_ref: None,
                    },
                    0,
                )
                .unwrap_err();
            assert!(err
                .to_string()
                .starts_with("TRANSITION a succeeded payment"));
            assert_eq!(r, before);
        }
    }

    #[test]
    fn updated_at_never_goes_back_when_the_clock_does() {
        let mut r = pending();
        let upd = Update {
            status: Status::Pending,
            reason: None,
            provider_ref: None,
        };
        r.apply(&upd, r.created_at - 5000).unwrap();
        assert_eq!(r.updated_at, r.created_at);
    }

    #[test]
    fn claim_leases_and_counts_an_attempt() {
        let mut r = pending();
        let t = r.created_at;
        r.claim("w1", t, 1000);
        assert_eq!(r.attempts, 1);
        assert!(r.leased_at(t + 999));
        assert!(!r.leased_at(t + 1000));
        r.claim("w2", t + 1000, 1000);
        assert_eq!(r.attempts, 2);
        assert_eq!(&*r.lease.as_ref().unwrap().owner, "w2");
    }

    #[test]
    fn json_has_the_service_shape() {
        let r = pending();
        let v: serde_json::Value = serde_json::from_str(&r.to_json("txn_12345")).unwrap();
        assert_eq!(v["transaction_id"], "txn_12345");
        assert_eq!(v["user_id"], 67890);
        assert_eq!(v["status"], "pending");
        assert_eq!(v["amount"], 1000);
        assert_eq!(v["currency"], "USD");
        assert_eq!(v["timestamp"], "2024-01-30T12:45:00Z");
        assert_eq!(v["attempts"], 0);
        let text = r.to_json("t");
        assert!(text.starts_with(r#"{"transaction_id":"t","user_id":67890,"status":"pending","amount":1000,"currency":"USD","timestamp":"#));
    }

    #[test]
    fn timestamps_beyond_rfc3339_are_clamped_not_a_panic() {
        assert_eq!(rfc3339_seconds(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(MAX_TIMESTAMP_MS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_seconds(-5), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn json_user_id_is_a_string_unless_canonical_decimal() {
        for (uid, expect) in [
            ("007", serde_json::json!("007")),
            ("u-1", serde_json::json!("u-1")),
            ("0", serde_json::json!(0)),
            (
                "99999999999999999999999",
                serde_json::json!("99999999999999999999999"),
            ),
            ("say \"hi\"", serde_json::json!("say \"hi\"")),
        ] {
            let r = Record::new(uid, 1, *b"EUR", 0);
            let v: serde_json::Value = serde_json::from_str(&r.to_json("k")).unwrap();
            assert_eq!(v["user_id"], expect, "user_id {uid}");
        }
    }
}
