//! pay-sidecar: parses options and wires the parts together.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use log::{error, info, warn};

use pay_sidecar::alerts::{self, Alerter, SlackWebhook};
use pay_sidecar::metrics::{self, Metrics};
use pay_sidecar::options::{LogFormat, Options};
use pay_sidecar::provider::HttpProvider;
use pay_sidecar::store::{Node, Topology};
use pay_sidecar::worker::{self, Settings};

fn init_logging(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().to_string(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// Wakes the main loop whenever a primary publishes on `pay:stale`.
fn listen_for_stale(node: Node, wake: mpsc::Sender<()>, shutdown: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            let result = (|| -> redis::RedisResult<()> {
                let mut c = node.connect()?;
                c.set_read_timeout(None)?;
                let mut ps = c.as_pubsub();
                ps.subscribe("pay:stale")?;
                loop {
                    ps.get_message()?;
                    if wake.send(()).is_err() {
                        return Ok(());
                    }
                }
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

fn main() {
    let opts = Options::parse();
    init_logging(opts.log_format);
    if let Err(e) = opts.validate() {
        error!("{e}");
        std::process::exit(2);
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, shutdown.clone()) {
            error!("cannot handle signal {signal}: {e}");
            std::process::exit(1);
        }
    }
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = opts.metrics_addr {
        let window = (opts.interval * 3).max(Duration::from_secs(30));
        if let Err(e) = metrics::serve(addr, metrics.clone(), window) {
            error!("cannot serve metrics on {addr}: {e}");
            std::process::exit(1);
        }
        info!("metrics and health on http://{addr}/metrics and /healthz");
    }
    let consumer = opts.consumer_name();
    info!(
        "pay-sidecar {} as '{consumer}': interval {}, lease {}, alert after {}, max attempts {}, concurrency {}, Slack {}",
        env!("CARGO_PKG_VERSION"),
        humantime::format_duration(opts.interval),
        humantime::format_duration(opts.lease),
        humantime::format_duration(opts.alert_after),
        opts.max_attempts,
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
                    return;
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
        alert_after: opts.alert_after,
        repeat: opts.alert_repeat,
    };
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
    // On SIGTERM/SIGINT: stop claiming, let in-flight payments finish, and
    // exit at the deadline whatever is left (its lease runs out; the next
    // claim retries it, and the idempotency key makes that safe).
    {
        let (stop, deadline) = (shutdown.clone(), opts.shutdown_timeout);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            info!("stopping: no new claims; finishing in-flight payments");
            std::thread::sleep(deadline);
            warn!("shutdown deadline reached; exiting");
            std::process::exit(0);
        });
    }

    let settings = Settings {
        consumer,
        lease: opts.lease,
        timeout: opts.timeout,
        max_attempts: opts.max_attempts,
        concurrency: usize::from(opts.concurrency),
    };
    let mut keyed = None;
    while !shutdown.load(Ordering::Relaxed) {
        let round = (|| -> redis::RedisResult<()> {
            let mut gave_up = Vec::new();
            for node in &topology.primaries {
                gave_up.extend(worker::drain(
                    node, &provider, &settings, &metrics, &shutdown,
                )?);
            }
            let c = match keyed.as_mut() {
                Some(c) => c,
                None => keyed.insert(topology.keyed()?),
            };
            alerter.gave_up(c.as_mut(), &gave_up)?;
            if !shutdown.load(Ordering::Relaxed) {
                alerter.round(&topology, c.as_mut())?;
            }
            Ok(())
        })();
        match round {
            Ok(()) => metrics.round_ok(),
            Err(e) => {
                warn!("round failed: {e}");
                keyed = None;
            }
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
}
