//! Section 4: restart, loading the records from RDB, against JSON strings.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use testkit::*;

use crate::*;

pub fn section(md: &mut String, records: usize) {
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
