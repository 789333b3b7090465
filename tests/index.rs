//! The pending index stays exact through every way a key can change or go.
//! Each test changes the keyspace one way, then checks the invariant: PAY.STUCK
//! lists exactly the pending records a keyspace scan finds, and INFO's counts
//! match.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

/// Three pending payments and one resolved, in the current database.
fn seed(c: &mut Connection, prefix: &str) {
    for i in 0..3 {
        cache(c, &format!("{prefix}{i}"), "u", 100 + i, "USD");
    }
    cache(c, &format!("{prefix}done"), "u", 1, "USD");
    update(c, &format!("{prefix}done"), "succeeded");
}

fn run(c: &mut Connection, args: &[&str]) -> Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn del_and_unlink_remove_records_from_the_index() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    run(&mut c, &["DEL", "p0", "pdone"]);
    run(&mut c, &["UNLINK", "p1"]);
    assert_eq!(stuck_keys(&mut c), ["p2"]);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn overwriting_a_record_with_another_type_removes_it() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    run(&mut c, &["SET", "p0", "now a string"]);
    assert_eq!(stuck_keys(&mut c), ["p1", "p2"]);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn active_expiry_removes_records_from_the_index() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    run(&mut c, &["PEXPIRE", "p1", "20"]);
    run(&mut c, &["PEXPIRE", "pdone", "20"]);
    assert!(wait_until(Duration::from_secs(5), || {
        let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        n == 2
    }));
    assert_eq!(stuck_keys(&mut c), ["p0", "p2"]);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn a_logically_expired_record_is_never_listed() {
    let s = Server::start();
    let mut c = s.conn();
    run(&mut c, &["DEBUG", "SET-ACTIVE-EXPIRE", "0"]);
    seed(&mut c, "p");
    run(&mut c, &["PEXPIRE", "p0", "10"]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(stuck_keys(&mut c), ["p1", "p2"]);
    assert_index_exact(&mut c, &[0]);
}

/// Fills memory past `maxmemory` with plain strings, so Redis evicts by
/// its policy; then lifts the limit.
fn squeeze(c: &mut Connection) {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    let used: i64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    run(
        c,
        &["CONFIG", "SET", "maxmemory", &(used + 30_000).to_string()],
    );
    let blob = "x".repeat(10_000);
    for i in 0..5 {
        let _: redis::RedisResult<Value> = redis::cmd("SET")
            .arg(format!("fill{i}"))
            .arg(&blob)
            .query(c);
    }
    run(c, &["CONFIG", "SET", "maxmemory", "0"]);
}

#[test]
fn eviction_removes_records_from_the_index() {
    let s = Server::with(Opts::new().config("maxmemory-policy", "allkeys-lru"));
    let mut c = s.conn();
    for i in 0..2000 {
        cache(&mut c, &format!("e{i}"), "u", i, "USD");
    }
    squeeze(&mut c);
    let payments_left = all_keys(&mut c)
        .iter()
        .filter(|k| k.starts_with('e'))
        .count();
    assert!(payments_left < 2000, "nothing was evicted");
    assert!(payments_left > 0, "everything was evicted");
    assert_eq!(stuck_keys(&mut c).len(), payments_left);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn a_volatile_policy_evicts_resolved_payments_never_unresolved_ones() {
    let s = Server::with(Opts::new().config("maxmemory-policy", "volatile-lru"));
    let mut c = s.conn();
    for i in 0..2000 {
        cache(&mut c, &format!("e{i}"), "u", i, "USD");
        if i % 2 == 0 {
            update(&mut c, &format!("e{i}"), "succeeded");
        } else if i % 4 == 1 {
            update(&mut c, &format!("e{i}"), "unknown");
        }
    }
    squeeze(&mut c);
    let left = all_keys(&mut c);
    let resolved_left = (0..2000)
        .step_by(2)
        .filter(|i| left.contains(&format!("e{i}")))
        .count();
    assert!(resolved_left < 1000, "no resolved payment was evicted");
    for i in (1..2000).step_by(2) {
        assert!(
            left.contains(&format!("e{i}")),
            "unresolved e{i} was evicted"
        );
    }
    assert_eq!(stuck_keys(&mut c).len(), 1000);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn flushdb_and_flushall_sync_and_async_empty_the_index() {
    let s = Server::start();
    let mut c = s.conn();
    for flush in [
        &["FLUSHDB"][..],
        &["FLUSHDB", "ASYNC"],
        &["FLUSHALL"],
        &["FLUSHALL", "ASYNC"],
    ] {
        select(&mut c, 1);
        seed(&mut c, "other");
        select(&mut c, 0);
        seed(&mut c, "p");
        run(&mut c, flush);
        assert!(stuck_keys(&mut c).is_empty(), "{flush:?}");
        // New records right after the flush are indexed, and the freed ones
        // never come back.
        cache(&mut c, "after", "u", 1, "USD");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(stuck_keys(&mut c), ["after"], "{flush:?}");
        assert_index_exact(&mut c, &[0, 1]);
        select(&mut c, 1);
        let in_db1 = stuck_keys(&mut c).len();
        assert_eq!(
            in_db1,
            if flush[0] == "FLUSHDB" { 3 } else { 0 },
            "{flush:?}"
        );
        run(&mut c, &["FLUSHALL"]);
        select(&mut c, 0);
    }
}

#[test]
fn rename_moves_the_index_entry_to_the_new_name() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    run(&mut c, &["RENAME", "p0", "q0"]);
    // RENAME onto another payment replaces it.
    run(&mut c, &["RENAME", "p1", "p2"]);
    run(&mut c, &["RENAMENX", "pdone", "qdone"]);
    assert_eq!(stuck_set(&mut c), set(&["q0", "p2"]));
    let r = check(&mut c, "p2").unwrap();
    assert_eq!(r["amount"], "101", "p2 now holds p1's payment");
    // The renamed payment is still the same payment: the provider knows it by
    // the transaction id it was created with (a new one would let a worker
    // charge it again under another idempotency key).
    let r = check(&mut c, "q0").unwrap();
    assert_eq!(
        (r["transaction_id"].as_str(), r["key"].as_str()),
        ("p0", "q0")
    );
    assert_eq!(check(&mut c, "p2").unwrap()["transaction_id"], "p1");
    update(&mut c, "q0", "failed");
    assert_eq!(stuck_keys(&mut c), ["p2"]);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn move_and_swapdb_carry_index_entries_between_databases() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    run(&mut c, &["MOVE", "p0", "1"]);
    run(&mut c, &["MOVE", "pdone", "1"]);
    assert_eq!(stuck_keys(&mut c), ["p1", "p2"]);
    select(&mut c, 1);
    assert_eq!(stuck_keys(&mut c), ["p0"]);
    assert_index_exact(&mut c, &[0, 1]);
    run(&mut c, &["SWAPDB", "0", "1"]);
    select(&mut c, 0);
    assert_eq!(stuck_keys(&mut c), ["p0"]);
    select(&mut c, 1);
    assert_eq!(stuck_keys(&mut c), ["p1", "p2"]);
    // Records keep working after the swap: resolve one in each database.
    update(&mut c, "p1", "succeeded");
    select(&mut c, 0);
    update(&mut c, "p0", "failed");
    run(&mut c, &["DEL", "pdone"]);
    assert_index_exact(&mut c, &[0, 1]);
    select(&mut c, 1);
    assert_eq!(stuck_keys(&mut c), ["p2"]);
}

#[test]
fn copy_indexes_the_copy_in_its_database() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    run(&mut c, &["COPY", "p0", "c0"]);
    run(&mut c, &["COPY", "p1", "c1", "DB", "2"]);
    run(&mut c, &["COPY", "pdone", "p2", "REPLACE"]);
    assert_eq!(stuck_set(&mut c), set(&["p0", "c0", "p1"]));
    select(&mut c, 2);
    assert_eq!(stuck_keys(&mut c), ["c1"]);
    select(&mut c, 0);
    // The copy is the same payment to the provider, under its own key.
    let copy = check(&mut c, "c0").unwrap();
    assert_eq!(
        (copy["transaction_id"].as_str(), copy["key"].as_str()),
        ("p0", "c0")
    );
    // The copy is independent of its source.
    update(&mut c, "c0", "succeeded");
    assert_eq!(check(&mut c, "p0").unwrap()["status"], "pending");
    assert_index_exact(&mut c, &[0, 2]);
}

#[test]
fn dump_and_restore_carry_records_and_index_them() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    let original = check(&mut c, "p0").unwrap();
    let payload: Vec<u8> = redis::cmd("DUMP").arg("p0").query(&mut c).unwrap();
    let _: () = redis::cmd("RESTORE")
        .arg("r0")
        .arg(0)
        .arg(&payload)
        .query(&mut c)
        .unwrap();
    // Restored under another name, it is the same payment (the same
    // transaction id) under a new key.
    let mut restored = check(&mut c, "r0").unwrap();
    assert_eq!(restored.remove("key").unwrap(), "r0");
    let mut expected = original.clone();
    expected.remove("key");
    assert_eq!(restored, expected);
    assert_eq!(expected["transaction_id"], "p0");
    // RESTORE REPLACE over a resolved payment makes it pending again.
    let _: () = redis::cmd("RESTORE")
        .arg("pdone")
        .arg(0)
        .arg(&payload)
        .arg("REPLACE")
        .query(&mut c)
        .unwrap();
    // A corrupted payload is refused and changes nothing.
    let mut bad = payload.clone();
    bad[3] ^= 0xff;
    let d = digest(&mut c);
    let e = err(&mut c, redis::cmd("RESTORE").arg("bad").arg(0).arg(&bad));
    assert!(e.starts_with("ERR"), "{e}");
    assert_eq!(digest(&mut c), d);
    assert_eq!(stuck_set(&mut c), set(&["p0", "r0", "pdone", "p1", "p2"]));
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn migrate_carries_records_to_another_server() {
    let a = Server::start();
    let b = Server::start();
    let mut ca = a.conn();
    let mut cb = b.conn();
    seed(&mut ca, "m");
    let before = check(&mut ca, "m1").unwrap();
    let _: Value = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(b.port)
        .arg("")
        .arg(0)
        .arg(5000)
        .arg("KEYS")
        .arg("m1")
        .arg("mdone")
        .query(&mut ca)
        .unwrap();
    assert_eq!(check(&mut cb, "m1").unwrap(), before);
    assert_eq!(stuck_keys(&mut ca), ["m0", "m2"]);
    assert_eq!(stuck_keys(&mut cb), ["m1"]);
    let ttl: i64 = redis::cmd("TTL").arg("mdone").query(&mut cb).unwrap();
    assert!(ttl > 86_000, "TTL travels with the record: {ttl}");
    assert_eq!(pexpiretime(&mut cb, "m1"), -1, "a pending one has none");
    assert_index_exact(&mut ca, &[0]);
    assert_index_exact(&mut cb, &[0]);
}

#[test]
fn every_database_has_its_own_index() {
    let s = Server::start();
    let mut c = s.conn();
    for db in [0, 3, 15] {
        select(&mut c, db);
        seed(&mut c, &format!("db{db}-"));
    }
    for db in [0, 3, 15] {
        select(&mut c, db);
        let keys = stuck_keys(&mut c);
        assert_eq!(keys.len(), 3);
        assert!(
            keys.iter().all(|k| k.starts_with(&format!("db{db}-"))),
            "{keys:?}"
        );
    }
    assert_index_exact(&mut c, &[0, 3, 15]);
}

#[test]
fn debug_reload_rebuilds_the_index_from_rdb() {
    let s = Server::start();
    let mut c = s.conn();
    seed(&mut c, "p");
    select(&mut c, 4);
    seed(&mut c, "four");
    select(&mut c, 0);
    let d = digest(&mut c);
    run(&mut c, &["DEBUG", "RELOAD"]);
    assert_eq!(digest(&mut c), d);
    assert_eq!(stuck_set(&mut c), set(&["p0", "p1", "p2"]));
    assert_index_exact(&mut c, &[0, 4]);
}

#[test]
fn the_caller_stays_in_its_database_after_move_and_copy() {
    let s = Server::start();
    let mut c = s.conn();
    select(&mut c, 3);
    cache(&mut c, "pay", "u", 1, "USD");
    cache(&mut c, "pay2", "u", 1, "USD");
    run(&mut c, &["SET", "plain", "v"]);
    run(&mut c, &["MOVE", "pay", "5"]);
    run(&mut c, &["MOVE", "plain", "6"]);
    run(&mut c, &["COPY", "pay2", "pay2-copy", "DB", "7"]);
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut c).unwrap();
    assert!(info.contains(" db=3 "), "{info}");
    assert_eq!(stuck_keys(&mut c), ["pay2"]);
    assert_index_exact(&mut c, &[3, 5, 7]);
}
