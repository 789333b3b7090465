//! The payment record and its state machine. Plain Rust: no Redis here.

#[cfg(test)]
use std::time::{Duration, UNIX_EPOCH};

#[cfg(test)]
use serde::Serialize;

use crate::error::PayError;

/// A payment's status: defined in pay-proto, shared with the sidecar.
pub use pay_proto::Status;

/// A retry worker's claim on an unresolved payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease<'a> {
    pub owner: &'a str,
    /// Unix ms at which the lease runs out.
    pub until: i64,
}

/// The variable-length fields of a record, and the hold and TTL that are
/// stored with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields<'a> {
    /// The key the record lives under.
    pub key: &'a [u8],
    /// The key the payment was created under, when it now lives under
    /// another (RENAME, COPY, RESTORE elsewhere); empty otherwise. Its
    /// transaction id comes from it: the provider knows the payment by the
    /// id it was sent with, whatever Redis calls the key since.
    pub origin: &'a [u8],
    pub user_id: &'a str,
    pub reason: &'a str,
    pub provider_ref: &'a str,
    /// The last worker that claimed it; empty if none did (or it resolved).
    pub lease_owner: &'a str,
    /// Not claimable before this Unix ms (a claim's lease or a RETRY's
    /// back-off); 0, and not stored, when no hold was set.
    pub lease_until: i64,
    /// Seconds the record lives once resolved (chosen at creation).
    pub ttl_secs: u32,
}

impl<'a> Fields<'a> {
    /// The key the payment was created under: its origin if it moved, else
    /// its key.
    pub fn identity(&self) -> &'a [u8] {
        if self.origin.is_empty() {
            self.key
        } else {
            self.origin
        }
    }
}

/// One payment, in 56 bytes plus one allocation for its text: a million
/// pending payments must cost less memory than a string per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// TTL (4 bytes little-endian), the hold deadline when set (8 bytes
    /// little-endian), the origin when set (its length as 4 bytes
    /// little-endian, then its bytes), then user_id, reason, provider_ref,
    /// lease owner and key, end to end.
    text: Box<[u8]>,
    user_id_len: u8,
    reason_len: u16,
    ref_len: u8,
    owner_len: u8,
    /// What `text` carries besides the fields every record has: HELD, ORIGIN.
    extra: u8,
    pub status: Status,
    pub stale: bool,
    /// ISO 4217 letters, upper-case.
    pub currency: [u8; 3],
    pub attempts: u32,
    /// Minor units (1000 = 10.00).
    pub amount: i64,
    /// Unix ms, chosen once on the primary.
    pub created_at: i64,
    pub updated_at: i64,
}

/// `Record::extra`: the text carries a hold deadline.
const HELD: u8 = 1;
/// `Record::extra`: the text carries an origin.
const ORIGIN: u8 = 2;

/// Fields packed for a record: the bytes and the lengths of its fields.
struct Packed {
    text: Box<[u8]>,
    /// user_id, provider_ref and lease owner.
    short_lens: [u8; 3],
    reason_len: u16,
    extra: u8,
}

impl Packed {
    fn new(t: Fields<'_>) -> Packed {
        let user_id = fit(t.user_id, u8::MAX.into());
        let reason = fit(t.reason, u16::MAX.into());
        let provider_ref = fit(t.provider_ref, u8::MAX.into());
        let owner = fit(t.lease_owner, u8::MAX.into());
        let held = t.lease_until != 0;
        let until = if held {
            &t.lease_until.to_le_bytes()[..]
        } else {
            &[][..]
        };
        // The origin is kept only while it differs from the key, and its
        // length fits in four bytes (a Redis key is at most 512 MB).
        let origin = Some(t.origin)
            .filter(|o| !o.is_empty() && *o != t.key)
            .and_then(|o| Some((u32::try_from(o.len()).ok()?.to_le_bytes(), o)));
        let mut text = Vec::with_capacity(
            4 + until.len()
                + origin.map_or(0, |(_, o)| 4 + o.len())
                + user_id.len()
                + reason.len()
                + provider_ref.len()
                + owner.len()
                + t.key.len(),
        );
        text.extend_from_slice(&t.ttl_secs.to_le_bytes());
        text.extend_from_slice(until);
        if let Some((len, o)) = origin {
            text.extend_from_slice(&len);
            text.extend_from_slice(o);
        }
        for part in [user_id, reason, provider_ref, owner] {
            text.extend_from_slice(part.as_bytes());
        }
        text.extend_from_slice(t.key);
        // Each length was fitted to its field's width just above.
        let short = |s: &str| u8::try_from(s.len()).unwrap_or(u8::MAX);
        Packed {
            text: text.into_boxed_slice(),
            short_lens: [short(user_id), short(provider_ref), short(owner)],
            reason_len: u16::try_from(reason.len()).unwrap_or(u16::MAX),
            extra: if held { HELD } else { 0 } | if origin.is_some() { ORIGIN } else { 0 },
        }
    }
}

/// Cuts the next `n` bytes of packed text off `rest`, as the &str they were
/// when packed.
fn cut<'a>(rest: &mut &'a [u8], n: usize) -> &'a str {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    std::str::from_utf8(head).unwrap_or_default()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary. The parsers keep every field within its length byte; this only
/// guards the packing against a caller that did not.
fn fit(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What PAY.UPDATE asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Update<'a> {
    pub status: Status,
    pub reason: Option<&'a str>,
    pub provider_ref: Option<&'a str>,
    /// Not claimable for this many ms (pending or unknown only).
    pub retry_ms: Option<i64>,
    /// Applies only if `attempts` is still this.
    pub fence: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record changed and must be written, replicated and announced.
    Changed,
    /// The record reached succeeded or failed just now: as Changed, and its
    /// key now gets the record's TTL.
    Resolved,
    /// The same terminal status again: an idempotent no-op.
    Unchanged,
}

impl Record {
    /// A new pending record that lives `ttl_secs` once resolved.
    pub fn new(
        key: &[u8],
        user_id: &str,
        amount: i64,
        currency: [u8; 3],
        now: i64,
        ttl_secs: u32,
    ) -> Record {
        let text = Fields {
            key,
            user_id,
            ttl_secs,
            ..Fields::default()
        };
        Record::with_text(text, amount, currency, now)
    }

    /// A pending record with all its text.
    pub fn with_text(text: Fields<'_>, amount: i64, currency: [u8; 3], created_at: i64) -> Record {
        let mut r = Record {
            text: Box::default(),
            user_id_len: 0,
            reason_len: 0,
            ref_len: 0,
            owner_len: 0,
            extra: 0,
            amount,
            currency,
            status: Status::Pending,
            stale: false,
            created_at,
            updated_at: created_at,
            attempts: 0,
        };
        r.install(Packed::new(text));
        r
    }

    /// The variable-length fields, borrowed, the hold and the TTL.
    pub fn fields(&self) -> Fields<'_> {
        let mut rest = &self.text[..];
        let mut ttl_secs = 0;
        if let Some((bytes, tail)) = rest.split_first_chunk::<4>() {
            ttl_secs = u32::from_le_bytes(*bytes);
            rest = tail;
        }
        let mut lease_until = 0;
        if self.extra & HELD != 0 {
            if let Some((bytes, tail)) = rest.split_first_chunk::<8>() {
                lease_until = i64::from_le_bytes(*bytes);
                rest = tail;
            }
        }
        let mut origin: &[u8] = &[];
        if self.extra & ORIGIN != 0 {
            if let Some((bytes, tail)) = rest.split_first_chunk::<4>() {
                let len = usize::try_from(u32::from_le_bytes(*bytes)).unwrap_or(usize::MAX);
                (origin, rest) = tail.split_at(len.min(tail.len()));
            }
        }
        let user_id = cut(&mut rest, usize::from(self.user_id_len));
        let reason = cut(&mut rest, usize::from(self.reason_len));
        let provider_ref = cut(&mut rest, usize::from(self.ref_len));
        let lease_owner = cut(&mut rest, usize::from(self.owner_len));
        Fields {
            key: rest,
            origin,
            user_id,
            reason,
            provider_ref,
            lease_owner,
            lease_until,
            ttl_secs,
        }
    }

    fn install(&mut self, p: Packed) {
        self.text = p.text;
        [self.user_id_len, self.ref_len, self.owner_len] = p.short_lens;
        self.reason_len = p.reason_len;
        self.extra = p.extra;
    }

    /// The packing of `text`, if it differs from the record's.
    fn repacked(&self, text: Fields<'_>) -> Option<Packed> {
        (text != self.fields()).then(|| Packed::new(text))
    }

    /// The key the record lives under.
    pub fn key(&self) -> &[u8] {
        self.fields().key
    }

    /// Follows the record to a new key (RENAME, COPY, MOVE). The payment
    /// keeps the transaction id it was created with.
    pub fn set_key(&mut self, key: &[u8]) {
        let t = self.fields();
        if t.key != key {
            self.install(Packed::new(Fields {
                key,
                origin: t.identity(),
                ..t
            }));
        }
    }

    pub fn user_id(&self) -> &str {
        self.fields().user_id
    }

    /// Seconds the record lives once resolved.
    pub fn ttl_secs(&self) -> u32 {
        self.fields().ttl_secs
    }

    /// Not claimable before this Unix ms; 0 if no hold was ever set.
    pub fn held_until(&self) -> i64 {
        self.fields().lease_until
    }

    /// The lease, if one was granted (live or run out).
    pub fn lease(&self) -> Option<Lease<'_>> {
        let t = self.fields();
        (!t.lease_owner.is_empty()).then_some(Lease {
            owner: t.lease_owner,
            until: t.lease_until,
        })
    }

    /// Grants (`Some`) or drops (`None`) the lease and its hold.
    pub fn set_lease(&mut self, lease: Option<Lease<'_>>) {
        let (owner, until) = lease.map_or(("", 0), |l| (l.owner, l.until));
        let text = Fields {
            lease_owner: owner,
            lease_until: until,
            ..self.fields()
        };
        if let Some(p) = self.repacked(text) {
            self.install(p);
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
        if self.user_id() != user_id {
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

    /// The state machine of contract v2:
    ///
    /// - `pending -> pending | unknown | succeeded | failed`;
    /// - `unknown -> unknown | pending | succeeded | failed`;
    /// - `succeeded` and `failed` are final: the same one again is a no-op,
    ///   any other is refused.
    ///
    /// A `FENCE` that no longer matches `attempts` refuses any change. `RETRY`
    /// holds an unresolved record back from claims; resolving drops the
    /// lease, the hold and the stale flag.
    pub fn apply(&mut self, update: &Update<'_>, now: i64) -> Result<Applied, PayError> {
        if let Some(fence) = update.fence {
            if fence != self.attempts {
                return Err(PayError::Fenced {
                    expected: fence,
                    attempts: self.attempts,
                });
            }
        }
        let (from, to) = (self.status, update.status);
        if from.is_terminal() {
            return if from == to {
                Ok(Applied::Unchanged)
            } else {
                Err(PayError::Transition { from, to })
            };
        }
        let old = self.fields();
        let resolved = to.is_terminal();
        let lease_until = match update.retry_ms {
            _ if resolved => 0,
            // A hold of 0 would read as "none": 1 ms in the past is the same
            // "claimable now".
            Some(ms) => now.saturating_add(ms).max(1),
            None => old.lease_until,
        };
        let text = Fields {
            reason: update.reason.unwrap_or(old.reason),
            provider_ref: update.provider_ref.unwrap_or(old.provider_ref),
            // Resolved: no worker holds it any more.
            lease_owner: if resolved { "" } else { old.lease_owner },
            lease_until,
            ..old
        };
        if let Some(p) = self.repacked(text) {
            self.install(p);
        }
        self.status = to;
        if resolved {
            // No retry is due.
            self.stale = false;
        }
        self.updated_at = self.updated_at.max(now);
        Ok(if resolved {
            Applied::Resolved
        } else {
            Applied::Changed
        })
    }

    /// Leases the record to `consumer` for `lease_ms` from `now`, counting an
    /// attempt. The caller has checked that no live hold is set.
    pub fn claim(&mut self, consumer: &str, now: i64, lease_ms: i64) {
        self.set_lease(Some(Lease {
            owner: consumer,
            until: now.saturating_add(lease_ms).max(1),
        }));
        self.attempts = self.attempts.saturating_add(1);
        self.updated_at = self.updated_at.max(now);
    }

    /// Whether a live hold (a lease or a RETRY back-off that has not run out
    /// at `now`) keeps the record from claims.
    pub fn leased_at(&self, now: i64) -> bool {
        self.held_until() > now
    }

    /// Heap bytes owned by the record (for MEMORY USAGE).
    pub fn heap_size(&self) -> usize {
        self.text.len()
    }

    /// The JSON shape the payment service already knows, then the other
    /// fields. `transaction_id` is the key without `prefix`. The tests' oracle
    /// for PAY.CHECK JSON (`commands::write_json`), through serde_json.
    #[cfg(test)]
    pub fn to_json(&self, prefix: &[u8]) -> String {
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
            key: &'a str,
        }
        let text = self.fields();
        let user_id = match decimal_u64(text.user_id) {
            Some(n) => UserId::Number(n),
            None => UserId::Text(text.user_id),
        };
        let key = String::from_utf8_lossy(text.key);
        let json = Json {
            transaction_id: &String::from_utf8_lossy(transaction_id(text.identity(), prefix)),
            user_id,
            status: self.status.as_str(),
            amount: self.amount,
            currency: self.currency_str(),
            timestamp: rfc3339_seconds(self.created_at),
            created_at: self.created_at,
            updated_at: self.updated_at,
            attempts: self.attempts,
            stale: self.stale,
            reason: text.reason,
            provider_ref: text.provider_ref,
            lease_owner: text.lease_owner,
            lease_until: text.lease_until,
            key: &key,
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }
}

/// The transaction id of the payment under `key`: the key without the
/// namespace `prefix`, or the whole key when it does not start with it.
pub fn transaction_id<'a>(key: &'a [u8], prefix: &[u8]) -> &'a [u8] {
    key.strip_prefix(prefix).unwrap_or(key)
}

/// Whether PAY.CACHE may create a payment under `key`: with a namespace
/// `prefix`, only a key in it with a transaction id after it. Otherwise two
/// keys would share one transaction id, the provider's idempotency key
/// (`other:t1` and `payment:other:t1`, or the empty id of `payment:`), and
/// one payment's charge would answer for the other.
pub fn in_namespace(key: &[u8], prefix: &[u8]) -> bool {
    key.len() > prefix.len() && key.starts_with(prefix)
}

/// A user id written as a canonical decimal (no sign, no leading zero) that
/// fits in u64 is a number in JSON; anything else stays a string.
#[cfg(test)]
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
#[cfg(test)]
pub fn rfc3339_seconds(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms.clamp(0, MAX_TIMESTAMP_MS)).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Record {
        Record::new(
            b"txn_12345",
            "67890",
            1000,
            *b"USD",
            1_706_618_700_000,
            86_400,
        )
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
        assert_eq!(Status::parse(b"Unknown"), Some(Status::Unknown));
        assert_eq!(Status::from_code(4), None);
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
        r.set_lease(Some(Lease {
            owner: "w1",
            until: r.created_at + 5000,
        }));
        let upd = Update {
            status: Status::Pending,
            reason: Some("bank timeout"),
            provider_ref: None,
            ..Default::default()
        };
        assert_eq!(r.apply(&upd, r.created_at + 10), Ok(Applied::Changed));
        assert_eq!(r.fields().reason, "bank timeout");
        assert_eq!(r.status, Status::Pending);
        assert_eq!(r.lease().map(|l| l.owner), Some("w1"));
        assert_eq!(r.user_id(), "67890");
        assert_eq!(r.key(), b"txn_12345");
        assert_eq!(r.updated_at, r.created_at + 10);
    }

    #[test]
    fn resolving_ends_lease_and_stale_flag() {
        let mut r = pending();
        r.stale = true;
        r.set_lease(Some(Lease {
            owner: "w1",
            until: i64::MAX,
        }));
        let upd = Update {
            status: Status::Succeeded,
            reason: None,
            provider_ref: Some("ch_1"),
            ..Default::default()
        };
        assert_eq!(r.apply(&upd, r.created_at + 1), Ok(Applied::Resolved));
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(r.fields().provider_ref, "ch_1");
        assert!(r.lease().is_none());
        assert!(!r.leased_at(0));
        assert!(!r.stale);
    }

    #[test]
    fn terminal_status_is_final_and_idempotent() {
        let mut r = pending();
        let ok = Update {
            status: Status::Succeeded,
            reason: None,
            provider_ref: Some("ch_1"),
            ..Default::default()
        };
        r.apply(&ok, r.created_at + 1).unwrap();
        let before = r.clone();
        let again = Update {
            status: Status::Succeeded,
            reason: Some("ignored"),
            provider_ref: Some("other"),
            ..Default::default()
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
                        ..Default::default()
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
    fn under_a_namespace_every_key_has_its_own_transaction_id() {
        assert!(in_namespace(b"payment:txn_1", b"payment:"));
        assert!(in_namespace(b"txn_1", b""));
        assert!(!in_namespace(b"payment:", b"payment:"));
        assert!(!in_namespace(b"other:txn_1", b"payment:"));
        assert!(!in_namespace(b"", b""));
    }

    #[test]
    fn a_payment_keeps_the_transaction_id_it_was_created_with_wherever_it_moves() {
        let mut r = Record::new(b"payment:txn_1", "u", 1, *b"USD", 0, 60);
        let bare = r.heap_size();
        assert_eq!(r.fields().identity(), b"payment:txn_1");
        r.set_key(b"payment:txn_1:held");
        r.set_key(b"archive:\xff");
        let t = r.fields();
        assert_eq!(
            (t.key, t.origin),
            (&b"archive:\xff"[..], &b"payment:txn_1"[..])
        );
        assert_eq!(transaction_id(t.identity(), b"payment:"), b"txn_1");
        // Back under its own name, the record costs what it did.
        r.set_key(b"payment:txn_1");
        assert_eq!((r.fields().origin, r.heap_size()), (&b""[..], bare));
        let v: serde_json::Value = serde_json::from_str(&{
            r.set_key(b"other");
            r.to_json(b"payment:")
        })
        .unwrap();
        assert_eq!(
            (v["transaction_id"].as_str(), v["key"].as_str()),
            (Some("txn_1"), Some("other"))
        );
    }

    #[test]
    fn updated_at_never_goes_back_when_the_clock_does() {
        let mut r = pending();
        let upd = Update {
            status: Status::Pending,
            reason: None,
            provider_ref: None,
            ..Default::default()
        };
        r.apply(&upd, r.created_at - 5000).unwrap();
        assert_eq!(r.updated_at, r.created_at);
    }

    #[test]
    fn a_record_is_56_bytes_and_its_text_survives_every_edit() {
        assert_eq!(std::mem::size_of::<Record>(), 56);
        let mut r = pending();
        r.set_lease(Some(Lease {
            owner: "wörker",
            until: 7,
        }));
        r.set_key(b"renamed:\xff");
        let upd = Update {
            status: Status::Pending,
            reason: Some("timeout é"),
            provider_ref: Some("ch_9"),
            ..Default::default()
        };
        r.apply(&upd, r.created_at).unwrap();
        let expect = Fields {
            key: b"renamed:\xff",
            origin: b"txn_12345",
            user_id: "67890",
            reason: "timeout é",
            provider_ref: "ch_9",
            lease_owner: "wörker",
            lease_until: 7,
            ttl_secs: 86_400,
        };
        assert_eq!(r.fields(), expect);
        assert_eq!(r.lease().map(|l| l.until), Some(7));
        assert_eq!(r.heap_size(), 4 + 8 + 4 + 9 + 5 + 10 + 4 + 7 + 9);
        r.set_lease(None);
        assert_eq!(r.lease(), None);
        assert_eq!(r.fields().key, b"renamed:\xff");
        assert_eq!(r.fields().provider_ref, "ch_9");
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
        assert_eq!(r.lease().map(|l| l.owner), Some("w2"));
    }

    #[test]
    fn every_transition_of_contract_v2() {
        use Status::*;
        for from in Status::ALL {
            for to in Status::ALL {
                let mut r = pending();
                r.status = from;
                let before = r.clone();
                let got = r.apply(
                    &Update {
                        status: to,
                        ..Default::default()
                    },
                    r.created_at + 1,
                );
                let expect = match (from, to) {
                    (Succeeded, Succeeded) | (Failed, Failed) => Ok(Applied::Unchanged),
                    (Succeeded | Failed, _) => Err(PayError::Transition { from, to }),
                    (_, Succeeded | Failed) => Ok(Applied::Resolved),
                    (Pending | Unknown, Pending | Unknown) => Ok(Applied::Changed),
                };
                assert_eq!(got, expect, "{from:?} -> {to:?}");
                if got.is_err() || got == Ok(Applied::Unchanged) {
                    assert_eq!(r, before, "{from:?} -> {to:?} changed the record");
                } else {
                    assert_eq!(r.status, to);
                }
            }
        }
    }

    #[test]
    fn retry_holds_back_and_fence_refuses_a_stale_worker() {
        let mut r = pending();
        let t = r.created_at;
        r.claim("w1", t, 1000);
        r.claim("w2", t + 1000, 1000);
        let late = Update {
            status: Status::Failed,
            fence: Some(1),
            ..Default::default()
        };
        let before = r.clone();
        assert_eq!(
            r.apply(&late, t + 1500),
            Err(PayError::Fenced {
                expected: 1,
                attempts: 2
            })
        );
        assert_eq!(r, before);
        let retry = Update {
            status: Status::Pending,
            reason: Some("503"),
            retry_ms: Some(60_000),
            fence: Some(2),
            ..Default::default()
        };
        assert_eq!(r.apply(&retry, t + 1500), Ok(Applied::Changed));
        assert_eq!(r.held_until(), t + 61_500);
        assert!(r.leased_at(t + 61_499) && !r.leased_at(t + 61_500));
        assert_eq!(r.lease().map(|l| l.owner), Some("w2"), "who tried last");
        // RETRY 0: claimable at once.
        let now = Update {
            status: Status::Unknown,
            retry_ms: Some(0),
            ..Default::default()
        };
        r.apply(&now, t + 2000).unwrap();
        assert!(!r.leased_at(t + 2000));
        assert_eq!(r.status, Status::Unknown);
        // Resolving drops lease and hold; the TTL chosen at creation stays.
        let done = Update {
            status: Status::Succeeded,
            fence: Some(2),
            ..Default::default()
        };
        assert_eq!(r.apply(&done, t + 3000), Ok(Applied::Resolved));
        assert_eq!((r.held_until(), r.lease()), (0, None));
        assert_eq!(r.ttl_secs(), 86_400);
    }

    #[test]
    fn transaction_id_strips_the_prefix_only_when_present() {
        assert_eq!(transaction_id(b"payment:txn_1", b"payment:"), b"txn_1");
        assert_eq!(transaction_id(b"other:txn_1", b"payment:"), b"other:txn_1");
        assert_eq!(transaction_id(b"txn_1", b""), b"txn_1");
        let r = Record::new(b"payment:txn_9", "u", 1, *b"USD", 0, 60);
        let v: serde_json::Value = serde_json::from_str(&r.to_json(b"payment:")).unwrap();
        assert_eq!(v["transaction_id"], "txn_9");
        assert_eq!(v["key"], "payment:txn_9");
    }

    #[test]
    fn json_has_the_service_shape() {
        let r = pending();
        let v: serde_json::Value = serde_json::from_str(&r.to_json(b"")).unwrap();
        assert_eq!(v["transaction_id"], "txn_12345");
        assert_eq!(v["user_id"], 67890);
        assert_eq!(v["status"], "pending");
        assert_eq!(v["amount"], 1000);
        assert_eq!(v["currency"], "USD");
        assert_eq!(v["timestamp"], "2024-01-30T12:45:00Z");
        assert_eq!(v["attempts"], 0);
        let text = r.to_json(b"");
        assert!(text.starts_with(r#"{"transaction_id":"txn_12345","user_id":67890,"status":"pending","amount":1000,"currency":"USD","timestamp":"#));
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
            let r = Record::new(b"k", uid, 1, *b"EUR", 0, 60);
            let v: serde_json::Value = serde_json::from_str(&r.to_json(b"")).unwrap();
            assert_eq!(v["user_id"], expect, "user_id {uid}");
        }
    }
}
