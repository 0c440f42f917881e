//! outpostctl against a live daemon: extensions, import, exit codes, JSON output, `ext
//! show` and `ext forward`, and the box's host name in `status` and backup file names.

use std::process::Command;
use std::time::Duration;

use outpost_tests::{bin, json_str, require_root, run_with_timeout, Daemon, DaemonConfig, Sipp};

fn ext_numbers(daemon: &Daemon) -> Vec<String> {
    let list = daemon.ctl_json(&["ext", "list"]);
    list.as_array()
        .expect("ext list is an array")
        .iter()
        .filter_map(|e| json_str(e, "ext").map(str::to_owned))
        .collect()
}

#[test]
fn versions_are_printed() {
    for name in ["outpostd", "outpostctl"] {
        let out = run_with_timeout(
            Command::new(bin(name)).arg("--version"),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(out.stdout.trim(), format!("{name} 0.1.0"));
    }
}

#[test]
fn status_reports_version_and_listen_addresses() {
    let daemon = Daemon::start();
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(json_str(&status, "version"), Some("0.1.0"), "{status}");
    let listen = status["listen"].as_array().expect("listen is an array");
    // Each address is listed once per transport, e.g. "udp:127.0.0.1:5060".
    for transport in ["udp", "tcp"] {
        let wanted = format!("{transport}:{}", daemon.sip_addr());
        assert!(
            listen.iter().any(|a| a.as_str() == Some(wanted.as_str())),
            "{wanted} not in {status}"
        );
    }
    // The human form works too.
    assert!(!daemon.ctl_ok(&["status"]).trim().is_empty());
}

#[test]
fn extensions_are_added_renamed_repassworded_and_deleted() {
    let daemon = Daemon::start();
    daemon.ctl_ok(&[
        "ext",
        "add",
        "100",
        "--password",
        "first-pass-1",
        "--name",
        "Reception",
    ]);
    daemon.ctl_ok(&["ext", "add", "101", "--password", "second-pass-2"]);
    let list = daemon.ctl_json(&["ext", "list"]);
    let reception = list
        .as_array()
        .expect("array")
        .iter()
        .find(|e| json_str(e, "ext") == Some("100"))
        .cloned()
        .expect("100 listed");
    assert_eq!(json_str(&reception, "name"), Some("Reception"), "{list}");

    // A new password takes effect for REGISTER.
    daemon.ctl_ok(&["ext", "passwd", "100", "--password", "changed-pass-3"]);
    Sipp::new("register_wrong.xml", &daemon)
        .account("100", "first-pass-1")
        .run()
        .assert_success("old password refused");
    Sipp::new("register.xml", &daemon)
        .account("100", "changed-pass-3")
        .run()
        .assert_success("new password accepted");

    daemon.ctl_ok(&["ext", "del", "101"]);
    assert_eq!(ext_numbers(&daemon), vec!["100"]);
}

#[test]
fn csv_import_creates_extensions() {
    let daemon = Daemon::start();
    let csv = daemon.dir().join("users.csv");
    std::fs::write(
        &csv,
        "# ext,password,name\n300,import-pass-300,Alice\n301,import-pass-301\n302,import-pass-302,Bob\n",
    )
    .expect("write csv");
    daemon.ctl_ok(&["ext", "import", csv.to_str().expect("utf-8 path")]);
    let mut numbers = ext_numbers(&daemon);
    numbers.sort();
    assert_eq!(numbers, vec!["300", "301", "302"]);
    Sipp::new("register.xml", &daemon)
        .account("301", "import-pass-301")
        .run()
        .assert_success("imported extension registers");
}

#[test]
fn exit_codes_distinguish_usage_daemon_errors_and_no_daemon() {
    let daemon = Daemon::start();
    // 2: usage (unknown subcommand; password too short is caught before sending).
    assert_eq!(daemon.ctl(&["frobnicate"]).code, Some(2));
    assert_eq!(
        daemon
            .ctl(&["ext", "add", "100", "--password", "short"])
            .code,
        Some(2)
    );
    // 1: the daemon refuses (no such extension).
    let out = daemon.ctl(&["ext", "del", "4242"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    // 3: nobody listens on that socket.
    let missing = daemon.dir().join("nobody.sock");
    let out = run_with_timeout(
        Command::new(bin("outpostctl"))
            .arg("--socket")
            .arg(&missing)
            .arg("status"),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(3), "{out:?}");
}

#[test]
fn cdr_list_limit_is_honoured_and_empty_lists_are_arrays() {
    let daemon = Daemon::start();
    assert_eq!(daemon.cdrs().len(), 0);
    assert_eq!(daemon.registrations().len(), 0);
    let calls = daemon.ctl_json(&["calls"]);
    assert_eq!(calls.as_array().map(Vec::len), Some(0), "{calls}");
    let limited = daemon.ctl_json(&["cdr", "list", "--limit", "1"]);
    assert!(limited.is_array(), "{limited}");
}

#[test]
fn ext_show_tells_forwarding_caller_id_pin_and_phones_and_forward_needs_off_to_clear() {
    let daemon = Daemon::start();
    daemon.ctl_ok(&[
        "ext",
        "add",
        "100",
        "--password",
        "show-pass-100",
        "--name",
        "Reception",
    ]);
    daemon.ctl_ok(&["ext", "add", "101", "--password", "show-pass-101"]);

    let fresh = daemon.ctl_json(&["ext", "show", "100"]);
    assert_eq!(json_str(&fresh, "name"), Some("Reception"), "{fresh}");
    assert!(fresh["forwarding"]["busy"].is_null(), "{fresh}");
    assert!(fresh["caller_id"].is_null(), "{fresh}");
    assert_eq!(fresh["vm_pin_set"], false, "{fresh}");
    assert_eq!(fresh["registrations"].as_array().map(Vec::len), Some(0));

    daemon.ctl_ok(&[
        "ext",
        "forward",
        "100",
        "--busy",
        "101",
        "--no-answer",
        "0301234567",
        "--no-answer-secs",
        "20",
    ]);
    daemon.ctl_ok(&["ext", "callerid", "100", "0309876543"]);
    daemon.ctl_ok(&["vm", "pin", "100", "4711"]);
    Sipp::new("register.xml", &daemon)
        .account("100", "show-pass-100")
        .run()
        .assert_success("register");
    daemon.wait_registered("100", Duration::from_secs(10));

    let out = daemon.ctl(&["--json", "ext", "show", "100"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        !out.stdout.contains("4711") && !out.stdout.contains("pin\":\""),
        "neither the PIN nor its hash is shown: {}",
        out.stdout
    );
    let shown: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json_str(&shown, "ext"), Some("100"));
    let fwd = &shown["forwarding"];
    assert_eq!(json_str(fwd, "busy"), Some("101"), "{shown}");
    assert_eq!(json_str(fwd, "no_answer"), Some("0301234567"), "{shown}");
    assert_eq!(fwd["no_answer_ms"], 20_000, "{shown}");
    assert!(fwd["always"].is_null(), "{shown}");
    assert_eq!(json_str(&shown, "caller_id"), Some("0309876543"), "{shown}");
    assert_eq!(shown["vm_pin_set"], true, "{shown}");
    let regs = shown["registrations"].as_array().expect("registrations");
    assert_eq!(regs.len(), 1, "{shown}");
    assert_eq!(json_str(&regs[0], "ext"), Some("100"));

    let human = daemon.ctl_ok(&["ext", "show", "100"]);
    for wanted in [
        "Reception",
        "forward when busy",
        "0301234567 (after 20 s)",
        "0309876543",
        "voicemail PIN",
        "set",
    ] {
        assert!(human.contains(wanted), "{wanted:?} missing from:\n{human}");
    }
    assert!(!human.contains("4711"), "{human}");
    let other = daemon.ctl_ok(&["ext", "show", "101"]);
    assert!(
        other.contains("forwarding") && other.contains("off") && other.contains("not set"),
        "{other}"
    );

    // A bare `ext forward` shows the forwarding and keeps it.
    let bare = daemon.ctl_ok(&["ext", "forward", "100"]);
    assert!(bare.contains("forward when busy"), "{bare}");
    let kept = daemon.ctl_json(&["ext", "show", "100"]);
    assert_eq!(
        json_str(&kept["forwarding"], "busy"),
        Some("101"),
        "a bare `ext forward` cleared the forwarding: {kept}"
    );

    // Usage errors send nothing (exit 2).
    assert_eq!(
        daemon
            .ctl(&["ext", "forward", "100", "--off", "--busy", "101"])
            .code,
        Some(2)
    );
    assert_eq!(
        daemon
            .ctl(&["ext", "forward", "100", "--no-answer-secs", "5"])
            .code,
        Some(2)
    );
    assert_eq!(daemon.ctl(&["ext", "show", "a.b"]).code, Some(2));
    assert_eq!(
        json_str(
            &daemon.ctl_json(&["ext", "show", "100"])["forwarding"],
            "busy"
        ),
        Some("101")
    );

    // --off clears it.
    daemon.ctl_ok(&["ext", "forward", "100", "--off"]);
    let off = daemon.ctl_json(&["ext", "show", "100"]);
    let fwd = &off["forwarding"];
    assert!(
        fwd["busy"].is_null() && fwd["no_answer"].is_null() && fwd["always"].is_null(),
        "{off}"
    );
    assert_eq!(json_str(&off, "caller_id"), Some("0309876543"), "{off}");

    // An unknown extension: the daemon refuses (exit 1) and says which.
    let out = daemon.ctl(&["ext", "show", "4242"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("extension 4242 does not exist"),
        "{out:?}"
    );
    assert_eq!(daemon.ctl(&["ext", "forward", "4242"]).code, Some(1));
}

/// A daemon whose backups need no passphrase, with `[system]` from `system`.
fn named_box(system: &str, wrapper: &[&str]) -> Daemon {
    let identity = age::x25519::Identity::generate();
    Daemon::start_with(
        DaemonConfig::loopback()
            .with_toml(&format!(
                "[backup]\nrecipient = \"{}\"\n{system}",
                identity.to_public()
            ))
            .run_under(wrapper),
    )
}

fn status_hostname(daemon: &Daemon) -> String {
    let status = daemon.ctl_json(&["status"]);
    json_str(&status, "hostname")
        .unwrap_or_else(|| panic!("no hostname in {status}"))
        .to_owned()
}

fn backup_name(daemon: &Daemon) -> String {
    let made = daemon.ctl_json(&["backup", "now"]);
    json_str(&made, "name").expect("backup name").to_owned()
}

/// The host name the kernel gives process `pid` (its UTS namespace's).
fn kernel_hostname_of(pid: u32) -> String {
    let out = run_with_timeout(
        Command::new("nsenter")
            .args(["--uts", "-t", &pid.to_string(), "hostname"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout.trim().to_owned()
}

/// Applies the running configuration with its `[system]` table replaced by `system`.
fn apply_system(daemon: &Daemon, system: &str) -> String {
    let text = daemon.ctl_json(&["config", "show"]);
    let text = json_str(&text, "text").expect("config text");
    let kept = text.split("[system]").next().expect("text before [system]");
    let path = daemon.dir().join("renamed.toml");
    std::fs::write(&path, format!("{kept}{system}")).expect("write config");
    daemon.ctl_ok(&["config", "apply", path.to_str().expect("utf-8 path")])
}

#[test]
fn a_configured_hostname_names_the_box_its_status_and_its_backups() {
    require_root("the host name tests (they give outpostd a UTS namespace of its own)");
    // A UTS namespace of its own: the name the daemon sets stays inside the test.
    let daemon = named_box(
        "[system]\nhostname = \"berlin-1\"\n",
        &["unshare", "--uts", "--"],
    );
    let pid = daemon.pid().expect("running");
    assert_eq!(status_hostname(&daemon), "berlin-1");
    assert_eq!(kernel_hostname_of(pid), "berlin-1", "sethostname at start");
    assert!(daemon.ctl_ok(&["status"]).contains("berlin-1"));
    let name = backup_name(&daemon);
    assert!(name.starts_with("outpost-berlin-1-"), "{name}");

    // `config apply` renames the box at once.
    apply_system(&daemon, "[system]\nhostname = \"munich-2\"\n");
    assert_eq!(status_hostname(&daemon), "munich-2");
    assert_eq!(kernel_hostname_of(pid), "munich-2");
    let name = backup_name(&daemon);
    assert!(name.starts_with("outpost-munich-2-"), "{name}");

    // An invalid name is refused with its key; the box keeps its name.
    let bad = daemon.dir().join("bad.toml");
    let text = daemon.ctl_json(&["config", "show"]);
    let text = json_str(&text, "text")
        .expect("config text")
        .replace("munich-2", "munich_2");
    std::fs::write(&bad, text).expect("write config");
    let out = daemon.ctl(&["config", "apply", bad.to_str().expect("utf-8 path")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("system.hostname"), "{out:?}");
    assert_eq!(status_hostname(&daemon), "munich-2");

    // Without the key the box goes back to the name it started with.
    apply_system(&daemon, "");
    let boot = nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned();
    assert_eq!(kernel_hostname_of(pid), boot);
    assert_eq!(status_hostname(&daemon), boot);
}

#[test]
fn a_hostname_the_kernel_refuses_is_still_used_and_reported_once() {
    require_root("the host name tests (they take CAP_SYS_ADMIN away from outpostd)");
    let before = nix::unistd::gethostname().expect("hostname");
    // Without CAP_SYS_ADMIN, as the demo runs for a normal user.
    let daemon = named_box(
        "[system]\nhostname = \"berlin-1\"\n",
        &["setpriv", "--bounding-set=-sys_admin", "--"],
    );
    assert_eq!(status_hostname(&daemon), "berlin-1");
    let name = backup_name(&daemon);
    assert!(name.starts_with("outpost-berlin-1-"), "{name}");
    apply_system(&daemon, "[system]\nhostname = \"munich-2\"\n");
    assert_eq!(status_hostname(&daemon), "munich-2");
    assert!(backup_name(&daemon).starts_with("outpost-munich-2-"));
    assert_eq!(
        nix::unistd::gethostname().expect("hostname"),
        before,
        "the system's name is untouched"
    );
    let log = daemon.log_text();
    assert_eq!(
        log.matches("cannot set the system's host name").count(),
        1,
        "said once:\n{log}"
    );
}

#[test]
fn system_facts_and_the_sbom_download() {
    use base64::Engine as _;
    let root = tempfile::tempdir().expect("tempdir");
    let put = |rel: &str, text: &str| {
        let path = root.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    put(
        "etc/outpost/release",
        "version=9.8.7\nbuild=1780000000\nprofile=qemu\n",
    );
    put("run/outpost-boot", "slot=a\nbooted=a\n");
    let sbom: String = format!(
        r#"{{"bomFormat":"CycloneDX","components":[{}]}}"#,
        (0..3000)
            .map(|i| format!(
                r#"{{"purl":"pkg:cargo/crate{i}@1","licenses":[{{"expression":"MIT"}}]}}"#
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    put("usr/share/outpost/sbom.json", &sbom);
    let root_arg = root.path().to_str().expect("utf-8").to_owned();
    let daemon =
        Daemon::start_with(DaemonConfig::loopback().with_args(&["--system-root", &root_arg]));
    let r = daemon.admin(&serde_json::json!({"cmd": "system"}));
    assert_eq!(r["reply"], "system", "{r}");
    let s = &r["data"];
    assert!(
        !json_str(s, "hostname").unwrap_or_default().is_empty(),
        "{s}"
    );
    let lo = s["interfaces"]
        .as_array()
        .and_then(|l| l.iter().find(|i| i["name"] == "lo"))
        .unwrap_or_else(|| panic!("no lo interface: {s}"));
    assert!(
        lo["addrs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "127.0.0.1/8")),
        "{lo}"
    );
    assert!(s["host_uptime_secs"].as_u64().is_some(), "{s}");
    assert!(s["time"]["synchronised"].is_boolean(), "{s}");
    assert_eq!(s["firmware"]["version"], "9.8.7", "{s}");
    assert_eq!(s["firmware"]["booted_slot"], "a", "{s}");
    assert_eq!(s["firmware"]["trial"], false, "{s}");
    assert_eq!(s["sbom"]["components"], 3000, "{s}");
    assert_eq!(s["sbom"]["crates"], 3000, "{s}");
    assert_eq!(s["sbom"]["size"].as_u64(), Some(sbom.len() as u64), "{s}");
    // The SBOM comes out in pieces, byte for byte.
    let mut got = Vec::new();
    loop {
        let r = daemon.admin(&serde_json::json!(
            {"cmd": "sbom_read", "offset": got.len(), "len": 65536}
        ));
        assert_eq!(r["reply"], "file_chunk", "{r}");
        let piece = base64::engine::general_purpose::STANDARD
            .decode(r["data"]["data"].as_str().unwrap_or_default())
            .expect("base64");
        if piece.is_empty() {
            break;
        }
        got.extend(piece);
    }
    assert_eq!(got, sbom.as_bytes());
    // Off an image: no release file, no SBOM; said, not failed.
    std::fs::remove_file(root.path().join("etc/outpost/release")).expect("rm");
    std::fs::remove_file(root.path().join("usr/share/outpost/sbom.json")).expect("rm");
    let s = daemon.admin(&serde_json::json!({"cmd": "system"}))["data"].clone();
    assert!(
        s["firmware"].is_null() && s["firmware_error"].is_string(),
        "{s}"
    );
    assert!(s["sbom"].is_null() && s["sbom_error"].is_string(), "{s}");
}
