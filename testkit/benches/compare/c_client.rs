//! Section 8: end to end at pipeline 1 with `redis-benchmark`, a C client
//! that costs far less per request than the Rust threads of section 1, so the
//! server's share of the round trip shows. 50 clients, one request in flight
//! each. Each round runs the baseline and the candidate back to back (which
//! goes first alternates); the figure is the median over RUNS rounds of that
//! round's ratio, so a neighbour's burst of work spoils one round, not the
//! comparison.

use std::fmt::Write as _;
use std::process::Command;

use crate::{median, verdict, JSON};
use testkit::Server;

const CLIENTS: usize = 50;
/// Rounds of each comparison (short ones: half of BENCH_OPS requests each).
const RUNS: usize = 5;
/// Keys of each read data set, named as `redis-benchmark -r` names them.
const KEYS: usize = 10_000;

/// Requests per second of one run, or None if redis-benchmark failed.
fn run(port: u16, requests: usize, keyspace: usize, args: &[&str]) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &CLIENTS.to_string(), "-n", &requests.to_string()])
        .args(["-P", "1", "-r", &keyspace.to_string(), "--csv"])
        .args(args)
        .output()
        .ok()?;
    // "test","rps", then six latency fields; the test's name is the command
    // line, commas and all: count from the end.
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().nth(1)?;
    row.rsplit(',').nth(6)?.trim_matches('"').parse().ok()
}

struct Pair {
    label: &'static str,
    candidate: &'static [&'static str],
    baseline: &'static [&'static str],
    /// Keyspace of `__rand_int__`: huge for new keys, KEYS for existing ones.
    keyspace: usize,
    target: Option<f64>,
}

const PAIRS: [Pair; 3] = [
    Pair {
        label: "PAY.CACHE new BRIEF vs SET key json NX EX",
        candidate: &[
            "PAY.CACHE",
            "n:__rand_int__",
            "67890",
            "1000",
            "USD",
            "BRIEF",
        ],
        baseline: &["SET", "s:__rand_int__", JSON, "NX", "EX", "86400"],
        keyspace: 100_000_000,
        target: Some(0.9),
    },
    Pair {
        label: "PAY.CHECK JSON vs GET",
        candidate: &["PAY.CHECK", "p:__rand_int__", "JSON"],
        baseline: &["GET", "j:__rand_int__"],
        keyspace: KEYS,
        target: Some(0.9),
    },
    Pair {
        label: "PAY.CACHE duplicate BRIEF vs GET",
        candidate: &[
            "PAY.CACHE",
            "p:__rand_int__",
            "67890",
            "1000",
            "USD",
            "BRIEF",
        ],
        baseline: &["GET", "j:__rand_int__"],
        keyspace: KEYS,
        target: None,
    },
];

/// Section 8 of BENCHMARKS.md.
pub fn section(md: &mut String, ops: usize) {
    let requests = (ops / 2).max(1000);
    writeln!(
        md,
        "\n## 8. End to end at pipeline 1 with redis-benchmark ({CLIENTS} clients, {requests} requests per run)\n"
    )
    .unwrap();
    let s = Server::start();
    let mut c = s.conn();
    let mut p = redis::pipe();
    for i in 0..KEYS {
        p.cmd("PAY.CACHE")
            .arg(format!("p:{i:012}"))
            .arg(67890)
            .arg(1000)
            .arg("USD")
            .ignore();
        p.cmd("SET")
            .arg(format!("j:{i:012}"))
            .arg(JSON)
            .arg("EX")
            .arg(86400)
            .ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    // Per comparison: baseline rates, candidate rates, ratios per round.
    let mut runs = vec![(Vec::new(), Vec::new(), Vec::new()); PAIRS.len()];
    for round in 0..RUNS {
        for (pair, (base, pay, ratios)) in PAIRS.iter().zip(runs.iter_mut()) {
            // Every other round the candidate goes first: a drifting load
            // favours neither.
            let first = if round % 2 == 0 {
                pair.baseline
            } else {
                pair.candidate
            };
            let second = if round % 2 == 0 {
                pair.candidate
            } else {
                pair.baseline
            };
            let (Some(x), Some(y)) = (
                run(s.port, requests, pair.keyspace, first),
                run(s.port, requests, pair.keyspace, second),
            ) else {
                writeln!(md, "redis-benchmark did not run (is it installed?).").unwrap();
                return;
            };
            let (b, p) = if round % 2 == 0 { (x, y) } else { (y, x) };
            base.push(b);
            pay.push(p);
            ratios.push(p / b);
        }
    }
    writeln!(
        md,
        "{RUNS} rounds, each the baseline and redis-pay back to back on one server (which goes first alternates); the ratio is the median of the rounds' ratios, the rates are medians.\n"
    )
    .unwrap();
    writeln!(
        md,
        "| comparison | baseline req/s | redis-pay req/s | ratio | target |"
    )
    .unwrap();
    writeln!(md, "| --- | ---: | ---: | ---: | --- |").unwrap();
    for (pair, (base, pay, ratios)) in PAIRS.iter().zip(runs) {
        let (base, pay, ratio) = (median(base), median(pay), median(ratios));
        let goal = pair.target.map_or(String::new(), |t| {
            format!("at least {t}: {}", verdict(ratio >= t))
        });
        writeln!(
            md,
            "| {} | {base:.0} | {pay:.0} | {ratio:.2} | {goal} |",
            pair.label
        )
        .unwrap();
    }
}
