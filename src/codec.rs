//! The one binary form of a record, used for RDB (and so DUMP/RESTORE and
//! replica full sync), AOF rewrite and replication (`PAY.LOAD key blob`).
//!
//! Layout (little-endian), version 3:
//! `u8 version, u8 status, u8 flags (1 = stale, 2 = has a lease owner,
//! 4 = has a hold deadline), [u8; 3] currency, i64 amount, i64 created_at,
//! i64 updated_at, u32 attempts, u32 ttl_secs, str user_id, str reason,
//! str provider_ref, [str lease_owner], [i64 lease_until], bytes identity`
//! where `str` is a u16 length and UTF-8 bytes, and `bytes` a u32 length and
//! any bytes. Version 2 (no identity) and version 1 (no TTL either; owner and
//! deadline always together, flag 2) are still read, so data written before
//! loads. Decoding checks every field with the same rules as the commands, so
//! no byte string can make a record that the commands could not have made.
//!
//! The key is not in the blob: it travels beside it, as any bytes Redis
//! allows. The identity is the key the payment was created under, which
//! gives its transaction id: a blob restored or copied under another name is
//! still the same payment to the provider.

use pay_proto::limits::{
    MAX_CONSUMER_LEN, MAX_REASON_LEN, MAX_REF_LEN, MAX_TTL_SECS, MAX_USER_ID_LEN,
};

use crate::args::parse_text;
use crate::config::DEFAULT_TTL;
use crate::error::PayError;
use crate::record::{Fields, Record, Status, MAX_TIMESTAMP_MS};

pub const VERSION: u8 = 3;
const FLAG_STALE: u8 = 1;
const FLAG_OWNER: u8 = 2;
const FLAG_HOLD: u8 = 4;

pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + r.heap_size() + 8 + r.key().len());
    encode_into(r, &mut out);
    out
}

/// Appends the encoding of `r` to `out`.
pub fn encode_into(r: &Record, out: &mut Vec<u8>) {
    let text = r.fields();
    let mut flags = 0;
    if r.stale {
        flags |= FLAG_STALE;
    }
    if !text.lease_owner.is_empty() {
        flags |= FLAG_OWNER;
    }
    if text.lease_until != 0 {
        flags |= FLAG_HOLD;
    }
    out.push(VERSION);
    out.push(r.status as u8);
    out.push(flags);
    out.extend_from_slice(&r.currency);
    out.extend_from_slice(&r.amount.to_le_bytes());
    out.extend_from_slice(&r.created_at.to_le_bytes());
    out.extend_from_slice(&r.updated_at.to_le_bytes());
    out.extend_from_slice(&r.attempts.to_le_bytes());
    out.extend_from_slice(&text.ttl_secs.to_le_bytes());
    put_str(out, text.user_id);
    put_str(out, text.reason);
    put_str(out, text.provider_ref);
    if flags & FLAG_OWNER != 0 {
        put_str(out, text.lease_owner);
    }
    if flags & FLAG_HOLD != 0 {
        out.extend_from_slice(&text.lease_until.to_le_bytes());
    }
    let identity = text.identity();
    // A Redis key is at most 512 MB.
    let len = u32::try_from(identity.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&identity[..identity.len().min(len as usize)]);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string field is bounded far below u16::MAX by the parsers.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Why a byte string is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid payment record: {}", self.0)
    }
}

/// The record stored under `key`.
pub fn decode(key: &[u8], bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut rd = Reader { bytes };
    let version = rd.u8()?;
    let (owner_flag, hold_flag) = match version {
        1 => (FLAG_OWNER, FLAG_OWNER),
        2 | VERSION => (FLAG_OWNER, FLAG_HOLD),
        _ => return Err(DecodeError(format!("unknown encoding version {version}"))),
    };
    let status = Status::from_code(rd.u8()?).ok_or_else(|| bad("unknown status"))?;
    if version == 1 && status == Status::Unknown {
        return Err(bad("unknown status"));
    }
    let flags = rd.u8()?;
    if flags & !(FLAG_STALE | owner_flag | hold_flag) != 0 {
        return Err(bad("unknown flags"));
    }
    let currency: [u8; 3] = rd.array()?;
    if !currency.iter().all(u8::is_ascii_uppercase) {
        return Err(bad("currency is not three upper-case letters"));
    }
    let amount = i64::from_le_bytes(rd.array()?);
    let created_at = i64::from_le_bytes(rd.array()?);
    let updated_at = i64::from_le_bytes(rd.array()?);
    let attempts = u32::from_le_bytes(rd.array()?);
    if amount < 0 {
        return Err(bad("negative amount"));
    }
    if created_at < 0 || updated_at < created_at {
        return Err(bad("timestamps out of order"));
    }
    if updated_at > MAX_TIMESTAMP_MS {
        return Err(bad("timestamps beyond year 9999"));
    }
    let ttl_secs = if version == 1 {
        u32::try_from(DEFAULT_TTL.get()).unwrap_or(u32::MAX)
    } else {
        u32::from_le_bytes(rd.array()?)
    };
    if !(1..=MAX_TTL_SECS).contains(&i64::from(ttl_secs)) {
        return Err(bad("TTL out of range"));
    }
    let user_id = rd.text("user_id", 1, MAX_USER_ID_LEN)?;
    let reason = rd.str_bytes()?;
    let reason = std::str::from_utf8(reason)
        .ok()
        .filter(|s| s.len() <= MAX_REASON_LEN)
        .ok_or_else(|| bad("reason"))?;
    let provider_ref = rd.text("provider_ref", 0, MAX_REF_LEN)?;
    let lease_owner = if flags & owner_flag != 0 {
        rd.text("lease owner", 1, MAX_CONSUMER_LEN)?
    } else {
        ""
    };
    let lease_until = if flags & hold_flag != 0 {
        let until = i64::from_le_bytes(rd.array()?);
        if until == 0 {
            return Err(bad("a hold deadline of 0"));
        }
        until
    } else {
        0
    };
    // Before version 3 a payment was known by the key it lived under.
    let origin = if version == VERSION {
        let len = u32::from_le_bytes(rd.array()?);
        rd.take(usize::try_from(len).map_err(|_| bad("truncated"))?)?
    } else {
        key
    };
    if !rd.bytes.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let stale = flags & FLAG_STALE != 0;
    if status.is_terminal() && (stale || !lease_owner.is_empty() || lease_until != 0) {
        return Err(bad("a resolved payment cannot be stale, leased or held"));
    }
    let text = Fields {
        key,
        origin,
        user_id,
        reason,
        provider_ref,
        lease_owner,
        lease_until,
        ttl_secs,
    };
    let mut r = Record::with_text(text, amount, currency, created_at);
    r.status = status;
    r.stale = stale;
    r.updated_at = updated_at;
    r.attempts = attempts;
    Ok(r)
}

fn bad(what: &str) -> DecodeError {
    DecodeError(what.to_string())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn str_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_le_bytes(self.array()?);
        self.take(usize::from(len))
    }

    fn text(&mut self, what: &str, min: usize, max: usize) -> Result<&'a str, DecodeError> {
        let raw = self.str_bytes()?;
        if raw.is_empty() && min == 0 {
            return Ok("");
        }
        parse_text(what, raw, min, max).map_err(|e| match e {
            PayError::Arg(msg) => DecodeError(msg),
            other => DecodeError(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Record {
        let created = 1_706_618_700_000;
        let text = Fields {
            key: b"txn_1",
            origin: b"",
            user_id: "67890",
            reason: "bank timeout: é",
            provider_ref: "",
            lease_owner: "worker-1",
            lease_until: created + 30_000,
            ttl_secs: 3600,
        };
        let mut r = Record::with_text(text, 1000, *b"USD", created);
        r.stale = true;
        r.attempts = 3;
        r.updated_at += 5;
        r
    }

    #[test]
    fn the_identity_travels_in_the_blob_and_older_blobs_are_known_by_their_key() {
        let mut r = full();
        r.set_key(b"restored:elsewhere");
        let blob = encode(&r);
        // Restored under a third name, it is still payment txn_1.
        let back = decode(b"third", &blob).unwrap();
        assert_eq!(
            (back.key(), back.fields().origin),
            (&b"third"[..], &b"txn_1"[..])
        );
        // Restored under the name it was created under, it carries no origin.
        assert_eq!(decode(b"txn_1", &blob).unwrap().fields().origin, b"");
        // A version 2 blob: what it encoded, without the identity.
        let mut v2 = encode(&full());
        v2.truncate(v2.len() - 4 - b"txn_1".len());
        v2[0] = 2;
        let old = decode(b"moved", &v2).unwrap();
        assert_eq!(
            (old.key(), old.fields().identity()),
            (&b"moved"[..], &b"moved"[..])
        );
        // A cut identity is refused.
        assert!(decode(b"txn_1", &blob[..blob.len() - 1]).is_err());
    }

    #[test]
    fn round_trips_every_field() {
        for r in [full(), Record::new(b"k", "u", 0, *b"EUR", 0, 1)] {
            assert_eq!(decode(r.key(), &encode(&r)), Ok(r));
        }
        let text = Fields {
            key: b"k",
            user_id: "u",
            provider_ref: "ch_1",
            ttl_secs: 86_400,
            ..Fields::default()
        };
        let mut done = Record::with_text(text, i64::MAX, *b"JPY", 1);
        done.status = Status::Failed;
        assert_eq!(decode(b"k", &encode(&done)), Ok(done));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&full());
        for n in 0..bytes.len() {
            assert!(
                decode(b"k", &bytes[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(b"k", &longer), Err(bad("trailing bytes")));
    }

    #[test]
    fn rejects_records_the_commands_could_not_make() {
        let good = encode(&full());
        let mut v = good.clone();
        v[0] = 9;
        assert!(decode(b"k", &v).is_err());
        let mut v = good.clone();
        v[1] = 7;
        assert!(decode(b"k", &v).is_err());
        let mut v = good.clone();
        v[3] = b'u';
        assert!(decode(b"k", &v).is_err());
        let mut v = good.clone();
        v[6 + 7] = 0x80; // amount's sign bit
        assert!(decode(b"k", &v).is_err());
        let mut v = good.clone();
        v[1] = Status::Succeeded as u8; // resolved yet leased and stale
        assert!(decode(b"k", &v).is_err());
        let mut v = good.clone();
        v[34..38].copy_from_slice(&0u32.to_le_bytes()); // TTL 0
        assert_eq!(decode(b"k", &v), Err(bad("TTL out of range")));
    }

    #[test]
    fn a_hold_travels_without_an_owner_and_unknown_round_trips() {
        let mut r = Record::new(b"k", "u", 5, *b"EUR", 10, 60);
        r.status = Status::Unknown;
        r.apply(
            &crate::record::Update {
                status: Status::Unknown,
                retry_ms: Some(3_600_000),
                ..Default::default()
            },
            20,
        )
        .unwrap();
        assert_eq!(r.lease(), None);
        assert_eq!(r.held_until(), 3_600_020);
        assert_eq!(decode(b"k", &encode(&r)), Ok(r));
    }

    #[test]
    fn version_1_records_still_load() {
        // A leased, stale pending record as contract v1 wrote it.
        let mut v1 = vec![1u8, 0, 1 | 2];
        v1.extend_from_slice(b"USD");
        for n in [1000i64, 5, 6] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        v1.extend_from_slice(&2u32.to_le_bytes());
        for s in ["u1", "timeout", "", "w1"] {
            v1.extend_from_slice(&(s.len() as u16).to_le_bytes());
            v1.extend_from_slice(s.as_bytes());
        }
        v1.extend_from_slice(&99i64.to_le_bytes());
        let r = decode(b"txn", &v1).unwrap();
        assert_eq!(
            (r.status, r.stale, r.attempts, r.amount),
            (Status::Pending, true, 2, 1000)
        );
        assert_eq!(r.lease().map(|l| (l.owner, l.until)), Some(("w1", 99)));
        assert_eq!(r.ttl_secs(), 86_400);
        assert_eq!(r.fields().reason, "timeout");
        // Version 1 had no unknown status.
        let mut bad_v1 = v1.clone();
        bad_v1[1] = Status::Unknown as u8;
        assert!(decode(b"txn", &bad_v1).is_err());
    }

    #[test]
    fn timestamps_no_command_could_write_are_refused() {
        let mut r = full();
        r.updated_at = MAX_TIMESTAMP_MS + 1;
        assert_eq!(
            decode(b"k", &encode(&r)),
            Err(bad("timestamps beyond year 9999"))
        );
        r.created_at = MAX_TIMESTAMP_MS;
        r.updated_at = MAX_TIMESTAMP_MS;
        assert!(decode(b"k", &encode(&r)).is_ok());
    }

    #[test]
    fn any_single_byte_flip_never_panics() {
        let good = encode(&full());
        for i in 0..good.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut v = good.clone();
                v[i] = b;
                let _ = decode(b"k", &v);
            }
        }
    }
}
