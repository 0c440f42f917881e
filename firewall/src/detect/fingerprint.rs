//! Scanner fingerprints: User-Agent substrings and the header habits of SIPVicious.
//!
//! SIPVicious (svmap, svwar, svcrack) builds every request with one helper, which leaves
//! two marks that survive a changed User-Agent:
//! - **From tag**: the tag is the hex encoding of `<data> 0x01 <decimal 32-bit random>` (the
//!   tool decodes the tag of the answer to learn which probe it belongs to). A random tag
//!   matches this by chance with probability below 1e-10, because at least 6 bytes after
//!   the 0x01 must all be ASCII digits.
//! - **Header order**: `Via, Max-Forwards, To, From, User-Agent, Call-ID, Contact, CSeq,
//!   Accept, Content-Length` (compact mode: `v, t, f, i, m, CSeq, Max-Forwards, Accept,
//!   Content-Length`, no User-Agent), optionally followed by `Content-Type` and
//!   `(Proxy-)Authorization`, and nothing else. Real phones send `Allow`, `Supported`,
//!   `Expires` or a body type; To before From with no other header is the tool's signature.

use super::config::ScannerRule;

/// Most header names [`header_names`] collects from one message.
pub const MAX_HEADER_NAMES: usize = 64;

/// SIPVicious' long-form header order.
const SV_LONG: [&str; 10] = [
    "via",
    "max-forwards",
    "to",
    "from",
    "user-agent",
    "call-id",
    "contact",
    "cseq",
    "accept",
    "content-length",
];

/// SIPVicious' compact-mode header order, compact names expanded.
const SV_COMPACT: [&str; 9] = [
    "via",
    "to",
    "from",
    "call-id",
    "contact",
    "cseq",
    "max-forwards",
    "accept",
    "content-length",
];

/// Headers SIPVicious appends after its fixed list.
const SV_TRAILERS: [&str; 3] = ["content-type", "authorization", "proxy-authorization"];

/// What made a message look like a scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match<'a> {
    /// The User-Agent contained this configured substring.
    UserAgent(&'a str),
    /// The From tag has SIPVicious' encoding.
    SipviciousTag,
    /// The header names are in SIPVicious' order.
    SipviciousHeaders,
}

impl Match<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Match::UserAgent(ua) => format!("scanner User-Agent {ua:?}"),
            Match::SipviciousTag => "SIPVicious From tag".to_string(),
            Match::SipviciousHeaders => "SIPVicious header order".to_string(),
        }
    }
}

/// Checks one message against the configured fingerprints.
pub(crate) fn scan<'r>(
    rule: &'r ScannerRule,
    user_agent: Option<&str>,
    from_tag: Option<&str>,
    header_names: &[&str],
) -> Option<Match<'r>> {
    if let Some(ua) = user_agent {
        if let Some(hit) = rule
            .user_agents
            .iter()
            .find(|needle| !needle.is_empty() && contains_ignore_case(ua, needle))
        {
            return Some(Match::UserAgent(hit));
        }
    }
    if !rule.tool_fingerprints {
        return None;
    }
    if from_tag.is_some_and(is_sipvicious_tag) {
        return Some(Match::SipviciousTag);
    }
    if is_sipvicious_order(header_names) {
        return Some(Match::SipviciousHeaders);
    }
    None
}

/// Whether `tag` is hex of `<1+ bytes> 0x01 <6..=10 ASCII digits>` (SIPVicious' `createTag`).
pub(crate) fn is_sipvicious_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    // At least one data byte, the 0x01 and 6 digits; at most a generous data part.
    if !b.len().is_multiple_of(2) || b.len() < 16 || b.len() > 512 {
        return false;
    }
    let byte_at = |i: usize| -> Option<u8> {
        let hi = hex_val(b[2 * i])?;
        let lo = hex_val(b[2 * i + 1])?;
        Some(hi << 4 | lo)
    };
    let n = b.len() / 2;
    // Walk back over the trailing digits, then expect the 0x01 separator.
    let mut digits = 0;
    let mut i = n;
    while i > 0 {
        match byte_at(i - 1) {
            Some(d) if d.is_ascii_digit() => {
                digits += 1;
                i -= 1;
            }
            Some(0x01) => break,
            _ => return false,
        }
    }
    if !(6..=10).contains(&digits) || i < 2 {
        return false;
    }
    // Everything before the separator must still be valid hex.
    (0..i - 1).all(|k| byte_at(k).is_some())
}

/// Whether the header names (wire order, any case, compact forms allowed) are exactly
/// SIPVicious' list, optionally followed by its trailing headers.
pub(crate) fn is_sipvicious_order(names: &[&str]) -> bool {
    let matches_list = |list: &[&str]| -> bool {
        if names.len() < list.len() || names.len() > list.len() + SV_TRAILERS.len() {
            return false;
        }
        let (head, tail) = names.split_at(list.len());
        head.iter().zip(list).all(|(n, want)| same_header(n, want))
            && tail
                .iter()
                .all(|n| SV_TRAILERS.iter().any(|t| same_header(n, t)))
    };
    matches_list(&SV_LONG) || matches_list(&SV_COMPACT)
}

/// Collects the header names of a raw SIP message, in wire order, into `out` (cleared
/// first; at most [`MAX_HEADER_NAMES`]). Stops at the blank line; skips continuation lines
/// and lines that are not `name:`. Never allocates beyond `out`'s capacity growth to the cap.
pub fn header_names<'a>(raw: &'a [u8], out: &mut Vec<&'a str>) {
    out.clear();
    let mut lines = raw.split(|&c| c == b'\n');
    // The start line is not a header.
    lines.next();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&line[..colon]) else {
            continue;
        };
        let name = name.trim_end();
        if name.is_empty() {
            continue;
        }
        if out.len() >= MAX_HEADER_NAMES {
            break;
        }
        out.push(name);
    }
}

/// Case-insensitive header-name equality that also accepts RFC 3261 compact forms.
fn same_header(name: &str, long: &str) -> bool {
    let name = match name.as_bytes() {
        [c] => match c.to_ascii_lowercase() {
            b'v' => "via",
            b't' => "to",
            b'f' => "from",
            b'i' => "call-id",
            b'm' => "contact",
            b'l' => "content-length",
            b'c' => "content-type",
            b'k' => "supported",
            b's' => "subject",
            b'e' => "content-encoding",
            _ => name,
        },
        _ => name,
    };
    name.eq_ignore_ascii_case(long)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `haystack` contains `needle`, ASCII case-insensitively, without allocating.
pub(crate) fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.len() > h.len() {
        return false;
    }
    h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::field_reassign_with_default)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    /// The tag SIPVicious' `createTag` would build for `data` and `rnd`.
    fn sv_tag(data: &str, rnd: u32) -> String {
        let mut bytes = data.as_bytes().to_vec();
        bytes.push(1);
        bytes.extend_from_slice(rnd.to_string().as_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn user_agents_match_case_insensitively() {
        let rule = ScannerRule::default();
        for ua in [
            "friendly-scanner",
            "FRIENDLY-SCANNER 0.3",
            "sipcli/v1.8",
            "Asterisk PBX (iwar)",
        ] {
            assert!(scan(&rule, Some(ua), None, &[]).is_some(), "{ua}");
        }
        for ua in [
            "Yealink SIP-T46S 66.86.0.15",
            "Linphone/5.2",
            "Asterisk PBX 20.1",
        ] {
            assert_eq!(scan(&rule, Some(ua), None, &[]), None, "{ua}");
        }
    }

    #[test]
    fn sipvicious_tags_are_recognised() {
        // svmap: data is the target's address and port in hex.
        assert!(is_sipvicious_tag(&sv_tag("c0a8010113c4", 3_141_592_653)));
        // svwar / svcrack: data is the extension tried.
        assert!(is_sipvicious_tag(&sv_tag("1000", 123_456)));
        assert!(is_sipvicious_tag(&sv_tag("100", 4_294_967_295)));
        let upper = sv_tag("2000", 987_654_321).to_ascii_uppercase();
        assert!(is_sipvicious_tag(&upper));
    }

    #[test]
    fn ordinary_tags_are_not() {
        for tag in [
            "1928301774",
            "as6151ad25",
            "8f7a3c2e9b1d4f60",
            "0123456789abcdef0123",
            "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
            "3130300131323334", // "100\x011234": too few digits to be the 32-bit random
            "01313233343536",   // no data before the separator
            "zz0131323334353637",
        ] {
            assert!(!is_sipvicious_tag(tag), "{tag}");
        }
    }

    #[test]
    fn sipvicious_header_orders() {
        let long = [
            "Via",
            "Max-Forwards",
            "To",
            "From",
            "User-Agent",
            "Call-ID",
            "Contact",
            "CSeq",
            "Accept",
            "Content-Length",
        ];
        assert!(is_sipvicious_order(&long));
        let mut with_auth = long.to_vec();
        with_auth.push("Authorization");
        assert!(is_sipvicious_order(&with_auth));
        let compact = [
            "v",
            "t",
            "f",
            "i",
            "m",
            "CSeq",
            "Max-Forwards",
            "Accept",
            "Content-Length",
        ];
        assert!(is_sipvicious_order(&compact));
        // A phone's REGISTER: From before To, and more headers.
        let phone = [
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Contact",
            "Max-Forwards",
            "User-Agent",
            "Expires",
            "Allow",
            "Content-Length",
        ];
        assert!(!is_sipvicious_order(&phone));
        let mut extra = long.to_vec();
        extra.push("Allow");
        assert!(!is_sipvicious_order(&extra));
        assert!(!is_sipvicious_order(&[]));
    }

    #[test]
    fn fingerprints_can_be_switched_off() {
        let rule = ScannerRule {
            tool_fingerprints: false,
            ..ScannerRule::default()
        };
        assert_eq!(
            scan(&rule, Some("Yealink"), Some(&sv_tag("100", 1_234_567)), &[]),
            None
        );
        let on = ScannerRule::default();
        assert_eq!(
            scan(&on, Some("Yealink"), Some(&sv_tag("100", 1_234_567)), &[]),
            Some(Match::SipviciousTag)
        );
    }

    #[test]
    fn header_names_in_wire_order() {
        let raw = b"OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5060\r\n\
            Max-Forwards: 70\r\nTo: <sip:100@10.0.0.1>\r\n continued\r\nf: <sip:100@1.1.1.1>;tag=1\r\n\
            garbage line\r\n\r\nBody: not a header\r\n";
        let mut out = Vec::new();
        header_names(raw, &mut out);
        assert_eq!(out, vec!["Via", "Max-Forwards", "To", "f"]);
        // Bounded, even for a message of nothing but headers.
        let mut many = b"OPTIONS sip:x SIP/2.0\r\n".to_vec();
        for _ in 0..500 {
            many.extend_from_slice(b"X: y\r\n");
        }
        header_names(&many, &mut out);
        assert_eq!(out.len(), MAX_HEADER_NAMES);
    }
}
