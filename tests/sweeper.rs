//! The sweeper flags stuck payments on the primary, and claims lease them to
//! retry workers without ever giving one payment to two workers at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use redis::Value;
use testkit::*;

const STALE_MS: u64 = 300;
const SWEEP_MS: u64 = 50;

fn fast_sweeper() -> Opts {
    Opts::sweeper(STALE_MS, SWEEP_MS)
}

#[test]
fn pending_payments_are_flagged_within_two_sweep_intervals_and_resolved_ones_never() {
    let s = Server::with(fast_sweeper());
    let mut c = s.conn();
    let created = Instant::now();
    for i in 0..10 {
        cache(&mut c, &format!("p{i}"), "u", i, "USD");
    }
    for i in 0..3 {
        update(&mut c, &format!("p{i}"), "succeeded");
    }
    std::thread::sleep(Duration::from_millis(STALE_MS / 2));
    assert_eq!(info_field(&mut c, "records_stale"), 0, "flagged too early");
    let deadline = Duration::from_millis(STALE_MS + 2 * SWEEP_MS);
    std::thread::sleep(deadline.saturating_sub(created.elapsed()));
    for i in 0..10 {
        let r = check(&mut c, &format!("p{i}")).unwrap();
        let expect = if i < 3 { "0" } else { "1" };
        assert_eq!(r["stale"], expect, "p{i} after {:?}", created.elapsed());
    }
    assert_eq!(info_field(&mut c, "records_stale"), 7);
    assert_eq!(info_field(&mut c, "flagged"), 7);
    // Flagging is no status change: the payments are still pending, and a
    // stale one resolves normally.
    update(&mut c, "p5", "failed");
    assert_eq!(check(&mut c, "p5").unwrap()["stale"], "0");
    assert_eq!(info_field(&mut c, "records_stale"), 6);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn config_set_of_the_interval_applies_at_once() {
    let s = Server::with(Opts::sweeper(100, 3_600_000));
    let mut c = s.conn();
    cache(&mut c, "p", "u", 1, "USD");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(info_field(&mut c, "flagged"), 0, "hourly sweep ran early");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.sweep-interval-ms")
        .arg(50)
        .query(&mut c)
        .unwrap();
    assert!(wait_until(Duration::from_secs(2), || info_field(
        &mut c, "flagged"
    ) == 1));
}

#[test]
fn two_consumers_claiming_at_once_get_disjoint_sets_covering_every_stale_payment() {
    let s = Server::with(fast_sweeper());
    let mut c = s.conn();
    let all: BTreeSet<String> = (0..300).map(|i| format!("p{i}")).collect();
    for k in &all {
        cache(&mut c, k, "u", 1, "USD");
    }
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut c,
        "records_stale"
    ) == 300));
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|name| {
            let mut conn = s.conn();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut got = Vec::new();
                loop {
                    let batch = claim(&mut conn, name, 7, 60_000);
                    if batch.is_empty() {
                        return got;
                    }
                    for r in batch {
                        assert_eq!(r["lease_owner"], name);
                        assert_eq!(r["attempts"], "1");
                        got.push(r["transaction_id"].clone());
                    }
                }
            })
        })
        .collect();
    let sets: Vec<BTreeSet<String>> = workers
        .into_iter()
        .map(|w| w.join().unwrap().into_iter().collect())
        .collect();
    assert!(
        sets[0].is_disjoint(&sets[1]),
        "a payment went to both workers"
    );
    let union: BTreeSet<String> = sets[0].union(&sets[1]).cloned().collect();
    assert_eq!(union, all);
    assert!(
        !sets[0].is_empty() && !sets[1].is_empty(),
        "one worker got nothing"
    );
    assert_eq!(info_field(&mut c, "claims"), 300);
}

#[test]
fn an_expired_lease_makes_the_payment_claimable_again() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "p", "u", 1, "USD");
    let first = claim(&mut c, "w1", 10, 300);
    assert_eq!(first.len(), 1);
    assert!(
        claim(&mut c, "w2", 10, 300).is_empty(),
        "a live lease was handed out twice"
    );
    // A transient error keeps the lease: it is the retry back-off.
    let _: Value = redis::cmd("PAY.UPDATE")
        .arg("p")
        .arg("pending")
        .arg("REASON")
        .arg("bank timeout")
        .query(&mut c)
        .unwrap();
    assert!(claim(&mut c, "w2", 10, 300).is_empty());
    // PAY.STUCK still lists leased payments.
    assert_eq!(stuck_keys(&mut c), ["p"]);
    std::thread::sleep(Duration::from_millis(350));
    let again = claim(&mut c, "w2", 10, 300);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["lease_owner"], "w2");
    assert_eq!(again[0]["attempts"], "2");
    assert_eq!(again[0]["reason"], "bank timeout");
    assert_eq!(info_field(&mut c, "leases_expired"), 1);
    // Resolving ends the lease; the payment is no longer claimable or listed.
    let done = update(&mut c, "p", "succeeded");
    assert_eq!(done["lease_owner"], "");
    std::thread::sleep(Duration::from_millis(350));
    assert!(claim(&mut c, "w3", 10, 300).is_empty());
    assert!(stuck_keys(&mut c).is_empty());
}

#[test]
fn claims_respect_older_and_count() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "old", "u", 1, "USD");
    std::thread::sleep(Duration::from_millis(200));
    cache(&mut c, "new", "u", 1, "USD");
    let v: Value = redis::cmd("PAY.CLAIM")
        .arg("w")
        .arg("LEASE")
        .arg(1000)
        .arg("OLDER")
        .arg(150)
        .query(&mut c)
        .unwrap();
    let Value::Array(items) = v else { panic!() };
    assert_eq!(items.len(), 1);
    assert_eq!(record(&items[0])["transaction_id"], "old");
    assert_eq!(check(&mut c, "new").unwrap()["attempts"], "0");
}

#[test]
fn a_replica_shows_flags_and_leases_but_sweeps_only_once_promoted() {
    let primary = Server::with(fast_sweeper());
    let replica = Server::with(fast_sweeper());
    replicate(&replica, &primary);
    let mut p = primary.conn();
    let mut r = replica.conn();
    for i in 0..5 {
        cache(&mut p, &format!("p{i}"), "u", i, "USD");
    }
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut p,
        "records_stale"
    ) == 5));
    claim(&mut p, "w1", 2, 60_000);
    let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut p).unwrap();
    assert_eq!(n, 1);
    assert_eq!(snapshot(&mut r, &[0]).len(), 5);
    let tolerance = expire_tolerance_ms(&mut p);
    assert_same_records(&snapshot(&mut p, &[0]), &snapshot(&mut r, &[0]), tolerance);
    assert_eq!(info_field(&mut r, "records_stale"), 5, "flags replicate");
    assert_eq!(
        info_field(&mut r, "flagged"),
        0,
        "the replica flagged by itself"
    );
    assert_eq!(info_field(&mut r, "sweeps"), 0);
    // Claims are writes: a replica refuses them.
    let e = err(
        &mut r,
        redis::cmd("PAY.CLAIM").arg("w").arg("LEASE").arg(100),
    );
    assert!(e.starts_with("READONLY"), "{e}");
    // New payments reach the replica; then it is promoted and sweeps them.
    for i in 0..3 {
        cache(&mut p, &format!("q{i}"), "u", i, "USD");
    }
    let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut p).unwrap();
    assert_eq!(n, 1);
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut r, "flagged"
    ) == 3));
    assert_eq!(info_field(&mut r, "records_stale"), 8);
    // Leases survived the promotion.
    let leased = snapshot(&mut r, &[0])
        .values()
        .filter(|(rec, _)| rec["lease_owner"] == "w1")
        .count();
    assert_eq!(leased, 2);
    assert_index_exact(&mut r, &[0]);
}

#[test]
fn a_demoted_primary_stops_sweeping() {
    let a = Server::with(fast_sweeper());
    let b = Server::with(fast_sweeper());
    let mut ca = a.conn();
    cache(&mut ca, "mine", "u", 1, "USD");
    replicate(&a, &b); // a becomes a replica of b: its own data is replaced
    let sweeps = info_field(&mut ca, "sweeps");
    std::thread::sleep(Duration::from_millis(4 * SWEEP_MS));
    assert_eq!(
        info_field(&mut ca, "sweeps"),
        sweeps,
        "a replica kept sweeping"
    );
}

#[test]
fn subscribers_of_pay_stale_hear_about_flagged_payments() {
    let s = Server::with(fast_sweeper().config("notify-keyspace-events", "Ed"));
    let mut sub = s.conn();
    let mut ps = sub.as_pubsub();
    ps.subscribe("pay:stale").unwrap();
    ps.psubscribe("__keyevent@0__:pay.stale").unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = s.conn();
    cache(&mut c, "a", "u", 1, "USD");
    cache(&mut c, "b", "u", 1, "USD");
    let mut flagged_keys = BTreeSet::new();
    let mut announced = 0;
    while flagged_keys.len() < 2 || announced < 2 {
        let msg = ps.get_message().expect("a message within 5 s");
        if msg.get_channel_name() == "pay:stale" {
            announced += msg.get_payload::<String>().unwrap().parse::<i64>().unwrap();
        } else {
            flagged_keys.insert(msg.get_payload::<String>().unwrap());
        }
    }
    assert_eq!(flagged_keys, set(&["a", "b"]));
    assert_eq!(announced, 2);
}

#[test]
fn a_mass_of_stale_payments_is_flagged_in_bounded_batches() {
    const N: usize = 100_000;
    let s = Server::with(fast_sweeper());
    let mut c = s.conn();
    cache_many(&mut c, "m", N);
    assert_eq!(info_field(&mut c, "records_pending"), N as i64);
    assert!(
        wait_until(Duration::from_secs(60), || info_field(&mut c, "flagged")
            == N as i64),
        "flagged {} of {N}",
        info_field(&mut c, "flagged")
    );
    let max_batch = info_field(&mut c, "sweep_max_batch");
    assert!(max_batch <= 500, "one tick handled {max_batch} payments");
    assert!(info_field(&mut c, "sweeps") >= (N / 500) as i64);
    assert_eq!(info_field(&mut c, "records_stale"), N as i64);
    assert_eq!(info_field(&mut c, "index_misses"), 0);
}

#[test]
fn payments_in_every_database_are_flagged() {
    let s = Server::with(fast_sweeper());
    let mut c = s.conn();
    for db in [0, 5, 9] {
        select(&mut c, db);
        for i in 0..3 {
            cache(&mut c, &format!("db{db}-{i}"), "u", 1, "USD");
        }
    }
    select(&mut c, 0);
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut c,
        "records_stale"
    ) == 9));
    for db in [0, 5, 9] {
        select(&mut c, db);
        for i in 0..3 {
            assert_eq!(check(&mut c, &format!("db{db}-{i}")).unwrap()["stale"], "1");
        }
    }
    select(&mut c, 0);
    assert_index_exact(&mut c, &[0, 5, 9]);
}
