//! The PAY.* commands as tests call them, and keyspace listings.

use std::collections::{BTreeMap, BTreeSet};

use redis::{Connection, Value};

use crate::*;

pub fn cache(
    c: &mut Connection,
    key: &str,
    user: &str,
    amount: i64,
    cur: &str,
) -> BTreeMap<String, String> {
    let v: Value = redis::cmd("PAY.CACHE")
        .arg(key)
        .arg(user)
        .arg(amount)
        .arg(cur)
        .query(c)
        .expect("PAY.CACHE");
    record(&v)
}

pub fn check(c: &mut Connection, key: &str) -> Option<BTreeMap<String, String>> {
    let v: Value = redis::cmd("PAY.CHECK")
        .arg(key)
        .query(c)
        .expect("PAY.CHECK");
    match v {
        Value::Nil => None,
        v => Some(record(&v)),
    }
}

pub fn update(c: &mut Connection, key: &str, status: &str) -> BTreeMap<String, String> {
    let v: Value = redis::cmd("PAY.UPDATE")
        .arg(key)
        .arg(status)
        .query(c)
        .expect("PAY.UPDATE");
    record(&v)
}

/// `PAY.UPDATE key status option value` (REASON, REF...): the record.
pub fn update_with(
    c: &mut Connection,
    key: &str,
    status: &str,
    option: &str,
    value: impl redis::ToRedisArgs,
) -> BTreeMap<String, String> {
    let v: Value = redis::cmd("PAY.UPDATE")
        .arg(key)
        .arg(status)
        .arg(option)
        .arg(value)
        .query(c)
        .expect("PAY.UPDATE");
    record(&v)
}

/// The transaction ids PAY.STUCK lists (OLDER 0: every pending record).
pub fn stuck_keys(c: &mut Connection) -> Vec<String> {
    stuck_records(c)
        .into_iter()
        .map(|r| r["key"].clone())
        .collect()
}

/// Every pending record PAY.STUCK lists (OLDER 0), in its order.
pub fn stuck_records(c: &mut Connection) -> Vec<BTreeMap<String, String>> {
    let v: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(100_000)
        .query(c)
        .expect("PAY.STUCK");
    match v {
        Value::Array(items) => items.iter().map(record).collect(),
        other => panic!("PAY.STUCK reply: {other:?}"),
    }
}

/// The transaction ids PAY.STUCK lists, as a set (records created in the same
/// millisecond are equally old, in no promised order).
pub fn stuck_set(c: &mut Connection) -> BTreeSet<String> {
    stuck_keys(c).into_iter().collect()
}

pub fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

pub fn select(c: &mut Connection, db: i64) {
    let _: () = redis::cmd("SELECT").arg(db).query(c).unwrap();
}

/// Every key of the current database, by SCAN.
pub fn all_keys(c: &mut Connection) -> BTreeSet<String> {
    scan_keys(c)
}

/// Every key of the current database, by SCAN, as bytes.
pub fn all_keys_bytes(c: &mut Connection) -> BTreeSet<Vec<u8>> {
    scan_keys(c)
}

fn scan_keys<K: redis::FromRedisValue + Ord>(c: &mut Connection) -> BTreeSet<K> {
    let mut cursor = 0u64;
    let mut keys = BTreeSet::new();
    loop {
        let (next, batch): (u64, Vec<K>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(c)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// DEBUG DIGEST: one hash of the whole data set.
pub fn digest(c: &mut Connection) -> String {
    redis::cmd("DEBUG").arg("DIGEST").query(c).unwrap()
}

/// Creates payments `{prefix}0` .. `{prefix}{n-1}` (user 67890, 10.00 USD),
/// pipelined in batches of 10,000.
pub fn cache_many(c: &mut Connection, prefix: &str, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("PAY.CACHE")
            .arg(format!("{prefix}{i}"))
            .arg(67890)
            .arg(1000)
            .arg("USD")
            .ignore();
        if (i + 1) % 10_000 == 0 || i + 1 == n {
            let _: () = pipe.query(c).unwrap();
            pipe = redis::pipe();
        }
    }
}

/// `PAY.CLAIM consumer LEASE lease_ms OLDER 0 COUNT count`: the records leased.
pub fn claim(
    c: &mut Connection,
    consumer: &str,
    count: usize,
    lease_ms: u64,
) -> Vec<BTreeMap<String, String>> {
    let v: Value = redis::cmd("PAY.CLAIM")
        .arg(consumer)
        .arg("LEASE")
        .arg(lease_ms)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(count)
        .query(c)
        .unwrap();
    match v {
        Value::Array(items) => items.iter().map(record).collect(),
        other => panic!("{other:?}"),
    }
}

/// Leases `n` payments of the selected database to `bench-holder` for a
/// day (the longest lease), 50,000 per PAY.CLAIM, replies dropped: a server
/// with that many payments held.
pub fn hold_for_a_day(c: &mut Connection, n: usize) {
    let mut left = n;
    while left > 0 {
        let batch = left.min(50_000);
        let _: Value = redis::cmd("PAY.CLAIM")
            .arg("bench-holder")
            .arg("LEASE")
            .arg(86_400_000)
            .arg("OLDER")
            .arg(0)
            .arg("COUNT")
            .arg(batch)
            .query(c)
            .unwrap();
        left -= batch;
    }
}

/// PEXPIRETIME of a key (-1: none, -2: no key).
pub fn pexpiretime(c: &mut Connection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME").arg(key).query(c).unwrap()
}
