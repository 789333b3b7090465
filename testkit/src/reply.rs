//! Reading replies: error text, scalars, records (RESP3 map or RESP2 flat
//! array), INFO fields.

use std::collections::BTreeMap;

use redis::{Connection, Value};

use crate::*;

/// Runs a command, expecting an error; returns its text.
pub fn err(c: &mut Connection, cmd: &redis::Cmd) -> String {
    match cmd.query::<Value>(c) {
        Err(e) => {
            let code = e.code().unwrap_or("");
            let detail = e.detail().unwrap_or("");
            format!("{code} {detail}").trim().to_string()
        }
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::Okay => "OK".into(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A record reply (RESP3 map or RESP2 flat array) as field -> text.
pub fn record(v: &Value) -> BTreeMap<String, String> {
    let pairs: Vec<(String, String)> = match v {
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Array(a) => {
            assert!(a.len() % 2 == 0, "odd flat record: {a:?}");
            a.chunks(2).map(|p| (text(&p[0]), text(&p[1]))).collect()
        }
        other => panic!("not a record: {other:?}"),
    };
    pairs.into_iter().collect()
}

/// A field of INFO pay, as a number.
pub fn info_field(c: &mut Connection, field: &str) -> i64 {
    let info: String = redis::cmd("INFO").arg("pay").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("pay_{field}:")))
        .unwrap_or_else(|| panic!("no pay_{field} in INFO:\n{info}"))
        .trim()
        .parse()
        .unwrap()
}

/// A field of an INFO section, as text.
pub fn info_str(c: &mut Connection, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Redis 8.0 and later have the `internal` command flag.
pub fn has_internal_command_flag(c: &mut Connection) -> bool {
    let (name, (major, _)) = server_version(c);
    name == "redis" && major >= 8
}
