//! Section 3: sweep cost with a tenth of the records going stale at once;
//! PAY.STUCK COUNT 100 against ZRANGEBYSCORE ... LIMIT 0 100.

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use redis::Connection;
use testkit::*;

use crate::*;

pub fn section(md: &mut String, records: usize) {
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
