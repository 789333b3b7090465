//! The invariants tests check: the stale-payment index against the keyspace,
//! and two servers holding the same records (or the same bytes).

use std::collections::{BTreeMap, BTreeSet};

use redis::{Connection, Value};

use crate::*;

/// The invariant behind every index test: in database `db`, PAY.STUCK OLDER 0
/// lists exactly the unresolved (pending and unknown) records a keyspace scan
/// finds, each once, oldest first and equal ages by key, and
/// INFO's per-status counts (over `dbs`) match the records there.
pub fn assert_index_exact(c: &mut Connection, dbs: &[i64]) {
    let mut totals = BTreeMap::<String, i64>::new();
    for &db in dbs {
        select(c, db);
        let mut pending = BTreeSet::new();
        for key in all_keys(c) {
            let v: redis::RedisResult<Value> = redis::cmd("PAY.CHECK").arg(&key).query(c);
            let Ok(v) = v else { continue }; // another type
            if v == Value::Nil {
                continue;
            }
            let r = record(&v);
            assert_eq!(r["key"], key);
            *totals.entry(r["status"].clone()).or_default() += 1;
            if r["status"] == "pending" || r["status"] == "unknown" {
                pending.insert(key);
            }
        }
        let listed = stuck_records(c);
        let ages: Vec<(i64, String)> = listed
            .iter()
            .map(|r| (r["created_at"].parse().unwrap(), r["key"].clone()))
            .collect();
        assert!(
            ages.windows(2).all(|w| w[0] <= w[1]),
            "db {db}: not oldest first, then by key: {ages:?}"
        );
        let listed: Vec<String> = listed.iter().map(|r| r["key"].clone()).collect();
        let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            listed.len(),
            listed_set.len(),
            "db {db}: PAY.STUCK lists a key twice"
        );
        assert_eq!(
            listed_set, pending,
            "db {db}: index differs from the keyspace"
        );
    }
    select(c, 0);
    for status in ["pending", "unknown", "succeeded", "failed"] {
        assert_eq!(
            info_field(c, &format!("records_{status}")),
            totals.get(status).copied().unwrap_or(0),
            "INFO records_{status}"
        );
    }
    assert_eq!(
        info_field(c, "index_misses"),
        0,
        "PAY.STUCK met a stale index entry"
    );
}

/// How far a key's expiry may differ between two servers holding the same
/// record: 0 where the server has RedisModule_SetAbsExpire (Redis 7.2+,
/// Valkey), 1 ms on Redis 7.0, where the module can only set it relative to
/// the local clock.
pub fn expire_tolerance_ms(c: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("server").query(c).unwrap();
    if info.contains("valkey_version:") {
        return 0;
    }
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0.0.0")
        .trim()
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (7, 2) {
        0
    } else {
        1
    }
}

/// One record as stored: its fields and its absolute expiry.
pub type Stored = (BTreeMap<String, String>, i64);

/// Every payment in the given databases, by (db, key).
pub fn snapshot(c: &mut Connection, dbs: &[i64]) -> BTreeMap<(i64, String), Stored> {
    let mut out = BTreeMap::new();
    for &db in dbs {
        select(c, db);
        for key in all_keys(c) {
            if let Some(r) = check(c, &key) {
                let at: i64 = redis::cmd("PEXPIRETIME").arg(&key).query(c).unwrap();
                out.insert((db, key), (r, at));
            }
        }
    }
    select(c, 0);
    out
}

/// Two snapshots hold the same records, with expiries within `tolerance` ms.
pub fn assert_same_records(
    a: &BTreeMap<(i64, String), Stored>,
    b: &BTreeMap<(i64, String), Stored>,
    tolerance: i64,
) {
    let keys_a: Vec<_> = a.keys().collect();
    let keys_b: Vec<_> = b.keys().collect();
    assert_eq!(keys_a, keys_b, "different keys");
    for (k, (rec_a, at_a)) in a {
        let (rec_b, at_b) = &b[k];
        assert_eq!(rec_a, rec_b, "record {k:?}");
        assert!(
            (at_a - at_b).abs() <= tolerance,
            "expiry of {k:?}: {at_a} vs {at_b}"
        );
    }
}

/// Every key of the given databases, byte for byte: its DUMP and its
/// absolute expiry (PEXPIRETIME).
pub type RawSnapshot = BTreeMap<(i64, Vec<u8>), (Vec<u8>, i64)>;

pub fn raw_snapshot(c: &mut Connection, dbs: &[i64]) -> RawSnapshot {
    let mut out = BTreeMap::new();
    for &db in dbs {
        select(c, db);
        for key in all_keys_bytes(c) {
            let mut pipe = redis::pipe();
            pipe.cmd("DUMP").arg(&key).cmd("PEXPIRETIME").arg(&key);
            let (payload, at): (Option<Vec<u8>>, i64) = pipe.query(c).unwrap();
            if let Some(payload) = payload {
                out.insert((db, key), (payload, at));
            }
        }
    }
    select(c, 0);
    out
}

/// Two raw snapshots are equal; on failure, says briefly how they differ.
pub fn assert_same_bytes(a: &RawSnapshot, b: &RawSnapshot, what: &str) {
    let show = |keys: Vec<&(i64, Vec<u8>)>| -> String {
        let shown: Vec<String> = keys
            .iter()
            .take(5)
            .map(|(db, k)| format!("{db}:{:?}", String::from_utf8_lossy(k)))
            .collect();
        format!("{} keys, e.g. {}", keys.len(), shown.join(", "))
    };
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let changed: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && changed.is_empty(),
        "{what}: only in the first: {}; only in the second: {}; changed: {}",
        show(only_a),
        show(only_b),
        show(changed)
    );
}
