//! A proxy that holds every answer until it is whole, as some antivirus
//! products and old corporate proxies do (nginx's `proxy_buffering on`
//! turns out to pass a stream's bytes as they come, so it cannot stand in
//! for one). Built from real HTTP parts, actix-web in front and reqwest
//! behind, on its own thread: each request goes to the next backend in turn
//! (round robin, no stickiness); no WebSocket upgrade passes (it reaches the
//! relay as a plain GET). Stopped on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// What the proxy's handler needs; fixed after start.
struct Upstream {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    http: reqwest::Client,
}

/// The running proxy.
pub struct BufferingProxy {
    port: u16,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BufferingProxy {
    /// Starts the proxy on a free port in front of `backends`.
    pub fn start(backends: &[SocketAddr]) -> BufferingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("local addr").port();
        let upstream = Arc::new(Upstream {
            backends: backends.to_vec(),
            next: AtomicUsize::new(0),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("an HTTP client"),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let data = web::Data::from(upstream);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(16 << 20))
                        .default_service(web::to(forward))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("listen")
                .run();
                let _ = tx.send(server.handle());
                let _ = server.await;
            });
        });
        let handle = rx
            .recv_timeout(super::WAIT)
            .expect("the buffering proxy started");
        BufferingProxy {
            port,
            handle,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Headers that belong to one hop, not to the request or answer.
const HOP: &[&str] = &[
    "connection",
    "upgrade",
    "host",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// Forwards one request and answers with the backend's whole answer.
async fn forward(req: HttpRequest, body: web::Bytes, up: web::Data<Upstream>) -> HttpResponse {
    let n = up.next.fetch_add(1, Ordering::Relaxed) % up.backends.len();
    let url = format!("http://{}{}", up.backends[n], req.uri());
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return HttpResponse::MethodNotAllowed().finish();
    };
    let mut out = up.http.request(method, url).body(body.to_vec());
    for (name, value) in req.headers() {
        if !HOP.contains(&name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    let Ok(resp) = out.send().await else {
        return HttpResponse::BadGateway().finish();
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| !HOP.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    // The whole answer, however long the backend streams it.
    let Ok(whole) = resp.bytes().await else {
        return HttpResponse::BadGateway().finish();
    };
    let mut answer = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
    );
    for (k, v) in headers {
        answer.insert_header((k, v));
    }
    answer.body(whole)
}

impl Drop for BufferingProxy {
    fn drop(&mut self) {
        // Stop without waiting for held answers; the thread ends with it.
        let stopping = self.handle.stop(false);
        drop(stopping);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
