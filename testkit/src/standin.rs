//! Stand-ins for the payment provider and for Slack: real HTTP servers on
//! 127.0.0.1, for the demo and the end-to-end tests. The bank speaks the
//! provider contract (DESIGN.md): `GET /payments/{id}` answers 200 with the
//! payment or 404 `{"status":"not_found"}`; `POST /payments` charges once
//! per Idempotency-Key; any other path gets a plain 404 page, as a web
//! server or proxy would answer a wrong URL. It can fail at a settable rate
//! (5xx, hangs past the client's timeout, responses lost after processing),
//! go down entirely, or answer from a per-payment script; it records every
//! request and counts what it saw, including any payment asked about by two
//! callers at the same moment.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::http::{serve, HttpRequest, HttpResponse};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A forced answer for the next call about one payment.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// Answer this status code and body without touching the payment.
    Reply(u16, String),
    /// Hang for this long, then answer 503.
    Hang(Duration),
    /// Wait this long, then do what the call asks (a POST charges) and answer.
    Slow(Duration),
    /// Answer as the bank would anyway.
    Normal,
}

/// One request the bank received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The POST body's `transaction_id`.
    pub body_transaction_id: Option<String>,
}

#[derive(Clone, Debug)]
struct Stored {
    status: String,
    reference: String,
    message: String,
}

#[derive(Default)]
struct BankState {
    payments: Mutex<HashMap<String, Stored>>,
    creations: Mutex<HashMap<String, u32>>,
    in_flight: Mutex<HashSet<String>>,
    scripts: Mutex<HashMap<String, VecDeque<Scripted>>>,
    seen: Mutex<Vec<Seen>>,
    overlaps: AtomicU64,
    gets: AtomicU64,
    posts: AtomicU64,
    next_ref: AtomicU64,
    outage: AtomicBool,
    /// Parts per million of calls that fail.
    fail_ppm: AtomicU32,
    latency_ms: AtomicU64,
    hang_ms: AtomicU64,
    rng: Mutex<Option<fastrand::Rng>>,
}

/// The stand-in provider.
pub struct Bank {
    pub url: String,
    state: Arc<BankState>,
}

#[derive(Deserialize)]
struct PostBody {
    transaction_id: String,
    amount: i64,
}

impl Bank {
    /// Starts on a free loopback port. `fail_rate` in 0..=1; failures hang
    /// for `hang` (set it past the client's timeout).
    pub fn start(fail_rate: f64, latency: Duration, hang: Duration, seed: u64) -> Bank {
        let state = Arc::new(BankState::default());
        lock(&state.rng).replace(fastrand::Rng::with_seed(seed));
        state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
        state
            .hang_ms
            .store(hang.as_millis() as u64, Ordering::Relaxed);
        let s = state.clone();
        let addr = serve(move |rq| handle(&s, rq)).expect("bind a loopback port");
        let bank = Bank {
            url: format!("http://{addr}"),
            state,
        };
        bank.set_fail_rate(fail_rate);
        bank
    }

    /// Starts a bank that never fails on its own and answers at once:
    /// outages, scripts and what it knows are the test's to set.
    pub fn reliable() -> Bank {
        Bank::start(0.0, Duration::ZERO, Duration::ZERO, 0)
    }

    pub fn set_fail_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        self.state.fail_ppm.store(ppm, Ordering::Relaxed);
    }

    /// While down, every call answers 503.
    pub fn set_outage(&self, down: bool) {
        self.state.outage.store(down, Ordering::Relaxed);
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    /// Forces the next answers about `txn`.
    pub fn script(&self, txn: &str, answers: Vec<Scripted>) {
        lock(&self.state.scripts).insert(txn.into(), answers.into());
    }

    /// Records a payment as if the application had sent it earlier.
    pub fn know(&self, txn: &str, status: &str, reference: &str) {
        lock(&self.state.payments).insert(
            txn.into(),
            Stored {
                status: status.into(),
                reference: reference.into(),
                message: String::new(),
            },
        );
        *lock(&self.state.creations).entry(txn.into()).or_default() += 1;
    }

    /// Changes what the bank says about a payment it already has (it
    /// finished processing it), without creating it again.
    pub fn settle(&self, txn: &str, status: &str, reference: &str) {
        if let Some(p) = lock(&self.state.payments).get_mut(txn) {
            p.status = status.into();
            p.reference = reference.into();
        }
    }

    /// How many times the bank created (charged) each payment.
    pub fn creations(&self) -> HashMap<String, u32> {
        lock(&self.state.creations).clone()
    }

    pub fn status_of(&self, txn: &str) -> Option<String> {
        lock(&self.state.payments)
            .get(txn)
            .map(|s| s.status.clone())
    }

    /// Calls that arrived about a payment while another call about the same
    /// payment was in flight.
    pub fn overlaps(&self) -> u64 {
        self.state.overlaps.load(Ordering::Relaxed)
    }

    pub fn gets(&self) -> u64 {
        self.state.gets.load(Ordering::Relaxed)
    }

    pub fn posts(&self) -> u64 {
        self.state.posts.load(Ordering::Relaxed)
    }
}

fn payment_json(s: &Stored) -> String {
    serde_json::json!({"status": s.status, "reference": s.reference, "message": s.message})
        .to_string()
}

fn handle(state: &BankState, rq: &HttpRequest) -> Option<HttpResponse> {
    let is_post = rq.method == "POST";
    if is_post {
        state.posts.fetch_add(1, Ordering::Relaxed);
    } else {
        state.gets.fetch_add(1, Ordering::Relaxed);
    }
    lock(&state.seen).push(Seen {
        method: rq.method.clone(),
        path: rq.path.clone(),
        idempotency_key: rq.header("Idempotency-Key").map(str::to_string),
        body_transaction_id: serde_json::from_slice::<serde_json::Value>(&rq.body)
            .ok()
            .and_then(|v| v["transaction_id"].as_str().map(str::to_string)),
    });
    let id = rq
        .path
        .strip_prefix("/payments/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let txn = match (rq.method.as_str(), rq.path.as_str(), id) {
        ("POST", "/payments", _) => rq.header("Idempotency-Key").unwrap_or_default().to_string(),
        ("GET", _, Some(raw)) => percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
        _ => return Some(HttpResponse::not_found_page()),
    };
    if !lock(&state.in_flight).insert(txn.clone()) {
        state.overlaps.fetch_add(1, Ordering::Relaxed);
    }
    let answer = answer(state, rq, is_post, &txn);
    lock(&state.in_flight).remove(&txn);
    // None: the response is lost (the connection closes without one).
    answer.map(|(code, body)| HttpResponse::new(code, body))
}

/// The bank's answer, or None for a response that is lost on the way.
fn answer(state: &BankState, rq: &HttpRequest, is_post: bool, txn: &str) -> Option<(u16, String)> {
    std::thread::sleep(Duration::from_millis(
        state.latency_ms.load(Ordering::Relaxed),
    ));
    if state.outage.load(Ordering::Relaxed) {
        return Some((503, r#"{"message":"provider outage"}"#.into()));
    }
    // Popped first, so the lock is not held while a scripted hang sleeps.
    let scripted = lock(&state.scripts)
        .get_mut(txn)
        .and_then(VecDeque::pop_front);
    match scripted {
        Some(Scripted::Reply(code, body)) => return Some((code, body)),
        Some(Scripted::Hang(d)) => {
            std::thread::sleep(d);
            return Some((503, "{}".into()));
        }
        Some(Scripted::Slow(d)) => std::thread::sleep(d),
        Some(Scripted::Normal) | None => {}
    }
    // Random failures: before processing (5xx or a hang), or after it (the
    // payment is charged but the response is lost).
    let roll = lock(&state.rng)
        .as_mut()
        .map_or(u32::MAX, |r| r.u32(..1_000_000));
    let failing = roll < state.fail_ppm.load(Ordering::Relaxed);
    let failure = roll % 3;
    if failing && failure == 0 {
        return Some((503, r#"{"message":"try again"}"#.into()));
    }
    if failing && failure == 1 {
        std::thread::sleep(Duration::from_millis(state.hang_ms.load(Ordering::Relaxed)));
        return Some((503, "{}".into()));
    }
    let result = if is_post {
        let Ok(p) = serde_json::from_slice::<PostBody>(&rq.body) else {
            return Some((400, r#"{"message":"bad request body"}"#.into()));
        };
        if p.transaction_id != txn {
            return Some((
                400,
                r#"{"message":"Idempotency-Key differs from transaction_id"}"#.into(),
            ));
        }
        let mut payments = lock(&state.payments);
        let stored = payments.entry(txn.to_string()).or_insert_with(|| {
            *lock(&state.creations).entry(txn.to_string()).or_default() += 1;
            let n = state.next_ref.fetch_add(1, Ordering::Relaxed);
            // Amounts ending in 13 minor units are declined: the failed path.
            let declined = p.amount % 100 == 13;
            Stored {
                status: if declined { "failed" } else { "succeeded" }.into(),
                reference: format!("ch_{n}"),
                message: if declined {
                    "card declined".into()
                } else {
                    String::new()
                },
            }
        });
        (201, payment_json(stored))
    } else {
        match lock(&state.payments).get(txn) {
            Some(s) => (200, payment_json(s)),
            None => (404, r#"{"status":"not_found"}"#.into()),
        }
    };
    if failing {
        return None;
    }
    Some(result)
}

/// The Slack stand-in: records (and optionally prints) every message.
pub struct Slack {
    pub url: String,
    state: Arc<SlackState>,
}

#[derive(Default)]
struct SlackState {
    messages: Mutex<Vec<String>>,
    down: AtomicBool,
    rate_limited: AtomicU32,
    refused: AtomicU64,
    print: AtomicBool,
}

impl Slack {
    pub fn start(print: bool) -> Slack {
        let state = Arc::new(SlackState::default());
        state.print.store(print, Ordering::Relaxed);
        let s = state.clone();
        let addr = serve(move |rq| {
            if s.down.load(Ordering::Relaxed) {
                s.refused.fetch_add(1, Ordering::Relaxed);
                return Some(HttpResponse::new(503, "down"));
            }
            let limited = s
                .rate_limited
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if limited {
                s.refused.fetch_add(1, Ordering::Relaxed);
                let mut r = HttpResponse::new(429, "rate_limited");
                r.headers.push(("Retry-After", "1".into()));
                return Some(r);
            }
            let body = String::from_utf8_lossy(&rq.body).into_owned();
            let text = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["text"].as_str().map(str::to_string))
                .unwrap_or(body);
            if s.print.load(Ordering::Relaxed) {
                for line in text.lines() {
                    println!("    [slack] {line}");
                }
            }
            lock(&s.messages).push(text);
            Some(HttpResponse::new(200, "ok"))
        })
        .expect("bind a loopback port");
        Slack {
            url: format!("http://{addr}/services/T000/B000/XXXX"),
            state,
        }
    }

    pub fn messages(&self) -> Vec<String> {
        lock(&self.state.messages).clone()
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::Relaxed);
    }

    /// The next `n` posts get 429 with Retry-After: 1.
    pub fn rate_limit(&self, n: u32) {
        self.state.rate_limited.store(n, Ordering::Relaxed);
    }

    /// Posts refused (down or rate-limited).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }
}
