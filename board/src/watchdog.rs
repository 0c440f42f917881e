//! The Linux hardware watchdog (`/dev/watchdog`).
//!
//! Opening the device arms it: if the daemon then stops petting it, the box reboots after the
//! timeout. [`Watchdog::close`] disarms it with the "magic close" (writing `V` before closing);
//! merely dropping a [`Watchdog`] closes the file *without* the magic byte, so the kernel keeps
//! the timer running and a crashed daemon leads to a reboot. That is deliberate.
//!
//! On open the timeout is set with `WDIOC_SETTIMEOUT`. A path that is not a character device
//! (a regular file or FIFO, as used by tests and the sim), or a device that answers that ioctl
//! with `ENOTTY` (not a watchdog, e.g. `/dev/null`) or `ENOSYS` (qemu-user, which does not
//! emulate it), is not a real watchdog: the [`Watchdog`] then works in
//! [`WatchdogKind::PlainFile`] mode, where each pet writes one byte. That decision is made only
//! at open time: a failing keepalive on a real device is an error.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc::c_int;

/// The watchdog ioctls of `linux/watchdog.h` (kept private: they are `unsafe fn`s).
mod ioctl {
    use nix::libc::c_int;

    nix::ioctl_read!(wdioc_keepalive, b'W', 5, c_int);
    nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, c_int);
    nix::ioctl_read!(wdioc_gettimeout, b'W', 7, c_int);
}
use ioctl::{wdioc_gettimeout, wdioc_keepalive, wdioc_settimeout};

/// Longest timeout accepted (one hour); hardware maxima are usually far lower.
pub const MAX_TIMEOUT_SECS: u32 = 3_600;

/// Errors of the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// The device could not be opened.
    #[error("cannot open watchdog {path}: {source}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The timeout is zero or larger than [`MAX_TIMEOUT_SECS`].
    #[error("watchdog timeout {0} s out of range (1..=3600)")]
    BadTimeout(u32),
    /// The device refused the timeout.
    #[error("watchdog {path} refused timeout {secs} s: {errno}")]
    SetTimeout {
        /// The device path.
        path: PathBuf,
        /// The timeout asked for.
        secs: u32,
        /// What the driver said.
        errno: Errno,
    },
    /// A keepalive failed.
    #[error("watchdog keepalive on {path} failed: {detail}")]
    Pet {
        /// The device path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Writing the magic close byte failed: the watchdog stays armed.
    #[error("watchdog magic close on {path} failed (it stays armed): {source}")]
    Close {
        /// The device path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// What the opened path turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogKind {
    /// A kernel watchdog device: petted with `WDIOC_KEEPALIVE`.
    Device,
    /// Not a watchdog (the timeout ioctl said `ENOTTY`): petted by writing one byte.
    PlainFile,
}

/// An open, armed watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    path: PathBuf,
    kind: WatchdogKind,
    timeout_secs: u32,
}

impl Watchdog {
    /// Opens (and so arms) the watchdog at `path` and sets its timeout.
    pub fn open(path: impl AsRef<Path>, timeout_secs: u32) -> Result<Self, WatchdogError> {
        let path = path.as_ref().to_path_buf();
        if timeout_secs == 0 || timeout_secs > MAX_TIMEOUT_SECS {
            return Err(WatchdogError::BadTimeout(timeout_secs));
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| WatchdogError::Open {
                path: path.clone(),
                source,
            })?;
        let mut watchdog = Self {
            file,
            path,
            kind: WatchdogKind::Device,
            timeout_secs,
        };
        let is_char_device = watchdog
            .file
            .metadata()
            .is_ok_and(|m| m.file_type().is_char_device());
        if !is_char_device {
            watchdog.kind = WatchdogKind::PlainFile;
            return Ok(watchdog);
        }
        let mut secs = c_int::try_from(timeout_secs).expect("at most 3600, fits in c_int");
        // SAFETY: the fd belongs to `watchdog.file`, open for the whole call; `secs` is a live
        // c_int that WDIOC_SETTIMEOUT reads and overwrites with the timeout actually set.
        match unsafe { wdioc_settimeout(watchdog.file.as_raw_fd(), &mut secs) } {
            Ok(_) => watchdog.timeout_secs = u32::try_from(secs).unwrap_or(timeout_secs),
            Err(Errno::ENOTTY | Errno::ENOSYS) => watchdog.kind = WatchdogKind::PlainFile,
            Err(Errno::EOPNOTSUPP) => {
                // A watchdog with a fixed timeout: report the one it has.
                let mut fixed: c_int = 0;
                // SAFETY: as above; WDIOC_GETTIMEOUT writes one c_int into `fixed`.
                if unsafe { wdioc_gettimeout(watchdog.file.as_raw_fd(), &mut fixed) }.is_ok() {
                    watchdog.timeout_secs = u32::try_from(fixed).unwrap_or(timeout_secs);
                }
            }
            Err(errno) => {
                // The device is armed by the open: disarm it before giving up, or the box
                // would reboot while the caller handles the error.
                let path = watchdog.path.clone();
                drop(watchdog.close());
                return Err(WatchdogError::SetTimeout {
                    path,
                    secs: timeout_secs,
                    errno,
                });
            }
        }
        Ok(watchdog)
    }

    /// Resets the countdown; call well within [`Watchdog::timeout_secs`] (e.g. every third of it).
    pub fn pet(&mut self) -> Result<(), WatchdogError> {
        match self.kind {
            WatchdogKind::Device => {
                let mut ignored: c_int = 0;
                // SAFETY: the fd belongs to `self.file`, open for the whole call;
                // WDIOC_KEEPALIVE writes at most one c_int into `ignored`.
                unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut ignored) }
                    .map(drop)
                    .map_err(|errno| WatchdogError::Pet {
                        path: self.path.clone(),
                        detail: errno.to_string(),
                    })
            }
            WatchdogKind::PlainFile => self.file.write_all(b".").map_err(|e| WatchdogError::Pet {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// Disarms the watchdog (magic close: writes `V`, then closes) for an orderly shutdown.
    pub fn close(mut self) -> Result<(), WatchdogError> {
        self.file
            .write_all(b"V")
            .and_then(|()| self.file.flush())
            .map_err(|source| WatchdogError::Close {
                path: self.path.clone(),
                source,
            })
    }

    /// Whether the path is a real watchdog device or a stand-in file.
    pub fn kind(&self) -> WatchdogKind {
        self.kind
    }

    /// The timeout in force, as reported by the driver.
    pub fn timeout_secs(&self) -> u32 {
        self.timeout_secs
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_is_petted_by_writing_and_closed_with_magic_v() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").expect("create");
        let mut wd = Watchdog::open(&path, 15).expect("open plain file");
        assert_eq!(wd.kind(), WatchdogKind::PlainFile);
        assert_eq!(wd.timeout_secs(), 15);
        wd.pet().expect("pet 1");
        wd.pet().expect("pet 2");
        assert_eq!(std::fs::read(&path).expect("read"), b"..");
        wd.close().expect("close");
        assert_eq!(std::fs::read(&path).expect("read"), b"..V");
    }

    #[test]
    fn drop_without_close_leaves_no_magic_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").expect("create");
        let mut wd = Watchdog::open(&path, 10).expect("open");
        wd.pet().expect("pet");
        drop(wd);
        assert_eq!(std::fs::read(&path).expect("read"), b".");
    }

    #[test]
    fn char_device_that_is_not_a_watchdog_is_a_plain_file() {
        let mut wd = Watchdog::open("/dev/null", 15).expect("open /dev/null");
        assert_eq!(wd.kind(), WatchdogKind::PlainFile);
        wd.pet().expect("pet");
        wd.close().expect("close");
    }

    #[test]
    fn missing_device_is_an_open_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Watchdog::open(dir.path().join("nope"), 15).expect_err("missing");
        assert!(matches!(err, WatchdogError::Open { .. }), "{err:?}");
    }

    #[test]
    fn timeout_out_of_range_is_rejected_before_opening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").expect("create");
        assert!(matches!(
            Watchdog::open(&path, 0),
            Err(WatchdogError::BadTimeout(0))
        ));
        assert!(matches!(
            Watchdog::open(&path, 86_400),
            Err(WatchdogError::BadTimeout(86_400))
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"");
    }
}
