//! Section 2: memory per pending payment, against JSON strings and
//! hashes with a sorted-set index.

use std::fmt::Write as _;

use testkit::*;

use crate::*;

pub fn section(md: &mut String, records: usize) {
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
