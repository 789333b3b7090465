//! End to end, with real processes: redis-server with the module, the
//! `pay-sidecar` binary, and HTTP stand-ins for the provider and Slack on
//! 127.0.0.1.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use pay_sidecar::standin::{Bank, Scripted, Slack};
use redis::Connection;

/// A running pay-sidecar, killed on drop.
struct Sidecar {
    child: Child,
    _log: tempfile::NamedTempFile,
}

impl Sidecar {
    /// Starts with short test defaults; `extra` options override them.
    fn start(redis: &Server, bank: &str, slack: Option<&str>, extra: &[&str]) -> Sidecar {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pay-sidecar"));
        cmd.arg("--redis-url")
            .arg(format!("redis://127.0.0.1:{}/", redis.port))
            .arg("--bank-url")
            .arg(bank);
        let defaults = [
            ("--interval", "200ms"),
            ("--lease", "3s"),
            ("--timeout", "1s"),
            ("--connect-timeout", "500ms"),
            ("--alert-after", "1h"),
        ];
        for (name, value) in defaults {
            if !extra.contains(&name) {
                cmd.arg(name).arg(value);
            }
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap());
        if let Some(url) = slack {
            cmd.arg("--slack-webhook-url").arg(url);
        }
        let mut child = cmd.spawn().expect("spawn pay-sidecar");
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "pay-sidecar exited at once ({status}):\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        Sidecar { child, _log: log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._log.path()).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Payments go stale 100 ms after creation; the sweeper looks every 20 ms.
fn redis() -> Server {
    Server::with(Opts::sweeper(100, 20))
}

fn pending_count(c: &mut Connection) -> i64 {
    info_field(c, "records_pending")
}

fn wait_for<F: FnMut() -> bool>(what: &str, secs: u64, sidecar: &Sidecar, f: F) {
    assert!(
        wait_until(Duration::from_secs(secs), f),
        "timed out waiting for {what}; sidecar log:\n{}",
        sidecar.log()
    );
}

#[test]
fn each_provider_answer_ends_in_the_right_status_and_reason() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 1);
    let cases: &[(&str, i64, &str, &str)] = &[
        // (transaction, amount, final status, reason or reference must contain)
        ("known-ok", 1000, "succeeded", "ch_known"),
        ("known-failed", 1000, "failed", "failed at the provider"),
        ("unknown", 1000, "succeeded", "ch_"),
        ("declined", 1013, "failed", "card declined"),
        ("in-progress", 1000, "pending", "409"),
        ("provider-5xx", 1000, "pending", "provider error 503"),
        ("rate-limited", 1000, "pending", "429"),
        ("refused", 1000, "failed", "card expired"),
        ("hangs", 1000, "pending", "timed out"),
    ];
    bank.know("known-ok", "succeeded", "ch_known");
    bank.know("known-failed", "failed", "ch_f");
    let not_found = || Scripted::Reply(404, "{}".into());
    bank.script(
        "in-progress",
        vec![not_found(), Scripted::Reply(409, "{}".into())],
    );
    bank.script("provider-5xx", vec![Scripted::Reply(503, "{}".into())]);
    bank.script("rate-limited", vec![Scripted::Reply(429, "{}".into())]);
    bank.script(
        "refused",
        vec![
            not_found(),
            Scripted::Reply(422, r#"{"message":"card expired"}"#.into()),
        ],
    );
    bank.script("hangs", vec![Scripted::Hang(Duration::from_millis(1500))]);
    for (txn, amount, _, _) in cases {
        cache(&mut c, txn, "67890", *amount, "USD");
    }
    let sidecar = Sidecar::start(&s, &bank.url, None, &["--lease", "10s", "--timeout", "1s"]);
    for (txn, _, status, detail) in cases {
        wait_for(&format!("{txn} to be handled"), 15, &sidecar, || {
            let r = check(&mut c, txn).unwrap();
            r["status"] == *status
                && (r["reason"].contains(detail) || r["provider_ref"].contains(detail))
                && r["attempts"] == "1"
        });
    }
    // Known payments were never re-sent; the unknown ones were sent once.
    let created = bank.creations();
    assert_eq!(created.get("known-ok"), Some(&1));
    assert_eq!(created.get("unknown"), Some(&1));
    assert_eq!(created.get("declined"), Some(&1));
    assert_eq!(
        created.get("refused"),
        None,
        "a refused payment was charged"
    );
    assert_eq!(bank.overlaps(), 0);
}

#[test]
fn an_unreachable_provider_is_a_transient_error() {
    let s = redis();
    let mut c = s.conn();
    cache(&mut c, "t", "u", 1000, "USD");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let sidecar = Sidecar::start(&s, &closed, None, &[]);
    wait_for("a transient reason", 10, &sidecar, || {
        let r = check(&mut c, "t").unwrap();
        r["status"] == "pending" && r["reason"].contains("unreachable")
    });
}

#[test]
fn after_max_attempts_the_payment_fails_and_an_alert_says_why() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 2);
    bank.set_outage(true);
    let slack = Slack::start(false);
    cache(&mut c, "doomed", "u", 2500, "EUR");
    let sidecar = Sidecar::start(
        &s,
        &bank.url,
        Some(&slack.url),
        &[
            "--max-attempts",
            "2",
            "--lease",
            "2100ms",
            "--timeout",
            "1s",
        ],
    );
    wait_for("the payment to fail", 20, &sidecar, || {
        check(&mut c, "doomed").unwrap()["status"] == "failed"
    });
    let r = check(&mut c, "doomed").unwrap();
    assert_eq!(r["attempts"], "2");
    assert!(
        r["reason"].starts_with("gave up after 2 attempts: provider error 503"),
        "{r:?}"
    );
    wait_for("the alert", 10, &sidecar, || {
        slack.messages().iter().any(|m| {
            m.contains("failed after too many attempts") && m.contains("`doomed` 25.00 EUR")
        })
    });
    assert!(
        bank.creations().is_empty(),
        "nothing was charged during the outage"
    );
}

#[test]
fn with_30_percent_of_provider_calls_failing_1000_payments_all_resolve_once() {
    const N: usize = 1000;
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::start(
        0.3,
        Duration::from_millis(2),
        Duration::from_millis(1200),
        3,
    );
    cache_many(&mut c, "txn:", N);
    let sidecar = Sidecar::start(
        &s,
        &bank.url,
        None,
        // About half of all attempts meet a failure here: ten in a row (the
        // default --max-attempts) happen to about one payment in a thousand.
        &[
            "--concurrency",
            "32",
            "--lease",
            "2500ms",
            "--timeout",
            "1s",
            "--max-attempts",
            "100",
        ],
    );
    wait_for("every payment to resolve", 120, &sidecar, || {
        pending_count(&mut c) == 0
    });
    assert_eq!(
        info_field(&mut c, "records_succeeded"),
        N as i64,
        "all succeeded"
    );
    assert_each_charged_once(&bank, N);
    let calls = bank.gets() + bank.posts();
    println!(
        "1000 payments resolved with {calls} provider calls ({:.2} per payment), {} claims",
        calls as f64 / N as f64,
        info_field(&mut c, "claims")
    );
}

#[test]
fn two_sidecars_one_killed_mid_round_still_resolve_everything_once() {
    const N: usize = 400;
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::start(
        0.1,
        Duration::from_millis(20),
        Duration::from_millis(1200),
        4,
    );
    cache_many(&mut c, "txn:", N);
    let extra = [
        "--concurrency",
        "8",
        "--lease",
        "2500ms",
        "--timeout",
        "1s",
        "--max-attempts",
        "100",
    ];
    let mut a = Sidecar::start(&s, &bank.url, None, &extra);
    let b = Sidecar::start(&s, &bank.url, None, &extra);
    wait_for("the round to be under way", 30, &b, || bank.posts() > 60);
    a.kill(); // SIGKILL, mid-round: its leased payments wait out their lease
    wait_for("every payment to resolve", 120, &b, || {
        pending_count(&mut c) == 0
    });
    assert_each_charged_once(&bank, N);
}

/// The provider created each of `n` payments exactly once, and was never
/// asked about one payment by two calls at once.
fn assert_each_charged_once(bank: &Bank, n: usize) {
    let created = bank.creations();
    assert_eq!(created.len(), n, "the provider saw every payment");
    assert!(
        created.values().all(|&n| n == 1),
        "a payment was created twice"
    );
    assert_eq!(
        bank.overlaps(),
        0,
        "a payment was asked about twice at once"
    );
}

/// The transaction ids a message lists.
fn listed(message: &str) -> BTreeSet<String> {
    message
        .lines()
        .filter_map(|l| l.split('`').nth(1))
        .map(str::to_string)
        .collect()
}

#[test]
fn alerts_survive_a_slack_outage_repeat_and_resolve_without_duplicates() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 5);
    bank.set_outage(true);
    let slack = Slack::start(false);
    slack.set_down(true);
    let stuck: BTreeSet<String> = (0..3).map(|i| format!("stuck-{i}")).collect();
    for k in &stuck {
        cache(&mut c, k, "u", 1000, "USD");
    }
    let extra = [
        "--alert-after",
        "500ms",
        "--alert-repeat",
        "3s",
        "--lease",
        "2100ms",
        "--timeout",
        "1s",
        "--max-attempts",
        "100",
    ];
    let a = Sidecar::start(&s, &bank.url, Some(&slack.url), &extra);
    let _b = Sidecar::start(&s, &bank.url, Some(&slack.url), &extra);
    // Slack is down: alerts wait in the outbox.
    wait_for("Slack to be tried", 10, &a, || slack.refused() >= 2);
    assert!(slack.messages().is_empty());
    slack.rate_limit(1);
    slack.set_down(false);
    // Every stuck payment is alerted once, whichever sidecar got to it first.
    let times_listed = |k: &str| {
        slack
            .messages()
            .iter()
            .filter(|m| m.contains("pending longer than"))
            .filter(|m| listed(m).contains(k))
            .count()
    };
    wait_for("the first alerts", 10, &a, || {
        stuck.iter().all(|k| times_listed(k) >= 1)
    });
    for k in &stuck {
        assert_eq!(times_listed(k), 1, "{k}: {:?}", slack.messages());
    }
    // Still stuck after the repeat interval: one repeat each, not more.
    wait_for("the repeats", 10, &a, || {
        stuck.iter().all(|k| times_listed(k) >= 2)
    });
    std::thread::sleep(Duration::from_millis(800));
    for k in &stuck {
        assert_eq!(times_listed(k), 2, "{k}: {:?}", slack.messages());
    }
    assert!(
        slack.messages().iter().any(|m| m.contains("(0 new, ")),
        "no message counts repeats: {:?}",
        slack.messages()
    );
    // The provider recovers: the payments complete and one resolved message follows.
    bank.set_outage(false);
    wait_for("the payments to resolve", 20, &a, || {
        pending_count(&mut c) == 0
    });
    wait_for("the resolved message", 10, &a, || {
        slack.messages().iter().any(|m| m.contains("resolved"))
    });
    std::thread::sleep(Duration::from_millis(1000));
    let resolved: Vec<String> = slack
        .messages()
        .into_iter()
        .filter(|m| m.contains("resolved"))
        .collect();
    let all: Vec<String> = resolved.iter().flat_map(|m| listed(m)).collect();
    assert_eq!(all.len(), 3, "each resolution announced once: {resolved:?}");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), stuck);
    assert!(slack.refused() >= 3, "the outage and the 429 were seen");
    assert!(!a.log().contains(&slack.url), "the webhook URL was logged");
}

#[test]
fn sigterm_stops_claiming_and_exits_promptly() {
    let s = redis();
    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 6);
    let mut sidecar = Sidecar::start(&s, &bank.url, None, &["--shutdown-timeout", "2s"]);
    std::thread::sleep(Duration::from_millis(500));
    let pid = sidecar.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = wait_until(Duration::from_secs(5), || {
        matches!(sidecar.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        exited,
        "still running after SIGTERM; log:\n{}",
        sidecar.log()
    );
    assert!(sidecar.log().contains("stopping"), "{}", sidecar.log());
}

#[test]
fn metrics_and_health_are_served() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 7);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    cache(&mut c, "m", "u", 1000, "USD");
    let sidecar = Sidecar::start(
        &s,
        &bank.url,
        None,
        &["--metrics-addr", &addr, "--log-format", "json"],
    );
    wait_for("the payment", 10, &sidecar, || pending_count(&mut c) == 0);
    let get = |path: &str| -> (u16, String) {
        let mut r = ureq::get(&format!("http://{addr}{path}")).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    wait_for("a healthy round", 5, &sidecar, || get("/healthz").0 == 200);
    let (_, text) = get("/metrics");
    assert!(
        text.contains("pay_sidecar_payments_total{outcome=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pay_sidecar_provider_latency_seconds_count{call=\"get\"} 1"),
        "{text}"
    );
    assert!(text.contains("pay_sidecar_claims_total 1"), "{text}");
    let first = sidecar.log().lines().next().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&first).expect("JSON log lines");
    assert_eq!(v["level"], "INFO");
}

/// The sidecar's ACL user: only what it needs (README recipe).
const SIDECAR_ACL: &[&str] = &[
    "on",
    ">s3cret",
    "resetkeys",
    "~*",
    "resetchannels",
    "&pay:stale",
    "-@all",
    "+pay.stuck",
    "+pay.claim",
    "+pay.update",
    "+pay.check",
    "+info",
    "+ping",
    "+subscribe",
    "+evalsha",
    "+eval",
    "+script|load",
    "+zrange",
    "+zscore",
    "+zadd",
    "+zremrangebyscore",
    "+get",
    "+set",
    "+zrem",
    "+rpush",
    "+lindex",
    "+lpop",
];

#[test]
fn works_as_a_least_privilege_acl_user_from_the_url() {
    let s = redis();
    let mut c = s.conn();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("sidecar")
        .arg(SIDECAR_ACL)
        .query(&mut c)
        .unwrap();
    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 8);
    bank.set_outage(true);
    let slack = Slack::start(false);
    cache(&mut c, "acl-1", "u", 1000, "USD");
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pay-sidecar"))
        .arg("--redis-url")
        .arg(format!("redis://sidecar:s3cret@127.0.0.1:{}/", s.port))
        .arg("--bank-url")
        .arg(&bank.url)
        .arg("--slack-webhook-url")
        .arg(&slack.url)
        .args([
            "--interval",
            "200ms",
            "--lease",
            "2100ms",
            "--timeout",
            "1s",
        ])
        .args(["--alert-after", "300ms"])
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let sidecar = Sidecar { child, _log: log };
    wait_for("an alert", 10, &sidecar, || !slack.messages().is_empty());
    bank.set_outage(false);
    wait_for("the payment to succeed", 10, &sidecar, || {
        check(&mut c, "acl-1").unwrap()["status"] == "succeeded"
    });
    wait_for("the resolved message", 10, &sidecar, || {
        slack.messages().iter().any(|m| m.contains("resolved"))
    });
    assert!(!sidecar.log().contains("NOPERM"), "{}", sidecar.log());
    // The user cannot do what the sidecar never needs.
    let client =
        redis::Client::open(format!("redis://sidecar:s3cret@127.0.0.1:{}/", s.port)).unwrap();
    let mut as_sidecar = client.get_connection().unwrap();
    for cmd in [
        redis::cmd("PAY.CACHE")
            .arg("x")
            .arg("u")
            .arg(1)
            .arg("USD")
            .clone(),
        redis::cmd("FLUSHALL").clone(),
        redis::cmd("DEL").arg("acl-1").clone(),
    ] {
        assert!(err(&mut as_sidecar, &cmd).starts_with("NOPERM"));
    }
}
