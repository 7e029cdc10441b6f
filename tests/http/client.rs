//! A test client of the HTTP transport (shared/PROTOCOL.md, "HTTP
//! transport"), written from the wire section alone: it opens a virtual
//! connection, sends numbered batches and receives by long poll or event
//! stream, acknowledging with `after`. Each request may go to another base
//! URL in turn (a round robin of its own, for the cluster tests).

use std::collections::VecDeque;
use std::pin::Pin;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::support::{Got, WAIT};

/// How the client receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Poll,
    Stream,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Stream => "stream",
        }
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One virtual connection.
pub struct Http {
    client: reqwest::Client,
    bases: Vec<String>,
    turn: usize,
    /// The connection id.
    pub cid: String,
    mode: Mode,
    /// The last batch number sent.
    pub batch: u64,
    /// The highest `pos` received.
    pub after: u64,
    got: VecDeque<Got>,
    stream: Option<Body>,
    sse: Vec<u8>,
    /// Whether the current stream delivered its `: open` line.
    pub opened: bool,
}

/// A status and a JSON body (`Null` when the body is not JSON).
pub type Answer = (u16, Value);

/// `http://addr`.
pub fn base(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

/// A plain POST of `body` to `url` with extra headers: (status, JSON body, headers).
pub async fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

impl Http {
    /// Opens a virtual connection of `role` ("mac" or "browser") at `base`.
    pub async fn open(base: &str, role: &str, mode: Mode) -> Http {
        Self::open_over(&[base.to_owned()], role, mode).await
    }

    /// Opens one whose requests go to each of `bases` in turn.
    pub async fn open_over(bases: &[String], role: &str, mode: Mode) -> Http {
        let (status, body, _) = post(&format!("{}/http/{role}", bases[0]), &[], "").await;
        assert_eq!(status, 200, "open {role}: {body}");
        let cid = body["connection"]
            .as_str()
            .expect("a connection id")
            .to_owned();
        assert_eq!(cid.len(), 22, "128 bits, unpadded base64url: {cid}");
        Http {
            client: reqwest::Client::new(),
            bases: bases.to_vec(),
            turn: 1,
            cid,
            mode,
            batch: 0,
            after: 0,
            got: VecDeque::new(),
            stream: None,
            sse: Vec::new(),
            opened: false,
        }
    }

    /// Sends every later request to `bases`, in turn.
    pub fn set_bases(&mut self, bases: &[String]) {
        self.bases = bases.to_vec();
    }

    fn url(&mut self, path: &str) -> String {
        let base = &self.bases[self.turn % self.bases.len()];
        self.turn += 1;
        format!("{base}{path}")
    }

    async fn request(&mut self, path: &str, body: &Value) -> reqwest::Response {
        let url = self.url(path);
        let req = self
            .client
            .post(&url)
            .header("Relay-Connection", &self.cid)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("an answer in time")
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// Posts `body` to `/http/send` as is.
    pub async fn send_raw(&mut self, body: &Value) -> Answer {
        let res = self.request("/http/send", body).await;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sends `frames` as the next batch; answers what the relay said.
    pub async fn send_batch(&mut self, frames: Vec<Value>) -> Answer {
        self.batch += 1;
        let body = json!({"batch": self.batch, "frames": frames});
        self.send_raw(&body).await
    }

    /// Sends `frames` as the next batch, which must be taken.
    pub async fn send(&mut self, frames: Vec<Value>) {
        let (status, body) = self.send_batch(frames).await;
        assert_eq!(status, 200, "send: {body}");
        assert_eq!(body["batch"], self.batch);
    }

    /// Sends one JSON control message.
    pub async fn json(&mut self, v: Value) {
        self.send(vec![text(&v.to_string())]).await;
    }

    /// Sends a `data` text frame.
    pub async fn data(&mut self, payload: &str) {
        self.json(json!({"type": "data", "payload": payload})).await;
    }

    /// Sends one binary frame.
    pub async fn binary(&mut self, b: &[u8]) {
        self.send(vec![binary(b)]).await;
    }

    /// Posts a receive with `after` as is: the raw answer.
    pub async fn receive_raw(&mut self, after: u64, mode: Mode) -> reqwest::Response {
        let body = json!({"after": after, "mode": mode.as_str()});
        self.request("/http/receive", &body).await
    }

    /// Receives once (a poll, or reading the stream until an item or its end).
    async fn fill(&mut self) {
        match self.mode {
            Mode::Poll => {
                let res = self.receive_raw(self.after, Mode::Poll).await;
                let status = res.status().as_u16();
                let text = res.text().await.unwrap_or_default();
                if status == 410 {
                    self.got.push_back(Got::Ended);
                    return;
                }
                assert_eq!(status, 200, "poll: {text}");
                let items: Vec<Value> = serde_json::from_str(&text).expect("a JSON array");
                for item in items {
                    self.take(&item);
                }
            }
            Mode::Stream => {
                if self.stream.is_none() {
                    let res = self.receive_raw(self.after, Mode::Stream).await;
                    let status = res.status().as_u16();
                    if status == 410 {
                        self.got.push_back(Got::Ended);
                        return;
                    }
                    assert_eq!(status, 200, "stream");
                    let ct = res.headers()["content-type"]
                        .to_str()
                        .unwrap_or("")
                        .to_owned();
                    assert!(ct.starts_with("text/event-stream"), "{ct}");
                    self.stream = Some(Box::pin(res.bytes_stream()));
                    self.sse.clear();
                    self.opened = false;
                }
                let before = self.got.len();
                while self.got.len() == before {
                    let Some(stream) = self.stream.as_mut() else {
                        return;
                    };
                    match stream.next().await {
                        Some(Ok(chunk)) => {
                            self.sse.extend_from_slice(&chunk);
                            self.parse_events();
                        }
                        // Ended (the wait, the size, the close): the next
                        // receive acknowledges what came.
                        _ => {
                            self.stream = None;
                            return;
                        }
                    }
                }
            }
        }
    }

    fn parse_events(&mut self) {
        while let Some(end) = self.sse.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.sse.drain(..end + 2).collect();
            let event = String::from_utf8(event).expect("UTF-8 events");
            for line in event.lines() {
                if line == ": open" {
                    self.opened = true;
                } else if let Some(data) = line.strip_prefix("data: ") {
                    let item: Value = serde_json::from_str(data).expect("an item");
                    self.take(&item);
                } else {
                    assert!(line.is_empty(), "unexpected line {line:?}");
                }
            }
        }
    }

    fn take(&mut self, item: &Value) {
        let pos = item["pos"].as_u64().expect("a pos");
        assert_eq!(pos, self.after + 1, "positions follow each other: {item}");
        self.after = pos;
        let got = if let Some(t) = item["text"].as_str() {
            Got::Text(t.to_owned())
        } else if let Some(b) = item["binary"].as_str() {
            Got::Binary(BASE64.decode(b).expect("base64"))
        } else if let Some(code) = item["close"].as_u64() {
            let reason = item["reason"].as_str().unwrap_or("").to_owned();
            Got::Close(Some((u16::try_from(code).expect("a close code"), reason)))
        } else {
            panic!("not an item: {item}");
        };
        self.got.push_back(got);
    }

    /// The next frame (or close), failing after [`WAIT`].
    pub async fn recv(&mut self) -> Got {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(g) = self.got.pop_front() {
                return g;
            }
            tokio::time::timeout_at(deadline, self.fill())
                .await
                .expect("a frame in time");
        }
    }

    /// The next frame, which must be JSON text.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Got::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be a control message of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let v = self.recv_json().await;
        assert_eq!(v["type"], ty, "expected {ty}, got {v}");
        v
    }

    /// The next frame, which must be an `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "got {v}");
        v
    }

    /// The next frame, which must be the close item with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        match self.recv().await {
            Got::Close(Some((c, _))) => assert_eq!(c, code, "close code"),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

/// A text item.
pub fn text(t: &str) -> Value {
    json!({ "text": t })
}

/// A binary item.
pub fn binary(b: &[u8]) -> Value {
    json!({ "binary": BASE64.encode(b) })
}
