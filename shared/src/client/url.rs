//! The relay's address as a person gives it, checked before any connection:
//! which scheme, which path, and where the page that takes the code lives.
//! Also what an HTTP answer to the WebSocket upgrade says about the address.
//! Pure: no I/O.

use crate::Role;

/// A relay address the client can use: `ws://` or `wss://`, a host, and an
/// optional path prefix (a proxy's), with no `/mac` or `/browser` of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// `ws` or `wss`.
    scheme: &'static str,
    /// `host[:port]`, as given.
    authority: String,
    /// The path prefix without a trailing `/` (empty for the root).
    prefix: String,
}

/// Why an address cannot be a relay's; each message says what to give instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No scheme at all (`host:port`).
    #[error("{url}: add the scheme: ws://{url} (or wss:// for TLS)")]
    NoScheme {
        /// The address as given.
        url: String,
    },
    /// Not `ws://`, `wss://`, `http://` or `https://`.
    #[error(
        "{url}: not a relay address; give ws://HOST:PORT or wss://HOST (http:// and https:// also work)"
    )]
    Scheme {
        /// The address as given.
        url: String,
    },
    /// No host after the scheme.
    #[error("{url}: no host; give ws://HOST:PORT")]
    NoHost {
        /// The address as given.
        url: String,
    },
    /// The address names a role's endpoint, which the client adds itself.
    #[error(
        "{url}: drop the {path} path and give the relay's address, e.g. {suggest} (the client adds /mac or /browser itself)"
    )]
    RolePath {
        /// The address as given.
        url: String,
        /// The path to drop.
        path: String,
        /// The address to give instead.
        suggest: String,
    },
    /// A query or fragment, which the endpoint's path would be appended to.
    #[error("{url}: drop the ?… or #… part and give the relay's address, e.g. {suggest}")]
    Query {
        /// The address as given.
        url: String,
        /// The address to give instead.
        suggest: String,
    },
    /// HTTP 404 (or 410) on the upgrade: nothing is served at that path.
    #[error("{endpoint}: HTTP {status}, not found: {advice}")]
    NotFound {
        /// The endpoint that was asked.
        endpoint: String,
        /// 404 or 410.
        status: u16,
        /// What to do about it.
        advice: String,
    },
    /// The server redirects: the address is not the one to use.
    #[error("{endpoint}: HTTP {status}, redirected to {location}; give the relay's address there")]
    Redirect {
        /// The endpoint that was asked.
        endpoint: String,
        /// The 3xx status.
        status: u16,
        /// The `Location` it points to (empty when none).
        location: String,
    },
    /// Another answer that is not a WebSocket upgrade and will not change by retrying.
    #[error(
        "{endpoint}: HTTP {status} instead of a WebSocket upgrade; is this the relay's address (and ws:// rather than wss://, or the reverse)?"
    )]
    NotARelay {
        /// The endpoint that was asked.
        endpoint: String,
        /// The status it answered.
        status: u16,
    },
}

impl RelayUrl {
    /// Checks `url`: `ws://` and `wss://` as they are, `http://` and
    /// `https://` taken as `ws://` and `wss://` (the relay serves its page
    /// and its sockets on the same address), an optional path prefix.
    ///
    /// # Errors
    /// [`UrlError`] saying what is wrong and what to give instead.
    pub fn parse(url: &str) -> Result<RelayUrl, UrlError> {
        let given = url.to_owned();
        let trimmed = url.trim();
        let Some((scheme, rest)) = trimmed.split_once("://") else {
            return Err(if trimmed.is_empty() {
                UrlError::NoHost { url: given }
            } else {
                UrlError::NoScheme { url: given }
            });
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => "ws",
            "wss" | "https" => "wss",
            _ => return Err(UrlError::Scheme { url: given }),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.is_empty() {
            return Err(UrlError::NoHost { url: given });
        }
        let root = format!("{scheme}://{authority}");
        let (path, extra) = match tail.find(['?', '#']) {
            Some(i) => (&tail[..i], &tail[i..]),
            None => (tail, ""),
        };
        let prefix = path.trim_end_matches('/');
        let suggest = format!("{root}{}", strip_role(prefix).unwrap_or(prefix));
        if !extra.is_empty() {
            return Err(UrlError::Query {
                url: given,
                suggest,
            });
        }
        if let Some(rest) = strip_role(prefix) {
            return Err(UrlError::RolePath {
                url: given,
                path: prefix[rest.len()..].to_owned(),
                suggest,
            });
        }
        Ok(RelayUrl {
            scheme,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// The WebSocket endpoint of `role` (`ws://host:port/mac`).
    pub fn endpoint(&self, role: Role) -> String {
        let path = match role {
            Role::Mac => "/mac",
            Role::Browser => "/browser",
        };
        format!("{}://{}{}{path}", self.scheme, self.authority, self.prefix)
    }

    /// The HTTP transport's `path` (`/http/send`) at this address: `http`,
    /// or `https` when the sockets are `wss`.
    pub fn http_endpoint(&self, path: &str) -> String {
        let scheme = if self.scheme == "wss" {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}{path}", self.authority, self.prefix)
    }

    /// The page where a person types the code (`http://host:port/`): the
    /// relay serves it at the root of the same address, over `https` when
    /// the sockets are `wss`.
    pub fn page(&self) -> String {
        let scheme = if self.scheme == "wss" {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}/", self.authority, self.prefix)
    }

    /// The HTTP answer `status` (with `location` for a redirect) to the upgrade
    /// of `endpoint`: the address mistake it shows, or `None` when it is worth
    /// retrying (5xx, 408, 429: a relay at its ceiling, a proxy between
    /// deploys).
    pub fn refusal(&self, endpoint: &str, status: u16, location: Option<&str>) -> Option<UrlError> {
        let endpoint = endpoint.to_owned();
        match status {
            404 | 410 => {
                let root = format!("{}://{}", self.scheme, self.authority);
                let advice = if self.prefix.is_empty() {
                    "no relay at this address (a relay serves /mac and /browser at its root); check the host and port".to_owned()
                } else {
                    format!(
                        "the path {} is wrong; a relay serves /mac and /browser at its root, so give only its address, e.g. {root}",
                        self.prefix
                    )
                };
                Some(UrlError::NotFound {
                    endpoint,
                    status,
                    advice,
                })
            }
            300..=399 => Some(UrlError::Redirect {
                endpoint,
                status,
                location: location.unwrap_or_default().to_owned(),
            }),
            408 | 429 | 500..=599 => None,
            _ => Some(UrlError::NotARelay { endpoint, status }),
        }
    }
}

impl std::fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// `prefix` without a last `/mac` or `/browser` segment, if it has one.
fn strip_role(prefix: &str) -> Option<&str> {
    ["/mac", "/browser"]
        .iter()
        .find_map(|role| prefix.strip_suffix(role))
}

/// The page address for `url` (see [`RelayUrl::page`]), or `None` when it is not a relay address.
pub fn page_url(url: &str) -> Option<String> {
    RelayUrl::parse(url).ok().map(|u| u.page())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> RelayUrl {
        RelayUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn ws_and_http_schemes_give_endpoints_and_the_page() {
        let u = ok("ws://127.0.0.1:8080");
        assert_eq!(u.endpoint(Role::Mac), "ws://127.0.0.1:8080/mac");
        assert_eq!(u.endpoint(Role::Browser), "ws://127.0.0.1:8080/browser");
        assert_eq!(u.page(), "http://127.0.0.1:8080/");
        // http(s) is taken as ws(s): the same address serves both.
        assert_eq!(ok("http://h:1/").endpoint(Role::Mac), "ws://h:1/mac");
        let s = ok("HTTPS://relay.example/");
        assert_eq!(s.endpoint(Role::Browser), "wss://relay.example/browser");
        assert_eq!(s.page(), "https://relay.example/");
        assert_eq!(ok("wss://[::1]:9").page(), "https://[::1]:9/");
    }

    #[test]
    fn a_proxy_prefix_is_kept() {
        let u = ok("wss://example.com/relay/");
        assert_eq!(u.endpoint(Role::Mac), "wss://example.com/relay/mac");
        assert_eq!(u.page(), "https://example.com/relay/");
        assert_eq!(u.to_string(), "wss://example.com/relay");
    }

    #[test]
    fn mistakes_are_named_with_what_to_give_instead() {
        for bad in ["ftp://h", "tcp://h:1"] {
            assert!(
                matches!(RelayUrl::parse(bad), Err(UrlError::Scheme { .. })),
                "{bad}"
            );
        }
        let e = RelayUrl::parse("127.0.0.1:8080").unwrap_err();
        assert!(matches!(e, UrlError::NoScheme { .. }), "{e}");
        assert!(e.to_string().contains("ws://127.0.0.1:8080"), "{e}");
        assert!(matches!(RelayUrl::parse(""), Err(UrlError::NoHost { .. })));
        assert!(matches!(
            RelayUrl::parse("ws:///mac"),
            Err(UrlError::NoHost { .. })
        ));
        let e = RelayUrl::parse("ws://h:1/mac").unwrap_err();
        assert_eq!(
            e,
            UrlError::RolePath {
                url: "ws://h:1/mac".into(),
                path: "/mac".into(),
                suggest: "ws://h:1".into()
            }
        );
        assert!(e.to_string().contains("drop the /mac path"), "{e}");
        let e = RelayUrl::parse("http://h/x/browser/").unwrap_err();
        assert!(e.to_string().contains("e.g. ws://h/x "), "{e}");
        // A segment merely ending in "mac" is a prefix like any other.
        assert_eq!(ok("ws://h/imac").endpoint(Role::Mac), "ws://h/imac/mac");
        assert!(matches!(
            RelayUrl::parse("ws://h/?a=1"),
            Err(UrlError::Query { .. })
        ));
    }

    #[test]
    fn http_answers_split_into_mistakes_and_retries() {
        let root = ok("ws://h:1");
        let e = root.refusal("ws://h:1/mac", 404, None).unwrap();
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        assert!(e.to_string().contains("check the host and port"), "{e}");
        let e = ok("ws://h:1/x")
            .refusal("ws://h:1/x/mac", 404, None)
            .unwrap();
        assert!(e.to_string().contains("the path /x is wrong"), "{e}");
        assert!(e.to_string().contains("e.g. ws://h:1"), "{e}");
        let e = root
            .refusal("ws://h:1/mac", 301, Some("wss://h/mac"))
            .unwrap();
        assert!(e.to_string().contains("redirected to wss://h/mac"), "{e}");
        assert!(matches!(
            root.refusal("ws://h:1/mac", 200, None),
            Some(UrlError::NotARelay { status: 200, .. })
        ));
        for transient in [503, 502, 500, 429, 408] {
            assert_eq!(root.refusal("ws://h:1/mac", transient, None), None);
        }
    }
}
