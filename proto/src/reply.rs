//! Reading the module's record replies with the `redis` crate (feature
//! `redis`): pay-sidecar, the tests, the demo and the chaos checker all read
//! them here, so a reply has one meaning on every side.
//!
//! A record reply is a RESP3 map, or under RESP2 a flat array of field,
//! value, field, value ...; the field names are [`crate::field`].

use std::collections::BTreeMap;

use redis::Value;

use crate::{field, Status};

/// A scalar reply as text (bulk and simple strings, integers, `OK`); None for
/// anything else (nil, arrays, errors).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// A record reply as field -> text. Err says why the reply is not one: not
/// a map or an array, an odd array, or a field or value that is not a
/// scalar.
pub fn fields(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let pair = |k: &Value, v: &Value| match (text(k), text(v)) {
        (Some(k), Some(v)) => Ok((k, v)),
        _ => Err(format!("not a field and its value: {k:?} {v:?}")),
    };
    match v {
        Value::Map(m) => m.iter().map(|(k, v)| pair(k, v)).collect(),
        Value::Array(a) if a.len() % 2 == 0 => a
            .chunks_exact(2)
            .map(|p| match p {
                [k, v] => pair(k, v),
                _ => Err("a field without its value".into()),
            })
            .collect(),
        Value::Array(a) => Err(format!("a flat record of {} items (odd)", a.len())),
        other => Err(format!("not a record: {other:?}")),
    }
}

/// A payment record as PAY.CHECK, PAY.UPDATE, PAY.STUCK and PAY.CLAIM
/// return it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The full Redis key: what every Redis command names.
    pub key: String,
    /// The key without the module's `pay.key-prefix`: what the provider
    /// knows (URL, Idempotency-Key, body).
    pub transaction_id: String,
    pub user_id: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    pub status: Status,
    pub created_at: i64,
    pub updated_at: i64,
    pub attempts: u32,
    pub reason: String,
    pub provider_ref: String,
    pub lease_owner: String,
    pub lease_until: i64,
}

impl Record {
    /// Reads a record reply. What a payment is made of (its id, user,
    /// amount and currency) must be there and readable, or the reply is
    /// refused: nobody may act on half a payment. A status this build cannot
    /// read is taken as `unknown`, the reading that only ever asks the
    /// provider and never re-sends.
    pub fn from_reply(v: &Value) -> Result<Record, String> {
        Record::from_fields(&fields(v)?)
    }

    /// [`Record::from_reply`] for fields already read.
    pub fn from_fields(f: &BTreeMap<String, String>) -> Result<Record, String> {
        let need = |name: &str| {
            f.get(name)
                .cloned()
                .ok_or_else(|| format!("the record has no {name}"))
        };
        let get = |name: &str| f.get(name).cloned().unwrap_or_default();
        let int = |name: &str| -> Result<i64, String> {
            match f.get(name) {
                None => Ok(0),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name} is not an integer: {v:?}")),
            }
        };
        let transaction_id = need(field::TRANSACTION_ID)?;
        let amount = need(field::AMOUNT)?;
        Ok(Record {
            // A module before contract v2 has no `key` field: its key is the id.
            key: f
                .get(field::KEY)
                .cloned()
                .unwrap_or_else(|| transaction_id.clone()),
            transaction_id,
            user_id: need(field::USER_ID)?,
            amount: amount
                .parse()
                .map_err(|_| format!("amount is not an integer: {amount:?}"))?,
            currency: need(field::CURRENCY)?,
            status: f
                .get(field::STATUS)
                .and_then(|s| Status::parse(s.as_bytes()))
                .unwrap_or(Status::Unknown),
            created_at: int(field::CREATED_AT)?,
            updated_at: int(field::UPDATED_AT)?,
            attempts: u32::try_from(int(field::ATTEMPTS)?)
                .map_err(|_| format!("attempts out of range: {:?}", get(field::ATTEMPTS)))?,
            reason: get(field::REASON),
            provider_ref: get(field::PROVIDER_REF),
            lease_owner: get(field::LEASE_OWNER),
            lease_until: int(field::LEASE_UNTIL)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    const PAYMENT: [&str; 8] = [
        "transaction_id",
        "t1",
        "user_id",
        "u1",
        "amount",
        "1000",
        "currency",
        "USD",
    ];

    #[test]
    fn reads_flat_and_map_records_alike() {
        let mut items = PAYMENT.to_vec();
        items.extend(["status", "pending", "attempts", "2"]);
        let r = Record::from_reply(&flat(&items)).unwrap();
        assert_eq!((r.key.as_str(), r.amount, r.attempts), ("t1", 1000, 2));
        assert_eq!(
            (r.transaction_id.as_str(), r.status),
            ("t1", Status::Pending)
        );
        let map = Value::Map(
            items
                .chunks(2)
                .map(|p| {
                    (
                        Value::BulkString(p[0].as_bytes().to_vec()),
                        Value::BulkString(p[1].as_bytes().to_vec()),
                    )
                })
                .collect(),
        );
        assert_eq!(Record::from_reply(&map), Ok(r));
    }

    #[test]
    fn the_key_and_the_transaction_id_are_kept_apart() {
        let mut items = PAYMENT.to_vec();
        items.extend(["key", "payment:t1"]);
        let r = Record::from_reply(&flat(&items)).unwrap();
        assert_eq!(
            (r.key.as_str(), r.transaction_id.as_str()),
            ("payment:t1", "t1")
        );
    }

    #[test]
    fn half_a_payment_is_refused() {
        for missing in ["transaction_id", "user_id", "amount", "currency"] {
            let items: Vec<&str> = PAYMENT
                .chunks(2)
                .filter(|p| p[0] != missing)
                .flatten()
                .copied()
                .collect();
            let e = Record::from_reply(&flat(&items)).unwrap_err();
            assert!(e.contains(missing), "{e}");
        }
        let mut items = PAYMENT.to_vec();
        items[5] = "10.00";
        assert!(Record::from_reply(&flat(&items)).is_err());
        items[5] = "1000";
        items.extend(["attempts", "-1"]);
        assert!(Record::from_reply(&flat(&items)).is_err());
    }

    #[test]
    fn a_status_this_build_cannot_read_is_unknown_never_pending() {
        for status in [Some("refunded"), Some(""), None] {
            let mut items = PAYMENT.to_vec();
            if let Some(s) = status {
                items.extend(["status", s]);
            }
            let r = Record::from_reply(&flat(&items)).unwrap();
            assert_eq!(r.status, Status::Unknown, "{status:?}");
        }
    }

    #[test]
    fn what_is_not_a_record_says_why() {
        assert!(fields(&Value::Nil).unwrap_err().contains("not a record"));
        assert!(fields(&flat(&["a", "b", "c"])).unwrap_err().contains("odd"));
        let nested = Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Array(vec![])]);
        assert!(fields(&nested).is_err());
        assert_eq!(fields(&Value::Array(vec![])), Ok(BTreeMap::new()));
        assert_eq!(text(&Value::Okay).as_deref(), Some("OK"));
        assert_eq!(text(&Value::Int(-3)).as_deref(), Some("-3"));
    }
}
