//! The stylesheet and the script, compiled into the binary: nothing is fetched at run time
//! and nothing comes from a CDN.

/// `/static/outpost.css`.
pub const CSS: &str = include_str!("static/outpost.css");
/// `/static/outpost.js`: refreshing parts, countdowns, confirmations; every action works
/// without it.
pub const JS: &str = include_str!("static/outpost.js");

/// The asset at `path` under `/static/`, with its content type.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "outpost.css" => Some(("text/css; charset=utf-8", CSS)),
        "outpost.js" => Some(("text/javascript; charset=utf-8", JS)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_assets_are_there_and_nothing_else() {
        assert!(super::get("outpost.css")
            .is_some_and(|(t, b)| t.starts_with("text/css") && b.len() > 1000));
        assert!(super::get("outpost.js").is_some());
        assert!(super::get("../Cargo.toml").is_none());
        // The CSP forbids inline script and style and anything from elsewhere.
        assert!(!super::CSS.contains("http"));
        assert!(!super::JS.contains("http"), "no URL outside the box");
    }
}
