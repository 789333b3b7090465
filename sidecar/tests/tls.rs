//! TLS: a redis-server that speaks only TLS and asks every client for a
//! certificate (`--port 0 --tls-port P --tls-auth-clients yes`), with
//! certificates made by the test. The sidecar over `rediss://` with a client
//! certificate finishes stuck payments, alerts and serves health through
//! it; with the wrong CA, no client certificate or a server certificate
//! that does not name the host, it is refused with a clear log line and
//! nothing changes. Through a Sentinel that speaks TLS too, it finds the
//! TLS primary.

use std::time::Duration;

use testkit::standin::{Bank, Slack};
use testkit::*;

const PAY_SIDECAR: &str = env!("CARGO_BIN_EXE_pay-sidecar");

/// The sidecar's TLS options: the server's certificate checked against
/// `ca` (a file of `certs`), and the test client certificate.
fn tls_options(certs: &Certs, ca: &str) -> [String; 6] {
    [
        "--redis-ca-cert".into(),
        certs.path(ca),
        "--redis-client-cert".into(),
        certs.path("client.crt"),
        "--redis-client-key".into(),
        certs.path("client.key"),
    ]
}

fn stuck(c: &mut redis::Connection, key: &str) -> std::collections::BTreeMap<String, String> {
    check(c, key).expect("the payment is there")
}

#[test]
fn over_mutual_tls_the_sidecar_finishes_stuck_payments_and_alerts() {
    let certs = Certs::make();
    let server = tls_server(&certs, &Opts::sweeper(100, 20), "127.0.0.1");
    let mut c = tls_conn(&certs, server.port).unwrap();
    let bank = Bank::reliable();
    let slack = Slack::start(false);
    // The provider charged this one but the reply was lost; it keeps the
    // other one processing for ever (so it is alerted).
    bank.know("txn_known", "succeeded", "ch_known");
    bank.know("txn_slow", "pending", "ch_slow");
    let keys: Vec<String> = (0..20).map(|i| format!("txn_{i}")).collect();
    for k in keys
        .iter()
        .map(String::as_str)
        .chain(["txn_known", "txn_slow"])
    {
        cache(&mut c, k, "u", 1000, "EUR");
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let url = format!("rediss://127.0.0.1:{}/", server.port);
    let mut args = sidecar_args(&url, &bank.url, Some(&slack.url));
    args.extend(["--alert-after", "1s", "--metrics-addr", &metrics]);
    let tls = tls_options(&certs, "ca.crt");
    args.extend(tls.iter().map(String::as_str));
    let sidecar = Sidecar::start(PAY_SIDECAR, &args);
    sidecar.wait_for("every payment to be finished", 30, || {
        keys.iter()
            .chain([&"txn_known".to_string()])
            .all(|k| stuck(&mut c, k)["status"] == "succeeded")
    });
    assert_eq!(stuck(&mut c, "txn_known")["provider_ref"], "ch_known");
    // Each charged once; what the provider knew was never sent.
    let created = bank.creations();
    assert!(created.values().all(|&n| n == 1), "{created:?}");
    let mut posted: Vec<String> = bank
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .filter_map(|r| r.idempotency_key)
        .collect();
    posted.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        posted, expected,
        "each payment sent once, the known ones never"
    );
    // The alert state and outbox live in Redis too: over TLS as well.
    sidecar.wait_for("the alert about txn_slow", 20, || {
        slack.messages().iter().any(|m| m.contains("txn_slow"))
    });
    let health = ureq::get(&format!("http://{metrics}/healthz"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["primaries"][0]["address"],
        format!("127.0.0.1:{}", server.port),
        "{v}"
    );
    assert!(
        sidecar
            .log()
            .contains("over TLS (server certificates checked against"),
        "{}",
        sidecar.log()
    );
}

/// Runs a sidecar with `args` against `url` until its log says `expect`,
/// then checks that the payment was left as it was and the provider never
/// heard of it.
fn refused(
    url: &str,
    args: &[impl AsRef<str>],
    expect: &[&str],
    c: &mut redis::Connection,
    bank: &Bank,
) {
    let mut all = sidecar_args(url, &bank.url, None);
    all.extend(args.iter().map(AsRef::as_ref));
    let before = stuck(c, "txn_1");
    let sidecar = Sidecar::start(PAY_SIDECAR, &all);
    sidecar.wait_for(&format!("a log line with {expect:?}"), 15, || {
        let log = sidecar.log();
        expect.iter().all(|e| log.contains(e))
    });
    // It keeps trying (once a second) and keeps being refused.
    std::thread::sleep(Duration::from_millis(1500));
    drop(sidecar);
    assert_eq!(stuck(c, "txn_1"), before, "the payment changed");
    assert!(bank.requests().is_empty(), "the provider was asked");
}

#[test]
fn a_wrong_ca_a_missing_client_certificate_or_a_wrong_name_is_refused_and_changes_nothing() {
    let certs = Certs::make();
    // Also on 127.0.0.2, an address its certificate does not name.
    let server = tls_server(&certs, &Opts::sweeper(100, 20), "127.0.0.1 127.0.0.2");
    let mut c = tls_conn(&certs, server.port).unwrap();
    let bank = Bank::reliable();
    cache(&mut c, "txn_1", "u", 1000, "EUR");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stuck(&mut c, "txn_1")["attempts"], "0");
    let url = format!("rediss://127.0.0.1:{}/", server.port);
    let ca = certs.path("ca.crt");
    // A CA that did not sign the server's certificate.
    refused(
        &url,
        &tls_options(&certs, "other-ca.crt"),
        &["cannot reach Redis yet", "UnknownIssuer", "TLS refused"],
        &mut c,
        &bank,
    );
    // The right CA, but no client certificate: the server refuses.
    refused(
        &url,
        &["--redis-ca-cert", &ca],
        &[
            "cannot reach Redis yet",
            "CertificateRequired",
            "TLS refused",
        ],
        &mut c,
        &bank,
    );
    // The right certificates, but the server's does not name 127.0.0.2:
    // server names are checked.
    refused(
        &format!("rediss://127.0.0.2:{}/", server.port),
        &tls_options(&certs, "ca.crt"),
        &[
            "cannot reach Redis yet",
            "not valid for name \"127.0.0.2\"",
            "TLS refused",
        ],
        &mut c,
        &bank,
    );
    // A plain redis:// URL to a TLS port: refused, and certificate options
    // without rediss:// are a configuration error at start.
    let out = std::process::Command::new(PAY_SIDECAR)
        .args([
            "--redis-url",
            &format!("redis://127.0.0.1:{}/", server.port),
        ])
        .args(["--bank-url", &bank.url, "--redis-ca-cert", &ca])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis-ca-cert needs a rediss://"), "{err}");
    assert_eq!(stuck(&mut c, "txn_1")["attempts"], "0");
}

#[test]
fn through_a_sentinel_that_speaks_tls_the_sidecar_finds_the_tls_primary_and_finishes_payments() {
    let certs = Certs::make();
    let server = tls_server(&certs, &Opts::sweeper(100, 20), "127.0.0.1");
    let sentinel = tls_sentinel(&server.bin, &certs, "pay", server.port);
    let mut c = tls_conn(&certs, server.port).unwrap();
    let bank = Bank::reliable();
    for i in 0..5 {
        cache(&mut c, &format!("txn_{i}"), "u", 1000, "EUR");
    }
    let sentinels = format!("127.0.0.1:{}", sentinel.port);
    // Only the scheme counts in the URL: TLS to the Sentinel and the data node.
    let mut args = sidecar_args("rediss://unused.invalid/", &bank.url, None);
    args.extend(["--sentinel", &sentinels, "--sentinel-master", "pay"]);
    let tls = tls_options(&certs, "ca.crt");
    args.extend(tls.iter().map(String::as_str));
    let sidecar = Sidecar::start(PAY_SIDECAR, &args);
    sidecar.wait_for("the payments to be finished", 30, || {
        (0..5).all(|i| stuck(&mut c, &format!("txn_{i}"))["status"] == "succeeded")
    });
    assert!(
        sidecar.log().contains(&format!(
            "claiming from 1 primary(ies): 127.0.0.1:{}",
            server.port
        )),
        "{}",
        sidecar.log()
    );
    assert_eq!(bank.creations().len(), 5);
}
