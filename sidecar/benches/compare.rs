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
//!    against its baseline (see `callgrind/mod.rs`).
//! 8. End to end at pipeline 1 with redis-benchmark, a C client.
//!
//! Environment: BENCH_RECORDS (default 1000000), BENCH_OPS (default 100000),
//! BENCH_CG_CALLS and BENCH_CG_LEASED (section 7), BENCH_ONLY (e.g. `2,4`:
//! only those sections, printed, BENCHMARKS.md untouched).

mod c_client;
mod callgrind;
#[path = "../../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pay_sidecar::standin::Bank;
use redis::Connection;

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

/// What one client does `ops` times (`i` numbers the operation).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    PayCacheNew,
    PayCacheNewBrief,
    SetNx,
    Lua,
    GetThenSet,
    PayCacheDup,
    PayCacheDupBrief,
    PayCheck,
    PayCheckJson,
    Get,
}

impl Op {
    /// The command whose server-side time INFO commandstats reports.
    fn command(self) -> Option<&'static str> {
        match self {
            Op::PayCacheNew | Op::PayCacheNewBrief | Op::PayCacheDup | Op::PayCacheDupBrief => {
                Some("PAY.CACHE")
            }
            Op::SetNx => Some("set"),
            Op::Lua => Some("evalsha"),
            Op::GetThenSet => None,
            Op::PayCheck | Op::PayCheckJson => Some("PAY.CHECK"),
            Op::Get => Some("get"),
        }
    }
}

/// One comparison row: candidate, baseline, and the target ratio (if any).
const ROWS: [(&str, Op, Op, Option<f64>); 9] = [
    (
        "PAY.CACHE new vs SET key json NX EX",
        Op::PayCacheNew,
        Op::SetNx,
        Some(0.9),
    ),
    (
        "PAY.CACHE new BRIEF vs SET key json NX EX",
        Op::PayCacheNewBrief,
        Op::SetNx,
        Some(0.9),
    ),
    (
        "PAY.CACHE new vs the Lua script (EVALSHA)",
        Op::PayCacheNew,
        Op::Lua,
        Some(3.0),
    ),
    (
        "PAY.CACHE new vs GET then SET (two round trips)",
        Op::PayCacheNew,
        Op::GetThenSet,
        None,
    ),
    (
        "PAY.CACHE duplicate vs GET",
        Op::PayCacheDup,
        Op::Get,
        Some(0.9),
    ),
    (
        "PAY.CACHE duplicate BRIEF vs GET",
        Op::PayCacheDupBrief,
        Op::Get,
        Some(0.9),
    ),
    ("PAY.CHECK vs GET", Op::PayCheck, Op::Get, Some(0.9)),
    (
        "PAY.CHECK JSON (one string, like GET) vs GET",
        Op::PayCheckJson,
        Op::Get,
        Some(0.9),
    ),
    (
        "PAY.CACHE new vs PAY.CACHE new BRIEF (what the full reply costs)",
        Op::PayCacheNew,
        Op::PayCacheNewBrief,
        None,
    ),
];

/// Each measurement is repeated this many times, interleaved, and the median
/// kept: the machine is small and shared.
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn add_op(p: &mut redis::Pipeline, op: Op, client: usize, i: usize, sha: &str, keys: usize) {
    let new_key = format!("n:{client}:{i}");
    let old = i % keys;
    match op {
        Op::PayCacheNew => {
            p.cmd("PAY.CACHE")
                .arg(&new_key)
                .arg(67890)
                .arg(1000)
                .arg("USD");
        }
        Op::PayCacheNewBrief => {
            p.cmd("PAY.CACHE")
                .arg(&new_key)
                .arg(67890)
                .arg(1000)
                .arg("USD")
                .arg("BRIEF");
        }
        Op::SetNx => {
            p.cmd("SET")
                .arg(&new_key)
                .arg(JSON)
                .arg("NX")
                .arg("EX")
                .arg(86400);
        }
        Op::Lua => {
            p.cmd("EVALSHA")
                .arg(sha)
                .arg(2)
                .arg(&new_key)
                .arg("pending-index")
                .arg(67890)
                .arg(1000)
                .arg("USD");
        }
        Op::GetThenSet => unreachable!("two round trips, not pipelined"),
        Op::PayCacheDup => {
            p.cmd("PAY.CACHE")
                .arg(format!("p:{old}"))
                .arg(67890)
                .arg(1000)
                .arg("USD");
        }
        Op::PayCacheDupBrief => {
            p.cmd("PAY.CACHE")
                .arg(format!("p:{old}"))
                .arg(67890)
                .arg(1000)
                .arg("USD")
                .arg("BRIEF");
        }
        Op::PayCheck => {
            p.cmd("PAY.CHECK").arg(format!("p:{old}"));
        }
        Op::PayCheckJson => {
            p.cmd("PAY.CHECK").arg(format!("p:{old}")).arg("JSON");
        }
        Op::Get => {
            p.cmd("GET").arg(format!("j:{old}"));
        }
    }
}

/// Operations per second over CLIENTS connections, each a thread.
fn throughput(s: &Server, op: Op, total: usize, pipeline: usize, sha: &str, keys: usize) -> f64 {
    let per_client = total / CLIENTS;
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let mut c = s.conn();
            let barrier = barrier.clone();
            let sha = sha.to_string();
            thread::spawn(move || {
                barrier.wait();
                let mut i = 0;
                while i < per_client {
                    if let Op::GetThenSet = op {
                        let key = format!("n:{client}:{i}");
                        let v: Option<String> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
                        if v.is_none() {
                            let _: Option<String> = redis::cmd("SET")
                                .arg(&key)
                                .arg(JSON)
                                .arg("EX")
                                .arg(86400)
                                .query(&mut c)
                                .unwrap();
                        }
                        i += 1;
                        continue;
                    }
                    let n = pipeline.min(per_client - i);
                    let mut p = redis::pipe();
                    for k in 0..n {
                        add_op(&mut p, op, client, i + k, &sha, keys);
                    }
                    let _: redis::Value = p.query(&mut c).unwrap();
                    i += n;
                }
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    (per_client * CLIENTS) as f64 / t.elapsed().as_secs_f64()
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

    // 1. Throughput.
    if want(1) {
        println!("1. throughput ...");
        writeln!(
            md,
            "## 1. Throughput ({CLIENTS} clients, {ops} operations per run)\n"
        )
        .unwrap();
        writeln!(
            md,
            "Each figure is the median of {ROUNDS} interleaved runs. Server µs/call is INFO commandstats' usec_per_call: the command alone, without the network and the client.\n"
        )
        .unwrap();
        writeln!(
            md,
            "| comparison | pipeline | baseline ops/s | redis-pay ops/s | ratio | server µs/call (baseline / redis-pay) | target |"
        )
        .unwrap();
        writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | --- |").unwrap();
        let s = Server::start();
        let mut c = s.conn();
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(LUA)
            .query(&mut c)
            .unwrap();
        let keys = 10_000;
        for pipeline in [1usize, 16] {
            let mut ops_needed: Vec<Op> = Vec::new();
            for (_, a, b, _) in ROWS {
                for op in [a, b] {
                    // Two round trips cannot be pipelined.
                    if !ops_needed.contains(&op) && (pipeline == 1 || op != Op::GetThenSet) {
                        ops_needed.push(op);
                    }
                }
            }
            let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ops_needed.len()];
            let mut usecs: Vec<Vec<f64>> = vec![Vec::new(); ops_needed.len()];
            for _ in 0..ROUNDS {
                for (i, &op) in ops_needed.iter().enumerate() {
                    let mut c = s.conn();
                    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
                    fill(&mut c, keys, "module", "p:");
                    fill(&mut c, keys, "json", "j:");
                    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
                    rates[i].push(throughput(&s, op, ops, pipeline, &sha, keys));
                    if let Some(cmd) = op.command() {
                        usecs[i].push(usec_per_call(&mut c, cmd));
                    }
                }
            }
            let figure = |op: Op| {
                let i = ops_needed.iter().position(|&o| o == op)?;
                Some((median(rates[i].clone()), median(usecs[i].clone())))
            };
            for (label, candidate, baseline, target) in ROWS {
                let (Some((pay, pay_us)), Some((base, base_us))) =
                    (figure(candidate), figure(baseline))
                else {
                    continue;
                };
                let ratio = pay / base;
                let goal = target.map_or(String::new(), |t| {
                    format!(">= {t}: {}", verdict(ratio >= t))
                });
                let us = if base_us.is_nan() {
                    format!("- / {pay_us:.2}")
                } else {
                    format!("{base_us:.2} / {pay_us:.2}")
                };
                writeln!(
                    md,
                    "| {label} | {pipeline} | {base:.0} | {pay:.0} | {ratio:.2} | {us} | {goal} |"
                )
                .unwrap();
            }
        }
        drop(s);
    }

    // 2. Memory.
    if want(2) {
        println!("2. memory ...");
        writeln!(
            md,
            "\n## 2. Memory per pending payment ({records} records)\n"
        )
        .unwrap();
        writeln!(
            md,
            "| layout | bytes per payment (used_memory delta / records) | vs JSON string |"
        )
        .unwrap();
        writeln!(md, "| --- | ---: | ---: |").unwrap();
        let mut per = Vec::new();
        for layout in ["json", "module", "hash+zset"] {
            let s = Server::start();
            let mut c = s.conn();
            let before = used_memory(&mut c);
            fill(&mut c, records, layout, "txn:");
            let after = used_memory(&mut c);
            per.push((layout, (after - before) as f64 / records as f64));
        }
        let json_bytes = per[0].1;
        for (layout, b) in &per {
            let name = match *layout {
                "json" => "one JSON string per key, with TTL (today's format)",
                "module" => "redis-pay (record + pending index), with TTL",
                _ => "a hash per payment + a sorted-set index, with TTL",
            };
            writeln!(md, "| {name} | {b:.0} | {:.2} |", b / json_bytes).unwrap();
        }
        let module_bytes = per[1].1;
        writeln!(
        md,
        "\nTarget: at most 200 bytes per pending payment, index included: {} ({module_bytes:.0}).",
        verdict(module_bytes <= 200.0)
    )
        .unwrap();
    }

    // 3. Sweep.
    if want(3) {
        println!("3. sweep ...");
        let stale = records / 10;
        writeln!(
            md,
            "\n## 3. Sweep cost ({records} pending payments, {stale} going stale at once)\n"
        )
        .unwrap();
        let s = Server::with(Opts::sweeper(3_600_000, 100));
        let mut c = s.conn();
        fill(&mut c, stale, "module", "old:");
        thread::sleep(Duration::from_millis(1500));
        fill(&mut c, records - stale, "module", "new:");
        // The cutoff falls in the 1.5 s gap: every old payment is stale, no new one.
        let created = |c: &mut Connection, key: &str| -> i64 {
            check(c, key).unwrap()["created_at"].parse().unwrap()
        };
        let gap_middle = created(&mut c, &format!("old:{}", stale - 1)) + 750;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let since_old = (now_ms - gap_middle).max(1);
        let (flag_all, (sweep_stall, _, _)) = timed_mass_sweep(&s, &mut c, since_old, stale as i64);
        let longest_tick_us = info_field(&mut c, "sweep_max_us");
        // As long a window as the sweep's, so both see as much of the noise.
        let pinger = Pinger::start(&s);
        thread::sleep(flag_all + Duration::from_millis(400));
        let (idle_stall, _, _) = pinger.finish();
        let stuck = mean_latency(
            &mut c,
            2000,
            redis::cmd("PAY.STUCK")
                .arg("OLDER")
                .arg(0)
                .arg("COUNT")
                .arg(100),
        );
        let stuck_server = usec_per_call(&mut c, "PAY.STUCK");
        drop(s);
        let z = Server::start();
        let mut zc = z.conn();
        fill(&mut zc, records, "hash+zset", "txn:");
        let zrange = mean_latency(
            &mut zc,
            2000,
            redis::cmd("ZRANGEBYSCORE")
                .arg("pending-index")
                .arg("-inf")
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(100),
        );
        let zrange_server = usec_per_call(&mut zc, "zrangebyscore");
        let zrange_records = {
            let t = Instant::now();
            for _ in 0..500 {
                let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                    .arg("pending-index")
                    .arg("-inf")
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(100)
                    .query(&mut zc)
                    .unwrap();
                let mut p = redis::pipe();
                for id in &ids {
                    p.cmd("HGETALL").arg(id);
                }
                let _: redis::Value = p.query(&mut zc).unwrap();
            }
            t.elapsed() / 500
        };
        drop(z);
        writeln!(md, "| measure | value |").unwrap();
        writeln!(md, "| --- | ---: |").unwrap();
        writeln!(
            md,
            "| longest PING seen by a client during the mass sweep | {:.2} ms |",
            ms(sweep_stall)
        )
        .unwrap();
        writeln!(
            md,
            "| longest PING on the same server, idle | {:.2} ms |",
            ms(idle_stall)
        )
        .unwrap();
        writeln!(
            md,
            "| longest sweeper tick, inside the server (INFO pay_sweep_max_us) | {:.2} ms |",
            longest_tick_us as f64 / 1000.0
        )
        .unwrap();
        writeln!(
            md,
            "| time until the sweeper had flagged the {stale} stale payments | {:.0} ms |",
            ms(flag_all)
        )
        .unwrap();
        writeln!(
            md,
            "| PAY.STUCK OLDER 0 COUNT 100 (100 full records) | {:.3} ms |",
            ms(stuck)
        )
        .unwrap();
        writeln!(
            md,
            "| ZRANGEBYSCORE ... LIMIT 0 100 (100 key names) on the hash+zset layout | {:.3} ms |",
            ms(zrange)
        )
        .unwrap();
        writeln!(
            md,
            "| ZRANGEBYSCORE then 100 HGETALL, pipelined (100 payments as 5-field hashes; a redis-pay record has 13 fields) | {:.3} ms |",
            ms(zrange_records)
        )
        .unwrap();
        writeln!(
        md,
        "| inside the server (INFO commandstats): PAY.STUCK COUNT 100 / ZRANGEBYSCORE LIMIT 0 100 | {stuck_server:.1} µs / {zrange_server:.1} µs |"
    )
    .unwrap();
        writeln!(
        md,
        "\nTargets: no client-visible stall above 5 ms during the sweep: {}; PAY.STUCK COUNT 100 no slower than the sorted-set read: {} against ZRANGEBYSCORE alone (ratio {:.2}), {} against ZRANGEBYSCORE plus the records (ratio {:.2}).",
        verdict(ms(sweep_stall) <= 5.0),
        verdict(stuck <= zrange),
        stuck.as_secs_f64() / zrange.as_secs_f64(),
        verdict(stuck <= zrange_records),
        stuck.as_secs_f64() / zrange_records.as_secs_f64()
    )
    .unwrap();
    }

    // 4. Restart.
    if want(4) {
        println!("4. restart ...");
        writeln!(md, "\n## 4. Restart: loading {records} records from RDB\n").unwrap();
        let mut load = Vec::new();
        let layouts = ["json", "module"];
        let mut servers: Vec<Server> = layouts
            .iter()
            .map(|layout| {
                let s = Server::start();
                let mut c = s.conn();
                fill(&mut c, records, layout, "txn:");
                let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
                s
            })
            .collect();
        // Restarts interleaved, ROUNDS of each; the median counts.
        let mut times = vec![Vec::new(); layouts.len()];
        let mut reloaded_bytes = vec![0.0; layouts.len()];
        for _ in 0..ROUNDS {
            for (i, s) in servers.iter_mut().enumerate() {
                s.kill();
                let t = Instant::now();
                s.restart();
                times[i].push(t.elapsed().as_secs_f64());
                let mut c = s.conn();
                let n: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
                assert_eq!(n, records, "{}: not every record loaded", layouts[i]);
                reloaded_bytes[i] = used_memory(&mut c) as f64 / records as f64;
            }
        }
        drop(servers);
        for t in times {
            load.push(Duration::from_secs_f64(median(t)));
        }
        writeln!(
            md,
            "| data set | restart until it serves (ms, median of {ROUNDS}) |"
        )
        .unwrap();
        writeln!(md, "| --- | ---: |").unwrap();
        writeln!(md, "| JSON strings | {:.0} |", ms(load[0])).unwrap();
        writeln!(
            md,
            "| redis-pay records (index rebuilt while loading) | {:.0} |",
            ms(load[1])
        )
        .unwrap();
        let ratio = load[1].as_secs_f64() / load[0].as_secs_f64();
        writeln!(
            md,
            "\nAfter the restart, used_memory per record (the whole server over the records): JSON strings {:.0} bytes, redis-pay {:.0} bytes. The index built in bulk has full B-tree nodes; one grown by inserts in time order has half-full ones.",
            reloaded_bytes[0], reloaded_bytes[1]
        )
        .unwrap();
        writeln!(
            md,
            "\nRatio {ratio:.2}; target at most 1.5: {}.",
            verdict(ratio <= 1.5)
        )
        .unwrap();
    }

    // 5. Sidecar.
    if want(5) {
        println!("5. sidecar ...");
        writeln!(md, "\n## 5. pay-sidecar throughput\n").unwrap();
        match sidecar_throughput() {
            Some((n, concurrency, latency, took)) => {
                let rate = n as f64 / took.as_secs_f64();
                let ideal = concurrency as f64 / latency.as_secs_f64();
                writeln!(md, "{n} stale payments the provider already knows (one GET each), provider latency {} ms, --concurrency {concurrency}: {rate:.0} payments/s against an ideal of {ideal:.0}/s = {:.2} of the ideal (target 0.8: {}).", latency.as_millis(), rate / ideal, verdict(rate / ideal >= 0.8)).unwrap();
            }
            None => writeln!(md, "Could not start pay-sidecar.").unwrap(),
        }
    }

    // 6. Claims under lease.
    if want(6) {
        println!("6. claims under lease ...");
        writeln!(
            md,
            "\n## 6. PAY.CLAIM COUNT 1 with {LEASED} payments under lease\n"
        )
        .unwrap();
        let none = claim_cost(0);
        let many = claim_cost(LEASED);
        writeln!(
            md,
            "| payments under lease | server µs per PAY.CLAIM COUNT 1 | client-side mean (ms) |"
        )
        .unwrap();
        writeln!(md, "| ---: | ---: | ---: |").unwrap();
        for (n, (server, client)) in [(0, none), (LEASED, many)] {
            writeln!(md, "| {n} | {server:.2} | {:.3} |", ms(client)).unwrap();
        }
        let ratio = many.0 / none.0;
        writeln!(
            md,
            "\nRatio {ratio:.2}; target at most 2: {}. Leased payments sit apart in the index, ordered by deadline: a claim never walks them (before contract v2 it skipped them one by one, 7-8 ms per call at 300,000).",
            verdict(ratio <= 2.0)
        )
        .unwrap();
    }

    // 7. Instructions per call.
    if want(7) {
        println!("7. instructions per call (callgrind) ...");
        callgrind::section(&mut md);
    }

    // 8. End to end with a C client.
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

/// Payments leased before the claims are timed (section 6).
const LEASED: usize = 300_000;
/// Claims timed per server.
const CLAIMS: usize = 2_000;

/// A server with `leased` payments under a day's lease and CLAIMS ready
/// ones: server µs per `PAY.CLAIM COUNT 1` (commandstats) and the client's
/// mean round trip, over CLAIMS claims.
fn claim_cost(leased: usize) -> (f64, Duration) {
    let s = Server::start();
    let mut c = s.conn();
    cache_many(&mut c, "held:", leased);
    let lease = |c: &mut Connection, count: usize| {
        let _: redis::Value = redis::cmd("PAY.CLAIM")
            .arg("bench-holder")
            .arg("LEASE")
            .arg(86_400_000)
            .arg("OLDER")
            .arg(0)
            .arg("COUNT")
            .arg(count)
            .query(c)
            .unwrap();
    };
    let mut left = leased;
    while left > 0 {
        let n = left.min(50_000);
        lease(&mut c, n);
        left -= n;
    }
    cache_many(&mut c, "ready:", CLAIMS);
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    let mut claim = redis::cmd("PAY.CLAIM");
    claim
        .arg("bench")
        .arg("LEASE")
        .arg(86_400_000)
        .arg("OLDER")
        .arg(0)
        .arg("COUNT")
        .arg(1);
    let client = mean_latency(&mut c, CLAIMS, &claim);
    (usec_per_call(&mut c, "PAY.CLAIM"), client)
}

/// Finishes stale payments the provider already knows, as fast as it can.
fn sidecar_throughput() -> Option<(usize, usize, Duration, Duration)> {
    let bin = env!("CARGO_BIN_EXE_pay-sidecar");
    const N: usize = 4000;
    const CONCURRENCY: usize = 16;
    let latency = Duration::from_millis(20);
    let s = Server::with(Opts::sweeper(1, 10));
    let mut c = s.conn();
    let bank = bench_bank(latency);
    for i in 0..N {
        bank.know(&format!("s:{i}"), "succeeded", &format!("ch_{i}"));
    }
    fill(&mut c, N, "module", "s:");
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let mut child = std::process::Command::new(bin)
        .arg("--redis-url")
        .arg(format!("redis://127.0.0.1:{}/", s.port))
        .arg("--bank-url")
        .arg(&bank.url)
        .args([
            "--interval",
            "100ms",
            "--concurrency",
            &CONCURRENCY.to_string(),
        ])
        .args(["--lease", "30s", "--timeout", "5s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    while info_field(&mut c, "records_pending") > 0 {
        thread::sleep(Duration::from_millis(10));
    }
    let took = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    Some((N, CONCURRENCY, latency, took))
}

fn bench_bank(latency: Duration) -> Bank {
    Bank::start(0.0, latency, Duration::ZERO, 1)
}
