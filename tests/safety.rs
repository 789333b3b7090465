//! Nothing a client sends can forge a payment: PAY.LOAD, how records travel
//! to replicas and the AOF, refuses every client while replication and AOF
//! loading still apply it.

mod common;

use std::time::Duration;

use common::*;
use redis::{Connection, Value};

/// In a DUMP of a payment (RDB compression off): the type byte, then the
/// module id (`0x81` and 8 bytes), then the module's first opcode, then the
/// record's length.
const LENGTH_AT: usize = 11;

/// A blob PAY.LOAD would accept: `txn_1` succeeded, with a forged reference.
fn forged_blob(c: &mut Connection) -> Vec<u8> {
    cache(c, "forge:model", "67890", 1000, "USD");
    let _: Value = redis::cmd("PAY.UPDATE")
        .arg("forge:model")
        .arg("succeeded")
        .arg("REF")
        .arg("ch_forged")
        .query(c)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("rdbcompression")
        .arg("no")
        .query(c)
        .unwrap();
    let payload = dump(c, b"forge:model").unwrap();
    let _: () = redis::cmd("DEL").arg("forge:model").query(c).unwrap();
    // type, module id, opcode, then the blob's length and the blob.
    let (n, width) = (payload[LENGTH_AT], 1);
    assert!(n < 64, "a short record");
    payload[LENGTH_AT + width..LENGTH_AT + width + usize::from(n)].to_vec()
}

/// The refusal a client gets: the module's own error, or where the server
/// has the `internal` flag, the server's (the command does not exist for
/// clients, nor for their scripts).
fn refused(e: &str, internal_flag: bool) -> bool {
    let e = e.to_ascii_lowercase();
    if internal_flag {
        e.contains("unknown") && e.contains("command") || e.contains("not allowed from script")
    } else {
        e.contains("pay.load is internal")
    }
}

#[test]
fn pay_load_is_refused_from_clients_multi_and_scripts() {
    let s = Server::start();
    let mut c = s.conn();
    let internal = has_internal_command_flag(&mut c);
    let blob = forged_blob(&mut c);
    cache(&mut c, "txn_1", "67890", 1000, "USD");
    let before = raw_snapshot(&mut c, &[0]);
    let load = |key: &str| redis::cmd("PAY.LOAD").arg(key).arg(&blob).clone();

    let e = err(&mut c, &load("txn_1"));
    assert!(refused(&e, internal), "plain: {e}");
    let e = err(&mut c, &load("fresh"));
    assert!(refused(&e, internal), "plain, new key: {e}");
    let e = err(
        &mut c,
        redis::cmd("PAY.LOAD")
            .arg("txn_1")
            .arg(&blob)
            .arg("PXAT")
            .arg(1),
    );
    assert!(refused(&e, internal), "with PXAT: {e}");

    // MULTI: queued and refused at EXEC, or (internal) refused when queued.
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let queued: redis::RedisResult<Value> = load("txn_1").query(&mut c);
    let exec: redis::RedisResult<Value> = redis::cmd("EXEC").query(&mut c);
    let text = format!("{queued:?} {exec:?}");
    assert!(refused(&text, internal), "MULTI: {text}");

    // Lua, plain and with a pcall, and a function.
    for script in [
        "return redis.call('PAY.LOAD', KEYS[1], ARGV[1])",
        "local ok = redis.pcall('PAY.LOAD', KEYS[1], ARGV[1]); \
         if type(ok) == 'table' and ok.err then return redis.error_reply(ok.err) end; return ok",
    ] {
        let e = err(
            &mut c,
            redis::cmd("EVAL")
                .arg(script)
                .arg(1)
                .arg("txn_1")
                .arg(&blob),
        );
        assert!(refused(&e, internal), "EVAL: {e}");
    }
    let lib = "#!lua name=forger\n\
               redis.register_function('forge', function(keys, args) \
               return redis.call('PAY.LOAD', keys[1], args[1]) end)";
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut c)
        .unwrap();
    let e = err(
        &mut c,
        redis::cmd("FCALL")
            .arg("forge")
            .arg(1)
            .arg("txn_1")
            .arg(&blob),
    );
    assert!(refused(&e, internal), "FCALL: {e}");
    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("forger")
        .query(&mut c)
        .unwrap();

    let after = raw_snapshot(&mut c, &[0]);
    assert_same_bytes(&before, &after, "after refused PAY.LOADs");
    assert_eq!(check(&mut c, "txn_1").unwrap()["status"], "pending");
    assert_index_exact(&mut c, &[0]);
}

/// Every write path of the module, so replication and the AOF carry
/// PAY.LOAD for each.
fn write_paths(c: &mut Connection, tag: &str) {
    for i in 0..6 {
        cache(c, &format!("{tag}{i}"), &format!("u{i}"), 10 * i, "USD");
    }
    update(c, &format!("{tag}1"), "succeeded");
    let _: Value = redis::cmd("PAY.UPDATE")
        .arg(format!("{tag}2"))
        .arg("pending")
        .arg("REASON")
        .arg("bank timeout")
        .query(c)
        .unwrap();
    let _: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(2)
        .arg("CLAIM")
        .arg("w1")
        .arg("LEASE")
        .arg(60_000)
        .query(c)
        .unwrap();
}

#[test]
fn replication_still_applies_pay_load() {
    let p = Server::start();
    let r = Server::start();
    let mut pc = p.conn();
    let mut rc = r.conn();
    write_paths(&mut pc, "before-sync:");
    replicate(&r, &p);
    write_paths(&mut pc, "live:");
    wait_replicas(&mut pc, 1);
    assert_same_bytes(
        &raw_snapshot(&mut pc, &[0]),
        &raw_snapshot(&mut rc, &[0]),
        "replica",
    );
    assert_eq!(digest(&mut pc), digest(&mut rc));
    assert!(!r.log().contains("CRITICAL"), "{}", r.log());
}

fn aof(preamble: &str) -> Opts {
    Opts::new()
        .config("appendonly", "yes")
        .config("aof-use-rdb-preamble", preamble)
}

#[test]
fn aof_loading_still_applies_pay_load_with_and_without_preamble() {
    for preamble in ["yes", "no"] {
        let mut s = Server::with(aof(preamble));
        let mut c = s.conn();
        write_paths(&mut c, "a:");
        // From the AOF as written command by command.
        let written = raw_snapshot(&mut c, &[0]);
        let _: () = redis::cmd("DEBUG").arg("LOADAOF").query(&mut c).unwrap();
        assert_same_bytes(&written, &raw_snapshot(&mut c, &[0]), "DEBUG LOADAOF");
        // From a rewritten AOF, then its tail.
        let _: String = redis::cmd("BGREWRITEAOF").query(&mut c).unwrap();
        wait_aof_rewrite(&mut c);
        write_paths(&mut c, "b:");
        let rewritten = raw_snapshot(&mut c, &[0]);
        let _: () = redis::cmd("DEBUG").arg("LOADAOF").query(&mut c).unwrap();
        assert_same_bytes(&rewritten, &raw_snapshot(&mut c, &[0]), "rewritten AOF");
        drop(c);
        s.restart();
        let mut c = s.conn();
        assert_same_bytes(&rewritten, &raw_snapshot(&mut c, &[0]), "restart");
        assert_index_exact(&mut c, &[0]);
        assert!(!s.log().contains("CRITICAL"), "preamble {preamble}");
    }
}

#[test]
fn pay_load_is_registered_internal_where_the_server_can() {
    let s = Server::start();
    let mut c = s.conn();
    let internal = has_internal_command_flag(&mut c);
    let info: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("PAY.LOAD")
        .query(&mut c)
        .unwrap();
    let hidden = matches!(&info, Value::Array(a) if a.iter().all(|v| *v == Value::Nil));
    assert_eq!(hidden, internal, "COMMAND INFO PAY.LOAD: {info:?}");
    let how = if internal {
        "write deny-oom internal"
    } else {
        "write deny-oom"
    };
    assert!(
        s.log()
            .contains(&format!("redis-pay: PAY.LOAD registered ({how})")),
        "{}",
        s.log()
    );
}

/// The absolute expiry the primary chose, to the millisecond, on a replica
/// and after the AOF is loaded again.
#[test]
fn expiry_is_exact_on_replicas_and_after_aof_reload() {
    let p = Server::with(aof("no"));
    let r = Server::start();
    replicate(&r, &p);
    let mut pc = p.conn();
    let mut rc = r.conn();
    let mut pipe = redis::pipe();
    for i in 0..2_000 {
        pipe.cmd("PAY.CACHE")
            .arg(format!("ttl:{i}"))
            .arg("u")
            .arg(i)
            .arg("USD")
            .arg("TTL")
            .arg(1 + i % 97)
            .ignore();
    }
    let _: () = pipe.query(&mut pc).unwrap();
    wait_replicas(&mut pc, 1);
    let expiries = |c: &mut Connection| -> Vec<i64> {
        let mut pipe = redis::pipe();
        for i in 0..2_000 {
            pipe.cmd("PEXPIRETIME").arg(format!("ttl:{i}"));
        }
        pipe.query(c).unwrap()
    };
    let on_primary = expiries(&mut pc);
    assert!(on_primary.iter().all(|&t| t > 0));
    let on_replica = expiries(&mut rc);
    let differ = on_primary
        .iter()
        .zip(&on_replica)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differ, 0,
        "expiries differ on the replica for {differ} keys"
    );
    std::thread::sleep(Duration::from_millis(5));
    let _: () = redis::cmd("DEBUG").arg("LOADAOF").query(&mut pc).unwrap();
    assert_eq!(expiries(&mut pc), on_primary, "after DEBUG LOADAOF");
}
