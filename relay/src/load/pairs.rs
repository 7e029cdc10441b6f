//! Opening pairs through the protocol, with plain WebSocket connections (no
//! client library bookkeeping, so the load tool measures the relay, not
//! itself), and the frame format the scenarios use.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// A mac and a browser in one session.
pub struct Pair {
    /// The mac's connection.
    pub mac: Ws,
    /// The browser's connection.
    pub browser: Ws,
}

/// Round-robin over the source addresses given.
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Connects to `base` + `path` (e.g. `ws://h:p` + `/mac`), from one of `sources`.
///
/// # Errors
/// When the URL is not `ws://host:port` or the connection fails.
pub async fn connect(base: &str, path: &str, sources: &[IpAddr]) -> anyhow::Result<Ws> {
    let source = (!sources.is_empty())
        .then(|| sources[NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % sources.len()]);
    connect_from(base, path, source).await
}

/// Connects to `base` + `path` from `source` (any local address if `None`).
///
/// # Errors
/// When the URL is not `ws://host:port` or the connection fails.
pub async fn connect_from(base: &str, path: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let hostport = base
        .strip_prefix("ws://")
        .with_context(|| format!("{base}: only ws:// URLs are supported by the load tool"))?
        .trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await?
        .next()
        .with_context(|| format!("{hostport} does not resolve"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{hostport}{path}");
    match tokio_tungstenite::client_async(url.as_str(), tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) if res.status().as_u16() == 503 => {
            bail!(
                "{url}: refused with 503: the relay's connection ceiling is reached \
                 (RELAY_MAX_CONNECTIONS_PER_ADDR per client address, RELAY_MAX_CONNECTIONS per node); \
                 spread the load over --source addresses or raise the ceiling"
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// The next text message as JSON (pings are answered on the way).
pub async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Registers a mac on `mac_url` and joins a browser on `browser_url`.
///
/// # Errors
/// When either side is refused or a connection fails.
pub async fn open(mac_url: &str, browser_url: &str, sources: &[IpAddr]) -> anyhow::Result<Pair> {
    let mut mac = connect(mac_url, "/mac", sources).await?;
    mac.send(Message::text(r#"{"type":"register"}"#)).await?;
    let reg = next_json(&mut mac).await?;
    if reg["type"] != "registered" {
        bail!("register answered {reg}");
    }
    let code = reg["code"]
        .as_str()
        .with_context(|| format!("register answered {reg}"))?
        .to_owned();
    let mut browser = connect(browser_url, "/browser", sources).await?;
    browser
        .send(Message::text(format!(
            r#"{{"type":"join","code":"{code}"}}"#
        )))
        .await?;
    let joined = next_json(&mut browser).await?;
    if joined["type"] != "joined" {
        bail!("join answered {joined}");
    }
    loop {
        let v = next_json(&mut mac).await?;
        if v["type"] == "peer_joined" {
            break;
        }
    }
    Ok(Pair { mac, browser })
}

/// A frame of `size` bytes carrying `seq` and the nanoseconds since `epoch`
/// at which it was due to be sent.
pub fn frame(seq: u64, due_ns: u64, size: usize) -> Message {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64(seq);
    b.put_u64(due_ns);
    b.resize(size, 0x5a);
    Message::binary(b.freeze())
}

/// The sequence number and due time of a frame made by [`frame`].
pub fn parse(b: &Bytes) -> Option<(u64, u64)> {
    if b.len() < 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..16].try_into().ok()?),
    ))
}

/// Nanoseconds since `epoch`.
pub fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}
