//! Cluster helpers: forming a cluster, slots, and resharding by keys.

use std::process::Command;
use std::time::Duration;

use redis::Connection;

use crate::*;

/// Starts a server with cluster mode on (and the module's defaults), not yet
/// part of any cluster.
pub fn new_cluster_node() -> Server {
    cluster_node(Opts::new(), 5000)
}

/// A server with cluster mode on and `opts`, not yet part of any cluster;
/// it fails a node that has not answered for `node_timeout_ms`.
pub fn cluster_node(opts: Opts, node_timeout_ms: u64) -> Server {
    Server::with(
        opts.config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config("cluster-node-timeout", &node_timeout_ms.to_string()),
    )
}

/// Makes one cluster of `nodes` with `redis-cli --cluster create` and
/// `replicas` replicas per primary, and waits until every node says the
/// cluster is ok and every replica's link to its primary is up.
pub fn create_cluster(nodes: &[Server], replicas: usize) {
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in nodes {
        let mut c = n.conn();
        assert!(
            wait_until(Duration::from_secs(30), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                let repl: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            }),
            "the cluster did not come up"
        );
    }
}

/// One shard of a test cluster: indexes into its node list.
#[derive(Clone, Copy, Debug)]
pub struct Shard {
    pub primary: usize,
    pub replica: usize,
}

/// `shards` primaries with one replica each, with `opts`, quick to fail
/// over: a node is failed after 2 s of silence, the shards that are up keep
/// serving while one is down (`cluster-require-full-coverage no`), and any
/// replica may take over (`cluster-replica-validity-factor 0`). Returns the
/// nodes and which is which.
pub fn cluster_with_replicas(shards: usize, opts: Opts) -> (Vec<Server>, Vec<Shard>) {
    let nodes: Vec<Server> = (0..shards * 2)
        .map(|_| {
            let opts = opts
                .clone()
                .config("cluster-port", &free_port().to_string())
                .config("cluster-require-full-coverage", "no")
                .config("cluster-replica-validity-factor", "0");
            cluster_node(opts, 2000)
        })
        .collect();
    create_cluster(&nodes, 1);
    let mut layout = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let replica_of = info_str(&mut n.conn(), "replication", "master_port")
            .and_then(|p| p.parse::<u16>().ok());
        if let Some(port) = replica_of {
            let primary = nodes.iter().position(|p| p.port == port).unwrap();
            layout.push(Shard {
                primary,
                replica: i,
            });
        }
    }
    assert_eq!(layout.len(), shards, "{layout:?}");
    (nodes, layout)
}

/// `CLUSTER MYID`.
pub fn node_id(s: &Server) -> String {
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut s.conn())
        .unwrap()
}

/// Makes one cluster of `nodes`, primaries all, node i serving the slots
/// `ranges[i]` (inclusive), and waits until every node says the cluster is
/// ok.
pub fn form_cluster(nodes: &[&Server], ranges: &[(u16, u16)]) {
    assert_eq!(nodes.len(), ranges.len());
    for (n, (first, last)) in nodes.iter().zip(ranges) {
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(first)
            .arg(last)
            .query(&mut n.conn())
            .unwrap();
    }
    for n in &nodes[1..] {
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(n.port)
            .query(&mut nodes[0].conn())
            .unwrap();
    }
    for n in nodes {
        let mut c = n.conn();
        assert!(
            wait_until(Duration::from_secs(20), || {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", nodes.len()))
            }),
            "cluster did not come up"
        );
    }
}

/// `CLUSTER KEYSLOT key`.
pub fn key_slot(c: &mut Connection, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(c)
        .unwrap()
}

/// `n` key names `{prefix}{i}` whose hash slots lie in `first..=last`.
pub fn keys_in_slots(
    c: &mut Connection,
    prefix: &str,
    first: u16,
    last: u16,
    n: usize,
) -> Vec<String> {
    let mut keys = Vec::with_capacity(n);
    for i in 0.. {
        if keys.len() == n {
            break;
        }
        let key = format!("{prefix}{i}");
        if (first..=last).contains(&key_slot(c, &key)) {
            keys.push(key);
        }
    }
    keys
}

/// Moves `slot` and its keys from `from` to `to` the way resharding did
/// before Valkey 9 (and `redis-cli --cluster reshard` still does): IMPORTING
/// and MIGRATING, MIGRATE of the keys in batches, then the new owner on both.
pub fn migrate_slot_by_keys(from: &Server, to: &Server, slot: u16) {
    let (mut f, mut t) = (from.conn(), to.conn());
    let (from_id, to_id) = (node_id(from), node_id(to));
    let setslot = |c: &mut Connection, state: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query(c)
            .unwrap();
    };
    setslot(&mut t, "IMPORTING", &from_id);
    setslot(&mut f, "MIGRATING", &to_id);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut f)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(10_000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut f)
            .unwrap();
    }
    setslot(&mut t, "NODE", &to_id);
    setslot(&mut f, "NODE", &to_id);
}
