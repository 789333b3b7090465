//! Section 5: pay-sidecar throughput against the stand-in provider, as a
//! fraction of the ideal (concurrency / latency). Runs the release binary
//! (`make build`).

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use testkit::standin::Bank;
use testkit::*;

use crate::*;

pub fn section(md: &mut String) {
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

/// Finishes stale payments the provider already knows, as fast as it can.
fn sidecar_throughput() -> Option<(usize, usize, Duration, Duration)> {
    let bin = testkit::sidecar_bin();
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
