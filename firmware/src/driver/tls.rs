//! SIP over TLS (RFC 3261 §26.2): the server identity, the acceptor phones connect to and the
//! connector that reaches trunk servers with full certificate verification.
//!
//! The crypto provider is rustls' `ring` provider (the one rustls itself is tested and
//! audited with). For the static aarch64-musl firmware its C and assembly are compiled by
//! Debian's clang for `aarch64-linux-musl` (`.cargo/config.toml` sets `CC`, `CFLAGS` and
//! `AR` for that target); the link stays rust-lld.
//!
//! Without a configured certificate the daemon makes a self-signed ECDSA P-256 one on first
//! start and keeps it under `<store.data_dir>/tls/`, so the fingerprint that phones pin
//! survives restarts and firmware updates.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// `[tls]` section: SIP over TLS (phones on 5061, trunks that require it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// TLS listeners, e.g. `["0.0.0.0:5061"]`; empty (the default): no TLS listener.
    pub listen: Vec<SocketAddr>,
    /// Server certificate chain (PEM, leaf first); with `key`. Absent: a self-signed
    /// certificate made on first start and kept in `<store.data_dir>/tls/`.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// Extra trusted roots (PEM bundle) for trunk servers, beside the built-in Mozilla roots.
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Checks the `[tls]` keys against each other and against `sip.listen`; an error names
    /// the offending key.
    pub fn check(&self, sip_listen: &[SocketAddr]) -> Result<(), (&'static str, String)> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(("tls.key", "tls.cert is set: set tls.key too".to_owned()))
            }
            (None, Some(_)) => {
                return Err(("tls.cert", "tls.key is set: set tls.cert too".to_owned()))
            }
            _ => {}
        }
        for (key, path) in [
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
            ("tls.ca", &self.ca),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err((key, "must not be empty".to_owned()));
            }
        }
        let mut seen = HashSet::new();
        for addr in &self.listen {
            if !seen.insert(addr) {
                return Err(("tls.listen", format!("{addr} is listed twice")));
            }
            if sip_listen.contains(addr) {
                return Err((
                    "tls.listen",
                    format!("{addr} is also in sip.listen, whose TCP listener holds it"),
                ));
            }
        }
        Ok(())
    }
}

/// Directory under the store's data dir that holds the generated identity.
const GENERATED_DIR: &str = "tls";
/// Name that the generated certificate is issued for (phones pin the fingerprint instead).
const GENERATED_NAME: &str = "outpost";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// rustls refused the certificate, key or settings.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("cannot generate the TLS certificate: {0}")]
    Generate(String),
}

/// A server certificate chain and its private key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 fingerprint of the leaf (colon-separated upper-case hex).
    pub fingerprint: String,
}

impl ServerIdentity {
    /// Loads a PEM chain and a PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
        Ok(ServerIdentity::new(chain, key))
    }

    /// Loads `<dir>/cert.pem` and `<dir>/key.pem`, generating both first when either is
    /// missing (the key file gets mode 0600).
    pub fn load_or_generate(dir: &Path) -> Result<ServerIdentity, TlsError> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        if !(cert.is_file() && key.is_file()) {
            generate_into(dir, &cert, &key)?;
            tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
        }
        ServerIdentity::load(&cert, &key)
    }

    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> ServerIdentity {
        let fingerprint = chain.first().map(fingerprint).unwrap_or_default();
        ServerIdentity {
            chain,
            key,
            fingerprint,
        }
    }
}

/// The box's server identity: `[tls] cert`/`key` when set, else the self-signed one under
/// `<data_dir>/tls/` (made on first use). SIP over TLS and the web page present it.
pub fn box_identity(cfg: &TlsConfig, data_dir: &Path) -> Result<ServerIdentity, TlsError> {
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => ServerIdentity::load(cert, key),
        _ => ServerIdentity::load_or_generate(&data_dir.join(GENERATED_DIR)),
    }
}

/// The TLS side of the transports: always a client (for trunks), a server when listening.
#[derive(Clone)]
pub struct TlsContext {
    acceptor: Option<TlsAcceptor>,
    connector: TlsConnector,
    fingerprint: Option<String>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("server", &self.acceptor.is_some())
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl TlsContext {
    /// Builds the client side, and the server side when `cfg.listen` is not empty (from
    /// `cfg.cert`/`cfg.key`, else the identity generated under `<data_dir>/tls/`).
    pub fn new(cfg: &TlsConfig, data_dir: &Path) -> Result<TlsContext, TlsError> {
        let client = client_config(cfg.ca.as_deref())?;
        let mut ctx = TlsContext {
            acceptor: None,
            connector: TlsConnector::from(Arc::new(client)),
            fingerprint: None,
        };
        if !cfg.listen.is_empty() {
            let identity = box_identity(cfg, data_dir)?;
            ctx.fingerprint = Some(identity.fingerprint.clone());
            ctx.acceptor = Some(TlsAcceptor::from(Arc::new(server_config(identity)?)));
        }
        Ok(ctx)
    }

    /// SHA-256 fingerprint of the server certificate, when serving.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The acceptor for inbound connections, when serving.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor.clone()
    }

    /// The connector for outbound connections.
    pub fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }
}

/// The process-wide crypto provider (`ring`, see the module documentation).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Server settings: TLS 1.2 and 1.3, no client certificates.
pub fn server_config(identity: ServerIdentity) -> Result<ServerConfig, TlsError> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?)
}

/// Client settings: the Mozilla roots of `webpki-roots` plus every certificate in `ca`.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                reason: format!("unusable CA certificate: {e}"),
            })?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The name a trunk server's certificate must carry: the configured one, else its IP address.
pub fn server_name(addr: SocketAddr, name: Option<&str>) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// SHA-256 fingerprint of a certificate as phones show it (`AB:CD:…`).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// Why a handshake failed, for logs and the call core (e.g. "certificate verify failed:
/// UnknownIssuer").
pub fn handshake_failure(err: &io::Error) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake failed: {err}");
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => {
            let dates = matches!(
                cert,
                CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. }
            );
            let hint = if dates && !crate::timesync::clock_plausible() {
                "; the box's clock is not synchronised yet (NTP): tried again as soon as it is"
            } else {
                ""
            };
            format!(
                "certificate verify failed: {}{hint}",
                certificate_reason(cert)
            )
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

fn certificate_reason(err: &CertificateError) -> String {
    match err {
        CertificateError::NotValidForNameContext { .. } => format!("NotValidForName ({err})"),
        CertificateError::ExpiredContext { .. } => format!("Expired ({err})"),
        CertificateError::NotValidYetContext { .. } => format!("NotValidYet ({err})"),
        other => format!("{other:?}"),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".to_string(),
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, err: rustls_pki_types::pem::Error) -> TlsError {
    match err {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Io {
            path: path.to_path_buf(),
            source,
        },
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no usable PEM block (expected a certificate or private key)".to_string(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// An ECDSA P-256 key that rcgen signs the self-signed certificate with (rcgen's own key
/// types need ring or aws-lc-rs).
struct P256Signer {
    key: p256::ecdsa::SigningKey,
    public: Vec<u8>,
}

impl P256Signer {
    fn new(key: p256::ecdsa::SigningKey) -> P256Signer {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        P256Signer { key, public }
    }
}

impl rcgen::PublicKeyData for P256Signer {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for P256Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: p256::ecdsa::Signature = self.key.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// A self-signed certificate and its key, both PEM.
fn generate() -> Result<(String, String), TlsError> {
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .to_string();
    let signer = P256Signer::new(key);
    let mut params = rcgen::CertificateParams::new(vec![GENERATED_NAME.to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Outpost PBX");
    // 16 random bytes, kept positive (RFC 5280 §4.1.2.2).
    let mut serial: [u8; 16] = rand::Rng::gen(&mut rand::rngs::OsRng);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    // UTCTime's last year: older phones reject GeneralizedTime validity dates.
    params.not_after = rcgen::date_time_ymd(2049, 12, 31);
    let cert = params
        .self_signed(&signer)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((cert.pem(), key_pem))
}

/// Writes a new identity into `dir`: each file to a temporary name, synced, then renamed,
/// so a power cut leaves either the old pair, or a pair that the next start replaces.
fn generate_into(dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let (cert_pem, key_pem) = generate()?;
    let key_tmp = dir.join("key.pem.new");
    let cert_tmp = dir.join("cert.pem.new");
    write_synced(&key_tmp, key_pem.as_bytes(), 0o600).map_err(io_err(&key_tmp))?;
    write_synced(&cert_tmp, cert_pem.as_bytes(), 0o644).map_err(io_err(&cert_tmp))?;
    fs::rename(&key_tmp, key).map_err(io_err(key))?;
    fs::rename(&cert_tmp, cert).map_err(io_err(cert))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_identity_is_kept_with_a_private_key_and_a_stable_fingerprint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls_dir = dir.path().join("tls");
        let first = ServerIdentity::load_or_generate(&tls_dir).expect("generate");
        let mode = fs::metadata(tls_dir.join("key.pem"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(tls_dir.join("cert.pem").is_file());
        let again = ServerIdentity::load_or_generate(&tls_dir).expect("load");
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        // rustls accepts the generated pair.
        server_config(again).expect("usable identity");
    }

    #[test]
    fn a_missing_half_of_the_pair_is_regenerated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = ServerIdentity::load_or_generate(dir.path()).expect("generate");
        fs::remove_file(dir.path().join("key.pem")).expect("remove key");
        let second = ServerIdentity::load_or_generate(dir.path()).expect("regenerate");
        assert_ne!(first.fingerprint, second.fingerprint);
    }

    #[test]
    fn a_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("empty.pem");
        fs::write(&path, "not a certificate\n").expect("write");
        let err = client_config(Some(&path)).expect_err("no certificate");
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }

    #[test]
    fn fingerprint_is_colon_separated_upper_hex_sha256() {
        let cert = CertificateDer::from(b"abc".to_vec());
        assert_eq!(
            fingerprint(&cert),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn server_name_falls_back_to_the_ip_address() {
        let addr: SocketAddr = "192.0.2.7:5061".parse().expect("addr");
        assert_eq!(
            server_name(addr, Some("sip.example.net")),
            ServerName::try_from("sip.example.net").expect("name")
        );
        assert_eq!(
            server_name(addr, None),
            ServerName::IpAddress(addr.ip().into())
        );
    }

    #[test]
    fn handshake_failure_names_the_certificate_problem() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            handshake_failure(&err),
            "certificate verify failed: UnknownIssuer"
        );
        let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(handshake_failure(&plain).starts_with("TLS handshake failed"));
    }
}
