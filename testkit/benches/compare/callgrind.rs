//! Section 7: the server's instructions per call, counted by callgrind.
//!
//! Wall-clock ratios on a small shared machine swing from run to run; the
//! instructions a server executes for the same binary and the same input do
//! not. One `redis-server` runs under `valgrind --tool=callgrind` with
//! instrumentation off while it starts and loads its data set (an RDB made by
//! a normal server: nothing big is built under valgrind). For each case a
//! client warms up, `callgrind_control -z` zeroes the counters, the client
//! sends a fixed number of calls with a fixed pipelining and waits for every
//! reply, and `callgrind_control -d` dumps the counts. The figure is the main
//! thread's instructions over the calls, less what the timers ran meanwhile
//! (`serverCron` and the module's sweeper tick, by callgrind's own inclusive
//! costs): the event loop, the protocol, the command and its reply are in.
//! Also out: the key comparisons of command-name lookups
//! (`dictSdsKeyCaseCompare`). Redis hashes command names with a seed drawn at
//! start, so how many names share a bucket with `set` or `PAY.LOAD`, and so
//! how many comparisons each lookup makes, changes from one server process to
//! the next: up to 2% of a `SET`. Taking all of them out (about 50
//! instructions per lookup when nothing collides) makes the count the same in
//! every process.
//! No replica and no AOF are attached, so propagation ends where Redis finds
//! nobody to send it to (the same for every case).
//!
//! Each write case starts on its own empty database, so every candidate and
//! its baseline grow the same hash tables through the same sizes; the read
//! cases use databases loaded from the RDB, sized by it, with no rehashing
//! under way (`activerehashing no` keeps the cron from doing it at its own
//! pace). The dumps stay in `target/bench-callgrind/` for
//! `callgrind_annotate --inclusive=yes`.
//!
//! Environment: BENCH_CG_CALLS (calls per case, default 4000),
//! BENCH_CG_LEASED (payments under lease for the PAY.CLAIM case, default
//! 300000), BENCH_CG_CASES (e.g. `get,check-json`: only those cases).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::Connection;
use testkit::{cache, cache_many, free_port, hold_for_a_day, module_path, server_bin, Server};

use crate::{env_usize, verdict, JSON, LUA};

/// Calls per pipelined batch: fixed, so each call carries the same share of
/// the event loop's work in every run.
const PIPELINE: usize = 16;
/// Records per listing (PAY.STUCK COUNT, ZRANGEBYSCORE LIMIT).
const LISTED: usize = 100;
/// Keys of each read data set (payments, JSON strings, hashes).
const READ_KEYS: usize = 10_000;
/// The oldest payments of the read set, created one millisecond apart.
const SPREAD: usize = LISTED + 20;

/// Databases: reads in 0, updates in 1, claims in 2 (none leased) and 3
/// (BENCH_CG_LEASED leased), every write case in an empty one from 4 on.
const DB_READ: i64 = 0;
const DB_UPDATE: i64 = 1;
const DB_CLAIM_FREE: i64 = 2;
const DB_CLAIM_LEASED: i64 = 3;
const DB_FIRST_EMPTY: i64 = 4;

/// One measured case: what the client sends for calls `from..from + n`
/// (one round trip, or two for a listing read by hand).
type Step = dyn Fn(&mut Connection, usize, usize);

struct Case {
    slug: &'static str,
    label: String,
    db: i64,
    /// Calls measured (after a warm-up of a tenth as many).
    calls: usize,
    /// Calls per round trip.
    batch: usize,
    pipeline_note: &'static str,
    step: Box<Step>,
}

/// A callgrind-run server.
struct Valgrind {
    child: Option<Child>,
    pid: u32,
    port: u16,
    dir: tempfile::TempDir,
    dumps: usize,
    keep: PathBuf,
}

impl Valgrind {
    /// Starts the server under callgrind on a copy of `rdb`, instrumentation
    /// off, and waits until it has loaded it.
    fn start(rdb: &Path, keep: PathBuf) -> Valgrind {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(rdb, dir.path().join("dump.rdb")).expect("copy the RDB");
        let port = free_port();
        let child = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--instr-atstart=no",
                "--separate-threads=yes",
            ])
            .arg(format!(
                "--callgrind-out-file={}",
                dir.path().join("cg.out").display()
            ))
            .arg(server_bin())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .args(["--hz", "1", "--activerehashing", "no"])
            .args(["--enable-debug-command", "local", "--logfile", "server.log"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--loadmodule")
            .arg(module_path())
            // No payment goes stale while measured; the sweeper's tick is
            // subtracted anyway.
            .args([
                "stale-after-ms",
                "2592000000",
                "sweep-interval-ms",
                "3600000",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn valgrind (is valgrind installed? `make deps`)");
        let pid = child.id();
        let mut v = Valgrind {
            child: Some(child),
            pid,
            port,
            dir,
            dumps: 0,
            keep,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(mut c) = v.try_conn() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = v.child.as_mut().map(|c| c.try_wait()) {
                panic!("the server under valgrind exited ({status}) while starting");
            }
            assert!(
                Instant::now() < deadline,
                "the server under valgrind did not start"
            );
            sleep(Duration::from_millis(100));
        }
        let mut c = v.conn(0);
        // Active expiry is background work, like the cron: out of the count.
        let _: () = redis::cmd("DEBUG")
            .arg("SET-ACTIVE-EXPIRE")
            .arg(0)
            .query(&mut c)
            .unwrap();
        v.control("-i", Some("on"));
        v
    }

    fn try_conn(&self) -> redis::RedisResult<Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        client.get_connection_with_timeout(Duration::from_secs(5))
    }

    fn conn(&self, db: i64) -> Connection {
        let mut c = self.try_conn().expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        let _: () = redis::cmd("SELECT").arg(db).query(&mut c).unwrap();
        c
    }

    fn control(&self, flag: &str, value: Option<&str>) {
        let mut cmd = Command::new("callgrind_control");
        cmd.arg(flag);
        if let Some(v) = value {
            cmd.arg(v);
        }
        let out = cmd
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run callgrind_control");
        assert!(
            out.status.success(),
            "callgrind_control {flag} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Dumps the counts since the last zero, and returns the main thread's
    /// profile, kept as `<slug>.out`.
    fn dump(&mut self, slug: &str) -> PathBuf {
        self.control("-d", None);
        self.dumps += 1;
        // --separate-threads: one file per thread; thread 1 is the event loop.
        let main = self.dir.path().join(format!("cg.out.{}-01", self.dumps));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !main.exists() {
            assert!(Instant::now() < deadline, "no dump {}", main.display());
            sleep(Duration::from_millis(50));
        }
        std::fs::create_dir_all(&self.keep).unwrap();
        let kept = self.keep.join(format!("{slug}.out"));
        std::fs::copy(&main, &kept).unwrap();
        kept
    }

    /// Runs `case`: warm-up, zero, the measured calls, dump. Instructions
    /// per call.
    fn measure(&mut self, case: &Case) -> Profile {
        let mut c = self.conn(case.db);
        let warm = (case.calls / 10).max(case.batch);
        let mut i = 0;
        while i < warm {
            let n = case.batch.min(warm - i);
            (case.step)(&mut c, i, n);
            i += n;
        }
        self.control("-z", None);
        let end = warm + case.calls;
        while i < end {
            let n = case.batch.min(end - i);
            (case.step)(&mut c, i, n);
            i += n;
        }
        let file = self.dump(case.slug);
        Profile::read(&file, case.calls)
    }
}

impl Drop for Valgrind {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut c) = self.try_conn() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut c);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => sleep(Duration::from_millis(50)),
                _ => return,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What one dump says.
struct Profile {
    /// Instructions per call, timers and command-name comparisons excluded.
    per_call: f64,
    /// The timers' instructions, excluded (for the record).
    timers: u64,
    /// The command-name comparisons' instructions, excluded.
    name_compares: u64,
    calls: usize,
    /// Inclusive instructions of each function of the server (C symbols, as
    /// callgrind_annotate names them `???:name`).
    server_fns: HashMap<String, u64>,
}

impl Profile {
    /// Reads a dump with callgrind_annotate's inclusive costs.
    fn read(file: &Path, calls: usize) -> Profile {
        let out = Command::new("callgrind_annotate")
            .args(["--inclusive=yes", "--threshold=100", "--auto=no"])
            .arg(file)
            .output()
            .expect("run callgrind_annotate");
        let text = String::from_utf8_lossy(&out.stdout);
        let cost = |line: &str| -> u64 {
            line.split_whitespace()
                .next()
                .map(|n| n.replace(',', ""))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let mut total = 0;
        let mut server_fns = HashMap::new();
        for line in text.lines() {
            if line.contains("PROGRAM TOTALS") {
                total = cost(line);
            } else if let Some(name) = c_function(line) {
                // Valkey calls its module API VM_* and its dispatcher after
                // itself: one set of names for both servers.
                let name = match name.strip_prefix("VM_") {
                    Some(api) => format!("RM_{api}"),
                    None if name == "ValkeyModuleCommandDispatcher" => {
                        "RedisModuleCommandDispatcher".to_string()
                    }
                    None => name.to_string(),
                };
                *server_fns.entry(name).or_default() += cost(line);
            }
        }
        assert!(total > 0, "no totals in {}", file.display());
        let timers = ["serverCron", "moduleTimerHandler"]
            .iter()
            .map(|f| server_fns.get(*f).copied().unwrap_or(0))
            .sum();
        let name_compares = server_fns
            .get("dictSdsKeyCaseCompare")
            .copied()
            .unwrap_or(0);
        Profile {
            per_call: total.saturating_sub(timers + name_compares) as f64 / calls as f64,
            timers,
            name_compares,
            calls,
            server_fns,
        }
    }

    /// Inclusive instructions per call of the server functions `names`.
    fn per_call_in(&self, names: impl Fn(&str) -> bool) -> f64 {
        self.server_fns
            .iter()
            .filter(|(n, _)| names(n))
            .map(|(_, c)| *c)
            .sum::<u64>() as f64
            / self.calls as f64
    }

    /// Where a module command's instructions go, by the module API calls
    /// they pass through (the API is a boundary nothing inlines across):
    /// Redis around the command, the module's own code, then each group of
    /// API calls. Per call; `None` for a command of the server's own.
    fn breakdown(&self) -> Option<Vec<f64>> {
        let dispatch = self.per_call_in(|n| n == "RedisModuleCommandDispatcher");
        if dispatch == 0.0 {
            return None;
        }
        let groups: Vec<f64> = API_GROUPS
            .iter()
            .map(|(_, names)| self.per_call_in(|n| names.contains(&n)))
            .collect();
        let api = self.per_call_in(|n| n.starts_with("RM_"));
        let other_api = api - groups.iter().sum::<f64>();
        let mut row = vec![self.per_call - dispatch, dispatch - api];
        row.extend(groups);
        row.push(other_api);
        Some(row)
    }
}

/// The C function a line of callgrind_annotate's listing names (`12,345
/// (1.2%)  file.c:name [object]`, `???:name` without debug information), or
/// None for a line that names a Rust function (`path::name`) or none.
fn c_function(line: &str) -> Option<&str> {
    let rest = match line.split_once("%)") {
        Some((_, rest)) => rest,
        None => line.trim_start().split_once(' ')?.1,
    };
    let (place, _object) = rest.trim().split_once(" [")?;
    let (file, name) = place.rsplit_once(':')?;
    (!file.ends_with(':') && !name.is_empty()).then_some(name)
}

/// The module API calls by what they are for (the breakdown's columns).
const API_GROUPS: [(&str, &[&str]); 6] = [
    (
        "arguments (retain, free, read)",
        &[
            "RM_RetainString",
            "RM_FreeString",
            "RM_StringPtrLen",
            "RM_CreateString",
        ],
    ),
    (
        "memory (RM_Alloc, RM_Free)",
        &["RM_Alloc", "RM_Free", "RM_Realloc", "RM_Calloc"],
    ),
    (
        "keys (open, close, store, expire)",
        &[
            "RM_OpenKey",
            "RM_CloseKey",
            "RM_KeyType",
            "RM_ModuleTypeSetValue",
            "RM_ModuleTypeGetValue",
            "RM_ModuleTypeGetType",
            "RM_SetExpire",
            "RM_SetAbsExpire",
        ],
    ),
    (
        "reply (RM_ReplyWith*)",
        &[
            "RM_ReplyWithStringBuffer",
            "RM_ReplyWithLongLong",
            "RM_ReplyWithMap",
            "RM_ReplyWithArray",
            "RM_ReplySetArrayLength",
            "RM_ReplyWithNull",
            "RM_ReplyWithSimpleString",
            "RM_ReplyWithError",
        ],
    ),
    ("replication (RM_Replicate)", &["RM_Replicate"]),
    ("keyspace event", &["RM_NotifyKeyspaceEvent"]),
];

/// The 14 fields of a payment record, as a hash would hold them.
fn hash_record(p: &mut redis::Pipeline, key: &str, created_at: i64) {
    p.cmd("HSET")
        .arg(key)
        .arg("transaction_id")
        .arg(key)
        .arg("user_id")
        .arg(67890)
        .arg("amount")
        .arg(1000)
        .arg("currency")
        .arg("USD")
        .arg("status")
        .arg("pending")
        .arg("created_at")
        .arg(created_at)
        .arg("updated_at")
        .arg(created_at)
        .arg("attempts")
        .arg(0)
        .arg("stale")
        .arg(0)
        .arg("reason")
        .arg("")
        .arg("provider_ref")
        .arg("")
        .arg("lease_owner")
        .arg("")
        .arg("lease_until")
        .arg(0)
        .arg("key")
        .arg(key)
        .ignore();
    p.cmd("EXPIRE").arg(key).arg(86400).ignore();
    p.cmd("ZADD")
        .arg("pending-index")
        .arg(created_at)
        .arg(key)
        .ignore();
}

fn select(c: &mut Connection, db: i64) {
    let _: () = redis::cmd("SELECT").arg(db).query(c).unwrap();
}

/// Builds the data set on a normal server and returns its RDB (in `keep`).
fn build_rdb(calls: usize, leased: usize, keep: &Path) -> PathBuf {
    let s = Server::start();
    let mut c = s.conn();
    let need = calls + calls / 10 + PIPELINE;
    // Reads: payments, JSON strings and hashes with a sorted-set index.
    select(&mut c, DB_READ);
    // The oldest payments one millisecond apart: a listing of 100 then has
    // no tie at its end to gather and sort, whatever the timing of this run.
    let mut last = 0;
    for i in 0..SPREAD {
        let key = format!("p:{i}");
        loop {
            let at: i64 = cache(&mut c, &key, "67890", 1000, "USD")["created_at"]
                .parse()
                .unwrap();
            sleep(Duration::from_millis(1));
            if at > last {
                last = at;
                break;
            }
            let _: () = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
        }
    }
    let mut p = redis::pipe();
    for i in 0..READ_KEYS {
        if i >= SPREAD {
            p.add_command(cache_cmd(format!("p:{i}"), true)).ignore();
        }
        p.cmd("SET")
            .arg(format!("j:{i}"))
            .arg(JSON)
            .arg("EX")
            .arg(86400)
            .ignore();
        hash_record(&mut p, &format!("h:{i}"), 1_706_618_700_000 + i as i64);
        if (i + 1) % 1000 == 0 || i + 1 == READ_KEYS {
            let _: () = p.query(&mut c).unwrap();
            p = redis::pipe();
        }
    }
    // Updates: a payment and a JSON string per call.
    select(&mut c, DB_UPDATE);
    cache_many(&mut c, "u:", need);
    let mut p = redis::pipe();
    for i in 0..need {
        p.cmd("SET")
            .arg(format!("v:{i}"))
            .arg(JSON)
            .arg("EX")
            .arg(86400)
            .ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    // Claims: ready payments alone, and after `leased` under a day's lease.
    select(&mut c, DB_CLAIM_FREE);
    cache_many(&mut c, "c:", need);
    select(&mut c, DB_CLAIM_LEASED);
    cache_many(&mut c, "held:", leased);
    hold_for_a_day(&mut c, leased);
    cache_many(&mut c, "c:", need);
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    std::fs::create_dir_all(keep).unwrap();
    let rdb = keep.join("data.rdb");
    std::fs::copy(s.dir().join("dump.rdb"), &rdb).expect("the RDB");
    rdb
}

/// One comparison: candidate and baseline slugs, and the target.
struct Target {
    label: &'static str,
    candidate: &'static str,
    baseline: &'static str,
    /// `Some((limit, at_most))`: at most / at least `limit` times the baseline.
    goal: Option<(f64, bool)>,
}

const TARGETS: &[Target] = &[
    Target {
        label: "PAY.CACHE new BRIEF / SET key json NX EX",
        candidate: "cache-new-brief",
        baseline: "set-nx-ex",
        goal: Some((1.5, true)),
    },
    Target {
        label: "PAY.CACHE new / SET key json NX EX",
        candidate: "cache-new",
        baseline: "set-nx-ex",
        goal: Some((2.0, true)),
    },
    Target {
        label: "PAY.CACHE new / SET key json NX GET EX (new key)",
        candidate: "cache-new",
        baseline: "set-nx-get-new",
        goal: None,
    },
    Target {
        label: "the Lua script / PAY.CACHE new",
        candidate: "lua-new",
        baseline: "cache-new",
        goal: Some((3.0, false)),
    },
    Target {
        label: "PAY.CACHE duplicate BRIEF / GET",
        candidate: "cache-dup-brief",
        baseline: "get",
        goal: Some((2.0, true)),
    },
    Target {
        label: "PAY.CACHE duplicate / GET",
        candidate: "cache-dup",
        baseline: "get",
        goal: None,
    },
    Target {
        label: "PAY.CACHE duplicate / SET key json NX GET EX (existing key)",
        candidate: "cache-dup",
        baseline: "set-nx-get-dup",
        goal: None,
    },
    Target {
        label: "PAY.CHECK JSON / GET",
        candidate: "check-json",
        baseline: "get",
        goal: Some((2.0, true)),
    },
    Target {
        label: "PAY.CHECK / GET",
        candidate: "check",
        baseline: "get",
        goal: None,
    },
    Target {
        label: "PAY.UPDATE key succeeded REF r / SET key json XX EX",
        candidate: "update",
        baseline: "set-xx-ex",
        goal: None,
    },
    Target {
        label: "PAY.STUCK COUNT 100 / ZRANGEBYSCORE LIMIT 0 100 then 100 HGETALL",
        candidate: "stuck",
        baseline: "zrange-hgetall",
        goal: None,
    },
    Target {
        label: "PAY.STUCK COUNT 100 / ZRANGEBYSCORE LIMIT 0 100 alone",
        candidate: "stuck",
        baseline: "zrange",
        goal: None,
    },
    Target {
        label: "PAY.CLAIM COUNT 1: {leased} under lease / none",
        candidate: "claim-leased",
        baseline: "claim-free",
        goal: Some((2.0, true)),
    },
];

/// Pipelined calls `from..from + n`, each made by `make(i)`.
fn pipelined(make: impl Fn(usize) -> redis::Cmd + 'static) -> Box<Step> {
    Box::new(move |c: &mut Connection, from: usize, n: usize| {
        let mut p = redis::pipe();
        for i in from..from + n {
            p.add_command(make(i));
        }
        let _: redis::Value = p.query(c).unwrap();
    })
}

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

fn cache_cmd(key: String, brief: bool) -> redis::Cmd {
    let mut c = cmd("PAY.CACHE");
    c.arg(key).arg(67890).arg(1000).arg("USD");
    if brief {
        c.arg("BRIEF");
    }
    c
}

fn claim_cmd() -> redis::Cmd {
    let mut c = cmd("PAY.CLAIM");
    c.arg("bench")
        .arg("LEASE")
        .arg(86_400_000)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(1);
    c
}

fn cases(calls: usize, leased: usize, sha: String) -> Vec<Case> {
    let listings = (calls / 20).max(20);
    let mut empty = DB_FIRST_EMPTY..;
    let mut next_empty = || empty.next().unwrap();
    let p = PIPELINE;
    let pipe16 = "16";
    let mut v = vec![
        Case {
            slug: "set-nx-ex",
            label: "SET key json NX EX 86400 (new key)".into(),
            db: next_empty(),
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("SET");
                c.arg(format!("t:{i}"))
                    .arg(JSON)
                    .arg("NX")
                    .arg("EX")
                    .arg(86400);
                c
            }),
        },
        Case {
            slug: "set-nx-get-new",
            label: "SET key json NX GET EX 86400 (new key)".into(),
            db: next_empty(),
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("SET");
                c.arg(format!("t:{i}"))
                    .arg(JSON)
                    .arg("NX")
                    .arg("GET")
                    .arg("EX")
                    .arg(86400);
                c
            }),
        },
    ];
    let lua_db = next_empty();
    v.push(Case {
        slug: "lua-new",
        label: "the Lua script, EVALSHA (new key)".into(),
        db: lua_db,
        calls,
        batch: p,
        pipeline_note: pipe16,
        step: pipelined(move |i| {
            let mut c = cmd("EVALSHA");
            c.arg(&sha)
                .arg(2)
                .arg(format!("t:{i}"))
                .arg("pending-index")
                .arg(67890)
                .arg(1000)
                .arg("USD");
            c
        }),
    });
    v.extend([
        Case {
            slug: "cache-new",
            label: "PAY.CACHE (new key)".into(),
            db: next_empty(),
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| cache_cmd(format!("t:{i}"), false)),
        },
        Case {
            slug: "cache-new-brief",
            label: "PAY.CACHE ... BRIEF (new key)".into(),
            db: next_empty(),
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| cache_cmd(format!("t:{i}"), true)),
        },
        Case {
            slug: "get",
            label: "GET (a JSON string)".into(),
            db: DB_READ,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("GET");
                c.arg(format!("j:{}", i % READ_KEYS));
                c
            }),
        },
        Case {
            slug: "set-nx-get-dup",
            label: "SET key json NX GET EX 86400 (existing key)".into(),
            db: DB_READ,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("SET");
                c.arg(format!("j:{}", i % READ_KEYS))
                    .arg(JSON)
                    .arg("NX")
                    .arg("GET")
                    .arg("EX")
                    .arg(86400);
                c
            }),
        },
        Case {
            slug: "cache-dup",
            label: "PAY.CACHE (duplicate)".into(),
            db: DB_READ,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| cache_cmd(format!("p:{}", i % READ_KEYS), false)),
        },
        Case {
            slug: "cache-dup-brief",
            label: "PAY.CACHE ... BRIEF (duplicate)".into(),
            db: DB_READ,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| cache_cmd(format!("p:{}", i % READ_KEYS), true)),
        },
        Case {
            slug: "check",
            label: "PAY.CHECK (the record as a map)".into(),
            db: DB_READ,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("PAY.CHECK");
                c.arg(format!("p:{}", i % READ_KEYS));
                c
            }),
        },
        Case {
            slug: "check-json",
            label: "PAY.CHECK ... JSON".into(),
            db: DB_READ,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("PAY.CHECK");
                c.arg(format!("p:{}", i % READ_KEYS)).arg("JSON");
                c
            }),
        },
        Case {
            slug: "set-xx-ex",
            label: "SET key json XX EX 86400 (existing key)".into(),
            db: DB_UPDATE,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("SET");
                c.arg(format!("v:{i}"))
                    .arg(JSON)
                    .arg("XX")
                    .arg("EX")
                    .arg(86400);
                c
            }),
        },
        Case {
            slug: "update",
            label: "PAY.UPDATE key succeeded REF r (pending to succeeded)".into(),
            db: DB_UPDATE,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|i| {
                let mut c = cmd("PAY.UPDATE");
                c.arg(format!("u:{i}"))
                    .arg("succeeded")
                    .arg("REF")
                    .arg(format!("ch_{i}"));
                c
            }),
        },
        Case {
            slug: "stuck",
            label: "PAY.STUCK OLDER 0 COUNT 100 (100 records)".into(),
            db: DB_READ,
            calls: listings,
            batch: 1,
            pipeline_note: "1",
            step: pipelined(|_| {
                let mut c = cmd("PAY.STUCK");
                c.arg("OLDER").arg(0).arg("COUNT").arg(LISTED);
                c
            }),
        },
        Case {
            slug: "zrange",
            label: "ZRANGEBYSCORE pending-index -inf +inf LIMIT 0 100 (100 names)".into(),
            db: DB_READ,
            calls: listings,
            batch: 1,
            pipeline_note: "1",
            step: pipelined(|_| zrange_cmd()),
        },
        Case {
            slug: "zrange-hgetall",
            label: "ZRANGEBYSCORE ... LIMIT 0 100, then HGETALL of each (14-field hashes)".into(),
            db: DB_READ,
            calls: listings,
            batch: 1,
            pipeline_note: "1, then 100",
            step: Box::new(|c: &mut Connection, _from: usize, n: usize| {
                for _ in 0..n {
                    let names: Vec<String> = zrange_cmd().query(c).unwrap();
                    let mut p = redis::pipe();
                    for name in &names {
                        p.cmd("HGETALL").arg(name);
                    }
                    let _: redis::Value = p.query(c).unwrap();
                }
            }),
        },
        Case {
            slug: "claim-free",
            label: "PAY.CLAIM ... COUNT 1, none under lease".into(),
            db: DB_CLAIM_FREE,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|_| claim_cmd()),
        },
        Case {
            slug: "claim-leased",
            label: format!("PAY.CLAIM ... COUNT 1, {leased} under lease"),
            db: DB_CLAIM_LEASED,
            calls,
            batch: p,
            pipeline_note: pipe16,
            step: pipelined(|_| claim_cmd()),
        },
    ]);
    v
}

fn zrange_cmd() -> redis::Cmd {
    let mut c = cmd("ZRANGEBYSCORE");
    c.arg("pending-index")
        .arg("-inf")
        .arg("+inf")
        .arg("LIMIT")
        .arg(0)
        .arg(LISTED);
    c
}

/// Section 7 of BENCHMARKS.md.
pub fn section(md: &mut String) {
    writeln!(md, "\n## 7. Server instructions per call (callgrind)\n").unwrap();
    for tool in ["valgrind", "callgrind_control", "callgrind_annotate"] {
        let found = Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            writeln!(
                md,
                "Skipped: `{tool}` not found (`make deps` installs valgrind)."
            )
            .unwrap();
            return;
        }
    }
    let calls = env_usize("BENCH_CG_CALLS", 4000);
    let leased = env_usize("BENCH_CG_LEASED", 300_000);
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-callgrind");
    let _ = std::fs::remove_dir_all(&keep);
    let started = Instant::now();
    let rdb = build_rdb(calls, leased, &keep);
    let mut v = Valgrind::start(&rdb, keep.clone());
    let sha: String = {
        let mut c = v.conn(0);
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(LUA)
            .query(&mut c)
            .unwrap()
    };
    let only = std::env::var("BENCH_CG_CASES").ok();
    let cases: Vec<Case> = cases(calls, leased, sha)
        .into_iter()
        .filter(|c| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|s| s == c.slug))
        })
        .collect();
    let mut results: Vec<(&Case, Profile)> = Vec::new();
    for case in &cases {
        println!("   {} ...", case.slug);
        let prof = v.measure(case);
        results.push((case, prof));
    }
    drop(v);
    let per = |slug: &str| {
        results
            .iter()
            .find(|(c, _)| c.slug == slug)
            .map_or(f64::NAN, |(_, p)| p.per_call)
    };

    writeln!(
        md,
        "Instructions the server's main thread executes per call under `valgrind --tool=callgrind`: the event loop, the protocol, the command and its reply; the timers (`serverCron`, the sweeper's tick) subtracted by their inclusive cost, and so are the key comparisons of command-name lookups (Redis hashes command names with a seed drawn at start, so how many names collide with the one looked up changes from process to process: up to 2% of a `SET`; about 50 instructions per lookup when none does); no replica or AOF attached. A warm-up of a tenth as many calls first; then the counters are zeroed, the calls sent with the pipelining shown, and the counts dumped. The same binary with the same input gives the same counts whatever else the machine does: these ratios are the ones to trust. Writes start on an empty database each; reads use {READ_KEYS} keys of each kind loaded from an RDB; the PAY.CLAIM cases use databases of {need} ready payments, one of them after {leased} payments under a day's lease (RDB made by a normal server). Profiles: `callgrind_annotate --inclusive=yes target/bench-callgrind/<case>.out`.\n",
        need = calls + calls / 10 + PIPELINE,
    )
    .unwrap();
    writeln!(md, "| case | pipeline | calls | instructions per call |").unwrap();
    writeln!(md, "| --- | ---: | ---: | ---: |").unwrap();
    for (case, prof) in &results {
        writeln!(
            md,
            "| {} | {} | {} | {:.0} |",
            case.label, case.pipeline_note, case.calls, prof.per_call
        )
        .unwrap();
    }
    writeln!(
        md,
        "\n| comparison (instructions per call) | ratio | target |"
    )
    .unwrap();
    writeln!(md, "| --- | ---: | --- |").unwrap();
    for t in TARGETS {
        let ratio = per(t.candidate) / per(t.baseline);
        if ratio.is_nan() {
            continue;
        }
        let goal = t.goal.map_or(String::new(), |(limit, at_most)| {
            if at_most {
                format!("at most {limit}: {}", verdict(ratio <= limit))
            } else {
                format!("at least {limit}: {}", verdict(ratio >= limit))
            }
        });
        let label = t.label.replace("{leased}", &leased.to_string());
        writeln!(md, "| {label} | {ratio:.2} | {goal} |").unwrap();
    }
    writeln!(
        md,
        "\nWhere a PAY.* call's instructions go, split at the module API (a boundary nothing inlines across): the server around the command (event loop, protocol, dispatch, writing the reply out; the command-name comparisons taken out of the total come off this column, RM_Replicate's included), the module's own code (parsing, the record, the index, JSON, the replication blob; with the context Redis makes for each module call), and each group of API calls with everything Redis does inside them.\n"
    )
    .unwrap();
    let mut head = String::from(
        "| case | total | server around the command | module's own code (and the dispatcher's context) |",
    );
    let mut rule = String::from("| --- | ---: | ---: | ---: |");
    for (name, _) in API_GROUPS {
        write!(head, " {name} |").unwrap();
        rule.push_str(" ---: |");
    }
    writeln!(md, "{head} other API calls |\n{rule} ---: |").unwrap();
    for (case, prof) in &results {
        let Some(parts) = prof.breakdown() else {
            continue;
        };
        let cells: Vec<String> = parts.iter().map(|v| format!("{v:.0}")).collect();
        writeln!(
            md,
            "| {} | {:.0} | {} |",
            case.label,
            prof.per_call,
            cells.join(" | ")
        )
        .unwrap();
    }
    let timers: u64 = results.iter().map(|(_, p)| p.timers).sum();
    let compares: u64 = results.iter().map(|(_, p)| p.name_compares).sum();
    writeln!(
        md,
        "\nSubtracted over the whole section: {timers} instructions of timers, {compares} of command-name comparisons. Section time: {:.0} s.",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
}
