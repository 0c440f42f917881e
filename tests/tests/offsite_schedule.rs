//! Scheduled off-site backups end to end, through the running daemon: `config apply` sets
//! `[backup] schedule = "daily HH:MM"` to the next minute (UTC), and when it fires outpostd
//! makes the backup, applies retention and uploads it to a real OpenSSH server (sftp,
//! pinned host key, the box's own key) and to Debian's nginx (WebDAV `PUT` + `MOVE` over
//! TLS, Basic auth, a certificate issued by a test intermediate CA, the root given as the
//! target's `ca`). The copies must be byte-identical, pass `backup verify`, and `backup
//! list` must show each target's last upload; then refused credentials (a wrong WebDAV
//! password, the box's key gone from authorized_keys) and a stopped nginx must be
//! reported (alert and `backup list`), not dropped.
//!
//! Needs root, sshd and nginx (tests/run-all installs openssh-server and nginx-light).
//! Every credential file lives under the daemon's data directory.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use firmware::backup::schedule::file_stamp;
use outpost_tests::servers::{write_private, Nginx, Pki, Site, Sshd, Validity};
use outpost_tests::{eventually, require_root, Daemon, DaemonConfig};
use serde_json::Value;

const DAV_USER: &str = "branch12";
const DAV_PASSWORD: &str = "correct horse battery staple";
const PASSPHRASE: &str = "offsite test passphrase";
/// The schedule fires within a minute and a few seconds; the uploads then take seconds.
const SCHEDULE_WAIT: Duration = Duration::from_secs(90);
const UPLOAD_WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit in u64")
}

/// The start of the next UTC minute at least 5 s away (so `config apply` lands before it),
/// and its `HH:MM`.
fn next_minute() -> (u64, String) {
    let due = (now_ms() + 5_000).div_ceil(60_000) * 60_000;
    let stamp = file_stamp(due); // 20240501T023000Z
    (due, format!("{}:{}", &stamp[9..11], &stamp[11..13]))
}

/// The daemon's config file plus `extra`, applied with `outpostctl config apply`.
fn apply(daemon: &Daemon, extra: &str) {
    let base = fs::read_to_string(daemon.dir().join("outpost.toml")).expect("config");
    let path = daemon.dir().join("applied.toml");
    fs::write(&path, format!("{base}\n{extra}")).expect("write config");
    daemon.ctl_ok(&["config", "apply", path.to_str().expect("utf-8 path")]);
}

/// `backup list` target `name`.
fn target(list: &Value, name: &str) -> Value {
    list["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no target {name} in {list}"))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

struct Setup {
    daemon: Daemon,
    sshd: Sshd,
    nginx: Nginx,
    dav_root: tempfile::TempDir,
    /// Where the daemon keeps credential files (under its data directory).
    keys: PathBuf,
    _certs: tempfile::TempDir,
}

/// nginx and sshd up, the daemon running with its SFTP key authorised and the key files
/// in its data directory; no `[backup]` section yet.
fn setup() -> Setup {
    require_root("the scheduled off-site backup test");
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    let keys = daemon.data_dir().join("keys");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&keys)
        .expect("keys dir");
    write_private(
        &keys.join("backup.pass"),
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    write_private(
        &keys.join("dav.pass"),
        format!("{DAV_PASSWORD}\n").as_bytes(),
    );

    let certs = tempfile::tempdir().expect("certs dir");
    let pki = Pki::new("Outpost offsite test");
    fs::write(keys.join("dav-ca.pem"), pki.root_pem()).expect("CA file");
    let cert = pki.server(certs.path(), "dav", &["127.0.0.1"], Validity::Current);
    let dav_root = tempfile::tempdir().expect("dav root");
    fs::create_dir_all(dav_root.path().join("outpost/branch12")).expect("dav collection");
    let nginx = Nginx::start(&[Site {
        cert,
        root: dav_root.path().to_path_buf(),
        dav: Some((DAV_USER.to_owned(), DAV_PASSWORD.to_owned())),
    }]);

    // The box's SFTP key (made at first use) goes into the server's authorized_keys.
    let public = daemon.ctl_ok(&["backup", "key"]);
    let public = public
        .lines()
        .find(|l| l.starts_with("ssh-"))
        .unwrap_or_else(|| panic!("backup key prints an OpenSSH line: {public}"))
        .to_owned();
    let sshd = Sshd::start(&format!("{public}\n"));
    Setup {
        daemon,
        sshd,
        nginx,
        dav_root,
        keys,
        _certs: certs,
    }
}

impl Setup {
    /// The `[backup]` section: both targets, `schedule`, one backup a day kept locally.
    fn backup_toml(&self, schedule: &str) -> String {
        format!(
            "[backup]\npassphrase_file = \"{k}/backup.pass\"\nschedule = \"{schedule}\"\n\
             keep_daily = 1\nkeep_weekly = 0\nupload_tries = 2\nupload_retry_secs = 1\n\n\
             [[backup.targets]]\nname = \"nas\"\nkind = \"sftp\"\nhost = \"127.0.0.1\"\n\
             port = {port}\nuser = \"root\"\npath = \"{remote}\"\nhost_key = \"{host_key}\"\n\n\
             [[backup.targets]]\nname = \"dav\"\nkind = \"https\"\n\
             url = \"https://{dav}/outpost/branch12/\"\nusername = \"{DAV_USER}\"\n\
             password_file = \"{k}/dav.pass\"\nca = \"{k}/dav-ca.pem\"\n",
            k = self.keys.display(),
            port = self.sshd.port(),
            remote = self.sshd.remote().display(),
            host_key = self.sshd.host_key(),
            dav = self.nginx.addr(0),
        )
    }

    fn dav_dir(&self) -> PathBuf {
        self.dav_root.path().join("outpost/branch12")
    }

    /// Waits until no upload runs and the last errors of nas and dav contain `nas` and
    /// `dav`; returns them.
    fn wait_errors(&self, nas: &str, dav: &str) -> (String, String) {
        eventually(UPLOAD_WAIT, || {
            let list = self.daemon.ctl_json(&["backup", "list"]);
            let error = |t: &str, words: &str| {
                let st = target(&list, t);
                let e = st["last_upload_error"].as_str()?.to_owned();
                (st["uploading"] == false && e.contains(words)).then_some(e)
            };
            Some((error("nas", nas)?, error("dav", dav)?))
        })
        .unwrap_or_else(|| {
            panic!(
                "the targets did not report {nas:?} and {dav:?} within {UPLOAD_WAIT:?}: {}\n\
                 log:\n{}",
                self.daemon.ctl_json(&["backup", "list"]),
                self.daemon.log_text()
            )
        })
    }

    /// Waits until both targets report `file` as their last successful upload.
    fn wait_uploaded(&self, file: &str, wait: Duration) -> Value {
        eventually(wait, || {
            let list = self.daemon.ctl_json(&["backup", "list"]);
            ["nas", "dav"]
                .iter()
                .all(|t| target(&list, t)["last_ok_file"] == file)
                .then_some(list)
        })
        .unwrap_or_else(|| {
            panic!(
                "{file} was not uploaded to both targets within {wait:?}; backup list: {}\n\
                 sshd log:\n{}\n{}\ndaemon log:\n{}",
                self.daemon.ctl_json(&["backup", "list"]),
                self.sshd.log(),
                self.nginx.log(),
                self.daemon.log_text()
            )
        })
    }
}

#[test]
fn the_schedule_uploads_to_real_sftp_and_webdav_servers_and_failures_are_reported() {
    let s = setup();
    let local_dir = s.daemon.data_dir().join("backups");

    // A backup made now (uploaded too), then the schedule set to the next minute.
    apply(&s.daemon, &s.backup_toml("off"));
    let early = s.daemon.ctl_json(&["backup", "now"]);
    let early = early["name"].as_str().expect("backup name").to_owned();
    s.wait_uploaded(&early, UPLOAD_WAIT);
    let (due, hhmm) = next_minute();
    apply(&s.daemon, &s.backup_toml(&format!("daily {hhmm}")));
    let list = s.daemon.ctl_json(&["backup", "list"]);
    assert_eq!(list["schedule"], format!("daily {hhmm}"), "{list}");
    assert_eq!(
        list["next_run_ms"], due,
        "the next run is the minute set: {list}"
    );

    // The scheduled run: its file name carries the minute it ran at.
    let minute = &file_stamp(due)[..13];
    let started = Instant::now();
    let scheduled = eventually(SCHEDULE_WAIT, || {
        let list = s.daemon.ctl_json(&["backup", "list"]);
        let newest = list["backups"][0]["name"].as_str()?.to_owned();
        newest.contains(minute).then_some(newest)
    })
    .unwrap_or_else(|| {
        panic!(
            "no scheduled backup at {hhmm} UTC within {SCHEDULE_WAIT:?}: {}\nlog:\n{}",
            s.daemon.ctl_json(&["backup", "list"]),
            s.daemon.log_text()
        )
    });
    let list = s.wait_uploaded(&scheduled, UPLOAD_WAIT);
    println!(
        "scheduled backup {scheduled} made and uploaded {:?} after the schedule was set",
        started.elapsed()
    );
    for t in ["nas", "dav"] {
        let st = target(&list, t);
        assert!(st["last_upload_error"].is_null(), "{st}");
        assert!(
            st["last_ok_ms"].as_u64().is_some_and(|ms| ms >= due),
            "{st}"
        );
    }
    let text = s.daemon.ctl_ok(&["backup", "list"]);
    for t in ["nas", "dav"] {
        assert!(
            text.contains(&format!("target {t}: ok ")) && text.contains(&scheduled),
            "backup list shows {t}'s last upload: {text}"
        );
    }

    // Both copies arrived complete under their names (no partial left), byte-identical.
    let local = fs::read(local_dir.join(&scheduled)).expect("local scheduled backup");
    let sftp_copy = s.sshd.remote().join(&scheduled);
    let dav_copy = s.dav_dir().join(&scheduled);
    for copy in [&sftp_copy, &dav_copy] {
        assert_eq!(
            fs::read(copy).unwrap_or_else(|e| panic!("{}: {e}", copy.display())),
            local,
            "{} is the backup byte for byte",
            copy.display()
        );
    }
    let mut want = vec![early.clone(), scheduled.clone()];
    want.sort();
    assert_eq!(names_in(&s.sshd.remote()), want, "SFTP target");
    assert_eq!(names_in(&s.dav_dir()), want, "WebDAV target");
    let access = s.nginx.access_log();
    assert!(
        access.contains(&format!("\"PUT /outpost/branch12/{scheduled}.partial"))
            && access.contains(&format!("\"MOVE /outpost/branch12/{scheduled}.partial")),
        "the WebDAV upload is PUT to a partial name and MOVEd into place:\n{access}"
    );

    // The uploaded copies verify as backups (with the box's passphrase file).
    for copy in [&sftp_copy, &dav_copy] {
        let out = s
            .daemon
            .ctl_json(&["backup", "verify", copy.to_str().expect("utf-8")]);
        assert!(
            out.to_string().contains("revisions"),
            "backup verify {}: {out}",
            copy.display()
        );
    }

    // Local retention ran with the schedule: one backup a day is kept.
    // Names end in `-YYYYMMDDTHHMMSSZ.backup`.
    let early_day = &early[early.len() - ".backup".len() - 16..][..8];
    let same_day = early_day == &file_stamp(due)[..8];
    let local_names = names_in(&local_dir);
    if same_day {
        assert_eq!(
            local_names,
            vec![scheduled.clone()],
            "keep_daily = 1 deletes the earlier backup of the day locally"
        );
    } else {
        println!("the test crossed midnight UTC: both days' backups stay");
    }

    // The targets list what they hold (SFTP `ls`; nginx has no PROPFIND: said so), and a
    // backup no longer on the box comes back from the WebDAV server and checks out.
    let remote = s.daemon.ctl_json(&["backup", "list", "--remote"]);
    println!("backup list --remote: {remote}");
    let listing = |t: &str| {
        remote
            .as_array()
            .expect("listings")
            .iter()
            .find(|l| l["target"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no listing of {t}: {remote}"))
    };
    let nas = listing("nas");
    let mut listed: Vec<String> = nas["backups"]
        .as_array()
        .expect("nas backups")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, want, "SFTP listing: {nas}");
    let dav = listing("dav");
    let dav_error = dav["error"].as_str().unwrap_or_default();
    assert!(
        dav_error.contains("cannot be listed")
            && dav_error.contains("PROPFIND with HTTP 405")
            && dav_error.contains("backup fetch NAME"),
        "nginx refuses PROPFIND, and the listing says so: {dav}"
    );
    let gone = if same_day { &early } else { &scheduled };
    if same_day {
        let fetched = s
            .daemon
            .ctl_json(&["backup", "fetch", gone, "--target", "dav"]);
        assert_eq!(fetched["name"], gone.as_str(), "{fetched}");
        assert_eq!(fetched["verified"], true, "{fetched}");
        assert_eq!(
            fs::read(local_dir.join(gone)).expect("fetched file"),
            fs::read(s.dav_dir().join(gone)).expect("dav copy"),
            "the fetched backup is the uploaded one"
        );
    }

    // Failures, reported (alert, `backup list`), never dropped: first refused credentials
    // (a wrong WebDAV password; the box's key gone from authorized_keys), then nginx down.
    let mut s = s;
    write_private(&s.keys.join("dav.pass"), b"not the password\n");
    s.sshd.authorize("");
    let failed = s.daemon.ctl_json(&["backup", "now"]);
    let failed = failed["name"].as_str().expect("backup name").to_owned();
    let (nas_err, dav_err) = s.wait_errors("refused", "refused");
    assert!(
        nas_err.contains("refused our key") && nas_err.contains("authorized_keys"),
        "the SFTP failure says the key was refused and what to do: {nas_err}"
    );
    assert!(
        dav_err.contains("HTTP 401") && dav_err.contains("username or password was refused"),
        "the WebDAV failure says the password was refused: {dav_err}"
    );
    write_private(
        &s.keys.join("dav.pass"),
        format!("{DAV_PASSWORD}\n").as_bytes(),
    );
    s.nginx.stop();
    s.daemon.ctl_json(&["backup", "now"]);
    let (_, dav_err) = s.wait_errors("refused our key", "cannot reach");
    assert!(
        dav_err.contains(&s.nginx.addr(0).to_string()) && dav_err.contains("connection refused"),
        "the WebDAV failure names the server and why: {dav_err}"
    );
    let alerts = s.daemon.ctl_json(&["fw", "alerts"]).to_string();
    println!("alerts: {alerts}");
    for words in [
        "backup upload to nas failed: authentication failed",
        "backup upload to dav failed: authentication failed",
        "backup upload to dav failed: cannot reach",
    ] {
        assert!(alerts.contains(words), "an alert says {words:?}: {alerts}");
    }
    let list = s.daemon.ctl_json(&["backup", "list"]);
    for t in ["nas", "dav"] {
        let t = target(&list, t);
        assert_eq!(
            t["last_ok_file"],
            scheduled.as_str(),
            "the last success stays: {t}"
        );
    }
    let text = s.daemon.ctl_ok(&["backup", "list"]);
    assert!(
        text.contains("target nas: FAILED") && text.contains("target dav: FAILED"),
        "{text}"
    );
    assert_eq!(
        names_in(&s.sshd.remote()),
        want,
        "nothing arrived with a refused key"
    );
    assert_eq!(
        names_in(&s.dav_dir()),
        want,
        "nothing arrived with a refused password, not even {failed}.partial"
    );
}
