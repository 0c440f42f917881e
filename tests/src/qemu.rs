//! The firmware image under `qemu-system-aarch64 -M virt -cpu cortex-a53`: building a test
//! image with `outpost-image build` (the one the image tests share is built once per source
//! state, [`TestImage::shared`]), booting it with user-mode networking on a chosen network
//! and host port forwards, reading the serial console, running commands over SSH, and a
//! call with RTP both ways through the guest's relay. Every boot is bounded by its caller's
//! waits and qemu is killed when the [`Guest`] is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    bin, bin_dir, body_of, free_port, parse_rtp, rtp_packet, run_with_input, run_with_timeout,
    sdp_audio, sdp_body, status_of, workspace_root, CmdOutput, SipPhone,
};

/// The longest an image build may take (cargo's aarch64 release build included).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
/// The longest a boot may take until outpostd says it is ready.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// SOURCE_DATE_EPOCH of the test images (updates use later ones).
pub const TEST_EPOCH: u64 = 1_700_000_000;
/// The host port of the test NTP server (`servers::Chrony`) the shared image's `[time]`
/// names as `10.0.2.2:GUEST_NTP_PORT` (qemu's user network reaches the host's loopback
/// there). A boot without the server gets "port unreachable" at once.
pub const GUEST_NTP_PORT: u16 = 11_123;
/// The user-mode network of the optional second NIC ([`Boot::second_nic`]).
pub const NIC2_NET: &str = "10.0.3.0/24";
/// The host as the guest sees it through the second NIC: every packet the host sends
/// through that NIC's forwards comes from this address.
pub const NIC2_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
/// The host as the guest sees it through the first NIC (qemu's default user network).
pub const NIC1_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// qemu's default user network of the first NIC (a /24).
pub const NIC1_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// First port of the relay range of the shared test image: small, so that every port can
/// be forwarded.
pub const RELAY_FIRST: u16 = 10_000;
/// Last port of that relay range (four even/odd pairs: two calls).
pub const RELAY_LAST: u16 = 10_007;
/// Longest one SSH command to a guest may take (key exchange on an emulated CPU is slow).
pub const SSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Logins tried before the baked key must work: every refused one counts as a failure of
/// the host's address in the guest's firewall (ten ban it), so a few, seconds apart.
pub const SSH_TRIES: u32 = 6;

/// How to build a test image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Output directory.
    pub out: PathBuf,
    /// TOML appended to the appliance configuration.
    pub config_extra: String,
    /// SOURCE_DATE_EPOCH (the build number of the release).
    pub epoch: u64,
    /// `--profile`.
    pub profile: String,
    /// Extra arguments for `outpost-image build` (`--update-key`, `--ssh-key`, ...).
    pub args: Vec<String>,
}

impl ImageSpec {
    /// A qemu-virt test image into `target/<name>` with the given configuration extra.
    pub fn new(name: &str, config_extra: &str) -> ImageSpec {
        ImageSpec {
            out: workspace_root().join("target").join(name),
            config_extra: config_extra.to_owned(),
            epoch: TEST_EPOCH,
            profile: "qemu-virt".to_owned(),
            args: Vec::new(),
        }
    }

    /// Builds it (the firmware binaries with cargo first, unless `--no-cargo` is in
    /// `args`); panics with the tool's output when the build fails. Returns the build time.
    pub fn build(&self) -> Duration {
        fs::create_dir_all(&self.out).expect("create the image directory");
        let extra = self.out.with_extension("config-extra.toml");
        fs::write(&extra, &self.config_extra).expect("write the test configuration");
        let started = Instant::now();
        let result = run_with_timeout(
            Command::new(bin("outpost-image"))
                .current_dir(workspace_root())
                .env("SOURCE_DATE_EPOCH", self.epoch.to_string())
                .arg("build")
                .arg("--out")
                .arg(&self.out)
                .arg("--workspace")
                .arg(workspace_root())
                .arg("--profile")
                .arg(&self.profile)
                .arg("--config-extra")
                .arg(&extra)
                .args(&self.args),
            BUILD_TIMEOUT,
        );
        assert!(
            result.code == Some(0),
            "outpost-image build failed:\n{}\n{}",
            result.stdout,
            result.stderr
        );
        started.elapsed()
    }
}

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The image directory (vmlinuz, initramfs.cpio.gz).
    pub image: PathBuf,
    /// The disk; with `snapshot` nothing is written to it.
    pub disk: PathBuf,
    /// Throw-away writes (every boot is a first boot).
    pub snapshot: bool,
    /// The serial console log file (truncated at boot).
    pub log: PathBuf,
    /// Guest ports forwarded from 127.0.0.1 on the host: ("udp"|"tcp", guest port).
    pub forwards: Vec<(&'static str, u16)>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// A second NIC (eth1, user-mode network [`NIC2_NET`]) with these forwards from
    /// 127.0.0.1 on the host ("udp"|"tcp", guest port); `None`: one NIC only.
    pub second_nic: Option<Vec<(&'static str, u16)>>,
    /// The first NIC's user-mode network, a /24 (the host is .2 in it, DHCP hands out .15):
    /// [`NIC1_NET`] unless [`Boot::on_network`] chose another.
    pub net: Ipv4Addr,
    /// The first NIC's MAC address; `None`: qemu's default (52:54:00:12:34:56).
    pub mac: Option<String>,
    /// The battery clock's time at power-on (`-rtc base=`); `None`: the host's.
    pub rtc: Option<String>,
}

impl Boot {
    /// Boots `image/disk.img` as a snapshot with SIP (udp 5060) and SSH (tcp 22) forwarded.
    pub fn snapshot(image: &Path) -> Boot {
        Boot {
            image: image.to_owned(),
            disk: image.join("disk.img"),
            snapshot: true,
            log: image.join("serial.log"),
            forwards: vec![("udp", 5060), ("tcp", 22)],
            memory_mib: 512,
            second_nic: None,
            net: NIC1_NET,
            mac: None,
            rtc: None,
        }
    }

    /// The same boot with the board's clock starting at `base` (`1970-01-01T00:00:00`: a
    /// board without a battery clock).
    pub fn with_rtc(mut self, base: &str) -> Boot {
        self.rtc = Some(base.to_owned());
        self
    }

    /// The same boot with the disk itself, not a snapshot: what the guest writes stays.
    pub fn persistent(mut self, disk: &Path) -> Boot {
        self.disk = disk.to_owned();
        self.snapshot = false;
        // Its own console log beside the disk: two guests of one image booting at once (the
        // tests of one binary run in parallel) must never write the same file.
        self.log = disk.with_extension("serial.log");
        self
    }

    /// The same boot with the first NIC on user-mode network `net` (a /24, e.g.
    /// 10.0.5.0: another office network; the guest gets .15, the host is .2).
    pub fn on_network(mut self, net: Ipv4Addr) -> Boot {
        self.net = net;
        self
    }

    /// The same boot with the first NIC's MAC address `mac` (another box).
    pub fn with_mac(mut self, mac: &str) -> Boot {
        self.mac = Some(mac.to_owned());
        self
    }

    /// The same boot writing its serial console to `log`.
    pub fn with_log(mut self, log: &Path) -> Boot {
        self.log = log.to_owned();
        self
    }

    /// The same boot forwarding the shared test image's relay range too.
    pub fn with_relay_forwards(mut self) -> Boot {
        self.forwards
            .extend((RELAY_FIRST..=RELAY_LAST).map(|p| ("udp", p)));
        self
    }

    /// The guest's address on the first NIC (what qemu's DHCP server hands out first).
    pub fn guest_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.net.octets();
        Ipv4Addr::new(a, b, c, 15)
    }

    /// The host as the guest sees it through the first NIC: every packet the host sends
    /// through the forwards comes from this address.
    pub fn host_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.net.octets();
        Ipv4Addr::new(a, b, c, 2)
    }

    /// The same boot with a second NIC forwarding `forwards` (see [`Boot::second_nic`]).
    pub fn with_second_nic(mut self, forwards: Vec<(&'static str, u16)>) -> Boot {
        self.second_nic = Some(forwards);
        self
    }
}

/// A running guest; dropping it kills qemu.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    log: PathBuf,
    ports: BTreeMap<(&'static str, u16), u16>,
    /// Forwards through the second NIC, if it has one.
    ports2: BTreeMap<(&'static str, u16), u16>,
    /// The guest's and the host's addresses on the first NIC's network.
    addr: Ipv4Addr,
    host: Ipv4Addr,
    /// The known_hosts file of SSH logins; `None`: the host key is not checked.
    known_hosts: Option<PathBuf>,
    /// When qemu was started.
    pub started: Instant,
}

impl Guest {
    /// Starts qemu.
    pub fn boot(boot: &Boot) -> Guest {
        let _ = fs::remove_file(&boot.log);
        let mut ports = BTreeMap::new();
        let mut netdev = format!("user,id=n0,net={}/24", boot.net);
        for &(proto, guest_port) in &boot.forwards {
            let host = free_port();
            ports.insert((proto, guest_port), host);
            netdev.push_str(&format!(",hostfwd={proto}:127.0.0.1:{host}-:{guest_port}"));
        }
        let mut ports2 = BTreeMap::new();
        let mut nic2 = Vec::new();
        if let Some(forwards) = &boot.second_nic {
            let mut netdev2 = format!("user,id=n1,net={NIC2_NET}");
            for &(proto, guest_port) in forwards {
                let host = free_port();
                ports2.insert((proto, guest_port), host);
                netdev2.push_str(&format!(",hostfwd={proto}:127.0.0.1:{host}-:{guest_port}"));
            }
            nic2 = vec![
                "-netdev".to_owned(),
                netdev2,
                "-device".to_owned(),
                "virtio-net-device,netdev=n1".to_owned(),
            ];
        }
        let child = Command::new("qemu-system-aarch64")
            .args(["-M", "virt", "-cpu", "cortex-a53", "-smp", "1"])
            .arg("-m")
            .arg(boot.memory_mib.to_string())
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", boot.log.display()))
            .arg("-kernel")
            .arg(boot.image.join("vmlinuz"))
            .arg("-initrd")
            .arg(boot.image.join("initramfs.cpio.gz"))
            .args(["-append", "console=ttyAMA0 panic=-1"])
            .arg("-drive")
            .arg(format!(
                "if=none,id=d0,format=raw,cache=writeback,snapshot={},file={}",
                if boot.snapshot { "on" } else { "off" },
                boot.disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=d0"])
            .arg("-netdev")
            .arg(netdev)
            // virt lists virtio-mmio devices in reverse command-line order: the second
            // NIC goes first so that the first NIC stays eth0.
            .args(&nic2)
            .arg("-device")
            .arg(match &boot.mac {
                Some(mac) => format!("virtio-net-device,netdev=n0,mac={mac}"),
                None => "virtio-net-device,netdev=n0".to_owned(),
            })
            .args(["-device", "i6300esb"])
            .args(match &boot.rtc {
                Some(base) => vec!["-rtc".to_owned(), format!("base={base}")],
                None => Vec::new(),
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run qemu-system-aarch64 (tests/run-all installs qemu-system-arm)");
        Guest {
            child,
            log: boot.log.clone(),
            ports,
            ports2,
            addr: boot.guest_addr(),
            host: boot.host_addr(),
            known_hosts: None,
            started: Instant::now(),
        }
    }

    /// The guest's address on its first NIC.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's address as the guest sees it on the first NIC.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host
    }

    /// Checks the guest's SSH host key from now on against `file`, as an admin's client
    /// does: a key seen first is added to it, a changed key makes ssh refuse to log in.
    pub fn check_host_key(&mut self, file: &Path) {
        self.known_hosts = Some(file.to_owned());
    }

    /// The host port forwarded to the guest's `proto` port `guest_port`.
    pub fn port(&self, proto: &'static str, guest_port: u16) -> u16 {
        *self
            .ports
            .get(&(proto, guest_port))
            .unwrap_or_else(|| panic!("{proto} {guest_port} is not forwarded"))
    }

    /// The host port forwarded through the second NIC to the guest's `proto` port
    /// `guest_port` (the guest sees the packets come from [`NIC2_HOST`]).
    pub fn port2(&self, proto: &'static str, guest_port: u16) -> u16 {
        *self
            .ports2
            .get(&(proto, guest_port))
            .unwrap_or_else(|| panic!("{proto} {guest_port} is not forwarded on the second NIC"))
    }

    /// The host port of the guest's SIP (udp 5060).
    pub fn sip_port(&self) -> u16 {
        self.port("udp", 5060)
    }

    /// The serial console so far (ANSI colours removed).
    pub fn console(&self) -> String {
        let raw = fs::read(&self.log).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    /// The guest's wall-clock time (Unix seconds) when its kernel started: the RTC time
    /// the kernel set its clock to, minus the kernel's uptime at that moment (the RTC counts
    /// whole seconds, so this is good to a second). `None` before that line is printed.
    pub fn kernel_start_epoch(&self) -> Option<f64> {
        let console = self.console();
        let line = console
            .lines()
            .find(|l| l.contains("setting system clock to"))?;
        let uptime: f64 = line
            .strip_prefix('[')?
            .split(']')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let epoch: f64 = line
            .rsplit('(')
            .next()?
            .trim_end_matches(')')
            .trim()
            .parse()
            .ok()?;
        Some(epoch - uptime)
    }

    /// Whether qemu has exited (the guest powered off or rebooted: `-no-reboot`).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for `needle` on the console; panics with the console when it never comes or
    /// qemu exits.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.contains(needle) {
                return console;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "qemu exited ({status}) before {needle:?}: {err}\n--- console ---\n{console}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console within {timeout:?}\n--- console ---\n{console}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until qemu exits by itself (a reboot with `-no-reboot`); panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "qemu did not exit within {timeout:?}\n--- console ---\n{}",
            self.console()
        );
    }

    /// Kills qemu at once (a power cut) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `ssh` command that runs `command` on the guest (tcp 22 must be forwarded) as
    /// `admin` with the private key `key`.
    pub fn ssh_command(&self, key: &Path, command: &str) -> Command {
        self.ssh_command_as("admin", key, command)
    }

    /// [`Guest::ssh_command`] logging in as `user`.
    pub fn ssh_command_as(&self, user: &str, key: &Path, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(key)
            .arg("-p")
            .arg(self.port("tcp", 22).to_string());
        match &self.known_hosts {
            Some(file) => cmd
                .args(["-o", "StrictHostKeyChecking=accept-new", "-o"])
                .arg(format!("UserKnownHostsFile={}", file.display()))
                .args(["-o", "HashKnownHosts=no"]),
            None => cmd.args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ]),
        };
        cmd.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "IdentitiesOnly=yes",
            "--",
        ]);
        cmd.arg(format!("{user}@127.0.0.1")).arg(command);
        cmd
    }

    /// Runs `command` on the guest over SSH (see [`Guest::ssh_command`]), feeding `stdin`
    /// (a file) when given.
    pub fn ssh(
        &self,
        key: &Path,
        command: &str,
        stdin: Option<&Path>,
        timeout: Duration,
    ) -> CmdOutput {
        let input = match stdin {
            Some(path) => Stdio::from(fs::File::open(path).expect("open the ssh input file")),
            None => Stdio::null(),
        };
        run_with_input(&mut self.ssh_command(key, command), input, timeout)
    }

    /// Runs `command` over SSH (feeding `stdin` when given) and asserts it succeeds;
    /// returns its standard output.
    pub fn ssh_ok(&self, key: &Path, command: &str, stdin: Option<&Path>) -> String {
        let out = self.ssh(key, command, stdin, SSH_TIMEOUT);
        assert!(
            out.code == Some(0),
            "ssh admin@guest {command:?} failed: {out:?}\n--- console ---\n{}",
            self.console()
        );
        out.stdout
    }

    /// Runs `command --json` over SSH and parses its output.
    pub fn ssh_json(&self, key: &Path, command: &str) -> Value {
        let stdout = self.ssh_ok(key, &format!("{command} --json"), None);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`{command} --json` printed invalid JSON ({e}):\n{stdout}"))
    }

    /// Waits until SSH with `key` runs `status` (dropbear starts with outpostd, the first
    /// boot imports the baked key): [`SSH_TRIES`] tries five seconds apart. Returns the
    /// output of `status`.
    pub fn wait_ssh(&mut self, key: &Path) -> String {
        let mut last = None;
        for _ in 0..SSH_TRIES {
            let out = self.ssh(key, "status", None, SSH_TIMEOUT);
            if out.code == Some(0) {
                return out.stdout;
            }
            last = Some(out);
            assert!(!self.exited(), "qemu exited:\n{}", self.console());
            thread::sleep(Duration::from_secs(5));
        }
        panic!(
            "`ssh admin@guest status` with the baked key never worked: {last:?}\n--- console ---\n{}",
            self.console()
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `text` without ANSI escape sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An ed25519 SSH key pair made with ssh-keygen in `dir`: (private key path, public line).
pub fn ssh_keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(key.with_extension("pub"));
    let out = run_with_timeout(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "ssh-keygen: {}", out.stderr);
    let public = fs::read_to_string(format!("{}.pub", key.display())).expect("public key");
    (key, public)
}

/// Copies `src` to `dst` keeping holes (the disk images are mostly empty).
pub fn copy_disk(src: &Path, dst: &Path) {
    let out = run_with_timeout(
        Command::new("cp").arg("--sparse=always").arg(src).arg(dst),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(0), "cp {}: {}", src.display(), out.stderr);
}

/// Writes `contents` to `path` (relative, e.g. `outpost/network.toml`) on the data
/// partition (`outpost-data`) of `disk`, offline: what the box would find on `/data` at its
/// next boot. Makes the parent directory when missing (the data partition is empty until
/// a first boot).
pub fn write_data_file(disk: &Path, path: &str, contents: &str) {
    let table = run_with_timeout(
        Command::new("sgdisk").arg("--print").arg(disk),
        Duration::from_secs(30),
    );
    let (start, end) = table
        .stdout
        .lines()
        .find(|l| l.trim_end().ends_with("outpost-data"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(1)?.parse::<u64>().ok()?,
                f.get(2)?.parse::<u64>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no outpost-data partition:\n{}", table.stdout));
    let work = tempfile::tempdir().expect("tempdir");
    let part = work.path().join("data.ext4");
    let local = work.path().join("contents");
    fs::write(&local, contents).expect("write the file");
    let count = (end - start + 1).to_string();
    let dd = |args: Vec<String>| {
        let out = run_with_timeout(Command::new("dd").args(&args), Duration::from_secs(120));
        assert_eq!(out.code, Some(0), "dd {args:?}: {}", out.stderr);
    };
    dd(vec![
        format!("if={}", disk.display()),
        format!("of={}", part.display()),
        "bs=512".into(),
        format!("skip={start}"),
        format!("count={count}"),
        "conv=sparse".into(),
    ]);
    let mut requests = String::new();
    let mut dir = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for component in &parts[..parts.len() - 1] {
        dir = if dir.is_empty() {
            (*component).to_owned()
        } else {
            format!("{dir}/{component}")
        };
        requests.push_str(&format!("mkdir {dir}\n"));
    }
    requests.push_str(&format!("rm {path}\nwrite {} {path}\n", local.display()));
    let script = work.path().join("debugfs.cmd");
    fs::write(&script, requests).expect("debugfs script");
    let out = run_with_timeout(
        Command::new("debugfs")
            .args(["-w", "-f"])
            .arg(&script)
            .arg(&part),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "debugfs: {}\n{}", out.stdout, out.stderr);
    dd(vec![
        format!("if={}", part.display()),
        format!("of={}", disk.display()),
        "bs=512".into(),
        format!("seek={start}"),
        "conv=notrunc,sparse".into(),
    ]);
}

/// Name of the shared test image's directory under target/.
const TEST_IMAGE: &str = "image-test";
/// Files of the workspace that go into an image besides the binaries (include_str!'d
/// files are in the outpost-image binary itself).
const IMAGE_INPUTS: &[&str] = &[
    "Cargo.lock",
    "image/licences.toml",
    "prompts/en.toml",
    "scripts/make-prompts",
];

/// The image the qemu tests share (tests/tests/image.rs and image_drill.rs): the appliance
/// configuration plus two `[demo]` extensions, 100 and 101, whose generated passwords the
/// daemon prints on the serial console, MD5 offered first for SIPp, the small relay range
/// [`RELAY_FIRST`]..=[`RELAY_LAST`], and an admin SSH key kept next to it.
///
/// It is built once per source state: a stamp holds the digest of everything the image is
/// made of (the aarch64 binaries after cargo brought them up to date, outpost-image, the
/// build's other inputs and the spec); a later test whose digest matches boots the same
/// image. A file lock serialises test processes: one builds while the others wait, and a
/// test holds a shared lock while it uses the image, so nobody rebuilds it under a guest.
#[derive(Debug)]
pub struct TestImage {
    /// The image directory (disk.img, vmlinuz, initramfs.cpio.gz, manifest.json).
    pub dir: PathBuf,
    /// The admin's private SSH key (the image's `--ssh-key` is its public half).
    pub admin_key: PathBuf,
    /// How long the build took; `None` when an earlier test's build was reused.
    pub built_in: Option<Duration>,
    /// Held (shared) while the test uses the image.
    _lock: File,
}

impl TestImage {
    /// The shared test image, built if its inputs changed since the last build.
    pub fn shared() -> TestImage {
        let dir = workspace_root().join("target").join(TEST_IMAGE);
        let parent = dir.parent().expect("target/ holds the image").to_owned();
        fs::create_dir_all(&parent).expect("create target/");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.with_extension("lock"))
            .expect("open the image lock file");
        lock.lock().expect("lock the shared test image");

        let key_name = format!("{TEST_IMAGE}.admin-key");
        let admin_key = parent.join(&key_name);
        let public = parent.join(format!("{key_name}.pub"));
        if !admin_key.is_file() || !public.is_file() {
            ssh_keypair(&parent, &key_name);
        }
        let mut spec = ImageSpec::new(
            TEST_IMAGE,
            &format!(
                "[demo]\nextensions = [\"100\", \"101\"]\n\n\
                 [auth]\nalgorithms = [\"MD5\", \"SHA-256\"]\n\n\
                 [media]\nport_first = {RELAY_FIRST}\nport_last = {RELAY_LAST}\n\n\
                 [time]\nservers = [\"10.0.2.2:{GUEST_NTP_PORT}\"]\n"
            ),
        );
        // The binaries are brought up to date here, before the digest is taken.
        spec.args = vec![
            "--ssh-key".to_owned(),
            public.display().to_string(),
            "--no-cargo".to_owned(),
        ];
        cargo_build_firmware();
        let stamp = dir.with_extension("stamp");
        let artifacts = ["disk.img", "vmlinuz", "initramfs.cpio.gz", "manifest.json"];
        let fresh = fs::read_to_string(&stamp).ok() == Some(spec.digest())
            && artifacts.iter().all(|a| dir.join(a).is_file());
        let built_in = if fresh {
            None
        } else {
            let _ = fs::remove_file(&stamp);
            let took = spec.build();
            fs::write(&stamp, spec.digest()).expect("write the image stamp");
            Some(took)
        };
        lock.unlock().expect("unlock the image");
        lock.lock_shared().expect("lock the image for reading");
        TestImage {
            dir,
            admin_key,
            built_in,
            _lock: lock,
        }
    }

    /// The parsed manifest.json.
    pub fn manifest(&self) -> Value {
        let text = fs::read_to_string(self.dir.join("manifest.json")).expect("manifest.json");
        serde_json::from_str(&text).expect("manifest is JSON")
    }
}

/// Brings the static aarch64 release binaries up to date (what `outpost-image build` does
/// first unless `--no-cargo`).
fn cargo_build_firmware() {
    let out = run_with_timeout(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .current_dir(workspace_root())
            .args(["build", "--release", "--target", FIRMWARE_TARGET])
            .args(["-p", "firmware", "--bins"]),
        BUILD_TIMEOUT,
    );
    assert!(
        out.code == Some(0),
        "cargo build --release --target {FIRMWARE_TARGET} failed:\n{}",
        out.stderr
    );
}

/// The appliance's Rust target.
const FIRMWARE_TARGET: &str = "aarch64-unknown-linux-musl";

impl ImageSpec {
    /// SHA-256 over what an image built from this spec is made of: the spec, the aarch64
    /// firmware binaries, outpost-image (which holds the image's own files), the other
    /// workspace inputs, the files the arguments name and the development update key.
    pub fn digest(&self) -> String {
        let target = bin_dir()
            .parent()
            .expect("the debug directory is inside the target directory")
            .to_owned();
        let release = target.join(FIRMWARE_TARGET).join("release");
        let mut files = vec![
            bin("outpost-image"),
            release.join("outpostd"),
            release.join("outpostctl"),
            target.join("image-keys").join("dev.pub"),
        ];
        files.extend(IMAGE_INPUTS.iter().map(|f| workspace_root().join(f)));
        files.extend(self.args.iter().map(PathBuf::from).filter(|p| p.is_file()));
        let sums = run_with_timeout(
            Command::new("sha256sum").args(&files),
            Duration::from_secs(300),
        );
        let mut h = Sha256::new();
        h.update(format!(
            "{:?}\n",
            (&self.config_extra, self.epoch, &self.profile, &self.args)
        ));
        h.update(sums.stdout.as_bytes());
        h.update(sums.stderr.as_bytes());
        hex::encode(h.finalize())
    }
}

/// The password the daemon printed on the console for demo extension `ext`.
pub fn demo_password(console: &str, ext: &str) -> String {
    let needle = format!("demo extension {ext}: password ");
    console
        .lines()
        .find_map(|l| l.split(needle.as_str()).nth(1))
        .map(|p| p.trim().to_owned())
        .unwrap_or_else(|| panic!("no password of demo extension {ext} on the console"))
}

/// RTP packets each phone sends in [`call_through`] (20 ms apart).
const RTP_PACKETS: u16 = 250;
/// Media must flow within this many packets: the guest opens the relay ports in its kernel
/// with an `nft` run, which takes a while on an emulated CPU.
const RTP_START_WITHIN: u16 = 150;
/// Marker at the start of every test RTP payload, followed by the sender and the number.
const RTP_MARK: &[u8; 10] = b"outpost-rt";

/// What one phone received from the other.
#[derive(Debug, Default)]
struct Heard {
    /// Numbers (in the payload) of the packets received, each once.
    numbers: BTreeSet<u16>,
}

impl Heard {
    /// Reads every datagram waiting on `sock`; counts the RTP ones from `sender`.
    fn drain(&mut self, sock: &UdpSocket, sender: u8) {
        let mut buf = [0u8; 2048];
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            let Some(p) = parse_rtp(&buf[..len]) else {
                continue;
            };
            let ours = p.pt == 0 && p.payload.len() == 160 && p.payload.starts_with(RTP_MARK);
            if ours && p.payload[10] == sender {
                self.numbers
                    .insert(u16::from_be_bytes([p.payload[11], p.payload[12]]));
            }
        }
    }

    /// The first number heard and how many of those sent from it on were heard.
    fn figures(&self) -> Option<RtpFigures> {
        let first = *self.numbers.first()?;
        Some(RtpFigures {
            first,
            heard: self.numbers.len(),
            sent: usize::from(RTP_PACKETS - first),
        })
    }
}

/// RTP one way of a call.
#[derive(Debug, Clone, Copy)]
pub struct RtpFigures {
    /// The number of the first packet heard (20 ms each from the answer).
    pub first: u16,
    /// Packets heard from the first on.
    pub heard: usize,
    /// Packets sent from the first on.
    pub sent: usize,
}

/// Figures of a call made through the guest.
#[derive(Debug, Clone, Copy)]
pub struct CallFigures {
    /// From the caller's INVITE to its 200 OK.
    pub setup: Duration,
    /// Caller to callee.
    pub a_to_b: RtpFigures,
    /// Callee to caller.
    pub b_to_a: RtpFigures,
}

/// `caller` (extension, password) calls `callee`, both raw-UDP phones on the host that
/// register first through the guest's first NIC; each phone sends RTP to the host port
/// forwarded to the relay port its SDP names (the guest's relay range must be forwarded,
/// [`Boot::with_relay_forwards`]), and must receive what the other sent. The guest's SDP
/// must name its current address. Then the caller hangs up.
pub fn call_through(guest: &Guest, caller: (&str, &str), callee: (&str, &str)) -> CallFigures {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port()));
    let phone = |(ext, password): (&str, &str)| {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a phone's socket");
        SipPhone::on_socket(sock, server, ext, password)
    };
    let mut a = phone(caller);
    let mut b = phone(callee);
    a.register();
    b.register();

    let rtp_a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind RTP of the caller");
    let rtp_b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind RTP of the callee");
    let offer = sdp_body(rtp_a.local_addr().expect("RTP address"), &[0]);
    let started = Instant::now();
    let inv = a.invite(callee.0, &offer);
    let invite = b
        .await_request("INVITE", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{} got no INVITE; received:\n{}", callee.0, b.transcript()));
    let to_b = sdp_audio(body_of(&invite)).expect("the INVITE to the callee has audio SDP");
    let dialog_b = b.answer(
        &invite,
        &sdp_body(rtp_b.local_addr().expect("RTP address"), &[0]),
    );
    let mut dialog_a = a
        .await_answer(&inv, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the call was not answered: {e:?}\n{}", a.transcript()));
    let setup = started.elapsed();
    b.await_ack(&dialog_b, Duration::from_secs(10))
        .expect("the callee gets the ACK of its 200 OK");
    let to_a = sdp_audio(&dialog_a.remote_sdp).expect("the 200 OK to the caller has audio SDP");

    // The guest's SDP names its own current address and relay ports, which the host
    // reaches only through the forwards.
    for (who, sdp) in [(caller.0, &to_a), (callee.0, &to_b)] {
        assert_eq!(
            sdp.addr,
            IpAddr::V4(guest.addr()),
            "SDP to {who} must name the guest's address: {sdp:?}"
        );
        assert!(
            (RELAY_FIRST..=RELAY_LAST).contains(&sdp.port),
            "SDP to {who} names port {} outside the relay range",
            sdp.port
        );
    }
    let relay_of_a = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.port("udp", to_a.port)));
    let relay_of_b = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.port("udp", to_b.port)));

    // Both phones talk at once; each counts the packets carrying the other's payload. The
    // relay latches onto the source it sees (the host address and the phone's port,
    // through slirp), so its packets come back to the phone's own socket.
    let payload = |who: u8, n: u16| {
        let mut p = vec![0xffu8; 160];
        p[..10].copy_from_slice(RTP_MARK);
        p[10] = who;
        p[11..13].copy_from_slice(&n.to_be_bytes());
        p
    };
    for s in [&rtp_a, &rtp_b] {
        s.set_nonblocking(true).expect("non-blocking RTP socket");
    }
    let (mut heard_by_b, mut heard_by_a) = (Heard::default(), Heard::default());
    for n in 0..RTP_PACKETS {
        let ts = u32::from(n) * 160;
        let _ = rtp_a.send_to(&rtp_packet(0, n, ts, 0xA1, &payload(b'A', n)), relay_of_a);
        let _ = rtp_b.send_to(&rtp_packet(0, n, ts, 0xB1, &payload(b'B', n)), relay_of_b);
        thread::sleep(Duration::from_millis(20));
        heard_by_b.drain(&rtp_b, b'A');
        heard_by_a.drain(&rtp_a, b'B');
    }
    let tail = Instant::now() + Duration::from_secs(1);
    while Instant::now() < tail {
        thread::sleep(Duration::from_millis(50));
        heard_by_b.drain(&rtp_b, b'A');
        heard_by_a.drain(&rtp_a, b'B');
    }
    // Once media flows, nearly every packet gets through both ways.
    let mut figures = Vec::new();
    for (way, heard) in [
        ("caller -> callee", &heard_by_b),
        ("callee -> caller", &heard_by_a),
    ] {
        let got = heard.figures();
        let ok = got.is_some_and(|f| f.first < RTP_START_WITHIN && f.heard * 10 >= f.sent * 9);
        assert!(
            ok,
            "RTP {way} through the guest: {got:?} of {RTP_PACKETS}\n--- console ---\n{}",
            guest.console()
        );
        figures.push(got.expect("checked above"));
    }

    let cseq = a.send_bye(&mut dialog_a);
    b.answer_bye(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the callee got no BYE; received:\n{}", b.transcript()));
    let bye_ok = a
        .await_final(&dialog_a.call_id, cseq, "BYE", Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "no answer to the caller's BYE; received:\n{}",
                a.transcript()
            )
        });
    assert_eq!(status_of(bye_ok.as_bytes()), Some(200), "{bye_ok}");
    CallFigures {
        setup,
        a_to_b: figures[0],
        b_to_a: figures[1],
    }
}
