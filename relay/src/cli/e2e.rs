//! What `relay host` and `relay join` say about end-to-end encryption: the
//! full code, its link and the link's QR code, and the sentences of an
//! exchange that failed. The encryption itself is the client library's.

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;

/// The QR code of `link` in terminal characters (two modules per
/// character, a quiet zone around), or `None` when it does not fit a QR code.
pub fn qr(link: &str) -> Option<String> {
    let code = QrCode::new(link.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            // Dark modules as dark characters on a light terminal would
            // scan inverted; these colours scan on both.
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The page's address with the full code as fragment, which the browser
/// never sends to the relay.
pub fn link(page: &str, code: &str) -> String {
    format!("{page}#{code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_renders_as_a_square_of_blocks() {
        let Some(q) = qr("http://127.0.0.1:8080/#6YM9AQ-K7P3X") else {
            panic!("a short link fits a QR code");
        };
        let lines: Vec<&str> = q.lines().collect();
        assert!(lines.len() > 10);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width));
        assert!(q.contains('█') || q.contains('▀') || q.contains('▄'));
    }

    #[test]
    fn the_link_carries_the_code_in_its_fragment() {
        assert_eq!(
            link("http://h:1/", "6YM9AQ-K7P3X"),
            "http://h:1/#6YM9AQ-K7P3X"
        );
    }
}
