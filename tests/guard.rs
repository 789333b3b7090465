//! An unresolved payment never disappears silently: an expiry Redis gives it
//! is taken away (on the primary, replicated), an eviction policy that could
//! drop it is reported, and one lost anyway is logged and counted.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

fn ttl_ms(c: &mut Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(c).unwrap()
}

fn exists(c: &mut Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(c).unwrap() == 1
}

#[test]
fn an_expiry_given_to_an_unresolved_payment_is_taken_away_on_primary_and_replica() {
    let p = Server::start();
    let r = Server::start();
    replicate(&r, &p);
    let mut c = p.conn();
    let mut rc = r.conn();
    for k in ["short", "long", "copied", "restored", "unknown", "paid"] {
        cache(&mut c, k, "u", 100, "EUR");
    }
    update(&mut c, "unknown", "unknown");
    update(&mut c, "paid", "succeeded");
    let paid_ttl = ttl_ms(&mut c, "paid");
    // An expiry shorter than the check interval of a cron job: without the
    // guard the payment is gone within 400 ms.
    let _: i64 = redis::cmd("PEXPIRE")
        .arg("short")
        .arg(400)
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("EXPIRE")
        .arg("long")
        .arg(3600)
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("EXPIRE")
        .arg("unknown")
        .arg(3600)
        .query(&mut c)
        .unwrap();
    // A copy of a key that had an expiry, and a RESTORE with a TTL.
    let _: i64 = redis::cmd("COPY")
        .arg("long")
        .arg("copied")
        .arg("REPLACE")
        .query(&mut c)
        .unwrap();
    let blob: Vec<u8> = redis::cmd("DUMP").arg("restored").query(&mut c).unwrap();
    let _: () = redis::cmd("RESTORE")
        .arg("restored")
        .arg(3_600_000)
        .arg(&blob)
        .arg("REPLACE")
        .query(&mut c)
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    wait_replicas(&mut c, 1);
    for k in ["short", "long", "copied", "restored", "unknown"] {
        assert!(exists(&mut c, k), "{k} is gone");
        assert_eq!(ttl_ms(&mut c, k), -1, "{k} on the primary");
        assert_eq!(ttl_ms(&mut rc, k), -1, "{k} on the replica");
    }
    // A resolved payment keeps the TTL it was given.
    let _: i64 = redis::cmd("EXPIRE")
        .arg("paid")
        .arg(7200)
        .query(&mut c)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let now = ttl_ms(&mut c, "paid");
    assert!(now > 7_000_000 && now != paid_ttl, "{now}");
    assert_eq!(info_field(&mut c, "expiries_removed"), 5);
    assert!(p
        .log()
        .contains("removed the expiry of unresolved payment short"));
    // The replica never writes: it follows the primary's PERSIST.
    assert_eq!(info_field(&mut rc, "expiries_removed"), 0);
    assert_eq!(info_field(&mut c, "unresolved_lost"), 0);
}

#[test]
fn an_eviction_policy_that_may_drop_unresolved_payments_is_reported() {
    let s = Server::start();
    let mut c = s.conn();
    let unsafe_now = |c: &mut Connection| info_field(c, "eviction_unsafe") == 1;
    assert!(!unsafe_now(&mut c));
    // Without a memory limit nothing is evicted, whatever the policy.
    config_set(&mut c, "maxmemory-policy", "allkeys-lru");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!unsafe_now(&mut c));
    config_set(&mut c, "maxmemory", "1gb");
    assert!(wait_until(Duration::from_secs(5), || unsafe_now(&mut c)));
    assert!(s.log().contains(
        "maxmemory-policy allkeys-lru with maxmemory 1073741824 may evict unresolved payments"
    ));
    config_set(&mut c, "maxmemory-policy", "volatile-lru");
    assert!(wait_until(Duration::from_secs(5), || !unsafe_now(&mut c)));
}

/// Key events (Redis 7.2+, Valkey) report each unresolved payment lost to
/// eviction; Redis 7.0 has none, and says so at load.
#[test]
fn an_unresolved_payment_evicted_anyway_is_logged_and_counted() {
    let s = Server::start();
    let mut c = s.conn();
    let (kind, version) = server_version(&mut c);
    let has_key_events = kind == "valkey" || version >= (7, 2);
    cache(&mut c, "txn_lost", "u7", 4200, "EUR");
    cache(&mut c, "txn_done", "u8", 100, "EUR");
    update(&mut c, "txn_done", "succeeded");
    config_set(&mut c, "maxmemory-policy", "allkeys-random");
    config_set(&mut c, "maxmemory", 1);
    // Any write now evicts every key it can.
    let _: Value = redis::cmd("SET")
        .arg("x")
        .arg("y")
        .query(&mut c)
        .unwrap_or(Value::Nil);
    config_set(&mut c, "maxmemory", 0);
    assert!(!exists(&mut c, "txn_lost"));
    assert!(!exists(&mut c, "txn_done"));
    let log = s.log();
    if has_key_events {
        assert_eq!(info_field(&mut c, "unresolved_lost"), 1);
        assert!(
            log.contains(
                "UNRESOLVED PAYMENT LOST: key txn_lost was evicted; transaction_id txn_lost \
                 user_id u7 amount 4200 EUR status pending"
            ),
            "{log}"
        );
        assert!(!log.contains("key txn_done"), "{log}");
    } else {
        assert_eq!(info_field(&mut c, "unresolved_lost"), 0);
        assert!(log.contains("no key events on this server"), "{log}");
    }
}

/// Sends `PEXPIRE key ms` and `SHUTDOWN <how>` in one write, so the server
/// runs both before any timer tick (as when it dies right after an
/// operator's EXPIRE), and waits for the process to end.
fn expire_then_shutdown(s: &mut Server, key: &str, ms: i64, how: &[&str]) {
    let mut c = s.conn();
    let _: redis::RedisResult<Value> = redis::pipe()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(ms)
        .cmd("SHUTDOWN")
        .arg(how)
        .query(&mut c);
    assert!(
        wait_until(Duration::from_secs(10), || s.exited()),
        "the server did not shut down"
    );
}

/// An RDB file can hold an unresolved payment with an expiry: saved within
/// a tick of an operator's EXPIRE, or written by a module before the guard.
/// The restarted primary must take the expiry away as it would have.
#[test]
fn an_unresolved_payment_loaded_with_an_expiry_keeps_no_expiry() {
    let mut s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "txn_saved", "u", 100, "EUR");
    expire_then_shutdown(&mut s, "txn_saved", 2500, &["SAVE"]);
    s.restart();
    let mut c = s.conn();
    assert!(exists(&mut c, "txn_saved"), "not even loaded");
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        exists(&mut c, "txn_saved"),
        "the payment expired after a restart"
    );
    assert_eq!(ttl_ms(&mut c, "txn_saved"), -1);
}

/// A primary that dies within a tick of an operator's EXPIRE leaves its
/// replica an unresolved payment with an expiry; once promoted, the replica
/// must take it away.
#[test]
fn a_promoted_replica_takes_away_an_expiry_its_primary_had_no_time_to() {
    let mut p = Server::start();
    let r = Server::start();
    replicate(&r, &p);
    let mut c = p.conn();
    cache(&mut c, "txn_failover", "u", 100, "EUR");
    wait_replicas(&mut c, 1);
    expire_then_shutdown(&mut p, "txn_failover", 2500, &["NOSAVE", "NOW"]);
    let mut rc = r.conn();
    assert!(
        wait_until(Duration::from_secs(5), || ttl_ms(&mut rc, "txn_failover")
            > 0),
        "the replica never got the EXPIRE"
    );
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut rc)
        .unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    assert!(
        exists(&mut rc, "txn_failover"),
        "the payment expired on the promoted replica"
    );
    assert_eq!(ttl_ms(&mut rc, "txn_failover"), -1);
}

/// An unresolved payment whose expiry passed while the server was down is
/// dropped by Redis as the RDB file loads, without a key event: it must be
/// reported like any other loss, on every server.
#[test]
fn an_unresolved_payment_that_expired_while_the_server_was_down_is_reported() {
    let mut s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "txn_gone", "u9", 4200, "EUR");
    cache(&mut c, "txn_paid", "u9", 100, "EUR");
    update(&mut c, "txn_paid", "succeeded");
    let _: i64 = redis::cmd("PEXPIRE")
        .arg("txn_paid")
        .arg(300)
        .query(&mut c)
        .unwrap();
    expire_then_shutdown(&mut s, "txn_gone", 300, &["SAVE"]);
    std::thread::sleep(Duration::from_millis(600));
    s.restart();
    let mut c = s.conn();
    assert!(!exists(&mut c, "txn_gone"));
    assert_eq!(info_field(&mut c, "unresolved_lost"), 1);
    let log = s.log();
    assert!(
        log.contains(
            "UNRESOLVED PAYMENT LOST: key txn_gone expired while the server was down; \
             transaction_id txn_gone user_id u9 amount 4200 EUR status pending"
        ),
        "{log}"
    );
    assert!(!log.contains("key txn_paid"), "{log}");
}

/// The guard looks at every key an EXPIRE, RESTORE, COPY, RENAME or MOVE
/// touches, payment or not: Redis's own statistics must not see it (a
/// cache's `SET ... EX` would otherwise count as a keyspace hit). Where
/// payments live, servers with the NOSTATS open-key flag (Redis 7.2+,
/// Valkey) keep them exact too.
#[test]
fn the_guard_leaves_redis_statistics_alone() {
    let run = |opts: Opts, with_payment: bool| {
        let s = Server::with(opts);
        let mut c = s.conn();
        if with_payment {
            cache(&mut c, "txn_here", "u", 100, "EUR");
        }
        let stat = |c: &mut Connection| {
            (
                info_str(c, "stats", "keyspace_hits"),
                info_str(c, "stats", "keyspace_misses"),
            )
        };
        let before = stat(&mut c);
        for cmd in [
            &["SET", "a", "1", "EX", "100"][..],
            &["EXPIRE", "a", "200"],
            &["COPY", "a", "b"],
            &["RENAME", "b", "c"],
            &["MOVE", "c", "1"],
            &["PEXPIRE", "a", "5000"],
        ] {
            let _: Value = redis::cmd(cmd[0]).arg(&cmd[1..]).query(&mut c).unwrap();
        }
        let (kind, version) = server_version(&mut c);
        (before, stat(&mut c), kind == "valkey" || version >= (7, 2))
    };
    let (before, after, _) = run(Opts::new().without_module(), false);
    let (b, a, nostats) = run(Opts::new(), false);
    assert_eq!((&b, &a), (&before, &after));
    if nostats {
        let (b, a, _) = run(Opts::new(), true);
        assert_eq!((b, a), (before, after), "with a payment in the database");
    }
}

/// Redis lets a payment live under any bytes (RENAME, COPY, RESTORE), a NUL
/// byte included. The guard names the key in its log lines: a line Redis's
/// log API cannot take must never panic, which would abort the server (and,
/// with the EXPIRE in the AOF, again at every restart).
#[test]
fn a_payment_under_a_key_with_a_nul_byte_never_kills_the_server() {
    let s = Server::start();
    let mut c = s.conn();
    let (kind, version) = server_version(&mut c);
    let has_key_events = kind == "valkey" || version >= (7, 2);
    cache(&mut c, "txn_nul", "u", 100, "EUR");
    let nul: &[u8] = b"txn\0nul";
    let _: () = redis::cmd("RENAME")
        .arg("txn_nul")
        .arg(nul)
        .query(&mut c)
        .unwrap();
    // The guard removes this expiry at its next tick, and logs it.
    let _: i64 = redis::cmd("EXPIRE")
        .arg(nul)
        .arg(1000)
        .query(&mut c)
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let ttl: i64 = redis::cmd("PTTL").arg(nul).query(&mut c).unwrap();
    assert_eq!(ttl, -1);
    // An expiry in the past deletes it at once: a loss, logged on servers
    // with key events.
    let _: i64 = redis::cmd("PEXPIREAT")
        .arg(nul)
        .arg(1)
        .query(&mut c)
        .unwrap();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let log = s.log();
    assert!(
        log.contains("removed the expiry of unresolved payment txn\\x00nul"),
        "{log}"
    );
    if has_key_events {
        assert_eq!(info_field(&mut c, "unresolved_lost"), 1);
        assert!(
            log.contains(
                "UNRESOLVED PAYMENT LOST: key txn\\x00nul expired; transaction_id txn_nul"
            ),
            "{log}"
        );
    }
}

/// SWAPDB within a tick of an EXPIRE: the queued key is in the other
/// database now, and its expiry is still taken away.
#[test]
fn an_expiry_queued_before_a_swapdb_is_taken_away_in_the_other_database() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "txn_swapped", "u", 100, "EUR");
    let _: Value = redis::pipe()
        .cmd("PEXPIRE")
        .arg("txn_swapped")
        .arg(3000)
        .cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .query(&mut c)
        .unwrap();
    select(&mut c, 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(ttl_ms(&mut c, "txn_swapped"), -1);
}
