//! Losing nothing when a server dies or fails over, refusing a corrupted
//! data file clearly, and access control that denies what it should.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use testkit::*;

type Fields = BTreeMap<String, String>;

fn without_outcome(mut r: Fields) -> Fields {
    r.remove("outcome");
    r
}

#[test]
fn acknowledged_writes_survive_sigkill_with_appendfsync_always() {
    let mut s = Server::with(
        Opts::new()
            .config("appendonly", "yes")
            .config("appendfsync", "always"),
    );
    let mut c = s.conn();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let writer = std::thread::spawn(move || {
        // The last acknowledged reply for each payment, and the write that
        // was in flight when the server died (it may or may not be there).
        let mut acked: BTreeMap<String, Fields> = BTreeMap::new();
        let mut in_flight = None;
        for i in 0.. {
            let key = format!("crash:{i}");
            let r: redis::RedisResult<Value> = redis::cmd("PAY.CACHE")
                .arg(&key)
                .arg("u")
                .arg(1000 + i)
                .arg("USD")
                .query(&mut c);
            let Ok(v) = r else {
                in_flight = Some(key);
                break;
            };
            acked.insert(key.clone(), without_outcome(record(&v)));
            if i % 3 == 0 {
                let r: redis::RedisResult<Value> = redis::cmd("PAY.UPDATE")
                    .arg(&key)
                    .arg(if i % 2 == 0 { "succeeded" } else { "failed" })
                    .arg("REF")
                    .arg(format!("ch_{i}"))
                    .query(&mut c);
                let Ok(v) = r else {
                    in_flight = Some(key);
                    break;
                };
                acked.insert(key, record(&v));
            }
            if flag.load(Ordering::Relaxed) {
                break;
            }
        }
        (acked, in_flight)
    });
    std::thread::sleep(Duration::from_millis(700));
    s.kill(); // SIGKILL in the middle of the writes
    stop.store(true, Ordering::Relaxed);
    let (acked, in_flight) = writer.join().unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes before the kill",
        acked.len()
    );
    s.restart();
    let mut c = s.conn();
    let mut present = 0;
    for (key, expected) in &acked {
        let got = check(&mut c, key).unwrap_or_else(|| panic!("{key} lost"));
        if Some(key) == in_flight.as_ref() && got["status"] != expected["status"] {
            // The unacknowledged update reached the AOF before the kill.
            assert_eq!(got["created_at"], expected["created_at"]);
        } else {
            assert_eq!(&got, expected, "{key}");
        }
        present += 1;
    }
    println!(
        "crash: {} writes acknowledged, {present} present after restart",
        acked.len()
    );
    assert_index_exact(&mut c, &[0]);
}

fn fast_sweeper() -> Opts {
    Opts::sweeper(300, 50)
}

#[test]
fn failover_keeps_acknowledged_payments_leases_and_flags() {
    let mut primary = Server::with(fast_sweeper());
    let replica = Server::with(fast_sweeper());
    replicate(&replica, &primary);
    let mut p = primary.conn();
    let mut acked = BTreeMap::new();
    for batch in 0..4 {
        let mut written = Vec::new();
        for i in 0..50 {
            let key = format!("fo:{batch}:{i}");
            let r = cache(&mut p, &key, "u", 100, "EUR");
            written.push((key, without_outcome(r)));
        }
        let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut p).unwrap();
        if n == 1 {
            acked.extend(written);
        }
    }
    assert_eq!(acked.len(), 200, "WAIT 1 did not acknowledge every batch");
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut p,
        "records_stale"
    ) == 200));
    let claimed: Value = redis::cmd("PAY.CLAIM")
        .arg("worker-1")
        .arg("LEASE")
        .arg(600_000)
        .arg("COUNT")
        .arg(10)
        .query(&mut p)
        .unwrap();
    let Value::Array(claimed) = claimed else {
        panic!()
    };
    assert_eq!(claimed.len(), 10);
    let n: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut p).unwrap();
    assert_eq!(n, 1);

    primary.kill(); // the primary dies
    let mut r = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r)
        .unwrap();
    for (key, first) in &acked {
        let got = check(&mut r, key).unwrap_or_else(|| panic!("{key} lost in the failover"));
        assert_eq!(got["created_at"], first["created_at"], "{key}");
        assert_eq!(got["stale"], "1", "{key}: flag lost");
    }
    // A retried PAY.CACHE is still a duplicate on the new primary.
    let again = cache(&mut r, "fo:0:0", "u", 100, "EUR");
    assert_eq!(again["outcome"], "duplicate");
    // Leases survived: the claimed payments are not claimable by another worker.
    let leased = stuck_records(&mut r)
        .into_iter()
        .filter(|rec| rec["lease_owner"] == "worker-1")
        .count();
    assert_eq!(leased, 10);
    let other: Value = redis::cmd("PAY.CLAIM")
        .arg("worker-2")
        .arg("LEASE")
        .arg(1000)
        .arg("COUNT")
        .arg(1000)
        .query(&mut r)
        .unwrap();
    let Value::Array(other) = other else { panic!() };
    assert_eq!(other.len(), 190, "leased payments were handed out again");
    // The new primary's timer sweeps.
    let before = info_field(&mut r, "flagged");
    cache(&mut r, "after-failover", "u", 1, "EUR");
    assert!(wait_until(Duration::from_secs(5), || info_field(
        &mut r, "flagged"
    ) == before + 1));
    assert_index_exact(&mut r, &[0]);
}

#[test]
fn a_corrupted_record_in_the_rdb_fails_the_load_with_a_clear_log_line() {
    let mut s = Server::with(Opts::new().config("rdbchecksum", "no"));
    let mut c = s.conn();
    cache(&mut c, "fine", "u", 1, "USD");
    cache(&mut c, "victim", "CORRUPTME1234", 1, "USD");
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    s.kill();
    let path = s.dir().join("dump.rdb");
    let mut rdb = std::fs::read(&path).unwrap();
    let at = rdb
        .windows(13)
        .position(|w| w == b"CORRUPTME1234")
        .expect("the record in the RDB");
    rdb[at + 4] = 0x01; // a control character: no valid record has one
    std::fs::write(&path, &rdb).unwrap();
    // Redis stops loading, runs its RDB checker (which skips module values,
    // so it may even exit 0), and exits: it never serves half a data set.
    let _exited = std::process::Command::new(server_bin())
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--logfile", "server.log"])
        .arg("--dir")
        .arg(s.dir())
        .arg("--loadmodule")
        .arg(module_path())
        .current_dir(s.dir())
        .status()
        .unwrap();
    let log = s.log();
    assert!(
        log.contains(
            "redis-pay: invalid payment record: user_id must not contain control characters"
        ),
        "{log}"
    );
}

fn acl(c: &mut redis::Connection, user: &str, rules: &[&str]) -> redis::Connection {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user)
        .arg(rules)
        .query(c)
        .unwrap();
    let port = {
        let info: String = redis::cmd("CONFIG")
            .arg("GET")
            .arg("port")
            .query::<Vec<String>>(c)
            .unwrap()[1]
            .clone();
        info
    };
    redis::Client::open(format!("redis://{user}:pw@127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn acl_recipes_allow_what_each_user_needs_and_deny_the_rest() {
    let s = Server::start();
    let mut admin = s.conn();
    let internal = has_internal_command_flag(&mut admin);
    cache(&mut admin, "payment:1", "u", 1, "USD");
    cache(&mut admin, "other:1", "u", 1, "USD");
    // The application: create and read payments under its prefix.
    let mut app = acl(
        &mut admin,
        "app",
        &[
            "on",
            ">pw",
            "resetkeys",
            "~payment:*",
            "-@all",
            "+pay.cache",
            "+pay.check",
        ],
    );
    assert_eq!(
        cache(&mut app, "payment:2", "u", 5, "USD")["outcome"],
        "created"
    );
    assert!(check(&mut app, "payment:1").is_some());
    for cmd in [
        redis::cmd("PAY.CACHE")
            .arg("other:2")
            .arg("u")
            .arg(1)
            .arg("USD")
            .clone(),
        redis::cmd("PAY.CHECK").arg("other:1").clone(),
        redis::cmd("PAY.UPDATE")
            .arg("payment:1")
            .arg("succeeded")
            .clone(),
        redis::cmd("PAY.STUCK").clone(),
        redis::cmd("PAY.LOAD").arg("payment:3").arg("x").clone(),
        redis::cmd("DEL").arg("payment:1").clone(),
    ] {
        let e = err(&mut app, &cmd);
        // Where PAY.LOAD is an internal command (Redis 8), clients do not
        // see it at all.
        let hidden = internal && e.contains("unknown command");
        assert!(e.starts_with("NOPERM") || hidden, "{cmd:?}: {e}");
    }
    // Support staff: read any payment, list stuck ones and INFO, change
    // nothing.
    let mut support = acl(
        &mut admin,
        "support",
        &[
            "on",
            ">pw",
            "resetkeys",
            "~*",
            "-@all",
            "+pay.check",
            "+pay.stuck",
            "+info",
        ],
    );
    assert!(check(&mut support, "other:1").is_some());
    let _: String = redis::cmd("INFO").arg("pay").query(&mut support).unwrap();
    assert!(stuck_set(&mut support).contains("payment:1"));
    for cmd in [
        redis::cmd("PAY.CACHE")
            .arg("payment:9")
            .arg("u")
            .arg(1)
            .arg("USD")
            .clone(),
        redis::cmd("PAY.UPDATE")
            .arg("payment:1")
            .arg("failed")
            .clone(),
        redis::cmd("PAY.CLAIM")
            .arg("support")
            .arg("LEASE")
            .arg(1000)
            .clone(),
        redis::cmd("FLUSHALL").clone(),
    ] {
        assert!(err(&mut support, &cmd).starts_with("NOPERM"), "{cmd:?}");
    }
    assert_eq!(check(&mut admin, "payment:1").unwrap()["status"], "pending");
}

/// A user with every PAY.* command (named: Redis 7.0 has no @pay) and the
/// given key permissions, e.g. `%R~payment:*`.
fn pay_user(admin: &mut redis::Connection, user: &str, keys: &str) -> redis::Connection {
    let mut rules = vec!["on", ">pw", "resetkeys", keys, "-@all"];
    rules.extend([
        "+pay.cache",
        "+pay.check",
        "+pay.update",
        "+pay.stuck",
        "+pay.claim",
    ]);
    acl(admin, user, &rules)
}

/// PAY.CHECK on `payment:*` keys, present and absent.
fn reads() -> Vec<redis::Cmd> {
    vec![
        redis::cmd("PAY.CHECK").arg("payment:1").clone(),
        redis::cmd("PAY.CHECK").arg("payment:1").arg("JSON").clone(),
        redis::cmd("PAY.CHECK").arg("payment:9").clone(),
    ]
}

/// PAY.CACHE and PAY.UPDATE on `payment:*` keys, old and new.
fn writes() -> Vec<redis::Cmd> {
    vec![
        // A duplicate returns the stored record; a new key creates one.
        redis::cmd("PAY.CACHE")
            .arg("payment:1")
            .arg("u")
            .arg(1)
            .arg("USD")
            .clone(),
        redis::cmd("PAY.CACHE")
            .arg("payment:9")
            .arg("u")
            .arg(1)
            .arg("USD")
            .arg("BRIEF")
            .clone(),
        redis::cmd("PAY.UPDATE")
            .arg("payment:1")
            .arg("succeeded")
            .clone(),
        redis::cmd("PAY.UPDATE")
            .arg("payment:2")
            .arg("pending")
            .arg("RETRY")
            .arg(1000)
            .clone(),
    ]
}

fn two_payments_and_a_neighbour(admin: &mut redis::Connection) -> RawSnapshot {
    cache(admin, "payment:1", "u", 1, "USD");
    cache(admin, "payment:2", "u", 2, "USD");
    cache(admin, "other:1", "u", 3, "USD");
    raw_snapshot(admin, &[0])
}

#[test]
fn read_only_key_permission_checks_and_lists_payments_but_changes_nothing() {
    let s = Server::start();
    let mut admin = s.conn();
    let before = two_payments_and_a_neighbour(&mut admin);
    // A support dashboard: `%R~` (read) on the payments, nothing else.
    let mut reader = pay_user(&mut admin, "dashboard", "%R~payment:*");
    assert_eq!(check(&mut reader, "payment:1").unwrap()["amount"], "1");
    assert!(check(&mut reader, "payment:9").is_none());
    let json: String = redis::cmd("PAY.CHECK")
        .arg("payment:2")
        .arg("JSON")
        .query(&mut reader)
        .unwrap();
    assert!(json.contains(r#""transaction_id":"payment:2""#), "{json}");
    assert_eq!(stuck_set(&mut reader), set(&["payment:1", "payment:2"]));
    // Not another prefix, and no writes: PAY.CACHE reads and inserts,
    // PAY.UPDATE reads and updates.
    let mut refused = writes();
    refused.push(redis::cmd("PAY.CHECK").arg("other:1").clone());
    for cmd in &refused {
        let e = err(&mut reader, cmd);
        assert!(e.starts_with("NOPERM"), "{cmd:?}: {e}");
    }
    // PAY.CLAIM names no key: it leases only what the caller could
    // PAY.UPDATE, here nothing.
    assert!(claim(&mut reader, "dashboard", 100, 60_000).is_empty());
    let after = raw_snapshot(&mut admin, &[0]);
    assert_same_bytes(&before, &after, "after a read-only user's attempts");
    assert_index_exact(&mut admin, &[0]);
}

#[test]
fn write_only_key_permission_neither_reads_nor_creates_payments() {
    let s = Server::start();
    let mut admin = s.conn();
    let before = two_payments_and_a_neighbour(&mut admin);
    // `%W~` alone: every PAY.* command on a key returns the record (PAY.CACHE
    // too, on a duplicate), so each needs read permission as well.
    let mut writer = pay_user(&mut admin, "blind", "%W~payment:*");
    for cmd in reads().iter().chain(&writes()) {
        let e = err(&mut writer, cmd);
        assert!(e.starts_with("NOPERM"), "{cmd:?}: {e}");
    }
    assert!(stuck_set(&mut writer).is_empty());
    assert!(claim(&mut writer, "blind", 100, 60_000).is_empty());
    let after = raw_snapshot(&mut admin, &[0]);
    assert_same_bytes(&before, &after, "after a write-only user's attempts");
    // Read and write (`%RW~`, which `~` also means): everything.
    let mut app = pay_user(&mut admin, "app", "%RW~payment:*");
    for cmd in reads().iter().chain(&writes()) {
        let _: Value = cmd.query(&mut app).unwrap();
    }
    assert_eq!(stuck_set(&mut app), set(&["payment:2", "payment:9"]));
    assert_eq!(claim(&mut app, "app", 100, 60_000).len(), 1);
    assert_index_exact(&mut admin, &[0]);
}

/// The flags of the key specs of a COMMAND INFO entry (RESP2: each spec a
/// flat field/value array).
fn key_spec_flags(info: &[Value]) -> Vec<Vec<String>> {
    let Some(Value::Array(specs)) = info.get(8) else {
        panic!("no key specs: {info:?}")
    };
    specs
        .iter()
        .map(|spec| {
            let Value::Array(fields) = spec else {
                panic!("{spec:?}")
            };
            let at = fields
                .iter()
                .position(|f| matches!(f, Value::BulkString(b) if b == b"flags"))
                .expect("flags");
            let Some(Value::Array(flags) | Value::Set(flags)) = fields.get(at + 1) else {
                panic!("{fields:?}")
            };
            flags.iter().map(text).collect()
        })
        .collect()
}

#[test]
fn command_info_says_what_each_command_does_with_its_key() {
    let s = Server::start();
    let mut c = s.conn();
    let internal = has_internal_command_flag(&mut c);
    let mut commands = vec![
        ("PAY.CACHE", -5, vec!["RW", "access", "insert"]),
        ("PAY.CHECK", -2, vec!["RO", "access"]),
        ("PAY.UPDATE", -3, vec!["RW", "access", "update"]),
        ("PAY.STUCK", -1, vec![]),
        ("PAY.CLAIM", -2, vec![]),
    ];
    // Where PAY.LOAD is internal (Redis 8), COMMAND does not show it.
    if !internal {
        commands.push(("PAY.LOAD", -3, vec!["OW", "update"]));
    }
    for (name, arity, flags) in commands {
        let v: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(name)
            .query(&mut c)
            .unwrap();
        let Value::Array(cmds) = v else { panic!() };
        let Some(Value::Array(info)) = cmds.first() else {
            panic!("{name}: {cmds:?}")
        };
        assert_eq!(info.get(1), Some(&Value::Int(arity)), "{name}: {info:?}");
        let want: Vec<Vec<String>> = if flags.is_empty() {
            vec![]
        } else {
            vec![flags.iter().map(|f| f.to_string()).collect()]
        };
        assert_eq!(key_spec_flags(info), want, "{name}");
    }
    // What ACL checks use: the key and its flags, per call (Redis 7.0+).
    for (args, flags) in [
        (&["PAY.CHECK", "k"][..], &["RO", "access"][..]),
        (&["PAY.CHECK", "k", "JSON"], &["RO", "access"]),
        (
            &["PAY.CACHE", "k", "u", "1", "USD"],
            &["RW", "access", "insert"],
        ),
        (&["PAY.UPDATE", "k", "failed"], &["RW", "access", "update"]),
    ] {
        let got: Vec<(String, Vec<String>)> = redis::cmd("COMMAND")
            .arg("GETKEYSANDFLAGS")
            .arg(args)
            .query(&mut c)
            .unwrap();
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        assert_eq!(got, [("k".to_string(), flags)], "{args:?}");
    }
    // The server counts the arguments itself: a transaction with a short
    // PAY.CHECK is refused when queued, and runs nothing.
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let _: Value = redis::cmd("PAY.CACHE")
        .arg("queued")
        .arg("u")
        .arg(1)
        .arg("USD")
        .query(&mut c)
        .unwrap();
    let e = err(&mut c, &redis::cmd("PAY.CHECK"));
    assert!(e.starts_with("ERR wrong number of arguments"), "{e}");
    let e = err(&mut c, &redis::cmd("EXEC"));
    assert!(e.starts_with("EXECABORT"), "{e}");
    assert!(check(&mut c, "queued").is_none());
}

#[test]
fn command_flags_let_redis_enforce_oom_and_keys() {
    let s = Server::start();
    let mut c = s.conn();
    let flags = |c: &mut redis::Connection, name: &str| -> Vec<String> {
        let v: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(name)
            .query(c)
            .unwrap();
        let Value::Array(cmds) = v else { panic!() };
        let Value::Array(info) = &cmds[0] else {
            panic!("{cmds:?}")
        };
        match &info[2] {
            Value::Array(f) | Value::Set(f) => {
                f.iter().map(text).filter(|f| f != "module").collect()
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(flags(&mut c, "pay.cache")
        .iter()
        .all(|f| ["write", "denyoom", "fast"].contains(&f.as_str())));
    assert_eq!(flags(&mut c, "pay.cache").len(), 3);
    assert_eq!(flags(&mut c, "pay.check"), ["readonly", "fast"]);
    assert_eq!(flags(&mut c, "pay.update"), ["write", "fast"]);
    assert_eq!(flags(&mut c, "pay.stuck"), ["readonly"]);
    assert_eq!(flags(&mut c, "pay.claim"), ["write", "denyoom"]);
    // Out of memory: no new payments, but resolving and reading still work.
    cache(&mut c, "before-oom", "u", 1, "USD");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let e = err(
        &mut c,
        redis::cmd("PAY.CACHE")
            .arg("new")
            .arg("u")
            .arg(1)
            .arg("USD"),
    );
    assert!(e.starts_with("OOM"), "{e}");
    assert_eq!(
        update(&mut c, "before-oom", "succeeded")["status"],
        "succeeded"
    );
    assert!(check(&mut c, "before-oom").is_some());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut c)
        .unwrap();
}

#[test]
fn application_commands_join_the_pay_acl_category_where_the_server_can() {
    let s = Server::start();
    let mut c = s.conn();
    let categories: Vec<String> = redis::cmd("ACL").arg("CAT").query(&mut c).unwrap();
    if !categories.iter().any(|cat| cat == "pay") {
        // Redis 7.0 has no module ACL categories: the module says so and loads.
        assert!(
            s.log()
                .contains("does not support adding new ACL categories"),
            "{}",
            s.log()
        );
        return;
    }
    let mut members: Vec<String> = redis::cmd("ACL")
        .arg("CAT")
        .arg("pay")
        .query(&mut c)
        .unwrap();
    members.iter_mut().for_each(|m| *m = m.to_lowercase());
    members.sort();
    assert_eq!(
        members,
        [
            "pay.cache",
            "pay.check",
            "pay.claim",
            "pay.stuck",
            "pay.update"
        ]
    );
    let mut user = acl(&mut c, "payapp", &["on", ">pw", "~*", "-@all", "+@pay"]);
    assert_eq!(cache(&mut user, "k", "u", 1, "USD")["outcome"], "created");
    let e = err(&mut user, redis::cmd("PAY.LOAD").arg("k").arg("x"));
    // Where PAY.LOAD is an internal command (Redis 8), clients do not see it.
    let hidden = has_internal_command_flag(&mut c) && e.contains("unknown command");
    assert!(
        e.starts_with("NOPERM") || hidden,
        "PAY.LOAD must stay out of @pay: {e}"
    );
}
