//! Firmware updates on the box: signed bundles written to the inactive A/B slot, armed for
//! one trial boot, committed by the trial's health check or rolled back.
//!
//! Safety argument: until [`install`] arms `try=` in boot.env (after the slot was written,
//! synced and read back), nothing changes what boots; a failure or power cut before that
//! leaves the running slot as the only one the initramfs picks. The initramfs consumes
//! `try=` before booting the trial (one shot) and leaves `tried=`; the trial's health check
//! ([`record_health`]) either commits (`slot=`) or records the rollback and reboots into
//! the committed slot. A trial that never reaches its verdict (power loss, hang, crash) is
//! rolled back by the initramfs on the next boot because `tried=` is still there.
//!
//! Every path goes through [`Layout`], so tests use temporary files as slot devices and a
//! temporary directory as the boot-data partition. Blocking code, no tokio: this runs in
//! `outpostctl`.

pub mod bootenv;
pub mod fetch;
pub mod health;
pub mod staging;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use outpost_bundle::{BundleError, Release, Verified};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use crate::admin::update::Checked;
pub use bootenv::{BootEnv, BootState, LastOutcome, Outcome, Slot};

/// Seconds a trial boot has to pass its health check unless the release file says.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(90);
/// Name of the boot-data partition.
pub const BOOT_PARTITION: &str = "outpost-boot";
/// Name of the slot file on the boot-data partition.
pub const BOOT_ENV: &str = "boot.env";
/// Largest text file read from /etc/outpost or /run (release, keys, boot state).
const MAX_SMALL_FILE: u64 = 64 * 1024;
/// Most trusted key files read.
const MAX_KEYS: usize = 64;

/// Every path the update code touches.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `/sys/class/block`: partitions by name (uevent `PARTNAME=`, `DEVNAME=`).
    pub sys_block: PathBuf,
    /// `/dev`: where `DEVNAME` lives.
    pub dev: PathBuf,
    /// `/proc/mounts`: is the boot-data partition mounted already?
    pub proc_mounts: PathBuf,
    /// `/proc/sys/kernel/osrelease`: the running kernel (`uname -r`).
    pub osrelease: PathBuf,
    /// `/run/outpost-boot`: what the initramfs booted.
    pub boot_state: PathBuf,
    /// `/run/outpost/bootdata`: where the boot-data partition is (or gets) mounted.
    pub bootdata: PathBuf,
    /// Mount the boot-data partition on [`Layout::bootdata`] when it is not; false: the
    /// directory is used as it is (tests, or a boot partition mounted by someone else).
    pub mount_bootdata: bool,
    /// `/run/outpost/update.lock`: serialises installs and health verdicts.
    pub lock: PathBuf,
    /// `/etc/outpost`: `release`, `update-keys/*.pub`, `update-ca.pem`.
    pub etc: PathBuf,
    /// `/usr/share/outpost/sbom.json`.
    pub sbom: PathBuf,
}

impl Layout {
    /// The paths of the appliance.
    pub fn system() -> Layout {
        Layout {
            sys_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
            proc_mounts: PathBuf::from("/proc/mounts"),
            osrelease: PathBuf::from("/proc/sys/kernel/osrelease"),
            boot_state: PathBuf::from("/run/outpost-boot"),
            bootdata: PathBuf::from("/run/outpost/bootdata"),
            mount_bootdata: true,
            lock: PathBuf::from("/run/outpost/update.lock"),
            etc: PathBuf::from("/etc/outpost"),
            sbom: PathBuf::from("/usr/share/outpost/sbom.json"),
        }
    }

    /// The same paths under `root`, with the boot data as a plain directory (never
    /// mounted): for tests.
    pub fn under(root: &Path) -> Layout {
        let sys = Layout::system();
        let re = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        Layout {
            sys_block: re(&sys.sys_block),
            dev: re(&sys.dev),
            proc_mounts: re(&sys.proc_mounts),
            osrelease: re(&sys.osrelease),
            boot_state: re(&sys.boot_state),
            bootdata: re(&sys.bootdata),
            mount_bootdata: false,
            lock: re(&sys.lock),
            etc: re(&sys.etc),
            sbom: re(&sys.sbom),
        }
    }

    /// `/etc/outpost/release`.
    pub fn release_file(&self) -> PathBuf {
        self.etc.join("release")
    }

    /// `/etc/outpost/update-keys`.
    pub fn keys_dir(&self) -> PathBuf {
        self.etc.join("update-keys")
    }

    /// `/etc/outpost/update-ca.pem`: extra roots for HTTPS downloads, if present.
    pub fn update_ca(&self) -> PathBuf {
        self.etc.join("update-ca.pem")
    }
}

/// Why an update command failed. Each refusal says why in words an admin can act on.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle was refused (bad signature, truncated, payload mismatch, ...).
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// The download failed.
    #[error("cannot download the bundle: {0}")]
    Fetch(#[from] fetch::FetchError),
    /// A file or device could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Not running from an Outpost image (no boot state from the initramfs).
    #[error("{0} is missing or unreadable: this system was not booted from an Outpost image")]
    NotAnImage(PathBuf),
    /// The running release file is missing or incomplete.
    #[error("{path}: {reason}")]
    ReleaseFile {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// No partition carries the name.
    #[error("no partition named {0}")]
    NoPartition(String),
    /// An external command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or status.
        detail: String,
    },
    /// Another install (or health verdict) holds the lock.
    #[error("another update is being installed right now")]
    Busy,
    /// The running slot has not passed its health check yet.
    #[error(
        "slot {0} is on trial (its health check has not passed yet): installing now would \
         overwrite the slot the box falls back to; wait for the commit or the rollback"
    )]
    OnTrial(Slot),
    /// The bundle is for another board.
    #[error("the bundle is for board {bundle}, this box is {running}")]
    OtherBoard {
        /// The manifest's profile.
        bundle: String,
        /// This box's profile.
        running: String,
    },
    /// The bundle is for another kernel.
    #[error(
        "the bundle is for kernel {bundle}, this box runs {running}: an update cannot change \
         the kernel, reflash the box with a full image"
    )]
    OtherKernel {
        /// The manifest's kernel release.
        bundle: String,
        /// The running kernel release.
        running: String,
    },
    /// The bundle is older than the running release.
    #[error(
        "downgrade refused: the bundle holds {bundle}, older than the running {running} \
         (--force installs it anyway)"
    )]
    Downgrade {
        /// The bundle's release.
        bundle: Release,
        /// The running release.
        running: Release,
    },
    /// The bundle holds the running release.
    #[error("{0} is already running (--force installs it again)")]
    AlreadyRunning(Release),
    /// The payload does not fit the slot.
    #[error("the root filesystem is {bytes} bytes, slot {slot} holds only {room}")]
    TooLarge {
        /// Payload size.
        bytes: u64,
        /// The slot.
        slot: Slot,
        /// The slot's size.
        room: u64,
    },
    /// The slot to be written is mounted (the boot state does not match the mounts).
    #[error("slot {slot} ({device}) is mounted: refusing to overwrite a filesystem in use")]
    SlotInUse {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
    },
    /// What was written does not read back.
    #[error(
        "slot {slot} does not read back what was written (SHA-256 {found}, expected {expected}): \
         the storage may be failing; nothing was armed, the box keeps booting slot {booted}"
    )]
    ReadBack {
        /// The slot written.
        slot: Slot,
        /// The slot running.
        booted: Slot,
        /// Hash read back.
        found: String,
        /// Hash of the signed payload.
        expected: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// Reads a small text file (bounded).
fn read_small(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?
        .take(MAX_SMALL_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The block device of the GPT partition `name` (uevent `PARTNAME=`).
pub fn find_partition(layout: &Layout, name: &str) -> Result<PathBuf, UpdateError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&layout.sys_block)
        .map_err(io_err(format!("{}", layout.sys_block.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for dir in entries {
        let Ok(text) = read_small(&dir.join("uevent")) else {
            continue;
        };
        let mut part = None;
        let mut dev = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("PARTNAME=") {
                part = Some(v);
            } else if let Some(v) = line.strip_prefix("DEVNAME=") {
                dev = Some(v);
            }
        }
        if let (Some(p), Some(d)) = (part, dev) {
            if p == name && !d.is_empty() && !d.contains("..") {
                return Ok(layout.dev.join(d));
            }
        }
    }
    Err(UpdateError::NoPartition(name.to_owned()))
}

/// What the initramfs booted (`/run/outpost-boot`).
pub fn boot_state(layout: &Layout) -> Result<BootState, UpdateError> {
    read_small(&layout.boot_state)
        .ok()
        .and_then(|t| BootState::parse(&t))
        .ok_or_else(|| UpdateError::NotAnImage(layout.boot_state.clone()))
}

/// The running firmware, from `/etc/outpost/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Running {
    /// Version and build.
    pub release: Release,
    /// Board profile.
    pub profile: String,
    /// Kernel release the image was built for.
    pub kernel: Option<String>,
    /// Seconds a trial has for its health check.
    pub health_timeout: Option<u64>,
}

/// Reads `/etc/outpost/release`.
pub fn running(layout: &Layout) -> Result<Running, UpdateError> {
    let path = layout.release_file();
    let text = read_small(&path).map_err(io_err(path.display().to_string()))?;
    let release = Release::from_release_file(&text).ok_or(UpdateError::ReleaseFile {
        path: path.clone(),
        reason: "no version= line",
    })?;
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Ok(Running {
        release,
        profile: value("profile").ok_or(UpdateError::ReleaseFile {
            path: path.clone(),
            reason: "no profile= line",
        })?,
        kernel: value("kernel"),
        health_timeout: value("health_timeout").and_then(|v| v.parse().ok()),
    })
}

/// The running kernel release (`uname -r`).
pub fn running_kernel(layout: &Layout) -> Result<String, UpdateError> {
    Ok(read_small(&layout.osrelease)
        .map_err(io_err(layout.osrelease.display().to_string()))?
        .trim()
        .to_owned())
}

/// A trusted update key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Its id ([`outpost_bundle::key_id`]).
    pub id: String,
    /// The key.
    pub key: VerifyingKey,
}

/// The trusted keys (`/etc/outpost/update-keys/*.pub`, sorted by file name) and the
/// problems of files that were skipped.
pub fn trusted_keys(layout: &Layout) -> (Vec<TrustedKey>, Vec<String>) {
    let dir = layout.keys_dir();
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect(),
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            Vec::new()
        }
    };
    files.sort();
    let mut keys = Vec::new();
    for file in files.into_iter().take(MAX_KEYS) {
        match read_small(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| outpost_bundle::parse_public_key(&t).map_err(|e| e.to_string()))
        {
            Ok(key) => keys.push(TrustedKey {
                id: outpost_bundle::key_id(&key),
                key,
            }),
            Err(e) => problems.push(format!("{}: {e}", file.display())),
        }
    }
    (keys, problems)
}

/// Holds `/run/outpost/update.lock` while alive.
#[derive(Debug)]
pub struct UpdateLock {
    _file: File,
}

/// Takes the update lock: `wait` blocks until it is free, else [`UpdateError::Busy`].
pub fn lock(layout: &Layout, wait: bool) -> Result<UpdateLock, UpdateError> {
    if let Some(dir) = layout.lock.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir.display().to_string()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&layout.lock)
        .map_err(io_err(layout.lock.display().to_string()))?;
    if wait {
        file.lock()
            .map_err(io_err(layout.lock.display().to_string()))?;
    } else {
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(UpdateError::Busy),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err(layout.lock.display().to_string())(e))
            }
        }
    }
    Ok(UpdateLock { _file: file })
}

fn run(command: &mut Command) -> Result<(), UpdateError> {
    let shown = format!("{command:?}").replace('"', "");
    let out = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| UpdateError::Command {
            command: shown.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(UpdateError::Command {
        command: shown,
        detail: if err.trim().is_empty() {
            out.status.to_string()
        } else {
            err.trim().chars().take(400).collect()
        },
    })
}

/// The boot-data partition, mounted for as long as this lives (unmounted on drop if it was
/// mounted here).
#[derive(Debug)]
pub struct BootData {
    dir: PathBuf,
    mounted_here: bool,
}

impl BootData {
    /// Makes boot.env reachable: mounts the partition unless the layout says not to or it
    /// is mounted already.
    pub fn open(layout: &Layout) -> Result<BootData, UpdateError> {
        let dir = layout.bootdata.clone();
        if !layout.mount_bootdata {
            return Ok(BootData {
                dir,
                mounted_here: false,
            });
        }
        let mounts = read_small(&layout.proc_mounts).unwrap_or_default();
        let target = dir.to_string_lossy();
        if mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&*target))
        {
            return Ok(BootData {
                dir,
                mounted_here: false,
            });
        }
        let dev = find_partition(layout, BOOT_PARTITION)?;
        std::fs::create_dir_all(&dir).map_err(io_err(dir.display().to_string()))?;
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "noatime"])
            .arg(&dev)
            .arg(&dir))?;
        Ok(BootData {
            dir,
            mounted_here: true,
        })
    }

    /// The path of boot.env.
    pub fn env_path(&self) -> PathBuf {
        self.dir.join(BOOT_ENV)
    }

    /// Reads boot.env (missing: empty).
    pub fn read(&self) -> Result<BootEnv, UpdateError> {
        match read_small(&self.env_path()) {
            Ok(text) => Ok(BootEnv::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BootEnv::default()),
            Err(e) => Err(io_err(self.env_path().display().to_string())(e)),
        }
    }

    /// Replaces boot.env atomically: boot.env.new, fsync, rename, fsync the directory.
    pub fn write(&self, env: &BootEnv) -> Result<(), UpdateError> {
        let path = self.env_path();
        let tmp = self.dir.join(format!("{BOOT_ENV}.new"));
        let what = || format!("writing {}", path.display());
        // A leftover of an interrupted write may be another user's (root's, from the
        // health check or the initramfs, when the admin installs over SSH): replace it
        // rather than open it.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(what())(e)),
            _ => {}
        }
        let mut f = File::create(&tmp).map_err(io_err(what()))?;
        f.write_all(env.render().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err(what()))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err(what()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(what()))?;
        nix::unistd::sync();
        Ok(())
    }

    /// Reads boot.env, lets `edit` change it, writes it back if it changed.
    pub fn update(&self, edit: impl FnOnce(&mut BootEnv)) -> Result<BootEnv, UpdateError> {
        let old = self.read()?;
        let mut env = old.clone();
        edit(&mut env);
        if env != old {
            self.write(&env)?;
        }
        Ok(env)
    }
}

impl Drop for BootData {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = run(Command::new("umount").arg(&self.dir));
        }
    }
}

/// Options of [`install`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallOptions {
    /// Install an older or the running release too.
    pub force: bool,
}

/// What [`install`] reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The bundle's header verified; writing begins.
    Verified {
        /// The slot being written.
        slot: Slot,
    },
    /// Writing: percent done (reported at every 10 %).
    Writing {
        /// The slot.
        slot: Slot,
        /// 0..=100.
        percent: u8,
    },
    /// Reading the slot back.
    Verifying {
        /// The slot.
        slot: Slot,
    },
}

/// A successful install.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// The slot written and armed.
    pub slot: Slot,
    /// The slot running now (the fallback).
    pub booted: Slot,
    /// The release installed.
    pub release: Release,
    /// The key that signed it.
    pub key_id: String,
    /// Bytes written.
    pub bytes: u64,
    /// A downgrade or reinstall allowed by `--force`.
    pub forced: bool,
}

/// Checks a verified manifest against the running firmware. `Ok(true)`: allowed only
/// because of `--force`.
fn check_manifest(
    v: &Verified,
    running: &Running,
    kernel: &str,
    opts: InstallOptions,
) -> Result<bool, UpdateError> {
    let m = &v.manifest;
    if m.profile != running.profile {
        return Err(UpdateError::OtherBoard {
            bundle: m.profile.clone(),
            running: running.profile.clone(),
        });
    }
    if m.kernel != kernel {
        return Err(UpdateError::OtherKernel {
            bundle: m.kernel.clone(),
            running: kernel.to_owned(),
        });
    }
    match m.release.cmp(&running.release) {
        std::cmp::Ordering::Greater => Ok(false),
        _ if opts.force => Ok(true),
        std::cmp::Ordering::Equal => Err(UpdateError::AlreadyRunning(m.release.clone())),
        std::cmp::Ordering::Less => Err(UpdateError::Downgrade {
            bundle: m.release.clone(),
            running: running.release.clone(),
        }),
    }
}

/// Reads a bundle's header from `bundle` and checks it as [`install`] does before writing
/// anything: signed by a trusted key, for this board and kernel, newer than the running
/// release unless forced. Afterwards `bundle` stands at the payload. The one check both the
/// installer and the daemon's staging ([`staging`]) run.
fn verify_header(
    layout: &Layout,
    bundle: &mut dyn Read,
    opts: InstallOptions,
) -> Result<(Verified, Running, bool), UpdateError> {
    let running = running(layout)?;
    let kernel = running_kernel(layout)?;
    let (keys, _) = trusted_keys(layout);
    let keys: Vec<VerifyingKey> = keys.into_iter().map(|k| k.key).collect();
    let verified = outpost_bundle::read_header(&mut &mut *bundle, &keys)?;
    let forced = check_manifest(&verified, &running, &kernel, opts)?;
    Ok((verified, running, forced))
}

/// Checks a whole bundle without installing it: the header as [`install`] checks it, then
/// the payload against the signed length and SHA-256 (read to the end, nothing written).
/// What the daemon runs on an uploaded bundle before it asks the installer for it; the
/// installer checks again itself.
pub fn check_bundle(
    layout: &Layout,
    bundle: &mut dyn Read,
    opts: InstallOptions,
) -> Result<Checked, UpdateError> {
    let (verified, _, forced) = verify_header(layout, bundle, opts)?;
    outpost_bundle::copy_payload(
        &mut &mut *bundle,
        &verified.manifest,
        &mut io::sink(),
        |_| {},
    )?;
    Ok(Checked {
        release: verified.manifest.release.clone(),
        key_id: verified.key_id,
        bytes: verified.manifest.rootfs.bytes,
        forced,
    })
}

/// Drops the page cache of `file` so that a read-back comes from the device.
fn drop_cache(file: &File) {
    // Best effort: a read-back from the cache still proves the written data is intact.
    let _ = nix::fcntl::posix_fadvise(
        file.as_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// SHA-256 of the first `bytes` bytes of `path`, read from the device.
fn read_back(path: &Path, bytes: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    drop_cache(&f);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the slot ends early",
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Installs a bundle read from `bundle` into the inactive slot and arms one trial boot of
/// it. Nothing that decides what boots changes before the slot was written, synced and read
/// back; a refusal or failure leaves boot.env as it was (except that a `try=` armed for the
/// same slot by an earlier install is disarmed before that slot is overwritten).
pub fn install(
    layout: &Layout,
    bundle: &mut dyn Read,
    opts: InstallOptions,
    now_secs: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<Installed, UpdateError> {
    let _lock = lock(layout, false)?;
    let state = boot_state(layout)?;
    let slot = state.booted.other();
    let (verified, running, forced) = verify_header(layout, bundle, opts)?;
    let manifest = &verified.manifest;

    let device = find_partition(layout, slot.partition())?;
    let mounts = read_small(&layout.proc_mounts).unwrap_or_default();
    let dev_text = device.to_string_lossy();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().next() == Some(&*dev_text))
    {
        return Err(UpdateError::SlotInUse {
            slot,
            device: dev_text.into_owned(),
        });
    }
    let mut out = OpenOptions::new()
        .write(true)
        .open(&device)
        .map_err(io_err(format!(
            "opening slot {slot} ({})",
            device.display()
        )))?;
    let room = out
        .seek(SeekFrom::End(0))
        .and_then(|n| out.seek(SeekFrom::Start(0)).map(|_| n))
        .map_err(io_err(format!("sizing slot {slot} ({})", device.display())))?;
    let bytes = manifest.rootfs.bytes;
    if bytes > room {
        return Err(UpdateError::TooLarge { bytes, slot, room });
    }

    let boot = BootData::open(layout)?;
    let env = boot.read()?;
    if env.tried() == Some(state.booted) {
        return Err(UpdateError::OnTrial(state.booted));
    }
    if env.try_slot() == Some(slot) {
        // An earlier install armed this slot: it must not boot half-written.
        boot.update(|e| {
            e.remove("try");
        })?;
    }

    progress(Progress::Verified { slot });
    let mut reported = 0u8;
    let what = format!("writing slot {slot} ({})", device.display());
    outpost_bundle::copy_payload(&mut &mut *bundle, manifest, &mut out, |done| {
        let percent = u8::try_from(done.saturating_mul(100) / bytes.max(1)).unwrap_or(100);
        if percent >= reported.saturating_add(10) || (percent == 100 && reported != 100) {
            reported = percent - percent % 10;
            progress(Progress::Writing {
                slot,
                percent: reported,
            });
        }
    })
    .map_err(|e| match e {
        BundleError::Io(source) => UpdateError::Io {
            what: what.clone(),
            source,
        },
        other => UpdateError::Bundle(other),
    })?;
    out.sync_all().map_err(io_err(what))?;
    drop(out);

    progress(Progress::Verifying { slot });
    let found = read_back(&device, bytes).map_err(io_err(format!(
        "reading slot {slot} back ({})",
        device.display()
    )))?;
    if found != manifest.rootfs.sha256 {
        return Err(UpdateError::ReadBack {
            slot,
            booted: state.booted,
            found,
            expected: manifest.rootfs.sha256.clone(),
        });
    }

    let release = manifest.release.clone();
    boot.update(|e| {
        e.set("try", slot.as_str());
        e.set_release(slot, &release);
        if e.release(state.booted).is_none() {
            e.set_release(state.booted, &running.release);
        }
        e.set_last(&LastOutcome {
            outcome: Outcome::Installed,
            slot,
            release: release.clone(),
            time: now_secs,
            reason: String::new(),
        });
    })?;
    Ok(Installed {
        slot,
        booted: state.booted,
        release,
        key_id: verified.key_id,
        bytes,
        forced,
    })
}

/// One slot in [`UpdateStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// The slot.
    pub slot: Slot,
    /// What it holds, if known.
    pub release: Option<Release>,
    /// Its block device, if found.
    pub device: Option<String>,
    /// It is running now.
    pub running: bool,
    /// It is the committed slot (what boots without a trial).
    pub committed: bool,
}

/// `outpostctl update status`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    /// The slot running now.
    pub booted: Slot,
    /// The running release.
    pub running: Option<Release>,
    /// The board profile.
    pub profile: Option<String>,
    /// The running slot is on trial (its health check has not committed it yet).
    pub trial: bool,
    /// The slot armed for the next boot's trial (`try=`).
    pub armed: Option<Slot>,
    /// Both slots.
    pub slots: Vec<SlotStatus>,
    /// The latest update's outcome.
    pub last: Option<LastOutcome>,
    /// Ids of the trusted update keys.
    pub keys: Vec<String>,
    /// Key files that were skipped, and why.
    pub key_problems: Vec<String>,
    /// boot.env was read from the boot-time copy (`/run/outpost-boot`), not the partition
    /// (not root, or an install holds the lock): it may be older.
    pub from_boot_copy: bool,
}

/// The update state: what runs, what each slot holds, the last outcome, the trusted keys.
pub fn status(layout: &Layout) -> Result<UpdateStatus, UpdateError> {
    let state = boot_state(layout)?;
    let running = running(layout).ok();
    // The live boot.env when it can be read now (an install holds the lock while it has
    // the partition mounted), else the boot-time copy.
    let live = lock(layout, false)
        .ok()
        .and_then(|l| BootData::open(layout).ok().map(|b| (l, b)))
        .and_then(|(_l, b)| b.read().ok());
    let from_boot_copy = live.is_none();
    let env = live.unwrap_or_else(|| state.env.clone());
    let committed = env.slot().unwrap_or(Slot::A);
    let trial = if from_boot_copy {
        state.trial
    } else {
        env.tried() == Some(state.booted)
    };
    let slots = [Slot::A, Slot::B]
        .into_iter()
        .map(|slot| SlotStatus {
            slot,
            release: env.release(slot).or_else(|| {
                (slot == state.booted)
                    .then(|| running.as_ref().map(|r| r.release.clone()))
                    .flatten()
            }),
            device: find_partition(layout, slot.partition())
                .ok()
                .map(|p| p.display().to_string()),
            running: slot == state.booted,
            committed: slot == committed,
        })
        .collect();
    let (keys, key_problems) = trusted_keys(layout);
    Ok(UpdateStatus {
        booted: state.booted,
        running: running.as_ref().map(|r| r.release.clone()),
        profile: running.map(|r| r.profile),
        trial,
        armed: env.try_slot(),
        slots,
        last: env.last(),
        keys: keys.into_iter().map(|k| k.id).collect(),
        key_problems,
        from_boot_copy,
    })
}

/// The health check's timeout: the argument, else `health_timeout=` of the release file,
/// else [`DEFAULT_HEALTH_TIMEOUT`].
pub fn health_timeout(layout: &Layout, arg: Option<u64>) -> Duration {
    arg.or_else(|| running(layout).ok().and_then(|r| r.health_timeout))
        .map_or(DEFAULT_HEALTH_TIMEOUT, Duration::from_secs)
}

/// Is the running boot a trial still waiting for its verdict? `None`: no (nothing to do).
pub fn pending_trial(layout: &Layout) -> Result<Option<Slot>, UpdateError> {
    let state = boot_state(layout)?;
    Ok(state.trial.then_some(state.booted))
}

/// What [`record_health`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Not a trial boot, or the verdict was recorded already: nothing changed.
    NothingToDo,
    /// The trial slot is now the committed one.
    Committed {
        /// The slot.
        slot: Slot,
    },
    /// The trial failed: the committed slot boots next (the caller reboots).
    RolledBack {
        /// The failed slot.
        slot: Slot,
        /// The slot the box returns to.
        back_to: Slot,
        /// Why.
        reason: String,
    },
}

/// Records the health check's result in boot.env: `Ok` commits the booted trial slot
/// (`slot=`), `Err(reason)` records the rollback (`slot=` is left alone, so the committed
/// slot boots next). Both drop `tried=`.
pub fn record_health(
    layout: &Layout,
    result: Result<(), String>,
    now_secs: u64,
) -> Result<Verdict, UpdateError> {
    let _lock = lock(layout, true)?;
    let state = boot_state(layout)?;
    if !state.trial {
        return Ok(Verdict::NothingToDo);
    }
    let slot = state.booted;
    let boot = BootData::open(layout)?;
    let env = boot.read()?;
    if env.tried() != Some(slot) {
        return Ok(Verdict::NothingToDo);
    }
    let release = running(layout)
        .map(|r| r.release)
        .ok()
        .or_else(|| env.release(slot))
        .unwrap_or(Release {
            version: "unknown".to_owned(),
            build: 0,
        });
    let back_to = env.slot().unwrap_or(slot.other());
    let verdict = match &result {
        Ok(()) => Verdict::Committed { slot },
        Err(reason) => Verdict::RolledBack {
            slot,
            back_to,
            reason: reason.clone(),
        },
    };
    boot.update(|e| {
        e.remove("tried");
        e.set_release(slot, &release);
        let (outcome, reason) = match &result {
            Ok(()) => {
                e.set("slot", slot.as_str());
                (Outcome::Committed, String::new())
            }
            Err(reason) => (Outcome::RolledBack, reason.clone()),
        };
        e.set_last(&LastOutcome {
            outcome,
            slot,
            release: release.clone(),
            time: now_secs,
            reason,
        });
    })?;
    Ok(verdict)
}

/// Counts of the SBOM (`outpostctl sbom --summary`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SbomSummary {
    /// Rust crates (`pkg:cargo/`).
    pub crates: usize,
    /// Debian packages (`pkg:deb/`).
    pub debian_packages: usize,
    /// Other components.
    pub other: usize,
    /// Components per licence expression (`(none)` without one), most used first.
    pub licences: Vec<(String, usize)>,
}

/// Summarises a CycloneDX document.
pub fn sbom_summary(doc: &serde_json::Value) -> SbomSummary {
    let mut s = SbomSummary::default();
    let mut licences: std::collections::BTreeMap<String, usize> = Default::default();
    let components = doc["components"].as_array().map_or(&[][..], |v| &v[..]);
    for c in components {
        let purl = c["purl"].as_str().unwrap_or_default();
        if purl.starts_with("pkg:cargo/") {
            s.crates += 1;
        } else if purl.starts_with("pkg:deb/") {
            s.debian_packages += 1;
        } else {
            s.other += 1;
        }
        let names: Vec<String> = c["licenses"]
            .as_array()
            .map_or(&[][..], |v| &v[..])
            .iter()
            .filter_map(|l| {
                l["expression"]
                    .as_str()
                    .or_else(|| l["license"]["id"].as_str())
                    .or_else(|| l["license"]["name"].as_str())
                    .map(str::to_owned)
            })
            .collect();
        let name = if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(" AND ")
        };
        *licences.entry(name).or_default() += 1;
    }
    s.licences = licences.into_iter().collect();
    s.licences
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
pub(crate) mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use outpost_bundle::{Manifest, FORMAT};

    const SLOT_BYTES: usize = 256 * 1024;
    const KERNEL: &str = "6.1.0-28-arm64";

    /// A fake box under a temporary directory: slots are files, boot data a directory.
    pub(crate) struct FakeBox {
        _dir: tempfile::TempDir,
        pub(crate) layout: Layout,
        pub(crate) key: SigningKey,
    }

    impl FakeBox {
        pub(crate) fn new(booted: Slot, trial: bool, env: &str) -> FakeBox {
            let dir = tempfile::tempdir().unwrap();
            let layout = Layout::under(dir.path());
            for (dev, part) in [
                ("vda1", "outpost-boot"),
                ("vda2", "outpost-root-a"),
                ("vda3", "outpost-root-b"),
            ] {
                let sys = layout.sys_block.join(dev);
                std::fs::create_dir_all(&sys).unwrap();
                std::fs::write(
                    sys.join("uevent"),
                    format!(
                        "MAJOR=254\nMINOR=1\nDEVNAME={dev}\nDEVTYPE=partition\nPARTNAME={part}\n"
                    ),
                )
                .unwrap();
            }
            std::fs::create_dir_all(layout.sys_block.join("vda")).unwrap();
            std::fs::write(
                layout.sys_block.join("vda/uevent"),
                "DEVNAME=vda\nDEVTYPE=disk\n",
            )
            .unwrap();
            std::fs::create_dir_all(&layout.dev).unwrap();
            for dev in ["vda2", "vda3"] {
                std::fs::write(layout.dev.join(dev), vec![0xeeu8; SLOT_BYTES]).unwrap();
            }
            std::fs::create_dir_all(&layout.bootdata).unwrap();
            std::fs::write(layout.bootdata.join(BOOT_ENV), env).unwrap();
            std::fs::create_dir_all(layout.osrelease.parent().unwrap()).unwrap();
            std::fs::write(&layout.osrelease, format!("{KERNEL}\n")).unwrap();
            std::fs::create_dir_all(layout.keys_dir()).unwrap();
            std::fs::write(
                layout.release_file(),
                format!(
                    "version=0.1.0\nbuild=1700000000\nprofile=qemu-virt\nkernel={KERNEL}\n\
                     source_date_epoch=1700000000\nhealth_timeout=60\n"
                ),
            )
            .unwrap();
            let key = outpost_bundle::generate_key();
            std::fs::write(
                layout.keys_dir().join("release.pub"),
                outpost_bundle::public_key_line(&key.verifying_key(), "test"),
            )
            .unwrap();
            std::fs::create_dir_all(layout.boot_state.parent().unwrap()).unwrap();
            std::fs::write(
                &layout.boot_state,
                format!(
                    "{env}booted={booted}\ntrial={}\n",
                    if trial { "1" } else { "0" }
                ),
            )
            .unwrap();
            FakeBox {
                _dir: dir,
                layout,
                key,
            }
        }

        pub(crate) fn env(&self) -> String {
            std::fs::read_to_string(self.layout.bootdata.join(BOOT_ENV)).unwrap()
        }

        pub(crate) fn slot(&self, dev: &str) -> Vec<u8> {
            std::fs::read(self.layout.dev.join(dev)).unwrap()
        }

        fn install(&self, bundle: &[u8], force: bool) -> Result<Installed, UpdateError> {
            install(
                &self.layout,
                &mut &bundle[..],
                InstallOptions { force },
                1_750_000_000,
                &mut |_| {},
            )
        }
    }

    pub(crate) fn payload() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8).collect()
    }

    pub(crate) fn bundle_with(
        key: &SigningKey,
        payload: &[u8],
        edit: impl FnOnce(&mut Manifest),
    ) -> Vec<u8> {
        let mut m = Manifest {
            format: FORMAT,
            name: "outpost".to_owned(),
            release: Release {
                version: "0.2.0".to_owned(),
                build: 1_700_000_100,
            },
            profile: "qemu-virt".to_owned(),
            kernel: KERNEL.to_owned(),
            store_schema: 1,
            rootfs: outpost_bundle::payload_of(&mut &payload[..]).unwrap(),
            sbom_sha256: String::new(),
        };
        edit(&mut m);
        let mut out = Vec::new();
        outpost_bundle::write_bundle(&mut out, &m, key, &mut &payload[..]).unwrap();
        out
    }

    #[test]
    fn install_writes_the_inactive_slot_and_arms_one_trial() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let payload = payload();
        let bundle = bundle_with(&b.key, &payload, |_| {});
        let mut seen = Vec::new();
        let done = install(
            &b.layout,
            &mut &bundle[..],
            InstallOptions::default(),
            1_750_000_000,
            &mut |p| seen.push(p),
        )
        .unwrap();
        assert_eq!(
            (done.slot, done.booted, done.forced),
            (Slot::B, Slot::A, false)
        );
        assert_eq!(done.key_id, outpost_bundle::key_id(&b.key.verifying_key()));
        let slot_b = b.slot("vda3");
        assert_eq!(&slot_b[..payload.len()], &payload[..]);
        assert_eq!(slot_b.len(), SLOT_BYTES, "the device is not truncated");
        assert!(
            b.slot("vda2").iter().all(|&x| x == 0xee),
            "slot a untouched"
        );
        assert_eq!(
            b.env(),
            "slot=a\ntry=b\nrelease_b=0.2.0 1700000100\nrelease_a=0.1.0 1700000000\n\
             last=installed b 0.2.0 1700000100 1750000000\n"
        );
        assert_eq!(seen.first(), Some(&Progress::Verified { slot: Slot::B }));
        assert_eq!(seen.last(), Some(&Progress::Verifying { slot: Slot::B }));
        let percents: Vec<u8> = seen
            .iter()
            .filter_map(|p| match p {
                Progress::Writing { percent, .. } => Some(*percent),
                _ => None,
            })
            .collect();
        assert_eq!(percents.last(), Some(&100));
        assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
        assert!(!b.layout.bootdata.join("boot.env.new").exists());

        // Booted from b, an update goes to a.
        let b = FakeBox::new(Slot::B, false, "slot=b\nrelease_b=0.1.0 1700000000\n");
        let bundle = bundle_with(&b.key, &payload, |_| {});
        assert_eq!(b.install(&bundle, false).unwrap().slot, Slot::A);
        assert_eq!(&b.slot("vda2")[..payload.len()], &payload[..]);
    }

    #[test]
    fn refusals_name_the_reason_and_change_nothing() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let p = payload();
        let other_key = outpost_bundle::generate_key();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "signature",
                bundle_with(&other_key, &p, |_| {}),
                "bad signature",
            ),
            (
                "board",
                bundle_with(&b.key, &p, |m| m.profile = "rpi4".to_owned()),
                "for board rpi4",
            ),
            (
                "kernel",
                bundle_with(&b.key, &p, |m| m.kernel = "6.12.0-1-arm64".to_owned()),
                "for kernel 6.12.0-1-arm64",
            ),
            (
                "downgrade",
                bundle_with(&b.key, &p, |m| m.release.version = "0.0.9".to_owned()),
                "older than the running",
            ),
            (
                "equal",
                bundle_with(&b.key, &p, |m| {
                    m.release = Release {
                        version: "0.1.0".to_owned(),
                        build: 1_700_000_000,
                    }
                }),
                "already running",
            ),
            (
                "too large",
                {
                    let big = vec![1u8; SLOT_BYTES + 1];
                    bundle_with(&b.key, &big, |_| {})
                },
                "holds only",
            ),
            (
                "not a bundle",
                b"hello".to_vec(),
                "not an Outpost update bundle",
            ),
        ];
        for (name, bundle, want) in cases {
            let err = b.install(&bundle, false).unwrap_err();
            assert!(err.to_string().contains(want), "{name}: {err}");
            assert_eq!(b.env(), "slot=a\n", "{name}");
            assert!(b.slot("vda3").iter().all(|&x| x == 0xee), "{name}");
        }
    }

    #[test]
    fn force_installs_a_downgrade_or_the_same_release() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let p = payload();
        for version in ["0.0.9", "0.1.0"] {
            let bundle = bundle_with(&b.key, &p, |m| {
                m.release = Release {
                    version: version.to_owned(),
                    build: 1_700_000_000,
                }
            });
            let done = b.install(&bundle, true).unwrap();
            assert!(done.forced);
            assert!(b.env().contains("try=b\n"));
            assert!(b
                .env()
                .contains(&format!("release_b={version} 1700000000\n")));
        }
        // Other checks still hold with --force.
        let bundle = bundle_with(&b.key, &p, |m| m.profile = "rpi4".to_owned());
        assert!(matches!(
            b.install(&bundle, true),
            Err(UpdateError::OtherBoard { .. })
        ));
    }

    #[test]
    fn a_truncated_or_changed_payload_leaves_boot_env_unchanged() {
        let env = "slot=a\nrelease_a=0.1.0 1700000000\nlast=committed a 0.1.0 1700000000 1\n";
        let b = FakeBox::new(Slot::A, false, env);
        let good = bundle_with(&b.key, &payload(), |_| {});
        let mut short = good.clone();
        short.truncate(good.len() - 1000);
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        for (name, bundle) in [("short", short), ("flipped", flipped)] {
            let err = b.install(&bundle, false).unwrap_err();
            assert!(
                err.to_string()
                    .contains("does not match the signed manifest"),
                "{name}: {err}"
            );
            assert_eq!(b.env(), env, "{name}");
        }
    }

    #[test]
    fn a_new_install_disarms_an_earlier_one_before_writing() {
        let b = FakeBox::new(Slot::A, false, "slot=a\ntry=b\n");
        let mut short = bundle_with(&b.key, &payload(), |_| {});
        short.truncate(short.len() - 10);
        assert!(b.install(&short, false).is_err());
        assert_eq!(b.env(), "slot=a\n", "a half-written slot is never armed");
    }

    #[test]
    fn no_install_while_the_running_slot_is_on_trial() {
        let b = FakeBox::new(Slot::B, true, "slot=a\ntried=b\n");
        let bundle = bundle_with(&b.key, &payload(), |m| {
            m.release.version = "0.3.0".to_owned()
        });
        let err = b.install(&bundle, false).unwrap_err();
        assert!(matches!(err, UpdateError::OnTrial(Slot::B)), "{err}");
        assert!(
            b.slot("vda2").iter().all(|&x| x == 0xee),
            "the fallback is intact"
        );
    }

    #[test]
    fn a_mounted_slot_is_never_written() {
        // The boot state says a runs, but b is the mounted root: trust the mounts.
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let mounts = format!(
            "{} / squashfs ro 0 0\n",
            b.layout.dev.join("vda3").display()
        );
        std::fs::create_dir_all(b.layout.proc_mounts.parent().unwrap()).unwrap();
        std::fs::write(&b.layout.proc_mounts, mounts).unwrap();
        let bundle = bundle_with(&b.key, &payload(), |_| {});
        let err = b.install(&bundle, false).unwrap_err();
        assert!(
            matches!(err, UpdateError::SlotInUse { slot: Slot::B, .. }),
            "{err}"
        );
        assert!(b.slot("vda3").iter().all(|&x| x == 0xee));
    }

    #[test]
    fn a_second_install_is_refused_while_one_runs() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let _held = lock(&b.layout, false).unwrap();
        let bundle = bundle_with(&b.key, &payload(), |_| {});
        assert!(matches!(b.install(&bundle, false), Err(UpdateError::Busy)));
    }

    #[test]
    fn health_pass_commits_the_trial_slot() {
        let b = FakeBox::new(
            Slot::B,
            true,
            "slot=a\ntried=b\nrelease_a=0.0.9 1\nrelease_b=0.1.0 1700000000\nlast=installed b 0.1.0 1700000000 5\n",
        );
        let v = record_health(&b.layout, Ok(()), 1_750_000_000).unwrap();
        assert_eq!(v, Verdict::Committed { slot: Slot::B });
        assert_eq!(
            b.env(),
            "slot=b\nrelease_a=0.0.9 1\nrelease_b=0.1.0 1700000000\n\
             last=committed b 0.1.0 1700000000 1750000000\n"
        );
        // A second verdict in the same boot changes nothing.
        let v = record_health(&b.layout, Err("late".to_owned()), 1_750_000_001).unwrap();
        assert_eq!(v, Verdict::NothingToDo);
        assert!(b.env().starts_with("slot=b\n"));
    }

    #[test]
    fn health_failure_records_the_rollback_and_keeps_the_committed_slot() {
        let b = FakeBox::new(
            Slot::B,
            true,
            "slot=a\ntried=b\nrelease_b=0.1.0 1700000000\n",
        );
        let why = "outpostd did not answer on its admin socket within 60 s".to_owned();
        let v = record_health(&b.layout, Err(why.clone()), 1_750_000_000).unwrap();
        assert_eq!(
            v,
            Verdict::RolledBack {
                slot: Slot::B,
                back_to: Slot::A,
                reason: why.clone()
            }
        );
        let env = BootEnv::parse(&b.env());
        assert_eq!(
            (env.slot(), env.tried(), env.try_slot()),
            (Some(Slot::A), None, None)
        );
        let last = env.last().unwrap();
        assert_eq!(
            (last.outcome, last.slot, last.reason.as_str()),
            (Outcome::RolledBack, Slot::B, why.as_str())
        );
    }

    #[test]
    fn not_a_trial_means_nothing_to_do() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        assert_eq!(pending_trial(&b.layout).unwrap(), None);
        assert_eq!(
            record_health(&b.layout, Ok(()), 1).unwrap(),
            Verdict::NothingToDo
        );
        assert_eq!(b.env(), "slot=a\n");
        assert_eq!(health_timeout(&b.layout, None), Duration::from_secs(60));
        assert_eq!(health_timeout(&b.layout, Some(5)), Duration::from_secs(5));
        std::fs::remove_file(b.layout.release_file()).unwrap();
        assert_eq!(health_timeout(&b.layout, None), DEFAULT_HEALTH_TIMEOUT);
    }

    #[test]
    fn status_reads_the_live_boot_env() {
        let b = FakeBox::new(Slot::A, false, "slot=a\n");
        let bundle = bundle_with(&b.key, &payload(), |_| {});
        b.install(&bundle, false).unwrap();
        let s = status(&b.layout).unwrap();
        assert!(!s.from_boot_copy && !s.trial);
        assert_eq!((s.booted, s.armed), (Slot::A, Some(Slot::B)));
        assert_eq!(s.slots[1].release.as_ref().unwrap().version, "0.2.0");
        assert!(s.slots[0].running && s.slots[0].committed);
        assert!(s.slots[1].device.as_deref().unwrap().ends_with("vda3"));
        assert_eq!(s.last.unwrap().outcome, Outcome::Installed);
        assert_eq!(s.keys, [outpost_bundle::key_id(&b.key.verifying_key())]);
        // While an install holds the lock, the boot-time copy is shown.
        let _held = lock(&b.layout, false).unwrap();
        let s = status(&b.layout).unwrap();
        assert!(s.from_boot_copy);
        assert_eq!(s.armed, None);
    }

    #[test]
    fn without_boot_state_it_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::under(dir.path());
        assert!(matches!(status(&layout), Err(UpdateError::NotAnImage(_))));
        assert!(matches!(
            install(
                &layout,
                &mut &b""[..],
                InstallOptions::default(),
                0,
                &mut |_| {}
            ),
            Err(UpdateError::NotAnImage(_))
        ));
    }

    #[test]
    fn sbom_summary_counts_crates_packages_and_licences() {
        let doc = serde_json::json!({"components": [
            {"purl": "pkg:cargo/a@1", "licenses": [{"expression": "MIT OR Apache-2.0"}]},
            {"purl": "pkg:cargo/b@1", "licenses": [{"expression": "MIT OR Apache-2.0"}]},
            {"purl": "pkg:cargo/c@1", "licenses": [{"license": {"id": "MIT"}}]},
            {"purl": "pkg:deb/debian/busybox-static@1:1.35.0-4?arch=arm64"},
        ]});
        let s = sbom_summary(&doc);
        assert_eq!((s.crates, s.debian_packages, s.other), (3, 1, 0));
        assert_eq!(
            s.licences,
            [
                ("MIT OR Apache-2.0".to_owned(), 2),
                ("(none)".to_owned(), 1),
                ("MIT".to_owned(), 1)
            ]
        );
    }
}
