//! Section 1: throughput at CLIENTS clients, without and with pipelining
//! (16), each comparison a ratio against its baseline on the same server.

use std::fmt::Write as _;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use testkit::*;

use crate::*;

pub fn section(md: &mut String, ops: usize) {
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
