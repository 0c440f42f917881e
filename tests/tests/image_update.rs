//! Firmware updates of the real image under qemu-system-aarch64 (issue 8): signed bundles
//! installed over SSH into the other root slot, the trial boot that commits itself after its
//! health check, refusals (untrusted signature, another board, a downgrade, a changed
//! payload), a power cut in the middle of an install, and a bundle whose daemon never starts
//! returning the box to the old slot with the reason recorded; a bundle uploaded through the
//! web page (HTTPS to the guest's port 443), checked by outpostd, installed by the installer
//! agent (the admin account, no capabilities) and booted through the page's reboot button.
//! Also: two builds from the same sources give the same bytes.
//!
//! The bundles are made with `outpost-image bundle` from the built image's root filesystem;
//! the "newer" releases differ in `/etc/outpost/release` (and the broken one has an
//! `outpostd` that exits at once), which keeps the test to one image build plus the
//! reproducibility build.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_tests::qemu::{
    copy_disk, ssh_keypair, Boot, Guest, ImageSpec, BOOT_TIMEOUT, TEST_EPOCH,
};
use outpost_tests::webform::{flash, WebSession};
use outpost_tests::{bin, eventually, run_with_timeout, workspace_root, CmdOutput};
use serde_json::Value;

/// How long an SSH command may take (a bundle upload included).
const SSH_TIMEOUT: Duration = Duration::from_secs(240);
/// Health-check limit baked into the test image (seconds).
const HEALTH_TIMEOUT: u64 = 40;
/// The admin password the web page's login takes (set over SSH).
const WEB_PASSWORD: &str = "branch-office-web-42";

fn sha256(path: &Path) -> String {
    let out = run_with_timeout(
        Command::new("sha256sum").arg(path),
        Duration::from_secs(120),
    );
    out.stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn run_ok(cmd: &mut Command, what: &str) -> CmdOutput {
    let out = run_with_timeout(cmd, Duration::from_secs(300));
    assert_eq!(
        out.code,
        Some(0),
        "{what} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out
}

/// `outpost-image keygen` into `dir/name.{key,pub}`.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    run_ok(
        Command::new(bin("outpost-image"))
            .arg("keygen")
            .arg("--out")
            .arg(&prefix)
            .args(["--comment", name]),
        "outpost-image keygen",
    );
    (
        PathBuf::from(format!("{}.key", prefix.display())),
        PathBuf::from(format!("{}.pub", prefix.display())),
    )
}

/// A bundle directory like an image's (manifest.json + root.squashfs): the image's root
/// filesystem (with `edit` applied to an unpacked copy, if given), and the manifest with
/// `manifest` applied. Returns the directory.
fn variant(
    image: &Path,
    work: &Path,
    name: &str,
    edit: Option<&dyn Fn(&Path)>,
    manifest: impl FnOnce(&mut Value),
) -> PathBuf {
    let dir = work.join(name);
    fs::create_dir_all(&dir).expect("variant dir");
    let squashfs = dir.join("root.squashfs");
    if let Some(edit) = edit {
        repack(image, work, name, edit, &squashfs);
    } else {
        fs::copy(image.join("root.squashfs"), &squashfs).expect("copy the root filesystem");
    }
    let mut m: Value = serde_json::from_str(
        &fs::read_to_string(image.join("manifest.json")).expect("image manifest"),
    )
    .expect("manifest JSON");
    manifest(&mut m);
    // The repacked root filesystem is what the manifest describes now.
    m["artifacts"]["root.squashfs"] = serde_json::json!({
        "bytes": fs::metadata(&squashfs).expect("root filesystem").len(),
        "sha256": sha256(&squashfs),
    });
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&m).expect("JSON"),
    )
    .expect("write manifest");
    dir
}

/// The image's root filesystem unpacked, edited and packed again into `squashfs`.
fn repack(image: &Path, work: &Path, name: &str, edit: &dyn Fn(&Path), squashfs: &Path) {
    let tree = work.join(format!("{name}.tree"));
    let _ = fs::remove_dir_all(&tree);
    run_ok(
        Command::new("unsquashfs")
            .args(["-no-progress", "-quiet", "-d"])
            .arg(&tree)
            .arg(image.join("root.squashfs")),
        "unsquashfs",
    );
    edit(&tree);
    let _ = fs::remove_file(squashfs);
    run_ok(
        Command::new("mksquashfs").arg(&tree).arg(squashfs).args([
            "-noappend",
            "-all-root",
            "-no-xattrs",
            "-comp",
            "zstd",
            "-quiet",
            "-no-progress",
        ]),
        "mksquashfs",
    );
    let _ = fs::remove_dir_all(&tree);
}

/// Sets `build=` (and source_date_epoch=) in the unpacked root's release file.
fn set_build(tree: &Path, build: u64) {
    let path = tree.join("etc/outpost/release");
    let text = fs::read_to_string(&path).expect("release file");
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("build=") && !l.starts_with("source_date_epoch="))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("build={build}\nsource_date_epoch={build}\n"));
    fs::write(&path, out).expect("write release file");
}

/// `outpost-image bundle` of a variant directory.
fn bundle(dir: &Path, key: &Path, out: &Path) {
    run_ok(
        Command::new(bin("outpost-image"))
            .arg("bundle")
            .arg("--image")
            .arg(dir)
            .arg("--key")
            .arg(key)
            .arg("--out")
            .arg(out),
        "outpost-image bundle",
    );
}

/// The guest's `update status --json`.
fn update_status(guest: &Guest, key: &Path) -> Value {
    let out = guest.ssh(key, "--json update status", None, SSH_TIMEOUT);
    assert_eq!(
        out.code,
        Some(0),
        "update status: {}\n{}",
        out.stdout,
        out.stderr
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("update status is not JSON ({e}): {}", out.stdout))
}

/// Waits until SSH with `key` runs `status` (dropbear starts with outpostd). At most six
/// tries five seconds apart: every refused login counts as a failure from the host's
/// address, and ten of them ban it.
fn wait_ssh(guest: &mut Guest, key: &Path) {
    let mut last = String::new();
    for _ in 0..6 {
        let out = guest.ssh(key, "status", None, Duration::from_secs(30));
        if out.code == Some(0) {
            return;
        }
        last = out.stderr;
        assert!(!guest.exited(), "qemu exited:\n{}", guest.console());
        std::thread::sleep(Duration::from_secs(5));
    }
    panic!(
        "no SSH login with the baked key: {last}\n--- console ---\n{}",
        guest.console()
    );
}

/// Boots the persistent test disk (boot number `n` names the console log).
fn start(image: &Path, disk: &Path, n: u32) -> Guest {
    let mut b = Boot::snapshot(image);
    b.forwards.push(("tcp", 443));
    b.disk = disk.to_owned();
    b.snapshot = false;
    b.log = image.join(format!("update-boot-{n}.log"));
    Guest::boot(&b)
}

/// Boots the persistent test disk and waits until outpostd is ready.
fn boot(image: &Path, disk: &Path, n: u32) -> Guest {
    let mut g = start(image, disk, n);
    g.wait_for(" ready listen=", BOOT_TIMEOUT);
    g
}

/// Serves `file` to one HTTP GET on 127.0.0.1 (the guest reaches it as 10.0.2.2, qemu's
/// address for the host); returns the port. The thread ends after one answer or 5 minutes.
fn serve_once(file: &Path) -> u16 {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the HTTP server");
    let port = listener.local_addr().expect("address").port();
    let body = fs::read(file).expect("bundle to serve");
    std::thread::spawn(move || {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return,
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    });
    port
}

/// Installs `bundle` over SSH (`update install -`); returns the output.
fn install(guest: &Guest, key: &Path, bundle: &Path, extra: &str) -> CmdOutput {
    guest.ssh(
        key,
        &format!("update install -{extra}"),
        Some(bundle),
        SSH_TIMEOUT,
    )
}

fn refused(out: &CmdOutput, why: &str, console: &str) {
    let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        out.code == Some(1) && text.contains(why),
        "expected a refusal naming {why:?}, got {:?}:\n{}\n{}\n--- console ---\n{console}",
        out.code,
        out.stdout,
        out.stderr
    );
}

#[test]
fn signed_updates_commit_refuse_survive_power_cuts_and_roll_back() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (release_key, release_pub) = keygen(keys.path(), "release");
    let (rogue_key, _) = keygen(keys.path(), "rogue");
    let (ssh_key, _) = ssh_keypair(keys.path(), "admin");
    let ssh_pub = PathBuf::from(format!("{}.pub", ssh_key.display()));

    let mut spec = ImageSpec::new("image-update", "[demo]\nextensions = [\"100\"]\n");
    spec.args = vec![
        "--update-key".to_owned(),
        release_pub.display().to_string(),
        "--ssh-key".to_owned(),
        ssh_pub.display().to_string(),
        "--health-timeout".to_owned(),
        HEALTH_TIMEOUT.to_string(),
    ];
    let build_time = spec.build();
    let image = spec.out.clone();

    // Two builds from the same sources and inputs give the same bytes.
    let mut again = spec.clone();
    again.out = workspace_root().join("target").join("image-update-repro");
    again.args.push("--no-cargo".to_owned());
    let rebuild_time = again.build();
    for artifact in [
        "disk.img",
        "root.squashfs",
        "initramfs.cpio.gz",
        "sbom.json",
        "manifest.json",
    ] {
        assert_eq!(
            sha256(&image.join(artifact)),
            sha256(&again.out.join(artifact)),
            "{artifact} differs between two builds of the same sources"
        );
    }
    let _ = fs::remove_dir_all(&again.out);

    // Bundles.
    let work = image.join("bundles");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("bundle dir");
    let newer = TEST_EPOCH + 100;
    let good_dir = variant(
        &image,
        &work,
        "good",
        Some(&|t: &Path| set_build(t, newer)),
        |m| m["source_date_epoch"] = newer.into(),
    );
    let good = work.join("good.bundle");
    bundle(&good_dir, &release_key, &good);
    let rogue = work.join("rogue.bundle");
    bundle(&good_dir, &rogue_key, &rogue);
    let other_board_dir = variant(&image, &work, "rpi4", None, |m| {
        m["source_date_epoch"] = newer.into();
        m["profile"] = "rpi4".into();
    });
    let other_board = work.join("rpi4.bundle");
    bundle(&other_board_dir, &release_key, &other_board);
    let older = TEST_EPOCH - 100;
    let old_dir = variant(&image, &work, "old", None, |m| {
        m["source_date_epoch"] = older.into()
    });
    let downgrade = work.join("old.bundle");
    bundle(&old_dir, &release_key, &downgrade);
    let changed = work.join("changed.bundle");
    let mut bytes = fs::read(&good).expect("good bundle");
    let at = bytes.len() - 4096;
    bytes[at] ^= 0x40;
    fs::write(&changed, bytes).expect("changed bundle");
    let broken_build = TEST_EPOCH + 200;
    let broken_dir = variant(
        &image,
        &work,
        "broken",
        Some(&|t: &Path| {
            set_build(t, broken_build);
            let daemon = t.join("usr/bin/outpostd");
            fs::remove_file(&daemon).expect("remove outpostd");
            fs::write(
                &daemon,
                "#!/bin/sh\necho 'outpostd: this build is broken on purpose' >&2\nexit 1\n",
            )
            .expect("broken outpostd");
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&daemon, fs::Permissions::from_mode(0o755)).expect("chmod");
        }),
        |m| m["source_date_epoch"] = broken_build.into(),
    );
    let broken = work.join("broken.bundle");
    bundle(&broken_dir, &release_key, &broken);

    let disk = image.join("update-disk.img");
    let _ = fs::remove_file(&disk);
    copy_disk(&image.join("disk.img"), &disk);

    // Boot 1: the factory image in slot a.
    let mut guest = boot(&image, &disk, 1);
    let console = guest.wait_for("admin password: ", Duration::from_secs(90));
    assert!(console.contains("booting slot a"), "{console}");
    wait_ssh(&mut guest, &ssh_key);
    let out = guest.ssh(&ssh_key, "ext add 555 --name Kept", None, SSH_TIMEOUT);
    assert_eq!(out.code, Some(0), "ext add: {}", out.stderr);
    let status = update_status(&guest, &ssh_key);
    eprintln!("update status before: {status}");

    // Refusals: nothing is armed.
    refused(
        &install(&guest, &ssh_key, &rogue, ""),
        "signature",
        &guest.console(),
    );
    refused(
        &install(&guest, &ssh_key, &other_board, ""),
        "rpi4",
        &guest.console(),
    );
    refused(
        &install(&guest, &ssh_key, &downgrade, ""),
        "downgrade",
        &guest.console(),
    );
    refused(
        &install(&guest, &ssh_key, &changed, ""),
        "does not match",
        &guest.console(),
    );
    let sbom = guest.ssh(&ssh_key, "sbom", None, SSH_TIMEOUT);
    assert_eq!(sbom.code, Some(0), "sbom: {}", sbom.stderr);
    let sbom: Value = serde_json::from_str(&sbom.stdout).expect("the SBOM is JSON");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let names: Vec<&str> = sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for name in ["tokio", "redb", "nftables", "busybox-static"] {
        assert!(names.contains(&name), "the SBOM lacks {name}");
    }

    // Power cut in the middle of an install: half the bundle goes in, then qemu dies.
    let mut child = guest
        .ssh_command(&ssh_key, "update install -")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    {
        let bytes = fs::read(&good).expect("good bundle");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&bytes[..bytes.len() / 2])
            .expect("send half the bundle");
        stdin.flush().expect("flush");
        std::thread::sleep(Duration::from_secs(5));
        guest.kill();
        drop(stdin);
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(guest);

    // Boot 2: still slot a, no trial.
    let mut guest = boot(&image, &disk, 2);
    let console = guest.console();
    assert!(
        console.contains("booting slot a") && !console.contains("on trial"),
        "after a power cut mid-install the box must boot its old slot:\n{console}"
    );
    wait_ssh(&mut guest, &ssh_key);

    // A good bundle, downloaded by the box over HTTP: installed, reboot, trial, committed.
    let port = serve_once(&good);
    let installed = Instant::now();
    let out = guest.ssh(
        &ssh_key,
        &format!("update install http://10.0.2.2:{port}/good.bundle --reboot"),
        None,
        SSH_TIMEOUT,
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("slot b"),
        "install of a good bundle: {:?}\n{text}\n--- console ---\n{}",
        out.code,
        guest.console()
    );
    guest.wait_exit(Duration::from_secs(60));
    drop(guest);
    let mut guest = boot(&image, &disk, 3);
    let console = guest.wait_for("committed", Duration::from_secs(HEALTH_TIMEOUT + 60));
    assert!(console.contains("booting slot b"), "{console}");
    let update_time = installed.elapsed();
    wait_ssh(&mut guest, &ssh_key);
    let status = update_status(&guest, &ssh_key);
    eprintln!("update status after the update: {status}");
    let text = status.to_string();
    assert!(text.contains(&newer.to_string()), "{text}");
    let exts = guest.ssh(&ssh_key, "ext list", None, SSH_TIMEOUT);
    assert!(
        exts.stdout.contains("555") && exts.stdout.contains("Kept"),
        "/data did not survive the update: {}",
        exts.stdout
    );

    // A bundle whose daemon never starts: the trial fails its health check and the box
    // returns to slot b by itself, with the reason recorded.
    let out = install(&guest, &ssh_key, &broken, " --reboot");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("slot a"),
        "install of the broken bundle: {text}"
    );
    guest.wait_exit(Duration::from_secs(60));
    drop(guest);
    let mut trial = start(&image, &disk, 4);
    let console = trial.wait_for("booting slot a", BOOT_TIMEOUT);
    assert!(console.contains("on trial"), "{console}");
    trial.wait_exit(Duration::from_secs(HEALTH_TIMEOUT + 120));
    let console = trial.console();
    assert!(
        console.contains("rolled-back") || console.contains("rolled back"),
        "the failed trial must say it rolls back:\n{console}"
    );
    drop(trial);
    let mut guest = boot(&image, &disk, 5);
    let console = guest.console();
    assert!(
        console.contains("booting slot b") && !console.contains("on trial"),
        "{console}"
    );
    wait_ssh(&mut guest, &ssh_key);
    let status = update_status(&guest, &ssh_key);
    eprintln!("update status after the failed trial: {status}");
    let text = status.to_string();
    assert!(
        text.contains("rolled-back") && text.contains("outpostd"),
        "the reason of the rollback must be recorded: {text}"
    );
    let alerts = guest.ssh(&ssh_key, "fw alerts", None, SSH_TIMEOUT);
    assert!(
        alerts.stdout.to_lowercase().contains("update"),
        "no alert about the failed update: {}",
        alerts.stdout
    );

    // From the web page: the daemon (which cannot write a slot) checks the upload and
    // hands it to the installer agent, which writes slot a and arms it; the page's reboot
    // button boots it and the trial commits. The good bundle is the running release, so
    // it goes in with force; the rogue one is refused by the daemon with the reason.
    // The agent as the kernel sees it (files/privileges): the admin, no capability in any
    // set, no way to gain one.
    let console = guest.wait_for("privileges: dropbear", Duration::from_secs(60));
    let agent = console
        .lines()
        .find_map(|l| {
            l.split_once("privileges: update agent pid ")
                .map(|(_, r)| r)
        })
        .unwrap_or_else(|| panic!("no privileges line for the update agent:\n{console}"))
        .to_owned();
    for want in [
        "Uid: 1000 1000 1000 1000",
        "Gid: 1000 1000 1000 1000",
        "CapInh: 0000000000000000",
        "CapPrm: 0000000000000000",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "CapAmb: 0000000000000000",
        "NoNewPrivs: 1",
    ] {
        assert!(
            agent.contains(want),
            "the update agent: {want} not in {agent}"
        );
    }
    let pw = work.join("web-password");
    fs::write(&pw, format!("{WEB_PASSWORD}\n")).expect("password file");
    let out = guest.ssh(&ssh_key, "admin passwd", Some(&pw), SSH_TIMEOUT);
    assert_eq!(
        out.code,
        Some(0),
        "admin passwd: {}{}",
        out.stdout,
        out.stderr
    );
    let web = WebSession::log_in(
        &format!("https://127.0.0.1:{}", guest.port("tcp", 443)),
        WEB_PASSWORD,
    );
    let csrf = web.csrf("/updates");
    let web_upload = Instant::now();
    let (status, _) = web.post_file(
        "/updates/upload",
        &[("csrf", &csrf), ("force", "1")],
        "bundle",
        &fs::read(&rogue).expect("rogue bundle"),
        SSH_TIMEOUT,
    );
    assert_eq!(status, 303);
    let shown = flash(&web.get("/updates"));
    assert!(shown.contains("bad signature"), "the rogue bundle: {shown}");
    let (status, _) = web.post_file(
        "/updates/upload",
        &[("csrf", &csrf), ("force", "1")],
        "bundle",
        &fs::read(&good).expect("good bundle"),
        SSH_TIMEOUT,
    );
    assert_eq!(status, 303);
    let shown = flash(&web.get("/updates"));
    assert!(
        shown.contains("handed to the installer"),
        "the good bundle: {shown}\n--- console ---\n{}",
        guest.console()
    );
    let live = eventually(SSH_TIMEOUT, || {
        let live = web.get("/live/updates");
        (live.contains("data-state=\"installed\"") || live.contains("data-state=\"failed\""))
            .then_some(live)
    })
    .unwrap_or_else(|| panic!("the agent never finished:\n{}", guest.console()));
    assert!(
        live.contains("installed in slot a"),
        "the agent's report: {live}\n--- console ---\n{}",
        guest.console()
    );
    let web_install_time = web_upload.elapsed();
    let status = update_status(&guest, &ssh_key);
    assert_eq!(status["armed"], "a", "slot a is armed: {status}");
    assert_eq!(
        web.post_form("/updates/reboot", &format!("csrf={csrf}")),
        303
    );
    guest.wait_exit(Duration::from_secs(90));
    drop(guest);
    let mut guest = boot(&image, &disk, 6);
    let console = guest.wait_for("committed", Duration::from_secs(HEALTH_TIMEOUT + 60));
    assert!(
        console.contains("booting slot a") && console.contains("on trial"),
        "the web page's update boots slot a on trial: {console}"
    );
    wait_ssh(&mut guest, &ssh_key);
    let status = update_status(&guest, &ssh_key);
    let committed = status["slots"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == "a"))
        .map(|s| s["committed"] == true);
    assert_eq!(committed, Some(true), "slot a committed: {status}");
    drop(guest);

    eprintln!(
        "image update: build {:.1} s, identical rebuild {:.1} s, good bundle {} KiB, install + reboot + commit {:.1} s, web upload + check + install {:.1} s",
        build_time.as_secs_f64(),
        rebuild_time.as_secs_f64(),
        fs::metadata(&good).map(|m| m.len() >> 10).unwrap_or(0),
        update_time.as_secs_f64(),
        web_install_time.as_secs_f64()
    );
    let _ = fs::remove_file(&disk);
    let _ = fs::remove_dir_all(&work);
}
