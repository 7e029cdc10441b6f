//! The HTTP side of a WebSocket's start: actix-http hands an upgrade request
//! over with its connection (`HttpServiceBuilder::upgrade`), and this
//! answers it, 101 and a socket actor that owns the connection from then
//! on, or a refusal. The HTTP/1 dispatcher and its two 8 KiB buffers are
//! gone once this returns (see docs/design.md, "The edge").

use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::h1::{Codec, Message};
use actix_http::header::{self, HeaderValue};
use actix_http::{Request, Response, StatusCode};
use futures_util::SinkExt;

use super::io::Upgraded;

/// Answers an upgrade with `status` and a plain-text `body`, and closes the
/// connection; gives up after `timeout` on a client that does not read.
pub async fn refuse<T: Upgraded>(
    mut framed: Framed<T, Codec>,
    status: StatusCode,
    headers: &[(header::HeaderName, &'static str)],
    body: String,
    timeout: Duration,
) {
    let mut res = Response::with_body(status, ());
    res.head_mut()
        .set_connection_type(actix_http::ConnectionType::Close);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in headers {
        h.insert(name.clone(), HeaderValue::from_static(value));
    }
    let len = body.len() as u64;
    let _ = tokio::time::timeout(timeout, async move {
        framed
            .feed(Message::Item((res, BodySize::Sized(len))))
            .await?;
        framed.feed(Message::Chunk(Some(body.into()))).await?;
        // actix-codec's `close` shuts the stream down without writing
        // what it buffered: flush first.
        framed.flush().await?;
        framed.close().await
    })
    .await;
}

/// Answers a handshake with 101; the connection, and any bytes the client
/// sent after its request, are the socket's. `Err` is the refusal's status
/// (400 for a request that is not an RFC 6455 upgrade), already answered.
pub async fn switch<T: Upgraded>(
    req: &Request,
    mut framed: Framed<T, Codec>,
    timeout: Duration,
) -> Result<(T, bytes::BytesMut), StatusCode> {
    let res = match actix_http::ws::handshake(req.head()) {
        Ok(mut builder) => builder.finish().drop_body(),
        Err(e) => {
            let res = Response::from(&e);
            let status = res.status();
            refuse(framed, status, &[], format!("{e}\n"), timeout).await;
            return Err(status);
        }
    };
    let sent = tokio::time::timeout(timeout, async {
        framed.send(Message::Item((res, BodySize::None))).await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return Err(StatusCode::REQUEST_TIMEOUT);
    }
    let parts = framed.into_parts();
    Ok((parts.io, parts.read_buf))
}
