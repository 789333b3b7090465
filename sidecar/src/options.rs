//! Command line and environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 500ms, 5s, 5m)"))
}

/// `host:port`, the host a name, an IPv4 address or an IPv6 one in brackets.
fn host_port(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}': write HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{s}': the port must be a number from 1 to 65535"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("'{s}': write HOST:PORT"));
    }
    Ok((host.to_string(), port))
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
    /// (redis://[user:password@]host:port/; rediss:// for TLS). For a
    /// cluster, any node: every primary is asked. With --sentinel, only its
    /// user, password, database and scheme are used.
    #[arg(
        long,
        env = "PAY_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// With a rediss:// URL: the CA certificate (PEM) that signed the Redis
    /// servers' certificates, for a private CA. Default: the system's roots.
    /// The server's name (or IP address) must be in its certificate.
    #[arg(long, env = "PAY_REDIS_CA_CERT", value_name = "PATH")]
    pub redis_ca_cert: Option<PathBuf>,

    /// With a rediss:// URL: this sidecar's certificate (PEM), for servers
    /// that ask for one (mutual TLS, `tls-auth-clients yes`). Needs
    /// --redis-client-key.
    #[arg(long, env = "PAY_REDIS_CLIENT_CERT", value_name = "PATH")]
    pub redis_client_cert: Option<PathBuf>,

    /// The private key (PEM) of --redis-client-cert.
    #[arg(long, env = "PAY_REDIS_CLIENT_KEY", value_name = "PATH")]
    pub redis_client_key: Option<PathBuf>,

    /// Find the primary through these Redis Sentinels (HOST:PORT, comma
    /// separated), asked again every round and after any error, so every
    /// failover is followed. The data nodes get the user, password, database
    /// and TLS of --redis-url (whose host and port are then not used).
    #[arg(
        long = "sentinel",
        env = "PAY_SENTINELS",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        value_parser = host_port,
        requires = "sentinel_master"
    )]
    pub sentinels: Vec<(String, u16)>,

    /// The master name the Sentinels monitor (`sentinel monitor NAME ...`).
    #[arg(
        long,
        env = "PAY_SENTINEL_MASTER",
        value_name = "NAME",
        requires = "sentinels"
    )]
    pub sentinel_master: Option<String>,

    /// The Sentinels' own password (`requirepass` in sentinel.conf), if any.
    #[arg(long, env = "PAY_SENTINEL_PASSWORD", hide_env_values = true)]
    pub sentinel_password: Option<String>,

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

    /// After each claim, wait until this many replicas have it (`WAIT n`, up
    /// to --timeout) before asking the provider; a claim fewer replicas took
    /// is left for a later claim. With replicas, use 1: a failover can then
    /// never erase a payment this sidecar has charged.
    #[arg(long, env = "PAY_WAIT_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub wait_replicas: u32,

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
        let tls = self.redis_url.trim_start().starts_with("rediss://");
        let certs = [
            ("--redis-ca-cert", &self.redis_ca_cert),
            ("--redis-client-cert", &self.redis_client_cert),
            ("--redis-client-key", &self.redis_client_key),
        ];
        if let Some((name, _)) = certs.iter().find(|(_, path)| path.is_some()) {
            if !tls {
                return Err(format!(
                    "{name} needs a rediss:// --redis-url (TLS); the URL says otherwise"
                ));
            }
        }
        if self.redis_client_cert.is_some() != self.redis_client_key.is_some() {
            return Err("--redis-client-cert and --redis-client-key go together".into());
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

    fn parse(args: &[&str]) -> Result<Options, String> {
        let mut all = vec!["pay-sidecar", "--bank-url", "x"];
        all.extend(args);
        let o = Options::try_parse_from(all).map_err(|e| e.to_string())?;
        o.validate()?;
        Ok(o)
    }

    #[test]
    fn sentinels_read_as_a_comma_separated_list_and_need_a_master_name() {
        let o = parse(&[
            "--sentinel",
            "10.0.0.1:26379, sentinel-2:26379,[::1]:26380",
            "--sentinel-master",
            "pay",
        ])
        .unwrap();
        assert_eq!(
            o.sentinels,
            [
                ("10.0.0.1".to_string(), 26379),
                ("sentinel-2".to_string(), 26379),
                ("::1".to_string(), 26380)
            ]
        );
        assert!(parse(&["--sentinel", "a:1"]).is_err(), "no master name");
        assert!(parse(&["--sentinel-master", "pay"]).is_err(), "no sentinel");
        for bad in ["a", "a:", ":1", "a:0", "a:99999", "a:b"] {
            assert!(
                parse(&["--sentinel", bad, "--sentinel-master", "p"]).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn certificates_need_a_tls_url_and_a_client_certificate_needs_its_key() {
        let tls = ["--redis-url", "rediss://r:6380/"];
        let ok = parse(&[&tls[..], &["--redis-ca-cert", "ca.pem"]].concat()).unwrap();
        assert_eq!(ok.redis_ca_cert, Some(PathBuf::from("ca.pem")));
        let e = parse(&["--redis-ca-cert", "ca.pem"])
            .err()
            .expect("refused");
        assert!(e.contains("--redis-ca-cert needs a rediss://"), "{e}");
        let e = parse(&[&tls[..], &["--redis-client-cert", "c.pem"]].concat())
            .err()
            .expect("refused");
        assert!(e.contains("go together"), "{e}");
        assert!(parse(
            &[
                &tls[..],
                &[
                    "--redis-client-cert",
                    "c.pem",
                    "--redis-client-key",
                    "k.pem"
                ]
            ]
            .concat()
        )
        .is_ok());
    }

    #[test]
    fn a_lease_shorter_than_two_calls_is_refused() {
        let o =
            Options::try_parse_from(["pay-sidecar", "--bank-url", "x", "--lease", "15s"]).unwrap();
        assert!(o.validate().unwrap_err().contains("--lease"));
    }
}
