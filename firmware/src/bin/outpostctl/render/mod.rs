//! What outpostctl prints for a reply: the human text (tables through [`table::Table`]) or, with
//! `--json`, the reply's payload as one JSON line.
//!
//! [`show`] is the one place a reply reaches standard output; the submodules render the
//! replies of one area each, from the typed payload alone (no I/O but the clock for "ago").

mod backup;
mod fw;
mod json;
mod pbx;
mod system;
mod table;
pub mod text;

use firmware::admin::proto::{LoginOutcome, Reply};

use crate::cli::ExportFormat;
use crate::failure::Failure;

pub use backup::restore_staged;
pub use fw::export;
pub use json::to_json;
pub use system::{sbom_summary, update_status};
pub use text::{fmt_size, now_ms, sanitize};

/// What to print for a `Done` reply when the CLI generated a password.
#[derive(Debug)]
pub struct Generated {
    /// The line shown instead of the daemon's message.
    pub human: String,
    /// The password, for `--json`.
    pub password: String,
}

/// Prints one reply; a daemon error becomes [`Failure::Refused`].
pub fn show(reply: &Reply, json: bool, generated: Option<&Generated>) -> Result<(), Failure> {
    if json {
        let line = match (reply, generated) {
            (Reply::Done { message }, Some(g)) => to_json(&serde_json::json!({
                "message": message,
                "password": g.password,
            })),
            _ => payload_json(reply),
        };
        println!("{line}");
    } else if !matches!(reply, Reply::Error { .. }) {
        print!("{}", render(reply, generated));
    }
    match reply {
        Reply::Error { message } => Err(Failure::Refused(sanitize(message))),
        _ => Ok(()),
    }
}

/// The reply's payload without the tag, as one JSON line.
fn payload_json(reply: &Reply) -> String {
    match reply {
        Reply::Status(s) => to_json(s),
        Reply::Extensions(v) => to_json(v),
        Reply::Extension(e) => to_json(e),
        Reply::Registrations(v) => to_json(v),
        Reply::Calls(v) => to_json(v),
        Reply::Cdrs(v) => to_json(v),
        Reply::Voicemail(v) => to_json(v),
        Reply::Recordings(v) => to_json(v),
        Reply::RecAudio { recording, piece } => to_json(&(recording, piece)),
        Reply::FwStatus(s) => to_json(s),
        Reply::FwBans(b) => to_json(b),
        Reply::FwAlerts(v) => to_json(v),
        Reply::FwRules(v) => to_json(v),
        Reply::FwExport(doc) => to_json(doc),
        Reply::Trunks(v) => to_json(v),
        Reply::Metrics(m) => to_json(m),
        Reply::ConfigText { rev, text } => {
            to_json(&serde_json::json!({ "rev": rev, "text": text }))
        }
        Reply::ConfigRevisions(v) => to_json(v),
        Reply::SshKeys(v) => to_json(v),
        Reply::Admin(a) => to_json(a),
        Reply::Login(o) => to_json(o),
        Reply::Backups(b) => to_json(b),
        Reply::BackupCreated(b) => to_json(b),
        Reply::BackupVerified(c) => to_json(c),
        Reply::RestoreStaged(r) => to_json(r),
        Reply::BackupUpload(u) => to_json(u),
        Reply::UpdateUpload(u) => to_json(u),
        Reply::UpdateState(s) => to_json(s),
        Reply::BackupFetched(f) => to_json(f),
        Reply::RemoteBackups(r) => to_json(r),
        Reply::BackupInfo(i) => to_json(i),
        Reply::HostKey { line, fingerprint } => {
            to_json(&serde_json::json!({ "line": line, "fingerprint": fingerprint }))
        }
        Reply::CdrPage { cdrs, next } => {
            to_json(&serde_json::json!({ "cdrs": cdrs, "next": next }))
        }
        Reply::Log(page) => to_json(page),
        Reply::VmAudio(a) => to_json(a),
        Reply::FileChunk(c) => to_json(c),
        Reply::System(s) => to_json(s),
        Reply::Phones(v) => to_json(v),
        Reply::PhoneAdded(a) => to_json(a),
        Reply::Provision(a) => to_json(a),
        Reply::Done { message } | Reply::Error { message } => {
            to_json(&serde_json::json!({ "message": message }))
        }
    }
}

/// Human output for a reply, ending in a newline.
pub fn render(reply: &Reply, generated: Option<&Generated>) -> String {
    match reply {
        Reply::Status(s) => system::status(s),
        Reply::Extensions(v) => pbx::extensions(v),
        Reply::Extension(e) => pbx::extension(e),
        Reply::Registrations(v) => pbx::registrations(v),
        Reply::Calls(v) => pbx::calls(v),
        Reply::Cdrs(v) => pbx::cdrs(v),
        Reply::Voicemail(v) => pbx::voicemail(v),
        Reply::Recordings(v) => pbx::recordings(v),
        Reply::RecAudio { recording, piece } => format!(
            "recording {}: a piece at byte {} of {}\n",
            recording.id, piece.offset, piece.size
        ),
        Reply::FwStatus(s) => fw::status(s),
        Reply::FwBans(b) => fw::bans(b),
        Reply::FwAlerts(v) => fw::alerts(v),
        Reply::FwRules(v) => fw::rules(v),
        Reply::FwExport(doc) => fw::export(doc, ExportFormat::Json),
        Reply::Trunks(v) => pbx::trunks(v),
        Reply::Metrics(m) => m.to_prometheus(),
        Reply::ConfigText { text, .. } => {
            if text.is_empty() || text.ends_with('\n') {
                text.clone()
            } else {
                format!("{text}\n")
            }
        }
        Reply::ConfigRevisions(v) => system::revisions(v),
        Reply::SshKeys(v) => system::ssh_keys(v),
        Reply::Phones(v) => pbx::phones(v),
        Reply::PhoneAdded(a) => pbx::phone_added(a),
        // The provisioning listeners' command: outpostctl has none, so its JSON.
        Reply::Provision(a) => format!("{}\n", to_json(a)),
        Reply::Admin(a) => format!(
            "admin password: {}\n",
            if a.password_set { "set" } else { "not set" }
        ),
        Reply::Login(o) => match o {
            LoginOutcome::Accepted => "password accepted\n".to_owned(),
            LoginOutcome::Refused => "password refused\n".to_owned(),
            LoginOutcome::NoPassword => "no admin password is set\n".to_owned(),
        },
        Reply::Backups(b) => backup::list(b),
        Reply::BackupCreated(b) => backup::created(b),
        Reply::BackupVerified(c) => backup::verified(c),
        Reply::RestoreStaged(r) => backup::restore_staged(r),
        Reply::BackupUpload(u) => backup::upload(u),
        // The web page's commands: outpostctl has none of them, so their JSON.
        Reply::UpdateUpload(u) => format!("{}\n", to_json(u)),
        Reply::UpdateState(s) => format!("{}\n", to_json(s)),
        Reply::BackupFetched(f) => format!("{}\n", sanitize(&f.name)),
        Reply::RemoteBackups(r) => backup::remote(r),
        Reply::BackupInfo(i) => backup::info(i),
        Reply::HostKey { line, fingerprint } => {
            format!("{} ({})\n", sanitize(line), sanitize(fingerprint))
        }
        Reply::CdrPage { cdrs, .. } => pbx::cdrs(cdrs),
        Reply::Log(page) => page
            .lines
            .iter()
            .map(|l| format!("{}\n", sanitize(l)))
            .collect(),
        // No subcommand asks for these (the web page's); a raw client reads them as JSON.
        Reply::VmAudio(a) => format!(
            "message {} of mailbox {}: {} bytes of {} from offset {}\n",
            a.id,
            sanitize(&a.mailbox),
            a.size,
            sanitize(&a.content_type),
            a.offset
        ),
        Reply::FileChunk(c) => format!(
            "{}: {} bytes, piece at offset {}\n",
            sanitize(&c.name),
            c.size,
            c.offset
        ),
        Reply::System(s) => format!(
            "{} (outpostd {}), up {} s\n",
            sanitize(&s.hostname),
            sanitize(&s.version),
            s.uptime_secs
        ),
        Reply::Done { message } => match generated {
            Some(g) => format!("{}\n", g.human),
            None => format!("{}\n", sanitize(message)),
        },
        Reply::Error { message } => format!("error: {}\n", sanitize(message)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use firmware::admin::proto::{FwBanInfo, FwBansInfo, FwFeedInfo, FwRuleInfo, FwStatusInfo};
    use firmware::driver::conn::ConnStats;
    use pbx_core::cdr::{Cdr, Disposition};

    use super::*;

    #[test]
    fn cdr_table_and_json_payload() {
        let cdrs = vec![Cdr {
            call_id: "abc".into(),
            caller: "100".into(),
            callee: "101".into(),
            start: 1_795_712_585_000,
            answer: Some(1_795_712_590_000),
            end: 1_795_712_655_000,
            disposition: Disposition::Answered,
            status: 200,
            leg: Default::default(),
        }];
        let out = pbx::cdrs(&cdrs);
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("START (UTC)  ") && header.contains("  CALLER  "));
        let row = lines.next().unwrap();
        assert!(row.starts_with("2026-11-26 17:03:05  100"), "{row}");
        assert!(row.contains("answered") && row.contains("1m05s"), "{row}");
        assert_eq!(
            payload_json(&Reply::Extensions(vec![])),
            "[]",
            "--json prints the payload without the tag"
        );
        assert_eq!(payload_json(&Reply::done("ok")), r#"{"message":"ok"}"#);
    }

    #[test]
    fn fw_tables_and_json() {
        let bans = Reply::FwBans(FwBansInfo {
            total_bans: 1,
            total_locks: 0,
            bans: vec![FwBanInfo {
                addr: "203.0.113.9".into(),
                until: 0,
                remaining_secs: 3_600,
                rule: "scanner".into(),
                reason: "scanner fingerprint\u{1b}[2J".into(),
                count_today: 1,
                enforced: true,
            }],
            locks: vec![],
        });
        let text = render(&bans, None);
        assert!(text.starts_with("ADDRESS"), "{text}");
        assert!(text.contains("203.0.113.9  1h00m00s   scanner"), "{text}");
        assert!(!text.contains('\u{1b}'), "escape sequences are sanitised");
        let json: serde_json::Value = serde_json::from_str(&payload_json(&bans)).unwrap();
        assert_eq!(json["bans"][0]["addr"], "203.0.113.9");

        let rules = Reply::FwRules(vec![FwRuleInfo {
            rule: "flood".into(),
            threshold: "16 requests / 2 s".into(),
            action: "ban 300 s".into(),
            hits: 3,
        }]);
        assert_eq!(
            render(&rules, None),
            "RULE   THRESHOLD          ACTION     HITS\nflood  16 requests / 2 s  ban 300 s  3\n"
        );
        let status = Reply::FwStatus(FwStatusInfo {
            mode: "user-space".into(),
            reason: Some("not running as root".into()),
            bans: 0,
            locks: 0,
            sources: 0,
            passes: 0,
            inspected: 0,
            dropped_banned: 0,
            dropped_rule: 0,
            alerts_stored: 0,
            runtime_allow: vec![],
            kernel: None,
            rule_hits: vec![],
            would_be_bans: 0,
            would_be_dropped: 0,
            feeds: vec![FwFeedInfo {
                source: "/etc/outpost/drop.txt".into(),
                refresh_secs: 3_600,
                ban_secs: 86_400,
                entries: 12,
                ignored: 1,
                invalid: 2,
                too_wide: 1,
                truncated: 0,
                last_refresh: Some(0),
                reads: 4,
                failures: 1,
                last_error: Some("cannot read /etc/outpost/drop.txt: gone".into()),
            }],
            connections: Some(Box::new(ConnStats {
                open: 3,
                max: 4_096,
                refused_source_cap: 7,
                ..Default::default()
            })),
        });
        let text = render(&status, None);
        assert!(text.contains("user-space (kernel enforcement off: not running as root)"));
        assert!(
            text.contains("/etc/outpost/drop.txt  12       1        3        1970-01-01"),
            "{text}"
        );
        assert!(text.contains("feed /etc/outpost/drop.txt: last read failed: cannot read"));
        assert!(
            text.contains("TCP/TLS connections     3 open of 4096"),
            "{text}"
        );
        assert!(text.contains("7 at a source's cap"), "{text}");
        assert_eq!(render(&Reply::FwAlerts(vec![]), None), "no alerts\n");
    }

    #[test]
    fn daemon_error_maps_to_refused() {
        match show(&Reply::error("extension 104 exists"), false, None) {
            Err(Failure::Refused(m)) => assert_eq!(m, "extension 104 exists"),
            other => panic!("{other:?}"),
        }
    }
}
