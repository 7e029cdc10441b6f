//! The HTTP transport through real proxies started by the test: haproxy
//! refusing the WebSocket upgrade, and nginx buffering whole responses
//! (`proxy_buffering on`, ignoring `X-Accel-Buffering`, as a proxy that
//! does not know it would). The relay is one process behind each.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::client::{Http, Mode, binary};
use crate::support::cluster::free_port;
use crate::support::{Got, Registered, Relay, WAIT, register, resume_msg};

/// A proxy process on a free port, with its own temp dir; killed on drop.
pub struct Proxy {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: &'static str,
}

impl Proxy {
    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT/path`.
    fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    fn start(kind: &'static str, config: impl Fn(&Path, u16) -> String) -> Proxy {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("relay-test-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let cfg = dir.join(format!("{kind}.conf"));
        std::fs::write(&cfg, config(&dir, port)).expect("write config");
        let log_name = if kind == "nginx" {
            "error.log"
        } else {
            "proxy.log"
        };
        let log = std::fs::File::create(dir.join("proxy.log")).expect("log");
        let mut cmd = match kind {
            "nginx" => {
                let mut c = Command::new(program("nginx"));
                c.arg("-p").arg(&dir).arg("-c").arg(&cfg);
                c
            }
            _ => {
                let mut c = Command::new(program("haproxy"));
                c.arg("-db").arg("-f").arg(&cfg);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {kind} (is it installed? `make deps`): {e}"));
        let mut proxy = Proxy {
            child,
            port,
            dir,
            log: log_name,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("{kind} exited with {status}: {}", proxy.tail());
            }
            assert!(
                Instant::now() < deadline,
                "{kind} did not listen: {}",
                proxy.tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn tail(&self) -> String {
        let mut out = std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default();
        out += &std::fs::read_to_string(self.dir.join(self.log)).unwrap_or_default();
        out
    }

    /// haproxy that answers 403 to any `Upgrade: websocket`, as some
    /// corporate proxies do, in front of `backends` (round robin).
    pub fn haproxy_refusing_websocket(backends: &[SocketAddr]) -> Proxy {
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!("    server node-{i} {a}\n"))
            .collect();
        Proxy::start("haproxy", move |_, port| {
            format!(
                "global\n    maxconn 512\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
                 frontend relay\n    bind 127.0.0.1:{port}\n    http-request deny deny_status 403 if {{ hdr(upgrade) -i websocket }}\n    default_backend relays\n\
                 backend relays\n    balance roundrobin\n{servers}"
            )
        })
    }

    /// nginx that buffers whole responses before passing them on, in front
    /// of `backends` (round robin); it passes no `Upgrade` either.
    pub fn nginx_buffering(backends: &[SocketAddr]) -> Proxy {
        let servers: String = backends
            .iter()
            .map(|a| format!("    server {a};\n"))
            .collect();
        Proxy::start("nginx", move |dir, port| {
            let d = dir.display();
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
            )
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- proxy log ----\n{}", self.tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` on PATH, or in /usr/sbin (where Debian puts both proxies).
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Pairs an HTTP browser behind `proxy` with a WebSocket mac on the relay,
/// exchanges data both ways verbatim, and resumes the browser over HTTP.
async fn through(proxy: &Proxy, relay: &Relay, mode: Mode) {
    through_to(&proxy.base(), register(relay).await, mode).await;
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
    let proxy = Proxy::haproxy_refusing_websocket(&[relay.addr]);
    // The WebSocket is refused at the proxy...
    let refused = tokio_tungstenite::connect_async(proxy.ws_url("/browser")).await;
    assert!(refused.is_err(), "the proxy let a WebSocket through");
    // ... and HTTP works, streaming and polling.
    through(&proxy, &relay, Mode::Stream).await;
    through(&proxy, &relay, Mode::Poll).await;
}

#[tokio::test]
async fn through_a_proxy_that_buffers_responses_long_polling_works() {
    let relay = Relay::start(&[]);
    let proxy = Proxy::nginx_buffering(&[relay.addr]);
    through(&proxy, &relay, Mode::Poll).await;
}

#[tokio::test]
async fn through_a_proxy_that_buffers_responses_a_stream_still_arrives_whole_when_it_ends() {
    // A short wait, so each buffered stream ends (and arrives) soon.
    let relay = Relay::start(&[("RELAY_HEARTBEAT_INTERVAL", "1s")]);
    let proxy = Proxy::nginx_buffering(&[relay.addr]);
    through(&proxy, &relay, Mode::Stream).await;
}
