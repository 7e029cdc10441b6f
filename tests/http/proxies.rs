//! The HTTP transport through real proxies started by the test: haproxy
//! refusing the WebSocket upgrade; nginx with `proxy_buffering on` (and
//! `X-Accel-Buffering` ignored, as a proxy that does not know it would),
//! the common setting; and haproxy holding every response until it is
//! complete (`http-response wait-for-body`), which is what a proxy that
//! buffers whole responses does, and what nginx's buffering turns out not
//! to do to a response that arrives a little at a time: it passes each
//! piece on. The relay is one process behind each; haproxy is the shared
//! balancer fixture ([`Lb`]), nginx is started here.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{Http, Mode, binary};
use crate::support::cluster::{Lb, TempDir, free_port, program};
use crate::support::{Got, Registered, Relay, WAIT, register, resume_msg};

/// nginx with `proxy_buffering on` on a free port, with its own temp dir;
/// killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// nginx with `proxy_buffering on` in front of `backends` (round
    /// robin); it passes no `Upgrade` either.
    fn buffering(backends: &[SocketAddr]) -> Nginx {
        let servers: String = backends
            .iter()
            .map(|a| format!("    server {a};\n"))
            .collect();
        let dir = TempDir::new("nginx");
        let d = dir.path().display();
        let port = free_port();
        let cfg = dir.path().join("nginx.conf");
        std::fs::write(
            &cfg,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n\
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 upstream relays {{\n{servers}  }}\n\
                 server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{\n      proxy_pass http://relays;\n      proxy_http_version 1.1;\n\
                 proxy_buffering on;\n      proxy_ignore_headers X-Accel-Buffering;\n\
                 proxy_read_timeout 60s;\n      client_max_body_size 8m;\n    }}\n  }}\n}}\n"
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log");
        let child = Command::new(program("nginx"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nginx (is it installed? `make deps`): {e}"));
        let mut nginx = Nginx { child, port, dir };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited with {status}: {}", nginx.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// `http://127.0.0.1:PORT`.
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What nginx wrote to stderr and its error log.
    fn logs(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read("proxy.log") + &read("error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nginx log ----\n{}", self.logs());
        }
    }
}

/// Pairs an HTTP browser at `base` (a proxy in front of `relay`) with a
/// WebSocket mac on the relay, exchanges data both ways verbatim, and
/// resumes the browser over HTTP.
async fn through(base: &str, relay: &Relay, mode: Mode) {
    through_to(base, register(relay).await, mode).await;
}

/// The same with the mac registered anywhere, the browser at `base`.
pub async fn through_to(base: &str, reg: Registered, mode: Mode) {
    let mut reg = reg;
    let mut browser = Http::open(base, "browser", mode).await;
    browser
        .json(json!({"type": "join", "code": reg.code}))
        .await;
    let joined = browser.expect("joined").await;
    let token = joined["resumeToken"].as_str().expect("token").to_owned();
    reg.ws.expect("peer_joined").await;

    let all: Vec<u8> = (0..=255).collect();
    for i in 0..10u8 {
        reg.ws.binary([&[i][..], &all].concat()).await;
        reg.ws
            .text(json!({"type": "data", "payload": format!("{i}\r\n")}).to_string())
            .await;
    }
    for i in 0..10u8 {
        assert_eq!(browser.recv().await, Got::Binary([&[i][..], &all].concat()));
        let t = json!({"type": "data", "payload": format!("{i}\r\n")}).to_string();
        assert_eq!(browser.recv().await, Got::Text(t));
    }
    browser
        .send((0..10u8).map(|i| binary(&[i, 0, 255])).collect())
        .await;
    for i in 0..10u8 {
        assert_eq!(reg.ws.recv().await, Got::Binary(vec![i, 0, 255]));
    }

    // A resume over HTTP through the proxy, as after a network change.
    for i in 10..20u8 {
        reg.ws.binary(vec![i]).await;
    }
    let mut again = Http::open(base, "browser", mode).await;
    again.json(resume_msg(&reg.session_id, &token, 20)).await;
    let resumed = again.expect("resumed").await;
    assert_eq!(resumed["lastSeq"], 10);
    for i in 10..20u8 {
        assert_eq!(again.recv().await, Got::Binary(vec![i]));
    }
    again.binary(&[99]).await;
    assert_eq!(reg.ws.recv().await, Got::Binary(vec![99]));
}

#[tokio::test]
async fn through_a_proxy_that_refuses_websocket_the_http_transport_pairs_and_resumes() {
    let relay = Relay::start(&[]);
    let proxy = Lb::start_refusing_websocket(&[relay.addr]);
    // The WebSocket is refused at the proxy...
    let refused = tokio_tungstenite::connect_async(proxy.url("/browser")).await;
    assert!(refused.is_err(), "the proxy let a WebSocket through");
    // ... and HTTP works, streaming and polling.
    through(&proxy.base(), &relay, Mode::Stream).await;
    through(&proxy.base(), &relay, Mode::Poll).await;
}

#[tokio::test]
async fn through_nginx_with_proxy_buffering_on_long_polling_works() {
    let relay = Relay::start(&[]);
    let proxy = Nginx::buffering(&[relay.addr]);
    through(&proxy.base(), &relay, Mode::Poll).await;
}

#[tokio::test]
async fn through_nginx_with_proxy_buffering_on_streaming_works() {
    // A short wait, so a stream nginx held would end (and arrive) soon.
    let relay = Relay::start(&[("RELAY_HEARTBEAT_INTERVAL", "1s")]);
    let proxy = Nginx::buffering(&[relay.addr]);
    through(&proxy.base(), &relay, Mode::Stream).await;
}

#[tokio::test]
async fn through_a_proxy_that_holds_whole_responses_long_polling_works() {
    let relay = Relay::start(&[]);
    let proxy = Lb::start_holding_responses(&[relay.addr]);
    through(&proxy.base(), &relay, Mode::Poll).await;
}

#[tokio::test]
async fn through_a_proxy_that_holds_whole_responses_a_stream_arrives_whole_when_it_ends() {
    // A short wait, so each held stream ends (and arrives) soon.
    let relay = Relay::start(&[("RELAY_HEARTBEAT_INTERVAL", "1s")]);
    let proxy = Lb::start_holding_responses(&[relay.addr]);
    through(&proxy.base(), &relay, Mode::Stream).await;
}
