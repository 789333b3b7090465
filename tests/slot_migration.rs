//! Moving hash slots that hold payments from one primary to another.
//!
//! Valkey 9's atomic slot migration (`CLUSTER MIGRATESLOTS`) loads the moving
//! keys into the target before the target owns them, where PAY.STUCK, PAY.STUCK
//! CLAIM, INFO and the sweeper would see them. The module does not declare
//! that it handles this (`VALKEYMODULE_OPTIONS_HANDLE_ATOMIC_SLOT_MIGRATION`),
//! so the server refuses the migration and nothing moves. Resharding key by
//! key with MIGRATE, as `redis-cli --cluster reshard` and `valkey-cli
//! --cluster reshard` do by default, carries every record intact and keeps
//! both indexes exact, on every server.

use std::collections::BTreeSet;

use redis::{Connection, Value};
use testkit::*;

/// Two primaries: `a` serves slots 0-8191, `b` 8192-16383. `a` holds
/// payments in slots 0-4095 (the ones to move: pending, pending after a
/// transient error, succeeded, failed; three leased) and in 4096-8191; `b` holds its own.
/// Returns the nodes and the keys to move.
fn two_shards_with_payments() -> (Server, Server, Vec<String>) {
    let (a, b) = (new_cluster_node(), new_cluster_node());
    form_cluster(&[&a, &b], &[(0, 8191), (8192, 16383)]);
    let (mut ca, mut cb) = (a.conn(), b.conn());

    let moving = keys_in_slots(&mut ca, "txn:", 0, 4095, 12);
    for (i, k) in moving.iter().enumerate() {
        cache(&mut ca, k, "67890", 1000 + i as i64, "usd");
        match i {
            0..=2 => drop(update(&mut ca, k, "succeeded")),
            3..=4 => drop(update(&mut ca, k, "failed")),
            5..=6 => {
                let _: Value = redis::cmd("PAY.UPDATE")
                    .arg(k)
                    .arg("pending")
                    .arg("REASON")
                    .arg("provider timeout")
                    .query(&mut ca)
                    .unwrap();
            }
            _ => {}
        }
    }
    // Leased before the other payments exist, so that every lease is on a
    // payment that moves.
    let leased: Vec<Value> = redis::cmd("PAY.CLAIM")
        .arg("c")
        .arg("LEASE")
        .arg(60_000)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(3)
        .query(&mut ca)
        .unwrap();
    assert_eq!(leased.len(), 3);

    for k in keys_in_slots(&mut ca, "stays:", 4096, 8191, 4) {
        cache(&mut ca, &k, "67890", 500, "EUR");
    }
    for k in keys_in_slots(&mut cb, "own:", 8192, 16383, 4) {
        cache(&mut cb, &k, "42", 700, "GBP");
    }
    (a, b, moving)
}

/// The lease fields of the record under `key`.
fn lease(c: &mut Connection, key: &str) -> (String, String) {
    let r = check(c, key).expect("payment");
    (r["lease_owner"].clone(), r["lease_until"].clone())
}

#[test]
fn atomic_slot_migration_is_refused_and_every_payment_stays_put() {
    let (mut a, mut b, moving) = two_shards_with_payments();
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let (kind, version) = server_version(&mut ca);
    if kind != "valkey" || version < (9, 0) {
        eprintln!("skipped: CLUSTER MIGRATESLOTS is Valkey 9.0+ (this is {kind} {version:?})");
        return;
    }
    let leases: Vec<_> = moving.iter().map(|k| lease(&mut ca, k)).collect();
    assert_eq!(
        leases.iter().filter(|(owner, _)| owner == "c").count(),
        3,
        "leases: {leases:?}"
    );
    let (before_a, before_b) = (snapshot(&mut ca, &[0]), snapshot(&mut cb, &[0]));
    let (log_a, log_b) = (a.log().len(), b.log().len());

    let refused = err(
        &mut ca,
        redis::cmd("CLUSTER")
            .arg("MIGRATESLOTS")
            .arg("SLOTSRANGE")
            .arg(0)
            .arg(4095)
            .arg("NODE")
            .arg(node_id(&b)),
    );
    assert!(
        refused.contains("module pay does not support atomic slot migrations"),
        "{refused}"
    );

    // No migration started on either side.
    for c in [&mut ca, &mut cb] {
        let jobs: Vec<Value> = redis::cmd("CLUSTER")
            .arg("GETSLOTMIGRATIONS")
            .query(c)
            .unwrap();
        assert!(jobs.is_empty(), "a migration was started: {jobs:?}");
    }
    // Every payment is where it was, byte for byte, leases and expiries
    // included, and `a` still serves the slots.
    assert_eq!(snapshot(&mut ca, &[0]), before_a);
    assert_eq!(snapshot(&mut cb, &[0]), before_b);
    for (i, k) in moving.iter().enumerate() {
        let again = cache(&mut ca, k, "67890", 1000 + i as i64, "USD");
        assert_eq!(again["outcome"], "duplicate", "{k}");
    }
    assert_eq!(
        moving.iter().map(|k| lease(&mut ca, k)).collect::<Vec<_>>(),
        leases
    );
    for c in [&mut ca, &mut cb] {
        assert_index_exact(c, &[0]);
    }
    // Neither server crashed nor warned.
    for (s, from) in [(&mut a, log_a), (&mut b, log_b)] {
        assert!(!s.exited(), "a server exited:\n{}", s.log());
        let log = s.log();
        let warnings: Vec<&str> = log[from..].lines().filter(|l| l.contains(" # ")).collect();
        assert!(warnings.is_empty(), "warnings logged: {warnings:?}");
    }
}

#[test]
fn resharding_key_by_key_carries_every_payment_and_keeps_both_indexes_exact() {
    let (a, b, moving) = two_shards_with_payments();
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let before = snapshot(&mut ca, &[0]);
    let (held_a, held_b) = (all_keys(&mut ca).len(), all_keys(&mut cb).len());

    let slots: BTreeSet<u16> = moving.iter().map(|k| key_slot(&mut ca, k)).collect();
    for &slot in &slots {
        migrate_slot_by_keys(&a, &b, slot);
    }

    assert_eq!(all_keys(&mut ca).len(), held_a - moving.len());
    assert_eq!(all_keys(&mut cb).len(), held_b + moving.len());
    let after = snapshot(&mut cb, &[0]);
    // MIGRATE carries a key's remaining time to live, so a resolved record's
    // expiry moves by the time the key spent in transit; a pending record
    // still never expires.
    const IN_TRANSIT_MS: i64 = 5_000;
    for k in &moving {
        let (rec, at) = &before[&(0, k.clone())];
        let (moved, moved_at) = &after[&(0, k.clone())];
        assert_eq!(moved, rec, "{k}");
        if *at < 0 {
            assert_eq!(moved_at, at, "{k}: expiry");
        } else {
            assert!(
                (moved_at - at).abs() <= IN_TRANSIT_MS,
                "{k}: {at} -> {moved_at}"
            );
        }
    }
    for c in [&mut ca, &mut cb] {
        assert_index_exact(c, &[0]);
    }
    // The new owner de-duplicates the moved payments.
    for (i, k) in moving.iter().enumerate() {
        let again = cache(&mut cb, k, "67890", 1000 + i as i64, "USD");
        assert_eq!(again["outcome"], "duplicate", "{k}");
    }
}
