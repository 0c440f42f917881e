//! Firmware updates downloaded over HTTPS with a real certificate chain, end to end and
//! without qemu: the real `outpostctl update install https://…` runs in a private mount
//! namespace made to look like a box (its `/etc/outpost` with the release, the trusted
//! update key and `update-ca.pem`; `/sys/class/block` and `/dev` with the A/B slots as
//! plain files; `/run/outpost-boot` and the boot data; the kernel release), and fetches a
//! signed bundle from Debian's nginx, whose certificate was issued by a test intermediate
//! CA under the test root in `update-ca.pem`. The bundle must be verified and written to
//! the inactive slot, armed for one trial. With a certificate for another host name, an
//! expired one, or one from a CA the box does not trust, the download must be refused
//! with that reason, and the slot and boot.env left as they were.
//!
//! Needs root (mount namespaces, nginx) and nginx (tests/run-all installs nginx-light).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use outpost_bundle::{Manifest, Release, FORMAT};
use outpost_tests::servers::{Nginx, Pki, Site, Validity};
use outpost_tests::{bin, require_root, run_with_timeout, CmdOutput};

const KERNEL: &str = "6.1.0-28-arm64";
const PROFILE: &str = "qemu-virt";
const SLOT_BYTES: usize = 512 * 1024;
/// What an untouched slot holds.
const BLANK: u8 = 0xee;
const BOOT_ENV: &str = "slot=a\n";
const INSTALL_LIMIT: Duration = Duration::from_secs(30);

/// The payload of the bundle (a stand-in for a root filesystem).
fn payload() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i % 253).to_le_bytes()[0])
        .collect()
}

/// A box's files under a temp dir, mounted over the real paths by [`FakeBox::install`].
struct FakeBox {
    dir: tempfile::TempDir,
}

impl FakeBox {
    /// Release 0.1.0 booted from slot a, trusting `key_line` for updates and `ca_pem`
    /// (PEM) for HTTPS downloads.
    fn new(key_line: &str, ca_pem: &str) -> FakeBox {
        let dir = tempfile::Builder::new()
            .prefix("outpost-fakebox-")
            .tempdir()
            .expect("temp dir");
        let r = dir.path();
        for (dev, part) in [
            ("vda1", "outpost-boot"),
            ("vda2", "outpost-root-a"),
            ("vda3", "outpost-root-b"),
        ] {
            let sys = r.join("sys").join(dev);
            fs::create_dir_all(&sys).expect("sys dir");
            fs::write(
                sys.join("uevent"),
                format!("MAJOR=254\nMINOR=1\nDEVNAME={dev}\nDEVTYPE=partition\nPARTNAME={part}\n"),
            )
            .expect("uevent");
        }
        fs::create_dir_all(r.join("sys/vda")).expect("disk dir");
        fs::write(r.join("sys/vda/uevent"), "DEVNAME=vda\nDEVTYPE=disk\n").expect("uevent");
        fs::create_dir_all(r.join("dev")).expect("dev dir");
        for dev in ["vda2", "vda3"] {
            fs::write(r.join("dev").join(dev), vec![BLANK; SLOT_BYTES]).expect("slot");
        }
        fs::create_dir_all(r.join("bootdata")).expect("bootdata");
        fs::write(r.join("bootdata/boot.env"), BOOT_ENV).expect("boot.env");
        fs::write(
            r.join("boot-state"),
            format!("{BOOT_ENV}booted=a\ntrial=0\n"),
        )
        .expect("boot state");
        fs::write(r.join("osrelease"), format!("{KERNEL}\n")).expect("osrelease");
        let etc = r.join("etc-outpost");
        fs::create_dir_all(etc.join("update-keys")).expect("keys dir");
        fs::write(
            etc.join("release"),
            format!(
                "version=0.1.0\nbuild=1700000000\nprofile={PROFILE}\nkernel={KERNEL}\n\
                 source_date_epoch=1700000000\nhealth_timeout=60\n"
            ),
        )
        .expect("release");
        fs::write(etc.join("update-keys/release.pub"), key_line).expect("key");
        fs::write(etc.join("update-ca.pem"), ca_pem).expect("update-ca.pem");
        fs::create_dir_all(r.join("upper")).expect("overlay dir");
        FakeBox { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `outpostctl update install URL` as on the box: in a private mount namespace
    /// with this box's files over `/etc/outpost`, `/sys/class/block`, `/run`, the kernel
    /// release and, last, `/dev`.
    fn install(&self, url: &str) -> CmdOutput {
        let script = r#"set -e
r="$1"; ctl="$2"; url="$3"
# /etc/outpost: an overlay on /etc, so the rest of /etc stays as it is.
mount -t tmpfs -o size=4m tmpfs "$r/upper"
mkdir -p "$r/upper/u/outpost" "$r/upper/w"
cp -a "$r/etc-outpost/." "$r/upper/u/outpost/"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$r/upper/u,workdir=$r/upper/w" /etc
mount --bind "$r/sys" /sys/class/block
mount --bind "$r/osrelease" /proc/sys/kernel/osrelease
mount -t tmpfs -o size=4m tmpfs /run
mkdir -p /run/outpost/bootdata
cp "$r/boot-state" /run/outpost-boot
mount --bind "$r/bootdata" /run/outpost/bootdata
mount --bind "$r/dev" /dev
exec "$ctl" update install "$url"
"#;
        run_with_timeout(
            Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    "sh",
                ])
                .arg(self.root())
                .arg(bin("outpostctl"))
                .arg(url),
            INSTALL_LIMIT,
        )
    }

    fn slot_b(&self) -> Vec<u8> {
        fs::read(self.root().join("dev/vda3")).expect("slot b")
    }

    fn boot_env(&self) -> String {
        fs::read_to_string(self.root().join("bootdata/boot.env")).expect("boot.env")
    }
}

/// A new release key's public line, and a bundle of release 0.2.0 for this profile and
/// kernel signed by it.
fn signed_bundle(payload: &[u8]) -> (String, Vec<u8>) {
    let key = outpost_bundle::generate_key();
    let m = Manifest {
        format: FORMAT,
        name: "outpost".to_owned(),
        release: Release {
            version: "0.2.0".to_owned(),
            build: 1_700_000_100,
        },
        profile: PROFILE.to_owned(),
        kernel: KERNEL.to_owned(),
        store_schema: 1,
        rootfs: outpost_bundle::payload_of(&mut &payload[..]).expect("payload"),
        sbom_sha256: String::new(),
    };
    let mut out = Vec::new();
    outpost_bundle::write_bundle(&mut out, &m, &key, &mut &payload[..]).expect("bundle");
    (
        outpost_bundle::public_key_line(&key.verifying_key(), "release"),
        out,
    )
}

/// nginx serving `bundles/` on four ports: a good chain for 127.0.0.1, a chain for
/// another host name, an expired chain, and a chain from a CA the box does not trust.
struct Servers {
    nginx: Nginx,
    _files: tempfile::TempDir,
}

const GOOD: usize = 0;
const WRONG_NAME: usize = 1;
const EXPIRED: usize = 2;
const UNKNOWN_CA: usize = 3;

impl Servers {
    fn start(pki: &Pki, bundle: &[u8]) -> Servers {
        let files = tempfile::tempdir().expect("files");
        let root = files.path().join("www");
        fs::create_dir_all(root.join("bundles")).expect("www");
        fs::write(root.join("bundles/outpost-0.2.0.bundle"), bundle).expect("bundle file");
        let stranger = Pki::new("Somebody else");
        let d = files.path();
        let certs = [
            pki.server(d, "good", &["127.0.0.1"], Validity::Current),
            pki.server(d, "name", &["updates.outpost.test"], Validity::Current),
            pki.server(d, "expired", &["127.0.0.1"], Validity::Expired),
            stranger.server(d, "stranger", &["127.0.0.1"], Validity::Current),
        ];
        let sites: Vec<Site> = certs
            .into_iter()
            .map(|cert| Site {
                cert,
                root: root.clone(),
                dav: None,
            })
            .collect();
        Servers {
            nginx: Nginx::start(&sites),
            _files: files,
        }
    }

    fn url(&self, site: usize) -> String {
        format!(
            "https://{}/bundles/outpost-0.2.0.bundle",
            self.nginx.addr(site)
        )
    }
}

fn refused(fake: &FakeBox, url: &str, what: &str, words: &[&str]) -> String {
    let out = fake.install(url);
    assert_eq!(out.code, Some(1), "{what}: refused with exit 1: {out:?}");
    let lower = out.stderr.to_lowercase();
    assert!(
        words.iter().all(|w| lower.contains(w)),
        "{what}: the error names the reason ({words:?}): {}",
        out.stderr
    );
    assert!(
        fake.slot_b().iter().all(|b| *b == BLANK),
        "{what}: slot b is untouched"
    );
    assert_eq!(fake.boot_env(), BOOT_ENV, "{what}: boot.env is unchanged");
    out.stderr
}

#[test]
fn an_update_downloads_over_a_real_chain_and_bad_chains_are_refused_with_the_reason() {
    require_root("the HTTPS update test (mount namespaces, nginx)");
    let payload = payload();
    let (key_line, bundle) = signed_bundle(&payload);
    let pki = Pki::new("Outpost update test");
    let servers = Servers::start(&pki, &bundle);
    let fake = FakeBox::new(&key_line, pki.root_pem());

    // Bad chains first, so the slot is still blank for each check.
    let e = refused(
        &fake,
        &servers.url(WRONG_NAME),
        "a certificate for another host name",
        &["127.0.0.1", "not valid for"],
    );
    println!("wrong name: {e}");
    let e = refused(
        &fake,
        &servers.url(EXPIRED),
        "an expired certificate",
        &["expired"],
    );
    println!("expired: {e}");
    let e = refused(
        &fake,
        &servers.url(UNKNOWN_CA),
        "a certificate from an untrusted CA",
        &[
            "unknownissuer",
            "does not lead to",
            "/etc/outpost/update-ca.pem",
        ],
    );
    println!("unknown CA: {e}");

    // The good chain: downloaded, verified, written to slot b, armed for one trial.
    let out = fake.install(&servers.url(GOOD));
    assert_eq!(
        out.code,
        Some(0),
        "install over the good chain: {out:?}\n{}",
        servers.nginx.log()
    );
    assert!(
        out.stderr
            .contains("update: signature verified; writing slot b"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("installed 0.2.0") && out.stdout.contains("slot b"),
        "{out:?}"
    );
    let slot = fake.slot_b();
    assert_eq!(
        &slot[..payload.len()],
        &payload[..],
        "slot b holds the payload"
    );
    assert!(
        fake.boot_env().lines().any(|l| l == "try=b"),
        "slot b is armed for one trial: {}",
        fake.boot_env()
    );
    assert_eq!(
        fs::read(fake.root().join("dev/vda2")).expect("slot a"),
        vec![BLANK; SLOT_BYTES],
        "the running slot is never written"
    );
}
