//! The box and its administration: `status`, config revisions, SSH keys, the update slots
//! and the SBOM summary.

use firmware::admin::proto::{SshKeyInfo, StatusInfo};
use firmware::revisions::{Revision, RevisionState};
use firmware::update::{Outcome, SbomSummary, UpdateStatus};

use super::table::Table;
use super::text::{fmt_duration, fmt_time, now_ms, sanitize};

/// `status`: the daemon at a glance.
pub fn status(s: &StatusInfo) -> String {
    let mut t = Table::plain();
    if !s.hostname.is_empty() {
        t.pair("hostname", s.hostname.clone());
    }
    t.pair("version", s.version.clone());
    t.pair("uptime", fmt_duration(s.uptime_secs));
    t.pair("listen", s.listen.join(", "));
    t.pair("realm", s.realm.clone());
    t.pair("data dir", s.data_dir.clone());
    t.pair("store schema", s.store_schema.to_string());
    t.pair("extensions", s.extensions.to_string());
    t.pair("registrations", s.registrations.to_string());
    t.pair("active calls", s.active_calls.to_string());
    t.pair("call records", s.cdrs.to_string());
    if s.trunks > 0 {
        t.pair("trunks", format!("{} of {} up", s.trunks_up, s.trunks));
    }
    t.pair(
        "last backup",
        match s.last_backup_age_secs {
            Some(age) => format!("{} ago", fmt_duration(age)),
            None => "never".to_owned(),
        },
    );
    if let Some(log) = &s.log {
        t.pair(
            "log file",
            match &log.file {
                Some(path) if log.file_dropped > 0 => {
                    format!("{path} ({} lines dropped)", log.file_dropped)
                }
                Some(path) => path.clone(),
                None => "off".to_owned(),
            },
        );
        for c in &log.collectors {
            let state = match (&c.last_error, c.connected) {
                (Some(err), _) => format!("DOWN: {err}"),
                (None, true) => "up".to_owned(),
                (None, false) => "waiting".to_owned(),
            };
            t.pair(
                "syslog",
                format!(
                    "{} {} {state}; {} sent, {} dropped, {} queued",
                    c.transport, c.address, c.sent, c.dropped, c.queued
                ),
            );
        }
    }
    if let Some(time) = &s.time {
        t.pair("clock", clock(time));
    }
    if let Some(fast) = &s.media_fast_path {
        t.pair("media fast path", fast.clone());
    }
    if s.survival {
        t.pair(
            "mode",
            "SURVIVAL: every trunk is down; local calls, voicemail and the IVR work, outside calls do not",
        );
    }
    t.render()
}

/// The `clock` line of `status`.
fn clock(t: &firmware::timesync::TimeStatus) -> String {
    if t.servers == 0 {
        return "not synchronised by Outpost (no `[time] servers`)".to_owned();
    }
    let source = match (&t.server, t.stratum) {
        (Some(server), Some(stratum)) => format!("{server}, stratum {stratum}"),
        (Some(server), None) => server.clone(),
        _ => "-".to_owned(),
    };
    let watching = if t.sets_clock {
        ""
    } else {
        "; watching only, another program sets the clock"
    };
    if t.synchronised {
        let offset = t
            .offset_ms
            .map(|o| format!(", offset {o} ms"))
            .unwrap_or_default();
        let age = t
            .last_sync_ms
            .map(|at| format!(", {} ago", fmt_duration(now_ms().saturating_sub(at) / 1000)))
            .unwrap_or_default();
        format!("synchronised ({source}{offset}{age}{watching})")
    } else {
        let since = t
            .unsynchronised_secs
            .map(|s| format!(" for {}", fmt_duration(s)))
            .unwrap_or_default();
        let why = t
            .last_error
            .as_deref()
            .map(|e| format!(": {}", sanitize(e)))
            .unwrap_or_default();
        format!("NOT SYNCHRONISED{since}{why}{watching}")
    }
}

/// `ssh keys list`.
pub fn ssh_keys(v: &[SshKeyInfo]) -> String {
    Table::new(&["FINGERPRINT", "TYPE", "BITS", "COMMENT", "ADDED (UTC)"])
        .rows(v.iter().map(|k| {
            vec![
                k.fingerprint.clone(),
                k.key_type.clone(),
                k.bits.to_string(),
                k.comment.clone().unwrap_or_else(|| "-".to_owned()),
                fmt_time(k.added),
            ]
        }))
        .render_or("no SSH keys (add one with `outpostctl ssh keys add FILE.pub`)\n")
}

/// `config list`: the revisions, with the seconds left to confirm a pending one.
pub fn revisions(v: &[Revision]) -> String {
    Table::new(&["REV", "TIME (UTC)", "STATE", "COMMENT"])
        .rows(v.iter().map(|r| {
            vec![
                r.rev.to_string(),
                fmt_time(r.at),
                match r.state {
                    RevisionState::Applied => "running".to_owned(),
                    RevisionState::Pending => match r.confirm_by {
                        Some(by) => format!(
                            "PENDING ({} s to confirm)",
                            by.saturating_sub(now_ms()) / 1000
                        ),
                        None => "PENDING".to_owned(),
                    },
                    RevisionState::Superseded => "superseded".to_owned(),
                    RevisionState::RolledBack => "rolled back".to_owned(),
                },
                sanitize(&r.comment),
            ]
        }))
        .render_or("no revisions\n")
}

/// `update status`: the running slot, each slot's release, the last update, the keys.
pub fn update_status(s: &UpdateStatus) -> String {
    let release = |r: Option<&outpost_bundle::Release>| {
        r.map_or("unknown".to_owned(), |r| sanitize(&r.to_string()))
    };
    let mut out = format!(
        "running:  slot {}, {}{}\n",
        s.booted,
        release(s.running.as_ref()),
        if s.trial {
            " (on trial: the health check has not committed it yet)"
        } else {
            ""
        }
    );
    if let Some(p) = &s.profile {
        out.push_str(&format!("board:    {}\n", sanitize(p)));
    }
    let slots = Table::plain().rows(s.slots.iter().map(|slot| {
        let mut notes = Vec::new();
        if slot.running {
            notes.push("running");
        }
        if slot.committed {
            notes.push("committed");
        }
        if s.armed == Some(slot.slot) {
            notes.push("armed: boots once on trial at the next reboot");
        }
        vec![
            format!("slot {}", slot.slot),
            release(slot.release.as_ref()),
            slot.device.clone().unwrap_or_else(|| "-".to_owned()),
            notes.join(", "),
        ]
    }));
    out.push_str(&slots.render());
    match &s.last {
        Some(l) => {
            let what = match l.outcome {
                Outcome::Installed => "installed into",
                Outcome::Committed => "committed in",
                Outcome::RolledBack => "rolled back from",
            };
            out.push_str(&format!(
                "last update: {} {what} slot {} at {} UTC{}\n",
                release(Some(&l.release)),
                l.slot,
                fmt_time(l.time.saturating_mul(1000)),
                if l.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", sanitize(&l.reason))
                }
            ));
        }
        None => out.push_str("last update: none\n"),
    }
    if s.keys.is_empty() {
        out.push_str("trusted update keys: none (no bundle can be installed)\n");
    } else {
        out.push_str(&format!("trusted update keys: {}\n", s.keys.join(", ")));
    }
    for p in &s.key_problems {
        out.push_str(&format!("  skipped: {}\n", sanitize(p)));
    }
    if s.from_boot_copy {
        out.push_str("(boot data read from the copy made at boot: it may be older)\n");
    }
    out
}

/// `sbom --summary`: component counts and licences.
pub fn sbom_summary(s: &SbomSummary) -> String {
    let mut out = format!(
        "{} Rust crates, {} Debian packages{}\nlicences:\n",
        s.crates,
        s.debian_packages,
        if s.other > 0 {
            format!(", {} other components", s.other)
        } else {
            String::new()
        }
    );
    let licences = Table::plain().rows(
        s.licences
            .iter()
            .map(|(l, n)| vec![format!("  {}", sanitize(l)), n.to_string()]),
    );
    out.push_str(&licences.render());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use firmware::update;

    use super::*;

    #[test]
    fn update_status_and_sbom_summary_render() {
        let rel = |v: &str, b| outpost_bundle::Release {
            version: v.to_owned(),
            build: b,
        };
        let slot = |slot, release, running, committed| update::SlotStatus {
            slot,
            release: Some(release),
            device: Some(format!(
                "/dev/vda{}",
                if slot == update::Slot::A { 2 } else { 3 }
            )),
            running,
            committed,
        };
        let s = update::UpdateStatus {
            booted: update::Slot::A,
            running: Some(rel("0.1.0", 1_700_000_000)),
            profile: Some("qemu-virt".to_owned()),
            trial: false,
            armed: None,
            slots: vec![
                slot(update::Slot::A, rel("0.1.0", 1_700_000_000), true, true),
                slot(update::Slot::B, rel("0.2.0", 1_700_000_100), false, false),
            ],
            last: Some(update::LastOutcome {
                outcome: update::Outcome::RolledBack,
                slot: update::Slot::B,
                release: rel("0.2.0", 1_700_000_100),
                time: 1_750_000_000,
                reason: "SIP on 127.0.0.1:5060 did not answer\x1b[2J".to_owned(),
            }),
            keys: vec!["0123456789abcdef".to_owned()],
            key_problems: vec![],
            from_boot_copy: false,
        };
        let text = update_status(&s);
        assert!(
            text.starts_with("running:  slot a, 0.1.0 (build 1700000000)\n"),
            "{text}"
        );
        assert!(
            text.contains("slot b  0.2.0 (build 1700000100)  /dev/vda3"),
            "{text}"
        );
        assert!(
            text.contains("last update: 0.2.0 (build 1700000100) rolled back from slot b at 2025-06-15 15:06:40 UTC: SIP on 127.0.0.1:5060 did not answer"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains("trusted update keys: 0123456789abcdef\n"),
            "{text}"
        );
        let summary = update::SbomSummary {
            crates: 2,
            debian_packages: 1,
            other: 0,
            licences: vec![("MIT".to_owned(), 2), ("(none)".to_owned(), 1)],
        };
        assert_eq!(
            sbom_summary(&summary),
            "2 Rust crates, 1 Debian packages\nlicences:\n  MIT     2\n  (none)  1\n"
        );
    }
}
