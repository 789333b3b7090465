//! Test harness: real servers with the module loaded, on free loopback ports,
//! in temporary directories, killed on drop even when a test panics.
//!
//! `PAY_SERVER` names the server binary (default `redis-server`); `make test`
//! runs the suite once with Redis and once with Valkey. `PAY_MODULE` names
//! the module (default: the release build in `target/`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

pub fn server_bin() -> String {
    std::env::var("PAY_SERVER").unwrap_or_else(|_| "redis-server".into())
}

pub fn module_path() -> PathBuf {
    // The workspace's target directory: this crate's, or its parent's (the
    // sidecar's tests include this file too).
    let path = std::env::var("PAY_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let here = Path::new(env!("CARGO_MANIFEST_DIR"));
            [here, here.parent().unwrap_or(here)]
                .iter()
                .map(|d| d.join("target/release/libredis_pay.so"))
                .find(|p| p.exists())
                .unwrap_or_else(|| here.join("target/release/libredis_pay.so"))
        });
    assert!(
        path.exists(),
        "module not built at {} (run `make build`)",
        path.display()
    );
    path
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct Opts {
    /// Arguments after `--loadmodule path`.
    pub module_args: Vec<String>,
    /// `--name value` pairs.
    pub config: Vec<(String, String)>,
    /// Start the server without the module (to load it at run time).
    pub skip_module: bool,
}

impl Opts {
    pub fn new() -> Opts {
        Opts::default()
    }

    pub fn config(mut self, name: &str, value: &str) -> Opts {
        self.config.push((name.into(), value.into()));
        self
    }

    /// The sweeper's settings as module arguments: pending payments go stale
    /// after `stale_ms`, and the timer looks every `sweep_ms`.
    pub fn sweeper(stale_ms: u64, sweep_ms: u64) -> Opts {
        Opts::new()
            .module_arg("stale-after-ms")
            .module_arg(&stale_ms.to_string())
            .module_arg("sweep-interval-ms")
            .module_arg(&sweep_ms.to_string())
    }

    pub fn without_module(mut self) -> Opts {
        self.skip_module = true;
        self
    }

    pub fn module_arg(mut self, arg: &str) -> Opts {
        self.module_args.push(arg.into());
        self
    }
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    opts: Opts,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl Server {
    pub fn start() -> Server {
        Server::with(Opts::new())
    }

    pub fn with(opts: Opts) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Server {
            child: None,
            port: 0,
            dir,
            opts,
        };
        s.boot();
        s
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    /// Starts the server process on a free port, retrying if the port was
    /// taken in between.
    fn boot(&mut self) {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(server_bin());
            cmd.arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--enable-debug-command", "yes", "--logfile", "server.log"])
                .arg("--dir")
                .arg(self.dir.path());
            for (k, v) in &self.opts.config {
                cmd.arg(format!("--{k}")).arg(v);
            }
            if !self.opts.skip_module {
                cmd.arg("--loadmodule").arg(module_path());
                cmd.args(&self.opts.module_args);
            }
            cmd.current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd
                .spawn()
                .expect("spawn server (is PAY_SERVER installed?)");
            self.child = Some(child);
            self.port = port;
            if self.wait_ready() {
                return;
            }
            self.kill();
        }
        panic!("server did not start; log:\n{}", self.log());
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if let Ok(mut c) = self.try_conn() {
                // LOADING replies an error until the data set is in memory.
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return true;
                }
            }
            sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the process has exited (e.g. refused to start).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    fn try_conn(&self) -> redis::RedisResult<Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        client.get_connection_with_timeout(Duration::from_secs(5))
    }

    /// A RESP2 connection.
    pub fn conn(&self) -> Connection {
        let c = self.try_conn().expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// A RESP3 connection.
    pub fn conn3(&self) -> Connection {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", self.port))
                .unwrap();
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect resp3")
    }

    /// Kills the process at once (SIGKILL): no save, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SHUTDOWN` with or without a save, then waits for the process to end.
    pub fn shutdown(&mut self, save: bool) {
        let mut c = self.conn();
        let arg = if save { "SAVE" } else { "NOSAVE" };
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg(arg).query(&mut c);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts the server again in the same directory with the same options,
    /// so it loads what the last run persisted.
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }

    pub fn set_opts(&mut self, opts: Opts) {
        self.opts = opts;
    }
}

impl Drop for Server {
    /// A graceful SHUTDOWN NOSAVE first (so a server under valgrind can print
    /// its summary), then SIGKILL if it is still there after a few seconds.
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            self.child = None;
            return;
        }
        if let Ok(mut c) = self.try_conn() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut c);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(None)) => sleep(Duration::from_millis(10)),
                _ => break,
            }
        }
        self.kill();
    }
}

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

pub fn cache(
    c: &mut Connection,
    key: &str,
    user: &str,
    amount: i64,
    cur: &str,
) -> BTreeMap<String, String> {
    let v: Value = redis::cmd("PAY.CACHE")
        .arg(key)
        .arg(user)
        .arg(amount)
        .arg(cur)
        .query(c)
        .expect("PAY.CACHE");
    record(&v)
}

pub fn check(c: &mut Connection, key: &str) -> Option<BTreeMap<String, String>> {
    let v: Value = redis::cmd("PAY.CHECK")
        .arg(key)
        .query(c)
        .expect("PAY.CHECK");
    match v {
        Value::Nil => None,
        v => Some(record(&v)),
    }
}

pub fn update(c: &mut Connection, key: &str, status: &str) -> BTreeMap<String, String> {
    let v: Value = redis::cmd("PAY.UPDATE")
        .arg(key)
        .arg(status)
        .query(c)
        .expect("PAY.UPDATE");
    record(&v)
}

/// The transaction ids PAY.STUCK lists (OLDER 0: every pending record).
pub fn stuck_keys(c: &mut Connection) -> Vec<String> {
    stuck_records(c)
        .into_iter()
        .map(|r| r["transaction_id"].clone())
        .collect()
}

/// Every pending record PAY.STUCK lists (OLDER 0), in its order.
pub fn stuck_records(c: &mut Connection) -> Vec<BTreeMap<String, String>> {
    let v: Value = redis::cmd("PAY.STUCK")
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(100_000)
        .query(c)
        .expect("PAY.STUCK");
    match v {
        Value::Array(items) => items.iter().map(record).collect(),
        other => panic!("PAY.STUCK reply: {other:?}"),
    }
}

/// The transaction ids PAY.STUCK lists, as a set (records created in the same
/// millisecond are equally old, in no promised order).
pub fn stuck_set(c: &mut Connection) -> BTreeSet<String> {
    stuck_keys(c).into_iter().collect()
}

pub fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
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

pub fn select(c: &mut Connection, db: i64) {
    let _: () = redis::cmd("SELECT").arg(db).query(c).unwrap();
}

/// Every key of the current database, by SCAN.
pub fn all_keys(c: &mut Connection) -> BTreeSet<String> {
    let mut cursor = 0u64;
    let mut keys = BTreeSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(c)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The invariant behind every index test: in database `db`, PAY.STUCK OLDER 0
/// lists exactly the unresolved (pending and unknown) records a keyspace scan
/// finds, each once, oldest first and equal ages by key, and
/// INFO's per-status counts (over `dbs`) match the records there.
pub fn assert_index_exact(c: &mut Connection, dbs: &[i64]) {
    let mut totals = BTreeMap::<String, i64>::new();
    for &db in dbs {
        select(c, db);
        let mut pending = BTreeSet::new();
        for key in all_keys(c) {
            let v: redis::RedisResult<Value> = redis::cmd("PAY.CHECK").arg(&key).query(c);
            let Ok(v) = v else { continue }; // another type
            if v == Value::Nil {
                continue;
            }
            let r = record(&v);
            assert_eq!(r["key"], key);
            *totals.entry(r["status"].clone()).or_default() += 1;
            if r["status"] == "pending" || r["status"] == "unknown" {
                pending.insert(key);
            }
        }
        let listed = stuck_records(c);
        let ages: Vec<(i64, String)> = listed
            .iter()
            .map(|r| (r["created_at"].parse().unwrap(), r["key"].clone()))
            .collect();
        assert!(
            ages.windows(2).all(|w| w[0] <= w[1]),
            "db {db}: not oldest first, then by key: {ages:?}"
        );
        let listed: Vec<String> = listed.iter().map(|r| r["key"].clone()).collect();
        let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            listed.len(),
            listed_set.len(),
            "db {db}: PAY.STUCK lists a key twice"
        );
        assert_eq!(
            listed_set, pending,
            "db {db}: index differs from the keyspace"
        );
    }
    select(c, 0);
    for status in ["pending", "unknown", "succeeded", "failed"] {
        assert_eq!(
            info_field(c, &format!("records_{status}")),
            totals.get(status).copied().unwrap_or(0),
            "INFO records_{status}"
        );
    }
    assert_eq!(
        info_field(c, "index_misses"),
        0,
        "PAY.STUCK met a stale index entry"
    );
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    f()
}

/// DEBUG DIGEST: one hash of the whole data set.
pub fn digest(c: &mut Connection) -> String {
    redis::cmd("DEBUG").arg("DIGEST").query(c).unwrap()
}

/// How far a key's expiry may differ between two servers holding the same
/// record: 0 where the server has RedisModule_SetAbsExpire (Redis 7.2+,
/// Valkey), 1 ms on Redis 7.0, where the module can only set it relative to
/// the local clock.
pub fn expire_tolerance_ms(c: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("server").query(c).unwrap();
    if info.contains("valkey_version:") {
        return 0;
    }
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0.0.0")
        .trim()
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (7, 2) {
        0
    } else {
        1
    }
}

/// One record as stored: its fields and its absolute expiry.
pub type Stored = (BTreeMap<String, String>, i64);

/// Every payment in the given databases, by (db, key).
pub fn snapshot(c: &mut Connection, dbs: &[i64]) -> BTreeMap<(i64, String), Stored> {
    let mut out = BTreeMap::new();
    for &db in dbs {
        select(c, db);
        for key in all_keys(c) {
            if let Some(r) = check(c, &key) {
                let at: i64 = redis::cmd("PEXPIRETIME").arg(&key).query(c).unwrap();
                out.insert((db, key), (r, at));
            }
        }
    }
    select(c, 0);
    out
}

/// Two snapshots hold the same records, with expiries within `tolerance` ms.
pub fn assert_same_records(
    a: &BTreeMap<(i64, String), Stored>,
    b: &BTreeMap<(i64, String), Stored>,
    tolerance: i64,
) {
    let keys_a: Vec<_> = a.keys().collect();
    let keys_b: Vec<_> = b.keys().collect();
    assert_eq!(keys_a, keys_b, "different keys");
    for (k, (rec_a, at_a)) in a {
        let (rec_b, at_b) = &b[k];
        assert_eq!(rec_a, rec_b, "record {k:?}");
        assert!(
            (at_a - at_b).abs() <= tolerance,
            "expiry of {k:?}: {at_a} vs {at_b}"
        );
    }
}

/// Makes `replica` a replica of `primary` and waits until the link is up.
pub fn replicate(replica: &Server, primary: &Server) {
    let mut r = replica.conn();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query(&mut r)
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut r).unwrap();
            info.contains("master_link_status:up")
        }),
        "replica did not sync"
    );
}

/// Creates payments `{prefix}0` .. `{prefix}{n-1}` (user 67890, 10.00 USD),
/// pipelined in batches of 10,000.
pub fn cache_many(c: &mut Connection, prefix: &str, n: usize) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("PAY.CACHE")
            .arg(format!("{prefix}{i}"))
            .arg(67890)
            .arg(1000)
            .arg("USD")
            .ignore();
        if (i + 1) % 10_000 == 0 || i + 1 == n {
            let _: () = pipe.query(c).unwrap();
            pipe = redis::pipe();
        }
    }
}

/// Times PINGs on a connection of its own until finished: what a client sees
/// of the event loop while something else runs.
pub struct Pinger {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Duration>>,
}

impl Pinger {
    pub fn start(s: &Server) -> Pinger {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut c = s.conn();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _: String = redis::cmd("PING").query(&mut c).unwrap();
                samples.push(t.elapsed());
            }
            samples
        });
        Pinger { stop, handle }
    }

    /// (longest, 99th percentile, number of PINGs)
    pub fn finish(self) -> (Duration, Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut samples = self.handle.join().unwrap();
        samples.sort();
        let n = samples.len();
        let p99 = samples[(n * 99 / 100).min(n - 1)];
        (samples[n - 1], p99, n)
    }
}

/// Sets `pay.stale-after-ms` and waits until the sweeper has flagged
/// `flagged` payments in all, while a [`Pinger`] watches from 200 ms before
/// to 200 ms after. Returns the time to flag them and the PING figures.
pub fn timed_mass_sweep(
    s: &Server,
    c: &mut Connection,
    stale_after_ms: i64,
    flagged: i64,
) -> (Duration, (Duration, Duration, usize)) {
    let pinger = Pinger::start(s);
    sleep(Duration::from_millis(200));
    let t = Instant::now();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.stale-after-ms")
        .arg(stale_after_ms)
        .query(c)
        .unwrap();
    while info_field(c, "flagged") < flagged {
        sleep(Duration::from_millis(5));
    }
    let took = t.elapsed();
    sleep(Duration::from_millis(200));
    (took, pinger.finish())
}

/// `PAY.CLAIM consumer LEASE lease_ms OLDER 0 COUNT count`: the records leased.
pub fn claim(
    c: &mut Connection,
    consumer: &str,
    count: usize,
    lease_ms: u64,
) -> Vec<BTreeMap<String, String>> {
    let v: Value = redis::cmd("PAY.CLAIM")
        .arg(consumer)
        .arg("LEASE")
        .arg(lease_ms)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(count)
        .query(c)
        .unwrap();
    match v {
        Value::Array(items) => items.iter().map(record).collect(),
        other => panic!("{other:?}"),
    }
}

/// PEXPIRETIME of a key (-1: none, -2: no key).
pub fn pexpiretime(c: &mut Connection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME").arg(key).query(c).unwrap()
}

/// The server's product and version from INFO server: ("valkey", (9, 1)) or
/// ("redis", (7, 0)). Valkey also reports a `redis_version` (7.2.4): its own
/// `valkey_version` wins.
pub fn server_version(c: &mut Connection) -> (&'static str, (u32, u32)) {
    let info: String = redis::cmd("INFO").arg("server").query(c).unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let (kind, version) = match field("valkey_version:") {
        Some(v) => ("valkey", v),
        None => ("redis", field("redis_version:").unwrap_or_default()),
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (kind, (parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

/// Starts a server with cluster mode on (and the module's defaults), not yet
/// part of any cluster.
pub fn new_cluster_node() -> Server {
    Server::with(
        Opts::new()
            .config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config("cluster-node-timeout", "5000"),
    )
}

/// `CLUSTER MYID`.
pub fn node_id(s: &Server) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut s.conn())
        .unwrap()
}

/// Makes one cluster of `nodes`, primaries all, node i serving the slots
/// `ranges[i]` (inclusive), and waits until every node says the cluster is
/// ok.
pub fn form_cluster(nodes: &[&Server], ranges: &[(u16, u16)]) {
    assert_eq!(nodes.len(), ranges.len());
    for (n, (first, last)) in nodes.iter().zip(ranges) {
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(first)
            .arg(last)
            .query(&mut n.conn())
            .unwrap();
    }
    for n in &nodes[1..] {
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(n.port)
            .query(&mut nodes[0].conn())
            .unwrap();
    }
    for n in nodes {
        let mut c = n.conn();
        assert!(
            wait_until(Duration::from_secs(20), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", nodes.len()))
            }),
            "cluster did not come up"
        );
    }
}

/// `CLUSTER KEYSLOT key`.
pub fn key_slot(c: &mut Connection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(c)
        .unwrap()
}

/// `n` key names `{prefix}{i}` whose hash slots lie in `first..=last`.
pub fn keys_in_slots(
    c: &mut Connection,
    prefix: &str,
    first: u16,
    last: u16,
    n: usize,
) -> Vec<String> {
    let mut keys = Vec::with_capacity(n);
    for i in 0.. {
        if keys.len() == n {
            break;
        }
        let key = format!("{prefix}{i}");
        if (first..=last).contains(&key_slot(c, &key)) {
            keys.push(key);
        }
    }
    keys
}

/// Moves `slot` and its keys from `from` to `to` the way resharding did
/// before Valkey 9 (and `redis-cli --cluster reshard` still does): IMPORTING
/// and MIGRATING, MIGRATE of the keys in batches, then the new owner on both.
pub fn migrate_slot_by_keys(from: &Server, to: &Server, slot: u16) {
    let (mut f, mut t) = (from.conn(), to.conn());
    let (from_id, to_id) = (node_id(from), node_id(to));
    let setslot = |c: &mut Connection, state: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query(c)
            .unwrap();
    };
    setslot(&mut t, "IMPORTING", &from_id);
    setslot(&mut f, "MIGRATING", &to_id);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut f)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(10_000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut f)
            .unwrap();
    }
    setslot(&mut t, "NODE", &to_id);
    setslot(&mut f, "NODE", &to_id);
}

// ---------------------------------------------------------------------------
// Module safety (issue 11): payloads, binary-safe snapshots, server versions.
// ---------------------------------------------------------------------------

/// Redis's CRC-64 (Jones polynomial, reflected, no final xor): what a DUMP
/// payload ends with, little-endian.
pub fn crc64_jones(bytes: &[u8]) -> u64 {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5; // 0xad93d23594c935a9 reflected
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        t
    });
    bytes.iter().fold(0u64, |crc, &b| {
        table[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// A DUMP payload: `value` (an RDB value), the 2-byte RDB version, and a
/// valid CRC over both.
pub fn seal_payload(value: &[u8], version: [u8; 2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 10);
    out.extend_from_slice(value);
    out.extend_from_slice(&version);
    let crc = crc64_jones(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A DUMP payload's RDB value and RDB version.
pub fn split_payload(payload: &[u8]) -> (&[u8], [u8; 2]) {
    assert!(payload.len() > 10, "short DUMP payload");
    let (value, trailer) = payload.split_at(payload.len() - 10);
    (value, [trailer[0], trailer[1]])
}

pub fn dump(c: &mut Connection, key: &[u8]) -> Option<Vec<u8>> {
    redis::cmd("DUMP").arg(key).query(c).unwrap()
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

/// Every key of the current database, by SCAN, as bytes.
pub fn all_keys_bytes(c: &mut Connection) -> BTreeSet<Vec<u8>> {
    let mut cursor = 0u64;
    let mut keys = BTreeSet::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(c)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Every key of the given databases, byte for byte: its DUMP and its
/// absolute expiry (PEXPIRETIME).
pub type RawSnapshot = BTreeMap<(i64, Vec<u8>), (Vec<u8>, i64)>;

pub fn raw_snapshot(c: &mut Connection, dbs: &[i64]) -> RawSnapshot {
    let mut out = BTreeMap::new();
    for &db in dbs {
        select(c, db);
        for key in all_keys_bytes(c) {
            let mut pipe = redis::pipe();
            pipe.cmd("DUMP").arg(&key).cmd("PEXPIRETIME").arg(&key);
            let (payload, at): (Option<Vec<u8>>, i64) = pipe.query(c).unwrap();
            if let Some(payload) = payload {
                out.insert((db, key), (payload, at));
            }
        }
    }
    select(c, 0);
    out
}

/// Two raw snapshots are equal; on failure, says briefly how they differ.
pub fn assert_same_bytes(a: &RawSnapshot, b: &RawSnapshot, what: &str) {
    let show = |keys: Vec<&(i64, Vec<u8>)>| -> String {
        let shown: Vec<String> = keys
            .iter()
            .take(5)
            .map(|(db, k)| format!("{db}:{:?}", String::from_utf8_lossy(k)))
            .collect();
        format!("{} keys, e.g. {}", keys.len(), shown.join(", "))
    };
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let changed: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && changed.is_empty(),
        "{what}: only in the first: {}; only in the second: {}; changed: {}",
        show(only_a),
        show(only_b),
        show(changed)
    );
}

/// Waits until `r` reports its link to the primary up.
pub fn wait_link_up(r: &mut Connection) {
    assert!(
        wait_until(Duration::from_secs(30), || {
            info_str(r, "replication", "master_link_status").as_deref() == Some("up")
        }),
        "replica link not up"
    );
}

/// WAIT for `n` replicas to acknowledge everything written so far.
pub fn wait_replicas(p: &mut Connection, n: i64) {
    let acked: i64 = redis::cmd("WAIT").arg(n).arg(10_000).query(p).unwrap();
    assert_eq!(acked, n, "replicas did not acknowledge");
}

/// Waits for a background AOF rewrite to finish.
pub fn wait_aof_rewrite(c: &mut Connection) {
    assert!(
        wait_until(Duration::from_secs(30), || {
            info_str(c, "persistence", "aof_rewrite_in_progress").as_deref() == Some("0")
                && info_str(c, "persistence", "aof_rewrite_scheduled").as_deref() == Some("0")
        }),
        "AOF rewrite did not finish"
    );
}

/// The neighbour module (tests/neighbour/neighbour.c), built once per test
/// process with `cc -shared -fPIC` against the redismodule.h the
/// redis-module crate ships (or `PAY_REDISMODULE_H`'s directory).
pub fn neighbour_module() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let here = Path::new(env!("CARGO_MANIFEST_DIR"));
            let source = [here, here.parent().unwrap_or(here)]
                .iter()
                .map(|d| d.join("tests/neighbour/neighbour.c"))
                .find(|p| p.exists())
                .expect("tests/neighbour/neighbour.c");
            let include = redismodule_h_dir();
            let out_dir = option_env!("CARGO_TARGET_TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            std::fs::create_dir_all(&out_dir).expect("create the build directory");
            let out = out_dir.join(format!("neighbour-{}.so", std::process::id()));
            let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
                .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-std=c99"])
                .arg("-I")
                .arg(&include)
                .arg("-o")
                .arg(&out)
                .arg(&source)
                .status()
                .expect("run cc");
            assert!(status.success(), "cc failed to build the neighbour module");
            out
        })
        .clone()
}

/// Where redismodule.h is: `PAY_REDISMODULE_H` (a directory), or the
/// redis-module crate's copy in the cargo registry.
fn redismodule_h_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PAY_REDISMODULE_H") {
        return PathBuf::from(dir);
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let registry = cargo_home.join("registry/src");
    std::fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .flatten()
        .map(|index| index.path().join("redis-module-2.0.8/src/include"))
        .find(|dir| dir.join("redismodule.h").exists())
        .unwrap_or_else(|| {
            panic!(
                "no redis-module-2.0.8 redismodule.h under {}",
                registry.display()
            )
        })
}

/// A RESTORE payload holding the record `blob` (the codec's bytes): how a
/// test writes a record no command could, now that PAY.LOAD refuses
/// clients. The module id and RDB version come from a DUMP of a scratch
/// payment, created and deleted here.
pub fn record_payload(c: &mut Connection, blob: &[u8]) -> Vec<u8> {
    let scratch = "__record_payload_scratch__";
    cache(c, scratch, "u", 1, "USD");
    let model = dump(c, scratch.as_bytes()).expect("DUMP of a payment");
    let _: () = redis::cmd("DEL").arg(scratch).query(c).unwrap();
    let (value, version) = split_payload(&model);
    // Type (module, encoding 2), 0x81 and the 8-byte module id; then the
    // record as one string (opcode 5, RDB length, bytes) and the EOF opcode.
    let mut v = value[..10].to_vec();
    v.push(5);
    let n = blob.len();
    if n < 64 {
        v.push(n as u8);
    } else if n < 16_384 {
        v.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
    } else {
        v.push(0x80);
        v.extend_from_slice(&(n as u32).to_be_bytes());
    }
    v.extend_from_slice(blob);
    v.push(0);
    seal_payload(&v, version)
}
