//! Outpost update bundles: a new root filesystem and its manifest, signed with ed25519.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic      8 bytes   "OPBNDL01"
//! hlen       u32       length of the manifest (at most MAX_MANIFEST bytes)
//! manifest   hlen      JSON (Manifest)
//! signature  64 bytes  ed25519 over magic || hlen || manifest
//! payload    rest      the root filesystem (squashfs); its length and SHA-256 are in the
//!                      manifest, so the signature covers it too
//! ```
//!
//! A reader checks the signature before it believes a single manifest byte, then streams
//! the payload (never held in memory) while hashing it; [`copy_payload`] fails unless the
//! length and SHA-256 match. Keys are one-line text files: `outpost-update-public <hex>` and
//! `outpost-update-secret <hex>` (the 32-byte ed25519 seed), optionally followed by a comment.

use std::cmp::Ordering;
use std::io::{Read, Write};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"OPBNDL01";
/// Bundle format this code writes and reads.
pub const FORMAT: u32 = 1;
/// The largest manifest accepted (a hostile length never allocates more).
pub const MAX_MANIFEST: u32 = 64 * 1024;
/// The largest payload accepted (a root slot is far smaller).
pub const MAX_PAYLOAD: u64 = 1 << 30;
/// Prefix of a public key line.
const PUBLIC_PREFIX: &str = "outpost-update-public";
/// Prefix of a secret key line.
const SECRET_PREFIX: &str = "outpost-update-secret";

/// Why a bundle or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file does not start with the bundle magic.
    #[error("not an Outpost update bundle")]
    NotABundle,
    /// The manifest length is beyond [`MAX_MANIFEST`].
    #[error("manifest of {0} bytes is too large")]
    ManifestTooLarge(u32),
    /// The file ended early.
    #[error("the bundle is truncated ({0})")]
    Truncated(&'static str),
    /// No trusted key made this signature.
    #[error(
        "bad signature: the bundle was not signed by a trusted key (or was changed after signing)"
    )]
    BadSignature,
    /// No trusted keys at all.
    #[error("no update keys are trusted on this box")]
    NoKeys,
    /// The signed manifest does not decode.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A format this code does not know.
    #[error("bundle format {0} is not supported (this firmware reads format {FORMAT})")]
    Format(u32),
    /// The payload is not what the manifest promised.
    #[error("the root filesystem does not match the signed manifest: {0}")]
    Payload(String),
    /// A key file line is malformed.
    #[error("bad key: {0}")]
    Key(String),
}

/// A release: version (`MAJOR.MINOR.PATCH`) and build time (SOURCE_DATE_EPOCH), ordered by
/// version, then build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Semantic version, e.g. `0.1.0`.
    pub version: String,
    /// Build time, seconds since the epoch.
    pub build: u64,
}

impl Release {
    /// The numeric parts of the version (missing or non-numeric parts count as 0).
    fn parts(&self) -> [u64; 3] {
        let mut out = [0u64; 3];
        let core = self.version.split(['-', '+']).next().unwrap_or_default();
        for (slot, part) in out.iter_mut().zip(core.split('.')) {
            *slot = part.parse().unwrap_or(0);
        }
        out
    }

    /// Parses `/etc/outpost/release` (`key=value` lines: version, build or
    /// source_date_epoch).
    pub fn from_release_file(text: &str) -> Option<Release> {
        let mut version = None;
        let mut build = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim() {
                "version" => version = Some(v.trim().to_owned()),
                "build" | "source_date_epoch" if build.is_none() => build = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Release {
            version: version?,
            build: build.unwrap_or(0),
        })
    }
}

impl PartialOrd for Release {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Release {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts()
            .cmp(&other.parts())
            .then(self.build.cmp(&other.build))
            .then(self.version.cmp(&other.version))
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (build {})", self.version, self.build)
    }
}

/// The root filesystem a bundle carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// What a bundle is: signed together with the payload's checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bundle format ([`FORMAT`]).
    pub format: u32,
    /// Always `outpost`.
    pub name: String,
    /// The release inside.
    pub release: Release,
    /// Board profile (`qemu-virt`, `rpi4`): a bundle installs only on its board.
    pub profile: String,
    /// Kernel release the root filesystem's modules are for (`uname -r`).
    pub kernel: String,
    /// Store schema version of this firmware (informational: the firmware migrates).
    #[serde(default)]
    pub store_schema: u32,
    /// The root filesystem.
    pub rootfs: Payload,
    /// SHA-256 of the image's SBOM (in the root filesystem at /usr/share/outpost/sbom.json).
    #[serde(default)]
    pub sbom_sha256: String,
}

/// Key id of a public key: the first 8 bytes of its SHA-256, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A new signing key from the operating system's random source.
pub fn generate_key() -> SigningKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The secret key file line (keep it off the box, mode 0600).
pub fn secret_key_line(key: &SigningKey, comment: &str) -> String {
    format!(
        "{SECRET_PREFIX} {} {}\n",
        hex::encode(key.to_bytes()),
        comment
    )
}

/// The public key file line (baked into images as /etc/outpost/update-keys/*.pub).
pub fn public_key_line(key: &VerifyingKey, comment: &str) -> String {
    format!(
        "{PUBLIC_PREFIX} {} {}\n",
        hex::encode(key.as_bytes()),
        comment
    )
}

fn key_bytes(text: &str, prefix: &str) -> Result<[u8; 32], BundleError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| BundleError::Key("the file is empty".to_owned()))?;
    let mut words = line.split_whitespace();
    if words.next() != Some(prefix) {
        return Err(BundleError::Key(format!(
            "expected a line starting with {prefix}"
        )));
    }
    let hex_text = words
        .next()
        .ok_or_else(|| BundleError::Key("no key after the prefix".to_owned()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| BundleError::Key("the key is not 64 hex digits".to_owned()))?;
    Ok(out)
}

/// Reads a secret key file's text.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, BundleError> {
    key_bytes(text, SECRET_PREFIX).map(|b| SigningKey::from_bytes(&b))
}

/// Reads a public key file's text.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, BundleError> {
    let bytes = key_bytes(text, PUBLIC_PREFIX)?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| BundleError::Key("not a valid ed25519 public key".to_owned()))
}

fn signed_prefix(manifest_json: &[u8]) -> Result<Vec<u8>, BundleError> {
    let hlen = u32::try_from(manifest_json.len())
        .ok()
        .filter(|&n| n <= MAX_MANIFEST)
        .ok_or(BundleError::ManifestTooLarge(u32::MAX))?;
    let mut v = Vec::with_capacity(12 + manifest_json.len());
    v.extend_from_slice(&MAGIC);
    v.extend_from_slice(&hlen.to_le_bytes());
    v.extend_from_slice(manifest_json);
    Ok(v)
}

/// Writes a bundle: the header signed with `key`, then `payload` copied as it is. The
/// manifest's `rootfs` must already describe the payload (see [`payload_of`]).
pub fn write_bundle<W: Write, R: Read>(
    out: &mut W,
    manifest: &Manifest,
    key: &SigningKey,
    payload: &mut R,
) -> Result<(), BundleError> {
    let json = serde_json::to_vec(manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let head = signed_prefix(&json)?;
    let sig = key.sign(&head);
    out.write_all(&head)?;
    out.write_all(&sig.to_bytes())?;
    let n = std::io::copy(payload, out)?;
    if n != manifest.rootfs.bytes {
        return Err(BundleError::Payload(format!(
            "wrote {n} bytes, the manifest says {}",
            manifest.rootfs.bytes
        )));
    }
    out.flush()?;
    Ok(())
}

/// Length and SHA-256 of a payload (reads it to the end).
pub fn payload_of<R: Read>(r: &mut R) -> Result<Payload, BundleError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Payload {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// A bundle header that passed the signature check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed manifest.
    pub manifest: Manifest,
    /// Id of the key that signed it.
    pub key_id: String,
}

fn read_exact_or<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), BundleError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BundleError::Truncated(what),
        _ => BundleError::Io(e),
    })
}

/// Reads and verifies the header against the trusted `keys`; afterwards `r` stands at the
/// payload. Nothing of the manifest is trusted (or even parsed) before the signature checks.
pub fn read_header<R: Read>(r: &mut R, keys: &[VerifyingKey]) -> Result<Verified, BundleError> {
    let mut magic = [0u8; 8];
    read_exact_or(r, &mut magic, "magic").map_err(|e| match e {
        BundleError::Truncated(_) => BundleError::NotABundle,
        other => other,
    })?;
    if magic != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let mut len = [0u8; 4];
    read_exact_or(r, &mut len, "manifest length")?;
    let hlen = u32::from_le_bytes(len);
    if hlen > MAX_MANIFEST {
        return Err(BundleError::ManifestTooLarge(hlen));
    }
    let mut json = vec![0u8; hlen as usize];
    read_exact_or(r, &mut json, "manifest")?;
    let mut sig = [0u8; 64];
    read_exact_or(r, &mut sig, "signature")?;
    if keys.is_empty() {
        return Err(BundleError::NoKeys);
    }
    let head = signed_prefix(&json)?;
    let sig = Signature::from_bytes(&sig);
    let key = keys
        .iter()
        .find(|k| k.verify(&head, &sig).is_ok())
        .ok_or(BundleError::BadSignature)?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| BundleError::Manifest(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Format(manifest.format));
    }
    if manifest.rootfs.bytes > MAX_PAYLOAD {
        return Err(BundleError::Payload(format!(
            "{} bytes is more than any slot holds",
            manifest.rootfs.bytes
        )));
    }
    Ok(Verified {
        manifest,
        key_id: key_id(key),
    })
}

/// Copies the payload from `r` (standing after the header) to `out`, at most the signed
/// length, and checks length and SHA-256. `progress` is called with the bytes copied so far.
/// On error, what was written to `out` must not be used.
pub fn copy_payload<R: Read, W: Write>(
    r: &mut R,
    manifest: &Manifest,
    out: &mut W,
    mut progress: impl FnMut(u64),
) -> Result<(), BundleError> {
    let want = manifest.rootfs.bytes;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < want {
        let room = usize::try_from((want - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match r.read(&mut buf[..room]) {
            Ok(0) => {
                return Err(BundleError::Payload(format!(
                    "the file ends after {done} of {want} bytes"
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        done += n as u64;
        progress(done);
    }
    // Anything after the payload means the file is not what was signed.
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(BundleError::Payload(
            "there are bytes after the signed root filesystem".to_owned(),
        ));
    }
    let sum = hex::encode(hasher.finalize());
    if sum != manifest.rootfs.sha256 {
        return Err(BundleError::Payload(format!(
            "SHA-256 is {sum}, the manifest says {}",
            manifest.rootfs.sha256
        )));
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(payload: &[u8]) -> Manifest {
        Manifest {
            format: FORMAT,
            name: "outpost".to_owned(),
            release: Release {
                version: "0.2.0".to_owned(),
                build: 1_700_000_100,
            },
            profile: "qemu-virt".to_owned(),
            kernel: "6.1.0-1-arm64".to_owned(),
            store_schema: 1,
            rootfs: payload_of(&mut &payload[..]).expect("in memory"),
            sbom_sha256: String::new(),
        }
    }

    fn bundle(key: &SigningKey, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_bundle(&mut out, &manifest(payload), key, &mut &payload[..]).expect("write");
        out
    }

    #[test]
    fn a_signed_bundle_round_trips() {
        let key = generate_key();
        let payload = vec![7u8; 200_000];
        let b = bundle(&key, &payload);
        let mut r = &b[..];
        let v = read_header(&mut r, &[key.verifying_key()]).expect("verifies");
        assert_eq!(v.manifest, manifest(&payload));
        assert_eq!(v.key_id, key_id(&key.verifying_key()));
        let mut out = Vec::new();
        let mut last = 0;
        copy_payload(&mut r, &v.manifest, &mut out, |n| last = n).expect("payload");
        assert_eq!(out, payload);
        assert_eq!(last, 200_000);
    }

    #[test]
    fn another_key_or_a_changed_manifest_is_a_bad_signature() {
        let key = generate_key();
        let other = generate_key();
        let b = bundle(&key, b"root");
        let err = read_header(&mut &b[..], &[other.verifying_key()]).expect_err("untrusted");
        assert!(matches!(err, BundleError::BadSignature), "{err}");
        // Change one manifest byte ("qemu-virt" -> "qemu-virX").
        let mut changed = b.clone();
        let at = changed
            .windows(9)
            .position(|w| w == b"qemu-virt")
            .expect("profile in the manifest");
        changed[at + 8] = b'X';
        let err = read_header(&mut &changed[..], &[key.verifying_key()]).expect_err("changed");
        assert!(matches!(err, BundleError::BadSignature), "{err}");
        assert!(matches!(
            read_header(&mut &b[..], &[]).expect_err("no keys"),
            BundleError::NoKeys
        ));
    }

    #[test]
    fn a_changed_or_truncated_or_extended_payload_is_refused() {
        let key = generate_key();
        let keys = [key.verifying_key()];
        let payload = vec![1u8; 10_000];
        let good = bundle(&key, &payload);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut short = good.clone();
        short.truncate(good.len() - 10);
        let mut long = good.clone();
        long.push(0);
        for (name, b) in [("flipped", flipped), ("short", short), ("long", long)] {
            let mut r = &b[..];
            let v = read_header(&mut r, &keys).expect("header is intact");
            let err =
                copy_payload(&mut r, &v.manifest, &mut std::io::sink(), |_| {}).expect_err(name);
            assert!(matches!(err, BundleError::Payload(_)), "{name}: {err}");
        }
    }

    #[test]
    fn hostile_headers_are_refused_without_allocating() {
        let keys = [generate_key().verifying_key()];
        assert!(matches!(
            read_header(&mut &b"GIF89a.."[..], &keys).expect_err("magic"),
            BundleError::NotABundle
        ));
        assert!(matches!(
            read_header(&mut &b"OPB"[..], &keys).expect_err("short"),
            BundleError::NotABundle
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_header(&mut &huge[..], &keys).expect_err("huge"),
            BundleError::ManifestTooLarge(_)
        ));
        let mut cut = MAGIC.to_vec();
        cut.extend_from_slice(&100u32.to_le_bytes());
        cut.extend_from_slice(b"{\"format\"");
        assert!(matches!(
            read_header(&mut &cut[..], &keys).expect_err("cut"),
            BundleError::Truncated(_)
        ));
    }

    #[test]
    fn keys_round_trip_through_their_text_lines() {
        let key = generate_key();
        let secret = parse_secret_key(&secret_key_line(&key, "release")).expect("secret");
        assert_eq!(secret.to_bytes(), key.to_bytes());
        let public =
            parse_public_key(&public_key_line(&key.verifying_key(), "release")).expect("public");
        assert_eq!(public, key.verifying_key());
        assert!(parse_public_key("ssh-ed25519 AAAA").is_err());
        assert!(parse_public_key("outpost-update-public 12").is_err());
        assert!(parse_secret_key("").is_err());
    }

    #[test]
    fn releases_order_by_version_then_build() {
        let r = |v: &str, b| Release {
            version: v.to_owned(),
            build: b,
        };
        assert!(r("0.1.0", 5) < r("0.1.0", 6));
        assert!(r("0.1.9", 9) < r("0.1.10", 1));
        assert!(r("1.0.0", 1) > r("0.99.99", 99));
        assert_eq!(
            Release::from_release_file("version=0.1.0\nprofile=qemu-virt\nbuild=42\n"),
            Some(r("0.1.0", 42))
        );
        assert_eq!(
            Release::from_release_file("version=0.1.0\nsource_date_epoch=7\n"),
            Some(r("0.1.0", 7))
        );
        assert_eq!(Release::from_release_file("profile=x\n"), None);
    }
}
