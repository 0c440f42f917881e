//! The firmware image under `qemu-system-aarch64 -M virt -cpu cortex-a53`: building a test
//! image with `outpost-image build`, booting it with user-mode networking and host port
//! forwards, reading the serial console, and running commands over SSH. Every boot is
//! bounded by its caller's waits and qemu is killed when the [`Guest`] is dropped.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, free_port, run_with_input, run_with_timeout, workspace_root, CmdOutput};

/// The longest an image build may take (cargo's aarch64 release build included).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
/// The longest a boot may take until outpostd says it is ready.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// SOURCE_DATE_EPOCH of the test images (updates use later ones).
pub const TEST_EPOCH: u64 = 1_700_000_000;
/// The user-mode network of the optional second NIC ([`Boot::second_nic`]).
pub const NIC2_NET: &str = "10.0.3.0/24";
/// The host as the guest sees it through the second NIC: every packet the host sends
/// through that NIC's forwards comes from this address.
pub const NIC2_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
/// The host as the guest sees it through the first NIC (qemu's default user network).
pub const NIC1_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

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
        }
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
    /// When qemu was started.
    pub started: Instant,
}

impl Guest {
    /// Starts qemu.
    pub fn boot(boot: &Boot) -> Guest {
        let _ = fs::remove_file(&boot.log);
        let mut ports = BTreeMap::new();
        let mut netdev = String::from("user,id=n0");
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
            .args(["-device", "virtio-net-device,netdev=n0"])
            .args(["-device", "i6300esb"])
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
            started: Instant::now(),
        }
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
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(key)
            .arg("-p")
            .arg(self.port("tcp", 22).to_string())
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "IdentitiesOnly=yes",
                "--",
                "admin@127.0.0.1",
                command,
            ]);
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
