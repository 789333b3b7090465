//! Another module loaded beside redis-pay deletes or overwrites a payment's
//! key from inside its keyspace notification handler (tests/neighbour):
//! every write path of redis-pay (PAY.CACHE, PAY.UPDATE, a claim, the
//! sweeper, PAY.LOAD from a primary) must be done with the record by the
//! time it raises the event. The server stays up, every reply is the record
//! as written, and the index stays exact. `make test-valgrind` runs this
//! under memcheck too.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

const ACTIONS: [&str; 2] = ["del", "set"];

fn with_neighbour(opts: Opts) -> Opts {
    let path = neighbour_module();
    opts.config("loadmodule", path.to_str().expect("a UTF-8 path"))
}

/// What the neighbour does, on which redis-pay event.
fn neighbour(c: &mut Connection, event: &str, action: &str) {
    let _: () = redis::cmd("NEIGHBOUR.ON")
        .arg(event)
        .arg(action)
        .arg("SCRIBBLE")
        .query(c)
        .unwrap();
}

fn taken(c: &mut Connection) -> i64 {
    redis::cmd("NEIGHBOUR.TAKEN").query(c).unwrap()
}

/// The key is gone (del) or holds the neighbour's string (set).
fn assert_taken(c: &mut Connection, key: &str, action: &str) {
    let kind: String = redis::cmd("TYPE").arg(key).query(c).unwrap();
    let expected = if action == "del" { "none" } else { "string" };
    assert_eq!(kind, expected, "{key} after the neighbour's {action}");
}

/// The server is up, its log has no crash, its index is exact and never
/// met a stale entry.
fn assert_sound(s: &Server, c: &mut Connection) {
    let pong: String = redis::cmd("PING").query(c).unwrap();
    assert_eq!(pong, "PONG");
    assert!(!s.log().contains("crashed by signal"), "{}", s.log());
    assert_eq!(info_field(c, "index_misses"), 0);
    assert_index_exact(c, &[0]);
}

#[test]
fn pay_cache_replies_with_the_record_though_a_neighbour_takes_the_key() {
    let s = Server::with(with_neighbour(Opts::new()));
    let mut c = s.conn();
    for action in ACTIONS {
        neighbour(&mut c, "pay.cache", action);
        let key = format!("cache:{action}");
        let r = cache(&mut c, &key, "user-7", 1234, "usd");
        assert_eq!(r["outcome"], "created");
        assert_eq!(r["transaction_id"], key);
        assert_eq!(r["user_id"], "user-7");
        assert_eq!(r["amount"], "1234");
        assert_eq!(r["currency"], "USD");
        assert_eq!(r["status"], "pending");
        assert_taken(&mut c, &key, action);
        let brief: Value = redis::cmd("PAY.CACHE")
            .arg(format!("{key}:brief"))
            .arg("u")
            .arg(1)
            .arg("EUR")
            .arg("BRIEF")
            .query(&mut c)
            .unwrap();
        let brief = record(&brief);
        assert_eq!(brief["outcome"], "created");
        assert_eq!(brief["status"], "pending");
    }
    neighbour(&mut c, "*", "none");
    assert_eq!(taken(&mut c), 4);
    assert_sound(&s, &mut c);
}

#[test]
fn pay_update_replies_with_the_record_though_a_neighbour_takes_the_key() {
    let s = Server::with(with_neighbour(Opts::new()));
    let mut c = s.conn();
    for action in ACTIONS {
        let key = format!("update:{action}");
        cache(&mut c, &key, "user-8", 500, "EUR");
        neighbour(&mut c, "pay.update", action);
        let r = update_with(&mut c, &key, "succeeded", "REF", "ch_neighbour");
        neighbour(&mut c, "*", "none");
        assert_eq!(r["transaction_id"], key);
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["provider_ref"], "ch_neighbour");
        assert_eq!(r["amount"], "500");
        assert_taken(&mut c, &key, action);
    }
    assert_sound(&s, &mut c);
}

#[test]
fn a_claim_replies_with_every_record_though_a_neighbour_takes_the_keys() {
    let s = Server::with(with_neighbour(Opts::new()));
    let mut c = s.conn();
    for action in ACTIONS {
        for i in 0..5 {
            cache(&mut c, &format!("claim:{action}:{i}"), "u", i, "USD");
        }
        neighbour(&mut c, "pay.claim", action);
        let records = claim(&mut c, "worker-1", 100, 60_000);
        neighbour(&mut c, "*", "none");
        assert_eq!(records.len(), 5, "{records:?}");
        for r in records {
            assert!(r["transaction_id"].starts_with(&format!("claim:{action}:")));
            assert_eq!(r["lease_owner"], "worker-1");
            assert_eq!(r["attempts"], "1");
            assert_taken(&mut c, &r["transaction_id"], action);
        }
    }
    assert_sound(&s, &mut c);
}

#[test]
fn the_sweeper_carries_on_though_a_neighbour_takes_what_it_flags() {
    let s = Server::with(with_neighbour(Opts::sweeper(600_000, 10)));
    let mut c = s.conn();
    let mut total = 0;
    for action in ACTIONS {
        for i in 0..20 {
            cache(&mut c, &format!("sweep:{action}:{i}"), "u", i, "USD");
        }
        total += 20;
        neighbour(&mut c, "pay.stale", action);
        config_set(&mut c, "pay.stale-after-ms", 1);
        assert!(
            wait_until(Duration::from_secs(30), || taken(&mut c) >= total),
            "the sweeper flagged {} of {total}",
            taken(&mut c)
        );
        config_set(&mut c, "pay.stale-after-ms", 600_000);
        neighbour(&mut c, "*", "none");
        for i in 0..20 {
            assert_taken(&mut c, &format!("sweep:{action}:{i}"), action);
        }
    }
    assert_sound(&s, &mut c);
}

#[test]
fn a_replica_applies_pay_load_though_a_neighbour_takes_the_key() {
    let p = Server::start();
    let r = Server::with(with_neighbour(
        Opts::new().config("replica-read-only", "no"),
    ));
    replicate(&r, &p);
    let (mut pc, mut rc) = (p.conn(), r.conn());
    for action in ACTIONS {
        neighbour(&mut rc, "pay.load", action);
        for i in 0..5 {
            let key = format!("load:{action}:{i}");
            cache(&mut pc, &key, "u", i, "USD");
            if i % 2 == 1 {
                update(&mut pc, &key, "failed");
            }
        }
        claim(&mut pc, "w", 100, 60_000);
        wait_replicas(&mut pc, 1);
        neighbour(&mut rc, "*", "none");
        for i in 0..5 {
            assert_taken(&mut rc, &format!("load:{action}:{i}"), action);
        }
    }
    assert!(taken(&mut rc) >= 10);
    assert_sound(&r, &mut rc);
    assert_eq!(
        info_str(&mut rc, "replication", "master_link_status").as_deref(),
        Some("up")
    );
}
