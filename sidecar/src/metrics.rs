//! Prometheus metrics and the health check, served over HTTP on an optional
//! address (`GET /metrics`, `GET /healthz`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::provider::Call;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: String,
}

pub struct Metrics {
    registry: Registry,
    retries: Family<OutcomeLabels, Counter>,
    latency: Family<CallLabels, Histogram>,
    pub claims: Counter,
    /// Provider answers that name a configuration problem (wrong URL,
    /// credentials, a proxy's page).
    pub config_errors: Counter,
    pub alerts_sent: Counter,
    pub rounds: Counter,
    /// Unix ms of the last round that reached Redis; 0: none yet.
    last_ok: AtomicI64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pay_sidecar");
        let retries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "payments",
            "Claimed payments handled, by outcome (succeeded, failed, retry, unknown, abandoned; fenced: the result was dropped because another worker claimed the payment since; resolved_elsewhere; write_error)",
            retries.clone(),
        );
        let latency = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.002, 2.0, 14))
        });
        registry.register(
            "provider_latency_seconds",
            "Provider call latency, by call",
            latency.clone(),
        );
        let claims = Counter::default();
        registry.register("claims", "Payments claimed", claims.clone());
        let config_errors = Counter::default();
        registry.register(
            "provider_config_errors",
            "Provider answers that name a configuration problem (never a verdict on a payment)",
            config_errors.clone(),
        );
        let alerts_sent = Counter::default();
        registry.register(
            "alerts_sent",
            "Slack messages delivered",
            alerts_sent.clone(),
        );
        let rounds = Counter::default();
        registry.register("rounds", "Retry rounds run", rounds.clone());
        Metrics {
            registry,
            retries,
            latency,
            claims,
            config_errors,
            alerts_sent,
            rounds,
            last_ok: AtomicI64::new(0),
        }
    }

    pub fn outcome(&self, outcome: &str) {
        self.retries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn provider_call(&self, call: Call, took: Duration) {
        let call = match call {
            Call::Get => "get",
            Call::Post => "post",
        };
        self.latency
            .get_or_create(&CallLabels { call: call.into() })
            .observe(took.as_secs_f64());
    }

    pub fn round_ok(&self) {
        self.rounds.inc();
        self.last_ok.store(now_ms(), Ordering::Relaxed);
    }

    /// Healthy when a round reached Redis within `window`.
    pub fn healthy(&self, window: Duration) -> bool {
        let last = self.last_ok.load(Ordering::Relaxed);
        last > 0 && now_ms() - last <= window.as_millis() as i64
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves /metrics and /healthz until the process ends.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health_window: Duration,
) -> std::io::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let (code, body) = match request.url() {
                "/metrics" => (200, metrics.render()),
                "/healthz" if metrics.healthy(health_window) => (200, "ok\n".to_string()),
                "/healthz" => (503, "no round has reached Redis recently\n".to_string()),
                _ => (404, "not found\n".to_string()),
            };
            let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(code));
        }
    });
    Ok(())
}
