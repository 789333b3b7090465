//! Records survive restarts from RDB and from AOF (with and without a
//! rewrite, with and without the RDB preamble), with the same values.

use redis::{Connection, Value};
use testkit::*;

const DBS: [i64; 2] = [0, 2];

/// Payments in every state, in two databases, with TTLs.
fn populate(c: &mut Connection) {
    for &db in &DBS {
        select(c, db);
        for i in 0..20 {
            let _: Value = redis::cmd("PAY.CACHE")
                .arg(format!("txn:{db}:{i}"))
                .arg(format!("user{i}"))
                .arg(1000 + i)
                .arg(if i % 2 == 0 { "USD" } else { "eur" })
                .arg("TTL")
                .arg(3600 + i)
                .query(c)
                .unwrap();
        }
        for i in 0..5 {
            let _: Value = redis::cmd("PAY.UPDATE")
                .arg(format!("txn:{db}:{i}"))
                .arg("succeeded")
                .arg("REF")
                .arg(format!("ch_{i}"))
                .query(c)
                .unwrap();
        }
        for i in 5..8 {
            let _: Value = redis::cmd("PAY.UPDATE")
                .arg(format!("txn:{db}:{i}"))
                .arg("failed")
                .arg("REASON")
                .arg("card declined: «insufficient funds»")
                .query(c)
                .unwrap();
        }
        let _: Value = redis::cmd("PAY.UPDATE")
            .arg(format!("txn:{db}:9"))
            .arg("pending")
            .arg("REASON")
            .arg("bank timeout")
            .query(c)
            .unwrap();
    }
    select(c, 0);
}

fn check_restart(opts: Opts, rewrite: bool, persist: fn(&mut Connection)) {
    let mut s = Server::with(opts);
    let mut c = s.conn();
    populate(&mut c);
    if rewrite {
        let _: Value = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
        assert!(wait_until(std::time::Duration::from_secs(20), || {
            let info: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
            info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
        }));
        // Writes after the rewrite land in the incremental AOF.
        cache(&mut c, "after-rewrite", "u", 5, "USD");
        update(&mut c, "txn:0:10", "succeeded");
    }
    persist(&mut c);
    let tolerance = expire_tolerance_ms(&mut c);
    let before = snapshot(&mut c, &DBS);
    s.restart();
    let mut c = s.conn();
    let after = snapshot(&mut c, &DBS);
    assert_same_records(&before, &after, tolerance);
    assert_index_exact(&mut c, &DBS);
    // The restarted server still de-duplicates.
    let r = cache(&mut c, "txn:0:15", "user15", 1015, "EUR");
    assert_eq!(r["outcome"], "duplicate");
}

fn save(c: &mut Connection) {
    let _: () = redis::cmd("SAVE").query(c).unwrap();
}

fn nothing(_: &mut Connection) {}

#[test]
fn restart_from_rdb_keeps_every_record() {
    check_restart(Opts::new(), false, save);
}

fn aof(preamble: &str) -> Opts {
    Opts::new()
        .config("appendonly", "yes")
        .config("appendfsync", "always")
        .config("aof-use-rdb-preamble", preamble)
}

#[test]
fn restart_from_aof_alone_replays_pay_load() {
    check_restart(aof("yes"), false, nothing);
}

#[test]
fn restart_from_rewritten_aof_without_rdb_preamble() {
    check_restart(aof("no"), true, nothing);
}

#[test]
fn restart_from_rewritten_aof_with_rdb_preamble() {
    check_restart(aof("yes"), true, nothing);
}

#[test]
fn aof_rewrite_emits_one_pay_load_per_record() {
    let s = Server::with(aof("no"));
    let mut c = s.conn();
    cache(&mut c, "done", "u", 1, "USD");
    update(&mut c, "done", "succeeded");
    cache(&mut c, "open", "u", 1, "USD");
    let _: Value = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
    assert!(wait_until(std::time::Duration::from_secs(20), || {
        let info: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    }));
    let dir = s.dir().join("appendonlydir");
    let base = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".base.aof"))
        .expect("base AOF");
    let text = String::from_utf8_lossy(&std::fs::read(base).unwrap()).into_owned();
    assert_eq!(text.matches("PAY.LOAD").count(), 2, "{text}");
    assert_eq!(
        text.matches("PEXPIREAT").count(),
        1,
        "the resolved one's TTL is rewritten too, the pending one has none: {text}"
    );
}

/// Records whose TTL ran out while the server was down are dropped as the
/// RDB file loads, after the module has read them: the index (built in bulk
/// once the file has loaded) must not list them, and the counts must agree.
/// Unresolved payments get no TTL from the module, and on a primary the
/// guard takes away an operator's PEXPIRE at the next timer tick. So the
/// expiries are set where the guard does not act, as an older module's RDB
/// would hold them: on a writable replica of a primary that never answers.
#[test]
fn restart_from_rdb_drops_records_that_expired_while_down() {
    let mut s = Server::start();
    let mut c = s.conn();
    let mut survivors = 0;
    let mut short_keys = Vec::new();
    for &db in &DBS {
        select(&mut c, db);
        for i in 0..300 {
            let short = i % 3 == 0;
            let _: Value = redis::cmd("PAY.CACHE")
                .arg(format!("txn:{db}:{i}"))
                .arg("u")
                .arg(100)
                .arg("USD")
                .arg("TTL")
                .arg(3600)
                .query(&mut c)
                .unwrap();
            // Resolving sets the TTL chosen at creation: the operator's
            // PEXPIRE comes after it.
            if i % 10 == 1 {
                update(&mut c, &format!("txn:{db}:{i}"), "succeeded");
            } else if !short {
                survivors += 1;
            }
            if short {
                short_keys.push((db, format!("txn:{db}:{i}")));
            }
        }
    }
    config_set(&mut c, "replica-read-only", "no");
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(free_port())
        .query(&mut c)
        .unwrap();
    for (db, key) in &short_keys {
        select(&mut c, *db);
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(1000)
            .query(&mut c)
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for (db, key) in short_keys.iter().take(3) {
        select(&mut c, *db);
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut c).unwrap();
        assert!(ttl > 0, "{key} lost its expiry on a replica: {ttl}");
    }
    save(&mut c);
    s.kill();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    s.restart();
    let mut c = s.conn();
    assert_index_exact(&mut c, &DBS);
    assert_eq!(info_field(&mut c, "records_pending"), survivors);
    select(&mut c, 2);
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 200, "every third record expired");
}
