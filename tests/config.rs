//! pay.* configuration: at start (directive, module argument), with
//! MODULE LOADEX, and with CONFIG SET/GET, ranges enforced.

use redis::Value;
use testkit::*;

fn get(c: &mut redis::Connection, name: &str) -> i64 {
    let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(c).unwrap();
    v[1].parse().unwrap()
}

#[test]
fn defaults_are_visible_with_config_get() {
    let s = Server::start();
    let mut c = s.conn();
    assert_eq!(get(&mut c, "pay.stale-after-ms"), 300_000);
    assert_eq!(get(&mut c, "pay.alert-after-ms"), 600_000);
    assert_eq!(get(&mut c, "pay.sweep-interval-ms"), 1000);
    assert_eq!(get(&mut c, "pay.default-ttl"), 86_400);
}

#[test]
fn config_set_applies_and_ranges_are_enforced() {
    let s = Server::start();
    let mut c = s.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("pay.default-ttl")
        .arg(60)
        .query(&mut c)
        .unwrap();
    assert_eq!(get(&mut c, "pay.default-ttl"), 60);
    cache(&mut c, "k", "u", 1, "USD");
    let ttl: i64 = redis::cmd("TTL").arg("k").query(&mut c).unwrap();
    assert_eq!(ttl, -1, "pending payments never expire");
    update(&mut c, "k", "succeeded");
    let ttl: i64 = redis::cmd("TTL").arg("k").query(&mut c).unwrap();
    assert!((59..=60).contains(&ttl), "{ttl}");
    for (name, bad) in [
        ("pay.default-ttl", "0"),
        ("pay.default-ttl", "abc"),
        ("pay.sweep-interval-ms", "1"),
        ("pay.stale-after-ms", "-5"),
    ] {
        let e = err(&mut c, redis::cmd("CONFIG").arg("SET").arg(name).arg(bad));
        assert!(e.starts_with("ERR"), "{name} {bad}: {e}");
    }
    assert_eq!(get(&mut c, "pay.default-ttl"), 60);
    assert_eq!(get(&mut c, "pay.sweep-interval-ms"), 1000);
}

#[test]
fn start_time_directives_and_module_arguments_set_values() {
    let s = Server::with(
        Opts::new()
            .config("pay.alert-after-ms", "1234")
            .module_arg("stale-after-ms")
            .module_arg("500")
            .module_arg("pay.default-ttl")
            .module_arg("99"),
    );
    let mut c = s.conn();
    assert_eq!(get(&mut c, "pay.alert-after-ms"), 1234);
    assert_eq!(get(&mut c, "pay.stale-after-ms"), 500);
    assert_eq!(get(&mut c, "pay.default-ttl"), 99);
}

#[test]
fn an_unknown_or_malformed_module_argument_fails_the_load_clearly() {
    for (args, says) in [
        (
            &["stale-after", "5"][..],
            "unknown module argument 'stale-after'",
        ),
        (&["stale-after-ms"], "needs a value"),
        (&["default-ttl", "0"], "must be an integer from 1"),
        (&["key-prefix", "tab\there"], "pay.key-prefix must be"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(server_bin());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--logfile", "server.log"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--loadmodule")
            .arg(module_path())
            .args(args)
            .current_dir(dir.path());
        let status = cmd.status().unwrap();
        assert!(!status.success(), "{args:?}: server started");
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
        assert!(log.contains(says), "{args:?}: log says:\n{log}");
    }
}

#[test]
fn module_loadex_takes_config_and_args() {
    let s = Server::with(
        Opts::new()
            .without_module()
            .config("enable-module-command", "yes"),
    );
    let mut c = s.conn();
    let _: Value = redis::cmd("MODULE")
        .arg("LOADEX")
        .arg(module_path().to_str().unwrap())
        .arg("CONFIG")
        .arg("pay.stale-after-ms")
        .arg(700)
        .arg("ARGS")
        .arg("default-ttl")
        .arg(77)
        .query(&mut c)
        .unwrap();
    assert_eq!(get(&mut c, "pay.stale-after-ms"), 700);
    assert_eq!(get(&mut c, "pay.default-ttl"), 77);
    let r = cache(&mut c, "k", "u", 1, "USD");
    assert_eq!(r["outcome"], "created");
}
