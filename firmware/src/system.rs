//! `[system]`: the box's own name.
//!
//! On the box, `rc.sysinit` names it `outpost-` and the last six hex digits of eth0's MAC
//! address (`image/files/box-name`), so boxes, and their backups on one server, can be told
//! apart. `[system] hostname` replaces that name: the daemon sets it at start and on
//! `config apply`. Where the kernel does not let it (the demo as a normal user), the
//! configured name is still the one the daemon uses for backups and `status`, and it says
//! so once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub use crate::names::{validate_hostname, MAX_HOSTNAME_LEN};

/// `[system]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    /// The box's host name (one RFC 1123 label, e.g. `berlin-1`); none: the name it booted
    /// with (`outpost-a1b2c3` on the box).
    pub hostname: Option<String>,
}

impl SystemConfig {
    /// Why the section cannot be used, naming the offending key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(name) = &self.hostname {
            validate_hostname(name).map_err(|reason| ("system.hostname", reason))?;
        }
        Ok(())
    }
}

/// The name the box goes by for backups and `status`: the configured one, else the
/// kernel's (letters, digits and `-` only).
pub fn hostname(cfg: &SystemConfig) -> String {
    match &cfg.hostname {
        Some(name) => name.clone(),
        None => sanitized_kernel_hostname(),
    }
}

/// The kernel's host name before the daemon first changed it: what a removed
/// `[system] hostname` returns to. The kernel's name is one per system, so this is too.
static BOOT_NAME: OnceLock<String> = OnceLock::new();
/// Whether the refusal to set the kernel's name was reported already.
static REFUSAL_SAID: AtomicBool = AtomicBool::new(false);

/// Gives the kernel the configured host name (or, once the key is removed, back the name
/// the box booted with). Never touches the kernel's name while none was configured.
pub fn apply_hostname(cfg: &SystemConfig) {
    let current = kernel_hostname();
    let boot = BOOT_NAME.get_or_init(|| current.clone());
    let Some(wanted) = name_to_set(cfg.hostname.as_deref(), boot, &current) else {
        return;
    };
    match nix::unistd::sethostname(wanted) {
        Ok(()) => tracing::info!(hostname = wanted, "host name set"),
        Err(err) => {
            if !REFUSAL_SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %err,
                    "cannot set the system's host name to {wanted:?} (setting it needs \
                     CAP_SYS_ADMIN); backups and status use {:?} all the same",
                    hostname(cfg)
                );
            }
        }
    }
}

/// The name the kernel must be given, if it must change: the configured one, else the boot
/// name when the kernel still carries an earlier configured one.
fn name_to_set<'a>(configured: Option<&'a str>, boot: &'a str, current: &str) -> Option<&'a str> {
    let wanted = configured.unwrap_or(boot);
    (wanted != current && !wanted.is_empty()).then_some(wanted)
}

/// This box's kernel host name, reduced to letters, digits and `-` so it is safe in file
/// names (`outpost` if nothing is left).
fn sanitized_kernel_hostname() -> String {
    let clean: String = kernel_hostname()
        .chars()
        .take(MAX_HOSTNAME_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.trim_matches('-').is_empty() {
        "outpost".to_string()
    } else {
        clean
    }
}

fn kernel_hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn the_kernel_name_changes_only_for_a_configured_name_or_to_undo_one() {
        // Nothing configured: whatever the kernel has stays (a developer's machine).
        assert_eq!(name_to_set(None, "laptop", "laptop"), None);
        // Configured: set it, once.
        assert_eq!(
            name_to_set(Some("berlin-1"), "outpost-a1b2c3", "outpost-a1b2c3"),
            Some("berlin-1")
        );
        assert_eq!(
            name_to_set(Some("berlin-1"), "outpost-a1b2c3", "berlin-1"),
            None
        );
        // The key removed: back to the boot name.
        assert_eq!(
            name_to_set(None, "outpost-a1b2c3", "berlin-1"),
            Some("outpost-a1b2c3")
        );
        // A kernel that had no name to start with is not given an empty one.
        assert_eq!(name_to_set(None, "", "berlin-1"), None);
    }
}
