//! `make bench`: redis-pay against what users would do instead, side by side
//! in one run, each figure a ratio against a baseline measured on the same
//! server in the same run. Writes BENCHMARKS.md.
//!
//! 1. Throughput at 50 clients, without and with pipelining (16).
//! 2. Memory per pending payment at 1,000,000 records.
//! 3. Sweep cost at 1,000,000 pending payments, 100,000 going stale at once;
//!    PAY.STUCK COUNT 100 against ZRANGEBYSCORE ... LIMIT 0 100.
//! 4. Restart: loading 1,000,000 records from RDB.
//! 5. pay-sidecar throughput against the stand-in provider, as a fraction of
//!    the ideal (concurrency / latency).
//! 6. PAY.CLAIM COUNT 1 with 300,000 payments under lease against none.
//! 7. The server's instructions per call under callgrind, every command
//!    against its baseline (see `callgrind.rs`).
//! 8. End to end at pipeline 1 with redis-benchmark, a C client.
//!
//! Environment: BENCH_RECORDS (default 1000000), BENCH_OPS (default 100000),
//! BENCH_CG_CALLS and BENCH_CG_LEASED (section 7), BENCH_ONLY (e.g. `2,4`:
//! only those sections, printed, BENCHMARKS.md untouched).

mod c_client;
mod callgrind;
mod claims;
mod memory;
mod restart;
mod sidecar;
mod sweep;
mod throughput;

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use redis::Connection;
use testkit::*;

const CLIENTS: usize = 50;
const JSON: &str = r#"{"transaction_id":"txn_12345","user_id":67890,"status":"pending","amount":1000,"currency":"USD","timestamp":"2024-01-30T12:45:00Z"}"#;

/// The Lua script a team writes today: check, create, index by age, return.
const LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return {'duplicate', v} end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rec = cjson.encode({transaction_id = KEYS[1], user_id = ARGV[1], amount = tonumber(ARGV[2]),
  currency = ARGV[3], status = 'pending', created_at = ms})
redis.call('SET', KEYS[1], rec, 'EX', 86400)
redis.call('ZADD', KEYS[2], ms, KEYS[1])
return {'created', rec}
";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Each measurement is repeated this many times, interleaved, and the median
/// kept: the machine is small and shared.
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn used_memory(c: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Fills a server with `n` records of one layout, pipelined.
fn fill(c: &mut Connection, n: usize, layout: &str, prefix: &str) {
    if layout == "module" {
        return cache_many(c, prefix, n);
    }
    let mut p = redis::pipe();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        match layout {
            "json" => {
                p.cmd("SET")
                    .arg(&key)
                    .arg(JSON)
                    .arg("EX")
                    .arg(86400)
                    .ignore();
            }
            _ => {
                p.cmd("HSET")
                    .arg(&key)
                    .arg("user_id")
                    .arg(67890)
                    .arg("amount")
                    .arg(1000)
                    .arg("currency")
                    .arg("USD")
                    .arg("status")
                    .arg("pending")
                    .arg("created_at")
                    .arg(1_706_618_700_000i64 + i as i64)
                    .ignore();
                p.cmd("EXPIRE").arg(&key).arg(86400).ignore();
                p.cmd("ZADD")
                    .arg("pending-index")
                    .arg(1_706_618_700_000i64 + i as i64)
                    .arg(&key)
                    .ignore();
            }
        }
        if (i + 1) % 10_000 == 0 || i + 1 == n {
            let _: () = p.query(c).unwrap();
            p = redis::pipe();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mean_latency(c: &mut Connection, runs: usize, cmd: &redis::Cmd) -> Duration {
    let t = Instant::now();
    for _ in 0..runs {
        let _: redis::Value = cmd.query(c).unwrap();
    }
    t.elapsed() / runs as u32
}

/// Microseconds per call of `command`, from INFO commandstats.
fn usec_per_call(c: &mut Connection, command: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

fn main() {
    let records = env_usize("BENCH_RECORDS", 1_000_000);
    let ops = env_usize("BENCH_OPS", 100_000);
    let mut md = String::new();
    let version = {
        let s = Server::start();
        let mut c = s.conn();
        let info: String = redis::cmd("INFO").arg("server").query(&mut c).unwrap();
        info.lines()
            .find(|l| l.starts_with("redis_version:"))
            .unwrap_or("redis_version:?")
            .trim()
            .to_string()
    };
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    writeln!(md, "# Benchmarks\n").unwrap();
    writeln!(
        md,
        "Written by `make bench` (`cargo bench --bench compare`). Machine: {cpus} CPUs, {}. Server: {} ({version}), one server per comparison, client and server on the same machine. Every figure is a ratio against a baseline measured on the same server in the same run; absolute numbers on this small, shared machine are noisy.\n",
        std::env::consts::ARCH,
        server_bin()
    )
    .unwrap();

    // BENCH_ONLY=2,4 runs just those sections (and leaves BENCHMARKS.md alone).
    let only: Option<Vec<u32>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));

    if want(1) {
        throughput::section(&mut md, ops);
    }
    if want(2) {
        memory::section(&mut md, records);
    }
    if want(3) {
        sweep::section(&mut md, records);
    }
    if want(4) {
        restart::section(&mut md, records);
    }
    if want(5) {
        sidecar::section(&mut md);
    }
    if want(6) {
        claims::section(&mut md);
    }
    if want(7) {
        println!("7. instructions per call (callgrind) ...");
        callgrind::section(&mut md);
    }
    if want(8) {
        println!("8. pipeline 1 with redis-benchmark ...");
        c_client::section(&mut md, ops);
    }

    if only.is_some() {
        println!("{md}");
        return;
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    std::fs::write(&out, &md).unwrap();
    println!("{md}");
}
