//! Dial plan: outbound routes (which trunk carries a dialled number), emergency numbers and
//! inbound DIDs (which local target a provider's call reaches).
//!
//! Patterns use the Asterisk notation admins already know (`_9NXXXXXX`, `_00.`, `_+49!`).
//! Wildcards that match a variable length (`.` and `!`) are only allowed at the end, so a
//! match is one linear pass over the number: dialled strings come from the network and must
//! never cost more than their own length.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest pattern text accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 64;
/// Longest target name accepted (`ext:<name>`), in bytes.
pub const MAX_TARGET_LEN: usize = 64;

/// Why a pattern or target text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialplanError {
    /// The pattern has nothing to match after the optional `_`.
    #[error("empty pattern")]
    EmptyPattern,
    /// The pattern is longer than [`MAX_PATTERN_LEN`].
    #[error("pattern longer than {MAX_PATTERN_LEN} characters")]
    PatternTooLong,
    /// A character that has no meaning in a pattern.
    #[error("unexpected {ch:?} at position {pos} in pattern")]
    UnexpectedChar {
        /// The offending character.
        ch: char,
        /// Its byte offset in the pattern text.
        pos: usize,
    },
    /// `.` or `!` somewhere other than at the end.
    #[error("'.' and '!' are only allowed at the end of a pattern")]
    WildcardNotAtEnd,
    /// `+` somewhere other than at the start.
    #[error("'+' is only allowed at the start of a pattern")]
    PlusNotLeading,
    /// A `[...]` set that is unterminated, empty or has a reversed range.
    #[error("bad character set in pattern: {0}")]
    BadSet(&'static str),
    /// A target that is not `ext:`, `group:`, `ivr:`, `voicemail:` with a name, or `hangup`.
    #[error("bad target {0:?} (expected ext:N, group:N, ivr:N, voicemail:N or hangup)")]
    BadTarget(String),
}

/// One position of a pattern that consumes exactly one character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Exactly this character (digit, `*`, `#`, or a leading `+`).
    Literal(u8),
    /// Any character in the set: bits 0–9 are the digits, bit 10 `*`, bit 11 `#`.
    Set(u16),
}

/// What a pattern accepts after its fixed positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing: the number must end here.
    End,
    /// `.`: one or more further characters of any kind.
    OneOrMore,
    /// `!`: zero or more further characters of any kind.
    ZeroOrMore,
}

/// A dial pattern in Asterisk notation.
///
/// Digits, `*` and `#` are literals; `X` = `[0-9]`, `Z` = `[1-9]`, `N` = `[2-9]`; `[1-5]`,
/// `[135]` and mixes such as `[1-35*]` are sets; a trailing `.` matches one or more further
/// characters and a trailing `!` zero or more. A leading `_` is accepted and ignored, a
/// leading `+` is a literal, and `-` is ignored as a visual separator (`_1-NXX-XXXX`), as in
/// Asterisk. At most [`MAX_PATTERN_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    slots: Vec<Slot>,
    tail: Tail,
}

const STAR_BIT: u16 = 1 << 10;
const HASH_BIT: u16 = 1 << 11;

impl Pattern {
    /// Parses pattern text; see the type documentation for the notation.
    pub fn parse(text: &str) -> Result<Pattern, DialplanError> {
        if text.len() > MAX_PATTERN_LEN {
            return Err(DialplanError::PatternTooLong);
        }
        let body = text.strip_prefix('_').unwrap_or(text);
        let offset = text.len() - body.len();
        let bytes = body.as_bytes();
        let mut slots = Vec::with_capacity(bytes.len());
        let mut tail = Tail::End;
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if tail != Tail::End {
                return Err(DialplanError::WildcardNotAtEnd);
            }
            match c {
                b'0'..=b'9' | b'*' | b'#' => slots.push(Slot::Literal(c)),
                b'+' if slots.is_empty() => slots.push(Slot::Literal(c)),
                b'+' => return Err(DialplanError::PlusNotLeading),
                b'X' | b'x' => slots.push(Slot::Set(digit_range(b'0', b'9'))),
                b'Z' | b'z' => slots.push(Slot::Set(digit_range(b'1', b'9'))),
                b'N' | b'n' => slots.push(Slot::Set(digit_range(b'2', b'9'))),
                b'-' => {}
                b'.' => tail = Tail::OneOrMore,
                b'!' => tail = Tail::ZeroOrMore,
                b'[' => {
                    let (set, next) = parse_set(bytes, i + 1)?;
                    slots.push(Slot::Set(set));
                    i = next;
                    continue;
                }
                _ => {
                    let ch = body[i..].chars().next().unwrap_or('?');
                    return Err(DialplanError::UnexpectedChar {
                        ch,
                        pos: offset + i,
                    });
                }
            }
            i += 1;
        }
        if slots.is_empty() && tail == Tail::End {
            return Err(DialplanError::EmptyPattern);
        }
        Ok(Pattern {
            text: text.to_string(),
            slots,
            tail,
        })
    }

    /// True when `number` matches the whole pattern. Linear in the length of `number`.
    pub fn matches(&self, number: &str) -> bool {
        let n = number.as_bytes();
        if n.len() < self.slots.len() {
            return false;
        }
        let fixed_ok = self.slots.iter().zip(n).all(|(slot, &c)| match *slot {
            Slot::Literal(l) => l == c,
            Slot::Set(set) => char_bit(c).is_some_and(|bit| set & bit != 0),
        });
        let rest = n.len() - self.slots.len();
        fixed_ok
            && match self.tail {
                Tail::End => rest == 0,
                Tail::OneOrMore => rest >= 1,
                Tail::ZeroOrMore => true,
            }
    }

    /// The pattern text as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Pattern {
    type Err = DialplanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl TryFrom<String> for Pattern {
    type Error = DialplanError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Pattern::parse(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.text
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The set bits of the digits `lo..=hi`.
fn digit_range(lo: u8, hi: u8) -> u16 {
    (lo..=hi).fold(0, |set, d| set | (1 << (d - b'0')))
}

/// The set bit of a dial character, or `None` for characters no set can contain.
fn char_bit(c: u8) -> Option<u16> {
    match c {
        b'0'..=b'9' => Some(1 << (c - b'0')),
        b'*' => Some(STAR_BIT),
        b'#' => Some(HASH_BIT),
        _ => None,
    }
}

/// Parses the inside of `[...]` starting at `i` (after the `[`); returns the set and the index
/// after the `]`.
fn parse_set(b: &[u8], mut i: usize) -> Result<(u16, usize), DialplanError> {
    let mut set = 0u16;
    loop {
        match b.get(i) {
            None => return Err(DialplanError::BadSet("unterminated '['")),
            Some(b']') => break,
            Some(&lo @ b'0'..=b'9') if b.get(i + 1) == Some(&b'-') => {
                let hi = match b.get(i + 2) {
                    Some(&hi @ b'0'..=b'9') => hi,
                    _ => return Err(DialplanError::BadSet("range needs two digits")),
                };
                if hi < lo {
                    return Err(DialplanError::BadSet("reversed range"));
                }
                set |= digit_range(lo, hi);
                i += 3;
            }
            Some(&c) => {
                set |= char_bit(c).ok_or(DialplanError::BadSet("only digits, '*' and '#'"))?;
                i += 1;
            }
        }
    }
    if set == 0 {
        return Err(DialplanError::BadSet("empty set"));
    }
    Ok((set, i + 1))
}

/// An outbound route: numbers matching one of `patterns`, dialled by one of `extensions`,
/// leave through the first available of `trunks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name shown in logs, CDRs and errors.
    pub name: String,
    /// The number matches the route if it matches any of these.
    pub patterns: Vec<Pattern>,
    /// Characters removed from the front of the dialled number (an outside-line prefix).
    #[serde(default)]
    pub strip: usize,
    /// Text put in front of the number after stripping.
    #[serde(default)]
    pub prepend: String,
    /// Trunk names, in order of preference (failover order).
    pub trunks: Vec<String>,
    /// Extensions allowed to use the route; empty = every extension.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Caller ID presented on the trunk instead of the extension's own.
    #[serde(default)]
    pub caller_id: Option<String>,
}

impl Route {
    /// True when `number` matches one of the route's patterns.
    pub fn matches(&self, number: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(number))
    }

    /// True when extension `ext` may use the route.
    pub fn allows(&self, ext: &str) -> bool {
        self.extensions.is_empty() || self.extensions.iter().any(|e| e == ext)
    }

    /// `number` with the route's strip and prepend applied.
    fn rewrite(&self, number: &str) -> String {
        let rest = match number.get(self.strip..) {
            Some(rest) => rest,
            None if self.strip >= number.len() => "",
            // Only a non-ASCII number can have `strip` inside a character: count characters.
            None => number
                .char_indices()
                .nth(self.strip)
                .map_or("", |(i, _)| &number[i..]),
        };
        format!("{}{rest}", self.prepend)
    }
}

/// Where an inbound call goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An extension (`ext:100`).
    Extension(String),
    /// A ring group (`group:600`).
    Group(String),
    /// An IVR menu (`ivr:500`).
    Menu(String),
    /// A voicemail box (`voicemail:100`).
    Voicemail(String),
    /// Reject the call (`hangup`).
    Hangup,
}

impl FromStr for Target {
    type Err = DialplanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DialplanError::BadTarget(s.chars().take(MAX_TARGET_LEN + 16).collect());
        let s_trim = s.trim();
        if s_trim.eq_ignore_ascii_case("hangup") {
            return Ok(Target::Hangup);
        }
        let (kind, name) = s_trim.split_once(':').ok_or_else(bad)?;
        if name.is_empty()
            || name.len() > MAX_TARGET_LEN
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let name = name.to_string();
        match kind.to_ascii_lowercase().as_str() {
            "ext" => Ok(Target::Extension(name)),
            "group" => Ok(Target::Group(name)),
            "ivr" => Ok(Target::Menu(name)),
            "voicemail" => Ok(Target::Voicemail(name)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Extension(n) => write!(f, "ext:{n}"),
            Target::Group(n) => write!(f, "group:{n}"),
            Target::Menu(n) => write!(f, "ivr:{n}"),
            Target::Voicemail(n) => write!(f, "voicemail:{n}"),
            Target::Hangup => f.write_str("hangup"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The office's dial plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dialplan {
    /// Outbound routes, tried in order.
    pub routes: Vec<Route>,
    /// Emergency numbers (`112`, `911`, ...): always allowed, sent on any trunk.
    pub emergency: Vec<String>,
    /// Inbound DIDs and where they go.
    pub dids: Vec<(String, Target)>,
    /// Where an inbound call to an unknown DID goes; `None` = reject it.
    pub default_inbound: Option<Target>,
}

/// The decision for an outbound call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Name of the route taken (`"emergency"` when an emergency number matched no route).
    pub route: String,
    /// The number to send, after strip and prepend.
    pub number: String,
    /// Trunk names to try, in order.
    pub trunks: Vec<String>,
    /// True for an emergency number.
    pub emergency: bool,
    /// Caller ID to present, when the route sets one.
    pub caller_id: Option<String>,
}

/// Why an outbound call has no way out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// No route matches the number.
    #[error("no route matches the number")]
    NoRoute,
    /// Routes match, but none allows the calling extension; `route` is the first that matched.
    #[error("extension not allowed on route {route}")]
    NotAllowed {
        /// The first matching route.
        route: String,
    },
}

/// Route name reported for an emergency number that matched no route.
pub const EMERGENCY_ROUTE: &str = "emergency";

impl Dialplan {
    /// True when `number` is one of the configured emergency numbers.
    pub fn is_emergency(&self, number: &str) -> bool {
        let number = number.trim();
        !number.is_empty() && self.emergency.iter().any(|e| e.trim() == number)
    }

    /// First route (in order) whose pattern matches and that allows `ext`. Emergency numbers:
    /// always allowed for every caller, number sent unchanged unless a route matches, and
    /// `trunks` = every trunk named in any route (the first matching route's trunks first,
    /// then the rest, no duplicates).
    pub fn outbound(&self, ext: &str, number: &str) -> Result<Outbound, OutboundError> {
        let emergency = self.is_emergency(number);
        let mut refused: Option<&Route> = None;
        for route in self.routes.iter().filter(|r| r.matches(number)) {
            if !emergency && !route.allows(ext) {
                refused.get_or_insert(route);
                continue;
            }
            let trunks = if emergency {
                self.all_trunks(&route.trunks)
            } else {
                route.trunks.clone()
            };
            return Ok(Outbound {
                route: route.name.clone(),
                number: route.rewrite(number),
                trunks,
                emergency,
                caller_id: route.caller_id.clone(),
            });
        }
        if emergency {
            let trunks = self.all_trunks(&[]);
            if trunks.is_empty() {
                return Err(OutboundError::NoRoute);
            }
            return Ok(Outbound {
                route: EMERGENCY_ROUTE.to_string(),
                number: number.to_string(),
                trunks,
                emergency,
                caller_id: None,
            });
        }
        match refused {
            Some(route) => Err(OutboundError::NotAllowed {
                route: route.name.clone(),
            }),
            None => Err(OutboundError::NoRoute),
        }
    }

    /// `first`, then every other trunk named by any route, in route order, without duplicates.
    fn all_trunks(&self, first: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let rest = self.routes.iter().flat_map(|r| r.trunks.iter());
        for t in first.iter().chain(rest) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// DID lookup: exact match first, then match ignoring a leading '+', '00' or the
    /// national '0' variants (normalise: strip non-digits except leading +); else default.
    ///
    /// The national form (`030 1234567`) also matches the international one
    /// (`+49 30 1234567`) when they differ only by a country code of one to three digits and
    /// the national number has at least [`MIN_NATIONAL_DIGITS`] digits.
    pub fn inbound(&self, did: &str) -> Option<Target> {
        if let Some((_, t)) = self.dids.iter().find(|(d, _)| d == did) {
            return Some(t.clone());
        }
        let wanted = DidForm::of(did);
        if !wanted.digits.is_empty() {
            let forms: Vec<DidForm> = self.dids.iter().map(|(d, _)| DidForm::of(d)).collect();
            let found = forms
                .iter()
                .position(|f| f.same_digits(&wanted))
                .or_else(|| forms.iter().position(|f| f.same_number(&wanted)));
            if let Some(i) = found {
                return self.dids.get(i).map(|(_, t)| t.clone());
            }
        }
        self.default_inbound.clone()
    }
}

/// Shortest national number matched against an international one by its country code.
pub const MIN_NATIONAL_DIGITS: usize = 6;
/// Longest DID considered for normalised matching; longer ones only match exactly.
const MAX_DID_DIGITS: usize = 32;

/// How a DID was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DidKind {
    /// `+CC...` or `00CC...`.
    International,
    /// `0...` (trunk prefix + national number).
    National,
    /// Digits without a prefix: E.164 without `+`, or a short/national number.
    Bare,
}

/// A DID reduced to its digits without `+`, `00` or `0` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DidForm {
    kind: DidKind,
    digits: String,
}

impl DidForm {
    fn of(did: &str) -> DidForm {
        let did = did.trim();
        let plus = did.starts_with('+');
        let all: String = did
            .chars()
            .filter(char::is_ascii_digit)
            .take(MAX_DID_DIGITS + 1)
            .collect();
        if all.len() > MAX_DID_DIGITS {
            return DidForm {
                kind: DidKind::Bare,
                digits: String::new(),
            };
        }
        let (kind, digits) = if plus {
            (DidKind::International, all.as_str())
        } else if let Some(rest) = all.strip_prefix("00") {
            (DidKind::International, rest)
        } else if let Some(rest) = all.strip_prefix('0') {
            (DidKind::National, rest)
        } else {
            (DidKind::Bare, all.as_str())
        };
        DidForm {
            kind,
            digits: digits.to_string(),
        }
    }

    /// The same digits written the same way, or one of them written without any prefix.
    fn same_digits(&self, other: &DidForm) -> bool {
        self.digits == other.digits
            && (self.kind == other.kind
                || self.kind == DidKind::Bare
                || other.kind == DidKind::Bare)
    }

    /// A national form and an international (or bare E.164) form of the same number.
    fn same_number(&self, other: &DidForm) -> bool {
        let (national, intl) = match (self.kind, other.kind) {
            (DidKind::National, DidKind::International | DidKind::Bare) => (self, other),
            (DidKind::International | DidKind::Bare, DidKind::National) => (other, self),
            _ => return false,
        };
        national.digits.len() >= MIN_NATIONAL_DIGITS
            && intl.digits.len() > national.digits.len()
            && intl.digits.len() <= national.digits.len() + 3
            && intl.digits.ends_with(&national.digits)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn route(name: &str, patterns: &[&str], trunks: &[&str]) -> Route {
        Route {
            name: name.into(),
            patterns: patterns.iter().map(|t| p(t)).collect(),
            strip: 0,
            prepend: String::new(),
            trunks: trunks.iter().map(|t| t.to_string()).collect(),
            extensions: Vec::new(),
            caller_id: None,
        }
    }

    #[test]
    fn literals_digits_star_hash() {
        let pat = p("_*72#");
        assert!(pat.matches("*72#"));
        assert!(!pat.matches("*72"));
        assert!(!pat.matches("*72##"));
        assert!(!pat.matches("#72*"));
        assert!(p("100").matches("100"));
        assert!(!p("100").matches("1000"));
        assert!(!p("100").matches(""));
    }

    #[test]
    fn x_z_n_classes() {
        let x = p("_X");
        assert!((0..10).all(|d| x.matches(&d.to_string())));
        assert!(!x.matches("*") && !x.matches("#") && !x.matches("a"));
        let z = p("_Z");
        assert!(!z.matches("0"));
        assert!((1..10).all(|d| z.matches(&d.to_string())));
        let n = p("_N");
        assert!(!n.matches("0") && !n.matches("1"));
        assert!((2..10).all(|d| n.matches(&d.to_string())));
        // Lower-case class letters work as in Asterisk.
        assert!(p("_nxx").matches("212"));
        assert!(p("_NXXNXXXXXX").matches("2125551234"));
        assert!(!p("_NXXNXXXXXX").matches("1125551234"));
    }

    #[test]
    fn bracket_sets_and_ranges() {
        let range = p("_[1-3]0");
        assert!(range.matches("10") && range.matches("20") && range.matches("30"));
        assert!(!range.matches("40") && !range.matches("00"));
        let list = p("_[135]");
        assert!(list.matches("1") && list.matches("3") && list.matches("5"));
        assert!(!list.matches("2") && !list.matches("4"));
        let mixed = p("_[1-35*#]");
        for ok in ["1", "2", "3", "5", "*", "#"] {
            assert!(mixed.matches(ok), "{ok}");
        }
        assert!(!mixed.matches("4"));
        for bad in ["_[", "_[12", "_[]", "_[a]", "_[3-1]", "_[1-]", "_[-1]"] {
            assert!(
                matches!(Pattern::parse(bad), Err(DialplanError::BadSet(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn dot_is_one_or_more_and_bang_zero_or_more() {
        let dot = p("_9.");
        assert!(!dot.matches("9"));
        assert!(dot.matches("91"));
        assert!(dot.matches("9001234567#"));
        let bang = p("_9!");
        assert!(bang.matches("9"));
        assert!(bang.matches("912"));
        assert!(!bang.matches("8"));
        assert!(p("_.").matches("x") && !p("_.").matches(""));
        assert!(p("!").matches(""));
        assert_eq!(Pattern::parse("_9.1"), Err(DialplanError::WildcardNotAtEnd));
        assert_eq!(Pattern::parse("_9!."), Err(DialplanError::WildcardNotAtEnd));
    }

    #[test]
    fn underscore_plus_dash_and_errors() {
        assert_eq!(p("_100"), p("_100"));
        assert!(p("100").matches("100") && p("_100").matches("100"));
        let plus = p("_+49.");
        assert!(plus.matches("+4930123"));
        assert!(!plus.matches("004930123"));
        assert!(p("+1NXXNXXXXXX").matches("+12125551234"));
        assert_eq!(Pattern::parse("_1+"), Err(DialplanError::PlusNotLeading));
        assert!(p("_1-NXX-XXXX").matches("12125555"));
        assert_eq!(Pattern::parse("_"), Err(DialplanError::EmptyPattern));
        assert_eq!(Pattern::parse(""), Err(DialplanError::EmptyPattern));
        assert_eq!(
            Pattern::parse("_12a"),
            Err(DialplanError::UnexpectedChar { ch: 'a', pos: 3 })
        );
        assert_eq!(
            Pattern::parse("1ü"),
            Err(DialplanError::UnexpectedChar { ch: 'ü', pos: 1 })
        );
        assert_eq!(
            Pattern::parse(&format!("_{}", "1".repeat(64))),
            Err(DialplanError::PatternTooLong)
        );
        assert!(Pattern::parse(&"1".repeat(64)).is_ok());
        assert_eq!(p("_9NXX.").to_string(), "_9NXX.");
    }

    #[test]
    fn strip_and_prepend() {
        let mut r = route("national", &["_90ZXXXXX."], &["prov"]);
        r.strip = 1;
        r.prepend = "+49".into();
        let plan = Dialplan {
            routes: vec![r],
            ..Dialplan::default()
        };
        let out = plan.outbound("100", "9030123456").expect("routes");
        assert_eq!(out.number, "+49030123456");
        assert_eq!(out.route, "national");
        assert_eq!(out.trunks, vec!["prov".to_string()]);
        assert!(!out.emergency);

        // Stripping more than there is leaves only the prefix.
        let mut r = route("all", &["_X!"], &["prov"]);
        r.strip = 10;
        r.prepend = "00".into();
        assert_eq!(r.rewrite("12"), "00");
    }

    #[test]
    fn first_matching_route_that_allows_the_caller_wins() {
        let mut intl = route("intl-restricted", &["_00."], &["a"]);
        intl.extensions = vec!["100".into()];
        intl.caller_id = Some("+4930555".into());
        let mut intl2 = route("intl-boss", &["_00."], &["b"]);
        intl2.extensions = vec!["101".into()];
        let local = route("local", &["_0[1-9]."], &["a", "b"]);
        let plan = Dialplan {
            routes: vec![intl, intl2, local],
            ..Dialplan::default()
        };
        let out = plan.outbound("100", "0044207").expect("allowed");
        assert_eq!(out.route, "intl-restricted");
        assert_eq!(out.caller_id.as_deref(), Some("+4930555"));
        let out = plan.outbound("101", "0044207").expect("allowed on second");
        assert_eq!(out.route, "intl-boss");
        assert_eq!(out.trunks, vec!["b".to_string()]);
        assert_eq!(
            plan.outbound("102", "0044207"),
            Err(OutboundError::NotAllowed {
                route: "intl-restricted".into()
            })
        );
        // Routes with no extension list are open to everyone.
        assert_eq!(
            plan.outbound("102", "030123").map(|o| o.route),
            Ok("local".into())
        );
        assert_eq!(plan.outbound("100", "*98"), Err(OutboundError::NoRoute));
    }

    #[test]
    fn emergency_without_a_route_goes_out_on_every_trunk() {
        let mut national = route("national", &["_0ZX."], &["a", "b"]);
        national.extensions = vec!["100".into()];
        let mut other = route("intl", &["_00."], &["c", "a"]);
        other.extensions = vec!["100".into()];
        let plan = Dialplan {
            routes: vec![national, other],
            emergency: vec!["112".into(), "110".into()],
            ..Dialplan::default()
        };
        assert!(plan.is_emergency("112"));
        assert!(!plan.is_emergency("1120"));
        assert!(!plan.is_emergency(""));
        // Extension 200 may not use any route, yet emergency goes out unchanged.
        let out = plan
            .outbound("200", "112")
            .expect("emergency always allowed");
        assert_eq!(
            out,
            Outbound {
                route: EMERGENCY_ROUTE.into(),
                number: "112".into(),
                trunks: vec!["a".into(), "b".into(), "c".into()],
                emergency: true,
                caller_id: None,
            }
        );
        // With no trunks at all, there is no way out.
        let empty = Dialplan {
            emergency: vec!["112".into()],
            ..Dialplan::default()
        };
        assert_eq!(empty.outbound("200", "112"), Err(OutboundError::NoRoute));
    }

    #[test]
    fn emergency_with_a_route_uses_it_first_even_when_not_allowed() {
        let mut local = route("local", &["_0ZX."], &["a"]);
        local.extensions = vec!["100".into()];
        let mut emerg = route("emergency-out", &["_11[02]"], &["e", "a"]);
        emerg.extensions = vec!["nobody".into()];
        emerg.prepend = "*31#".into();
        emerg.caller_id = Some("+4930999".into());
        let last = route("other", &["_00."], &["c", "e"]);
        let plan = Dialplan {
            routes: vec![local, emerg, last],
            emergency: vec!["112".into()],
            ..Dialplan::default()
        };
        let out = plan
            .outbound("200", "112")
            .expect("emergency always allowed");
        assert_eq!(out.route, "emergency-out");
        assert_eq!(out.number, "*31#112");
        assert_eq!(out.trunks, vec!["e", "a", "c"]);
        assert!(out.emergency);
        assert_eq!(out.caller_id.as_deref(), Some("+4930999"));
        // 110 matches the route but is not an emergency number here: refused.
        assert_eq!(
            plan.outbound("200", "110"),
            Err(OutboundError::NotAllowed {
                route: "emergency-out".into()
            })
        );
    }

    #[test]
    fn targets_parse_and_display() {
        let cases = [
            ("ext:100", Target::Extension("100".into())),
            ("group:600", Target::Group("600".into())),
            ("ivr:500", Target::Menu("500".into())),
            ("voicemail:100", Target::Voicemail("100".into())),
            ("hangup", Target::Hangup),
        ];
        for (text, target) in cases {
            assert_eq!(text.parse::<Target>(), Ok(target.clone()));
            assert_eq!(target.to_string(), text);
        }
        for bad in [
            "",
            "ext:",
            "ext",
            "phone:100",
            "ext:1 00",
            "hang up",
            ":100",
        ] {
            assert!(
                matches!(bad.parse::<Target>(), Err(DialplanError::BadTarget(_))),
                "{bad}"
            );
        }
        assert!(format!("ext:{}", "1".repeat(65)).parse::<Target>().is_err());
    }

    #[test]
    fn dialplan_round_trips_through_json() {
        let mut r = route("out", &["_0.", "_+!"], &["a"]);
        r.strip = 1;
        let plan = Dialplan {
            routes: vec![r],
            emergency: vec!["112".into()],
            dids: vec![("+4930123456".into(), Target::Group("600".into()))],
            default_inbound: Some(Target::Menu("500".into())),
        };
        let json = serde_json::to_string(&plan).expect("serializes");
        assert!(json.contains("\"group:600\""), "{json}");
        let back: Dialplan = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, plan);
        let bad = json.replace("_0.", "_0.1");
        assert!(serde_json::from_str::<Dialplan>(&bad).is_err());
    }

    fn did_plan() -> Dialplan {
        Dialplan {
            dids: vec![
                ("+4930123456".into(), Target::Extension("100".into())),
                ("0049301234567".into(), Target::Group("600".into())),
                ("0401234567".into(), Target::Menu("500".into())),
                ("5555".into(), Target::Voicemail("101".into())),
            ],
            default_inbound: Some(Target::Hangup),
            ..Dialplan::default()
        }
    }

    #[test]
    fn did_exact_and_prefix_variants() {
        let plan = did_plan();
        let ext = Some(Target::Extension("100".into()));
        assert_eq!(plan.inbound("+4930123456"), ext);
        assert_eq!(plan.inbound("004930123456"), ext);
        assert_eq!(plan.inbound("4930123456"), ext);
        assert_eq!(plan.inbound("+49 30 123456"), ext);
        assert_eq!(plan.inbound("+49-(30)-123456"), ext);
        let group = Some(Target::Group("600".into()));
        assert_eq!(plan.inbound("+49301234567"), group);
        assert_eq!(plan.inbound("49301234567"), group);
        // The national form of a number configured internationally, and the reverse.
        assert_eq!(plan.inbound("0301234567"), group);
        assert_eq!(plan.inbound("030123456"), ext);
        let menu = Some(Target::Menu("500".into()));
        assert_eq!(plan.inbound("+49401234567"), menu);
        assert_eq!(plan.inbound("0049401234567"), menu);
        assert_eq!(plan.inbound("401234567"), menu);
        assert_eq!(plan.inbound("5555"), Some(Target::Voicemail("101".into())));
    }

    #[test]
    fn did_unknown_goes_to_default_or_nowhere() {
        let mut plan = did_plan();
        assert_eq!(plan.inbound("+4930999999"), Some(Target::Hangup));
        assert_eq!(plan.inbound(""), Some(Target::Hangup));
        assert_eq!(plan.inbound("anonymous"), Some(Target::Hangup));
        // A short number does not match a long one by suffix.
        assert_eq!(plan.inbound("0555"), Some(Target::Hangup));
        // A country code longer than three digits is not a country code.
        assert_eq!(plan.inbound("+12344401234567"), Some(Target::Hangup));
        assert_eq!(plan.inbound(&"1".repeat(5000)), Some(Target::Hangup));
        plan.default_inbound = None;
        assert_eq!(plan.inbound("+4930999999"), None);
    }

    #[test]
    fn exact_match_wins_over_normalised_match() {
        let plan = Dialplan {
            dids: vec![
                ("+4930123456".into(), Target::Extension("100".into())),
                ("004930123456".into(), Target::Extension("200".into())),
            ],
            ..Dialplan::default()
        };
        assert_eq!(
            plan.inbound("004930123456"),
            Some(Target::Extension("200".into()))
        );
        assert_eq!(
            plan.inbound("4930123456"),
            Some(Target::Extension("100".into()))
        );
    }

    /// Reference matcher by plain backtracking over the pattern text, for the fuzz test.
    fn reference(pattern: &str, number: &str) -> bool {
        fn class(c: char, n: char) -> Option<bool> {
            let d = n.to_digit(10);
            match c.to_ascii_uppercase() {
                'X' => Some(d.is_some()),
                'Z' => Some(d.is_some_and(|d| d >= 1)),
                'N' => Some(d.is_some_and(|d| d >= 2)),
                _ => None,
            }
        }
        fn go(p: &[char], n: &[char]) -> bool {
            match p.first() {
                None => n.is_empty(),
                Some('.') => !n.is_empty(),
                Some('!') => true,
                Some('-') => go(&p[1..], n),
                Some('[') => {
                    let close = p.iter().position(|&c| c == ']').expect("valid pattern");
                    let inner = &p[1..close];
                    let Some(&c) = n.first() else { return false };
                    let mut k = 0;
                    let mut hit = false;
                    while k < inner.len() {
                        if k + 2 < inner.len() && inner[k + 1] == '-' {
                            hit |= inner[k] <= c && c <= inner[k + 2];
                            k += 3;
                        } else {
                            hit |= inner[k] == c;
                            k += 1;
                        }
                    }
                    hit && go(&p[close + 1..], &n[1..])
                }
                Some(&pc) => {
                    let Some(&c) = n.first() else { return false };
                    class(pc, c).unwrap_or(pc == c) && go(&p[1..], &n[1..])
                }
            }
        }
        let p: Vec<char> = pattern
            .strip_prefix('_')
            .unwrap_or(pattern)
            .chars()
            .collect();
        let n: Vec<char> = number.chars().collect();
        go(&p, &n)
    }

    #[test]
    fn fuzz_parse_and_match_never_panic_and_agree_with_reference() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let num_alpha: Vec<char> = "0123456789*#+a ü".chars().collect();
        let random_number = |rng: &mut StdRng| -> String {
            let nlen = rng.gen_range(0..16);
            (0..nlen)
                .map(|_| num_alpha[rng.gen_range(0..num_alpha.len())])
                .collect()
        };
        // Raw random text: parse either fails or yields a pattern that matches without panic.
        let raw_alpha: Vec<char> = "_0123456789*#+XZNxzn[]-.!a ü".chars().collect();
        for _ in 0..20_000 {
            let len = rng.gen_range(0..80);
            let text: String = (0..len)
                .map(|_| raw_alpha[rng.gen_range(0..raw_alpha.len())])
                .collect();
            if let Ok(pat) = Pattern::parse(&text) {
                let number = random_number(&mut rng);
                let _ = pat.matches(&number);
            }
        }
        // Structured random patterns agree with a plain backtracking matcher.
        let tokens = [
            "0", "1", "2", "5", "9", "*", "#", "X", "Z", "N", "x", "[1-3]", "[135]", "[0-9*]",
            "[#2-4]", "-",
        ];
        let (mut checked, mut hits) = (0, 0);
        for _ in 0..5_000 {
            let mut text = String::new();
            if rng.gen_bool(0.5) {
                text.push('_');
            }
            if rng.gen_bool(0.2) {
                text.push('+');
            }
            for _ in 0..rng.gen_range(0..6) {
                text.push_str(tokens[rng.gen_range(0..tokens.len())]);
            }
            match rng.gen_range(0..3) {
                0 => text.push('.'),
                1 => text.push('!'),
                _ => {}
            }
            let Ok(pat) = Pattern::parse(&text) else {
                continue;
            };
            for _ in 0..20 {
                // Half the numbers are built to fit the pattern's length, to hit matches.
                let number = if rng.gen_bool(0.5) {
                    random_number(&mut rng)
                } else {
                    (0..rng.gen_range(0..8))
                        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                        .collect()
                };
                let got = pat.matches(&number);
                assert_eq!(got, reference(&text, &number), "{text:?} vs {number:?}");
                checked += 1;
                hits += usize::from(got);
            }
        }
        assert!(checked > 50_000, "only {checked} comparisons");
        assert!(hits > 1_000, "only {hits} matches");
        // Matching a huge number is linear.
        let huge = "9".repeat(1 << 20);
        assert!(p("_9!").matches(&huge));
        assert!(!p("_X").matches(&huge));
    }
}
