//! Alerts, all from what Redis holds, never from a round's memory:
//!
//! - payments with an `unknown` outcome (the retries ran out without a
//!   definite answer): a human must check the provider and resolve them;
//! - payments unresolved (`pending`) longer than the alert threshold;
//! - configuration errors (the provider's answers say the sidecar is not
//!   talking to it as it should), at most once per repeat interval each;
//! - a primary whose `maxmemory-policy` may evict unresolved payments, or
//!   that lost some anyway (the module's guard, in `INFO pay`).
//!
//! Each round lists the unresolved payments older than the threshold on every
//! primary (`PAY.STUCK`), so a round that fails partway loses nothing: the
//! next one finds the same payments. Each payment is alerted once, repeated
//! at most every repeat interval while unresolved (at once when it turns
//! `unknown`), and a "resolved" message follows when an alerted payment
//! resolves.
//!
//! All alert state lives in Redis, under the hash tag `{pay:alerts}` (one
//! cluster slot): sorted sets of alerted payments (pending, unknown) scored
//! by the last alert time, a sorted set of resolved ones (tombstones, kept a
//! day, so a stale listing can never alert a resolved payment again), one of
//! configuration problems, an outbox list of messages not yet delivered, and
//! a delivery lock. A payment is named by its key and creation time, so a
//! later payment under the same key is a new one. So a restart or a second
//! sidecar never alerts twice, and messages wait in the outbox while Slack is
//! down. Delivery runs on its own thread: a Slack outage never slows the
//! retries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use redis::ConnectionLike;

use pay_proto::Status;

use crate::metrics::Metrics;
use crate::now_ms;
use crate::store::{self, Node, Record, Redis};
use crate::worker::Report;

/// Payments alerted as pending too long.
pub const ALERTED: &str = "{pay:alerts}";
/// Payments alerted as `unknown`.
pub const UNKNOWN: &str = "{pay:alerts}:unknown";
/// Configuration problems, scored by when they were last alerted.
pub const CONFIG: &str = "{pay:alerts}:config";
pub const RESOLVED: &str = "{pay:alerts}:resolved";
/// How long a tombstone is kept.
const TOMBSTONE_MS: i64 = 86_400_000;
pub const OUTBOX: &str = "{pay:alerts}:outbox";
pub const LOCK: &str = "{pay:alerts}:lock";
/// How many payments one message lists; the rest are counted.
pub const LISTED: usize = 10;

// Alerting is two steps. A read-only script says which payments are due an
// alert; the message is written for them; then one script checks that every
// one of them is still due, marks them all and queues the message, or does
// nothing (another sidecar got there first; the next round looks again). So
// a payment is never marked as alerted without its message in the outbox,
// whatever fails in between. Resolutions work the same way.

/// Whether each payment (ARGV[3..]) is due an alert: 1 = first alert,
/// 2 = repeat, 0 = not due (or already resolved). Writes nothing.
const DUE: &str = r"
local now, rep, due = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
for i = 3, #ARGV do
  local last = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then due[#due + 1] = 0
  elseif last and now - tonumber(last) < rep then due[#due + 1] = 0
  elseif last then due[#due + 1] = 2
  else due[#due + 1] = 1 end
end
return due
";

/// If every payment (ARGV[4..]) is still due, marks them alerted at ARGV[1]
/// and queues the message ARGV[3]: 1; else changes nothing: 0.
const COMMIT_ALERT: &str = r"
local now, rep = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then return 0 end
  local last = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if last and now - tonumber(last) < rep then return 0 end
end
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
";

/// If every payment (ARGV[4..]) is still in an alerted set, moves them all
/// to the tombstones (at ARGV[1], dropping those older than ARGV[2]) and
/// queues the message ARGV[3]: 1; else changes nothing: 0. Only the sidecar
/// that moves them announces them.
const COMMIT_RESOLVED: &str = r"
for i = 4, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) and not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    return 0
  end
end
for i = 4, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
redis.call('RPUSH', KEYS[4], ARGV[3])
return 1
";

/// Queues a configuration alert unless the same problem was alerted less
/// than a repeat interval ago: 1 if queued.
const CONFIG_SCRIPT: &str = r"
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last and tonumber(ARGV[2]) - tonumber(last) < tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[4])
return 1
";

/// One script argument (or several, from a list).
fn a<T: redis::ToRedisArgs>(v: T) -> Vec<Vec<u8>> {
    v.to_redis_args()
}

/// Runs a Lua script by its SHA1 (EVALSHA), or sends it whole (EVAL) when
/// the server has not seen it: a replica promoted by a failover starts with
/// an empty script cache. Both name their keys, so a cluster routes them by
/// key; `redis::Script::invoke` would send SCRIPT LOAD to every primary,
/// which fails while any shard is down and would stop the alerts with it.
fn invoke<T: redis::FromRedisValue>(
    body: &str,
    keys: &[&str],
    args: &[Vec<Vec<u8>>],
    c: &mut dyn ConnectionLike,
) -> redis::RedisResult<T> {
    let hash = redis::Script::new(body).get_hash().to_string();
    let command = |name: &str, script: &str| {
        let mut cmd = redis::cmd(name);
        cmd.arg(script).arg(keys.len()).arg(keys);
        for arg in args {
            cmd.arg(arg);
        }
        cmd
    };
    match command("EVALSHA", &hash).query(c) {
        Err(e) if e.code() == Some("NOSCRIPT") => command("EVAL", body).query(c),
        result => result,
    }
}

/// The alert-state name of one payment: its key and creation time.
fn member(r: &Record) -> String {
    format!("{}|{}", r.key, r.created_at)
}

/// Takes or renews the delivery lock for `ARGV[1]`.
const LOCK_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

pub struct Alerter {
    pub alert_after: Duration,
    pub repeat: Duration,
}

/// Minor units shown in major units, by ISO 4217 exponent.
pub fn money(amount: i64, currency: &str) -> String {
    const ZERO: [&str; 16] = [
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
        "XAF", "XOF", "XPF",
    ];
    const THREE: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    let exp = if ZERO.contains(&currency) {
        0
    } else if THREE.contains(&currency) {
        3
    } else {
        2
    };
    if exp == 0 {
        return format!("{amount} {currency}");
    }
    let unit = 10i64.pow(exp);
    format!(
        "{}.{:0width$} {currency}",
        amount / unit,
        amount % unit,
        width = exp as usize
    )
}

fn age(now: i64, created_at: i64) -> String {
    let secs = u64::try_from((now - created_at) / 1000).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn line(r: &Record, now: i64) -> String {
    let reason = if r.reason.is_empty() { "-" } else { &r.reason };
    format!(
        "• `{}` {} — pending {} — {} attempts — last: {}",
        r.key,
        money(r.amount, &r.currency),
        age(now, r.created_at),
        r.attempts,
        reason
    )
}

fn unknown_line(r: &Record, now: i64) -> String {
    // The reason reads "outcome unknown after N attempts: <last answer>".
    let last = r
        .reason
        .strip_prefix("outcome unknown after ")
        .and_then(|rest| rest.split_once(": "))
        .map_or(r.reason.as_str(), |(_, last)| last);
    format!(
        "• `{key}` {} — created {} ago — outcome unknown after {} attempts; check the provider, then `PAY.UPDATE {key} succeeded|failed` — last answer: {}",
        money(r.amount, &r.currency),
        age(now, r.created_at),
        r.attempts,
        if last.is_empty() { "-" } else { last },
        key = r.key,
    )
}

fn listing(text: &mut String, lines: impl Iterator<Item = String>, total: usize) {
    for l in lines.take(LISTED) {
        text.push('\n');
        text.push_str(&l);
    }
    if total > LISTED {
        text.push_str(&format!("\n… and {} more", total - LISTED));
    }
}

/// The Slack message for this round's stuck (pending) payments.
pub fn stuck_message(first: &[Record], repeat: &[Record], threshold: Duration, now: i64) -> String {
    let total = first.len() + repeat.len();
    let mut text = format!(
        ":rotating_light: {total} payment(s) pending longer than {} ({} new, {} still stuck)",
        humantime::format_duration(threshold),
        first.len(),
        repeat.len()
    );
    listing(
        &mut text,
        first.iter().chain(repeat).map(|r| line(r, now)),
        total,
    );
    text
}

/// The Slack message for payments whose outcome is unknown: a human decides.
/// Each payment is named in its first alert (up to [`NAMED_UNKNOWN`] new
/// ones per message, so a human can act on every one); repeats are listed
/// up to [`LISTED`] and counted beyond.
pub fn unknown_message(first: &[Record], repeat: &[Record], now: i64) -> String {
    let total = first.len() + repeat.len();
    let mut text = format!(
        ":warning: {total} payment(s) with an unknown outcome ({} new, {} still unknown): the provider gave no definite answer, so they are NOT marked failed (the customer may have been charged). Never sent again, only asked about.",
        first.len(),
        repeat.len()
    );
    let named = first.len().min(NAMED_UNKNOWN);
    for r in &first[..named] {
        text.push('\n');
        text.push_str(&unknown_line(r, now));
    }
    let repeats = LISTED.saturating_sub(named).min(repeat.len());
    for r in &repeat[..repeats] {
        text.push('\n');
        text.push_str(&unknown_line(r, now));
    }
    let rest = total - named - repeats;
    if rest > 0 {
        text.push_str(&format!("\n… and {rest} more"));
    }
    text
}

/// Most payments that just became unknown one message names: each must
/// reach a human by name, within Slack's message size.
pub const NAMED_UNKNOWN: usize = 100;

/// The Slack message for a configuration problem.
pub fn config_message(problem: &str, key: &str, repeat: Duration) -> String {
    format!(
        ":no_entry: pay-sidecar is not talking to the provider as it should: {problem}. Seen with payment `{key}`. Payments stay unresolved and are retried; none is failed for this. Repeated every {} while it lasts.",
        humantime::format_duration(repeat)
    )
}

/// The Slack message for a primary whose eviction policy may drop
/// unresolved payments.
pub fn eviction_message(node: &str, repeat: Duration) -> String {
    format!(
        ":no_entry: Redis {node}: its maxmemory-policy may evict unresolved payments (INFO pay_eviction_unsafe:1). An evicted pending payment is gone from Redis without a trace: nobody would finish it. Set `maxmemory-policy noeviction` (or a volatile-* policy) on every server. Repeated every {} while it lasts.",
        humantime::format_duration(repeat)
    )
}

/// How often the same count of lost payments is alerted again.
pub const LOST_REPEAT: Duration = Duration::from_secs(86_400);

/// The Slack message for a primary that lost unresolved payments.
pub fn lost_message(node: &str, lost: u64) -> String {
    format!(
        ":rotating_light: Redis {node} lost {lost} unresolved payment(s) since it started (expired or evicted; INFO pay_unresolved_lost:{lost}). Each one is in that server's log as `UNRESOLVED PAYMENT LOST` with its transaction id, user and amount: ask the provider about each and settle it by hand. Repeated daily until the server restarts; at once if more are lost."
    )
}

pub fn resolved_message(resolved: &[(String, String)]) -> String {
    let mut text = format!(
        ":white_check_mark: {} alerted payment(s) resolved",
        resolved.len()
    );
    listing(
        &mut text,
        resolved
            .iter()
            .map(|(key, status)| format!("• `{key}` {status}")),
        resolved.len(),
    );
    text
}

fn payload(text: &str) -> String {
    serde_json::json!({ "text": text }).to_string()
}

impl Alerter {
    /// One alert round: unresolved payments older than the threshold on
    /// each of `primaries`, then resolutions. A primary that cannot be
    /// read, or a payment whose shard cannot be asked, is skipped (and
    /// reported) so the others are still alerted; the next round looks again.
    pub fn round(
        &self,
        primaries: &[Node],
        keyed: &mut dyn ConnectionLike,
    ) -> redis::RedisResult<()> {
        let now = now_ms();
        let mut unresolved = Vec::new();
        let mut failure = None;
        for node in primaries {
            let listed = node.connect().and_then(|mut c| {
                // INFO that cannot be read (an ACL without +info) costs the
                // guard's alerts, never the payments' listing.
                let guard = store::guard(&mut c).unwrap_or_else(|e| {
                    warn!("alerts: cannot read INFO pay on {}: {e}", node.name);
                    None
                });
                Ok((store::stuck(&mut c, self.alert_after, 10_000)?, guard))
            });
            match listed {
                Ok((rs, guard)) => {
                    unresolved.extend(rs);
                    if let Err(e) = self.guard(&node.name, guard, now, keyed) {
                        warn!("alerts: cannot queue {}'s guard alert: {e}", node.name);
                        failure = Some(e);
                    }
                }
                Err(e) => {
                    warn!("alerts: cannot list {}: {e}", node.name);
                    failure = Some(e);
                }
            }
        }
        let (pending, unknown): (Vec<Record>, Vec<Record>) = unresolved
            .into_iter()
            .partition(|r| r.status != Status::Unknown);
        let repeat_ms = self.repeat.as_millis() as u64;
        for (set, records) in [(UNKNOWN, unknown), (ALERTED, pending)] {
            if records.is_empty() {
                continue;
            }
            let members: Vec<String> = records.iter().map(member).collect();
            let marks: Vec<i64> = invoke(
                DUE,
                &[set, RESOLVED],
                &[a(now), a(repeat_ms), a(&members)],
                keyed,
            )?;
            let (mut first, mut again, mut names) = (Vec::new(), Vec::new(), Vec::new());
            for ((r, name), mark) in records.into_iter().zip(members).zip(marks) {
                match mark {
                    1 => first.push(r),
                    2 => again.push(r),
                    _ => continue,
                }
                names.push(name);
            }
            if names.is_empty() {
                continue;
            }
            let text = if set == UNKNOWN {
                unknown_message(&first, &again, now)
            } else {
                stuck_message(&first, &again, self.alert_after, now)
            };
            let queued: i64 = invoke(
                COMMIT_ALERT,
                &[set, RESOLVED, OUTBOX],
                &[a(now), a(repeat_ms), a(payload(&text)), a(&names)],
                keyed,
            )?;
            if queued == 1 {
                warn!("alert: {text}");
            }
        }
        let mut alerted: Vec<String> = Vec::new();
        for set in [ALERTED, UNKNOWN] {
            let names: Vec<String> = redis::cmd("ZRANGE").arg(set).arg(0).arg(-1).query(keyed)?;
            alerted.extend(names);
        }
        alerted.sort();
        alerted.dedup();
        let (mut resolved, mut names) = (Vec::new(), Vec::new());
        let mut unchecked = 0;
        for name in alerted {
            let Some((key, created_at)) = name.rsplit_once('|') else {
                continue;
            };
            let checked = match store::check(keyed, key) {
                Ok(checked) => checked,
                Err(e) => {
                    if unchecked == 0 {
                        warn!("alerts: cannot check {key} (it stays alerted): {e}");
                    }
                    unchecked += 1;
                    failure = Some(e);
                    continue;
                }
            };
            let status = match checked {
                Some(r) if r.created_at.to_string() != created_at => {
                    "gone (replaced by a newer payment)".to_string()
                }
                Some(r) if r.status.is_unresolved() => continue,
                Some(r) => r.status.to_string(),
                None => "gone (deleted)".to_string(),
            };
            resolved.push((key.to_string(), status));
            names.push(name);
        }
        if !names.is_empty() {
            let text = resolved_message(&resolved);
            let queued: i64 = invoke(
                COMMIT_RESOLVED,
                &[ALERTED, UNKNOWN, RESOLVED, OUTBOX],
                &[a(now), a(now - TOMBSTONE_MS), a(payload(&text)), a(&names)],
                keyed,
            )?;
            if queued == 1 {
                info!("alert: {text}");
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Alerter {
    /// Alerts what a primary's guard reports: an unsafe eviction policy
    /// (repeated while it lasts) and payments lost (at once for each new
    /// count, then daily), deduplicated in Redis like configuration alerts.
    fn guard(
        &self,
        node: &str,
        guard: Option<store::Guard>,
        now: i64,
        keyed: &mut dyn ConnectionLike,
    ) -> redis::RedisResult<()> {
        let Some(g) = guard else { return Ok(()) };
        let mut due = Vec::new();
        if g.eviction_unsafe {
            due.push((
                format!("eviction|{node}"),
                eviction_message(node, self.repeat),
                self.repeat,
            ));
        }
        if g.unresolved_lost > 0 {
            due.push((
                // The count starts again at each restart: the run names it.
                format!("lost|{node}|{}|{}", g.run_id, g.unresolved_lost),
                lost_message(node, g.unresolved_lost),
                LOST_REPEAT,
            ));
        }
        for (problem, text, repeat) in due {
            let queued: i64 = invoke(
                CONFIG_SCRIPT,
                &[CONFIG, OUTBOX],
                &[
                    a(&problem),
                    a(now),
                    a(repeat.as_millis() as u64),
                    a(payload(&text)),
                ],
                keyed,
            )?;
            if queued == 1 {
                warn!("alert: {text}");
            }
        }
        Ok(())
    }
}

/// Configuration alerts, raised by the workers as the problems are met and
/// deduplicated in Redis (one per problem per repeat interval, across
/// sidecars).
pub struct ConfigAlerts {
    redis: Arc<Redis>,
    repeat: Duration,
    conn: Mutex<Option<Box<dyn ConnectionLike + Send>>>,
}

impl ConfigAlerts {
    pub fn new(redis: Arc<Redis>, repeat: Duration) -> ConfigAlerts {
        ConfigAlerts {
            redis,
            repeat,
            conn: Mutex::new(None),
        }
    }

    fn raise(&self, problem: &str, key: &str) -> redis::RedisResult<bool> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let c = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(self.redis.keyed()?),
        };
        let text = config_message(problem, key, self.repeat);
        let queued: redis::RedisResult<i64> = invoke(
            CONFIG_SCRIPT,
            &[CONFIG, OUTBOX],
            &[
                a(problem),
                a(now_ms()),
                a(self.repeat.as_millis() as u64),
                a(payload(&text)),
            ],
            c.as_mut(),
        );
        match queued {
            Ok(n) => {
                if n == 1 {
                    warn!("alert: {text}");
                }
                Ok(n == 1)
            }
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
    }
}

impl Report for ConfigAlerts {
    fn config_problem(&self, problem: &str, r: &Record) {
        // The problem is met again at the next retry: a failed raise is
        // raised again then.
        if let Err(e) = self.raise(problem, &r.key) {
            warn!("alerts: cannot queue the configuration alert ({problem}): {e}");
        }
    }
}

/// What a webhook did with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// 429: try again after this long.
    RetryAfter(Duration),
    Failed(String),
}

/// The seam for Slack: tests may put a fake behind it.
pub trait Notifier: Send + Sync {
    fn post(&self, payload: &str) -> Delivery;
}

/// Slack's incoming webhook. The URL is a secret: it is never logged, and
/// errors are reported without it.
pub struct SlackWebhook {
    url: String,
    agent: ureq::Agent,
}

impl SlackWebhook {
    pub fn new(url: &str, timeout: Duration) -> SlackWebhook {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        SlackWebhook {
            url: url.to_string(),
            agent,
        }
    }
}

impl Notifier for SlackWebhook {
    fn post(&self, payload: &str) -> Delivery {
        let result = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(payload);
        match result {
            Ok(r) if r.status().is_success() => Delivery::Sent,
            Ok(r) if r.status().as_u16() == 429 => {
                let secs = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                Delivery::RetryAfter(Duration::from_secs(secs))
            }
            Ok(r) => Delivery::Failed(format!("Slack answered {}", r.status().as_u16())),
            Err(ureq::Error::Timeout(_)) => Delivery::Failed("Slack timed out".into()),
            Err(_) => Delivery::Failed("Slack unreachable".into()),
        }
    }
}

/// Delivers the outbox, oldest first, while holding the delivery lock, until
/// shutdown. Runs on its own thread.
pub fn deliver(
    redis: &Redis,
    notifier: &dyn Notifier,
    me: &str,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(500);
    let mut conn: Option<Box<dyn ConnectionLike + Send>> = None;
    while !shutdown.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match redis.keyed() {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    warn!("alerts: cannot reach Redis: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let step = (|| -> redis::RedisResult<Option<Duration>> {
            let held: i64 = invoke(LOCK_SCRIPT, &[LOCK], &[a(me), a(30_000)], c.as_mut())?;
            if held != 1 {
                return Ok(Some(Duration::from_secs(1)));
            }
            let head: Option<String> = redis::cmd("LINDEX").arg(OUTBOX).arg(0).query(c.as_mut())?;
            let Some(payload) = head else {
                return Ok(Some(Duration::from_millis(200)));
            };
            match notifier.post(&payload) {
                Delivery::Sent => {
                    redis::cmd("LPOP")
                        .arg(OUTBOX)
                        .query::<Option<String>>(c.as_mut())?;
                    metrics.alerts_sent.inc();
                    backoff = Duration::from_millis(500);
                    Ok(None)
                }
                Delivery::RetryAfter(d) => {
                    warn!("alerts: Slack asked to wait {}s", d.as_secs());
                    Ok(Some(d.min(Duration::from_secs(60))))
                }
                Delivery::Failed(why) => {
                    warn!("alerts: {why}; retrying in {}ms", backoff.as_millis());
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    Ok(Some(wait))
                }
            }
        })();
        match step {
            Ok(None) => {}
            Ok(Some(wait)) => sleep_unless(shutdown, wait),
            Err(e) => {
                warn!("alerts: Redis error: {e}");
                conn = None;
                sleep_unless(shutdown, Duration::from_secs(1));
            }
        }
    }
}

/// Sleeps up to `d`, waking early on shutdown.
pub fn sleep_unless(shutdown: &AtomicBool, d: Duration) {
    let deadline = std::time::Instant::now() + d;
    while !shutdown.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeConnection;

    #[test]
    fn a_script_the_server_lacks_is_sent_whole_never_loaded_on_every_primary() {
        let hash = redis::Script::new(LOCK_SCRIPT).get_hash().to_string();
        let mut c = FakeConnection::new(&[b"-NOSCRIPT No matching script.\r\n", b":1\r\n"]);
        let held: i64 = invoke(LOCK_SCRIPT, &[LOCK], &[a("me"), a(30_000)], &mut c).unwrap();
        assert_eq!(held, 1);
        let rest = ["1", LOCK, "me", "30000"];
        assert_eq!(
            c.sent,
            [
                [&["EVALSHA", hash.as_str()][..], &rest].concat(),
                [&["EVAL", LOCK_SCRIPT][..], &rest].concat(),
            ]
        );
        // Known: one EVALSHA, nothing else.
        let mut c = FakeConnection::new(&[b":0\r\n"]);
        let held: i64 = invoke(LOCK_SCRIPT, &[LOCK], &[a("me"), a(30_000)], &mut c).unwrap();
        assert_eq!((held, c.sent.len()), (0, 1));
        assert_eq!(c.sent[0][0], "EVALSHA");
    }

    #[test]
    fn money_uses_the_currency_exponent() {
        assert_eq!(money(1000, "USD"), "10.00 USD");
        assert_eq!(money(5, "EUR"), "0.05 EUR");
        assert_eq!(money(1000, "JPY"), "1000 JPY");
        assert_eq!(money(1234, "KWD"), "1.234 KWD");
    }

    #[test]
    fn every_newly_unknown_payment_is_named() {
        let rs: Vec<Record> = (0..30)
            .map(|i| Record {
                key: format!("u{i}"),
                amount: 1000,
                currency: "USD".into(),
                ..Record::default()
            })
            .collect();
        let text = unknown_message(&rs[..25], &rs[25..], 0);
        for i in 0..25 {
            assert!(text.contains(&format!("`u{i}`")), "u{i} not named:\n{text}");
        }
        assert!(text.ends_with("… and 5 more"), "{text}");
        let text = unknown_message(&rs[..3], &rs[3..], 0);
        assert_eq!(text.matches("• ").count(), LISTED);
        assert!(text.ends_with("… and 20 more"), "{text}");
    }

    #[test]
    fn stuck_message_lists_ten_and_counts_the_rest() {
        let rs: Vec<Record> = (0..12)
            .map(|i| Record {
                key: format!("t{i}"),
                amount: 1000,
                currency: "USD".into(),
                created_at: 0,
                attempts: 3,
                reason: "timeout".into(),
                ..Record::default()
            })
            .collect();
        let text = stuck_message(&rs[..2], &rs[2..], Duration::from_secs(600), 720_000);
        assert!(
            text.starts_with(
                ":rotating_light: 12 payment(s) pending longer than 10m (2 new, 10 still stuck)"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 12);
        assert!(
            text.contains("• `t0` 10.00 USD — pending 12m — 3 attempts — last: timeout"),
            "{text}"
        );
        assert!(text.ends_with("… and 2 more"));
    }

    #[test]
    fn an_unknown_payment_is_alerted_with_what_to_do_about_it() {
        let r = Record {
            key: "payment:txn_1".into(),
            transaction_id: "txn_1".into(),
            amount: 2500,
            currency: "EUR".into(),
            status: Status::Unknown,
            created_at: 0,
            attempts: 3,
            reason: "outcome unknown after 3 attempts: provider timed out".into(),
            ..Record::default()
        };
        let text = unknown_message(&[r], &[], 7_200_000);
        assert!(
            text.starts_with(
                ":warning: 1 payment(s) with an unknown outcome (1 new, 0 still unknown)"
            ),
            "{text}"
        );
        assert!(text.contains("NOT marked failed"), "{text}");
        assert!(
            text.contains(
                "• `payment:txn_1` 25.00 EUR — created 2h ago — outcome unknown after 3 attempts; check the provider, then `PAY.UPDATE payment:txn_1 succeeded|failed` — last answer: provider timed out"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_configuration_alert_names_the_problem_and_says_nothing_failed() {
        let text = config_message(
            "configuration error: the provider answered GET {bank-url}/payments/{id} 404",
            "payment:txn_1",
            Duration::from_secs(3600),
        );
        assert!(
            text.contains("answered GET {bank-url}/payments/{id} 404"),
            "{text}"
        );
        assert!(text.contains("`payment:txn_1`"), "{text}");
        assert!(text.contains("none is failed"), "{text}");
    }

    /// `pay_unresolved_lost` counts since the server started: a server that
    /// lost one payment, restarted and lost another shows 1 both times. The
    /// second loss must still reach Slack at once, not a day later.
    #[test]
    fn a_loss_after_a_restart_is_alerted_even_when_the_count_repeats() {
        let alerter = Alerter {
            alert_after: Duration::from_secs(600),
            repeat: Duration::from_secs(3600),
        };
        let problem = |info: &'static [u8]| {
            let mut node = FakeConnection::new(&[info]);
            let guard = store::guard(&mut node).unwrap();
            assert_eq!(guard.as_ref().map(|g| g.unresolved_lost), Some(1));
            let mut keyed = FakeConnection::new(&[b":1\r\n"]);
            alerter
                .guard("10.0.0.7:6379", guard, 0, &mut keyed)
                .unwrap();
            // EVALSHA sha 2 CONFIG OUTBOX problem now repeat payload
            keyed.sent[0][5].clone()
        };
        let before = problem(
            b"$102\r\n# Server\r\nrun_id:aaaa\r\n\r\n# pay_settings\r\npay_eviction_unsafe:0\r\n\r\n# pay_stats\r\npay_unresolved_lost:1\r\n\r\n",
        );
        let after_restart = problem(
            b"$102\r\n# Server\r\nrun_id:bbbb\r\n\r\n# pay_settings\r\npay_eviction_unsafe:0\r\n\r\n# pay_stats\r\npay_unresolved_lost:1\r\n\r\n",
        );
        assert_ne!(before, after_restart);
    }
}
