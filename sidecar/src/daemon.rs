//! The daemon: wires the parts together and runs rounds until shutdown.
//! `main.rs` only parses options, sets up logging and signals, and calls
//! [`run`]; a program may embed the sidecar the same way.
//!
//! Every round starts by finding the primaries again (Sentinel's primary, or
//! a cluster's slots): a failover, a promoted replica or a resharding is
//! followed by the next round, and a round that met an error comes back
//! within a second instead of waiting for `--interval`. Each primary is
//! served on its own, so one that cannot be reached does not keep the others
//! or the alerts from running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::ConnectionLike;

use crate::alerts::{self, Alerter, ConfigAlerts, SlackWebhook};
use crate::metrics::{self, Metrics};
use crate::options::Options;
use crate::provider::HttpProvider;
use crate::store::{self, Node, Redis, Sentinels};
use crate::worker::{self, Policy, Settings};

/// The alert threshold when neither `--alert-after` nor INFO gives one.
const ALERT_AFTER_FALLBACK: Duration = Duration::from_secs(600);

/// How soon a round that met an error is run again (at most `--interval`).
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// Wakes the main loop whenever a primary publishes on `pay:stale`, until
/// `stop` (the primary left the topology) or shutdown.
fn listen_for_stale(
    node: Node,
    wake: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let done = || shutdown.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
        let mut last_error = String::new();
        while !done() {
            let result = (|| -> redis::RedisResult<()> {
                let mut c = node.connect()?;
                c.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut ps = c.as_pubsub();
                ps.subscribe("pay:stale")?;
                while !done() {
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
                // Said once per problem: the rounds report the primary too.
                let text = e.to_string();
                if text != last_error {
                    warn!(
                        "pay:stale listener on {}: {text}; polling continues",
                        node.name
                    );
                    last_error = text;
                }
            }
            alerts::sleep_unless(&stop, Duration::from_secs(1));
        }
    });
}

/// The `pay:stale` listeners, one per primary of the latest topology.
#[derive(Default)]
struct Listeners {
    running: HashMap<String, Arc<AtomicBool>>,
}

impl Listeners {
    /// Starts listeners on new primaries and stops those on primaries gone.
    fn follow(&mut self, primaries: &[Node], wake: &mpsc::Sender<()>, shutdown: &Arc<AtomicBool>) {
        self.running.retain(|name, stop| {
            let keep = primaries.iter().any(|n| &n.name == name);
            if !keep {
                stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for node in primaries {
            if !self.running.contains_key(&node.name) {
                let stop = Arc::new(AtomicBool::new(false));
                listen_for_stale(node.clone(), wake.clone(), stop.clone(), shutdown.clone());
                self.running.insert(node.name.clone(), stop);
            }
        }
    }
}

/// The alert threshold: `--alert-after`, else the module's
/// `pay.alert-after-ms` (one source of truth), else 10m.
fn alert_after(opts: &Options, primaries: &[Node]) -> Duration {
    if let Some(d) = opts.alert_after {
        info!(
            "alert after {} (--alert-after)",
            humantime::format_duration(d)
        );
        return d;
    }
    let from_info = primaries
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

fn read_pem(option: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{option} {}: {e}", path.display()))
}

/// The Redis settings from the options: URL, certificates, Sentinels.
pub fn redis_settings(opts: &Options) -> Result<Redis, String> {
    let tls = opts.redis_url.trim_start().starts_with("rediss://");
    let certs = if tls {
        let root_cert = match &opts.redis_ca_cert {
            Some(p) => Some(read_pem("--redis-ca-cert", p)?),
            None => None,
        };
        let client_tls = match (&opts.redis_client_cert, &opts.redis_client_key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem("--redis-client-cert", cert)?,
                client_key: read_pem("--redis-client-key", key)?,
            }),
            _ => None,
        };
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    } else {
        None
    };
    let sentinels = opts.sentinel_master.as_ref().map(|master| Sentinels {
        addrs: opts.sentinels.clone(),
        master: master.clone(),
        password: opts.sentinel_password.clone(),
    });
    Redis::new(&opts.redis_url, certs, sentinels)
        .map_err(|e| format!("--redis-url and its certificates: {e}"))
}

/// How the log describes where Redis is, without secrets.
fn describe(opts: &Options) -> String {
    let tls = opts.redis_url.trim_start().starts_with("rediss://");
    let mut text = match &opts.sentinel_master {
        Some(master) => format!(
            "the primary of '{master}' as Sentinel {} names it",
            opts.sentinels
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "the server of --redis-url (every primary, if it is a cluster node)".to_string(),
    };
    if tls {
        text.push_str(&format!(
            ", over TLS (server certificates checked against {}{})",
            match &opts.redis_ca_cert {
                Some(p) => p.display().to_string(),
                None => "the system's roots".to_string(),
            },
            match &opts.redis_client_cert {
                Some(p) => format!("; client certificate {}", p.display()),
                None => String::new(),
            }
        ));
    }
    text
}

/// An error for the log, with a hint when it is TLS's.
fn explain(e: &redis::RedisError) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("certificate") || lower.contains("handshake") || lower.contains("tls") {
        format!(
            "{text} (TLS refused: check --redis-ca-cert, --redis-client-cert/--redis-client-key, and that the server's certificate names the host in the URL)"
        )
    } else {
        text
    }
}

/// Runs the sidecar until `shutdown` is set: then it stops claiming,
/// finishes the payments in hand and returns. Errors only if it cannot
/// start (the metrics address is taken, a certificate cannot be read).
pub fn run(opts: Options, shutdown: Arc<AtomicBool>) -> Result<(), String> {
    // One crypto provider for every TLS connection (rustls needs it named
    // when more than one could be linked in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redis = Arc::new(redis_settings(&opts)?);
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
    info!("Redis: {}", describe(&opts));

    let mut first = None;
    let mut last_error = String::new();
    while first.is_none() {
        match redis.discover() {
            Ok(t) => first = Some(t),
            Err(e) => {
                let text = explain(&e);
                if text != last_error {
                    warn!("cannot reach Redis yet: {text}");
                    last_error = text;
                }
                metrics.none_reached(&e.to_string());
                alerts::sleep_unless(&shutdown, AFTER_ERROR);
                if shutdown.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
    }
    let mut topology = first;

    let provider_metrics = metrics.clone();
    let provider = HttpProvider::new(
        &opts.bank_url,
        opts.connect_timeout,
        opts.timeout,
        Box::new(move |call, took| provider_metrics.provider_call(call, took)),
    );
    let alerter = Alerter {
        alert_after: alert_after(&opts, topology.as_ref().map_or(&[][..], |t| &t.primaries)),
        repeat: opts.alert_repeat,
    };
    let config_alerts = ConfigAlerts::new(redis.clone(), opts.alert_repeat);
    if let Some(url) = opts.slack_webhook_url.clone() {
        let (r, m, stop, me) = (
            redis.clone(),
            metrics.clone(),
            shutdown.clone(),
            consumer.clone(),
        );
        std::thread::spawn(move || {
            let slack = SlackWebhook::new(&url, Duration::from_secs(10));
            alerts::deliver(&r, &slack, &me, &m, &stop);
        });
    }
    let (wake_tx, wake_rx) = mpsc::channel();
    let mut listeners = Listeners::default();

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
        wait_replicas: opts.wait_replicas,
    };
    // The connection for keyed commands, and the primaries it was made for:
    // a new topology gets a new one.
    let mut keyed: Option<(Vec<String>, Box<dyn ConnectionLike + Send>)> = None;
    let mut serving: Vec<String> = Vec::new();
    while !shutdown.load(Ordering::Relaxed) {
        let mut ok = true;
        let mut reached = Vec::new();
        // Found again every round (the first round uses the discovery above).
        let found = match topology.take() {
            Some(t) => Ok(t),
            None => redis.discover(),
        };
        match found {
            Err(e) => {
                let text = explain(&e);
                if text != last_error {
                    warn!("cannot find the primaries: {text}");
                    last_error = text;
                }
                metrics.none_reached(&e.to_string());
                ok = false;
            }
            Ok(t) => {
                last_error.clear();
                let names: Vec<String> = t.primaries.iter().map(|n| n.name.clone()).collect();
                if names != serving {
                    info!(
                        "claiming from {} primary(ies): {}",
                        names.len(),
                        names.join(", ")
                    );
                    serving = names.clone();
                }
                metrics.primaries(&names);
                listeners.follow(&t.primaries, &wake_tx, &shutdown);
                // Each part of a round stands alone: a primary that fails
                // does not keep the others or the alerts from running, and
                // whatever a failed part left undone is still in Redis for
                // the next round.
                for node in &t.primaries {
                    if shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    let drained = worker::drain(
                        node,
                        &provider,
                        &settings,
                        &config_alerts,
                        &metrics,
                        &shutdown,
                    );
                    match drained {
                        Ok(()) => {
                            if metrics.reached(&node.name) {
                                info!("primary {} reached again", node.name);
                            }
                            reached.push(node.clone());
                        }
                        Err(e) => {
                            let text = explain(&e);
                            if metrics.unreached(&node.name, &e.to_string()) {
                                warn!(
                                    "round on {}: {text}; {}the primaries are looked up again",
                                    node.name,
                                    if t.primaries.len() > 1 {
                                        "the others are still served, and "
                                    } else {
                                        ""
                                    }
                                );
                            }
                            ok = false;
                        }
                    }
                }
                if !shutdown.load(Ordering::Relaxed) && !reached.is_empty() {
                    let alerted = (|| -> redis::RedisResult<()> {
                        let c = match keyed.as_mut() {
                            Some((made_for, c)) if *made_for == serving => c,
                            _ => &mut keyed.insert((serving.clone(), redis.keyed()?)).1,
                        };
                        alerter.round(&reached, c.as_mut())
                    })();
                    if let Err(e) = alerted {
                        warn!("alert round: {e}");
                        keyed = None;
                        ok = false;
                    }
                }
            }
        }
        metrics.round_done(reached.len());
        // Sleep until the interval passes (a second after an error), a
        // pay:stale message arrives, or shutdown.
        let pause = if ok {
            opts.interval
        } else {
            opts.interval.min(AFTER_ERROR)
        };
        let deadline = Instant::now() + pause;
        while !shutdown.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
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
