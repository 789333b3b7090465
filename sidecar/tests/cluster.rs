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

#[test]
fn one_sidecar_finishes_stale_payments_on_every_primary() {
    let nodes: Vec<Server> = (0..3)
        .map(|_| cluster_node(Opts::sweeper(100, 20), 5000))
        .collect();
    create_cluster(&nodes, 0);
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();

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
    let before: Vec<usize> = nodes
        .iter()
        .map(|n| redis::cmd("DBSIZE").query(&mut n.conn()).unwrap())
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "reshard", &addrs[0]])
        .args([
            "--cluster-from",
            &node_id(&nodes[0]),
            "--cluster-to",
            &node_id(&nodes[1]),
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

    let bank = Bank::reliable();
    let url = format!("redis://{}/", addrs[1]);
    let mut args = sidecar_args(&url, &bank.url, None);
    args.extend(["--interval", "200ms", "--lease", "3s", "--timeout", "1s"]);
    let sidecar = Sidecar::launch(env!("CARGO_BIN_EXE_pay-sidecar"), &args);
    sidecar.wait_for("no stale payment left on any primary", 60, || {
        nodes
            .iter()
            .all(|n| info_field(&mut n.conn(), "records_pending") == 0)
    });
    drop(sidecar);
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
