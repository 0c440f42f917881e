//! The replace-a-box drill under qemu-system-aarch64 (issue 13): the office's box is
//! configured, backed up off-site, moved to another network, then stolen, and a fresh box
//! takes its place from the backup. One test, three boots of the shared test image
//! ([`TestImage::shared`], the one tests/tests/image.rs boots):
//!
//! 1. **Box A** (a copy of the image's disk, network 10.0.2.0/24) is configured over SSH
//!    with the baked admin key: extension passwords, a third extension with a voicemail
//!    PIN, forwarding, caller-ID, a voicemail message left by a raw-UDP phone, and an SFTP
//!    backup target: a real OpenSSH `sshd` on the host at an "off-site" address
//!    ([`OFFSITE`], added to the host's loopback for the test and reached through the
//!    guest's NAT from every network), its host key pinned. `backup passphrase set`,
//!    `backup key` (its SFTP line into the server's authorized_keys; its signing-key line
//!    kept, as the office keeps it), `backup now`: the upload lands on the host under a name
//!    that carries A's hostname.
//! 2. A is powered off and **the same disk boots on another network** (10.0.5.0/24): SIP
//!    answers, a SIPp REGISTER with A's password works, SSH works (same host key), and a
//!    call has RTP both ways through the relay on the new address.
//! 3. **Box B**, a fresh disk on a third network with another MAC: `backup passphrase set`,
//!    then `ssh admin@B backup restore - --signer 'A's key line' < FILE` (refused without
//!    it: B does not know A's signing key), which reports who signed it, what it restored and that
//!    the console password and SSH host key are now A's (the admin's ssh indeed refuses
//!    the changed key, and B's key is A's); a phone registers with A's password and a SIPp
//!    phone calls it. The time from B's qemu start to that call is printed. Then on B:
//!    `backup list --remote`, `backup fetch NAME`, A's key into `[backup] trusted_keys`,
//!    `backup restore NAME`, and `backup now`
//!    uploads at once with A's SFTP client key, which travelled in the backup.
//!
//! REQUIRES root (the off-site address on the host's loopback, sshd), `sshd`, `ssh`,
//! `ssh-keygen`, `sipp` and `qemu-system-aarch64` (tests/run-all installs them); it never
//! skips. Every wait is bounded; qemu, sshd and the address are removed when the test ends.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::qemu::{
    call_through, copy_disk, Boot, Guest, TestImage, BOOT_TIMEOUT, NIC1_NET, SSH_TIMEOUT,
};
use outpost_tests::{
    body_of, eventually, free_port, options_status, parse_rtp, require_root, rtp_packet,
    run_with_timeout, sdp_audio, sdp_body, status_of, CmdOutput, SipPhone, Sipp, Transport,
};

/// The off-site backup server's address: on the host's loopback for the test, so that the
/// guest reaches it through its NAT (qemu's user network) from whichever network it is on.
const OFFSITE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// The network A is moved to.
const NET_MOVED: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 0);
/// Box B's network.
const NET_B: Ipv4Addr = Ipv4Addr::new(10, 0, 7, 0);
/// Box A's MAC address (eth0) and the hostname it gives the box.
const MAC_A: &str = "52:54:00:0a:00:01";
const HOST_A: &str = "outpost-0a0001";
/// Box B's MAC address and hostname.
const MAC_B: &str = "52:54:00:0b:00:02";
const HOST_B: &str = "outpost-0b0002";
/// The backup passphrase, typed into both boxes.
const PASSPHRASE: &str = "drill: staple the horse to the battery";
/// A's extensions and the passwords the office's phones hold.
const PHONES: [(&str, &str); 3] = [
    ("100", "drill-a-100-Lw8fKq"),
    ("101", "drill-a-101-Vn3zRt"),
    ("102", "drill-a-102-Hc6pXd"),
];
/// The voicemail PIN of 102.
const PIN: &str = "4711";
/// 101 forwards to 102 when busy.
const FORWARD_BUSY: &str = "102";
/// 100's caller-ID on outside calls.
const CALLER_ID: &str = "4930123456";
/// Longest an upload to the off-site server may take to appear there.
const UPLOAD_WAIT: Duration = Duration::from_secs(120);
/// Longest `backup restore` may take (it returns once the daemon runs on the restored data).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(180);
/// How every backup file's name ends.
const BACKUP_SUFFIX: &str = ".backup";
/// The box-time goal of a replacement: qemu start to the first call.
const GOAL: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The off-site SFTP server
// ---------------------------------------------------------------------------------------

/// [`OFFSITE`] on the host's loopback while the test runs (removed on drop if it added it).
struct OffsiteAddr {
    added: bool,
}

impl OffsiteAddr {
    fn add() -> Self {
        let cidr = format!("{OFFSITE}/32");
        let shown = run_with_timeout(
            Command::new("ip").args(["-4", "addr", "show", "dev", "lo"]),
            Duration::from_secs(10),
        );
        if shown.stdout.contains(&cidr) {
            return OffsiteAddr { added: false };
        }
        let out = run_with_timeout(
            Command::new("ip").args(["addr", "add", &cidr, "dev", "lo"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(0), "ip addr add {cidr} dev lo: {out:?}");
        OffsiteAddr { added: true }
    }
}

impl Drop for OffsiteAddr {
    fn drop(&mut self) {
        if self.added {
            let _ = run_with_timeout(
                Command::new("ip").args(["addr", "del", &format!("{OFFSITE}/32"), "dev", "lo"]),
                Duration::from_secs(10),
            );
        }
    }
}

/// A real OpenSSH server at [`OFFSITE`] on a free port: key login for root only, keys from
/// a file of the test, the SFTP subsystem, a remote directory for the backups.
struct SftpServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// The public host key line (pinned in the box's target).
    host_key: String,
}

impl SftpServer {
    fn start() -> Self {
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/ssh"] {
            assert!(
                Path::new(tool).is_file(),
                "the drill needs {tool} (apt-get install openssh-server openssh-client; \
                 tests/run-all does)"
            );
        }
        fs::create_dir_all("/run/sshd").expect("sshd's privilege separation directory");
        let dir = tempfile::Builder::new()
            .prefix("outpost-drill-sftp-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("remote")).expect("remote dir");
        let keygen = run_with_timeout(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "offsite", "-f"])
                .arg(d.join("host_ed25519")),
            Duration::from_secs(30),
        );
        assert_eq!(keygen.code, Some(0), "ssh-keygen: {keygen:?}");
        let host_key = fs::read_to_string(d.join("host_ed25519.pub"))
            .expect("host key")
            .trim()
            .to_owned();
        fs::write(d.join("authorized_keys"), "").expect("authorized_keys");
        let port = free_port();
        let config = format!(
            "ListenAddress {OFFSITE}\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             Subsystem sftp internal-sftp\n",
            hk = d.join("host_ed25519").display(),
            ak = d.join("authorized_keys").display(),
        );
        fs::write(d.join("sshd_config"), config).expect("sshd_config");
        let log = d.join("sshd.log");
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("spawn sshd");
        let listening = eventually(Duration::from_secs(10), || {
            fs::read_to_string(&log)
                .ok()
                .filter(|l| l.contains("Server listening on"))
        });
        if listening.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sshd did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        SftpServer {
            child,
            dir,
            port,
            host_key,
        }
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    /// Lets `public` (an OpenSSH public key line) log in.
    fn authorize(&self, public: &str) {
        fs::write(
            self.dir.path().join("authorized_keys"),
            format!("{}\n", public.trim()),
        )
        .expect("authorize the box's key");
    }

    /// The finished files in the remote directory (no `.partial`), sorted.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.remote())
            .expect("remote dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".partial"))
            .collect();
        names.sort();
        names
    }

    /// Waits for a finished file that is not in `before`; returns its name.
    fn await_new_file(&self, before: &[String], guest: &Guest) -> String {
        eventually(UPLOAD_WAIT, || {
            self.files().into_iter().find(|n| !before.contains(n))
        })
        .unwrap_or_else(|| {
            panic!(
                "no new backup arrived on the off-site server within {UPLOAD_WAIT:?} (it holds \
                 {:?})\n--- sshd ---\n{}\n--- console ---\n{}",
                self.files(),
                fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default(),
                guest.console()
            )
        })
    }

    /// The `[[backup.targets]]` entry of this server.
    fn target_toml(&self) -> String {
        format!(
            "\n[[backup.targets]]\nname = \"offsite\"\nkind = \"sftp\"\nhost = \"{OFFSITE}\"\n\
             port = {}\nuser = \"root\"\npath = \"{}\"\nhost_key = \"{}\"\n",
            self.port,
            self.remote().display(),
            self.host_key
        )
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One drill: the temp directory for stdin files, the admin key.
struct Drill {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Drill {
    /// `text` as a file (for an SSH command's standard input).
    fn input(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).expect("write an input file");
        path
    }

    /// `command` over SSH; must succeed; its standard output.
    fn ok(&self, guest: &Guest, command: &str) -> String {
        guest.ssh_ok(&self.key, command, None)
    }

    /// `command` over SSH with `text` on its standard input; must succeed.
    fn ok_with(&self, guest: &Guest, command: &str, text: &str) -> String {
        let input = self.input("stdin.txt", text);
        guest.ssh_ok(&self.key, command, Some(&input))
    }

    /// `command --json` over SSH, parsed.
    fn json(&self, guest: &Guest, command: &str) -> Value {
        guest.ssh_json(&self.key, command)
    }
}

/// Boots `disk` (written to, not a snapshot) and waits until outpostd is ready.
fn boot(image: &TestImage, disk: &Path, net: Ipv4Addr, mac: &str, log: &str) -> Guest {
    let b = Boot::snapshot(&image.dir)
        .persistent(disk)
        .on_network(net)
        .with_mac(mac)
        .with_relay_forwards()
        .with_log(&disk.with_file_name(log));
    let mut guest = Guest::boot(&b);
    guest.wait_for(" ready listen=", BOOT_TIMEOUT);
    guest
}

/// SIP OPTIONS through the forward answered 200 (tried for up to 60 s).
fn assert_sip_answers(guest: &Guest, what: &str) {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port()));
    let status = eventually(Duration::from_secs(60), || {
        options_status(target, Transport::Udp)
    });
    assert_eq!(
        status,
        Some(200),
        "{what}: OPTIONS through the guest\n--- console ---\n{}",
        guest.console()
    );
}

/// SIPp registers `ext` with `password` through the guest's SIP forward.
fn sipp_register(guest: &Guest, ext: &str, password: &str, what: &str) {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port()));
    Sipp::towards("register.xml", target)
        .account(ext, password)
        .timeout_secs(30)
        .run()
        .assert_success(what);
}

/// The password of `ext` at the office (A's).
fn password(ext: &str) -> &'static str {
    PHONES
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, p)| *p)
        .expect("a drill extension")
}

/// The key (type and base64) the known_hosts file `file` holds for the guest.
fn known_key(file: &Path) -> String {
    let text = fs::read_to_string(file).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("no ed25519 host key in {}: {text}", file.display()));
    line.split_whitespace()
        .skip(1)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every string value anywhere in `v`.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// The backup file names that `backup list [--remote] --json` shows.
fn listed_backups(v: &Value) -> Vec<String> {
    strings(v)
        .into_iter()
        .filter(|s| s.ends_with(BACKUP_SUFFIX) && !s.contains('/'))
        .collect()
}

/// The caller `ext` leaves a message in `mailbox` (which has no phone registered, so the
/// box answers): it talks from the answer on (the relay latches onto its address), through
/// the greeting and the beep, for `secs` in all, then hangs up.
fn leave_voicemail(guest: &Guest, ext: &str, mailbox: &str, secs: u16) {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port()));
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the caller");
    let mut phone = SipPhone::on_socket(sock, server, ext, password(ext));
    phone.register();
    let rtp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the caller's RTP");
    rtp.set_nonblocking(true).expect("non-blocking RTP");
    let inv = phone.invite(
        mailbox,
        &sdp_body(rtp.local_addr().expect("RTP address"), &[0, 101]),
    );
    let mut dialog = phone
        .await_answer(&inv, Duration::from_secs(15))
        .unwrap_or_else(|e| {
            panic!(
                "voicemail did not answer the call to {mailbox}: {e:?}\n--- console ---\n{}",
                guest.console()
            )
        });
    let sdp = sdp_audio(&dialog.remote_sdp).expect("the voicemail's 200 OK has audio SDP");
    let relay = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.port("udp", sdp.port)));
    let mut heard = 0usize;
    let mut buf = [0u8; 2048];
    let frames = secs * 50;
    let start = Instant::now();
    for i in 0..frames {
        let voice: Vec<u8> = (0..160u16)
            .map(|j| u8::try_from(0x10 + (j * 7 + i * 5) % 0x60).expect("below 0x70"))
            .collect();
        let _ = rtp.send_to(
            &rtp_packet(0, i + 1, u32::from(i) * 160, 0x0D1E, &voice),
            relay,
        );
        while let Ok((len, _)) = rtp.recv_from(&mut buf) {
            if parse_rtp(&buf[..len]).is_some() {
                heard += 1;
            }
        }
        let next = start + Duration::from_millis(20) * (u32::from(i) + 1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    assert!(
        heard > 100,
        "the caller heard {heard} RTP packets of the greeting\n--- console ---\n{}",
        guest.console()
    );
    let cseq = phone.send_bye(&mut dialog);
    let ok = phone
        .await_final(&dialog.call_id, cseq, "BYE", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no answer to the BYE:\n{}", phone.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
}

/// The voicemail messages `vm list --json` shows.
fn messages(drill: &Drill, guest: &Guest) -> Vec<Value> {
    match drill.json(guest, "vm list") {
        Value::Array(items) => items,
        other => panic!("vm list --json is not an array: {other}"),
    }
}

/// Checks what `backup restore` printed: what it restored (A's three extensions and one
/// message), that the console password and the SSH host key are now A's, and that it
/// returned once the daemon ran on the restored data.
fn assert_restore_report(out: &CmdOutput, what: &str) {
    assert_eq!(out.code, Some(0), "{what} failed: {out:?}");
    for needle in [
        format!("backup of {HOST_A}"),
        "3 extensions".to_owned(),
        "1 voicemail message".to_owned(),
        "the SFTP client key".to_owned(),
        format!("console admin password is now the one of {HOST_A}"),
        format!("SSH host key is now the one of {HOST_A}"),
        "outpostd runs on the restored data".to_owned(),
    ] {
        assert!(
            out.stdout.contains(&needle),
            "{what} does not say {needle:?}: {out:?}"
        );
    }
}

/// The extensions `ext list --json` shows, by number.
fn extension_numbers(drill: &Drill, guest: &Guest) -> Vec<String> {
    let list = drill.json(guest, "ext list");
    let items = match &list {
        Value::Array(items) => items.clone(),
        Value::Object(o) => o
            .get("extensions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut numbers: Vec<String> = items
        .iter()
        .filter_map(|e| e["ext"].as_str().map(str::to_owned))
        .collect();
    numbers.sort();
    numbers
}

/// Checks that A's data runs on `guest`: the three extensions, 102's message and PIN, 101's
/// forwarding.
fn assert_office_data(drill: &Drill, guest: &Guest, what: &str) {
    assert_eq!(
        extension_numbers(drill, guest),
        ["100", "101", "102"],
        "{what}: extensions"
    );
    let msgs = messages(drill, guest);
    assert!(
        msgs.len() == 1 && msgs[0]["mailbox"].as_str() == Some("102"),
        "{what}: the message in 102's mailbox: {msgs:?}"
    );
    let show = drill.ok(guest, "ext show 101").to_lowercase();
    assert!(
        show.contains("busy") && show.contains(FORWARD_BUSY),
        "{what}: `ext show 101` shows no forwarding on busy to {FORWARD_BUSY}:\n{show}"
    );
    let show = drill.ok(guest, "ext show 102").to_lowercase();
    assert!(
        show.lines().any(|l| l.contains("pin")
            && (l.contains("set") || l.contains("yes"))
            && !l.contains("not set")),
        "{what}: `ext show 102` does not say a PIN is set:\n{show}"
    );
    let show = drill.ok(guest, "ext show 100");
    assert!(
        show.contains(CALLER_ID),
        "{what}: `ext show 100` shows no caller-ID {CALLER_ID}:\n{show}"
    );
}

// ---------------------------------------------------------------------------------------
// The drill
// ---------------------------------------------------------------------------------------

/// Phase 1: box A configured and backed up off-site; returns the backup's name on the
/// server, A's host key and A's backup-signing key (`outpost-backup-ed25519 <base64>`).
fn configure_and_back_up(
    drill: &Drill,
    image: &TestImage,
    disk: &Path,
    server: &SftpServer,
) -> (String, String, String) {
    let mut a = boot(image, disk, NIC1_NET, MAC_A, "box-a-1.log");
    let known_a = drill.dir.path().join("known_hosts_a");
    a.check_host_key(&known_a);
    a.wait_for("admin SSH key(s) imported", Duration::from_secs(120));
    a.wait_ssh(&drill.key);

    for (ext, pw) in PHONES {
        if ext == "102" {
            drill.ok_with(
                &a,
                "ext add 102 --password-stdin --name Reception",
                &format!("{pw}\n"),
            );
        } else {
            drill.ok_with(
                &a,
                &format!("ext passwd {ext} --password-stdin"),
                &format!("{pw}\n"),
            );
        }
    }
    drill.ok(&a, &format!("vm pin 102 {PIN}"));
    drill.ok(&a, &format!("ext forward 101 --busy {FORWARD_BUSY}"));
    drill.ok(&a, &format!("ext callerid 100 {CALLER_ID}"));
    leave_voicemail(&a, "100", "102", 12);
    let msgs = eventually(Duration::from_secs(30), || {
        let m = messages(drill, &a);
        (!m.is_empty()).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no voicemail message on A\n--- console ---\n{}",
            a.console()
        )
    });
    assert_eq!(msgs[0]["mailbox"].as_str(), Some("102"), "{msgs:?}");

    // The off-site target, the passphrase, the client key on the server, a backup.
    let running = drill.ok(&a, "config show");
    let config = format!("{}\n{}", running.trim_end(), server.target_toml());
    drill.ok_with(&a, "config apply - -m drill-offsite-backups", &config);
    drill.ok_with(&a, "backup passphrase set", &format!("{PASSPHRASE}\n"));
    let key_out = drill.ok(&a, "backup key");
    let public = key_out
        .lines()
        .find(|l| l.starts_with("ssh-"))
        .unwrap_or_else(|| panic!("`backup key` printed no public key line: {key_out}"));
    server.authorize(public);
    // The office keeps A's backup-signing key: the replacement box trusts A's backups by it.
    let signer: Vec<&str> = key_out
        .lines()
        .find(|l| l.starts_with("outpost-backup-ed25519 "))
        .unwrap_or_else(|| panic!("`backup key` printed no signing key line: {key_out}"))
        .split_whitespace()
        .take(2)
        .collect();
    let signer = signer.join(" ");
    let before = server.files();
    let now = drill.ok(&a, "backup now");
    let name = server.await_new_file(&before, &a);
    assert!(
        name.contains(HOST_A),
        "the backup's name {name:?} does not carry A's hostname {HOST_A}"
    );
    assert!(
        now.contains(&name),
        "`backup now` printed {now:?}, not the name that arrived ({name})"
    );
    assert_office_data(drill, &a, "box A");
    let host_key = known_key(&known_a);
    a.kill();
    (name, host_key, signer)
}

/// Phase 2: A's disk boots on another network; SIP, SSH and a call work there.
fn moved_to_another_network(drill: &Drill, image: &TestImage, disk: &Path, known_a: &Path) {
    let mut a = boot(image, disk, NET_MOVED, MAC_A, "box-a-2.log");
    a.check_host_key(known_a);
    let console = a.console();
    let line = format!("eth0 {}/24", a.addr());
    assert!(
        console.contains(&line),
        "no {line:?} on the console:\n{console}"
    );
    assert_sip_answers(&a, "A on another network");
    sipp_register(
        &a,
        "100",
        password("100"),
        "REGISTER with A on another network",
    );
    // The same host key as before the move (the known_hosts file of phase 1 checks it).
    a.wait_ssh(&drill.key);
    let status = drill.json(&a, "status");
    assert!(
        status["extensions"].as_u64() == Some(3) && status["hostname"].as_str() == Some(HOST_A),
        "status on the moved box: {status}"
    );
    let call = call_through(&a, ("100", password("100")), ("101", password("101")));
    let console = a.console();
    assert!(
        !console.contains("Address not available"),
        "the moved box could not bind an address:\n{console}"
    );
    eprintln!(
        "drill: A moved to {}: call 100 -> 101 set up in {} ms, RTP 100 -> 101 {} of {}, \
         101 -> 100 {} of {} packets",
        a.addr(),
        call.setup.as_millis(),
        call.a_to_b.heard,
        call.a_to_b.sent,
        call.b_to_a.heard,
        call.b_to_a.sent
    );
    a.kill();
}

/// Runs `command` over SSH once the guest's SSH server accepts connections again (the
/// daemon restarts it after a restore): connections reset or refused before the server
/// speaks are retried for up to a minute. Returns the output and how long SSH was away.
fn ssh_once_back(guest: &Guest, key: &Path, command: &str) -> (CmdOutput, Duration) {
    let started = Instant::now();
    loop {
        let out = guest.ssh(key, command, None, SSH_TIMEOUT);
        let away = out.code == Some(255)
            && (out.stderr.contains("Connection reset")
                || out.stderr.contains("Connection refused")
                || out.stderr.contains("kex_exchange_identification")
                || out.stderr.contains("Connection closed"));
        if !away || started.elapsed() > Duration::from_secs(60) {
            return (out, started.elapsed());
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The box's own time from its kernel's start to the answer of the newest call 100 -> 101
/// (its call record's `answer`, on the box's clock).
fn box_time_to_answer(drill: &Drill, guest: &Guest) -> Duration {
    let cdrs = drill.json(guest, "cdr list");
    let answer_ms = cdrs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["caller"].as_str() == Some("100") && c["callee"].as_str() == Some("101"))
        .filter_map(|c| c["answer"].as_u64())
        .max()
        .unwrap_or_else(|| panic!("no answered call 100 -> 101 in `cdr list`: {cdrs}"));
    let kernel_start = guest
        .kernel_start_epoch()
        .expect("the kernel set its clock from the RTC (console)");
    let answer = Duration::from_millis(answer_ms).as_secs_f64();
    Duration::from_secs_f64((answer - kernel_start).max(0.0))
}

/// The SIPp phone 100 (A's password) calls 101, a raw-UDP phone registered with A's
/// password that answers; returns when the call is established (101 got the ACK).
fn phones_call(guest: &Guest) -> Instant {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port()));
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 101");
    let mut callee = SipPhone::on_socket(sock, server, "101", password("101"));
    callee.register();
    sipp_register(guest, "100", password("100"), "REGISTER 100 on B");
    let sipp = Sipp::towards("uac_call.xml", server)
        .account("100", password("100"))
        .service("101")
        .timeout_secs(30)
        .spawn();
    let invite = callee
        .await_request("INVITE", Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "101 got no INVITE from SIPp 100:\n{}\n--- console ---\n{}",
                callee.transcript(),
                guest.console()
            )
        });
    assert!(sdp_audio(body_of(&invite)).is_some(), "{invite}");
    let rtp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 101's RTP");
    let dialog = callee.answer(
        &invite,
        &sdp_body(rtp.local_addr().expect("RTP address"), &[0]),
    );
    callee
        .await_ack(&dialog, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("101 got no ACK:\n{}", callee.transcript()));
    let established = Instant::now();
    callee
        .answer_bye(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("101 got no BYE:\n{}", callee.transcript()));
    sipp.wait().assert_success("call 100 -> 101 on B");
    established
}

#[test]
fn a_replacement_box_restored_from_the_offsite_backup_takes_calls() {
    require_root("the replace-a-box drill");
    let image = TestImage::shared();
    let drill = Drill {
        dir: tempfile::Builder::new()
            .prefix("outpost-drill-")
            .tempdir()
            .expect("temp dir"),
        key: image.admin_key.clone(),
    };
    let _offsite = OffsiteAddr::add();
    let server = SftpServer::start();
    let disk_a = drill.dir.path().join("box-a.img");
    let disk_b = drill.dir.path().join("box-b.img");
    copy_disk(&image.dir.join("disk.img"), &disk_a);
    copy_disk(&image.dir.join("disk.img"), &disk_b);

    // 1. Box A, configured and backed up off-site.
    let phase1 = Instant::now();
    let (backup, a_host_key, a_signer) = configure_and_back_up(&drill, &image, &disk_a, &server);
    let backup_file = server.remote().join(&backup);
    let backup_bytes = fs::metadata(&backup_file)
        .expect("the uploaded backup")
        .len();
    eprintln!(
        "drill: box A configured and backed up in {:.1} s: {backup} ({backup_bytes} bytes) on \
         the off-site server",
        phase1.elapsed().as_secs_f64()
    );

    // 2. A on another network.
    moved_to_another_network(
        &drill,
        &image,
        &disk_a,
        &drill.dir.path().join("known_hosts_a"),
    );

    // 3. Box B replaces A. The clock runs from qemu's start.
    let mut b = boot(&image, &disk_b, NET_B, MAC_B, "box-b.log");
    let b_started = b.started;
    let known_b = drill.dir.path().join("known_hosts_b");
    b.check_host_key(&known_b);
    let console = b.wait_for("admin SSH key(s) imported", Duration::from_secs(120));
    let b_demo_password = outpost_tests::qemu::demo_password(&console, "100");
    b.wait_ssh(&drill.key);
    let b_own_key = known_key(&known_b);
    assert_ne!(b_own_key, a_host_key, "a fresh box has its own host key");
    drill.ok_with(&b, "backup passphrase set", &format!("{PASSPHRASE}\n"));
    // B does not know A's signing key: the backup is refused until the office names it.
    let refused = b.ssh(
        &drill.key,
        "backup restore -",
        Some(&backup_file),
        RESTORE_TIMEOUT,
    );
    assert!(
        refused.code != Some(0) && refused.stderr.contains("not authenticated"),
        "B restored a backup no key it trusts signed: {refused:?}"
    );
    let restore_started = Instant::now();
    let restore = b.ssh(
        &drill.key,
        &format!("backup restore - --signer '{a_signer}'"),
        Some(&backup_file),
        RESTORE_TIMEOUT,
    );
    let restore_took = restore_started.elapsed();
    assert_restore_report(&restore, "`backup restore -` on B");
    assert!(
        restore.stdout.contains("the key given with --signer"),
        "`backup restore -` on B did not say who signed the backup: {restore:?}"
    );

    // The admin's ssh refuses the changed host key, as the restore said; B's key is A's.
    let (refused, ssh_back) = ssh_once_back(&b, &drill.key, "status");
    assert!(
        refused.code != Some(0) && refused.stderr.contains("IDENTIFICATION HAS CHANGED"),
        "ssh to B after the restore did not notice the new host key: {refused:?}\n\
         --- console ---\n{}",
        b.console()
    );
    let known_b2 = drill.dir.path().join("known_hosts_b2");
    b.check_host_key(&known_b2);
    let status = drill.json(&b, "status");
    assert_eq!(
        status["extensions"].as_u64(),
        Some(3),
        "B runs on A's data as soon as the restore returns: {status}"
    );
    // A's configuration names no host, so B keeps the name of its own MAC.
    assert_eq!(status["hostname"].as_str(), Some(HOST_B), "{status}");
    assert_eq!(known_key(&known_b2), a_host_key, "B's SSH host key is A's");

    // Phones register with A's passwords and call.
    let established = phones_call(&b);
    let to_call = established.duration_since(b_started);
    let box_to_call = box_time_to_answer(&drill, &b);

    // B's own first-boot password for 100 is gone with B's old data.
    let server_b = SocketAddr::from((Ipv4Addr::LOCALHOST, b.sip_port()));
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let mut stale = SipPhone::on_socket(sock, server_b, "100", &b_demo_password);
    let stale_status = stale.register_status(Duration::from_secs(5));
    assert!(
        matches!(stale_status, Some(s) if s >= 400),
        "B's own demo password for 100 still registers after the restore: {stale_status:?}"
    );
    assert_office_data(&drill, &b, "box B after `backup restore -`");

    // The off-site copy, listed, fetched and restored from B itself.
    let remote = drill.json(&b, "backup list --remote");
    assert!(
        listed_backups(&remote).contains(&backup),
        "`backup list --remote` on B does not show {backup}: {remote}"
    );
    let fetched = drill.ok(&b, &format!("backup fetch {backup}"));
    let local = fetched
        .split_whitespace()
        .find(|w| w.ends_with(BACKUP_SUFFIX))
        .unwrap_or_else(|| panic!("`backup fetch` printed no local name: {fetched}"))
        .to_owned();
    let listed = drill.json(&b, "backup list");
    assert!(
        listed_backups(&listed).contains(&local),
        "`backup list` on B does not show the fetched {local}: {listed}"
    );
    // This time A's key goes into B's configuration (B runs A's revisions now, and keeps
    // its own signing key: A's is trusted by name, not by being B's).
    let running = drill.ok(&b, "config show");
    let trusting = format!(
        "{}\n\n[backup]\ntrusted_keys = [\"{a_signer}\"]\n",
        running.trim_end()
    );
    drill.ok_with(&b, "config apply - -m trust-box-a", &trusting);
    let again = b.ssh(
        &drill.key,
        &format!("backup restore {local}"),
        None,
        RESTORE_TIMEOUT,
    );
    assert_restore_report(&again, "`backup restore NAME` of the fetched backup");
    assert!(
        again.stdout.contains("a key in backup.trusted_keys"),
        "`backup restore NAME` on B did not say who signed the backup: {again:?}"
    );
    let (back, _) = ssh_once_back(&b, &drill.key, "status");
    assert_eq!(back.code, Some(0), "SSH after the second restore: {back:?}");
    assert_office_data(
        &drill,
        &b,
        "box B after `backup fetch` and `backup restore NAME`",
    );
    sipp_register(
        &b,
        "102",
        password("102"),
        "REGISTER 102 after the second restore",
    );

    // B uploads at once: A's SFTP client key came with the backup.
    let before = server.files();
    drill.ok(&b, "backup now");
    let uploaded = server.await_new_file(&before, &b);
    assert!(
        uploaded.contains(HOST_B),
        "B's backup {uploaded:?} does not carry B's own name {HOST_B} (A's configuration \
         names no host, so the box keeps the name of its MAC)"
    );

    eprintln!(
        "drill: box B (fresh disk, {}): `backup restore -` took {:.1} s; SSH answered again \
         {:.1} s after it returned",
        b.addr(),
        restore_took.as_secs_f64(),
        ssh_back.as_secs_f64()
    );
    eprintln!(
        "drill: box B: qemu start -> first call between phones with A's passwords: {:.1} s \
         (host wall clock)",
        to_call.as_secs_f64()
    );
    eprintln!(
        "drill: box B: kernel start -> that call answered: {:.1} s of box time (goal < {} s)",
        box_to_call.as_secs_f64(),
        GOAL.as_secs()
    );
    eprintln!("drill: box B uploaded {uploaded} at once with A's SFTP client key");
    assert!(
        box_to_call < GOAL,
        "box B took {box_to_call:?} of its own time from boot to the first call (goal {GOAL:?})"
    );
}
