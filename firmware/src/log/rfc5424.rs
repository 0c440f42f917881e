//! RFC 5424 syslog messages, and the octet-counting frame of RFC 5425/6587 for stream
//! transports. Pure: time, host name and process id are arguments.
//!
//! A message is `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`.
//! Header fields are cut to their RFC lengths and to printable US-ASCII (anything else
//! becomes `_`; an empty field is the NILVALUE `-`); SD-PARAM values are escaped per §6.3.3;
//! the whole message is cut to [`MAX_MESSAGE`] bytes, the MSG first (at a character
//! boundary), then, if the header and structured data alone are too long, the structured
//! data is replaced by `-`.

use std::fmt::Write as _;

use crate::civil::UtcTime;

/// Largest message sent, in bytes: the size every RFC 5424 receiver must accept (§6.1)
/// and that RFC 5426 recommends for UDP; longer messages are cut.
pub const MAX_MESSAGE: usize = 2048;
/// Longest SD-PARAM value kept (longer ones are cut at a character boundary).
pub const MAX_PARAM_VALUE: usize = 256;
/// Most SD-PARAMs kept per SD-ELEMENT.
pub const MAX_PARAMS: usize = 16;
/// The private enterprise number in SD-IDs: 32473 is the one IANA reserves for examples
/// and documentation (RFC 5612). It is a placeholder until the project registers its own.
pub const ENTERPRISE: u32 = 32473;

/// The UTF-8 byte order mark that starts a MSG known to be UTF-8 (RFC 5424 §6.4).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Severity (RFC 5424 §6.2.1), most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

impl Severity {
    /// The severity of a tracing level.
    pub fn of(level: &tracing::Level) -> Severity {
        match *level {
            tracing::Level::ERROR => Severity::Error,
            tracing::Level::WARN => Severity::Warning,
            tracing::Level::INFO => Severity::Informational,
            tracing::Level::DEBUG | tracing::Level::TRACE => Severity::Debug,
        }
    }

    /// Its numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The header fields of one message.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Facility code (0-23).
    pub facility: u8,
    /// Severity.
    pub severity: Severity,
    /// When, ms since the epoch (written in UTC with milliseconds).
    pub timestamp_ms: u64,
    /// The box's host name.
    pub hostname: &'a str,
    /// The program (`outpostd`).
    pub app_name: &'a str,
    /// The process id.
    pub procid: u32,
    /// What kind of message (`ban`, `alert`, or the module that logged it).
    pub msgid: &'a str,
}

/// One SD-ELEMENT: `[id@32473 name="value" ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    /// The SD-ID without the enterprise number (e.g. `ban`).
    pub id: String,
    /// Parameter names and values, in order.
    pub params: Vec<(String, String)>,
}

/// The facility codes by name (RFC 5424 §6.2.1).
pub const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// The code of a facility name (`local0` is 16).
pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .position(|f| *f == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// The message, at most [`MAX_MESSAGE`] bytes.
pub fn format(header: &Header<'_>, sd: &[SdElement], msg: &str) -> Vec<u8> {
    let mut head = String::with_capacity(128);
    let pri = u16::from(header.facility.min(23)) * 8 + u16::from(header.severity.code());
    let _ = write!(head, "<{pri}>1 {} ", timestamp(header.timestamp_ms));
    push_field(&mut head, header.hostname, 255);
    head.push(' ');
    push_field(&mut head, header.app_name, 48);
    head.push(' ');
    let _ = write!(head, "{} ", header.procid);
    push_field(&mut head, header.msgid, 32);
    head.push(' ');
    let mut data = structured_data(sd);
    if head.len() + data.len() > MAX_MESSAGE {
        data = "-".to_owned();
    }
    let mut out = Vec::with_capacity((head.len() + data.len() + msg.len() + 4).min(MAX_MESSAGE));
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(data.as_bytes());
    if !msg.is_empty() {
        // Room for the space and, for a non-ASCII text, the BOM.
        let bom = if msg.is_ascii() { &[][..] } else { BOM };
        let room = MAX_MESSAGE.saturating_sub(out.len() + 1 + bom.len());
        let text = cut(msg, room);
        if !text.is_empty() {
            out.push(b' ');
            out.extend_from_slice(bom);
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// `msg` framed for TCP and TLS by octet counting (RFC 5425 §4.3, RFC 6587 §3.4.1):
/// `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

/// RFC 3339 in UTC with milliseconds: `2026-12-06T19:19:12.345Z`.
pub fn timestamp(ms: u64) -> String {
    let t = UtcTime::from_millis(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
    )
}

/// The STRUCTURED-DATA field: the elements, or `-` when there are none.
pub fn structured_data(sd: &[SdElement]) -> String {
    if sd.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::new();
    for element in sd {
        out.push('[');
        push_sd_name(&mut out, &element.id);
        let _ = write!(out, "@{ENTERPRISE}");
        for (name, value) in element.params.iter().take(MAX_PARAMS) {
            out.push(' ');
            push_sd_name(&mut out, name);
            out.push_str("=\"");
            escape_param(cut(value, MAX_PARAM_VALUE), &mut out);
            out.push('"');
        }
        out.push(']');
    }
    out
}

/// Appends `value` escaped as an SD-PARAM value (§6.3.3): `"`, `\` and `]` get a backslash.
pub fn escape_param(value: &str, out: &mut String) {
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A header field: printable US-ASCII, at most `max` characters, `-` when empty.
fn push_field(out: &mut String, value: &str, max: usize) {
    if value.is_empty() {
        out.push('-');
        return;
    }
    out.extend(
        value
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
    );
}

/// An SD-NAME: printable US-ASCII except `=`, space, `]` and `"`, at most 32 characters.
fn push_sd_name(out: &mut String, name: &str) {
    if name.is_empty() {
        out.push('_');
        return;
    }
    out.extend(name.chars().take(32).map(|c| {
        if c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"' | '@') {
            c
        } else {
            '_'
        }
    }));
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn header(msgid: &str) -> Header<'_> {
        Header {
            facility: 16,
            severity: Severity::Warning,
            // 2026-12-06T19:19:12.345Z
            timestamp_ms: 1_796_584_752_345,
            hostname: "berlin-1",
            app_name: "outpostd",
            procid: 42,
            msgid,
        }
    }

    #[test]
    fn a_ban_has_the_header_and_its_structured_data() {
        let sd = [SdElement {
            id: "ban".into(),
            params: vec![
                ("src".into(), "203.0.113.9".into()),
                ("reason".into(), "scanner \"friendly\" [x] c:\\".into()),
                ("secs".into(), "300".into()),
            ],
        }];
        let msg = format(&header("ban"), &sd, "firewall: banned 203.0.113.9");
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            "<132>1 2026-12-06T19:19:12.345Z berlin-1 outpostd 42 ban \
             [ban@32473 src=\"203.0.113.9\" reason=\"scanner \\\"friendly\\\" [x\\] c:\\\\\" secs=\"300\"] \
             firewall: banned 203.0.113.9"
        );
    }

    #[test]
    fn nil_values_and_unprintable_header_fields() {
        let mut h = header("");
        h.hostname = "bad host\u{e9}";
        h.severity = Severity::Error;
        h.facility = 3;
        let msg = String::from_utf8(format(&h, &[], "")).unwrap();
        assert_eq!(
            msg,
            "<27>1 2026-12-06T19:19:12.345Z bad_host_ outpostd 42 - -"
        );
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("daemon"), Some(3));
        assert_eq!(facility_code("local8"), None);
    }

    #[test]
    fn non_ascii_text_starts_with_a_bom_and_long_messages_are_cut_at_a_character() {
        let msg = format(&header("log"), &[], "Grüße");
        assert!(msg.ends_with("- \u{feff}Grüße".as_bytes()), "{msg:?}");
        let long = "ü".repeat(5000);
        let msg = format(&header("log"), &[], &long);
        assert!(
            msg.len() <= MAX_MESSAGE && msg.len() >= MAX_MESSAGE - 1,
            "{}",
            msg.len()
        );
        assert!(String::from_utf8(msg).is_ok(), "cut inside a character");
        // Structured data too big for the message is dropped, never cut into invalid SD.
        let sd: Vec<SdElement> = (0..20)
            .map(|i| SdElement {
                id: format!("e{i}"),
                params: vec![("v".into(), "x".repeat(400))],
            })
            .collect();
        let msg = String::from_utf8(format(&header("log"), &sd, "text")).unwrap();
        assert!(msg.ends_with(" log - text"), "{msg}");
        // One element's values are cut to MAX_PARAM_VALUE.
        let one = structured_data(&sd[..1]);
        assert_eq!(one.len(), "[e0@32473 v=\"\"]".len() + MAX_PARAM_VALUE);
    }

    #[test]
    fn octet_counting_frames() {
        assert_eq!(
            frame(b"<14>1 - - - - - -"),
            b"17 <14>1 - - - - - -".to_vec()
        );
        let m = vec![b'x'; 2048];
        let f = frame(&m);
        assert!(f.starts_with(b"2048 x"));
        assert_eq!(f.len(), 2048 + 5);
        assert_eq!(frame(b""), b"0 ".to_vec());
    }
}
