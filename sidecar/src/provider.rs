//! The payment provider ("bank"), reached over HTTP with JSON, and how its
//! answers are read (DESIGN.md, "The sidecar contract"):
//!
//! - `GET {bank}/payments/{txn}` -> 200 `{"status", "reference"}`, or 404
//!   with the JSON body `{"status":"not_found"}` when the provider never saw
//!   the payment;
//! - `POST {bank}/payments` with `Idempotency-Key: {txn}` -> 200/201 with the
//!   same body; 400, 402 and 422 with a JSON body are the provider's refusal.
//!
//! Only those answers say something about the payment. 401, 403, 404 (without
//! the `not_found` body), 405, 407, 413 and 415 mean the sidecar is not
//! talking to the provider as it should (a wrong URL, a proxy's page, bad
//! credentials): configuration errors. 408, 409, 425, 429, 5xx, timeouts,
//! resets and refused connections are transient, and so is anything else
//! this reader does not recognise: an answer that is not understood is never
//! taken for a verdict.

use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// What is escaped in the transaction id's path segment: everything but
/// letters, digits, `-`, `_` and `~` (`.` too, so `..` stays an id).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// The path of the status call for one transaction id.
pub fn status_path(transaction_id: &str) -> String {
    format!("/payments/{}", utf8_percent_encode(transaction_id, SEGMENT))
}

/// A payment as the provider needs it to charge.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Submission {
    pub transaction_id: String,
    pub user_id: String,
    pub amount: i64,
    pub currency: String,
}

/// What the provider says it did with a payment, in its own vocabulary: it
/// never says `unknown` (that is this side's word for not knowing what the
/// provider did), so it is not [`pay_proto::Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    Succeeded,
    Failed,
    /// The provider has it and is still processing it: not a verdict.
    Pending,
}

/// The answer to one provider call, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The provider knows the payment (200/201 with a status).
    Known {
        status: ProviderStatus,
        reference: String,
        message: String,
    },
    /// GET 404 with `{"status":"not_found"}`: the provider never saw it.
    NotFound,
    /// POST 400/402/422 with a JSON body: the provider refused the payment,
    /// with its message.
    Refused(String),
    /// The request did not reach the provider as intended (wrong URL, a
    /// proxy, credentials): says nothing about the payment. The text names
    /// the problem and is the same for every payment, so alerts can be
    /// deduplicated by it.
    Config(String),
    /// Worth asking again later: says nothing about the payment.
    Transient(String),
}

/// The seam the worker depends on: tests may put a fake behind it.
pub trait Provider: Send + Sync {
    fn status(&self, transaction_id: &str) -> Answer;
    fn submit(&self, payment: &Submission) -> Answer;
}

/// Which call a latency sample or an answer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Get,
    Post,
}

impl Call {
    /// The call as an operator reads it in an alert.
    fn route(self) -> &'static str {
        match self {
            Call::Get => "GET {bank-url}/payments/{id}",
            Call::Post => "POST {bank-url}/payments",
        }
    }
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

/// Reads one HTTP answer: the status code and the body text.
pub fn classify(call: Call, code: u16, text: &str) -> Answer {
    let json: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let body: Option<Body> = json
        .as_ref()
        .filter(|v| v.is_object())
        .and_then(|v| Body::deserialize(v).ok());
    let message = body
        .as_ref()
        .and_then(|b| b.message.clone().or_else(|| b.error.clone()))
        .unwrap_or_default();
    let status = body.as_ref().and_then(|b| b.status.as_deref());
    match code {
        200 | 201 => {
            let status = match status {
                Some("succeeded") => ProviderStatus::Succeeded,
                Some("failed") => ProviderStatus::Failed,
                Some("pending") => ProviderStatus::Pending,
                Some(other) => {
                    return Answer::Transient(format!(
                        "provider answered {code} with an unrecognised status '{}'",
                        other.chars().take(40).collect::<String>()
                    ))
                }
                None => {
                    return Answer::Transient(format!("provider answered {code} without a status"))
                }
            };
            Answer::Known {
                status,
                reference: body.and_then(|b| b.reference).unwrap_or_default(),
                message,
            }
        }
        404 if call == Call::Get && status == Some("not_found") => Answer::NotFound,
        400 | 402 | 422 if call == Call::Post && body.is_some() => {
            Answer::Refused(if message.trim().is_empty() {
                format!("provider refused the payment ({code})")
            } else {
                message.chars().take(500).collect()
            })
        }
        401 | 403 | 404 | 405 | 407 | 413 | 415 => Answer::Config(config_problem(call, code)),
        408 | 425 => Answer::Transient(format!("provider answered {code} (try again later)")),
        409 => Answer::Transient("provider: payment still in progress (409)".into()),
        429 => Answer::Transient("provider rate limit (429)".into()),
        500..=599 => Answer::Transient(format!("provider error {code}")),
        _ => Answer::Transient(format!(
            "provider answered {code} to {}: not an answer about the payment",
            call.route()
        )),
    }
}

/// The configuration problem an HTTP code names, the same for every payment.
fn config_problem(call: Call, code: u16) -> String {
    let hint = match code {
        401 => "401 Unauthorized: check the provider credentials",
        403 => "403 Forbidden: check the provider credentials and allow-lists",
        404 if call == Call::Get => {
            "404 without {\"status\":\"not_found\"} (a proxy's page or a wrong path): check --bank-url"
        }
        404 => "404 Not Found: check --bank-url",
        405 => "405 Method Not Allowed: check --bank-url",
        407 => "407 Proxy Authentication Required: check the proxy settings",
        413 => "413 Content Too Large: the provider refuses the request as sent",
        _ => "415 Unsupported Media Type: the provider refuses the request as sent",
    };
    format!(
        "configuration error: the provider answered {} {hint}",
        call.route()
    )
}

/// The provider over HTTP.
pub struct HttpProvider {
    base: String,
    agent: ureq::Agent,
    /// Called with each call's duration (metrics).
    observe: Box<dyn Fn(Call, Duration) + Send + Sync>,
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

    fn read(call: Call, result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut response = match result {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => return Answer::Transient("provider timed out".into()),
            Err(e) => return Answer::Transient(format!("provider unreachable: {e}")),
        };
        let code = response.status().as_u16();
        match response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
        {
            Ok(text) => classify(call, code, &text),
            // A body cut short is no answer, whatever the status line said.
            Err(ureq::Error::Timeout(_)) => Answer::Transient(format!(
                "provider timed out sending its {code} answer's body"
            )),
            Err(e) => Answer::Transient(format!("provider's {code} answer unreadable: {e}")),
        }
    }
}

impl Provider for HttpProvider {
    fn status(&self, transaction_id: &str) -> Answer {
        let url = format!("{}{}", self.base, status_path(transaction_id));
        let started = Instant::now();
        let result = self.agent.get(&url).call();
        let answer = HttpProvider::read(Call::Get, result);
        (self.observe)(Call::Get, started.elapsed());
        answer
    }

    fn submit(&self, payment: &Submission) -> Answer {
        let url = format!("{}/payments", self.base);
        let started = Instant::now();
        let result = self
            .agent
            .post(&url)
            .header("Idempotency-Key", &payment.transaction_id)
            .send_json(payment);
        let answer = HttpProvider::read(Call::Post, result);
        (self.observe)(Call::Post, started.elapsed());
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_FOUND: &str = r#"{"status":"not_found"}"#;

    fn is_config(a: &Answer) -> bool {
        matches!(a, Answer::Config(_))
    }

    fn is_transient(a: &Answer) -> bool {
        matches!(a, Answer::Transient(_))
    }

    #[test]
    fn a_definite_answer_is_read_with_its_reference_and_message() {
        let a = classify(
            Call::Get,
            200,
            r#"{"status":"succeeded","reference":"ch_1"}"#,
        );
        assert_eq!(
            a,
            Answer::Known {
                status: ProviderStatus::Succeeded,
                reference: "ch_1".into(),
                message: String::new()
            }
        );
        let a = classify(
            Call::Post,
            201,
            r#"{"status":"failed","reference":"ch_2","message":"card declined"}"#,
        );
        assert_eq!(
            a,
            Answer::Known {
                status: ProviderStatus::Failed,
                reference: "ch_2".into(),
                message: "card declined".into()
            }
        );
    }

    #[test]
    fn a_404_means_never_seen_only_with_the_not_found_body() {
        assert_eq!(classify(Call::Get, 404, NOT_FOUND), Answer::NotFound);
        for body in [
            "",
            "<html><body>404 Not Found</body></html>",
            "{}",
            r#"{"message":"no such route"}"#,
            r#"{"status":"gone"}"#,
            r#"["not_found"]"#,
        ] {
            let a = classify(Call::Get, 404, body);
            assert!(is_config(&a), "GET 404 {body:?} read as {a:?}");
        }
        // A POST's 404 is never "not found": the route is wrong.
        assert!(is_config(&classify(Call::Post, 404, NOT_FOUND)));
    }

    #[test]
    fn gateway_and_credential_codes_are_configuration_errors_on_both_calls() {
        for call in [Call::Get, Call::Post] {
            for code in [401, 403, 404, 405, 407, 413, 415] {
                let a = classify(call, code, r#"{"message":"nope"}"#);
                let Answer::Config(problem) = &a else {
                    panic!("{call:?} {code} read as {a:?}");
                };
                assert!(problem.contains(&code.to_string()), "{problem}");
                assert!(problem.starts_with("configuration error"), "{problem}");
            }
        }
    }

    #[test]
    fn a_refusal_needs_a_post_a_refusal_code_and_a_json_body() {
        for code in [400, 402, 422] {
            assert_eq!(
                classify(Call::Post, code, r#"{"message":"card expired"}"#),
                Answer::Refused("card expired".into())
            );
            assert_eq!(
                classify(Call::Post, code, r#"{"error":"insufficient funds"}"#),
                Answer::Refused("insufficient funds".into())
            );
            assert_eq!(
                classify(Call::Post, code, "{}"),
                Answer::Refused(format!("provider refused the payment ({code})"))
            );
            // Without a JSON body it is not the provider speaking.
            assert!(is_transient(&classify(Call::Post, code, "Bad Request")));
            assert!(is_transient(&classify(Call::Post, code, "")));
            // A status check is never refused.
            assert!(is_transient(&classify(
                Call::Get,
                code,
                r#"{"message":"x"}"#
            )));
        }
    }

    #[test]
    fn transient_codes_and_anything_unrecognised_are_transient() {
        for call in [Call::Get, Call::Post] {
            for code in [
                408, 409, 425, 429, 500, 502, 503, 504, 599, 302, 204, 418, 451,
            ] {
                let a = classify(call, code, r#"{"message":"x"}"#);
                assert!(is_transient(&a), "{call:?} {code} read as {a:?}");
            }
        }
        for body in [
            "",
            "ok",
            "{}",
            r#"{"status":"maybe"}"#,
            r#"{"status":"not_found"}"#,
        ] {
            let a = classify(Call::Get, 200, body);
            assert!(is_transient(&a), "200 {body:?} read as {a:?}");
        }
    }

    #[test]
    fn the_transaction_id_is_one_escaped_path_segment() {
        assert_eq!(status_path("txn_1-a~b"), "/payments/txn_1-a~b");
        assert_eq!(status_path("a/b c"), "/payments/a%2Fb%20c");
        assert_eq!(status_path(".."), "/payments/%2E%2E");
        assert_eq!(status_path("é"), "/payments/%C3%A9");
    }

    #[test]
    fn configuration_problems_name_the_call_but_no_payment() {
        let get = classify(Call::Get, 404, "Not Found");
        let post = classify(Call::Post, 404, "Not Found");
        assert_ne!(get, post);
        let Answer::Config(text) = get else {
            unreachable!()
        };
        assert!(text.contains("GET {bank-url}/payments/{id}"), "{text}");
        assert!(text.contains("--bank-url"), "{text}");
    }
}
