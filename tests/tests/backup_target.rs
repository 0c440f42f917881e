//! Off-site backup targets end to end: `firmware::backup::target::upload_with` against a
//! real OpenSSH `sshd` (SFTP, pinned host key, key auth) and against a WebDAV-style HTTPS
//! server run by the test (tokio + rustls, a test CA, Basic auth, PUT/MOVE/DELETE, and
//! PROPFIND/GET for `list_remote` and `fetch`).
//!
//! The SFTP tests REQUIRE root and `sshd` (`openssh-server`; tests/run-all installs it):
//! each sshd runs in its own network namespace on 127.0.0.1:22 with a throw-away host key
//! and an authorized_keys file in the test's temp dir, and lets root in by key only. The
//! upload runs on a thread that joined that namespace, so the `sftp` it starts is there
//! too. Drop guards stop sshd and delete the namespaces; every wait is bounded.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use firmware::backup::target::{
    check, ensure_identity, fetch, identity_path, list_remote, upload_with, HttpsTarget, Retry,
    SftpTarget, TargetConfig, TargetError, TargetKind,
};
use outpost_tests::{eventually, require_root, run_with_timeout, Netns};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SSHD: &str = "/usr/sbin/sshd";
/// Longest an upload in these tests may take, retries included.
const UPLOAD_LIMIT: Duration = Duration::from_secs(60);

/// Short retries: `tries` attempts, `first_ms` then doubling.
fn retry(tries: u32, first_ms: u64) -> Retry {
    Retry {
        tries,
        first_delay: Duration::from_millis(first_ms),
        factor: 2,
        attempt_timeout: Duration::from_secs(30),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Deterministic test data of `len` bytes (not compressible, not all zero).
fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// Runs `make()`'s future on a new thread inside network namespace `ns` (setns moves only
/// that thread; the `sftp` it starts inherits the namespace). Returns the result and how
/// long it took.
fn upload_in<F, T>(ns: &Netns, make: impl FnOnce() -> F + Send) -> (T, Duration)
where
    F: std::future::Future<Output = T>,
    T: Send,
{
    let path = format!("/run/netns/{}", ns.name());
    thread::scope(|s| {
        s.spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            let start = Instant::now();
            let out = runtime().block_on(async {
                tokio::time::timeout(UPLOAD_LIMIT, make())
                    .await
                    .expect("the upload ends within its bound")
            });
            (out, start.elapsed())
        })
        .join()
        .expect("the upload thread does not panic")
    })
}

/// `ssh-keygen` makes an ed25519 pair at `path`; returns the public line.
fn keypair(path: &Path) -> String {
    let out = run_with_timeout(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(path),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "ssh-keygen failed: {out:?}");
    fs::read_to_string(format!("{}.pub", path.display()))
        .expect("public key")
        .trim()
        .to_owned()
}

/// `SHA256:…` of a public key file, as ssh prints it.
fn fingerprint(public: &Path) -> String {
    let out = run_with_timeout(
        Command::new("ssh-keygen").arg("-lf").arg(public),
        Duration::from_secs(10),
    );
    out.stdout
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -l prints the fingerprint")
        .to_owned()
}

/// An OpenSSH server in its own namespace on 127.0.0.1:22, and a client side: a data dir
/// whose default backup key is authorised, and a backup file to send.
struct SftpSite {
    sshd: Option<Child>,
    ns: Netns,
    dir: tempfile::TempDir,
    /// The server's public host key line.
    host_key: String,
}

impl SftpSite {
    /// Prepares everything; sshd is not started yet.
    fn prepare() -> Self {
        require_root("the SFTP backup target tests");
        for tool in [SSHD, "/usr/bin/sftp", "/usr/bin/ssh-keygen"] {
            assert!(
                Path::new(tool).is_file(),
                "the SFTP tests need {tool} (apt-get install openssh-server openssh-client; \
                 tests/run-all does)"
            );
        }
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("outpost-sftp-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("remote")).expect("remote dir");
        fs::create_dir_all(d.join("data")).expect("data dir");
        let host_key = keypair(&d.join("host_ed25519"));
        let config = format!(
            "ListenAddress 127.0.0.1\nPort 22\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             Subsystem sftp internal-sftp\n",
            hk = d.join("host_ed25519").display(),
            ak = d.join("authorized_keys").display(),
        );
        fs::write(d.join("sshd_config"), config).expect("sshd_config");
        fs::write(d.join("authorized_keys"), "").expect("authorized_keys");
        SftpSite {
            sshd: None,
            ns: Netns::create("sftp"),
            dir,
            host_key,
        }
    }

    /// Prepared, with the default client key authorised and sshd listening.
    fn start() -> Self {
        let mut site = SftpSite::prepare();
        let public = site.client_key();
        fs::write(
            site.dir.path().join("authorized_keys"),
            format!("{public}\n"),
        )
        .expect("authorize");
        site.start_sshd();
        site
    }

    /// Starts sshd and waits until it listens.
    fn start_sshd(&mut self) {
        let log = self.dir.path().join("sshd.log");
        let mut child = self
            .ns
            .command(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("spawn sshd");
        let listening = eventually(Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("Server listening on"))
        });
        if listening.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sshd did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.sshd = Some(child);
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    /// The default backup key of the data dir (made on first use); its public line.
    fn client_key(&self) -> String {
        let TargetKind::Sftp(s) = &self.target().kind else {
            unreachable!("an SFTP target")
        };
        let identity = identity_path(s, &self.data_dir());
        runtime()
            .block_on(ensure_identity(&identity))
            .expect("client key")
    }

    fn target(&self) -> TargetConfig {
        TargetConfig {
            name: "offsite".to_owned(),
            kind: TargetKind::Sftp(SftpTarget {
                host: "127.0.0.1".to_owned(),
                port: 22,
                user: "root".to_owned(),
                path: self.remote().display().to_string(),
                host_key: self.host_key.clone(),
                identity: None,
            }),
        }
    }

    /// A backup file of `len` bytes in the data dir.
    fn backup_file(&self, name: &str, len: usize) -> PathBuf {
        let dir = self.data_dir().join("backup");
        fs::create_dir_all(&dir).expect("backup dir");
        let path = dir.join(name);
        fs::write(&path, test_bytes(len, len as u64)).expect("backup file");
        path
    }

    fn upload(
        &self,
        target: &TargetConfig,
        file: &Path,
        retry: Retry,
    ) -> (Result<(), TargetError>, Duration) {
        let data = self.data_dir();
        upload_in(&self.ns, || async move {
            upload_with(target, file, &data, &retry).await
        })
    }

    fn remote_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.remote())
            .expect("remote dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for SftpSite {
    fn drop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn sftp_upload_arrives_byte_identical_under_its_name_and_replaces_an_older_copy() {
    let site = SftpSite::start();
    let target = site.target();
    assert_eq!(check(&target), Ok(()));
    let identity = site.data_dir().join("backup").join("id_ed25519");
    let mode = fs::metadata(&identity)
        .expect("generated key")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the generated private key is private: {mode:o}"
    );

    let file = site.backup_file("outpost-20250102T030000Z.tar.age", 3 << 20);
    let (result, _) = site.upload(&target, &file, retry(1, 100));
    result.expect("upload");
    let name = "outpost-20250102T030000Z.tar.age";
    assert_eq!(
        site.remote_names(),
        vec![name.to_owned()],
        "no partial file is left"
    );
    assert!(
        fs::read(site.remote().join(name)).expect("remote copy") == fs::read(&file).expect("local"),
        "the remote copy is byte-identical"
    );

    // A second upload of the same name (a re-run) replaces the copy atomically.
    fs::write(&file, test_bytes(1000, 7)).expect("rewrite");
    let (result, _) = site.upload(&target, &file, retry(1, 100));
    result.expect("second upload");
    assert_eq!(site.remote_names(), vec![name.to_owned()]);
    assert_eq!(
        fs::read(site.remote().join(name)).expect("remote"),
        test_bytes(1000, 7)
    );
}

#[test]
fn sftp_refuses_a_server_whose_host_key_is_not_the_pinned_one_without_retrying() {
    let site = SftpSite::start();
    let other = keypair(&site.dir.path().join("impostor"));
    let mut target = site.target();
    if let TargetKind::Sftp(s) = &mut target.kind {
        s.host_key = other;
    }
    let file = site.backup_file("outpost-1.age", 4096);
    // Long delays: a retry would show in the elapsed time.
    let (result, elapsed) = site.upload(&target, &file, retry(3, 20_000));
    let err = result.expect_err("an unpinned host key is refused");
    assert!(
        matches!(err, TargetError::HostKeyMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("host key mismatch"), "{text}");
    let presented = fingerprint(&site.dir.path().join("host_ed25519.pub"));
    assert!(
        text.contains(&presented),
        "names the presented key {presented}: {text}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "not retried: {elapsed:?}"
    );
    assert!(site.remote_names().is_empty(), "nothing was written");
}

#[test]
fn sftp_reports_a_refused_key_and_how_to_install_ours() {
    let site = SftpSite::start();
    fs::write(
        site.dir.path().join("authorized_keys"),
        keypair(&site.dir.path().join("someone-else")) + "\n",
    )
    .expect("authorize another key");
    let file = site.backup_file("outpost-2.age", 4096);
    let (result, elapsed) = site.upload(&site.target(), &file, retry(3, 20_000));
    let err = result.expect_err("our key is not authorised");
    assert!(matches!(err, TargetError::AuthFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("id_ed25519.pub"), "{err}");
    assert!(
        elapsed < Duration::from_secs(15),
        "not retried: {elapsed:?}"
    );
}

#[test]
fn sftp_target_down_is_retried_with_back_off_then_reported() {
    let site = SftpSite::prepare();
    site.client_key();
    let file = site.backup_file("outpost-3.age", 4096);
    // 3 tries: waits of 400 ms and 800 ms between them.
    let (result, elapsed) = site.upload(&site.target(), &file, retry(3, 400));
    let err = result.expect_err("nothing listens");
    assert!(matches!(err, TargetError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(
        elapsed >= Duration::from_millis(1200),
        "both waits were made: {elapsed:?}"
    );
}

#[test]
fn sftp_target_that_comes_back_during_the_retries_gets_the_backup() {
    let mut site = SftpSite::prepare();
    let public = site.client_key();
    fs::write(
        site.dir.path().join("authorized_keys"),
        format!("{public}\n"),
    )
    .expect("authorize");
    let file = site.backup_file("outpost-4.age", 100_000);
    let target = site.target();
    let data = site.data_dir();
    let ns_path = site.ns.name().to_owned();
    // The first attempt finds the server down; sshd starts while the upload waits.
    let (result, elapsed) = thread::scope(|s| {
        let uploader = s.spawn(|| {
            let ns = NsRef(ns_path);
            ns.upload(&target, &file, &data, retry(8, 500))
        });
        thread::sleep(Duration::from_millis(1200));
        site.start_sshd();
        uploader.join().expect("upload thread")
    });
    result.expect("the upload succeeds once the server is back");
    assert!(
        elapsed >= Duration::from_millis(1200),
        "the first attempts found the server down: {elapsed:?}"
    );
    assert_eq!(
        fs::read(site.remote().join("outpost-4.age")).expect("remote copy"),
        fs::read(&file).expect("local")
    );
}

/// A namespace by name, for a thread that must not borrow the [`SftpSite`].
struct NsRef(String);

impl NsRef {
    fn upload(
        &self,
        target: &TargetConfig,
        file: &Path,
        data: &Path,
        retry: Retry,
    ) -> (Result<(), TargetError>, Duration) {
        let path = format!("/run/netns/{}", self.0);
        let f = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let start = Instant::now();
        let out = runtime().block_on(upload_with(target, file, data, &retry));
        (out, start.elapsed())
    }
}

#[test]
fn sftp_missing_remote_directory_is_reported() {
    let site = SftpSite::start();
    let mut target = site.target();
    if let TargetKind::Sftp(s) = &mut target.kind {
        s.path = site.remote().join("missing").display().to_string();
    }
    let file = site.backup_file("outpost-5.age", 4096);
    let (result, _) = site.upload(&target, &file, retry(2, 100));
    let err = result.expect_err("no such directory");
    assert!(matches!(err, TargetError::Remote { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("No such file"), "{text}");
    assert!(text.contains("`cd "), "names the failed step: {text}");
}

// ---------------------------------------------------------------------------------------
// HTTPS

const DAV_USER: &str = "branch1";
const DAV_PASSWORD: &str = "correct horse battery staple";

/// A test CA: its certificate (PEM) and issuer.
fn make_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for 127.0.0.1 issued by `issuer`.
fn server_cert(
    issuer: &Issuer<'static, KeyPair>,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, issuer).expect("server certificate");
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A WebDAV-style server on 127.0.0.1: Basic auth, PUT (with `Expect: 100-continue`),
/// MOVE (unless refused with 405), DELETE; files under `root`. Stops on drop.
struct Dav {
    addr: SocketAddr,
    root: tempfile::TempDir,
    /// `METHOD path status` of every request.
    log: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Dav {
    fn start(cert: (CertificateDer<'static>, PrivateKeyDer<'static>), allow_move: bool) -> Dav {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.0], cert.1)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let root = tempfile::tempdir().expect("dav root");
        fs::create_dir_all(root.path().join("dav/backups")).expect("collection");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let files = root.path().to_path_buf();
        let server_log = log.clone();
        let thread = thread::spawn(move || {
            runtime().block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let acceptor = acceptor.clone();
                            let files = files.clone();
                            let log = server_log.clone();
                            tokio::spawn(async move {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    serve(tls, &files, allow_move, &log).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server address");
        Dav {
            addr,
            root,
            log,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root.path().join("dav/backups"))
            .expect("collection")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Dav {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on one connection (the client sends `Connection: close`).
async fn serve<S>(mut io: S, root: &Path, allow_move: bool, log: &Mutex<Vec<String>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 65_536 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let method = request.next().unwrap_or_default().to_owned();
    let path = request.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{DAV_USER}:{DAV_PASSWORD}"))
    );
    let local = |p: &str| {
        assert!(!p.contains(".."), "no traversal in test paths: {p}");
        root.join(p.trim_start_matches('/'))
    };
    let status: (u16, &str) = if headers.get("authorization") != Some(&expected) {
        (401, "Unauthorized")
    } else {
        match method.as_str() {
            "PUT" => {
                let len: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                if headers
                    .get("expect")
                    .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
                {
                    let _ = io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                }
                while body.len() < len {
                    let mut chunk = vec![0u8; 65_536];
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                match fs::write(local(&path), &body[..len]) {
                    Ok(()) => (201, "Created"),
                    Err(_) => (409, "Conflict"),
                }
            }
            "MOVE" if !allow_move => (405, "Method Not Allowed"),
            "MOVE" => {
                let dest = headers
                    .get("destination")
                    .and_then(|d| d.strip_prefix("https://"))
                    .and_then(|d| d.find('/').map(|i| d[i..].to_owned()));
                match dest {
                    Some(dest) if fs::rename(local(&path), local(&dest)).is_ok() => {
                        (201, "Created")
                    }
                    _ => (409, "Conflict"),
                }
            }
            "DELETE" => match fs::remove_file(local(&path)) {
                Ok(()) => (204, "No Content"),
                Err(_) => (404, "Not Found"),
            },
            // A file, sent chunked (as servers do for large bodies).
            "GET" => match fs::read(local(&path)) {
                Ok(bytes) => {
                    log.lock()
                        .expect("log lock")
                        .push(format!("{method} {path} 200"));
                    let mut out =
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                            .to_vec();
                    for piece in bytes.chunks(100_000) {
                        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                        out.extend_from_slice(piece);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    let _ = io.write_all(&out).await;
                    let _ = io.shutdown().await;
                    return;
                }
                Err(_) => (404, "Not Found"),
            },
            // The collection, one level deep, with a Content-Length.
            "PROPFIND" => {
                let dir = local(&path);
                let mut xml = format!(
                    "<?xml version=\"1.0\"?>\n<D:multistatus xmlns:D=\"DAV:\"><D:response><D:href>{path}</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype></D:prop></D:propstat></D:response>"
                );
                for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    xml.push_str(&format!(
                        "<D:response><D:href>{}{}</D:href><D:propstat><D:prop><D:getcontentlength>{len}</D:getcontentlength></D:prop></D:propstat></D:response>",
                        path.trim_end_matches('/').to_owned() + "/",
                        e.file_name().to_string_lossy()
                    ));
                }
                xml.push_str("</D:multistatus>\n");
                log.lock()
                    .expect("log lock")
                    .push(format!("{method} {path} 207"));
                let out = format!(
                    "HTTP/1.1 207 Multi-Status\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                    xml.len()
                );
                let _ = io.write_all(out.as_bytes()).await;
                let _ = io.shutdown().await;
                return;
            }
            _ => (501, "Not Implemented"),
        }
    };
    log.lock()
        .expect("log lock")
        .push(format!("{method} {path} {}", status.0));
    let mut response = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n",
        status.0, status.1
    );
    if status.0 == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"backups\"\r\n");
    }
    response.push_str("\r\n");
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// The HTTPS target's password file, under the data directory.
const PASSWORD_FILE: &str = "secrets/dav.password";

/// A client side for the HTTPS tests: the CA file, a password file, a backup file; its
/// directory is the box's data directory (credential files live under it, in `secrets/`).
struct HttpsClient {
    dir: tempfile::TempDir,
}

impl HttpsClient {
    fn new(ca_pem: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("client dir");
        fs::write(dir.path().join("ca.pem"), ca_pem).expect("ca");
        fs::create_dir_all(dir.path().join("secrets")).expect("secrets dir");
        let pw = dir.path().join(PASSWORD_FILE);
        fs::write(&pw, format!("{password}\n")).expect("password");
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).expect("chmod");
        HttpsClient { dir }
    }

    fn target(&self, dav: &Dav) -> TargetConfig {
        TargetConfig {
            name: "dav".to_owned(),
            kind: TargetKind::Https(HttpsTarget {
                url: format!("https://127.0.0.1:{}/dav/backups", dav.addr.port()),
                username: DAV_USER.to_owned(),
                password_file: self.dir.path().join(PASSWORD_FILE),
                ca: Some(self.dir.path().join("ca.pem")),
            }),
        }
    }

    fn backup_file(&self, name: &str, len: usize) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, test_bytes(len, 99)).expect("backup file");
        path
    }

    fn upload(
        &self,
        target: &TargetConfig,
        file: &Path,
        retry: Retry,
    ) -> (Result<(), TargetError>, Duration) {
        let start = Instant::now();
        let out = runtime().block_on(async {
            tokio::time::timeout(
                UPLOAD_LIMIT,
                upload_with(target, file, self.dir.path(), &retry),
            )
            .await
            .expect("the upload ends within its bound")
        });
        (out, start.elapsed())
    }
}

#[test]
fn https_upload_puts_a_partial_then_moves_it_into_place() {
    let (ca_pem, issuer) = make_ca("Backup Test CA");
    let dav = Dav::start(server_cert(&issuer), true);
    let client = HttpsClient::new(&ca_pem, DAV_PASSWORD);
    let target = client.target(&dav);
    assert_eq!(check(&target), Ok(()));
    // The same target is one `config apply` accepts on this box (its files under the data
    // directory), and not once its password file lies elsewhere.
    let mut section = firmware::backup::BackupConfig {
        targets: vec![target.clone()],
        ..firmware::backup::BackupConfig::default()
    };
    assert_eq!(section.check_on_box(client.dir.path()), Ok(()));
    if let TargetKind::Https(h) = &mut section.targets[0].kind {
        h.password_file = PathBuf::from("/etc/shadow");
    }
    assert_eq!(
        section
            .check_on_box(client.dir.path())
            .map_err(|(key, _)| key),
        Err("backup.targets[0].password_file".to_owned())
    );
    let file = client.backup_file("outpost-20250102T030000Z.tar.age", 3 << 20);
    let (result, _) = client.upload(&target, &file, retry(1, 100));
    result.expect("upload");
    let name = "outpost-20250102T030000Z.tar.age";
    assert_eq!(dav.names(), vec![name.to_owned()], "no partial is left");
    assert!(
        fs::read(dav.root.path().join("dav/backups").join(name)).expect("stored")
            == fs::read(&file).expect("local"),
        "the stored copy is byte-identical"
    );
    assert_eq!(
        dav.log(),
        vec![
            format!("PUT /dav/backups/{name}.partial 201"),
            format!("MOVE /dav/backups/{name}.partial 201"),
        ]
    );
}

#[test]
fn https_server_without_move_gets_a_plain_put_and_the_partial_is_removed() {
    let (ca_pem, issuer) = make_ca("Backup Test CA");
    let dav = Dav::start(server_cert(&issuer), false);
    let client = HttpsClient::new(&ca_pem, DAV_PASSWORD);
    let file = client.backup_file("outpost-7.age", 200_000);
    let (result, _) = client.upload(&client.target(&dav), &file, retry(1, 100));
    result.expect("upload by plain PUT");
    assert_eq!(dav.names(), vec!["outpost-7.age".to_owned()]);
    assert_eq!(
        fs::read(dav.root.path().join("dav/backups/outpost-7.age")).expect("stored"),
        fs::read(&file).expect("local")
    );
    assert_eq!(
        dav.log(),
        vec![
            "PUT /dav/backups/outpost-7.age.partial 201".to_owned(),
            "MOVE /dav/backups/outpost-7.age.partial 405".to_owned(),
            "PUT /dav/backups/outpost-7.age 201".to_owned(),
            "DELETE /dav/backups/outpost-7.age.partial 204".to_owned(),
        ]
    );
}

#[test]
fn https_wrong_password_is_reported_as_401_before_the_body_is_sent() {
    let (ca_pem, issuer) = make_ca("Backup Test CA");
    let dav = Dav::start(server_cert(&issuer), true);
    let client = HttpsClient::new(&ca_pem, "wrong password");
    let file = client.backup_file("outpost-8.age", 1 << 20);
    let (result, elapsed) = client.upload(&client.target(&dav), &file, retry(3, 20_000));
    let err = result.expect_err("refused");
    assert!(matches!(err, TargetError::AuthFailed { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(
        elapsed < Duration::from_secs(15),
        "not retried: {elapsed:?}"
    );
    assert_eq!(
        dav.log(),
        vec!["PUT /dav/backups/outpost-8.age.partial 401".to_owned()]
    );
    assert!(dav.names().is_empty());
}

#[test]
fn https_certificate_from_an_untrusted_issuer_is_refused() {
    let (ca_pem, _trusted) = make_ca("Backup Test CA");
    let (_, rogue) = make_ca("Rogue CA");
    let dav = Dav::start(server_cert(&rogue), true);
    let client = HttpsClient::new(&ca_pem, DAV_PASSWORD);
    let file = client.backup_file("outpost-9.age", 4096);
    let (result, elapsed) = client.upload(&client.target(&dav), &file, retry(3, 20_000));
    let err = result.expect_err("untrusted certificate");
    assert!(matches!(err, TargetError::Tls { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("certificate verify failed: UnknownIssuer"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the server's certificate chain does not lead to the Mozilla roots or /"),
        "the error names the roots it was checked against: {err}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "not retried: {elapsed:?}"
    );
    assert!(dav.log().is_empty(), "no request was sent");
    assert!(dav.names().is_empty());
}

#[test]
fn https_target_down_is_retried_then_reported() {
    let (ca_pem, issuer) = make_ca("Backup Test CA");
    let dav = Dav::start(server_cert(&issuer), true);
    let client = HttpsClient::new(&ca_pem, DAV_PASSWORD);
    let target = client.target(&dav);
    drop(dav);
    let file = client.backup_file("outpost-10.age", 4096);
    let (result, elapsed) = client.upload(&target, &file, retry(3, 300));
    let err = result.expect_err("nothing listens");
    assert!(matches!(err, TargetError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "both waits were made: {elapsed:?}"
    );
}

#[test]
fn https_password_file_readable_by_others_is_refused() {
    let (ca_pem, issuer) = make_ca("Backup Test CA");
    let dav = Dav::start(server_cert(&issuer), true);
    let client = HttpsClient::new(&ca_pem, DAV_PASSWORD);
    let target = client.target(&dav);
    fs::set_permissions(
        client.dir.path().join(PASSWORD_FILE),
        fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let file = client.backup_file("outpost-11.age", 4096);
    let (result, _) = client.upload(&target, &file, retry(1, 100));
    let err = result.expect_err("world-readable password");
    assert!(matches!(err, TargetError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    assert!(dav.log().is_empty());
}

#[test]
fn https_target_lists_with_propfind_and_fetches_with_get() {
    let (ca_pem, issuer) = make_ca("Backup Test CA");
    let dav = Dav::start(server_cert(&issuer), true);
    let client = HttpsClient::new(&ca_pem, DAV_PASSWORD);
    let target = client.target(&dav);
    let names = [
        "outpost-a-20250101T030000Z.backup",
        "outpost-a-20250102T030000Z.backup",
    ];
    for (i, name) in names.iter().enumerate() {
        let file = client.backup_file(name, (1 << 20) + i * 1000 + 7);
        client
            .upload(&target, &file, retry(1, 100))
            .0
            .expect("upload");
    }
    fs::write(dav.root.path().join("dav/backups/notes.txt"), b"x").expect("stray file");
    let data = client.dir.path().to_path_buf();
    let listed = runtime()
        .block_on(list_remote(&target, &data))
        .expect("listing");
    let got: Vec<(String, u64)> = listed.iter().map(|f| (f.name.clone(), f.size)).collect();
    assert_eq!(
        got,
        vec![
            (names[1].to_owned(), (1 << 20) + 1007),
            (names[0].to_owned(), (1 << 20) + 7),
        ],
        "newest first, backups only"
    );
    let dest = data.join("fetched.partial");
    let size = runtime()
        .block_on(fetch(&target, &data, names[1], &dest, 1 << 30))
        .expect("fetch");
    assert_eq!(size, (1 << 20) + 1007);
    assert_eq!(
        fs::read(&dest).expect("fetched"),
        fs::read(dav.root.path().join("dav/backups").join(names[1])).expect("remote"),
        "byte for byte through chunked transfer coding"
    );
    // A bound smaller than the file stops the download.
    let small = data.join("small.partial");
    let err = runtime()
        .block_on(fetch(&target, &data, names[0], &small, 1000))
        .expect_err("too large");
    assert!(err.to_string().contains("larger than 1000 bytes"), "{err}");
    // A missing file is the server's 404.
    let err = runtime()
        .block_on(fetch(
            &target,
            &data,
            "outpost-a-20200101T000000Z.backup",
            &data.join("missing.partial"),
            1 << 30,
        ))
        .expect_err("missing");
    assert!(err.to_string().contains("404"), "{err}");
}
