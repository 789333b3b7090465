//! The sidecar's view of Redis: the primaries to claim from (one server, or
//! every primary of a cluster), the PAY.* calls it makes, and a connection
//! for its own bookkeeping keys (alert state, the Slack outbox) that routes
//! by key in a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Client, ConnectionAddr, ConnectionLike, Value};

/// A payment record as PAY.* returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The full Redis key: what every Redis command names.
    pub key: String,
    /// The key without the module's `pay.key-prefix`: what the provider
    /// knows (URL, Idempotency-Key, body).
    pub transaction_id: String,
    pub user_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub created_at: i64,
    pub attempts: u32,
    pub reason: String,
    pub provider_ref: String,
    pub lease_owner: String,
    pub lease_until: i64,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a record reply: a RESP3 map or a RESP2 flat field/value array.
pub fn parse_record(v: &Value) -> Option<Record> {
    let pairs: Vec<(String, String)> = match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((text(k)?, text(v)?)),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    let f: BTreeMap<String, String> = pairs.into_iter().collect();
    let get = |name: &str| f.get(name).cloned().unwrap_or_default();
    let num = |name: &str| f.get(name).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let transaction_id = f.get("transaction_id")?.clone();
    Some(Record {
        // A module before contract v2 has no `key` field: its key is the id.
        key: f
            .get("key")
            .cloned()
            .unwrap_or_else(|| transaction_id.clone()),
        transaction_id,
        user_id: get("user_id"),
        amount: num("amount"),
        currency: get("currency"),
        status: get("status"),
        created_at: num("created_at"),
        attempts: u32::try_from(num("attempts")).unwrap_or(u32::MAX),
        reason: get("reason"),
        provider_ref: get("provider_ref"),
        lease_owner: get("lease_owner"),
        lease_until: num("lease_until"),
    })
}

fn records(v: Value) -> Vec<Record> {
    match v {
        Value::Array(items) => items.iter().filter_map(parse_record).collect(),
        _ => Vec::new(),
    }
}

/// One primary: the sidecar claims its stuck payments there.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    client: Client,
}

impl Node {
    pub fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self
            .client
            .get_connection_with_timeout(Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(c)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// PAY.CLAIM consumer LEASE ms COUNT n: leases up to `count` stale
/// unresolved payments to `consumer` for `lease`; each reply counts the
/// attempt this claim is.
pub fn claim(
    c: &mut dyn ConnectionLike,
    consumer: &str,
    count: usize,
    lease: Duration,
) -> redis::RedisResult<Vec<Record>> {
    let v: Value = redis::cmd("PAY.CLAIM")
        .arg(consumer)
        .arg("LEASE")
        .arg(millis(lease))
        .arg("COUNT")
        .arg(count)
        .query(c)?;
    Ok(records(v))
}

/// Unresolved (`pending` and `unknown`) payments created at least `older`
/// ago, oldest first (read-only).
pub fn stuck(
    c: &mut dyn ConnectionLike,
    older: Duration,
    count: usize,
) -> redis::RedisResult<Vec<Record>> {
    let v: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(millis(older))
        .arg("COUNT")
        .arg(count)
        .query(c)?;
    Ok(records(v))
}

/// The options of one PAY.UPDATE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change<'a> {
    pub reason: Option<&'a str>,
    pub reference: Option<&'a str>,
    /// Not claimable again for this long (with `pending`/`unknown`).
    pub retry: Option<Duration>,
    /// Applies only if the record's attempts are still this (the claim's).
    pub fence: Option<u32>,
}

/// PAY.UPDATE key status [REASON text] [REF provider_ref] [RETRY ms] [FENCE n]
pub fn update(
    c: &mut dyn ConnectionLike,
    key: &str,
    status: &str,
    change: &Change,
) -> redis::RedisResult<Record> {
    let mut cmd = redis::cmd("PAY.UPDATE");
    cmd.arg(key).arg(status);
    if let Some(r) = change.reason {
        cmd.arg("REASON").arg(truncate(r, 1024));
    }
    if let Some(r) = change.reference.filter(|r| !r.is_empty()) {
        cmd.arg("REF").arg(truncate(r, 255));
    }
    if let Some(d) = change.retry {
        cmd.arg("RETRY").arg(millis(d).max(1));
    }
    if let Some(n) = change.fence {
        cmd.arg("FENCE").arg(n);
    }
    let v: Value = cmd.query(c)?;
    parse_record(&v).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not a record"))
    })
}

/// PAY.CHECK key: None when the payment is gone.
pub fn check(c: &mut dyn ConnectionLike, key: &str) -> redis::RedisResult<Option<Record>> {
    let v: Value = redis::cmd("PAY.CHECK").arg(key).query(c)?;
    Ok(parse_record(&v))
}

/// An error as Redis wrote it (`WRONGTYPE Operation against ...`), for logs:
/// the client library's own rendering names some codes differently.
pub fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// The module's own thresholds, from `INFO pay` (contract v2 lists
/// `pay_alert_after_ms`): None when INFO cannot be read or lacks it.
pub fn alert_after(c: &mut dyn ConnectionLike) -> Option<Duration> {
    let info: String = redis::cmd("INFO").arg("pay").query(c).ok()?;
    info_ms(&info, "pay_alert_after_ms")
}

fn info_ms(info: &str, field: &str) -> Option<Duration> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Where the sidecar reaches Redis.
pub struct Topology {
    pub primaries: Vec<Node>,
    seed: Client,
    cluster: Option<redis::cluster::ClusterClient>,
}

impl Topology {
    /// One server, or every primary of the cluster `url` belongs to. The
    /// URL's credentials (password or ACL user) are used for every node.
    pub fn discover(url: &str) -> redis::RedisResult<Topology> {
        let seed = Client::open(url)?;
        let mut c = seed.get_connection_with_timeout(Duration::from_secs(5))?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut c)?;
        if !info.contains("cluster_enabled:1") {
            let name = format!("{}", seed.get_connection_info().addr());
            return Ok(Topology {
                primaries: vec![Node {
                    name,
                    client: seed.clone(),
                }],
                seed,
                cluster: None,
            });
        }
        let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c)?;
        let mut addrs = Vec::new();
        for range in &slots {
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(primary)) = parts.get(2) else {
                continue;
            };
            let (Some(host), Some(port)) = (
                primary.first().and_then(text),
                primary.get(1).and_then(text),
            ) else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if !addrs.contains(&(host.clone(), port)) {
                addrs.push((host, port));
            }
        }
        let info = seed.get_connection_info().clone();
        let primaries = addrs
            .into_iter()
            .map(|(host, port)| {
                let node_info = info
                    .clone()
                    .set_addr(ConnectionAddr::Tcp(host.clone(), port));
                Ok(Node {
                    name: format!("{host}:{port}"),
                    client: Client::open(node_info)?,
                })
            })
            .collect::<redis::RedisResult<Vec<Node>>>()?;
        let cluster = redis::cluster::ClusterClientBuilder::new(vec![info]).build()?;
        Ok(Topology {
            primaries,
            seed,
            cluster: Some(cluster),
        })
    }

    /// A connection that routes each command by its key: for the sidecar's
    /// own keys and for PAY.CHECK/PAY.UPDATE by key.
    pub fn keyed(&self) -> redis::RedisResult<Box<dyn ConnectionLike + Send>> {
        match &self.cluster {
            Some(cluster) => Ok(Box::new(cluster.get_connection()?)),
            None => {
                let c = self
                    .seed
                    .get_connection_with_timeout(Duration::from_secs(5))?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok(Box::new(c))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flat_and_map_records() {
        let flat = Value::Array(vec![
            Value::BulkString(b"transaction_id".to_vec()),
            Value::BulkString(b"t1".to_vec()),
            Value::BulkString(b"amount".to_vec()),
            Value::Int(1000),
            Value::BulkString(b"attempts".to_vec()),
            Value::Int(2),
        ]);
        let r = parse_record(&flat).unwrap();
        assert_eq!((r.key.as_str(), r.amount, r.attempts), ("t1", 1000, 2));
        assert_eq!(r.transaction_id, "t1");
        let map = Value::Map(vec![(
            Value::BulkString(b"transaction_id".to_vec()),
            Value::BulkString(b"t2".to_vec()),
        )]);
        assert_eq!(parse_record(&map).unwrap().key, "t2");
        assert_eq!(parse_record(&Value::Nil), None);
    }

    #[test]
    fn the_key_and_the_transaction_id_are_kept_apart() {
        let flat = Value::Array(
            [
                "transaction_id",
                "txn_1",
                "attempts",
                "3",
                "key",
                "payment:txn_1",
            ]
            .iter()
            .map(|s| Value::BulkString(s.as_bytes().to_vec()))
            .collect(),
        );
        let r = parse_record(&flat).unwrap();
        assert_eq!(r.key, "payment:txn_1");
        assert_eq!(r.transaction_id, "txn_1");
    }

    #[test]
    fn reads_thresholds_from_info() {
        let info = "# pay\r\npay_alert_after_msx:1\r\npay_alert_after_ms:600000\r\n";
        assert_eq!(
            info_ms(info, "pay_alert_after_ms"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(info_ms(info, "pay_stale_after_ms"), None);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
