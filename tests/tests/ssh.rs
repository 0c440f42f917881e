//! Remote and console administration end to end: a real dropbear started and supervised
//! by `outpostd`, real OpenSSH clients, and `outpostctl shell` / `login` driven through a
//! stdin pipe.
//!
//! The SSH tests REQUIRE root, `ip`, `nft`, dropbear (`dropbear-bin`), the OpenSSH client
//! and util-linux's `setpriv`: they build network namespaces (a failed login from loopback
//! is never banned, so clients connect from the lab's phone and attacker namespaces) and a
//! throw-away login account. That account is not root, as on the appliance: its own uid in
//! its own group, which the daemon is told is the admin group (`--admin-group`), so its
//! sessions reach the admin socket (mode 0660) through the group and the daemon's
//! SO_PEERCRED check. Drop guards delete the account and group, stop the daemon (and with
//! it dropbear) and delete the namespaces, also when a test fails. Every wait is bounded.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    bin, eventually, json_str, require_root, run_with_timeout, CmdOutput, Daemon, FwLab, Netns,
};

/// The SSH port inside the appliance namespace.
const SSH_PORT: u16 = 2222;
/// Longest a single ssh client run may take.
const SSH_TIMEOUT: Duration = Duration::from_secs(20);

static ACCOUNT_SEQ: AtomicU32 = AtomicU32::new(0);

/// A login account for the test: its own uid and group, its home in a temp dir; deleted
/// (with the group) on drop.
struct Account {
    name: String,
    dir: tempfile::TempDir,
}

impl Account {
    fn create() -> Self {
        for tool in [
            "useradd",
            "userdel",
            "groupadd",
            "groupdel",
            "setpriv",
            "dropbear",
            "dropbearkey",
            "ssh",
            "ssh-keygen",
        ] {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file());
            assert!(
                found,
                "the SSH tests need `{tool}` (apt-get install dropbear-bin openssh-client util-linux passwd; tests/run-all does)"
            );
        }
        let n = ACCOUNT_SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("opssh{}x{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("outpost-ssh-")
            .tempdir()
            .expect("create temp dir");
        // The account's sessions start in its home, below this directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the account's directory");
        let home = dir.path().join("home");
        let out = run_with_timeout(Command::new("groupadd").arg(&name), Duration::from_secs(10));
        assert_eq!(out.code, Some(0), "groupadd {name} failed: {out:?}");
        let out = run_with_timeout(
            Command::new("useradd")
                .args(["-M", "-N", "-g", &name, "-s", "/bin/sh", "-d"])
                .arg(&home)
                .arg(&name),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(0), "useradd {name} failed: {out:?}");
        Account { name, dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Makes an ed25519 key pair `<dir>/<file>` with `comment`; returns the private key path.
    fn keypair(&self, file: &str, comment: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        let out = run_with_timeout(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&path),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(0), "ssh-keygen failed: {out:?}");
        path
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new("userdel").args(["-f", &self.name]),
            Duration::from_secs(10),
        );
        let _ = run_with_timeout(
            Command::new("groupdel").arg(&self.name),
            Duration::from_secs(10),
        );
    }
}

/// Lets other users reach the daemon's socket through its directory (traverse only), as
/// /run/outpost on the appliance: the socket's own mode and the peer check decide.
fn open_socket_dir(daemon: &Daemon) {
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the daemon's directory");
}

/// An appliance with SSH on. Field order: the daemon stops before the account and the
/// namespaces go.
struct Site {
    daemon: Daemon,
    account: Account,
    lab: FwLab,
}

fn site() -> Site {
    require_root("the SSH tests");
    let lab = FwLab::new();
    let account = Account::create();
    let toml = format!(
        "[ssh]\nenabled = true\nlisten = [\"{}:{SSH_PORT}\"]\nuser = \"{}\"\n",
        lab.appliance_ip(),
        account.name
    );
    let daemon = Daemon::start_in(
        &lab.appliance,
        lab.daemon_config()
            .with_toml(&toml)
            .with_args(&["--admin-group", &account.name]),
    );
    open_socket_dir(&daemon);
    Site {
        daemon,
        account,
        lab,
    }
}

impl Site {
    /// `ssh` from namespace `ns` with `key` (None: no key at all) and extra client options,
    /// running `remote` (None: no command).
    fn ssh(
        &self,
        ns: &Netns,
        key: Option<&Path>,
        opts: &[&str],
        remote: Option<&str>,
    ) -> CmdOutput {
        let mut cmd = self.ssh_command(ns, key, opts, remote);
        run_with_timeout(&mut cmd, SSH_TIMEOUT)
    }

    fn ssh_command(
        &self,
        ns: &Netns,
        key: Option<&Path>,
        opts: &[&str],
        remote: Option<&str>,
    ) -> Command {
        self.ssh_command_as(&self.account.name, ns, key, opts, remote)
    }

    fn ssh_command_as(
        &self,
        user: &str,
        ns: &Netns,
        key: Option<&Path>,
        opts: &[&str],
        remote: Option<&str>,
    ) -> Command {
        let mut cmd = ns.command("ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=3",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
        ]);
        match key {
            Some(k) => {
                cmd.arg("-i").arg(k);
            }
            None => {
                cmd.args(["-o", "PubkeyAuthentication=no"]);
            }
        }
        cmd.args(opts)
            .arg("-p")
            .arg(SSH_PORT.to_string())
            .arg(format!("{user}@{}", self.lab.appliance_ip()));
        if let Some(r) = remote {
            cmd.arg("--").arg(r);
        }
        cmd
    }

    /// Waits until `key` logs in from the phone and `status --json` answers.
    fn wait_ssh_ready(&self, key: &Path) -> Value {
        let mut last = None;
        let ok = eventually(Duration::from_secs(15), || {
            let out = self.ssh(&self.lab.phone, Some(key), &[], Some("status --json"));
            let v = (out.code == Some(0))
                .then(|| serde_json::from_str::<Value>(&out.stdout).ok())
                .flatten();
            last = Some(out);
            v
        });
        ok.unwrap_or_else(|| {
            panic!(
                "ssh status --json did not work within 15 s; last: {last:?}\nlog:\n{}",
                self.daemon.log_text()
            )
        })
    }

    fn add_key(&self, private: &Path) {
        let public = private.with_extension("pub");
        let out = self
            .daemon
            .ctl_ok(&["ssh", "keys", "add", public.to_str().expect("utf-8 path")]);
        assert!(out.contains("added"), "{out}");
    }
}

/// Runs `cmd` with `input` on its standard input; output captured, killed after `timeout`.
fn run_with_input(cmd: &mut Command, input: &str, timeout: Duration) -> CmdOutput {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_owned();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    let waiter = thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() >= deadline {
            outpost_tests::send_signal(pid, "KILL");
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = writer.join();
    let timed_out = Instant::now() >= deadline;
    let out = waiter
        .join()
        .expect("the waiter does not panic")
        .expect("wait for the child");
    CmdOutput {
        code: if timed_out { None } else { out.status.code() },
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out,
    }
}

/// `ssh-keygen -lf` of a public key: (fingerprint, comment).
fn keygen_fingerprint(public: &Path) -> (String, String) {
    let out = run_with_timeout(
        Command::new("ssh-keygen").arg("-lf").arg(public),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    // "256 SHA256:xxxx comment (ED25519)"
    let mut parts = out.stdout.split_whitespace();
    let fp = parts.nth(1).expect("a fingerprint").to_owned();
    let comment = parts.next().expect("a comment").to_owned();
    (fp, comment)
}

#[test]
fn ssh_runs_outpostctl_commands_and_nothing_else() {
    let site = site();
    let key = site.account.keypair("id_admin", "admin@laptop");
    site.add_key(&key);

    // The key list matches what ssh-keygen says about the key.
    let (fp, comment) = keygen_fingerprint(&key.with_extension("pub"));
    let keys = site.daemon.ctl_json(&["ssh", "keys", "list"]);
    assert_eq!(keys[0]["fingerprint"], Value::from(fp.clone()), "{keys}");
    assert_eq!(keys[0]["key_type"], "ssh-ed25519");
    assert_eq!(keys[0]["comment"], Value::from(comment));
    // The authorized_keys line forces the session command.
    let ak = std::fs::read_to_string(site.account.home().join(".ssh/authorized_keys"))
        .expect("authorized_keys written into the admin's home");
    assert!(
        ak.contains("no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"")
            && ak.contains("ssh-session\" ssh-ed25519 "),
        "{ak}"
    );

    // A script over SSH gets the daemon's JSON.
    let status = site.wait_ssh_ready(&key);
    assert_eq!(json_str(&status, "realm"), Some("outpost"), "{status}");
    assert!(status.get("version").is_some(), "{status}");
    let out = site.ssh(&site.lab.phone, Some(&key), &[], Some("fw bans --json"));
    assert_eq!(out.code, Some(0), "{out:?}");
    let bans: Value = serde_json::from_str(&out.stdout).expect("fw bans --json prints JSON");
    assert!(bans.get("bans").is_some(), "{bans}");
    // Quoting works like a shell's.
    let out = site.ssh(&site.lab.phone, Some(&key), &[], Some("'fw' \"rules\""));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("auth_failures"), "{out:?}");

    // Shell syntax is never interpreted: operators and substitutions are just words.
    let marks = site.account.dir.path().join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    for (i, attack) in [
        "status; touch {m}/a",
        "$(touch {m}/b)",
        "`touch {m}/c`",
        "status && touch {m}/d",
        "status | touch {m}/e",
        "status\ntouch {m}/f",
    ]
    .iter()
    .enumerate()
    {
        let remote = attack.replace("{m}", marks.to_str().expect("utf-8"));
        let out = site.ssh(&site.lab.phone, Some(&key), &[], Some(&remote));
        assert_ne!(out.code, Some(0), "{remote:?} succeeded: {out:?}");
        assert!(!out.timed_out, "{remote:?}: {out:?}");
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            std::fs::read_dir(&marks).expect("read marks").count(),
            0,
            "attack {i} ({remote:?}) ran a command: {out:?}"
        );
    }
    // Nested sessions and another socket are refused.
    let out = site.ssh(&site.lab.phone, Some(&key), &[], Some("ssh-session"));
    assert_eq!(out.code, Some(2), "{out:?}");
    let out = site.ssh(
        &site.lab.phone,
        Some(&key),
        &[],
        Some("--socket /tmp/other.sock status"),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--socket"), "{out:?}");

    // The session runs a fixed list of command families; `login` is not on it.
    let out = site.ssh(&site.lab.phone, Some(&key), &[], Some("login"));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("not available") && out.stderr.contains("runs only status, ext"),
        "{out:?}"
    );
    // Root never logs in, whatever keys root has: dropbear runs with -w (its log lines
    // are rate-limited by now, so its command line is the witness).
    let mut cmd = site.ssh_command_as("root", &site.lab.phone, Some(&key), &[], Some("status"));
    let out = run_with_timeout(&mut cmd, SSH_TIMEOUT);
    assert_eq!(out.code, Some(255), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    let pid = std::fs::read_to_string(site.daemon.data_dir().join("ssh/dropbear.pid"))
        .expect("dropbear's pid file");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
    assert!(
        cmdline.split(|&b| b == 0).any(|arg| arg == b"-w"),
        "dropbear runs without -w: {}",
        String::from_utf8_lossy(&cmdline)
    );

    // Files on the box are out of reach: only standard input is read.
    let out = site.ssh(
        &site.lab.phone,
        Some(&key),
        &[],
        Some("ssh keys add /etc/hostname"),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("standard input"), "{out:?}");
    let second = site.account.keypair("id_second", "second@desk");
    let public = std::fs::read_to_string(second.with_extension("pub")).expect("read key");
    let mut cmd = site.ssh_command(&site.lab.phone, Some(&key), &[], Some("ssh keys add -"));
    let out = run_with_input(&mut cmd, &public, SSH_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = site.ssh(&site.lab.phone, Some(&second), &[], Some("ssh keys list"));
    assert_eq!(
        out.code,
        Some(0),
        "the key added over SSH does not log in: {out:?}"
    );
    assert!(out.stdout.contains("second@desk"), "{out:?}");

    // No forwarding: a stdio forward (-W) is refused.
    let out = site.ssh(&site.lab.phone, Some(&key), &["-W", "127.0.0.1:22"], None);
    assert_ne!(out.code, Some(0), "port forwarding worked: {out:?}");

    // Without a command: the shell, reading the piped lines.
    let mut cmd = site.ssh_command(&site.lab.phone, Some(&key), &["-T"], None);
    let out = run_with_input(&mut cmd, "help\nstatus --json\nexit\n", SSH_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("Commands:"), "{out:?}");
    assert!(out.stdout.contains("\"realm\":\"outpost\""), "{out:?}");

    // Password logins are off.
    let out = site.ssh(
        &site.lab.phone,
        None,
        &["-o", "PreferredAuthentications=password"],
        Some("status"),
    );
    assert_eq!(out.code, Some(255), "{out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");

    // A removed key no longer logs in.
    let out = site.daemon.ctl_ok(&["ssh", "keys", "del", "admin@laptop"]);
    assert!(out.contains("removed"), "{out}");
    let out = site.ssh(&site.lab.phone, Some(&key), &[], Some("status --json"));
    assert_eq!(out.code, Some(255), "a deleted key still logs in: {out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    let keys = site.daemon.ctl_json(&["ssh", "keys", "list"]);
    let comments: Vec<&str> = keys
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|k| json_str(k, "comment"))
        .collect();
    assert_eq!(comments, ["second@desk"], "{keys}");
}

#[test]
fn failed_ssh_logins_get_the_source_banned() {
    let site = site();
    let good = site.account.keypair("id_good", "good");
    let stranger = site.account.keypair("id_stranger", "stranger");
    site.add_key(&good);
    site.wait_ssh_ready(&good);
    let attacker: IpAddr = site.lab.attacker_ip().into();

    // An unknown key from the attacker, again and again: each connection ends before
    // authenticating; rule auth_failures bans after 10.
    let mut tries = 0;
    let banned = eventually(Duration::from_secs(90), || {
        if tries < 30 {
            tries += 1;
            let out = site.ssh(&site.lab.attacker, Some(&stranger), &[], Some("status"));
            assert_ne!(out.code, Some(0), "an unknown key logged in: {out:?}");
        }
        let bans = site.daemon.ctl_json(&["fw", "bans"]);
        bans["bans"].as_array().and_then(|b| {
            b.iter()
                .find(|x| json_str(x, "addr") == Some(&attacker.to_string()))
                .cloned()
        })
    });
    let ban = banned.unwrap_or_else(|| {
        panic!(
            "{attacker} not banned after {tries} failed SSH logins; fw bans: {}\nlog:\n{}",
            site.daemon.ctl_json(&["fw", "bans"]),
            site.daemon.log_text()
        )
    });
    assert_eq!(json_str(&ban, "rule"), Some("auth_failures"), "{ban}");
    assert!(
        (10..=14).contains(&tries),
        "banned after {tries} failed logins; the rule allows 10"
    );

    // The kernel now drops the attacker, SSH included.
    let out = site.ssh(&site.lab.attacker, Some(&good), &[], Some("status"));
    assert_ne!(
        out.code,
        Some(0),
        "the banned source still reaches SSH: {out:?}"
    );
    // The admin's own key from another address still works.
    let out = site.ssh(&site.lab.phone, Some(&good), &[], Some("status --json"));
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn dropbear_is_restarted_when_it_dies() {
    let site = site();
    let key = site.account.keypair("id_admin", "admin");
    site.add_key(&key);
    site.wait_ssh_ready(&key);
    let pid_file = site.daemon.data_dir().join("ssh/dropbear.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("dropbear's pid file");
    let pid: u32 = pid.trim().parse().expect("a pid");
    assert!(outpost_tests::send_signal(pid, "KILL"));
    let restarted = eventually(Duration::from_secs(15), || {
        let now = std::fs::read_to_string(&pid_file).ok()?;
        let now: u32 = now.trim().parse().ok()?;
        (now != pid).then_some(now)
    });
    assert!(
        restarted.is_some(),
        "dropbear was not restarted\nlog:\n{}",
        site.daemon.log_text()
    );
    site.wait_ssh_ready(&key);
}

#[test]
fn admin_socket_admits_root_and_the_admin_group_only() {
    require_root("the admin socket test");
    let account = Account::create();
    let daemon = Daemon::start_with(
        outpost_tests::DaemonConfig::loopback().with_args(&["--admin-group", &account.name]),
    );
    open_socket_dir(&daemon);
    let mode = std::fs::metadata(daemon.socket())
        .expect("the socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "the socket is the admin group's");
    let as_user = |user: &str| {
        let mut cmd = Command::new("setpriv");
        if user == "nobody" {
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        } else {
            cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"]);
        }
        cmd.arg(bin("outpostctl"))
            .arg("--socket")
            .arg(daemon.socket())
            .args(["status", "--json"]);
        run_with_timeout(&mut cmd, Duration::from_secs(15))
    };
    // The admin account (not root) gets in through its group.
    let out = as_user(&account.name);
    assert_eq!(out.code, Some(0), "{out:?}\nlog:\n{}", daemon.log_text());
    assert!(out.stdout.contains("\"realm\""), "{out:?}");
    // Anyone else is refused by the daemon itself, even when the socket's mode would let
    // them connect (a mistaken chmod): SO_PEERCRED, before a command is read.
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod the socket");
    let out = as_user("nobody");
    assert_ne!(out.code, Some(0), "nobody used the admin socket: {out:?}");
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert!(
        out.stderr
            .contains("not root, the daemon's user or a member of group"),
        "{out:?}"
    );
    let logged = eventually(Duration::from_secs(5), || {
        daemon
            .log_text()
            .contains("admin socket: connection refused")
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "refusal not logged:\n{}",
        daemon.log_text()
    );
    // Root still gets in.
    let out = daemon.ctl(&["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

/// `outpostctl shell` fed through a pipe, as on a serial console after login.
fn shell(daemon: &Daemon, args: &[&str], input: &str) -> CmdOutput {
    let mut cmd = Command::new(bin("outpostctl"));
    cmd.arg("--socket").arg(daemon.socket()).args(args);
    run_with_input(&mut cmd, input, Duration::from_secs(30))
}

#[test]
fn console_shell_runs_commands_line_by_line() {
    let daemon = Daemon::start();
    let marks = daemon.dir().join("marks");
    std::fs::create_dir_all(&marks).expect("mkdir");
    let input = format!(
        "help\nhelp fw\nstatus --json\n\nbogus\nstatus; touch {m}/a\n'unterminated\nfw rules\nexit\nstatus\n",
        m = marks.display()
    );
    let out = shell(&daemon, &["shell"], &input);
    assert_eq!(out.code, Some(0), "{out:?}");
    for command in [
        "status", "ext", "fw", "ssh", "admin", "shell", "exit", "help",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`help` does not list {command}:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("ssh-session"), "{}", out.stdout);
    assert!(
        out.stdout.contains("Usage: outpostctl fw"),
        "help fw: {}",
        out.stdout
    );
    let status = out
        .stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("status --json printed a JSON line");
    let status: Value = serde_json::from_str(status).expect("JSON");
    assert_eq!(json_str(&status, "realm"), Some("outpost"));
    assert!(
        out.stdout.contains("auth_failures"),
        "fw rules ran: {}",
        out.stdout
    );
    assert!(out.stderr.contains("bogus"), "{}", out.stderr);
    assert!(out.stderr.contains("unterminated"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&marks).expect("marks").count(), 0);
    // Nothing after `exit` ran: one status JSON line only.
    assert_eq!(out.stdout.matches("\"realm\"").count(), 1, "{}", out.stdout);
}

#[test]
fn console_login_checks_the_admin_password() {
    let daemon = Daemon::start();
    // No password yet: login says so and how to set one.
    let out = shell(&daemon, &["login"], "whatever-password\n");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("admin passwd"), "{out:?}");

    // Too short, then a good one.
    let out = shell(&daemon, &["admin", "passwd"], "short\n");
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("at least 10"), "{out:?}");
    let out = shell(&daemon, &["admin", "passwd"], "branch-office-2026\n");
    assert_eq!(out.code, Some(0), "{out:?}");
    let log = daemon.log_text();
    assert!(
        !log.contains("branch-office-2026"),
        "the password reached the log"
    );

    // One wrong try, then the right one, then the shell.
    let out = shell(
        &daemon,
        &["login"],
        "wrong-password-1\nbranch-office-2026\nstatus --json\nexit\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Wrong password"), "{out:?}");
    assert!(out.stdout.contains("\"realm\":\"outpost\""), "{out:?}");

    // Three wrong tries: refused after a pause; the shell never starts.
    let started = Instant::now();
    let out = shell(
        &daemon,
        &["login"],
        "nope-nope-1\nnope-nope-2\nnope-nope-3\nstatus --json\n",
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(5), "no pause");
    assert!(!out.stdout.contains("realm"), "{out:?}");
}
