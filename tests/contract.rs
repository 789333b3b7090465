//! Contract version 2 as a client sees it: the `unknown` status and every
//! transition, lifetime (unresolved payments never expire; resolved ones
//! live their TTL from then), PAY.CLAIM with FENCE and RETRY, ACL key
//! permissions on listings and claims, and `pay.key-prefix`.

use std::time::Duration;

use redis::{Connection, Value};
use testkit::*;

const STATUSES: [&str; 4] = ["pending", "unknown", "succeeded", "failed"];

fn update_with(
    c: &mut Connection,
    key: &str,
    status: &str,
    opts: &[&str],
) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("PAY.UPDATE");
    cmd.arg(key).arg(status);
    for o in opts {
        cmd.arg(*o);
    }
    cmd.query(c)
}

#[test]
fn every_status_pair_is_allowed_or_refused_as_the_contract_says() {
    let s = Server::start();
    let mut c = s.conn();
    for from in STATUSES {
        for to in STATUSES {
            let key = format!("{from}-{to}");
            cache(&mut c, &key, "u", 1, "USD");
            if from != "pending" {
                update(&mut c, &key, from);
            }
            let before = check(&mut c, &key).unwrap();
            let got = update_with(&mut c, &key, to, &[]);
            let allowed = match (from, to) {
                ("succeeded" | "failed", _) => from == to,
                _ => true,
            };
            match got {
                Ok(v) if allowed => {
                    assert_eq!(record(&v)["status"], to, "{from} -> {to}");
                }
                Err(e) if !allowed => {
                    assert_eq!(e.code(), Some("TRANSITION"), "{from} -> {to}: {e}");
                    assert_eq!(
                        check(&mut c, &key).unwrap(),
                        before,
                        "{from} -> {to} changed it"
                    );
                }
                other => panic!("{from} -> {to}: {other:?}"),
            }
        }
    }
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn a_fenced_update_from_a_stale_worker_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "p", "u", 1, "USD");
    let first = claim(&mut c, "w1", 1, 50);
    assert_eq!(first[0]["attempts"], "1");
    std::thread::sleep(Duration::from_millis(60));
    let second = claim(&mut c, "w2", 1, 60_000);
    assert_eq!(second[0]["attempts"], "2");
    let ok = update_with(&mut c, "p", "succeeded", &["REF", "ch_2", "FENCE", "2"]).unwrap();
    assert_eq!(record(&ok)["status"], "succeeded");
    let before = check(&mut c, "p").unwrap();
    // The stalled first worker wakes up and writes its (wrong) answer.
    let e = update_with(&mut c, "p", "failed", &["REASON", "timeout", "FENCE", "1"]).unwrap_err();
    assert_eq!(e.code(), Some("FENCED"), "{e}");
    assert_eq!(check(&mut c, "p").unwrap(), before);
    // Even the same status again is refused under a stale fence.
    let e = update_with(&mut c, "p", "succeeded", &["FENCE", "1"]).unwrap_err();
    assert_eq!(e.code(), Some("FENCED"));
    assert_eq!(info_field(&mut c, "fenced"), 2);
}

#[test]
fn retry_holds_a_payment_back_from_claims_until_it_runs_out() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "p", "u", 1, "USD");
    let claimed = claim(&mut c, "w1", 1, 60_000);
    assert_eq!(claimed.len(), 1);
    // The worker saw a transient error and chose a 300 ms back-off.
    let v = update_with(
        &mut c,
        "p",
        "pending",
        &["REASON", "503", "RETRY", "300", "FENCE", "1"],
    )
    .unwrap();
    let r = record(&v);
    assert_eq!(r["reason"], "503");
    let held: i64 = r["lease_until"].parse().unwrap();
    let updated: i64 = r["updated_at"].parse().unwrap();
    assert_eq!(
        held,
        updated + 300,
        "the hold is the RETRY from now, not the lease"
    );
    assert!(
        claim(&mut c, "w2", 1, 60_000).is_empty(),
        "claimed while held back"
    );
    assert_eq!(stuck_keys(&mut c), ["p"], "still listed");
    std::thread::sleep(Duration::from_millis(320));
    let again = claim(&mut c, "w2", 1, 60_000);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["attempts"], "2");
    // An operator sends an unknown payment back to the retries at once.
    update_with(&mut c, "p", "unknown", &["RETRY", "3600000", "FENCE", "2"]).unwrap();
    assert!(claim(&mut c, "w3", 1, 60_000).is_empty());
    update_with(&mut c, "p", "pending", &["RETRY", "0"]).unwrap();
    assert_eq!(claim(&mut c, "w3", 1, 60_000).len(), 1);
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn unknown_payments_are_listed_claimed_and_counted() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "u1", "u", 1, "USD");
    cache(&mut c, "p1", "u", 1, "USD");
    update_with(
        &mut c,
        "u1",
        "unknown",
        &["REASON", "gave up after 10 attempts"],
    )
    .unwrap();
    assert_eq!(info_field(&mut c, "records_unknown"), 1);
    assert_eq!(info_field(&mut c, "records_pending"), 1);
    let listed: Vec<(String, String)> = stuck_records(&mut c)
        .into_iter()
        .map(|r| (r["transaction_id"].clone(), r["status"].clone()))
        .collect();
    assert!(
        listed.contains(&("u1".into(), "unknown".into())),
        "{listed:?}"
    );
    let claimed: Vec<String> = claim(&mut c, "w", 10, 1000)
        .into_iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.contains(&"unknown".to_string()));
    assert_index_exact(&mut c, &[0]);
}

/// A primary and a replica with AOF: `pending` and `unknown` carry no expiry
/// anywhere; a resolved one carries the same absolute expiry on the primary,
/// the replica and after an AOF reload.
fn lifetime_everywhere(preamble: &str) {
    let aof = Opts::new()
        .config("appendonly", "yes")
        .config("aof-use-rdb-preamble", preamble);
    let primary = Server::with(aof.clone());
    let replica = Server::with(aof);
    replicate(&replica, &primary);
    let mut p = primary.conn();
    let mut r = replica.conn();
    for k in ["pending", "unknown", "done"] {
        let _: Value = redis::cmd("PAY.CACHE")
            .arg(k)
            .arg("u")
            .arg(1)
            .arg("USD")
            .arg("TTL")
            .arg(600)
            .query(&mut p)
            .unwrap();
    }
    update(&mut p, "unknown", "unknown");
    let done = update(&mut p, "done", "succeeded");
    let at: i64 = done["updated_at"].parse::<i64>().unwrap() + 600_000;
    let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut p).unwrap();
    assert_eq!(n, 1);
    let _: Value = redis::cmd("BGREWRITEAOF").query(&mut p).unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        let info: String = redis::cmd("INFO").arg("persistence").query(&mut p).unwrap();
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    }));
    let _: Value = redis::cmd("DEBUG").arg("LOADAOF").query(&mut p).unwrap();
    for (who, c) in [("primary", &mut p), ("replica", &mut r)] {
        assert_eq!(pexpiretime(c, "pending"), -1, "{who}: pending expires");
        assert_eq!(pexpiretime(c, "unknown"), -1, "{who}: unknown expires");
        assert_eq!(pexpiretime(c, "done"), at, "{who}: resolved expiry");
    }
    assert_index_exact(&mut p, &[0]);
}

#[test]
fn lifetime_holds_on_replica_and_aof_reload_with_rdb_preamble() {
    lifetime_everywhere("yes");
}

#[test]
fn lifetime_holds_on_replica_and_aof_reload_without_rdb_preamble() {
    lifetime_everywhere("no");
}

fn acl(c: &mut Connection, args: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    for a in args {
        cmd.arg(*a);
    }
    let _: () = cmd.query(c).unwrap();
}

fn as_user(s: &Server, user: &str) -> Connection {
    let mut c = s.conn();
    let _: () = redis::cmd("AUTH")
        .arg(user)
        .arg("pw")
        .query(&mut c)
        .unwrap();
    c
}

#[test]
fn tenants_list_and_lease_only_the_keys_their_acl_allows() {
    let s = Server::start();
    let mut admin = s.conn();
    for t in ["tenantA", "tenantB"] {
        for i in 0..3 {
            cache(&mut admin, &format!("{t}:txn_{i}"), "u", 1, "USD");
        }
    }
    // Tenant A, with a selector that lets it GET tenant B's keys (and
    // nothing else of B): that selector must grant no PAY.* access to B.
    acl(
        &mut admin,
        &[
            "SETUSER",
            "a",
            "on",
            ">pw",
            "~tenantA:*",
            "-@all",
            "+pay.stuck",
            "+pay.claim",
            "+pay.check",
            "+pay.update",
            "(~tenantB:* -@all +get)",
        ],
    );
    // Support for tenant B: may check and list, may not update.
    acl(
        &mut admin,
        &[
            "SETUSER",
            "reader",
            "on",
            ">pw",
            "~tenantB:*",
            "-@all",
            "+pay.stuck",
            "+pay.claim",
            "+pay.check",
        ],
    );
    let mut a = as_user(&s, "a");
    // NOPERM on another tenant's key, as for any Redis command...
    let e = redis::cmd("PAY.CHECK")
        .arg("tenantB:txn_0")
        .query::<Value>(&mut a)
        .unwrap_err();
    assert!(
        e.to_string().contains("NOPERM") || e.code() == Some("NOPERM"),
        "{e}"
    );
    // ... and nothing of it in listings or claims.
    let seen = stuck_set(&mut a);
    assert_eq!(
        seen,
        set(&["tenantA:txn_0", "tenantA:txn_1", "tenantA:txn_2"])
    );
    let leased: Vec<String> = claim(&mut a, "evil", 100, 86_400_000)
        .into_iter()
        .map(|r| r["key"].clone())
        .collect();
    assert_eq!(leased.len(), 3);
    assert!(
        leased.iter().all(|k| k.starts_with("tenantA:")),
        "{leased:?}"
    );
    for i in 0..3 {
        let r = check(&mut admin, &format!("tenantB:txn_{i}")).unwrap();
        assert_eq!(
            (r["attempts"].as_str(), r["lease_owner"].as_str()),
            ("0", "")
        );
    }
    // Checking and listing B, never updating: B's payments are listed, but
    // never leased.
    let mut reader = as_user(&s, "reader");
    assert_eq!(stuck_set(&mut reader).len(), 3);
    assert!(claim(&mut reader, "support", 100, 1000).is_empty());
    assert_eq!(check(&mut admin, "tenantB:txn_0").unwrap()["attempts"], "0");
}

#[test]
fn the_key_prefix_is_stripped_from_the_transaction_id() {
    let s = Server::with(Opts::new().module_arg("key-prefix").module_arg("payment:"));
    let mut c = s.conn();
    let r = cache(&mut c, "payment:txn_12345", "67890", 1000, "USD");
    assert_eq!(r["transaction_id"], "txn_12345");
    assert_eq!(r["key"], "payment:txn_12345");
    let json: String = redis::cmd("PAY.CHECK")
        .arg("payment:txn_12345")
        .arg("JSON")
        .query(&mut c)
        .unwrap();
    assert!(
        json.starts_with(r#"{"transaction_id":"txn_12345","user_id":67890,"status":"pending""#),
        "{json}"
    );
    // A key outside the namespace, or the prefix alone, would share a
    // transaction id (the provider's idempotency key) with a key inside it:
    // `other:1` with `payment:other:1`. PAY.CACHE refuses them, and creates
    // nothing.
    for key in ["other:1", "payment:"] {
        let e = err(
            &mut c,
            redis::cmd("PAY.CACHE").arg(key).arg("u").arg(1).arg("USD"),
        );
        assert!(
            e.starts_with("ERR key must start with pay.key-prefix 'payment:'"),
            "{e}"
        );
        assert!(check(&mut c, key).is_none(), "{key}");
    }
    assert_eq!(
        cache(&mut c, "payment:other:1", "u", 1, "USD")["transaction_id"],
        "other:1"
    );
    // Immutable at run time: changing it would change the transaction id
    // (the provider's idempotency key) of every payment in flight.
    for value in ["", "other:", "a\0b"] {
        let e = err(
            &mut c,
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("pay.key-prefix")
                .arg(value),
        );
        assert!(e.starts_with("ERR"), "{e}");
    }
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("pay.key-prefix")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, ["pay.key-prefix", "payment:"]);
    assert_eq!(
        check(&mut c, "payment:txn_12345").unwrap()["transaction_id"],
        "txn_12345"
    );
}

#[test]
fn any_write_that_leaves_a_payment_unresolved_removes_an_expiry_everywhere() {
    // An expiry on an unresolved payment (one written before contract v2, or
    // an operator's PEXPIRE) is removed by the next update, claim or sweep,
    // on the primary and on its replicas.
    let primary = Server::with(Opts::sweeper(300, 10));
    let replica = Server::with(Opts::sweeper(300, 10));
    replicate(&replica, &primary);
    let mut p = primary.conn();
    let mut r = replica.conn();
    let expiring = |c: &mut Connection, k: &str| {
        cache(c, k, "u", 1, "USD");
        let _: i64 = redis::cmd("PEXPIRE").arg(k).arg(60_000).query(c).unwrap();
    };
    expiring(&mut p, "claimed");
    assert_eq!(claim(&mut p, "w", 10, 60_000).len(), 1);
    expiring(&mut p, "updated");
    expiring(&mut p, "swept");
    update_with(&mut p, "updated", "unknown", &[]).unwrap();
    // The sweeper flags it (the claimed one is held, so it is not swept).
    assert!(wait_until(Duration::from_secs(5), || check(
        &mut p, "swept"
    )
    .is_some_and(|r| r["stale"] == "1")));
    let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut p).unwrap();
    assert_eq!(n, 1);
    for k in ["updated", "claimed", "swept"] {
        assert_eq!(pexpiretime(&mut p, k), -1, "primary: {k} still expires");
        assert_eq!(pexpiretime(&mut r, k), -1, "replica: {k} still expires");
    }
}

#[test]
fn claims_survive_a_raised_stale_window() {
    // Records flagged stale, then pay.stale-after-ms raised: they are younger
    // than the new window. A claim without OLDER must not crash the server.
    let s = Server::with(Opts::sweeper(100, 10));
    let mut c = s.conn();
    cache(&mut c, "k1", "u", 1, "USD");
    cache(&mut c, "k0", "u", 1, "USD");
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut c,
        "records_stale"
    ) == 2));
    cache(&mut c, "fresh", "u", 1, "USD");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.stale-after-ms")
        .arg(3_600_000)
        .query(&mut c)
        .unwrap();
    for count in [1, 10] {
        let v: Value = redis::cmd("PAY.CLAIM")
            .arg("w")
            .arg("LEASE")
            .arg(60_000)
            .arg("COUNT")
            .arg(count)
            .query(&mut c)
            .unwrap();
        let Value::Array(items) = v else {
            panic!("{v:?}")
        };
        assert!(items.len() <= 2);
    }
    let leased = stuck_records(&mut c)
        .iter()
        .filter(|r| r["lease_owner"] == "w")
        .count();
    assert_eq!(leased, 2, "both stale records, not the fresh one");
    assert_index_exact(&mut c, &[0]);
}

#[test]
fn info_always_shows_every_record_count_and_the_settings() {
    let s = Server::with(Opts::new().module_arg("alert-after-ms").module_arg("1234"));
    let mut c = s.conn();
    cache_many(&mut c, "f", 200_000);
    let mut flusher = s.conn();
    let _: () = redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query(&mut flusher)
        .unwrap();
    // While the lazy-free thread releases records, INFO never drops a field.
    for _ in 0..2000 {
        let info: String = redis::cmd("INFO").arg("pay").query(&mut c).unwrap();
        for field in [
            "pay_records_pending:",
            "pay_records_unknown:",
            "pay_records_succeeded:",
            "pay_records_failed:",
            "pay_records_stale:",
        ] {
            assert!(info.contains(field), "{field} missing:\n{info}");
        }
    }
    assert_eq!(info_field(&mut c, "alert_after_ms"), 1234);
    assert_eq!(info_field(&mut c, "stale_after_ms"), 300_000);
}

#[test]
fn stuck_orders_equal_ages_by_key_and_claim_stays_cheap_with_many_leased() {
    let s = Server::start();
    let mut c = s.conn();
    // Pipelined: many records share a millisecond.
    let mut pipe = redis::pipe();
    for i in (0..200).rev() {
        pipe.cmd("PAY.CACHE")
            .arg(format!("k{i:03}"))
            .arg("u")
            .arg(1)
            .arg("USD")
            .ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let listed: Vec<(i64, String)> = stuck_records(&mut c)
        .into_iter()
        .map(|r| (r["created_at"].parse().unwrap(), r["key"].clone()))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    // COUNT cuts after ordering by key within an age.
    let first: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(3)
        .query(&mut c)
        .unwrap();
    let Value::Array(first) = first else { panic!() };
    let keys: Vec<String> = first.iter().map(|v| record(v)["key"].clone()).collect();
    let expect: Vec<String> = sorted.iter().take(3).map(|(_, k)| k.clone()).collect();
    assert_eq!(keys, expect);
    // Lease all but one; the last one is still found at once.
    assert_eq!(claim(&mut c, "w", 199, 60_000).len(), 199);
    let last = claim(&mut c, "w2", 10, 60_000);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["lease_owner"], "w2");
    assert_eq!(
        stuck_records(&mut c)
            .iter()
            .filter(|r| r["lease_owner"] == "w")
            .count(),
        199
    );
    assert_index_exact(&mut c, &[0]);
}

/// A pending record in codec version 2, created at `created_at`.
fn v2_blob(created_at: i64) -> Vec<u8> {
    let mut b = vec![2u8, 0, 0];
    b.extend_from_slice(b"USD");
    for n in [1i64, created_at, created_at] {
        b.extend_from_slice(&n.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes()); // attempts
    b.extend_from_slice(&86_400u32.to_le_bytes()); // TTL
    for s in [&b"u"[..], b"", b""] {
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s);
    }
    b
}

#[test]
fn a_record_dated_ahead_of_the_clock_is_listed_and_swept() {
    // Written by a primary whose clock ran an hour ahead (a failover to a
    // replica whose clock is behind): OLDER 0 lists it, and the sweeper,
    // which cannot age it, flags it at once.
    let s = Server::with(Opts::sweeper(1000, 10));
    let mut c = s.conn();
    let now: i64 = cache(&mut c, "clock", "u", 1, "USD")["created_at"]
        .parse()
        .unwrap();
    let payload = record_payload(&mut c, &v2_blob(now + 3_600_000));
    let _: () = redis::cmd("RESTORE")
        .arg("ahead")
        .arg(0)
        .arg(payload)
        .query(&mut c)
        .unwrap();
    assert!(stuck_set(&mut c).contains("ahead"), "OLDER 0 lists it");
    assert!(wait_until(Duration::from_secs(5), || check(
        &mut c, "ahead"
    )
    .is_some_and(|r| r["stale"] == "1")));
    assert_eq!(claim(&mut c, "w", 10, 60_000).len(), 2);
    assert_index_exact(&mut c, &[0]);
}
