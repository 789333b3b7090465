//! The payment provider ("bank"), reached over HTTP with JSON:
//!
//! - `GET {bank}/payments/{txn}` -> 200 `{"status", "reference"}`, or 404 if
//!   the provider never saw the payment;
//! - `POST {bank}/payments` with `Idempotency-Key: {txn}` -> 200/201 with the
//!   same body; 409 = still in progress; 429, 5xx, timeouts and refused
//!   connections are transient; any other 4xx is permanent.

use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// A payment as the provider needs it to charge.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Submission {
    pub transaction_id: String,
    pub user_id: String,
    pub amount: i64,
    pub currency: String,
}

/// What the provider says it did with a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
    Pending,
}

/// The answer to one provider call, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The provider knows the payment.
    Known {
        status: Status,
        reference: String,
        message: String,
    },
    /// 404 on GET: the provider never saw it.
    Unknown,
    /// Worth retrying later (409, 429, 5xx, timeouts, connection errors).
    Transient(String),
    /// The provider refused the payment for good (other 4xx on POST).
    Permanent(String),
}

/// The seam the worker depends on: tests may put a fake behind it.
pub trait Provider: Send + Sync {
    fn status(&self, transaction_id: &str) -> Answer;
    fn submit(&self, payment: &Submission) -> Answer;
}

/// Which call a latency sample belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Call {
    Get,
    Post,
}

/// The provider over HTTP.
pub struct HttpProvider {
    base: String,
    agent: ureq::Agent,
    /// Called with each call's duration (metrics).
    observe: Box<dyn Fn(Call, Duration) + Send + Sync>,
}

#[derive(Deserialize)]
struct Body {
    status: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

impl HttpProvider {
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        timeout: Duration,
        observe: Box<dyn Fn(Call, Duration) + Send + Sync>,
    ) -> HttpProvider {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(connect_timeout))
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        HttpProvider {
            base: base_url.trim_end_matches('/').to_string(),
            agent,
            observe,
        }
    }

    fn classify(
        call: Call,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Answer {
        let mut response = match result {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => return Answer::Transient("provider timed out".into()),
            Err(e) => return Answer::Transient(format!("provider unreachable: {e}")),
        };
        let code = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let body: Option<Body> = serde_json::from_str(&text).ok();
        let message = body
            .as_ref()
            .and_then(|b| b.message.clone().or_else(|| b.error.clone()))
            .unwrap_or_else(|| text.trim().chars().take(200).collect());
        match code {
            200 | 201 => match body.as_ref().and_then(|b| b.status.as_deref()) {
                Some(s) => {
                    let status = match s {
                        "succeeded" => Status::Succeeded,
                        "failed" => Status::Failed,
                        "pending" => Status::Pending,
                        other => {
                            return Answer::Transient(format!(
                                "provider answered an unknown status '{}'",
                                other.chars().take(40).collect::<String>()
                            ))
                        }
                    };
                    let reference = body.and_then(|b| b.reference).unwrap_or_default();
                    Answer::Known {
                        status,
                        reference,
                        message,
                    }
                }
                None => Answer::Transient(format!("provider answered {code} without a status")),
            },
            404 if matches!(call, Call::Get) => Answer::Unknown,
            409 => Answer::Transient("provider: payment still in progress (409)".into()),
            429 => Answer::Transient("provider rate limit (429)".into()),
            500..=599 => Answer::Transient(format!("provider error {code}")),
            400..=499 if matches!(call, Call::Post) => Answer::Permanent(if message.is_empty() {
                format!("provider refused the payment ({code})")
            } else {
                message
            }),
            // A 4xx on a status check says nothing about the payment (our
            // credentials or URL are wrong): never fail a payment for it.
            _ => Answer::Transient(format!("provider answered {code} to a status check")),
        }
    }
}

impl Provider for HttpProvider {
    fn status(&self, transaction_id: &str) -> Answer {
        let url = format!(
            "{}/payments/{}",
            self.base,
            utf8_percent_encode(transaction_id, NON_ALPHANUMERIC)
        );
        let started = Instant::now();
        let result = self.agent.get(&url).call();
        (self.observe)(Call::Get, started.elapsed());
        HttpProvider::classify(Call::Get, result)
    }

    fn submit(&self, payment: &Submission) -> Answer {
        let url = format!("{}/payments", self.base);
        let started = Instant::now();
        let result = self
            .agent
            .post(&url)
            .header("Idempotency-Key", &payment.transaction_id)
            .send_json(payment);
        (self.observe)(Call::Post, started.elapsed());
        HttpProvider::classify(Call::Post, result)
    }
}
