//! `system` and `sbom_read`: facts about the box and the image's SBOM, read from files
//! (`/proc`, `/etc/outpost/release`, `/run/outpost-boot`, the SBOM) on a blocking thread,
//! never on the daemon's loop. Here rather than in `admin::control` because the image's
//! paths and formats belong to [`crate::update`], a layer below the admin plane.
//!
//! Everything is read-only and needs no root: the release file, the boot state the
//! initramfs left and the SBOM are world-readable on the image; boot.env on the boot
//! partition is not consulted (mounting it needs root), so the slots are as at boot.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::admin::proto::{
    Command, FirmwareInfo, InterfaceInfo, Reply, SbomInfo, SystemInfo, UplinkInfo, MAX_INTERFACES,
    MAX_INTERFACE_ADDRS,
};
use crate::update::Layout;

/// Largest SBOM read for the summary (the image's is about 1 MiB).
const MAX_SBOM: u64 = 32 * 1024 * 1024;
/// Licence expressions listed in the summary.
const MAX_LICENCES: usize = 20;

/// What the daemon knows itself, handed to the blocking thread.
#[derive(Debug)]
pub(super) struct Known {
    /// `[system] hostname`, else the system's.
    pub hostname: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The clock's synchronisation.
    pub time: crate::timesync::TimeStatus,
    /// The data directory (`network.toml`).
    pub data_dir: PathBuf,
}

/// Answers `system` or `sbom_read` off the loop; `reply` gets the wire reply.
pub(super) fn execute(cmd: Command, known: Known, reply: oneshot::Sender<Reply>) {
    let layout = layout(&crate::fixed::get().system_root);
    tokio::task::spawn_blocking(move || {
        let answer = match cmd {
            Command::System => Reply::System(Box::new(system(known, &layout))),
            Command::SbomRead { offset, len } => {
                match crate::chunk::read_file(&layout.sbom, "sbom.json", offset, len) {
                    Ok(piece) => Reply::FileChunk(piece),
                    Err(e) => Reply::error(format!("SBOM {}: {e}", layout.sbom.display())),
                }
            }
            other => Reply::error(format!("{} is not a system fact", other.name())),
        };
        let _ = reply.send(answer);
    });
}

/// The image's paths under `root` (`/` on the box).
fn layout(root: &std::path::Path) -> Layout {
    if root == std::path::Path::new("/") {
        Layout::system()
    } else {
        Layout::under(root)
    }
}

fn system(known: Known, layout: &Layout) -> SystemInfo {
    let uplink = crate::netconf::uplink(&known.data_dir);
    let (firmware, firmware_error) = split(firmware(layout));
    let (sbom, sbom_error) = split(sbom(layout));
    SystemInfo {
        hostname: known.hostname,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: known.uptime_secs,
        host_uptime_secs: crate::netif::read_small("/proc/uptime")
            .as_deref()
            .and_then(host_uptime),
        interfaces: interfaces(crate::netif::interface_addrs()),
        uplink: UplinkInfo {
            mode: match uplink.mode {
                board::panel::NetworkMode::Static => "static",
                board::panel::NetworkMode::Dhcp => "dhcp",
            }
            .to_owned(),
            address: uplink.address,
            gateway: uplink.gateway,
            dns: uplink.dns,
        },
        time: known.time,
        firmware,
        firmware_error,
        sbom,
        sbom_error,
    }
}

fn split<T>(r: Result<T, String>) -> (Option<T>, Option<String>) {
    match r {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    }
}

/// Seconds since boot from `/proc/uptime` text (`12345.67 23456.78`).
fn host_uptime(text: &str) -> Option<u64> {
    let secs = text.split_whitespace().next()?;
    secs.split('.').next()?.parse().ok()
}

/// The kernel's address list grouped by interface, in first-seen order, bounded.
fn interfaces(addrs: Vec<crate::netif::IfAddr>) -> Vec<InterfaceInfo> {
    let mut out: Vec<InterfaceInfo> = Vec::new();
    for a in addrs {
        let text = format!("{}/{}", a.ip, a.prefix);
        if let Some(i) = out.iter_mut().find(|i| i.name == a.name) {
            if i.addrs.len() < MAX_INTERFACE_ADDRS {
                i.addrs.push(text);
            }
        } else if out.len() < MAX_INTERFACES {
            out.push(InterfaceInfo {
                name: a.name,
                up: a.up,
                addrs: vec![text],
            });
        }
    }
    out
}

/// The running release and the slots as the initramfs booted them.
fn firmware(layout: &Layout) -> Result<FirmwareInfo, String> {
    let running = crate::update::running(layout).map_err(|e| e.to_string())?;
    // Off an A/B image (a development box) there is a release but no boot state.
    let state = crate::update::boot_state(layout).ok();
    Ok(FirmwareInfo {
        version: running.release.version,
        build: running.release.build,
        profile: Some(running.profile),
        booted_slot: state
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |s| s.booted.to_string()),
        committed_slot: state
            .as_ref()
            .and_then(|s| s.env.slot())
            .map(|s| s.to_string()),
        trial: state.as_ref().is_some_and(|s| s.trial),
        armed_slot: state
            .as_ref()
            .and_then(|s| s.env.try_slot())
            .map(|s| s.to_string()),
        last_update: state
            .as_ref()
            .and_then(|s| s.env.last())
            .map(|l| l.render()),
    })
}

/// The SBOM's summary; parsed once per version of the file (size and mtime), since the
/// web page's system view may ask often and the document is megabytes.
fn sbom(layout: &Layout) -> Result<SbomInfo, String> {
    static CACHE: Mutex<Option<(PathBuf, u64, SystemTime, SbomInfo)>> = Mutex::new(None);
    let path = &layout.sbom;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let (size, mtime) = (
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    );
    if let Ok(cache) = CACHE.lock() {
        if let Some((p, s, m, info)) = cache.as_ref() {
            if p == path && *s == size && *m == mtime {
                return Ok(info.clone());
            }
        }
    }
    if size > MAX_SBOM {
        return Err(format!("{shown}: larger than {MAX_SBOM} bytes"));
    }
    let bytes = crate::chunk::read_whole(path, &shown, MAX_SBOM).map_err(|e| e.to_string())?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{shown}: not JSON: {e}"))?;
    let s = crate::update::sbom_summary(&doc);
    let info = SbomInfo {
        path: shown,
        size: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
        components: s.crates + s.debian_packages + s.other,
        crates: s.crates,
        debian_packages: s.debian_packages,
        licences: s.licences.into_iter().take(MAX_LICENCES).collect(),
    };
    if let Ok(mut cache) = CACHE.lock() {
        *cache = Some((path.clone(), size, mtime, info.clone()));
    }
    Ok(info)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn write(root: &std::path::Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn firmware_and_sbom_come_from_the_image_files() {
        let root = tempfile::tempdir().unwrap();
        let layout = layout(root.path());
        assert!(firmware(&layout).unwrap_err().contains("release"));
        assert!(sbom(&layout).unwrap_err().contains("sbom.json"));
        write(
            root.path(),
            "etc/outpost/release",
            "version=0.3.1\nbuild=1780000000\nprofile=rpi4\n",
        );
        write(
            root.path(),
            "run/outpost-boot",
            "slot=a\nbooted=b\ntrial=1\nlast=installed b 0.3.1 1780000000 1780000100\n",
        );
        let sbom_text = r#"{"bomFormat":"CycloneDX","components":[
            {"purl":"pkg:cargo/serde@1","licenses":[{"expression":"MIT OR Apache-2.0"}]},
            {"purl":"pkg:cargo/tokio@1","licenses":[{"expression":"MIT"}]},
            {"purl":"pkg:deb/debian/busybox@1","licenses":[{"license":{"id":"GPL-2.0"}}]}]}"#;
        write(root.path(), "usr/share/outpost/sbom.json", sbom_text);
        let fw = firmware(&layout).unwrap();
        assert_eq!(
            (
                fw.version.as_str(),
                fw.build,
                fw.booted_slot.as_str(),
                fw.trial
            ),
            ("0.3.1", 1_780_000_000, "b", true)
        );
        assert_eq!(fw.committed_slot.as_deref(), Some("a"));
        assert_eq!(fw.profile.as_deref(), Some("rpi4"));
        assert!(fw.last_update.unwrap().starts_with("installed b 0.3.1"));
        let s = sbom(&layout).unwrap();
        assert_eq!(
            (s.components, s.crates, s.debian_packages, s.size),
            (3, 2, 1, sbom_text.len() as u64)
        );
        assert!(s.path.ends_with("usr/share/outpost/sbom.json"));
    }

    #[test]
    fn interfaces_are_grouped_and_uptime_parsed() {
        let a = |name: &str, ip: &str, prefix| crate::netif::IfAddr {
            name: name.into(),
            up: true,
            ip: ip.parse::<IpAddr>().unwrap(),
            prefix,
        };
        let list = interfaces(vec![
            a("lo", "127.0.0.1", 8),
            a("eth0", "192.168.1.20", 24),
            a("lo", "::1", 128),
        ]);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].addrs, ["127.0.0.1/8", "::1/128"]);
        assert_eq!(list[1].addrs, ["192.168.1.20/24"]);
        assert_eq!(host_uptime("12345.67 23456.78\n"), Some(12345));
        assert_eq!(host_uptime(""), None);
    }
}
