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
    config_set(&mut c, "maxmemory-policy", "allkeys-lru");
    assert!(wait_until(Duration::from_secs(5), || unsafe_now(&mut c)));
    assert!(s
        .log()
        .contains("maxmemory-policy allkeys-lru may evict unresolved payments"));
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
