//! Section 6: PAY.CLAIM COUNT 1 with payments under lease against none.

use std::fmt::Write as _;
use std::time::Duration;

use testkit::*;

use crate::*;

pub fn section(md: &mut String) {
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
    hold_for_a_day(&mut c, leased);
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
