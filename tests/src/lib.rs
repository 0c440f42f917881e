//! Black-box test support: starts the real `outpostd` on loopback, drives it with
//! `outpostctl`, SIPp scenarios (tests/scenarios/) and raw sockets.
//!
//! The binaries are NOT built here (cargo holds the build lock while tests run): run
//! `cargo build --workspace --bins` first, which `tests/run-all` does.

use std::env;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long a daemon may take from spawn to answering `outpostctl status` and OPTIONS.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// SIPp's own global timeout (`-timeout`) for one scenario run.
pub const SIPP_TIMEOUT_SECS: u32 = 20;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Where `cargo build` put the debug binaries: `$CARGO_TARGET_DIR/debug` or `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    };
    target.join("debug")
}

/// Path of a workspace binary; panics with the command to run when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` (tests/run-all does) before the black-box tests",
        path.display()
    );
    path
}

/// Path of a SIPp scenario in tests/scenarios/.
pub fn scenario(name: &str) -> PathBuf {
    let path = workspace_root().join("tests").join("scenarios").join(name);
    assert!(path.is_file(), "scenario {} missing", path.display());
    path
}

/// True when the loopback interface has ::1 (IPv6 tests run only then).
pub fn has_ipv6_loopback() -> bool {
    if let Ok(out) = Command::new("ip")
        .args(["-6", "addr", "show", "lo"])
        .output()
    {
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).contains("::1");
        }
    }
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);
static MEDIA_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Ports per daemon for the RTP relay: four calls' worth.
const MEDIA_BLOCK: u32 = 16;

/// A block of relay ports in 10000..20000 free on 127.0.0.1 (and ::1 when present),
/// private to one daemon of this process.
pub fn free_media_range() -> (u16, u16) {
    let v6 = has_ipv6_loopback();
    let blocks = 10_000 / MEDIA_BLOCK;
    let offset = std::process::id() % blocks;
    for _ in 0..blocks {
        let n = MEDIA_COUNTER.fetch_add(1, Ordering::SeqCst);
        let first = 10_000 + ((offset + n) % blocks) * MEDIA_BLOCK;
        let first = u16::try_from(first).expect("below 20000");
        let last = first + u16::try_from(MEDIA_BLOCK - 1).expect("small");
        let free = (first..=last).all(|p| {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
                && (!v6 || UdpSocket::bind((Ipv6Addr::LOCALHOST, p)).is_ok())
        });
        if free {
            return (first, last);
        }
    }
    panic!("no free relay port block in 10000..20000");
}

/// A port free for UDP and TCP on 127.0.0.1 (and ::1 when present), unique within this
/// process and, through the pid, unlikely to clash with other test processes. The range
/// 20000..32000 stays below Linux's ephemeral ports.
pub fn free_port() -> u16 {
    let v6 = has_ipv6_loopback();
    let offset = (std::process::id() % 1_000) * 12;
    for _ in 0..2_000 {
        let n = PORT_COUNTER.fetch_add(1, Ordering::SeqCst);
        let candidate = 20_000 + (offset + n) % 12_000;
        let port = u16::try_from(candidate).expect("candidate is below 32000");
        if port_is_free(Ipv4Addr::LOCALHOST.into(), port)
            && (!v6 || port_is_free(Ipv6Addr::LOCALHOST.into(), port))
        {
            return port;
        }
    }
    panic!("no free port found in 20000..32000");
}

fn port_is_free(ip: IpAddr, port: u16) -> bool {
    let udp = UdpSocket::bind((ip, port));
    let tcp = TcpListener::bind((ip, port));
    udp.is_ok() && tcp.is_ok()
}

/// Polls `probe` every 100 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Output of a finished child process.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code (`None` when killed by a signal or the timeout).
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
    /// True when the timeout killed it.
    pub timed_out: bool,
}

/// Runs `cmd` with captured output; kills it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    CmdOutput {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        timed_out,
    }
}

/// Sends `signal` (e.g. "TERM") to a process with the shell's `kill` builtin (no unsafe
/// code, and no dependency on procps being installed).
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The parts of outpost.toml the tests vary.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `[sip] listen`: UDP and TCP on each.
    pub listen: Vec<SocketAddr>,
    /// `[sip] realm`.
    pub realm: String,
    /// `[registrar] min_expires`.
    pub min_expires: u32,
    /// `[registrar] max_expires`.
    pub max_expires: u32,
    /// `[registrar] default_expires`.
    pub default_expires: u32,
    /// `[calls] ring_timeout_secs`.
    pub ring_timeout_secs: u32,
    /// `[auth] algorithms` (offered in this order); `None` keeps the daemon's default
    /// (SHA-256 then MD5). SIPp 3.6 (Debian 12) knows only MD5 and takes the first
    /// challenge's `algorithm=`, so SIPp-driven tests offer MD5 first.
    pub digest_algorithms: Option<Vec<String>>,
    /// `[media]` relay port range (a private block per daemon, so parallel tests never
    /// compete for relay ports) and media timeout.
    pub media_ports: (u16, u16),
    pub media_timeout_secs: u32,
}

impl DaemonConfig {
    /// UDP+TCP on 127.0.0.1 at a fresh free port.
    pub fn loopback() -> Self {
        let port = free_port();
        Self::on(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))])
    }

    /// UDP+TCP on 127.0.0.1 and [::1] at the same fresh free port.
    pub fn dual_stack() -> Self {
        let port = free_port();
        Self::on(vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ])
    }

    /// Defaults with the given listen addresses.
    pub fn on(listen: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            realm: "outpost".to_owned(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 600,
            ring_timeout_secs: 60,
            digest_algorithms: Some(vec!["MD5".to_owned(), "SHA-256".to_owned()]),
            media_ports: free_media_range(),
            media_timeout_secs: 60,
        }
    }

    /// Keeps the daemon's default digest algorithms (no `[auth] algorithms` key).
    pub fn default_auth(mut self) -> Self {
        self.digest_algorithms = None;
        self
    }

    fn to_toml(&self, data_dir: &Path, socket: &Path) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| format!("\"{a}\"")).collect();
        let auth = match &self.digest_algorithms {
            Some(algs) => {
                let algs: Vec<String> = algs.iter().map(|a| format!("\"{a}\"")).collect();
                format!("\n[auth]\nalgorithms = [{}]\n", algs.join(", "))
            }
            None => String::new(),
        };
        let media = format!(
            "\n[media]\nport_first = {}\nport_last = {}\ntimeout_secs = {}\n",
            self.media_ports.0, self.media_ports.1, self.media_timeout_secs
        );
        format!(
            "[sip]\nlisten = [{}]\nrealm = \"{}\"\n\n[registrar]\nmin_expires = {}\nmax_expires = {}\ndefault_expires = {}\n\n[calls]\nring_timeout_secs = {}\n\n[store]\ndata_dir = \"{}\"\n\n[admin]\nsocket = \"{}\"\n\n[demo]\nextensions = []\n{}{}",
            listen.join(", "),
            self.realm,
            self.min_expires,
            self.max_expires,
            self.default_expires,
            self.ring_timeout_secs,
            data_dir.display(),
            socket.display(),
            auth,
            media,
        )
    }
}

/// A running `outpostd` with its own temp dir (config, data, admin socket, logs).
/// Dropping it stops the daemon (SIGTERM, then SIGKILL) and prints its log when the
/// test is failing.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    config: DaemonConfig,
    config_path: PathBuf,
    data_dir: PathBuf,
    socket: PathBuf,
    logs: Vec<PathBuf>,
}

impl Daemon {
    /// Starts a daemon on 127.0.0.1 at a free port and waits until it serves.
    pub fn start() -> Self {
        Self::start_with(DaemonConfig::loopback())
    }

    /// Starts a daemon with `config` and waits until it serves.
    pub fn start_with(config: DaemonConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outpost-test-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = dir.path().join("data");
        let socket = dir.path().join("admin.sock");
        let config_path = dir.path().join("outpost.toml");
        fs::write(&config_path, config.to_toml(&data_dir, &socket)).expect("write config");
        let mut daemon = Self {
            child: None,
            dir,
            config,
            config_path,
            data_dir,
            socket,
            logs: Vec::new(),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log_path = self
            .dir
            .path()
            .join(format!("outpostd-{}.log", self.logs.len()));
        let log = File::create(&log_path).expect("create daemon log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(bin("outpostd"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir(self.dir.path());
        if env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().expect("spawn outpostd");
        self.logs.push(log_path);
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "outpostd exited during start-up ({status}):\n{}",
                        self.log_text()
                    );
                }
            }
            let out = self.ctl(&["status"]);
            if out.code == Some(0) && options_ok(self.sip_addr(), Transport::Udp) {
                return;
            }
            last = Some(out);
            if Instant::now() >= deadline {
                panic!(
                    "outpostd not ready within {READY_TIMEOUT:?}; last outpostctl status: {last:?}\nlog:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first listen address (the one SIPp talks to).
    pub fn sip_addr(&self) -> SocketAddr {
        self.config.listen[0]
    }

    /// All listen addresses.
    pub fn listen(&self) -> &[SocketAddr] {
        &self.config.listen
    }

    /// The daemon's temp dir (SIPp traces can go here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The admin socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon wrote to stderr/stdout over all its starts.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        for (i, path) in self.logs.iter().enumerate() {
            let body = fs::read_to_string(path).unwrap_or_default();
            let _ = writeln!(text, "--- outpostd start #{i} ({}) ---", path.display());
            text.push_str(&tail(&body, 40_000));
        }
        text
    }

    /// Runs `outpostctl --socket <ours> args...` (15 s cap).
    pub fn ctl(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(bin("outpostctl"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(15))
    }

    /// Runs outpostctl and asserts exit code 0; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert_eq!(
            out.code,
            Some(0),
            "outpostctl {args:?} failed: {out:?}\ndaemon log:\n{}",
            self.log_text()
        );
        out.stdout
    }

    /// Runs `outpostctl --json args...`, asserts success and parses stdout as JSON.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let stdout = self.ctl_ok(&full);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("outpostctl {full:?} printed invalid JSON ({e}):\n{stdout}"))
    }

    /// Adds an extension through outpostctl.
    pub fn add_extension(&self, ext: &str, password: &str) {
        self.ctl_ok(&["ext", "add", ext, "--password", password]);
    }

    /// `reg list --json` as an array.
    pub fn registrations(&self) -> Vec<Value> {
        as_array(self.ctl_json(&["reg", "list"]), "reg list")
    }

    /// Registrations of `ext`.
    pub fn registrations_of(&self, ext: &str) -> Vec<Value> {
        self.registrations()
            .into_iter()
            .filter(|r| json_str(r, "ext") == Some(ext))
            .collect()
    }

    /// Waits until `ext` has at least one registration; returns the first.
    pub fn wait_registered(&self, ext: &str, timeout: Duration) -> Value {
        eventually(timeout, || self.registrations_of(ext).into_iter().next()).unwrap_or_else(|| {
            panic!(
                "extension {ext} not registered within {timeout:?}; reg list: {:?}\nlog:\n{}",
                self.registrations(),
                self.log_text()
            )
        })
    }

    /// `cdr list --json` as an array.
    pub fn cdrs(&self) -> Vec<Value> {
        as_array(self.ctl_json(&["cdr", "list"]), "cdr list")
    }

    /// Waits until at least `n` CDRs exist; returns them.
    pub fn wait_cdrs(&self, n: usize, timeout: Duration) -> Vec<Value> {
        eventually(timeout, || {
            let cdrs = self.cdrs();
            (cdrs.len() >= n).then_some(cdrs)
        })
        .unwrap_or_else(|| {
            panic!(
                "fewer than {n} CDRs after {timeout:?}: {:?}\nlog:\n{}",
                self.cdrs(),
                self.log_text()
            )
        })
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (10 s cap, then SIGKILL); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if !send_signal(child.id(), "TERM") {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(_) => return None,
            }
        }
    }

    /// Starts the daemon again on the same config and data dir (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart needs a stopped daemon");
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.stop();
        if thread::panicking() {
            eprintln!(
                "=== outpostd (exit {status:?}) log, dir {} ===\n{}",
                self.dir.path().display(),
                self.log_text()
            );
        }
    }
}

fn as_array(v: Value, what: &str) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("outpostctl --json {what} did not print an array: {other}"),
    }
}

/// A string field of a JSON object.
pub fn json_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &s[start..])
}

/// SIP transport used by SIPp and the raw-socket helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Transport {
    /// SIPp's `-t` value: one socket for all calls.
    pub fn sipp_mode(self) -> &'static str {
        match self {
            Self::Udp => "u1",
            Self::Tcp => "t1",
        }
    }

    /// The Via transport token.
    pub fn via(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

/// One SIPp invocation, built up then `run` (wait) or `spawn` (background).
#[derive(Debug, Clone)]
pub struct Sipp {
    scenario: PathBuf,
    ooc_scenario: Option<PathBuf>,
    target: SocketAddr,
    transport: Transport,
    local_port: u16,
    service: Option<String>,
    auth: Option<(String, String)>,
    keys: Vec<(String, String)>,
    calls: u32,
    timeout_secs: u32,
}

impl Sipp {
    /// SIPp with `scenario` (file name in tests/scenarios/) against the daemon's first
    /// address, over UDP, from a fresh local port.
    pub fn new(scenario_name: &str, daemon: &Daemon) -> Self {
        Self {
            scenario: scenario(scenario_name),
            ooc_scenario: None,
            target: daemon.sip_addr(),
            transport: Transport::Udp,
            local_port: free_port(),
            service: None,
            auth: None,
            keys: Vec::new(),
            calls: 1,
            timeout_secs: SIPP_TIMEOUT_SECS,
        }
    }

    /// Talks to `target` instead of the daemon's first address.
    pub fn target(mut self, target: SocketAddr) -> Self {
        self.target = target;
        self
    }

    /// Uses `transport`.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Local SIP port (`-p`).
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = port;
        self
    }

    /// The local SIP port in use.
    pub fn port(&self) -> u16 {
        self.local_port
    }

    /// Request-URI user (`-s`, `[service]`): the number dialled.
    pub fn service(mut self, service: &str) -> Self {
        self.service = Some(service.to_owned());
        self
    }

    /// The account: `[user]` in scenarios and the digest credentials (`-au`/`-ap`).
    pub fn account(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self.key("user", user)
    }

    /// A scenario keyword (`-key name value`, used as `[name]`).
    pub fn key(mut self, name: &str, value: &str) -> Self {
        self.keys.retain(|(k, _)| k != name);
        self.keys.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Out-of-call scenario (`-oocsf`): how a registered SIPp callee answers INVITEs.
    pub fn ooc(mut self, scenario_name: &str) -> Self {
        self.ooc_scenario = Some(scenario(scenario_name));
        self
    }

    /// Number of calls (`-m`).
    pub fn calls(mut self, calls: u32) -> Self {
        self.calls = calls;
        self
    }

    /// Global timeout (`-timeout`, an error when reached).
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Starts SIPp in the background.
    pub fn spawn(self) -> SippProcess {
        let dir = tempfile::Builder::new()
            .prefix("outpost-sipp-")
            .tempdir()
            .expect("create sipp dir");
        let local_ip = if self.target.is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        if !self.keys.iter().any(|(k, _)| k == "expires") {
            // Default for register scenarios; harmless for the others.
            return self.key("expires", "300").spawn();
        }
        let mut cmd = Command::new("sipp");
        cmd.arg(self.target.to_string())
            .arg("-sf")
            .arg(&self.scenario)
            .args(["-t", self.transport.sipp_mode()])
            .arg("-i")
            .arg(local_ip.to_string())
            .arg("-p")
            .arg(self.local_port.to_string())
            .arg("-m")
            .arg(self.calls.to_string())
            .args(["-l", "100", "-nostdin", "-timeout_error"])
            .arg("-timeout")
            .arg(format!("{}s", self.timeout_secs))
            .args(["-max_recv_loops", "1000"])
            .args(["-trace_msg", "-message_file"])
            .arg(dir.path().join("messages.log"))
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-trace_stat", "-stf"])
            .arg(dir.path().join("stats.csv"))
            .args(["-trace_screen", "-screen_file"])
            .arg(dir.path().join("screen.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(dir.path().join("actions.log"));
        if let Some(service) = &self.service {
            cmd.arg("-s").arg(service);
        }
        if let Some((user, password)) = &self.auth {
            cmd.arg("-au").arg(user).arg("-ap").arg(password);
        }
        for (k, v) in &self.keys {
            cmd.arg("-key").arg(k).arg(v);
        }
        if let Some(ooc) = &self.ooc_scenario {
            cmd.arg("-oocsf").arg(ooc);
        }
        let out = File::create(dir.path().join("stdout.log")).expect("create sipp stdout");
        let err = File::create(dir.path().join("stderr.log")).expect("create sipp stderr");
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp ({e}); tests/run-all installs sip-tester"));
        SippProcess {
            child: Some(child),
            dir,
            description: format!("{cmd:?}"),
            hard_limit: Duration::from_secs(u64::from(self.timeout_secs) + 15),
            started: Instant::now(),
        }
    }

    /// Runs SIPp to completion.
    pub fn run(self) -> SippOutcome {
        self.spawn().wait()
    }
}

/// A SIPp process running in the background; dropping it kills it.
#[derive(Debug)]
pub struct SippProcess {
    child: Option<Child>,
    dir: TempDir,
    description: String,
    hard_limit: Duration,
    started: Instant,
}

impl SippProcess {
    /// Waits for SIPp to exit (SIPp's own timeout, plus a hard cap that kills it).
    pub fn wait(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("child present until waited");
        let mut killed = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if self.started.elapsed() >= self.hard_limit => {
                    killed = true;
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        SippOutcome {
            code: if killed {
                None
            } else {
                status.and_then(|s| s.code())
            },
            command: self.description.clone(),
            stdout: read("stdout.log"),
            stderr: read("stderr.log"),
            messages: read("messages.log"),
            errors: read("errors.log"),
            stats: read("stats.csv"),
            actions: read("actions.log"),
        }
    }

    /// True while SIPp runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a finished SIPp run left behind.
#[derive(Debug, Clone)]
pub struct SippOutcome {
    /// Exit code: 0 when every call succeeded, 1 when some failed, `None` when killed.
    pub code: Option<i32>,
    /// The command line.
    pub command: String,
    /// SIPp's screen output.
    pub stdout: String,
    /// SIPp's stderr (fatal errors).
    pub stderr: String,
    /// Every message sent and received (`-trace_msg`).
    pub messages: String,
    /// Unexpected messages and errors (`-trace_err`).
    pub errors: String,
    /// Statistics CSV (`-trace_stat`).
    pub stats: String,
    /// `<log>` actions (`-trace_logs`).
    pub actions: String,
}

impl SippOutcome {
    /// Panics with SIPp's traces unless every call succeeded.
    pub fn assert_success(&self, what: &str) {
        assert_eq!(self.code, Some(0), "SIPp {what} failed:\n{}", self.dump());
    }

    /// The traces, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "exit code {:?}\ncommand: {}\n--- stderr ---\n{}\n--- errors ---\n{}\n--- messages ---\n{}\n--- screen ---\n{}",
            self.code,
            self.command,
            tail(&self.stderr, 4_000),
            tail(&self.errors, 8_000),
            tail(&self.messages, 20_000),
            tail(&self.stdout, 4_000),
        )
    }

    /// Every message SIPp received, in order.
    pub fn received(&self) -> Vec<String> {
        self.traced("message received", " bytes :\n\n")
    }

    /// Every message SIPp sent, in order.
    pub fn sent(&self) -> Vec<String> {
        self.traced("message sent", " bytes):\n\n")
    }

    fn traced(&self, direction: &str, separator: &str) -> Vec<String> {
        self.messages
            .split("----------------------------------------------- ")
            .filter_map(|chunk| {
                let (head, body) = chunk.split_once(separator)?;
                head.contains(direction).then(|| body.trim().to_owned())
            })
            .collect()
    }

    /// Status codes of every response SIPp received, in order.
    pub fn received_statuses(&self) -> Vec<u16> {
        self.received()
            .iter()
            .filter_map(|m| status_of(m.as_bytes()))
            .collect()
    }
}

/// Status code of a SIP response, `None` for requests and garbage.
pub fn status_of(msg: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(msg).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "SIP/2.0" {
        return None;
    }
    parts.next()?.parse().ok()
}

/// How many headers called `name` (case-insensitive; compact form not counted) a message has.
pub fn header_count(msg: &str, name: &str) -> usize {
    header_values(msg, name).len()
}

/// Values of every header called `name` (case-insensitive), in order.
pub fn header_values(msg: &str, name: &str) -> Vec<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or(msg);
    head.lines()
        .skip(1)
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .collect()
}

/// A SIP request without body, addressed to `target`, with a Via naming `local`.
pub fn sip_request(
    method: &str,
    uri: &str,
    transport: Transport,
    local: SocketAddr,
    call_id: &str,
    extra_headers: &str,
) -> String {
    let branch = format!("z9hG4bK{}", call_id.replace(['@', '.'], ""));
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:tester@{ip}>;tag=t{tag}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n{extra_headers}Content-Length: 0\r\n\r\n",
        transport.via(),
        ip = fmt_ip(local.ip()),
        tag = call_id.len(),
    )
}

/// A REGISTER for `ext` without credentials.
pub fn register_request(
    target: SocketAddr,
    transport: Transport,
    local: SocketAddr,
    ext: &str,
    call_id: &str,
) -> String {
    let host = fmt_ip(target.ip());
    let branch = format!("z9hG4bK{}", call_id.replace(['@', '.'], ""));
    format!(
        "REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/{via} {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{ext}@{host}>;tag=r{tag}\r\nTo: <sip:{ext}@{host}>\r\nCall-ID: {call_id}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{ext}@{local};transport={lower}>\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n",
        via = transport.via(),
        lower = transport.via().to_lowercase(),
        tag = call_id.len(),
    )
}

/// A parameter of a digest challenge (`name="value"` or `name=token`); commas inside
/// quotes do not split.
pub fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let rest = challenge.strip_prefix("Digest ").unwrap_or(challenge);
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts.iter().find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The Authorization value answering `challenge` (RFC 7616, qop=auth, nc=1), with MD5 or
/// SHA-256 as the challenge says. Written independently of the daemon's code on purpose.
pub fn digest_authorization(
    challenge: &str,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
) -> String {
    use md5::Md5;
    use sha2::{Digest, Sha256};

    let algorithm = challenge_param(challenge, "algorithm").unwrap_or_else(|| "MD5".to_owned());
    let hash = |s: String| -> String {
        if algorithm.eq_ignore_ascii_case("SHA-256") {
            hex::encode(Sha256::digest(s.as_bytes()))
        } else {
            hex::encode(Md5::digest(s.as_bytes()))
        }
    };
    let realm = challenge_param(challenge, "realm").expect("challenge has a realm");
    let nonce = challenge_param(challenge, "nonce").expect("challenge has a nonce");
    let cnonce = "0a4f113b";
    let nc = "00000001";
    let ha1 = hash(format!("{user}:{realm}:{password}"));
    let ha2 = hash(format!("{method}:{uri}"));
    let response = hash(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    let mut value = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", nc={nc}, qop=auth"
    );
    if let Some(opaque) = challenge_param(challenge, "opaque") {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    value
}

fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A UDP socket on the loopback of `target`'s family.
pub fn udp_client(target: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::LOCALHOST, 0).into()
    } else {
        (Ipv4Addr::LOCALHOST, 0).into()
    };
    let sock = UdpSocket::bind(local).expect("bind UDP client");
    sock.connect(target).expect("connect UDP client");
    sock
}

/// Sends one datagram; returns the first datagram back within `wait`.
pub fn udp_exchange(sock: &UdpSocket, payload: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send(payload).expect("send UDP");
    udp_recv(sock, wait)
}

/// The next datagram within `wait`.
pub fn udp_recv(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).expect("set timeout");
    let mut buf = vec![0u8; 65_536];
    match sock.recv(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// True when an OPTIONS over `transport` gets a 200 within 2 s.
pub fn options_ok(target: SocketAddr, transport: Transport) -> bool {
    options_status(target, transport) == Some(200)
}

/// Status of an OPTIONS over a fresh socket (2 s wait).
pub fn options_status(target: SocketAddr, transport: Transport) -> Option<u16> {
    static N: AtomicU32 = AtomicU32::new(0);
    let call_id = format!(
        "opt{}x{}@test",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let uri = format!("sip:{}", fmt_ip(target.ip()));
    match transport {
        Transport::Udp => {
            let sock = udp_client(target);
            let local = sock.local_addr().ok()?;
            let req = sip_request("OPTIONS", &uri, transport, local, &call_id, "");
            let resp = udp_exchange(&sock, req.as_bytes(), Duration::from_secs(2))?;
            status_of(&resp)
        }
        Transport::Tcp => {
            let mut conn = SipTcp::connect(target)?;
            let local = conn.stream.local_addr().ok()?;
            let req = sip_request("OPTIONS", &uri, transport, local, &call_id, "");
            conn.send(req.as_bytes());
            let resp = conn.read_message(Duration::from_secs(2))?;
            status_of(resp.as_bytes())
        }
    }
}

/// A TCP connection speaking SIP, with Content-Length framing of what comes back.
#[derive(Debug)]
pub struct SipTcp {
    /// The connection.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl SipTcp {
    /// Connects (2 s timeout).
    pub fn connect(target: SocketAddr) -> Option<Self> {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes all of `bytes` (errors ignored: the peer may have closed).
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok() && self.stream.flush().is_ok()
    }

    /// The next complete message within `wait`; `None` on timeout or close.
    pub fn read_message(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(msg) = self.take_message() {
                return Some(msg);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True when the peer closed the connection (or reset it) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
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
        // Skip keep-alive CRLFs between messages.
        while self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
        }
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lengths = header_values(&head, "Content-Length");
        lengths.extend(header_values(&head, "l"));
        let len = lengths
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_headers_are_parsed() {
        let msg = "SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest a\r\nwww-authenticate: Digest b\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status_of(msg.as_bytes()), Some(401));
        assert_eq!(header_count(msg, "WWW-Authenticate"), 2);
        assert_eq!(status_of(b"OPTIONS sip:x SIP/2.0\r\n\r\n"), None);
        assert_eq!(status_of(b"\xff\xfe"), None);
    }

    #[test]
    fn register_request_names_the_account() {
        let target: SocketAddr = "127.0.0.1:5060".parse().expect("valid addr");
        let local: SocketAddr = "127.0.0.1:4000".parse().expect("valid addr");
        let req = register_request(target, Transport::Udp, local, "100", "abc@test");
        assert!(
            req.starts_with("REGISTER sip:127.0.0.1 SIP/2.0\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nTo: <sip:100@127.0.0.1>\r\n"), "{req}");
        assert!(req.contains("\r\nFrom: <sip:100@127.0.0.1>;tag="), "{req}");
        assert!(req.contains("Contact: <sip:100@127.0.0.1:4000;transport=udp>"));
        assert!(req.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn sipp_trace_is_split_into_received_messages() {
        let outcome = SippOutcome {
            code: Some(0),
            command: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            messages: "----------------------------------------------- 2024-01-01\nUDP message sent (10 bytes):\n\nREGISTER x\n\n----------------------------------------------- 2024-01-01\nUDP message received [30] bytes :\n\nSIP/2.0 401 Unauthorized\r\nX: y\r\n\r\n\n".to_owned(),
            errors: String::new(),
            stats: String::new(),
            actions: String::new(),
        };
        assert_eq!(outcome.received_statuses(), vec![401]);
        assert_eq!(outcome.sent(), vec!["REGISTER x".to_owned()]);
    }

    #[test]
    fn digest_matches_rfc_2617_example() {
        // RFC 2617 section 3.5 (MD5, qop=auth, nc=00000001, cnonce=0a4f113b).
        let challenge = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let auth = digest_authorization(
            challenge,
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
        );
        assert!(
            auth.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{auth}"
        );
        assert!(
            auth.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{auth}"
        );
        assert_eq!(
            challenge_param(challenge, "qop").as_deref(),
            Some("auth,auth-int")
        );
    }

    #[test]
    fn ports_are_unique_and_free() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, a)).is_ok());
    }
}
