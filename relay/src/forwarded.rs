//! The client's address for the connection ceilings and join rate limits:
//! the TCP peer, or behind a trusted load balancer the address it added to
//! `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use actix_http::RequestHead;

/// The client's address: the peer, or with `RELAY_TRUST_FORWARDED_FOR` the
/// last `X-Forwarded-For` entry (the one the trusted load balancer added).
pub fn client_addr(req: &RequestHead, trust_forwarded_for: bool) -> IpAddr {
    let peer = req.peer_addr.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if !trust_forwarded_for {
        return peer;
    }
    let values = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().unwrap_or(""));
    last_forwarded_for(values).unwrap_or(peer)
}

/// The address the nearest proxy put in `X-Forwarded-For`: the last entry of
/// the last header, as `ip`, `ip:port` or `[ipv6]:port`. Only that entry: the
/// ones before it are whatever the client sent, so when the last one does
/// not parse there is no trusted address (None), never an earlier entry.
fn last_forwarded_for<'a>(values: impl Iterator<Item = &'a str>) -> Option<IpAddr> {
    let last = values.last()?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>()
        .ok()
        .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_entry_the_proxy_added_counts() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        let one = |v: &'static str| last_forwarded_for(std::iter::once(v));
        assert_eq!(one("203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(one("1.2.3.4, 203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(one("1.2.3.4,203.0.113.9:4711"), ip("203.0.113.9"));
        assert_eq!(one("1.2.3.4, [2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(one("1.2.3.4, 2001:db8::1"), ip("2001:db8::1"));
        // The client wrote 1.2.3.4; what the proxy added does not parse.
        assert_eq!(one("1.2.3.4, unknown"), None);
        assert_eq!(one("1.2.3.4,"), None);
        assert_eq!(
            last_forwarded_for(["6.6.6.6", "1.2.3.4, 203.0.113.9"].into_iter()),
            ip("203.0.113.9")
        );
        assert_eq!(last_forwarded_for(std::iter::empty()), None);
    }
}
