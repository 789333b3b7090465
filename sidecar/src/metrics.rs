//! Prometheus metrics and the health check, served over HTTP on an optional
//! address (`GET /metrics`, `GET /healthz`).
//!
//! `/healthz` answers JSON: `status` is `ok` when the last round reached
//! every primary, `degraded` when it missed some (each primary is listed
//! with `reached`, the age of its last success and its last error), both
//! with 200: the sidecar is serving the primaries it can reach, and a
//! restart would not bring a dead shard back. It answers 503 (`down`) when
//! no primary has been reached within the window (or none yet).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::now_ms;
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
    payments: Family<OutcomeLabels, Counter>,
    latency: Family<CallLabels, Histogram>,
    pub claims: Counter,
    /// Provider answers that name a configuration problem (wrong URL,
    /// credentials, a proxy's page).
    pub config_errors: Counter,
    pub alerts_sent: Counter,
    pub rounds: Counter,
    /// The primaries of the last discovery, and how many the last round reached.
    primaries_known: Gauge,
    primaries_reached: Gauge,
    /// Unix ms of the last round that reached a primary; 0: none yet.
    last_ok: AtomicI64,
    /// Each primary of the last discovery, by address.
    primaries: Mutex<BTreeMap<String, Primary>>,
}

/// What the last round saw of one primary.
#[derive(Clone, Debug, Default)]
struct Primary {
    /// Whether the last round reached it.
    reached: bool,
    /// Unix ms of the last time a round reached it; 0: never.
    last_ok: i64,
    /// Why the last round did not reach it.
    error: Option<String>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pay_sidecar");
        let payments = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "payments",
            "Claimed payments handled, by outcome (succeeded, failed, retry, unknown, abandoned; fenced: the result was dropped because another worker claimed the payment since; resolved_elsewhere; write_error)",
            payments.clone(),
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
        let primaries_known = Gauge::default();
        registry.register(
            "primaries",
            "Primaries found by the last discovery (one server, Sentinel's primary, or every primary of a cluster)",
            primaries_known.clone(),
        );
        let primaries_reached = Gauge::default();
        registry.register(
            "primaries_reached",
            "Primaries the last round reached",
            primaries_reached.clone(),
        );
        Metrics {
            registry,
            payments,
            latency,
            claims,
            config_errors,
            alerts_sent,
            rounds,
            primaries_known,
            primaries_reached,
            last_ok: AtomicI64::new(0),
            primaries: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn outcome(&self, outcome: &str) {
        self.payments
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

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Primary>> {
        self.primaries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The primaries of this round's discovery; others are forgotten.
    pub fn primaries(&self, names: &[String]) {
        let mut table = self.table();
        table.retain(|name, _| names.contains(name));
        for name in names {
            table.entry(name.clone()).or_default();
        }
        self.primaries_known.set(table.len() as i64);
    }

    /// This round reached `name`. True if an earlier round could not, for
    /// a log line.
    pub fn reached(&self, name: &str) -> bool {
        let mut table = self.table();
        let p = table.entry(name.to_string()).or_default();
        let news = p.error.is_some();
        p.reached = true;
        p.last_ok = now_ms();
        p.error = None;
        news
    }

    /// This round could not reach `name`. True if that is news (it was
    /// reached before, or the error changed), for a log line.
    pub fn unreached(&self, name: &str, error: &str) -> bool {
        let mut table = self.table();
        let p = table.entry(name.to_string()).or_default();
        let news = p.reached || p.error.as_deref() != Some(error);
        p.reached = false;
        p.error = Some(error.to_string());
        news
    }

    /// Discovery failed: no primary was reached this round.
    pub fn none_reached(&self, error: &str) {
        let mut table = self.table();
        for p in table.values_mut() {
            p.reached = false;
            p.error = Some(error.to_string());
        }
        self.primaries_reached.set(0);
    }

    /// A round ended; `reached` primaries answered.
    pub fn round_done(&self, reached: usize) {
        self.rounds.inc();
        self.primaries_reached.set(reached as i64);
        if reached > 0 {
            self.last_ok.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Healthy when a round reached a primary within `window`.
    pub fn healthy(&self, window: Duration) -> bool {
        let last = self.last_ok.load(Ordering::Relaxed);
        last > 0 && now_ms() - last <= window.as_millis() as i64
    }

    /// The /healthz answer: status code and JSON body.
    pub fn health(&self, window: Duration) -> (u16, String) {
        let now = now_ms();
        let table = self.table();
        let primaries: Vec<serde_json::Value> = table
            .iter()
            .map(|(name, p)| {
                let mut v = serde_json::json!({
                    "address": name,
                    "reached": p.reached,
                    "last_reached_ms_ago": (p.last_ok > 0).then(|| now - p.last_ok),
                });
                if let Some(e) = &p.error {
                    v["error"] = e.clone().into();
                }
                v
            })
            .collect();
        let (code, status) = if !self.healthy(window) {
            (503, "down")
        } else if table.values().all(|p| p.reached) {
            (200, "ok")
        } else {
            (200, "degraded")
        };
        let body = serde_json::json!({ "status": status, "primaries": primaries });
        (code, format!("{body}\n"))
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
            let (code, body, json) = match request.url() {
                "/metrics" => (200, metrics.render(), false),
                "/healthz" => {
                    let (code, body) = metrics.health(health_window);
                    (code, body, true)
                }
                _ => (404, "not found\n".to_string(), false),
            };
            let mut response = tiny_http::Response::from_string(body).with_status_code(code);
            if json {
                if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
                    response = response.with_header(h);
                }
            }
            let _ = request.respond(response);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(m: &Metrics) -> (u16, serde_json::Value) {
        let (code, body) = m.health(Duration::from_secs(60));
        (code, serde_json::from_str(&body).unwrap())
    }

    #[test]
    fn health_names_the_primaries_a_round_missed() {
        let m = Metrics::new();
        let (code, v) = body(&m);
        assert_eq!((code, v["status"].as_str()), (503, Some("down")), "{v}");

        m.primaries(&["a:1".into(), "b:2".into()]);
        assert!(!m.reached("a:1"), "a first success is no news");
        assert!(m.unreached("b:2", "Connection refused"));
        assert!(
            !m.unreached("b:2", "Connection refused"),
            "the same error again"
        );
        assert!(m.unreached("b:2", "READONLY"), "a new error");
        m.round_done(1);
        let (code, v) = body(&m);
        assert_eq!((code, v["status"].as_str()), (200, Some("degraded")), "{v}");
        let b = &v["primaries"][1];
        assert_eq!(
            (b["address"].as_str(), b["reached"].as_bool()),
            (Some("b:2"), Some(false))
        );
        assert_eq!(b["error"], "READONLY");
        assert!(b["last_reached_ms_ago"].is_null(), "{b}");
        assert_eq!(v["primaries"][0]["reached"], true);

        // A failover: b:2 is gone, c:3 took its place and is reached.
        m.primaries(&["a:1".into(), "c:3".into()]);
        m.reached("a:1");
        m.reached("c:3");
        assert!(m.unreached("a:1", "timed out"));
        assert!(m.reached("a:1"), "reached again after an error: news");
        m.round_done(2);
        let (code, v) = body(&m);
        assert_eq!((code, v["status"].as_str()), (200, Some("ok")), "{v}");
        assert_eq!(v["primaries"].as_array().unwrap().len(), 2);
        assert!(m.render().contains("pay_sidecar_primaries_reached 2"));
    }
}
