//! Load helpers: what a client sees of the event loop while the sweeper runs.

use std::thread::sleep;
use std::time::{Duration, Instant};

use redis::Connection;

use crate::*;

/// Times PINGs on a connection of its own until finished: what a client sees
/// of the event loop while something else runs.
pub struct Pinger {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Duration>>,
}

impl Pinger {
    pub fn start(s: &Server) -> Pinger {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut c = s.conn();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let _: String = redis::cmd("PING").query(&mut c).unwrap();
                samples.push(t.elapsed());
            }
            samples
        });
        Pinger { stop, handle }
    }

    /// (longest, 99th percentile, number of PINGs)
    pub fn finish(self) -> (Duration, Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut samples = self.handle.join().unwrap();
        samples.sort();
        let n = samples.len();
        let p99 = samples[(n * 99 / 100).min(n - 1)];
        (samples[n - 1], p99, n)
    }
}

/// Sets `pay.stale-after-ms` and waits until the sweeper has flagged
/// `flagged` payments in all, while a [`Pinger`] watches from 200 ms before
/// to 200 ms after. Returns the time to flag them and the PING figures.
pub fn timed_mass_sweep(
    s: &Server,
    c: &mut Connection,
    stale_after_ms: i64,
    flagged: i64,
) -> (Duration, (Duration, Duration, usize)) {
    let pinger = Pinger::start(s);
    sleep(Duration::from_millis(200));
    let t = Instant::now();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.stale-after-ms")
        .arg(stale_after_ms)
        .query(c)
        .unwrap();
    while info_field(c, "flagged") < flagged {
        sleep(Duration::from_millis(5));
    }
    let took = t.elapsed();
    sleep(Duration::from_millis(200));
    (took, pinger.finish())
}
