//! A replica loads its primary's data set in every `repl-diskless-load`
//! mode, and gives back its old data set when a `swapdb` load fails: in
//! every outcome it holds the same bytes as the primary (or as before), and
//! its pending index lists exactly the pending records it holds.
//!
//! The recipe for forcing and aborting loads is Redis's own (its
//! `integration/replication` tests): kill the replica's link with a backlog
//! too small to resume, and slow the primary's RDB with `rdb-key-save-delay`.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

const DBS: [i64; 3] = [0, 1, 3];

/// A primary that streams its RDB to replicas (diskless sync) at once.
fn primary() -> Server {
    Server::with(
        Opts::new()
            .config("repl-diskless-sync", "yes")
            .config("repl-diskless-sync-delay", "0"),
    )
}

/// A writable replica-to-be (so it can hold data of its own, and answer
/// PAY.STUCK) in the given `repl-diskless-load` mode, answering clients
/// every KB of a load (by default every 2 MB).
fn replica(mode: &str) -> Server {
    Server::with(
        Opts::new()
            .config("repl-diskless-load", mode)
            .config("replica-read-only", "no")
            .config("loading-process-events-interval-bytes", "1024"),
    )
}

/// Payments of every kind in every database of [`DBS`]: `n` per database,
/// some resolved, some leased and, on a primary (where the sweeper runs), a
/// third flagged stale.
fn payments(c: &mut Connection, tag: &str, n: usize) {
    let primary = info_str(c, "replication", "role").as_deref() == Some("master");
    config_set(c, "pay.sweep-interval-ms", "10");
    for &db in &DBS {
        select(c, db);
        let stale = if primary { n / 3 } else { 0 };
        if stale > 0 {
            cache_many(c, &format!("{tag}:stale:{db}:"), stale);
            select(c, 0);
            // Every pending record gets flagged.
            config_set(c, "pay.stale-after-ms", "1");
            assert!(
                wait_until(Duration::from_secs(10), || {
                    info_field(c, "records_stale") == info_field(c, "records_pending")
                }),
                "the sweeper did not flag {tag}"
            );
            config_set(c, "pay.stale-after-ms", "3600000");
            select(c, db);
        }
        let rest = n - stale;
        cache_many(c, &format!("{tag}:{db}:"), rest);
        let mut pipe = redis::pipe();
        for i in (0..rest).step_by(4) {
            let status = if i % 8 == 0 { "succeeded" } else { "failed" };
            pipe.cmd("PAY.UPDATE")
                .arg(format!("{tag}:{db}:{i}"))
                .arg(status)
                .ignore();
        }
        let _: () = pipe.query(c).unwrap();
        claim(c, "w1", n / 10 + 1, 600_000);
    }
    select(c, 0);
}

/// A primary and a replica-to-be in `mode`, and a connection to each.
fn pair(mode: &str) -> (Server, Server, Connection, Connection) {
    let (p, r) = (primary(), replica(mode));
    let (pc, rc) = (p.conn(), r.conn());
    (p, r, pc, rc)
}

fn replicaof(r: &mut Connection, p: &Server) {
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(p.port)
        .query(r)
        .unwrap();
}

/// The replica holds the primary's bytes and an exact index.
fn assert_replica_exact(p: &mut Connection, r: &mut Connection) {
    wait_replicas(p, 1);
    assert_same_bytes(&raw_snapshot(p, &DBS), &raw_snapshot(r, &DBS), "replica");
    assert_index_exact(r, &DBS);
}

/// The replica syncs from the primary, loading `how` ("to disk" or "to
/// parser"), and then holds the primary's bytes and an exact index.
fn sync_and_check(p: &Server, r: &Server, pc: &mut Connection, rc: &mut Connection, how: &str) {
    replicaof(rc, p);
    wait_link_up(rc);
    assert_loaded(r, how, 1);
    assert_replica_exact(pc, rc);
}

/// Drops the primary's replica links, ending a load half-way; the next
/// sync waits a minute (for more replicas): time to look.
fn abort_sync(pc: &mut Connection) {
    config_set(pc, "repl-diskless-sync-delay", "60");
    let _: Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(pc)
        .unwrap();
}

fn persistence(c: &mut Connection, field: &str) -> String {
    info_str(c, "persistence", field).unwrap_or_default()
}

/// What the replica's log says of how it loaded: "to parser" (diskless)
/// or "to disk", and never that the module made it skip diskless loading.
fn assert_loaded(r: &Server, how: &str, times: usize) {
    let log = r.log();
    assert!(
        !log.contains("Skipping diskless-load"),
        "a module made Redis skip diskless loading:\n{log}"
    );
    let seen = log
        .matches(&format!(
            "receiving streamed RDB from master with EOF {how}"
        ))
        .count()
        + log
            .matches(&format!(
                "receiving streamed RDB from primary with EOF {how}"
            ))
            .count();
    assert!(seen >= times, "expected {times} loads {how}:\n{log}");
}

#[test]
fn disk_load_replaces_the_replicas_data_set() {
    let (p, r, mut pc, mut rc) = pair("disabled");
    payments(&mut pc, "p", 300);
    payments(&mut rc, "r", 90);
    sync_and_check(&p, &r, &mut pc, &mut rc, "to disk");
}

#[test]
fn diskless_load_into_an_empty_replica() {
    let (p, r, mut pc, mut rc) = pair("on-empty-db");
    payments(&mut pc, "p", 300);
    sync_and_check(&p, &r, &mut pc, &mut rc, "to parser");
}

#[test]
fn swapdb_load_from_a_new_primary_replaces_the_data_set() {
    let (p, r, mut pc, mut rc) = pair("swapdb");
    payments(&mut pc, "p", 300);
    payments(&mut rc, "r", 90);
    sync_and_check(&p, &r, &mut pc, &mut rc, "to parser");
    // The old data set, freed in the background, leaves nothing behind.
    std::thread::sleep(Duration::from_millis(200));
    assert_index_exact(&mut rc, &DBS);
}

/// A swapdb load from a primary whose replication id differs (no async
/// loading: clients get LOADING meanwhile) fails half-way: the old data set
/// is back, byte for byte, with its index.
#[test]
fn failed_swapdb_load_from_a_new_primary_gives_back_the_old_data_set() {
    let (p, r, mut pc, mut rc) = pair("swapdb");
    payments(&mut pc, "p", 600);
    payments(&mut rc, "r", 90);
    let old = raw_snapshot(&mut rc, &DBS);
    // 2 ms a key: the load takes seconds, and fails when the link dies.
    config_set(&mut pc, "rdb-key-save-delay", "2000");
    replicaof(&mut rc, &p);
    let mut watcher = r.conn();
    assert!(
        wait_until(Duration::from_secs(20), || {
            persistence(&mut watcher, "loading") == "1"
        }),
        "the replica did not start loading"
    );
    std::thread::sleep(Duration::from_millis(300));
    abort_sync(&mut pc);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let loading: redis::RedisResult<String> =
                redis::cmd("INFO").arg("persistence").query(&mut watcher);
            loading.is_ok_and(|i| i.contains("\nloading:0"))
        }),
        "the load did not stop"
    );
    let log = r.log();
    assert!(
        log.contains("Discarding temporary DB") || log.contains("Discarding the half-loaded"),
        "no failed swapdb load in the log:\n{log}"
    );
    assert_loaded(&r, "to parser", 1);
    assert_same_bytes(&old, &raw_snapshot(&mut rc, &DBS), "after the failed load");
    assert_index_exact(&mut rc, &DBS);
    std::thread::sleep(Duration::from_millis(200));
    assert_index_exact(&mut rc, &DBS);
}

/// Counts INFO pay reports, as (pending, succeeded, failed, stale).
fn counts(c: &mut Connection) -> [i64; 4] {
    ["pending", "succeeded", "failed", "stale"].map(|s| info_field(c, &format!("records_{s}")))
}

/// Redis's async loading: a replica whose primary keeps its replication id
/// loads the full sync aside while serving its old data set. While it
/// loads, PAY.STUCK and INFO see the old data set only; when the load is
/// aborted the old data set is exactly back; when a later one completes,
/// the new one replaces it.
#[test]
fn async_swapdb_load_serves_the_old_data_set_until_swapped_in() {
    let (p, r, mut pc, mut rc) = pair("swapdb");
    replicaof(&mut rc, &p);
    wait_link_up(&mut rc);
    // What both hold, then what only the replica holds. The primary's
    // plain keys make its RDB slow to stream (2 ms a key, below).
    payments(&mut pc, "p", 600);
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(3_000)
        .arg("plain")
        .query(&mut pc)
        .unwrap();
    wait_replicas(&mut pc, 1);
    payments(&mut rc, "r", 90);
    let old = raw_snapshot(&mut rc, &DBS);
    let old_counts = counts(&mut rc);
    // A payment RESTOREd into the (writable) replica while it loads.
    let restored = dump(&mut rc, b"r:0:1").expect("a payment of the replica's");
    let old_pending: Vec<_> = DBS
        .iter()
        .map(|&db| {
            select(&mut rc, db);
            stuck_set(&mut rc)
        })
        .collect();
    select(&mut rc, 0);
    // The primary drops the replica and writes past its backlog: the
    // replica must sync in full, with the same replication id, from an RDB
    // that takes seconds (2 ms a key).
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("CONFIG")
        .arg("SET")
        .arg("rdb-key-save-delay")
        .arg(2_000)
        .ignore()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .ignore()
        .cmd("CONFIG")
        .arg("SET")
        .arg("repl-backlog-size")
        .arg(16_384)
        .ignore();
    for i in 0..10 {
        pipe.cmd("SET")
            .arg(format!("filler:{i}"))
            .arg("A".repeat(16_384))
            .ignore();
    }
    let _: () = pipe.query(&mut pc).unwrap();
    let mut watcher = r.conn();
    assert!(
        wait_until(Duration::from_secs(20), || {
            persistence(&mut watcher, "async_loading") == "1"
        }),
        "the replica did not start an async load"
    );
    // Records are now loading aside; the old data set is what is served.
    // One pipeline: a replica answers only between chunks of its load.
    std::thread::sleep(Duration::from_millis(300));
    let mut pipe = redis::pipe();
    pipe.cmd("INFO").arg("pay");
    for &db in &DBS {
        pipe.cmd("SELECT").arg(db).ignore();
        pipe.cmd("PAY.STUCK")
            .arg("OLDER")
            .arg(0)
            .arg("COUNT")
            .arg(100_000);
    }
    pipe.cmd("SELECT").arg(0).ignore();
    pipe.cmd("INFO").arg("persistence");
    pipe.cmd("RESTORE")
        .arg("restored-while-loading")
        .arg(0)
        .arg(&restored)
        .ignore();
    let (info, stuck, persist): (String, Vec<Value>, String) = {
        let mut replies: Vec<Value> = pipe.query(&mut rc).unwrap();
        let persist = replies.pop().map(|v| text(&v)).unwrap();
        let info = text(&replies.remove(0));
        (info, replies, persist)
    };
    assert!(
        persist.contains("async_loading:1"),
        "the load ended too soon"
    );
    let field = |name: &str| -> i64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("pay_records_{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    let during = ["pending", "succeeded", "failed", "stale"].map(field);
    assert_eq!(during, old_counts, "INFO during the load");
    for ((&db, pending), listed) in DBS.iter().zip(&old_pending).zip(&stuck) {
        let Value::Array(records) = listed else {
            panic!("PAY.STUCK: {listed:?}");
        };
        let listed: std::collections::BTreeSet<String> = records
            .iter()
            .map(|r| record(r)["transaction_id"].clone())
            .collect();
        let extra: Vec<_> = listed.difference(pending).take(5).collect();
        let missing: Vec<_> = pending.difference(&listed).take(5).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "PAY.STUCK in db {db} during the load lists {extra:?}... and misses {missing:?}..."
        );
    }
    // Abort it.
    abort_sync(&mut pc);
    assert!(
        wait_until(Duration::from_secs(20), || {
            persistence(&mut watcher, "async_loading") == "0"
        }),
        "the async load did not stop"
    );
    assert_loaded(&r, "to parser", 2);
    // The old data set, and the payment RESTOREd meanwhile, indexed.
    let mut now = raw_snapshot(&mut rc, &DBS);
    let key = (0, b"restored-while-loading".to_vec());
    assert_eq!(now.remove(&key).map(|(payload, _)| payload), Some(restored));
    assert_same_bytes(&old, &now, "after the aborted load");
    let mut expected_counts = old_counts;
    expected_counts[0] += 1;
    assert_eq!(
        counts(&mut rc),
        expected_counts,
        "INFO after the aborted load"
    );
    assert_index_exact(&mut rc, &DBS);
    std::thread::sleep(Duration::from_millis(200));
    assert_index_exact(&mut rc, &DBS);
    // Now let one complete.
    config_set(&mut pc, "rdb-key-save-delay", "0");
    config_set(&mut pc, "repl-diskless-sync-delay", "0");
    wait_link_up(&mut rc);
    assert_replica_exact(&mut pc, &mut rc);
    std::thread::sleep(Duration::from_millis(200));
    assert_index_exact(&mut rc, &DBS);
}
