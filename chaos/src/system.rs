//! The system under test, started on 127.0.0.1: a Redis primary and a
//! replica with the module (AOF, `appendfsync always`), three Sentinels
//! watching them, and two pay-sidecars; its health; and how the sidecars
//! follow a failover (by themselves with `--sentinel`, or restarted by the
//! harness, pointed at the new primary).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::procs::{Proc, Spec};
use crate::redisio::{self, MASTER};
use crate::settings::{self, Follow};
use testkit::free_port;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Sidecar {
    pub name: String,
    pub proc: Mutex<Proc>,
}

pub struct Server {
    pub name: String,
    pub port: u16,
    pub proc: Mutex<Proc>,
}

pub struct Sentinel {
    pub port: u16,
    pub proc: Mutex<Proc>,
}

/// Field order is drop order: sidecars go first, the servers last.
pub struct System {
    pub sidecars: Vec<Sidecar>,
    pub sentinels: Vec<Sentinel>,
    pub servers: Vec<Server>,
    pub follow: Follow,
    /// The primary the sidecars point at (harness-followed mode).
    target: Mutex<u16>,
    pub harness_restarts: AtomicU32,
    bank_url: String,
    slack_url: String,
}

/// What to run, and the one server setting the command line chooses.
pub struct Binaries {
    pub server: PathBuf,
    pub sentinel: PathBuf,
    pub module: PathBuf,
    pub sidecar: PathBuf,
    pub min_replicas_to_write: u8,
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn server_conf(port: u16, dir: &Path, bins: &Binaries, replica_of: Option<u16>) -> String {
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nlogfile server.log\n\
         appendonly yes\nappendfsync always\nsave \"\"\nrepl-diskless-sync-delay 0\n\
         min-replicas-to-write {}\nmin-replicas-max-lag {}\n\
         loadmodule {} {}\n",
        dir.display(),
        bins.min_replicas_to_write,
        settings::MIN_REPLICAS_MAX_LAG,
        bins.module.display(),
        settings::MODULE_ARGS.join(" ")
    );
    if let Some(p) = replica_of {
        conf.push_str(&format!("replicaof 127.0.0.1 {p}\n"));
    }
    conf
}

fn sentinel_conf(port: u16, dir: &Path, primary: u16) -> String {
    format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nlogfile sentinel.log\n\
         sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
         sentinel down-after-milliseconds {MASTER} {}\n\
         sentinel failover-timeout {MASTER} {}\n\
         sentinel parallel-syncs {MASTER} 1\n",
        dir.display(),
        settings::DOWN_AFTER_MS,
        settings::FAILOVER_TIMEOUT_MS
    )
}

fn ping(port: u16) -> bool {
    redisio::connect(port, Duration::from_millis(300))
        .ok()
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
        .is_some()
}

/// Whether this pay-sidecar finds the primary through Sentinel itself.
pub fn sidecar_has_sentinel(sidecar: &Path) -> bool {
    std::process::Command::new(sidecar)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--sentinel-master"))
        .unwrap_or(false)
}

impl System {
    pub fn start(
        bins: &Binaries,
        dir: &Path,
        follow: Follow,
        bank_url: &str,
        slack_url: &str,
    ) -> Result<System, String> {
        let mut servers = Vec::new();
        let mut primary_port = 0;
        for (i, name) in ["redis-a", "redis-b"].into_iter().enumerate() {
            let port = free_port();
            let sdir = dir.join(name);
            std::fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
            let conf = sdir.join("redis.conf");
            let replica_of = (i == 1).then_some(primary_port);
            write(&conf, &server_conf(port, &sdir, bins, replica_of))?;
            let spec = Spec {
                program: bins.server.clone(),
                args: vec![conf.display().to_string()],
                env: Vec::new(),
                dir: sdir.clone(),
            };
            let proc =
                Proc::start(name, spec, &sdir.join("stdout.log")).map_err(|e| e.to_string())?;
            if !wait_until(Duration::from_secs(20), || ping(port)) {
                return Err(format!(
                    "{name} did not start; {}:\n{}",
                    sdir.join("server.log").display(),
                    crate::procs::tail(&sdir.join("server.log"), 20)
                ));
            }
            if i == 0 {
                primary_port = port;
            }
            servers.push(Server {
                name: name.into(),
                port,
                proc: Mutex::new(proc),
            });
        }
        let mut sentinels = Vec::new();
        for i in 1..=3 {
            let port = free_port();
            let sdir = dir.join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&sdir).map_err(|e| e.to_string())?;
            let conf = sdir.join("sentinel.conf");
            write(&conf, &sentinel_conf(port, &sdir, primary_port))?;
            let spec = Spec {
                program: bins.sentinel.clone(),
                args: vec![conf.display().to_string()],
                env: Vec::new(),
                dir: sdir.clone(),
            };
            let proc = Proc::start(&format!("sentinel-{i}"), spec, &sdir.join("stdout.log"))
                .map_err(|e| e.to_string())?;
            sentinels.push(Sentinel {
                port,
                proc: Mutex::new(proc),
            });
        }
        let follow = match follow {
            Follow::Auto if sidecar_has_sentinel(&bins.sidecar) => Follow::Sentinel,
            Follow::Auto => Follow::Harness,
            f => f,
        };
        let mut sys = System {
            sidecars: Vec::new(),
            sentinels,
            servers,
            follow,
            target: Mutex::new(primary_port),
            harness_restarts: AtomicU32::new(0),
            bank_url: bank_url.into(),
            slack_url: slack_url.into(),
        };
        // Every Sentinel knows the replica and the other two before anything fails.
        let known = wait_until(Duration::from_secs(30), || {
            sys.sentinels.iter().all(|s| sentinel_knows_all(s.port)) && sys.health().is_ok()
        });
        if !known {
            return Err(format!(
                "the Sentinels did not discover each other and the replica within 30s ({})",
                sys.health().err().unwrap_or_default()
            ));
        }
        for i in 0..2 {
            let name = format!("sidecar-{}", i + 1);
            let spec = Spec {
                program: bins.sidecar.clone(),
                args: sys.sidecar_args(i, primary_port),
                env: vec![("RUST_LOG".into(), "info".into())],
                dir: dir.to_path_buf(),
            };
            let proc = Proc::start(&name, spec, &dir.join(format!("{name}.log")))
                .map_err(|e| e.to_string())?;
            sys.sidecars.push(Sidecar {
                name,
                proc: Mutex::new(proc),
            });
        }
        Ok(sys)
    }

    fn sidecar_args(&self, i: usize, primary: u16) -> Vec<String> {
        let mut args: Vec<String> = match self.follow {
            Follow::Sentinel => vec![
                "--redis-url".into(),
                "redis://127.0.0.1/".into(),
                "--sentinel".into(),
                self.sentinels
                    .iter()
                    .map(|s| format!("127.0.0.1:{}", s.port))
                    .collect::<Vec<_>>()
                    .join(","),
                "--sentinel-master".into(),
                MASTER.into(),
            ],
            _ => vec![
                "--redis-url".into(),
                format!("redis://127.0.0.1:{primary}/"),
            ],
        };
        args.extend([
            "--bank-url".into(),
            format!("{}/sc{}", self.bank_url, i + 1),
            "--slack-webhook-url".into(),
            self.slack_url.clone(),
            "--consumer".into(),
            format!("sidecar-{}", i + 1),
        ]);
        for (k, v) in settings::SIDECAR_ARGS {
            args.extend([k.to_string(), v.to_string()]);
        }
        args
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    pub fn server(&self, port: u16) -> Option<&Server> {
        self.servers.iter().find(|s| s.port == port)
    }

    /// The primary and the replica, when all is well: every Sentinel names
    /// the same primary and calls it healthy, it says it is the primary with
    /// one replica online, and the replica's link to it is up.
    pub fn health(&self) -> Result<(u16, u16), String> {
        let named: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|s| redisio::sentinel_primary(s.port))
            .collect();
        let Some(p) = named[0] else {
            return Err("sentinel-1 names no primary".into());
        };
        if named.iter().any(|n| *n != Some(p)) {
            return Err(format!("the Sentinels disagree: {named:?}"));
        }
        for s in &self.sentinels {
            let flags = sentinel_flags(s.port).unwrap_or_default();
            if flags != "master" {
                return Err(format!(
                    "sentinel on {} flags the primary '{flags}'",
                    s.port
                ));
            }
        }
        let replica = self
            .servers
            .iter()
            .find(|s| s.port != p)
            .map(|s| s.port)
            .ok_or("the primary is no server of ours")?;
        let t = Duration::from_millis(500);
        let mut c = redisio::connect(p, t).map_err(|e| format!("primary {p}: {e}"))?;
        if redisio::role(&mut c).as_deref() != Some("master") {
            return Err(format!("{p} is named primary but is not one"));
        }
        let info = redisio::info(&mut c, "replication").ok_or("INFO on the primary")?;
        let online = info
            .get("slave0")
            .is_some_and(|s| s.contains(&format!("port={replica},")) && s.contains("state=online"));
        if !online {
            return Err(format!("the primary {p} has no replica online"));
        }
        let mut r = redisio::connect(replica, t).map_err(|e| format!("replica {replica}: {e}"))?;
        let rinfo = redisio::info(&mut r, "replication").ok_or("INFO on the replica")?;
        if rinfo.get("master_port").map(String::as_str) != Some(&p.to_string())
            || rinfo.get("master_link_status").map(String::as_str) != Some("up")
        {
            return Err(format!("the replica {replica} is not linked to {p}"));
        }
        Ok((p, replica))
    }

    pub fn wait_healthy(&self, limit: Duration) -> Result<(u16, u16), String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.health() {
                Ok(pr) => return Ok(pr),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Notes exits nobody caused, for every process.
    pub fn poll(&self) {
        for s in &self.sidecars {
            lock(&s.proc).poll();
        }
        for s in &self.servers {
            lock(&s.proc).poll();
        }
        for s in &self.sentinels {
            lock(&s.proc).poll();
        }
    }

    /// Every exit nobody caused so far.
    pub fn deaths(&self) -> Vec<String> {
        let mut all = Vec::new();
        for s in &self.sidecars {
            all.extend(lock(&s.proc).deaths.clone());
        }
        for s in &self.servers {
            all.extend(lock(&s.proc).deaths.clone());
        }
        for s in &self.sentinels {
            all.extend(lock(&s.proc).deaths.clone());
        }
        all
    }

    /// In harness-followed mode: when the Sentinels name a new primary (and
    /// it says it is one), the sidecars are restarted pointed at it.
    pub fn follow_primary(&self) {
        if self.follow != Follow::Harness {
            return;
        }
        let Some(p) = redisio::primary(&self.sentinel_ports()) else {
            return;
        };
        if *lock(&self.target) == p {
            return;
        }
        let is_primary = redisio::connect(p, Duration::from_millis(300))
            .ok()
            .and_then(|mut c| redisio::role(&mut c))
            .is_some_and(|r| r == "master");
        if !is_primary {
            return;
        }
        *lock(&self.target) = p;
        for (i, s) in self.sidecars.iter().enumerate() {
            let mut proc = lock(&s.proc);
            proc.spec.args = self.sidecar_args(i, p);
            if proc.running() {
                proc.stop(libc::SIGTERM, Duration::from_secs(4));
                if proc.restart().is_ok() {
                    self.harness_restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Starts a stopped server again: with `rejoin`, as a replica of the
    /// primary the Sentinels name (if that is another server), else with
    /// its own configuration. Says which.
    pub fn restart_server(&self, port: u16, rejoin: bool) -> std::io::Result<String> {
        let server = self
            .server(port)
            .ok_or_else(|| std::io::Error::other("no such server"))?;
        let primary = redisio::primary(&self.sentinel_ports()).filter(|p| *p != port);
        let mut proc = lock(&server.proc);
        proc.spec.args.truncate(1);
        let how = match primary {
            Some(p) if rejoin => {
                proc.spec.args.extend([
                    "--replicaof".to_string(),
                    "127.0.0.1".to_string(),
                    p.to_string(),
                ]);
                format!("as a replica of {p}")
            }
            _ => "with its own configuration".to_string(),
        };
        proc.restart()?;
        Ok(how)
    }

    /// Starts a stopped sidecar again, pointed where the sidecars point now.
    pub fn restart_sidecar(&self, i: usize) -> std::io::Result<()> {
        let target = *lock(&self.target);
        let mut proc = lock(&self.sidecars[i].proc);
        proc.spec.args = self.sidecar_args(i, target);
        proc.restart()
    }

    /// Stops both sidecars (SIGTERM: they finish what they hold).
    pub fn stop_sidecars(&self) {
        for s in &self.sidecars {
            lock(&s.proc).stop(libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

fn sentinel_master_fields(sentinel: u16) -> Option<std::collections::BTreeMap<String, String>> {
    let mut c = redisio::connect(sentinel, Duration::from_millis(300)).ok()?;
    let v: redis::Value = redis::cmd("SENTINEL")
        .arg("MASTER")
        .arg(MASTER)
        .query(&mut c)
        .ok()?;
    pay_proto::reply::fields(&v).ok()
}

fn sentinel_flags(sentinel: u16) -> Option<String> {
    sentinel_master_fields(sentinel).and_then(|f| f.get("flags").cloned())
}

/// Whether a Sentinel knows the replica and the two other Sentinels.
fn sentinel_knows_all(sentinel: u16) -> bool {
    sentinel_master_fields(sentinel).is_some_and(|f| {
        f.get("num-slaves").map(String::as_str) == Some("1")
            && f.get("num-other-sentinels").map(String::as_str) == Some("2")
    })
}
