//! Bad input gets a clear error naming what is wrong, and changes nothing.

use redis::Value;
use testkit::*;

/// (arguments, expected start of the error)
fn cases() -> Vec<(Vec<Vec<u8>>, &'static str)> {
    let b = |args: &[&[u8]]| args.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    let long_key = vec![b'k'; 256];
    let long_user = vec![b'u'; 129];
    let long_reason = vec![b'r'; 1025];
    let mut v: Vec<(Vec<Vec<u8>>, &str)> = vec![
        // Arity.
        (b(&[b"PAY.CACHE"]), "ERR wrong number of arguments"),
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1"]),
            "ERR wrong number of arguments",
        ),
        (b(&[b"PAY.CHECK"]), "ERR wrong number of arguments"),
        (b(&[b"PAY.UPDATE", b"k"]), "ERR wrong number of arguments"),
        // Key.
        (
            b(&[b"PAY.CACHE", &long_key, b"u", b"1", b"USD"]),
            "ERR key must be 1 to 255 bytes",
        ),
        (
            b(&[b"PAY.CACHE", b"", b"u", b"1", b"USD"]),
            "ERR key must be 1 to 255 bytes",
        ),
        (
            b(&[b"PAY.CACHE", b"k\xff\xfe", b"u", b"1", b"USD"]),
            "ERR key must be UTF-8",
        ),
        (
            b(&[b"PAY.CACHE", b"k\r\n", b"u", b"1", b"USD"]),
            "ERR key must not contain control",
        ),
        // PAY.CHECK and PAY.UPDATE take any key Redis holds: a payment may
        // have been renamed there.
        (
            b(&[b"PAY.UPDATE", &long_key, b"failed"]),
            "NOPAYMENT no such payment",
        ),
        // user_id.
        (
            b(&[b"PAY.CACHE", b"k", &long_user, b"1", b"USD"]),
            "ERR user_id must be 1 to 128 bytes",
        ),
        (
            b(&[b"PAY.CACHE", b"k", b"", b"1", b"USD"]),
            "ERR user_id must be 1 to 128 bytes",
        ),
        (
            b(&[b"PAY.CACHE", b"k", b"\x00", b"1", b"USD"]),
            "ERR user_id must not contain control",
        ),
        // Currency.
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"US"]),
            "ERR currency must be three ASCII letters",
        ),
        (b(&[b"PAY.CACHE", b"k", b"u", b"1", b"US1"]), "ERR currency"),
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"USDX"]),
            "ERR currency",
        ),
        // TTL and options.
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"USD", b"TTL", b"0"]),
            "ERR TTL must be an integer from 1",
        ),
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"USD", b"TTL", b"-1"]),
            "ERR TTL must be",
        ),
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"USD", b"TTL", b"1.5"]),
            "ERR TTL must be",
        ),
        (
            b(&[
                b"PAY.CACHE",
                b"k",
                b"u",
                b"1",
                b"USD",
                b"TTL",
                b"99999999999",
            ]),
            "ERR TTL must be",
        ),
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"USD", b"TTL"]),
            "ERR TTL needs a value",
        ),
        (
            b(&[
                b"PAY.CACHE",
                b"k",
                b"u",
                b"1",
                b"USD",
                b"TTL",
                b"5",
                b"TTL",
                b"6",
            ]),
            "ERR TTL given more than once",
        ),
        (
            b(&[b"PAY.CACHE", b"k", b"u", b"1", b"USD", b"EX", b"5"]),
            "ERR unknown option 'EX'",
        ),
        (b(&[b"PAY.CHECK", b"k", b"XML"]), "ERR unknown option 'XML'"),
        // PAY.UPDATE.
        (
            b(&[b"PAY.UPDATE", b"k", b"done"]),
            "ERR status must be one of pending, succeeded, failed",
        ),
        (
            b(&[b"PAY.UPDATE", b"k", b"failed", b"REASON"]),
            "ERR REASON needs a value",
        ),
        (
            b(&[b"PAY.UPDATE", b"k", b"failed", b"REASON", &long_reason]),
            "ERR REASON must be at most 1024 bytes",
        ),
        (
            b(&[b"PAY.UPDATE", b"k", b"failed", b"REASON", b"\xff"]),
            "ERR REASON must be UTF-8",
        ),
        (
            b(&[b"PAY.UPDATE", b"k", b"failed", b"REF", b""]),
            "ERR REF must be 1 to 255 bytes",
        ),
        (
            b(&[b"PAY.UPDATE", b"k", b"failed", b"BOGUS", b"x"]),
            "ERR unknown option 'BOGUS'",
        ),
        // PAY.STUCK.
        (
            b(&[b"PAY.STUCK", b"COUNT", b"0"]),
            "ERR COUNT must be an integer from 1 to 100000",
        ),
        (b(&[b"PAY.STUCK", b"COUNT", b"x"]), "ERR COUNT must be"),
        (
            b(&[b"PAY.STUCK", b"OLDER", b"-5"]),
            "ERR OLDER must be an integer from 0",
        ),
        (
            b(&[b"PAY.STUCK", b"CLAIM", b"w1", b"LEASE", b"100"]),
            "ERR PAY.STUCK only lists; claims moved to PAY.CLAIM",
        ),
        (
            b(&[b"PAY.STUCK", b"LEASE", b"100"]),
            "ERR PAY.STUCK only lists",
        ),
        // PAY.CLAIM.
        (b(&[b"PAY.CLAIM"]), "ERR wrong number of arguments"),
        (b(&[b"PAY.CLAIM", b"w1"]), "ERR LEASE ms is required"),
        (
            b(&[b"PAY.CLAIM", b"w1", b"LEASE", b"0"]),
            "ERR LEASE must be an integer from 1",
        ),
        (
            b(&[b"PAY.CLAIM", b"w\x07", b"LEASE", b"10"]),
            "ERR consumer must not contain control characters",
        ),
        (
            b(&[b"PAY.CLAIM", b"w1", b"LEASE", b"10", b"COUNT", b"0"]),
            "ERR COUNT must be an integer from 1",
        ),
        // PAY.UPDATE's RETRY and FENCE.
        (
            b(&[b"PAY.UPDATE", b"k", b"succeeded", b"RETRY", b"10"]),
            "ERR RETRY goes with pending or unknown",
        ),
        (
            b(&[b"PAY.UPDATE", b"k", b"pending", b"FENCE", b"-1"]),
            "ERR FENCE must be an integer from 0",
        ),
        (
            b(&[b"PAY.STUCK", b"SIDEWAYS"]),
            "ERR unknown option 'SIDEWAYS'",
        ),
        // (PAY.LOAD refuses clients whatever its arguments: tests/safety.rs.
        // Bytes that are not a record: the codec's tests and the RESTORE
        // fuzz there.)
    ];
    // Amounts: floats, signs, spaces, overflow, leading zeros, binary.
    for bad in [
        &b"10.00"[..],
        b"-1",
        b"+1",
        b" 1",
        b"1 ",
        b"1e3",
        b"",
        b"0x10",
        b"007",
        b"9223372036854775808",
        b"\xff\xfe",
        b"NaN",
    ] {
        v.push((
            b(&[b"PAY.CACHE", b"k", b"u", bad, b"USD"]),
            "ERR amount must be a non-negative integer",
        ));
    }
    v
}

/// Calls of PAY.* commands the server refused itself, before the module
/// saw them (a wrong argument count: the commands declare their arity).
/// The module's `pay_errors` counts only the errors it answers.
fn refused_by_server(c: &mut redis::Connection) -> i64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    stats
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("cmdstat_pay."))
        .filter_map(|l| l.split(',').find_map(|f| f.strip_prefix("rejected_calls=")))
        .map(|n| n.trim().parse::<i64>().unwrap())
        .sum()
}

#[test]
fn every_bad_input_is_a_clear_error_and_changes_nothing() {
    let s = Server::start();
    let mut c = s.conn();
    // Existing data, including the key the bad commands name.
    cache(&mut c, "k", "u", 1, "USD");
    cache(&mut c, "other", "u", 2, "EUR");
    update(&mut c, "other", "succeeded");
    let d = digest(&mut c);
    let created = info_field(&mut c, "created");
    for (args, expected) in cases() {
        let mut cmd = redis::cmd(std::str::from_utf8(&args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(a.as_slice());
        }
        let e = err(&mut c, &cmd);
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into())
            .collect();
        assert!(
            e.starts_with(expected),
            "{shown:?}: got {e:?}, want {expected:?}"
        );
        assert!(
            e.is_ascii() && !e.contains('\r') && !e.contains('\n'),
            "{e:?}"
        );
        assert_eq!(digest(&mut c), d, "{shown:?} changed the data");
    }
    assert_eq!(info_field(&mut c, "created"), created);
    // Every bad call is refused once: by the server (argument count) or
    // by the module.
    let refused = info_field(&mut c, "errors") + refused_by_server(&mut c);
    assert_eq!(refused, cases().len() as i64);
    assert_index_exact(&mut c, &[0]);
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn limits_themselves_are_accepted() {
    let s = Server::start();
    let mut c = s.conn();
    let key = "k".repeat(255);
    let user = "u".repeat(128);
    let v: Value = redis::cmd("PAY.CACHE")
        .arg(&key)
        .arg(&user)
        .arg(i64::MAX)
        .arg("jpy")
        .arg("TTL")
        .arg(315_360_000)
        .query(&mut c)
        .unwrap();
    let r = record(&v);
    assert_eq!(r["amount"], i64::MAX.to_string());
    assert_eq!(r["currency"], "JPY");
    let reason = "r".repeat(1024);
    let v: Value = redis::cmd("PAY.UPDATE")
        .arg(&key)
        .arg("failed")
        .arg("REASON")
        .arg(&reason)
        .arg("REF")
        .arg("x".repeat(255))
        .query(&mut c)
        .unwrap();
    assert_eq!(record(&v)["reason"], reason);
    let v: Value = redis::cmd("PAY.CACHE")
        .arg("zero")
        .arg("u")
        .arg(0)
        .arg("USD")
        .query(&mut c)
        .unwrap();
    assert_eq!(record(&v)["amount"], "0");
}

/// One command that is invalid by construction: a valid-looking PAY.*
/// command with one deliberate defect, surrounded by random bytes.
fn hostile(rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    let junk = |rng: &mut fastrand::Rng| -> Vec<u8> {
        let len = match rng.u8(..10) {
            0 => rng.usize(1000..70_000),
            1..=3 => 0,
            _ => rng.usize(1..40),
        };
        (0..len).map(|_| rng.u8(..)).collect()
    };
    let key = |rng: &mut fastrand::Rng| format!("k{}", rng.u8(..20)).into_bytes();
    let s = |v: &str| v.as_bytes().to_vec();
    // Whether one more argument could repair the defect (then none is added).
    let mut open_ended = false;
    let mut cmd: Vec<Vec<u8>> = match rng.u8(..6) {
        0 => {
            let mut c = vec![s("PAY.CACHE"), key(rng), s("u1"), s("100"), s("USD")];
            match rng.u8(..7) {
                0 => c.truncate(rng.usize(1..4)),
                1 => {
                    c[3] = [
                        &b"-1"[..],
                        b"1.5",
                        b"",
                        b"1e9",
                        b"01",
                        b"99999999999999999999",
                    ][rng.usize(..6)]
                    .to_vec()
                }
                2 => c[4] = [&b"US"[..], b"U$D", b"USDX", b"\xff\xfe\xfd"][rng.usize(..4)].to_vec(),
                3 => c[1] = [vec![b'k'; 256], vec![], vec![0xff, 0x00]][rng.usize(..3)].clone(),
                4 => c[2] = [vec![b'u'; 129], vec![], b"a\x01".to_vec()][rng.usize(..3)].clone(),
                5 => c.extend([
                    s("TTL"),
                    [&b"0"[..], b"-3", b"x", b""][rng.usize(..4)].to_vec(),
                ]),
                _ => c.push(s("NOSUCHOPT")),
            }
            c
        }
        1 => {
            let mut c = vec![s("PAY.CHECK"), key(rng)];
            match rng.u8(..3) {
                0 => {
                    c.truncate(1);
                    open_ended = true;
                }
                1 => c.push(s("YAML")),
                _ => c.extend([s("JSON"), s("JSON")]),
            }
            c
        }
        2 => {
            let mut c = vec![s("PAY.UPDATE"), key(rng), s("failed")];
            match rng.u8(..4) {
                0 => c.truncate(rng.usize(1..3)),
                1 => c[2] = s("refunded"),
                2 => {
                    c.push(s("REASON"));
                    open_ended = true;
                }
                _ => c.extend([s("REF"), vec![]]),
            }
            c
        }
        3 => {
            let mut c = vec![s("PAY.STUCK")];
            match rng.u8(..4) {
                0 => c.extend([
                    s("COUNT"),
                    [&b"0"[..], b"-1", b"x", b"1000001"][rng.usize(..4)].to_vec(),
                ]),
                1 => c.extend([s("OLDER"), s("-5")]),
                2 => c.extend([s("CLAIM"), s("w1")]),
                _ => c.push(s("SIDEWAYS")),
            }
            c
        }
        4 => {
            let mut c = vec![s("PAY.CLAIM"), s("w1")];
            match rng.u8(..3) {
                0 => c.extend([s("LEASE"), s("0")]),
                1 => c.extend([s("LEASE"), s("5"), s("OLDER"), s("x")]),
                _ => c[1] = vec![b'w'; 200],
            }
            c
        }
        _ => {
            // Version byte 0 is never valid: the rest is random.
            let mut blob = vec![0u8];
            blob.extend(junk(rng));
            vec![s("PAY.LOAD"), key(rng), blob]
        }
    };
    // A random trailing argument (an unknown option, or one too many).
    if !open_ended && rng.bool() {
        let extra = junk(rng);
        if !extra.is_empty() && extra.len() > 8 {
            cmd.push(extra);
        }
    }
    cmd
}

#[test]
fn a_storm_of_hostile_commands_changes_nothing_and_never_crashes() {
    const COMMANDS: usize = 100_000;
    let s = Server::start();
    let mut c = s.conn();
    for i in 0..20 {
        cache(&mut c, &format!("k{i}"), "u1", 100, "USD");
    }
    update(&mut c, "k3", "succeeded");
    let d = digest(&mut c);
    let mut rng = fastrand::Rng::with_seed(0x9a7_5eed);
    let mut sent = 0;
    let mut generated = 0;
    // Where PAY.LOAD is an internal command (Redis 8) it does not exist for
    // clients: the server answers its own unknown-command error, echoing
    // (binary) arguments, before the module sees it. Not sent there.
    let internal = has_internal_command_flag(&mut c);
    while generated < COMMANDS {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let batch: Vec<Vec<Vec<u8>>> = (0..1000)
            .map(|_| hostile(&mut rng))
            .filter(|cmd| !(internal && cmd[0] == b"PAY.LOAD"))
            .collect();
        generated += 1000;
        for cmd in &batch {
            let mut r = redis::cmd(std::str::from_utf8(&cmd[0]).unwrap());
            for a in &cmd[1..] {
                r.arg(a.as_slice());
            }
            pipe.add_command(r);
        }
        let replies: Vec<Value> = pipe.query(&mut c).expect("server alive");
        for (cmd, reply) in batch.iter().zip(&replies) {
            let shown: Vec<String> = cmd
                .iter()
                .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into())
                .collect();
            assert!(
                matches!(reply, Value::ServerError(_)),
                "{shown:?} -> {reply:?}"
            );
        }
        sent += batch.len();
    }
    assert_eq!(digest(&mut c), d, "the storm changed the data");
    let refused = info_field(&mut c, "errors") + refused_by_server(&mut c);
    assert_eq!(refused, sent as i64);
    assert_index_exact(&mut c, &[0]);
}

/// A PAY.LOAD blob for a pending record with the given timestamps.
fn blob(created_at: i64, updated_at: i64) -> Vec<u8> {
    let mut b = vec![1u8, 0, 0];
    b.extend_from_slice(b"USD");
    b.extend_from_slice(&1i64.to_le_bytes());
    b.extend_from_slice(&created_at.to_le_bytes());
    b.extend_from_slice(&updated_at.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for s in [&b"u"[..], b"", b""] {
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s);
    }
    b
}

#[test]
fn a_forged_record_dated_past_year_9999_is_refused_and_json_never_crashes() {
    let s = Server::start();
    let mut c = s.conn();
    // A record from far in the future: no command could write it.
    let far = 300_000_000_000_000i64;
    // (PAY.LOAD refuses clients: the forged record comes as a RESTORE
    // payload, and its load fails with a log line naming the reason.)
    let payload = record_payload(&mut c, &blob(1, far));
    let e = err(&mut c, redis::cmd("RESTORE").arg("far").arg(0).arg(payload));
    assert!(e.starts_with("ERR Bad data format"), "{e}");
    assert!(
        s.log()
            .contains("invalid payment record: timestamps beyond year 9999"),
        "{}",
        s.log()
    );
    assert_eq!(check(&mut c, "far"), None);
    // The latest timestamp a record may hold still renders.
    let last = 253_402_300_799_999i64;
    let payload = record_payload(&mut c, &blob(last, last));
    let _: () = redis::cmd("RESTORE")
        .arg("last")
        .arg(0)
        .arg(payload)
        .query(&mut c)
        .unwrap();
    let json: String = redis::cmd("PAY.CHECK")
        .arg("last")
        .arg("JSON")
        .query(&mut c)
        .unwrap();
    assert!(
        json.contains(r#""timestamp":"9999-12-31T23:59:59Z""#),
        "{json}"
    );
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
}
