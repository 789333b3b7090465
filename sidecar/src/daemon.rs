//! The daemon: wires the parts together and runs rounds until shutdown.
//! `main.rs` only parses options, sets up logging and signals, and calls
//! [`run`]; a program may embed the sidecar the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};

use crate::alerts::{self, Alerter, ConfigAlerts, SlackWebhook};
use crate::metrics::{self, Metrics};
use crate::options::Options;
use crate::provider::HttpProvider;
use crate::store::{self, Node, Topology};
use crate::worker::{self, Policy, Settings};

/// The alert threshold when neither `--alert-after` nor INFO gives one.
const ALERT_AFTER_FALLBACK: Duration = Duration::from_secs(600);

/// Wakes the main loop whenever a primary publishes on `pay:stale`.
fn listen_for_stale(node: Node, wake: mpsc::Sender<()>, shutdown: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            let result = (|| -> redis::RedisResult<()> {
                let mut c = node.connect()?;
                c.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut ps = c.as_pubsub();
                ps.subscribe("pay:stale")?;
                while !shutdown.load(Ordering::Relaxed) {
                    match ps.get_message() {
                        Ok(_) => {
                            if wake.send(()).is_err() {
                                return Ok(());
                            }
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                warn!(
                    "pay:stale listener on {}: {e}; polling continues",
                    node.name
                );
            }
            alerts::sleep_unless(&shutdown, Duration::from_secs(1));
        }
    });
}

/// The alert threshold: `--alert-after`, else the module's
/// `pay.alert-after-ms` (one source of truth), else 10m.
fn alert_after(opts: &Options, topology: &Topology) -> Duration {
    if let Some(d) = opts.alert_after {
        info!(
            "alert after {} (--alert-after)",
            humantime::format_duration(d)
        );
        return d;
    }
    let from_info = topology
        .primaries
        .first()
        .and_then(|n| n.connect().ok())
        .and_then(|mut c| store::alert_after(&mut c));
    match from_info {
        Some(d) => {
            info!(
                "alert after {} (the module's pay.alert-after-ms, from INFO pay)",
                humantime::format_duration(d)
            );
            d
        }
        None => {
            warn!(
                "cannot read pay_alert_after_ms from INFO pay; alerting after {}",
                humantime::format_duration(ALERT_AFTER_FALLBACK)
            );
            ALERT_AFTER_FALLBACK
        }
    }
}

/// Runs the sidecar until `shutdown` is set: then it stops claiming,
/// finishes the payments in hand and returns. Errors only if it cannot
/// start (the metrics address is taken).
pub fn run(opts: Options, shutdown: Arc<AtomicBool>) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = opts.metrics_addr {
        let window = (opts.interval * 3).max(Duration::from_secs(30));
        metrics::serve(addr, metrics.clone(), window)
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        info!("metrics and health on http://{addr}/metrics and /healthz");
    }
    let consumer = opts.consumer_name();
    info!(
        "pay-sidecar {} as '{consumer}': interval {}, lease {}, retry schedule {}, max attempts {}, unknown payments asked every {}, concurrency {}, Slack {}",
        env!("CARGO_PKG_VERSION"),
        humantime::format_duration(opts.interval),
        humantime::format_duration(opts.lease),
        opts.retry_schedule,
        opts.max_attempts,
        humantime::format_duration(opts.unknown_interval),
        opts.concurrency,
        if opts.slack_webhook_url.is_some() { "configured" } else { "not configured (alerts are logged only)" },
    );

    let topology = loop {
        match Topology::discover(&opts.redis_url) {
            Ok(t) => break Arc::new(t),
            Err(e) => {
                warn!("cannot reach Redis yet: {e}");
                alerts::sleep_unless(&shutdown, Duration::from_secs(1));
                if shutdown.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
    };
    info!(
        "claiming from {} primary(ies): {}",
        topology.primaries.len(),
        topology
            .primaries
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let provider_metrics = metrics.clone();
    let provider = HttpProvider::new(
        &opts.bank_url,
        opts.connect_timeout,
        opts.timeout,
        Box::new(move |call, took| provider_metrics.provider_call(call, took)),
    );
    let alerter = Alerter {
        alert_after: alert_after(&opts, &topology),
        repeat: opts.alert_repeat,
    };
    let config_alerts = ConfigAlerts::new(topology.clone(), opts.alert_repeat);
    if let Some(url) = opts.slack_webhook_url.clone() {
        let (topo, m, stop, me) = (
            topology.clone(),
            metrics.clone(),
            shutdown.clone(),
            consumer.clone(),
        );
        std::thread::spawn(move || {
            let slack = SlackWebhook::new(&url, Duration::from_secs(10));
            alerts::deliver(&topo, &slack, &me, &m, &stop);
        });
    }
    let (wake_tx, wake_rx) = mpsc::channel();
    for node in &topology.primaries {
        listen_for_stale(node.clone(), wake_tx.clone(), shutdown.clone());
    }

    let settings = Settings {
        consumer,
        lease: opts.lease,
        timeout: opts.timeout,
        policy: Policy {
            max_attempts: opts.max_attempts,
            retry_schedule: opts.retry_schedule.0.clone(),
            unknown_interval: opts.unknown_interval,
        },
        concurrency: usize::from(opts.concurrency),
    };
    let mut keyed = None;
    while !shutdown.load(Ordering::Relaxed) {
        // Each part of a round stands alone: a primary that fails does not
        // keep the others or the alerts from running, and whatever a failed
        // part left undone is still in Redis for the next round.
        let mut ok = true;
        for node in &topology.primaries {
            let drained = worker::drain(
                node,
                &provider,
                &settings,
                &config_alerts,
                &metrics,
                &shutdown,
            );
            if let Err(e) = drained {
                warn!("round on {}: {e}", node.name);
                ok = false;
            }
        }
        if !shutdown.load(Ordering::Relaxed) {
            let alerted = (|| -> redis::RedisResult<()> {
                let c = match keyed.as_mut() {
                    Some(c) => c,
                    None => keyed.insert(topology.keyed()?),
                };
                alerter.round(&topology, c.as_mut())
            })();
            if let Err(e) = alerted {
                warn!("alert round: {e}");
                keyed = None;
                ok = false;
            }
        }
        if ok {
            metrics.round_ok();
        }
        // Sleep until the interval passes, a pay:stale message arrives, or shutdown.
        let deadline = std::time::Instant::now() + opts.interval;
        while !shutdown.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if wake_rx
                .recv_timeout(left.min(Duration::from_millis(200)))
                .is_ok()
            {
                while wake_rx.try_recv().is_ok() {}
                break;
            }
        }
    }
    info!("stopped");
    Ok(())
}
