//! What a failed or dropped connection means, for the retry loop and for a
//! person: a wrong address that retrying will not fix, or a passing failure
//! with a sentence saying what happened. Pure: no I/O.

use std::borrow::Cow;

use tokio_tungstenite::tungstenite::Error as WsError;

use super::url::{RelayUrl, UrlError};

/// What went wrong with a connection, for a person.
pub(super) type Cause = Cow<'static, str>;

/// The cause of a connection that ended without a close code.
pub(super) const DROPPED: Cause = Cow::Borrowed("the connection dropped");

/// Why one connection attempt failed.
pub(super) enum Failure {
    /// Worth another try.
    Transient(String),
    /// The address is wrong; retrying will not help.
    Permanent(UrlError),
}

/// What a failed attempt at `url` (an endpoint of `base`) means: a wrong
/// address only while the client never connected (later, an odd answer is a
/// passing state of the infrastructure), otherwise something worth retrying.
pub(super) fn classify(base: &RelayUrl, url: &str, ever_connected: bool, e: WsError) -> Failure {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let location = resp.headers().get("location").and_then(|l| l.to_str().ok());
            match base.refusal(url, status, location) {
                Some(mistake) if !ever_connected => Failure::Permanent(mistake),
                Some(mistake) => Failure::Transient(mistake.to_string()),
                None => Failure::Transient(format!("{url}: HTTP {status}")),
            }
        }
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            Failure::Transient(format!("connection refused at {url}"))
        }
        WsError::Io(io) => Failure::Transient(format!("{url}: {io}")),
        other => Failure::Transient(format!("{url}: {other}")),
    }
}

/// The cause of a close the relay sent, for a person.
pub(super) fn closed_by_relay(code: Option<u16>) -> Cause {
    match code {
        None | Some(1005) | Some(1006) => DROPPED,
        Some(1001) => "the relay went away: close code 1001".into(),
        Some(1012) => "the relay node is restarting: close code 1012".into(),
        Some(1013) => "the relay is overloaded: close code 1013".into(),
        Some(c) => format!("the relay closed the connection: close code {c}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::http::Response;

    fn http(status: u16) -> WsError {
        // unwrap: a valid status and no headers
        WsError::Http(Box::new(
            Response::builder().status(status).body(None).unwrap(),
        ))
    }

    fn permanent(f: Failure) -> Option<UrlError> {
        match f {
            Failure::Permanent(e) => Some(e),
            Failure::Transient(_) => None,
        }
    }

    #[test]
    fn a_404_is_a_wrong_address_only_until_the_first_connection() {
        let base = RelayUrl::parse("ws://h:1/x").unwrap();
        let e = permanent(classify(&base, "ws://h:1/x/mac", false, http(404)));
        assert!(matches!(e, Some(UrlError::NotFound { status: 404, .. })));
        match classify(&base, "ws://h:1/x/mac", true, http(404)) {
            Failure::Transient(cause) => assert!(cause.contains("HTTP 404"), "{cause}"),
            Failure::Permanent(e) => panic!("{e}"),
        }
        assert!(permanent(classify(&base, "ws://h:1/x/mac", false, http(503))).is_none());
        let refused = WsError::Io(std::io::ErrorKind::ConnectionRefused.into());
        match classify(&base, "ws://h:1/x/mac", false, refused) {
            Failure::Transient(cause) => assert_eq!(cause, "connection refused at ws://h:1/x/mac"),
            Failure::Permanent(e) => panic!("{e}"),
        }
    }

    #[test]
    fn closes_are_told_by_their_code() {
        assert_eq!(closed_by_relay(None), DROPPED);
        assert_eq!(closed_by_relay(Some(1006)), DROPPED);
        assert!(closed_by_relay(Some(1012)).contains("restarting"));
        assert!(closed_by_relay(Some(4999)).contains("close code 4999"));
    }
}
