//! Backup replies: the list on the box and off-site, a verified backup's contents, what a
//! staged restore brings back, uploads and the key.

use firmware::backup::archive::Contents;
use firmware::backup::upload::UploadState;
use firmware::backup::{BackupEntry, BackupInfo, BackupList, RemoteListing, RestoreStaged};

use super::table::Table;
use super::text::{fmt_duration, fmt_size, fmt_time, sanitize};

/// `backup list`: the backups on the box, the key, the schedule and the off-site targets.
pub fn list(b: &BackupList) -> String {
    let mut out = String::new();
    if b.backups.is_empty() {
        out.push_str(&format!("no backups in {}\n", sanitize(&b.dir)));
    } else {
        let table = Table::new(&["NAME", "SIZE", "CREATED", "ENCRYPTED TO", "STATE"]).rows(
            b.backups.iter().map(|e| {
                vec![
                    sanitize(&e.name),
                    fmt_size(e.size),
                    format!("{} UTC", fmt_time(e.created_ms)),
                    e.encrypted_to.clone(),
                    match (&e.damaged, e.verified) {
                        (Some(why), _) => format!("DAMAGED: {}", sanitize(why)),
                        (None, true) => "verified".to_owned(),
                        (None, false) => "not checked (no key on the box)".to_owned(),
                    },
                ]
            }),
        );
        out.push_str(&table.render());
    }
    if let Some(age) = b.newest_age_secs {
        out.push_str(&format!("newest backup: {} ago\n", fmt_duration(age)));
    }
    if b.incomplete > 0 {
        out.push_str(&format!(
            "{} interrupted backup(s) (.partial) in {}: not usable, deleted by the next backup\n",
            b.incomplete,
            sanitize(&b.dir)
        ));
    }
    let damaged = b.backups.iter().filter(|e| e.damaged.is_some()).count();
    if damaged > 0 {
        out.push_str(&format!(
            "{damaged} damaged backup(s): they cannot be restored\n"
        ));
    }
    out.push_str(&format!(
        "key: {}{}\n",
        sanitize(&b.key),
        if b.passphrase_stored && b.key != "the passphrase stored on the box" {
            " (a passphrase is also stored on the box)"
        } else {
            ""
        }
    ));
    out.push_str(&format!("schedule: {} (UTC)", sanitize(&b.schedule)));
    if let Some(next) = b.next_run_ms {
        out.push_str(&format!(", next {} UTC", fmt_time(next)));
    }
    out.push('\n');
    for t in &b.targets {
        let state = match (&t.last_upload_error, t.last_ok_ms) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(ok)) => format!(
                "ok {} UTC ({})",
                fmt_time(ok),
                t.last_ok_file.clone().unwrap_or_default()
            ),
            (None, None) => "no upload yet".to_owned(),
        };
        let busy = if t.uploading { " [uploading]" } else { "" };
        out.push_str(&format!(
            "target {}: {}{busy}\n",
            sanitize(&t.name),
            sanitize(&state)
        ));
    }
    out
}

/// `backup verify`: what the checked backup holds.
pub fn verified(c: &Contents) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut t = Table::plain();
    t.pair("result", "OK: decrypted, every checksum matches");
    t.pair("format", c.format.to_string());
    t.pair(
        "made",
        format!(
            "{} UTC by {} (Outpost {})",
            fmt_time(c.created_ms),
            c.hostname,
            c.outpost_version
        ),
    );
    t.pair("extensions", c.extensions.to_string());
    t.pair("call records", c.cdrs.to_string());
    t.pair("bans / locks", format!("{} / {}", c.bans, c.locks));
    t.pair("alerts", c.alerts.to_string());
    t.pair("voicemail", c.voicemail.to_string());
    t.pair("config revisions", c.config_revisions.to_string());
    t.pair("desk phones", phones(c));
    t.pair("TLS identity", yes_no(c.tls));
    t.pair("SSH host key", yes_no(c.ssh_host_key));
    t.pair("SSH keys", c.ssh_keys.to_string());
    t.pair("SFTP client key", yes_no(c.sftp_key));
    t.pair("signature", signature(c));
    t.pair("total size", fmt_size(c.total_bytes));
    t.render()
}

/// The desk phones of a backup: how many, or that its format has none.
fn phones(c: &Contents) -> String {
    if c.carries_phones() {
        c.phones.to_string()
    } else {
        format!(
            "not included (format {}: made before desk phones were backed up)",
            c.format
        )
    }
}

/// Who signed a checked backup, and why it was accepted.
fn signature(c: &Contents) -> String {
    let s = &c.signature;
    match (&s.trusted_as, &s.unauthenticated) {
        (Some(why), _) => format!(
            "signed by {} ({})",
            sanitize(s.fingerprint.as_deref().unwrap_or("?")),
            sanitize(why)
        ),
        (None, Some(problem)) => format!(
            "NOT AUTHENTICATED, accepted with --trust-unsigned: {}",
            sanitize(problem)
        ),
        (None, None) => "not checked".to_owned(),
    }
}

/// What a restore brings back, and what changes for the admin.
pub fn restore_staged(r: &RestoreStaged) -> String {
    let c = &r.contents;
    let host = sanitize(&c.hostname);
    let mut out = format!(
        "restoring {} (backup of {host} made {} UTC, Outpost {}):\n  {} extensions, {} configuration revisions, {} voicemail messages, {} call records, {} desk phones, {} SSH keys, {} bans, {} locks, {} alerts{}{}{}\n",
        sanitize(&r.file),
        fmt_time(c.created_ms),
        sanitize(&c.outpost_version),
        c.extensions,
        c.config_revisions,
        c.voicemail,
        c.cdrs,
        c.phones,
        c.ssh_keys,
        c.bans,
        c.locks,
        c.alerts,
        if c.tls { ", the TLS identity" } else { "" },
        if c.ssh_host_key { ", the SSH host key" } else { "" },
        if c.sftp_key { ", the SFTP client key" } else { "" },
    );
    out.push_str(&format!("signature: {}\n", signature(c)));
    if !c.carries_phones() {
        out.push_str(
            "the backup holds no desk phones (made before they were backed up): the box keeps \
             those of its own phones whose extension password the backup did not change; \
             `phone add` the others again\n",
        );
    }
    if c.admin_password {
        out.push_str(&format!(
            "the console admin password is now the one of {host} (this box's own no longer works)\n"
        ));
    }
    if c.ssh_host_key {
        out.push_str(&format!(
            "the SSH host key is now the one of {host}: SSH clients will warn that the host key changed; \
             run `ssh-keygen -R <this box's address>` (and `ssh-keygen -R <{host}'s address>` if it differs) on each client, then connect again\n"
        ));
    }
    out
}

/// `backup list --remote`.
pub fn remote(listings: &[RemoteListing]) -> String {
    if listings.is_empty() {
        return "no off-site backup target is configured ([[backup.targets]])\n".to_owned();
    }
    let mut out = String::new();
    for l in listings {
        match &l.error {
            Some(e) => out.push_str(&format!(
                "target {}: cannot list: {}\n",
                sanitize(&l.target),
                sanitize(e)
            )),
            None if l.backups.is_empty() => {
                out.push_str(&format!("target {}: no backups\n", sanitize(&l.target)))
            }
            None => {
                out.push_str(&format!("target {}:\n", sanitize(&l.target)));
                let table =
                    Table::new(&["NAME", "SIZE", "CREATED"]).rows(l.backups.iter().map(|f| {
                        vec![
                            sanitize(&f.name),
                            fmt_size(f.size),
                            format!("{} UTC", fmt_time(f.created_ms)),
                        ]
                    }));
                out.push_str(&table.render());
            }
        }
    }
    out
}

/// `backup now`: the backup written.
pub fn created(b: &BackupEntry) -> String {
    format!(
        "backup {} written ({}, encrypted to {})\n",
        sanitize(&b.name),
        fmt_size(b.size),
        sanitize(&b.encrypted_to)
    )
}

/// An upload's progress, and its name on the box once finished.
pub fn upload(u: &UploadState) -> String {
    format!(
        "upload {}: {} bytes{}\n",
        u.id,
        u.received,
        u.name
            .as_ref()
            .map(|n| format!(", stored as {}", sanitize(n)))
            .unwrap_or_default()
    )
}

/// `backup passphrase status`: where the key comes from (never the key itself).
pub fn info(i: &BackupInfo) -> String {
    format!(
        "backup key: {}\nstored passphrase: {}\nSFTP client key: {}\n",
        sanitize(&i.key),
        if i.passphrase_stored {
            "set"
        } else {
            "not set"
        },
        i.sftp_public_key
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(|| "none yet (made by `backup key` or the first upload)".to_owned())
    )
}
