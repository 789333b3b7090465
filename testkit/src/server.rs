//! Starting servers: the binary (`PAY_SERVER`), the module (`PAY_MODULE`),
//! free loopback ports, temporary directories, killed on drop even when a
//! test panics; replication and the neighbour module.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::Connection;

use crate::*;

pub fn server_bin() -> String {
    std::env::var("PAY_SERVER").unwrap_or_else(|_| "redis-server".into())
}

pub fn module_path() -> PathBuf {
    // The workspace's target directory: testkit's parent's (or testkit's own,
    // when the crate is built on its own).
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

/// The release build of pay-sidecar (`make build`), found by path: testkit
/// never links the sidecar.
pub fn sidecar_bin() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = here
        .parent()
        .unwrap_or(here)
        .join("target/release/pay-sidecar");
    assert!(
        path.exists(),
        "pay-sidecar not built at {} (run `make build`)",
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

pub fn free_port() -> u16 {
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

/// `CONFIG SET name value`.
pub fn config_set(c: &mut Connection, name: &str, value: impl redis::ToRedisArgs) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(c)
        .unwrap();
}

/// `ROLE`'s first field at 127.0.0.1:`port`: "master", "slave" or
/// "sentinel"; None if it does not answer.
pub fn role(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    redis::cmd("PING").query::<String>(&mut c).ok()?;
    let v: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).ok()?;
    match v.first()? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
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
