//! Black-box test support: starts the real `outpostd` on loopback, drives it with
//! `outpostctl`, SIPp scenarios (tests/scenarios/) and raw sockets.
//!
//! The binaries are NOT built here (cargo holds the build lock while tests run): run
//! `cargo build --workspace --bins` first, which `tests/run-all` does.

use std::collections::VecDeque;
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

pub mod baresip;
pub mod browser;
pub mod modgraph;
pub mod qemu;
pub mod servers;
pub mod webform;

use serde_json::Value;
use tempfile::TempDir;

/// How long a daemon may take from spawn to answering `outpostctl status` and OPTIONS (a
/// start that first applies a staged restore of a large backup takes a while on a busy
/// 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
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
    run_with_input(cmd, Stdio::null(), timeout)
}

/// Runs `cmd` with `stdin` as its standard input and captured output; kills it after
/// `timeout`.
pub fn run_with_input(cmd: &mut Command, stdin: Stdio, timeout: Duration) -> CmdOutput {
    let mut child = cmd
        .stdin(stdin)
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
    /// `[sip] realm`; `None` leaves it out (the box makes its own).
    pub realm: Option<String>,
    /// `[registrar] min_expires`.
    pub min_expires: u32,
    /// `[registrar] max_expires`.
    pub max_expires: u32,
    /// `[registrar] default_expires`.
    pub default_expires: u32,
    /// `[calls] ring_timeout_secs`.
    pub ring_timeout_secs: u32,
    /// `[auth] algorithms` (offered in this order); `None` (the default) keeps the
    /// daemon's default: MD5 alone, what phones speak (SIPp 3.6 and baresip 1.0 of Debian 12
    /// know only MD5). `digest` opts in to SHA-256.
    pub digest_algorithms: Option<Vec<String>>,
    /// `[media]` relay port range (a private block per daemon, so parallel tests never
    /// compete for relay ports) and media timeout.
    pub media_ports: (u16, u16),
    pub media_timeout_secs: u32,
    /// More TOML appended to the generated file (e.g. `[firewall]` tables); empty by default.
    pub extra_toml: String,
    /// `[voicemail] max_secs`; `None` keeps the daemon's default.
    pub voicemail_max_secs: Option<u32>,
    /// `[media] prompts_dir` (spoken prompts made by `scripts/make-prompts`); `None` keeps
    /// the daemon's default.
    pub prompts_dir: Option<PathBuf>,
    /// More `key = value` lines inside the generated `[media]` table.
    pub media_extra: String,
    /// More `key = value` lines inside the generated `[sip]` table.
    pub sip_extra: String,
    /// More `key = value` lines inside the generated `[firewall]` table.
    pub firewall_extra: String,
    /// A program (with its arguments) that runs outpostd, e.g. `unshare --uts --` so that
    /// a configured host name stays inside the test; empty: outpostd runs directly.
    pub wrapper: Vec<String>,
    /// More outpostd arguments: the settings the image fixes at start and the
    /// configuration cannot change (`--admin-group`, `--nft`, `--dropbear`, ...).
    pub args: Vec<String>,
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
            realm: Some("outpost".to_owned()),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 600,
            ring_timeout_secs: 60,
            digest_algorithms: None,
            media_ports: free_media_range(),
            media_timeout_secs: 60,
            extra_toml: String::new(),
            voicemail_max_secs: None,
            prompts_dir: None,
            media_extra: String::new(),
            firewall_extra: String::new(),
            sip_extra: String::new(),
            wrapper: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds outpostd arguments (settings fixed at start, e.g. `--admin-group ops`).
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Adds `key = value` lines to the generated `[sip]` table.
    pub fn with_sip(mut self, lines: &str) -> Self {
        self.sip_extra.push_str(lines);
        self.sip_extra.push('\n');
        self
    }

    /// Adds `key = value` lines to the generated `[media]` table.
    pub fn with_media(mut self, lines: &str) -> Self {
        self.media_extra.push_str(lines);
        self.media_extra.push('\n');
        self
    }

    /// Runs outpostd under `wrapper` (a program that execs it in place, so the child's pid
    /// stays outpostd's).
    pub fn run_under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|w| (*w).to_owned()).collect();
        self
    }

    /// Offers these digest algorithms in this order (`[auth] algorithms`), e.g.
    /// `&["SHA-256", "MD5"]` for the SHA-256 opt-in.
    pub fn digest(mut self, algorithms: &[&str]) -> Self {
        self.digest_algorithms = Some(algorithms.iter().map(|a| (*a).to_owned()).collect());
        self
    }

    /// Appends `toml` (whole tables, e.g. `[firewall.detect]`) to the generated file.
    pub fn with_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
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
        let prompts = match &self.prompts_dir {
            Some(dir) => format!("prompts_dir = \"{}\"\n", dir.display()),
            None => String::new(),
        };
        // Voicemail is on only for tests that configure it, so the plain call tests see
        // the SIP statuses (480, 486) an unanswered call ends with.
        let voicemail = match self.voicemail_max_secs {
            Some(secs) => format!("\n[voicemail]\nmax_secs = {secs}\n"),
            None => "\n[voicemail]\nenabled = false\n".to_string(),
        };
        let media = format!(
            "\n[media]\nport_first = {}\nport_last = {}\ntimeout_secs = {}\n{prompts}{}\n[firewall]\n# Daemons of parallel tests share the host: none may own its nftables table.\nenforce = \"off\"\n{}\n{voicemail}",
            self.media_ports.0, self.media_ports.1, self.media_timeout_secs, self.media_extra,
            self.firewall_extra
        );
        format!(
            "[sip]\nlisten = [{}]\n{}{}\n[registrar]\nmin_expires = {}\nmax_expires = {}\ndefault_expires = {}\n\n[calls]\nring_timeout_secs = {}\n\n[store]\ndata_dir = \"{}\"\n\n[admin]\nsocket = \"{}\"\n\n[demo]\nextensions = []\n{}{}",
            listen.join(", "),
            self.realm
                .as_ref()
                .map(|r| format!("realm = \"{r}\"\n"))
                .unwrap_or_default(),
            self.sip_extra,
            self.min_expires,
            self.max_expires,
            self.default_expires,
            self.ring_timeout_secs,
            data_dir.display(),
            socket.display(),
            auth,
            media,
        ) + &self.extra_toml
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
    /// The network namespace the daemon runs in (`None`: the test's own).
    netns: Option<String>,
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
            netns: None,
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
        let mut cmd = match &self.netns {
            None => match self.config.wrapper.split_first() {
                Some((program, args)) => {
                    let mut cmd = Command::new(program);
                    cmd.args(args).arg(bin("outpostd"));
                    cmd
                }
                None => Command::new(bin("outpostd")),
            },
            Some(ns) => {
                let mut cmd = Command::new("ip");
                // `ip netns exec` execs outpostd in place: the child's pid is outpostd's.
                cmd.args(["netns", "exec", ns.as_str()])
                    .arg(bin("outpostd"));
                cmd
            }
        };
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(&self.config.args)
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
            if out.code == Some(0) && self.answers_options() {
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

    fn answers_options(&self) -> bool {
        match &self.netns {
            None => options_ok(self.sip_addr(), Transport::Udp),
            Some(ns) => {
                // From the daemon's own address: over `lo`, which the kernel rules accept.
                let target = self.sip_addr();
                let sock = udp_socket_in(ns, SocketAddr::new(target.ip(), 0));
                options_status_on(&sock, target, Duration::from_secs(1)) == Some(200)
            }
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

    /// Sends one raw command (a JSON object, docs/admin-api.md) over the admin socket and
    /// returns the daemon's reply object (`{"reply":...,"data":...}`); for commands
    /// `outpostctl` has no subcommand for (the web page's). Waits at most 30 s.
    pub fn admin(&self, command: &Value) -> Value {
        use std::io::BufRead as _;
        let stream = std::os::unix::net::UnixStream::connect(self.socket())
            .unwrap_or_else(|e| panic!("admin socket {}: {e}", self.socket().display()));
        let wait = Some(Duration::from_secs(30));
        stream.set_read_timeout(wait).expect("read timeout");
        stream.set_write_timeout(wait).expect("write timeout");
        let mut line = command.to_string();
        line.push('\n');
        (&stream)
            .write_all(line.as_bytes())
            .expect("send the command");
        let mut reply = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut reply)
            .expect("read the reply");
        serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("reply to {command} is not JSON ({e}): {reply:?}"))
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

    /// Starts the daemon again if it has exited by itself (as busybox init respawns it on
    /// the box, e.g. after a staged restore); true if it did.
    pub fn respawn_if_exited(&mut self) -> bool {
        let exited = match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => false,
        };
        if exited {
            self.child = None;
            self.spawn();
        }
        exited
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
    /// Network namespace and local address to run in (`None`: loopback of the test's own).
    netns: Option<(String, IpAddr)>,
    /// Calls started per second (`-r`); `None`: SIPp's default (10).
    rate: Option<u32>,
    /// Most calls in progress at once (`-l`).
    limit: u32,
    /// Injection file (`-inf`), its fields `[field0]`, `[field1]`, ...
    injection: Option<PathBuf>,
    /// Keeps SIPp's message trace (`-trace_msg`); off for load runs.
    trace_messages: bool,
    /// Length of the scenarios' `<pause/>` without a duration (`-d`): how long a call of
    /// `uac_call.xml` stays up.
    hold_ms: u32,
}

impl Sipp {
    /// SIPp with `scenario` (file name in tests/scenarios/) against the daemon's first
    /// address, over UDP, from a fresh local port.
    pub fn new(scenario_name: &str, daemon: &Daemon) -> Self {
        Self::towards(scenario_name, daemon.sip_addr())
    }

    /// SIPp with `scenario` (file name in tests/scenarios/) against `target` (e.g. a qemu
    /// guest's forwarded SIP port), over UDP, from a fresh local port.
    pub fn towards(scenario_name: &str, target: SocketAddr) -> Self {
        Self {
            scenario: scenario(scenario_name),
            ooc_scenario: None,
            target,
            transport: Transport::Udp,
            local_port: free_port(),
            service: None,
            auth: None,
            keys: Vec::new(),
            calls: 1,
            timeout_secs: SIPP_TIMEOUT_SECS,
            netns: None,
            rate: None,
            limit: 100,
            injection: None,
            trace_messages: true,
            hold_ms: 500,
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

    /// Starts `per_sec` calls per second (`-r`).
    pub fn rate(mut self, per_sec: u32) -> Self {
        self.rate = Some(per_sec);
        self
    }

    /// At most `calls` calls in progress at once (`-l`, default 100).
    pub fn limit(mut self, calls: u32) -> Self {
        self.limit = calls;
        self
    }

    /// Reads `[field0]`, `[field1]`, ... of each call from `path` (`-inf`).
    pub fn injection_file(mut self, path: &Path) -> Self {
        self.injection = Some(path.to_path_buf());
        self
    }

    /// No message trace (a load run's would be tens of megabytes): `messages` stays empty.
    pub fn without_message_trace(mut self) -> Self {
        self.trace_messages = false;
        self
    }

    /// Runs SIPp inside network namespace `ns`, bound to `local_ip` (an address there).
    pub fn in_netns(mut self, ns: &Netns, local_ip: IpAddr) -> Self {
        self.netns = Some((ns.name().to_owned(), local_ip));
        self
    }

    /// How long a call stays up in a scenario that holds it with `<pause/>` (`uac_call.xml`;
    /// default 500 ms).
    pub fn hold_ms(mut self, ms: u32) -> Self {
        self.hold_ms = ms;
        self
    }

    /// Starts SIPp in the background.
    pub fn spawn(self) -> SippProcess {
        let dir = tempfile::Builder::new()
            .prefix("outpost-sipp-")
            .tempdir()
            .expect("create sipp dir");
        let local_ip = if let Some((_, ip)) = &self.netns {
            *ip
        } else if self.target.is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        if !self.keys.iter().any(|(k, _)| k == "expires") {
            // Default for register scenarios; harmless for the others.
            return self.key("expires", "300").spawn();
        }
        let mut cmd = match &self.netns {
            None => Command::new("sipp"),
            Some((ns, _)) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns.as_str(), "sipp"]);
                cmd
            }
        };
        cmd.arg(self.target.to_string())
            .arg("-sf")
            .arg(&self.scenario)
            .args(["-t", self.transport.sipp_mode()])
            .arg("-i")
            .arg(local_ip.to_string())
            .arg("-p")
            .arg(self.local_port.to_string())
            .arg("-d")
            .arg(self.hold_ms.to_string())
            .arg("-m")
            .arg(self.calls.to_string())
            .arg("-l")
            .arg(self.limit.to_string())
            .args(["-nostdin", "-timeout_error"])
            .arg("-timeout")
            .arg(format!("{}s", self.timeout_secs))
            .args(["-max_recv_loops", "1000"]);
        if self.trace_messages {
            cmd.args(["-trace_msg", "-message_file"])
                .arg(dir.path().join("messages.log"));
        }
        if let Some(rate) = self.rate {
            cmd.arg("-r").arg(rate.to_string());
        }
        if let Some(path) = &self.injection {
            cmd.arg("-inf").arg(path);
        }
        cmd.args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-trace_stat", "-stf"])
            .arg(dir.path().join("stats.csv"))
            .args(["-trace_screen", "-screen_file"])
            .arg(dir.path().join("screen.log"))
            .args(["-trace_logs", "-log_file"])
            .arg(dir.path().join("actions.log"));
        // SIPp computes the digest `uri` as `sip:remote_ip:remote_port` unless told
        // otherwise (over IPv6 without brackets, `sip:::1:5060`), but credentials must be
        // for the Request-URI (RFC 7616 §3.4.6): `sip:[service]@[remote_ip]:[remote_port]`
        // in the call scenarios, `sip:[remote_ip]:[remote_port]` in the register ones.
        match &self.service {
            Some(service) => {
                cmd.arg("-s").arg(service);
                cmd.arg("-auth_uri")
                    .arg(format!("{service}@{}", self.target));
            }
            None => {
                cmd.arg("-auth_uri").arg(self.target.to_string());
            }
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

    /// Every message SIPp received so far, in order (read from its live message trace).
    pub fn received_so_far(&self) -> Vec<String> {
        let messages = fs::read_to_string(self.dir.path().join("messages.log")).unwrap_or_default();
        traced(&messages, "message received", " bytes :\n\n")
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

/// The messages of a SIPp message trace going one way (`message received` or `message
/// sent`), in order.
fn traced(messages: &str, direction: &str, separator: &str) -> Vec<String> {
    messages
        .split("----------------------------------------------- ")
        .filter_map(|chunk| {
            let (head, body) = chunk.split_once(separator)?;
            head.contains(direction).then(|| body.trim().to_owned())
        })
        .collect()
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
        traced(&self.messages, direction, separator)
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

/// An INVITE as a provider sends it to the box for `did` (no credentials: a trunk is
/// recognised by where it comes from), from `local` over UDP, offering `sdp` (empty: none).
pub fn provider_invite(
    target: SocketAddr,
    local: SocketAddr,
    did: &str,
    call_id: &str,
    sdp: &str,
) -> String {
    let host = fmt_ip(target.ip());
    let me = fmt_ip(local.ip());
    let branch = format!("z9hG4bK{}", call_id.replace(['@', '.'], ""));
    let content_type = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "INVITE sip:{did}@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:0301234567@{me}>;tag=p{tag}\r\nTo: <sip:{did}@{host}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:0301234567@{local}>\r\n{content_type}Content-Length: {len}\r\n\r\n{sdp}",
        tag = call_id.len(),
        len = sdp.len(),
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

/// Amplitude (0..1 of full scale) of the `hz` component of the samples `x` (-1..1,
/// taken at `rate` per second): the Goertzel filter's output.
pub fn tone_amplitude(x: &[f64], hz: f64, rate: f64) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / rate).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = v + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - k * s1 * s2).max(0.0);
    2.0 * power.sqrt() / x.len() as f64
}

/// The next datagram within `wait`.
pub fn udp_recv(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).expect("set timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Some(buf);
            }
            // A signal to the test process (a child exiting) is not the end of the wait.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
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
    /// Speaks SIP on an existing connection (e.g. one made inside a network namespace with
    /// [`in_netns`]).
    pub fn from_stream(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

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
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
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

/// Daemon accessors used by the media tests.
impl Daemon {
    /// The relay's private port block (`[media] port_first..=port_last`).
    pub fn media_ports(&self) -> (u16, u16) {
        self.config.media_ports
    }

    /// `calls --json` as an array.
    pub fn calls(&self) -> Vec<Value> {
        as_array(self.ctl_json(&["calls"]), "calls")
    }
}

static SIP_IDS: AtomicU32 = AtomicU32::new(0);

/// A token unique within this process (and, through the pid, across test processes).
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SIP_IDS.fetch_add(1, Ordering::SeqCst)
    )
}

/// The first value of header `name` (case-insensitive, full form only).
pub fn header_value(msg: &str, name: &str) -> Option<String> {
    header_values(msg, name).into_iter().next()
}

/// The body of a SIP message: everything after the blank line.
pub fn body_of(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The method of a request, `None` for a response.
pub fn request_method(msg: &str) -> Option<&str> {
    let line = msg.lines().next()?;
    if line.starts_with("SIP/2.0") {
        return None;
    }
    line.split_whitespace().next()
}

/// The CSeq number and method of a message.
pub fn cseq_of(msg: &str) -> Option<(u32, String)> {
    let value = header_value(msg, "CSeq")?;
    let mut parts = value.split_whitespace();
    let number = parts.next()?.parse().ok()?;
    Some((number, parts.next()?.to_owned()))
}

/// The `tag` parameter of a From or To value.
pub fn tag_param(value: &str) -> Option<String> {
    let after_uri = value.rsplit_once('>').map_or(value, |(_, params)| params);
    after_uri.split(';').find_map(|param| {
        let (k, v) = param.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_owned())
    })
}

/// The URI inside a name-addr (`"x" <sip:a@b>;p=1`) or a bare `sip:a@b;p=1` value.
pub fn uri_in(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => value[open + 1..close].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}

/// The audio stream of an SDP body, as far as the media tests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpAudio {
    /// Connection address (media-level `c=`, else session-level).
    pub addr: IpAddr,
    /// RTP port of the `m=audio` line.
    pub port: u16,
    /// Payload type numbers of the `m=audio` line, in order.
    pub formats: Vec<u8>,
    /// The `a=` lines of the audio section, without the `a=`.
    pub attributes: Vec<String>,
}

impl SdpAudio {
    /// Where RTP for this stream goes.
    pub fn rtp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }

    /// Where RTCP for this stream goes (port + 1).
    pub fn rtcp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port.saturating_add(1))
    }
}

/// The first `m=audio` stream of `body`; `None` when there is none or it is malformed.
pub fn sdp_audio(body: &str) -> Option<SdpAudio> {
    let mut session_addr = None;
    let mut media_addr = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut attributes = Vec::new();
    let mut in_other_media = false;
    for line in body.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if audio.is_some() {
                break;
            }
            let mut parts = m.split_whitespace();
            if parts.next() == Some("audio") {
                let port = parts.next()?.split('/').next()?.parse().ok()?;
                let _proto = parts.next()?;
                let formats = parts.map(|f| f.parse().ok()).collect::<Option<Vec<u8>>>()?;
                audio = Some((port, formats));
            } else {
                in_other_media = true;
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let addr: IpAddr = c
                .split_whitespace()
                .nth(2)?
                .split('/')
                .next()?
                .parse()
                .ok()?;
            if audio.is_some() {
                media_addr = Some(addr);
            } else if !in_other_media {
                session_addr = Some(addr);
            }
        } else if let Some(attr) = line.strip_prefix("a=") {
            if audio.is_some() {
                attributes.push(attr.to_owned());
            }
        }
    }
    let (port, formats) = audio?;
    Some(SdpAudio {
        addr: media_addr.or(session_addr)?,
        port,
        formats,
        attributes,
    })
}

/// An SDP body for a phone receiving RTP at `rtp` with payload types `formats` (0 PCMU,
/// 8 PCMA and 101 telephone-event get their rtpmap lines).
pub fn sdp_body(rtp: SocketAddr, formats: &[u8]) -> String {
    let (family, ip) = match rtp.ip() {
        IpAddr::V4(v4) => ("IP4", v4.to_string()),
        IpAddr::V6(v6) => ("IP6", v6.to_string()),
    };
    let list: Vec<String> = formats.iter().map(u8::to_string).collect();
    let mut body = format!(
        "v=0\r\no=- 4242 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP {}\r\n",
        rtp.port(),
        list.join(" ")
    );
    for pt in formats {
        match pt {
            0 => body.push_str("a=rtpmap:0 PCMU/8000\r\n"),
            8 => body.push_str("a=rtpmap:8 PCMA/8000\r\n"),
            101 => body.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"),
            _ => {}
        }
    }
    body.push_str("a=ptime:20\r\na=sendrecv\r\n");
    body
}

/// An RTP packet: version 2, no padding, extension or CSRC.
pub fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + payload.len());
    packet.push(0x80);
    packet.push(pt & 0x7f);
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&ts.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The fields of a received RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpView {
    /// Payload type.
    pub pt: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Payload (after CSRCs and extension, padding included).
    pub payload: Vec<u8>,
}

/// Reads an RTP packet; `None` unless it is version 2 with a complete header.
pub fn parse_rtp(buf: &[u8]) -> Option<RtpView> {
    if buf.len() < 12 || buf[0] >> 6 != 2 {
        return None;
    }
    let mut header = 12 + 4 * usize::from(buf[0] & 0x0f);
    if buf[0] & 0x10 != 0 {
        let ext = buf.get(header..header + 4)?;
        header += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    Some(RtpView {
        pt: buf[1] & 0x7f,
        marker: buf[1] & 0x80 != 0,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload: buf.get(header..)?.to_vec(),
    })
}

/// An RTP socket on an even port of 127.0.0.1 and its RTCP socket on the next port.
pub fn rtp_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind RTP socket");
        let port = rtp.local_addr().expect("local addr").port();
        if !port.is_multiple_of(2) || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)) {
            return (rtp, rtcp);
        }
    }
    panic!("no free even/odd UDP port pair on 127.0.0.1");
}

/// Datagrams arriving on `sock` until `max` have come or `wait` has passed, with their
/// sources.
pub fn recv_datagrams(sock: &UdpSocket, max: usize, wait: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while got.len() < max {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => got.push((src, buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    got
}

/// A phone for `ext`, registered, with its RTP and RTCP sockets (see [`rtp_pair`]).
pub fn registered_with_rtp(
    daemon: &Daemon,
    ext: &str,
    password: &str,
) -> (SipPhone, UdpSocket, UdpSocket) {
    let mut sip = SipPhone::new(daemon, ext, password);
    sip.register();
    let (rtp, rtcp) = rtp_pair();
    (sip, rtp, rtcp)
}

/// A registered phone with its RTP socket (and its RTCP socket, kept bound), for tests
/// that send and measure audio: it offers PCMU from its RTP socket.
#[derive(Debug)]
pub struct AudioPhone {
    /// Its SIP side.
    pub sip: SipPhone,
    /// Where it sends and receives RTP.
    pub rtp: UdpSocket,
    _rtcp: UdpSocket,
}

impl AudioPhone {
    /// Adds extension `ext` to `daemon` and registers a phone for it.
    pub fn new(daemon: &Daemon, ext: &str) -> AudioPhone {
        let password = format!("audio-secret-{ext}");
        daemon.add_extension(ext, &password);
        let (sip, rtp, _rtcp) = registered_with_rtp(daemon, ext, &password);
        AudioPhone { sip, rtp, _rtcp }
    }

    /// Its offer: PCMU on its RTP socket, sendrecv.
    pub fn sdp(&self) -> String {
        sdp_body(self.rtp.local_addr().expect("local"), &[0])
    }

    /// Calls `number` and waits for the answer: the dialog and the relay's address.
    pub fn call(&mut self, daemon: &Daemon, number: &str) -> (Dialog, SocketAddr) {
        let inv = self.sip.invite(number, &self.sdp());
        let dialog = self
            .sip
            .await_answer(&inv, Duration::from_secs(5))
            .unwrap_or_else(|r| panic!("{number} not answered: {r:?}\n{}", daemon.log_text()));
        let relay = sdp_audio(&dialog.remote_sdp).expect("SDP").rtp_addr();
        (dialog, relay)
    }

    /// Waits for an INVITE and answers it with `sdp`: the INVITE, the dialog and the
    /// relay's address.
    pub fn answer(&mut self, daemon: &Daemon, sdp: &str) -> (String, Dialog, SocketAddr) {
        let invite = self
            .sip
            .await_request("INVITE", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{} got no INVITE:\n{}", self.sip.ext(), daemon.log_text()));
        let dialog = self.sip.answer(&invite, sdp);
        self.sip
            .await_ack(&dialog, Duration::from_secs(5))
            .expect("the ACK");
        let relay = sdp_audio(body_of(&invite)).expect("SDP").rtp_addr();
        (invite, dialog, relay)
    }
}

/// Sends `frames` × 20 ms of a `hz` tone (-6 dBFS, G.711 µ-law, payload type 0) from `sock`
/// to `to` in real time, as stream `ssrc` starting at sequence number 1.
pub fn send_ulaw_tone(sock: &UdpSocket, to: SocketAddr, hz: f64, frames: u16, ssrc: u32) {
    let start = Instant::now();
    for i in 0..frames {
        let ts = u32::from(i) * 160;
        let payload: Vec<u8> = (ts..ts + 160)
            .map(|n| {
                let v = 0.5 * (std::f64::consts::TAU * hz * f64::from(n) / 8000.0).sin();
                #[allow(clippy::cast_possible_truncation)]
                pbx_core::media::g711::linear_to_ulaw((v * 32767.0) as i16)
            })
            .collect();
        let packet = rtp_packet(0, i.wrapping_add(1), ts, ssrc, &payload);
        sock.send_to(&packet, to).expect("send RTP");
        let next = start + Duration::from_millis(20) * (u32::from(i) + 1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// The µ-law audio (-1..1) of the RTP packets of payload type 0 arriving on `sock` within
/// `wait`, in arrival order, and how many packets came.
pub fn recv_ulaw(sock: &UdpSocket, wait: Duration) -> (Vec<f64>, usize) {
    let packets = recv_datagrams(sock, 10_000, wait);
    let count = packets.len();
    let audio = packets
        .iter()
        .filter_map(|(_, p)| parse_rtp(p))
        .filter(|r| r.pt == 0)
        .flat_map(|r| r.payload)
        .map(|u| f64::from(pbx_core::media::g711::ulaw_to_linear(u)) / 32768.0)
        .collect();
    (audio, count)
}

/// A dialog as one phone sees it: enough to send in-dialog requests and answer them.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our From value in requests we send (with our tag).
    pub local_party: String,
    /// Our To value in requests we send (with the peer's tag).
    pub remote_party: String,
    /// Request-URI of in-dialog requests (the peer's Contact).
    pub remote_target: String,
    /// Last CSeq number we used.
    pub cseq: u32,
    /// The peer's SDP (from its INVITE or its 200 OK).
    pub remote_sdp: String,
    /// The 200 OK we sent for an incoming INVITE (retransmitted until the ACK comes).
    pub answer_sent: Option<String>,
}

/// An INVITE a phone sent and is waiting for the final answer to.
#[derive(Debug, Clone)]
pub struct OutgoingInvite {
    /// Call-ID.
    pub call_id: String,
    /// Request-URI.
    pub uri: String,
    /// Our From value (with tag).
    pub local_party: String,
    /// CSeq of the (authenticated) INVITE.
    pub cseq: u32,
    /// Via branch of the (authenticated) INVITE.
    pub branch: String,
}

/// Messages a phone keeps around when they did not match what it waited for.
const INBOX_LIMIT: usize = 128;

/// A SIP phone over raw UDP on 127.0.0.1: registers with digest auth, calls, answers and
/// hangs up. Every wait is bounded; failures panic with what the phone received.
#[derive(Debug)]
pub struct SipPhone {
    sock: UdpSocket,
    local: SocketAddr,
    server: SocketAddr,
    ext: String,
    password: String,
    inbox: VecDeque<String>,
    seen: VecDeque<String>,
    /// A display name put before the From URI of every message, encoded in Latin-1 (as
    /// older phones send it); see [`SipPhone::with_latin1_name`].
    latin1_name: Option<String>,
}

impl SipPhone {
    /// A phone for extension `ext` talking to the daemon's first address.
    pub fn new(daemon: &Daemon, ext: &str, password: &str) -> Self {
        let server = daemon.sip_addr();
        Self::on_socket(udp_client(server), server, ext, password)
    }

    /// The phone's SIP address (its Contact).
    pub fn sip_addr(&self) -> SocketAddr {
        self.local
    }

    /// The last messages the phone received, for failure messages.
    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n-----\n")
    }

    /// Sends one message to the daemon.
    pub fn send(&self, msg: &str) {
        self.sock
            .send(&self.wire_bytes(msg))
            .expect("send SIP over UDP");
    }

    /// The phone's From display name becomes `name`, sent in Latin-1 (one byte per
    /// character below U+0100, so `Jörg` goes out as `J\xf6rg`: not UTF-8).
    pub fn with_latin1_name(mut self, name: &str) -> Self {
        self.latin1_name = Some(name.to_owned());
        self
    }

    /// `msg` as this phone puts it on the wire (see [`SipPhone::with_latin1_name`]).
    pub fn wire_bytes(&self, msg: &str) -> Vec<u8> {
        let Some(name) = &self.latin1_name else {
            return msg.as_bytes().to_vec();
        };
        let text = msg.replacen("\r\nFrom: <", &format!("\r\nFrom: \"{name}\" <"), 1);
        text.chars()
            .flat_map(|c| match u8::try_from(u32::from(c)) {
                Ok(b) => vec![b],
                Err(_) => c.to_string().into_bytes(),
            })
            .collect()
    }

    /// The next message for which `pred` holds, within `wait`; others are kept for later
    /// waits (the oldest are forgotten beyond a bound).
    pub fn recv_matching(
        &mut self,
        wait: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        if let Some(i) = self.inbox.iter().position(|m| pred(m)) {
            return self.inbox.remove(i);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let bytes = udp_recv(&self.sock, left)?;
            let msg = String::from_utf8_lossy(&bytes).into_owned();
            if msg.trim().is_empty() {
                continue;
            }
            if self.seen.len() == INBOX_LIMIT {
                self.seen.pop_front();
            }
            self.seen.push_back(msg.clone());
            if pred(&msg) {
                return Some(msg);
            }
            if self.inbox.len() == INBOX_LIMIT {
                self.inbox.pop_front();
            }
            self.inbox.push_back(msg);
        }
    }

    /// The next request `method` within `wait`.
    pub fn await_request(&mut self, method: &str, wait: Duration) -> Option<String> {
        self.recv_matching(wait, |m| request_method(m) == Some(method))
    }

    /// The final response (>= 200) to our `method` request with this Call-ID and CSeq.
    pub fn await_final(
        &mut self,
        call_id: &str,
        cseq: u32,
        method: &str,
        wait: Duration,
    ) -> Option<String> {
        self.recv_matching(wait, |m| {
            status_of(m.as_bytes()).is_some_and(|s| s >= 200)
                && header_value(m, "Call-ID").as_deref() == Some(call_id)
                && cseq_of(m).is_some_and(|(n, meth)| n == cseq && meth == method)
        })
    }

    fn host(&self) -> String {
        fmt_ip(self.server.ip())
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{};transport=udp>", self.ext, self.local)
    }

    /// Registers with digest auth (the first challenge offered); panics unless it gets 200.
    pub fn register(&mut self) {
        let call_id = unique("reg");
        let first = register_request(self.server, Transport::Udp, self.local, &self.ext, &call_id);
        self.send(&first);
        let resp = self
            .await_final(&call_id, 1, "REGISTER", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no answer to REGISTER of {}", self.ext));
        assert_eq!(status_of(resp.as_bytes()), Some(401), "{resp}");
        let challenge = header_value(&resp, "WWW-Authenticate").expect("401 has a challenge");
        let uri = format!("sip:{}", self.host());
        let authorization =
            digest_authorization(&challenge, "REGISTER", &uri, &self.ext, &self.password);
        let second = first
            .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
            .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
            .replace(
                "Content-Length: 0\r\n",
                &format!("Authorization: {authorization}\r\nContent-Length: 0\r\n"),
            );
        self.send(&second);
        let resp = self
            .await_final(&call_id, 2, "REGISTER", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no answer to the credentials of {}", self.ext));
        assert_eq!(status_of(resp.as_bytes()), Some(200), "{resp}");
    }

    fn invite_request(&self, inv: &OutgoingInvite, sdp: &str, extra_headers: &str) -> String {
        format!(
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\nUser-Agent: outpost-tests\r\n{extra_headers}Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            uri = inv.uri,
            local = self.local,
            branch = inv.branch,
            from = inv.local_party,
            to = inv.uri,
            call_id = inv.call_id,
            cseq = inv.cseq,
            contact = self.contact(),
            len = sdp.len(),
        )
    }

    /// ACK for a non-2xx final response: same branch and Request-URI as the INVITE.
    fn ack_failure(&self, inv: &OutgoingInvite, resp: &str) {
        let to = header_value(resp, "To").unwrap_or_else(|| format!("<{}>", inv.uri));
        let ack = format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            uri = inv.uri,
            local = self.local,
            branch = inv.branch,
            from = inv.local_party,
            call_id = inv.call_id,
            cseq = inv.cseq,
        );
        self.send(&ack);
    }

    /// Calls `callee` offering `sdp`: sends the INVITE, ACKs the 407 and sends it again with
    /// Proxy-Authorization. Returns once the authenticated INVITE is sent.
    pub fn invite(&mut self, callee: &str, sdp: &str) -> OutgoingInvite {
        let mut inv = OutgoingInvite {
            call_id: unique("call"),
            uri: format!("sip:{callee}@{}:{}", self.host(), self.server.port()),
            local_party: format!("<sip:{}@{}>;tag={}", self.ext, self.host(), unique("a")),
            cseq: 1,
            branch: format!("z9hG4bK{}", unique("b")),
        };
        self.send(&self.invite_request(&inv, sdp, ""));
        let resp = self
            .await_final(&inv.call_id, 1, "INVITE", Duration::from_secs(5))
            .unwrap_or_else(|| {
                panic!(
                    "no final answer to the INVITE; received:\n{}",
                    self.transcript()
                )
            });
        assert_eq!(status_of(resp.as_bytes()), Some(407), "{resp}");
        self.ack_failure(&inv, &resp);
        let challenge =
            header_value(&resp, "Proxy-Authenticate").expect("407 has a Proxy-Authenticate");
        let authorization =
            digest_authorization(&challenge, "INVITE", &inv.uri, &self.ext, &self.password);
        inv.cseq = 2;
        inv.branch = format!("z9hG4bK{}", unique("b"));
        let with_auth = self.invite_request(
            &inv,
            sdp,
            &format!("Proxy-Authorization: {authorization}\r\n"),
        );
        self.send(&with_auth);
        inv
    }

    /// Waits for the final answer to `inv`; a 2xx is ACKed and gives the dialog, anything
    /// else is ACKed and returned as the error (`None` inside when nothing came).
    pub fn await_answer(
        &mut self,
        inv: &OutgoingInvite,
        wait: Duration,
    ) -> Result<Dialog, Option<String>> {
        let resp = self
            .await_final(&inv.call_id, inv.cseq, "INVITE", wait)
            .ok_or(None)?;
        let status = status_of(resp.as_bytes()).unwrap_or(0);
        if !(200..300).contains(&status) {
            self.ack_failure(inv, &resp);
            return Err(Some(resp));
        }
        let remote_party = header_value(&resp, "To").unwrap_or_default();
        let remote_target = header_value(&resp, "Contact")
            .map(|c| uri_in(&c))
            .unwrap_or_else(|| inv.uri.clone());
        let dialog = Dialog {
            call_id: inv.call_id.clone(),
            local_party: inv.local_party.clone(),
            remote_party,
            remote_target,
            cseq: inv.cseq,
            remote_sdp: body_of(&resp).to_owned(),
            answer_sent: None,
        };
        self.send(&self.in_dialog_request(&dialog, "ACK", dialog.cseq));
        Ok(dialog)
    }

    fn in_dialog_request(&self, dialog: &Dialog, method: &str, cseq: u32) -> String {
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            uri = dialog.remote_target,
            local = self.local,
            branch = unique("d"),
            from = dialog.local_party,
            to = dialog.remote_party,
            call_id = dialog.call_id,
        )
    }

    /// Sends a response to `req`, copying Via, From, To (adding `to_tag` unless the To has
    /// a tag), Call-ID and CSeq; a 2xx to an INVITE carries our Contact.
    pub fn reply(&self, req: &str, status: u16, to_tag: Option<&str>, body: &str) -> String {
        let reason = match status {
            100 => "Trying",
            180 => "Ringing",
            200 => "OK",
            486 => "Busy Here",
            _ => "Response",
        };
        let mut resp = format!("SIP/2.0 {status} {reason}\r\n");
        for via in header_values(req, "Via") {
            let _ = write!(resp, "Via: {via}\r\n");
        }
        let from = header_value(req, "From").unwrap_or_default();
        let mut to = header_value(req, "To").unwrap_or_default();
        if let Some(tag) = to_tag {
            if tag_param(&to).is_none() {
                let _ = write!(to, ";tag={tag}");
            }
        }
        let call_id = header_value(req, "Call-ID").unwrap_or_default();
        let cseq = header_value(req, "CSeq").unwrap_or_default();
        let _ = write!(
            resp,
            "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
        );
        if request_method(req) == Some("INVITE") && (200..300).contains(&status) {
            let _ = write!(resp, "Contact: {}\r\n", self.contact());
        }
        if !body.is_empty() {
            resp.push_str("Content-Type: application/sdp\r\n");
        }
        let _ = write!(resp, "Content-Length: {}\r\n\r\n{body}", body.len());
        self.send(&resp);
        resp
    }

    /// Answers an incoming INVITE with 200 OK and `sdp`; returns the dialog. The ACK is
    /// awaited separately ([`SipPhone::await_ack`]).
    pub fn answer(&mut self, invite: &str, sdp: &str) -> Dialog {
        let tag = unique("b");
        let ok = self.reply(invite, 200, Some(&tag), sdp);
        let from = header_value(invite, "From").unwrap_or_default();
        let to = header_value(&ok, "To").unwrap_or_default();
        Dialog {
            call_id: header_value(invite, "Call-ID").unwrap_or_default(),
            local_party: to,
            remote_party: from,
            remote_target: header_value(invite, "Contact")
                .map(|c| uri_in(&c))
                .unwrap_or_else(|| format!("sip:{}", self.server)),
            cseq: 0,
            remote_sdp: body_of(invite).to_owned(),
            answer_sent: Some(ok),
        }
    }

    /// Waits for the ACK of our 200 OK, retransmitting it every 500 ms.
    pub fn await_ack(&mut self, dialog: &Dialog, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let call_id = dialog.call_id.clone();
            let ack = self.recv_matching(left.min(Duration::from_millis(500)), |m| {
                request_method(m) == Some("ACK")
                    && header_value(m, "Call-ID").as_deref() == Some(call_id.as_str())
            });
            if ack.is_some() {
                return ack;
            }
            if let Some(ok) = &dialog.answer_sent {
                self.send(ok);
            }
        }
    }

    /// Sends a BYE in `dialog`; returns its CSeq number (for [`SipPhone::await_final`]).
    pub fn send_bye(&mut self, dialog: &mut Dialog) -> u32 {
        dialog.cseq += 1;
        let bye = self.in_dialog_request(dialog, "BYE", dialog.cseq);
        self.send(&bye);
        dialog.cseq
    }

    /// Waits for a BYE (any dialog) and answers it 200; returns the BYE.
    pub fn answer_bye(&mut self, wait: Duration) -> Option<String> {
        let bye = self.await_request("BYE", wait)?;
        self.reply(&bye, 200, None, "");
        Some(bye)
    }
}

// ---------------------------------------------------------------------------------------
// Network namespaces for the firewall tests: an appliance, a phone and an attacker on one
// bridge, the real outpostd and SIPp run inside them with `ip netns exec`, raw sockets are
// created inside them with setns(2). Root only: these helpers panic without it.
// ---------------------------------------------------------------------------------------

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);
static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// The SIP port of the appliance in a [`FwLab`].
pub const LAB_SIP_PORT: u16 = 5060;

/// Panics unless this process runs as root and `ip` and `nft` work: the firewall tests
/// build network namespaces and read nftables. They fail with this message, never skip.
pub fn require_root(what: &str) {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse::<u32>().ok());
    assert_eq!(
        euid,
        Some(0),
        "{what} must run as root (they build network namespaces and read the kernel's \
         nftables); CI runs them as root and they never skip. Run e.g. \
         `sudo -E cargo test -p outpost-tests --test firewall`"
    );
    for (tool, flag) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{what} need `{tool}` (apt-get install iproute2 nftables; tests/run-all does)"
        );
    }
}

/// Runs `program args` and panics with its stderr unless it succeeds; returns stdout.
fn run_checked(program: &str, args: &[&str]) -> String {
    let out = run_with_timeout(Command::new(program).args(args), Duration::from_secs(10));
    assert_eq!(
        out.code,
        Some(0),
        "`{program} {}` failed: {}",
        args.join(" "),
        out.stderr.trim()
    );
    out.stdout
}

/// A network namespace of this test, deleted on drop after killing whatever still runs in
/// it (only this test's processes can: the name is unique to this process).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `op-<role>-<pid>-<n>` with its loopback up.
    pub fn create(role: &str) -> Self {
        let n = NETNS_SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("op-{role}-{}-{n}", std::process::id());
        run_checked("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`: add the program's arguments and run it.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name.as_str(), program]);
        cmd
    }

    /// `ip -n <name> args...`; panics unless it succeeds. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_checked("ip", &full)
    }

    /// `nft args...` inside the namespace (10 s cap), whatever its outcome.
    pub fn nft(&self, args: &[&str]) -> CmdOutput {
        run_with_timeout(self.command("nft").args(args), Duration::from_secs(10))
    }

    /// A UDP socket bound to `bind` inside this namespace.
    pub fn udp_socket(&self, bind: SocketAddr) -> UdpSocket {
        udp_socket_in(&self.name, bind)
    }

    /// Elements of set `set` of table `inet outpost`: each address with the seconds left
    /// until the kernel expires it (`None` without a timeout). `None` when the table or the
    /// set does not exist.
    pub fn outpost_set(&self, set: &str) -> Option<Vec<(IpAddr, Option<u64>)>> {
        let out = self.nft(&["-j", "list", "set", "inet", "outpost", set]);
        if out.code != Some(0) {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        let set = v["nftables"]
            .as_array()?
            .iter()
            .find_map(|o| o.get("set"))?;
        let Some(elems) = set.get("elem").and_then(Value::as_array) else {
            return Some(Vec::new());
        };
        let parsed = elems
            .iter()
            .filter_map(|e| match e {
                Value::String(s) => Some((s.parse().ok()?, None)),
                Value::Object(_) => {
                    let inner = e.get("elem").unwrap_or(e);
                    let addr = inner.get("val")?.as_str()?.parse().ok()?;
                    Some((addr, inner.get("expires").and_then(Value::as_u64)))
                }
                _ => None,
            })
            .collect();
        Some(parsed)
    }

    /// Packets counted by the named counter `name` of table `inet outpost` (`None` when it
    /// does not exist).
    pub fn outpost_counter(&self, name: &str) -> Option<u64> {
        let out = self.nft(&["-j", "list", "counter", "inet", "outpost", name]);
        if out.code != Some(0) {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        v["nftables"]
            .as_array()?
            .iter()
            .find_map(|o| o.get("counter"))?
            .get("packets")?
            .as_u64()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = run_with_timeout(
            Command::new("ip").args(["netns", "pids", self.name.as_str()]),
            Duration::from_secs(5),
        );
        for pid in pids.stdout.split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>() {
                send_signal(pid, "KILL");
            }
        }
        let _ = run_with_timeout(
            Command::new("ip").args(["netns", "del", self.name.as_str()]),
            Duration::from_secs(5),
        );
    }
}

/// A UDP socket bound to `bind` inside network namespace `ns` (by name). setns(2) moves
/// only the calling thread, and a socket keeps the namespace it was created in, so a
/// short-lived thread creates it.
pub fn udp_socket_in(ns: &str, bind: SocketAddr) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
        UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind} in {path}: {e}"))
    })
    .join()
    .expect("the socket thread does not panic")
}

/// Runs `f` on a thread inside network namespace `ns` (by name) and returns its result:
/// sockets it creates belong to that namespace and can be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
        f()
    })
    .join()
    .expect("the namespace thread does not panic")
}

/// Status of an OPTIONS sent from `sock` to `target` (connects `sock` to it); `None`
/// when nothing came back within `wait`.
pub fn options_status_on(sock: &UdpSocket, target: SocketAddr, wait: Duration) -> Option<u16> {
    sock.connect(target).ok()?;
    let local = sock.local_addr().ok()?;
    let req = sip_request(
        "OPTIONS",
        &format!("sip:{}", fmt_ip(target.ip())),
        Transport::Udp,
        local,
        &unique("opt"),
        "",
    );
    let resp = udp_exchange(sock, req.as_bytes(), wait)?;
    status_of(&resp)
}

/// Three namespaces on one bridge: `appliance` (10.201.N.1, fd00:201:N::1, owns the
/// bridge), `phone` (.2, ::2) and `attacker` (.3 to .6, ::3). N comes from a counter and
/// the pid, so each lab of a test run has its own /24 and /64.
#[derive(Debug)]
pub struct FwLab {
    /// Runs outpostd.
    pub appliance: Netns,
    /// Legitimate phones (SIPp).
    pub phone: Netns,
    /// The attacker.
    pub attacker: Netns,
    subnet: u8,
}

impl FwLab {
    /// Builds the namespaces, the bridge and the addresses (no DAD on IPv6).
    pub fn new() -> Self {
        let seq = LAB_SEQ.fetch_add(1, Ordering::SeqCst);
        let subnet = u8::try_from((std::process::id().wrapping_mul(7).wrapping_add(seq)) % 250)
            .expect("below 250")
            + 1;
        let lab = Self {
            appliance: Netns::create("app"),
            phone: Netns::create("phone"),
            attacker: Netns::create("atk"),
            subnet,
        };
        let app = &lab.appliance;
        app.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
        app.ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.appliance_ip()),
            "dev",
            "br0",
        ]);
        app.ip(&[
            "addr",
            "add",
            &format!("{}/64", lab.appliance_ip6()),
            "dev",
            "br0",
            "nodad",
        ]);
        app.ip(&["link", "set", "br0", "up"]);
        let hosts: [(&Netns, &str, Vec<Ipv4Addr>, Ipv6Addr); 2] = [
            (&lab.phone, "vphone", vec![lab.phone_ip()], lab.phone_ip6()),
            (
                &lab.attacker,
                "vatk",
                lab.attacker_ips().to_vec(),
                lab.attacker_ip6(),
            ),
        ];
        for (ns, port, v4, v6) in hosts {
            app.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            app.ip(&["link", "set", port, "master", "br0"]);
            app.ip(&["link", "set", port, "up"]);
            for addr in v4 {
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            }
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        lab
    }

    /// N of 10.201.N.0/24.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    fn v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 201, self.subnet, host)
    }

    fn v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x201, u16::from(self.subnet), 0, 0, 0, 0, host)
    }

    /// 10.201.N.1.
    pub fn appliance_ip(&self) -> Ipv4Addr {
        self.v4(1)
    }

    /// 10.201.N.2.
    pub fn phone_ip(&self) -> Ipv4Addr {
        self.v4(2)
    }

    /// 10.201.N.3, the attacker's first address.
    pub fn attacker_ip(&self) -> Ipv4Addr {
        self.v4(3)
    }

    /// The attacker's addresses: 10.201.N.3 to .6.
    pub fn attacker_ips(&self) -> [Ipv4Addr; 4] {
        [self.v4(3), self.v4(4), self.v4(5), self.v4(6)]
    }

    /// fd00:201:N::1.
    pub fn appliance_ip6(&self) -> Ipv6Addr {
        self.v6(1)
    }

    /// fd00:201:N::2.
    pub fn phone_ip6(&self) -> Ipv6Addr {
        self.v6(2)
    }

    /// fd00:201:N::3.
    pub fn attacker_ip6(&self) -> Ipv6Addr {
        self.v6(3)
    }

    /// The appliance's SIP address over IPv4.
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from((self.appliance_ip(), LAB_SIP_PORT))
    }

    /// The appliance's SIP address over IPv6.
    pub fn sip_addr6(&self) -> SocketAddr {
        SocketAddr::from((self.appliance_ip6(), LAB_SIP_PORT))
    }

    /// A daemon configuration listening on the appliance's two addresses (media relay on
    /// them too); add `[firewall]` tables with [`DaemonConfig::with_toml`].
    pub fn daemon_config(&self) -> DaemonConfig {
        let mut config = DaemonConfig::on(vec![self.sip_addr(), self.sip_addr6()]);
        // The appliance namespace is private: no need for the host-wide port blocks.
        config.media_ports = (10_000, 10_099);
        config
    }

    /// A UDP socket of the attacker at `src` (one of its addresses), any port.
    pub fn attacker_socket(&self, src: IpAddr) -> UdpSocket {
        self.attacker.udp_socket(SocketAddr::new(src, 0))
    }

    /// A UDP socket of the phone namespace at `src`, any port.
    pub fn phone_socket(&self, src: IpAddr) -> UdpSocket {
        self.phone.udp_socket(SocketAddr::new(src, 0))
    }
}

impl Default for FwLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Daemon {
    /// Starts a daemon inside network namespace `ns` (`ip netns exec`) and waits until
    /// `outpostctl status` answers (over the Unix socket, which crosses namespaces) and an
    /// OPTIONS sent inside the namespace gets 200.
    pub fn start_in(ns: &Netns, config: DaemonConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outpost-fwtest-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = dir.path().join("data");
        let socket = dir.path().join("admin.sock");
        let config_path = dir.path().join("outpost.toml");
        // Host daemons leave nftables alone (`enforce = "off"`); one in its own namespace
        // owns that namespace's table, as on the appliance.
        let toml = config
            .to_toml(&data_dir, &socket)
            .replace("\nenforce = \"off\"\n", "\nenforce = \"auto\"\n");
        fs::write(&config_path, toml).expect("write config");
        let mut daemon = Self {
            child: None,
            dir,
            config,
            config_path,
            data_dir,
            socket,
            logs: Vec::new(),
            netns: Some(ns.name().to_owned()),
        };
        daemon.spawn();
        daemon
    }

    /// The configuration file the daemon was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
}

impl SipPhone {
    /// A phone for `ext` on an existing UDP socket (e.g. one made inside a network
    /// namespace by [`Netns::udp_socket`]), talking to `server`.
    pub fn on_socket(sock: UdpSocket, server: SocketAddr, ext: &str, password: &str) -> Self {
        sock.connect(server).expect("connect the phone's socket");
        let local = sock.local_addr().expect("phone local addr");
        Self {
            sock,
            local,
            server,
            ext: ext.to_owned(),
            password: password.to_owned(),
            inbox: VecDeque::new(),
            seen: VecDeque::new(),
            latin1_name: None,
        }
    }

    /// Registers with digest auth and returns the final status: of the REGISTER with
    /// credentials when the first got a 401, else of the first. `None` when an answer did
    /// not come within `wait` (each step). Never panics on the daemon's answers.
    pub fn register_status(&mut self, wait: Duration) -> Option<u16> {
        self.register_flow(wait, false, None)
    }

    /// Un-registers every binding of the extension (`Contact: *`, `Expires: 0`) with digest
    /// auth; the final status as [`SipPhone::register_status`].
    pub fn unregister_status(&mut self, wait: Duration) -> Option<u16> {
        self.register_flow(wait, true, None)
    }

    /// Registers with credentials whose digest `uri` is `digest_uri` instead of the
    /// Request-URI; the final status as [`SipPhone::register_status`].
    pub fn register_status_with_digest_uri(
        &mut self,
        wait: Duration,
        digest_uri: &str,
    ) -> Option<u16> {
        self.register_flow(wait, false, Some(digest_uri))
    }

    fn register_flow(
        &mut self,
        wait: Duration,
        unregister: bool,
        digest_uri: Option<&str>,
    ) -> Option<u16> {
        let call_id = unique("reg");
        let mut first =
            register_request(self.server, Transport::Udp, self.local, &self.ext, &call_id);
        if unregister {
            let contact = format!(
                "Contact: <sip:{}@{};transport=udp>\r\n",
                self.ext, self.local
            );
            first = first
                .replace(&contact, "Contact: *\r\n")
                .replace("Expires: 300\r\n", "Expires: 0\r\n");
        }
        self.send(&first);
        let resp = self.await_final(&call_id, 1, "REGISTER", wait)?;
        let status = status_of(resp.as_bytes())?;
        if status != 401 {
            return Some(status);
        }
        let challenge = header_value(&resp, "WWW-Authenticate")?;
        let uri = digest_uri.map_or_else(|| format!("sip:{}", self.host()), str::to_owned);
        let authorization =
            digest_authorization(&challenge, "REGISTER", &uri, &self.ext, &self.password);
        let second = first
            .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER")
            .replace(";branch=z9hG4bK", ";branch=z9hG4bK2nd")
            .replace(
                "Content-Length: 0\r\n",
                &format!("Authorization: {authorization}\r\nContent-Length: 0\r\n"),
            );
        self.send(&second);
        let resp = self.await_final(&call_id, 2, "REGISTER", wait)?;
        status_of(resp.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------
// Re-INVITEs (hold and resume) and MWI subscriptions (RFC 3842) for the voicemail tests.
// ---------------------------------------------------------------------------------------

impl SipPhone {
    /// An in-dialog request of `dialog` with our Contact and, when `body` is not empty, a
    /// body of `content_type`.
    fn in_dialog_with_body(
        &self,
        dialog: &Dialog,
        method: &str,
        cseq: u32,
        content_type: &str,
        body: &str,
    ) -> String {
        let content = if body.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: {contact}\r\nUser-Agent: outpost-tests\r\n{content}Content-Length: {len}\r\n\r\n{body}",
            uri = dialog.remote_target,
            local = self.local,
            branch = unique("r"),
            from = dialog.local_party,
            to = dialog.remote_party,
            call_id = dialog.call_id,
            contact = self.contact(),
            len = body.len(),
        )
    }

    /// Sends a bodiless `method` request in `dialog` with `headers` (each line ending in
    /// CRLF) added; returns its CSeq number, for [`SipPhone::await_final`].
    pub fn send_in_dialog(&mut self, dialog: &mut Dialog, method: &str, headers: &str) -> u32 {
        dialog.cseq += 1;
        let request = self.in_dialog_with_body(dialog, method, dialog.cseq, "", "");
        let request = request.replacen("Content-Length:", &format!("{headers}Content-Length:"), 1);
        self.send(&request);
        dialog.cseq
    }

    /// The extension this phone registers as.
    pub fn ext(&self) -> &str {
        &self.ext
    }

    /// Sends a re-INVITE in `dialog` offering `sdp` (e.g. `a=sendonly` to hold, `a=sendrecv`
    /// to resume); returns its CSeq number, for [`SipPhone::await_final`] and
    /// [`SipPhone::ack_2xx`].
    pub fn reinvite(&mut self, dialog: &mut Dialog, sdp: &str) -> u32 {
        dialog.cseq += 1;
        let invite =
            self.in_dialog_with_body(dialog, "INVITE", dialog.cseq, "application/sdp", sdp);
        self.send(&invite);
        dialog.cseq
    }

    /// ACKs the 2xx to our (re-)INVITE with CSeq number `cseq` in `dialog`.
    pub fn ack_2xx(&self, dialog: &Dialog, cseq: u32) {
        self.send(&self.in_dialog_request(dialog, "ACK", cseq));
    }

    /// Subscribes to its own mailbox (`Event: message-summary`, RFC 3842) for an hour,
    /// answering the digest challenge (407 or 401); panics unless the subscription is
    /// accepted with a 2xx within `wait` per step. Returns the subscription's dialog; the
    /// NOTIFYs come through [`SipPhone::await_notify`].
    pub fn subscribe_mwi(&mut self, wait: Duration) -> Dialog {
        let ext = self.ext.clone();
        self.subscribe(
            &ext,
            "message-summary",
            "application/simple-message-summary",
            wait,
        )
        .unwrap_or_else(|resp| panic!("SUBSCRIBE refused:\n{resp}"))
    }

    /// Subscribes to `event` (`message-summary`, `dialog`, `presence`) of extension
    /// `watched` for an hour, answering the digest challenge (407 or 401); panics unless
    /// the SUBSCRIBE is challenged and then answered within `wait` per step. Returns the
    /// subscription's dialog, or the final answer when it is not a 2xx; the NOTIFYs come
    /// through [`SipPhone::await_notify`].
    pub fn subscribe(
        &mut self,
        watched: &str,
        event: &str,
        accept: &str,
        wait: Duration,
    ) -> Result<Dialog, String> {
        let host = self.host();
        let uri = format!("sip:{watched}@{host}:{}", self.server.port());
        let mut dialog = Dialog {
            call_id: unique("sub"),
            local_party: format!("<sip:{}@{host}>;tag={}", self.ext, unique("s")),
            remote_party: format!("<sip:{watched}@{host}>"),
            remote_target: uri,
            cseq: 0,
            remote_sdp: String::new(),
            answer_sent: None,
        };
        let resp = self.resubscribe(&mut dialog, event, accept, 3600, wait)?;
        dialog.remote_party = header_value(&resp, "To").unwrap_or_default();
        if let Some(contact) = header_value(&resp, "Contact") {
            dialog.remote_target = uri_in(&contact);
        }
        Ok(dialog)
    }

    /// SUBSCRIBE in `dialog` for `expires` seconds, answering the digest challenge (407 or
    /// 401): a new subscription while the remote party has no tag, else a refresh (or with
    /// `expires` 0 its end). Returns the 2xx, or the final answer when it is not one;
    /// panics when an answer does not come within `wait`.
    pub fn resubscribe(
        &mut self,
        dialog: &mut Dialog,
        event: &str,
        accept: &str,
        expires: u32,
        wait: Duration,
    ) -> Result<String, String> {
        let subscribe = |phone: &Self, dialog: &Dialog, auth: &str| {
            format!(
                "SUBSCRIBE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: {contact}\r\nEvent: {event}\r\nAccept: {accept}\r\nExpires: {expires}\r\nUser-Agent: outpost-tests\r\n{auth}Content-Length: 0\r\n\r\n",
                uri = dialog.remote_target,
                local = phone.local,
                branch = unique("s"),
                from = dialog.local_party,
                to = dialog.remote_party,
                call_id = dialog.call_id,
                cseq = dialog.cseq,
                contact = phone.contact(),
            )
        };
        dialog.cseq += 1;
        self.send(&subscribe(self, dialog, ""));
        let resp = self
            .await_final(&dialog.call_id, dialog.cseq, "SUBSCRIBE", wait)
            .unwrap_or_else(|| {
                panic!(
                    "no answer to the SUBSCRIBE of {}; received:\n{}",
                    self.ext,
                    self.transcript()
                )
            });
        let (challenge, answer) = match status_of(resp.as_bytes()) {
            Some(407) => ("Proxy-Authenticate", "Proxy-Authorization"),
            Some(401) => ("WWW-Authenticate", "Authorization"),
            _ => return Err(resp),
        };
        let challenge = header_value(&resp, challenge)
            .unwrap_or_else(|| panic!("the challenge has no {challenge}:\n{resp}"));
        let authorization = digest_authorization(
            &challenge,
            "SUBSCRIBE",
            &dialog.remote_target,
            &self.ext,
            &self.password,
        );
        dialog.cseq += 1;
        self.send(&subscribe(
            self,
            dialog,
            &format!("{answer}: {authorization}\r\n"),
        ));
        let resp = self
            .await_final(&dialog.call_id, dialog.cseq, "SUBSCRIBE", wait)
            .unwrap_or_else(|| {
                panic!(
                    "no answer to the authenticated SUBSCRIBE of {}; received:\n{}",
                    self.ext,
                    self.transcript()
                )
            });
        if status_of(resp.as_bytes()).is_some_and(|s| (200..300).contains(&s)) {
            Ok(resp)
        } else {
            Err(resp)
        }
    }

    /// The next NOTIFY of the subscription `call_id` whose CSeq is above `after_cseq`,
    /// within `wait`, answered 200. Retransmissions of earlier NOTIFYs (sent again because
    /// the phone was busy waiting for something else) are answered 200 too and skipped.
    pub fn await_notify(
        &mut self,
        call_id: &str,
        after_cseq: u32,
        wait: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let notify = self.recv_matching(left, |m| {
                request_method(m) == Some("NOTIFY")
                    && header_value(m, "Call-ID").as_deref() == Some(call_id)
            })?;
            self.reply(&notify, 200, None, "");
            if cseq_of(&notify).is_some_and(|(n, _)| n > after_cseq) {
                return Some(notify);
            }
        }
    }
}

/// The spoken prompts, made by `scripts/make-prompts` (which installs espeak-ng and sox when
/// missing) into `dir`, once per test process. Test files that need real prompt audio
/// share this; pass them cargo's `CARGO_TARGET_TMPDIR`.
pub fn generated_prompts(tmp: &Path) -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tmp.join("prompts");
        let script = workspace_root().join("scripts").join("make-prompts");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg(&dir);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(300));
        assert_eq!(
            out.code,
            Some(0),
            "{} {} failed: {out:?}",
            script.display(),
            dir.display()
        );
        dir
    })
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
    fn sdp_audio_reads_the_media_level_address_and_formats() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\nc=IN IP4 10.0.0.2\r\na=rtpmap:101 telephone-event/8000\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 10.0.0.3\r\n";
        let audio = sdp_audio(body).expect("an audio stream");
        assert_eq!(
            audio.rtp_addr(),
            "10.0.0.2:4000".parse().expect("valid addr")
        );
        assert_eq!(audio.rtcp_addr().port(), 4001);
        assert_eq!(audio.formats, vec![0, 8, 101]);
        assert_eq!(audio.attributes, vec!["rtpmap:101 telephone-event/8000"]);
        let offer = sdp_body("127.0.0.1:7000".parse().expect("valid addr"), &[0, 101]);
        let parsed = sdp_audio(&offer).expect("our own offer parses");
        assert_eq!(
            parsed.rtp_addr(),
            "127.0.0.1:7000".parse().expect("valid addr")
        );
        assert_eq!(parsed.formats, vec![0, 101]);
        assert_eq!(sdp_audio("v=0\r\nm=audio x RTP/AVP 0\r\n"), None);
    }

    #[test]
    fn rtp_packets_round_trip_and_bad_versions_are_refused() {
        let packet = rtp_packet(8, 0xfffe, 160, 0xdead_beef, &[1, 2, 3]);
        let view = parse_rtp(&packet).expect("version 2");
        assert_eq!(
            (view.pt, view.marker, view.seq, view.ts, view.ssrc),
            (8, false, 0xfffe, 160, 0xdead_beef)
        );
        assert_eq!(view.payload, vec![1, 2, 3]);
        let mut v1 = packet.clone();
        v1[0] = 0x40;
        assert_eq!(parse_rtp(&v1), None);
        assert_eq!(parse_rtp(&packet[..11]), None);
    }

    #[test]
    fn tags_and_uris_are_taken_from_header_values() {
        let value = "\"Bob\" <sip:200@127.0.0.1:5060;transport=udp>;tag=abc;x=1";
        assert_eq!(tag_param(value).as_deref(), Some("abc"));
        assert_eq!(uri_in(value), "sip:200@127.0.0.1:5060;transport=udp");
        assert_eq!(tag_param("<sip:a@b;tag=inside>"), None);
        assert_eq!(uri_in("sip:a@b;tag=x"), "sip:a@b");
        let msg = "BYE sip:a@b SIP/2.0\r\nCSeq: 7 BYE\r\nContent-Length: 2\r\n\r\nhi";
        assert_eq!(request_method(msg), Some("BYE"));
        assert_eq!(cseq_of(msg), Some((7, "BYE".to_owned())));
        assert_eq!(body_of(msg), "hi");
    }

    #[test]
    fn ports_are_unique_and_free() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, a)).is_ok());
    }
}
