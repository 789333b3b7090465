//! End to end, with real processes: redis-server with the module, the
//! `pay-sidecar` binary (or, once, the daemon in-process through
//! `pay_sidecar::run`), and HTTP stand-ins for the provider and Slack on
//! 127.0.0.1.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use pay_sidecar::options::Options;
use redis::Connection;
use testkit::standin::{Bank, Scripted, Slack};
use testkit::*;

const PAY_SIDECAR: &str = env!("CARGO_BIN_EXE_pay-sidecar");

/// pay-sidecar for `redis`, the provider at `bank` and Slack at `slack`,
/// with the short test defaults; `extra` options override them.
fn start_sidecar(redis: &Server, bank: &str, slack: Option<&str>, extra: &[&str]) -> Sidecar {
    let url = format!("redis://127.0.0.1:{}/", redis.port);
    let mut args = sidecar_args(&url, bank, slack);
    args.extend(extra);
    Sidecar::start(PAY_SIDECAR, &args)
}

/// Payments go stale 100 ms after creation; the sweeper looks every 20 ms.
fn redis() -> Server {
    Server::with(Opts::sweeper(100, 20))
}

/// As [`redis`], with `pay.key-prefix payment:`.
fn redis_with_prefix() -> Server {
    Server::with(
        Opts::sweeper(100, 20)
            .module_arg("key-prefix")
            .module_arg("payment:"),
    )
}

fn pending_count(c: &mut Connection) -> i64 {
    info_field(c, "records_pending")
}

/// Every status one payment has been seen in, polled every 10 ms on its own
/// connection until dropped.
struct Statuses {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Statuses {
    fn watch(s: &Server, key: &str) -> Statuses {
        let (seen, stop) = (
            Arc::new(Mutex::new(Vec::<String>::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (mut c, key) = (s.conn(), key.to_string());
        let (log, flag) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let v: redis::RedisResult<redis::Value> =
                    redis::cmd("PAY.CHECK").arg(&key).query(&mut c);
                if let Ok(v @ (redis::Value::Array(_) | redis::Value::Map(_))) = v {
                    let status = record(&v)["status"].clone();
                    let mut log = log.lock().unwrap();
                    if log.last() != Some(&status) {
                        log.push(status);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Statuses { seen, stop }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the watcher has seen the payment in `status` last.
    fn settle_on(&self, status: &str) {
        let last = || self.seen().last().is_some_and(|s| s == status);
        assert!(
            wait_until(Duration::from_secs(5), last),
            "{:?}",
            self.seen()
        );
    }

    fn assert_never_failed(&self) {
        let seen = self.seen();
        assert!(!seen.iter().any(|s| s == "failed"), "went through {seen:?}");
    }
}

impl Drop for Statuses {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn messages_with(slack: &Slack, text: &str) -> Vec<String> {
    slack
        .messages()
        .into_iter()
        .filter(|m| m.contains(text))
        .collect()
}

#[test]
fn each_provider_answer_ends_in_the_right_status_and_reason() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    let cases: &[(&str, i64, &str, &str)] = &[
        // (transaction, amount, status after one attempt, reason or reference must contain)
        ("known-ok", 1000, "succeeded", "ch_known"),
        ("known-failed", 1000, "failed", "failed at the provider"),
        ("never-seen", 1000, "succeeded", "ch_"),
        ("declined", 1013, "failed", "card declined"),
        ("refused", 1000, "failed", "card expired"),
        ("still-processing", 1000, "pending", "still processing"),
        ("in-progress", 1000, "pending", "409"),
        ("provider-5xx", 1000, "pending", "provider error 503"),
        ("rate-limited", 1000, "pending", "429"),
        ("hangs", 1000, "pending", "timed out"),
        ("get-404-page", 1000, "pending", "configuration error"),
        ("get-401", 1000, "pending", "401 Unauthorized"),
        ("post-404-page", 1000, "pending", "configuration error"),
        ("post-403", 1000, "pending", "403 Forbidden"),
        ("post-400-page", 1000, "pending", "provider answered 400"),
        ("get-422", 1000, "pending", "provider answered 422"),
    ];
    bank.know("known-ok", "succeeded", "ch_known");
    bank.know("known-failed", "failed", "ch_f");
    bank.know("still-processing", "pending", "ch_p");
    let page = |code: u16| Scripted::Reply(code, "<html><body>Error</body></html>".into());
    let json = |code: u16, body: &str| Scripted::Reply(code, body.into());
    // Normal first: the bank's own GET answer, 404 {"status":"not_found"}.
    let then = |second: Scripted| vec![Scripted::Normal, second];
    bank.script("in-progress", then(json(409, "{}")));
    bank.script("provider-5xx", vec![json(503, "{}")]);
    bank.script("rate-limited", vec![json(429, "{}")]);
    bank.script("refused", then(json(422, r#"{"message":"card expired"}"#)));
    bank.script("hangs", vec![Scripted::Hang(Duration::from_millis(1500))]);
    bank.script("get-404-page", vec![page(404)]);
    bank.script("get-401", vec![json(401, r#"{"message":"bad key"}"#)]);
    bank.script("post-404-page", then(page(404)));
    bank.script("post-403", then(json(403, r#"{"message":"forbidden"}"#)));
    bank.script("post-400-page", then(page(400)));
    bank.script("get-422", vec![json(422, r#"{"message":"x"}"#)]);
    for (txn, amount, _, _) in cases {
        cache(&mut c, txn, "67890", *amount, "USD");
    }
    let sidecar = start_sidecar(
        &s,
        &bank.url,
        None,
        &[
            "--lease",
            "10s",
            "--timeout",
            "1s",
            "--retry-schedule",
            "1h",
        ],
    );
    for (txn, _, status, detail) in cases {
        sidecar.wait_for(&format!("{txn} to be handled"), 15, || {
            let r = check(&mut c, txn).unwrap();
            r["status"] == *status
                && (r["reason"].contains(detail) || r["provider_ref"].contains(detail))
                && r["attempts"] == "1"
        });
    }
    // Known payments were never re-sent; the never-seen ones were sent once;
    // nothing was sent after an answer that was not "not_found".
    let created = bank.creations();
    assert_eq!(created.get("known-ok"), Some(&1));
    assert_eq!(created.get("never-seen"), Some(&1));
    assert_eq!(created.get("declined"), Some(&1));
    let posted: BTreeSet<String> = bank
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        posted,
        set(&[
            "never-seen",
            "declined",
            "refused",
            "in-progress",
            "post-404-page",
            "post-403",
            "post-400-page"
        ])
    );
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
    let sidecar = start_sidecar(&s, &closed, None, &[]);
    sidecar.wait_for("a transient reason", 10, || {
        let r = check(&mut c, "t").unwrap();
        r["status"] == "pending" && r["reason"].contains("unreachable")
    });
}

/// Issue 12: a provider that answers "pending" for ever made the payment
/// `failed` on its last attempt. Now it becomes `unknown`, is alerted (after
/// the module's own pay.alert-after-ms, read from INFO) and re-alerted, is
/// never sent, and resolves when the provider finally answers.
#[test]
fn a_payment_the_provider_keeps_processing_becomes_unknown_alerted_and_resolves_later() {
    let s = Server::with(
        Opts::sweeper(100, 20)
            .module_arg("alert-after-ms")
            .module_arg("300"),
    );
    let mut c = s.conn();
    let bank = Bank::reliable();
    let slack = Slack::start(false);
    cache(&mut c, "slow-1", "u", 2500, "EUR");
    bank.know("slow-1", "pending", "ch_slow");
    let statuses = Statuses::watch(&s, "slow-1");
    // No --alert-after: the module's value is the default.
    let url = format!("redis://127.0.0.1:{}/", s.port);
    let mut args = sidecar_args(&url, &bank.url, Some(&slack.url));
    args.extend([
        "--interval",
        "200ms",
        "--lease",
        "3s",
        "--timeout",
        "1s",
        "--max-attempts",
        "2",
        "--retry-schedule",
        "200ms",
        "--unknown-interval",
        "1s",
        "--alert-repeat",
        "1s",
    ]);
    let sidecar = Sidecar::launch(PAY_SIDECAR, &args);
    sidecar.wait_for("the payment to become unknown", 15, || {
        check(&mut c, "slow-1").unwrap()["status"] == "unknown"
    });
    let r = check(&mut c, "slow-1").unwrap();
    assert!(
        r["reason"]
            .starts_with("outcome unknown after 2 attempts: the provider is still processing it"),
        "{r:?}"
    );
    assert!(
        sidecar
            .log()
            .contains("alert after 300ms (the module's pay.alert-after-ms"),
        "{}",
        sidecar.log()
    );
    let alert = "outcome unknown after";
    sidecar.wait_for("the unknown alert", 10, || {
        messages_with(&slack, alert).iter().any(|m| {
            m.contains("`slow-1` 25.00 EUR")
                && m.contains("check the provider, then `PAY.UPDATE slow-1 succeeded|failed`")
        })
    });
    sidecar.wait_for("the alert to repeat", 10, || {
        messages_with(&slack, alert).len() >= 2
    });
    // Asked about again (GET), never sent.
    let gets = bank.gets();
    sidecar.wait_for("the provider to be asked again", 10, || bank.gets() > gets);
    assert_eq!(check(&mut c, "slow-1").unwrap()["status"], "unknown");
    // The provider finishes it: the next check resolves it.
    bank.settle("slow-1", "succeeded", "ch_slow");
    sidecar.wait_for("the late answer to resolve it", 10, || {
        let r = check(&mut c, "slow-1").unwrap();
        r["status"] == "succeeded" && r["provider_ref"] == "ch_slow"
    });
    sidecar.wait_for("the resolved message", 10, || {
        messages_with(&slack, "resolved")
            .iter()
            .any(|m| m.contains("`slow-1` succeeded"))
    });
    statuses.assert_never_failed();
    assert_eq!(bank.posts(), 0, "a payment the provider knew was sent");
    assert_eq!(bank.creations().get("slow-1"), Some(&1));
}

/// Issue 12: a POST that charged the card but answered after the timeout
/// left the payment `failed`. Now it is `unknown` (the last attempt gave no
/// definite answer) until the next GET finds it charged: once.
#[test]
fn a_post_that_charges_after_the_timeout_is_never_failed_and_charged_once() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    bank.script(
        "late-1",
        vec![
            Scripted::Normal,
            Scripted::Slow(Duration::from_millis(1500)),
        ],
    );
    cache(&mut c, "late-1", "u", 1000, "USD");
    let statuses = Statuses::watch(&s, "late-1");
    let sidecar = start_sidecar(
        &s,
        &bank.url,
        None,
        &[
            "--timeout",
            "1s",
            "--lease",
            "3s",
            "--max-attempts",
            "1",
            "--unknown-interval",
            "1s",
        ],
    );
    sidecar.wait_for("the payment to succeed", 15, || {
        check(&mut c, "late-1").unwrap()["status"] == "succeeded"
    });
    statuses.settle_on("succeeded");
    statuses.assert_never_failed();
    assert_eq!(
        statuses.seen(),
        ["pending", "unknown", "succeeded"],
        "the timed-out POST should leave it unknown until the GET"
    );
    assert_eq!(bank.creations().get("late-1"), Some(&1), "charged once");
    assert_eq!(bank.posts(), 1, "an unknown payment was sent again");
    assert!(
        sidecar.log().contains("provider timed out"),
        "{}",
        sidecar.log()
    );
}

/// Issue 12: with the bank URL pointing at the wrong path, a proxy's plain
/// 404 read as "never saw it" (then a POST) and as a refusal (then
/// `failed`). Now: no POST at all, one configuration alert naming the
/// problem, nothing failed.
#[test]
fn a_misrouted_bank_url_sends_nothing_fails_nothing_and_alerts_the_operator() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    let slack = Slack::start(false);
    for k in ["wrong-1", "wrong-2"] {
        cache(&mut c, k, "u", 1000, "USD");
    }
    let statuses = Statuses::watch(&s, "wrong-1");
    let sidecar = start_sidecar(
        &s,
        &format!("{}/v2", bank.url),
        Some(&slack.url),
        &["--max-attempts", "2", "--retry-schedule", "200ms"],
    );
    sidecar.wait_for("both payments to run out of attempts", 15, || {
        ["wrong-1", "wrong-2"]
            .iter()
            .all(|k| check(&mut c, k).unwrap()["status"] == "unknown")
    });
    let r = check(&mut c, "wrong-1").unwrap();
    assert!(
        r["reason"].contains("configuration error") && r["reason"].contains("404"),
        "{r:?}"
    );
    let problem = "answered GET {bank-url}/payments/{id} 404 without {\"status\":\"not_found\"}";
    sidecar.wait_for("the configuration alert", 10, || {
        !messages_with(&slack, problem).is_empty()
    });
    // Four attempts met the same problem: it is alerted once per repeat interval.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        messages_with(&slack, problem).len(),
        1,
        "{:?}",
        slack.messages()
    );
    assert!(messages_with(&slack, problem)[0].contains("check --bank-url"));
    statuses.assert_never_failed();
    assert_eq!(
        bank.posts(),
        0,
        "sent after a 404 page: {:?}",
        bank.requests()
    );
    assert!(bank
        .requests()
        .iter()
        .all(|r| r.path.starts_with("/v2/payments/")));
    assert!(bank.creations().is_empty());
}

/// An outage that outlasts --max-attempts: the payment becomes `unknown`,
/// not `failed`, and when the provider is back and has never heard of it,
/// it is still not sent: a human decides. `PAY.UPDATE key pending` sends it
/// back to the retries.
#[test]
fn with_wait_replicas_nothing_is_sent_for_a_claim_no_replica_has() {
    // A primary without a replica: a failover could erase what it holds, so
    // the sidecar asks the provider nothing. Once a replica takes the claims,
    // the payments finish.
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    for k in ["alone-1", "alone-2"] {
        cache(&mut c, k, "u", 1000, "USD");
    }
    let sidecar = start_sidecar(
        &s,
        &bank.url,
        None,
        &[
            "--wait-replicas",
            "1",
            "--timeout",
            "200ms",
            "--lease",
            "1s",
        ],
    );
    sidecar.wait_for("claims left unreplicated", 10, || {
        sidecar.log().matches("claim not on 1 replica(s)").count() >= 2
    });
    assert!(bank.requests().is_empty(), "{:?}", bank.requests());
    assert_eq!(pending_count(&mut c), 2);
    let replica = redis();
    replicate(&replica, &s);
    sidecar.wait_for("both payments to finish", 15, || pending_count(&mut c) == 0);
    assert_each_charged_once(&bank, 2);
}

#[test]
fn an_unknown_payment_is_never_resent_until_an_operator_says_so() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    bank.set_outage(true);
    cache(&mut c, "doomed", "u", 2500, "EUR");
    let statuses = Statuses::watch(&s, "doomed");
    let sidecar = start_sidecar(
        &s,
        &bank.url,
        None,
        &[
            "--max-attempts",
            "2",
            "--retry-schedule",
            "200ms",
            "--unknown-interval",
            "300ms",
        ],
    );
    sidecar.wait_for("the payment to become unknown", 20, || {
        check(&mut c, "doomed").unwrap()["status"] == "unknown"
    });
    let r = check(&mut c, "doomed").unwrap();
    assert_eq!(r["attempts"], "2");
    assert!(
        r["reason"].starts_with("outcome unknown after 2 attempts: provider error 503"),
        "{r:?}"
    );
    bank.set_outage(false);
    sidecar.wait_for("the provider's not_found to be recorded", 10, || {
        check(&mut c, "doomed").unwrap()["reason"].contains("no record of it")
    });
    let gets = bank.gets();
    sidecar.wait_for("another check", 10, || bank.gets() > gets);
    assert_eq!(check(&mut c, "doomed").unwrap()["status"], "unknown");
    assert_eq!(bank.posts(), 0, "an unknown payment was sent");
    // The operator checked: it was never charged. Back to the retries.
    update(&mut c, "doomed", "pending");
    sidecar.wait_for("the payment to be sent and succeed", 10, || {
        check(&mut c, "doomed").unwrap()["status"] == "succeeded"
    });
    assert_eq!(bank.creations().get("doomed"), Some(&1));
    statuses.assert_never_failed();
}

/// Issue 12: a worker stalled past its lease could still write its result
/// after another worker claimed the payment. Sidecar A is stopped while its
/// POST is at the provider; B claims the payment when A's lease runs out and
/// resolves it; A, resumed, writes its stale result: FENCED, dropped.
#[test]
fn a_stalled_workers_late_write_is_fenced_and_the_second_workers_result_stands() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    bank.script(
        "stall-1",
        vec![Scripted::Normal, Scripted::Slow(Duration::from_millis(800))],
    );
    let opts = |me: &'static str| {
        [
            "--consumer",
            me,
            "--lease",
            "4s",
            "--timeout",
            "1500ms",
            "--concurrency",
            "1",
        ]
    };
    let mut a = start_sidecar(&s, &bank.url, None, &opts("A"));
    cache(&mut c, "stall-1", "u", 1000, "USD");
    a.wait_for("A's POST to reach the provider", 10, || bank.posts() == 1);
    a.signal("STOP");
    let b = start_sidecar(&s, &bank.url, None, &opts("B"));
    b.wait_for("B to resolve the payment", 15, || {
        let r = check(&mut c, "stall-1").unwrap();
        r["status"] == "succeeded" && r["lease_owner"] != "A" && r["attempts"] == "2"
    });
    let resolved = check(&mut c, "stall-1").unwrap();
    a.signal("CONT");
    a.wait_for("A's late write to be dropped", 10, || {
        a.log().contains("txn=stall-1 attempt=1 result")
    });
    let line = a
        .log()
        .lines()
        .find(|l| l.contains("txn=stall-1 attempt=1 result"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("another worker claimed it since"), "{line}");
    assert!(line.contains("FENCED"), "{line}");
    let r = check(&mut c, "stall-1").unwrap();
    assert_eq!(r, resolved, "A's late write changed the record");
    assert!(
        b.log().contains("txn=stall-1 attempt=2 succeeded"),
        "{}",
        b.log()
    );
    assert_eq!(bank.creations().get("stall-1"), Some(&1), "charged once");
    assert_eq!(bank.posts(), 1, "B sent it again");
    a.kill();
}

/// Issue 12: the payments given up on lived in a round's memory and their
/// alert was lost when another payment's update failed in the same round.
/// Now one payment's key is replaced by a string and another's deleted while
/// the provider is slow: the unknown payment is still alerted, and the
/// sidecar goes on with the next payment.
#[test]
fn alerts_are_delivered_while_another_payments_update_fails_in_the_same_round() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    let slack = Slack::start(false);
    bank.know("keeps-processing", "pending", "ch_k");
    for k in ["replaced", "deleted"] {
        bank.script(k, vec![Scripted::Hang(Duration::from_millis(1500))]);
    }
    for k in ["keeps-processing", "replaced", "deleted"] {
        cache(&mut c, k, "u", 1000, "USD");
    }
    let sidecar = start_sidecar(
        &s,
        &bank.url,
        Some(&slack.url),
        &[
            "--max-attempts",
            "1",
            "--alert-after",
            "300ms",
            "--timeout",
            "1s",
        ],
    );
    let asked = |k: &str| {
        let path = format!("/payments/{k}");
        bank.requests().iter().any(|r| r.path == path)
    };
    sidecar.wait_for("the slow calls to start", 10, || {
        asked("replaced") && asked("deleted")
    });
    let _: () = redis::cmd("SET")
        .arg("replaced")
        .arg("not a payment any more")
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("DEL").arg("deleted").query(&mut c).unwrap();
    sidecar.wait_for("the refused write to be logged", 10, || {
        sidecar
            .log()
            .contains("txn=replaced attempt=1 result unknown not recorded")
    });
    assert!(sidecar.log().contains("WRONGTYPE"), "{}", sidecar.log());
    assert_eq!(
        check(&mut c, "keeps-processing").unwrap()["status"],
        "unknown"
    );
    sidecar.wait_for("the unknown payment's alert", 10, || {
        messages_with(&slack, "outcome unknown after 1 attempts")
            .iter()
            .any(|m| listed(m).contains("keeps-processing"))
    });
    // The sidecar goes on.
    cache(&mut c, "next", "u", 1000, "USD");
    sidecar.wait_for("the next payment", 10, || {
        check(&mut c, "next").unwrap()["status"] == "succeeded"
    });
}

/// Issue 12: with keys like `payment:txn_1` the provider was sent the whole
/// key, did not know it, and charged a second time. The module strips
/// `pay.key-prefix`; the provider sees `txn_1` in the URL, the
/// Idempotency-Key and the body, and charges once.
#[test]
fn keys_with_a_prefix_reach_the_provider_as_their_transaction_id() {
    let s = redis_with_prefix();
    let mut c = s.conn();
    let bank = Bank::reliable();
    // txn_1: the application charged it before it crashed; txn_2: never sent.
    bank.know("txn_1", "succeeded", "ch_app");
    for k in ["payment:txn_1", "payment:txn_2"] {
        let r = cache(&mut c, k, "u", 1000, "USD");
        assert_eq!(r["transaction_id"], k.trim_start_matches("payment:"));
    }
    let sidecar = start_sidecar(&s, &bank.url, None, &[]);
    sidecar.wait_for("both payments to succeed", 10, || {
        ["payment:txn_1", "payment:txn_2"]
            .iter()
            .all(|k| check(&mut c, k).unwrap()["status"] == "succeeded")
    });
    assert_eq!(
        check(&mut c, "payment:txn_1").unwrap()["provider_ref"],
        "ch_app"
    );
    let seen: Vec<(String, String, Option<String>, Option<String>)> = bank
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path, r.idempotency_key, r.body_transaction_id))
        .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(seen.iter().filter(|r| r.0 == "GET").count(), 2, "{seen:?}");
    assert!(seen.contains(&("GET".into(), "/payments/txn_1".into(), None, None)));
    assert!(seen.contains(&("GET".into(), "/payments/txn_2".into(), None, None)));
    assert!(
        seen.contains(&(
            "POST".into(),
            "/payments".into(),
            some("txn_2"),
            some("txn_2")
        )),
        "{seen:?}"
    );
    assert_eq!(bank.posts(), 1, "{seen:?}");
    let created = bank.creations();
    assert_eq!(created.get("txn_1"), Some(&1));
    assert_eq!(created.get("txn_2"), Some(&1));
    assert_eq!(created.len(), 2, "{created:?}");
}

/// An operator renames a pending payment the application already charged,
/// and copies one nobody sent. Had the transaction id followed the key, the
/// sidecar would have asked the provider about `txn_1:held`, heard
/// "not_found" and charged again under a new idempotency key. The provider
/// knows each payment by the id it was created with, and so does the record.
#[test]
fn a_renamed_or_copied_payment_is_still_its_first_transaction_at_the_provider() {
    let s = redis_with_prefix();
    let mut c = s.conn();
    let bank = Bank::reliable();
    bank.know("txn_1", "succeeded", "ch_app");
    cache(&mut c, "payment:txn_1", "u", 1000, "USD");
    cache(&mut c, "payment:txn_2", "u", 2000, "USD");
    let _: () = redis::cmd("RENAME")
        .arg("payment:txn_1")
        .arg("payment:txn_1:held")
        .query(&mut c)
        .unwrap();
    let _: i64 = redis::cmd("COPY")
        .arg("payment:txn_2")
        .arg("payment:txn_2:copy")
        .query(&mut c)
        .unwrap();
    let keys = ["payment:txn_1:held", "payment:txn_2", "payment:txn_2:copy"];
    let sidecar = start_sidecar(&s, &bank.url, None, &[]);
    sidecar.wait_for("every payment to succeed", 10, || {
        keys.iter()
            .all(|k| check(&mut c, k).unwrap()["status"] == "succeeded")
    });
    assert_eq!(
        check(&mut c, "payment:txn_1:held").unwrap()["provider_ref"],
        "ch_app"
    );
    let paths: BTreeSet<String> = bank.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths
            .iter()
            .all(|p| !p.contains(":held") && !p.contains(":copy")),
        "{paths:?}"
    );
    let created = bank.creations();
    assert_eq!(created.get("txn_1"), Some(&1), "{created:?}");
    assert_eq!(created.get("txn_2"), Some(&1), "{created:?}");
    assert_eq!(created.len(), 2, "{created:?}");
}

/// A provider that fails `rate` of the calls, a third of those by hanging
/// 1200 ms (past the sidecar's 1 s timeout), and otherwise answers after
/// `latency`.
fn failing_bank(rate: f64, latency: Duration, seed: u64) -> Bank {
    Bank::start(rate, latency, Duration::from_millis(1200), seed)
}

/// Sidecar options that outlast a [`failing_bank`] with `concurrency`
/// workers: up to 100 attempts, each retried after 1 s, past the stand-in's
/// hang, so a retry never meets the hung call.
fn outlasting_failures(concurrency: &str) -> [&str; 10] {
    [
        "--concurrency",
        concurrency,
        "--lease",
        "2500ms",
        "--timeout",
        "1s",
        "--max-attempts",
        "100",
        "--retry-schedule",
        "1s",
    ]
}

#[test]
fn with_30_percent_of_provider_calls_failing_1000_payments_all_resolve_once() {
    const N: usize = 1000;
    let s = redis();
    let mut c = s.conn();
    let bank = failing_bank(0.3, Duration::from_millis(2), 3);
    cache_many(&mut c, "txn:", N);
    // About half of all attempts meet a failure here: ten in a row (the
    // default --max-attempts) happen to about one payment in a thousand.
    let sidecar = start_sidecar(&s, &bank.url, None, &outlasting_failures("32"));
    sidecar.wait_for("every payment to resolve", 120, || {
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
    let bank = failing_bank(0.1, Duration::from_millis(20), 4);
    cache_many(&mut c, "txn:", N);
    let extra = outlasting_failures("8");
    let mut a = start_sidecar(&s, &bank.url, None, &extra);
    let b = start_sidecar(&s, &bank.url, None, &extra);
    b.wait_for("the round to be under way", 30, || bank.posts() > 60);
    a.kill(); // SIGKILL, mid-round: its leased payments wait out their lease
    b.wait_for("every payment to resolve", 120, || {
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

/// The module's guard, told to Slack: a primary whose eviction policy may
/// drop unresolved payments is alerted once (two sidecars, one message), and
/// on servers that report losses (Redis 7.2+, Valkey) a pending payment
/// evicted anyway is alerted with the way to find it.
#[test]
fn an_unsafe_eviction_policy_and_a_lost_payment_reach_slack_once() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    let slack = Slack::start(false);
    let extra = ["--alert-repeat", "1h"];
    let a = start_sidecar(&s, &bank.url, Some(&slack.url), &extra);
    let _b = start_sidecar(&s, &bank.url, Some(&slack.url), &extra);
    config_set(&mut c, "maxmemory-policy", "allkeys-lru");
    config_set(&mut c, "maxmemory", "1gb");
    a.wait_for("the eviction alert", 10, || {
        !messages_with(&slack, "maxmemory-policy may evict unresolved payments").is_empty()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        messages_with(&slack, "maxmemory-policy may evict").len(),
        1,
        "{:?}",
        slack.messages()
    );
    let (kind, version) = server_version(&mut c);
    if kind == "valkey" || version >= (7, 2) {
        // Not stale for an hour: no sidecar claims it before it is evicted.
        // (The eviction takes the sidecars' alert state with it, as it would
        // in production: that is what the alert above is about.)
        config_set(&mut c, "pay.stale-after-ms", 3_600_000);
        cache(&mut c, "txn_evicted", "u", 990, "USD");
        config_set(&mut c, "maxmemory", 1);
        let _: redis::Value = redis::cmd("SET")
            .arg("x")
            .arg("y")
            .query(&mut c)
            .unwrap_or(redis::Value::Nil);
        config_set(&mut c, "maxmemory", 0);
        a.wait_for("the lost-payment alert", 10, || {
            !messages_with(&slack, "lost 1 unresolved payment(s)").is_empty()
        });
        assert!(s.log().contains("UNRESOLVED PAYMENT LOST: key txn_evicted"));
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(messages_with(&slack, "lost 1 unresolved").len(), 1);
    }
}

#[test]
fn alerts_survive_a_slack_outage_repeat_and_resolve_without_duplicates() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
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
    let a = start_sidecar(&s, &bank.url, Some(&slack.url), &extra);
    let _b = start_sidecar(&s, &bank.url, Some(&slack.url), &extra);
    // Slack is down: alerts wait in the outbox.
    a.wait_for("Slack to be tried", 10, || slack.refused() >= 2);
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
    a.wait_for("the first alerts", 10, || {
        stuck.iter().all(|k| times_listed(k) >= 1)
    });
    for k in &stuck {
        assert_eq!(times_listed(k), 1, "{k}: {:?}", slack.messages());
    }
    // Still stuck after the repeat interval: one repeat each, not more.
    a.wait_for("the repeats", 10, || {
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
    a.wait_for("the payments to resolve", 20, || pending_count(&mut c) == 0);
    a.wait_for("the resolved message", 10, || {
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
    let bank = Bank::reliable();
    let mut sidecar = start_sidecar(&s, &bank.url, None, &["--shutdown-timeout", "2s"]);
    std::thread::sleep(Duration::from_millis(500));
    sidecar.signal("TERM");
    let exited = wait_until(Duration::from_secs(5), || sidecar.exited());
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
    let bank = Bank::reliable();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    cache(&mut c, "m", "u", 1000, "USD");
    let sidecar = start_sidecar(
        &s,
        &bank.url,
        None,
        &["--metrics-addr", &addr, "--log-format", "json"],
    );
    sidecar.wait_for("the payment", 10, || pending_count(&mut c) == 0);
    // A 503 (no round finished yet) is an answer too, not an error.
    let get = |path: &str| -> (u16, String) {
        let mut r = ureq::get(&format!("http://{addr}{path}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    sidecar.wait_for("a healthy round", 5, || get("/healthz").0 == 200);
    let (_, health) = get("/healthz");
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["primaries"][0]["address"],
        format!("127.0.0.1:{}", s.port)
    );
    assert_eq!(v["primaries"][0]["reached"], true);
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
    let bank = Bank::reliable();
    bank.set_outage(true);
    let slack = Slack::start(false);
    cache(&mut c, "acl-1", "u", 1000, "USD");
    let url = format!("redis://sidecar:s3cret@127.0.0.1:{}/", s.port);
    let mut args = sidecar_args(&url, &bank.url, Some(&slack.url));
    args.extend([
        "--interval",
        "200ms",
        "--lease",
        "2100ms",
        "--timeout",
        "1s",
        "--retry-schedule",
        "300ms",
        "--alert-after",
        "300ms",
        "--max-attempts",
        "100",
    ]);
    let sidecar = Sidecar::launch(PAY_SIDECAR, &args);
    sidecar.wait_for("an alert", 10, || !slack.messages().is_empty());
    bank.set_outage(false);
    sidecar.wait_for("the payment to succeed", 10, || {
        check(&mut c, "acl-1").unwrap()["status"] == "succeeded"
    });
    sidecar.wait_for("the resolved message", 10, || {
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

/// The daemon as a library: `pay_sidecar::run` on a thread of the test
/// finishes a stale payment, and returns `Ok` soon after `shutdown` is set.
#[test]
fn the_daemon_runs_in_process_and_returns_once_told_to_stop() {
    let s = redis();
    let mut c = s.conn();
    let bank = Bank::reliable();
    bank.know("in-process", "succeeded", "ch_in_process");
    cache(&mut c, "in-process", "67890", 1000, "USD");
    let mut args = vec![
        "pay-sidecar".to_string(),
        "--redis-url".into(),
        format!("redis://127.0.0.1:{}/", s.port),
        "--bank-url".into(),
        bank.url.clone(),
    ];
    for (name, value) in SIDECAR_DEFAULTS {
        args.extend([name.to_string(), value.to_string()]);
    }
    let opts = Options::try_parse_from(&args).expect("options parse");
    opts.validate().expect("options are valid");
    let shutdown = Arc::new(AtomicBool::new(false));
    let daemon = {
        let stop = shutdown.clone();
        std::thread::spawn(move || pay_sidecar::run(opts, stop))
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            check(&mut c, "in-process").is_some_and(|r| r["status"] == "succeeded")
        }),
        "the in-process daemon did not finish the payment: {:?}",
        check(&mut c, "in-process")
    );
    let r = check(&mut c, "in-process").unwrap();
    assert_eq!(r["provider_ref"], "ch_in_process");
    assert_eq!(
        bank.posts(),
        0,
        "a payment the provider knows is never re-sent"
    );
    shutdown.store(true, Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(10), || daemon.is_finished()),
        "run did not return after shutdown"
    );
    assert_eq!(daemon.join().expect("the daemon thread"), Ok(()));
}
