//! Real third-party servers for the end-to-end tests, started on loopback ports and
//! stopped on drop: Debian's nginx (TLS, WebDAV `PUT`/`MOVE`/`DELETE`, Basic auth, static
//! files) and OpenSSH's sshd (`internal-sftp`, key auth only), plus a test PKI (a root CA,
//! an intermediate CA and server certificates, made with rcgen) for nginx's certificates.
//!
//! Both servers need root (sshd for logins, nginx for `user root`); `tests/run-all`
//! installs them (`nginx-light`, `openssh-server`). Every wait is bounded.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{eventually, free_port, run_with_timeout};

const NGINX: &str = "/usr/sbin/nginx";
const SSHD: &str = "/usr/sbin/sshd";
/// Longest a server may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);

/// How long a server certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 2020 to 2099.
    Current,
    /// During 2020 only: expired now.
    Expired,
}

/// A test PKI: a root CA and an intermediate CA it signed; server certificates are
/// issued by the intermediate, so a client must build the chain leaf → intermediate →
/// root from what the server sends and the root it trusts.
pub struct Pki {
    root_pem: String,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    // The issuer holds a private key: not for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// A server certificate on disk: `chain` holds the leaf and the intermediate (PEM, the
/// order nginx sends), `key` its private key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// Leaf then intermediate, PEM.
    pub chain: PathBuf,
    /// The leaf's private key, PEM (mode 0600).
    pub key: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params
}

impl Pki {
    /// A new root `"{name} Root CA"` and intermediate `"{name} Intermediate CA"`.
    pub fn new(name: &str) -> Pki {
        let root_key = KeyPair::generate().expect("root key");
        let root_params = ca_params(&format!("{name} Root CA"));
        let root_cert = root_params
            .self_signed(&root_key)
            .expect("root certificate");
        let root = Issuer::new(root_params, root_key);
        let inter_key = KeyPair::generate().expect("intermediate key");
        let inter_params = ca_params(&format!("{name} Intermediate CA"));
        let inter_cert = inter_params
            .signed_by(&inter_key, &root)
            .expect("intermediate certificate");
        Pki {
            root_pem: root_cert.pem(),
            intermediate_pem: inter_cert.pem(),
            intermediate: Issuer::new(inter_params, inter_key),
        }
    }

    /// The root certificate (PEM): what a client trusts.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses) into
    /// `dir/{file}.pem` and `dir/{file}.key`.
    pub fn server(&self, dir: &Path, file: &str, names: &[&str], validity: Validity) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            });
        }
        let (from, until) = match validity {
            Validity::Current => ((2020, 1, 1), (2099, 1, 1)),
            Validity::Expired => ((2020, 1, 1), (2021, 1, 1)),
        };
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let cert = params
            .signed_by(&key, &self.intermediate)
            .expect("server certificate");
        let chain = dir.join(format!("{file}.pem"));
        let key_path = dir.join(format!("{file}.key"));
        fs::write(&chain, format!("{}{}", cert.pem(), self.intermediate_pem)).expect("chain");
        write_private(&key_path, key.serialize_pem().as_bytes());
        ServerCert {
            chain,
            key: key_path,
        }
    }
}

/// Writes `path` with mode 0600 (keys, passwords).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// One `server` block of an [`Nginx`].
#[derive(Debug, Clone)]
pub struct Site {
    /// Its certificate.
    pub cert: ServerCert,
    /// The directory it serves (and where WebDAV writes go).
    pub root: PathBuf,
    /// WebDAV writes with Basic auth as (user, password); `None`: read-only static files.
    pub dav: Option<(String, String)>,
}

/// Debian's nginx, one process (`master_process off`), each [`Site`] on its own port of
/// 127.0.0.1 over TLS.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    config: PathBuf,
}

impl Nginx {
    /// Starts nginx with `sites` and waits until every port accepts connections.
    pub fn start(sites: &[Site]) -> Nginx {
        crate::require_root("nginx with `user root`");
        assert!(
            Path::new(NGINX).is_file(),
            "the end-to-end HTTPS tests need {NGINX} (apt-get install nginx-light; tests/run-all does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("outpost-nginx-")
            .tempdir()
            .expect("nginx dir");
        let d = dir.path();
        let mut servers = String::new();
        let mut ports = Vec::new();
        for (i, site) in sites.iter().enumerate() {
            let port = free_port();
            ports.push(port);
            let dav = match &site.dav {
                Some((user, password)) => {
                    let users = d.join(format!("users-{i}"));
                    // nginx reads `{PLAIN}` entries (ngx_crypt): no htpasswd tool needed.
                    write_private(&users, format!("{user}:{{PLAIN}}{password}\n").as_bytes());
                    format!(
                        "dav_methods PUT DELETE MOVE;\n      create_full_put_path on;\n      \
                         auth_basic \"outpost test\";\n      auth_basic_user_file {};\n",
                        users.display()
                    )
                }
                None => String::new(),
            };
            servers.push_str(&format!(
                "  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    \
                 ssl_certificate_key {};\n    root {};\n    location / {{\n      {dav}    }}\n  }}\n",
                site.cert.chain.display(),
                site.cert.key.display(),
                site.root.display(),
            ));
        }
        let config = d.join("nginx.conf");
        fs::create_dir_all(d.join("body")).expect("body temp dir");
        fs::write(
            &config,
            format!(
                "daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
                 client_max_body_size 0;\n  default_type application/octet-stream;\n{servers}}}\n",
                d = d.display()
            ),
        )
        .expect("nginx.conf");
        let mut nginx = Nginx {
            child: None,
            dir,
            ports,
            config,
        };
        nginx.spawn();
        nginx
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.dir.path().join("stderr.log")).expect("nginx log");
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&self.config)
            .arg("-p")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nginx");
        self.child = Some(child);
        let ports = self.ports.clone();
        let up = eventually(START_LIMIT, || {
            ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
                .then_some(())
        });
        if up.is_none() {
            let log = self.log();
            self.stop();
            panic!("nginx did not listen within {START_LIMIT:?}:\n{log}");
        }
    }

    /// The address of site `i` (in the order given to [`Nginx::start`]).
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// nginx's error and access logs (for failure messages).
    pub fn log(&self) -> String {
        let mut text = String::new();
        for name in ["stderr.log", "error.log", "access.log"] {
            text.push_str(&format!("--- nginx {name} ---\n"));
            text.push_str(&fs::read_to_string(self.dir.path().join(name)).unwrap_or_default());
        }
        text
    }

    /// The access log lines (`METHOD path status` are in each).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Stops nginx (its ports then refuse connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// OpenSSH's sshd on a loopback port with `internal-sftp`, a throw-away host key, key
/// auth only (root by key), and an authorized_keys file the test writes.
#[derive(Debug)]
pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    host_key: String,
}

impl Sshd {
    /// Starts sshd with `authorized_keys` and waits until it listens.
    pub fn start(authorized_keys: &str) -> Sshd {
        crate::require_root("sshd (root logins by key)");
        assert!(
            Path::new(SSHD).is_file(),
            "the SFTP tests need {SSHD} (apt-get install openssh-server; tests/run-all does)"
        );
        // sshd's privilege separation directory.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("outpost-sshd-")
            .tempdir()
            .expect("sshd dir");
        let d = dir.path();
        fs::create_dir_all(d.join("remote")).expect("remote dir");
        let host = d.join("host_ed25519");
        let out = run_with_timeout(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "sshd", "-f"])
                .arg(&host),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(0), "ssh-keygen failed: {out:?}");
        let host_key = fs::read_to_string(d.join("host_ed25519.pub"))
            .expect("host key")
            .trim()
            .to_owned();
        let port = free_port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
                 Subsystem sftp internal-sftp\n",
                hk = host.display(),
                ak = d.join("authorized_keys").display(),
            ),
        )
        .expect("sshd_config");
        let mut sshd = Sshd {
            child: None,
            dir,
            port,
            host_key,
        };
        sshd.authorize(authorized_keys);
        let log = sshd.dir.path().join("sshd.log");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(sshd.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("spawn sshd");
        sshd.child = Some(child);
        let listening = eventually(START_LIMIT, || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("Server listening on"))
        });
        if listening.is_none() {
            let log = sshd.log();
            sshd.stop();
            panic!("sshd did not start: {log}");
        }
        sshd
    }

    /// Replaces the authorized_keys file (read at each login).
    pub fn authorize(&self, keys: &str) {
        write_private(&self.dir.path().join("authorized_keys"), keys.as_bytes());
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's public host key line (`ssh-ed25519 AAAA... sshd`).
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// The directory uploads go to (an absolute path on the server).
    pub fn remote(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    /// sshd's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Stops sshd.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's chronyd as an NTP server on a loopback port, serving this machine's time
/// (`local stratum 3`) and never steering it (`-x`). `tests/run-all` unpacks the binary
/// into `target/tools/chrony` (the package itself would replace the machine's time service).
#[derive(Debug)]
pub struct Chrony {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Chrony {
    /// The unpacked chronyd.
    pub fn binary() -> PathBuf {
        crate::workspace_root().join("target/tools/chrony/usr/sbin/chronyd")
    }

    /// Serves on 127.0.0.1:`port` (a free one when `None`); panics when it does not answer.
    pub fn start(port: Option<u16>) -> Chrony {
        let binary = Chrony::binary();
        assert!(
            binary.is_file(),
            "{} missing: tests/run-all unpacks Debian's chrony there",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("chrony dir");
        let port = port.unwrap_or_else(free_port);
        let conf = dir.path().join("chrony.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nlocal stratum 3\nallow 127.0.0.1\n\
                 cmdport 0\nbindcmdaddress /\npidfile {d}/chronyd.pid\ndriftfile {d}/drift\n",
                d = dir.path().display()
            ),
        )
        .expect("write chrony.conf");
        let log = fs::File::create(dir.path().join("chronyd.log")).expect("chrony log");
        let child = Command::new(&binary)
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start chronyd");
        let mut server = Chrony { child, dir, port };
        let answered = eventually(START_LIMIT, || server.answers().then_some(()));
        if answered.is_none() {
            let log = server.log();
            server.stop();
            panic!("chronyd does not answer on 127.0.0.1:{port}:\n{log}");
        }
        server
    }

    /// Whether a client-mode NTP packet gets a server answer with a stratum.
    pub fn answers(&self) -> bool {
        let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
        let mut request = [0u8; 48];
        request[0] = 0x23; // LI 0, version 4, mode 3 (client)
        if sock.send_to(&request, ("127.0.0.1", self.port)).is_err() {
            return false;
        }
        let mut buf = [0u8; 128];
        matches!(sock.recv(&mut buf), Ok(n) if n >= 48 && buf[0] & 7 == 4 && buf[1] > 0)
    }

    /// The port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// chronyd's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("chronyd.log")).unwrap_or_default()
    }

    /// Stops it (also on drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        self.stop();
    }
}
