//! The application: threads doing what a payment service does with
//! redis-pay. Each story is one customer's checkout, with its own user and
//! amount, and one or two clicks (a double click runs concurrently). A click:
//!
//! 1. `PAY.CACHE key user amount USD BRIEF`, retried after a timeout or a
//!    lost connection (the primary is found through the Sentinels, as a
//!    client library does). `duplicate`: another click, or an earlier try of
//!    this one, has it; nothing to charge.
//! 2. `created`: `WAIT 1` on the same connection. Only a write a replica
//!    acknowledged is charged; without it the customer is told
//!    "processing", and a payment that survived is the sidecar's to finish.
//! 3. The charge: `POST /payments` with the transaction id as
//!    Idempotency-Key. A lost reply (timeout, reset, 5xx, 409) is sometimes
//!    retried once with the same key, else left to the sidecar.
//! 4. `PAY.UPDATE` with the provider's definite answer, except when the
//!    application "crashes" (by plan) before charging or before updating.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Value};

use crate::history::{History, Op, Story};
use crate::redisio;
use crate::settings::{APP_HTTP_TIMEOUT, APP_REDIS_TIMEOUT, WAIT_MS, WAIT_TRIES};

static NEXT_STORY: AtomicU64 = AtomicU64::new(1);

/// Error codes that are answers about the payment, not about the connection.
const ANSWERS: &[&str] = &[
    "MISMATCH",
    "TRANSITION",
    "FENCED",
    "NOPAYMENT",
    "WRONGTYPE",
    "ERR",
];

fn is_answer(e: &RedisError) -> bool {
    e.code().is_some_and(|c| ANSWERS.contains(&c))
}

fn error_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    }
}

/// A connection to the primary, found through the Sentinels.
struct Link {
    sentinels: Vec<u16>,
    conn: Option<Connection>,
}

impl Link {
    fn get(&mut self) -> Result<&mut Connection, String> {
        if self.conn.is_none() {
            let p = redisio::primary(&self.sentinels).ok_or("no Sentinel names a primary")?;
            let mut c = redisio::connect(p, APP_REDIS_TIMEOUT).map_err(|e| e.to_string())?;
            if redisio::role(&mut c).as_deref() != Some("master") {
                return Err(format!("{p} is not a primary (yet)"));
            }
            self.conn = Some(c);
        }
        self.conn.as_mut().ok_or_else(|| "no connection".into())
    }

    fn call<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        let c = self.get()?;
        match cmd.query::<T>(c) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !is_answer(&e) {
                    self.conn = None;
                }
                Err(error_text(&e))
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Plan {
    double_click: bool,
    crash_before_charge: bool,
    crash_before_update: bool,
    retry_lost_charge: bool,
}

struct Checkout {
    n: u64,
    key: String,
    txn: String,
    user: String,
    amount: i64,
    plan: Plan,
}

enum Charged {
    Succeeded(String),
    Declined(String),
    Lost(String),
}

struct Client {
    id: u16,
    link: Link,
    agent: ureq::Agent,
    bank: String,
    history: Arc<History>,
}

/// Starts `n` application threads that run until `stop_at`.
pub fn start(
    n: u16,
    seed: u64,
    stop_at: Instant,
    sentinels: Vec<u16>,
    bank_url: &str,
    history: Arc<History>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|id| {
            let (sentinels, bank, history) = (
                sentinels.clone(),
                format!("{bank_url}/app"),
                history.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(
                    seed ^ (u64::from(id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                while Instant::now() < stop_at {
                    let story = plan_story(&mut rng);
                    run_story(id, &sentinels, &bank, &history, &story, &mut rng);
                    std::thread::sleep(Duration::from_millis(rng.u64(20..120)));
                }
            })
        })
        .collect()
}

fn plan_story(rng: &mut fastrand::Rng) -> Checkout {
    let n = NEXT_STORY.fetch_add(1, Ordering::Relaxed);
    let mut amount = 100 * rng.i64(1..500) + rng.i64(0..100);
    if amount % 100 == 13 {
        amount += 1;
    }
    // Amounts ending in 13 minor units are always declined by the provider.
    if rng.u32(..100) < 6 {
        amount = amount - amount % 100 + 13;
    }
    Checkout {
        n,
        key: format!("payment:t{n:06}"),
        txn: format!("t{n:06}"),
        user: format!("u{n}"),
        amount,
        plan: Plan {
            double_click: rng.u32(..100) < 25,
            crash_before_charge: rng.u32(..100) < 4,
            crash_before_update: rng.u32(..100) < 12,
            retry_lost_charge: rng.u32(..100) < 40,
        },
    }
}

fn client(id: u16, sentinels: &[u16], bank: &str, history: &Arc<History>) -> Client {
    Client {
        id,
        link: Link {
            sentinels: sentinels.to_vec(),
            conn: None,
        },
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(APP_HTTP_TIMEOUT))
            .build()
            .into(),
        bank: bank.into(),
        history: history.clone(),
    }
}

fn run_story(
    id: u16,
    sentinels: &[u16],
    bank: &str,
    history: &Arc<History>,
    s: &Checkout,
    rng: &mut fastrand::Rng,
) {
    history.story(
        s.n,
        Story {
            key: s.key.clone(),
            txn: s.txn.clone(),
            user: s.user.clone(),
            amount: s.amount,
            ..Story::default()
        },
    );
    let mut first = client(id, sentinels, bank, history);
    if !s.plan.double_click {
        first.click(s, 1);
        return;
    }
    let delay = Duration::from_millis(rng.u64(0..30));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(delay);
            let mut second = client(id, sentinels, bank, history);
            second.click(s, 2);
        });
        first.click(s, 1);
    });
}

impl Client {
    fn op(&self, s: &Checkout, click: u8, kind: &'static str, start_ms: u64, result: String) {
        self.history.record(Op {
            start_ms,
            end_ms: self.history.now_ms(),
            client: self.id,
            click,
            story: s.n,
            kind,
            result,
        });
    }

    fn click(&mut self, s: &Checkout, click: u8) {
        // 1. PAY.CACHE, retried after timeouts and lost connections.
        let mut created = false;
        for attempt in 0..4 {
            let t0 = self.history.now_ms();
            let r: Result<Value, String> = self.link.call(
                redis::cmd("PAY.CACHE")
                    .arg(&s.key)
                    .arg(&s.user)
                    .arg(s.amount)
                    .arg("USD")
                    .arg("BRIEF"),
            );
            match r.map(|v| redisio::record(&v)) {
                Ok(Some(rec)) => {
                    let outcome = rec.get("outcome").cloned().unwrap_or_default();
                    let status = rec.get("status").cloned().unwrap_or_default();
                    self.op(s, click, "cache", t0, format!("{outcome} {status}"));
                    if outcome == "created" {
                        created = true;
                        self.history.update_story(s.n, |st| st.created += 1);
                    }
                    break;
                }
                Ok(None) => {
                    self.op(s, click, "cache", t0, "error: not a record".into());
                    return;
                }
                Err(e) => {
                    let answer = ANSWERS.iter().any(|c| e.starts_with(c));
                    self.op(s, click, "cache", t0, format!("error: {e}"));
                    if answer || attempt == 3 {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(150 * (attempt + 1)));
                }
            }
        }
        // `duplicate`: another click, or an earlier try of this one, has it.
        if !created {
            return;
        }
        // 2. WAIT 1 on the connection that wrote.
        let mut acknowledged = false;
        for _ in 0..WAIT_TRIES {
            let t0 = self.history.now_ms();
            let Some(c) = self.link.conn.as_mut() else {
                break;
            };
            match redis::cmd("WAIT").arg(1).arg(WAIT_MS).query::<i64>(c) {
                Ok(n) => {
                    self.op(s, click, "wait", t0, n.to_string());
                    if n >= 1 {
                        acknowledged = true;
                        break;
                    }
                }
                Err(e) => {
                    self.link.conn = None;
                    self.op(s, click, "wait", t0, format!("error: {}", error_text(&e)));
                    break;
                }
            }
        }
        if !acknowledged {
            return;
        }
        self.history.update_story(s.n, |st| st.acknowledged = true);
        if s.plan.crash_before_charge {
            self.op(
                s,
                click,
                "crash",
                self.history.now_ms(),
                "before charging".into(),
            );
            return;
        }
        // 3. The charge, with the transaction id as Idempotency-Key.
        let mut charged = self.charge(s, click);
        if matches!(charged, Charged::Lost(_)) && s.plan.retry_lost_charge {
            std::thread::sleep(Duration::from_millis(100));
            charged = self.charge(s, click);
        }
        let (status, extra) = match &charged {
            Charged::Succeeded(reference) => ("succeeded", ("REF", reference.clone())),
            Charged::Declined(reason) => ("failed", ("REASON", reason.clone())),
            Charged::Lost(_) => return,
        };
        if s.plan.crash_before_update {
            self.op(
                s,
                click,
                "crash",
                self.history.now_ms(),
                "before updating".into(),
            );
            return;
        }
        // 4. PAY.UPDATE with the provider's answer, retried across a failover.
        for attempt in 0..5 {
            let t0 = self.history.now_ms();
            let r: Result<Value, String> = self.link.call(
                redis::cmd("PAY.UPDATE")
                    .arg(&s.key)
                    .arg(status)
                    .arg(extra.0)
                    .arg(&extra.1),
            );
            match r {
                Ok(_) => {
                    self.op(s, click, "update", t0, format!("ok {status}"));
                    return;
                }
                Err(e) => {
                    let answer = ANSWERS.iter().any(|c| e.starts_with(c));
                    self.op(s, click, "update", t0, format!("error: {e}"));
                    if answer {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
                }
            }
        }
    }

    fn charge(&self, s: &Checkout, click: u8) -> Charged {
        self.history.update_story(s.n, |st| st.app_posts += 1);
        let t0 = self.history.now_ms();
        let body = serde_json::json!({
            "transaction_id": s.txn, "user_id": s.user, "amount": s.amount, "currency": "USD",
        });
        let result = self
            .agent
            .post(&format!("{}/payments", self.bank))
            .header("Idempotency-Key", &s.txn)
            .send_json(&body);
        let charged = match result {
            Err(e) => Charged::Lost(e.to_string()),
            Ok(mut r) => {
                let code = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let field = |f: &str| v[f].as_str().unwrap_or_default().to_string();
                match (code, v["status"].as_str()) {
                    (200 | 201, Some("succeeded")) => Charged::Succeeded(field("reference")),
                    (200 | 201, Some("failed")) => Charged::Declined(field("message")),
                    (400 | 402 | 422, _) if v.is_object() => Charged::Declined(field("message")),
                    _ => Charged::Lost(format!(
                        "{code} {}",
                        text.chars().take(80).collect::<String>()
                    )),
                }
            }
        };
        let result = match &charged {
            Charged::Succeeded(r) => format!("succeeded {r}"),
            Charged::Declined(m) => format!("declined: {m}"),
            Charged::Lost(e) => format!("lost: {e}"),
        };
        self.op(s, click, "charge", t0, result);
        charged
    }
}
