//! The sidecar's view of Redis: the primaries to claim from (one server,
//! every primary of a cluster, or the primary Sentinel names), found again
//! every round; the PAY.* calls it makes; and a connection for its own
//! bookkeeping keys (alert state, the Slack outbox) that routes by key in a
//! cluster. TLS (rediss://, a private CA, client certificates) is the
//! `redis` crate's own, on every connection.

use std::sync::Mutex;
use std::time::Duration;

use pay_proto::limits::{MAX_REASON_LEN, MAX_REF_LEN};
use pay_proto::Status;
use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo, TlsCertificates,
    TlsMode, Value,
};

use pay_proto::reply::text;
pub use pay_proto::reply::Record;

/// The records of a PAY.CLAIM or PAY.STUCK reply. One the sidecar cannot
/// read is logged and left alone: acting on half a payment could charge the
/// wrong amount, and the payment stays listed for an operator.
fn records(v: Value) -> Vec<Record> {
    let Value::Array(items) = v else {
        log::error!("expected an array of records, got {v:?}");
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            Record::from_reply(item)
                .map_err(|e| log::error!("an unreadable record is left alone: {e}"))
                .ok()
        })
        .collect()
}

fn unreadable(e: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unreadable record",
        e,
    ))
}

/// One primary: the sidecar claims its stuck payments there.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    client: Client,
}

impl Node {
    pub fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        c.set_write_timeout(Some(COMMAND_TIMEOUT))?;
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

/// Whether at least `replicas` replicas have this connection's writes
/// (`WAIT`, up to `timeout`); always true for 0.
pub fn replicated(
    c: &mut dyn ConnectionLike,
    replicas: u32,
    timeout: Duration,
) -> redis::RedisResult<bool> {
    if replicas == 0 {
        return Ok(true);
    }
    let acked: i64 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(millis(timeout).max(1))
        .query(c)?;
    Ok(acked >= i64::from(replicas))
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
    status: Status,
    change: &Change,
) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("PAY.UPDATE");
    cmd.arg(key).arg(status.as_str());
    if let Some(r) = change.reason {
        cmd.arg("REASON").arg(truncate(r, MAX_REASON_LEN));
    }
    if let Some(r) = change.reference.filter(|r| !r.is_empty()) {
        cmd.arg("REF").arg(truncate(r, MAX_REF_LEN));
    }
    if let Some(d) = change.retry {
        cmd.arg("RETRY").arg(millis(d).max(1));
    }
    if let Some(n) = change.fence {
        cmd.arg("FENCE").arg(n);
    }
    // The reply is the record as written; the sidecar needs only to know
    // that it was written (an error reply says why not).
    cmd.query::<Value>(c).map(drop)
}

/// PAY.CHECK key: None when the payment is gone.
pub fn check(c: &mut dyn ConnectionLike, key: &str) -> redis::RedisResult<Option<Record>> {
    match redis::cmd("PAY.CHECK").arg(key).query(c)? {
        Value::Nil => Ok(None),
        v => Record::from_reply(&v).map(Some).map_err(unreadable),
    }
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
    info_field(info, field)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// The value of `field` in an INFO reply (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// What the module's guard reports in `INFO pay`: whether the eviction
/// policy may drop unresolved payments, and how many were lost anyway since
/// the server started (`run_id`, from `INFO server`, names that start).
/// None from a module before these fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    pub eviction_unsafe: bool,
    pub unresolved_lost: u64,
    pub run_id: String,
}

pub fn guard(c: &mut dyn ConnectionLike) -> redis::RedisResult<Option<Guard>> {
    let info: String = redis::cmd("INFO").arg("pay").arg("server").query(c)?;
    let text = |name: &str| info_field(&info, name);
    let field = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    Ok(
        match (field("pay_eviction_unsafe"), field("pay_unresolved_lost")) {
            (Some(e), Some(lost)) => Some(Guard {
                eviction_unsafe: e != 0,
                unresolved_lost: lost,
                run_id: text("run_id").unwrap_or_default().to_string(),
            }),
            _ => None,
        },
    )
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

/// A node's host and port.
pub type Address = (String, u16);

/// Sentinels that name the primary: their addresses, the master name they
/// monitor, and their own password if they have one.
pub struct Sentinels {
    pub addrs: Vec<Address>,
    pub master: String,
    pub password: Option<String>,
}

/// How the sidecar reaches Redis: the URL's user, password, database and
/// TLS, the certificates, and how the primaries are found. Every connection
/// it makes (workers, alerts, the `pay:stale` listener, cluster routing,
/// Sentinel) is made here, so each one speaks TLS when the URL does.
///
/// Nothing is cached that a failover can make wrong: [`Redis::discover`]
/// asks again each time (Sentinel for its primary, a cluster for its
/// slots), and the daemon calls it every round and after any error.
pub struct Redis {
    /// The URL as given: its address is the server (or the first cluster node
    /// to ask); its credentials are used on every data node.
    url: ConnectionInfo,
    certs: Option<TlsCertificates>,
    sentinel: Option<Mutex<SentinelClient>>,
    /// Every cluster node seen at the last discovery (replicas too), asked
    /// when the URL's node is down.
    known: Mutex<Vec<Address>>,
}

/// The primaries found by one discovery.
pub struct Topology {
    pub primaries: Vec<Node>,
    /// A cluster's nodes (primaries and replicas), for key routing; None for
    /// a single primary.
    cluster: Option<Vec<Address>>,
}

/// How long connecting to a node may take, and one command.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

fn is_tls(addr: &ConnectionAddr) -> bool {
    matches!(addr, ConnectionAddr::TcpTls { .. })
}

fn host_port(addr: &ConnectionAddr) -> Option<(String, u16)> {
    match addr {
        ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
        ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn node_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Redis {
    /// Checks the URL and certificates; connects to nothing yet.
    pub fn new(
        url: &str,
        certs: Option<TlsCertificates>,
        sentinels: Option<Sentinels>,
    ) -> redis::RedisResult<Redis> {
        let url = url.into_connection_info()?;
        let tls = is_tls(url.addr());
        if certs.is_some() && !tls {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "certificates need a rediss:// URL",
            )));
        }
        let sentinel = match sentinels {
            None => None,
            Some(s) => {
                let addrs = s.addrs.iter().map(|(host, port)| {
                    if tls {
                        ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host.clone(), *port)
                    }
                });
                let mut b =
                    SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master)?
                        .set_client_to_redis_db(url.redis_settings().db())
                        .set_client_to_redis_protocol(url.redis_settings().protocol());
                if let Some(user) = url.redis_settings().username() {
                    b = b.set_client_to_redis_username(user);
                }
                if let Some(password) = url.redis_settings().password() {
                    b = b.set_client_to_redis_password(password);
                }
                if let Some(password) = &s.password {
                    b = b.set_client_to_sentinel_password(password);
                }
                if tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = &certs {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs.clone());
                    }
                }
                Some(Mutex::new(b.build()?))
            }
        };
        Ok(Redis {
            url,
            certs,
            sentinel,
            known: Mutex::new(Vec::new()),
        })
    }

    /// A client for one data node, with the URL's credentials and TLS.
    fn client_at(&self, host: &str, port: u16) -> redis::RedisResult<Client> {
        let addr = if is_tls(self.url.addr()) {
            ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_string(), port)
        };
        let info = self.url.clone().set_addr(addr);
        match &self.certs {
            Some(certs) => Client::build_with_tls(info, certs.clone()),
            None => Client::open(info),
        }
    }

    /// The primaries as they are now: the one Sentinel names, or every
    /// primary of the cluster (asked of the URL's node, else of any node
    /// seen before), or the URL's server.
    pub fn discover(&self) -> redis::RedisResult<Topology> {
        if let Some(sentinel) = &self.sentinel {
            let client = sentinel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_client()?;
            let name = match host_port(client.get_connection_info().addr()) {
                Some((host, port)) => node_name(&host, port),
                None => client.get_connection_info().addr().to_string(),
            };
            return Ok(Topology {
                primaries: vec![Node { name, client }],
                cluster: None,
            });
        }
        let Some(first) = host_port(self.url.addr()) else {
            // A unix socket: one server.
            let client = self.client_from_url()?;
            return Ok(Topology {
                primaries: vec![Node {
                    name: self.url.addr().to_string(),
                    client,
                }],
                cluster: None,
            });
        };
        let mut seeds = vec![first.clone()];
        for node in self.known.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !seeds.contains(node) {
                seeds.push(node.clone());
            }
        }
        let mut last_err = None;
        for (host, port) in seeds {
            let client = if (host.clone(), port) == first {
                self.client_from_url()?
            } else {
                self.client_at(&host, port)?
            };
            match self.read_topology(&client, (host, port) == first) {
                Ok(Some(t)) => return Ok(t),
                Ok(None) => continue,
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "no node of the cluster answered"))
        }))
    }

    fn client_from_url(&self) -> redis::RedisResult<Client> {
        match &self.certs {
            Some(certs) => Client::build_with_tls(self.url.clone(), certs.clone()),
            None => Client::open(self.url.clone()),
        }
    }

    /// What one node says: a single server (only the URL's node counts as
    /// one: Ok(None) for another node that left the cluster), or the
    /// cluster's primaries by CLUSTER SLOTS.
    fn read_topology(&self, client: &Client, is_url: bool) -> redis::RedisResult<Option<Topology>> {
        let mut c = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        c.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        let info: String = redis::cmd("INFO").arg("cluster").query(&mut c)?;
        if !info.contains("cluster_enabled:1") {
            if !is_url {
                return Ok(None);
            }
            let name = match host_port(client.get_connection_info().addr()) {
                Some((host, port)) => node_name(&host, port),
                None => client.get_connection_info().addr().to_string(),
            };
            return Ok(Some(Topology {
                primaries: vec![Node {
                    name,
                    client: client.clone(),
                }],
                cluster: None,
            }));
        }
        let slots: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c)?;
        let (primaries, nodes) = slot_owners(&slots);
        if primaries.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the cluster has no slots assigned yet",
            )));
        }
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = nodes.clone();
        let primaries = primaries
            .into_iter()
            .map(|(host, port)| {
                Ok(Node {
                    name: node_name(&host, port),
                    client: self.client_at(&host, port)?,
                })
            })
            .collect::<redis::RedisResult<Vec<Node>>>()?;
        Ok(Some(Topology {
            primaries,
            cluster: Some(nodes),
        }))
    }

    /// A connection that routes each command by its key: for the sidecar's
    /// own keys and for PAY.CHECK/PAY.UPDATE by key. Made anew after an
    /// error, it follows the primaries where they are now.
    pub fn keyed(&self) -> redis::RedisResult<Box<dyn ConnectionLike + Send>> {
        let topology = self.discover()?;
        match &topology.cluster {
            Some(nodes) => {
                let infos = nodes
                    .iter()
                    .map(|(host, port)| {
                        let client = self.client_at(host, port.to_owned())?;
                        Ok(client.get_connection_info().clone())
                    })
                    .collect::<redis::RedisResult<Vec<ConnectionInfo>>>()?;
                let mut b = ClusterClientBuilder::new(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    // A node that is down fails the command soon; the
                    // caller makes a new connection, from a new topology.
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(500);
                if let Some(certs) = &self.certs {
                    b = b.certs(certs.clone());
                }
                Ok(Box::new(b.build()?.get_connection()?))
            }
            None => match topology.primaries.into_iter().next() {
                Some(node) => Ok(Box::new(node.connect()?)),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "no primary found",
                ))),
            },
        }
    }
}

/// From a CLUSTER SLOTS reply: the primaries (each once, in slot order) and
/// every node listed (primaries, then replicas).
fn slot_owners(slots: &[Value]) -> (Vec<Address>, Vec<Address>) {
    let (mut primaries, mut replicas) = (Vec::new(), Vec::new());
    for range in slots {
        let Value::Array(parts) = range else { continue };
        for (i, node) in parts.iter().enumerate().skip(2) {
            let Value::Array(node) = node else { continue };
            let (Some(host), Some(port)) =
                (node.first().and_then(text), node.get(1).and_then(text))
            else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            // A node without an address announces "" or "?".
            if host.is_empty() || host == "?" || port == 0 {
                continue;
            }
            let list = if i == 2 {
                &mut primaries
            } else {
                &mut replicas
            };
            if !list.contains(&(host.clone(), port)) {
                list.push((host, port));
            }
        }
    }
    let mut nodes = primaries.clone();
    for r in replicas {
        if !nodes.contains(&r) {
            nodes.push(r);
        }
    }
    (primaries, nodes)
}

/// Errors that say the node is not (or no longer) the primary for this
/// work: it was demoted (READONLY, MOVED), is failing over or loading, or
/// cannot replicate as configured (NOREPLICAS). The drain on it ends; the
/// next discovery finds where the primary is now.
pub fn primary_moved(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some(
            "READONLY"
                | "MOVED"
                | "ASK"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "MASTERDOWN"
                | "LOADING"
                | "NOREPLICAS"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_reply_keeps_the_records_it_can_read_and_leaves_half_ones_alone() {
        let flat = |items: &[&str]| {
            Value::Array(
                items
                    .iter()
                    .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let whole = [
            "transaction_id",
            "t1",
            "user_id",
            "u",
            "amount",
            "500",
            "currency",
            "EUR",
            "status",
            "pending",
        ];
        let no_amount = ["transaction_id", "t2", "user_id", "u", "currency", "EUR"];
        let got = records(Value::Array(vec![
            flat(&whole),
            flat(&no_amount),
            Value::Nil,
        ]));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].key.as_str(), got[0].amount), ("t1", 500));
        assert!(records(Value::Nil).is_empty());
    }

    #[test]
    fn cluster_slots_give_each_primary_once_and_every_node_to_ask() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |host: &str, port: i64| Value::Array(vec![b(host), Value::Int(port), b("id")]);
        let range = |lo: i64, hi: i64, nodes: Vec<Value>| {
            let mut v = vec![Value::Int(lo), Value::Int(hi)];
            v.extend(nodes);
            Value::Array(v)
        };
        let slots = [
            range(0, 99, vec![node("10.0.0.1", 7000), node("10.0.0.2", 7001)]),
            range(100, 199, vec![node("10.0.0.3", 7002)]),
            // The first primary again, and a replica without an address.
            range(200, 299, vec![node("10.0.0.1", 7000), node("?", 7005)]),
        ];
        let (primaries, nodes) = slot_owners(&slots);
        let addr = |h: &str, p: u16| (h.to_string(), p);
        assert_eq!(primaries, [addr("10.0.0.1", 7000), addr("10.0.0.3", 7002)]);
        assert_eq!(
            nodes,
            [
                addr("10.0.0.1", 7000),
                addr("10.0.0.3", 7002),
                addr("10.0.0.2", 7001)
            ]
        );
        assert_eq!(node_name("::1", 7000), "[::1]:7000");
    }

    #[test]
    fn a_demoted_or_moving_primary_is_told_from_a_refused_write() {
        for (reply, moved) in [
            (
                &b"-READONLY You can't write against a read only replica.\r\n"[..],
                true,
            ),
            (&b"-MOVED 3999 127.0.0.1:6381\r\n"[..], true),
            (
                &b"-NOREPLICAS Not enough good replicas to write.\r\n"[..],
                true,
            ),
            (&b"-WRONGTYPE Operation against a key\r\n"[..], false),
            (&b"-FENCED attempts is 3, not 2\r\n"[..], false),
        ] {
            let e = redis::parse_redis_value(reply)
                .unwrap()
                .extract_error()
                .unwrap_err();
            assert_eq!(primary_moved(&e), moved, "{e}");
        }
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
