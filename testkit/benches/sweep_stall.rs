//! Event-loop stall during a mass-staleness sweep, seen from outside: a
//! client times PINGs while 100,000 pending payments go stale at once, next
//! to the same server's stall while a client SCANs the keyspace (COUNT 1000
//! per call, as a cron job would) and while one `SCAN 0 COUNT <all>` runs.
//!
//! `cargo bench --bench sweep_stall` (after `make build`). Ratios matter; the
//! machine is small and noisy.

use std::thread;
use std::time::{Duration, Instant};

use testkit::*;

const N: usize = 100_000;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let s = Server::with(Opts::sweeper(3_600_000, 100));
    let mut c = s.conn();
    cache_many(&mut c, "txn:", N);
    thread::sleep(Duration::from_millis(20));

    // 1. Mass staleness: every pending payment goes stale at once.
    let (flag_all, (sweep_max, sweep_p99, sweep_n)) = timed_mass_sweep(&s, &mut c, 1, N as i64);
    let tick_max_us = info_field(&mut c, "sweep_max_us");
    let batch = info_field(&mut c, "sweep_max_batch");

    // 2. The same keyspace walked by SCAN, COUNT 1000 per call.
    let pinger = Pinger::start(&s);
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let keys = all_keys(&mut c).len();
    let scan_all = t.elapsed();
    thread::sleep(Duration::from_millis(200));
    let (scan_max, scan_p99, scan_n) = pinger.finish();

    // 3. One SCAN call over the whole keyspace (what KEYS costs).
    let pinger = Pinger::start(&s);
    thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let _: (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(N * 2)
        .query(&mut c)
        .unwrap();
    let one_scan = t.elapsed();
    thread::sleep(Duration::from_millis(200));
    let (one_max, one_p99, one_n) = pinger.finish();

    println!(
        "server: {}, {N} pending payments, {keys} keys",
        server_bin()
    );
    println!("| scenario | longest PING (ms) | p99 PING (ms) | PINGs | duration (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| sweep flags {N} stale payments | {:.2} | {:.3} | {sweep_n} | {:.0} (time to flag all) |",
        ms(sweep_max),
        ms(sweep_p99),
        ms(flag_all)
    );
    println!(
        "| SCAN pass, COUNT 1000 per call | {:.2} | {:.3} | {scan_n} | {:.0} |",
        ms(scan_max),
        ms(scan_p99),
        ms(scan_all)
    );
    println!(
        "| one SCAN 0 COUNT {} | {:.2} | {:.3} | {one_n} | {:.0} |",
        N * 2,
        ms(one_max),
        ms(one_p99),
        ms(one_scan)
    );
    println!(
        "longest sweep tick inside the server: {:.2} ms; most payments in one tick: {batch}",
        tick_max_us as f64 / 1000.0
    );
    println!(
        "ratio longest stall sweep / SCAN pass: {:.2}",
        ms(sweep_max) / ms(scan_max)
    );
}
