//! `make demo`: the whole product on one machine, with local defaults.
//!
//! Starts redis-server with the module, a stand-in payment provider, a Slack
//! stand-in that prints what it receives, and the real `pay-sidecar` with
//! short intervals; then plays the stories redis-pay exists for (the three
//! failures, and the rule behind them: unknown is not failed), with a
//! narrated log, and ends with a summary table. Exits 0 when every story
//! ended as it should.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pay_proto::reply::Record;
use pay_proto::Status;
use redis::{Connection, Value};
use testkit::free_port;
use testkit::standin::{Bank, Slack};

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn say(text: &str) {
    println!("{text}");
}

fn story(title: &str) {
    println!("\n=== {title} ===");
}

fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Prints a child's output lines with a prefix.
fn relay(reader: impl std::io::Read + Send + 'static, prefix: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            println!("    [{prefix}] {line}");
        }
    });
}

fn wait(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out after {secs}s waiting for {what}"))
}

/// PAY.CHECK key; an empty (pending) record when it is absent or
/// unreadable.
fn record(c: &mut Connection, key: &str) -> Record {
    redis::cmd("PAY.CHECK")
        .arg(key)
        .query::<Value>(c)
        .ok()
        .and_then(|v| Record::from_reply(&v).ok())
        .unwrap_or_default()
}

/// The application's own call to the provider (what the service does today).
fn app_pays(bank: &str, key: &str, user: &str, amount: i64) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let body = serde_json::json!({"transaction_id": key, "user_id": user, "amount": amount, "currency": "USD"});
    let mut r = agent
        .post(&format!("{bank}/payments"))
        .header("Idempotency-Key", key)
        .send_json(&body)
        .map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let reference = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["reference"].as_str().map(str::to_string))
        .unwrap_or_default();
    Ok((code, reference))
}

fn main() {
    match run() {
        Ok(()) => say("\nAll four stories ended as they should."),
        Err(e) => {
            eprintln!("\ndemo failed: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<(), String> {
    let server = std::env::var("PAY_SERVER").unwrap_or_else(|_| "redis-server".into());
    let module = std::env::var("PAY_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| beside_me("libredis_pay.so"));
    if !module.exists() {
        return Err(format!(
            "module not found at {} (run make build)",
            module.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("pay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    story("Setting up: Redis with the module, a provider, Slack, the sidecar");
    let port = free_port();
    let redis = Guard(
        Command::new(&server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--loadmodule")
            .arg(&module)
            .args(["stale-after-ms", "1000", "sweep-interval-ms", "100"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {server}: {e}"))?,
    );
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    let mut c = None;
    wait("Redis", 10, || {
        c = client.get_connection().ok();
        c.is_some()
    })?;
    let mut c = c.ok_or("no Redis connection")?;
    say(&format!(
        "Redis on 127.0.0.1:{port} with redis-pay (payments go stale after 1 s)"
    ));
    let bank = Bank::start(0.0, Duration::from_millis(30), Duration::ZERO, 42);
    say(&format!("provider stand-in on {}", bank.url));
    let slack = Slack::start(true);
    say("Slack stand-in ready (it prints what it receives)");
    let mut sidecar = Command::new(beside_me("pay-sidecar"))
        .arg("--redis-url")
        .arg(format!("redis://127.0.0.1:{port}/"))
        .arg("--bank-url")
        .arg(&bank.url)
        .arg("--slack-webhook-url")
        .arg(&slack.url)
        .args(["--interval", "1s", "--lease", "2500ms", "--timeout", "1s"])
        .args(["--retry-schedule", "1s,2s", "--unknown-interval", "3s"])
        .args([
            "--alert-after",
            "4s",
            "--alert-repeat",
            "1h",
            "--max-attempts",
            "6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start pay-sidecar: {e}"))?;
    if let Some(out) = sidecar.stdout.take() {
        relay(out, "sidecar");
    }
    if let Some(err) = sidecar.stderr.take() {
        relay(err, "sidecar");
    }
    let _sidecar = Guard(sidecar);

    // Story 1.
    story("Story 1: the customer presses Pay twice");
    for click in 1..=2 {
        let v: redis::Value = redis::cmd("PAY.CACHE")
            .arg("txn_demo_1")
            .arg("user_1")
            .arg(1999)
            .arg("USD")
            .query(&mut c)
            .map_err(|e| e.to_string())?;
        let outcome = match &v {
            redis::Value::Array(a) => match a.get(1) {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        };
        say(&format!(
            "click {click}: PAY.CACHE txn_demo_1 user_1 1999 USD -> {outcome}"
        ));
    }
    let (code, reference) = app_pays(&bank.url, "txn_demo_1", "user_1", 1999)?;
    say(&format!(
        "the app charges it once at the provider: HTTP {code}, reference {reference}"
    ));
    let mut update = redis::cmd("PAY.UPDATE");
    update.arg("txn_demo_1").arg("succeeded");
    if !reference.is_empty() {
        update.arg("REF").arg(&reference);
    }
    update.query::<Value>(&mut c).map_err(|e| e.to_string())?;
    say("PAY.UPDATE txn_demo_1 succeeded: one payment, charged once");

    // Story 2.
    story("Story 2: the network fails mid-payment");
    redis::cmd("PAY.CACHE")
        .arg("txn_demo_2")
        .arg("user_2")
        .arg(4500)
        .arg("USD")
        .query::<redis::Value>(&mut c)
        .map_err(|e| e.to_string())?;
    let _ = app_pays(&bank.url, "txn_demo_2", "user_2", 4500)?;
    say("the app sent txn_demo_2 to the provider, which charged it, but the reply was lost:");
    say("the payment stays pending in Redis and nobody finishes it... except the sidecar");
    wait("txn_demo_2 to be finished", 30, || {
        record(&mut c, "txn_demo_2").status == Status::Succeeded
    })?;
    let r = record(&mut c, "txn_demo_2");
    say(&format!(
        "the module flagged it stale; the sidecar asked the provider (GET), found it charged, and recorded: {} (ref {}) after {} attempt(s)",
        r.status, r.provider_ref, r.attempts
    ));

    // Story 3.
    story("Story 3: the provider is down for a while");
    bank.set_outage(true);
    redis::cmd("PAY.CACHE")
        .arg("txn_demo_3")
        .arg("user_3")
        .arg(12000)
        .arg("USD")
        .query::<redis::Value>(&mut c)
        .map_err(|e| e.to_string())?;
    let (code, _) = app_pays(&bank.url, "txn_demo_3", "user_3", 12000)?;
    say(&format!("the app tries to charge txn_demo_3: HTTP {code}; the customer is told \"processing\", not asked to pay again"));
    let mut last = String::new();
    wait("a Slack alert about txn_demo_3", 30, || {
        let r = record(&mut c, "txn_demo_3");
        let now = format!("attempts {} — last reason: {}", r.attempts, r.reason);
        if r.attempts > 0 && now != last {
            say(&format!("retry with back-off: {now}"));
            last = now;
        }
        slack.messages().iter().any(|m| m.contains("txn_demo_3"))
    })?;
    say("the payment has been pending longer than 4 s: an alert went to Slack");
    bank.set_outage(false);
    say("the provider recovers");
    wait("txn_demo_3 to complete", 30, || {
        record(&mut c, "txn_demo_3").status == Status::Succeeded
    })?;
    wait("the resolved message", 15, || {
        slack
            .messages()
            .iter()
            .any(|m| m.contains("resolved") && m.contains("txn_demo_3"))
    })?;
    let r = record(&mut c, "txn_demo_3");
    say(&format!(
        "txn_demo_3 completed after {} attempts (ref {}), and Slack heard it was resolved",
        r.attempts, r.provider_ref
    ));

    // Story 4.
    story("Story 4: the provider never gives a definite answer");
    redis::cmd("PAY.CACHE")
        .arg("txn_demo_4")
        .arg("user_4")
        .arg(7500)
        .arg("USD")
        .query::<redis::Value>(&mut c)
        .map_err(|e| e.to_string())?;
    bank.know("txn_demo_4", "pending", "ch_demo_4");
    say("the app's charge for txn_demo_4 reached the provider, which answers \"still processing\" to every question");
    let mut last = 0;
    wait("txn_demo_4 to run out of attempts", 40, || {
        let r = record(&mut c, "txn_demo_4");
        if r.attempts > last && r.status == Status::Pending {
            say(&format!("attempt {}: {}", r.attempts, r.reason));
            last = r.attempts;
        }
        r.status == Status::Unknown
    })?;
    let r = record(&mut c, "txn_demo_4");
    say(&format!(
        "after {} attempts: status {}, NOT failed (the customer may have been charged; \"failed\" would ask them to pay again)",
        r.attempts, r.status
    ));
    say(&format!("reason: {}", r.reason));
    wait("the unknown alert", 15, || {
        slack
            .messages()
            .iter()
            .any(|m| m.contains("txn_demo_4") && m.contains("outcome unknown"))
    })?;
    say("Slack was told to check with the provider; the sidecar keeps asking (GET only, it never re-sends an unknown payment)");
    bank.settle("txn_demo_4", "succeeded", "ch_demo_4");
    say("the provider finally settles it");
    wait("txn_demo_4 to resolve", 20, || {
        record(&mut c, "txn_demo_4").status == Status::Succeeded
    })?;
    wait("the resolved message", 15, || {
        slack
            .messages()
            .iter()
            .any(|m| m.contains("resolved") && m.contains("txn_demo_4"))
    })?;
    let r = record(&mut c, "txn_demo_4");
    say(&format!(
        "the next question found it settled: {} (ref {}), charged once, and Slack heard it was resolved",
        r.status, r.provider_ref
    ));

    story("Summary");
    let creations = bank.creations();
    println!(
        "{:<12} {:<10} {:>8} {:<10} {:>16} {:>14}",
        "payment", "status", "attempts", "ref", "charged (times)", "Slack mentions"
    );
    let mut ok = true;
    for key in ["txn_demo_1", "txn_demo_2", "txn_demo_3", "txn_demo_4"] {
        let r = record(&mut c, key);
        let charged = creations.get(key).copied().unwrap_or(0);
        let mentions = slack.messages().iter().filter(|m| m.contains(key)).count();
        println!(
            "{:<12} {:<10} {:>8} {:<10} {:>16} {:>14}",
            key, r.status, r.attempts, r.provider_ref, charged, mentions
        );
        ok &= r.status == Status::Succeeded && charged == 1;
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        Ok(())
    } else {
        Err("a payment did not end succeeded and charged exactly once".into())
    }
}
