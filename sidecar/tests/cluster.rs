//! Redis Cluster: three primaries on loopback ports, created with
//! `redis-cli --cluster create`; a cluster-aware client routes PAY.* by key,
//! each primary's PAY.STUCK lists only its own payments, resharding slots
//! that hold payments keeps every record and both indexes exact, and one
//! sidecar given any node finishes the stale payments of every primary.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::standin::Bank;
use testkit::*;

fn cluster_node() -> Server {
    Server::with(
        Opts::sweeper(100, 20)
            .config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config("cluster-node-timeout", "5000"),
    )
}

#[test]
fn one_sidecar_finishes_stale_payments_on_every_primary() {
    let nodes: Vec<Server> = (0..3).map(|_| cluster_node()).collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(status.success(), "redis-cli --cluster create failed");
    for n in &nodes {
        let mut c = n.conn();
        assert!(
            wait_until(Duration::from_secs(20), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                info.contains("cluster_state:ok")
            }),
            "cluster did not come up"
        );
    }

    // A cluster-aware client routes PAY.CACHE by its key.
    let client = redis::cluster::ClusterClientBuilder::new(vec![format!("redis://{}/", addrs[0])])
        .build()
        .unwrap();
    let mut cc = client.get_connection().unwrap();
    let keys: BTreeSet<String> = (0..300).map(|i| format!("txn:{i}")).collect();
    for k in &keys {
        assert_eq!(cache_outcome(&mut cc, k), "created");
    }
    // Each primary lists only its own payments; together, all of them.
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = BTreeSet::new();
    for n in &nodes {
        let mut c = n.conn();
        let own = stuck_keys(&mut c);
        let dbsize: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(own.len(), dbsize, "a primary listed keys it does not hold");
        assert!(!own.is_empty(), "slots were not spread");
        for k in own {
            assert!(seen.insert(k), "a payment listed by two primaries");
        }
    }
    assert_eq!(seen, keys);

    // Reshard: move 2000 slots, with their payments, from the first primary
    // to the second. Every record and both indexes stay exact.
    let id = |n: &Server| -> String {
        let mut c = n.conn();
        redis::cmd("CLUSTER").arg("MYID").query(&mut c).unwrap()
    };
    let before: Vec<usize> = nodes
        .iter()
        .map(|n| redis::cmd("DBSIZE").query(&mut n.conn()).unwrap())
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "reshard", &addrs[0]])
        .args([
            "--cluster-from",
            &id(&nodes[0]),
            "--cluster-to",
            &id(&nodes[1]),
        ])
        .args(["--cluster-slots", "2000", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(status.success(), "reshard failed");
    let after: Vec<usize> = nodes
        .iter()
        .map(|n| redis::cmd("DBSIZE").query(&mut n.conn()).unwrap())
        .collect();
    assert!(
        after[0] < before[0],
        "no payment moved: {before:?} -> {after:?}"
    );
    assert_eq!(after.iter().sum::<usize>(), keys.len());
    let mut seen = BTreeSet::new();
    for n in &nodes {
        let mut c = n.conn();
        assert_index_exact(&mut c, &[0]);
        seen.extend(stuck_keys(&mut c));
    }
    assert_eq!(seen, keys, "a payment went missing in the reshard");
    let mut cc = client.get_connection().unwrap();
    for k in &keys {
        assert_eq!(cache_outcome(&mut cc, k), "duplicate", "{k}");
    }

    let bank = Bank::start(0.0, Duration::ZERO, Duration::ZERO, 9);
    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_pay-sidecar"))
        .arg("--redis-url")
        .arg(format!("redis://{}/", addrs[1]))
        .arg("--bank-url")
        .arg(&bank.url)
        .args(["--interval", "200ms", "--lease", "3s", "--timeout", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = wait_until(Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| info_field(&mut n.conn(), "records_pending") == 0)
    });
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    assert!(done, "stale payments left on some primary");
    let created = bank.creations();
    assert_eq!(created.len(), keys.len());
    assert!(created.values().all(|&n| n == 1));
    for n in &nodes {
        let mut c = n.conn();
        assert!(info_field(&mut c, "records_succeeded") > 0);
        assert_index_exact(&mut c, &[0]);
    }
}

/// PAY.CACHE of one payment through the cluster client: its outcome.
fn cache_outcome(cc: &mut redis::cluster::ClusterConnection, key: &str) -> String {
    let v: redis::Value = redis::cmd("PAY.CACHE")
        .arg(key)
        .arg("u")
        .arg(1000)
        .arg("USD")
        .query(cc)
        .unwrap();
    record(&v)["outcome"].clone()
}
