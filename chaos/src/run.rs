//! One run, start to end: the system up, the clients and the nemesis, the
//! settling, the final state of every server, the checker and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checker::{self, Evidence, ServerState};
use crate::history::History;
use crate::nemesis::{self, Done};
use crate::provider::{Provider, Rates};
use crate::redisio;
use crate::report::{self, Facts};
use crate::settings::{self, Options};
use crate::slack::Slack;
use crate::system::{Binaries, System};
use crate::{clients, clock, procs};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn version(program: &Path) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map_or_else(
            || text.lines().next().unwrap_or("").to_string(),
            |v| format!("{} {v}", program.display()),
        ))
}

fn binaries(opts: &Options) -> Result<Binaries, String> {
    let module = opts
        .module
        .clone()
        .unwrap_or_else(|| beside_me("libredis_pay.so"));
    let sidecar = opts
        .sidecar
        .clone()
        .unwrap_or_else(|| beside_me("pay-sidecar"));
    for (what, p) in [("module", &module), ("pay-sidecar", &sidecar)] {
        if !p.exists() {
            return Err(format!(
                "{what} not found at {} (run make build)",
                p.display()
            ));
        }
    }
    Ok(Binaries {
        server: PathBuf::from(&opts.server),
        sentinel: PathBuf::from(&opts.sentinel),
        module: std::fs::canonicalize(&module).map_err(|e| e.to_string())?,
        sidecar,
        min_replicas_to_write: opts.min_replicas_to_write,
    })
}

/// What the monitor saw while the run went on.
#[derive(Default)]
struct Watch {
    misses: BTreeMap<String, u64>,
    failovers: u32,
    primary: Option<u16>,
}

/// Every 200 ms: exits nobody caused, failovers (and, in harness-followed
/// mode, the sidecars pointed at the new primary); every second,
/// `pay_index_misses` on each server that is up; every 10 s, a progress line.
fn monitor(
    sys: &System,
    history: &History,
    done: &Mutex<Vec<Done>>,
    watch: &Mutex<Watch>,
    stop: &AtomicBool,
) {
    let mut tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sys.poll();
        sys.follow_primary();
        if let Some(p) = redisio::primary(&sys.sentinel_ports()) {
            let mut w = lock(watch);
            if w.primary.is_some_and(|old| old != p) {
                w.failovers += 1;
                println!(
                    "[{:6.1}s] failover: the primary is now {p}",
                    clock::ms() as f64 / 1000.0
                );
            }
            w.primary = Some(p);
        }
        if tick.is_multiple_of(5) {
            for s in &sys.servers {
                let up = {
                    let p = lock(&s.proc);
                    p.running() && !p.paused()
                };
                if !up {
                    continue;
                }
                let misses = redisio::connect(s.port, Duration::from_millis(300))
                    .ok()
                    .and_then(|mut c| redisio::info(&mut c, "pay"))
                    .and_then(|i| {
                        i.get("pay_index_misses")
                            .and_then(|v| v.parse::<u64>().ok())
                    });
                if let Some(n) = misses {
                    let mut w = lock(watch);
                    let e = w.misses.entry(s.name.clone()).or_default();
                    *e = (*e).max(n);
                }
            }
        }
        if tick.is_multiple_of(50) && tick > 0 {
            let injected = lock(done).iter().filter(|d| d.injected).count();
            println!(
                "[{:6.1}s] {} stories, {} operations, {} process faults injected",
                clock::ms() as f64 / 1000.0,
                history.stories().len(),
                history.ops().len(),
                injected
            );
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until no payment is pending and every unknown one has been alerted
/// (named in Slack, or, when `accept_counted`, marked in the sidecar's alert
/// state with every queued message delivered), or the limit passes.
fn settle(
    sys: &System,
    slack: &Slack,
    accept_counted: bool,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("the system never became whole");
    while Instant::now() < deadline {
        let state = sys.health().ok().and_then(|(p, _)| {
            let mut c = redisio::connect(p, Duration::from_secs(2)).ok()?;
            let stuck = redisio::stuck_all(&mut c).ok()?;
            let alerts = redisio::alert_state(&mut c).ok()?;
            Some((stuck, alerts))
        });
        if let Some((stuck, (marked, outbox))) = state {
            let pending = stuck.iter().filter(|r| r["status"] == "pending").count();
            let named = slack.unknown_keys();
            let unalerted = stuck
                .iter()
                .filter(|r| r["status"] == "unknown")
                .filter(|r| {
                    let key = &r["key"];
                    let counted = accept_counted && outbox == 0 && marked.contains(key);
                    !(named.contains(key) || counted)
                })
                .count();
            if pending == 0 && unalerted == 0 {
                return Ok(());
            }
            last = format!(
                "{pending} pending, {unalerted} unknown not yet alerted, {outbox} alerts queued"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

/// Waits until the replica has every byte of the primary's stream.
fn replica_caught_up(primary: u16, replica: u16) -> bool {
    let offset = |port: u16, field: &str| {
        redisio::connect(port, Duration::from_secs(1))
            .ok()
            .and_then(|mut c| redisio::info(&mut c, "replication"))
            .and_then(|i| i.get(field).and_then(|v| v.parse::<i64>().ok()))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let p = offset(primary, "master_repl_offset");
        if p.is_some() && p == offset(replica, "slave_repl_offset") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn server_state(name: &str, port: u16) -> Result<ServerState, String> {
    let mut c =
        redisio::connect(port, Duration::from_secs(10)).map_err(|e| format!("{name}: {e}"))?;
    let role = redisio::role(&mut c).unwrap_or_default();
    let mut records = BTreeMap::new();
    for key in redisio::scan_payments(&mut c).map_err(|e| format!("{name}: SCAN: {e}"))? {
        let r =
            redisio::check(&mut c, &key).map_err(|e| format!("{name}: PAY.CHECK {key}: {e}"))?;
        if let Some(r) = r {
            records.insert(key, r);
        }
    }
    let index: BTreeSet<String> = redisio::stuck_all(&mut c)
        .map_err(|e| format!("{name}: PAY.STUCK: {e}"))?
        .into_iter()
        .filter_map(|r| r.get("key").cloned())
        .collect();
    Ok(ServerState {
        name: name.into(),
        role,
        records,
        index,
    })
}

fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for item in items {
        writeln!(f, "{}", serde_json::to_string(item).unwrap_or_default())?;
    }
    f.flush()
}

/// Runs the whole thing; Ok(true) when every invariant holds.
pub fn run(opts: &Options) -> Result<bool, String> {
    let seed = opts.seed.unwrap_or_else(|| fastrand::u64(..1_000_000_000));
    let out = opts.out.join(seed.to_string());
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let out = std::fs::canonicalize(&out).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(opts.seconds + 240) + opts.settle_limit();
    procs::install_last_resorts(limit);
    let bins = binaries(opts)?;
    let server_version = version(&bins.server)?;
    version(&bins.sentinel)?;

    let fault_end = Duration::from_secs(opts.seconds) - opts.quiet();
    let sched = nemesis::schedule(seed, settings::WARMUP, fault_end);
    let rates = Rates {
        errors: 20,
        slow: 20,
        drop: 30,
    };
    let provider = Provider::start(sched.windows.clone(), rates, seed ^ 0x5EED)
        .map_err(|e| format!("provider stand-in: {e}"))?;
    let slack = Slack::start().map_err(|e| format!("Slack stand-in: {e}"))?;
    println!(
        "pay-chaos: seed {seed}, {} s of clients, {} process faults and {} provider windows scheduled; files in {}",
        opts.seconds,
        sched.events.len(),
        sched.windows.len(),
        out.display()
    );
    let started = Instant::now();
    let sys = System::start(&bins, &out, opts.follow, &provider.url, &slack.url)?;
    println!(
        "pay-chaos: up in {:.1}s: {} primary {}, replica {}, Sentinels {:?}, 2 sidecars (failovers followed {})",
        started.elapsed().as_secs_f64(),
        server_version,
        sys.servers[0].port,
        sys.servers[1].port,
        sys.sentinel_ports(),
        match sys.follow {
            settings::Follow::Sentinel => "with --sentinel",
            _ => "by the harness",
        }
    );

    let epoch = clock::begin();
    let history = Arc::new(History::new());
    let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
    let watch = Mutex::new(Watch::default());
    let stop = AtomicBool::new(false);
    let stop_at = epoch + Duration::from_secs(opts.seconds);
    let mut clients_ms = 0;
    let mut settle_ms = 0;
    let mut servers: Vec<ServerState> = Vec::new();
    let mut unsettled = None;
    let mut counted = BTreeSet::new();
    let accept_counted = opts.alerts == settings::Alerts::Counted;
    let result: Result<(), String> = std::thread::scope(|scope| {
        scope.spawn(|| monitor(&sys, &history, &done, &watch, &stop));
        let nemesis =
            scope.spawn(|| nemesis::run(&sched.events, epoch, fault_end, &sys, &provider, &done));
        let handles = clients::start(
            opts.clients,
            seed,
            stop_at,
            sys.sentinel_ports(),
            &provider.url,
            history.clone(),
        );
        for h in handles {
            let _ = h.join();
        }
        clients_ms = clock::ms();
        let _ = nemesis.join();
        println!(
            "[{:6.1}s] clients stopped; settling",
            clock::ms() as f64 / 1000.0
        );
        let settling = Instant::now();
        if let Err(why) = settle(&sys, &slack, accept_counted, opts.settle_limit()) {
            println!(
                "pay-chaos: not settled after {}s: {why}",
                opts.settle_limit().as_secs()
            );
            unsettled = Some(why);
        }
        settle_ms = settling.elapsed().as_millis() as u64;
        // The sidecars stop (SIGTERM) so the final state holds still.
        sys.stop_sidecars();
        let taken = (|| {
            let (p, r) = sys.wait_healthy(Duration::from_secs(30))?;
            if !replica_caught_up(p, r) {
                return Err("the replica did not catch up with the primary within 15s".to_string());
            }
            let name = |port| sys.server(port).map(|s| s.name.clone()).unwrap_or_default();
            servers.push(server_state(&name(p), p)?);
            servers.push(server_state(&name(r), r)?);
            let mut c = redisio::connect(p, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let (marked, outbox) = redisio::alert_state(&mut c).map_err(|e| e.to_string())?;
            if outbox == 0 {
                counted = marked;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        taken
    });
    result.map_err(|e| format!("cannot read the final state: {e}"))?;
    sys.poll();

    let stories = history.stories();
    let charges = provider.charges();
    let declines = provider.declines();
    let alerted = slack.unknown_keys();
    let deaths = sys.deaths();
    let watch = watch.into_inner().unwrap_or_else(|p| p.into_inner());
    let verdicts = checker::check(&Evidence {
        stories: &stories,
        charges: &charges,
        declines: &declines,
        alerted_unknown: &alerted,
        counted_unknown: &counted,
        accept_counted,
        servers: &servers,
        deaths: &deaths,
        index_misses: &watch.misses,
        key_prefix: "payment:",
    });
    let faults = done.into_inner().unwrap_or_else(|p| p.into_inner());
    let ops = history.ops();
    let logs: Vec<PathBuf> = sys
        .sidecars
        .iter()
        .map(|s| lock(&s.proc).log_path().to_path_buf())
        .collect();
    let outcomes = report::sidecar_outcomes(&logs);
    let counts = provider.counts();
    let text = report::render(&Facts {
        opts,
        seed,
        server_version,
        follow: sys.follow,
        clients_ms,
        settle_ms,
        total_ms: clock::ms(),
        ops: &ops,
        stories: stories.len(),
        provider_counts: &counts,
        sidecar_outcomes: &outcomes,
        windows: &sched.windows,
        faults: &faults,
        failovers: watch.failovers,
        harness_restarts: sys.harness_restarts.load(Ordering::Relaxed),
        slack_messages: slack.messages().len(),
        verdicts: &verdicts,
        out_dir: opts.out.join(seed.to_string()).as_path(),
    });
    drop(sys);

    let files = (|| -> std::io::Result<()> {
        history.write(&out.join("history.jsonl"))?;
        let ledger: Vec<serde_json::Value> = charges
            .iter()
            .map(|c| serde_json::json!({"kind": "charge", "entry": c}))
            .chain(
                declines
                    .iter()
                    .map(|c| serde_json::json!({"kind": "decline", "entry": c})),
            )
            .collect();
        write_jsonl(&out.join("ledger.jsonl"), &ledger)?;
        write_jsonl(&out.join("slack.jsonl"), &slack.messages())?;
        write_jsonl(&out.join("faults.jsonl"), &faults)?;
        write_jsonl(&out.join("windows.jsonl"), &sched.windows)?;
        std::fs::write(&opts.report, &text)
    })();
    files.map_err(|e| format!("cannot write the report or the history: {e}"))?;
    println!("\n{text}");
    let pass = verdicts.iter().all(checker::Verdict::holds);
    if let Some(why) = unsettled {
        println!("note: the system had not settled ({why})");
    }
    for v in verdicts.iter().filter(|v| !v.holds()) {
        eprintln!(
            "pay-chaos: invariant {} violated ({}): {}",
            v.number,
            v.name,
            v.violations.first().map_or("", String::as_str)
        );
    }
    println!(
        "pay-chaos: {} (report in {})",
        if pass { "PASS" } else { "FAIL" },
        opts.report.display()
    );
    Ok(pass)
}
