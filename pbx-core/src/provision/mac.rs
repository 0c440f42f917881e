//! MAC addresses as admins type them and as desk phones put them in request paths, and the
//! request path parser: which file of which phone a provisioning request asks for.

use std::fmt;
use std::str::FromStr;

use super::vendor::Vendor;

/// Longest request path (file name) looked at; a longer one is not a phone's.
pub const MAX_PATH: usize = 128;

/// A phone's Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not 12 hex digits, alone or in pairs separated by `:` or `-` (or 3 groups of 4 by `.`).
    #[error("not a MAC address (12 hex digits, e.g. 80:5e:c0:12:34:56 or 805EC0123456)")]
    Syntax,
    /// A group (multicast) or all-zero address is no phone's.
    #[error("not a phone's MAC address (a group or all-zero address)")]
    NotUnicast,
}

impl FromStr for Mac {
    type Err = MacError;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` and `AABBCCDDEEFF`,
    /// either case; one kind of separator throughout.
    fn from_str(s: &str) -> Result<Mac, MacError> {
        let digits: Vec<u8> = match s.len() {
            12 => s.bytes().collect(),
            17 => {
                let sep = s.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(MacError::Syntax);
                }
                let mut out = Vec::with_capacity(12);
                for (i, b) in s.bytes().enumerate() {
                    if i % 3 == 2 {
                        if b != sep {
                            return Err(MacError::Syntax);
                        }
                    } else {
                        out.push(b);
                    }
                }
                out
            }
            14 => {
                let mut out = Vec::with_capacity(12);
                for (i, b) in s.bytes().enumerate() {
                    if i % 5 == 4 {
                        if b != b'.' {
                            return Err(MacError::Syntax);
                        }
                    } else {
                        out.push(b);
                    }
                }
                out
            }
            _ => return Err(MacError::Syntax),
        };
        let mut mac = [0u8; 6];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or(MacError::Syntax)?;
            let lo = hex_digit(pair[1]).ok_or(MacError::Syntax)?;
            mac[i] = (hi << 4) | lo;
        }
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(MacError::NotUnicast);
        }
        Ok(Mac(mac))
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Mac {
    /// 12 lowercase hex digits, the form phones use in file names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Mac {
    /// `aa:bb:cc:dd:ee:ff`, for people.
    pub fn colons(&self) -> String {
        let [a, b, c, d, e, g] = self.0;
        format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What a provisioning request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// One phone's own file, in the format of the vendor whose path it is.
    Phone {
        /// The phone.
        mac: Mac,
        /// Which file.
        file: PhoneFile,
    },
    /// A file every phone of a vendor asks for first, without its MAC (no secrets in it).
    Common(Vendor),
}

/// The per-phone files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneFile {
    /// `<mac>.cfg`: Yealink's and Fanvil's configuration, Poly's master file (which of
    /// the three follows from the phone's model).
    MacCfg,
    /// `cfg<mac>.xml`: Grandstream.
    Grandstream,
    /// `<mac>.xml` or `snom<model>-<MAC>.htm`: Snom settings XML.
    Snom,
    /// `<mac>-outpost.cfg`: Poly's configuration, named by its master file.
    PolyPhone,
}

/// Parses the file name of a provisioning request (the part after `/provision/`):
/// `<mac>.cfg`, `cfg<mac>.xml`, `<mac>.xml`, `snom<model>-<MAC>.htm`, `<mac>-outpost.cfg`,
/// and the common files `y0000000000NN.cfg` (Yealink), `000000000000.cfg` (Poly),
/// `cfg.xml` (Grandstream), `snom<model>.htm` (Snom). `None` for anything else (a
/// directory, `..`, a query, a name too long).
pub fn parse_path(name: &str) -> Option<Wanted> {
    if name.is_empty()
        || name.len() > MAX_PATH
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        || name.starts_with('.')
    {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if lower == "000000000000.cfg" {
        return Some(Wanted::Common(Vendor::Poly));
    }
    if lower == "cfg.xml" {
        return Some(Wanted::Common(Vendor::Grandstream));
    }
    if let Some(code) = lower
        .strip_prefix("y0000000000")
        .and_then(|r| r.strip_suffix(".cfg"))
    {
        return (code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(Wanted::Common(Vendor::Yealink));
    }
    let phone = |mac: &str, file| {
        (mac.len() == 12)
            .then(|| mac.parse::<Mac>().ok())
            .flatten()
            .map(|mac| Wanted::Phone { mac, file })
    };
    if let Some(rest) = lower.strip_prefix("snom") {
        let rest = rest.strip_suffix(".htm")?;
        return match rest.rsplit_once('-') {
            Some((model, mac)) if !model.is_empty() => phone(mac, PhoneFile::Snom),
            Some(_) => None,
            None => (!rest.is_empty()).then_some(Wanted::Common(Vendor::Snom)),
        };
    }
    if let Some(mac) = lower
        .strip_prefix("cfg")
        .and_then(|r| r.strip_suffix(".xml"))
    {
        return phone(mac, PhoneFile::Grandstream);
    }
    if let Some(mac) = lower.strip_suffix("-outpost.cfg") {
        return phone(mac, PhoneFile::PolyPhone);
    }
    if let Some(mac) = lower.strip_suffix(".cfg") {
        return phone(mac, PhoneFile::MacCfg);
    }
    if let Some(mac) = lower.strip_suffix(".xml") {
        return phone(mac, PhoneFile::Snom);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const M: Mac = Mac([0x80, 0x5e, 0xc0, 0x12, 0x34, 0x56]);

    #[test]
    fn macs_in_every_usual_spelling_and_junk_refused() {
        for s in [
            "80:5e:c0:12:34:56",
            "80:5E:C0:12:34:56",
            "80-5e-c0-12-34-56",
            "805e.c012.3456",
            "805EC0123456",
            "805ec0123456",
        ] {
            assert_eq!(s.parse::<Mac>(), Ok(M), "{s}");
        }
        assert_eq!(M.to_string(), "805ec0123456");
        assert_eq!(M.colons(), "80:5e:c0:12:34:56");
        for junk in [
            "",
            "805ec012345",
            "805ec01234567",
            "80:5e:c0:12:34-56",
            "80:5e:c0:12:34:5g",
            "805ec012345g",
            "80.5e.c0.12.34.56",
            "805e:c012:3456",
            "+05ec0123456",
            "80:5e:c0:12:34:56:",
            "ü05ec012345",
        ] {
            assert_eq!(junk.parse::<Mac>(), Err(MacError::Syntax), "{junk:?}");
        }
        assert_eq!(
            "01:00:5e:00:00:01".parse::<Mac>(),
            Err(MacError::NotUnicast)
        );
        assert_eq!("000000000000".parse::<Mac>(), Err(MacError::NotUnicast));
    }

    #[test]
    fn each_vendors_paths() {
        let p = |file| Some(Wanted::Phone { mac: M, file });
        assert_eq!(parse_path("805ec0123456.cfg"), p(PhoneFile::MacCfg));
        assert_eq!(parse_path("805EC0123456.cfg"), p(PhoneFile::MacCfg));
        assert_eq!(parse_path("cfg805ec0123456.xml"), p(PhoneFile::Grandstream));
        assert_eq!(parse_path("805ec0123456.xml"), p(PhoneFile::Snom));
        assert_eq!(parse_path("snomD785-805EC0123456.htm"), p(PhoneFile::Snom));
        assert_eq!(
            parse_path("805ec0123456-outpost.cfg"),
            p(PhoneFile::PolyPhone)
        );
        assert_eq!(
            parse_path("y000000000028.cfg"),
            Some(Wanted::Common(Vendor::Yealink))
        );
        assert_eq!(
            parse_path("000000000000.cfg"),
            Some(Wanted::Common(Vendor::Poly))
        );
        assert_eq!(
            parse_path("cfg.xml"),
            Some(Wanted::Common(Vendor::Grandstream))
        );
        assert_eq!(
            parse_path("snomD785.htm"),
            Some(Wanted::Common(Vendor::Snom))
        );
        for junk in [
            "",
            "/",
            "..",
            "../805ec0123456.cfg",
            ".805ec0123456.cfg",
            "805ec0123456.cfg?x=1",
            "805ec012345.cfg",
            "010000000000.cfg",
            "cfg.805ec0123456.xml",
            "snom-805ec0123456.htm",
            "snom.htm",
            "y0000000000.cfg",
            "y0000000000123.cfg",
            "index.html",
            "805ec0123456.cfg.bak",
        ] {
            assert_eq!(parse_path(junk), None, "{junk:?}");
        }
        assert_eq!(parse_path(&"a".repeat(MAX_PATH + 1)), None);
    }
}
