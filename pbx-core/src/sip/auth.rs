//! SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760): MD5 and SHA-256.
//!
//! Server side: [`Authenticator`] issues challenges and verifies credentials. Nonces are
//! stateless and self-validating (issue time ‖ random ‖ truncated HMAC-SHA256 under a
//! secret key), so issuing a challenge costs no memory; only nonces that passed a full
//! verification are remembered, in a bounded map, to refuse replays.
//!
//! Client side: [`answer_challenge`] answers a `WWW-Authenticate` / `Proxy-Authenticate`
//! value, for registering to and calling through trunks.
//!
//! Nothing in this module logs: a response, an HA1 or a password must never reach a log,
//! and the verdict is returned to the caller, who decides what to count and report.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Millis;

/// Longest `Authorization` / `WWW-Authenticate` value accepted, in bytes.
const MAX_HEADER_LEN: usize = 4096;
/// Most auth-params accepted in one header value, known or not.
const MAX_PARAMS: usize = 32;
/// Raw nonce layout: issue time (8) ‖ random (8) ‖ truncated HMAC (16).
const NONCE_RAW_LEN: usize = 32;
/// Length of the raw nonce in unpadded base64url.
const NONCE_TEXT_LEN: usize = 43;
/// Bytes of HMAC-SHA256 kept in a nonce.
const NONCE_TAG_LEN: usize = 16;

/// The digest hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// MD5 (RFC 2617 / RFC 3261), what most phones still speak.
    Md5,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token used in the `algorithm` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Maps an `algorithm` token; the `-sess` variants and unknown names are unsupported.
    fn from_token(token: &str) -> Result<Algorithm, AuthError> {
        if token.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(AuthError::UnsupportedAlgorithm)
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest header was rejected or credentials did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The header value is not a well-formed Digest header; the text says what is wrong.
    #[error("malformed digest header: {0}")]
    Malformed(&'static str),
    /// The credentials name a realm other than ours.
    #[error("realm does not match")]
    WrongRealm,
    /// The nonce was not issued by us (garbled, forged, or from another key or realm).
    #[error("nonce was not issued by this server")]
    InvalidNonce,
    /// The credentials are right but the nonce has expired; challenge again with stale=true.
    #[error("nonce has expired")]
    Stale,
    /// The nonce (and nonce count) was already used.
    #[error("nonce count replayed")]
    Replay,
    /// The response does not match: wrong password or unknown user.
    #[error("digest response does not match")]
    BadResponse,
    /// The algorithm is neither MD5 nor SHA-256.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// The qop is not "auth".
    #[error("unsupported qop")]
    UnsupportedQop,
}

/// HA1 = H(user:realm:password) as lowercase hex.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    hash_hex(alg, &[user, realm, password])
}

/// The per-user secret as stored: HA1 for both algorithms, never the password itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// HA1 under MD5, lowercase hex.
    pub ha1_md5: String,
    /// HA1 under SHA-256, lowercase hex.
    pub ha1_sha256: String,
}

impl StoredSecret {
    /// Derives both HA1 values from a password.
    pub fn new(user: &str, realm: &str, password: &str) -> Self {
        StoredSecret {
            ha1_md5: ha1(Algorithm::Md5, user, realm, password),
            ha1_sha256: ha1(Algorithm::Sha256, user, realm, password),
        }
    }

    /// The HA1 for `alg`.
    pub fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }
}

// An HA1 is password-equivalent for this realm, so Debug output (which ends up in logs)
// shows only that it is there.
impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("ha1_md5", &"<redacted>")
            .field("ha1_sha256", &"<redacted>")
            .finish()
    }
}

/// The parameters of an `Authorization` / `Proxy-Authorization` Digest header.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    /// The user name (unescaped).
    pub username: String,
    /// The realm the client answered.
    pub realm: String,
    /// The nonce from our challenge.
    pub nonce: String,
    /// The digest-uri; the caller checks it against the Request-URI.
    pub uri: String,
    /// The response hash, hex.
    pub response: String,
    /// The algorithm; MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// The client nonce (required with qop).
    pub cnonce: Option<String>,
    /// The quality of protection, as sent.
    pub qop: Option<String>,
    /// The nonce count (required with qop).
    pub nc: Option<u32>,
    /// The opaque value echoed from the challenge.
    pub opaque: Option<String>,
}

// The response is a password-derived value; keep it out of logs.
impl fmt::Debug for DigestCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestCredentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("uri", &self.uri)
            .field("response", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .field("cnonce", &self.cnonce)
            .field("qop", &self.qop)
            .field("nc", &self.nc)
            .field("opaque", &self.opaque)
            .finish()
    }
}

/// Parses a `Digest k=v, k="v", ...` credentials value.
///
/// Bounded: at most 4 KiB and 32 parameters. Unknown parameters are ignored; a repeated
/// known parameter is an error. `nc` must be exactly 8 hex digits.
pub fn parse_credentials(header_value: &str) -> Result<DigestCredentials, AuthError> {
    let f = DigestFields::parse(header_value)?;
    let algorithm = match &f.algorithm {
        None => Algorithm::Md5,
        Some(token) => Algorithm::from_token(token)?,
    };
    let nc = match &f.nc {
        None => None,
        Some(v) => Some(parse_nc(v)?),
    };
    let creds = DigestCredentials {
        username: f.username.ok_or(AuthError::Malformed("missing username"))?,
        realm: f.realm.ok_or(AuthError::Malformed("missing realm"))?,
        nonce: f.nonce.ok_or(AuthError::Malformed("missing nonce"))?,
        uri: f.uri.ok_or(AuthError::Malformed("missing uri"))?,
        response: f.response.ok_or(AuthError::Malformed("missing response"))?,
        algorithm,
        cnonce: f.cnonce,
        qop: f.qop,
        nc,
        opaque: f.opaque,
    };
    if creds.qop.is_some() && (creds.nc.is_none() || creds.cnonce.is_none()) {
        return Err(AuthError::Malformed("qop without nc or cnonce"));
    }
    Ok(creds)
}

/// Lifetime and replay-tracking bounds for server nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NonceConfig {
    /// How long a nonce is accepted after it was issued, in milliseconds.
    pub lifetime_ms: u64,
    /// Most nonces remembered for replay protection.
    pub max_tracked: usize,
}

impl Default for NonceConfig {
    fn default() -> Self {
        NonceConfig {
            lifetime_ms: 300_000,
            max_tracked: 100_000,
        }
    }
}

/// A used nonce as remembered: (issue time, raw nonce bytes). Ordering by issue time is
/// ordering by expiry, since every nonce lives equally long.
type NonceKey = (Millis, [u8; NONCE_RAW_LEN]);

/// Issues digest challenges for one realm and verifies the answers.
pub struct Authenticator {
    realm: String,
    /// HMAC keyed with the secret, cloned per use so the key schedule runs once.
    mac: Hmac<Sha256>,
    opaque: String,
    rng: StdRng,
    cfg: NonceConfig,
    /// Verified nonces → highest nonce count seen (`u32::MAX` for a spent qop-less nonce).
    used: BTreeMap<NonceKey, u32>,
    /// Largest key evicted for room. An untracked nonce at or below it may have been used
    /// already, so it is answered `Stale` (the client retries with a fresh nonce) instead of
    /// being accepted again.
    evicted_through: Option<NonceKey>,
    /// Algorithms offered, most preferred first.
    algorithms: Vec<Algorithm>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("cfg", &self.cfg)
            .field("tracked", &self.used.len())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Creates an authenticator for `realm` with a secret nonce `key` and an RNG `seed`.
    pub fn new(realm: &str, key: [u8; 32], seed: u64, cfg: NonceConfig) -> Self {
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC accepts keys of any length");
        // Opaque is constant per key and realm: clients echo it, it carries no state, and
        // deriving it from the key keeps it stable across restarts without revealing anything.
        let mut opaque_mac = mac.clone();
        opaque_mac.update(b"outpost-opaque:");
        opaque_mac.update(realm.as_bytes());
        let opaque = hex::encode(&opaque_mac.finalize().into_bytes()[..16]);
        Authenticator {
            realm: realm.to_owned(),
            mac,
            opaque,
            rng: StdRng::seed_from_u64(seed),
            cfg,
            used: BTreeMap::new(),
            evicted_through: None,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// Sets the algorithms offered, most preferred first (RFC 8760 §2.4); answers with an
    /// algorithm not in the list are refused. An empty list keeps the current one.
    ///
    /// SHA-256 first is the RFC's order; some clients (SIPp 3.6, older phones) take the first
    /// challenge whatever it is, and need MD5 first.
    pub fn set_algorithms(&mut self, algorithms: &[Algorithm]) {
        if !algorithms.is_empty() {
            let mut list: Vec<Algorithm> = Vec::new();
            for alg in algorithms {
                if !list.contains(alg) {
                    list.push(*alg);
                }
            }
            self.algorithms = list;
        }
    }

    /// The realm this authenticator challenges for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Header values for WWW-Authenticate / Proxy-Authenticate: SHA-256 first, then MD5
    /// (RFC 8760 §2.4), each with realm, fresh nonce, opaque, qop="auth", algorithm, and
    /// `stale=true` when `stale`.
    pub fn challenge(&mut self, now: Millis, stale: bool) -> Vec<String> {
        let algorithms = self.algorithms.clone();
        self.challenge_with(now, stale, &algorithms)
    }

    /// The algorithms offered by [`Authenticator::challenge`], most preferred first.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Like [`Authenticator::challenge`], offering `algorithms` (in that order) instead of
    /// the configured list; an empty list offers the configured one.
    pub fn challenge_with(
        &mut self,
        now: Millis,
        stale: bool,
        algorithms: &[Algorithm],
    ) -> Vec<String> {
        let algorithms = if algorithms.is_empty() {
            self.algorithms.clone()
        } else {
            algorithms.to_vec()
        };
        algorithms
            .into_iter()
            .map(|alg| {
                let nonce = self.issue_nonce(now);
                let mut v = format!(
                    "Digest realm={}, nonce=\"{nonce}\", opaque=\"{}\", qop=\"auth\", algorithm={alg}",
                    quote(&self.realm),
                    self.opaque
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Checks `creds` for a request with `method` (e.g. "REGISTER"); `ha1` is the stored HA1
    /// for creds.algorithm — the caller passes a dummy HA1 for unknown users so the work and
    /// answer are identical.
    ///
    /// Order of checks: realm, qop, nonce authenticity, response, nonce age, replay. A stale
    /// nonce is reported only when the response is right (RFC 7616 §3.4.5). The nonce is
    /// remembered only after everything passed, so failures cost no memory.
    pub fn verify(
        &mut self,
        now: Millis,
        creds: &DigestCredentials,
        method: &str,
        ha1: &str,
    ) -> Result<(), AuthError> {
        let algorithms = self.algorithms.clone();
        self.verify_with(now, creds, method, ha1, &algorithms)
    }

    /// Like [`Authenticator::verify`], accepting the algorithms in `allowed` instead of the
    /// configured list (an extension's own choice, see [`DigestChoice`]).
    pub fn verify_with(
        &mut self,
        now: Millis,
        creds: &DigestCredentials,
        method: &str,
        ha1: &str,
        allowed: &[Algorithm],
    ) -> Result<(), AuthError> {
        if creds.realm != self.realm {
            return Err(AuthError::WrongRealm);
        }
        if !allowed.contains(&creds.algorithm) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let qop = match creds.qop.as_deref() {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = creds.nc.ok_or(AuthError::Malformed("qop without nc"))?;
                let cnonce = creds
                    .cnonce
                    .as_deref()
                    .ok_or(AuthError::Malformed("qop without cnonce"))?;
                Some(Qop { qop: q, nc, cnonce })
            }
            Some(_) => return Err(AuthError::UnsupportedQop),
        };
        let key = self
            .open_nonce(&creds.nonce)
            .ok_or(AuthError::InvalidNonce)?;

        let expected = compute_response(
            creds.algorithm,
            ha1,
            &creds.nonce,
            method,
            &creds.uri,
            qop.as_ref(),
        );
        if !hex_eq_ct(&expected, &creds.response) {
            return Err(AuthError::BadResponse);
        }

        let issued = key.0;
        let lifetime = self.cfg.lifetime_ms;
        // A nonce from the future can only come from our own earlier run with a clock ahead;
        // treat one beyond a lifetime ahead as stale rather than valid for an unknown time.
        if now.saturating_sub(issued) > lifetime || issued > now.saturating_add(lifetime) {
            return Err(AuthError::Stale);
        }

        self.prune(now);
        let count = match qop {
            Some(q) => q.nc,
            None => u32::MAX,
        };
        match self.used.get(&key) {
            Some(&highest) => {
                if qop.is_none() || count <= highest {
                    return Err(AuthError::Replay);
                }
            }
            None => {
                if self.evicted_through.is_some_and(|w| key <= w) {
                    return Err(AuthError::Stale);
                }
            }
        }
        self.used.insert(key, count);
        while self.used.len() > self.cfg.max_tracked {
            let Some((evicted, _)) = self.used.pop_first() else {
                break;
            };
            if self.evicted_through.is_none_or(|w| evicted > w) {
                self.evicted_through = Some(evicted);
            }
        }
        Ok(())
    }

    /// Checks only that `nonce` is ours and still fresh at `now`, without any password:
    /// `InvalidNonce` or `Stale`. For answers that must not depend on the password (an
    /// un-REGISTER from a source an account lock refuses).
    pub fn check_nonce(&self, now: Millis, nonce: &str) -> Result<(), AuthError> {
        let (issued, _) = self.open_nonce(nonce).ok_or(AuthError::InvalidNonce)?;
        let lifetime = self.cfg.lifetime_ms;
        if now.saturating_sub(issued) > lifetime || issued > now.saturating_add(lifetime) {
            return Err(AuthError::Stale);
        }
        Ok(())
    }

    /// Number of nonces currently tracked for replay protection (for metrics/tests).
    pub fn tracked(&self) -> usize {
        self.used.len()
    }

    /// Makes a nonce: base64url(issue ms BE ‖ 8 random bytes ‖ HMAC(issue ‖ random ‖ realm)[..16]).
    fn issue_nonce(&mut self, now: Millis) -> String {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..8].copy_from_slice(&now.to_be_bytes());
        self.rng.fill_bytes(&mut raw[8..16]);
        let tag = self.nonce_mac(&raw[..16]).finalize().into_bytes();
        raw[16..].copy_from_slice(&tag[..NONCE_TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Authenticates a nonce and returns its replay key, or `None` if we did not issue it.
    fn open_nonce(&self, nonce: &str) -> Option<NonceKey> {
        if nonce.len() != NONCE_TEXT_LEN {
            return None;
        }
        let decoded = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        let raw: [u8; NONCE_RAW_LEN] = decoded.try_into().ok()?;
        // Constant-time comparison of the truncated tag.
        self.nonce_mac(&raw[..16])
            .verify_truncated_left(&raw[16..])
            .ok()?;
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&raw[..8]);
        Some((u64::from_be_bytes(issued), raw))
    }

    fn nonce_mac(&self, head: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(head);
        mac.update(self.realm.as_bytes());
        mac
    }

    /// Drops remembered nonces that have expired; they are refused as stale anyway.
    fn prune(&mut self, now: Millis) {
        while let Some((&(issued, _), _)) = self.used.first_key_value() {
            if now.saturating_sub(issued) <= self.cfg.lifetime_ms {
                break;
            }
            self.used.pop_first();
        }
    }
}

/// Client side (for trunks): computes an Authorization header value answering `challenge`
/// (a WWW-Authenticate value).
///
/// Uses qop=auth with `cnonce` and `nc` when the challenge offers it, and the RFC 2069 form
/// when it offers no qop at all.
pub fn answer_challenge(
    challenge: &str,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
) -> Result<String, AuthError> {
    let f = DigestFields::parse(challenge)?;
    let realm = f.realm.ok_or(AuthError::Malformed("missing realm"))?;
    let nonce = f.nonce.ok_or(AuthError::Malformed("missing nonce"))?;
    let algorithm = match &f.algorithm {
        None => Algorithm::Md5,
        Some(token) => Algorithm::from_token(token)?,
    };
    let use_qop = match &f.qop {
        None => false,
        Some(list) => {
            if list
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case("auth"))
            {
                true
            } else {
                return Err(AuthError::UnsupportedQop);
            }
        }
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(AuthError::Malformed("method is not a token"));
    }
    if [uri, user, cnonce].iter().any(|s| s.bytes().any(is_ctl)) {
        return Err(AuthError::Malformed("control character in parameter"));
    }
    if use_qop && (cnonce.is_empty() || nc == 0) {
        return Err(AuthError::Malformed("qop needs a cnonce and nc >= 1"));
    }

    let h1 = ha1(algorithm, user, &realm, password);
    let qop = use_qop.then_some(Qop {
        qop: "auth",
        nc,
        cnonce,
    });
    let response = compute_response(algorithm, &h1, &nonce, method, uri, qop.as_ref());
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={algorithm}",
        quote(user),
        quote(&realm),
        quote(&nonce),
        quote(uri),
    );
    if let Some(q) = qop {
        out.push_str(&format!(
            ", cnonce={}, nc={:08x}, qop=auth",
            quote(q.cnonce),
            q.nc
        ));
    }
    if let Some(opaque) = f.opaque {
        out.push_str(&format!(", opaque={}", quote(&opaque)));
    }
    Ok(out)
}

/// The qop=auth inputs to the response.
#[derive(Debug, Clone, Copy)]
struct Qop<'a> {
    qop: &'a str,
    nc: u32,
    cnonce: &'a str,
}

/// response = H(HA1:nonce:nc:cnonce:qop:H(A2)) with qop, H(HA1:nonce:H(A2)) without;
/// A2 = method:uri.
fn compute_response(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<&Qop<'_>>,
) -> String {
    let ha2 = hash_hex(alg, &[method, uri]);
    match qop {
        Some(q) => {
            let nc = format!("{:08x}", q.nc);
            hash_hex(alg, &[ha1, nonce, &nc, q.cnonce, q.qop, &ha2])
        }
        None => hash_hex(alg, &[ha1, nonce, &ha2]),
    }
}

/// H(parts joined by ':') as lowercase hex.
fn hash_hex(alg: Algorithm, parts: &[&str]) -> String {
    fn run<D: Digest>(parts: &[&str]) -> String {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p.as_bytes());
        }
        hex::encode(d.finalize())
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(parts),
        Algorithm::Sha256 => run::<Sha256>(parts),
    }
}

/// Compares our lowercase hex with the client's hex (either case) without an early exit
/// on the first differing byte. The length is not secret.
fn hex_eq_ct(expected: &str, received: &str) -> bool {
    if expected.len() != received.len() {
        return false;
    }
    let diff = expected
        .bytes()
        .zip(received.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()));
    std::hint::black_box(diff) == 0
}

/// Parses `nc`: exactly 8 hex digits.
fn parse_nc(v: &str) -> Result<u32, AuthError> {
    const ERR: AuthError = AuthError::Malformed("nc must be 8 hex digits");
    if v.len() != 8 || !v.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ERR);
    }
    u32::from_str_radix(v, 16).map_err(|_| ERR)
}

/// The known parameters of a Digest challenge or credentials header.
#[derive(Default)]
struct DigestFields {
    username: Option<String>,
    realm: Option<String>,
    nonce: Option<String>,
    uri: Option<String>,
    response: Option<String>,
    algorithm: Option<String>,
    cnonce: Option<String>,
    qop: Option<String>,
    nc: Option<String>,
    opaque: Option<String>,
}

impl DigestFields {
    /// Splits `Digest k=v, ...` into its known parameters; unknown ones are skipped and a
    /// repeated known one is refused, so two parsers can never disagree on which one counts.
    fn parse(header_value: &str) -> Result<DigestFields, AuthError> {
        let mut fields = DigestFields::default();
        for (name, value) in parse_params(header_value)? {
            let slot = match name.as_str() {
                "username" => &mut fields.username,
                "realm" => &mut fields.realm,
                "nonce" => &mut fields.nonce,
                "uri" => &mut fields.uri,
                "response" => &mut fields.response,
                "algorithm" => &mut fields.algorithm,
                "cnonce" => &mut fields.cnonce,
                "qop" => &mut fields.qop,
                "nc" => &mut fields.nc,
                "opaque" => &mut fields.opaque,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(AuthError::Malformed("repeated parameter"));
            }
        }
        Ok(fields)
    }
}

/// Tokenizes `Digest name=token, name="quoted", ...` into (lowercase name, unescaped value).
///
/// Empty list elements and whitespace around `=` and `,` are tolerated (RFC 7230 #rule);
/// unquoted values are taken up to the next comma or whitespace, as real phones put
/// characters outside `token` there.
fn parse_params(header_value: &str) -> Result<Vec<(String, String)>, AuthError> {
    if header_value.len() > MAX_HEADER_LEN {
        return Err(AuthError::Malformed("header value too long"));
    }
    let s = header_value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = match s.find([' ', '\t']) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthError::Malformed("scheme is not Digest"));
    }
    let b = rest.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        if out.len() == MAX_PARAMS {
            return Err(AuthError::Malformed("too many parameters"));
        }
        let start = i;
        while i < b.len() && is_tchar(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(AuthError::Malformed("expected parameter name"));
        }
        let name = utf8(&b[start..i])?.to_ascii_lowercase();
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'=') {
            return Err(AuthError::Malformed("expected '='"));
        }
        i = skip_ws(b, i + 1);
        let value = if b.get(i) == Some(&b'"') {
            let (value, next) = parse_quoted(b, i + 1)?;
            i = next;
            value
        } else {
            let start = i;
            while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t' | b'"') && !is_ctl(b[i]) {
                i += 1;
            }
            if i == start {
                return Err(AuthError::Malformed("empty parameter value"));
            }
            utf8(&b[start..i])?
        };
        out.push((name, value));
        i = skip_ws(b, i);
        match b.get(i) {
            None => break,
            Some(b',') => {}
            Some(_) => return Err(AuthError::Malformed("expected ','")),
        }
    }
    Ok(out)
}

/// Reads a quoted-string body starting after the opening quote; returns the unescaped
/// value and the index after the closing quote.
fn parse_quoted(b: &[u8], mut i: usize) -> Result<(String, usize), AuthError> {
    let mut v = Vec::new();
    loop {
        match b.get(i) {
            None => return Err(AuthError::Malformed("unterminated quoted string")),
            Some(b'"') => return Ok((utf8(&v)?, i + 1)),
            Some(b'\\') => match b.get(i + 1) {
                Some(&c) if c == b'\t' || !is_ctl(c) => {
                    v.push(c);
                    i += 2;
                }
                _ => return Err(AuthError::Malformed("bad escape in quoted string")),
            },
            Some(&c) if c != b'\t' && is_ctl(c) => {
                return Err(AuthError::Malformed("control character in quoted string"))
            }
            Some(&c) => {
                v.push(c);
                i += 1;
            }
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

fn utf8(b: &[u8]) -> Result<String, AuthError> {
    String::from_utf8(b.to_vec()).map_err(|_| AuthError::Malformed("invalid UTF-8"))
}

fn is_ctl(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

/// RFC 7230 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Renders `s` as a quoted-string, escaping `"` and `\`. Control characters are dropped so
/// no value can break out of the header line.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a client needs from a Digest challenge to decide whether to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeInfo {
    /// The realm to answer for.
    pub realm: String,
    /// The server nonce.
    pub nonce: String,
    /// The algorithm; MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// `stale=true`: the previous answer was right but its nonce expired (RFC 7616 §3.3).
    pub stale: bool,
}

/// Parses a `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge value.
///
/// Bounded like [`parse_credentials`]; an unsupported algorithm is an error, so a caller
/// choosing among several challenges can skip the ones it cannot answer.
pub fn parse_challenge(challenge: &str) -> Result<ChallengeInfo, AuthError> {
    let f = DigestFields::parse(challenge)?;
    let algorithm = match &f.algorithm {
        None => Algorithm::Md5,
        Some(token) => Algorithm::from_token(token)?,
    };
    let stale = parse_params(challenge)?
        .iter()
        .any(|(name, value)| name == "stale" && value.eq_ignore_ascii_case("true"));
    Ok(ChallengeInfo {
        realm: f.realm.ok_or(AuthError::Malformed("missing realm"))?,
        nonce: f.nonce.ok_or(AuthError::Malformed("missing nonce"))?,
        algorithm,
        stale,
    })
}

/// The digest algorithms of one extension (`outpostctl ext digest EXT md5|sha256|both`).
///
/// Known and unknown users must get the same answers before they authenticate (docs/threat-model.md:
/// challenge first, look up afterwards), so a choice per extension cannot shape the first
/// challenge: that one always offers the global `[auth] algorithms`, whatever name the
/// request carries. The extension's choice applies to sources that have already
/// authenticated as it (see [`crate::lockout`]): they learn nothing new from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestChoice {
    /// The global `[auth] algorithms`.
    #[default]
    Default,
    /// MD5 only.
    Md5,
    /// SHA-256 only.
    Sha256,
    /// SHA-256, then MD5.
    Both,
}

impl DigestChoice {
    /// The algorithms offered, most preferred first; empty for the global list.
    pub fn algorithms(self) -> &'static [Algorithm] {
        match self {
            DigestChoice::Default => &[],
            DigestChoice::Md5 => &[Algorithm::Md5],
            DigestChoice::Sha256 => &[Algorithm::Sha256],
            DigestChoice::Both => &[Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// The name used by the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestChoice::Default => "default",
            DigestChoice::Md5 => "md5",
            DigestChoice::Sha256 => "sha256",
            DigestChoice::Both => "both",
        }
    }
}

impl std::str::FromStr for DigestChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "default" => Ok(DigestChoice::Default),
            "md5" => Ok(DigestChoice::Md5),
            "sha256" | "sha-256" => Ok(DigestChoice::Sha256),
            "both" => Ok(DigestChoice::Both),
            other => Err(format!(
                "`{}` is not a digest choice: md5, sha256, both or default",
                other.escape_default()
            )),
        }
    }
}

/// Whether the `uri` of digest credentials names the same target as the Request-URI
/// (RFC 7616 §3.4.6, RFC 2617 §3.2.2.5), so credentials cannot be replayed towards another
/// target.
///
/// Compared as RFC 3261 §19.1.4 URIs, with the equivalences phones really produce: the
/// scheme and host compare case-insensitively (IP addresses as addresses, so IPv6 written
/// differently is the same), the user part after %-unescaping, a missing port equals the
/// scheme's default (5060 for `sip:`, 5061 for `sips:`; phones and SBCs add or drop
/// `:5060`), and URI parameters are ignored (`;transport=udp`, `;user=phone` are dropped or
/// reordered by many phones) except `maddr`, which changes the target. `sip:` and `sips:`
/// differ.
pub fn digest_uri_matches(request_uri: &crate::sip::Uri, digest_uri: &str) -> bool {
    let digest_uri = digest_uri.trim();
    let request_text = crate::sip::wire::uri_to_string(request_uri);
    if digest_uri == request_text {
        return true;
    }
    // The scheme is case-insensitive; lower it for the parser.
    let lowered;
    let digest_uri = match digest_uri.split_once(':') {
        Some((scheme, rest)) if scheme.bytes().any(|c| c.is_ascii_uppercase()) => {
            lowered = format!("{}:{rest}", scheme.to_ascii_lowercase());
            lowered.as_str()
        }
        _ => digest_uri,
    };
    let Ok(other) = crate::sip::wire::parse_uri(digest_uri) else {
        return false;
    };
    let sips = |u: &crate::sip::Uri| match &u.scheme {
        Some(rsip::Scheme::Sip) => Some(false),
        Some(rsip::Scheme::Sips) => Some(true),
        // tel: and others: no equivalences beyond case.
        _ => None,
    };
    let (Some(a_sips), Some(b_sips)) = (sips(request_uri), sips(&other)) else {
        return request_text.eq_ignore_ascii_case(&crate::sip::wire::uri_to_string(&other));
    };
    if a_sips != b_sips {
        return false;
    }
    let user = |u: &crate::sip::Uri| u.user().map(percent_decode);
    if user(request_uri) != user(&other) {
        return false;
    }
    let host = |u: &crate::sip::Uri| match u.host() {
        rsip::Host::IpAddr(ip) => ip.to_canonical().to_string(),
        rsip::Host::Domain(d) => {
            let text = d.to_string();
            let bare = text.trim_matches(['[', ']']);
            match bare.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.to_canonical().to_string(),
                Err(_) => text.trim_end_matches('.').to_ascii_lowercase(),
            }
        }
    };
    if host(request_uri) != host(&other) {
        return false;
    }
    let default_port = if a_sips { 5061 } else { 5060 };
    let port = |u: &crate::sip::Uri| {
        u.port()
            .and_then(|p| p.to_string().parse::<u16>().ok())
            .unwrap_or(default_port)
    };
    if port(request_uri) != port(&other) {
        return false;
    }
    let maddr = |u: &crate::sip::Uri| {
        u.params.iter().find_map(|p| match p {
            rsip::Param::Maddr(m) => Some(m.to_string().to_ascii_lowercase()),
            _ => None,
        })
    };
    maddr(request_uri) == maddr(&other)
}

/// `%XX` escapes decoded (RFC 3261 §19.1.4: escaped and unescaped characters are equal).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_700_000_000_000;
    const KEY: [u8; 32] = [7u8; 32];
    const REALM: &str = "pbx.example.com";

    fn auth() -> Authenticator {
        Authenticator::new(REALM, KEY, 42, NonceConfig::default())
    }

    /// Answers the challenge for `alg` with the given password and returns parsed credentials.
    fn answer(
        a: &mut Authenticator,
        now: Millis,
        alg: Algorithm,
        password: &str,
        nc: u32,
    ) -> DigestCredentials {
        let challenges = a.challenge(now, false);
        let ch = challenges
            .iter()
            .find(|c| c.ends_with(&format!("algorithm={alg}")))
            .expect("a challenge for each algorithm");
        let header = answer_challenge(
            ch,
            "REGISTER",
            "sip:pbx.example.com",
            "alice",
            password,
            "c0ffee",
            nc,
        )
        .expect("our own challenge is answerable");
        parse_credentials(&header).expect("our own answer parses")
    }

    fn ha1_for(alg: Algorithm, password: &str) -> String {
        ha1(alg, "alice", REALM, password)
    }

    #[test]
    fn rfc7616_md5_example() {
        let h1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert_eq!(h1, "3d78807defe7de2157e2b0b6573a855f");
        let q = Qop {
            qop: "auth",
            nc: 1,
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        };
        let r = compute_response(
            Algorithm::Md5,
            &h1,
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "GET",
            "/dir/index.html",
            Some(&q),
        );
        assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_sha256_example() {
        let h1 = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let q = Qop {
            qop: "auth",
            nc: 1,
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        };
        let r = compute_response(
            Algorithm::Sha256,
            &h1,
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "GET",
            "/dir/index.html",
            Some(&q),
        );
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn rfc2617_example() {
        let h1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let q = Qop {
            qop: "auth",
            nc: 1,
            cnonce: "0a4f113b",
        };
        let r = compute_response(
            Algorithm::Md5,
            &h1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "GET",
            "/dir/index.html",
            Some(&q),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn answer_challenge_reproduces_rfc_examples() {
        let ch = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
                  nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let h = answer_challenge(
            ch,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
            1,
        )
        .expect("valid challenge");
        let c = parse_credentials(&h).expect("own output parses");
        assert_eq!(c.response, "6629fae49393a05397450978507c4ef1");
        assert_eq!(
            c.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert_eq!(c.nc, Some(1));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.algorithm, Algorithm::Md5);

        let ch =
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, \
                  nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                  opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let h = answer_challenge(
            ch,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        )
        .expect("valid challenge");
        let c = parse_credentials(&h).expect("own output parses");
        assert_eq!(
            c.response,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(c.algorithm, Algorithm::Sha256);
    }

    #[test]
    fn answer_challenge_without_qop_uses_rfc2069_form() {
        let ch = "Digest realm=\"r\", nonce=\"n\"";
        let h = answer_challenge(ch, "INVITE", "sip:x@y", "u", "p", "cn", 1).expect("valid");
        let c = parse_credentials(&h).expect("parses");
        assert_eq!(c.qop, None);
        assert_eq!(c.nc, None);
        let h1 = ha1(Algorithm::Md5, "u", "r", "p");
        assert_eq!(
            c.response,
            compute_response(Algorithm::Md5, &h1, "n", "INVITE", "sip:x@y", None)
        );
    }

    #[test]
    fn answer_challenge_refuses_bad_challenges_and_inputs() {
        let ok = "Digest realm=\"r\", nonce=\"n\", qop=\"auth\"";
        assert_eq!(
            answer_challenge(
                "Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\"",
                "GET",
                "/",
                "u",
                "p",
                "c",
                1
            ),
            Err(AuthError::UnsupportedQop)
        );
        assert_eq!(
            answer_challenge(
                "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess",
                "GET",
                "/",
                "u",
                "p",
                "c",
                1
            ),
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert!(matches!(
            answer_challenge("Digest nonce=\"n\"", "GET", "/", "u", "p", "c", 1),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            answer_challenge("Basic realm=\"r\"", "GET", "/", "u", "p", "c", 1),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            answer_challenge(ok, "GET", "/", "u\r\nX-Evil: 1", "p", "c", 1),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            answer_challenge(ok, "GET", "/", "u", "p", "c", 0),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            answer_challenge(ok, "GE T", "/", "u", "p", "c", 1),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn quoting_round_trips_through_parser() {
        let ch = "Digest realm=\"r\", nonce=\"n\", qop=auth";
        let h = answer_challenge(ch, "GET", "/", "we\"ird\\name", "p", "c", 1).expect("valid");
        assert_eq!(
            parse_credentials(&h).expect("parses").username,
            "we\"ird\\name"
        );
    }

    #[test]
    fn challenge_offers_sha256_then_md5() {
        let mut a = auth();
        let ch = a.challenge(NOW, false);
        assert_eq!(ch.len(), 2);
        assert!(ch[0].starts_with("Digest realm=\"pbx.example.com\", nonce=\""));
        assert!(ch[0].contains("algorithm=SHA-256"));
        assert!(ch[1].contains("algorithm=MD5"));
        for c in &ch {
            assert!(c.contains("qop=\"auth\""));
            assert!(c.contains("opaque=\""));
            assert!(!c.contains("stale"));
        }
        assert_ne!(ch[0], ch[1], "each header gets a fresh nonce");
        let stale = a.challenge(NOW, true);
        assert!(stale.iter().all(|c| c.ends_with(", stale=true")));
        assert_eq!(a.tracked(), 0, "challenging costs no memory");
    }

    #[test]
    fn round_trip_both_algorithms() {
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let mut a = auth();
            let c = answer(&mut a, NOW, alg, "s3cret", 1);
            assert_eq!(c.algorithm, alg);
            let secret = StoredSecret::new("alice", REALM, "s3cret");
            assert_eq!(
                a.verify(NOW + 1000, &c, "REGISTER", secret.ha1(alg)),
                Ok(())
            );
            assert_eq!(a.tracked(), 1);
        }
    }

    #[test]
    fn wrong_password_or_unknown_user_is_bad_response() {
        let mut a = auth();
        let c = answer(&mut a, NOW, Algorithm::Md5, "guess", 1);
        assert_eq!(
            a.verify(NOW, &c, "REGISTER", &ha1_for(Algorithm::Md5, "s3cret")),
            Err(AuthError::BadResponse)
        );
        // The caller's dummy HA1 for an unknown user gets the same answer.
        assert_eq!(
            a.verify(NOW, &c, "REGISTER", &"0".repeat(32)),
            Err(AuthError::BadResponse)
        );
        // Same credentials for another method do not verify.
        let c = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
        assert_eq!(
            a.verify(NOW, &c, "INVITE", &ha1_for(Algorithm::Md5, "s3cret")),
            Err(AuthError::BadResponse)
        );
        assert_eq!(a.tracked(), 0, "failures are not remembered");
    }

    #[test]
    fn uppercase_response_hex_is_accepted() {
        let mut a = auth();
        let mut c = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
        c.response = c.response.to_ascii_uppercase();
        assert_eq!(
            a.verify(NOW, &c, "REGISTER", &ha1_for(Algorithm::Md5, "s3cret")),
            Ok(())
        );
    }

    #[test]
    fn replayed_nc_is_refused_and_higher_nc_accepted() {
        let mut a = auth();
        let h1 = ha1_for(Algorithm::Sha256, "s3cret");
        let c1 = answer(&mut a, NOW, Algorithm::Sha256, "s3cret", 1);
        assert_eq!(a.verify(NOW, &c1, "REGISTER", &h1), Ok(()));
        assert_eq!(a.verify(NOW, &c1, "REGISTER", &h1), Err(AuthError::Replay));

        // Same nonce, next nonce counts.
        let redo = |nc: u32| {
            let ch = format!(
                "Digest realm=\"{REALM}\", nonce=\"{}\", qop=auth, algorithm=SHA-256",
                c1.nonce
            );
            let h = answer_challenge(
                &ch,
                "REGISTER",
                "sip:pbx.example.com",
                "alice",
                "s3cret",
                "c0ffee",
                nc,
            )
            .expect("valid");
            parse_credentials(&h).expect("parses")
        };
        assert_eq!(a.verify(NOW, &redo(3), "REGISTER", &h1), Ok(()));
        assert_eq!(
            a.verify(NOW, &redo(2), "REGISTER", &h1),
            Err(AuthError::Replay)
        );
        assert_eq!(
            a.verify(NOW, &redo(3), "REGISTER", &h1),
            Err(AuthError::Replay)
        );
        assert_eq!(a.verify(NOW, &redo(4), "REGISTER", &h1), Ok(()));
        assert_eq!(a.tracked(), 1);
    }

    #[test]
    fn nonce_without_qop_is_single_use() {
        let mut a = auth();
        let nonce = a.issue_nonce(NOW);
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        let c = DigestCredentials {
            username: "alice".into(),
            realm: REALM.into(),
            nonce: nonce.clone(),
            uri: "sip:pbx.example.com".into(),
            response: compute_response(
                Algorithm::Md5,
                &h1,
                &nonce,
                "REGISTER",
                "sip:pbx.example.com",
                None,
            ),
            algorithm: Algorithm::Md5,
            cnonce: None,
            qop: None,
            nc: None,
            opaque: None,
        };
        assert_eq!(a.verify(NOW, &c, "REGISTER", &h1), Ok(()));
        assert_eq!(a.verify(NOW, &c, "REGISTER", &h1), Err(AuthError::Replay));
    }

    #[test]
    fn expired_nonce_is_stale_only_with_right_response() {
        let mut a = auth();
        let lifetime = NonceConfig::default().lifetime_ms;
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        let good = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
        let bad = answer(&mut a, NOW, Algorithm::Md5, "wrong", 1);
        assert_eq!(
            a.verify(NOW + lifetime + 1, &good, "REGISTER", &h1),
            Err(AuthError::Stale)
        );
        assert_eq!(
            a.verify(NOW + lifetime + 1, &bad, "REGISTER", &h1),
            Err(AuthError::BadResponse)
        );
        // At exactly the lifetime it is still good.
        assert_eq!(a.verify(NOW + lifetime, &good, "REGISTER", &h1), Ok(()));
        // A nonce claiming to be issued far in the future (clock ran back) is stale.
        let future = answer(&mut a, NOW + 10 * lifetime, Algorithm::Md5, "s3cret", 1);
        assert_eq!(
            a.verify(NOW, &future, "REGISTER", &h1),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn forged_nonces_are_invalid() {
        let mut a = auth();
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        let mut c = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
        let genuine = c.nonce.clone();

        // A nonce from another server key, answered correctly.
        let mut other = Authenticator::new(REALM, [9u8; 32], 42, NonceConfig::default());
        let foreign = answer(&mut other, NOW, Algorithm::Md5, "s3cret", 1);
        assert_eq!(
            a.verify(NOW, &foreign, "REGISTER", &h1),
            Err(AuthError::InvalidNonce)
        );

        // Same key, other realm: nonce is bound to the realm.
        let mut other = Authenticator::new("other.example.com", KEY, 42, NonceConfig::default());
        let mut foreign = answer(&mut other, NOW, Algorithm::Md5, "s3cret", 1);
        foreign.realm = REALM.into();
        assert_eq!(
            a.verify(NOW, &foreign, "REGISTER", &h1),
            Err(AuthError::InvalidNonce)
        );

        // Tampered issue time (trying to extend the lifetime), re-answered correctly.
        let mut raw = URL_SAFE_NO_PAD
            .decode(&genuine)
            .expect("our nonce is base64url");
        raw[7] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(&raw);
        for nonce in [
            tampered.as_str(),
            "",
            "abc",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            &"A".repeat(43),
            &"!".repeat(43),
        ] {
            c.nonce = nonce.to_owned();
            c.response = compute_response(
                Algorithm::Md5,
                &h1,
                nonce,
                "REGISTER",
                &c.uri,
                Some(&Qop {
                    qop: "auth",
                    nc: 1,
                    cnonce: "c0ffee",
                }),
            );
            assert_eq!(
                a.verify(NOW, &c, "REGISTER", &h1),
                Err(AuthError::InvalidNonce),
                "nonce {nonce:?}"
            );
        }
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn wrong_realm_and_qop_are_refused() {
        let mut a = auth();
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        let mut c = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
        c.realm = "evil.example.com".into();
        assert_eq!(
            a.verify(NOW, &c, "REGISTER", &h1),
            Err(AuthError::WrongRealm)
        );
        c.realm = REALM.into();
        c.qop = Some("auth-int".into());
        assert_eq!(
            a.verify(NOW, &c, "REGISTER", &h1),
            Err(AuthError::UnsupportedQop)
        );
        c.qop = Some("auth".into());
        c.nc = None;
        assert!(matches!(
            a.verify(NOW, &c, "REGISTER", &h1),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn tracked_map_is_bounded_and_evicted_nonces_cannot_be_replayed() {
        let cfg = NonceConfig {
            lifetime_ms: 60_000,
            max_tracked: 3,
        };
        let mut a = Authenticator::new(REALM, KEY, 1, cfg);
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        let creds: Vec<_> = (0..5)
            .map(|i| answer(&mut a, NOW + i, Algorithm::Md5, "s3cret", 1))
            .collect();
        for c in &creds {
            assert_eq!(a.verify(NOW + 10, c, "REGISTER", &h1), Ok(()));
            assert!(a.tracked() <= 3);
        }
        assert_eq!(a.tracked(), 3);
        // The oldest two were evicted; replaying them must not succeed.
        assert_eq!(
            a.verify(NOW + 10, &creds[0], "REGISTER", &h1),
            Err(AuthError::Stale)
        );
        assert_eq!(
            a.verify(NOW + 10, &creds[1], "REGISTER", &h1),
            Err(AuthError::Stale)
        );
        assert_eq!(
            a.verify(NOW + 10, &creds[4], "REGISTER", &h1),
            Err(AuthError::Replay)
        );
        // After the lifetime, expired entries are pruned on the next success.
        let later = NOW + 100_000;
        let fresh = answer(&mut a, later, Algorithm::Md5, "s3cret", 1);
        assert_eq!(a.verify(later, &fresh, "REGISTER", &h1), Ok(()));
        assert_eq!(a.tracked(), 1);
    }

    #[test]
    fn zero_capacity_still_refuses_replays() {
        let cfg = NonceConfig {
            lifetime_ms: 60_000,
            max_tracked: 0,
        };
        let mut a = Authenticator::new(REALM, KEY, 1, cfg);
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        let c = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
        assert_eq!(a.verify(NOW, &c, "REGISTER", &h1), Ok(()));
        assert_eq!(a.tracked(), 0);
        assert_eq!(a.verify(NOW, &c, "REGISTER", &h1), Err(AuthError::Stale));
    }

    #[test]
    fn garbage_flood_does_not_grow_the_map() {
        let mut a = auth();
        let h1 = ha1_for(Algorithm::Md5, "s3cret");
        for i in 0..1000u32 {
            let mut c = answer(&mut a, NOW, Algorithm::Md5, "s3cret", 1);
            c.response = format!("{i:032x}");
            assert_eq!(
                a.verify(NOW, &c, "REGISTER", &h1),
                Err(AuthError::BadResponse)
            );
        }
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn parses_rfc2617_header() {
        let c = parse_credentials(
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", qop=auth, \
             nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .expect("RFC example parses");
        assert_eq!(
            c,
            DigestCredentials {
                username: "Mufasa".into(),
                realm: "testrealm@host.com".into(),
                nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
                uri: "/dir/index.html".into(),
                response: "6629fae49393a05397450978507c4ef1".into(),
                algorithm: Algorithm::Md5,
                cnonce: Some("0a4f113b".into()),
                qop: Some("auth".into()),
                nc: Some(1),
                opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
            }
        );
    }

    #[test]
    fn parses_odd_spacing_quoted_commas_and_unknown_params() {
        let c = parse_credentials(
            "  digest   username = \"bo\\\"b\" ,realm=\"a, b\",,  nonce=abc ,uri=\"sip:x,y@z\",\t\
             response=\"ff\", algorithm=sha-256 , userhash=false, qop=\"auth\", nc=0000000a, cnonce=x  ",
        )
        .expect("tolerated");
        assert_eq!(c.username, "bo\"b");
        assert_eq!(c.realm, "a, b");
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.uri, "sip:x,y@z");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.nc, Some(10));
        assert_eq!(c.opaque, None);
    }

    #[test]
    fn parse_rejects_missing_fields_and_bad_values() {
        let base = "username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:a\", response=\"00\"";
        assert!(parse_credentials(&format!("Digest {base}")).is_ok());
        for field in ["username", "realm", "nonce", "uri", "response"] {
            let without: Vec<_> = base.split(", ").filter(|p| !p.starts_with(field)).collect();
            assert!(
                matches!(
                    parse_credentials(&format!("Digest {}", without.join(", "))),
                    Err(AuthError::Malformed(_))
                ),
                "missing {field}"
            );
        }
        let cases = [
            ("qop=auth", "qop without nc/cnonce"),
            ("qop=auth, cnonce=\"c\", nc=1", "short nc"),
            ("qop=auth, cnonce=\"c\", nc=0000000g", "non-hex nc"),
            ("qop=auth, cnonce=\"c\", nc=+0000001", "signed nc"),
            ("qop=auth, cnonce=\"c\", nc=000000001", "long nc"),
            ("realm=\"again\"", "repeated parameter"),
        ];
        for (extra, why) in cases {
            assert!(
                matches!(
                    parse_credentials(&format!("Digest {base}, {extra}")),
                    Err(AuthError::Malformed(_))
                ),
                "{why}"
            );
        }
        for alg in ["MD5-sess", "SHA-256-sess", "SHA-512-256", "md4"] {
            assert_eq!(
                parse_credentials(&format!("Digest {base}, algorithm={alg}")),
                Err(AuthError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        let garbage = [
            "",
            "Digest",
            "Digest ",
            "Basic dXNlcjpwYXNz",
            "Digest username=\"unterminated",
            "Digest =x",
            "Digest username",
            "Digest username=",
            "Digest username=\"a\" realm=\"b\"",
            "Digest username=\"a\\",
            "Digest username=\"a\r\nb\"",
            "Digest username=a\"b",
            "Digest ünïcode=\"x\"",
            "\u{0}\u{1}\u{2}",
        ];
        for g in garbage {
            assert!(parse_credentials(g).is_err(), "{g:?}");
        }
        let big = format!(
            "Digest username=\"{}\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"r\"",
            "a".repeat(10 * 1024)
        );
        assert_eq!(
            parse_credentials(&big),
            Err(AuthError::Malformed("header value too long"))
        );
        let many: Vec<_> = (0..33).map(|i| format!("x{i}=1")).collect();
        assert_eq!(
            parse_credentials(&format!("Digest {}", many.join(","))),
            Err(AuthError::Malformed("too many parameters"))
        );

        // Random bytes, with and without a Digest prefix: only errors or values, never panics.
        let mut rng = StdRng::seed_from_u64(7);
        let alphabet = b"Digest =,\"\\\t\r\nabcnoqp01:@/\x00\x7f\xff";
        for _ in 0..5000 {
            let len = (rng.next_u32() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next_u32() as usize) % alphabet.len()])
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse_credentials(&s);
            let _ = parse_credentials(&format!("Digest {s}"));
            let _ = answer_challenge(&format!("Digest {s}"), "GET", "/", "u", "p", "c", 1);
        }
    }

    #[test]
    fn stored_secret_matches_ha1_and_round_trips() {
        let s = StoredSecret::new("Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(s.ha1(Algorithm::Md5), "3d78807defe7de2157e2b0b6573a855f");
        assert_eq!(
            s.ha1(Algorithm::Sha256),
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(
            serde_json::from_str::<StoredSecret>(&json).expect("deserializes"),
            s
        );
        let dbg = format!("{s:?}");
        assert!(
            !dbg.contains("3d78807d") && !dbg.contains("7987c64c"),
            "{dbg}"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c =
            parse_credentials("Digest username=u, realm=r, nonce=n, uri=u, response=deadbeefcafe")
                .expect("parses");
        assert!(!format!("{c:?}").contains("deadbeefcafe"));
    }

    #[test]
    fn algorithm_display() {
        assert_eq!(Algorithm::Md5.to_string(), "MD5");
        assert_eq!(Algorithm::Sha256.to_string(), "SHA-256");
    }

    fn uri(s: &str) -> crate::sip::Uri {
        crate::sip::wire::parse_uri(s).expect("a valid URI")
    }

    #[test]
    fn digest_uri_equivalences_phones_produce_match() {
        let r = uri("sip:pbx.example.com");
        for same in [
            "sip:pbx.example.com",
            "SIP:PBX.Example.COM",
            "sip:pbx.example.com:5060",
            "sip:pbx.example.com;transport=udp",
            " sip:pbx.example.com ",
            "SIP:PBX.EXAMPLE.COM:5060;transport=udp",
        ] {
            assert!(digest_uri_matches(&r, same), "{same}");
        }
        let r = uri("sip:pbx.test");
        assert!(digest_uri_matches(&r, "SIP:PBX.TEST:5060;transport=udp"));
        let r = uri("sip:103@10.0.0.1:5060;transport=udp;user=phone");
        for same in [
            "sip:103@10.0.0.1",
            "sip:103@10.0.0.1:5060;user=phone;transport=UDP",
            "sip:%31%303@10.0.0.1",
        ] {
            assert!(digest_uri_matches(&r, same), "{same}");
        }
        let r = uri("sip:[2001:db8::1]:5060");
        assert!(digest_uri_matches(&r, "sip:[2001:DB8:0::1]"));
        let r = uri("sips:pbx.example.com");
        assert!(digest_uri_matches(&r, "sips:pbx.example.com:5061"));
    }

    #[test]
    fn digest_uri_for_another_target_does_not_match() {
        let r = uri("sip:103@10.0.0.1");
        for other in [
            "sip:104@10.0.0.1",
            "sip:103@10.0.0.2",
            "sip:103@10.0.0.1:5070",
            "sips:103@10.0.0.1",
            "sip:103@10.0.0.1;maddr=203.0.113.9",
            "sip:10.0.0.1",
            "tel:103",
            "/dir/index.html",
            "",
            "sip:",
        ] {
            assert!(!digest_uri_matches(&r, other), "{other}");
        }
        // The user part is case-sensitive (RFC 3261 §19.1.4).
        let r = uri("sip:alice@pbx.example.com");
        assert!(!digest_uri_matches(&r, "sip:Alice@pbx.example.com"));
    }

    #[test]
    fn per_extension_algorithms_shape_challenge_and_verification() {
        let mut a = auth();
        a.set_algorithms(&[Algorithm::Md5]);
        let only_md5 = a.challenge(NOW, false);
        assert_eq!(only_md5.len(), 1);
        assert!(only_md5[0].ends_with("algorithm=MD5"));
        let sha = a.challenge_with(NOW, false, DigestChoice::Sha256.algorithms());
        assert_eq!(sha.len(), 1);
        assert!(sha[0].ends_with("algorithm=SHA-256"));
        // The default choice offers the configured list.
        let default = a.challenge_with(NOW, false, DigestChoice::Default.algorithms());
        assert_eq!(default.len(), 1);
        assert!(default[0].ends_with("algorithm=MD5"));
        // A SHA-256 answer is refused where only MD5 is allowed, accepted where SHA-256 is.
        let mut b = auth();
        let creds = answer(&mut b, NOW, Algorithm::Sha256, "pw", 1);
        let h1 = ha1_for(Algorithm::Sha256, "pw");
        assert_eq!(
            b.verify_with(NOW, &creds, "REGISTER", &h1, &[Algorithm::Md5]),
            Err(AuthError::UnsupportedAlgorithm)
        );
        assert_eq!(
            b.verify_with(
                NOW,
                &creds,
                "REGISTER",
                &h1,
                DigestChoice::Both.algorithms()
            ),
            Ok(())
        );
        assert_eq!("SHA-256".parse::<DigestChoice>(), Ok(DigestChoice::Sha256));
        assert!("sha1".parse::<DigestChoice>().is_err());
    }

    #[test]
    fn check_nonce_needs_no_password() {
        let mut a = auth();
        let creds = answer(&mut a, NOW, Algorithm::Md5, "anything", 1);
        assert_eq!(a.check_nonce(NOW + 1, &creds.nonce), Ok(()));
        assert_eq!(
            a.check_nonce(NOW + 300_001, &creds.nonce),
            Err(AuthError::Stale)
        );
        assert_eq!(a.check_nonce(NOW, "forged"), Err(AuthError::InvalidNonce));
    }
}
