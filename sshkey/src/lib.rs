//! OpenSSH public key lines as Outpost accepts them: `TYPE BASE64 [COMMENT]`, no options,
//! ssh-ed25519, ecdsa-sha2-nistp256 or ssh-rsa of 2048 bits or more, the key blob checked
//! (a point on the curve, a usable RSA exponent).
//!
//! A leaf shared by the daemon (admin keys, a backup target's pinned host key) and the image
//! builder (keys baked into an image are checked with the parser the box uses).

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Longest public key line accepted (an RSA 16384-bit key is about 2.8 KiB).
pub const MAX_KEY_LINE: usize = 8 * 1024;
/// Longest comment accepted, in characters.
pub const MAX_COMMENT_LEN: usize = 256;
/// Smallest RSA key accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;
/// Largest RSA key accepted, in bits (bounds the work of parsing).
const MAX_RSA_BITS: u32 = 16_384;

/// Why a public key line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Longer than [`MAX_KEY_LINE`].
    #[error("the key line is longer than {MAX_KEY_LINE} bytes")]
    TooLong,
    /// Not `type base64 [comment]`.
    #[error("expected one OpenSSH public key line: `TYPE BASE64 [COMMENT]` (as in a .pub file)")]
    Format,
    /// A key type we do not accept (or an options prefix).
    #[error("key type `{0}` is not accepted: use ssh-ed25519, ecdsa-sha2-nistp256 or ssh-rsa (2048 bits or more), without options")]
    Type(String),
    /// The key data is not base64.
    #[error("the key data is not valid base64")]
    Base64,
    /// The key data does not hold a key of the named type.
    #[error("the key data is not a valid {0} key")]
    Blob(&'static str),
    /// An RSA key below [`MIN_RSA_BITS`].
    #[error("RSA key of {0} bits: at least {MIN_RSA_BITS} are needed")]
    RsaTooSmall(u32),
    /// The comment holds control characters or is too long.
    #[error("the comment must be at most {MAX_COMMENT_LEN} characters without control characters")]
    Comment,
}

/// A key type we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    EcdsaP256,
    /// `ssh-rsa` (the key; signatures may be rsa-sha2-256/512).
    Rsa,
}

impl KeyType {
    /// The OpenSSH name.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ssh-ed25519",
            KeyType::EcdsaP256 => "ecdsa-sha2-nistp256",
            KeyType::Rsa => "ssh-rsa",
        }
    }

    fn from_name(name: &str) -> Option<KeyType> {
        [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::Rsa]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

/// A checked OpenSSH public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_type: KeyType,
    blob: Vec<u8>,
    bits: u32,
    comment: Option<String>,
}

impl PublicKey {
    /// Parses and checks one `authorized_keys`-style line without options:
    /// `TYPE BASE64 [COMMENT]`.
    pub fn parse(line: &str) -> Result<PublicKey, KeyError> {
        if line.len() > MAX_KEY_LINE {
            return Err(KeyError::TooLong);
        }
        let line = line.trim();
        let (type_name, rest) = line.split_once([' ', '\t']).ok_or(KeyError::Format)?;
        let key_type =
            KeyType::from_name(type_name).ok_or_else(|| KeyError::Type(sanitize(type_name, 40)))?;
        let rest = rest.trim_start_matches([' ', '\t']);
        let (b64, comment) = match rest.split_once([' ', '\t']) {
            Some((b, c)) => (b, c.trim()),
            None => (rest, ""),
        };
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| KeyError::Base64)?;
        let bits = check_blob(key_type, &blob)?;
        let comment = if comment.is_empty() {
            None
        } else if comment.chars().count() > MAX_COMMENT_LEN || comment.chars().any(char::is_control)
        {
            return Err(KeyError::Comment);
        } else {
            Some(comment.to_owned())
        };
        Ok(PublicKey {
            key_type,
            blob,
            bits,
            comment,
        })
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Key size in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The comment, if any.
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }

    /// `SHA256:<unpadded base64 of the blob's SHA-256>`, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// The normalised line: `TYPE BASE64[ COMMENT]`.
    pub fn to_line(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.blob);
        match &self.comment {
            Some(c) => format!("{} {b64} {c}", self.key_type.name()),
            None => format!("{} {b64}", self.key_type.name()),
        }
    }
}

/// Checks the wire-format key blob of `key_type`; returns the key size in bits.
fn check_blob(key_type: KeyType, blob: &[u8]) -> Result<u32, KeyError> {
    let bad = KeyError::Blob(key_type.name());
    let mut r = SshReader(blob);
    if r.string().ok_or(bad.clone())? != key_type.name().as_bytes() {
        return Err(bad);
    }
    let bits = match key_type {
        KeyType::Ed25519 => {
            if r.string().ok_or(bad.clone())?.len() != 32 {
                return Err(bad);
            }
            256
        }
        KeyType::EcdsaP256 => {
            if r.string().ok_or(bad.clone())? != b"nistp256" {
                return Err(bad);
            }
            let point = r.string().ok_or(bad.clone())?;
            p256::PublicKey::from_sec1_bytes(point).map_err(|_| bad.clone())?;
            256
        }
        KeyType::Rsa => {
            let e = r.mpint().ok_or(bad.clone())?;
            let n = r.mpint().ok_or(bad.clone())?;
            // A usable public exponent is odd and at least 3.
            let e_odd = e.last().is_some_and(|b| b & 1 == 1);
            if !e_odd || (e.len() == 1 && e[0] < 3) || e.len() > 8 {
                return Err(bad);
            }
            let bits = mpint_bits(n);
            if bits > MAX_RSA_BITS {
                return Err(bad);
            }
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall(bits));
            }
            bits
        }
    };
    if !r.0.is_empty() {
        return Err(bad);
    }
    Ok(bits)
}

/// Bits of a positive big-endian integer without leading zero bytes.
fn mpint_bits(n: &[u8]) -> u32 {
    match n.first() {
        None => 0,
        Some(&first) => {
            let len = u32::try_from(n.len()).unwrap_or(u32::MAX);
            len.saturating_sub(1).saturating_mul(8) + (8 - first.leading_zeros())
        }
    }
}

/// Reads SSH wire-format strings (RFC 4251 §5) from a byte slice.
struct SshReader<'a>(&'a [u8]);

impl<'a> SshReader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if len > rest.len() {
            return None;
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Some(s)
    }

    /// A positive mpint, its leading zero bytes removed; None for a negative one.
    fn mpint(&mut self) -> Option<&'a [u8]> {
        let s = self.string()?;
        if s.first().is_some_and(|b| b & 0x80 != 0) {
            return None;
        }
        let start = s.iter().position(|&b| b != 0).unwrap_or(s.len());
        Some(&s[start..])
    }
}

/// Control characters replaced with `?`, cut to `max` characters (for echoing input back).
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl laptop";

    fn rsa_line(bits: u32) -> String {
        let mut blob = Vec::new();
        let mut put = |b: &[u8]| {
            blob.extend_from_slice(&u32::try_from(b.len()).unwrap().to_be_bytes());
            blob.extend_from_slice(b);
        };
        put(b"ssh-rsa");
        put(&[1, 0, 1]);
        let mut n = vec![0u8];
        n.push(0xc5);
        n.extend(std::iter::repeat_n(
            0x5a,
            usize::try_from(bits / 8 - 1).unwrap(),
        ));
        put(&n);
        format!(
            "ssh-rsa {} admin@desk",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        )
    }

    #[test]
    fn ed25519_key_parses_with_the_fingerprint_ssh_keygen_prints() {
        let key = PublicKey::parse(ED25519).unwrap();
        assert_eq!(key.key_type(), KeyType::Ed25519);
        assert_eq!(key.bits(), 256);
        assert_eq!(key.comment(), Some("laptop"));
        // The fingerprint is SHA-256 over the decoded blob, base64 without padding.
        let blob = base64::engine::general_purpose::STANDARD
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
            .unwrap();
        let want = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        );
        assert_eq!(key.fingerprint(), want);
        assert!(!want.ends_with('='));
        assert_eq!(PublicKey::parse(&key.to_line()).unwrap(), key);
        let bare = PublicKey::parse(
            "ssh-ed25519\tAAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
        )
        .unwrap();
        assert_eq!(bare.comment(), None);
    }

    #[test]
    fn ecdsa_key_needs_a_point_on_the_curve() {
        let point = p256::SecretKey::from_slice(&[7u8; 32])
            .unwrap()
            .public_key();
        let sec1 = p256::EncodedPoint::from(point);
        let mut blob = Vec::new();
        for part in [
            b"ecdsa-sha2-nistp256".as_slice(),
            b"nistp256".as_slice(),
            sec1.as_bytes(),
        ] {
            blob.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
            blob.extend_from_slice(part);
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
        let key = PublicKey::parse(&format!("ecdsa-sha2-nistp256 {b64}")).unwrap();
        assert_eq!(key.bits(), 256);
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
        assert_eq!(
            PublicKey::parse(&format!("ecdsa-sha2-nistp256 {b64}")),
            Err(KeyError::Blob("ecdsa-sha2-nistp256"))
        );
    }

    #[test]
    fn rsa_keys_need_2048_bits() {
        let key = PublicKey::parse(&rsa_line(2048)).unwrap();
        assert_eq!(key.bits(), 2048);
        assert_eq!(key.comment(), Some("admin@desk"));
        assert_eq!(
            PublicKey::parse(&rsa_line(1024)),
            Err(KeyError::RsaTooSmall(1024))
        );
    }

    #[test]
    fn bad_key_lines_say_why() {
        assert_eq!(PublicKey::parse(""), Err(KeyError::Format));
        assert_eq!(PublicKey::parse("ssh-ed25519"), Err(KeyError::Format));
        assert!(matches!(
            PublicKey::parse("ssh-dss AAAAB3NzaC1kc3MAAACBAP"),
            Err(KeyError::Type(_))
        ));
        assert!(matches!(
            PublicKey::parse(&format!("command=\"sh\" {ED25519}")),
            Err(KeyError::Type(_))
        ));
        assert_eq!(
            PublicKey::parse("ssh-ed25519 not!base64"),
            Err(KeyError::Base64)
        );
        // An RSA blob presented as ed25519.
        let rsa_b64 = rsa_line(2048).split(' ').nth(1).unwrap().to_owned();
        assert_eq!(
            PublicKey::parse(&format!("ssh-ed25519 {rsa_b64}")),
            Err(KeyError::Blob("ssh-ed25519"))
        );
        // Truncated and trailing data.
        let good = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(good)
            .unwrap();
        blob.push(0);
        let long = base64::engine::general_purpose::STANDARD.encode(&blob);
        assert!(PublicKey::parse(&format!("ssh-ed25519 {long}")).is_err());
        blob.truncate(20);
        let short = base64::engine::general_purpose::STANDARD.encode(&blob);
        assert!(PublicKey::parse(&format!("ssh-ed25519 {short}")).is_err());
        // A comment cannot smuggle a second authorized_keys line.
        assert_eq!(
            PublicKey::parse(&format!("{ED25519}\u{b}x")),
            Err(KeyError::Comment)
        );
        assert_eq!(
            PublicKey::parse(&"x".repeat(MAX_KEY_LINE + 1)),
            Err(KeyError::TooLong)
        );
    }
}
