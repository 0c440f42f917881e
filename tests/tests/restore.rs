//! Restoring onto a replacement box end to end, with the real daemon: a box is configured,
//! backed up with the passphrase it keeps (`backup passphrase set`), wiped like a new box
//! (fresh data directory: new SSH host key, new SFTP key, no extensions) and restored
//!
//! - from standard input through the SSH forced command (`outpostctl ssh-session` with
//!   `SSH_ORIGINAL_COMMAND="backup restore -"`, exactly what dropbear runs),
//! - from a real OpenSSH SFTP server (`backup list --remote`, `backup fetch`, `backup
//!   restore NAME`),
//! - at the serial console of a never-configured box (`outpostctl login` over a pty).
//!
//! The new box trusts box A's backups once told A's signing key: `[backup] trusted_keys`
//! (over SSH), `--signer` (fetch and restore by name) or the console's question.
//!
//! `outpostd` exits to apply a staged restore; the test respawns it the way busybox init
//! does on the box ([`Daemon::respawn_if_exited`]) while `backup restore` waits, so the
//! restore returns only once the daemon runs on the restored data.
//!
//! The SFTP tests REQUIRE root, `sshd` and the OpenSSH client (tests/run-all installs
//! them); sshd listens on 127.0.0.1 at a free port with a throw-away host key.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{bin, eventually, free_port, require_root, run_with_timeout, Daemon};
use outpost_tests::{CmdOutput, DaemonConfig};

const PASSPHRASE: &str = "office passphrase 2024";
const ADMIN_PASSWORD: &str = "console-password-A";
/// Longest a restore (upload, check, restart) may take in these tests.
const RESTORE_LIMIT: Duration = Duration::from_secs(180);

/// outpostctl against `daemon` with `input` on standard input and extra environment.
fn ctl_with(daemon: &Daemon, args: &[&str], input: &[u8], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(bin("outpostctl"));
    cmd.env("OUTPOST_SOCKET", daemon.socket())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn outpostctl");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let input = input.to_vec();
    // A writer thread: the child reads while the test respawns the daemon.
    thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    child
}

/// Waits for `child`, respawning the daemon whenever it exits (init's job on the box).
fn finish_supervised(daemon: &mut Daemon, mut child: Child, limit: Duration) -> CmdOutput {
    let deadline = Instant::now() + limit;
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        daemon.respawn_if_exited();
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("outpostctl did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    CmdOutput {
        code,
        stdout: reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        timed_out: false,
    }
}

/// Runs outpostctl with `input` and waits (no restart involved).
fn ctl_input(daemon: &Daemon, args: &[&str], input: &[u8]) -> CmdOutput {
    let mut child = ctl_with(daemon, args, input, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "outpostctl {args:?} hangs");
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Box A: two extensions, an admin SSH key, a console password, the passphrase stored.
fn configure_box_a(daemon: &Daemon, keys_dir: &Path) {
    let out = ctl_input(
        daemon,
        &["backup", "passphrase", "set"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stdout.contains(PASSPHRASE) && !out.stderr.contains(PASSPHRASE));
    daemon.add_extension("100", "restore-secret-100");
    daemon.add_extension("200", "restore-secret-200");
    let admin_key = keypair(&keys_dir.join("admin_ed25519"));
    let out = ctl_input(daemon, &["ssh", "keys", "add", "-"], admin_key.as_bytes());
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = ctl_input(
        daemon,
        &["admin", "passwd"],
        format!("{ADMIN_PASSWORD}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
}

/// Makes a backup through the daemon; returns its path.
fn backup_now(daemon: &Daemon) -> PathBuf {
    let made = daemon.ctl_json(&["backup", "now"]);
    let name = made["name"].as_str().expect("backup name").to_owned();
    daemon.data_dir().join("backups").join(name)
}

/// Turns the box into a new one: stopped, its data directory deleted, started again.
fn wipe(daemon: &mut Daemon) {
    daemon.stop();
    fs::remove_dir_all(daemon.data_dir()).expect("wipe the data dir");
    daemon.restart();
}

fn keypair(path: &Path) -> String {
    let out = run_with_timeout(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(path),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "ssh-keygen failed: {out:?}");
    fs::read_to_string(format!("{}.pub", path.display()))
        .expect("public key")
        .trim()
        .to_owned()
}

/// `config` with `line` added to its `[backup]` section (made when there is none).
fn with_backup_key(config: &str, line: &str) -> String {
    if config.lines().any(|l| l.trim() == "[backup]") {
        config.replacen("[backup]\n", &format!("[backup]\n{line}\n"), 1)
    } else {
        format!("[backup]\n{line}\n\n{config}")
    }
}

/// The first two words of an OpenSSH public key line (type and key, no comment).
fn key_of(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn restore_from_stdin_through_the_ssh_forced_command_reports_and_returns_on_the_restored_data() {
    let keys = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::start();
    configure_box_a(&daemon, keys.path());

    // The passphrase is kept in the data directory, 0600, never in the configuration.
    let stored = daemon.data_dir().join("backup/passphrase");
    assert_eq!(mode(&stored), 0o600);
    assert!(!daemon.ctl_ok(&["config", "show"]).contains(PASSPHRASE));
    let status = daemon.ctl_ok(&["backup", "passphrase", "status"]);
    assert!(
        status.contains("stored passphrase: set") && !status.contains(PASSPHRASE),
        "{status}"
    );
    let key_a = daemon.ctl_ok(&["backup", "key", "--sftp"]);
    assert!(key_a.starts_with("ssh-ed25519 "), "{key_a}");
    assert_eq!(key_a.trim().lines().count(), 1, "one OpenSSH line: {key_a}");
    // `backup key` shows both: the SFTP line, then the signing key the office keeps.
    let both = daemon.ctl_ok(&["backup", "key"]);
    let lines: Vec<&str> = both.lines().collect();
    assert_eq!(lines.len(), 2, "{both}");
    assert_eq!(lines[0].trim(), key_a.trim());
    assert!(
        lines[1].starts_with("outpost-backup-ed25519 ") && lines[1].contains(" SHA256:"),
        "{both}"
    );
    let signer_a = lines[1].to_owned();

    // The SSH host key dropbear made (SSH is off in this test: written as it would be).
    let host_key_path = daemon.data_dir().join("ssh/dropbear_ed25519_host_key");
    fs::create_dir_all(host_key_path.parent().expect("dir")).expect("ssh dir");
    fs::write(&host_key_path, b"box A's host key").expect("host key");
    let file = backup_now(&daemon);
    let listed = daemon.ctl_json(&["backup", "list"]);
    assert_eq!(listed["backups"][0]["verified"], true, "{listed}");
    assert_eq!(listed["passphrase_stored"], true, "{listed}");
    let bytes = fs::read(&file).expect("read the backup");

    wipe(&mut daemon);
    assert_eq!(daemon.ctl_json(&["status"])["extensions"], 0);
    let key_b = daemon.ctl_ok(&["backup", "key", "--sftp"]);
    assert_ne!(key_of(&key_a), key_of(&key_b), "a new box has its own key");

    // Without a passphrase on the box, `restore -` says what to do before sending anything.
    let session = [("SSH_ORIGINAL_COMMAND", "backup restore -")];
    let child = ctl_with(&daemon, &["ssh-session"], &bytes, &session);
    let out = finish_supervised(&mut daemon, child, RESTORE_LIMIT);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("backup passphrase set"), "{out:?}");
    assert!(
        !daemon.data_dir().join("backups").exists()
            || fs::read_dir(daemon.data_dir().join("backups"))
                .expect("dir")
                .next()
                .is_none(),
        "nothing was uploaded"
    );
    // --identity cannot come with `-` over SSH (standard input is the backup).
    let child = ctl_with(
        &daemon,
        &["ssh-session"],
        &bytes,
        &[(
            "SSH_ORIGINAL_COMMAND",
            "backup restore - --identity /root/id",
        )],
    );
    let out = finish_supervised(&mut daemon, child, RESTORE_LIMIT);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("standard input is the backup"),
        "{out:?}"
    );

    let out = ctl_input(
        &daemon,
        &["backup", "passphrase", "set"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    // What an upload cut by a restart leaves: deleted when the daemon starts again.
    let backups = daemon.data_dir().join("backups");
    fs::create_dir_all(&backups).expect("backups dir");
    let stale = backups.join("outpost-uploaded-20200101T000000Z.backup.partial");
    fs::write(&stale, b"age-encryption.org/v1\n").expect("stale partial");
    // The new box does not know A's signing key yet: refused, nothing restored.
    let child = ctl_with(&daemon, &["ssh-session"], &bytes, &session);
    let out = finish_supervised(&mut daemon, child, RESTORE_LIMIT);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("not authenticated") && out.stderr.contains(&key_of(&signer_a)),
        "{out:?}"
    );
    assert_eq!(daemon.ctl_json(&["status"])["extensions"], 0);
    // The office adds A's key to the new box's configuration.
    let current = daemon.ctl_ok(&["config", "show"]);
    let trusting = with_backup_key(
        &current,
        &format!("trusted_keys = [\"{}\"]", signer_a.trim()),
    );
    let out = ctl_input(&daemon, &["config", "apply", "-"], trusting.as_bytes());
    assert_eq!(out.code, Some(0), "{out:?}");
    let started = Instant::now();
    let child = ctl_with(&daemon, &["ssh-session"], &bytes, &session);
    let out = finish_supervised(&mut daemon, child, RESTORE_LIMIT);
    assert_eq!(out.code, Some(0), "{out:?}\nlog:\n{}", daemon.log_text());
    assert!(
        out.stdout.contains("a key in backup.trusted_keys"),
        "{out:?}"
    );
    eprintln!("restore - took {:?}", started.elapsed());
    for expected in [
        "2 extensions",
        "1 SSH keys",
        "the SFTP client key",
        "console admin password is now the one of",
        "SSH host key is now the one of",
        "ssh-keygen -R",
        "runs on the restored data",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} in {out:?}");
    }
    assert!(out.stderr.contains("uploaded"), "{out:?}");
    assert!(
        eventually(Duration::from_secs(5), || (!stale.exists()).then_some(())).is_some(),
        "the interrupted upload is removed at the restart"
    );

    // Right after: the daemon runs on the restored data.
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["extensions"], 2, "{status}");
    assert!(status["last_restore"]["id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(status["last_restore"]["contents"]["extensions"], 2);
    let exts: Vec<String> = daemon
        .ctl_json(&["ext", "list"])
        .as_array()
        .expect("ext list")
        .iter()
        .map(|e| e["ext"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(exts, ["100", "200"]);
    // The SFTP key and the SSH host key are box A's again; the console password too.
    assert_eq!(
        key_of(&daemon.ctl_ok(&["backup", "key", "--sftp"])),
        key_of(&key_a),
        "the SFTP client key travels in the backup"
    );
    assert_eq!(
        fs::read(&host_key_path).expect("host key"),
        b"box A's host key",
        "the SSH host key is box A's"
    );
    let out = ctl_input(&daemon, &["--json", "backup", "passphrase", "status"], b"");
    assert_eq!(out.code, Some(0), "{out:?}");

    // The uploaded file is a listed, verified backup; damaged files are listed as damaged.
    let dir = daemon.data_dir().join("backups");
    fs::write(
        dir.join("outpost-cut-20240101T000000Z.backup"),
        &bytes[..bytes.len() - 100],
    )
    .expect("write");
    fs::write(dir.join("outpost-junk-20240102T000000Z.backup"), b"not age").expect("write");
    let listed = daemon.ctl_json(&["backup", "list"]);
    let entries = listed["backups"].as_array().expect("backups");
    let by_name = |prefix: &str| -> &Value {
        entries
            .iter()
            .find(|e| e["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .unwrap_or_else(|| panic!("{prefix} not listed: {listed}"))
    };
    assert_eq!(by_name("outpost-uploaded-")["verified"], true, "{listed}");
    assert!(
        by_name("outpost-uploaded-")["damaged"].is_null(),
        "{listed}"
    );
    assert!(
        by_name("outpost-cut-")["damaged"]
            .as_str()
            .is_some_and(|d| d.contains("truncated")),
        "{listed}"
    );
    assert!(
        by_name("outpost-junk-")["damaged"]
            .as_str()
            .is_some_and(|d| d.contains("not an age file")),
        "{listed}"
    );
    let text = daemon.ctl_ok(&["backup", "list"]);
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(text.contains("2 damaged backup(s)"), "{text}");

    // An identity for a passphrase backup is named as the wrong kind of key.
    let uploaded = by_name("outpost-uploaded-")["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let identity = age_identity(keys.path());
    let out = daemon.ctl(&["backup", "verify", &uploaded, "--identity", &identity]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("encrypted with a passphrase, not to a recipient key"),
        "{out:?}"
    );
}

/// A real age identity file (via the age crate, as `age-keygen` writes it).
fn age_identity(dir: &Path) -> String {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let path = dir.join("real-id.txt");
    fs::write(&path, format!("{}\n", id.to_string().expose_secret())).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path.display().to_string()
}

#[test]
fn credential_files_outside_the_data_dir_or_missing_are_refused_by_config_apply() {
    let daemon = Daemon::start();
    let current = daemon.ctl_ok(&["config", "show"]);
    let data = fs::canonicalize(daemon.data_dir()).expect("data dir");
    let apply = |text: &str| ctl_input(&daemon, &["config", "apply", "-"], text.as_bytes());
    let https = |password_file: &Path| {
        format!(
            "{current}\n[[backup.targets]]\nname = \"dav\"\nkind = \"https\"\nurl = \"https://attacker.example/b/\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            password_file.display()
        )
    };
    // A private file elsewhere on the box (as /etc/shadow or a key would be).
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let secret = elsewhere.path().join("root-secret");
    fs::write(&secret, "the first line of a private file\n").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    // ... and a link to it from inside the data directory.
    let secrets = data.join("secrets");
    fs::create_dir_all(&secrets).expect("secrets dir");
    let link = secrets.join("dav.pass");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    for (path, reason) in [
        (secret.clone(), "is outside the data directory"),
        (link.clone(), "resolves to"),
        (secrets.join("../../x/root-secret"), "`..`"),
    ] {
        let out = apply(&https(&path));
        assert_eq!(out.code, Some(1), "{path:?}: {out:?}");
        assert!(
            out.stderr.contains("backup.targets[0].password_file") && out.stderr.contains(reason),
            "{path:?}: {out:?}"
        );
    }
    let out = apply(&format!(
        "{current}\n[backup]\npassphrase_file = \"{}\"\n",
        secret.display()
    ));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("backup.passphrase_file") && out.stderr.contains("outside"),
        "{out:?}"
    );
    let out = apply(&format!(
        "{current}\n[[backup.targets]]\nname = \"nas\"\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nuser = \"u\"\npath = \"/b\"\nhost_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\nidentity = \"{}\"\n",
        secret.display()
    ));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("backup.targets[0].identity") && out.stderr.contains("outside"),
        "{out:?}"
    );
    // Under the data directory: missing files are named, present ones accepted.
    let out = apply(&format!(
        "{current}\n[backup]\npassphrase_file = \"{}\"\n",
        secrets.join("backup.pass").display()
    ));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("backup.passphrase_file"), "{out:?}");
    assert!(out.stderr.contains("does not exist on the box"), "{out:?}");
    fs::remove_file(&link).expect("unlink");
    let out = apply(&https(&link));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("does not exist on the box"), "{out:?}");
    fs::write(&link, "dav-password\n").expect("write");
    fs::set_permissions(&link, fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = apply(&https(&link));
    assert_eq!(out.code, Some(0), "{out:?}");
    // A schedule without any key is refused; with the stored passphrase it is accepted.
    let scheduled = format!("{current}\n[backup]\nschedule = \"daily 02:30\"\n");
    let out = ctl_input(&daemon, &["config", "apply", "-"], scheduled.as_bytes());
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("backup passphrase set"), "{out:?}");
    let out = ctl_input(
        &daemon,
        &["backup", "passphrase", "set"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = ctl_input(&daemon, &["config", "apply", "-"], scheduled.as_bytes());
    assert_eq!(out.code, Some(0), "{out:?}");
    let listed = daemon.ctl_json(&["backup", "list"]);
    assert_eq!(
        listed["key"], "the passphrase stored on the box",
        "{listed}"
    );
}

/// An OpenSSH server on 127.0.0.1 at a free port, for the box's off-site backups.
struct SftpServer {
    sshd: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    host_key: String,
}

impl SftpServer {
    fn start() -> SftpServer {
        require_root("the SFTP restore tests");
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("outpost-restore-sftp-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("remote")).expect("remote dir");
        let host_key = keypair(&d.join("host_ed25519"));
        let port = free_port();
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             Subsystem sftp internal-sftp\n",
            hk = d.join("host_ed25519").display(),
            ak = d.join("authorized_keys").display(),
        );
        fs::write(d.join("sshd_config"), config).expect("sshd_config");
        fs::write(d.join("authorized_keys"), "").expect("authorized_keys");
        let log = d.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("spawn sshd");
        let mut server = SftpServer {
            sshd: Some(child),
            dir,
            port,
            host_key,
        };
        let listening = eventually(Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("Server listening on"))
        });
        assert!(
            listening.is_some(),
            "sshd did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        server.sshd.as_mut().expect("sshd");
        server
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    /// Lets exactly this client key in.
    fn authorize(&self, line: &str) {
        fs::write(
            self.dir.path().join("authorized_keys"),
            format!("{}\n", line.trim()),
        )
        .expect("authorize");
    }

    fn target_toml(&self) -> String {
        format!(
            "[[backup.targets]]\nname = \"offsite\"\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\npath = \"{}\"\nhost_key = \"{}\"\n",
            self.port,
            self.remote().display(),
            self.host_key
        )
    }

    fn remote_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.remote())
            .expect("remote dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Box A backs up to the server and is replaced by a fresh box; returns the daemon (now
/// the fresh box), the backup's name and A's signing key line.
fn back_up_offsite_then_replace(
    server: &SftpServer,
) -> (Daemon, tempfile::TempDir, String, String) {
    let keys = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&server.target_toml()));
    configure_box_a(&daemon, keys.path());
    let key_a = daemon.ctl_ok(&["backup", "key", "--sftp"]);
    let signer_a = daemon
        .ctl_ok(&["backup", "key", "--signing"])
        .trim()
        .to_owned();
    server.authorize(&key_a);
    let file = backup_now(&daemon);
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let uploaded = eventually(Duration::from_secs(60), || {
        server.remote_names().contains(&name).then_some(())
    });
    assert!(
        uploaded.is_some(),
        "the backup did not reach the server: {:?}\n{}",
        server.remote_names(),
        daemon.ctl_ok(&["backup", "list"])
    );
    wipe(&mut daemon);
    (daemon, keys, name, signer_a)
}

#[test]
fn fetch_and_list_remote_over_sftp_then_the_restored_box_uploads_with_its_restored_key() {
    let server = SftpServer::start();
    let (mut daemon, _keys, name, signer_a) = back_up_offsite_then_replace(&server);
    let key_a = fs::read_to_string(server.dir.path().join("authorized_keys")).expect("keys");

    // The new box's key is not authorised: listing says so, precisely.
    let listed = daemon.ctl_json(&["backup", "list", "--remote"]);
    assert!(
        listed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("authorized_keys")),
        "{listed}"
    );
    let key_b = daemon.ctl_ok(&["backup", "key", "--sftp"]);
    server.authorize(&key_b);
    let listed = daemon.ctl_json(&["backup", "list", "--remote"]);
    assert_eq!(listed[0]["target"], "offsite", "{listed}");
    assert_eq!(listed[0]["backups"][0]["name"], name.as_str(), "{listed}");
    assert!(listed[0]["backups"][0]["size"].as_u64().unwrap_or(0) > 0);
    let text = daemon.ctl_ok(&["backup", "list", "--remote"]);
    assert!(text.contains(&name), "{text}");

    // fetch (the newest) checks it with the box's passphrase and prints its local name.
    let out = ctl_input(
        &daemon,
        &["backup", "passphrase", "set"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = ctl_input(&daemon, &["backup", "fetch"], b"");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.trim(), name);
    assert!(out.stderr.contains("decrypted and checked"), "{out:?}");
    let local = daemon.data_dir().join("backups").join(&name);
    assert_eq!(
        fs::read(&local).expect("fetched"),
        fs::read(server.remote().join(&name)).expect("remote"),
        "byte for byte"
    );
    let out = ctl_input(
        &daemon,
        &["backup", "fetch", "outpost-x-20200101T000000Z.backup"],
        b"",
    );
    assert_eq!(out.code, Some(1), "{out:?}");

    let child = ctl_with(
        &daemon,
        &["backup", "restore", &name, "--signer", &signer_a],
        b"",
        &[],
    );
    let out = finish_supervised(&mut daemon, child, RESTORE_LIMIT);
    assert_eq!(out.code, Some(0), "{out:?}\nlog:\n{}", daemon.log_text());
    assert!(
        out.stdout.contains("the key given with --signer"),
        "{out:?}"
    );
    assert_eq!(daemon.ctl_json(&["status"])["extensions"], 2);

    // Only box A's key is authorised again: the restored box uploads at once with it.
    server.authorize(&key_a);
    let again = backup_now(&daemon);
    let again = again
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let uploaded = eventually(Duration::from_secs(60), || {
        server.remote_names().contains(&again).then_some(())
    });
    assert!(
        uploaded.is_some(),
        "the restored box could not upload: {}",
        daemon.ctl_ok(&["backup", "list"])
    );
}

/// A pty running `outpostctl login` as the console does (its controlling terminal).
struct Console {
    child: Child,
    master: fs::File,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    fn login(daemon: &Daemon) -> Console {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave = fs::File::from(pty.slave);
        let child = Command::new("setsid")
            .arg("--ctty")
            .arg(bin("outpostctl"))
            .arg("--socket")
            .arg(daemon.socket())
            .arg("login")
            .stdin(Stdio::from(slave.try_clone().expect("clone")))
            .stdout(Stdio::from(slave.try_clone().expect("clone")))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("spawn outpostctl login");
        let master = fs::File::from(pty.master);
        let mut reader = master.try_clone().expect("clone master");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        });
        Console {
            child,
            master,
            seen,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().expect("lock")).into_owned()
    }

    /// Waits until the output holds `needle` `times` times.
    fn expect(&self, needle: &str, times: usize, limit: Duration) {
        let found = eventually(limit, || {
            (self.text().matches(needle).count() >= times).then_some(())
        });
        assert!(
            found.is_some(),
            "console: no {needle:?} (x{times}) in:\n{}",
            self.text()
        );
    }

    fn type_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\r").as_bytes())
            .expect("type");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn console_login_ignores_empty_lines_and_never_echoes_keys_typed_during_its_pause() {
    let daemon = Daemon::start();
    let out = ctl_input(
        &daemon,
        &["admin", "passwd"],
        format!("{ADMIN_PASSWORD}\n").as_bytes(),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    daemon.add_extension("100", "restore-secret-100");

    // Enter alone twice, two wrong passwords, then the right one: still logged in.
    let mut console = Console::login(&daemon);
    let wait = Duration::from_secs(20);
    console.expect("Password: ", 1, wait);
    console.type_line("");
    console.expect("Password: ", 2, wait);
    console.type_line("");
    console.expect("Password: ", 3, wait);
    console.type_line("wrong-password-1");
    console.expect("Wrong password.", 1, wait);
    console.type_line("wrong-password-2");
    console.expect("Wrong password.", 2, wait);
    console.type_line(ADMIN_PASSWORD);
    console.expect("outpost> ", 1, wait);
    console.type_line("exit");
    drop(console);

    // Three wrong passwords, then keys typed during the pause: never shown.
    let mut console = Console::login(&daemon);
    for i in 1..=3 {
        console.expect("Password: ", i, wait);
        console.type_line(&format!("wrong-{i}"));
    }
    console.expect("Login incorrect.", 1, wait);
    thread::sleep(Duration::from_millis(500));
    console.type_line("typed-during-the-pause");
    let ended = eventually(Duration::from_secs(15), || {
        console.child.try_wait().ok().flatten()
    });
    assert!(ended.is_some(), "login did not end after its pause");
    // And while the console restarts the login.
    console.type_line("typed-while-restarting");
    thread::sleep(Duration::from_millis(300));
    let text = console.text();
    assert!(!text.contains("typed-during-the-pause"), "echoed: {text}");
    assert!(!text.contains("typed-while-restarting"), "echoed: {text}");
    assert!(!text.contains("wrong-"), "passwords echoed: {text}");
}

#[test]
fn a_never_configured_box_offers_a_restore_at_its_first_console_login() {
    let server = SftpServer::start();
    let (mut daemon, _keys, name, signer_a) = back_up_offsite_then_replace(&server);
    // The fresh box: its own console password, as first-boot sets it.
    let out = ctl_input(&daemon, &["admin", "passwd"], b"fresh-box-password\n");
    assert_eq!(out.code, Some(0), "{out:?}");
    let info = daemon.ctl_json(&["backup", "passphrase", "status"]);
    assert_eq!(info["never_configured"], true, "{info}");

    let mut console = Console::login(&daemon);
    let wait = Duration::from_secs(30);
    console.expect("Password: ", 1, wait);
    console.type_line("fresh-box-password");
    console.expect("never been configured", 1, wait);
    console.type_line("y");
    console.expect("Backup location", 1, wait);
    // The admin installs the shown key on the server.
    let shown = console.text();
    let key_line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("ssh-ed25519 "))
        .expect("the SFTP key is shown")
        .trim()
        .to_owned();
    server.authorize(&key_line);
    console.type_line(&format!(
        "sftp://root@127.0.0.1:{}{}/{name}",
        server.port,
        server.remote().display()
    ));
    console.expect("Is this the key of your backup server?", 1, wait);
    let host_key_b64 = server.host_key.split_whitespace().nth(1).expect("key");
    assert!(console.text().contains(host_key_b64), "{}", console.text());
    console.type_line("y");
    console.expect("Backup passphrase: ", 1, wait);
    console.type_line(PASSPHRASE);
    console.expect(
        "Signing key of the box that made the backup",
        1,
        RESTORE_LIMIT,
    );
    console.type_line(&signer_a);
    let deadline = Instant::now() + RESTORE_LIMIT;
    while !console.text().contains("Log in again") {
        daemon.respawn_if_exited();
        assert!(
            Instant::now() < deadline,
            "the console restore did not finish:\n{}\nlog:\n{}",
            console.text(),
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let text = console.text();
    assert!(
        !text.contains(PASSPHRASE),
        "the passphrase was echoed: {text}"
    );
    assert!(
        text.contains("console admin password is now the one of"),
        "{text}"
    );
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(status["extensions"], 2, "{status}");
    let info = daemon.ctl_json(&["backup", "passphrase", "status"]);
    assert_eq!(info["never_configured"], false, "{info}");
}
