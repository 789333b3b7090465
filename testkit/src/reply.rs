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

/// A scalar reply as text; panics on anything else.
pub fn text(v: &Value) -> String {
    pay_proto::reply::text(v).unwrap_or_else(|| panic!("not a scalar: {v:?}"))
}

/// A record reply (RESP3 map or RESP2 flat array) as field -> text; panics
/// on anything else.
pub fn record(v: &Value) -> BTreeMap<String, String> {
    pay_proto::reply::fields(v).unwrap_or_else(|e| panic!("{e}"))
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
