//! Management of a running box: configuration revisions (`outpostctl config`), applied live
//! with automatic rollback, kept across restarts; the metrics (`outpostctl metrics` and the
//! Prometheus endpoint); the hardware watchdog, with a regular file standing in for the
//! device.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    bin, free_port, header_value, json_str, parse_rtp, recv_datagrams, rtp_packet, rtp_pair,
    run_with_timeout, sdp_audio, sdp_body, send_signal, sip_request, status_of, udp_client,
    udp_exchange, CmdOutput, Daemon, DaemonConfig, Dialog, SipPhone, Transport,
};

const CALLER: (&str, &str) = ("100", "mgmt-secret-100");
const CALLEE: (&str, &str) = ("101", "mgmt-secret-101");
/// Upper bound of every SIP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// A ring group whose only member is the callee.
const GROUP_600: &str =
    "\n[[ring_group]]\nnumber = \"600\"\nmembers = [\"101\"]\nstrategy = \"simultaneous\"\ntimeout_secs = 20\n";
const PCMU: u8 = 0;

// ---------------------------------------------------------------------------------------
// Set-up and configuration helpers
// ---------------------------------------------------------------------------------------

/// A phone with its RTP socket (the RTCP one keeps RTP port + 1 ours).
struct Station {
    sip: SipPhone,
    rtp: UdpSocket,
    _rtcp: UdpSocket,
}

impl Station {
    fn sdp(&self) -> String {
        sdp_body(
            self.rtp.local_addr().expect("RTP socket has an address"),
            &[PCMU],
        )
    }
}

/// A daemon (with `toml` appended to its boot file) and registered phones 100 and 101.
fn start(toml: &str) -> (Daemon, Station, Station) {
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(toml));
    let mut stations = [CALLER, CALLEE].map(|(ext, password)| {
        daemon.add_extension(ext, password);
        let mut sip = SipPhone::new(&daemon, ext, password);
        sip.register();
        let (rtp, rtcp) = rtp_pair();
        Some(Station {
            sip,
            rtp,
            _rtcp: rtcp,
        })
    });
    let a = stations[0].take().expect("station 100");
    let b = stations[1].take().expect("station 101");
    (daemon, a, b)
}

/// `config show --json`: (revision, text).
fn running_config(daemon: &Daemon) -> (u64, String) {
    let shown = daemon.ctl_json(&["config", "show"]);
    let rev = shown["rev"]
        .as_u64()
        .unwrap_or_else(|| panic!("config show has a rev: {shown}"));
    let text = json_str(&shown, "text")
        .unwrap_or_else(|| panic!("config show has a text: {shown}"))
        .to_owned();
    (rev, text)
}

/// `config list --json` as an array.
fn revisions(daemon: &Daemon) -> Vec<Value> {
    match daemon.ctl_json(&["config", "list"]) {
        Value::Array(items) => items,
        other => panic!("config list --json is not an array: {other}"),
    }
}

/// The entry of revision `rev` in `list`.
fn revision(list: &[Value], rev: u64) -> &Value {
    list.iter()
        .find(|r| r["rev"].as_u64() == Some(rev))
        .unwrap_or_else(|| panic!("no revision {rev} in {list:?}"))
}

/// The state (`applied`, `pending`, ...) of revision `rev`.
fn state_of(list: &[Value], rev: u64) -> String {
    json_str(revision(list, rev), "state")
        .unwrap_or_else(|| panic!("revision {rev} has no state: {list:?}"))
        .to_owned()
}

/// Writes `text` to a file in the daemon's directory and runs `config apply FILE args...`.
fn apply(daemon: &Daemon, text: &str, args: &[&str]) -> CmdOutput {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = daemon.dir().join(format!("candidate-{n}.toml"));
    fs::write(&path, text).expect("write the candidate configuration");
    let path = path.to_str().expect("temp paths are UTF-8").to_owned();
    let mut full = vec!["config", "apply", path.as_str()];
    full.extend_from_slice(args);
    daemon.ctl(&full)
}

/// Like [`apply`], but it must succeed; returns its stdout.
fn apply_ok(daemon: &Daemon, text: &str, args: &[&str]) -> String {
    let out = apply(daemon, text, args);
    assert_eq!(
        out.code,
        Some(0),
        "config apply {args:?} failed: {out:?}\nlog:\n{}",
        daemon.log_text()
    );
    out.stdout
}

/// `text` with `old` replaced by `new` (which must occur exactly once).
fn replace_once(text: &str, old: &str, new: &str) -> String {
    assert_eq!(
        text.matches(old).count(),
        1,
        "{old:?} must occur once in:\n{text}"
    );
    text.replacen(old, new, 1)
}

// ---------------------------------------------------------------------------------------
// Call helpers
// ---------------------------------------------------------------------------------------

/// 100 calls `number`; 101 gets the INVITE, answers it and gets the ACK; 100 gets the
/// 200. Returns (100's dialog, 101's dialog).
fn answered_call(
    daemon: &Daemon,
    a: &mut Station,
    b: &mut Station,
    number: &str,
) -> (Dialog, Dialog) {
    let offer = a.sdp();
    let inv = a.sip.invite(number, &offer);
    let b_inv = b.sip.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "101 got no INVITE for a call to {number}; it received:\n{}\nA received:\n{}\nlog:\n{}",
            b.sip.transcript(),
            a.sip.transcript(),
            daemon.log_text()
        )
    });
    b.sip.reply(&b_inv, 180, Some("mgmt-ringing"), "");
    let answer = b.sdp();
    let b_dialog = b.sip.answer(&b_inv, &answer);
    b.sip.await_ack(&b_dialog, WAIT).unwrap_or_else(|| {
        panic!(
            "101 got no ACK; it received:\n{}\nlog:\n{}",
            b.sip.transcript(),
            daemon.log_text()
        )
    });
    let a_dialog = a.sip.await_answer(&inv, WAIT).unwrap_or_else(|resp| {
        panic!(
            "the call to {number} was not answered: {resp:?}\nlog:\n{}",
            daemon.log_text()
        )
    });
    (a_dialog, b_dialog)
}

/// 100 hangs up; 101 gets the BYE of its dialog and answers it; 100 gets the 200.
fn hang_up(a: &mut Station, a_dialog: &mut Dialog, b: &mut Station, b_dialog: &Dialog) {
    let cseq = a.sip.send_bye(a_dialog);
    let bye = b
        .sip
        .answer_bye(WAIT)
        .unwrap_or_else(|| panic!("101 got no BYE; received:\n{}", b.sip.transcript()));
    assert_eq!(
        header_value(&bye, "Call-ID").as_deref(),
        Some(b_dialog.call_id.as_str()),
        "the BYE belongs to 101's call:\n{bye}"
    );
    let ok = a
        .sip
        .await_final(&a_dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to 100's BYE:\n{}", a.sip.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
}

/// The final status 100 gets for a call to `number` that must not be answered.
fn refused_status(daemon: &Daemon, a: &mut Station, number: &str) -> u16 {
    let offer = a.sdp();
    let inv = a.sip.invite(number, &offer);
    match a.sip.await_answer(&inv, WAIT) {
        Ok(dialog) => panic!("the call to {number} was answered: {dialog:?}"),
        Err(Some(resp)) => status_of(resp.as_bytes()).unwrap_or(0),
        Err(None) => panic!(
            "no final answer to a call to {number}; A received:\n{}\nlog:\n{}",
            a.sip.transcript(),
            daemon.log_text()
        ),
    }
}

/// Sends 10 marked RTP packets from `from` to `relay` and checks that they reach `to`.
fn assert_media_flows(from: &UdpSocket, relay: SocketAddr, to: &UdpSocket, mark: u8, what: &str) {
    for seq in 0..10u16 {
        let mut payload = vec![mark; 160];
        payload[1] = u8::try_from(seq).expect("seq < 10");
        let packet = rtp_packet(PCMU, seq, u32::from(seq) * 160, u32::from(mark), &payload);
        from.send_to(&packet, relay).expect("send RTP");
        thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < 10 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        for (_, bytes) in recv_datagrams(to, 1, left) {
            if parse_rtp(&bytes).is_some_and(|r| r.payload.first() == Some(&mark)) {
                got += 1;
            }
        }
    }
    assert_eq!(got, 10, "{what}: every RTP packet relayed");
}

// ---------------------------------------------------------------------------------------
// Configuration revisions
// ---------------------------------------------------------------------------------------

#[test]
fn an_invalid_configuration_is_refused_with_the_key_or_line_and_changes_nothing() {
    let daemon = Daemon::start();
    let (rev, before) = running_config(&daemon);
    assert_eq!(rev, 1, "the boot file is revision 1");
    let list_before = revisions(&daemon);
    assert_eq!(list_before.len(), 1, "{list_before:?}");
    assert_eq!(state_of(&list_before, 1), "applied");

    // A route through a trunk that does not exist.
    let bad_route = format!(
        "{before}\n[[route]]\nname = \"out\"\npatterns = [\"0X.\"]\ntrunks = [\"nosuch\"]\n"
    );
    let out = apply(&daemon, &bad_route, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("route[0].trunks"),
        "the error names the key: {out:?}"
    );
    assert!(out.stderr.contains("nosuch"), "and the trunk: {out:?}");

    // A TOML syntax error: the error names the line.
    let bad_line = before.lines().count() + 2;
    let syntax = format!("{before}\n[calls\n");
    let out = apply(&daemon, &syntax, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!("line {bad_line}")),
        "the error names line {bad_line}: {out:?}"
    );

    // An out-of-range value.
    let bad_value = replace_once(&before, "ring_timeout_secs = 60", "ring_timeout_secs = 0");
    let out = apply(&daemon, &bad_value, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("ring_timeout_secs"), "{out:?}");

    // Nothing changed.
    assert_eq!(revisions(&daemon), list_before, "config list unchanged");
    assert_eq!(
        running_config(&daemon),
        (1, before),
        "config show unchanged"
    );
}

#[test]
fn an_unconfirmed_revision_rolls_back_by_itself() {
    let (daemon, mut a, mut b) = start("");
    let (_, old) = running_config(&daemon);
    let new = format!("{old}{GROUP_600}");
    let applied_at = Instant::now();
    let reply = apply_ok(&daemon, &new, &["--confirm", "10", "-m", "group 600"]);
    assert!(
        reply.contains("config confirm"),
        "the reply says how to keep it: {reply}"
    );

    let list = revisions(&daemon);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(state_of(&list, 2), "pending", "{list:?}");
    assert!(
        revision(&list, 2)["confirm_by"].as_u64().is_some(),
        "{list:?}"
    );
    assert_eq!(json_str(revision(&list, 2), "comment"), Some("group 600"));
    assert_eq!(running_config(&daemon), (2, new.clone()));

    // The group works while pending.
    let (mut a_dialog, b_dialog) = answered_call(&daemon, &mut a, &mut b, "600");
    hang_up(&mut a, &mut a_dialog, &mut b, &b_dialog);

    // Still pending well before the deadline.
    let early = Duration::from_secs(8).saturating_sub(applied_at.elapsed());
    thread::sleep(early);
    let list = revisions(&daemon);
    assert_eq!(
        state_of(&list, 2),
        "pending",
        "rolled back before the deadline: {list:?}"
    );

    // Rolled back within about a second after the deadline.
    let rolled = outpost_tests::eventually(Duration::from_secs(6), || {
        let list = revisions(&daemon);
        (state_of(&list, 2) == "rolled_back").then_some(list)
    });
    let waited = applied_at.elapsed();
    let list = rolled.unwrap_or_else(|| {
        panic!(
            "revision 2 not rolled back {waited:?} after it was applied: {:?}\nlog:\n{}",
            revisions(&daemon),
            daemon.log_text()
        )
    });
    assert!(
        waited <= Duration::from_secs(13),
        "rolled back {waited:?} after applying with --confirm 10"
    );
    assert_eq!(list.len(), 3, "a rollback revision was added: {list:?}");
    assert_eq!(state_of(&list, 3), "applied", "{list:?}");
    assert_eq!(state_of(&list, 1), "superseded", "{list:?}");
    assert!(revision(&list, 3)["confirm_by"].is_null(), "{list:?}");
    assert_eq!(
        running_config(&daemon),
        (3, old),
        "config show is the old text again"
    );

    // The group is gone.
    assert_eq!(refused_status(&daemon, &mut a, "600"), 404);
}

#[test]
fn a_confirmed_revision_stays_after_the_deadline() {
    let (daemon, mut a, mut b) = start("");
    let (_, old) = running_config(&daemon);
    let new = format!("{old}{GROUP_600}");
    let applied_at = Instant::now();
    apply_ok(&daemon, &new, &["--confirm", "10"]);
    assert_eq!(state_of(&revisions(&daemon), 2), "pending");
    let reply = daemon.ctl_ok(&["config", "confirm"]);
    assert!(reply.contains('2'), "names the confirmed revision: {reply}");
    let list = revisions(&daemon);
    assert_eq!(state_of(&list, 2), "applied", "{list:?}");
    assert!(revision(&list, 2)["confirm_by"].is_null(), "{list:?}");

    // Past the deadline plus the daemon's one-second check.
    thread::sleep(Duration::from_secs(12).saturating_sub(applied_at.elapsed()));
    let list = revisions(&daemon);
    assert_eq!(list.len(), 2, "no rollback revision: {list:?}");
    assert_eq!(state_of(&list, 2), "applied", "{list:?}");
    assert_eq!(running_config(&daemon), (2, new));
    let (mut a_dialog, b_dialog) = answered_call(&daemon, &mut a, &mut b, "600");
    hang_up(&mut a, &mut a_dialog, &mut b, &b_dialog);

    // Nothing waits any more.
    let again = daemon.ctl_ok(&["config", "confirm"]);
    assert!(again.contains("nothing"), "{again}");
}

#[test]
fn confirm_outside_the_allowed_range_is_refused() {
    let daemon = Daemon::start();
    let (_, old) = running_config(&daemon);
    let new = format!("{old}{GROUP_600}");
    for secs in ["5", "3601"] {
        let out = apply(&daemon, &new, &["--confirm", secs]);
        assert_ne!(out.code, Some(0), "--confirm {secs} accepted: {out:?}");
        assert!(out.stderr.contains("confirm"), "{out:?}");
    }
    assert_eq!(revisions(&daemon).len(), 1);
}

#[test]
fn applying_during_a_call_keeps_the_call() {
    let (daemon, mut a, mut b) = start("");
    let (mut a_dialog, b_dialog) = answered_call(&daemon, &mut a, &mut b, "101");
    let calls = daemon.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");

    let (_, old) = running_config(&daemon);
    let new = replace_once(
        &format!("{old}{GROUP_600}"),
        "ring_timeout_secs = 60",
        "ring_timeout_secs = 25",
    );
    let reply = apply_ok(&daemon, &new, &[]);
    assert!(
        !reply.contains("restart"),
        "ring groups and the ring timeout are live: {reply}"
    );
    assert_eq!(running_config(&daemon), (2, new));

    let after = daemon.calls();
    assert_eq!(after, calls, "the call in progress is untouched");

    // Media still flows both ways through the relay.
    let relay_a = sdp_audio(&a_dialog.remote_sdp).expect("100 got relay SDP");
    let relay_b = sdp_audio(&b_dialog.remote_sdp).expect("101 got relay SDP");
    assert_media_flows(&a.rtp, relay_a.rtp_addr(), &b.rtp, 0xa5, "100 to 101");
    assert_media_flows(&b.rtp, relay_b.rtp_addr(), &a.rtp, 0xb5, "101 to 100");

    hang_up(&mut a, &mut a_dialog, &mut b, &b_dialog);
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("answered"),
        "{cdrs:?}"
    );
    assert_eq!(json_str(&cdrs[0], "callee"), Some("101"), "{cdrs:?}");
    assert!(daemon.calls().is_empty());
}

/// Registers `ext` (Expires: 300) and returns the final status.
fn register_status(daemon: &Daemon, ext: (&str, &str)) -> Option<u16> {
    SipPhone::new(daemon, ext.0, ext.1).register_status(WAIT)
}

/// The `Server` header of the daemon's answer to an OPTIONS.
fn server_header(daemon: &Daemon) -> Option<String> {
    let target = daemon.sip_addr();
    let sock = udp_client(target);
    let local = sock.local_addr().expect("local addr");
    let req = sip_request(
        "OPTIONS",
        &format!("sip:{}", target.ip()),
        Transport::Udp,
        local,
        "mgmt-ua@test",
        "",
    );
    let resp = udp_exchange(&sock, req.as_bytes(), WAIT).expect("an answer to OPTIONS");
    header_value(&String::from_utf8_lossy(&resp), "Server")
}

#[test]
fn a_restart_only_change_says_so_and_a_live_one_does_not() {
    let mut daemon = Daemon::start();
    daemon.add_extension(CALLER.0, CALLER.1);
    let (_, old) = running_config(&daemon);
    assert_eq!(register_status(&daemon, CALLER), Some(200));

    // `[registrar]` is read at start: a shorter minimum than our 300 s waits for a restart.
    let restart_only = replace_once(&old, "min_expires = 60", "min_expires = 400");
    let reply = apply_ok(&daemon, &restart_only, &[]);
    assert!(
        reply.contains("next restart") && reply.contains("registrar"),
        "the reply says registrar waits for a restart: {reply}"
    );
    assert_eq!(
        register_status(&daemon, CALLER),
        Some(200),
        "the registrar keeps its running settings until the restart"
    );
    // The same through --json.
    let restart_only = replace_once(&old, "min_expires = 60", "min_expires = 500");
    let path = daemon.dir().join("restart-only.toml");
    fs::write(&path, &restart_only).expect("write the candidate configuration");
    let path = path.to_str().expect("temp paths are UTF-8").to_owned();
    let json = daemon.ctl_ok(&["--json", "config", "apply", &path]);
    let value: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(
        json_str(&value, "message")
            .is_some_and(|m| m.contains("next restart") && m.contains("registrar")),
        "{value}"
    );

    // The user agent is live: OPTIONS shows it at once; only the registrar (still owed
    // from the revision before) waits for the restart.
    let live = replace_once(
        &restart_only,
        "[sip]\n",
        "[sip]\nuser_agent = \"Outpost-Mgmt-Test\"\n",
    );
    let reply = apply_ok(&daemon, &live, &[]);
    assert!(
        reply.contains("next restart: registrar") && !reply.contains("sip"),
        "user_agent is live, the registrar change still owed: {reply}"
    );
    assert_eq!(server_header(&daemon).as_deref(), Some("Outpost-Mgmt-Test"));

    // Kernel meters are installed with the table: named as waiting, never silently ignored
    // (every key has a rule: firmware/src/reload.rs).
    let kernel = replace_once(
        &live,
        "[firewall]\n",
        "[firewall]\nkernel_flood_per_second = 777\n",
    );
    let reply = apply_ok(&daemon, &kernel, &[]);
    assert!(
        reply.contains("next restart") && reply.contains("firewall.kernel_flood_per_second"),
        "{reply}"
    );

    // After the restart the registrar change is in force.
    daemon.stop().expect("the daemon stops");
    daemon.restart();
    assert_eq!(running_config(&daemon), (5, kernel));
    assert_eq!(
        register_status(&daemon, CALLER),
        Some(423),
        "min_expires = 500 refuses Expires: 300 after the restart"
    );
    assert_eq!(server_header(&daemon).as_deref(), Some("Outpost-Mgmt-Test"));
}

/// After a restart-only change, the daemon still runs the old registrar; any later apply
/// should keep saying so until the restart.
#[test]
fn a_restart_still_owed_is_reported_by_the_next_apply() {
    let daemon = Daemon::start();
    let (_, old) = running_config(&daemon);
    let restart_only = replace_once(&old, "min_expires = 60", "min_expires = 400");
    let first = apply_ok(&daemon, &restart_only, &[]);
    assert!(first.contains("next restart"), "{first}");
    // A live change on top: the registrar change is still not in force.
    let live = replace_once(
        &restart_only,
        "[sip]\n",
        "[sip]\nuser_agent = \"Outpost-Mgmt-Test\"\n",
    );
    let second = apply_ok(&daemon, &live, &[]);
    assert!(
        second.contains("next restart") && second.contains("registrar"),
        "the registrar change still waits for a restart: {second}"
    );
    // Going back to the running registrar settings needs no restart.
    let back = apply_ok(&daemon, &old, &[]);
    assert!(
        !back.contains("restart"),
        "nothing waits for a restart: {back}"
    );
}

#[test]
fn revisions_survive_a_restart_and_roll_back_with_a_diff() {
    let mut daemon = Daemon::start();
    let (_, boot) = running_config(&daemon);
    let new = replace_once(
        &format!("{boot}{GROUP_600}"),
        "ring_timeout_secs = 60",
        "ring_timeout_secs = 25",
    );
    apply_ok(&daemon, &new, &["-m", "group 600, shorter ringing"]);
    let list_before = revisions(&daemon);

    daemon.stop().expect("the daemon stops");
    daemon.restart();
    assert_eq!(
        running_config(&daemon),
        (2, new.clone()),
        "the applied revision runs after the restart, not the boot file"
    );
    let list = revisions(&daemon);
    assert_eq!(list, list_before, "history kept across the restart");
    assert_eq!(state_of(&list, 1), "superseded");
    assert_eq!(state_of(&list, 2), "applied");
    assert_eq!(
        json_str(revision(&list, 2), "comment"),
        Some("group 600, shorter ringing")
    );

    let reply = daemon.ctl_ok(&["config", "rollback", "1"]);
    assert!(reply.contains('3'), "the rollback is revision 3: {reply}");
    assert_eq!(running_config(&daemon), (3, boot.clone()));
    let list = revisions(&daemon);
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(state_of(&list, 3), "applied", "{list:?}");
    assert_ne!(state_of(&list, 2), "applied", "{list:?}");
    assert_eq!(
        daemon.ctl_ok(&["config", "show", "--rev", "2"]),
        new,
        "an old revision can still be shown"
    );

    let diff = daemon.ctl_ok(&["config", "diff", "1", "2"]);
    assert!(diff.contains("--- revision 1\n+++ revision 2\n"), "{diff}");
    assert!(diff.contains("\n@@ "), "unified hunks: {diff}");
    assert!(diff.contains("\n-ring_timeout_secs = 60\n"), "{diff}");
    assert!(diff.contains("\n+ring_timeout_secs = 25\n"), "{diff}");
    assert!(diff.contains("\n+[[ring_group]]\n"), "{diff}");
    assert!(diff.contains("\n+number = \"600\"\n"), "{diff}");
    assert!(
        !diff
            .lines()
            .any(|l| l.starts_with("-[sip]") || l.starts_with("+[sip]")),
        "unchanged lines are not in the diff: {diff}"
    );
    // The running revision is the boot text again: no difference to revision 1.
    assert_eq!(daemon.ctl_ok(&["config", "diff", "1", "3"]).trim(), "");
}

#[test]
fn a_revision_pending_at_a_restart_is_rolled_back() {
    let mut daemon = Daemon::start();
    let (_, boot) = running_config(&daemon);
    apply_ok(
        &daemon,
        &format!("{boot}{GROUP_600}"),
        &["--confirm", "600"],
    );
    assert_eq!(state_of(&revisions(&daemon), 2), "pending");
    daemon.stop().expect("the daemon stops");
    daemon.restart();
    let list = revisions(&daemon);
    assert_eq!(state_of(&list, 2), "rolled_back", "{list:?}");
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(state_of(&list, 3), "applied", "{list:?}");
    assert_eq!(running_config(&daemon), (3, boot));
}

#[test]
fn stdin_apply_works_and_a_changed_boot_file_wins_at_the_next_start() {
    let mut daemon = Daemon::start();
    let (_, boot) = running_config(&daemon);
    assert_eq!(
        fs::read_to_string(daemon.config_path()).expect("read the boot file"),
        boot,
        "revision 1 is the boot file as written"
    );

    // `config apply -` reads standard input.
    let new = format!("{boot}{GROUP_600}");
    let file = daemon.dir().join("stdin.toml");
    fs::write(&file, &new).expect("write the candidate configuration");
    let out = run_with_timeout(
        Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" --socket \"$1\" config apply - -m from-stdin < \"$2\"")
            .arg(bin("outpostctl"))
            .arg(daemon.socket())
            .arg(&file),
        Duration::from_secs(15),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(running_config(&daemon), (2, new.clone()));

    // An unchanged boot file: the applied revision keeps running.
    daemon.stop().expect("the daemon stops");
    daemon.restart();
    assert_eq!(running_config(&daemon), (2, new));

    // A changed boot file: it becomes the running revision.
    let edited = replace_once(&boot, "ring_timeout_secs = 60", "ring_timeout_secs = 45");
    daemon.stop().expect("the daemon stops");
    fs::write(daemon.config_path(), &edited).expect("edit the boot file");
    daemon.restart();
    assert_eq!(running_config(&daemon), (3, edited));
    let list = revisions(&daemon);
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(state_of(&list, 2), "superseded", "{list:?}");
    assert_eq!(state_of(&list, 3), "applied", "{list:?}");
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// One HTTP/1.0 request over a plain TcpStream: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the metrics port");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {response:?}"));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    (status, body.to_owned())
}

/// The value of an unlabelled metric `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_count_registrations_on_the_cli_and_over_http() {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let daemon = Daemon::start_with(
        DaemonConfig::loopback().with_toml(&format!("[metrics]\nlisten = \"{addr}\"\n")),
    );
    daemon.add_extension(CALLER.0, CALLER.1);
    daemon.add_extension(CALLEE.0, CALLEE.1);
    let mut phone = SipPhone::new(&daemon, CALLER.0, CALLER.1);
    phone.register();

    let text = daemon.ctl_ok(&["metrics"]);
    assert!(text.contains("\noutpost_registrations 1\n"), "{text}");
    assert!(
        text.contains("# TYPE outpost_registrations gauge\n"),
        "{text}"
    );
    assert_eq!(metric(&text, "outpost_extensions"), Some(2), "{text}");
    let json = daemon.ctl_json(&["metrics"]);
    assert_eq!(json["registrations"].as_u64(), Some(1), "{json}");
    assert_eq!(json["extensions"].as_u64(), Some(2), "{json}");

    // The endpoint serves a snapshot refreshed every second.
    let body = outpost_tests::eventually(Duration::from_secs(3), || {
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        (metric(&body, "outpost_registrations") == Some(1)).then_some(body)
    })
    .unwrap_or_else(|| panic!("GET /metrics never showed the registration"));
    assert_eq!(metric(&body, "outpost_extensions"), Some(2), "{body}");
    for name in [
        "outpost_calls_active",
        "outpost_sip_messages_total",
        "outpost_uptime_seconds",
    ] {
        assert!(
            metric(&body, name).is_some(),
            "{name} missing over HTTP:\n{body}"
        );
        assert!(
            metric(&text, name).is_some(),
            "{name} missing on the CLI:\n{text}"
        );
    }
    let (status, body) = http_get(addr, "/");
    assert_eq!(status, 404, "{body}");
    let (status, _) = http_get(addr, "/metrics/extra");
    assert_eq!(status, 404);
}

// ---------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------

fn file_len(path: &std::path::Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn the_watchdog_is_petted_while_running_not_while_frozen_and_disarmed_at_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let device = dir.path().join("watchdog");
    fs::write(&device, b"").expect("create the stand-in device");
    let mut daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&format!(
        "[watchdog]\ndevice = \"{}\"\ntimeout_secs = 3\n",
        device.display()
    )));

    // Petted every second (a third of the timeout).
    let before = file_len(&device);
    thread::sleep(Duration::from_secs(3));
    let running = file_len(&device);
    assert!(
        running >= before + 2,
        "{before} -> {running} bytes in 3 s\nlog:\n{}",
        daemon.log_text()
    );

    // Frozen: no petting.
    let pid = daemon.pid().expect("the daemon runs");
    assert!(send_signal(pid, "STOP"), "SIGSTOP");
    thread::sleep(Duration::from_millis(200));
    let frozen = file_len(&device);
    thread::sleep(Duration::from_secs(3));
    let still = file_len(&device);
    assert!(send_signal(pid, "CONT"), "SIGCONT");
    assert_eq!(frozen, still, "petted while the daemon was stopped");

    // Resumed.
    let resumed = outpost_tests::eventually(Duration::from_secs(3), || {
        (file_len(&device) >= still + 2).then_some(())
    });
    assert!(
        resumed.is_some(),
        "no petting after SIGCONT: {} bytes\nlog:\n{}",
        file_len(&device),
        daemon.log_text()
    );
    assert!(
        daemon.ctl(&["status"]).code == Some(0),
        "the daemon answers again"
    );

    // A clean stop disarms it with the magic close.
    let status = daemon.stop().expect("the daemon stops");
    assert!(status.success(), "{status}");
    let bytes = fs::read(&device).expect("read the stand-in device");
    assert_eq!(bytes.last(), Some(&b'V'), "{bytes:?}");
    assert!(
        bytes[..bytes.len() - 1].iter().all(|&b| b != b'V'),
        "only one magic close: {bytes:?}"
    );
}
