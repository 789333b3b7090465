//! Talking to the servers and the Sentinels: connections with short
//! timeouts, the primary as the Sentinels name it, INFO fields, and payment
//! records as PAY.* return them.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Connection, Value};

/// The master name the Sentinels monitor.
pub const MASTER: &str = "pay";

pub fn connect(port: u16, timeout: Duration) -> redis::RedisResult<Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(c)
}

/// What one Sentinel says the primary is.
pub fn sentinel_primary(sentinel: u16) -> Option<u16> {
    let mut c = connect(sentinel, Duration::from_millis(300)).ok()?;
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER)
        .query(&mut c)
        .ok()?;
    addr.and_then(|(_, port)| port.parse().ok())
}

/// The primary, as the first Sentinel that answers names it (what a client
/// library does).
pub fn primary(sentinels: &[u16]) -> Option<u16> {
    sentinels.iter().find_map(|s| sentinel_primary(*s))
}

/// `ROLE`'s first element: "master" or "slave".
pub fn role(c: &mut Connection) -> Option<String> {
    let v: Value = redis::cmd("ROLE").query(c).ok()?;
    match v {
        Value::Array(items) => items.first().and_then(text),
        _ => None,
    }
}

pub use pay_proto::reply::text;

/// `INFO section` as field -> value.
pub fn info(c: &mut Connection, section: &str) -> Option<BTreeMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query(c).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
    )
}

/// A record reply as field -> value; None for anything else (nil, an
/// error, a reply without a status).
pub fn record(v: &Value) -> Option<BTreeMap<String, String>> {
    pay_proto::reply::fields(v)
        .ok()
        .filter(|f| f.contains_key(pay_proto::field::STATUS))
}

/// PAY.CHECK key: Ok(None) when there is no such payment.
pub fn check(
    c: &mut Connection,
    key: &str,
) -> redis::RedisResult<Option<BTreeMap<String, String>>> {
    let v: Value = redis::cmd("PAY.CHECK").arg(key).query(c)?;
    Ok(record(&v))
}

/// Every payment key (`payment:*`) on a server, by SCAN.
pub fn scan_payments(c: &mut Connection) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    for _ in 0..1_000_000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("payment:*")
            .arg("COUNT")
            .arg(1000)
            .query(c)?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// PAY.STUCK OLDER 0: every unresolved payment, from the index.
pub fn stuck_all(c: &mut Connection) -> redis::RedisResult<Vec<BTreeMap<String, String>>> {
    let v: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(100_000)
        .query(c)?;
    Ok(match v {
        Value::Array(items) => items.iter().filter_map(record).collect(),
        _ => Vec::new(),
    })
}

/// The sidecar's alert state (README, "alerts"): the payment keys in
/// `{pay:alerts}:unknown` (members are `key|created_at`), and how many
/// messages wait in the outbox.
pub fn alert_state(
    c: &mut Connection,
) -> redis::RedisResult<(std::collections::BTreeSet<String>, u64)> {
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("{pay:alerts}:unknown")
        .arg(0)
        .arg(-1)
        .query(c)?;
    let outbox: u64 = redis::cmd("LLEN").arg("{pay:alerts}:outbox").query(c)?;
    let keys = members
        .iter()
        .map(|m| {
            m.rsplit_once('|')
                .map_or(m.as_str(), |(k, _)| k)
                .to_string()
        })
        .collect();
    Ok((keys, outbox))
}
