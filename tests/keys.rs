//! Key rules bind the application where it creates payments (PAY.CACHE):
//! any name Redis lets a payment live under afterwards (RENAME, COPY,
//! RESTORE, MOVE) is replicated, rewritten into the AOF and loaded again
//! byte for byte.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

/// Names PAY.CACHE refuses, but Redis holds.
fn odd_keys() -> Vec<Vec<u8>> {
    vec![
        vec![b'k'; 300],
        vec![b'x'; 256],
        b"tab\there".to_vec(),
        b"bin\x00\xff\xfe".to_vec(),
        b"crlf\r\n*3\r\n$8\r\nPAY.LOAD".to_vec(),
        b"\x1b[31mansi".to_vec(),
        Vec::new(),
    ]
}

/// Payments of each status brought under each odd name: RENAME (pending,
/// succeeded), COPY (failed), RESTORE (pending, leased), MOVE (to db 1).
fn bring_under_odd_keys(c: &mut Connection) {
    for (i, odd) in odd_keys().into_iter().enumerate() {
        let ok = format!("ok:{i}");
        cache(c, &ok, &format!("user{i}"), 100 + i as i64, "EUR");
        match i % 4 {
            0 => {}
            1 => drop(update(c, &ok, "succeeded")),
            2 => drop(update(c, &ok, "failed")),
            _ => {
                let _: Value = redis::cmd("PAY.UPDATE")
                    .arg(&ok)
                    .arg("pending")
                    .arg("REASON")
                    .arg("bank timeout")
                    .query(c)
                    .unwrap();
            }
        }
        let _: () = redis::cmd("RENAME").arg(&ok).arg(&odd).query(c).unwrap();
        // COPY and RESTORE under a second odd name, MOVE a third to db 1.
        let mut copied = odd.clone();
        copied.extend_from_slice(b"\x00copy");
        let _: Value = redis::cmd("COPY").arg(&odd).arg(&copied).query(c).unwrap();
        let payload = dump(c, &odd).unwrap();
        let mut restored = odd.clone();
        restored.extend_from_slice(b"\trestored");
        let _: () = redis::cmd("RESTORE")
            .arg(&restored)
            .arg(0)
            .arg(&payload)
            .query(c)
            .unwrap();
        let mut moved = odd.clone();
        moved.extend_from_slice(b"\nmoved");
        let _: Value = redis::cmd("COPY").arg(&odd).arg(&moved).query(c).unwrap();
        let _: Value = redis::cmd("MOVE").arg(&moved).arg(1).query(c).unwrap();
    }
}

/// What makes the primary send PAY.LOAD for every odd-named record: a
/// claim of every unresolved one in both databases (with a lease that ends
/// at once), and the sweeper's flags.
fn travel(c: &mut Connection, consumer: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.sweep-interval-ms")
        .arg(10)
        .query(c)
        .unwrap();
    for db in [0, 1] {
        select(c, db);
        let _: Value = redis::cmd("PAY.CLAIM")
            .arg(consumer)
            .arg("LEASE")
            .arg(1)
            .arg("OLDER")
            .arg(0)
            .arg("COUNT")
            .arg(1000)
            .query(c)
            .unwrap();
    }
    select(c, 0);
    std::thread::sleep(Duration::from_millis(10));
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.stale-after-ms")
        .arg(1)
        .query(c)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            info_field(c, "records_stale") == info_field(c, "records_pending")
        }),
        "the sweeper did not flag every pending payment"
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.stale-after-ms")
        .arg(300_000)
        .query(c)
        .unwrap();
}

/// Everything one server holds, in forms to compare byte for byte: every
/// key's DUMP and expiry, DEBUG DIGEST-VALUE of every key, PAY.STUCK's
/// listing per database, INFO's counts, DEBUG DIGEST.
type Held = (RawSnapshot, Vec<Value>, Vec<Value>, [i64; 4], String);

fn held(c: &mut Connection) -> Held {
    let raw = raw_snapshot(c, &[0, 1]);
    let mut digests = Vec::new();
    let mut listings = Vec::new();
    for db in [0, 1] {
        select(c, db);
        let keys = all_keys_bytes(c);
        let mut cmd = redis::cmd("DEBUG");
        cmd.arg("DIGEST-VALUE");
        for k in &keys {
            cmd.arg(k);
        }
        digests.push(cmd.query(c).unwrap());
        let listed: Value = redis::cmd("PAY.STUCK")
            .arg("OLDER")
            .arg(0)
            .arg("COUNT")
            .arg(100_000)
            .query(c)
            .unwrap();
        // Each pending record under its own name, byte for byte. (Records
        // created in the same millisecond are equally old: compared as a
        // set.)
        let Value::Array(mut records) = listed else {
            panic!("PAY.STUCK: {listed:?}");
        };
        records.sort_by_key(|r| format!("{r:?}"));
        for r in &records {
            let fields = match r {
                Value::Array(a) => a.clone(),
                Value::Map(m) => m.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
                other => panic!("record: {other:?}"),
            };
            let id = fields
                .chunks(2)
                .find(|p| p[0] == Value::BulkString(b"key".to_vec()))
                .map(|p| p[1].clone());
            let Some(Value::BulkString(id)) = id else {
                panic!("no key in {fields:?}");
            };
            assert!(keys.contains(&id), "listed {id:?} is no key of db {db}");
        }
        listings.push(Value::Array(records));
    }
    select(c, 0);
    let counts =
        ["pending", "succeeded", "failed", "stale"].map(|s| info_field(c, &format!("records_{s}")));
    (raw, digests, listings, counts, digest(c))
}

fn assert_same_held(a: &Held, b: &Held, what: &str) {
    assert_same_bytes(&a.0, &b.0, what);
    assert_eq!(a.1, b.1, "{what}: DEBUG DIGEST-VALUE");
    assert_eq!(a.2, b.2, "{what}: PAY.STUCK");
    assert_eq!(a.3, b.3, "{what}: INFO counts");
    assert_eq!(a.4, b.4, "{what}: DEBUG DIGEST");
}

#[test]
fn odd_keys_replicate_byte_for_byte() {
    let p = Server::start();
    let r = Server::with(Opts::new().config("replica-read-only", "no"));
    replicate(&r, &p);
    let (mut pc, mut rc) = (p.conn(), r.conn());
    bring_under_odd_keys(&mut pc);
    travel(&mut pc, "w1");
    wait_replicas(&mut pc, 1);
    let on_primary = held(&mut pc);
    assert!(
        on_primary.0.len() >= 4 * odd_keys().len(),
        "{:?}",
        on_primary.0.len()
    );
    assert_same_held(&on_primary, &held(&mut rc), "live replica");
    // A second replica, from a full sync (RDB).
    let r2 = Server::with(Opts::new().config("replica-read-only", "no"));
    replicate(&r2, &p);
    assert_same_held(&on_primary, &held(&mut r2.conn()), "fully synced replica");
    for s in [&r, &r2] {
        assert!(!s.log().contains("CRITICAL"), "{}", s.log());
    }
}

#[test]
fn odd_keys_survive_aof_rewrite_and_reload_with_and_without_preamble() {
    for preamble in ["yes", "no"] {
        let mut s = Server::with(
            Opts::new()
                .config("appendonly", "yes")
                .config("aof-use-rdb-preamble", preamble),
        );
        let mut c = s.conn();
        bring_under_odd_keys(&mut c);
        travel(&mut c, "w1");
        let _: String = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
        wait_aof_rewrite(&mut c);
        // After the rewrite, the AOF's tail carries PAY.LOAD too.
        travel(&mut c, "w2");
        let before = held(&mut c);
        let _: () = redis::cmd("DEBUG").arg("LOADAOF").query(&mut c).unwrap();
        assert_same_held(
            &before,
            &held(&mut c),
            &format!("LOADAOF, preamble {preamble}"),
        );
        drop(c);
        s.restart();
        let mut c = s.conn();
        assert_same_held(
            &before,
            &held(&mut c),
            &format!("restart, preamble {preamble}"),
        );
        assert!(!s.log().contains("CRITICAL"), "{}", s.log());
    }
}

#[test]
fn a_payment_under_any_key_can_be_read_and_resolved() {
    let s = Server::start();
    let mut c = s.conn();
    for (i, odd) in odd_keys().into_iter().enumerate() {
        let ok = format!("ok:{i}");
        cache(&mut c, &ok, "u", 1, "EUR");
        let _: () = redis::cmd("RENAME")
            .arg(&ok)
            .arg(&odd)
            .query(&mut c)
            .unwrap();
        let v: Value = redis::cmd("PAY.CHECK").arg(&odd).query(&mut c).unwrap();
        assert_eq!(record(&v)["status"], "pending", "key {odd:?}");
        let v: Value = redis::cmd("PAY.UPDATE")
            .arg(&odd)
            .arg("succeeded")
            .arg("REF")
            .arg("ch_1")
            .query(&mut c)
            .unwrap();
        assert_eq!(record(&v)["status"], "succeeded", "key {odd:?}");
    }
    assert_eq!(info_field(&mut c, "records_pending"), 0);
    assert_eq!(
        info_field(&mut c, "records_succeeded"),
        odd_keys().len() as i64
    );
    let listed: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(listed, Value::Array(vec![]));
}
