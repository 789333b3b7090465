//! A replica holds the same records as its primary, byte for byte, after a
//! full sync, the live stream and a partial resync: timestamps are the
//! primary's, never recomputed.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

fn wait_for_replica(p: &mut Connection) {
    let n: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(p).unwrap();
    assert_eq!(n, 1, "replica did not acknowledge");
}

/// Every kind of write, in two databases.
fn write_everything(c: &mut Connection, tag: &str) {
    for db in [0, 1] {
        select(c, db);
        for i in 0..10 {
            cache(c, &format!("{tag}{i}"), &format!("user{i}"), 100 * i, "USD");
        }
        cache(c, &format!("{tag}0"), "user0", 0, "USD"); // duplicate
        update(c, &format!("{tag}1"), "succeeded");
        let _: Value = redis::cmd("PAY.UPDATE")
            .arg(format!("{tag}2"))
            .arg("pending")
            .arg("REASON")
            .arg("timeout")
            .query(c)
            .unwrap();
        let _: Value = redis::cmd("PAY.UPDATE")
            .arg(format!("{tag}3"))
            .arg("failed")
            .arg("REASON")
            .arg("declined")
            .arg("REF")
            .arg("ch_3")
            .query(c)
            .unwrap();
        let _: () = redis::cmd("DEL").arg(format!("{tag}4")).query(c).unwrap();
        let _: () = redis::cmd("RENAME")
            .arg(format!("{tag}5"))
            .arg(format!("{tag}5-renamed"))
            .query(c)
            .unwrap();
        let _: Value = redis::cmd("COPY")
            .arg(format!("{tag}6"))
            .arg(format!("{tag}6-copy"))
            .query(c)
            .unwrap();
        let _: Value = redis::cmd("PEXPIRE")
            .arg(format!("{tag}7"))
            .arg(30)
            .query(c)
            .unwrap();
        // Contract v2: an unknown outcome held back from claims, and a claim.
        let _: Value = redis::cmd("PAY.UPDATE")
            .arg(format!("{tag}9"))
            .arg("unknown")
            .arg("RETRY")
            .arg(3_600_000)
            .query(c)
            .unwrap();
        claim(c, "w1", 1, 60_000);
    }
    select(c, 0);
    let _: Value = redis::cmd("MOVE")
        .arg(format!("{tag}8"))
        .arg(2)
        .query(c)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100)); // let tag7 expire on the primary
}

fn assert_replica_matches(p: &mut Connection, r: &mut Connection) {
    wait_for_replica(p);
    let dbs = [0, 1, 2];
    let tolerance = expire_tolerance_ms(p);
    let on_primary = snapshot(p, &dbs);
    assert!(!on_primary.is_empty());
    assert_same_records(&on_primary, &snapshot(r, &dbs), tolerance);
    for &db in &dbs {
        select(p, db);
        select(r, db);
        assert_eq!(
            stuck_records(p),
            stuck_records(r),
            "db {db}: the replica lists stuck payments as the primary does"
        );
    }
    select(p, 0);
    select(r, 0);
    for field in [
        "records_pending",
        "records_unknown",
        "records_succeeded",
        "records_failed",
        "records_stale",
    ] {
        assert_eq!(info_field(p, field), info_field(r, field), "{field}");
    }
    assert_index_exact(p, &dbs);
}

/// A promoted replica's index, built from the sync and the stream, matches
/// its keyspace.
fn promote_and_check_index(r: &mut Connection) {
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(r)
        .unwrap();
    assert_index_exact(r, &[0, 1, 2]);
}

#[test]
fn full_sync_then_stream_give_the_replica_the_same_records() {
    let primary = Server::start();
    let replica = Server::start();
    let mut p = primary.conn();
    write_everything(&mut p, "before-");
    replicate(&replica, &primary);
    let mut r = replica.conn();
    write_everything(&mut p, "live-");
    assert_replica_matches(&mut p, &mut r);
    // The replica refuses writes from clients.
    let e = err(
        &mut r,
        redis::cmd("PAY.CACHE").arg("x").arg("u").arg(1).arg("USD"),
    );
    assert!(e.starts_with("READONLY"), "{e}");
}

#[test]
fn partial_resync_keeps_the_replica_exact() {
    let primary = Server::start();
    let replica = Server::start();
    replicate(&replica, &primary);
    let mut p = primary.conn();
    let mut r = replica.conn();
    write_everything(&mut p, "a-");
    wait_for_replica(&mut p);
    // Drop the link; the primary keeps writing; the replica comes back with PSYNC.
    let _: Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("master")
        .query(&mut r)
        .unwrap();
    write_everything(&mut p, "b-");
    assert!(wait_until(Duration::from_secs(20), || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut r).unwrap();
        info.contains("master_link_status:up")
    }));
    let stats: String = redis::cmd("INFO").arg("stats").query(&mut p).unwrap();
    assert!(
        stats.contains("sync_partial_ok:1"),
        "expected a partial resync: {stats}"
    );
    assert_replica_matches(&mut p, &mut r);
    promote_and_check_index(&mut r);
}

#[test]
fn a_new_replica_gets_the_same_bytes_from_a_full_resync() {
    let primary = Server::start();
    let mut p = primary.conn();
    write_everything(&mut p, "x-");
    let replica = Server::start();
    // The replica had its own records: the full sync replaces them.
    let mut r = replica.conn();
    cache(&mut r, "local-only", "u", 1, "USD");
    replicate(&replica, &primary);
    assert_eq!(check(&mut r, "local-only"), None);
    assert_replica_matches(&mut p, &mut r);
    for key in ["x-0", "x-2", "x-9"] {
        let a: String = redis::cmd("DEBUG")
            .arg("DIGEST-VALUE")
            .arg(key)
            .query::<Vec<String>>(&mut p)
            .unwrap()
            .remove(0);
        let b: String = redis::cmd("DEBUG")
            .arg("DIGEST-VALUE")
            .arg(key)
            .query::<Vec<String>>(&mut r)
            .unwrap()
            .remove(0);
        assert_eq!(a, b, "{key}");
    }
    promote_and_check_index(&mut r);
}
