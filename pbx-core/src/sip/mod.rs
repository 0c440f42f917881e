//! SIP signalling: message model, wire format, transactions, digest authentication.

pub mod auth;
pub mod message;
pub mod transaction;
pub mod wire;

pub use message::{
    CSeq, Contact, Headers, Message, Method, NameAddr, Params, Peer, Request, Response, Transport,
    Uri, Via,
};

/// `s` for XML text or an attribute value (the bodies Outpost writes: dialog-info, PIDF,
/// phone configuration files): control characters dropped, the five special characters
/// escaped.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
