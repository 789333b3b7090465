//! TLS for the deployment tests: certificates made for one test with the
//! `openssl` command, a server with the module that speaks TLS only, and
//! connections to it with the test client certificate (the last two with
//! the `tls` feature, which builds redis with rustls).

use std::path::Path;
use std::process::Command;
#[cfg(feature = "tls")]
use std::time::Duration;

#[cfg(feature = "tls")]
use crate::*;

/// Certificates made for one test by the `openssl` command: a CA, a server
/// certificate for 127.0.0.1 and localhost, a client certificate, and a
/// second CA that signed neither.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=redis-pay test {ca}"),
            );
            let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt, "-subj", &subj]);
            openssl(d, &args);
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            let (key, csr, crt, ext, subj) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
                format!("/CN=redis-pay test {who}"),
            );
            let mut args = vec!["req", "-nodes"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &args);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &crt,
                    "-extfile",
                    &ext,
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// What a client of the test servers presents: our CA, our certificate.
    #[cfg(feature = "tls")]
    pub fn client(&self) -> redis::TlsCertificates {
        let read = |n: &str| std::fs::read(self.dir.path().join(n)).unwrap();
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        }
    }
}

/// A redis-server with the module that speaks TLS only (`--port 0`), asks
/// every client for a certificate signed by the test CA, and listens on
/// `binds` (127.0.0.x addresses). The server is `PAY_SERVER`'s; a build of
/// it without TLS (some packaged Valkey builds) is replaced by Debian's
/// `redis-server`, which has TLS, and the test output says so: what is
/// under test here is the client's TLS.
#[cfg(feature = "tls")]
pub fn tls_server(certs: &Certs, opts: &Opts, binds: &str) -> Proc {
    let mut bin = server_bin();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", binds, "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &certs.path("server.crt")])
            .args(["--tls-key-file", &certs.path("server.key")])
            .args(["--tls-ca-cert-file", &certs.path("ca.crt")])
            .args(["--tls-auth-clients", "yes", "--logfile", "server.log"])
            .arg("--dir")
            .arg(dir.path());
        for (k, v) in &opts.config {
            cmd.arg(format!("--{k}")).arg(v);
        }
        cmd.arg("--loadmodule").arg(module_path());
        cmd.args(&opts.module_args);
        let mut p = Proc::spawn(cmd, dir, "server.log", false, port);
        let ready = wait_until(Duration::from_secs(20), || {
            p.exited()
                || tls_conn(certs, port)
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
        });
        if ready && !p.exited() {
            return p;
        }
        let log = p.log();
        if log.contains("TLS support") && bin != "redis-server" {
            eprintln!("{bin} was built without TLS; the TLS tests use redis-server");
            bin = "redis-server".into();
            continue;
        }
        eprintln!("TLS server did not start; log:\n{log}");
    }
    panic!("TLS server did not start");
}

/// A connection to a test TLS server, with the test client certificate.
#[cfg(feature = "tls")]
pub fn tls_conn(certs: &Certs, port: u16) -> redis::RedisResult<redis::Connection> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client =
        redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/"), certs.client())?;
    let c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(c)
}
