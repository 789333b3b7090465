//! Harness for the deployment tests (TLS, Sentinel, Cluster failover): the
//! real pay-sidecar binary, servers the module's harness cannot start (a
//! TLS-only server, Sentinels, a cluster with replicas), certificates made
//! with the `openssl` command, and processes killed on drop even when a test
//! panics. Everything listens on 127.0.0.1.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{free_port, module_path, server_bin, wait_until, Opts};

/// The README's least-privilege ACL user for the sidecar (password s3cret):
/// ROLE for Sentinel's check of the primary, CLUSTER SLOTS in a cluster,
/// EVALSHA/EVAL for the alert scripts (never SCRIPT LOAD).
pub const SIDECAR_ACL: &[&str] = &[
    "on",
    ">s3cret",
    "resetkeys",
    "~*",
    "resetchannels",
    "&pay:stale",
    "-@all",
    "+pay.stuck",
    "+pay.claim",
    "+pay.update",
    "+pay.check",
    "+info",
    "+ping",
    "+subscribe",
    "+role",
    "+cluster|slots",
    "+evalsha",
    "+eval",
    "+zrange",
    "+zscore",
    "+zadd",
    "+zremrangebyscore",
    "+get",
    "+set",
    "+wait",
    "+zrem",
    "+rpush",
    "+lindex",
    "+lpop",
];

/// A running pay-sidecar, killed on drop, its log in a file.
pub struct Sidecar {
    child: Child,
    log: tempfile::NamedTempFile,
}

/// The options every test sidecar gets unless it names them itself.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("--interval", "200ms"),
    ("--lease", "3s"),
    ("--timeout", "1s"),
    ("--connect-timeout", "500ms"),
    ("--alert-after", "1h"),
    ("--retry-schedule", "500ms"),
];

impl Sidecar {
    /// Starts with short test defaults; `args` override them.
    pub fn start(args: &[&str]) -> Sidecar {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pay-sidecar"));
        for (name, value) in DEFAULTS {
            if !args.contains(name) {
                cmd.args([name, value]);
            }
        }
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        let mut child = cmd.spawn().expect("spawn pay-sidecar");
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "pay-sidecar exited at once ({status}):\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        Sidecar { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits for `f`, or fails with the sidecar's log.
    pub fn wait_for(&self, what: &str, secs: u64, f: impl FnMut() -> bool) {
        assert!(
            wait_until(Duration::from_secs(secs), f),
            "timed out waiting for {what}; sidecar log:\n{}",
            self.log()
        );
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process with its own directory, killed (SIGKILL) on drop.
pub struct Proc {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: &'static str,
    /// The binary it runs.
    pub bin: String,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(self.log)).unwrap_or_default()
    }

    /// SIGKILL: no goodbye, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificates made for one test by the `openssl` command: a CA, a server
/// certificate for 127.0.0.1 and localhost, a client certificate, and a
/// second CA that signed neither.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=redis-pay test {ca}"),
            );
            let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt, "-subj", &subj]);
            openssl(d, &args);
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            let (key, csr, crt, ext, subj) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
                format!("/CN=redis-pay test {who}"),
            );
            let mut args = vec!["req", "-nodes"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &args);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &crt,
                    "-extfile",
                    &ext,
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// What a client of the test servers presents: our CA, our certificate.
    pub fn client(&self) -> redis::TlsCertificates {
        let read = |n: &str| std::fs::read(self.dir.path().join(n)).unwrap();
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        }
    }
}

/// A redis-server with the module that speaks TLS only (`--port 0`), asks
/// every client for a certificate signed by the test CA, and listens on
/// `binds` (127.0.0.x addresses). The server is `PAY_SERVER`'s; a build of
/// it without TLS (some packaged Valkey builds) is replaced by Debian's
/// `redis-server`, which has TLS, and the test output says so: what is
/// under test here is the sidecar's TLS.
pub fn tls_server(certs: &Certs, opts: &Opts, binds: &str) -> Proc {
    let mut bin = server_bin();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", binds, "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &certs.path("server.crt")])
            .args(["--tls-key-file", &certs.path("server.key")])
            .args(["--tls-ca-cert-file", &certs.path("ca.crt")])
            .args(["--tls-auth-clients", "yes", "--logfile", "server.log"])
            .arg("--dir")
            .arg(dir.path());
        for (k, v) in &opts.config {
            cmd.arg(format!("--{k}")).arg(v);
        }
        cmd.arg("--loadmodule").arg(module_path());
        cmd.args(&opts.module_args);
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn server");
        let mut p = Proc {
            child: Some(child),
            port,
            dir,
            log: "server.log",
            bin: bin.clone(),
        };
        let ready = wait_until(Duration::from_secs(20), || {
            p.exited()
                || tls_conn(certs, port)
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
        });
        if ready && !p.exited() {
            return p;
        }
        let log = p.log();
        if log.contains("TLS support") && bin != "redis-server" {
            eprintln!("{bin} was built without TLS; the TLS tests use redis-server");
            bin = "redis-server".into();
            continue;
        }
        eprintln!("TLS server did not start; log:\n{log}");
    }
    panic!("TLS server did not start");
}

/// A connection to a test TLS server, with the test client certificate.
pub fn tls_conn(certs: &Certs, port: u16) -> redis::RedisResult<redis::Connection> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client =
        redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/"), certs.client())?;
    let c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(c)
}

/// A Sentinel (the server binary in sentinel mode) monitoring `master` at
/// 127.0.0.1:`master_port` with quorum 2, quick to call it down and to
/// fail over; with `password`, clients and the other Sentinels must give it.
pub fn sentinel(master: &str, master_port: u16, password: Option<&str>) -> Proc {
    sentinel_with(&server_bin(), master, master_port, 2, password, None)
}

/// A Sentinel that speaks TLS only, to its clients and to the servers it
/// watches, with the test certificates (quorum 1: it is alone).
pub fn tls_sentinel(bin: &str, certs: &Certs, master: &str, master_port: u16) -> Proc {
    sentinel_with(bin, master, master_port, 1, None, Some(certs))
}

fn sentinel_with(
    bin: &str,
    master: &str,
    master_port: u16,
    quorum: u8,
    password: Option<&str>,
    tls: Option<&Certs>,
) -> Proc {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let listen = match tls {
            None => format!("port {port}\n"),
            Some(c) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients yes\ntls-replication yes\n",
                c.path("server.crt"),
                c.path("server.key"),
                c.path("ca.crt")
            ),
        };
        let mut conf = format!(
            "{listen}bind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
             sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n\
             sentinel parallel-syncs {master} 1\n",
            dir.path().display()
        );
        if let Some(p) = password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        let path: PathBuf = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(bin)
            .arg(&path)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sentinel");
        let mut p = Proc {
            child: Some(child),
            port,
            dir,
            log: "sentinel.log",
            bin: bin.to_string(),
        };
        let ready = wait_until(Duration::from_secs(20), || {
            p.exited() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if ready && !p.exited() {
            return p;
        }
        eprintln!("sentinel did not start; log:\n{}", p.log());
    }
    panic!("sentinel did not start");
}

pub fn plain_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    redis::cmd("PING").query::<String>(&mut c)?;
    Ok(c)
}

/// `ROLE`'s first field: "master", "slave" or "sentinel"; None if down.
pub fn role(port: u16) -> Option<String> {
    let mut c = plain_conn(port).ok()?;
    let v: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
    match v.first()? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One shard of a test cluster: indexes into its node list.
#[derive(Clone, Copy, Debug)]
pub struct Shard {
    pub primary: usize,
    pub replica: usize,
}

/// A cluster node with the module: payments go stale after 100 ms; a node
/// is failed after 2 s of silence; the shards that are up keep serving while
/// one is down (`cluster-require-full-coverage no`).
pub fn cluster_node() -> testkit::Server {
    testkit::Server::with(
        Opts::sweeper(100, 20)
            .config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config("cluster-node-timeout", "2000")
            .config("cluster-port", &free_port().to_string())
            .config("cluster-require-full-coverage", "no")
            .config("cluster-replica-validity-factor", "0"),
    )
}

/// `shards` primaries with one replica each, created by `redis-cli
/// --cluster create`; returns the nodes and which is which.
pub fn cluster_with_replicas(shards: usize) -> (Vec<testkit::Server>, Vec<Shard>) {
    let nodes: Vec<testkit::Server> = (0..shards * 2).map(|_| cluster_node()).collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut layout = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = n.conn();
        assert!(
            wait_until(Duration::from_secs(30), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                let repl: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            }),
            "the cluster did not come up"
        );
        let repl: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
        if let Some(port) = repl
            .lines()
            .find_map(|l| l.strip_prefix("master_port:"))
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            let primary = nodes.iter().position(|p| p.port == port).unwrap();
            layout.push(Shard {
                primary,
                replica: i,
            });
        }
    }
    assert_eq!(layout.len(), shards, "{layout:?}");
    (nodes, layout)
}
