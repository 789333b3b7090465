//! A Redis Cluster that moves: three primaries with a replica each. During
//! one sidecar run, one shard fails over on command (`CLUSTER FAILOVER`)
//! and another shard's primary is SIGKILLed. The sidecar reads the topology
//! again every round and after every error, serves the shards that are up
//! while one is down, still sends alerts then, says in /healthz which
//! primary it cannot reach, and in the end no payment is stranded and each
//! was charged once.

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::standin::{Bank, Slack};
use testkit::*;

/// The shard that serves `key`, by CLUSTER KEYSLOT and CLUSTER SLOTS.
fn shard_of(c: &mut redis::Connection, key: &str, nodes: &[Server], shards: &[Shard]) -> usize {
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(c)
        .unwrap();
    let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query(c).unwrap();
    let num = |v: &redis::Value| text(v).parse::<u16>().unwrap();
    let range = ranges
        .iter()
        .find(|r| (num(&r[0])..=num(&r[1])).contains(&slot))
        .expect("slot served");
    let redis::Value::Array(primary) = &range[2] else {
        panic!("{range:?}")
    };
    let port = num(&primary[1]);
    shards
        .iter()
        .position(|s| nodes[s.primary].port == port || nodes[s.replica].port == port)
        .expect("a node of the layout")
}

fn healthz(addr: &str) -> (u16, serde_json::Value) {
    let mut r = ureq::get(&format!("http://{addr}/healthz"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let code = r.status().as_u16();
    (
        code,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap(),
    )
}

#[test]
fn a_shard_failed_over_and_another_killed_mid_run_strand_nothing_charge_once_and_alerts_go_on() {
    let (mut nodes, shards) = cluster_with_replicas(3, Opts::sweeper(100, 20));
    let mut any = nodes[shards[0].primary].conn();
    // Shard `moved` holds the alert state and fails over on command; shard
    // `killed` loses its primary.
    let moved = shard_of(&mut any, "{pay:alerts}", &nodes, &shards);
    let killed = (moved + 1) % 3;
    let other = (moved + 2) % 3;
    // Asked about slots from here on: the shard that stays as it is.
    let mut any = nodes[shards[other].primary].conn();
    // The killed shard's replica waits for the test's word before it takes
    // over, so the test sees the sidecar at work while the shard is down.
    config_set(
        &mut nodes[shards[killed].replica].conn(),
        "cluster-replica-no-failover",
        "yes",
    );

    let seeds: Vec<String> = nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}/", n.port))
        .collect();
    let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
        .build()
        .unwrap();
    let mut cc = client.get_connection().unwrap();
    let keys: Vec<String> = (0..150).map(|i| format!("txn_{i}")).collect();
    for k in &keys {
        let _: redis::Value = redis::cmd("PAY.CACHE")
            .arg(k)
            .arg("u")
            .arg(1000)
            .arg("EUR")
            .query(&mut cc)
            .unwrap();
    }
    let on_shard = |s: usize, any: &mut redis::Connection| {
        keys.iter()
            .filter(|k| shard_of(any, k, &nodes, &shards) == s)
            .count()
    };
    for s in 0..3 {
        assert!(on_shard(s, &mut any) > 10, "payments not spread");
    }
    for s in &shards {
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query(&mut nodes[s.primary].conn())
            .unwrap();
        assert_eq!(acked, 1);
    }

    let bank = Bank::start(0.0, Duration::from_millis(50), Duration::ZERO, 11);
    let slack = Slack::start(false);
    let metrics = format!("127.0.0.1:{}", free_port());
    let url = format!("redis://127.0.0.1:{}/", nodes[shards[other].primary].port);
    let mut args = sidecar_args(&url, &bank.url, Some(&slack.url));
    args.extend([
        "--alert-after",
        "1s",
        "--concurrency",
        "2",
        "--metrics-addr",
        &metrics,
    ]);
    let sidecar = Sidecar::start(env!("CARGO_BIN_EXE_pay-sidecar"), &args);
    let done = |bank: &Bank| bank.creations().len();
    sidecar.wait_for("the run to be under way", 30, || done(&bank) >= 20);

    // 1. A failover on command: the replica of the alert shard takes over
    //    and the old primary turns replica (READONLY, MOVED).
    let (old, new) = (shards[moved].primary, shards[moved].replica);
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query(&mut nodes[new].conn())
        .unwrap();
    sidecar.wait_for("the failover on command", 30, || {
        role(nodes[new].port).as_deref() == Some("master")
            && role(nodes[old].port).as_deref() == Some("slave")
    });
    let before_kill = done(&bank);
    sidecar.wait_for("the run to go on after the failover", 30, || {
        done(&bank) > before_kill
    });

    // 2. SIGKILL of another shard's primary, mid-run.
    let dead = nodes[shards[killed].primary].port;
    nodes[shards[killed].primary].kill();
    assert!(done(&bank) < keys.len(), "the run ended before the kill");
    // A payment created now, on a shard that is up, that the provider keeps
    // processing: its alert can only be sent while the shard is down.
    let probe = (0..)
        .map(|i| format!("probe_{i}"))
        .find(|k| shard_of(&mut any, k, &nodes, &shards) == other)
        .unwrap();
    bank.know(&probe, "pending", "ch_probe");
    let mut o = nodes[shards[other].primary].conn();
    cache(&mut o, &probe, "u", 2500, "EUR");
    sidecar.wait_for("the alert while a shard is down", 30, || {
        slack.messages().iter().any(|m| m.contains(&probe))
    });
    assert_eq!(
        role(nodes[shards[killed].replica].port).as_deref(),
        Some("slave"),
        "the shard came back before the alert"
    );
    sidecar.wait_for("/healthz to name the primary it cannot reach", 15, || {
        let (code, v) = healthz(&metrics);
        code == 200
            && v["status"] == "degraded"
            && v["primaries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["address"] == format!("127.0.0.1:{dead}") && p["reached"] == false)
    });
    // The shards that are up were served meanwhile.
    sidecar.wait_for("the shards that are up to be finished", 40, || {
        [moved, other].iter().all(|&s| {
            let primary = if s == moved { new } else { shards[s].primary };
            let mut c = nodes[primary].conn();
            stuck_keys(&mut c).iter().all(|k| *k == probe)
        })
    });

    // 3. The killed shard's replica takes over; its payments finish.
    config_set(
        &mut nodes[shards[killed].replica].conn(),
        "cluster-replica-no-failover",
        "no",
    );
    sidecar.wait_for("the replica of the killed primary to take over", 30, || {
        role(nodes[shards[killed].replica].port).as_deref() == Some("master")
    });
    // Each payment's status, from whichever live primary holds it.
    let status = |k: &str| -> String {
        for n in nodes.iter().filter(|n| n.port != dead) {
            let v: redis::RedisResult<redis::Value> =
                redis::cmd("PAY.CHECK").arg(k).query(&mut n.conn());
            if let Ok(v @ redis::Value::Array(_)) = v {
                if role(n.port).as_deref() == Some("master") {
                    return record(&v)["status"].clone();
                }
            }
        }
        String::new()
    };
    sidecar.wait_for("every payment to be finished", 60, || {
        keys.iter().all(|k| status(k) == "succeeded")
    });
    // Stranded: none. Only the probe is unresolved, as the provider says.
    let mut unresolved = BTreeSet::new();
    for s in &shards {
        for i in [s.primary, s.replica] {
            if nodes[i].port != dead && role(nodes[i].port).as_deref() == Some("master") {
                unresolved.extend(stuck_keys(&mut nodes[i].conn()));
            }
        }
    }
    assert_eq!(unresolved, BTreeSet::from([probe.clone()]));
    let created = bank.creations();
    assert_eq!(created.len(), keys.len() + 1, "{created:?}");
    assert!(
        created.values().all(|&n| n == 1),
        "charged twice: {created:?}"
    );
    sidecar.wait_for("/healthz to say ok again", 15, || {
        let (code, v) = healthz(&metrics);
        code == 200 && v["status"] == "ok"
    });
    let log = sidecar.log();
    assert!(log.contains("claiming from 3 primary(ies)"), "{log}");
}
