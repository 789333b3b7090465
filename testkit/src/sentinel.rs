//! Sentinels (the server binary in sentinel mode) for the deployment tests.

use std::process::Command;
use std::time::Duration;

use crate::*;

/// A Sentinel monitoring `master` at 127.0.0.1:`master_port` with quorum
/// 2, quick to call it down and to fail over; with `password`, clients and
/// the other Sentinels must give it.
pub fn sentinel(master: &str, master_port: u16, password: Option<&str>) -> Proc {
    sentinel_with(&server_bin(), master, master_port, 2, password, None)
}

/// A Sentinel that speaks TLS only, to its clients and to the servers it
/// watches, with the test certificates (quorum 1: it is alone).
pub fn tls_sentinel(bin: &str, certs: &Certs, master: &str, master_port: u16) -> Proc {
    sentinel_with(bin, master, master_port, 1, None, Some(certs))
}

fn sentinel_with(
    bin: &str,
    master: &str,
    master_port: u16,
    quorum: u8,
    password: Option<&str>,
    tls: Option<&Certs>,
) -> Proc {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let listen = match tls {
            None => format!("port {port}\n"),
            Some(c) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients yes\ntls-replication yes\n",
                c.path("server.crt"),
                c.path("server.key"),
                c.path("ca.crt")
            ),
        };
        let mut conf = format!(
            "{listen}bind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
             sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n\
             sentinel parallel-syncs {master} 1\n",
            dir.path().display()
        );
        if let Some(p) = password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(&path).arg("--sentinel");
        let mut p = Proc::spawn(cmd, dir, "sentinel.log", false, port);
        let ready = wait_until(Duration::from_secs(20), || {
            p.exited() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if ready && !p.exited() {
            return p;
        }
        eprintln!("sentinel did not start; log:\n{}", p.log());
    }
    panic!("sentinel did not start");
}
