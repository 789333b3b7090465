//! The retry loop: claim one stale payment at a time, ask the provider what
//! happened (always GET before POST), and write the answer back, fenced.
//!
//! The first rule: unknown is not failed. Only a definite answer from the
//! provider (it charged, it declined, it refused the request) resolves a
//! payment. Anything else is retried on `--retry-schedule`; after
//! `--max-attempts` the payment becomes `unknown`. An `unknown` payment is
//! never sent again: it is only asked about (GET), every
//! `--unknown-interval`, until a definite answer or a human resolves it.
//!
//! Each worker claims with COUNT 1, so a payment is processed right after its
//! lease begins; a POST is sent only while at least two provider timeouts of
//! lease remain. Every write carries `FENCE <attempts of the claim>`: if
//! another worker claimed the payment since (this one stalled past its
//! lease), the module refuses the write and the result is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};

use pay_proto::{code, Status};

use crate::metrics::Metrics;
use crate::provider::{Answer, Provider, ProviderStatus, Submission};
use crate::store::{self, Change, Node, Record};

/// How undecided payments are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Claims without a definite answer before a payment becomes `unknown`.
    pub max_attempts: u32,
    /// The back-off after attempt 1, 2, ...; the last one repeats.
    pub retry_schedule: Vec<Duration>,
    /// How often an `unknown` payment is asked about again.
    pub unknown_interval: Duration,
}

impl Policy {
    /// The back-off after the `attempt`-th attempt (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        self.retry_schedule
            .get(i)
            .or(self.retry_schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }
}

/// What to do with a claimed payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The provider charged it.
    Succeeded { reference: String },
    /// The provider declined or refused it: a definite answer.
    Failed { reason: String, reference: String },
    /// No definite answer yet: `pending`, asked again after `after`.
    Retry {
        reason: String,
        after: Duration,
        /// A configuration problem, for an operator alert.
        problem: Option<String>,
    },
    /// Still no definite answer after the last allowed attempt, or an
    /// `unknown` payment asked again: `unknown`, asked again after `after`.
    Unknown {
        reason: String,
        after: Duration,
        problem: Option<String>,
    },
    /// The provider never saw it, and too little lease is left to send it
    /// safely: leave it for the next claim.
    Abandon,
}

impl Decision {
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Succeeded { .. } => "succeeded",
            Decision::Failed { .. } => "failed",
            Decision::Retry { .. } => "retry",
            Decision::Unknown { .. } => "unknown",
            Decision::Abandon => "abandoned",
        }
    }

    fn problem(&self) -> Option<&str> {
        match self {
            Decision::Retry { problem, .. } | Decision::Unknown { problem, .. } => {
                problem.as_deref()
            }
            _ => None,
        }
    }
}

/// The reason an `unknown` payment carries.
fn unknown_reason(attempts: u32, last: &str) -> String {
    format!("outcome unknown after {attempts} attempts: {last}")
}

/// Asks the provider about one claimed payment. `may_send` says whether
/// enough lease remains to send it.
pub fn decide(
    provider: &dyn Provider,
    r: &Record,
    policy: &Policy,
    may_send: &dyn Fn() -> bool,
) -> Decision {
    if r.status == Status::Unknown {
        return decide_unknown(provider, r, policy);
    }
    let answer = match provider.status(&r.transaction_id) {
        Answer::NotFound if !may_send() => return Decision::Abandon,
        Answer::NotFound => provider.submit(&Submission {
            transaction_id: r.transaction_id.clone(),
            user_id: r.user_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
        }),
        known => known,
    };
    let undecided = |last: String, problem: Option<String>| {
        if r.attempts >= policy.max_attempts {
            Decision::Unknown {
                reason: unknown_reason(r.attempts, &last),
                after: policy.unknown_interval,
                problem,
            }
        } else {
            Decision::Retry {
                reason: last,
                after: policy.backoff(r.attempts),
                problem,
            }
        }
    };
    match answer {
        Answer::Known {
            status: ProviderStatus::Succeeded,
            reference,
            ..
        } => Decision::Succeeded { reference },
        Answer::Known {
            status: ProviderStatus::Failed,
            reference,
            message,
        } => failed(reference, message),
        Answer::Refused(reason) => Decision::Failed {
            reason,
            reference: String::new(),
        },
        Answer::Known {
            status: ProviderStatus::Pending,
            ..
        } => undecided("the provider is still processing it".into(), None),
        // Only a GET says "not found"; the POST's answer never does.
        Answer::NotFound => undecided("the provider answered not_found to the POST".into(), None),
        Answer::Config(problem) => undecided(problem.clone(), Some(problem)),
        Answer::Transient(reason) => undecided(reason, None),
    }
}

/// An `unknown` payment is only asked about, never sent: a definite answer
/// resolves it, anything else leaves it `unknown` until the next check.
fn decide_unknown(provider: &dyn Provider, r: &Record, policy: &Policy) -> Decision {
    let still = |last: String, problem: Option<String>| Decision::Unknown {
        reason: unknown_reason(r.attempts, &last),
        after: policy.unknown_interval,
        problem,
    };
    match provider.status(&r.transaction_id) {
        Answer::Known {
            status: ProviderStatus::Succeeded,
            reference,
            ..
        } => Decision::Succeeded { reference },
        Answer::Known {
            status: ProviderStatus::Failed,
            reference,
            message,
        } => failed(reference, message),
        Answer::Known {
            status: ProviderStatus::Pending,
            ..
        } => still("the provider is still processing it".into(), None),
        Answer::NotFound => still(
            format!(
                "the provider has no record of it; if it was never sent, `PAY.UPDATE {} pending` sends it again",
                r.key
            ),
            None,
        ),
        Answer::Config(problem) => still(problem.clone(), Some(problem)),
        Answer::Refused(reason) | Answer::Transient(reason) => still(reason, None),
    }
}

fn failed(reference: String, message: String) -> Decision {
    Decision::Failed {
        reason: if message.is_empty() {
            "failed at the provider".into()
        } else {
            message
        },
        reference,
    }
}

/// What became of a worker's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Applied,
    /// Nothing to write.
    Nothing,
    /// `FENCED`: another worker claimed the payment since; its word stands.
    Fenced(String),
    /// `TRANSITION` or `NOPAYMENT`: the application resolved or removed it
    /// meanwhile; its word stands.
    Elsewhere(String),
}

/// Writes a decision back with PAY.UPDATE, fenced by the claim's attempts.
/// Error replies other than FENCED, TRANSITION and NOPAYMENT are returned.
pub fn apply(
    c: &mut dyn redis::ConnectionLike,
    r: &Record,
    d: &Decision,
) -> redis::RedisResult<Written> {
    let (status, reason, reference, retry) = match d {
        Decision::Succeeded { reference } => (Status::Succeeded, None, Some(reference), None),
        Decision::Failed { reason, reference } => {
            (Status::Failed, Some(reason), Some(reference), None)
        }
        Decision::Retry { reason, after, .. } => {
            (Status::Pending, Some(reason), None, Some(*after))
        }
        Decision::Unknown { reason, after, .. } => {
            (Status::Unknown, Some(reason), None, Some(*after))
        }
        Decision::Abandon => return Ok(Written::Nothing),
    };
    let change = Change {
        reason: reason.map(String::as_str),
        reference: reference.map(String::as_str),
        retry,
        fence: Some(r.attempts),
    };
    match store::update(c, &r.key, status, &change) {
        Ok(_) => Ok(Written::Applied),
        Err(e) if e.code() == Some(code::FENCED) => Ok(Written::Fenced(store::error_text(&e))),
        Err(e) if e.code() == Some(code::TRANSITION) || e.code() == Some(code::NOPAYMENT) => {
            Ok(Written::Elsewhere(store::error_text(&e)))
        }
        Err(e) => Err(e),
    }
}

/// Where a worker reports a configuration problem: an operator alert.
pub trait Report: Sync {
    fn config_problem(&self, problem: &str, r: &Record);
}

/// Reports nothing (tests, and a sidecar without alerts).
pub struct Silent;

impl Report for Silent {
    fn config_problem(&self, _: &str, _: &Record) {}
}

pub struct Settings {
    pub consumer: String,
    pub lease: Duration,
    pub timeout: Duration,
    pub policy: Policy,
    pub concurrency: usize,
    /// Replicas that must have a claim before the provider is asked.
    pub wait_replicas: u32,
}

/// Claims and finishes stale payments on one primary until none is left (or
/// shutdown), with `concurrency` workers. A write the server refuses for one
/// payment is logged and the others go on; an error reaching Redis ends the
/// drain (the leases run out and the next round claims those payments again).
pub fn drain(
    node: &Node,
    provider: &dyn Provider,
    s: &Settings,
    report: &dyn Report,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) -> redis::RedisResult<()> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..s.concurrency.max(1))
            .map(|_| scope.spawn(|| worker(node, provider, s, report, metrics, shutdown)))
            .collect();
        let mut error = None;
        for w in workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error = Some(e),
                Err(_) => {
                    error = Some(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "worker panicked",
                    )))
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

fn worker(
    node: &Node,
    provider: &dyn Provider,
    s: &Settings,
    report: &dyn Report,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) -> redis::RedisResult<()> {
    let mut c = node.connect()?;
    while !shutdown.load(Ordering::Relaxed) {
        let claimed_at = Instant::now();
        let Some(r) = store::claim(&mut c, &s.consumer, 1, s.lease)?.pop() else {
            break;
        };
        metrics.claims.inc();
        if !store::replicated(&mut c, s.wait_replicas, s.timeout)? {
            // A failover now could erase the claim, and the payment with it
            // if it is as young: ask the provider only once replicas have
            // it. The lease runs out and a later claim tries again.
            warn!(
                "txn={} attempt={} claim not on {} replica(s) within {}; left for a later claim",
                r.key,
                r.attempts,
                s.wait_replicas,
                humantime::format_duration(s.timeout)
            );
            metrics.outcome("unreplicated");
            continue;
        }
        let may_send = || claimed_at.elapsed() + s.timeout * 2 < s.lease;
        let d = decide(provider, &r, &s.policy, &may_send);
        if let Some(problem) = d.problem() {
            metrics.config_errors.inc();
            report.config_problem(problem, &r);
        }
        let written = match apply(&mut c, &r, &d) {
            Ok(w) => w,
            // The node is no longer this primary (a failover demoted it, the
            // slot moved): the result is not recorded, the lease runs out,
            // and the next claim, wherever the primary is now, asks the
            // provider again (GET first: nothing is charged twice).
            Err(e) if store::primary_moved(&e) => {
                warn!(
                    "txn={} attempt={} result {} not recorded: {}; finding the primary again",
                    r.key,
                    r.attempts,
                    d.outcome(),
                    store::error_text(&e)
                );
                metrics.outcome("write_error");
                return Err(e);
            }
            // The server refused this one write (the key now holds another
            // type, ...): the others go on.
            Err(e) if e.code().is_some() => {
                warn!(
                    "txn={} attempt={} result {} not recorded: {}",
                    r.key,
                    r.attempts,
                    d.outcome(),
                    store::error_text(&e)
                );
                metrics.outcome("write_error");
                continue;
            }
            Err(e) => return Err(e),
        };
        match written {
            Written::Applied | Written::Nothing => {
                metrics.outcome(d.outcome());
                log_decision(&r, &d);
            }
            Written::Fenced(e) => {
                warn!(
                    "txn={} attempt={} result {} dropped: another worker claimed it since ({e})",
                    r.key,
                    r.attempts,
                    d.outcome()
                );
                metrics.outcome("fenced");
            }
            Written::Elsewhere(e) => {
                info!(
                    "txn={} attempt={} resolved elsewhere meanwhile, their word stands: {e}",
                    r.key, r.attempts
                );
                metrics.outcome("resolved_elsewhere");
            }
        }
    }
    Ok(())
}

fn log_decision(r: &Record, d: &Decision) {
    let (key, n) = (&r.key, r.attempts);
    match d {
        Decision::Succeeded { reference } => {
            info!("txn={key} attempt={n} succeeded ref={reference}")
        }
        Decision::Failed { reason, .. } => info!("txn={key} attempt={n} failed: {reason}"),
        Decision::Retry { reason, after, .. } => info!(
            "txn={key} attempt={n} still pending, next try in {}: {reason}",
            humantime::format_duration(*after)
        ),
        Decision::Unknown { reason, after, .. } => warn!(
            "txn={key} attempt={n} {reason}; asked again in {}",
            humantime::format_duration(*after)
        ),
        Decision::Abandon => warn!("txn={key} lease too short to send it; left for the next claim"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeConnection;
    use std::sync::Mutex;

    /// A provider that answers from a script and records what it was asked.
    struct Scripted {
        get: Answer,
        post: Answer,
        calls: Mutex<Vec<String>>,
    }

    impl Provider for Scripted {
        fn status(&self, id: &str) -> Answer {
            self.calls.lock().unwrap().push(format!("GET {id}"));
            self.get.clone()
        }
        fn submit(&self, p: &Submission) -> Answer {
            self.calls
                .lock()
                .unwrap()
                .push(format!("POST {}", p.transaction_id));
            self.post.clone()
        }
    }

    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            retry_schedule: vec![Duration::from_secs(10), Duration::from_secs(60)],
            unknown_interval: Duration::from_secs(3600),
        }
    }

    fn record(status: &str, attempts: u32) -> Record {
        Record {
            key: "payment:t".into(),
            transaction_id: "t".into(),
            status: Status::parse(status.as_bytes()).unwrap(),
            attempts,
            ..Record::default()
        }
    }

    fn run_on(r: &Record, get: Answer, post: Answer) -> (Decision, Vec<String>) {
        let p = Scripted {
            get,
            post,
            calls: Mutex::new(Vec::new()),
        };
        let d = decide(&p, r, &policy(), &|| true);
        let calls = p.calls.into_inner().unwrap();
        (d, calls)
    }

    fn run(get: Answer, post: Answer, attempts: u32) -> (Decision, Vec<String>) {
        run_on(&record("pending", attempts), get, post)
    }

    fn known(status: ProviderStatus) -> Answer {
        Answer::Known {
            status,
            reference: "ch_1".into(),
            message: String::new(),
        }
    }

    fn config() -> Answer {
        Answer::Config("configuration error: 404".into())
    }

    /// Every answer that is not a verdict about the payment.
    fn undecided_answers() -> Vec<Answer> {
        vec![
            known(ProviderStatus::Pending),
            Answer::Transient("provider timed out".into()),
            Answer::Transient("provider error 503".into()),
            config(),
        ]
    }

    #[test]
    fn the_provider_sees_the_transaction_id_not_the_key() {
        let (_, calls) = run(Answer::NotFound, known(ProviderStatus::Succeeded), 1);
        assert_eq!(calls, ["GET t", "POST t"]);
    }

    #[test]
    fn a_payment_the_provider_knows_is_never_sent_again() {
        for status in [
            ProviderStatus::Succeeded,
            ProviderStatus::Failed,
            ProviderStatus::Pending,
        ] {
            let (_, calls) = run(known(status), known(ProviderStatus::Succeeded), 1);
            assert_eq!(calls, ["GET t"]);
        }
        let (d, _) = run(known(ProviderStatus::Succeeded), Answer::NotFound, 1);
        assert_eq!(
            d,
            Decision::Succeeded {
                reference: "ch_1".into()
            }
        );
    }

    #[test]
    fn a_payment_the_provider_never_saw_is_sent_once() {
        let (d, calls) = run(Answer::NotFound, known(ProviderStatus::Succeeded), 1);
        assert_eq!(calls, ["GET t", "POST t"]);
        assert_eq!(d.outcome(), "succeeded");
    }

    #[test]
    fn only_not_found_leads_to_a_post() {
        for get in undecided_answers() {
            let (_, calls) = run(get.clone(), known(ProviderStatus::Succeeded), 1);
            assert_eq!(calls, ["GET t"], "POST after {get:?}");
        }
    }

    #[test]
    fn undecided_answers_retry_on_the_schedule() {
        let (d, _) = run(Answer::Transient("503".into()), Answer::NotFound, 1);
        assert_eq!(
            d,
            Decision::Retry {
                reason: "503".into(),
                after: Duration::from_secs(10),
                problem: None
            }
        );
        let (d, _) = run(Answer::NotFound, Answer::Transient("409".into()), 2);
        assert_eq!(
            d,
            Decision::Retry {
                reason: "409".into(),
                after: Duration::from_secs(60),
                problem: None
            }
        );
    }

    #[test]
    fn the_last_back_off_repeats() {
        let p = policy();
        assert_eq!(p.backoff(1), Duration::from_secs(10));
        assert_eq!(p.backoff(2), Duration::from_secs(60));
        assert_eq!(p.backoff(9), Duration::from_secs(60));
        assert_eq!(p.backoff(0), Duration::from_secs(10));
    }

    #[test]
    fn unknown_is_not_failed_after_the_last_attempt() {
        for get in undecided_answers() {
            let (d, _) = run(get.clone(), Answer::NotFound, 3);
            let Decision::Unknown { reason, after, .. } = &d else {
                panic!("{get:?} on the last attempt: {d:?}");
            };
            assert!(
                reason.starts_with("outcome unknown after 3 attempts: "),
                "{reason}"
            );
            assert_eq!(*after, Duration::from_secs(3600));
        }
        // The POST timed out on the last attempt: it may have charged.
        let (d, _) = run(
            Answer::NotFound,
            Answer::Transient("provider timed out".into()),
            3,
        );
        assert_eq!(d.outcome(), "unknown");
    }

    #[test]
    fn configuration_errors_are_reported_and_never_fail() {
        for attempts in [1, 3] {
            let (d, _) = run(config(), known(ProviderStatus::Succeeded), attempts);
            assert_eq!(d.problem(), Some("configuration error: 404"));
            assert_ne!(d.outcome(), "failed");
        }
        let (d, calls) = run(Answer::NotFound, config(), 1);
        assert_eq!(calls, ["GET t", "POST t"]);
        assert_eq!(d.outcome(), "retry");
        assert!(d.problem().is_some());
    }

    #[test]
    fn only_a_definite_answer_fails_a_payment() {
        let (d, _) = run(Answer::NotFound, Answer::Refused("card expired".into()), 1);
        assert_eq!(
            d,
            Decision::Failed {
                reason: "card expired".into(),
                reference: String::new()
            }
        );
        let (d, _) = run(
            Answer::Known {
                status: ProviderStatus::Failed,
                reference: "ch_9".into(),
                message: "card declined".into(),
            },
            Answer::NotFound,
            3,
        );
        assert_eq!(
            d,
            Decision::Failed {
                reason: "card declined".into(),
                reference: "ch_9".into()
            }
        );
    }

    #[test]
    fn an_unknown_payment_is_only_asked_about() {
        let r = record("unknown", 7);
        for get in undecided_answers()
            .into_iter()
            .chain([Answer::NotFound, Answer::Refused("x".into())])
        {
            let (d, calls) = run_on(&r, get.clone(), known(ProviderStatus::Succeeded));
            assert_eq!(calls, ["GET t"], "after {get:?}");
            let Decision::Unknown { reason, after, .. } = &d else {
                panic!("{get:?}: {d:?}");
            };
            assert!(reason.starts_with("outcome unknown after 7 attempts"));
            assert_eq!(*after, Duration::from_secs(3600));
        }
        let (d, _) = run_on(&r, Answer::NotFound, known(ProviderStatus::Succeeded));
        let Decision::Unknown { reason, .. } = d else {
            unreachable!()
        };
        assert!(
            reason.contains("`PAY.UPDATE payment:t pending`"),
            "{reason}"
        );
    }

    #[test]
    fn a_definite_answer_resolves_an_unknown_payment() {
        let r = record("unknown", 4);
        let (d, calls) = run_on(&r, known(ProviderStatus::Succeeded), Answer::NotFound);
        assert_eq!(calls, ["GET t"]);
        assert_eq!(
            d,
            Decision::Succeeded {
                reference: "ch_1".into()
            }
        );
        let (d, _) = run_on(&r, known(ProviderStatus::Failed), Answer::NotFound);
        assert_eq!(d.outcome(), "failed");
    }

    const RECORD: &[u8] =
        b"*4\r\n$14\r\ntransaction_id\r\n$1\r\nt\r\n$3\r\nkey\r\n$9\r\npayment:t\r\n";

    fn write(reply: &'static [u8], d: &Decision) -> (redis::RedisResult<Written>, String) {
        let mut c = FakeConnection::new(&[reply]);
        let w = apply(&mut c, &record("pending", 2), d);
        (w, c.sent_lines().join("; "))
    }

    #[test]
    fn every_write_is_fenced_by_the_claims_attempts_and_names_the_key() {
        let decisions = [
            Decision::Succeeded {
                reference: "ch_1".into(),
            },
            Decision::Failed {
                reason: "card declined".into(),
                reference: String::new(),
            },
            Decision::Retry {
                reason: "503".into(),
                after: Duration::from_secs(30),
                problem: None,
            },
            Decision::Unknown {
                reason: "outcome unknown".into(),
                after: Duration::from_secs(3600),
                problem: None,
            },
        ];
        let expected = [
            "PAY.UPDATE payment:t succeeded REF ch_1 FENCE 2",
            "PAY.UPDATE payment:t failed REASON card declined FENCE 2",
            "PAY.UPDATE payment:t pending REASON 503 RETRY 30000 FENCE 2",
            "PAY.UPDATE payment:t unknown REASON outcome unknown RETRY 3600000 FENCE 2",
        ];
        for (d, want) in decisions.iter().zip(expected) {
            let (w, sent) = write(RECORD, d);
            assert_eq!(w.unwrap(), Written::Applied);
            assert_eq!(sent, want);
        }
        let (w, sent) = write(RECORD, &Decision::Abandon);
        assert_eq!((w.unwrap(), sent.as_str()), (Written::Nothing, ""));
    }

    #[test]
    fn refusals_are_told_apart_by_their_code() {
        let ok = Decision::Succeeded {
            reference: String::new(),
        };
        let (w, _) = write(b"-FENCED attempts is 3, not 2\r\n", &ok);
        assert_eq!(
            w.unwrap(),
            Written::Fenced("FENCED attempts is 3, not 2".into())
        );
        for reply in [
            &b"-TRANSITION succeeded -> pending\r\n"[..],
            &b"-NOPAYMENT no such payment\r\n"[..],
        ] {
            let (w, _) = write(reply, &ok);
            assert!(matches!(w, Ok(Written::Elsewhere(_))), "{w:?}");
        }
        // Matched by code, never by message text.
        let (w, _) = write(b"-ERR FENCED TRANSITION no such payment\r\n", &ok);
        assert_eq!(w.unwrap_err().code(), Some("ERR"));
        let (w, _) = write(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            &ok,
        );
        let e = w.unwrap_err();
        assert_eq!(e.code(), Some("WRONGTYPE"));
        assert!(store::error_text(&e).starts_with("WRONGTYPE Operation"));
    }

    #[test]
    fn no_post_without_enough_lease_left() {
        let p = Scripted {
            get: Answer::NotFound,
            post: known(ProviderStatus::Succeeded),
            calls: Mutex::new(Vec::new()),
        };
        let r = record("pending", 1);
        assert_eq!(decide(&p, &r, &policy(), &|| false), Decision::Abandon);
        assert_eq!(*p.calls.lock().unwrap(), ["GET t"]);
    }
}
