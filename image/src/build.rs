//! `outpost-image build`: the firmware image from our static binaries and Debian arm64
//! parts: rootfs (squashfs), initramfs (cpio newc, gzip), boot-data and data (ext4), the
//! A/B GPT disk, the kernel beside them for qemu, and a manifest with every checksum.
//! `SOURCE_DATE_EPOCH` fixes every timestamp and GUID, so two builds give the same bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::cpio::{Archive, Entry};
use crate::debian::{self, Package};
use crate::keys::{self, UpdateKey};
use crate::kmod::{self, ModuleTree};
use crate::sbom::TARGET;
use crate::{elf, gpt};

/// Size of each root slot.
const ROOT_SLOT_BYTES: u64 = 128 << 20;
/// Size of the boot-data partition.
const BOOT_DATA_BYTES: u64 = 4 << 20;
/// Size of the data partition.
const DATA_BYTES: u64 = 256 << 20;
/// The applets the init scripts and the admin's recovery shell use.
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "chmod",
    "chown",
    "cmp",
    "cp",
    "date",
    "dd",
    "df",
    "dmesg",
    "echo",
    "free",
    "grep",
    "halt",
    "head",
    "hostname",
    "pidof",
    "ifconfig",
    "init",
    "insmod",
    "ip",
    "kill",
    "killall",
    "ln",
    "ls",
    "lsmod",
    "mkdir",
    "modprobe",
    "mount",
    "mountpoint",
    "mv",
    "ping",
    "poweroff",
    "ps",
    "reboot",
    "rm",
    "rmmod",
    "route",
    "sed",
    "sleep",
    "sync",
    "tail",
    "top",
    "touch",
    "tr",
    "udhcpc",
    "umount",
    "uname",
    "uptime",
    "vi",
    "wc",
    "mdev",
    "mkfifo",
    "sysctl",
    "true",
    "false",
    "test",
    "[",
    "printf",
    "cut",
    "sort",
    "uniq",
    "find",
    "xargs",
    "env",
    "stty",
    "setsid",
    "nc",
    "wget",
    "hexdump",
    "blkid",
    "findfs",
    "fsync",
];
/// The Debian packages of the programs below; their `lib*` dependencies are fetched too.
const USERLAND_PACKAGES: &[&str] = &["nftables", "dropbear-bin", "openssh-client"];
/// The packages of `setpriv` (util-linux) and the one library it needs besides libc,
/// fetched as they are: util-linux's own dependency closure reaches an
/// architecture-independent package apt cannot fetch as arm64 (libaudit-common), and none
/// of it is needed.
const SETPRIV_PACKAGES: &[&str] = &["util-linux", "libcap-ng0"];
/// Programs from [`USERLAND_PACKAGES`], at the same path in the root filesystem as in their
/// package; their shared libraries come from the `NEEDED` entries. outpostd runs these by
/// name (PATH has /usr/sbin and /usr/bin): nft; dropbear and dropbearkey for the admin's
/// SSH; `sftp` for SFTP backups (firmware/src/backup/target/sftp.rs), which runs /usr/bin/ssh
/// (the path compiled into it), and `ssh-keygen`, which makes the backup client key; and
/// util-linux's `setpriv` ([`SETPRIV_PACKAGES`]), with which init starts outpostd and
/// dropbear unprivileged (`files/run-outpostd`, `files/run-dropbear`).
const DEBIAN_PROGRAMS: &[&str] = &[
    "usr/sbin/nft",
    "usr/bin/setpriv",
    "usr/sbin/dropbear",
    "usr/bin/dropbearkey",
    "usr/bin/ssh",
    "usr/bin/sftp",
    "usr/bin/ssh-keygen",
];
/// Where the firmware loads its prompts from (firmware `MediaConfig::prompts_dir`).
const PROMPTS_DIR: &str = "usr/share/outpost/prompts";
/// Options every `sox` run of `scripts/make-prompts` gets (through `SOX_OPTS`): sox dithers
/// by default with noise seeded from the clock, so two builds differed in every prompt.
/// `-D` turns dither off (silence stays digital silence, the µ-law quantiser needs none),
/// `-R` fixes the seed of anything else random.
const PROMPT_SOX_OPTS: &str = "-D -R";
/// Root filesystem modules every profile loads at boot (missing ones are reported).
const ROOT_MODULES: &[&str] = &[
    "virtio_net",
    "nf_tables",
    "nfnetlink",
    "nf_conntrack",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_reject_ipv4",
    "nf_reject_ipv6",
    "nft_ct",
    "nft_limit",
    "nft_log",
    "nft_reject",
    "nft_reject_inet",
    "nft_hash",
    "nft_objref",
    "nft_quota",
    "nft_connlimit",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "af_packet",
];
/// Modules the initramfs loads to reach the disk.
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "squashfs",
    "ext4",
    "crc32c_generic",
];

/// A supported board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `qemu-system-aarch64 -M virt` (virtio disk and network, i6300esb watchdog).
    QemuVirt,
    /// Raspberry Pi 4 / CM4 with an I2C LCD (SD card or eMMC, bcm2835 watchdog).
    Rpi4,
}

impl Profile {
    /// The board profile name outpostd knows.
    pub fn name(self) -> &'static str {
        match self {
            Profile::QemuVirt => "qemu-virt",
            Profile::Rpi4 => "rpi4",
        }
    }

    fn root_modules(self) -> &'static [&'static str] {
        match self {
            Profile::QemuVirt => &["i6300esb"],
            Profile::Rpi4 => &[
                "bcm2835_wdt",
                "i2c_bcm2835",
                "i2c_dev",
                "gpio_raspberrypi_exp",
                "pinctrl_bcm2835",
                "genet",
                "broadcom",
            ],
        }
    }

    fn initramfs_modules(self) -> &'static [&'static str] {
        match self {
            Profile::QemuVirt => &[],
            Profile::Rpi4 => &["sdhci_iproc", "mmc_block", "bcm2835_dma"],
        }
    }

    fn console(self) -> &'static str {
        match self {
            Profile::QemuVirt => "ttyAMA0",
            Profile::Rpi4 => "ttyS1,115200",
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The workspace root (Cargo.toml, Cargo.lock, target/).
    pub workspace: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Board.
    pub profile: Profile,
    /// Timestamp of every file (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// TOML merged into the appliance configuration (test builds: `[demo]`, `[auth]`).
    pub config_extra: Option<String>,
    /// Run `cargo build` for the aarch64 binaries first.
    pub cargo: bool,
    /// Public update key files the image trusts (none: the development key).
    pub update_keys: Vec<PathBuf>,
    /// authorized_keys files for the admin (baked as /etc/outpost/admin-keys.pub).
    pub ssh_keys: Vec<PathBuf>,
    /// Seconds a newly installed slot has to pass its health check.
    pub health_timeout: u64,
}

/// The licence policy file, relative to the workspace.
pub const LICENCE_POLICY: &str = "image/licences.toml";

/// The crates linked into the firmware, checked against the licence policy.
pub fn checked_crates(
    workspace: &Path,
) -> anyhow::Result<(Vec<crate::sbom::Crate>, crate::licences::Report)> {
    let path = workspace.join(LICENCE_POLICY);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let policy =
        crate::licences::Policy::parse(&text).with_context(|| format!("{}", path.display()))?;
    let crates = crate::sbom::firmware_crates(workspace)?;
    let report = crate::licences::check(&policy, &crates)?;
    for name in &report.unused_exceptions {
        eprintln!(
            "outpost-image: warning: {} names {name} under [exceptions], which the firmware no longer uses",
            path.display()
        );
    }
    Ok((crates, report))
}

/// The update keys to bake: the given public key files, or the development key (made on
/// first use under `key_dir`) with a loud warning. Returns the keys and whether the
/// development key is among them.
fn update_keys(paths: &[PathBuf], key_dir: &Path) -> anyhow::Result<(Vec<UpdateKey>, bool)> {
    if paths.is_empty() {
        let (key, secret, made) = keys::dev_key(key_dir)?;
        if made {
            eprintln!(
                "outpost-image: generated the development update key {}",
                secret.display()
            );
        }
        dev_key_warning(&key.id, &secret);
        return Ok((vec![key], true));
    }
    let mut out: Vec<UpdateKey> = Vec::new();
    for p in paths {
        let key = keys::read_update_key(p)?;
        if !out.iter().any(|k| k.id == key.id) {
            out.push(key);
        }
    }
    Ok((out, false))
}

/// The warning of an image that trusts the development key.
fn dev_key_warning(id: &str, secret: &Path) {
    let lines = [
        "WARNING: no --update-key given: this image trusts the DEVELOPMENT update key".to_owned(),
        format!("  {id} ({})", secret.display()),
        "  Anyone with that file can sign updates this image installs.".to_owned(),
        "  Never ship it: build release images with --update-key RELEASE.pub.".to_owned(),
    ];
    let bar = "!".repeat(lines.iter().map(String::len).max().unwrap_or(0) + 4);
    eprintln!("{bar}");
    for l in &lines {
        eprintln!("!! {l}");
    }
    eprintln!("{bar}");
}

/// SHA-256 of a file (by `sha256sum`: the disk is hundreds of MiB and this tool usually
/// runs as a debug build).
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = debian::run(Command::new("sha256sum").arg(path))?;
    let text = String::from_utf8_lossy(&out);
    let sum = text.split_whitespace().next().unwrap_or_default();
    if sum.len() != 64 {
        bail!("sha256sum printed {text:?}");
    }
    Ok(sum.to_owned())
}

/// Builds the image; returns the manifest it wrote.
pub fn build(opts: &BuildOptions) -> anyhow::Result<serde_json::Value> {
    let started = std::time::Instant::now();
    let out = &opts.out;
    // Refusals that need no assembling come first: licences, keys.
    let (crates, _) = checked_crates(&opts.workspace)?;
    eprintln!(
        "outpost-image: {} crates linked into the firmware, licences allowed by {LICENCE_POLICY}",
        crates.len()
    );
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let work = out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| opts.workspace.join("target"));
    let cache = target_dir.join("image-cache").join("debs");
    std::fs::create_dir_all(&cache)?;
    let (trusted, dev_key) = update_keys(&opts.update_keys, &target_dir.join("image-keys"))?;
    let admin_keys = keys::admin_keys(&opts.ssh_keys)?;

    if opts.cargo {
        eprintln!("outpost-image: cargo build --release --target {TARGET} -p firmware --bins");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .current_dir(&opts.workspace)
            .args([
                "build",
                "--release",
                "--target",
                TARGET,
                "-p",
                "firmware",
                "--bins",
            ])
            .status()
            .context("cannot run cargo")?;
        if !status.success() {
            bail!("cargo build for {TARGET} failed");
        }
    }
    let bin_dir = target_dir.join(TARGET).join("release");

    // Debian parts.
    let meta = debian::fetch(&cache, "linux-image-arm64")?;
    let Some(kernel_name) = meta
        .depends
        .iter()
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-arm64"))
    else {
        bail!("linux-image-arm64 depends on no linux-image-<version>-arm64 package");
    };
    let kernel = debian::fetch(&cache, kernel_name)?;
    let busybox = debian::fetch(&cache, "busybox-static")?;
    let mut userland = debian::fetch_with_libraries(&cache, USERLAND_PACKAGES)?;
    for name in SETPRIV_PACKAGES {
        if !userland.iter().any(|p| p.name == *name) {
            userland.push(debian::fetch(&cache, name)?);
        }
    }
    let pkg_dir = |p: &Package| work.join("pkg").join(&p.name);
    for p in [&kernel, &busybox].into_iter().chain(userland.iter()) {
        debian::extract(p, &pkg_dir(p))?;
    }
    let modules_root = pkg_dir(&kernel).join("lib/modules");
    let release = std::fs::read_dir(&modules_root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .context("the kernel package has no lib/modules/<release>")?;
    let tree = ModuleTree::open(&modules_root.join(&release))?;
    // The Raspberry Pi's GPU firmware (Debian's non-free-firmware component, which the
    // host's apt sources may lack: a private apt configuration fetches it).
    let pi_firmware = match opts.profile {
        Profile::Rpi4 => {
            let apt = debian::Apt::private(
                &target_dir.join("image-cache").join("apt-non-free-firmware"),
                &["non-free-firmware"],
            )?;
            let p = debian::fetch_with(&apt, &cache, "raspi-firmware")?;
            debian::extract(&p, &pkg_dir(&p))?;
            Some(p)
        }
        Profile::QemuVirt => None,
    };

    // Root filesystem.
    let root = work.join("rootfs");
    let mut fs = Tree::new(&root);
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "data",
        "mnt",
        "root",
        "var",
        "etc/outpost",
        "usr/share/outpost",
    ] {
        fs.dir(d)?;
    }
    fs.link("var/run", "../run")?;
    fs.link("var/tmp", "../tmp")?;
    fs.link("var/log", "../run")?;
    fs.link("etc/resolv.conf", "../run/resolv.conf")?;
    fs.copy(&pkg_dir(&busybox).join("bin/busybox"), "bin/busybox", 0o755)?;
    for applet in APPLETS {
        fs.link(&format!("bin/{applet}"), "busybox")?;
    }
    fs.link("sbin/init", "../bin/busybox")?;
    fs.link("sbin/modprobe", "../bin/busybox")?;
    fs.link("sbin/reboot", "../bin/busybox")?;
    for bin in ["outpostd", "outpostctl"] {
        let src = bin_dir.join(bin);
        let bytes = std::fs::read(&src)
            .with_context(|| format!("cannot read {} (build it with --cargo)", src.display()))?;
        if !elf::needed(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))?
            .is_empty()
        {
            bail!("{} is not a static executable", src.display());
        }
        fs.file(&format!("usr/bin/{bin}"), &bytes, 0o755)?;
    }
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    let find_pkg = |rel: &str| userland.iter().find(|p| pkg_dir(p).join(rel).exists());
    for rel in DEBIAN_PROGRAMS {
        let pkg = find_pkg(rel).with_context(|| format!("no package holds {rel}"))?;
        used.insert(pkg.name.clone(), pkg.version.clone());
        fs.copy(&pkg_dir(pkg).join(rel), rel, 0o755)?;
    }
    // The shared-library closure of those programs, and the dynamic loader.
    let mut queue: Vec<PathBuf> = DEBIAN_PROGRAMS.iter().map(|r| root.join(r)).collect();
    let mut have = std::collections::BTreeSet::new();
    while let Some(path) = queue.pop() {
        let bytes = std::fs::read(&path)?;
        for lib in elf::needed(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))? {
            if !have.insert(lib.clone()) {
                continue;
            }
            let found = ["lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu"]
                .iter()
                .find_map(|d| {
                    let rel = format!("{d}/{lib}");
                    find_pkg(&rel).map(|p| (p, pkg_dir(p).join(rel)))
                });
            let Some((pkg, src)) = found else {
                bail!(
                    "no fetched package provides {lib} (needed by {})",
                    path.display()
                );
            };
            used.insert(pkg.name.clone(), pkg.version.clone());
            let dest = format!("lib/aarch64-linux-gnu/{lib}");
            fs.copy(&std::fs::canonicalize(&src)?, &dest, 0o644)?;
            queue.push(root.join(dest));
        }
    }
    let libc = userland
        .iter()
        .find(|p| p.name == "libc6")
        .context("libc6 was not fetched")?;
    fs.copy(
        &std::fs::canonicalize(pkg_dir(libc).join("lib/ld-linux-aarch64.so.1"))?,
        "lib/ld-linux-aarch64.so.1",
        0o755,
    )?;
    used.insert(libc.name.clone(), libc.version.clone());

    // Kernel modules of the root filesystem.
    let mut wanted: Vec<&str> = INITRAMFS_MODULES.to_vec();
    wanted.extend(opts.profile.initramfs_modules());
    wanted.extend(ROOT_MODULES);
    wanted.extend(opts.profile.root_modules());
    let (root_mods, missing) = tree.resolve(&wanted)?;
    for m in &missing {
        eprintln!("outpost-image: warning: kernel {release} has no module {m}");
    }
    let mod_dir = format!("lib/modules/{release}");
    for m in &root_mods {
        fs.copy(
            &tree.dir.join(&m.path),
            &format!("{mod_dir}/{}", m.path),
            0o644,
        )?;
    }
    fs.copy(
        &tree.dir.join("modules.builtin"),
        &format!("{mod_dir}/modules.builtin"),
        0o644,
    )?;
    fs.file(
        &format!("{mod_dir}/modules.dep"),
        kmod::modules_dep(&root_mods).as_bytes(),
        0o644,
    )?;
    fs.file(
        &format!("{mod_dir}/modules.alias"),
        kmod::modules_alias(&root_mods).as_bytes(),
        0o644,
    )?;
    let load: String = root_mods.iter().map(|m| format!("{}\n", m.path)).collect();
    fs.file("etc/outpost/modules.load", load.as_bytes(), 0o644)?;

    // /etc and our scripts.
    for (name, text, mode) in FILES {
        fs.file(name, text.as_bytes(), *mode)?;
    }
    let tty = opts
        .profile
        .console()
        .split(',')
        .next()
        .unwrap_or("console");
    let inittab = include_str!("../files/inittab").replace("@CONSOLE@", tty);
    fs.file("etc/inittab", inittab.as_bytes(), 0o644)?;
    let base = include_str!("../files/outpost.toml").replace("@PROFILE@", opts.profile.name());
    let config = crate::config::merge_config(&base, opts.config_extra.as_deref())?;
    fs.file("etc/outpost/outpost.toml", config.as_bytes(), 0o644)?;
    fs.dir("etc/outpost/update-keys")?;
    for key in &trusted {
        fs.file(
            &format!("etc/outpost/update-keys/{}.pub", key.id),
            key.line.as_bytes(),
            0o644,
        )?;
    }
    if !admin_keys.is_empty() {
        fs.file("etc/outpost/admin-keys.pub", admin_keys.as_bytes(), 0o644)?;
    }
    // Spoken prompts and tones for voicemail and the auto-attendant.
    let prompts = make_prompts(&opts.workspace, &root.join(PROMPTS_DIR))?;
    let mut debs: Vec<(String, String)> = used.into_iter().collect();
    debs.push((kernel.name.clone(), kernel.version.clone()));
    debs.push((busybox.name.clone(), busybox.version.clone()));
    if let Some(p) = &pi_firmware {
        debs.push((p.name.clone(), p.version.clone()));
    }
    debs.sort();
    let sbom = crate::sbom::sbom(&crates, &debs);
    let sbom_text = serde_json::to_string_pretty(&sbom)? + "\n";
    fs.file("usr/share/outpost/sbom.json", sbom_text.as_bytes(), 0o644)?;
    let release_text = format!(
        "version={}\nbuild={}\nprofile={}\nkernel={release}\nsource_date_epoch={}\nhealth_timeout={}\n",
        env!("CARGO_PKG_VERSION"),
        opts.epoch,
        opts.profile.name(),
        opts.epoch,
        opts.health_timeout
    );
    fs.file("etc/outpost/release", release_text.as_bytes(), 0o644)?;

    let squashfs = out.join("root.squashfs");
    let _ = std::fs::remove_file(&squashfs);
    debian::run(
        Command::new("mksquashfs")
            .env_remove("SOURCE_DATE_EPOCH")
            .arg(&root)
            .arg(&squashfs)
            .args([
                "-noappend",
                "-all-root",
                "-no-xattrs",
                "-comp",
                "zstd",
                "-quiet",
                "-no-progress",
            ])
            .arg("-mkfs-time")
            .arg(opts.epoch.to_string())
            .arg("-all-time")
            .arg(opts.epoch.to_string()),
    )?;
    let squashfs_len = std::fs::metadata(&squashfs)?.len();
    if squashfs_len > ROOT_SLOT_BYTES {
        bail!(
            "the root filesystem ({squashfs_len} bytes) does not fit a {ROOT_SLOT_BYTES}-byte slot"
        );
    }

    // Initramfs.
    let mut init = Archive::default();
    init.add(
        "bin/busybox",
        Entry::File(0o755, std::fs::read(pkg_dir(&busybox).join("bin/busybox"))?),
    );
    init.add(
        "init",
        Entry::File(0o755, include_bytes!("../files/init").to_vec()),
    );
    init.add("bin/sh", Entry::Symlink("busybox".to_owned()));
    init.add("dev/console", Entry::CharDevice(5, 1));
    let mut early: Vec<&str> = INITRAMFS_MODULES.to_vec();
    early.extend(opts.profile.initramfs_modules());
    let (early_mods, _) = tree.resolve(&early)?;
    let mut order = String::new();
    for m in &early_mods {
        init.add(
            &format!("lib/modules/{}", m.path),
            Entry::File(0o644, std::fs::read(tree.dir.join(&m.path))?),
        );
        order.push_str(&m.path);
        order.push('\n');
    }
    init.add("etc/modules.order", Entry::File(0o644, order.into_bytes()));
    let epoch32 = u32::try_from(opts.epoch).context("SOURCE_DATE_EPOCH beyond 2106")?;
    let cpio = init.to_bytes(epoch32);
    let initramfs = out.join("initramfs.cpio.gz");
    let mut gz = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(File::create(&initramfs)?)
        .spawn()
        .context("cannot run gzip")?;
    gz.stdin.take().context("gzip stdin")?.write_all(&cpio)?;
    if !gz.wait()?.success() {
        bail!("gzip failed");
    }

    // Kernel for qemu (-kernel) and for the board's boot loader.
    let vmlinuz = out.join("vmlinuz");
    std::fs::copy(
        pkg_dir(&kernel).join(format!("boot/vmlinuz-{release}")),
        &vmlinuz,
    )?;

    // Boot-data and data filesystems, then the disk.
    let seed = format!("outpost/{}/{}", opts.profile.name(), opts.epoch);
    let bootdata_dir = work.join("bootdata");
    std::fs::create_dir_all(&bootdata_dir)?;
    std::fs::write(bootdata_dir.join("boot.env"), "slot=a\n")?;
    let bootdata = work.join("bootdata.ext4");
    mke2fs(
        &bootdata_dir,
        &bootdata,
        BOOT_DATA_BYTES,
        "outpost-boot",
        &seed,
        opts.epoch,
        false,
    )?;
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let data = work.join("data.ext4");
    mke2fs(
        &data_dir,
        &data,
        DATA_BYTES,
        "outpost-data",
        &seed,
        opts.epoch,
        true,
    )?;

    let mut sizes = vec![
        ("outpost-boot", BOOT_DATA_BYTES),
        ("outpost-root-a", ROOT_SLOT_BYTES),
        ("outpost-root-b", ROOT_SLOT_BYTES),
        ("outpost-data", DATA_BYTES),
    ];
    let mut sources = vec![&bootdata, &squashfs, &squashfs, &data];
    let firmware_fat = work.join("firmware.vfat");
    if let Some(p) = &pi_firmware {
        let files = pi_boot_files(
            &pkg_dir(p),
            &pkg_dir(&kernel).join(format!("usr/lib/linux-image-{release}/broadcom")),
            &work.join("pi-boot"),
            &vmlinuz,
            &initramfs,
        )?;
        let volume_id = u32::from_le_bytes(
            gpt::guid(&format!("{seed}/fs/outpost-firmware"))[..4]
                .try_into()
                .expect("four bytes"),
        );
        crate::fat::mkfat(
            &firmware_fat,
            PI_FIRMWARE_BYTES,
            "OUTPOST-FW",
            volume_id,
            opts.epoch,
            &files,
        )?;
        // The Pi 4 boot loader reads the first FAT partition of the GPT disk.
        sizes.insert(0, ("outpost-firmware", PI_FIRMWARE_BYTES));
        sources.insert(0, &firmware_fat);
    }
    let (mut parts, disk_bytes) = gpt::layout(&sizes);
    if pi_firmware.is_some() {
        parts[0].kind = gpt::Kind::Fat;
    }
    let disk_path = out.join("disk.img");
    let mut disk = File::create(&disk_path)?;
    disk.set_len(disk_bytes)?;
    gpt::write(&mut disk, disk_bytes, &parts, &seed)?;
    for (part, src) in parts.iter().zip(sources) {
        copy_sparse(
            src,
            &mut disk,
            part.first * gpt::BLOCK,
            part.blocks * gpt::BLOCK,
        )?;
    }
    disk.sync_all()?;
    drop(disk);
    std::fs::write(out.join("sbom.json"), &sbom_text)?;

    let mut artifacts = serde_json::Map::new();
    for name in [
        "disk.img",
        "vmlinuz",
        "initramfs.cpio.gz",
        "root.squashfs",
        "sbom.json",
    ] {
        let p = out.join(name);
        artifacts.insert(
            name.to_owned(),
            serde_json::json!({ "bytes": std::fs::metadata(&p)?.len(), "sha256": sha256_file(&p)? }),
        );
    }
    let manifest = serde_json::json!({
        "name": "outpost",
        "version": env!("CARGO_PKG_VERSION"),
        "profile": opts.profile.name(),
        "source_date_epoch": opts.epoch,
        "kernel": { "release": release, "package": kernel.name, "version": kernel.version },
        "debian_packages": debs.iter().map(|(n, v)| serde_json::json!({"name": n, "version": v})).collect::<Vec<_>>(),
        "kernel_cmdline": format!("console={} rootwait", opts.profile.console()),
        "partitions": parts.iter().map(|p| serde_json::json!({
            "name": p.name,
            "first_lba": p.first,
            "blocks": p.blocks,
            "guid": gpt::guid_string(&gpt::guid(&format!("{seed}/partition/{}", p.name))),
        })).collect::<Vec<_>>(),
        "artifacts": artifacts,
        "prompts": prompts,
        "update_keys": trusted.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        "development_key": dev_key,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    std::fs::remove_dir_all(&work)?;
    eprintln!(
        "outpost-image: built {} ({} MiB disk, root {} KiB) in {:.1} s",
        out.display(),
        disk_bytes >> 20,
        squashfs_len >> 10,
        started.elapsed().as_secs_f64()
    );
    if dev_key {
        dev_key_warning(
            &trusted.first().map(|k| k.id.clone()).unwrap_or_default(),
            &target_dir.join("image-keys/dev.key"),
        );
    }
    Ok(manifest)
}

/// Size of the Raspberry Pi firmware partition (FAT32).
const PI_FIRMWARE_BYTES: u64 = 64 << 20;
/// config.txt of the Raspberry Pi firmware partition.
const PI_CONFIG_TXT: &str = "\
# Raspberry Pi 4 / CM4 boot configuration (outpost-image, profile rpi4).
arm_64bit=1
kernel=vmlinuz
initramfs initramfs.cpio.gz followkernel
enable_uart=1
dtparam=i2c_arm=on
dtparam=watchdog=on
";
/// cmdline.txt: the kernel command line the Pi firmware passes on.
/// The Pi 4 routes GPIO 14/15 to the mini-UART when Bluetooth keeps the PL011; Debian's
/// kernel names it ttyS1 (`serial0` is an alias only the Raspberry Pi kernel knows).
const PI_CMDLINE_TXT: &str = "console=ttyS1,115200 console=tty1 rootwait panic=10\n";

/// The files of the Raspberry Pi firmware partition (name, source): the GPU firmware
/// from raspi-firmware, the device trees of the Pi 4 family from the kernel package, the
/// kernel and initramfs, config.txt and cmdline.txt (written into `scratch`).
fn pi_boot_files(
    firmware_pkg: &Path,
    dtb_dir: &Path,
    scratch: &Path,
    vmlinuz: &Path,
    initramfs: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    std::fs::create_dir_all(scratch)?;
    let fw = firmware_pkg.join("usr/lib/raspi-firmware");
    let mut files = vec![
        ("start4.elf".to_owned(), fw.join("start4.elf")),
        ("fixup4.dat".to_owned(), fw.join("fixup4.dat")),
        // The firmware loads the device tree named after the board; Debian's kernel calls
        // the Compute Module 4's "cm4-io" (it is the CM4 on its IO board).
        (
            "bcm2711-rpi-4-b.dtb".to_owned(),
            dtb_dir.join("bcm2711-rpi-4-b.dtb"),
        ),
        (
            "bcm2711-rpi-400.dtb".to_owned(),
            dtb_dir.join("bcm2711-rpi-400.dtb"),
        ),
        (
            "bcm2711-rpi-cm4.dtb".to_owned(),
            dtb_dir.join("bcm2711-rpi-cm4-io.dtb"),
        ),
        ("vmlinuz".to_owned(), vmlinuz.to_owned()),
        ("initramfs.cpio.gz".to_owned(), initramfs.to_owned()),
    ];
    for (name, text) in [
        ("config.txt", PI_CONFIG_TXT),
        ("cmdline.txt", PI_CMDLINE_TXT),
    ] {
        let p = scratch.join(name);
        std::fs::write(&p, text)?;
        files.push((name.to_owned(), p));
    }
    // Copies, so fixing their times for the FAT image leaves the originals alone.
    for (name, src) in &mut files {
        if !src.exists() {
            bail!(
                "{} is missing (needed on the Pi boot partition)",
                src.display()
            );
        }
        if !src.starts_with(scratch) {
            let copy = scratch.join(name.as_str());
            std::fs::copy(&*src, &copy)
                .with_context(|| format!("cannot copy {}", src.display()))?;
            *src = copy;
        }
    }
    Ok(files)
}

/// Our files in the root filesystem: path, text, mode.
const FILES: &[(&str, &str, u32)] = &[
    ("etc/passwd", include_str!("../files/passwd"), 0o644),
    ("etc/shadow", include_str!("../files/shadow"), 0o600),
    ("etc/group", include_str!("../files/group"), 0o644),
    ("etc/shells", include_str!("../files/shells"), 0o644),
    (
        "etc/outpost/rc.sysinit",
        include_str!("../files/rc.sysinit"),
        0o755,
    ),
    (
        "etc/outpost/rc.shutdown",
        include_str!("../files/rc.shutdown"),
        0o755,
    ),
    (
        "etc/outpost/network-up",
        include_str!("../files/network-up"),
        0o755,
    ),
    (
        "etc/outpost/box-name",
        include_str!("../files/box-name"),
        0o755,
    ),
    (
        "etc/outpost/udhcpc.script",
        include_str!("../files/udhcpc.script"),
        0o755,
    ),
    (
        "etc/outpost/run-outpostd",
        include_str!("../files/run-outpostd"),
        0o755,
    ),
    (
        "etc/outpost/run-dropbear",
        include_str!("../files/run-dropbear"),
        0o755,
    ),
    (
        "etc/outpost/run-reboot",
        include_str!("../files/run-reboot"),
        0o755,
    ),
    (
        "etc/outpost/run-update-agent",
        include_str!("../files/run-update-agent"),
        0o755,
    ),
    (
        "etc/outpost/privileges",
        include_str!("../files/privileges"),
        0o755,
    ),
    (
        "etc/outpost/first-boot",
        include_str!("../files/first-boot"),
        0o755,
    ),
    (
        "etc/outpost/console",
        include_str!("../files/console"),
        0o755,
    ),
];

/// Generates the prompts into `dir` with `scripts/make-prompts` (espeak-ng and sox, which it
/// installs when missing) and returns their manifest entry: count, bytes, tool versions.
/// Reproducible: sox gets [`PROMPT_SOX_OPTS`], the script's voice settings and the locale are
/// fixed, and the modes of the files no longer depend on the umask.
fn make_prompts(workspace: &Path, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let script = workspace.join("scripts/make-prompts");
    eprintln!("outpost-image: {} {}", script.display(), dir.display());
    debian::run(
        Command::new("bash")
            .arg(&script)
            .arg(dir)
            .env("SOX_OPTS", PROMPT_SOX_OPTS)
            .env("LC_ALL", "C")
            .env_remove("PROMPT_VOICE")
            .env_remove("PROMPT_SPEED")
            .env_remove("ESPEAK_DATA_PATH"),
    )
    .context("cannot generate the prompts")?;
    let (files, bytes) = normalise_prompts(dir)?;
    if files == 0 {
        bail!("{} made no prompts in {}", script.display(), dir.display());
    }
    // The first line of `--version`, without espeak-ng's host-specific "Data at: <path>".
    let version = |tool: &str| -> anyhow::Result<String> {
        let out = debian::run(Command::new(tool).arg("--version"))?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .split("Data at:")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "))
    };
    Ok(serde_json::json!({
        "dir": format!("/{PROMPTS_DIR}"),
        "files": files,
        "bytes": bytes,
        "espeak_ng": version("espeak-ng")?,
        "sox": version("sox")?,
    }))
}

/// Gives the `.ul` files of `dir` mode 0644 and `dir` 0755, and refuses anything else in
/// it; returns the number of files and their total size.
fn normalise_prompts(dir: &Path) -> anyhow::Result<(usize, u64)> {
    use std::os::unix::fs::PermissionsExt;
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() || path.extension().is_none_or(|x| x != "ul") {
            bail!("{} is not a prompt file", path.display());
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        files += 1;
        bytes += meta.len();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok((files, bytes))
}

/// An ext4 image of `dir`, `bytes` long, with fixed UUID, hash seed and times.
fn mke2fs(
    dir: &Path,
    image: &Path,
    bytes: u64,
    label: &str,
    seed: &str,
    epoch: u64,
    journal: bool,
) -> anyhow::Result<()> {
    set_times(dir, epoch)?;
    let uuid = gpt::guid_string(&gpt::guid(&format!("{seed}/fs/{label}"))).to_lowercase();
    let _ = std::fs::remove_file(image);
    let mut cmd = Command::new("mke2fs");
    cmd.env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args([
            "-q", "-F", "-t", "ext4", "-L", label, "-U", &uuid, "-m", "0",
        ])
        .arg("-E")
        .arg(format!("hash_seed={uuid},root_owner=0:0,nodiscard"));
    if !journal {
        cmd.args(["-O", "^has_journal"]);
    }
    cmd.arg("-d")
        .arg(dir)
        .arg(image)
        .arg(format!("{}k", bytes / 1024));
    debian::run(&mut cmd)?;
    // mke2fs copies each file's access and change times, which no one can fix on the
    // host (reading a file updates one, setting times the other): set them in the image.
    let mut script = String::new();
    for rel in std::iter::once(String::from("/")).chain(tree_paths(dir, dir)?) {
        for field in ["atime", "ctime", "mtime", "crtime"] {
            script.push_str(&format!("set_inode_field \"{rel}\" {field} @{epoch}\n"));
        }
    }
    let cmds = image.with_extension("debugfs");
    std::fs::write(&cmds, script)?;
    debian::run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(image),
    )?;
    Ok(())
}

/// Every path under `dir`, as `/a/b` relative to `root`.
fn tree_paths(root: &Path, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy();
        out.push(format!("/{rel}"));
        if path.is_dir() {
            out.extend(tree_paths(root, &path)?);
        }
    }
    out.sort();
    Ok(out)
}

/// Sets the access and modification times of everything under `dir` to `epoch`.
fn set_times(dir: &Path, epoch: u64) -> anyhow::Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_times(&path, epoch)?;
        } else {
            File::options().write(true).open(&path)?.set_times(times)?;
        }
    }
    File::open(dir)?.set_times(times)?;
    Ok(())
}

/// Copies `src` into `disk` at `offset`, skipping all-zero blocks (the disk file is sparse
/// and already zero there).
fn copy_sparse(src: &Path, disk: &mut File, offset: u64, room: u64) -> anyhow::Result<()> {
    let len = std::fs::metadata(src)?.len();
    if len > room {
        bail!(
            "{} ({len} bytes) does not fit its {room}-byte partition",
            src.display()
        );
    }
    let mut f = File::open(src)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            disk.seek(SeekFrom::Start(offset + at))?;
            disk.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
    Ok(())
}

/// The root filesystem directory being assembled.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(root: &Path) -> Self {
        Tree {
            root: root.to_owned(),
        }
    }

    fn path(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(p)
    }

    fn dir(&mut self, rel: &str) -> anyhow::Result<()> {
        let p = self.root.join(rel);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))
    }

    fn file(&mut self, rel: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(rel)?;
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    fn copy(&mut self, src: &Path, rel: &str, mode: u32) -> anyhow::Result<()> {
        let bytes = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        self.file(rel, &bytes, mode)
    }

    fn link(&mut self, rel: &str, target: &str) -> anyhow::Result<()> {
        let p = self.path(rel)?;
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p)
            .with_context(|| format!("cannot link {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Whether the root filesystem has a program of that name on outpostd's PATH.
    fn on_path(name: &str) -> bool {
        let dirs = ["usr/sbin/", "usr/bin/", "sbin/", "bin/"];
        DEBIAN_PROGRAMS
            .iter()
            .any(|p| dirs.iter().any(|d| p.strip_prefix(d) == Some(name)))
            || APPLETS.contains(&name)
            || ["outpostd", "outpostctl"].contains(&name)
    }

    #[test]
    fn the_image_has_every_program_the_backup_targets_run() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/src/backup/target");
        let mut text = String::new();
        for entry in std::fs::read_dir(&dir).expect("the firmware source is in the workspace") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                text += &std::fs::read_to_string(&path).expect("a source file");
            }
        }
        let mut programs: Vec<&str> = text
            .split("process::Command::new(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        programs.sort_unstable();
        programs.dedup();
        assert!(programs.contains(&"sftp"), "found {programs:?}");
        for p in &programs {
            assert!(
                on_path(p),
                "{p} is run by the backup targets but not in the image"
            );
        }
        // sftp runs ssh by the path compiled into it.
        assert!(DEBIAN_PROGRAMS.contains(&"usr/bin/ssh"));
    }

    #[test]
    fn the_daemon_and_the_admin_run_unprivileged_with_what_they_need() {
        // The accounts: the daemon's own user, not in the admin group (which may write the
        // inactive slot: the socket and host key get the group from setgid directories),
        // the admin's own uid, no uid 0 but root, and no `tty` group (dropbear, not root,
        // could not give a terminal to it).
        let passwd = include_str!("../files/passwd");
        let group = include_str!("../files/group");
        let field = |line: &str, i: usize| line.split(':').nth(i).unwrap_or("").to_owned();
        let user = |name: &str| {
            passwd
                .lines()
                .find(|l| field(l, 0) == name)
                .unwrap_or_else(|| panic!("no user {name}"))
                .to_owned()
        };
        assert_eq!(field(&user("outpost"), 2), "100");
        assert_eq!(field(&user("admin"), 2), "1000");
        assert_eq!(field(&user("admin"), 3), "1000");
        assert!(passwd
            .lines()
            .all(|l| field(l, 0) == "root" || field(l, 2) != "0"));
        assert!(group.lines().any(|l| l == "outpost-admin:x:1000:"));
        assert!(!group.lines().any(|l| l.starts_with("tty:")));
        // Every program the init scripts start is in the image.
        for script in [
            include_str!("../files/run-outpostd"),
            include_str!("../files/run-dropbear"),
            include_str!("../files/privileges"),
            include_str!("../files/run-reboot"),
            include_str!("../files/run-update-agent"),
            include_str!("../files/rc.sysinit"),
        ] {
            for program in [
                "setpriv", "chown", "cmp", "pidof", "mount", "grep", "sed", "mkfifo", "head",
                "reboot",
            ] {
                if script.contains(&format!("{program} ")) {
                    assert!(on_path(program), "{program} is not in the image");
                }
            }
        }
        // busybox's ash runs its own applets before PATH (and its `setpriv` knows no
        // --reuid): util-linux's is named by its path.
        for script in [
            include_str!("../files/run-outpostd"),
            include_str!("../files/run-dropbear"),
            include_str!("../files/run-update-agent"),
        ] {
            assert!(script.contains("/usr/bin/setpriv --reuid="));
            assert!(
                !script
                    .lines()
                    .any(|l| l.trim_start().starts_with("setpriv") || l.contains("exec setpriv")),
                "setpriv by name is busybox's"
            );
        }
        // outpostd knows every option run-outpostd gives it.
        let run = include_str!("../files/run-outpostd");
        let daemon = include_str!("../../firmware/src/bin/outpostd.rs");
        let start = run
            .find("/usr/bin/outpostd")
            .expect("run-outpostd starts outpostd");
        for word in run[start..].split_whitespace() {
            if let Some(option) = word.strip_prefix("--") {
                let field = option.replace('-', "_");
                assert!(
                    daemon.contains(&format!("    {field}: ")),
                    "outpostd has no option --{option}"
                );
            }
        }
        // The daemon's capabilities: exactly these four, in every set.
        assert!(run.contains("caps=-all,+net_admin,+net_bind_service,+sys_boot,+sys_time\n"));
        for set in [
            "--inh-caps=\"$caps\"",
            "--ambient-caps=\"$caps\"",
            "--bounding-set=\"$caps\"",
        ] {
            assert!(run.contains(set), "{set}");
        }
        // The update agent: the admin account, no capability at all, no_new_privs, and
        // options outpostctl knows.
        let agent = include_str!("../files/run-update-agent");
        for part in [
            "--reuid=admin --regid=outpost-admin",
            "--inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs",
            "outpostctl update agent --spool /data/spool/update",
        ] {
            assert!(agent.contains(part), "{part}");
        }
        let cli = include_str!("../../firmware/src/bin/outpostctl/cli.rs");
        for option in ["spool", "reboot_fifo"] {
            assert!(cli.contains(&format!("        {option}: ")), "{option}");
        }
    }

    /// What `files/box-name` prints for an eth0 with `mac` (`None`: no eth0).
    fn box_name(mac: Option<&str>) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(mac) = mac {
            std::fs::create_dir(dir.path().join("eth0")).expect("mkdir");
            std::fs::write(dir.path().join("eth0/address"), format!("{mac}\n")).expect("write");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("files/box-name");
        let out = std::process::Command::new("sh")
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn each_box_is_named_after_its_mac_and_outpost_without_eth0() {
        assert_eq!(box_name(Some("52:54:00:12:34:56")), "outpost-123456\n");
        assert_eq!(box_name(Some("DC:A6:32:AB:CD:EF")), "outpost-abcdef\n");
        assert_eq!(box_name(None), "outpost\n");
        assert_eq!(box_name(Some("00:00:00:00:00:00")), "outpost\n");
        assert_eq!(box_name(Some("52:54:00:12:34")), "outpost\n", "too short");
        assert_eq!(box_name(Some("52:54:00:12:34:5g")), "outpost\n");
        // rc.sysinit names the box with it once eth0's driver is loaded.
        let rc = include_str!("../files/rc.sysinit");
        let named = rc
            .find("hostname \"$(/etc/outpost/box-name)\"")
            .expect("rc.sysinit runs box-name");
        assert!(named > rc.find("modules.load").expect("modules are loaded"));
        assert!(FILES
            .iter()
            .any(|(p, _, mode)| *p == "etc/outpost/box-name" && *mode == 0o755));
    }

    #[test]
    fn prompt_files_get_fixed_modes_and_strays_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let prompts = dir.path().join("prompts");
        std::fs::create_dir(&prompts).expect("mkdir");
        std::fs::set_permissions(&prompts, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        for (name, len) in [("beep.ul", 4000), ("goodbye.ul", 123)] {
            let p = prompts.join(name);
            std::fs::write(&p, vec![0xffu8; len]).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        assert_eq!(normalise_prompts(&prompts).expect("normalised"), (2, 4123));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&prompts), 0o755);
        assert_eq!(mode(&prompts.join("beep.ul")), 0o644);
        assert_eq!(mode(&prompts.join("goodbye.ul")), 0o644);

        std::fs::write(prompts.join("beep.ul.tmp"), b"x").expect("write");
        let err = normalise_prompts(&prompts).expect_err("a stray file is refused");
        assert!(err.to_string().contains("beep.ul.tmp"), "{err}");
    }
}
