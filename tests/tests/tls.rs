//! SIP over TLS: phones register over a real certificate chain, untrusted certificates are
//! refused, a self-signed certificate is generated once and kept, and garbage after the
//! handshake costs one connection, not the listener.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_tests::{
    challenge_param, digest_authorization, free_port, header_values, json_str, register_request,
    sip_request, status_of, Daemon, DaemonConfig, Transport,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(5);
/// The name the test server certificate is issued for.
const SERVER_NAME: &str = "pbx.outpost.test";

/// A test CA and a server certificate it issued.
struct Pki {
    ca: CertificateDer<'static>,
    server_cert_pem: String,
    server_key_pem: String,
}

fn make_ca(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.der().clone(), Issuer::new(params, key))
}

fn make_pki() -> Pki {
    let (ca, issuer) = make_ca("Outpost Test CA");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    Pki {
        ca,
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

/// A daemon with a TLS listener on a fresh port; `cert` = (cert path, key path) or none.
fn start_tls_daemon(cert: Option<(&Path, &Path)>) -> (Daemon, SocketAddr) {
    let tls_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut toml = format!("[tls]\nlisten = [\"{tls_addr}\"]\n");
    if let Some((cert, key)) = cert {
        toml.push_str(&format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&toml));
    (daemon, tls_addr)
}

/// A daemon serving the certificate of `pki` (files in a temp dir kept alive by the caller).
fn start_with_pki(pki: &Pki, dir: &Path) -> (Daemon, SocketAddr) {
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, &pki.server_cert_pem).expect("write cert");
    std::fs::write(&key, &pki.server_key_pem).expect("write key");
    start_tls_daemon(Some((&cert, &key)))
}

/// Client settings trusting only `roots` (ring: a different implementation than the
/// daemon's RustCrypto provider, so interoperability is tested too).
fn client_config(roots: &[CertificateDer<'static>]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("usable root");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(store)
            .with_no_client_auth();
    Arc::new(config)
}

/// A phone's TLS connection speaking SIP.
struct TlsPhone {
    tls: StreamOwned<ClientConnection, TcpStream>,
    local: SocketAddr,
    buf: Vec<u8>,
}

impl TlsPhone {
    /// Connects and completes the handshake; the error says why it failed.
    fn connect(
        target: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> Result<TlsPhone, String> {
        let mut sock = TcpStream::connect_timeout(&target, WAIT).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        let local = sock.local_addr().map_err(|e| e.to_string())?;
        let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let mut conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok(TlsPhone {
            tls: StreamOwned::new(conn, sock),
            local,
            buf: Vec::new(),
        })
    }

    /// The certificate the daemon presented.
    fn server_certificate(&self) -> CertificateDer<'static> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("the server presented a certificate")
            .clone()
            .into_owned()
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.tls.write_all(bytes).is_ok() && self.tls.flush().is_ok()
    }

    /// The next complete message within `wait`; `None` on timeout or close.
    fn read_message(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(msg) = self.take_message() {
                return Some(msg);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.tls.sock.set_read_timeout(Some(left)).ok()?;
            let mut chunk = [0u8; 8192];
            match self.tls.read(&mut chunk) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `req` and returns the response.
    fn exchange(&mut self, req: &str) -> Option<String> {
        assert!(self.send(req.as_bytes()), "send over TLS");
        self.read_message(WAIT)
    }

    /// True when the daemon ends the connection (close_notify, FIN or reset) within `wait`;
    /// whatever it answers first is kept.
    fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if self.tls.sock.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            let mut chunk = [0u8; 8192];
            match self.tls.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    fn take_message(&mut self) -> Option<String> {
        while self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
        }
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let len = header_values(&head, "Content-Length")
            .first()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if self.buf.len() < end + len {
            return None;
        }
        let msg: Vec<u8> = self.buf.drain(..end + len).collect();
        Some(String::from_utf8_lossy(&msg).into_owned())
    }
}

/// A stream request rewritten for TLS (Via token and Contact transport).
fn over_tls(req: String) -> String {
    req.replace("SIP/2.0/TCP", "SIP/2.0/TLS")
        .replace("transport=tcp", "transport=tls")
}

fn options_over(phone: &mut TlsPhone, target: SocketAddr, call_id: &str) -> Option<u16> {
    let uri = format!("sip:{}", target.ip());
    let req = over_tls(sip_request(
        "OPTIONS",
        &uri,
        Transport::Tcp,
        phone.local,
        call_id,
        "",
    ));
    let resp = phone.exchange(&req)?;
    status_of(resp.as_bytes())
}

/// REGISTER with digest authentication over `phone`; the final status.
fn register_over(
    phone: &mut TlsPhone,
    target: SocketAddr,
    ext: &str,
    password: &str,
) -> (Option<u16>, String) {
    let first = over_tls(register_request(
        target,
        Transport::Tcp,
        phone.local,
        ext,
        "tls-reg@test",
    ));
    let resp = phone.exchange(&first).expect("an answer to REGISTER");
    assert_eq!(status_of(resp.as_bytes()), Some(401), "{resp}");
    let challenge = header_values(&resp, "WWW-Authenticate")
        .into_iter()
        .next()
        .expect("a challenge");
    assert!(
        challenge_param(&challenge, "nonce").is_some(),
        "{challenge}"
    );
    let uri = format!("sip:{}", target.ip());
    let authorization = digest_authorization(&challenge, "REGISTER", &uri, ext, password);
    let second = first
        .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
        .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
        .replace(
            "Content-Length: 0\r\n",
            &format!("Authorization: {authorization}\r\nContent-Length: 0\r\n"),
        );
    let resp = phone
        .exchange(&second)
        .expect("an answer to the credentials");
    (status_of(resp.as_bytes()), resp)
}

/// `AB:CD:…` as the daemon logs it.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprints the daemon logged with its TLS listener, one per start.
fn logged_fingerprints(daemon: &Daemon) -> Vec<String> {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("TLS listener"))
        .filter_map(|l| {
            let rest = &l[l.find("fingerprint=")? + "fingerprint=".len()..];
            Some(rest.split_whitespace().next()?.trim_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn a_phone_trusting_the_ca_registers_with_digest_auth_over_tls() {
    let pki = make_pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, tls_addr) = start_with_pki(&pki, dir.path());
    daemon.add_extension("100", "secret-100");

    let config = client_config(std::slice::from_ref(&pki.ca));
    let mut phone = TlsPhone::connect(tls_addr, config.clone(), SERVER_NAME)
        .unwrap_or_else(|e| panic!("handshake with the CA's certificate: {e}"));
    let (status, text) = register_over(&mut phone, tls_addr, "100", "secret-100");
    assert_eq!(status, Some(200), "{text}");

    let reg = daemon.wait_registered("100", WAIT);
    assert_eq!(json_str(&reg, "transport"), Some("TLS"), "{reg}");
    assert_eq!(
        json_str(&reg, "source"),
        Some(phone.local.to_string().as_str()),
        "{reg}"
    );
    assert_eq!(
        options_over(&mut phone, tls_addr, "tls-opt@test"),
        Some(200),
        "OPTIONS on the same connection"
    );

    // The certificate's IP address SAN serves phones configured with the address.
    let mut by_ip = TlsPhone::connect(tls_addr, config, "127.0.0.1").expect("handshake by IP");
    assert_eq!(
        options_over(&mut by_ip, tls_addr, "tls-opt2@test"),
        Some(200)
    );
}

#[test]
fn a_phone_trusting_another_ca_fails_the_handshake() {
    let pki = make_pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, tls_addr) = start_with_pki(&pki, dir.path());
    let (other_ca, _) = make_ca("Someone Else's CA");

    let err = match TlsPhone::connect(tls_addr, client_config(&[other_ca]), SERVER_NAME) {
        Ok(_) => panic!("a certificate from an untrusted CA was accepted"),
        Err(e) => e,
    };
    assert!(err.contains("UnknownIssuer"), "{err}");
    // A name the certificate does not carry fails too, even with the right CA.
    let ca = client_config(std::slice::from_ref(&pki.ca));
    let err = match TlsPhone::connect(tls_addr, ca.clone(), "other.outpost.test") {
        Ok(_) => panic!("a certificate for another name was accepted"),
        Err(e) => e,
    };
    assert!(err.contains("not valid for name"), "{err}");

    // The failed handshakes cost the daemon nothing.
    let mut phone = TlsPhone::connect(tls_addr, ca, SERVER_NAME).expect("handshake");
    assert_eq!(
        options_over(&mut phone, tls_addr, "after-fail@test"),
        Some(200)
    );
    assert!(daemon.pid().is_some());
}

#[test]
fn without_a_configured_certificate_one_is_generated_once_and_kept() {
    let (mut daemon, tls_addr) = start_tls_daemon(None);
    let tls_dir = daemon.data_dir().join("tls");
    let cert_path = tls_dir.join("cert.pem");
    let key_path = tls_dir.join("key.pem");
    assert!(cert_path.is_file(), "{} missing", cert_path.display());
    let mode = std::fs::metadata(&key_path)
        .expect("key.pem exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key.pem mode {mode:o}");

    // A phone that was handed cert.pem trusts it (issued for the name "outpost").
    let pem = std::fs::read(&cert_path).expect("read cert.pem");
    let generated = CertificateDer::from_pem_slice(&pem).expect("cert.pem holds a certificate");
    let mut phone = TlsPhone::connect(
        tls_addr,
        client_config(std::slice::from_ref(&generated)),
        "outpost",
    )
    .unwrap_or_else(|e| panic!("handshake trusting cert.pem: {e}"));
    let presented = fingerprint(&phone.server_certificate());
    assert_eq!(presented, fingerprint(&generated));
    assert_eq!(logged_fingerprints(&daemon), vec![presented.clone()]);
    assert_eq!(
        options_over(&mut phone, tls_addr, "gen-opt@test"),
        Some(200)
    );
    drop(phone);

    daemon.stop();
    daemon.restart();
    assert_eq!(std::fs::read(&cert_path).expect("cert.pem kept"), pem);
    let phone = TlsPhone::connect(
        tls_addr,
        client_config(std::slice::from_ref(&generated)),
        "outpost",
    )
    .unwrap_or_else(|e| panic!("handshake after restart: {e}"));
    assert_eq!(fingerprint(&phone.server_certificate()), presented);
    // Both starts logged the same fingerprint; only the first made a certificate.
    assert_eq!(
        logged_fingerprints(&daemon),
        vec![presented.clone(), presented]
    );
    assert_eq!(
        daemon
            .log_text()
            .matches("generated a self-signed TLS certificate")
            .count(),
        1
    );
}

#[test]
fn garbage_after_the_handshake_closes_that_connection_only() {
    let pki = make_pki();
    let dir = tempfile::tempdir().expect("temp dir");
    let (_daemon, tls_addr) = start_with_pki(&pki, dir.path());
    let config = client_config(std::slice::from_ref(&pki.ca));

    let mut bad = TlsPhone::connect(tls_addr, config.clone(), SERVER_NAME).expect("handshake");
    assert!(bad.send(b"\x00\xff\xfeGARBAGE \x01\x02 not SIP at all\r\nno: length\r\n\r\n"));
    assert!(
        bad.closed_within(WAIT),
        "the daemon kept a connection whose framing is lost"
    );

    let mut good = TlsPhone::connect(tls_addr, config, SERVER_NAME).expect("handshake");
    assert_eq!(
        options_over(&mut good, tls_addr, "after-garbage@test"),
        Some(200)
    );
}
