//! The validated SIP message representation.
//!
//! `sip::wire::parse` builds these from bytes once (with rsip doing the tokenizing and URI
//! parsing); nothing downstream re-parses. `sip::wire::emit_*` turns them back into bytes.
//! The mandatory headers of RFC 3261 §8.1.1 are plain fields, so a value of these types is
//! always a message the call core can act on.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use rsip::Uri;

/// A SIP method. Unknown extension methods are kept by name so the core can answer 501.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// An extension method token (RFC 3261 §7.1), upper-case as received.
    Other(String),
}

impl Method {
    /// The method token as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }

    /// Maps a method token to a method; method names are case-sensitive (RFC 3261 §7.1).
    pub fn from_token(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport a message arrived on or leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26.2, `sips:` on port 5061).
    Tls,
}

impl Transport {
    /// The token used in Via headers and `transport=` URI parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Reliable transports get no retransmissions (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

/// Where a message came from or goes to: the transport plus the remote socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// A header parameter list such as `;tag=abc;lr`, in order. Names are kept as received;
/// lookups are case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// The value of parameter `name`; `Some(None)` for a flag parameter such as `lr`.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// Sets (replacing) parameter `name`.
    pub fn set(&mut self, name: &str, value: Option<String>) {
        if let Some(slot) = self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            slot.1 = value;
        } else {
            self.0.push((name.to_string(), value));
        }
    }

    /// Removes parameter `name` if present.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.0 {
            match value {
                Some(v) => write!(f, ";{name}={v}")?,
                None => write!(f, ";{name}")?,
            }
        }
        Ok(())
    }
}

/// One Via header value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token as received (`UDP`, `TCP`, `TLS`, `WS`, ...).
    pub transport: String,
    /// sent-by host (IPv6 references keep their brackets).
    pub host: String,
    pub port: Option<u16>,
    /// All parameters in order (branch, rport, received, maddr, ...).
    pub params: Params,
}

impl Via {
    /// The branch parameter, if any.
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").flatten()
    }

    /// True when the branch carries the RFC 3261 magic cookie.
    pub fn is_rfc3261(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}", self.params)
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name without quotes.
    pub display: Option<String>,
    pub uri: Uri,
    /// Header parameters after the `>` (tag, expires, q, ...).
    pub params: Params,
}

impl NameAddr {
    /// A name-addr for a URI with no display name or parameters.
    pub fn new(uri: Uri) -> Self {
        NameAddr {
            display: None,
            uri,
            params: Params::default(),
        }
    }

    /// The `tag` parameter, if any.
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").flatten()
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(display) = &self.display {
            write!(f, "\"{}\" ", display.replace(['"', '\\'], ""))?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

/// A Contact header value: `*` (only valid in an un-REGISTER) or an address.
// `Star` is rare and short-lived; boxing every address would cost an allocation per contact.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    Star,
    Addr(NameAddr),
}

/// CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// The headers of a message. The mandatory ones are fields; every header the core does not
/// interpret is kept, in order, in `other` with its canonical (long-form) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// Via values top first; never empty.
    pub via: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
    pub max_forwards: Option<u32>,
    pub contact: Vec<Contact>,
    pub expires: Option<u32>,
    pub route: Vec<NameAddr>,
    pub record_route: Vec<NameAddr>,
    pub content_type: Option<String>,
    /// Every other header, `(canonical name, value)`, in received order.
    pub other: Vec<(String, String)>,
}

impl Headers {
    /// First value of an uninterpreted header, by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.other
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of an uninterpreted header, by case-insensitive name.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.other
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Appends an uninterpreted header.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.other.push((name.to_string(), value.into()));
    }

    /// Removes every uninterpreted header called `name`.
    pub fn remove(&mut self, name: &str) {
        self.other.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The top Via; present in every parsed message.
    pub fn top_via(&self) -> Option<&Via> {
        self.via.first()
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// Either kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Response {
    /// A response to `req` as RFC 3261 §8.2.6.2 builds it: Via, From, To, Call-ID and CSeq
    /// copied; a To tag added when the request had none and the status is above 100.
    pub fn to_request(req: &Request, status: u16, to_tag: Option<&str>) -> Response {
        let mut to = req.headers.to.clone();
        if status > 100 && to.tag().is_none() {
            if let Some(tag) = to_tag {
                to.params.set("tag", Some(tag.to_string()));
            }
        }
        let mut other = Vec::new();
        // RFC 3261 §8.2.6.2: Timestamp is echoed in 100 Trying.
        if status == 100 {
            if let Some(ts) = req.headers.get("Timestamp") {
                other.push(("Timestamp".to_string(), ts.to_string()));
            }
        }
        Response {
            status,
            reason: reason_phrase(status).to_string(),
            headers: Headers {
                via: req.headers.via.clone(),
                from: req.headers.from.clone(),
                to,
                call_id: req.headers.call_id.clone(),
                cseq: req.headers.cseq.clone(),
                max_forwards: None,
                contact: Vec::new(),
                expires: None,
                route: Vec::new(),
                record_route: Vec::new(),
                content_type: None,
                other,
            },
            body: Vec::new(),
        }
    }

    /// 1xx responses.
    pub fn is_provisional(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// 2xx responses.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The standard reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match status / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}
