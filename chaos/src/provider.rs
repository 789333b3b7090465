//! The payment provider stand-in, with a ledger: every charge and every
//! decline it made, with the Idempotency-Key, the transaction id, the user
//! and the amount, and who asked (the application or sidecar 1 or 2, told
//! apart by the path prefix of their bank URL: `/app`, `/sc1`, `/sc2`).
//!
//! It speaks the provider contract (DESIGN.md): `GET /payments/{txn}` is 200
//! with the payment's status, or 404 `{"status":"not_found"}`; `POST
//! /payments` with `Idempotency-Key: {txn}` charges (201), or declines (402
//! with a JSON body: a definite refusal), amounts ending in 13 minor units
//! always, and every new payment during a decline window.
//!
//! Idempotency as a real provider does it: a POST whose key is in progress
//! gets 409; a POST whose key was answered less than the key's retention ago
//! gets the same answer again; after that the key is forgotten and a POST is
//! a new charge (Stripe keeps keys 24 hours; here a few seconds, compressed
//! like every other timing). So a client that sends again without asking
//! first (GET) can charge twice, and the ledger shows it.
//!
//! Faults, from the seeded schedule (windows on the run's clock) and at a
//! small random rate: outages (the connection closes unanswered), 5xx
//! bursts, slow answers past the sidecar's timeout that still charge, and
//! replies dropped after the charge.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use testkit::http::{self, HttpRequest, HttpResponse};

use crate::clock;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long the provider remembers an Idempotency-Key after answering it.
pub const KEY_RETENTION: Duration = Duration::from_secs(2);
/// How long a slow answer takes (past the sidecar's --timeout and the
/// application's own).
pub const SLOW: (u64, u64) = (900, 1400);

/// The provider's faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Fault {
    /// Every call: the connection closes unanswered.
    Outage,
    /// Every call: 503 before anything is done.
    Errors,
    /// Every call answers late (and a POST still charges).
    Slow,
    /// Every call is processed (a POST charges) and the reply is lost.
    DropReplies,
    /// Every new payment is declined (402 "insufficient funds").
    Declines,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Outage => "provider outage (connections closed unanswered)",
            Fault::Errors => "provider 5xx burst",
            Fault::Slow => "provider slow past the timeouts (still charging)",
            Fault::DropReplies => "provider replies dropped after charging",
            Fault::Declines => "provider declines every new payment",
        }
    }
}

/// A scheduled fault: from `start` to `end` (ms since the run began).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

/// Random faults per call, on top of the windows (parts per thousand).
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub errors: u32,
    pub slow: u32,
    pub drop: u32,
}

/// One charge or decline in the ledger.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub at_ms: u64,
    pub txn: String,
    /// The Idempotency-Key header ("" when absent).
    pub key: String,
    pub user: String,
    pub amount: i64,
    pub caller: String,
    pub reference: String,
}

#[derive(Clone, Debug)]
enum KeyState {
    InFlight,
    Done {
        at: Instant,
        code: u16,
        body: String,
    },
}

#[derive(Default)]
struct Ledger {
    /// What GET answers: the last verdict per transaction.
    payments: HashMap<String, (String, String, String)>,
    keys: HashMap<String, KeyState>,
    charges: Vec<Entry>,
    declines: Vec<Entry>,
    next_ref: u64,
}

struct State {
    windows: Vec<Window>,
    rates: Rates,
    rng: Mutex<fastrand::Rng>,
    ledger: Mutex<Ledger>,
    /// Calls in progress by caller: app, sidecar 1, sidecar 2.
    in_flight: [AtomicUsize; 3],
    counts: Mutex<BTreeMap<String, u64>>,
}

pub struct Provider {
    /// The base URL; callers append `/app`, `/sc1`, `/sc2`.
    pub url: String,
    state: Arc<State>,
}

const CALLERS: [&str; 3] = ["app", "sidecar-1", "sidecar-2"];

impl Provider {
    pub fn start(windows: Vec<Window>, rates: Rates, seed: u64) -> std::io::Result<Provider> {
        let state = Arc::new(State {
            windows,
            rates,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            ledger: Mutex::new(Ledger::default()),
            in_flight: Default::default(),
            counts: Mutex::new(BTreeMap::new()),
        });
        let s = state.clone();
        let addr = http::serve(move |rq| handle(&s, rq))?;
        Ok(Provider {
            url: format!("http://{addr}"),
            state,
        })
    }

    /// Calls of sidecar `i` (0-based) in progress.
    pub fn sidecar_in_flight(&self, i: usize) -> usize {
        self.state.in_flight[1 + i.min(1)].load(Ordering::Relaxed)
    }

    pub fn charges(&self) -> Vec<Entry> {
        lock(&self.state.ledger).charges.clone()
    }

    pub fn declines(&self) -> Vec<Entry> {
        lock(&self.state.ledger).declines.clone()
    }

    /// Requests and faults, counted by name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.state.counts).clone()
    }
}

fn count(state: &State, what: String) {
    *lock(&state.counts).entry(what).or_default() += 1;
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn json(v: serde_json::Value) -> String {
    v.to_string()
}

/// The answer, or None: the connection closes unanswered.
fn handle(state: &State, rq: &HttpRequest) -> Option<HttpResponse> {
    let path = rq.path.trim_start_matches('/');
    let (prefix, rest) = path.split_once('/').unwrap_or((path, ""));
    let caller = match prefix {
        "app" => 0,
        "sc1" => 1,
        "sc2" => 2,
        _ => return Some(HttpResponse::not_found_page()),
    };
    let id = rest.strip_prefix("payments/").filter(|id| !id.is_empty());
    let route = match (rq.method.as_str(), rest, id) {
        ("POST", "payments", _) => None,
        ("GET", _, Some(id)) if !id.contains('/') => Some(id.to_string()),
        _ => return Some(HttpResponse::not_found_page()),
    };
    let call = if route.is_some() { "GET" } else { "POST" };
    count(state, format!("{call} by {}", CALLERS[caller]));
    state.in_flight[caller].fetch_add(1, Ordering::Relaxed);
    let _guard = InFlight(&state.in_flight[caller]);

    let now_ms = clock::ms();
    let active = |f: Fault| {
        state
            .windows
            .iter()
            .any(|w| w.fault == f && w.start_ms <= now_ms && now_ms < w.end_ms)
    };
    let (roll_errors, roll_slow, roll_drop, slow_ms) = {
        let mut rng = lock(&state.rng);
        (
            rng.u32(..1000) < state.rates.errors,
            rng.u32(..1000) < state.rates.slow,
            rng.u32(..1000) < state.rates.drop,
            rng.u64(SLOW.0..SLOW.1),
        )
    };
    if active(Fault::Outage) {
        count(state, "fault: connection closed (outage)".into());
        return None;
    }
    if active(Fault::Errors) || roll_errors {
        count(state, "fault: 503".into());
        return Some(HttpResponse::new(
            503,
            json(serde_json::json!({"message": "try again"})),
        ));
    }
    let slow = (active(Fault::Slow) || roll_slow).then_some(Duration::from_millis(slow_ms));
    if slow.is_some() {
        count(state, format!("fault: slow {call}"));
    }
    let (code, body) = match route {
        Some(id) => {
            if let Some(d) = slow {
                std::thread::sleep(d);
            }
            get(state, &id)
        }
        None => post(state, rq, CALLERS[caller], slow, active(Fault::Declines)),
    };
    if active(Fault::DropReplies) || roll_drop {
        count(
            state,
            format!("fault: {call} reply dropped after processing"),
        );
        return None;
    }
    Some(HttpResponse::new(code, body))
}

fn get(state: &State, raw_id: &str) -> (u16, String) {
    let id = raw_id.replace("%3A", ":").replace("%3a", ":");
    let ledger = lock(&state.ledger);
    if let Some((status, reference, message)) = ledger.payments.get(&id) {
        return (
            200,
            json(serde_json::json!({"status": status, "reference": reference, "message": message})),
        );
    }
    if matches!(ledger.keys.get(&id), Some(KeyState::InFlight)) {
        return (200, json(serde_json::json!({"status": "pending"})));
    }
    (404, json(serde_json::json!({"status": "not_found"})))
}

fn post(
    state: &State,
    rq: &HttpRequest,
    caller: &str,
    slow: Option<Duration>,
    decline_window: bool,
) -> (u16, String) {
    let body: serde_json::Value = serde_json::from_slice(&rq.body).unwrap_or_default();
    let (Some(txn), Some(user), Some(amount)) = (
        body["transaction_id"].as_str(),
        body["user_id"].as_str(),
        body["amount"].as_i64(),
    ) else {
        return (
            400,
            json(serde_json::json!({"message": "bad request body"})),
        );
    };
    let key = rq.header("Idempotency-Key").unwrap_or_default().to_string();
    if !key.is_empty() && key != txn {
        return (
            400,
            json(serde_json::json!({"message": "Idempotency-Key differs from transaction_id"})),
        );
    }
    if !key.is_empty() {
        let mut ledger = lock(&state.ledger);
        match ledger.keys.get(&key) {
            Some(KeyState::InFlight) => {
                count(state, "409: same key in progress".into());
                return (
                    409,
                    json(
                        serde_json::json!({"message": "a request with this Idempotency-Key is in progress"}),
                    ),
                );
            }
            Some(KeyState::Done { at, code, body }) if at.elapsed() < KEY_RETENTION => {
                count(state, "POST answered again (same key)".into());
                return (*code, body.clone());
            }
            _ => {
                ledger.keys.insert(key.clone(), KeyState::InFlight);
            }
        }
    }
    if let Some(d) = slow {
        std::thread::sleep(d);
    }
    let mut ledger = lock(&state.ledger);
    ledger.next_ref += 1;
    let reference = format!("ch_{}", ledger.next_ref);
    let entry = Entry {
        at_ms: clock::ms(),
        txn: txn.into(),
        key: key.clone(),
        user: user.into(),
        amount,
        caller: caller.into(),
        reference: reference.clone(),
    };
    let declined = amount % 100 == 13 || decline_window;
    let (code, status, message) = if declined {
        let why = if amount % 100 == 13 {
            "card declined"
        } else {
            "insufficient funds"
        };
        ledger.declines.push(entry);
        (402, "failed", why)
    } else {
        ledger.charges.push(entry);
        (201, "succeeded", "")
    };
    count(
        state,
        format!(
            "{} by {caller}",
            if declined { "decline" } else { "charge" }
        ),
    );
    let body =
        json(serde_json::json!({"status": status, "reference": reference, "message": message}));
    ledger.payments.insert(
        txn.into(),
        (status.into(), reference.clone(), message.into()),
    );
    if !key.is_empty() {
        ledger.keys.insert(
            key,
            KeyState::Done {
                at: Instant::now(),
                code,
                body: body.clone(),
            },
        );
    }
    (code, body)
}
