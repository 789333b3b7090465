//! The retry loop: claim one stale payment at a time, ask the provider what
//! happened (always GET before POST), and write the answer back.
//!
//! Each worker claims with COUNT 1, so a payment is processed right after its
//! lease begins; a POST is sent only while at least one provider timeout of
//! lease remains, so no other worker can claim the payment while this one may
//! still be talking to the provider about it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::metrics::Metrics;
use crate::provider::{Answer, Provider, Status, Submission};
use crate::store::{self, Node, Record};

/// What to do with a claimed payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Succeeded {
        reference: String,
    },
    Failed {
        reason: String,
        reference: String,
    },
    /// A transient error: record it; the lease is the back-off.
    Retry {
        reason: String,
    },
    /// A transient error on the last allowed attempt: fail, and alert.
    GiveUp {
        reason: String,
    },
    /// Too little lease left to call the provider safely: leave it.
    Abandon,
}

impl Decision {
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Succeeded { .. } => "succeeded",
            Decision::Failed { .. } => "failed",
            Decision::Retry { .. } => "retry",
            Decision::GiveUp { .. } => "gave_up",
            Decision::Abandon => "abandoned",
        }
    }
}

/// Asks the provider about one claimed payment. `may_send` says whether
/// enough lease remains to send it.
pub fn decide(
    provider: &dyn Provider,
    r: &Record,
    max_attempts: u32,
    may_send: &dyn Fn() -> bool,
) -> Decision {
    let answer = match provider.status(&r.key) {
        Answer::Unknown if !may_send() => return Decision::Abandon,
        Answer::Unknown => provider.submit(&Submission {
            transaction_id: r.key.clone(),
            user_id: r.user_id.clone(),
            amount: r.amount,
            currency: r.currency.clone(),
        }),
        known => known,
    };
    let transient = |reason: String| {
        if r.attempts >= max_attempts {
            Decision::GiveUp {
                reason: format!("gave up after {} attempts: {reason}", r.attempts),
            }
        } else {
            Decision::Retry { reason }
        }
    };
    match answer {
        Answer::Known {
            status: Status::Succeeded,
            reference,
            ..
        } => Decision::Succeeded { reference },
        Answer::Known {
            status: Status::Failed,
            reference,
            message,
        } => Decision::Failed {
            reason: if message.is_empty() {
                "failed at the provider".into()
            } else {
                message
            },
            reference,
        },
        Answer::Known {
            status: Status::Pending,
            ..
        } => transient("the provider is still processing it".into()),
        Answer::Unknown => transient("the provider answered 404 to the payment".into()),
        Answer::Transient(reason) => transient(reason),
        Answer::Permanent(reason) => Decision::Failed {
            reason,
            reference: String::new(),
        },
    }
}

/// Writes a decision back with PAY.UPDATE.
pub fn apply(
    c: &mut dyn redis::ConnectionLike,
    r: &Record,
    d: &Decision,
) -> redis::RedisResult<()> {
    let result = match d {
        Decision::Succeeded { reference } => {
            store::update(c, &r.key, "succeeded", None, Some(reference))
        }
        Decision::Failed { reason, reference } => {
            store::update(c, &r.key, "failed", Some(reason), Some(reference))
        }
        Decision::GiveUp { reason } => store::update(c, &r.key, "failed", Some(reason), None),
        Decision::Retry { reason } => store::update(c, &r.key, "pending", Some(reason), None),
        Decision::Abandon => return Ok(()),
    };
    match result {
        Ok(_) => Ok(()),
        // Someone (the application) resolved it meanwhile, or it expired:
        // their word stands.
        Err(e) if matches!(e.code(), Some("TRANSITION") | Some("NOPAYMENT")) => {
            info!("txn={} already resolved elsewhere: {e}", r.key);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub struct Settings {
    pub consumer: String,
    pub lease: Duration,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub concurrency: usize,
}

/// Payments this round gave up on: the caller alerts about them.
pub type GaveUp = Vec<(Record, String)>;

/// Claims and finishes stale payments on one primary until none is left (or
/// shutdown), with `concurrency` workers.
pub fn drain(
    node: &Node,
    provider: &dyn Provider,
    s: &Settings,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) -> redis::RedisResult<GaveUp> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..s.concurrency.max(1))
            .map(|_| scope.spawn(|| worker(node, provider, s, metrics, shutdown)))
            .collect();
        let mut gave_up = Vec::new();
        let mut error = None;
        for w in workers {
            match w.join() {
                Ok(Ok(mut g)) => gave_up.append(&mut g),
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
            None => Ok(gave_up),
        }
    })
}

fn worker(
    node: &Node,
    provider: &dyn Provider,
    s: &Settings,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) -> redis::RedisResult<GaveUp> {
    let mut c = node.connect()?;
    let mut gave_up = Vec::new();
    while !shutdown.load(Ordering::Relaxed) {
        let claimed_at = Instant::now();
        let Some(r) = store::claim(&mut c, &s.consumer, 1, s.lease)?.pop() else {
            break;
        };
        metrics.claims.inc();
        let may_send = || claimed_at.elapsed() + s.timeout * 2 < s.lease;
        let d = decide(provider, &r, s.max_attempts, &may_send);
        apply(&mut c, &r, &d)?;
        metrics.outcome(d.outcome());
        match &d {
            Decision::Succeeded { reference } => {
                info!(
                    "txn={} attempt={} succeeded ref={reference}",
                    r.key, r.attempts
                )
            }
            Decision::Failed { reason, .. } => {
                info!("txn={} attempt={} failed: {reason}", r.key, r.attempts)
            }
            Decision::Retry { reason } => {
                info!(
                    "txn={} attempt={} still pending: {reason}",
                    r.key, r.attempts
                )
            }
            Decision::GiveUp { reason } => {
                warn!("txn={} {reason}", r.key);
                gave_up.push((r.clone(), reason.clone()));
            }
            Decision::Abandon => warn!(
                "txn={} lease too short to send it; left for the next claim",
                r.key
            ),
        }
    }
    Ok(gave_up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A provider that answers from a script and records what it was asked.
    struct Scripted {
        get: Answer,
        post: Answer,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Provider for Scripted {
        fn status(&self, _: &str) -> Answer {
            self.calls.lock().unwrap().push("GET");
            self.get.clone()
        }
        fn submit(&self, _: &Submission) -> Answer {
            self.calls.lock().unwrap().push("POST");
            self.post.clone()
        }
    }

    fn run(get: Answer, post: Answer, attempts: u32) -> (Decision, Vec<&'static str>) {
        let p = Scripted {
            get,
            post,
            calls: Mutex::new(Vec::new()),
        };
        let r = Record {
            key: "t".into(),
            attempts,
            ..Record::default()
        };
        let d = decide(&p, &r, 3, &|| true);
        let calls = p.calls.into_inner().unwrap();
        (d, calls)
    }

    fn known(status: Status) -> Answer {
        Answer::Known {
            status,
            reference: "ch_1".into(),
            message: String::new(),
        }
    }

    #[test]
    fn a_payment_the_provider_knows_is_never_sent_again() {
        for status in [Status::Succeeded, Status::Failed, Status::Pending] {
            let (_, calls) = run(known(status), known(Status::Succeeded), 1);
            assert_eq!(calls, ["GET"]);
        }
        let (d, _) = run(known(Status::Succeeded), Answer::Unknown, 1);
        assert_eq!(
            d,
            Decision::Succeeded {
                reference: "ch_1".into()
            }
        );
    }

    #[test]
    fn an_unknown_payment_is_sent_once() {
        let (d, calls) = run(Answer::Unknown, known(Status::Succeeded), 1);
        assert_eq!(calls, ["GET", "POST"]);
        assert_eq!(d.outcome(), "succeeded");
    }

    #[test]
    fn transient_errors_retry_until_the_last_attempt() {
        let (d, calls) = run(Answer::Transient("503".into()), Answer::Unknown, 1);
        assert_eq!(calls, ["GET"], "no POST after a failed GET");
        assert_eq!(
            d,
            Decision::Retry {
                reason: "503".into()
            }
        );
        let (d, _) = run(Answer::Unknown, Answer::Transient("409".into()), 2);
        assert_eq!(d.outcome(), "retry");
        let (d, _) = run(Answer::Transient("503".into()), Answer::Unknown, 3);
        assert_eq!(
            d,
            Decision::GiveUp {
                reason: "gave up after 3 attempts: 503".into()
            }
        );
    }

    #[test]
    fn a_permanent_refusal_fails_with_the_providers_message() {
        let (d, _) = run(Answer::Unknown, Answer::Permanent("card expired".into()), 1);
        assert_eq!(
            d,
            Decision::Failed {
                reason: "card expired".into(),
                reference: String::new()
            }
        );
    }

    #[test]
    fn no_post_without_enough_lease_left() {
        let p = Scripted {
            get: Answer::Unknown,
            post: known(Status::Succeeded),
            calls: Mutex::new(Vec::new()),
        };
        let r = Record::default();
        assert_eq!(decide(&p, &r, 3, &|| false), Decision::Abandon);
        assert_eq!(*p.calls.lock().unwrap(), ["GET"]);
    }
}
