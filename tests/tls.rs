//! TLS on the listener (`RELAY_TLS_CERT`, `RELAY_TLS_KEY`): `wss://` clients
//! pair and relay, the probes answer over https, plain connections get
//! nothing, and the command-line client reaches it with the system's trust
//! store (here a private CA named in `SSL_CERT_FILE`).

use std::process::Stdio;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::Connector;

use crate::support::certs::Certs;
use crate::support::{Relay, WAIT, Ws};

/// A rustls client trusting only the test CA.
fn trusting(certs: &Certs) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn wss(url: &str, tls: &Arc<rustls::ClientConfig>) -> Ws {
    let (stream, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true,
            Some(Connector::Rustls(Arc::clone(tls))),
        ),
    )
    .await
    .expect("connect in time")
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    Ws::from_stream(stream)
}

#[tokio::test]
async fn wss_clients_pair_and_relay_over_the_tls_listener() {
    let certs = Certs::make();
    let relay = Relay::start(&[
        ("RELAY_TLS_CERT", &certs.path("srv.pem")),
        ("RELAY_TLS_KEY", &certs.path("srv.key")),
    ]);
    assert_eq!(relay.start_fields()["tls"], true);
    let tls = trusting(&certs);
    let base = format!("wss://{}", relay.addr);

    let mut mac = wss(&format!("{base}/mac"), &tls).await;
    mac.json(json!({"type": "register"})).await;
    let code = mac.expect("registered").await["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut browser = wss(&format!("{base}/browser"), &tls).await;
    browser.json(json!({"type": "join", "code": code})).await;
    browser.expect("joined").await;
    mac.expect("peer_joined").await;
    mac.data("over tls").await;
    assert_eq!(browser.recv_json().await["payload"], "over tls");

    // Probes answer over https (the raw TLS stream, HTTP/1.0 to get one answer).
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio::time::timeout(WAIT, connector.connect(name.clone(), tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .ok();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");

    // The request-head ceiling holds inside TLS too: 431 for a 17 KiB upgrade.
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let mut s = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let req = crate::bad_input::padded_upgrade("/mac", 17 << 10, 4000);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A plain-text client gets no WebSocket.
    let plain = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/mac", relay.addr)),
    )
    .await
    .expect("an answer in time");
    assert!(
        plain.is_err(),
        "plain ws:// must not work on a TLS listener"
    );

    // The command-line client trusts the system's roots; SSL_CERT_FILE points them at the test CA.
    let mut join = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["host", "--url", &base])
        .env("SSL_CERT_FILE", certs.path("ca.pem"))
        .env_remove("RELAY_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(join.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, async {
        while let Some(l) = err.next_line().await.unwrap() {
            if l.contains("code ") {
                return l;
            }
        }
        panic!("relay host ended without a code");
    })
    .await
    .expect("a code in time");
    assert!(line.contains("code "), "{line}");
}

#[tokio::test]
async fn a_bad_certificate_setting_stops_the_relay_with_a_clear_message() {
    let certs = Certs::make();
    for (cert, key, says) in [
        (certs.path("srv.pem"), String::new(), "go together"),
        (
            certs.path("missing.pem"),
            certs.path("srv.key"),
            "RELAY_TLS_CERT",
        ),
        (
            certs.path("srv.pem"),
            certs.path("srv.pem"),
            "RELAY_TLS_KEY",
        ),
        (
            certs.path("ca.pem"),
            certs.path("srv.key"),
            "do not make a usable pair",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .env_clear()
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_TLS_CERT", &cert)
            .env("RELAY_TLS_KEY", &key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cert} {key}: started");
        assert!(stderr.contains(says), "{cert} {key}: {stderr}");
    }
}
