//! The ceiling on an HTTP request head (`RELAY_MAX_REQUEST_HEAD`), answered
//! with 431 like Node and common proxies do.
//!
//! actix-http 3 has no setting for it: its HTTP/1 decoder refuses a head only
//! past a fixed 128 KiB or 96 headers. So the ceiling measures each parsed
//! head: a middleware before any handler of the app, and the same
//! [`head_len`] check first thing in the WebSocket upgrade, which actix-http
//! hands to the relay outside the app (`server.rs`). What it cannot change is
//! how much actix buffers while a head is still arriving: that stays bounded
//! by actix's 128 KiB and by `RELAY_HANDSHAKE_TIMEOUT` (see docs/design.md).

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{RequestHead, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse};
use tracing::debug;

/// The most a head can be before actix-http itself answers 431 (its decoder's
/// fixed buffer ceiling), so the highest ceiling worth configuring.
pub const ACTIX_HEAD_CEILING: usize = 128 << 10;

/// The head's length as sent in canonical form: request line, every header
/// line as `name: value`, and the blank line. A client that wrote optional
/// whitespace around values sent a few bytes more than this, never fewer
/// bytes of content.
pub fn head_len(head: &RequestHead) -> usize {
    let uri = &head.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    // "METHOD SP target SP HTTP/1.1 CRLF"
    let line = head.method.as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 2;
    let fields: usize = head
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// Answers 431 and closes the connection when the head is over `limit` bytes;
/// otherwise passes the request on.
///
/// # Errors
/// Whatever the inner service returns.
pub async fn cap(
    limit: usize,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, Error> {
    let len = head_len(req.head());
    if len <= limit {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    debug!(len, limit, path = req.path(), "request head too large");
    let res = HttpResponse::build(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        .content_type("text/plain")
        // The rest of what this client sends is not worth reading.
        .force_close()
        .body(format!("request head over {limit} bytes\n"));
    Ok(req.into_response(res).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn a_head_is_measured_as_sent() {
        let req = TestRequest::get()
            .uri("/mac?x=1")
            .insert_header(("host", "relay"))
            .insert_header(("x-pad", "abc"))
            .to_srv_request();
        let wire = "GET /mac?x=1 HTTP/1.1\r\nhost: relay\r\nx-pad: abc\r\n\r\n";
        assert_eq!(head_len(req.head()), wire.len());
    }

    #[test]
    fn repeated_headers_count_once_each() {
        let req = TestRequest::get()
            .uri("/")
            .append_header(("x-a", "1"))
            .append_header(("x-a", "22"))
            .to_srv_request();
        let wire = "GET / HTTP/1.1\r\nx-a: 1\r\nx-a: 22\r\n\r\n";
        assert_eq!(head_len(req.head()), wire.len());
    }
}
