//! Backups end to end with the real daemon: a populated box is backed up, wiped and restored
//! and every record and audio byte compared; damaged, truncated, wrongly keyed and
//! future-version backups are refused with the reason while the box stays as it was; a
//! format-0 backup is migrated; a format-3 backup (before desk phones were backed up)
//! restores and keeps only the phones whose password still registers; `kill -9` in the middle of a backup leaves nothing that
//! `backup list` calls good; CDR export as CSV and JSON over a date range.
//!
//! The daemon encrypts to an X25519 recipient here (fast in unoptimised test builds); the
//! passphrase path is exercised with a fixture made with a small scrypt work factor.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use outpost_tests::{
    bin, rtp_packet, rtp_pair, sdp_audio, sdp_body, CmdOutput, Daemon, DaemonConfig, SipPhone,
};

const PHONE_A: (&str, &str) = ("100", "backup-secret-100");
const PHONE_B: (&str, &str) = ("200", "backup-secret-200");
const WAIT: Duration = Duration::from_secs(10);
const PCMU: u8 = 0;
/// The desk phones' member of a backup (format 4 and later).
const PHONES_MEMBER: &str = "store/phones.json";

/// An age identity for the box's backups, kept in its own temp dir.
struct Keys {
    dir: tempfile::TempDir,
    identity: age::x25519::Identity,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = age::x25519::Identity::generate();
        let keys = Keys { dir, identity };
        let text = format!(
            "# created by the backup test\n# public key: {}\n{}\n",
            keys.public(),
            keys.identity.to_string().expose_secret()
        );
        fs::write(keys.identity_file(), text).expect("write identity");
        fs::set_permissions(keys.identity_file(), fs::Permissions::from_mode(0o600))
            .expect("chmod identity");
        keys
    }

    fn public(&self) -> String {
        self.identity.to_public().to_string()
    }

    fn identity_file(&self) -> PathBuf {
        self.dir.path().join("identity.txt")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn id_arg(&self) -> String {
        self.identity_file().display().to_string()
    }
}

fn config(keys: &Keys) -> DaemonConfig {
    let mut cfg = DaemonConfig::loopback();
    cfg.voicemail_max_secs = Some(30);
    cfg.with_toml(&format!("[backup]\nrecipient = \"{}\"\n", keys.public()))
}

/// Runs outpostctl with `input` on its standard input.
fn ctl_input(daemon: &Daemon, args: &[&str], input: &str) -> CmdOutput {
    let mut child = Command::new(bin("outpostctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outpostctl");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("outpostctl {args:?} did not finish");
        }
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

/// outpostctl for the slow commands (restores of big fixtures in unoptimised builds).
fn ctl_long(daemon: &Daemon, args: &[&str]) -> String {
    let mut cmd = Command::new(bin("outpostctl"));
    cmd.arg("--socket").arg(daemon.socket()).args(args);
    let out = outpost_tests::run_with_timeout(&mut cmd, Duration::from_secs(300));
    assert_eq!(
        out.code,
        Some(0),
        "outpostctl {args:?}: {out:?}\nlog:\n{}",
        daemon.log_text()
    );
    out.stdout
}

/// Makes a backup through the daemon; returns its path.
fn backup_now(daemon: &Daemon) -> PathBuf {
    let made = daemon.ctl_json(&["backup", "now"]);
    let name = made["name"].as_str().expect("backup name").to_owned();
    daemon.data_dir().join("backups").join(name)
}

/// The daemon's own view of everything a restore must bring back.
fn state(daemon: &Daemon) -> Value {
    let exts: Vec<Value> = daemon
        .ctl_json(&["ext", "list"])
        .as_array()
        .expect("ext list")
        .iter()
        .map(|e| json!({ "ext": e["ext"], "name": e["name"] }))
        .collect();
    let mut bans = daemon.ctl_json(&["fw", "bans"]);
    for list in ["bans", "locks"] {
        for b in bans[list].as_array_mut().expect("bans list") {
            b.as_object_mut()
                .expect("ban object")
                .remove("remaining_secs");
        }
    }
    json!({
        "ext": exts,
        "cdr": daemon.ctl_json(&["cdr", "list"]),
        "fw": bans,
        "vm": daemon.ctl_json(&["vm", "list"]),
        "config": daemon.ctl_json(&["config", "show"]),
        "revisions": daemon.ctl_json(&["config", "list"]),
        "ssh": daemon.ctl_json(&["ssh", "keys", "list"]),
    })
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).expect("read file")))
}

/// Phone 100 calls 200 (not registered): Outpost's voicemail answers; 100 talks for a
/// second and hangs up, leaving a message in mailbox 200.
fn leave_voicemail(daemon: &Daemon) {
    let mut a = SipPhone::new(daemon, PHONE_A.0, PHONE_A.1);
    a.register();
    let (rtp, _rtcp) = rtp_pair();
    let local = rtp.local_addr().expect("rtp addr");
    let invite = a.invite(PHONE_B.0, &sdp_body(local, &[PCMU]));
    let mut dialog = a.await_answer(&invite, WAIT).unwrap_or_else(|r| {
        panic!(
            "voicemail did not answer: {r:?}\nlog:\n{}",
            daemon.log_text()
        )
    });
    let relay = sdp_audio(&dialog.remote_sdp)
        .expect("SDP in the 200 OK")
        .rtp_addr();
    for seq in 1..=100u16 {
        let payload: Vec<u8> = (0..160u32)
            .map(|i| u8::try_from((i + u32::from(seq)) % 0x60 + 0x10).expect("below 0x70"))
            .collect();
        let packet = rtp_packet(PCMU, seq, u32::from(seq) * 160, 0xB0B0, &payload);
        rtp.send_to(&packet, relay).expect("send RTP");
        thread::sleep(Duration::from_millis(20));
    }
    let cseq = a.send_bye(&mut dialog);
    a.await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to BYE\nlog:\n{}", daemon.log_text()));
    let deadline = Instant::now() + WAIT;
    loop {
        let list = daemon.ctl_json(&["vm", "list"]);
        if list.as_array().is_some_and(|l| !l.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no voicemail message stored\nlog:\n{}",
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the daemon (a restore makes it exit by itself) and starts it again.
fn restart_after_restore(daemon: &mut Daemon) {
    let deadline = Instant::now() + WAIT;
    while daemon.ctl(&["status"]).code == Some(0) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.ctl(&["status"]).code != Some(0),
        "outpostd did not stop after staging the restore\nlog:\n{}",
        daemon.log_text()
    );
    daemon.stop();
    daemon.restart();
}

/// A box backing up to `keys` with the extensions of [`PHONE_A`] and [`PHONE_B`].
fn two_extensions(keys: &Keys) -> Daemon {
    let daemon = Daemon::start_with(config(keys));
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    daemon
}

/// `backup verify FILE --identity ID` as JSON (signed by this box: no other option).
fn verified(daemon: &Daemon, file: &Path, id: &str) -> Value {
    daemon.ctl_json(&[
        "backup",
        "verify",
        file.to_str().expect("utf-8"),
        "--identity",
        id,
    ])
}

#[test]
fn round_trip_backup_wipe_restore_brings_back_every_record_and_audio_byte() {
    let keys = Keys::new();
    let mut daemon = two_extensions(&keys);
    daemon.ctl_ok(&["ext", "forward", PHONE_A.0, "--busy", PHONE_B.0]);
    daemon.ctl_ok(&["ext", "callerid", PHONE_A.0, "4930123456"]);
    daemon.ctl_ok(&["vm", "pin", PHONE_B.0, "2468"]);
    // A configuration revision of our own.
    let text = daemon.ctl_json(&["config", "show"])["text"]
        .as_str()
        .expect("config text")
        .to_owned();
    let edited = keys.path("edited.toml");
    fs::write(
        &edited,
        format!("{text}\n# revision 2, made by the backup test\n"),
    )
    .expect("write");
    daemon.ctl_ok(&[
        "config",
        "apply",
        edited.to_str().expect("utf-8"),
        "-m",
        "backup test",
    ]);
    // A ban, and an SSH key.
    let list = keys.path("blocklist.txt");
    fs::write(&list, "203.0.113.77\n").expect("write");
    daemon.ctl_ok(&[
        "fw",
        "import",
        list.to_str().expect("utf-8"),
        "--ban-secs",
        "86400",
    ]);
    let pubkey = keys.path("admin.pub");
    fs::write(
        &pubkey,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@office\n",
    )
    .expect("write");
    daemon.ctl_ok(&["ssh", "keys", "add", pubkey.to_str().expect("utf-8")]);
    // A call that ends in voicemail: a CDR and a message with its audio.
    leave_voicemail(&daemon);
    // Three wrong passwords for 200 lock the account (accounts lock whatever the source).
    for _ in 0..3 {
        let _ = SipPhone::new(&daemon, PHONE_B.0, "wrong-guess-xyz").register_status(WAIT);
    }

    let before = state(&daemon);
    assert_eq!(before["cdr"].as_array().map(Vec::len), Some(1), "{before}");
    assert_eq!(
        before["fw"]["bans"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    assert_eq!(
        before["fw"]["locks"].as_array().map(Vec::len),
        Some(1),
        "{before}"
    );
    assert_eq!(before["ssh"].as_array().map(Vec::len), Some(1), "{before}");
    let vm = before["vm"].as_array().expect("vm list");
    assert_eq!(vm.len(), 1, "{before}");
    let wav_hash = sha256_file(Path::new(vm[0]["path"].as_str().expect("vm path")));
    let status = daemon.ctl_json(&["status"]);
    assert!(
        status["last_backup_age_secs"].is_null(),
        "no backup yet: {status}"
    );

    let made = backup_now(&daemon);
    let listed = daemon.ctl_json(&["backup", "list"]);
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["backups"][0]["encrypted_to"], "X25519 recipient");
    let age = daemon.ctl_json(&["status"])["last_backup_age_secs"].as_u64();
    assert!(
        age.is_some_and(|a| a < 60),
        "status shows the new backup's age: {age:?}"
    );
    let verified = daemon.ctl_json(&[
        "backup",
        "verify",
        made.to_str().expect("utf-8"),
        "--identity",
        &keys.id_arg(),
    ]);
    assert_eq!(verified["extensions"], 2, "{verified}");
    assert_eq!(verified["voicemail"], 1, "{verified}");
    // The backup leaves the box with its signing key's line, the box is wiped (a new box
    // with a key of its own).
    let signer = daemon.ctl_ok(&["backup", "key", "--signing"]);
    assert!(signer.starts_with("outpost-backup-ed25519 "), "{signer}");
    assert_eq!(signer.trim().lines().count(), 1, "{signer}");
    let off_site = keys.path("off-site.backup");
    fs::copy(&made, &off_site).expect("copy backup");
    daemon.stop();
    fs::remove_dir_all(daemon.data_dir()).expect("wipe data dir");
    daemon.restart();
    let empty = daemon.ctl_json(&["ext", "list"]);
    assert_eq!(
        empty.as_array().map(Vec::len),
        Some(0),
        "a wiped box: {empty}"
    );

    assert_ne!(
        daemon.ctl_ok(&["backup", "key", "--signing"]),
        signer,
        "the wiped box made a key of its own"
    );
    let out = daemon.ctl(&[
        "backup",
        "restore",
        "--no-wait",
        off_site.to_str().expect("utf-8"),
        "--identity",
        &keys.id_arg(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("not authenticated") && out.stderr.contains("--signer"),
        "{out:?}"
    );
    let out = daemon.ctl_ok(&[
        "backup",
        "restore",
        "--no-wait",
        off_site.to_str().expect("utf-8"),
        "--identity",
        &keys.id_arg(),
        "--signer",
        signer.trim(),
    ]);
    assert!(out.contains("restarts"), "{out}");
    assert!(
        out.contains("signed by SHA256:") && out.contains("--signer"),
        "{out}"
    );
    restart_after_restore(&mut daemon);

    let after = state(&daemon);
    for key in ["ext", "cdr", "fw", "vm", "config", "revisions", "ssh"] {
        assert_eq!(
            before[key],
            after[key],
            "{key} differs after the restore\nlog:\n{}",
            daemon.log_text()
        );
    }
    let path = after["vm"][0]["path"].as_str().expect("vm path");
    assert_eq!(
        sha256_file(Path::new(path)),
        wav_hash,
        "voicemail audio byte for byte"
    );
    // The restored extensions work: 100 registers with its password.
    let mut a = SipPhone::new(&daemon, PHONE_A.0, PHONE_A.1);
    assert_eq!(
        a.register_status(WAIT),
        Some(200),
        "log:\n{}",
        daemon.log_text()
    );
}

// ---------------------------------------------------------------------------------------
// Fixtures: backups taken apart and put together again with the age and tar crates
// ---------------------------------------------------------------------------------------

/// The members of a backup, in order (the manifest and its signature last).
fn unpack(file: &Path, keys: &Keys) -> Vec<(String, Vec<u8>)> {
    let f = fs::File::open(file).expect("open backup");
    let decryptor = age::Decryptor::new(f).expect("age header");
    let mut plain = Vec::new();
    decryptor
        .decrypt(std::iter::once(&keys.identity as &dyn age::Identity))
        .expect("decrypt")
        .read_to_end(&mut plain)
        .expect("read");
    let mut ar = tar::Archive::new(plain.as_slice());
    ar.entries()
        .expect("tar")
        .map(|e| {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read entry");
            (path, data)
        })
        .collect()
}

/// Builds a backup from `members` (manifest and signature dropped, the manifest rebuilt with
/// `format`; unsigned, as anyone with the recipient key can make one), encrypted to the
/// keys' recipient or, with `passphrase`, to a passphrase (small work factor). A format
/// before 4 leaves out `store/phones.json`, which it did not have.
fn pack(
    members: &[(String, Vec<u8>)],
    format: u32,
    keys: &Keys,
    passphrase: Option<&str>,
) -> Vec<u8> {
    pack_with(members, format, keys, passphrase, |_| None)
}

/// [`pack`], ending with the `manifest.sig` that `seal` makes of the new manifest's bytes.
fn pack_with(
    members: &[(String, Vec<u8>)],
    format: u32,
    keys: &Keys,
    passphrase: Option<&str>,
    seal: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let mut files = Vec::new();
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in members.iter().filter(|(p, _)| {
        p != "manifest.json" && p != "manifest.sig" && (format >= 4 || p != PHONES_MEMBER)
    }) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        builder
            .append_data(&mut h, path, data.as_slice())
            .expect("append");
        files.push(json!({
            "path": path,
            "size": data.len(),
            "sha256": hex::encode(Sha256::digest(data)),
        }));
    }
    let manifest = serde_json::to_vec(&json!({
        "format": format,
        "created_ms": 1_714_530_600_000u64,
        "created": "2024-05-01T02:30:00Z",
        "hostname": "old-box",
        "outpost_version": "0.0.1",
        "files": files,
    }))
    .expect("manifest");
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o644);
    builder
        .append_data(&mut h, "manifest.json", manifest.as_slice())
        .expect("append");
    if let Some(sig) = seal(&manifest) {
        let mut h = tar::Header::new_gnu();
        h.set_size(sig.len() as u64);
        h.set_mode(0o644);
        builder
            .append_data(&mut h, "manifest.sig", sig.as_slice())
            .expect("append");
    }
    let plain = builder.into_inner().expect("tar");
    let encryptor = match passphrase {
        Some(p) => {
            let mut r = age::scrypt::Recipient::new(age::secrecy::SecretString::from(p.to_owned()));
            r.set_work_factor(10);
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        }
        None => age::Encryptor::with_recipients(std::iter::once(
            &keys.identity.to_public() as &dyn age::Recipient
        )),
    }
    .expect("encryptor");
    let mut out = encryptor.wrap_output(Vec::new()).expect("wrap");
    out.write_all(&plain).expect("encrypt");
    out.finish().expect("finish")
}

fn member<'a>(members: &'a mut [(String, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
    &mut members
        .iter_mut()
        .find(|(p, _)| p == name)
        .unwrap_or_else(|| panic!("{name} not in the backup"))
        .1
}

fn cdr_json(n: u64, start: u64) -> Value {
    json!({
        "call_id": format!("fixture-{n}"),
        "caller": "100",
        "callee": "200",
        "start": start,
        "answer": start + 2_000,
        "end": start + 62_000,
        "disposition": "answered",
        "status": 200,
    })
}

/// Expects `backup verify` and `backup restore` of `file` to be refused with `reason`, and
/// the box unchanged.
fn assert_refused(daemon: &Daemon, keys: &Keys, file: &Path, key: &[&str], reason: &str) {
    let before = daemon.ctl_json(&["ext", "list"]);
    for cmd in ["verify", "restore"] {
        let mut args = vec!["backup", cmd, file.to_str().expect("utf-8")];
        if cmd == "restore" {
            args.push("--no-wait");
        }
        args.extend_from_slice(key);
        let out = daemon.ctl(&args);
        assert_eq!(out.code, Some(1), "{cmd} {}: {out:?}", file.display());
        assert!(
            out.stderr.contains(reason),
            "{cmd} {}: expected {reason:?} in {:?}",
            file.display(),
            out.stderr
        );
    }
    assert_eq!(
        daemon.ctl(&["status"]).code,
        Some(0),
        "the daemon keeps running"
    );
    assert_eq!(daemon.ctl_json(&["ext", "list"]), before, "nothing changed");
    assert!(
        !daemon.data_dir().join("restore").exists(),
        "nothing staged"
    );
    let _ = keys;
}

#[test]
fn damaged_wrongly_keyed_and_future_backups_are_refused_and_format_0_is_migrated() {
    let keys = Keys::new();
    let mut daemon = Daemon::start_with(config(&keys));
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    let good = backup_now(&daemon);
    let id = keys.id_arg();
    let id_args = ["--identity", id.as_str()];
    let bytes = fs::read(&good).expect("read backup");

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x04;
    let p = keys.path("flipped.backup");
    fs::write(&p, &flipped).expect("write");
    assert_refused(&daemon, &keys, &p, &id_args, "corrupted or truncated");

    let p = keys.path("truncated.backup");
    fs::write(&p, &bytes[..bytes.len() - 100]).expect("write");
    assert_refused(&daemon, &keys, &p, &id_args, "corrupted or truncated");

    let other = Keys::new();
    let other_id = other.id_arg();
    assert_refused(
        &daemon,
        &keys,
        &good,
        &["--identity", other_id.as_str()],
        "wrong passphrase or key",
    );

    let members = unpack(&good, &keys);
    let p = keys.path("future.backup");
    fs::write(&p, pack(&members, 5, &keys, None)).expect("write");
    assert_refused(
        &daemon,
        &keys,
        &p,
        &id_args,
        "made by a newer Outpost (format 5); update first",
    );

    // Re-encrypted after a change without a matching manifest: the checksum catches it.
    let mut altered = members.clone();
    let manifest: Value =
        serde_json::from_slice(member(&mut altered, "manifest.json")).expect("json");
    member(&mut altered, "store/extensions.json").extend_from_slice(b" ");
    let mut plain = tar::Builder::new(Vec::new());
    for (path, data) in &altered {
        let data = if path == "manifest.json" {
            serde_json::to_vec(&manifest).expect("json")
        } else {
            data.clone()
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        plain
            .append_data(&mut h, path, data.as_slice())
            .expect("append");
    }
    let plain = plain.into_inner().expect("tar");
    let mut sealed = age::Encryptor::with_recipients(std::iter::once(
        &keys.identity.to_public() as &dyn age::Recipient
    ))
    .expect("encryptor")
    .wrap_output(Vec::new())
    .expect("wrap");
    sealed.write_all(&plain).expect("encrypt");
    let p = keys.path("altered.backup");
    fs::write(&p, sealed.finish().expect("finish")).expect("write");
    assert_refused(
        &daemon,
        &keys,
        &p,
        &id_args,
        "checksum mismatch for store/extensions.json",
    );

    // A passphrase backup: the wrong passphrase is refused, the right one verifies (an
    // unsigned one only with --trust-unsigned: format 1 carries no signature).
    let p = keys.path("passphrase.backup");
    fs::write(&p, pack(&members, 1, &keys, Some("office passphrase 2024"))).expect("write");
    let path = p.to_str().expect("utf-8");
    let out = ctl_input(
        &daemon,
        &["backup", "verify", path, "--passphrase"],
        "not the passphrase\n",
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("wrong passphrase"), "{out:?}");
    let out = ctl_input(
        &daemon,
        &["--json", "backup", "verify", path, "--passphrase"],
        "office passphrase 2024\n",
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("carries no signature (format 1"),
        "{out:?}"
    );
    let out = ctl_input(
        &daemon,
        &[
            "--json",
            "backup",
            "verify",
            path,
            "--passphrase",
            "--trust-unsigned",
        ],
        "office passphrase 2024\n",
    );
    assert_eq!(out.code, Some(0), "{out:?}");

    // Format 0 kept the call records as one JSON array: restored and migrated.
    let mut old = members.clone();
    old.retain(|(p, _)| p != "store/cdrs.jsonl");
    let cdrs: Vec<Value> = (0..3)
        .map(|n| cdr_json(n, 1_700_000_000_000 + n * 100_000))
        .collect();
    old.insert(
        1,
        (
            "store/cdrs.json".to_owned(),
            serde_json::to_vec(&cdrs).expect("json"),
        ),
    );
    let p = keys.path("format0.backup");
    fs::write(&p, pack(&old, 0, &keys, None)).expect("write");
    let verified = daemon.ctl_json(&[
        "backup",
        "verify",
        p.to_str().expect("utf-8"),
        "--identity",
        &id,
        "--trust-unsigned",
    ]);
    assert_eq!(
        (verified["format"].as_u64(), verified["cdrs"].as_u64()),
        (Some(0), Some(3))
    );
    daemon.ctl_ok(&[
        "backup",
        "restore",
        "--no-wait",
        p.to_str().expect("utf-8"),
        "--identity",
        &id,
        "--trust-unsigned",
    ]);
    restart_after_restore(&mut daemon);
    let listed = daemon.ctl_json(&["cdr", "list"]);
    let ids: Vec<&str> = listed
        .as_array()
        .expect("cdr list")
        .iter()
        .filter_map(|c| c["call_id"].as_str())
        .collect();
    assert_eq!(ids, ["fixture-2", "fixture-1", "fixture-0"], "{listed}");
    assert_eq!(daemon.ctl_json(&["ext", "list"])[0]["ext"], PHONE_A.0);
}

/// `phone add` for `ext` (a Yealink); returns its provisioning password.
fn add_phone(daemon: &Daemon, mac: &str, ext: &str) -> String {
    let added = daemon.ctl_json(&["phone", "add", mac, "T46U", ext]);
    added["password"]
        .as_str()
        .expect("a provisioning password")
        .to_owned()
}

/// The MACs `phone list` shows.
fn phone_macs(daemon: &Daemon) -> Vec<String> {
    let listed = daemon.ctl_json(&["phone", "list"]);
    listed
        .as_array()
        .expect("phone list")
        .iter()
        .filter_map(|p| p["mac"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_backup_made_before_phones_were_backed_up_restores_and_keeps_the_phones_that_still_register() {
    let keys = Keys::new();
    let mut daemon = two_extensions(&keys);
    add_phone(&daemon, "805ec0000001", PHONE_A.0);
    let good = backup_now(&daemon);
    let id = keys.id_arg();
    let verified = verified(&daemon, &good, &id);
    assert_eq!(
        (verified["format"].as_u64(), verified["phones"].as_u64()),
        (Some(4), Some(1)),
        "{verified}"
    );
    let members = unpack(&good, &keys);
    let phones: Value = serde_json::from_slice(
        &members
            .iter()
            .find(|(p, _)| p == PHONES_MEMBER)
            .expect("the phones member")
            .1,
    )
    .expect("phones JSON");
    assert_eq!(phones[0]["mac"], "805ec0000001", "{phones}");
    assert_eq!(phones[0]["sip_password"].as_str().map(str::len), Some(24));

    // The same backup as Outpost made it before phones were backed up (format 3: no
    // phones member; unsigned, as packed here).
    let old = keys.path("format3.backup");
    fs::write(&old, pack(&members, 3, &keys, None)).expect("write");
    let old = old.to_str().expect("utf-8");
    let text = daemon.ctl_ok(&[
        "backup",
        "verify",
        old,
        "--identity",
        &id,
        "--trust-unsigned",
    ]);
    assert!(
        text.contains("not included (format 3: made before desk phones were backed up)"),
        "{text}"
    );
    // After the backup, 200 gets a phone (and with it a new password the backup lacks).
    add_phone(&daemon, "805ec0000002", PHONE_B.0);
    assert_eq!(phone_macs(&daemon), ["805ec0000001", "805ec0000002"]);
    let out = daemon.ctl(&[
        "backup",
        "restore",
        "--no-wait",
        old,
        "--identity",
        &id,
        "--trust-unsigned",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("0 desk phones") && out.stdout.contains("`phone add` the others again"),
        "{out:?}"
    );
    restart_after_restore(&mut daemon);
    let exts: Vec<Value> = daemon
        .ctl_json(&["ext", "list"])
        .as_array()
        .expect("ext list")
        .iter()
        .map(|e| e["ext"].clone())
        .collect();
    assert_eq!(exts, [PHONE_A.0, PHONE_B.0], "the old backup restored");
    // 100's phone was in place when the backup was made: its password still registers,
    // so the box keeps serving it. 200's phone was added after: the restored extension
    // has the old password, and the phone is gone.
    assert_eq!(phone_macs(&daemon), ["805ec0000001"]);
    let log = daemon.log_text();
    assert!(
        log.contains("kept=1") && log.contains("dropped=1"),
        "the restore logs what it kept:\n{log}"
    );
}

#[test]
fn forged_stripped_and_swapped_backups_are_refused_unless_trusted_unsigned_and_the_total_is_capped()
{
    // Anyone with the recipient public key can encrypt a backup; only the box signs one.
    let keys = Keys::new();
    let cap = 1024 * 1024;
    let mut daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&format!(
        "[backup]\nrecipient = \"{}\"\nrestore_max_bytes = {cap}\n",
        keys.public()
    )));
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    let good = backup_now(&daemon);
    let id = keys.id_arg();
    let id_args = ["--identity", id.as_str()];
    let verified = verified(&daemon, &good, &id);
    assert_eq!(verified["format"], 4, "{verified}");
    assert_eq!(
        verified["signature"]["trusted_as"], "this box's key",
        "{verified}"
    );
    let own_key = daemon.ctl_ok(&["backup", "key", "--signing"]);
    let own_line: Vec<&str> = own_key.split_whitespace().take(2).collect();
    assert_eq!(
        verified["signature"]["signer"],
        own_line.join(" "),
        "{verified}"
    );

    // The attacker's change: their SSH key for the admin.
    let keys_json = json!([{
        "line": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl evil@attacker",
        "added": 1_700_000_000_000u64,
    }]);
    let evil_meta =
        serde_json::to_vec(&json!([{"key": "ssh_keys", "text": keys_json.to_string()}]))
            .expect("json");
    let members = unpack(&good, &keys);
    let original_sig = members
        .iter()
        .find(|(p, _)| p == "manifest.sig")
        .expect("signed")
        .1
        .clone();
    let mut evil = members.clone();
    *member(&mut evil, "store/meta.json") = evil_meta;

    let forger_dir = tempfile::tempdir().expect("temp dir");
    let forger = firmware::backup::signing::box_key(forger_dir.path()).expect("forger key");
    let forged = keys.path("forged.backup");
    fs::write(
        &forged,
        pack_with(&evil, 3, &keys, None, |m| Some(forger.seal(m))),
    )
    .expect("write");
    assert_refused(
        &daemon,
        &keys,
        &forged,
        &id_args,
        "which is not this box's key",
    );
    let stripped = keys.path("stripped.backup");
    fs::write(&stripped, pack(&evil, 3, &keys, None)).expect("write");
    assert_refused(
        &daemon,
        &keys,
        &stripped,
        &id_args,
        "its manifest.sig was removed",
    );
    let swapped = keys.path("swapped.backup");
    fs::write(
        &swapped,
        pack_with(&evil, 3, &keys, None, |_| Some(original_sig.clone())),
    )
    .expect("write");
    assert_refused(
        &daemon,
        &keys,
        &swapped,
        &id_args,
        "altered after it was signed",
    );

    // Too large: refused whatever its signature, nothing staged.
    let mut big = members.clone();
    big.insert(
        0,
        (
            "voicemail/100/big.wav".to_owned(),
            vec![7u8; 2 * 1024 * 1024],
        ),
    );
    *member(&mut big, "store/voicemail.json") = serde_json::to_vec(&json!([{
        "id": 1, "mailbox": "100", "caller": "200", "at": 1_700_000_000_000u64,
        "duration_ms": 60_000, "path": "voicemail/100/big.wav", "new": true,
    }]))
    .expect("json");
    let too_big = keys.path("big.backup");
    fs::write(&too_big, pack(&big, 3, &keys, None)).expect("write");
    assert_refused(
        &daemon,
        &keys,
        &too_big,
        &[id_args[0], id_args[1], "--trust-unsigned"],
        &format!("more than {cap} bytes"),
    );

    // --trust-unsigned: restored with a warning, and an alert on the restored box.
    let out = daemon.ctl(&[
        "backup",
        "restore",
        "--no-wait",
        swapped.to_str().expect("utf-8"),
        "--identity",
        &id,
        "--trust-unsigned",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("warning: --trust-unsigned"), "{out:?}");
    assert!(out.stdout.contains("NOT AUTHENTICATED"), "{out:?}");
    restart_after_restore(&mut daemon);
    let ssh = daemon.ctl_json(&["ssh", "keys", "list"]).to_string();
    assert!(
        ssh.contains("evil@attacker"),
        "the admin chose to install it: {ssh}"
    );
    let alerts = daemon.ctl_json(&["fw", "alerts"]).to_string();
    assert!(
        alerts.contains("no trusted key signed") && alerts.contains("altered"),
        "{alerts}"
    );
    assert!(daemon.log_text().contains("--trust-unsigned"), "logged");
}

#[test]
fn backups_are_read_out_in_pieces_and_nothing_outside_the_backup_directory_is() {
    use base64::Engine as _;
    let keys = Keys::new();
    let daemon = Daemon::start_with(config(&keys));
    let file = backup_now(&daemon);
    let name = file.file_name().and_then(|n| n.to_str()).expect("name");
    let read = |file: &str, offset: u64, len: u64| {
        daemon.admin(&json!({
            "cmd": "backup", "backup": "read", "file": file, "offset": offset, "len": len,
        }))
    };
    let mut got = Vec::new();
    loop {
        let r = read(name, got.len() as u64, 4096);
        assert_eq!(r["reply"], "file_chunk", "{r}");
        assert_eq!(
            r["data"]["size"].as_u64(),
            Some(fs::metadata(&file).expect("size").len())
        );
        let piece = base64::engine::general_purpose::STANDARD
            .decode(r["data"]["data"].as_str().unwrap_or_default())
            .expect("base64");
        if piece.is_empty() {
            break;
        }
        got.extend(piece);
    }
    assert_eq!(
        got,
        fs::read(&file).expect("read"),
        "the pieces are the backup"
    );
    // A symlink in the backup directory to the store, paths, partial files, bad lengths.
    let dir = file.parent().expect("backup dir");
    std::os::unix::fs::symlink(daemon.data_dir().join("outpost.redb"), dir.join("x.backup"))
        .expect("symlink");
    fs::write(dir.join("y.backup.partial"), b"half").expect("write");
    for (file, offset, len, why) in [
        ("x.backup", 0, 10, "not a regular file"),
        ("../outpost.redb", 0, 10, "not a backup name"),
        ("..", 0, 10, "not a backup name"),
        (".hidden.backup", 0, 10, "not a file name"),
        ("/etc/passwd", 0, 10, "not a backup name"),
        ("../../etc/x.backup", 0, 10, "not a file name"),
        ("y.backup.partial", 0, 10, "not a backup name"),
        (name, 0, 0, "len must be"),
        (name, 0, 1024 * 1024 + 1, "len must be"),
        (name, 1 << 40, 10, "past the end"),
    ] {
        let r = read(file, offset, len);
        let message = r["data"]["message"].as_str().unwrap_or_default();
        assert!(
            r["reply"] == "error" && message.contains(why),
            "read {file:?} {offset} {len}: expected an error saying {why:?}, got {r}"
        );
    }
}

#[test]
fn kill_9_during_a_backup_leaves_no_good_backup_and_the_next_one_works() {
    let keys = Keys::new();
    let mut daemon = Daemon::start_with(config(&keys));
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    // Make the box big: many call records and a long voicemail message, via a restore.
    let mut members = unpack(&backup_now(&daemon), &keys);
    let mut lines = Vec::new();
    for n in 0..100_000u64 {
        lines.extend_from_slice(
            &serde_json::to_vec(&cdr_json(n, 1_700_000_000_000 + n * 1_000)).expect("json"),
        );
        lines.push(b'\n');
    }
    *member(&mut members, "store/cdrs.jsonl") = lines;
    let wav: Vec<u8> = (0..48u32 * 1024 * 1024)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    members.insert(0, ("voicemail/100/big.wav".to_owned(), wav));
    *member(&mut members, "store/voicemail.json") = serde_json::to_vec(&json!([{
        "id": 1, "mailbox": "100", "caller": "200", "at": 1_700_000_000_000u64,
        "duration_ms": 600_000, "path": "voicemail/100/big.wav", "new": true,
    }]))
    .expect("json");
    let big = keys.path("big.backup");
    fs::write(&big, pack(&members, 1, &keys, None)).expect("write");
    drop(members);
    ctl_long(
        &daemon,
        &[
            "backup",
            "restore",
            "--no-wait",
            big.to_str().expect("utf-8"),
            "--identity",
            &keys.id_arg(),
            "--trust-unsigned",
        ],
    );
    restart_after_restore(&mut daemon);
    let dir = daemon.data_dir().join("backups");
    for e in fs::read_dir(&dir).expect("backup dir").flatten() {
        fs::remove_file(e.path()).expect("clear backups");
    }

    let mut ctl = Command::new(bin("outpostctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["backup", "now"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn outpostctl");
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let found = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy().ends_with(".partial")
                    && fs::metadata(p).is_ok_and(|m| m.len() > 0)
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no .partial file appeared\nlog:\n{}",
            daemon.log_text()
        );
        thread::sleep(Duration::from_millis(5));
    };
    daemon.kill9();
    let _ = ctl.wait();
    assert!(
        partial.exists(),
        "the interrupted backup is left as .partial"
    );
    let names: Vec<String> = fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".partial")),
        "only a .partial file after kill -9: {names:?}"
    );

    daemon.restart();
    let listed = daemon.ctl_json(&["backup", "list"]);
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    assert_eq!(listed["incomplete"], 1, "{listed}");
    assert!(daemon.ctl_json(&["status"])["last_backup_age_secs"].is_null());

    let mut cmd = Command::new(bin("outpostctl"));
    cmd.arg("--socket")
        .arg(daemon.socket())
        .args(["--json", "backup", "now"]);
    let out = outpost_tests::run_with_timeout(&mut cmd, Duration::from_secs(300));
    assert_eq!(out.code, Some(0), "{out:?}\nlog:\n{}", daemon.log_text());
    assert!(
        !partial.exists(),
        "the next backup deletes the .partial file"
    );
    let listed = daemon.ctl_json(&["backup", "list"]);
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["incomplete"], 0, "{listed}");
}

#[test]
fn cdr_export_as_csv_and_json_over_a_date_range() {
    let keys = Keys::new();
    let mut daemon = Daemon::start_with(config(&keys));
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    // Call records on 2024-04-30, 2024-05-01 (two) and 2024-05-02, one with a comma.
    let day = 86_400_000u64;
    let may1 = 1_714_521_600_000u64;
    let mut cdrs = [
        cdr_json(0, may1 - day + 3_600_000),
        cdr_json(1, may1 + 3_600_000),
        cdr_json(2, may1 + day - 1_000),
        cdr_json(3, may1 + day + 60_000),
    ];
    cdrs[1]["callee"] = json!("+49 30, \"front desk\"");
    cdrs[2]["caller"] = json!("=1+1");
    let mut members = unpack(&backup_now(&daemon), &keys);
    *member(&mut members, "store/cdrs.jsonl") = cdrs
        .iter()
        .flat_map(|c| {
            let mut l = serde_json::to_vec(c).expect("json");
            l.push(b'\n');
            l
        })
        .collect();
    let file = keys.path("cdrs.backup");
    fs::write(&file, pack(&members, 1, &keys, None)).expect("write");
    daemon.ctl_ok(&[
        "backup",
        "restore",
        "--no-wait",
        file.to_str().expect("utf-8"),
        "--identity",
        &keys.id_arg(),
        "--trust-unsigned",
    ]);
    restart_after_restore(&mut daemon);

    let csv = daemon.ctl_ok(&[
        "cdr",
        "export",
        "--format",
        "csv",
        "--from",
        "2024-05-01",
        "--to",
        "2024-05-01",
    ]);
    let rows: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        rows[0],
        "call_id,caller,callee,start,answer,end,billsec,disposition,status,\
         linked_id,transferred_by,trunk,did,menu,menu_digit"
    );
    assert_eq!(rows.len(), 3, "{csv}");
    assert_eq!(
        rows[1],
        "fixture-1,100,\"'+49 30, \"\"front desk\"\"\",2024-05-01T01:00:00.000Z,2024-05-01T01:00:02.000Z,2024-05-01T01:01:02.000Z,60,answered,200,fixture-1,,,,,",
        "a value starting with + is defused like any formula start"
    );
    assert!(
        rows[2].starts_with("fixture-2,'=1+1,200,"),
        "no formula from the network: {csv}"
    );

    let out = daemon.ctl_ok(&[
        "cdr",
        "export",
        "--format",
        "json",
        "--from",
        "2024-05-01T00:00:00Z",
        "--to",
        "2024-05-02T12:00:00+02:00",
    ]);
    let v: Value = serde_json::from_str(&out).expect("JSON export");
    let ids: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["call_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["fixture-1", "fixture-2", "fixture-3"],
        "oldest first, --to exclusive"
    );
    assert_eq!(v[0]["callee"], "+49 30, \"front desk\"");

    let all: Value =
        serde_json::from_str(&daemon.ctl_ok(&["cdr", "export", "--format", "json"])).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(4));
    let none: Value = serde_json::from_str(&daemon.ctl_ok(&[
        "cdr",
        "export",
        "--format",
        "json",
        "--from",
        "2030-01-01",
    ]))
    .expect("json");
    assert_eq!(none, json!([]));
    let bad = daemon.ctl(&["cdr", "export", "--from", "yesterday"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
}

/// An off-site target that is down: the backup itself is made, the upload is retried, and
/// the failure is raised as an alert (in `fw alerts`) and shown by `backup list`.
#[test]
fn an_unreachable_offsite_target_is_retried_then_raised_as_an_alert() {
    let keys = Keys::new();
    // A pinned host key (any valid one: nobody answers on the port anyway).
    let key_file = keys.path("host_ed25519");
    let out = outpost_tests::run_with_timeout(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "pinned", "-f"])
            .arg(&key_file),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "ssh-keygen: {out:?}");
    let host_key = fs::read_to_string(format!("{}.pub", key_file.display()))
        .expect("public key")
        .trim()
        .to_owned();
    let closed = outpost_tests::free_port();
    let recipient = keys.public();
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&format!(
        "[backup]\nrecipient = \"{recipient}\"\nupload_tries = 2\nupload_retry_secs = 1\n[[backup.targets]]\nname = \"offsite\"\nkind = \"sftp\"\nhost = \"127.0.0.1\"\nport = {closed}\nuser = \"backup\"\npath = \"/srv/backups\"\nhost_key = \"{host_key}\"\n"
    )));
    let started = std::time::Instant::now();
    let file = backup_now(&daemon);
    assert!(
        file.exists(),
        "the local backup is made whatever the target does"
    );
    let alert = outpost_tests::eventually(Duration::from_secs(20), || {
        let alerts = daemon.ctl_json(&["fw", "alerts"]).to_string();
        alerts
            .contains("backup upload to offsite failed")
            .then_some(alerts)
    });
    let alert = alert.unwrap_or_else(|| {
        panic!(
            "no alert for the failed upload; fw alerts: {}\nlog:\n{}",
            daemon.ctl_json(&["fw", "alerts"]),
            daemon.log_text()
        )
    });
    let took = started.elapsed();
    println!("upload failure raised as an alert after {took:?}: {alert}");
    assert!(
        took >= Duration::from_secs(1),
        "the upload was retried (1 s wait) before the alert"
    );
    let listed = daemon.ctl_json(&["backup", "list"]).to_string();
    assert!(
        listed.contains("offsite") && listed.contains("refused"),
        "backup list shows the target's last error: {listed}"
    );
}
