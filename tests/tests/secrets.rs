//! Secrets at rest: whatever umask `outpostd` is started with, everything it writes under
//! its data directory (the store, configuration revisions with a trunk password, the backup
//! key and backups) is readable by its own user only: files 0600 or stricter, directories
//! 0700 or stricter.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use outpost_tests::Daemon;

/// Every file and directory below `dir` whose mode lets the group or others in.
fn too_open(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read a data directory") {
            let path = entry.expect("directory entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let mode = meta.permissions().mode() & 0o777;
            if meta.file_type().is_symlink() {
                continue;
            }
            if mode & 0o077 != 0 {
                out.push((path.clone(), mode));
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

#[test]
fn everything_the_daemon_writes_is_private_to_its_user() {
    // The test runner's umask (typically 022) is what the daemon inherits.
    let daemon = Daemon::start();
    daemon.add_extension("201", "correct-horse-201");

    let text = daemon.ctl_json(&["config", "show"]);
    let text = text["text"].as_str().expect("config text").to_owned();
    // Credential files live under the data directory (the daemon refuses others).
    let secrets = daemon.data_dir().join("secrets");
    fs::create_dir_all(&secrets).expect("secrets dir");
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700)).expect("chmod");
    let passphrase = secrets.join("backup.pass");
    fs::write(&passphrase, "a passphrase for the backups\n").expect("write the passphrase");
    fs::set_permissions(&passphrase, fs::Permissions::from_mode(0o600)).expect("chmod");
    let candidate = daemon.dir().join("with-trunk.toml");
    fs::write(
        &candidate,
        format!(
            "{text}\n[backup]\npassphrase_file = \"{}\"\n\n\
             [[trunk]]\nname = \"provider\"\nhost = \"127.0.0.1:5999\"\n\
             username = \"4930123456\"\npassword = \"trunk-secret-4930\"\nregister = false\n\
             options_interval_secs = 0\n",
            passphrase.display()
        ),
    )
    .expect("write the candidate configuration");
    daemon.ctl_ok(&["config", "apply", candidate.to_str().expect("utf-8 path")]);
    let made = daemon.ctl_json(&["backup", "now"]);
    assert!(made["name"].as_str().is_some(), "backup now: {made}");

    let data = daemon.data_dir();
    let revisions = data.join("config");
    let holds_password = fs::read_dir(&revisions)
        .expect("the revisions directory")
        .filter_map(Result::ok)
        .any(|e| {
            fs::read_to_string(e.path())
                .map(|t| t.contains("trunk-secret-4930"))
                .unwrap_or(false)
        });
    assert!(
        holds_password,
        "the applied revision with the trunk password is in {}",
        revisions.display()
    );

    let open = too_open(data);
    assert!(
        open.is_empty(),
        "readable by group or others under {}:\n{}",
        data.display(),
        open.iter()
            .map(|(p, m)| format!("  {:o} {}", m, p.display()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let data_mode = fs::metadata(data).expect("data dir").permissions().mode() & 0o777;
    assert_eq!(data_mode & 0o077, 0, "the data directory is {data_mode:o}");
}

#[test]
fn a_store_and_revisions_an_older_firmware_left_readable_are_made_private() {
    let mut daemon = Daemon::start();
    daemon.add_extension("202", "correct-horse-202");
    daemon.stop();
    let data = daemon.data_dir().to_path_buf();
    // What a firmware without the umask left behind.
    for path in [
        data.join("outpost.redb"),
        data.join("config/rev-000001.toml"),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    }
    fs::set_permissions(data.join("config"), fs::Permissions::from_mode(0o755)).expect("chmod 755");
    daemon.restart();
    assert!(
        daemon.ctl_ok(&["ext", "list"]).contains("202"),
        "the store still opens"
    );
    let open = too_open(&data);
    assert!(open.is_empty(), "still readable by others: {open:?}");
}
