//! Updates through the web page (issue 19), off the image: the real daemon serves the page
//! over HTTPS, the real installer agent (`outpostctl update agent`) runs beside it on a fake
//! box (slots are files, the boot data a directory: `--system-root` for the daemon,
//! `--root` for the agent), as init runs it on the image. Checked: a multipart upload
//! without the CSRF token is refused before anything is written; a bundle signed by an
//! untrusted key is refused by the daemon with the reason and nothing reaches the
//! installer; a good bundle, streamed through the page, is installed by the agent into the
//! other slot and armed, the page shows it by itself; the reboot button reaches init's
//! FIFO. REQUIRES root (the harness), never skipped.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use outpost_bundle::{Manifest, Release, FORMAT};
use outpost_tests::webform::{flash, WebSession};
use outpost_tests::{bin, eventually, free_port, require_root, Daemon, DaemonConfig};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "office-manager-42";
const KERNEL: &str = "6.1.0-28-arm64";
const SLOT_BYTES: usize = 4 * 1024 * 1024;
/// The root filesystem in the bundles: larger than one upload piece (1 MiB), so the page
/// streams it in several.
const PAYLOAD_BYTES: usize = 2_500_000;
const WAIT: Duration = Duration::from_secs(30);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// A box under a temporary directory, laid out as `firmware::update::Layout::under` reads
/// it: booted from slot a, release 0.1.0, one trusted key.
fn fake_box(root: &Path) -> SigningKey {
    for (dev, part) in [
        ("vda1", "outpost-boot"),
        ("vda2", "outpost-root-a"),
        ("vda3", "outpost-root-b"),
    ] {
        let sys = root.join("sys/class/block").join(dev);
        fs::create_dir_all(&sys).expect("the fake box and its bundles");
        fs::write(
            sys.join("uevent"),
            format!("DEVNAME={dev}\nDEVTYPE=partition\nPARTNAME={part}\n"),
        )
        .expect("the fake box and its bundles");
    }
    fs::create_dir_all(root.join("dev")).expect("the fake box and its bundles");
    for dev in ["vda2", "vda3"] {
        fs::write(root.join("dev").join(dev), vec![0xeeu8; SLOT_BYTES])
            .expect("the fake box and its bundles");
    }
    fs::create_dir_all(root.join("run/outpost/bootdata")).expect("the fake box and its bundles");
    fs::write(root.join("run/outpost/bootdata/boot.env"), "slot=a\n")
        .expect("the fake box and its bundles");
    fs::write(root.join("run/outpost-boot"), "slot=a\nbooted=a\ntrial=0\n")
        .expect("the fake box and its bundles");
    fs::create_dir_all(root.join("proc/sys/kernel")).expect("the fake box and its bundles");
    fs::write(
        root.join("proc/sys/kernel/osrelease"),
        format!("{KERNEL}\n"),
    )
    .expect("the fake box and its bundles");
    fs::create_dir_all(root.join("etc/outpost/update-keys")).expect("the fake box and its bundles");
    fs::write(
        root.join("etc/outpost/release"),
        format!("version=0.1.0\nbuild=1700000000\nprofile=qemu-virt\nkernel={KERNEL}\n"),
    )
    .expect("the fake box and its bundles");
    let key = outpost_bundle::generate_key();
    fs::write(
        root.join("etc/outpost/update-keys/release.pub"),
        outpost_bundle::public_key_line(&key.verifying_key(), "release"),
    )
    .expect("the fake box and its bundles");
    key
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|i| u8::try_from(i % 253).expect("below 253"))
        .collect()
}

fn bundle(key: &SigningKey, payload: &[u8]) -> Vec<u8> {
    let m = Manifest {
        format: FORMAT,
        name: "outpost".to_owned(),
        release: Release {
            version: "0.2.0".to_owned(),
            build: 1_700_000_100,
        },
        profile: "qemu-virt".to_owned(),
        kernel: KERNEL.to_owned(),
        store_schema: 1,
        rootfs: outpost_bundle::payload_of(&mut &payload[..])
            .expect("the fake box and its bundles"),
        sbom_sha256: String::new(),
    };
    let mut out = Vec::new();
    outpost_bundle::write_bundle(&mut out, &m, key, &mut &payload[..])
        .expect("the fake box and its bundles");
    out
}

/// The agent, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_bundle_uploaded_through_the_web_page_is_installed_by_the_agent() {
    require_root("the web update test");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("box");
    let spool = dir.path().join("spool");
    let key = fake_box(&root);
    let port = free_port();
    let root_arg = root.display().to_string();
    let spool_arg = spool.display().to_string();
    let daemon = Daemon::start_with(
        DaemonConfig::loopback()
            .with_toml(&format!("[web]\nlisten = [\"127.0.0.1:{port}\"]\n"))
            .with_args(&["--system-root", &root_arg, "--update-spool", &spool_arg]),
    );
    let set = daemon.admin(&json!({"cmd": "admin", "admin": "passwd", "password": ADMIN_PASSWORD}));
    assert_eq!(set["reply"], "done", "{set}");

    // init's reboot FIFO, read by this test instead of run-reboot.
    let fifo = dir.path().join("reboot-request");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let fifo_reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = fs::File::open(fifo).and_then(|f| f.take(64).read_to_string(&mut text));
            text
        })
    };
    let _agent = Agent(
        Command::new(bin("outpostctl"))
            .args([
                "update", "agent", "--spool", &spool_arg, "--root", &root_arg,
            ])
            .arg("--reboot-fifo")
            .arg(&fifo)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the agent"),
    );

    let base = format!("https://127.0.0.1:{port}");
    let page = WebSession::log_in(&base, ADMIN_PASSWORD);
    let csrf = page.csrf("/updates");
    let before = page.get("/updates");
    assert!(
        before.contains("data-state=\"idle\"") && before.contains("Upload a signed bundle"),
        "{before}"
    );
    let good = bundle(&key, &payload());

    // Without the token, or with a wrong one: refused, nothing written. (A small file: the
    // page answers before it reads the body, and a client still sending a large one sees
    // the connection close instead of the 403.)
    let head = &good[..4096];
    let (status, _) = page.post_file("/updates/upload", &[], "bundle", head, UPLOAD_TIMEOUT);
    assert_eq!(status, 403, "an upload without the CSRF token");
    let (status, _) = page.post_file(
        "/updates/upload",
        &[("csrf", "not-the-token")],
        "bundle",
        head,
        UPLOAD_TIMEOUT,
    );
    assert_eq!(status, 403, "an upload with a wrong CSRF token");
    assert!(
        !spool.join("bundle.partial").exists() && !spool.join("bundle").exists(),
        "a refused upload wrote nothing"
    );

    // Signed by a key the box does not trust: the daemon refuses it at the finish.
    let rogue = bundle(&outpost_bundle::generate_key(), &payload());
    let (status, _) = page.post_file(
        "/updates/upload",
        &[("csrf", &csrf)],
        "bundle",
        &rogue,
        UPLOAD_TIMEOUT,
    );
    assert_eq!(status, 303);
    let shown = page.get("/updates");
    assert!(
        flash(&shown).contains("refused") && flash(&shown).contains("bad signature"),
        "{}",
        flash(&shown)
    );
    assert!(!spool.join("request").exists() && !spool.join("bundle").exists());
    assert_eq!(
        fs::read_to_string(root.join("run/outpost/bootdata/boot.env")).expect("read the fake box"),
        "slot=a\n"
    );

    // The good bundle: streamed, checked, handed over, installed by the agent into b.
    let (status, _) = page.post_file(
        "/updates/upload",
        &[("csrf", &csrf)],
        "bundle",
        &good,
        UPLOAD_TIMEOUT,
    );
    assert_eq!(status, 303);
    let shown = page.get("/updates");
    assert!(
        flash(&shown).contains("handed to the installer") && flash(&shown).contains("0.2.0"),
        "{}",
        flash(&shown)
    );
    let live = eventually(WAIT, || {
        let live = page.get("/live/updates");
        live.contains("data-state=\"installed\"").then_some(live)
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent did not install it: {}",
            page.get("/live/updates")
        )
    });
    assert!(
        live.contains("installed in slot b") && live.contains("Reboot into the new firmware"),
        "{live}"
    );
    let env =
        fs::read_to_string(root.join("run/outpost/bootdata/boot.env")).expect("read the fake box");
    assert!(env.contains("try=b\n"), "slot b is armed: {env}");
    let slot_b = fs::read(root.join("dev/vda3")).expect("read the fake box");
    assert_eq!(&slot_b[..PAYLOAD_BYTES], &payload()[..]);
    assert!(fs::read(root.join("dev/vda2"))
        .expect("read the fake box")
        .iter()
        .all(|&b| b == 0xee));
    let state: Value = daemon.admin(&json!({"cmd": "update", "update": "state"}));
    assert_eq!(state["data"]["agent"]["state"], "installed", "{state}");
    assert_eq!(state["data"]["agent"]["slot"], "b", "{state}");
    assert!(
        !spool.join("bundle").exists(),
        "the agent deleted the bundle"
    );

    // The reboot button: the agent asks init through its FIFO.
    assert_eq!(page.post_form("/updates/reboot", "csrf=not-the-token"), 403);
    assert_eq!(
        page.post_form("/updates/reboot", &format!("csrf={csrf}")),
        303
    );
    let line = eventually(WAIT, || fifo_reader.is_finished().then_some(()));
    assert!(line.is_some(), "the agent never wrote to init's FIFO");
    assert_eq!(fifo_reader.join().expect("read the fake box"), "reboot\n");
    let state: Value = daemon.admin(&json!({"cmd": "update", "update": "state"}));
    assert_eq!(state["data"]["agent"]["state"], "rebooting", "{state}");
}
