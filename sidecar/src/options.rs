//! Command line and environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 500ms, 5s, 5m)"))
}

/// Comma-separated positive durations: `30s,2m,5m`.
fn schedule(s: &str) -> Result<Schedule, String> {
    let steps = s
        .split(',')
        .map(|step| {
            let d = duration(step)?;
            if d.is_zero() {
                return Err(format!("'{}': a back-off must be positive", step.trim()));
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schedule(steps))
}

/// The back-offs between attempts; the last one repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        write!(f, "{}", steps.join(","))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Finishes stuck redis-pay payments through the payment provider, and
/// alerts Slack about payments that stay stuck.
///
/// Each round (every --interval, or at once when the module publishes on
/// `pay:stale`) it claims stale payments one at a time with `PAY.CLAIM`,
/// asks the provider what happened (GET), re-sends only what the provider
/// never saw (POST with the transaction id as Idempotency-Key), and writes
/// the answer back with a fenced PAY.UPDATE. Only a definite answer from the
/// provider resolves a payment: after --max-attempts without one it becomes
/// `unknown`, is never sent again, and is alerted until resolved.
#[derive(Clone, Parser)]
#[command(name = "pay-sidecar", version)]
pub struct Options {
    /// Redis URL, with a password or ACL user if needed
    /// (redis://[user:password@]host:port/). For a cluster, any node: every
    /// primary is asked.
    #[arg(
        long,
        env = "PAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// The payment provider's base URL (GET {url}/payments/{id}, POST {url}/payments).
    #[arg(long, env = "PAY_BANK_URL")]
    pub bank_url: String,

    /// Slack incoming-webhook URL (a secret: never logged). Without it, alerts are only logged.
    #[arg(long, env = "PAY_SLACK_WEBHOOK_URL", hide_env_values = true)]
    pub slack_webhook_url: Option<String>,

    /// How often a round runs when no `pay:stale` message wakes it.
    #[arg(long, env = "PAY_INTERVAL", default_value = "5m", value_parser = duration)]
    pub interval: Duration,

    /// How long a claim holds a payment while the sidecar talks to the
    /// provider about it. Must exceed twice --timeout.
    #[arg(long, env = "PAY_LEASE", default_value = "5m", value_parser = duration)]
    pub lease: Duration,

    /// Payments unresolved longer than this are posted to Slack. Default:
    /// the module's `pay.alert-after-ms` (read from INFO pay), else 10m.
    #[arg(long, env = "PAY_ALERT_AFTER", value_parser = duration)]
    pub alert_after: Option<Duration>,

    /// A payment still stuck is alerted again at most this often.
    #[arg(long, env = "PAY_ALERT_REPEAT", default_value = "1h", value_parser = duration)]
    pub alert_repeat: Duration,

    /// After this many attempts without a definite answer from the provider,
    /// the payment becomes `unknown` (never `failed`) and is alerted.
    #[arg(long, env = "PAY_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Back-off before the next attempt after attempt 1, 2, ...; the last
    /// one repeats (e.g. 30s,2m,5m).
    #[arg(long, env = "PAY_RETRY_SCHEDULE", default_value = "5m", value_parser = schedule)]
    pub retry_schedule: Schedule,

    /// How often an `unknown` payment is asked about again (GET only: it is
    /// never re-sent).
    #[arg(long, env = "PAY_UNKNOWN_INTERVAL", default_value = "1h", value_parser = duration)]
    pub unknown_interval: Duration,

    /// Provider calls in flight at once (per primary).
    #[arg(long, env = "PAY_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Connect timeout of each provider call.
    #[arg(long, env = "PAY_CONNECT_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub connect_timeout: Duration,

    /// Total timeout of each provider call.
    #[arg(long, env = "PAY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub timeout: Duration,

    /// This sidecar's name in claims (default: host name and process id).
    #[arg(long, env = "PAY_CONSUMER")]
    pub consumer: Option<String>,

    /// Serve Prometheus metrics (/metrics) and a health check (/healthz) on this address.
    #[arg(long, env = "PAY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log lines as plain text or JSON.
    #[arg(long, env = "PAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long in-flight payments may take before the process exits.
    #[arg(long, env = "PAY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,
}

impl Options {
    /// Checks that the options make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease <= self.timeout * 2 {
            return Err(format!(
                "--lease ({}) must exceed twice --timeout ({}): a claim must outlive a GET and a POST",
                humantime::format_duration(self.lease),
                humantime::format_duration(self.timeout)
            ));
        }
        if self.interval.is_zero() || self.alert_repeat.is_zero() || self.unknown_interval.is_zero()
        {
            return Err(
                "--interval, --alert-repeat and --unknown-interval must be positive".into(),
            );
        }
        Ok(())
    }

    pub fn consumer_name(&self) -> String {
        self.consumer.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "pay-sidecar".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_story() {
        let o =
            Options::try_parse_from(["pay-sidecar", "--bank-url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(o.interval, Duration::from_secs(300));
        assert_eq!(o.alert_after, None, "the module's value is used");
        assert_eq!(o.retry_schedule, Schedule(vec![Duration::from_secs(300)]));
        assert_eq!(o.unknown_interval, Duration::from_secs(3600));
        assert!(o.validate().is_ok());
    }

    #[test]
    fn a_retry_schedule_reads_as_comma_separated_durations() {
        let o = Options::try_parse_from([
            "pay-sidecar",
            "--bank-url",
            "x",
            "--retry-schedule",
            "30s, 2m,5m",
        ])
        .unwrap();
        let s = &o.retry_schedule;
        assert_eq!(s.0, [30, 120, 300].map(Duration::from_secs).to_vec(), "{s}");
        assert_eq!(s.to_string(), "30s,2m,5m");
        for bad in ["", "5m,,1h", "0s", "soon"] {
            assert!(
                Options::try_parse_from([
                    "pay-sidecar",
                    "--bank-url",
                    "x",
                    "--retry-schedule",
                    bad
                ])
                .is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn durations_read_as_written() {
        let o = Options::try_parse_from([
            "pay-sidecar",
            "--bank-url",
            "x",
            "--interval",
            "500ms",
            "--lease",
            "5s",
            "--timeout",
            "1s",
        ])
        .unwrap();
        assert_eq!(o.interval, Duration::from_millis(500));
        assert!(o.validate().is_ok());
        assert!(
            Options::try_parse_from(["pay-sidecar", "--bank-url", "x", "--interval", "soon"])
                .is_err()
        );
    }

    #[test]
    fn a_lease_shorter_than_two_calls_is_refused() {
        let o =
            Options::try_parse_from(["pay-sidecar", "--bank-url", "x", "--lease", "15s"]).unwrap();
        assert!(o.validate().unwrap_err().contains("--lease"));
    }
}
