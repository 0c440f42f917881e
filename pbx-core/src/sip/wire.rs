//! SIP wire format: bytes to the validated model in [`super::message`] and back.
//!
//! Parsing is strict and bounded. Before any header is interpreted the limits are enforced
//! (message ≤ [`MAX_MESSAGE`], ≤ [`MAX_HEADERS`] header lines after unfolding, each logical
//! line ≤ [`MAX_HEADER_LINE`], Request-URI ≤ [`MAX_URI`], ≤ [`MAX_VIA`] Via values), folded
//! lines are joined (RFC 3261 §7.3.1), bare-LF line ends are accepted, compact header names
//! are expanded (§7.3.3) and names are matched case-insensitively. URIs become `rsip::Uri`
//! values: the grammar is checked here (rsip 0.4's own URI tokenizer silently accepts
//! trailing junk and cannot handle IPv6 references or users containing dots), and rsip's
//! types carry the result; URI parameters are typed by rsip (`Param::Transport`, `Lr`, ...).
//!
//! Bytes are bytes: the header section is decoded as UTF-8 with every invalid sequence
//! replaced by U+FFFD (`String::from_utf8_lossy`), so a Latin-1 display name (`"J\xf6rg"`,
//! as older phones send it) or any other 8-bit text in a quoted string or a header value is
//! handled, not refused; the body is kept as raw bytes. Control characters are accepted
//! inside quoted strings as quoted-pairs (RFC 3261 §25.1), refused elsewhere. Every message
//! RFC 4475 §3.1.1 calls valid parses (see the `rfc4475` tests), and every error names its
//! cause so [`reply_to_malformed`] can answer precisely ([`error_status`], [`error_reason`]).
//!
//! Representation notes:
//! - IPv6 URI hosts are `Host::IpAddr(V6)`; [`emit_request`]/[`emit_response`] bracket them
//!   (rsip's own `Display` does not, so do not format such URIs with `Display` for the wire).
//! - A `tel:` URI is stored with `scheme: None` and the whole `tel:number` as a
//!   `Host::Domain`, so rsip's `Display` writes it correctly; see [`tel_number`].
//! - URI headers (`?name=value`) are not representable in `rsip::Uri` and are rejected.
//! - Via `host` keeps IPv6 brackets; all parameter values are kept raw (quotes included).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rsip::{Auth, Domain, Host, HostWithPort, Param, Port, Scheme};
use thiserror::Error;

use super::message::{
    reason_phrase, CSeq, Contact, Headers, Message, Method, NameAddr, Params, Request, Response,
    Uri, Via,
};

mod emit;
use emit::write_uri;
pub use emit::{emit, emit_request, emit_response};

/// Largest message accepted, headers and body together (bytes).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Most header lines accepted, counted after unfolding.
pub const MAX_HEADERS: usize = 100;
/// Longest Request-URI accepted (bytes).
pub const MAX_URI: usize = 512;
/// Longest single (unfolded) header line accepted (bytes).
pub const MAX_HEADER_LINE: usize = 4 * 1024;
/// Most Via values accepted in one message: 70, the usual initial Max-Forwards, so a
/// request that really crossed that many proxies (RFC 4475 `longreq` has 34) is accepted.
pub const MAX_VIA: usize = 70;

/// Why bytes are not an acceptable SIP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The message exceeds [`MAX_MESSAGE`] before its header section ends (or a stream
    /// announces such a header section): answered 513.
    #[error("message too large")]
    TooLarge,
    /// The header section fits but the body makes the message exceed [`MAX_MESSAGE`]:
    /// answered 413.
    #[error("message body too large")]
    BodyTooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("too many header lines")]
    TooManyHeaders,
    /// More than [`MAX_VIA`] Via values.
    #[error("too many Via values")]
    TooManyVia,
    /// The Request-URI exceeds [`MAX_URI`].
    #[error("Request-URI too long")]
    UriTooLong,
    /// A header line exceeds [`MAX_HEADER_LINE`].
    #[error("header line too long")]
    HeaderTooLong,
    /// The message structure is broken (start line, header syntax, encoding).
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A mandatory header (canonical name) is absent.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header (canonical name) has an invalid value.
    #[error("invalid {0} header")]
    BadHeader(&'static str),
    /// A header (canonical name) that may appear once appears twice.
    #[error("duplicated {0} header")]
    DuplicateHeader(&'static str),
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    /// Content-Length is not a number, disagrees with itself, or exceeds the bytes present.
    #[error("bad Content-Length")]
    BadContentLength,
    /// The SIP version is not SIP/2.0.
    #[error("SIP version not supported")]
    Version,
    /// The Request-URI scheme is not sip, sips or tel.
    #[error("unsupported URI scheme")]
    UnsupportedScheme,
    /// The header section has no terminating empty line.
    #[error("incomplete message")]
    Incomplete,
}

/// The status code a request rejected with `err` should be answered with.
pub fn error_status(err: &WireError) -> u16 {
    match err {
        WireError::TooLarge => 513,
        WireError::BodyTooLarge => 413,
        WireError::UriTooLong => 414,
        WireError::UnsupportedScheme => 416,
        WireError::Version => 505,
        _ => 400,
    }
}

/// The reason phrase of the answer to a request rejected with `err`: the status's standard
/// phrase, and for 400 the problem itself (`Bad Request (missing Call-ID header)`), so the
/// phone's log says what to fix.
pub fn error_reason(err: &WireError) -> String {
    let status = error_status(err);
    let phrase = reason_phrase(status);
    if status == 400 {
        format!("{phrase} ({err})")
    } else {
        phrase.to_string()
    }
}

/// Whether `err` is about size (message, header line, header count, Via count, URI) rather
/// than syntax: the firewall counts these as `oversized`.
pub fn is_size_error(err: &WireError) -> bool {
    matches!(
        err,
        WireError::TooLarge
            | WireError::BodyTooLarge
            | WireError::TooManyHeaders
            | WireError::TooManyVia
            | WireError::UriTooLong
            | WireError::HeaderTooLong
    )
}

/// One unit cut from a stream transport's receive buffer by [`next_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `n` leading CR/LF bytes (RFC 5626 keep-alive ping/pong): consume and discard them.
    /// A run of four or more (`\r\n\r\n`) is a ping that should be answered with `\r\n`.
    KeepAlive(usize),
    /// A complete message of `n` bytes: consume it and [`parse`] it.
    Message(usize),
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses one SIP message (a UDP datagram or a frame cut by [`next_frame`]).
///
/// Leading CR/LF bytes are skipped (RFC 3261 §7.5). Without Content-Length the body is the
/// rest of the bytes; with it the body is truncated to it, and a Content-Length larger than
/// the remaining bytes is [`WireError::BadContentLength`] (RFC 3261 §18.3).
pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MAX_MESSAGE {
        // 413 when the header section ended in time (only the body is too big), else 513.
        return Err(match find_head_end(&bytes[..MAX_MESSAGE]) {
            Some(_) => WireError::BodyTooLarge,
            None => WireError::TooLarge,
        });
    }
    let skip = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let bytes = &bytes[skip..];
    if bytes.is_empty() {
        return Err(WireError::Malformed("empty message"));
    }
    let (head_len, body_start) = find_head_end(bytes).ok_or(WireError::Incomplete)?;
    // Bytes are bytes: 8-bit text (a Latin-1 display name) becomes U+FFFD, never an error.
    let head = String::from_utf8_lossy(&bytes[..head_len]);
    let (start_line, rest) = head.split_once('\n').unwrap_or((&head, ""));
    let start = parse_start_line(strip_cr(start_line))?;
    let mut builder = Builder::default();
    for_each_header(rest, |line| builder.header(line))?;
    let body_bytes = &bytes[body_start..];
    let body = match builder.content_length {
        Some(n) if n > body_bytes.len() => return Err(WireError::BadContentLength),
        Some(n) => body_bytes[..n].to_vec(),
        None => body_bytes.to_vec(),
    };
    builder.finish(start, body)
}

/// Parses a URI (`sip:`, `sips:` or `tel:`) as it appears inside `<>` or as a Request-URI.
pub fn parse_uri(text: &str) -> Result<Uri, WireError> {
    uri(text).map_err(|e| match e {
        UriError::Scheme => WireError::UnsupportedScheme,
        UriError::Bad => WireError::Malformed("URI"),
    })
}

/// Parses a name-addr or addr-spec with header parameters (From/To/Contact/Route syntax).
pub fn parse_name_addr(text: &str) -> Result<NameAddr, WireError> {
    name_addr(text).ok_or(WireError::Malformed("name-addr"))
}

/// A URI as it goes on the wire (IPv6 hosts in brackets, unlike `rsip::Uri`'s Display).
pub fn uri_to_string(uri: &Uri) -> String {
    let mut out = String::new();
    write_uri(&mut out, uri);
    out
}

/// The number of a `tel:` URI as [`parse`] represents it (`scheme: None`, host `tel:...`).
pub fn tel_number(uri: &Uri) -> Option<&str> {
    match (&uri.scheme, &uri.host_with_port.host) {
        (None, Host::Domain(d)) => d.value().strip_prefix("tel:"),
        _ => None,
    }
}

/// True for a datagram that is only a CRLF keep-alive (RFC 5626 §3.5.1); ignore it silently.
pub fn is_keepalive(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|b| matches!(b, b'\r' | b'\n'))
}

/// Locates the empty line ending the header section: `(head_len, body_start)`, where
/// `head_len` excludes the final line break of the last header line.
fn find_head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = bytes.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match bytes.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if bytes.get(nl + 2) == Some(&b'\n') => return Some((nl, nl + 3)),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

fn strip_cr(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

/// Calls `f` with each logical (unfolded) header line, enforcing the line limits.
fn for_each_header(
    rest: &str,
    mut f: impl FnMut(&str) -> Result<(), WireError>,
) -> Result<(), WireError> {
    if rest.is_empty() {
        return Ok(());
    }
    let mut pending: Option<Cow<'_, str>> = None;
    let mut count = 0usize;
    for raw in rest.split('\n') {
        let line = strip_cr(raw);
        if line.starts_with([' ', '\t']) {
            let Some(p) = pending.as_mut() else {
                return Err(WireError::Malformed("continuation line without header"));
            };
            let s = p.to_mut();
            s.push(' ');
            s.push_str(line.trim_start_matches([' ', '\t']));
            if s.len() > MAX_HEADER_LINE {
                return Err(WireError::HeaderTooLong);
            }
            continue;
        }
        if let Some(p) = pending.take() {
            f(&p)?;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(WireError::TooManyHeaders);
        }
        if line.len() > MAX_HEADER_LINE {
            return Err(WireError::HeaderTooLong);
        }
        pending = Some(Cow::Borrowed(line));
    }
    if let Some(p) = pending {
        f(&p)?;
    }
    Ok(())
}

enum Start {
    Request(Method, Uri),
    Response(u16, String),
}

fn check_version(v: &str) -> Result<(), WireError> {
    if v.eq_ignore_ascii_case("SIP/2.0") {
        Ok(())
    } else if v.len() > 4 && v.is_char_boundary(4) && v[..4].eq_ignore_ascii_case("SIP/") {
        Err(WireError::Version)
    } else {
        Err(WireError::Malformed("SIP version"))
    }
}

fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn has_ctl(s: &str) -> bool {
    s.bytes().any(is_ctl)
}

/// A control character outside a quoted-pair of a quoted string (RFC 3261 §25.1 allows any
/// octet but CR and LF after a backslash inside quotes: RFC 4475 `intmeth` quotes BEL, NUL
/// and DEL that way).
fn has_bare_ctl(s: &str) -> bool {
    let b = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => in_quotes = !in_quotes,
            b'\\' if in_quotes => {
                if matches!(b.get(i + 1), Some(b'\r' | b'\n')) {
                    return true;
                }
                i += 1;
            }
            c if is_ctl(c) => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn parse_start_line(line: &str) -> Result<Start, WireError> {
    if has_ctl(line) {
        return Err(WireError::Malformed("control character in start line"));
    }
    if line.len() >= 4 && line.is_char_boundary(4) && line[..4].eq_ignore_ascii_case("SIP/") {
        let (version, rest) = line
            .split_once(' ')
            .ok_or(WireError::Malformed("status line"))?;
        check_version(version)?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WireError::Malformed("status code"));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| WireError::Malformed("status code"))?;
        if !(100..=699).contains(&status) {
            return Err(WireError::Malformed("status code"));
        }
        return Ok(Start::Response(status, reason.to_string()));
    }
    let (method, rest) = line
        .split_once(' ')
        .ok_or(WireError::Malformed("request line"))?;
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(WireError::Malformed("method"));
    }
    let (uri_text, version) = rest
        .rsplit_once(' ')
        .ok_or(WireError::Malformed("request line"))?;
    check_version(version)?;
    if uri_text.len() > MAX_URI {
        return Err(WireError::UriTooLong);
    }
    if uri_text.is_empty() || uri_text.contains([' ', '\t']) {
        return Err(WireError::Malformed("Request-URI"));
    }
    let uri = uri(uri_text).map_err(|e| match e {
        UriError::Scheme => WireError::UnsupportedScheme,
        UriError::Bad => WireError::Malformed("Request-URI"),
    })?;
    Ok(Start::Request(Method::from_token(method), uri))
}

/// Canonical long names of the headers we know, for case normalisation.
const KNOWN_HEADERS: &[&str] = &[
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Route",
    "Record-Route",
    "Expires",
    "Content-Type",
    "Content-Length",
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-Info",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Date",
    "Diversion",
    "Error-Info",
    "Event",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Remote-Party-ID",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "Unsupported",
    "User-Agent",
    "Warning",
    "WWW-Authenticate",
];

/// The long name of a compact header name (RFC 3261 §7.3.3 and the IANA registry).
fn compact_name(c: u8) -> Option<&'static str> {
    Some(match c.to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'n' => "Identity-Info",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => return None,
    })
}

/// The canonical spelling of a header name, if it is one we know (long or compact form).
pub fn canonical_name(name: &str) -> Option<&'static str> {
    if let [c] = name.as_bytes() {
        return compact_name(*c);
    }
    KNOWN_HEADERS
        .iter()
        .find(|k| k.len() == name.len() && k.eq_ignore_ascii_case(name))
        .copied()
}

#[derive(Default)]
struct Builder {
    via: Vec<Via>,
    from: Option<NameAddr>,
    to: Option<NameAddr>,
    call_id: Option<String>,
    cseq: Option<CSeq>,
    max_forwards: Option<u32>,
    contact: Vec<Contact>,
    expires: Option<u32>,
    route: Vec<NameAddr>,
    record_route: Vec<NameAddr>,
    content_type: Option<String>,
    content_length: Option<usize>,
    other: Vec<(String, String)>,
}

fn once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), WireError> {
    if slot.is_some() {
        return Err(WireError::DuplicateHeader(name));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_digits_u64(s: &str) -> Option<Result<u64, ()>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().map_err(|_| ()))
}

fn parse_content_length(value: &str) -> Result<usize, WireError> {
    match parse_digits_u64(value) {
        Some(Ok(n)) if n <= MAX_MESSAGE as u64 => {
            usize::try_from(n).map_err(|_| WireError::BadContentLength)
        }
        _ => Err(WireError::BadContentLength),
    }
}

impl Builder {
    fn header(&mut self, line: &str) -> Result<(), WireError> {
        let colon = line
            .find(':')
            .ok_or(WireError::Malformed("header line without colon"))?;
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(WireError::Malformed("header name"));
        }
        let value = line[colon + 1..].trim_matches([' ', '\t']);
        if has_bare_ctl(value) {
            return Err(WireError::Malformed("control character in header"));
        }
        let Some(canon) = canonical_name(name) else {
            self.other.push((name.to_string(), value.to_string()));
            return Ok(());
        };
        match canon {
            "Via" => {
                for part in split_top(value, b',').ok_or(WireError::BadHeader("Via"))? {
                    let via = parse_via(part).ok_or(WireError::BadHeader("Via"))?;
                    if self.via.len() >= MAX_VIA {
                        return Err(WireError::TooManyVia);
                    }
                    self.via.push(via);
                }
            }
            "From" => {
                let v = name_addr(value).ok_or(WireError::BadHeader("From"))?;
                once(&mut self.from, v, "From")?;
            }
            "To" => {
                let v = name_addr(value).ok_or(WireError::BadHeader("To"))?;
                once(&mut self.to, v, "To")?;
            }
            "Call-ID" => {
                if value.is_empty() || value.contains([' ', '\t']) {
                    return Err(WireError::BadHeader("Call-ID"));
                }
                once(&mut self.call_id, value.to_string(), "Call-ID")?;
            }
            "CSeq" => {
                let v = parse_cseq(value).ok_or(WireError::BadHeader("CSeq"))?;
                once(&mut self.cseq, v, "CSeq")?;
            }
            "Max-Forwards" => {
                let v = match parse_digits_u64(value) {
                    Some(Ok(n)) if n <= 255 => u32::try_from(n).ok(),
                    _ => None,
                }
                .ok_or(WireError::BadHeader("Max-Forwards"))?;
                once(&mut self.max_forwards, v, "Max-Forwards")?;
            }
            "Expires" => {
                // RFC 3261 §20.19: values above 2^32-1 are treated as 2^32-1.
                let v = match parse_digits_u64(value) {
                    Some(Ok(n)) => u32::try_from(n).unwrap_or(u32::MAX),
                    Some(Err(())) => u32::MAX,
                    None => return Err(WireError::BadHeader("Expires")),
                };
                once(&mut self.expires, v, "Expires")?;
            }
            "Contact" => {
                if value == "*" {
                    if !self.contact.is_empty() {
                        return Err(WireError::BadHeader("Contact"));
                    }
                    self.contact.push(Contact::Star);
                } else {
                    if self.contact.first() == Some(&Contact::Star) {
                        return Err(WireError::BadHeader("Contact"));
                    }
                    for part in split_top(value, b',').ok_or(WireError::BadHeader("Contact"))? {
                        let na = name_addr(part).ok_or(WireError::BadHeader("Contact"))?;
                        self.contact.push(Contact::Addr(na));
                    }
                }
            }
            "Route" | "Record-Route" => {
                let label = if canon == "Route" {
                    "Route"
                } else {
                    "Record-Route"
                };
                let list = if canon == "Route" {
                    &mut self.route
                } else {
                    &mut self.record_route
                };
                for part in split_top(value, b',').ok_or(WireError::BadHeader(label))? {
                    list.push(name_addr(part).ok_or(WireError::BadHeader(label))?);
                }
            }
            "Content-Type" => {
                if value.is_empty() {
                    return Err(WireError::BadHeader("Content-Type"));
                }
                once(&mut self.content_type, value.to_string(), "Content-Type")?;
            }
            "Content-Length" => {
                let n = parse_content_length(value)?;
                match self.content_length {
                    Some(prev) if prev != n => return Err(WireError::BadContentLength),
                    _ => self.content_length = Some(n),
                }
            }
            _ => self.other.push((canon.to_string(), value.to_string())),
        }
        Ok(())
    }

    fn finish(self, start: Start, body: Vec<u8>) -> Result<Message, WireError> {
        if self.via.is_empty() {
            return Err(WireError::MissingHeader("Via"));
        }
        let from = self.from.ok_or(WireError::MissingHeader("From"))?;
        let to = self.to.ok_or(WireError::MissingHeader("To"))?;
        let call_id = self.call_id.ok_or(WireError::MissingHeader("Call-ID"))?;
        let cseq = self.cseq.ok_or(WireError::MissingHeader("CSeq"))?;
        let headers = Headers {
            via: self.via,
            from,
            to,
            call_id,
            cseq,
            max_forwards: self.max_forwards,
            contact: self.contact,
            expires: self.expires,
            route: self.route,
            record_route: self.record_route,
            content_type: self.content_type,
            other: self.other,
        };
        Ok(match start {
            Start::Request(method, uri) => {
                if headers.cseq.method != method {
                    return Err(WireError::CSeqMismatch);
                }
                Message::Request(Request {
                    method,
                    uri,
                    headers,
                    body,
                })
            }
            Start::Response(status, reason) => Message::Response(Response {
                status,
                reason,
                headers,
                body,
            }),
        })
    }
}

fn parse_cseq(value: &str) -> Option<CSeq> {
    let (num, method) = value.split_once([' ', '\t'])?;
    let method = method.trim_start_matches([' ', '\t']);
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return None;
    }
    let seq = parse_digits_u64(num)?.ok()?;
    if seq > (1u64 << 31) - 1 {
        return None;
    }
    Some(CSeq {
        seq: u32::try_from(seq).ok()?,
        method: Method::from_token(method),
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Index just past the closing quote of the quoted string `s` starts with.
fn quoted_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Splits `s` at top-level `sep` bytes (outside quoted strings and `<...>`); elements are
/// trimmed. `None` when a quote or angle bracket is unbalanced or an element is empty.
fn split_top(s: &str, sep: u8) -> Option<Vec<&str>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut in_angle = false;
    while i < b.len() {
        match b[i] {
            b'"' if !in_angle => {
                i += quoted_end(&s[i..])?;
                continue;
            }
            b'<' if !in_angle => in_angle = true,
            b'>' if in_angle => in_angle = false,
            c if c == sep && !in_angle => {
                let part = s[start..i].trim_matches([' ', '\t']);
                if part.is_empty() {
                    return None;
                }
                out.push(part);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if in_angle {
        return None;
    }
    let part = s[start..].trim_matches([' ', '\t']);
    if part.is_empty() {
        return None;
    }
    out.push(part);
    Some(out)
}

/// Parses `;name[=value]...` header parameters (possibly empty input).
fn parse_params(s: &str) -> Option<Params> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() {
        return Some(Params::default());
    }
    let s = s.strip_prefix(';')?;
    let mut out = Vec::new();
    for p in split_top(s, b';')? {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (
                n.trim_end_matches([' ', '\t']),
                Some(v.trim_start_matches([' ', '\t'])),
            ),
            None => (p, None),
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return None;
        }
        if let Some(v) = value {
            if v.starts_with('"') {
                if quoted_end(v) != Some(v.len()) {
                    return None;
                }
            } else if v.bytes().any(|b| {
                matches!(
                    b,
                    b' ' | b'\t' | b'"' | b'<' | b'>' | b',' | b';' | b'=' | b'\\'
                )
            }) {
                return None;
            }
        }
        out.push((name.to_string(), value.map(str::to_string)));
    }
    Some(Params(out))
}

/// Splits `host[:port]` (host may be an IPv6 reference); returns the host text as written.
fn split_hostport(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, rest) = if s.starts_with('[') {
        let end = s.find(']')?;
        s[1..end].parse::<Ipv6Addr>().ok()?;
        (&s[..=end], &s[end + 1..])
    } else {
        let end = s.find(':').unwrap_or(s.len());
        let h = &s[..end];
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        (h, &s[end..])
    };
    let port = if rest.is_empty() {
        None
    } else {
        let p = rest.strip_prefix(':')?;
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(p.parse::<u16>().ok()?)
    };
    Some((host, port))
}

fn parse_via(s: &str) -> Option<Via> {
    let (proto, rest) = s.split_once('/')?;
    if !proto.trim_matches([' ', '\t']).eq_ignore_ascii_case("SIP") {
        return None;
    }
    let (version, rest) = rest.split_once('/')?;
    if version.trim_matches([' ', '\t']) != "2.0" {
        return None;
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let tend = rest
        .bytes()
        .position(|b| !is_token_byte(b))
        .unwrap_or(rest.len());
    let transport = &rest[..tend];
    let rest = &rest[tend..];
    if transport.is_empty() || !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (sent_by, params) = match rest.find(';') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = split_hostport(sent_by.trim_end_matches([' ', '\t']))?;
    Some(Via {
        transport: transport.to_string(),
        host: host.to_string(),
        port,
        params: parse_params(params)?,
    })
}

fn unescape_quoted(q: &str) -> String {
    let inner = &q[1..q.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            // A quoted NUL (RFC 4475 `intmeth`) is shown as U+FFFD: no NUL travels on.
            match chars.next() {
                Some('\0') => out.push(char::REPLACEMENT_CHARACTER),
                Some(n) => out.push(n),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn name_addr(s: &str) -> Option<NameAddr> {
    let s = s.trim_matches([' ', '\t']);
    let (display, rest) = if s.starts_with('"') {
        let end = quoted_end(s)?;
        let d = unescape_quoted(&s[..end]);
        let rest = s[end..].trim_start_matches([' ', '\t']);
        if !rest.starts_with('<') {
            return None;
        }
        (Some(d), rest)
    } else if let Some(lt) = s.find('<') {
        let d = s[..lt].trim_matches([' ', '\t']);
        if !d
            .bytes()
            .all(|b| is_token_byte(b) || b == b' ' || b == b'\t')
        {
            return None;
        }
        (Some(d.to_string()), &s[lt..])
    } else {
        // addr-spec: parameters after it belong to the header (RFC 3261 §20.10).
        let end = s.find([';', ' ', '\t']).unwrap_or(s.len());
        let uri = uri(&s[..end]).ok()?;
        return Some(NameAddr {
            display: None,
            uri,
            params: parse_params(&s[end..])?,
        });
    };
    let gt = rest.find('>')?;
    let uri = uri(&rest[1..gt]).ok()?;
    let params = parse_params(&rest[gt + 1..])?;
    Some(NameAddr {
        display: display.filter(|d| !d.is_empty()),
        uri,
        params,
    })
}

enum UriError {
    Scheme,
    Bad,
}

fn is_uri_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
                | b'%'
                | b';'
                | b'/'
                | b'?'
                | b':'
                | b'@'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b','
                | b'['
                | b']'
        )
}

fn valid_uri_chars(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !is_uri_byte(b[i]) {
            return false;
        }
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !hex(i + 1) || !hex(i + 2) {
                return false;
            }
            i += 2;
        }
        i += 1;
    }
    true
}

/// URI parameters (`;name[=value]...`, no leading `;`) typed by rsip where it can.
fn uri_params(s: &str) -> Result<Vec<Param>, UriError> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    for p in s.split(';') {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if name.is_empty() || value.is_some_and(|v| v.contains('=')) {
            return Err(UriError::Bad);
        }
        let param = Param::try_from((name, value))
            .unwrap_or_else(|_| Param::Other(name.into(), value.map(Into::into)));
        out.push(param);
    }
    Ok(out)
}

fn uri(s: &str) -> Result<Uri, UriError> {
    let colon = s.find(':').ok_or(UriError::Bad)?;
    let scheme = &s[..colon];
    let rest = &s[colon + 1..];
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(UriError::Bad);
    }
    let is_sip = scheme.eq_ignore_ascii_case("sip");
    let is_sips = scheme.eq_ignore_ascii_case("sips");
    let is_tel = scheme.eq_ignore_ascii_case("tel");
    if !(is_sip || is_sips || is_tel) {
        return Err(UriError::Scheme);
    }
    if rest.is_empty() || !valid_uri_chars(rest) {
        return Err(UriError::Bad);
    }
    if is_tel {
        let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
        if number.is_empty()
            || !number.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'.' | b'(' | b')' | b'*' | b'+' | b'%')
            })
        {
            return Err(UriError::Bad);
        }
        let mut host = String::with_capacity(4 + number.len());
        host.push_str("tel:");
        host.push_str(number);
        return Ok(Uri {
            scheme: None,
            auth: None,
            host_with_port: HostWithPort {
                host: Host::Domain(Domain::new(host)),
                port: None,
            },
            params: uri_params(params)?,
            headers: Vec::new(),
        });
    }
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if hostpart.contains('?') {
        // URI headers cannot be represented in rsip::Uri.
        return Err(UriError::Bad);
    }
    let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
    let (host_text, port) = split_hostport(hostport).ok_or(UriError::Bad)?;
    let host = if let Some(v6) = host_text.strip_prefix('[') {
        let ip: Ipv6Addr = v6
            .trim_end_matches(']')
            .parse()
            .map_err(|_| UriError::Bad)?;
        Host::IpAddr(IpAddr::V6(ip))
    } else if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
        Host::IpAddr(IpAddr::V4(ip))
    } else {
        Host::Domain(Domain::new(host_text))
    };
    let auth = match userinfo {
        None => None,
        Some(u) => {
            let (user, password) = match u.split_once(':') {
                Some((user, pw)) => (user, Some(pw)),
                None => (u, None),
            };
            if user.is_empty() {
                return Err(UriError::Bad);
            }
            Some(Auth {
                user: user.to_string(),
                password: password.map(str::to_string),
            })
        }
    };
    Ok(Uri {
        scheme: Some(if is_sips { Scheme::Sips } else { Scheme::Sip }),
        auth,
        host_with_port: HostWithPort {
            host,
            port: port.map(Port::from),
        },
        params: uri_params(params)?,
        headers: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Stream framing
// ---------------------------------------------------------------------------------------------

/// Cuts the next unit from a stream receive buffer (RFC 3261 §18.3).
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(Frame::KeepAlive(n)))`: the buffer starts with
/// `n` CR/LF bytes to discard. `Ok(Some(Frame::Message(n)))`: `buf[..n]` is one complete
/// message. `Err(_)`: the stream cannot be framed (headers over [`MAX_MESSAGE`] without an
/// end, Content-Length missing, invalid or too large); the connection should be closed.
pub fn next_frame(buf: &[u8]) -> Result<Option<Frame>, WireError> {
    let crlf = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if crlf > 0 {
        return Ok(Some(Frame::KeepAlive(crlf)));
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(MAX_MESSAGE)];
    let Some((head_len, body_start)) = find_head_end(window) else {
        return if buf.len() >= MAX_MESSAGE {
            Err(WireError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let len = stream_content_length(&buf[..head_len])?;
    let total = body_start + len;
    if total > MAX_MESSAGE {
        return Err(WireError::BodyTooLarge);
    }
    Ok((buf.len() >= total).then_some(Frame::Message(total)))
}

/// [`next_frame`] with the frame kind folded away: `Some(n)` means `buf[..n]` is either a
/// keep-alive run (check with [`is_keepalive`], discard) or one complete message.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, WireError> {
    Ok(next_frame(buf)?.map(|f| match f {
        Frame::KeepAlive(n) | Frame::Message(n) => n,
    }))
}

/// The Content-Length of a stream message's header section (mandatory on streams).
fn stream_content_length(head: &[u8]) -> Result<usize, WireError> {
    let mut found: Option<usize> = None;
    let mut lines = head.split(|&b| b == b'\n').skip(1).peekable();
    while let Some(raw) = lines.next() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if !(name.eq_ignore_ascii_case(b"Content-Length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let mut value = line[colon + 1..].trim_ascii().to_vec();
        while let Some(next) = lines.next_if(|l| l.starts_with(b" ") || l.starts_with(b"\t")) {
            value.extend_from_slice(next.trim_ascii());
            if value.len() > 32 {
                return Err(WireError::BadContentLength);
            }
        }
        let text = std::str::from_utf8(&value).map_err(|_| WireError::BadContentLength)?;
        let n = match parse_digits_u64(text) {
            Some(Ok(n)) if n > MAX_MESSAGE as u64 => return Err(WireError::BodyTooLarge),
            _ => parse_content_length(text)?,
        };
        if found.is_some_and(|prev| prev != n) {
            return Err(WireError::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(WireError::MissingHeader("Content-Length"))
}

// ---------------------------------------------------------------------------------------------
// Replies to unparseable requests
// ---------------------------------------------------------------------------------------------

/// What [`scan_head`] finds textually in bytes that did not parse: the start line and the
/// lines of the headers a response needs (unfolded, decoded lossily, verbatim otherwise).
#[derive(Debug, Default)]
struct Scanned {
    start: String,
    via: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    call_id: Option<String>,
    cseq: Option<String>,
}

impl Scanned {
    /// The value of a `Name: value` line.
    fn value(line: &str) -> &str {
        line.split_once(':')
            .map_or("", |(_, v)| v.trim_matches([' ', '\t']))
    }
}

/// Finds the start line and the Via, From, To, Call-ID and CSeq lines of `bytes` without
/// parsing anything else. A header line with a control character outside a quoted-pair is
/// ignored (it could not be copied into a response safely). `None` without a complete
/// start line.
fn scan_head(bytes: &[u8]) -> Option<Scanned> {
    let bytes = &bytes[..bytes.len().min(MAX_MESSAGE)];
    let skip = bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let bytes = &bytes[skip..];
    let head = match find_head_end(bytes) {
        Some((h, _)) => &bytes[..h],
        // No header end: use the complete lines only.
        None => &bytes[..bytes.iter().rposition(|&b| b == b'\n')?],
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    let start = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut out = Scanned {
        start,
        ..Scanned::default()
    };
    let mut count = 0usize;
    while let Some(raw) = lines.next() {
        count += 1;
        if count > MAX_HEADERS + MAX_VIA {
            break;
        }
        let mut line = String::from_utf8_lossy(raw).into_owned();
        while let Some(next) = lines.next_if(|l| l.starts_with(b" ") || l.starts_with(b"\t")) {
            line.push(' ');
            line.push_str(String::from_utf8_lossy(next).trim_start_matches([' ', '\t']));
        }
        if line.len() > MAX_HEADER_LINE || has_bare_ctl(&line) {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            continue;
        };
        let slot = match canonical_name(name.trim_end_matches([' ', '\t'])) {
            Some("Via") => {
                if out.via.len() < MAX_VIA {
                    out.via.push(line);
                }
                continue;
            }
            Some("From") => &mut out.from,
            Some("To") => &mut out.to,
            Some("Call-ID") => &mut out.call_id,
            Some("CSeq") => &mut out.cseq,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(line);
        }
    }
    Some(out)
}

/// A key identifying a message and its retransmissions (same Call-ID, CSeq and top-Via
/// branch), read textually so it works for messages that did not parse. `None` when none
/// of the three can be found. The firewall counts one malformed message once with it.
pub fn retransmission_key(bytes: &[u8]) -> Option<u64> {
    let s = scan_head(bytes)?;
    let call_id = s.call_id.as_deref().map(Scanned::value);
    let cseq = s.cseq.as_deref().map(Scanned::value);
    let branch = s.via.first().and_then(|v| {
        let lower = v.to_ascii_lowercase();
        let at = lower.find("branch")?;
        let rest = v
            .get(at + "branch".len()..)?
            .trim_start_matches([' ', '\t']);
        let rest = rest.strip_prefix('=')?.trim_start_matches([' ', '\t']);
        let end = rest.find([';', ',', ' ', '\t']).unwrap_or(rest.len());
        Some(&rest[..end])
    });
    if call_id.is_none() && cseq.is_none() && branch.is_none() {
        return None;
    }
    let mut key = String::new();
    for part in [call_id, cseq, branch] {
        key.push_str(part.unwrap_or(""));
        key.push('\n');
    }
    Some(fnv1a(key.as_bytes(), b""))
}

/// A minimal error response to a request that failed to parse with `err`: the precise
/// status ([`error_status`]) and reason ([`error_reason`]), the Via lines and whichever of
/// From, To, Call-ID and CSeq are found textually (copied verbatim, a To tag added when
/// missing). `None` (drop silently: nothing to answer) for responses, ACKs, binary garbage
/// or a request without a Via line.
pub fn reply_to_malformed(bytes: &[u8], err: &WireError) -> Option<Vec<u8>> {
    let s = scan_head(bytes)?;
    let (method, _) = s.start.split_once(' ')?;
    if method.is_empty()
        || !method.bytes().all(is_token_byte)
        || method.eq_ignore_ascii_case("ACK")
        || (method.len() >= 4 && method[..4].eq_ignore_ascii_case("SIP/"))
        || has_ctl(&s.start)
    {
        return None;
    }
    if s.via.is_empty() {
        return None;
    }
    let status = error_status(err);
    let mut to = s.to;
    if let Some(to) = to.as_mut() {
        if !to.to_ascii_lowercase().contains("tag=") {
            let call_id = s.call_id.as_deref().unwrap_or("");
            let cseq = s.cseq.as_deref().unwrap_or("");
            let _ = write!(
                to,
                ";tag={:016x}",
                fnv1a(call_id.as_bytes(), cseq.as_bytes())
            );
        }
    }
    let mut out = String::with_capacity(256 + s.via.iter().map(String::len).sum::<usize>());
    let _ = write!(out, "SIP/2.0 {status} {}\r\n", error_reason(err));
    for v in &s.via {
        out.push_str(v);
        out.push_str("\r\n");
    }
    for h in [&s.from, &to, &s.call_id, &s.cseq].into_iter().flatten() {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in a.iter().chain(b) {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:100@pbx.example.com>;tag=1928301774\r\n\
To: <sip:100@pbx.example.com>\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:100@192.0.2.10:5060;transport=udp>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"\r\n\
Expires: 3600\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, MESSAGE\r\n\
Supported: path, gruu\r\n\
Content-Length: 0\r\n\r\n";

    fn req(text: &str) -> Request {
        match parse(text.as_bytes()) {
            Ok(Message::Request(r)) => r,
            other => panic!("expected request, got {other:?}"),
        }
    }

    fn err(text: &str) -> WireError {
        match parse(text.as_bytes()) {
            Err(e) => e,
            Ok(m) => panic!("expected error, got {m:?}"),
        }
    }

    /// A minimal valid request with `extra` header lines appended before the blank line.
    fn minimal(method: &str, extra: &str, body: &str) -> String {
        format!(
            "{method} sip:200@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKmin\r\n\
From: <sip:100@pbx.example.com>;tag=a\r\n\
To: <sip:200@pbx.example.com>\r\n\
Call-ID: min@192.0.2.10\r\n\
CSeq: 1 {method}\r\n{extra}\r\n{body}"
        )
    }

    fn round_trip(msg: &Message) {
        let again = parse(&emit(msg)).expect("emitted message parses");
        assert_eq!(&again, msg);
    }

    #[test]
    fn parses_typical_register() {
        let r = req(REGISTER);
        assert_eq!(r.method, Method::Register);
        assert_eq!(r.uri.to_string(), "sip:pbx.example.com");
        let h = &r.headers;
        assert_eq!(h.via.len(), 1);
        let via = &h.via[0];
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "192.0.2.10");
        assert_eq!(via.port, Some(5060));
        assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.params.get("rport"), Some(None));
        assert!(via.is_rfc3261());
        assert_eq!(h.max_forwards, Some(70));
        assert_eq!(h.from.display.as_deref(), Some("Alice"));
        assert_eq!(h.from.tag(), Some("1928301774"));
        assert_eq!(h.from.uri.user(), Some("100"));
        assert_eq!(h.to.tag(), None);
        assert_eq!(h.call_id, "a84b4c76e66710@192.0.2.10");
        assert_eq!(h.cseq.seq, 314159);
        assert_eq!(h.cseq.method, Method::Register);
        assert_eq!(h.expires, Some(3600));
        let Contact::Addr(c) = &h.contact[0] else {
            panic!("not an address")
        };
        assert_eq!(c.params.get("expires"), Some(Some("3600")));
        assert_eq!(
            c.params.get("+sip.instance"),
            Some(Some("\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\""))
        );
        assert_eq!(c.uri.transport(), Some(&rsip::Transport::Udp));
        assert_eq!(c.uri.port().map(|p| *p.value()), Some(5060));
        assert_eq!(h.get("user-agent"), Some("Yealink SIP-T46S 66.86.0.15"));
        assert_eq!(h.get("Supported"), Some("path, gruu"));
        assert!(h.get("Content-Length").is_none());
        assert!(r.body.is_empty());
        round_trip(&Message::Request(r));
    }

    #[test]
    fn emit_writes_headers_in_documented_order() {
        let r = req(REGISTER);
        let text = String::from_utf8(emit_request(&r)).expect("utf-8");
        let names: Vec<&str> = text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':').map(|(n, _)| n))
            .collect();
        assert_eq!(
            names,
            [
                "Via",
                "Max-Forwards",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Contact",
                "Expires",
                "User-Agent",
                "Allow",
                "Supported",
                "Content-Length"
            ]
        );
        assert!(text.starts_with("REGISTER sip:pbx.example.com SIP/2.0\r\n"));
        assert!(text.contains("\r\nFrom: \"Alice\" <sip:100@pbx.example.com>;tag=1928301774\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn tortuous_invite_with_folding_compact_names_and_odd_whitespace() {
        let body = "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n";
        let text = format!(
            "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
Content-Length   : {}\r\n\
cseq: 0009\r\n  INVITE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Type: application/sdp\r\n\
Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\r\n{body}",
            body.len()
        );
        let r = req(&text);
        let h = &r.headers;
        assert_eq!(h.to.tag(), Some("1918181833n"));
        assert_eq!(h.from.display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(h.from.tag(), Some("98asjd8"));
        assert_eq!(h.max_forwards, Some(68));
        assert_eq!(h.cseq.seq, 9);
        assert_eq!(h.via.len(), 3);
        assert_eq!(h.via[0].host, "192.0.2.2");
        assert_eq!(h.via[0].params.get("rport"), Some(None));
        assert_eq!(h.via[1].transport, "TCP");
        assert_eq!(h.via[1].host, "spindle.example.com");
        assert_eq!(h.via[1].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(h.via[2].branch(), Some("z9hG4bK30239"));
        assert_eq!(h.get("Subject"), Some(""));
        assert_eq!(
            h.get("NewFangledHeader"),
            Some("newfangled value continued newfangled value")
        );
        assert_eq!(h.get("UnknownHeaderWithUnusualValue"), Some(";;,,;;,;"));
        assert_eq!(h.content_type.as_deref(), Some("application/sdp"));
        assert_eq!(h.route.len(), 1);
        assert!(h.route[0].uri.params.contains(&Param::Lr));
        let Contact::Addr(c) = &h.contact[0] else {
            panic!("not an address")
        };
        assert_eq!(c.display.as_deref(), Some("Quoted string \"\""));
        assert_eq!(c.params.get("newparam"), Some(Some("newvalue")));
        assert_eq!(c.params.get("secondparam"), Some(None));
        assert_eq!(c.params.get("q"), Some(Some("0.33")));
        assert_eq!(r.body, body.as_bytes());
        round_trip(&Message::Request(r));
    }

    #[test]
    fn compact_names_expand_to_canonical_names() {
        let text = "OPTIONS sip:200@pbx.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKc\r\n\
f: <sip:100@pbx.example.com>;tag=a\r\n\
t: sip:200@pbx.example.com\r\n\
i: compact@192.0.2.10\r\n\
CSEQ: 2 OPTIONS\r\n\
m: <sip:100@192.0.2.10>\r\n\
k: timer\r\n\
o: presence\r\n\
u: dialog\r\n\
x: 1800\r\n\
s: hello\r\n\
c: text/plain\r\n\
l: 2\r\n\r\nhi";
        let r = req(text);
        let h = &r.headers;
        assert_eq!(h.call_id, "compact@192.0.2.10");
        assert_eq!(h.to.uri.to_string(), "sip:200@pbx.example.com");
        assert_eq!(h.contact.len(), 1);
        assert_eq!(
            h.other,
            vec![
                ("Supported".to_string(), "timer".to_string()),
                ("Event".to_string(), "presence".to_string()),
                ("Allow-Events".to_string(), "dialog".to_string()),
                ("Session-Expires".to_string(), "1800".to_string()),
                ("Subject".to_string(), "hello".to_string()),
            ]
        );
        assert_eq!(h.content_type.as_deref(), Some("text/plain"));
        assert_eq!(r.body, b"hi");
        assert_eq!(canonical_name("WWW-AUTHENTICATE"), Some("WWW-Authenticate"));
        assert_eq!(canonical_name("X-Custom"), None);
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let text = minimal("OPTIONS", "", "").replace("\r\n", "\n");
        let r = req(&text);
        assert_eq!(r.headers.call_id, "min@192.0.2.10");
    }

    #[test]
    fn unknown_method_is_kept_and_cseq_must_match() {
        let text = "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n\
To: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\r\n\r\n";
        // Control characters in a quoted-pair are fine (RFC 4475 `intmeth`); this fragment
        // only lacks a From header. Outside a quoted string they are refused.
        assert_eq!(
            parse(text.as_bytes()).err(),
            Some(WireError::MissingHeader("From"))
        );
        let bare = text.replace("BEL:\\\x07", "BEL:\x07");
        assert_eq!(
            parse(bare.replace("\"BEL", "BEL").as_bytes()).err(),
            Some(WireError::Malformed("control character in header"))
        );
        let ok = "NEWMETHOD sip:user;par=u%40example.net@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\r\n\
From: <sip:caller@example.com>;tag=1\r\n\
To: <sip:user;par=u%40example.net@example.com>\r\n\
Call-ID: semiuri.0ha0isndaksdj\r\n\
CSeq: 8 NEWMETHOD\r\n\r\n";
        let r = req(ok);
        assert_eq!(r.method, Method::Other("NEWMETHOD".to_string()));
        assert_eq!(r.uri.user(), Some("user;par=u%40example.net"));
        assert_eq!(r.uri.host().to_string(), "example.com");
        round_trip(&Message::Request(r));
        let mismatch = ok.replace("CSeq: 8 NEWMETHOD", "CSeq: 8 INVITE");
        assert_eq!(err(&mismatch), WireError::CSeqMismatch);
    }

    #[test]
    fn missing_mandatory_headers_are_named() {
        let base = minimal("OPTIONS", "", "");
        for (line, name) in [
            ("Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKmin\r\n", "Via"),
            ("From: <sip:100@pbx.example.com>;tag=a\r\n", "From"),
            ("To: <sip:200@pbx.example.com>\r\n", "To"),
            ("Call-ID: min@192.0.2.10\r\n", "Call-ID"),
            ("CSeq: 1 OPTIONS\r\n", "CSeq"),
        ] {
            let text = base.replace(line, "");
            assert_eq!(err(&text), WireError::MissingHeader(name), "{name}");
        }
    }

    #[test]
    fn content_length_rules() {
        // Larger than the bytes present: error (UDP, RFC 3261 §18.3).
        let text = minimal("MESSAGE", "Content-Length: 50\r\n", "short");
        assert_eq!(err(&text), WireError::BadContentLength);
        // Smaller: the body is truncated to it.
        let text = minimal("MESSAGE", "Content-Length: 3\r\n", "hello");
        assert_eq!(req(&text).body, b"hel");
        // Absent: the rest of the datagram.
        let text = minimal("MESSAGE", "", "hello");
        assert_eq!(req(&text).body, b"hello");
        for bad in ["-999", "abc", "18446744073709551621", "1 2", ""] {
            let text = minimal("MESSAGE", &format!("Content-Length: {bad}\r\n"), "");
            assert_eq!(err(&text), WireError::BadContentLength, "{bad:?}");
        }
        let text = minimal("MESSAGE", "Content-Length: 2\r\nl: 3\r\n", "abc");
        assert_eq!(err(&text), WireError::BadContentLength);
        let text = minimal("MESSAGE", "Content-Length: 3\r\nl: 3\r\n", "abc");
        assert_eq!(req(&text).body, b"abc");
    }

    #[test]
    fn limits_are_enforced() {
        let big = minimal("MESSAGE", "", &"x".repeat(MAX_MESSAGE));
        assert_eq!(err(&big), WireError::BodyTooLarge);
        assert_eq!(error_status(&WireError::TooLarge), 513);

        let many: String = (0..MAX_HEADERS).map(|i| format!("X-H{i}: v\r\n")).collect();
        assert_eq!(
            err(&minimal("OPTIONS", &many, "")),
            WireError::TooManyHeaders
        );
        let fewer: String = (0..MAX_HEADERS - 5)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect();
        assert_eq!(req(&minimal("OPTIONS", &fewer, "")).headers.other.len(), 95);

        let long = format!("X-Long: {}\r\n", "a".repeat(MAX_HEADER_LINE));
        assert_eq!(
            err(&minimal("OPTIONS", &long, "")),
            WireError::HeaderTooLong
        );
        let folded = format!(
            "X-Long: a\r\n{}",
            " bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n".repeat(150)
        );
        assert_eq!(
            err(&minimal("OPTIONS", &folded, "")),
            WireError::HeaderTooLong
        );

        let uri = format!("sip:{}@example.com", "u".repeat(MAX_URI));
        let text = minimal("OPTIONS", "", "")
            .replace("sip:200@pbx.example.com SIP", &format!("{uri} SIP"));
        assert_eq!(err(&text), WireError::UriTooLong);
        assert_eq!(error_status(&WireError::UriTooLong), 414);

        let vias: String = (0..MAX_VIA)
            .map(|i| format!("Via: SIP/2.0/UDP h{i};branch=z9hG4bK{i}\r\n"))
            .collect();
        assert_eq!(err(&minimal("OPTIONS", &vias, "")), WireError::TooManyVia);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(parse(&[0xff, 0x00, 0x13, 0x37, b'\n', b'\n']).is_err());
        assert_eq!(
            parse(b"").err(),
            Some(WireError::Malformed("empty message"))
        );
        assert_eq!(
            parse(b"\r\n\r\n").err(),
            Some(WireError::Malformed("empty message"))
        );
        let text = minimal("OPTIONS", "", "");
        let cut = &text.as_bytes()[..text.len() - 30];
        assert_eq!(parse(cut).err(), Some(WireError::Incomplete));
        // Every prefix of a valid message fails cleanly.
        for n in 0..REGISTER.len() - 1 {
            assert!(parse(&REGISTER.as_bytes()[..n]).is_err(), "prefix {n}");
        }
        let nonutf8 =
            minimal("OPTIONS", "Subject: \u{e9}t\u{e9}\r\n", "").replace('\u{e9}', "\u{1}");
        assert!(parse(nonutf8.as_bytes()).is_err());
        // 8-bit bytes: a lone 0xc3 in a header value is text with U+FFFD, not an error...
        let mut bytes = minimal("OPTIONS", "Subject: #\r\n", "").into_bytes();
        let pos = bytes.iter().position(|&b| b == b'#').expect("# present");
        bytes[pos] = 0xc3;
        let Ok(Message::Request(r)) = parse(&bytes) else {
            panic!("8-bit Subject refused")
        };
        assert_eq!(r.headers.get("Subject"), Some("\u{fffd}"));
        // ...but in the Request-URI (ASCII by grammar) it is a bad Request-URI: 400.
        let mut bytes = minimal("OPTIONS", "", "").into_bytes();
        bytes[12] = 0xc3;
        assert_eq!(
            parse(&bytes).err(),
            Some(WireError::Malformed("Request-URI"))
        );
    }

    #[test]
    fn start_line_errors() {
        let base = minimal("OPTIONS", "", "");
        let v7 = base.replace("pbx.example.com SIP/2.0", "pbx.example.com SIP/7.0");
        assert_eq!(err(&v7), WireError::Version);
        assert_eq!(error_status(&WireError::Version), 505);
        let scheme = base.replace(
            "sip:200@pbx.example.com SIP",
            "nobodyknowsthisscheme:totallyopaquecontent SIP",
        );
        assert_eq!(err(&scheme), WireError::UnsupportedScheme);
        assert_eq!(error_status(&WireError::UnsupportedScheme), 416);
        let novel = base.replace(
            "sip:200@pbx.example.com SIP",
            "soap.beep://192.0.2.103:3002 SIP",
        );
        assert_eq!(err(&novel), WireError::UnsupportedScheme);
        for bad in [
            "OPTIONS <sip:200@pbx.example.com> SIP/2.0",
            "OPTIONS  sip:200@pbx.example.com SIP/2.0",
            "OPTIONS sip:200@pbx.example.com; lr SIP/2.0",
            "OPTIONS sip:200@pbx.example.com SIP/2.0 ",
            "OPTIONS sip:200@pbx.example.com",
            "OPTIONS sip:200@pbx.example.com?Route=%3Csip:x%3E SIP/2.0",
            "OPTIONS sip:200@[2001:db8::zz] SIP/2.0",
            "OPTIONS sip:200@host:99999 SIP/2.0",
            "OPTIONS sip:%zz@host SIP/2.0",
        ] {
            let text = base.replace("OPTIONS sip:200@pbx.example.com SIP/2.0", bad);
            assert!(
                matches!(err(&text), WireError::Malformed(_)),
                "{bad:?} -> {:?}",
                parse(text.as_bytes())
            );
        }
    }

    #[test]
    fn responses_parse_and_round_trip() {
        let text = "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;received=192.0.2.99;rport=40000\r\n\
From: <sip:100@pbx.example.com>;tag=1928301774\r\n\
To: <sip:100@pbx.example.com>;tag=37GkEhwl6\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:100@192.0.2.10:5060>;expires=3600, <sip:100@198.51.100.7>;expires=10\r\n\
Content-Length: 0\r\n\r\n";
        let Ok(Message::Response(r)) = parse(text.as_bytes()) else {
            panic!("not a response")
        };
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "OK");
        assert_eq!(r.headers.contact.len(), 2);
        assert_eq!(r.headers.via[0].params.get("rport"), Some(Some("40000")));
        round_trip(&Message::Response(r));

        let odd = text
            .replace("200 OK", "100 ")
            .replace("CSeq: 314159 REGISTER", "CSeq: 1 INVITE");
        let Ok(Message::Response(r)) = parse(odd.as_bytes()) else {
            panic!("not a response")
        };
        assert_eq!((r.status, r.reason.as_str()), (100, ""));
        let utf = text.replace(
            "200 OK",
            "200 \u{420}\u{435}\u{433}\u{438}\u{441}\u{442}\u{440}\u{430}\u{446}\u{438}\u{044f}",
        );
        assert!(parse(utf.as_bytes()).is_ok());
        for bad in [
            "SIP/2.0 4294967301 better not break",
            "SIP/2.0 99 Low",
            "SIP/2.0 2000 OK",
        ] {
            let t = text.replace("SIP/2.0 200 OK", bad);
            assert_eq!(err(&t), WireError::Malformed("status code"), "{bad}");
        }
    }

    #[test]
    fn ipv6_hosts_and_multiple_vias() {
        let text = "INVITE sip:200@[2001:db8::10]:5070;transport=tcp SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKv6;rport, SIP/2.0/TCP [2001:db8::2];branch=z9hG4bKv6b;received=2001:db8::99\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKthird\r\n\
From: <sip:100@[2001:db8::1]>;tag=x\r\n\
To: <sip:200@[2001:db8::10]>\r\n\
Call-ID: v6@host\r\n\
CSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n\r\n";
        let r = req(text);
        let via = &r.headers.via;
        assert_eq!(via.len(), 3);
        assert_eq!(
            (via[0].host.as_str(), via[0].port),
            ("[2001:db8::1]", Some(5060))
        );
        assert_eq!(via[0].params.get("rport"), Some(None));
        assert_eq!((via[1].host.as_str(), via[1].port), ("[2001:db8::2]", None));
        assert_eq!(via[1].params.get("received"), Some(Some("2001:db8::99")));
        assert_eq!(via[2].branch(), Some("z9hG4bKthird"));
        let v6: Ipv6Addr = "2001:db8::10".parse().expect("ipv6");
        assert_eq!(r.uri.host(), &Host::IpAddr(IpAddr::V6(v6)));
        assert_eq!(r.uri.port().map(|p| *p.value()), Some(5070));
        let wire = String::from_utf8(emit_request(&r)).expect("utf-8");
        assert!(wire.starts_with("INVITE sip:200@[2001:db8::10]:5070;transport=TCP SIP/2.0\r\n"));
        assert!(wire.contains(
            "\r\nVia: SIP/2.0/TCP [2001:db8::2];branch=z9hG4bKv6b;received=2001:db8::99\r\n"
        ));
        round_trip(&Message::Request(r));
    }

    #[test]
    fn via_errors() {
        for bad in [
            "Via: SIP/2.0/UDP\r\n",
            "Via: SIP/3.0/UDP host;branch=z9hG4bKx\r\n",
            "Via: SIP/2.0/UDP host:port;branch=z9hG4bKx\r\n",
            "Via: SIP/2.0/UDP [2001:db8::1;branch=z9hG4bKx\r\n",
            "Via: SIP/2.0/UDP host;branch=z9hG4bKx,\r\n",
            "Via: SIP/2.0/UDP host;;branch=z9hG4bKx\r\n",
        ] {
            let text = minimal("OPTIONS", bad, "");
            assert_eq!(err(&text), WireError::BadHeader("Via"), "{bad:?}");
        }
    }

    #[test]
    fn header_values_are_validated() {
        let base = minimal("OPTIONS", "", "");
        let cases = [
            ("CSeq: 1 OPTIONS", "CSeq: 2147483648 OPTIONS", "CSeq"),
            (
                "CSeq: 1 OPTIONS",
                "CSeq: 36893488147419103232 OPTIONS",
                "CSeq",
            ),
            ("CSeq: 1 OPTIONS", "CSeq: OPTIONS", "CSeq"),
            ("Call-ID: min@192.0.2.10", "Call-ID: a b", "Call-ID"),
            (
                "From: <sip:100@pbx.example.com>;tag=a",
                "From: Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43",
                "From",
            ),
            (
                "From: <sip:100@pbx.example.com>;tag=a",
                "From: \"Unbalanced <sip:a@b>;tag=1",
                "From",
            ),
            (
                "To: <sip:200@pbx.example.com>",
                "To: < sip:t.watson@ieee.org >",
                "To",
            ),
            (
                "To: <sip:200@pbx.example.com>",
                "To: <sip:200@pbx.example.com",
                "To",
            ),
            ("To: <sip:200@pbx.example.com>", "To: <mailto:a@b>", "To"),
        ];
        for (from, to, name) in cases {
            let text = base.replace(from, to);
            assert_eq!(err(&text), WireError::BadHeader(name), "{to:?}");
        }
        for (extra, name) in [
            ("Max-Forwards: 300\r\n", "Max-Forwards"),
            ("Max-Forwards: -1\r\n", "Max-Forwards"),
            ("Expires: soon\r\n", "Expires"),
            ("Contact: *\r\nContact: <sip:a@b>\r\n", "Contact"),
            ("Contact: <sip:a@b>, *\r\n", "Contact"),
            ("Route: <sip:a@b>,\r\n", "Route"),
            ("Content-Type:\r\n", "Content-Type"),
        ] {
            let text = minimal("OPTIONS", extra, "");
            assert_eq!(err(&text), WireError::BadHeader(name), "{extra:?}");
        }
        let text = minimal("OPTIONS", "From: <sip:x@y>\r\n", "");
        assert_eq!(err(&text), WireError::DuplicateHeader("From"));
        let huge = minimal("REGISTER", "Expires: 280297596632815\r\n", "");
        assert_eq!(req(&huge).headers.expires, Some(u32::MAX));
        assert_eq!(
            err(&base.replace("SIP/2.0\r\nVia", "SIP/2.0\r\n folded: first\r\nVia")),
            WireError::Malformed("continuation line without header")
        );
        let text = base.replace(
            "CSeq: 1 OPTIONS\r\n",
            "CSeq: 1 OPTIONS\r\nNo colon here\r\n",
        );
        assert_eq!(
            err(&text),
            WireError::Malformed("header line without colon")
        );
    }

    #[test]
    fn contacts_routes_and_addr_specs() {
        let extra = "Contact: \"Bell, Alexander\" <sip:a.g.bell@bell-tel.com>;q=0.5, sip:watson@[2001:db8::5];expires=60\r\n\
Contact: <tel:+1-212-555-1234;phone-context=example.com>\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
Record-Route: <sip:rr.example.com;lr;transport=tcp>\r\n";
        let r = req(&minimal("INVITE", extra, ""));
        let h = &r.headers;
        assert_eq!(h.contact.len(), 3);
        let Contact::Addr(a) = &h.contact[0] else {
            panic!("address")
        };
        assert_eq!(a.display.as_deref(), Some("Bell, Alexander"));
        assert_eq!(a.uri.user(), Some("a.g.bell"));
        assert_eq!(a.params.get("q"), Some(Some("0.5")));
        let Contact::Addr(b) = &h.contact[1] else {
            panic!("address")
        };
        assert_eq!(b.params.get("expires"), Some(Some("60")));
        assert!(b.uri.params.is_empty());
        let Contact::Addr(t) = &h.contact[2] else {
            panic!("address")
        };
        assert_eq!(tel_number(&t.uri), Some("+1-212-555-1234"));
        assert_eq!(
            t.uri.to_string(),
            "tel:+1-212-555-1234;phone-context=example.com"
        );
        let hosts: Vec<String> = h.route.iter().map(|r| r.uri.host().to_string()).collect();
        assert_eq!(
            hosts,
            ["p1.example.com", "p2.example.com", "p3.example.com"]
        );
        assert_eq!(h.record_route.len(), 1);
        round_trip(&Message::Request(r));

        let star = req(&minimal("REGISTER", "Contact: *\r\nExpires: 0\r\n", ""));
        assert_eq!(star.headers.contact, vec![Contact::Star]);
        assert_eq!(star.headers.expires, Some(0));
        round_trip(&Message::Request(star));

        let lws = req(&minimal("OPTIONS", "", "").replace(
            "From: <sip:100@pbx.example.com>;tag=a",
            "From: caller<sip:caller@example.com>;tag=323",
        ));
        assert_eq!(lws.headers.from.display.as_deref(), Some("caller"));
    }

    #[test]
    fn uri_parsing_fixes_rsip_gaps() {
        let u = parse_uri("sip:alice.smith@example.com").expect("uri");
        assert_eq!(u.user(), Some("alice.smith"));
        assert_eq!(u.host().to_string(), "example.com");
        let u = parse_uri("sips:user:secret@host.example.com:5061;maddr=192.0.2.1;lr;method=FOO")
            .expect("uri");
        assert_eq!(u.scheme, Some(Scheme::Sips));
        assert_eq!(
            u.auth.as_ref().and_then(|a| a.password.as_deref()),
            Some("secret")
        );
        assert!(u.params.contains(&Param::Lr));
        assert_eq!(u.params.len(), 3);
        assert!(parse_uri("sip:100@x>junk").is_err());
        assert!(parse_uri("sip:a b@x").is_err());
        assert!(parse_uri("sip:").is_err());
        assert!(parse_uri("sip:@host").is_err());
        assert_eq!(
            parse_uri("http://x/y").err(),
            Some(WireError::UnsupportedScheme)
        );
        let tel = parse_uri("tel:+4930123456").expect("tel");
        assert_eq!(tel_number(&tel), Some("+4930123456"));
        let mut out = String::new();
        write_uri(&mut out, &tel);
        assert_eq!(out, "tel:+4930123456");
        let n = parse_name_addr("\"Bob\" <sip:bob@example.com>;tag=9").expect("name-addr");
        assert_eq!(n.tag(), Some("9"));
    }

    #[test]
    fn emit_brackets_ipv6_hosts_built_in_code() {
        let mut r = req(&minimal("OPTIONS", "", ""));
        let addr: std::net::SocketAddr = "[2001:db8::7]:5062".parse().expect("addr");
        r.uri = Uri::from(addr);
        r.uri.scheme = Some(Scheme::Sip);
        let wire = emit_request(&r);
        assert!(wire.starts_with(b"OPTIONS sip:[2001:db8::7]:5062 SIP/2.0\r\n"));
        assert_eq!(req(std::str::from_utf8(&wire).expect("utf-8")).uri, r.uri);
    }

    #[test]
    fn emit_cannot_inject_headers() {
        let mut r = req(&minimal("MESSAGE", "", ""));
        r.headers
            .push("Subject", "hi\r\nVia: SIP/2.0/UDP evil;branch=z9hG4bKevil");
        r.headers.from.display = Some("Eve\"\r\nX: y".to_string());
        r.body = b"body".to_vec();
        let wire = emit_request(&r);
        let parsed = req(std::str::from_utf8(&wire).expect("utf-8"));
        assert_eq!(parsed.headers.via.len(), 1);
        assert_eq!(parsed.headers.from.display.as_deref(), Some("Eve\"  X: y"));
        assert_eq!(parsed.body, b"body");
        assert!(parsed.headers.get("X").is_none());
    }

    #[test]
    fn frames_stream_buffers() {
        let msg = minimal("MESSAGE", "Content-Length: 5\r\n", "hello");
        let mut buf = b"\r\n\r\n".to_vec();
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(msg.as_bytes());
        assert_eq!(next_frame(&buf), Ok(Some(Frame::KeepAlive(4))));
        assert_eq!(frame(&buf), Ok(Some(4)));
        let rest = &buf[4..];
        assert_eq!(next_frame(rest), Ok(Some(Frame::Message(msg.len()))));
        assert!(parse(&rest[..msg.len()]).is_ok());
        assert_eq!(
            next_frame(&rest[msg.len()..]),
            Ok(Some(Frame::Message(msg.len())))
        );
        for n in 0..msg.len() {
            assert_eq!(next_frame(&msg.as_bytes()[..n]), Ok(None), "prefix {n}");
        }
        let no_cl = minimal("MESSAGE", "", "hello");
        assert_eq!(
            next_frame(no_cl.as_bytes()),
            Err(WireError::MissingHeader("Content-Length"))
        );
        let bad = minimal("MESSAGE", "l: x\r\n", "");
        assert_eq!(next_frame(bad.as_bytes()), Err(WireError::BadContentLength));
        let big = minimal("MESSAGE", "Content-Length: 16300\r\n", "");
        assert_eq!(next_frame(big.as_bytes()), Err(WireError::BodyTooLarge));
        let endless = format!("OPTIONS sip:x SIP/2.0\r\nX: {}", "a".repeat(MAX_MESSAGE));
        assert_eq!(next_frame(endless.as_bytes()), Err(WireError::TooLarge));
        let folded = minimal("MESSAGE", "Content-Length:\r\n 5\r\n", "hello");
        assert_eq!(
            next_frame(folded.as_bytes()),
            Ok(Some(Frame::Message(folded.len())))
        );
        assert_eq!(next_frame(b""), Ok(None));
    }

    #[test]
    fn keepalives() {
        assert!(is_keepalive(b"\r\n\r\n"));
        assert!(is_keepalive(b"\r\n"));
        assert!(!is_keepalive(b""));
        assert!(!is_keepalive(b"\r\nOPTIONS"));
    }

    #[test]
    fn replies_to_malformed_requests() {
        let text = minimal("INVITE", "Max-Forwards: 300\r\n", "");
        let e = err(&text);
        let reply = reply_to_malformed(text.as_bytes(), &e).expect("a reply");
        let Ok(Message::Response(resp)) = parse(&reply) else {
            panic!("reply must parse: {}", String::from_utf8_lossy(&reply))
        };
        assert_eq!(resp.status, 400);
        assert_eq!(resp.headers.call_id, "min@192.0.2.10");
        assert_eq!(resp.headers.cseq.method, Method::Invite);
        assert!(resp.headers.to.tag().is_some());
        assert_eq!(resp.headers.via[0].branch(), Some("z9hG4bKmin"));

        let v7 = minimal("OPTIONS", "", "").replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia");
        let reply = reply_to_malformed(v7.as_bytes(), &err(&v7)).expect("reply");
        assert!(reply.starts_with(b"SIP/2.0 505 Version Not Supported\r\n"));

        let big = minimal("MESSAGE", "", &"x".repeat(MAX_MESSAGE));
        let reply = reply_to_malformed(big.as_bytes(), &WireError::TooLarge).expect("reply");
        assert!(reply.starts_with(b"SIP/2.0 513 "));

        let ack = minimal("ACK", "Max-Forwards: 300\r\n", "");
        assert_eq!(reply_to_malformed(ack.as_bytes(), &err(&ack)), None);
        // A missing Call-ID is answered on what is there, naming what is missing.
        let no_callid = minimal("OPTIONS", "", "").replace("Call-ID: min@192.0.2.10\r\n", "");
        let reply = reply_to_malformed(no_callid.as_bytes(), &err(&no_callid)).expect("reply");
        assert!(reply.starts_with(b"SIP/2.0 400 Bad Request (missing Call-ID header)\r\n"));
        // Without a Via there is nowhere to answer.
        let no_via = minimal("OPTIONS", "", "")
            .replace("Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKmin\r\n", "");
        assert_eq!(reply_to_malformed(no_via.as_bytes(), &err(&no_via)), None);
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n";
        assert_eq!(reply_to_malformed(resp.as_bytes(), &err(resp)), None);
        assert_eq!(
            reply_to_malformed(&[0xff; 64], &WireError::Malformed("x")),
            None
        );
        assert_eq!(reply_to_malformed(b"", &WireError::Malformed("x")), None);
        // A To tag already present is kept, not duplicated.
        let tagged = text.replace(
            "To: <sip:200@pbx.example.com>",
            "To: <sip:200@pbx.example.com>;tag=zz",
        );
        let reply = reply_to_malformed(tagged.as_bytes(), &err(&tagged)).expect("reply");
        let Ok(Message::Response(resp)) = parse(&reply) else {
            panic!("reply must parse")
        };
        assert_eq!(resp.headers.to.tag(), Some("zz"));
    }

    #[test]
    fn dgram_with_two_requests_keeps_the_first() {
        let one = minimal("OPTIONS", "Content-Length: 0\r\n", "");
        let two = format!("{one}{}", minimal("BYE", "Content-Length: 0\r\n", ""));
        let r = req(&two);
        assert_eq!(r.method, Method::Options);
        assert!(r.body.is_empty());
    }

    #[test]
    fn ipv6_uri_text_round_trips_with_brackets() {
        let text = "sip:100@[2001:db8::1]:5062;transport=tcp";
        let uri = parse_uri(text).expect("valid IPv6 URI");
        let back = uri_to_string(&uri);
        assert!(back.contains("[2001:db8::1]:5062"), "{back}");
        assert_eq!(parse_uri(&back).expect("reparses"), uri);
    }

    /// A file of the RFC 4475 / 8-bit corpus in `testdata/` (also the fuzz seeds).
    fn corpus(path: &str) -> Vec<u8> {
        let full = format!("{}/src/sip/testdata/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    const RFC4475_VALID: [&str; 13] = [
        "wsinv",
        "intmeth",
        "esc01",
        "escnull",
        "esc02",
        "lwsdisp",
        "longreq",
        "dblreq",
        "semiuri",
        "transports",
        "mpart01",
        "unreason",
        "noreason",
    ];

    #[test]
    fn rfc4475_valid_messages_parse_and_round_trip() {
        for name in RFC4475_VALID {
            let bytes = corpus(&format!("rfc4475/valid/{name}.sip"));
            let msg = parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            round_trip(&msg);
        }
        let Ok(Message::Request(r)) = parse(&corpus("rfc4475/valid/intmeth.sip")) else {
            panic!("intmeth is a request")
        };
        assert_eq!(
            r.method.as_str(),
            "!interesting-Method0123456789_*+`.%indeed'~"
        );
        assert_eq!(
            r.headers.to.display.as_deref(),
            Some("BEL:\u{7} NUL:\u{fffd} DEL:\u{7f}")
        );
        assert_eq!(
            r.headers.from.display.as_deref(),
            Some("token1~` token2'+_ token3*%!.-")
        );
        assert_eq!(
            r.headers.call_id,
            "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
        );
        let Ok(Message::Request(r)) = parse(&corpus("rfc4475/valid/longreq.sip")) else {
            panic!("longreq is a request")
        };
        assert_eq!(r.headers.via.len(), 34);
        let Ok(Message::Request(r)) = parse(&corpus("rfc4475/valid/mpart01.sip")) else {
            panic!("mpart01 is a request")
        };
        assert!(
            r.body.contains(&0) && r.body.contains(&0xff),
            "binary body kept"
        );
        assert!(r.body.ends_with(b"--3b515e121b43a911--\r\n"));
        let Ok(Message::Request(r)) = parse(&corpus("rfc4475/valid/esc02.sip")) else {
            panic!("esc02 is a request")
        };
        assert_eq!(r.method, Method::Other("RE%47IST%45R".to_string()));
        assert_eq!(r.headers.contact.len(), 2, "C%6Fntact is another header");
    }

    #[test]
    fn rfc4475_invalid_messages_get_the_precise_answer() {
        // (file, expected error, status of the answer; 0 = nothing to answer).
        let cases: [(&str, WireError, u16); 25] = [
            ("badinv01", WireError::BadHeader("Via"), 400),
            ("clerr", WireError::BadContentLength, 400),
            ("ncl", WireError::BadContentLength, 400),
            ("scalar02", WireError::BadHeader("CSeq"), 400),
            ("scalarlg", WireError::BadHeader("CSeq"), 0),
            ("quotbal", WireError::BadHeader("To"), 400),
            ("ltgtruri", WireError::Malformed("Request-URI"), 400),
            ("lwsruri", WireError::Malformed("Request-URI"), 400),
            ("lwsstart", WireError::Malformed("Request-URI"), 400),
            ("trws", WireError::Malformed("SIP version"), 400),
            ("escruri", WireError::Malformed("Request-URI"), 400),
            ("regbadct", WireError::BadHeader("Contact"), 400),
            ("badaspec", WireError::BadHeader("To"), 400),
            ("baddn", WireError::BadHeader("From"), 400),
            ("badvers", WireError::Version, 505),
            ("mismatch01", WireError::CSeqMismatch, 400),
            ("mismatch02", WireError::CSeqMismatch, 400),
            ("bigcode", WireError::Malformed("status code"), 0),
            ("insuf", WireError::MissingHeader("From"), 400),
            ("unkscm", WireError::UnsupportedScheme, 416),
            ("novelsc", WireError::UnsupportedScheme, 416),
            ("unksm2", WireError::BadHeader("To"), 400),
            ("mcl01", WireError::BadContentLength, 400),
            ("multi01", WireError::DuplicateHeader("CSeq"), 400),
            ("zeromf", WireError::Incomplete, 0),
        ];
        for (name, expected, status) in cases {
            let bytes = corpus(&format!("rfc4475/invalid/{name}.sip"));
            if name == "zeromf" {
                // Syntactically valid: the call core answers 483 (Max-Forwards: 0).
                assert!(parse(&bytes).is_ok(), "zeromf parses");
                continue;
            }
            let e = parse(&bytes)
                .err()
                .unwrap_or_else(|| panic!("{name} parsed"));
            assert_eq!(e, expected, "{name}");
            let reply = reply_to_malformed(&bytes, &e);
            if status == 0 {
                assert_eq!(reply, None, "{name}: nothing to answer");
                continue;
            }
            let reply = reply.unwrap_or_else(|| panic!("{name}: no answer"));
            let text = String::from_utf8(reply).expect("utf-8");
            let first = text.lines().next().unwrap_or_default();
            assert!(
                first.starts_with(&format!("SIP/2.0 {status} ")),
                "{name}: {first}"
            );
            if status == 400 {
                assert!(
                    first.contains(&e.to_string()),
                    "{name}: reason names it: {first}"
                );
            }
        }
        // insuf: no From/To/Call-ID to copy, still answered on its Via and CSeq.
        let bytes = corpus("rfc4475/invalid/insuf.sip");
        let reply =
            reply_to_malformed(&bytes, &err(&String::from_utf8_lossy(&bytes))).expect("answer");
        let text = String::from_utf8(reply).expect("utf-8");
        assert!(text.contains("\r\nVia: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n"));
        assert!(text.contains("\r\nCSeq: 193942 INVITE\r\n"));
    }

    #[test]
    fn eight_bit_text_is_handled_with_replacement_characters() {
        let r = match parse(&corpus("nonutf8/latin1_register.sip")) {
            Ok(Message::Request(r)) => r,
            other => panic!("Latin-1 REGISTER refused: {other:?}"),
        };
        assert_eq!(r.method, Method::Register);
        assert_eq!(r.headers.from.display.as_deref(), Some("J\u{fffd}rg"));
        assert_eq!(r.headers.from.uri.user(), Some("100"));
        assert_eq!(r.headers.get("User-Agent"), Some("Old Phone \u{fffd} 1.0"));
        let Contact::Addr(c) = &r.headers.contact[0] else {
            panic!("address")
        };
        assert_eq!(c.display.as_deref(), Some("J\u{fffd}rg M\u{fffd}ller"));
        // What we emit is valid UTF-8 and parses to the same message.
        let wire = emit_request(&r);
        assert!(std::str::from_utf8(&wire).is_ok());
        round_trip(&Message::Request(r));

        let Ok(Message::Request(inv)) = parse(&corpus("nonutf8/latin1_invite.sip")) else {
            panic!("Latin-1 INVITE refused")
        };
        assert_eq!(
            inv.headers.from.display.as_deref(),
            Some("Fran\u{fffd}ois \"Le \u{fffd}lu\"")
        );
        assert_eq!(inv.headers.get("Subject"), Some("R\u{fffd}ckruf"));
        assert_eq!(inv.body, b"v=0\n");
        for name in ["cp1252_quoted_param", "truncated_utf8"] {
            let msg = parse(&corpus(&format!("nonutf8/{name}.sip")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            round_trip(&msg);
        }
        let Ok(Message::Request(m)) = parse(&corpus("nonutf8/truncated_utf8.sip")) else {
            panic!("request")
        };
        assert_eq!(m.body, b"\xe9\x00\xff", "the body is bytes, untouched");
        // The retransmission key of 8-bit messages is stable and differs per message.
        let a = retransmission_key(&corpus("nonutf8/latin1_register.sip"));
        assert!(a.is_some());
        assert_eq!(
            a,
            retransmission_key(&corpus("nonutf8/latin1_register.sip"))
        );
        assert_ne!(a, retransmission_key(&corpus("nonutf8/latin1_invite.sip")));
    }

    #[test]
    fn retransmission_key_ignores_everything_but_call_id_cseq_and_branch() {
        let one = minimal("INVITE", "Max-Forwards: 300\r\n", "");
        let again = one.replace("Max-Forwards: 300", "Max-Forwards: 301");
        assert_eq!(
            retransmission_key(one.as_bytes()),
            retransmission_key(again.as_bytes())
        );
        let next = one.replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
        assert_ne!(
            retransmission_key(one.as_bytes()),
            retransmission_key(next.as_bytes())
        );
        let other_branch = one.replace("z9hG4bKmin", "z9hG4bKmin2");
        assert_ne!(
            retransmission_key(one.as_bytes()),
            retransmission_key(other_branch.as_bytes())
        );
        assert_eq!(retransmission_key(b"\xff\xfe garbage without lines"), None);
    }

    #[test]
    fn size_errors_are_413_or_513() {
        let big_body = minimal("MESSAGE", "", &"x".repeat(MAX_MESSAGE));
        assert_eq!(err(&big_body), WireError::BodyTooLarge);
        assert_eq!(error_status(&WireError::BodyTooLarge), 413);
        let reply = reply_to_malformed(big_body.as_bytes(), &WireError::BodyTooLarge)
            .expect("413 answered");
        assert!(reply.starts_with(b"SIP/2.0 413 "));
        let big_head = minimal(
            "MESSAGE",
            &format!("X-Pad: {}\r\n", "p".repeat(MAX_MESSAGE)),
            "",
        );
        assert_eq!(err(&big_head), WireError::TooLarge);
        let reply =
            reply_to_malformed(big_head.as_bytes(), &WireError::TooLarge).expect("513 answered");
        assert!(reply.starts_with(b"SIP/2.0 513 "));
        assert!(is_size_error(&WireError::TooManyVia));
        assert!(!is_size_error(&WireError::CSeqMismatch));
        let cl = minimal("MESSAGE", "Content-Length: 17000\r\n", "");
        assert_eq!(next_frame(cl.as_bytes()), Err(WireError::BodyTooLarge));
    }

    #[test]
    fn reasons_name_the_problem() {
        assert_eq!(
            error_reason(&WireError::MissingHeader("Call-ID")),
            "Bad Request (missing Call-ID header)"
        );
        assert_eq!(
            error_reason(&WireError::DuplicateHeader("CSeq")),
            "Bad Request (duplicated CSeq header)"
        );
        assert_eq!(error_reason(&WireError::Version), "Version Not Supported");
        let dup = minimal("OPTIONS", "Call-ID: second@x\r\n", "");
        let reply = reply_to_malformed(dup.as_bytes(), &err(&dup)).expect("reply");
        assert!(reply.starts_with(b"SIP/2.0 400 Bad Request (duplicated Call-ID header)\r\n"));
    }
}
