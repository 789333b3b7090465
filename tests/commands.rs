//! The command contract, against a real server with the module loaded.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use redis::Value;
use testkit::*;

#[test]
fn cache_creates_a_pending_record_with_server_timestamps() {
    let s = Server::start();
    let mut c = s.conn();
    let before: i64 = redis::cmd("TIME")
        .query::<Vec<i64>>(&mut c)
        .map(|t| t[0] * 1000 + t[1] / 1000)
        .unwrap();
    let r = cache(&mut c, "txn_12345", "67890", 1000, "usd");
    assert_eq!(r["outcome"], "created");
    assert_eq!(r["transaction_id"], "txn_12345");
    assert_eq!(r["user_id"], "67890");
    assert_eq!(r["amount"], "1000");
    assert_eq!(r["currency"], "USD");
    assert_eq!(r["status"], "pending");
    assert_eq!(r["attempts"], "0");
    assert_eq!(r["stale"], "0");
    assert_eq!(r["reason"], "");
    assert_eq!(r["provider_ref"], "");
    let created: i64 = r["created_at"].parse().unwrap();
    assert!(
        created >= before && created < before + 5000,
        "{created} vs {before}"
    );
    assert_eq!(r["updated_at"], r["created_at"]);
}

#[test]
fn duplicate_cache_returns_first_record_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    let first = cache(&mut c, "txn_1", "u1", 1000, "EUR");
    let d = digest(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let again = cache(&mut c, "txn_1", "u1", 1000, "eur");
    assert_eq!(again["outcome"], "duplicate");
    let strip = |mut m: BTreeMap<String, String>| {
        m.remove("outcome");
        m
    };
    assert_eq!(strip(again), strip(first));
    assert_eq!(digest(&mut c), d);
    assert_eq!(info_field(&mut c, "created"), 1);
    assert_eq!(info_field(&mut c, "duplicates"), 1);
}

/// An operator's COPY (or RENAME, or RESTORE) can leave under an
/// application's idempotency key a payment created under another: a
/// PAY.CACHE with the same terms must not take it for its own payment and
/// answer `duplicate` with that payment's status ("succeeded", for an order
/// the provider never charged).
#[test]
fn a_payment_moved_onto_a_key_is_not_that_keys_duplicate() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "txn_1", "u1", 1000, "EUR");
    update(&mut c, "txn_1", "succeeded");
    let _: i64 = redis::cmd("COPY")
        .arg("txn_1")
        .arg("txn_2")
        .query(&mut c)
        .unwrap();
    let e = err(
        &mut c,
        redis::cmd("PAY.CACHE")
            .arg("txn_2")
            .arg("u1")
            .arg(1000)
            .arg("EUR"),
    );
    assert!(e.starts_with("MISMATCH"), "{e}");
    assert_eq!(check(&mut c, "txn_2").unwrap()["transaction_id"], "txn_1");
    // Under the key it was created under, it is the same payment again.
    assert_eq!(
        cache(&mut c, "txn_1", "u1", 1000, "EUR")["outcome"],
        "duplicate"
    );
}

/// BRIEF: the same de-duplication, with only the outcome and the status in
/// the reply (a map of two fields in RESP3, a flat array in RESP2).
#[test]
fn brief_cache_replies_outcome_and_status_only() {
    let s = Server::start();
    let mut c = s.conn();
    let mut c3 = s.conn3();
    let brief = |c: &mut redis::Connection, key: &str, amount: i64| -> redis::RedisResult<Value> {
        redis::cmd("PAY.CACHE")
            .arg(key)
            .arg("u1")
            .arg(amount)
            .arg("EUR")
            .arg("BRIEF")
            .query(c)
    };
    let created = brief(&mut c, "txn_b", 1000).unwrap();
    assert_eq!(
        record(&created),
        BTreeMap::from([
            ("outcome".to_string(), "created".to_string()),
            ("status".to_string(), "pending".to_string())
        ])
    );
    // The record is the same as without BRIEF, and BRIEF is idempotent too.
    let full = check(&mut c, "txn_b").unwrap();
    assert_eq!(full["amount"], "1000");
    assert_eq!(full["user_id"], "u1");
    update(&mut c, "txn_b", "succeeded");
    let d = digest(&mut c);
    let again = brief(&mut c3, "txn_b", 1000).unwrap();
    match &again {
        Value::Map(m) => assert_eq!(m.len(), 2),
        other => panic!("RESP3 reply: {other:?}"),
    }
    let again = record(&again);
    assert_eq!(again["outcome"], "duplicate");
    assert_eq!(again["status"], "succeeded");
    let err = brief(&mut c, "txn_b", 999).unwrap_err();
    assert!(err.to_string().contains("MISMATCH"), "{err}");
    assert_eq!(digest(&mut c), d);
    assert_eq!(info_field(&mut c, "created"), 1);
    assert_eq!(info_field(&mut c, "duplicates"), 1);
}

#[test]
fn cache_with_other_parameters_is_a_mismatch_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "txn_1", "u1", 1000, "EUR");
    let d = digest(&mut c);
    for (user, amount, cur, what) in [
        ("u2", 1000, "EUR", "user_id"),
        ("u1", 1001, "EUR", "amount"),
        ("u1", 1000, "USD", "currency"),
    ] {
        let e = err(
            &mut c,
            redis::cmd("PAY.CACHE")
                .arg("txn_1")
                .arg(user)
                .arg(amount)
                .arg(cur),
        );
        assert!(e.starts_with("MISMATCH"), "{e}");
        assert!(e.contains(what), "{e}");
    }
    assert_eq!(digest(&mut c), d);
    assert_eq!(info_field(&mut c, "mismatches"), 3);
}

#[test]
fn pay_commands_on_a_key_of_another_type_are_wrongtype() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("v")
        .query(&mut c)
        .unwrap();
    let d = digest(&mut c);
    for cmd in [
        redis::cmd("PAY.CACHE")
            .arg("plain")
            .arg("u")
            .arg(1)
            .arg("USD")
            .clone(),
        redis::cmd("PAY.CHECK").arg("plain").clone(),
        redis::cmd("PAY.UPDATE").arg("plain").arg("failed").clone(),
    ] {
        assert!(err(&mut c, &cmd).starts_with("WRONGTYPE"));
    }
    assert_eq!(digest(&mut c), d);
    let t: String = redis::cmd("TYPE").arg("plain").query(&mut c).unwrap();
    assert_eq!(t, "string");
}

#[test]
fn replies_are_a_map_in_resp3_and_a_flat_array_in_resp2() {
    let s = Server::start();
    let mut c2 = s.conn();
    let mut c3 = s.conn3();
    cache(&mut c2, "k", "u", 5, "USD");
    let v2: Value = redis::cmd("PAY.CHECK").arg("k").query(&mut c2).unwrap();
    let v3: Value = redis::cmd("PAY.CHECK").arg("k").query(&mut c3).unwrap();
    match &v2 {
        Value::Array(a) => {
            assert_eq!(a.len(), 28);
            assert_eq!(text(&a[0]), "transaction_id");
            assert_eq!(a[5], Value::Int(5), "amount is an integer");
        }
        other => panic!("RESP2 reply: {other:?}"),
    }
    assert!(matches!(v3, Value::Map(_)), "RESP3 reply: {v3:?}");
    assert_eq!(record(&v2), record(&v3));
    let created: Value = redis::cmd("PAY.CACHE")
        .arg("k2")
        .arg("u")
        .arg(1)
        .arg("USD")
        .query(&mut c3)
        .unwrap();
    match created {
        Value::Map(m) => assert_eq!(text(&m[0].0), "outcome"),
        other => panic!("{other:?}"),
    }
}

/// `PAY.CHECK key format` (JSON, in any case).
fn check_as(c: &mut redis::Connection, key: &str, format: &str) -> Value {
    redis::cmd("PAY.CHECK")
        .arg(key)
        .arg(format)
        .query(c)
        .unwrap()
}

#[test]
fn check_returns_nil_for_an_absent_key_and_the_service_json_shape() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(check(&mut c, "nope"), None);
    assert_eq!(check_as(&mut c, "nope", "JSON"), Value::Nil);
    let r = cache(&mut c, "txn_12345", "67890", 1000, "USD");
    let json = text(&check_as(&mut c, "txn_12345", "JSON"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["transaction_id"], "txn_12345");
    assert_eq!(v["user_id"], 67890);
    assert_eq!(v["status"], "pending");
    assert_eq!(v["amount"], 1000);
    assert_eq!(v["currency"], "USD");
    let created: i64 = r["created_at"].parse().unwrap();
    assert_eq!(v["created_at"], created);
    let ts = v["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2024-01-30T12:45:00Z".len());
    assert!(ts.ends_with('Z'));
    assert!(json.starts_with(r#"{"transaction_id":"txn_12345","user_id":67890,"status":"pending","amount":1000,"currency":"USD","timestamp":""#));
    cache(&mut c, "txn_2", "user-abc", 1, "USD");
    let json = text(&check_as(&mut c, "txn_2", "json"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["user_id"], "user-abc");
}

#[test]
fn update_follows_the_state_machine() {
    let s = Server::start();
    let mut c = s.conn();
    let created = cache(&mut c, "t", "u", 10, "USD");
    // pending -> pending records a transient error.
    let r = update_with(&mut c, "t", "pending", "REASON", "bank timeout");
    assert_eq!(
        (r["status"].as_str(), r["reason"].as_str()),
        ("pending", "bank timeout")
    );
    assert!(r["updated_at"] >= created["updated_at"]);
    // pending -> succeeded with the provider's reference.
    let done = update_with(&mut c, "t", "SUCCEEDED", "REF", "ch_1");
    assert_eq!(
        (done["status"].as_str(), done["provider_ref"].as_str()),
        ("succeeded", "ch_1")
    );
    // Same terminal status again: idempotent no-op.
    let d = digest(&mut c);
    let again = update(&mut c, "t", "succeeded");
    assert_eq!(again, done);
    assert_eq!(digest(&mut c), d);
    // Any other change of a terminal status is refused.
    for to in ["failed", "pending"] {
        let e = err(&mut c, redis::cmd("PAY.UPDATE").arg("t").arg(to));
        assert!(e.starts_with("TRANSITION"), "{e}");
    }
    assert_eq!(digest(&mut c), d);
    // pending -> failed with a reason.
    cache(&mut c, "t2", "u", 10, "USD");
    let r = update_with(&mut c, "t2", "failed", "REASON", "card declined");
    assert_eq!(
        (r["status"].as_str(), r["reason"].as_str()),
        ("failed", "card declined")
    );
    assert_eq!(info_field(&mut c, "updates"), 3);
}

#[test]
fn update_of_a_missing_payment_is_a_clear_error() {
    let s = Server::start();
    let mut c = s.conn();
    let e = err(&mut c, redis::cmd("PAY.UPDATE").arg("ghost").arg("failed"));
    assert_eq!(e, "NOPAYMENT no such payment");
    let n: i64 = redis::cmd("EXISTS").arg("ghost").query(&mut c).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn stuck_lists_pending_oldest_first_with_older_and_count() {
    // Long enough that a server under valgrind gets through the first checks
    // before any of these payments is stale.
    let s = Server::with(Opts::new().module_arg("stale-after-ms").module_arg("2000"));
    let mut c = s.conn();
    for i in 0..5 {
        cache(&mut c, &format!("t{i}"), "u", 1, "USD");
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    update(&mut c, "t2", "succeeded");
    assert_eq!(stuck_keys(&mut c), ["t0", "t1", "t3", "t4"]);
    let v: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(2)
        .query(&mut c)
        .unwrap();
    let Value::Array(items) = v else { panic!() };
    let keys: Vec<String> = items
        .iter()
        .map(|r| record(r)["transaction_id"].clone())
        .collect();
    assert_eq!(keys, ["t0", "t1"]);
    // Default OLDER is pay.stale-after-ms (2 s here): nothing yet.
    let v: Value = redis::cmd("PAY.STUCK").query(&mut c).unwrap();
    assert_eq!(v, Value::Array(vec![]));
    let v: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(60_000)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, Value::Array(vec![]));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let v: Value = redis::cmd("PAY.STUCK").query(&mut c).unwrap();
    let Value::Array(items) = v else { panic!() };
    assert_eq!(items.len(), 4);
}

#[test]
fn unresolved_records_never_expire_and_resolved_ones_live_their_ttl_from_then() {
    let s = Server::with(Opts::new().module_arg("default-ttl").module_arg("100"));
    let mut c = s.conn();
    // PAY.CACHE of "explicit" with a TTL of its own (seconds).
    let cache_explicit = |c: &mut redis::Connection, ttl: i64| {
        let _: Value = redis::cmd("PAY.CACHE")
            .arg("explicit")
            .arg("u")
            .arg(1)
            .arg("USD")
            .arg("TTL")
            .arg(ttl)
            .query(c)
            .unwrap();
    };
    cache(&mut c, "default", "u", 1, "USD");
    cache_explicit(&mut c, 1);
    cache(&mut c, "unknown", "u", 1, "USD");
    // Pending: no expiry at all, whatever TTL was chosen.
    assert_eq!(pexpiretime(&mut c, "default"), -1);
    assert_eq!(pexpiretime(&mut c, "explicit"), -1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        check(&mut c, "explicit").is_some(),
        "a pending payment expired"
    );
    // Unknown: still none.
    update(&mut c, "unknown", "unknown");
    assert_eq!(pexpiretime(&mut c, "unknown"), -1);
    // Resolved: the TTL chosen at creation, counted from the resolution.
    let r = update(&mut c, "default", "succeeded");
    let resolved: i64 = r["updated_at"].parse().unwrap();
    assert_eq!(pexpiretime(&mut c, "default"), resolved + 100_000);
    // A duplicate PAY.CACHE with another TTL changes nothing.
    cache_explicit(&mut c, 500);
    assert_eq!(pexpiretime(&mut c, "explicit"), -1);
    let r = update(&mut c, "explicit", "failed");
    let resolved: i64 = r["updated_at"].parse().unwrap();
    assert_eq!(pexpiretime(&mut c, "explicit"), resolved + 1000);
    // The same terminal status again is a no-op: the TTL does not restart.
    std::thread::sleep(std::time::Duration::from_millis(20));
    update(&mut c, "explicit", "failed");
    assert_eq!(pexpiretime(&mut c, "explicit"), resolved + 1000);
    assert!(wait_until(std::time::Duration::from_secs(5), || check(
        &mut c, "explicit"
    )
    .is_none()));
    assert!(check(&mut c, "unknown").is_some());
}

#[test]
fn concurrent_cache_creates_each_key_exactly_once() {
    let s = Server::start();
    const THREADS: usize = 32;
    const KEYS: usize = 50;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let mut c = s.conn();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut created = Vec::new();
                for round in 0..4 {
                    for k in 0..KEYS {
                        let r = cache(&mut c, &format!("race:{k}"), "u", 100, "USD");
                        if r["outcome"] == "created" {
                            created.push(k);
                        }
                        let _ = round;
                    }
                }
                created
            })
        })
        .collect();
    let mut per_key = vec![0; KEYS];
    for h in handles {
        for k in h.join().unwrap() {
            per_key[k] += 1;
        }
    }
    assert!(
        per_key.iter().all(|&n| n == 1),
        "created counts: {per_key:?}"
    );
    let mut c = s.conn();
    assert_eq!(info_field(&mut c, "created"), KEYS as i64);
    assert_eq!(
        info_field(&mut c, "duplicates"),
        (THREADS * KEYS * 4 - KEYS) as i64
    );
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn writes_raise_keyspace_notifications() {
    let s = Server::with(Opts::new().config("notify-keyspace-events", "KEd"));
    let mut sub = s.conn();
    let mut ps = sub.as_pubsub();
    ps.psubscribe("__keyevent@0__:pay.*").unwrap();
    ps.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut c = s.conn();
    cache(&mut c, "n1", "u", 1, "USD");
    update(&mut c, "n1", "failed");
    let mut events = Vec::new();
    while events.len() < 2 {
        let msg = ps.get_message().unwrap();
        events.push((
            msg.get_channel_name().to_string(),
            msg.get_payload::<String>().unwrap(),
        ));
    }
    assert_eq!(
        events,
        [
            ("__keyevent@0__:pay.cache".to_string(), "n1".to_string()),
            ("__keyevent@0__:pay.update".to_string(), "n1".to_string())
        ]
    );
}

#[test]
fn info_pay_counts_records_by_status() {
    let s = Server::start();
    let mut c = s.conn();
    for i in 0..6 {
        cache(&mut c, &format!("k{i}"), "u", 1, "USD");
    }
    update(&mut c, "k0", "succeeded");
    update(&mut c, "k1", "succeeded");
    update(&mut c, "k2", "failed");
    assert_eq!(info_field(&mut c, "records_pending"), 3);
    assert_eq!(info_field(&mut c, "records_succeeded"), 2);
    assert_eq!(info_field(&mut c, "records_failed"), 1);
    assert_eq!(info_field(&mut c, "created"), 6);
    assert_eq!(info_field(&mut c, "updates"), 3);
    // Errors the module answers; a wrong argument count is the server's.
    let _ = err(&mut c, redis::cmd("PAY.CACHE").arg("x"));
    assert_eq!(info_field(&mut c, "errors"), 0);
    let _ = err(
        &mut c,
        redis::cmd("PAY.CACHE").arg("x").arg("u").arg(1).arg("US"),
    );
    assert_eq!(info_field(&mut c, "errors"), 1);
}
