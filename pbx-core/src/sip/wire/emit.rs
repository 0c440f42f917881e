//! Emitting: the model back to bytes, with the IPv6 brackets and tel: forms the parent
//! module's docs describe.

use std::fmt::Write as _;
use std::net::IpAddr;

use rsip::{Host, Scheme};

use super::canonical_name;
use crate::sip::message::{Contact, Headers, Message, NameAddr, Request, Response, Uri};

/// Serializes a request; Content-Length is computed from the body.
pub fn emit_request(req: &Request) -> Vec<u8> {
    // Room for the body too, so appending it does not grow (copy) the buffer again.
    let mut out = String::with_capacity(640 + req.body.len());
    let start = out.len();
    out.push_str(req.method.as_str());
    out.push(' ');
    write_uri(&mut out, &req.uri);
    out.push_str(" SIP/2.0");
    end_line(&mut out, start);
    write_headers(&mut out, &req.headers, req.body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&req.body);
    bytes
}

/// Serializes a response; Content-Length is computed from the body.
pub fn emit_response(resp: &Response) -> Vec<u8> {
    // Room for the body too (a 200 with SDP): one allocation, no regrowth. The completed
    // transaction cache keeps this buffer as it is.
    let mut out = String::with_capacity(512 + resp.body.len());
    let start = out.len();
    let _ = write!(out, "SIP/2.0 {} {}", resp.status, resp.reason);
    end_line(&mut out, start);
    write_headers(&mut out, &resp.headers, resp.body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp.body);
    bytes
}

/// Serializes either kind of message.
pub fn emit(msg: &Message) -> Vec<u8> {
    match msg {
        Message::Request(r) => emit_request(r),
        Message::Response(r) => emit_response(r),
    }
}

/// Terminates the line begun at `start`, first blanking any CR/LF/NUL inside it so a value
/// can never inject a header.
fn end_line(out: &mut String, start: usize) {
    if out[start..].contains(['\r', '\n', '\0']) {
        let fixed = out[start..].replace(['\r', '\n', '\0'], " ");
        out.truncate(start);
        out.push_str(&fixed);
    }
    out.push_str("\r\n");
}

fn header_line(out: &mut String, name: &str, body: impl FnOnce(&mut String)) {
    let start = out.len();
    out.push_str(name);
    out.push_str(": ");
    body(out);
    end_line(out, start);
}

/// Writes a URI like rsip's `Display`, but bracketing IPv6 hosts and writing non-SIP
/// schemes as `scheme:`.
pub(super) fn write_uri(out: &mut String, uri: &Uri) {
    match &uri.scheme {
        Some(Scheme::Sip) => out.push_str("sip:"),
        Some(Scheme::Sips) => out.push_str("sips:"),
        Some(Scheme::Other(s)) => {
            out.push_str(s);
            out.push(':');
        }
        None => {}
    }
    if let Some(auth) = &uri.auth {
        out.push_str(&auth.user);
        if let Some(pw) = &auth.password {
            out.push(':');
            out.push_str(pw);
        }
        out.push('@');
    }
    match &uri.host_with_port.host {
        Host::Domain(d) => out.push_str(d.value()),
        Host::IpAddr(IpAddr::V4(ip)) => {
            let _ = write!(out, "{ip}");
        }
        Host::IpAddr(IpAddr::V6(ip)) => {
            let _ = write!(out, "[{ip}]");
        }
    }
    if let Some(port) = &uri.host_with_port.port {
        let _ = write!(out, ":{port}");
    }
    for p in &uri.params {
        let _ = write!(out, "{p}");
    }
}

fn write_name_addr(out: &mut String, na: &NameAddr) {
    if let Some(display) = na.display.as_deref().filter(|d| !d.is_empty()) {
        out.push('"');
        for c in display.chars() {
            // Control characters travel as quoted-pairs (RFC 3261 §25.1); CR, LF and NUL
            // are blanked by `end_line` instead, so they can never end the line.
            let ctl = (c < ' ' && !matches!(c, '\t' | '\r' | '\n' | '\0')) || c == '\x7f';
            if c == '"' || c == '\\' || ctl {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\" ");
    }
    out.push('<');
    write_uri(out, &na.uri);
    out.push('>');
    let _ = write!(out, "{}", na.params);
}

fn write_headers(out: &mut String, h: &Headers, body_len: usize) {
    for via in &h.via {
        header_line(out, "Via", |o| {
            let _ = write!(o, "{via}");
        });
    }
    if let Some(mf) = h.max_forwards {
        header_line(out, "Max-Forwards", |o| {
            let _ = write!(o, "{mf}");
        });
    }
    for r in &h.route {
        header_line(out, "Route", |o| write_name_addr(o, r));
    }
    for r in &h.record_route {
        header_line(out, "Record-Route", |o| write_name_addr(o, r));
    }
    header_line(out, "From", |o| write_name_addr(o, &h.from));
    header_line(out, "To", |o| write_name_addr(o, &h.to));
    header_line(out, "Call-ID", |o| o.push_str(&h.call_id));
    header_line(out, "CSeq", |o| {
        let _ = write!(o, "{} {}", h.cseq.seq, h.cseq.method);
    });
    for c in &h.contact {
        header_line(out, "Contact", |o| match c {
            Contact::Star => o.push('*'),
            Contact::Addr(na) => write_name_addr(o, na),
        });
    }
    if let Some(e) = h.expires {
        header_line(out, "Expires", |o| {
            let _ = write!(o, "{e}");
        });
    }
    if let Some(ct) = &h.content_type {
        header_line(out, "Content-Type", |o| o.push_str(ct));
    }
    for (name, value) in &h.other {
        if canonical_name(name) == Some("Content-Length") {
            continue;
        }
        header_line(out, name, |o| o.push_str(value));
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n");
}
