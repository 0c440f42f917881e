//! The firmware image booted under qemu-system-aarch64 (issue 8, part 1): `outpost-image
//! build` makes a test image (the appliance configuration plus a `[demo]` extension whose
//! generated password the daemon prints on the serial console, and MD5 offered first for
//! SIPp), qemu boots it with user-mode networking and host port forwards, and the host talks
//! SIP to the guest. Every boot is bounded and qemu is killed when the test ends.

use std::fs;
use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outpost_tests::{bin, free_port, run_with_timeout, scenario, workspace_root};

/// The longest an image build may take (cargo's aarch64 release build included).
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
/// The longest a boot may take until outpostd says it is ready.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Builds the test image into target/image-test; returns its directory and the build time.
fn build_image() -> (PathBuf, Duration) {
    let out = workspace_root().join("target").join("image-test");
    fs::create_dir_all(&out).expect("create the image directory");
    let extra = out.join("test-config.toml");
    fs::write(
        &extra,
        "[demo]\nextensions = [\"100\"]\n\n[auth]\nalgorithms = [\"MD5\", \"SHA-256\"]\n",
    )
    .expect("write the test configuration");
    let started = Instant::now();
    let result = run_with_timeout(
        Command::new(bin("outpost-image"))
            .current_dir(workspace_root())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("build")
            .arg("--out")
            .arg(&out)
            .arg("--workspace")
            .arg(workspace_root())
            .arg("--config-extra")
            .arg(&extra),
        BUILD_TIMEOUT,
    );
    assert!(
        result.code == Some(0),
        "outpost-image build failed:\n{}\n{}",
        result.stdout,
        result.stderr
    );
    (out, started.elapsed())
}

/// A running guest; dropping it kills qemu.
struct Guest {
    child: Child,
    log: PathBuf,
    sip_port: u16,
    started: Instant,
}

impl Guest {
    /// Boots `image` (the disk as a throw-away snapshot, so every boot is a first boot).
    fn boot(image: &Path, log: &Path) -> Guest {
        let sip_port = free_port();
        let ssh_port = free_port();
        let _ = fs::remove_file(log);
        let child = Command::new("qemu-system-aarch64")
            .args(["-M", "virt", "-cpu", "cortex-a53", "-m", "512", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initramfs.cpio.gz"))
            .args(["-append", "console=ttyAMA0 panic=-1"])
            .arg("-drive")
            .arg(format!(
                "if=none,id=d0,format=raw,snapshot=on,file={}",
                image.join("disk.img").display()
            ))
            .args(["-device", "virtio-blk-device,drive=d0"])
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,hostfwd=udp:127.0.0.1:{sip_port}-:5060,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            ))
            .args(["-device", "virtio-net-device,netdev=n0"])
            .args(["-device", "i6300esb"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run qemu-system-aarch64 (tests/run-all installs qemu-system-arm)");
        Guest {
            child,
            log: log.to_owned(),
            sip_port,
            started: Instant::now(),
        }
    }

    /// The serial console so far (ANSI colours removed).
    fn console(&self) -> String {
        let raw = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
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

    /// Waits for `needle` on the console; panics with the console when it never comes or
    /// qemu exits.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
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
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OPTIONS request from `local`; the first line of the answer, if one came in `wait`.
fn options(sock: &UdpSocket, target_port: u16, n: u32, wait: Duration) -> Option<String> {
    let local = sock.local_addr().expect("local address");
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{target_port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-image-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=image{n}\r\n\
         To: <sip:127.0.0.1:{target_port}>\r\n\
         Call-ID: image-options-{n}@127.0.0.1\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), ("127.0.0.1", target_port))
        .expect("send OPTIONS");
    sock.set_read_timeout(Some(wait)).expect("set timeout");
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .map(str::to_owned)
}

#[test]
fn the_image_boots_under_qemu_loads_the_firewall_and_answers_sip() {
    let (image, build_time) = build_image();
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(image.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    for artifact in ["disk.img", "vmlinuz", "initramfs.cpio.gz", "root.squashfs"] {
        let sha = manifest["artifacts"][artifact]["sha256"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(sha.len(), 64, "manifest lacks the checksum of {artifact}");
    }
    let debs: Vec<&str> = manifest["debian_packages"]
        .as_array()
        .expect("package list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for pkg in [
        "busybox-static",
        "nftables",
        "dropbear-bin",
        "libnftables1",
        "libc6",
    ] {
        assert!(
            debs.contains(&pkg),
            "{pkg} missing from the manifest: {debs:?}"
        );
    }
    // The partition table is valid for sgdisk and names the four partitions.
    let table = run_with_timeout(
        Command::new("sgdisk")
            .arg("--print")
            .arg(image.join("disk.img")),
        Duration::from_secs(30),
    );
    for part in [
        "outpost-boot",
        "outpost-root-a",
        "outpost-root-b",
        "outpost-data",
    ] {
        assert!(
            table.stdout.contains(part),
            "sgdisk shows no {part}:\n{}",
            table.stdout
        );
    }
    assert!(!table.stdout.contains("Problem"), "{}", table.stdout);

    let log = image.join("serial.log");
    let mut guest = Guest::boot(&image, &log);
    let console = guest.wait_for(" ready listen=", BOOT_TIMEOUT);
    assert!(
        console.contains("outpost-initramfs: booting slot a"),
        "{console}"
    );

    // Boot to first SIP answer, through the host port forward.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut answer = None;
    for n in 1..=30 {
        answer = options(&sock, guest.sip_port, n, Duration::from_secs(1));
        if answer.is_some() {
            break;
        }
    }
    let boot_to_sip = guest.started.elapsed();
    let answer = answer.expect("no answer to OPTIONS through the guest");
    assert!(answer.starts_with("SIP/2.0 200"), "OPTIONS got {answer}");

    // The firewall table went into the guest's kernel, and the first boot printed the
    // console admin password once.
    let console = guest.wait_for("nftables table installed", Duration::from_secs(30));
    assert!(
        console.contains("firewall: kernel enforcement on"),
        "{console}"
    );
    let console = guest.wait_for("admin password: ", Duration::from_secs(60));
    assert!(
        !console.contains("ERROR"),
        "errors on the console:\n{console}"
    );

    // REGISTER with digest authentication (SIPp) as the demo extension.
    let password = console
        .lines()
        .find_map(|l| l.split("demo extension 100: password ").nth(1))
        .map(|p| p.trim().to_owned())
        .expect("demo extension password on the console");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_port = free_port();
    let sipp = run_with_timeout(
        Command::new("sipp")
            .current_dir(dir.path())
            .arg(format!("127.0.0.1:{}", guest.sip_port))
            .arg("-sf")
            .arg(scenario("register.xml"))
            .args(["-t", "u1", "-i", "127.0.0.1", "-p"])
            .arg(local_port.to_string())
            .args(["-m", "1", "-nostdin", "-timeout_error", "-timeout", "30s"])
            .args(["-au", "100", "-ap", &password])
            .args(["-key", "user", "100", "-key", "expires", "300"])
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let errors = fs::read_to_string(dir.path().join("errors.log")).unwrap_or_default();
    assert!(
        sipp.code == Some(0),
        "SIPp REGISTER through the guest failed: {}\n{errors}\n--- console ---\n{}",
        sipp.stdout,
        guest.console()
    );
    eprintln!(
        "image: build {:.1} s, boot to first SIP answer {:.1} s, disk {} MiB, root filesystem {} KiB",
        build_time.as_secs_f64(),
        boot_to_sip.as_secs_f64(),
        manifest["artifacts"]["disk.img"]["bytes"].as_u64().unwrap_or(0) >> 20,
        manifest["artifacts"]["root.squashfs"]["bytes"].as_u64().unwrap_or(0) >> 10,
    );
}
