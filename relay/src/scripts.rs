//! The browser client's scripts, built into the binary and served as they
//! are (`/client.js` and the modules it imports). Owns only their routes;
//! the page itself (`/`) stays with the server, which refuses upgrades there.

use actix_web::{HttpResponse, web};

/// The browser client module (`relay/static/client.js`).
const CLIENT_JS: &str = include_str!("../static/client.js");

/// End-to-end encryption of the browser side (`relay/static/e2e.js`), which `/client.js` imports.
const E2E_JS: &str = include_str!("../static/e2e.js");

/// The audited noble libraries `e2e.js` imports, bundled with their
/// licences by `relay/static/vendor/build.sh` from a pinned lockfile.
const NOBLE_JS: &str = include_str!("../static/noble.js");

/// The browser's transports (`relay/static/transport.js`: a WebSocket, or
/// the HTTP fallback behind a WebSocket's interface), which `/client.js` imports.
const TRANSPORT_JS: &str = include_str!("../static/transport.js");

/// `GET /client.js`, `/e2e.js`, `/noble.js` and `/transport.js`.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    for (path, body) in [
        ("/client.js", CLIENT_JS),
        ("/e2e.js", E2E_JS),
        ("/noble.js", NOBLE_JS),
        ("/transport.js", TRANSPORT_JS),
    ] {
        cfg.route(path, web::get().to(move || async move { script(body) }));
    }
}

fn script(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}
