//! `rediss://`: nodes talk to Redis over TLS, trusting a private CA given in
//! `RELAY_REDIS_CA`. The certificates are made here with openssl; Debian's
//! redis-server is built with TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::cluster::{Cluster, free_port, pair_at};
use crate::support::{Got, WAIT};

/// A directory of throwaway certificates; removed on drop.
struct Certs(PathBuf);

impl Certs {
    fn make() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "relay-test-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl (Debian package openssl) must be installed");
            assert!(ok.success(), "openssl {args:?} failed");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=relay-test-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        Certs(dir)
    }

    fn path(&self, f: &str) -> String {
        self.0.join(f).to_string_lossy().into_owned()
    }

    fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server that speaks only TLS; killed on drop.
struct TlsRedis(Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn nodes_use_redis_over_tls_with_a_private_ca() {
    let certs = Certs::make();
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &certs.path("srv.pem"),
            "--tls-key-file",
            &certs.path("srv.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &certs.path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &certs.dir().to_string_lossy(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let _redis = TlsRedis(child);
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = certs.path("ca.pem");
    // Nodes wait for their Redis to be reachable before they count as started.
    let c = Cluster::start_with_redis_url(2, &url, &[("RELAY_REDIS_CA", ca.as_str())]);
    let mut p = pair_at(&c.node(1).url("/mac"), &c.node(2).url("/browser")).await;
    p.mac.binary(vec![1, 2, 3]).await;
    assert_eq!(p.browser.recv().await, Got::Binary(vec![1, 2, 3]));
    p.browser.data("over tls").await;
    match tokio::time::timeout(WAIT, p.mac.recv()).await.unwrap() {
        Got::Text(t) => assert!(t.contains("over tls"), "{t}"),
        other => panic!("{other:?}"),
    }
}
