//! Backups the admin drives from here: the file and key a command names, `backup restore`
//! (uploading standard input in checked chunks for `restore -`, then waiting until outpostd
//! runs on the restored data), `backup fetch`, and the restore offered at the first console
//! login of a box that was never configured.

use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest;

use firmware::admin::proto::{BackupCommand, BackupKey, Command, Reply, SecretText};
use firmware::admin::Client;
use firmware::backup::crypto::{header_kind_of, Decryption, HeaderKind};
use firmware::backup::secret;
use firmware::backup::upload::CHUNK;
use firmware::console;

use crate::cli::{BackupKeyArgs, BackupTrustArgs};
use crate::failure::Failure;
use crate::input::read_identity;
use crate::link::Link;
use crate::render::{fmt_size, restore_staged, sanitize, show, to_json};

/// The file a backup command names, as the daemon must see it (absolute when it exists
/// here; a bare name is looked up in the backup directory), and the key to send.
pub fn backup_target(
    file: &Path,
    key: &BackupKeyArgs,
) -> Result<(String, Option<BackupKey>), Failure> {
    let text = file.to_string_lossy();
    let file = if text.contains('/') || file.exists() {
        std::path::absolute(file)
            .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?
            .to_string_lossy()
            .into_owned()
    } else {
        text.into_owned()
    };
    let key = if let Some(identity) = &key.identity {
        Some(read_identity(identity)?)
    } else if key.passphrase {
        let p = console::read_secret("Backup passphrase: ")
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase: {e}")))?
            .ok_or_else(|| Failure::Usage("no passphrase given".to_owned()))?;
        Decryption::passphrase(&p).map_err(|e| Failure::Usage(e.to_string()))?;
        Some(BackupKey::Passphrase(p))
    } else {
        None
    };
    Ok((file, key))
}

/// After the console login (at a terminal) of a box that was never configured: offers to
/// restore it from a backup on an SFTP or HTTPS server. `None` when not offered or declined (the shell
/// follows); otherwise how the restore ended (the login ends: the console starts a new
/// one, with the restored box's admin password).
pub fn restore_offer(socket: &Path) -> Option<Result<(), Failure>> {
    // Interactive only: a login scripted through a pipe goes straight to the shell.
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return None;
    }
    let mut link = Link::connect(socket).ok()?;
    let Ok(Reply::BackupInfo(info)) = link.send(&Command::Backup(BackupCommand::Info)) else {
        return None;
    };
    if !info.never_configured {
        return None;
    }
    let ask = |question: &str| -> Option<String> {
        eprint!("{question}");
        let mut line = String::new();
        match std::io::stdin().lock().take(4096).read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_owned()),
        }
    };
    let yes = |answer: Option<String>| {
        answer.is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes"))
    };
    eprintln!("\nThis box has never been configured.");
    if !yes(ask("Restore it from a backup (a replacement box)? [y/N] ")) {
        return None;
    }
    loop {
        match console_restore(&mut link, socket, &ask) {
            Ok(true) => return Some(Ok(())),
            Ok(false) => return None,
            Err(message) => {
                eprintln!("outpostctl: {}", sanitize(&message));
                if !yes(ask("Try again? [y/N] ")) {
                    return None;
                }
            }
        }
    }
}

/// One go of the console's restore: key, location, host key, passphrase, fetch, restore,
/// wait. `Ok(false)`: the admin stopped.
fn console_restore(
    link: &mut Link,
    socket: &Path,
    ask: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, String> {
    let mut request = |cmd: BackupCommand| -> Result<Reply, String> {
        match link.send(&Command::Backup(cmd)) {
            Ok(Reply::Error { message }) => Err(message),
            Ok(r) => Ok(r),
            Err(e) => Err(format!("talking to outpostd: {e}")),
        }
    };
    if let Reply::Done { message } = request(BackupCommand::Key)? {
        eprintln!(
            "For an SFTP server, this box logs in with this key; put the line in \
             ~/.ssh/authorized_keys of the backup account there:\n\n{}\n",
            sanitize(&message)
        );
    }
    let Some(url) =
        ask("Backup location (sftp://user@host[:port]/path/file or https://host/path/file): ")
            .filter(|u| !u.is_empty())
    else {
        return Ok(false);
    };
    let host_key = if url.starts_with("sftp://") {
        let Reply::HostKey { line, fingerprint } = request(BackupCommand::FetchUrl {
            url: url.clone(),
            host_key: None,
        })?
        else {
            return Err("no host key from the server".to_owned());
        };
        eprintln!(
            "The server presents this host key:\n  {}\n  {}",
            sanitize(&line),
            sanitize(&fingerprint)
        );
        let answer = ask("Is this the key of your backup server? [y/N] ");
        if !answer.is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes")) {
            return Err("host key not confirmed; nothing was downloaded".to_owned());
        }
        Some(line)
    } else {
        None
    };
    let passphrase = console::read_secret("Backup passphrase: ")
        .map_err(|e| format!("cannot read the passphrase: {e}"))?
        .ok_or("no passphrase given")?;
    secret::check(&passphrase).map_err(|e| e.to_string())?;
    request(BackupCommand::PassphraseSet {
        passphrase: SecretText(passphrase),
    })?;
    eprintln!("downloading and checking the backup...");
    let Reply::BackupFetched(fetched) = request(BackupCommand::FetchUrl { url, host_key })? else {
        return Err("unexpected answer to the download".to_owned());
    };
    if !fetched.verified {
        return Err(format!(
            "{} was downloaded but does not open with this passphrase{}",
            fetched.name,
            if fetched.encrypted_to == "passphrase" {
                ""
            } else {
                " (it is encrypted to a recipient key: restore it with `backup restore NAME --identity FILE` from a machine with the identity)"
            }
        ));
    }
    // The backup's signer: a replacement box does not know the old box's key yet.
    let answer = ask(
        "Signing key of the box that made the backup (the outpost-backup-ed25519 line `backup key` \
         printed there; empty: only keys this box trusts; `unsigned`: do not check who made it): ",
    )
    .unwrap_or_default();
    let (signer, trust_unsigned) = match answer.as_str() {
        "" => (None, false),
        "unsigned" => {
            eprintln!("warning: the backup is restored without checking who made it; this is logged and raised as an alert");
            (None, true)
        }
        line => (Some(line.to_owned()), false),
    };
    let Reply::RestoreStaged(staged) = request(BackupCommand::Restore {
        file: fetched.name,
        key: None,
        signer,
        trust_unsigned,
    })?
    else {
        return Err("unexpected answer to the restore".to_owned());
    };
    eprint!("{}", restore_staged(&staged));
    wait_for_restore(socket, &staged.id, false).map_err(|f| match f {
        Failure::Refused(m) | Failure::Usage(m) | Failure::Unreachable(m) => m,
        Failure::Shown(_) => "the restore failed".to_owned(),
    })?;
    eprintln!("Log in again with the admin password of the restored box.");
    Ok(true)
}

/// How long `backup restore` waits for outpostd to run on the restored data.
const RESTORE_WAIT: Duration = Duration::from_secs(300);

/// `backup restore FILE|-`: upload (for `-`), restore, report, wait for the restart.
pub fn backup_restore(
    socket: &Path,
    file: &Path,
    key: &BackupKeyArgs,
    trust: &BackupTrustArgs,
    wait: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut link = Link::connect(socket)?;
    if let Some(line) = &trust.signer {
        // Before anything is uploaded: a mistyped key is named at once.
        firmware::backup::signing::PublicKey::parse(line)
            .map_err(|e| Failure::Usage(format!("--signer: {e}")))?;
    }
    if trust.trust_unsigned {
        eprintln!(
            "outpostctl: warning: --trust-unsigned: a backup that no trusted key signed will be restored \
             (its SSH keys and admin password replace this box's); this is logged and raised as an alert"
        );
    }
    let (name, key) = if file.as_os_str() == "-" {
        if key.passphrase {
            return Err(Failure::Usage(
                "with `restore -` standard input is the backup, so it cannot also carry the passphrase: \
                 store it first with `backup passphrase set` (the restore then uses it), or give --identity FILE \
                 for a backup encrypted to a recipient key"
                    .to_owned(),
            ));
        }
        let identity = match &key.identity {
            Some(p) if p.as_os_str() == "-" => {
                return Err(Failure::Usage(
                    "with `restore -` standard input is the backup: give --identity as a file"
                        .to_owned(),
                ))
            }
            Some(p) => Some(read_identity(p)?),
            None => None,
        };
        let name = upload_stdin(&mut link, identity.is_some())?;
        (name, identity)
    } else {
        backup_target(file, key)?
    };
    let reply = link.request(&Command::Backup(BackupCommand::Restore {
        file: name.clone(),
        key,
        signer: trust.signer.clone(),
        trust_unsigned: trust.trust_unsigned,
    }))?;
    let staged = match reply {
        Reply::RestoreStaged(r) => r,
        other => return show(&other, json, None),
    };
    drop(link);
    if json {
        println!("{}", to_json(&staged));
    } else {
        print!("{}", restore_staged(&staged));
    }
    if !wait {
        if !json {
            println!("outpostd restarts now to apply it");
        }
        return Ok(());
    }
    wait_for_restore(socket, &staged.id, json)
}

/// Waits (at most [`RESTORE_WAIT`]) until outpostd answers again and reports restore `id`.
fn wait_for_restore(socket: &Path, id: &str, json: bool) -> Result<(), Failure> {
    eprintln!("outpostd restarts to apply it; waiting until it runs on the restored data...");
    let deadline = std::time::Instant::now() + RESTORE_WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let status = Client::connect(socket, Duration::from_secs(10))
            .ok()
            .and_then(|mut c| c.request(&Command::Status).ok());
        if let Some(Reply::Status(s)) = status {
            if s.last_restore.as_ref().is_some_and(|r| r.id == id) {
                if !json {
                    println!(
                        "outpostd runs on the restored data (restore {id}): {} extensions, {} call records",
                        s.extensions, s.cdrs
                    );
                }
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(Failure::Refused(format!(
                "the restore is staged, but outpostd did not come back on the restored data within {} s; \
                 it is applied when outpostd starts (start it if nothing supervises it)",
                RESTORE_WAIT.as_secs()
            )));
        }
    }
}

/// Sends standard input to the daemon in chunks; returns the backup's name on the box.
/// The age header (the first bytes) is checked first, so a missing key is reported before
/// anything is sent.
fn upload_stdin(link: &mut Link, have_identity: bool) -> Result<String, Failure> {
    let mut stdin = std::io::stdin().lock();
    let mut read_chunk = |buf: &mut Vec<u8>| -> Result<(), Failure> {
        buf.clear();
        (&mut stdin)
            .take(CHUNK as u64)
            .read_to_end(buf)
            .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
        Ok(())
    };
    let mut buf = Vec::with_capacity(CHUNK);
    read_chunk(&mut buf)?;
    if buf.is_empty() {
        return Err(Failure::Usage(
            "standard input is empty: send the backup file (ssh admin@box backup restore - < FILE)"
                .to_owned(),
        ));
    }
    let kind = header_kind_of(buf.as_slice()).map_err(|e| {
        Failure::Usage(format!(
            "standard input is not an encrypted Outpost backup (age header: {e})"
        ))
    })?;
    match (kind, have_identity) {
        (HeaderKind::Passphrase, true) => {
            return Err(Failure::Usage("this backup is encrypted with a passphrase, not to a recipient key: drop --identity; the box's stored passphrase is used (`backup passphrase set`)".to_owned()))
        }
        (HeaderKind::Recipient, false) => {
            return Err(Failure::Usage("this backup is encrypted to an age recipient key (X25519): give its identity file with --identity FILE (only where outpostctl runs on the box), or restore it by name after `backup fetch`".to_owned()))
        }
        (HeaderKind::Passphrase, false) => {
            let info = link
                .request(&Command::Backup(BackupCommand::Info))?;
            if let Reply::BackupInfo(i) = &info {
                if !i.passphrase_stored && !i.key.starts_with("passphrase file") {
                    return Err(Failure::Refused("this backup is encrypted with a passphrase and the box has none: standard input carries the backup, so store the passphrase first with `backup passphrase set` (ssh admin@box backup passphrase set), then restore again".to_owned()));
                }
            }
        }
        (HeaderKind::Recipient, true) => {}
    }
    let id = match link.request(&Command::Backup(BackupCommand::UploadBegin { name: None }))? {
        Reply::BackupUpload(u) => u.id,
        Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
        other => return Err(Failure::unexpected(&other)),
    };
    let mut hasher = sha2::Sha256::new();
    let mut offset = 0u64;
    let result = (|| -> Result<String, Failure> {
        while !buf.is_empty() {
            hasher.update(&buf);
            let data = base64::engine::general_purpose::STANDARD.encode(&buf);
            match link.request(&Command::Backup(BackupCommand::UploadChunk {
                id: id.clone(),
                offset,
                data,
            }))? {
                Reply::BackupUpload(u) => offset = u.received,
                Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
                other => return Err(Failure::unexpected(&other)),
            }
            read_chunk(&mut buf)?;
        }
        match link.request(&Command::Backup(BackupCommand::UploadFinish {
            id: id.clone(),
            size: offset,
            sha256: hex::encode(hasher.clone().finalize()),
        }))? {
            Reply::BackupUpload(u) => u
                .name
                .ok_or_else(|| Failure::Refused("the upload has no name".to_owned())),
            Reply::Error { message } => Err(Failure::Refused(sanitize(&message))),
            other => Err(Failure::unexpected(&other)),
        }
    })();
    match result {
        Ok(name) => {
            eprintln!("uploaded {offset} bytes as {}", sanitize(&name));
            Ok(name)
        }
        Err(e) => {
            let _ = link.request(&Command::Backup(BackupCommand::UploadAbort { id }));
            Err(e)
        }
    }
}

/// `backup fetch [NAME] [--target T]`: prints the local name on standard output.
pub fn backup_fetch(
    socket: &Path,
    name: Option<String>,
    target: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let mut link = Link::connect(socket)?;
    let reply = link.request(&Command::Backup(BackupCommand::Fetch { name, target }))?;
    if let (Reply::BackupFetched(f), false) = (&reply, json) {
        eprintln!(
            "{} {} from {} ({}, encrypted to {}; {}); restore it with: backup restore {}",
            if f.already_here {
                "already here:"
            } else {
                "fetched"
            },
            sanitize(&f.name),
            sanitize(&f.source),
            fmt_size(f.size),
            f.encrypted_to,
            if f.verified {
                "decrypted and checked with the box's passphrase"
            } else {
                "its header was checked; the box has no key to check more"
            },
            sanitize(&f.name)
        );
    }
    show(&reply, json, None)
}
