//! `rediss://`: nodes talk to Redis over TLS, trusting a private CA given in
//! `RELAY_REDIS_CA`. The certificates are made here with openssl; Debian's
//! redis-server is built with TLS.

use std::process::{Child, Command, Stdio};

use crate::support::certs::Certs;
use crate::support::cluster::{Cluster, free_port, pair_at};
use crate::support::{Got, WAIT};

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
