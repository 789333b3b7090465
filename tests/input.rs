//! Bad input gets a clear error naming what is wrong, and changes nothing.

mod common;

use common::*;
use redis::Value;

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
        (b(&[b"PAY.LOAD", b"k"]), "ERR wrong number of arguments"),
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
        (
            b(&[b"PAY.CHECK", &long_key]),
            "ERR key must be 1 to 255 bytes",
        ),
        (
            b(&[b"PAY.UPDATE", &long_key, b"failed"]),
            "ERR key must be 1 to 255 bytes",
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
            b(&[b"PAY.STUCK", b"CLAIM", b"w1"]),
            "ERR CLAIM and LEASE go together",
        ),
        (
            b(&[b"PAY.STUCK", b"LEASE", b"100"]),
            "ERR CLAIM and LEASE go together",
        ),
        (
            b(&[b"PAY.STUCK", b"SIDEWAYS"]),
            "ERR unknown option 'SIDEWAYS'",
        ),
        // PAY.LOAD with bytes that are not a record.
        (
            b(&[b"PAY.LOAD", b"k", b"garbage"]),
            "ERR invalid payment record",
        ),
        (b(&[b"PAY.LOAD", b"k", b""]), "ERR invalid payment record"),
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
    assert_eq!(info_field(&mut c, "errors"), cases().len() as i64);
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
