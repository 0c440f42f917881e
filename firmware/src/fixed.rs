//! What the image fixes when it starts `outpostd` and the configuration can never change:
//! the programs the daemon runs (they run with its capabilities), the group whose members
//! may use the admin socket, and how dropbear is run.
//!
//! These come from `outpostd`'s command line or environment only (`image/files/run-outpostd`
//! sets them; the tests' harness may too), never from `config apply`: an SSH admin who could
//! point `nft` or `dropbear` at another binary would have the daemon run it. Configuration
//! files that still carry the old keys (`firewall.nft`, `ssh.dropbear`, `ssh.dropbearkey`,
//! `ssh.outpostctl`) are refused by `config apply` and ignored with a warning at start
//! (`crate::config::Config::fixed_keys`).
//!
//! The settings are process-wide and set once, before the daemon starts; [`get`] returns the
//! defaults when nothing was set (unit tests, `outpostctl`).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The settings of this process (see the module documentation).
#[derive(Debug, Clone)]
pub struct FixedSettings {
    /// The `nft` program: a name looked up in PATH, or a path.
    pub nft: String,
    /// The dropbear server binary (when the daemon supervises dropbear itself).
    pub dropbear: PathBuf,
    /// The dropbearkey binary that makes the SSH host key on first start.
    pub dropbearkey: PathBuf,
    /// The `outpostctl` the SSH forced command runs [default: the one beside outpostd, else
    /// `/usr/bin/outpostctl`].
    pub outpostctl: Option<PathBuf>,
    /// Members of this group may use the admin socket (besides root and the daemon's own
    /// user); the socket gets this group and mode 0660. None: mode 0600, root and the
    /// daemon's user only.
    pub admin_group: Option<String>,
    /// How dropbear runs.
    pub ssh: SshRunner,
    /// The daemon owns the system clock: its NTP client steps and slews it (the image,
    /// where it holds CAP_SYS_TIME). Otherwise it only watches and reports the offset (a
    /// workstation running the demo or the tests keeps its own time service).
    pub set_clock: bool,
    /// Where the image's own files are read from for `system` and `sbom_read`
    /// (`etc/outpost/release`, `run/outpost-boot`, `usr/share/outpost/sbom.json` under it):
    /// `/` on the box; a directory of fakes in the tests.
    pub system_root: PathBuf,
    /// Where bundles uploaded through the web page wait for the installer agent
    /// (`/data/spool/update` on the image); none: `<data_dir>/update-spool`.
    pub update_spool: Option<PathBuf>,
}

/// Who starts dropbear.
#[derive(Debug, Clone)]
pub enum SshRunner {
    /// The daemon starts and supervises dropbear itself (it must be root: dropbear switches
    /// to the admin account on login). Development and the black-box tests.
    Daemon,
    /// The image's init runs dropbear as the admin account (`image/files/run-dropbear`); the
    /// daemon publishes the listen addresses in `<dir>/listen`, reads dropbear's log from
    /// the FIFO `<dir>/log`, and writes the admin's authorized_keys through `keys`, a
    /// descriptor init opened on that root-owned file (the daemon's user cannot make a file
    /// owned by root or the admin, which dropbear insists on).
    Init {
        /// Directory shared with `run-dropbear` (`/run/outpost/ssh`).
        dir: PathBuf,
        /// The admin's authorized_keys, opened read-write by init.
        keys: Arc<File>,
    },
}

impl Default for FixedSettings {
    fn default() -> Self {
        FixedSettings {
            nft: "nft".to_owned(),
            dropbear: PathBuf::from("/usr/sbin/dropbear"),
            dropbearkey: PathBuf::from("/usr/bin/dropbearkey"),
            outpostctl: None,
            admin_group: None,
            ssh: SshRunner::Daemon,
            set_clock: false,
            system_root: PathBuf::from("/"),
            update_spool: None,
        }
    }
}

static SETTINGS: OnceLock<FixedSettings> = OnceLock::new();

/// Sets this process's settings; only the first call counts (false when they were set
/// already).
pub fn set(settings: FixedSettings) -> bool {
    SETTINGS.set(settings).is_ok()
}

/// This process's settings (the defaults until [`set`]).
pub fn get() -> &'static FixedSettings {
    SETTINGS.get_or_init(FixedSettings::default)
}

/// Why a setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FixedError {
    /// A path or program is empty or cannot sit in a forced command.
    #[error("{what} {value:?}: {reason}")]
    Bad {
        /// The option.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

impl FixedSettings {
    /// Checks every value; the error names the option.
    pub fn check(&self) -> Result<(), FixedError> {
        let bad = |what, value: &str, reason| {
            Err(FixedError::Bad {
                what,
                value: value.to_owned(),
                reason,
            })
        };
        let paths = [
            ("--nft", Some(self.nft.as_str())),
            ("--dropbear", self.dropbear.to_str()),
            ("--dropbearkey", self.dropbearkey.to_str()),
            (
                "--outpostctl",
                self.outpostctl.as_deref().map_or(Some("x"), |p| p.to_str()),
            ),
        ];
        for (what, value) in paths {
            let Some(value) = value else {
                return bad(what, "(not UTF-8)", "must be UTF-8");
            };
            if value.is_empty() {
                return bad(what, value, "must not be empty");
            }
            if value
                .chars()
                .any(|c| c == '"' || c == '\\' || c == '\'' || c.is_control())
            {
                return bad(
                    what,
                    value,
                    "must not contain quotes, backslashes or control characters",
                );
            }
        }
        if let Some(group) = &self.admin_group {
            let ok = !group.is_empty()
                && group.len() <= 32
                && !group.starts_with('-')
                && group
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return bad(
                    "--admin-group",
                    group,
                    "must be a group name: letters, digits, `_`, `-`, `.`, at most 32",
                );
            }
        }
        Ok(())
    }
}

/// A configuration key that used to set one of these settings: any value is accepted and
/// ignored when a stored revision is loaded (so a box whose configuration still names it
/// keeps booting), never written back, and refused by `config apply`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetiredKey;

impl<'de> serde::Deserialize<'de> for RetiredKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| RetiredKey)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_option() {
        assert!(FixedSettings::default().check().is_ok());
        let s = FixedSettings {
            nft: String::new(),
            ..FixedSettings::default()
        };
        assert!(s.check().unwrap_err().to_string().starts_with("--nft"));
        let s = FixedSettings {
            dropbear: PathBuf::from("/usr/sbin/drop\"bear"),
            ..FixedSettings::default()
        };
        assert!(s.check().unwrap_err().to_string().starts_with("--dropbear"));
        let s = FixedSettings {
            admin_group: Some("bad group".into()),
            ..FixedSettings::default()
        };
        assert!(s
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("--admin-group"));
    }
}
