//! Sentinel: a primary, a replica and three Sentinels (with their own
//! password). The sidecar finds the primary through Sentinel; while it works
//! through the stuck payments the primary is SIGKILLed, Sentinel promotes
//! the replica, and the sidecar finishes every payment on the new primary,
//! each charged once, as the README's least-privilege ACL user (from
//! --redis-url) on the data nodes.

use std::collections::HashMap;
use std::time::Duration;

use testkit::standin::Bank;
use testkit::*;

const MASTER: &str = "pay";
const SENTINEL_PASSWORD: &str = "sentinel-secret";

fn sentinel_conn(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://:{SENTINEL_PASSWORD}@127.0.0.1:{port}/"))?;
    let c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

/// What one Sentinel says of the master: SENTINEL MASTER's fields.
fn master_state(port: u16) -> HashMap<String, String> {
    sentinel_conn(port)
        .and_then(|mut c| {
            redis::cmd("SENTINEL")
                .arg("MASTER")
                .arg(MASTER)
                .query(&mut c)
        })
        .unwrap_or_default()
}

/// The README's least-privilege sidecar user, on one server (ACLs are not
/// replicated).
fn add_user(s: &Server) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("sidecar")
        .arg(SIDECAR_ACL)
        .query(&mut s.conn())
        .unwrap();
}

#[test]
fn the_primary_killed_mid_run_sentinel_promotes_the_replica_and_every_payment_finishes_once() {
    let mut primary = Server::with(Opts::sweeper(100, 20));
    let replica = Server::with(Opts::sweeper(100, 20));
    add_user(&primary);
    add_user(&replica);
    replicate(&replica, &primary);
    let sentinels: Vec<Proc> = (0..3)
        .map(|_| sentinel(MASTER, primary.port, Some(SENTINEL_PASSWORD)))
        .collect();
    for s in &sentinels {
        assert!(
            wait_until(Duration::from_secs(30), || {
                let m = master_state(s.port);
                m.get("num-slaves").is_some_and(|n| n == "1")
                    && m.get("num-other-sentinels").is_some_and(|n| n == "2")
            }),
            "the Sentinels did not find the replica and each other: {:?}\n{}",
            master_state(s.port),
            s.log()
        );
    }

    let mut c = primary.conn();
    let keys: Vec<String> = (0..60).map(|i| format!("txn_{i}")).collect();
    for k in &keys {
        cache(&mut c, k, "u", 1000, "EUR");
    }
    // The payments are on the replica before the primary dies.
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut c).unwrap();
    assert_eq!(acked, 1);

    // A provider slow enough that the primary dies mid-run.
    let bank = Bank::start(0.0, Duration::from_millis(60), Duration::ZERO, 5);
    let sentinel_list = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",");
    let metrics = format!("127.0.0.1:{}", free_port());
    // Only the credentials count in the URL: the host is never dialled.
    let mut args = sidecar_args(
        "redis://sidecar:s3cret@unused.invalid:6379/",
        &bank.url,
        None,
    );
    args.extend([
        "--sentinel",
        &sentinel_list,
        "--sentinel-master",
        MASTER,
        "--sentinel-password",
        SENTINEL_PASSWORD,
        "--concurrency",
        "2",
        "--metrics-addr",
        &metrics,
    ]);
    let sidecar = Sidecar::start(env!("CARGO_BIN_EXE_pay-sidecar"), &args);
    sidecar.wait_for("some payments done on the first primary", 30, || {
        info_field(&mut c, "records_succeeded") >= 10
    });
    let users: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    assert!(users.contains("user=sidecar"), "{users}");
    drop(c);
    primary.kill();
    let done_before = bank.creations().len();
    assert!(done_before < keys.len(), "all done before the kill");

    sidecar.wait_for("Sentinel to promote the replica", 30, || {
        role(replica.port).as_deref() == Some("master")
    });
    let mut r = replica.conn();
    sidecar.wait_for("every payment finished on the new primary", 40, || {
        keys.iter()
            .all(|k| check(&mut r, k).is_some_and(|p| p["status"] == "succeeded"))
    });
    let created = bank.creations();
    assert_eq!(created.len(), keys.len(), "{created:?}");
    assert!(
        created.values().all(|&n| n == 1),
        "charged twice: {created:?}"
    );
    let log = sidecar.log();
    assert!(
        log.contains(&format!(
            "claiming from 1 primary(ies): 127.0.0.1:{}",
            replica.port
        )),
        "{log}"
    );
    let users: String = redis::cmd("CLIENT").arg("LIST").query(&mut r).unwrap();
    assert!(users.contains("user=sidecar"), "{users}");
    assert!(!log.contains("NOPERM"), "{log}");
    // Health reports finished rounds: the round that finished the last
    // payment may still be running when the test sees them all succeeded.
    let health = || -> serde_json::Value {
        serde_json::from_str(
            &ureq::get(&format!("http://{metrics}/healthz"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap()
    };
    let mut v = health();
    wait_until(Duration::from_secs(10), || {
        v = health();
        v["status"] == "ok"
    });
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["primaries"][0]["address"],
        format!("127.0.0.1:{}", replica.port)
    );
}
