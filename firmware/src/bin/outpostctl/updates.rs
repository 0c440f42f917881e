//! Commands that run here, as root on the box, rather than in outpostd: firmware updates
//! (`update install|status|health`, on the A/B slots through [`firmware::update`]) and the
//! SBOM. outpostd is consulted only as the health check's probe.

use std::io::Read;
use std::path::Path;

use firmware::update::{self, UpdateError};

use crate::cli::UpdateCmd;
use crate::failure::Failure;
use crate::render::{self, sanitize, to_json};

/// Largest SBOM read.
const MAX_SBOM: u64 = 32 * 1024 * 1024;

/// An update error as the admin reads it (exit 1).
fn update_failure(e: UpdateError) -> Failure {
    Failure::Refused(sanitize(&e.to_string()))
}

/// Seconds since the Unix epoch, for the update log.
fn now_secs() -> u64 {
    render::now_ms() / 1000
}

/// `update install|status|health`: these run here (as root on the box), not in outpostd.
pub fn update_cmd(cmd: &UpdateCmd, socket: &Path, json: bool) -> Result<(), Failure> {
    let layout = update::Layout::system();
    match cmd {
        UpdateCmd::Install {
            source,
            force,
            reboot,
        } => update_install(&layout, source, *force, *reboot, json),
        UpdateCmd::Status => {
            let s = update::status(&layout).map_err(update_failure)?;
            if json {
                println!("{}", to_json(&s));
            } else {
                print!("{}", render::update_status(&s));
            }
            Ok(())
        }
        UpdateCmd::Health { timeout } => update_health(&layout, socket, *timeout),
        UpdateCmd::Agent {
            spool,
            root,
            reboot_fifo,
        } => {
            let layout = root.as_deref().map_or(layout, update::Layout::under);
            update_agent(&layout, spool, reboot_fifo)
        }
    }
}

/// How often the agent looks for a request.
const AGENT_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// `update agent`: installs what the web page staged, forever (init restarts it).
fn update_agent(layout: &update::Layout, spool: &Path, fifo: &Path) -> Result<(), Failure> {
    use update::staging;
    eprintln!("update agent: watching {}", spool.display());
    if let Err(e) = staging::agent_start(layout, spool) {
        eprintln!("update agent: {}", sanitize(&e.to_string()));
    }
    loop {
        let mut reboot = || {
            nix::unistd::sync();
            request_reboot(fifo).map_err(|f| match f {
                Failure::Refused(m) | Failure::Usage(m) | Failure::Unreachable(m) => m,
                Failure::Shown(code) => format!("exit {code}"),
            })
        };
        match staging::agent_step(layout, spool, now_secs(), &mut reboot) {
            Ok(true) => {
                let state = staging::read_state(spool).map(|s| to_json(&s));
                eprintln!(
                    "update agent: {}",
                    sanitize(&state.unwrap_or_else(|e| e.to_string()))
                );
            }
            Ok(false) => {}
            Err(e) => eprintln!("update agent: {}", sanitize(&e.to_string())),
        }
        std::thread::sleep(AGENT_POLL);
    }
}

/// `update install SOURCE`: check and write the bundle, then reboot if asked.
fn update_install(
    layout: &update::Layout,
    source: &str,
    force: bool,
    reboot: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut reader: Box<dyn Read> = if source == "-" {
        Box::new(std::io::BufReader::with_capacity(
            256 * 1024,
            std::io::stdin(),
        ))
    } else if update::fetch::is_url(source) {
        let ca = layout.update_ca();
        let ca = ca.exists().then_some(ca.as_path());
        eprintln!("update: downloading {}", sanitize(source));
        let download = update::fetch::download(source, ca)
            .map_err(|e| update_failure(UpdateError::Fetch(e)))?;
        Box::new(std::io::BufReader::with_capacity(256 * 1024, download))
    } else {
        let file = std::fs::File::open(source)
            .map_err(|e| Failure::Usage(format!("{}: {e}", sanitize(source))))?;
        Box::new(std::io::BufReader::with_capacity(256 * 1024, file))
    };
    let installed = update::install(
        layout,
        &mut reader,
        update::InstallOptions { force },
        now_secs(),
        &mut |p| match p {
            update::Progress::Verified { slot } => {
                eprintln!("update: signature verified; writing slot {slot}")
            }
            update::Progress::Writing { slot, percent } => {
                eprintln!("update: writing slot {slot}: {percent} %")
            }
            update::Progress::Verifying { slot } => {
                eprintln!("update: reading slot {slot} back")
            }
        },
    )
    .map_err(update_failure)?;
    if json {
        println!("{}", to_json(&installed));
    } else {
        println!(
            "update: installed {} into slot {} ({} bytes, signed by key {}){}",
            sanitize(&installed.release.to_string()),
            installed.slot,
            installed.bytes,
            installed.key_id,
            if installed.forced { ", forced" } else { "" }
        );
        println!(
            "reboot to try it; it commits itself after passing its health check, otherwise \
             the box returns to slot {}",
            installed.booted
        );
    }
    if reboot {
        eprintln!("update: rebooting into slot {}", installed.slot);
        reboot_now()?;
    }
    Ok(())
}

/// Where the SSH admin, who is not root, asks init for a reboot (`image/files/run-reboot`).
const REBOOT_REQUEST: &str = "/run/outpost/reboot-request";

/// `sync`, then a clean reboot (init runs the shutdown actions): busybox `reboot` as root,
/// else the request to init's `run-reboot`.
fn reboot_now() -> Result<(), Failure> {
    nix::unistd::sync();
    if !nix::unistd::geteuid().is_root() {
        return request_reboot(Path::new(REBOOT_REQUEST));
    }
    match std::process::Command::new("reboot").status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Failure::Refused(format!("reboot failed: {s}"))),
        Err(e) => Err(Failure::Refused(format!("cannot run reboot: {e}"))),
    }
}

/// Writes `reboot` to the FIFO init's `run-reboot` waits on. Non-blocking: with nobody
/// reading (not the image, or its helper is not running) this fails at once.
fn request_reboot(fifo: &Path) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let refused = |why: String| {
        Failure::Refused(format!(
            "cannot ask for a reboot through {}: {why}; the update is installed, reboot the box to try it",
            fifo.display()
        ))
    };
    let meta = std::fs::symlink_metadata(fifo).map_err(|e| refused(e.to_string()))?;
    if !meta.file_type().is_fifo() {
        return Err(refused("not a FIFO".to_owned()));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(fifo)
        .map_err(|e| refused(e.to_string()))?;
    f.write_all(b"reboot\n")
        .map_err(|e| refused(e.to_string()))?;
    Ok(())
}

/// The trial boot's verdict: commit when outpostd, its store and SIP answer in time, else
/// record the rollback and reboot into the committed slot.
fn update_health(
    layout: &update::Layout,
    socket: &Path,
    timeout: Option<u64>,
) -> Result<(), Failure> {
    let slot = match update::pending_trial(layout) {
        Ok(Some(slot)) => slot,
        Ok(None) => return Ok(()),
        Err(UpdateError::NotAnImage(_)) => {
            eprintln!("update: not booted from an Outpost image; nothing to check");
            return Ok(());
        }
        Err(e) => return Err(update_failure(e)),
    };
    let timeout = update::health_timeout(layout, timeout);
    println!(
        "update: slot {slot} is on trial: health check (up to {} s)",
        timeout.as_secs()
    );
    let probe = update::health::Probe {
        admin_socket: socket.to_path_buf(),
        sip: None,
    };
    let result = update::health::probe(&probe, timeout);
    let took = result.as_ref().ok().copied();
    let verdict =
        update::record_health(layout, result.map(|_| ()), now_secs()).map_err(update_failure)?;
    match verdict {
        update::Verdict::NothingToDo => {
            println!("update: slot {slot}: the verdict was recorded already");
            Ok(())
        }
        update::Verdict::Committed { slot } => {
            println!(
                "update: slot {slot} committed: health check passed in {:.1} s",
                took.unwrap_or_default().as_secs_f64()
            );
            Ok(())
        }
        update::Verdict::RolledBack {
            slot,
            back_to,
            reason,
        } => {
            println!(
                "update: slot {slot} rolled back: {}; rebooting into slot {back_to}",
                sanitize(&reason)
            );
            reboot_now()?;
            Err(Failure::Shown(1))
        }
    }
}

/// `sbom`: the CycloneDX document as it is, or its counts.
pub fn sbom(layout: &update::Layout, summary: bool, json: bool) -> Result<(), Failure> {
    let mut text = String::new();
    std::fs::File::open(&layout.sbom)
        .and_then(|f| f.take(MAX_SBOM).read_to_string(&mut text))
        .map_err(|e| Failure::Refused(format!("{}: {e}", layout.sbom.display())))?;
    if !summary {
        print!("{text}");
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Refused(format!("{}: {e}", layout.sbom.display())))?;
    let s = update::sbom_summary(&doc);
    if json {
        println!("{}", to_json(&s));
    } else {
        print!("{}", render::sbom_summary(&s));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn the_admin_asks_init_for_the_reboot_through_its_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("reboot-request");
        // Nothing there, or not a FIFO: refused, saying the update is in place.
        let missing = request_reboot(&fifo);
        assert!(matches!(&missing, Err(Failure::Refused(m)) if m.contains("reboot the box")));
        std::fs::write(&fifo, b"").unwrap();
        assert!(request_reboot(&fifo).is_err());
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No reader (init's helper not running): refused at once, never blocks.
        assert!(request_reboot(&fifo).is_err());
        // With the reader: exactly the one line it waits for.
        let path = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read_to_string(path).unwrap());
        let mut sent = false;
        for _ in 0..200 {
            if request_reboot(&fifo).is_ok() {
                sent = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(sent, "the reader never opened the FIFO");
        assert_eq!(reader.join().unwrap(), "reboot\n");
    }
}
