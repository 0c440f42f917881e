//! SIP trunks end to end with real daemons: other `outpostd` instances on 127.0.0.2 and
//! 127.0.0.3 act as the providers (the box under test registers there as account 4930100
//! and its calls arrive there as calls of that extension), the box listens on 127.0.0.1.
//! Registration with a challenge, outbound calls with RTP through both relays, failover
//! from a frozen (SIGSTOP) provider, survival mode, inbound DIDs (extension, ring group,
//! IVR), emergency calls past an exhausted toll-fraud policy, and hostile providers played
//! by raw UDP sockets on 127.0.0.4.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use outpost_tests::{
    body_of, eventually, free_port, generated_prompts, header_value, header_values, json_str,
    options_ok, parse_rtp, provider_invite, recv_datagrams, request_method, rtp_packet, rtp_pair,
    sdp_audio, sdp_body, send_signal, status_of, tag_param, Daemon, DaemonConfig, Dialog,
    OutgoingInvite, SipPhone, Transport,
};

/// The box's account at each provider (AOR user, caller-ID and DID).
const TRUNK_USER: &str = "4930100";
const TRUNK_PASS: &str = "trunk-secret-4930100";
/// The far party, an extension at each provider.
const FAR: (&str, &str) = ("0301234567", "far-secret-0301");
/// A second mobile at the provider: the second number of a follow-me list.
const FAR2: (&str, &str) = ("01701234567", "far-secret-0170");
/// Extensions on the box.
const EXT_A: (&str, &str) = ("100", "phone-secret-100");
const EXT_B: (&str, &str) = ("101", "phone-secret-101");
/// Provider addresses: Linux routes all of 127/8 to `lo`, so each daemon has its own IP.
const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const BACKUP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const FAKE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// Upper bound of every SIP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// Bound for a trunk to come up after start (registration with challenge, 2 OPTIONS).
const UP_WAIT: Duration = Duration::from_secs(15);
/// Bound for a frozen provider to be noticed (generous, so the figure is always printed).
const DOWN_WAIT: Duration = Duration::from_secs(80);
/// What "within seconds" means for detecting a dead provider: down_after (2) pings at
/// 1 s intervals, plus slack for a loaded CI machine.
const DOWN_DETECTION: Duration = Duration::from_secs(10);
/// The trunks' `silence_timeout_ms`.
const SILENCE_MS: u64 = 1_000;
const PCMU: u8 = 0;

// ---------------------------------------------------------------------------------------
// Set-up helpers
// ---------------------------------------------------------------------------------------

/// A provider daemon on `ip` with the box's account and the far party as extensions.
fn start_provider(ip: Ipv4Addr, extra_toml: &str) -> Daemon {
    let mut config = DaemonConfig::on(vec![SocketAddr::new(IpAddr::V4(ip), free_port())]);
    if !extra_toml.is_empty() {
        config = config.with_toml(extra_toml);
    }
    let daemon = Daemon::start_with(config);
    daemon.add_extension(TRUNK_USER, TRUNK_PASS);
    daemon.add_extension(FAR.0, FAR.1);
    daemon
}

/// A phone registered at `daemon`, its SIP socket bound to the daemon's own IP (so a
/// provider's phone never shares 127.0.0.1 with the box and its phones).
fn phone_at(daemon: &Daemon, ext: &str, password: &str) -> SipPhone {
    let ip = daemon.sip_addr().ip();
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind a phone socket");
    let mut phone = SipPhone::on_socket(sock, daemon.sip_addr(), ext, password);
    phone.register();
    phone
}

/// A `[[trunk]]` table for `name` at `host` with the fast test timers.
fn trunk_toml(name: &str, host: SocketAddr, extra: &str) -> String {
    format!(
        "[[trunk]]\nname = \"{name}\"\nhost = \"{host}\"\nusername = \"{TRUNK_USER}\"\npassword = \"{TRUNK_PASS}\"\ncaller_id = \"{TRUNK_USER}\"\noptions_interval_secs = 1\nsilence_timeout_ms = {SILENCE_MS}\nexpires_secs = 60\nretry_secs = 1\n{extra}\n"
    )
}

/// The national route over `trunks` in priority order.
fn national_route(trunks: &[&str]) -> String {
    let list: Vec<String> = trunks.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[route]]\nname = \"national\"\npatterns = [\"0[1-9]X.\"]\ntrunks = [{}]\n",
        list.join(", ")
    )
}

/// The box under test on 127.0.0.1 with `trunks` (name, provider address), the national
/// route over them in that order, more TOML, and extensions 100 and 101.
fn start_box(trunks: &[(&str, SocketAddr)], extra_toml: &str) -> Daemon {
    start_box_with(DaemonConfig::loopback(), trunks, extra_toml)
}

fn start_box_with(config: DaemonConfig, trunks: &[(&str, SocketAddr)], extra: &str) -> Daemon {
    let mut toml = String::new();
    for (name, host) in trunks {
        toml.push_str(&trunk_toml(name, *host, ""));
    }
    let names: Vec<&str> = trunks.iter().map(|(n, _)| *n).collect();
    if !names.is_empty() {
        toml.push_str(&national_route(&names));
    }
    toml.push_str(extra);
    let daemon = Daemon::start_with(config.with_toml(&toml));
    daemon.add_extension(EXT_A.0, EXT_A.1);
    daemon.add_extension(EXT_B.0, EXT_B.1);
    daemon
}

/// `trunks --json` as an array.
fn trunks(daemon: &Daemon) -> Vec<Value> {
    match daemon.ctl_json(&["trunks"]) {
        Value::Array(items) => items,
        other => panic!("outpostctl --json trunks did not print an array: {other}"),
    }
}

/// The status object of trunk `name`.
fn trunk(daemon: &Daemon, name: &str) -> Value {
    trunks(daemon)
        .into_iter()
        .find(|t| json_str(t, "name") == Some(name))
        .unwrap_or_else(|| panic!("no trunk {name} in {:?}", trunks(daemon)))
}

/// Waits (bounded) until trunk `name` satisfies `ready`; returns its status and how long
/// it took.
fn wait_trunk(
    daemon: &Daemon,
    name: &str,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    let found = eventually(timeout, || {
        let t = trunk(daemon, name);
        ready(&t).then_some(t)
    });
    match found {
        Some(t) => (t, start.elapsed()),
        None => panic!(
            "trunk {name} not {what} within {timeout:?}: {:?}\nlog:\n{}",
            trunk(daemon, name),
            daemon.log_text()
        ),
    }
}

fn is_up(t: &Value) -> bool {
    json_str(t, "health") == Some("up")
}

fn is_down(t: &Value) -> bool {
    json_str(t, "health") == Some("down")
}

fn wait_up(daemon: &Daemon, name: &str) -> Value {
    wait_trunk(daemon, name, "up and registered", UP_WAIT, |t| {
        is_up(t) && t["registered"] == Value::Bool(true)
    })
    .0
}

fn now_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(d.as_millis()).expect("milliseconds fit u64")
}

fn local(sock: &UdpSocket) -> SocketAddr {
    sock.local_addr().expect("socket has a local address")
}

/// An RTP socket (even port) and its RTCP socket on `ip`.
fn rtp_pair_on(ip: Ipv4Addr) -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = UdpSocket::bind((ip, 0)).expect("bind RTP socket");
        let port = local(&rtp).port();
        if !port.is_multiple_of(2) || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((ip, port + 1)) {
            return (rtp, rtcp);
        }
    }
    panic!("no free even/odd UDP port pair on {ip}");
}

/// Answered CDRs of calls from `caller` to `callee`.
fn answered_cdrs(daemon: &Daemon, caller: &str, callee: &str) -> usize {
    daemon
        .cdrs()
        .iter()
        .filter(|c| {
            json_str(c, "caller") == Some(caller)
                && json_str(c, "callee") == Some(callee)
                && json_str(c, "disposition") == Some("answered")
        })
        .count()
}

/// The user part of the URI in a From/To value.
fn user_of(value: &str) -> String {
    let uri = outpost_tests::uri_in(value);
    let rest = uri.strip_prefix("sip:").unwrap_or(&uri);
    rest.split('@').next().unwrap_or_default().to_owned()
}

/// 160 bytes of payload that differ per packet.
fn payload(seq: u16, salt: u8) -> Vec<u8> {
    (0..160u16)
        .map(|i| {
            i.wrapping_mul(31)
                .wrapping_add(seq.wrapping_mul(7))
                .to_le_bytes()[0]
                ^ salt
        })
        .collect()
}

/// Sends RTP both ways for a few rounds (each side's relay latches on its first packets)
/// and returns how many of the payloads sent by each side arrived intact at the other:
/// (a -> b, b -> a).
fn exchange_rtp(
    a: &UdpSocket,
    a_to: SocketAddr,
    b: &UdpSocket,
    b_to: SocketAddr,
) -> (usize, usize) {
    let mut sent_a = Vec::new();
    let mut sent_b = Vec::new();
    let mut got_at_b = Vec::new();
    let mut got_at_a = Vec::new();
    for round in 0..6u16 {
        for i in 0..10u16 {
            let seq = round * 10 + i;
            let pa = payload(seq, 0x00);
            let pb = payload(seq, 0x5a);
            let ts = u32::from(seq) * 160;
            a.send_to(&rtp_packet(PCMU, seq, ts, 0x1111, &pa), a_to)
                .expect("send RTP from A");
            b.send_to(&rtp_packet(PCMU, seq, ts, 0x2222, &pb), b_to)
                .expect("send RTP from B");
            sent_a.push(pa);
            sent_b.push(pb);
            thread::sleep(Duration::from_millis(5));
        }
        for (sock, into) in [(b, &mut got_at_b), (a, &mut got_at_a)] {
            for (_, bytes) in recv_datagrams(sock, 100, Duration::from_millis(300)) {
                if let Some(p) = parse_rtp(&bytes) {
                    into.push(p.payload);
                }
            }
        }
    }
    let a_to_b = got_at_b.iter().filter(|p| sent_a.contains(p)).count();
    let b_to_a = got_at_a.iter().filter(|p| sent_b.contains(p)).count();
    (a_to_b, b_to_a)
}

/// Sends RTP both ways between A (RTP socket `a_rtp`; `a_sdp`, the SDP of its 200) and the
/// far party at the provider (`f_rtp`; `incoming`, the INVITE it got): the box anchors A's
/// media, the provider the far party's, and at least 40 of 60 packets arrive each way.
/// Returns how many did (A to far, far to A).
fn assert_audio_end_to_end(
    boxd: &Daemon,
    a_rtp: &UdpSocket,
    a_sdp: &str,
    f_rtp: &UdpSocket,
    incoming: &str,
) -> (usize, usize) {
    let relay_box = sdp_audio(a_sdp).unwrap_or_else(|| panic!("no SDP in the 200 to A:\n{a_sdp}"));
    let relay_provider = sdp_audio(body_of(incoming))
        .unwrap_or_else(|| panic!("no SDP in the far INVITE:\n{incoming}"));
    assert_eq!(
        relay_box.addr,
        Ipv4Addr::LOCALHOST,
        "the box anchors A's media"
    );
    assert_eq!(
        relay_provider.addr,
        IpAddr::V4(PRIMARY_IP),
        "the provider anchors the far party's media"
    );
    let (a_to_f, f_to_a) = exchange_rtp(
        a_rtp,
        relay_box.rtp_addr(),
        f_rtp,
        relay_provider.rtp_addr(),
    );
    assert!(
        a_to_f >= 40 && f_to_a >= 40,
        "audio must flow end to end (A->far {a_to_f}, far->A {f_to_a} of 60)\nbox log:\n{}",
        boxd.log_text()
    );
    (a_to_f, f_to_a)
}

/// An outbound call from `phone` (on the box) to the far party answered by `far` (at a
/// provider): returns both dialogs and the time from the authenticated INVITE to the 200.
fn call_out(
    boxd: &Daemon,
    phone: &mut SipPhone,
    far: &mut SipPhone,
    sdp_a: &str,
    sdp_far: &str,
    far_wait: Duration,
) -> (Dialog, Dialog, String, Duration) {
    let invite = phone.invite(FAR.0, sdp_a);
    let sent = Instant::now();
    let incoming = far.await_request("INVITE", far_wait).unwrap_or_else(|| {
        panic!(
            "the far party got no INVITE within {far_wait:?}; the box's phone received:\n{}\nfar received:\n{}\nbox log:\n{}",
            phone.transcript(),
            far.transcript(),
            boxd.log_text()
        )
    });
    let far_dialog = far.answer(&incoming, sdp_far);
    let a_dialog = phone.await_answer(&invite, WAIT).unwrap_or_else(|resp| {
        panic!(
            "the outbound call was not answered: {resp:?}\nphone received:\n{}\nbox log:\n{}",
            phone.transcript(),
            boxd.log_text()
        )
    });
    let setup = sent.elapsed();
    far.await_ack(&far_dialog, WAIT)
        .unwrap_or_else(|| panic!("the far party got no ACK:\n{}", far.transcript()));
    (a_dialog, far_dialog, incoming, setup)
}

/// The box's phone hangs up; the far party gets the BYE through both daemons.
fn hang_up(phone: &mut SipPhone, dialog: &mut Dialog, far: &mut SipPhone) {
    let cseq = phone.send_bye(dialog);
    far.answer_bye(WAIT)
        .unwrap_or_else(|| panic!("the far party got no BYE:\n{}", far.transcript()));
    let ok = phone
        .await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to the BYE:\n{}", phone.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
}

/// `callee` answers `incoming` (the INVITE of `caller`'s `call`) with `sdp`; the caller
/// gets the 200, the callee the ACK, then the caller hangs up.
fn answer_then_caller_hangs_up(
    caller: &mut SipPhone,
    call: &OutgoingInvite,
    callee: &mut SipPhone,
    incoming: &str,
    sdp: &str,
) {
    let mut caller_dialog = answer_call(caller, call, callee, incoming, sdp);
    hang_up(caller, &mut caller_dialog, callee);
}

/// `callee` answers `incoming` with `sdp`; the caller's call is answered and the callee
/// gets the ACK. Returns the caller's dialog.
fn answer_call(
    caller: &mut SipPhone,
    call: &OutgoingInvite,
    callee: &mut SipPhone,
    incoming: &str,
    sdp: &str,
) -> Dialog {
    let callee_dialog = callee.answer(incoming, sdp);
    let caller_dialog = caller
        .await_answer(call, WAIT)
        .unwrap_or_else(|r| panic!("the call was not answered: {r:?}"));
    callee
        .await_ack(&callee_dialog, WAIT)
        .expect("the callee got the ACK");
    caller_dialog
}

/// Answers every INVITE that reaches `phone` within `wait` with 486 (stale calls from a
/// provider that was frozen while they were sent); returns how many there were.
fn refuse_stale_invites(phone: &mut SipPhone, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut n = 0;
    for _ in 0..20 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match phone.await_request("INVITE", left) {
            Some(inv) => {
                phone.reply(&inv, 486, Some("stale"), "");
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// Resumes a provider frozen with SIGSTOP when the test ends (pass or fail), so dropping
/// its `Daemon` does not wait for a process that cannot act on SIGTERM.
struct Frozen(Option<u32>);

impl Frozen {
    fn freeze(daemon: &Daemon) -> Self {
        let pid = daemon.pid().expect("provider running");
        assert!(send_signal(pid, "STOP"), "SIGSTOP {pid}");
        Frozen(Some(pid))
    }

    fn thaw(&mut self) {
        if let Some(pid) = self.0.take() {
            assert!(send_signal(pid, "CONT"), "SIGCONT {pid}");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = send_signal(pid, "CONT");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Registration
// ---------------------------------------------------------------------------------------

#[test]
fn trunk_registers_with_the_provider_through_its_challenge() {
    let provider = start_provider(PRIMARY_IP, "");
    let boxd = start_box(&[("primary", provider.sip_addr())], "");
    let start = Instant::now();
    let status = wait_up(&boxd, "primary");
    eprintln!(
        "primary up and registered {:?} after the box answered: {status}",
        start.elapsed()
    );
    let until = status["registered_until"]
        .as_u64()
        .unwrap_or_else(|| panic!("registered_until missing: {status}"));
    assert!(
        until > now_ms() + 30_000,
        "registered_until must lie about a minute ahead (expires 60): {status}"
    );
    assert!(status["since"].as_u64().is_some(), "{status}");

    let reg = provider.wait_registered(TRUNK_USER, WAIT);
    assert_eq!(
        json_str(&reg, "source"),
        Some(boxd.sip_addr().to_string().as_str()),
        "the provider sees the box's SIP address: {reg}"
    );
    let contact = json_str(&reg, "contact").unwrap_or_default();
    assert!(
        contact.contains(&format!("{TRUNK_USER}@{}", boxd.sip_addr())),
        "the Contact names the account at the box: {reg}"
    );
    assert!(
        provider
            .log_text()
            .lines()
            .all(|l| !l.contains("auth") || !l.contains(TRUNK_PASS)),
        "the password never reaches a log"
    );

    let status = boxd.ctl_json(&["status"]);
    assert_eq!(status["trunks"].as_u64(), Some(1), "{status}");
    assert_eq!(status["trunks_up"].as_u64(), Some(1), "{status}");
    assert_eq!(status["survival"], Value::Bool(false), "{status}");
}

// ---------------------------------------------------------------------------------------
// 2. Outbound call
// ---------------------------------------------------------------------------------------

#[test]
fn outbound_call_through_the_primary_carries_audio_both_ways() {
    let provider = start_provider(PRIMARY_IP, "");
    let mut far = phone_at(&provider, FAR.0, FAR.1);
    let boxd = start_box(&[("primary", provider.sip_addr())], "");
    wait_up(&boxd, "primary");
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();

    let (a_rtp, _a_rtcp) = rtp_pair();
    let (f_rtp, _f_rtcp) = rtp_pair_on(PRIMARY_IP);
    let (mut a_dialog, _f_dialog, incoming, setup) = call_out(
        &boxd,
        &mut a,
        &mut far,
        &sdp_body(local(&a_rtp), &[PCMU]),
        &sdp_body(local(&f_rtp), &[PCMU]),
        WAIT,
    );
    eprintln!("outbound call set up through the primary in {setup:?}");

    // The provider presents its own extension 4930100 (the box's account) as the caller.
    let from = header_value(&incoming, "From").unwrap_or_default();
    assert_eq!(user_of(&from), TRUNK_USER, "{incoming}");

    let (a_to_f, f_to_a) =
        assert_audio_end_to_end(&boxd, &a_rtp, &a_dialog.remote_sdp, &f_rtp, &incoming);
    eprintln!("RTP through box and provider relays: A->far {a_to_f}/60, far->A {f_to_a}/60");

    hang_up(&mut a, &mut a_dialog, &mut far);
    let cdrs = boxd.wait_cdrs(1, WAIT);
    let cdr = &cdrs[0];
    assert_eq!(json_str(cdr, "caller"), Some(EXT_A.0), "{cdr}");
    assert_eq!(json_str(cdr, "callee"), Some(FAR.0), "{cdr}");
    assert_eq!(json_str(cdr, "disposition"), Some("answered"), "{cdr}");
    assert_eq!(
        json_str(cdr, "trunk"),
        Some("primary"),
        "the record names the trunk: {cdr}"
    );
    assert!(cdr["did"].is_null(), "an outbound call has no DID: {cdr}");
    provider.wait_cdrs(1, WAIT);
    assert_eq!(answered_cdrs(&provider, TRUNK_USER, FAR.0), 1);
}

// ---------------------------------------------------------------------------------------
// 3. Failover
// ---------------------------------------------------------------------------------------

#[test]
fn calls_fail_over_to_the_backup_and_come_back_to_the_primary() {
    let primary = start_provider(PRIMARY_IP, "");
    let backup = start_provider(BACKUP_IP, "");
    let mut far1 = phone_at(&primary, FAR.0, FAR.1);
    let mut far2 = phone_at(&backup, FAR.0, FAR.1);
    let boxd = start_box(
        &[
            ("primary", primary.sip_addr()),
            ("backup", backup.sip_addr()),
        ],
        "",
    );
    wait_up(&boxd, "primary");
    wait_up(&boxd, "backup");
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();
    let (a_rtp, _a_rtcp) = rtp_pair();
    let sdp_a = sdp_body(local(&a_rtp), &[PCMU]);
    let (f2_rtp, _f2_rtcp) = rtp_pair_on(BACKUP_IP);
    let sdp_f2 = sdp_body(local(&f2_rtp), &[PCMU]);

    // The primary freezes: the first call hears nothing from it and moves on.
    let mut frozen = Frozen::freeze(&primary);
    let stopped = Instant::now();
    let (mut dialog, _, _, setup) = call_out(
        &boxd,
        &mut a,
        &mut far2,
        &sdp_a,
        &sdp_f2,
        Duration::from_millis(SILENCE_MS) + WAIT,
    );
    eprintln!(
        "call 1 (primary frozen, silence timeout {SILENCE_MS} ms): INVITE to answer {setup:?}"
    );
    assert!(
        setup < Duration::from_millis(SILENCE_MS) + Duration::from_secs(3),
        "failover must take about the silence timeout, took {setup:?}"
    );
    hang_up(&mut a, &mut dialog, &mut far2);
    assert_eq!(answered_cdrs(&backup, TRUNK_USER, FAR.0), 1);

    // The pings go unanswered: the primary goes down.
    let (down, _) = wait_trunk(&boxd, "primary", "down", DOWN_WAIT, is_down);
    let detected = stopped.elapsed();
    eprintln!("primary seen down {detected:?} after SIGSTOP: {down}");
    assert!(
        detected <= DOWN_DETECTION,
        "a dead provider must be noticed within seconds (options_interval 1 s, down_after 2), took {detected:?}: {down}"
    );
    let (mut dialog, _, _, setup) = call_out(&boxd, &mut a, &mut far2, &sdp_a, &sdp_f2, WAIT);
    eprintln!("call 2 (primary down): INVITE to answer {setup:?}");
    assert!(
        setup < Duration::from_millis(SILENCE_MS),
        "with the primary down the call goes straight to the backup, took {setup:?}"
    );
    hang_up(&mut a, &mut dialog, &mut far2);
    assert_eq!(answered_cdrs(&backup, TRUNK_USER, FAR.0), 2);

    // The primary thaws: up again within the detection time, and used again.
    frozen.thaw();
    let thawed = Instant::now();
    let (up, took) = wait_trunk(&boxd, "primary", "up again", UP_WAIT, is_up);
    eprintln!("primary up {took:?} after SIGCONT: {up}");
    assert!(thawed.elapsed() <= DOWN_DETECTION, "{up}");
    // Whatever the primary queued while frozen (the first call's INVITEs) is refused.
    let stale = refuse_stale_invites(&mut far1, Duration::from_secs(2));
    eprintln!("stale INVITEs delivered by the thawed primary: {stale}");
    let before = answered_cdrs(&primary, TRUNK_USER, FAR.0);
    let (f1_rtp, _f1_rtcp) = rtp_pair_on(PRIMARY_IP);
    let (mut dialog, _, _, setup) = call_out(
        &boxd,
        &mut a,
        &mut far1,
        &sdp_a,
        &sdp_body(local(&f1_rtp), &[PCMU]),
        WAIT,
    );
    eprintln!("call 3 (primary back): INVITE to answer {setup:?}");
    hang_up(&mut a, &mut dialog, &mut far1);
    let counted = eventually(WAIT, || {
        (answered_cdrs(&primary, TRUNK_USER, FAR.0) == before + 1).then_some(())
    });
    assert!(counted.is_some(), "the primary carried call 3");
    assert_eq!(
        answered_cdrs(&backup, TRUNK_USER, FAR.0),
        2,
        "the backup did not get call 3"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Survival
// ---------------------------------------------------------------------------------------

#[test]
fn with_every_trunk_down_local_calls_work_and_outbound_calls_fail_fast() {
    let primary = start_provider(PRIMARY_IP, "");
    let backup = start_provider(BACKUP_IP, "");
    let boxd = start_box(
        &[
            ("primary", primary.sip_addr()),
            ("backup", backup.sip_addr()),
        ],
        "",
    );
    wait_up(&boxd, "primary");
    wait_up(&boxd, "backup");
    let _f1 = Frozen::freeze(&primary);
    let _f2 = Frozen::freeze(&backup);
    let stopped = Instant::now();
    let survival = eventually(DOWN_WAIT, || {
        let s = boxd.ctl_json(&["status"]);
        (s["survival"] == Value::Bool(true)).then_some(s)
    });
    let took = stopped.elapsed();
    let status = survival.unwrap_or_else(|| {
        panic!(
            "survival never reported; status: {}\ntrunks: {:?}",
            boxd.ctl_json(&["status"]),
            trunks(&boxd)
        )
    });
    eprintln!("survival mode {took:?} after both providers froze: {status}");
    assert_eq!(status["trunks_up"].as_u64(), Some(0), "{status}");
    assert!(
        took <= DOWN_DETECTION,
        "survival must be reached within seconds, took {took:?}"
    );

    // Extension to extension still works.
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    let mut b = SipPhone::new(&boxd, EXT_B.0, EXT_B.1);
    a.register();
    b.register();
    let (a_rtp, _a_rtcp) = rtp_pair();
    let (b_rtp, _b_rtcp) = rtp_pair();
    let invite = a.invite(EXT_B.0, &sdp_body(local(&a_rtp), &[PCMU]));
    let incoming = b
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("101 got no INVITE:\n{}", a.transcript()));
    let b_dialog = b.answer(&incoming, &sdp_body(local(&b_rtp), &[PCMU]));
    let mut a_dialog = a
        .await_answer(&invite, WAIT)
        .unwrap_or_else(|r| panic!("internal call not answered in survival: {r:?}"));
    b.await_ack(&b_dialog, WAIT).expect("101 got the ACK");
    hang_up(&mut a, &mut a_dialog, &mut b);

    // An outbound call gets a clear 503 at once.
    let invite = a.invite(FAR.0, &sdp_body(local(&a_rtp), &[PCMU]));
    let sent = Instant::now();
    let resp = a.await_answer(&invite, WAIT);
    let took = sent.elapsed();
    eprintln!("outbound call in survival refused after {took:?}");
    match resp {
        Err(Some(resp)) => assert_eq!(status_of(resp.as_bytes()), Some(503), "{resp}"),
        other => panic!("an outbound call in survival must fail with 503, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(1),
        "refused quickly, took {took:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Inbound DIDs
// ---------------------------------------------------------------------------------------

fn prompts_dir() -> &'static Path {
    generated_prompts(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// A provider that calls the box: DID 4930100 reaches the box through its registration
/// (the provider forks to the registered Contact), DIDs 4930500 and 4930600 through a
/// route of the provider over an IP-authenticated trunk to the box.
struct InboundLab {
    provider: Daemon,
    boxd: Daemon,
    caller: SipPhone,
    a: SipPhone,
    b: SipPhone,
}

fn inbound_lab() -> InboundLab {
    let box_port = free_port();
    let box_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, box_port));
    let provider = start_provider(
        PRIMARY_IP,
        &format!(
            "[[trunk]]\nname = \"office\"\nhost = \"{box_addr}\"\nregister = false\nusername = \"office\"\noptions_interval_secs = 0\n\n[[route]]\nname = \"office-dids\"\npatterns = [\"4930[56]00\"]\ntrunks = [\"office\"]\n"
        ),
    );
    let caller = phone_at(&provider, FAR.0, FAR.1);
    let mut config = DaemonConfig::on(vec![box_addr]);
    config.prompts_dir = Some(prompts_dir().to_path_buf());
    let boxd = start_box_with(
        config,
        &[("primary", provider.sip_addr())],
        &format!(
            "[inbound]\ndids = {{ \"4930100\" = \"ext:100\", \"4930600\" = \"group:600\", \"4930500\" = \"ivr:500\" }}\n\n[[ring_group]]\nnumber = \"600\"\nmembers = [\"{}\", \"{}\"]\nstrategy = \"simultaneous\"\n\n[[ivr]]\nnumber = \"500\"\ngreeting = \"main-menu\"\noptions = {{ \"1\" = \"{}\" }}\n",
            EXT_A.0, EXT_B.0, EXT_A.0
        ),
    );
    wait_up(&boxd, "primary");
    provider.wait_registered(TRUNK_USER, WAIT);
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    let mut b = SipPhone::new(&boxd, EXT_B.0, EXT_B.1);
    a.register();
    b.register();
    InboundLab {
        provider,
        boxd,
        caller,
        a,
        b,
    }
}

#[test]
fn inbound_did_rings_the_extension() {
    let mut lab = inbound_lab();
    let (c_rtp, _c_rtcp) = rtp_pair_on(PRIMARY_IP);
    let (a_rtp, _a_rtcp) = rtp_pair();
    let invite = lab
        .caller
        .invite(TRUNK_USER, &sdp_body(local(&c_rtp), &[PCMU]));
    let incoming = lab.a.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "ext 100 got no INVITE for DID {TRUNK_USER}; caller received:\n{}\nbox log:\n{}\nprovider log:\n{}",
            lab.caller.transcript(),
            lab.boxd.log_text(),
            lab.provider.log_text()
        )
    });
    let from = header_value(&incoming, "From").unwrap_or_default();
    eprintln!("ext 100 rang for DID {TRUNK_USER}, From: {from}");
    let a_dialog = lab.a.answer(&incoming, &sdp_body(local(&a_rtp), &[PCMU]));
    let mut c_dialog = lab.caller.await_answer(&invite, WAIT).unwrap_or_else(|r| {
        panic!(
            "the caller at the provider was not answered: {r:?}\nbox log:\n{}",
            lab.boxd.log_text()
        )
    });
    lab.a
        .await_ack(&a_dialog, WAIT)
        .expect("ext 100 got the ACK");
    let relay_c = sdp_audio(&c_dialog.remote_sdp).expect("SDP in the caller's 200");
    let relay_a = sdp_audio(body_of(&incoming)).expect("SDP in ext 100's INVITE");
    let (c_to_a, a_to_c) = exchange_rtp(&c_rtp, relay_c.rtp_addr(), &a_rtp, relay_a.rtp_addr());
    eprintln!("inbound RTP: caller->100 {c_to_a}/60, 100->caller {a_to_c}/60");
    assert!(c_to_a >= 40 && a_to_c >= 40, "audio both ways");
    let mut caller = lab.caller;
    hang_up(&mut caller, &mut c_dialog, &mut lab.a);
    let cdrs = lab.boxd.wait_cdrs(1, WAIT);
    eprintln!("box CDR of the inbound call: {}", cdrs[0]);
    assert_eq!(json_str(&cdrs[0], "disposition"), Some("answered"));
    assert_eq!(json_str(&cdrs[0], "trunk"), Some("primary"), "{}", cdrs[0]);
    assert_eq!(json_str(&cdrs[0], "did"), Some(TRUNK_USER), "{}", cdrs[0]);
}

#[test]
fn inbound_did_rings_the_group() {
    let mut lab = inbound_lab();
    let (c_rtp, _c_rtcp) = rtp_pair_on(PRIMARY_IP);
    let (b_rtp, _b_rtcp) = rtp_pair();
    let invite = lab
        .caller
        .invite("4930600", &sdp_body(local(&c_rtp), &[PCMU]));
    let to_a = lab.a.await_request("INVITE", WAIT);
    let to_b = lab.b.await_request("INVITE", WAIT);
    let (Some(to_a), Some(to_b)) = (to_a, to_b) else {
        panic!(
            "both group members must ring for DID 4930600; caller received:\n{}\nbox log:\n{}\nprovider log:\n{}",
            lab.caller.transcript(),
            lab.boxd.log_text(),
            lab.provider.log_text()
        );
    };
    // Both ring (a CANCEL may only follow a provisional response, RFC 3261 §9.1).
    lab.a.reply(&to_a, 180, Some("ring-a"), "");
    lab.b.reply(&to_b, 180, Some("ring-b"), "");
    let b_dialog = lab.b.answer(&to_b, &sdp_body(local(&b_rtp), &[PCMU]));
    let mut c_dialog = lab.caller.await_answer(&invite, WAIT).unwrap_or_else(|r| {
        panic!(
            "the group call was not answered: {r:?}\nbox log:\n{}",
            lab.boxd.log_text()
        )
    });
    lab.b.await_ack(&b_dialog, WAIT).expect("101 got the ACK");
    let cancel = lab.a.await_request("CANCEL", WAIT);
    assert!(cancel.is_some(), "the other member's ringing is cancelled");
    let mut caller = lab.caller;
    hang_up(&mut caller, &mut c_dialog, &mut lab.b);
}

#[test]
fn inbound_did_reaches_the_ivr() {
    let mut lab = inbound_lab();
    let (c_rtp, _c_rtcp) = rtp_pair_on(PRIMARY_IP);
    let invite = lab
        .caller
        .invite("4930500", &sdp_body(local(&c_rtp), &[PCMU]));
    let mut dialog = lab.caller.await_answer(&invite, WAIT).unwrap_or_else(|r| {
        panic!(
            "the IVR DID was not answered: {r:?}\ncaller received:\n{}\nbox log:\n{}\nprovider log:\n{}",
            lab.caller.transcript(),
            lab.boxd.log_text(),
            lab.provider.log_text()
        )
    });
    let audio = sdp_audio(&dialog.remote_sdp)
        .unwrap_or_else(|| panic!("the IVR's 200 has no SDP:\n{}", dialog.remote_sdp));
    // Let the provider's relay latch, then hear the greeting through both relays.
    for seq in 0..5u16 {
        let pkt = rtp_packet(PCMU, seq, u32::from(seq) * 160, 0x3333, &[0xff; 160]);
        c_rtp.send_to(&pkt, audio.rtp_addr()).expect("send RTP");
    }
    let heard = recv_datagrams(&c_rtp, 25, Duration::from_secs(3))
        .into_iter()
        .filter(|(_, b)| parse_rtp(b).is_some())
        .count();
    eprintln!("IVR greeting through the trunk: {heard} RTP packets within 3 s");
    assert!(heard >= 10, "the greeting is heard through the trunk");
    let cseq = lab.caller.send_bye(&mut dialog);
    let ok = lab
        .caller
        .await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .expect("the BYE is answered");
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    assert!(lab
        .a
        .await_request("INVITE", Duration::from_millis(300))
        .is_none());
}

// ---------------------------------------------------------------------------------------
// 6. Emergency past the toll-fraud policy
// ---------------------------------------------------------------------------------------

#[test]
fn emergency_call_goes_out_when_the_extension_is_locked() {
    // At the provider 112 is an ordinary extension (the emergency centre).
    let provider = start_provider(PRIMARY_IP, "[dialplan]\nemergency = []\n");
    provider.add_extension("112", "psap-secret-112");
    let mut far = phone_at(&provider, FAR.0, FAR.1);
    let mut psap = phone_at(&provider, "112", "psap-secret-112");
    let boxd = start_box(
        &[("primary", provider.sip_addr())],
        "[firewall.policy]\ncalls_per_minute = 1\n",
    );
    wait_up(&boxd, "primary");
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();
    let (a_rtp, _a_rtcp) = rtp_pair();
    let sdp_a = sdp_body(local(&a_rtp), &[PCMU]);

    // External calls until the policy refuses (the far party is busy each time).
    let mut refused = None;
    for attempt in 1..=4 {
        let invite = a.invite(FAR.0, &sdp_a);
        if let Some(inv) = far.await_request("INVITE", Duration::from_secs(2)) {
            far.reply(&inv, 486, Some("busy"), "");
        }
        let resp = a.await_answer(&invite, WAIT);
        let status = match &resp {
            Err(Some(r)) => status_of(r.as_bytes()),
            Ok(_) => Some(200),
            Err(None) => None,
        };
        eprintln!("external attempt {attempt}: {status:?}");
        if status == Some(403) {
            refused = Some(attempt);
            break;
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "calls_per_minute = 1 never refused a call\nlog:\n{}",
            boxd.log_text()
        )
    });
    assert_eq!(refused, 2, "the second attempt within a minute is refused");
    let locked = eventually(WAIT, || {
        let bans = boxd.ctl_json(&["fw", "bans"]);
        let alerts = boxd.ctl_json(&["fw", "alerts"]);
        let lock = bans["locks"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x.to_string().contains(&format!("\"{}\"", EXT_A.0)))
        });
        let alert = alerts
            .as_array()
            .is_some_and(|l| l.iter().any(|x| json_str(x, "user") == Some(EXT_A.0)));
        (lock || alert).then_some((bans, alerts))
    });
    let (bans, alerts) = locked.unwrap_or_else(|| {
        panic!(
            "no lock or alert for ext 100: bans {} alerts {}",
            boxd.ctl_json(&["fw", "bans"]),
            boxd.ctl_json(&["fw", "alerts"])
        )
    });
    eprintln!("lock: {}\nalerts: {alerts}", bans["locks"]);
    // Locked to internal: another external call is refused too.
    let invite = a.invite(FAR.0, &sdp_a);
    match a.await_answer(&invite, WAIT) {
        Err(Some(r)) => assert_eq!(status_of(r.as_bytes()), Some(403), "{r}"),
        other => panic!("a locked extension must be refused, got {other:?}"),
    }

    // 112 still goes out and is answered.
    let (p_rtp, _p_rtcp) = rtp_pair_on(PRIMARY_IP);
    let invite = a.invite("112", &sdp_a);
    let incoming = psap.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "the emergency call never reached the provider; phone received:\n{}\nbox log:\n{}",
            a.transcript(),
            boxd.log_text()
        )
    });
    let p_dialog = psap.answer(&incoming, &sdp_body(local(&p_rtp), &[PCMU]));
    let mut dialog = a
        .await_answer(&invite, WAIT)
        .unwrap_or_else(|r| panic!("the emergency call was not answered: {r:?}"));
    psap.await_ack(&p_dialog, WAIT)
        .expect("the PSAP got the ACK");
    eprintln!("emergency call answered despite the lock");
    hang_up(&mut a, &mut dialog, &mut psap);
}

// ---------------------------------------------------------------------------------------
// 7. Hostile providers
// ---------------------------------------------------------------------------------------

/// A provider played by a raw UDP socket on 127.0.0.4.
struct FakeProvider {
    sock: UdpSocket,
}

impl FakeProvider {
    fn new() -> Self {
        let sock = UdpSocket::bind((FAKE_IP, 0)).expect("bind the fake provider");
        FakeProvider { sock }
    }

    fn addr(&self) -> SocketAddr {
        local(&self.sock)
    }

    /// Answers what arrives for `duration` (at most 500 datagrams) with `answer`'s bytes;
    /// returns the REGISTERs seen.
    fn serve(&self, duration: Duration, mut answer: impl FnMut(&str) -> Option<Vec<u8>>) -> usize {
        let deadline = Instant::now() + duration;
        let mut registers = 0;
        for _ in 0..500 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some((src, bytes)) = recv_datagrams(&self.sock, 1, left).into_iter().next() else {
                break;
            };
            let msg = String::from_utf8_lossy(&bytes).into_owned();
            if request_method(&msg) == Some("REGISTER") {
                registers += 1;
            }
            if let Some(out) = answer(&msg) {
                let _ = self.sock.send_to(&out, src);
            }
        }
        registers
    }
}

/// A response to `req`: Via, From, Call-ID and CSeq copied, To with `to_tag` if given.
fn response(req: &str, status: u16, reason: &str, to_tag: Option<&str>, extra: &str) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for via in header_values(req, "Via") {
        let _ = write!(out, "Via: {via}\r\n");
    }
    let mut to = header_value(req, "To").unwrap_or_default();
    if let Some(tag) = to_tag {
        if tag_param(&to).is_none() {
            let _ = write!(to, ";tag={tag}");
        }
    }
    let _ = write!(
        out,
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header_value(req, "From").unwrap_or_default(),
        header_value(req, "Call-ID").unwrap_or_default(),
        header_value(req, "CSeq").unwrap_or_default(),
    );
    out.into_bytes()
}

/// The box with one trunk to the fake provider (no pings unless `pings`).
fn box_with_fake(fake: &FakeProvider, pings: bool) -> Daemon {
    let interval = u8::from(pings);
    let toml = trunk_toml("fake", fake.addr(), "").replace(
        "options_interval_secs = 1",
        &format!("options_interval_secs = {interval}"),
    );
    Daemon::start_with(DaemonConfig::loopback().with_toml(&toml))
}

/// The daemon still answers OPTIONS and the admin socket.
fn assert_alive(boxd: &Daemon, case: &str) {
    assert!(
        options_ok(boxd.sip_addr(), Transport::Udp),
        "{case}: the box stopped answering OPTIONS\nlog:\n{}",
        boxd.log_text()
    );
    boxd.ctl_ok(&["status"]);
}

#[test]
fn ip_authenticated_trunk_without_username_is_usable() {
    // `register = false` needs no account (pbx_config::TrunkSection::check accepts it);
    // such a trunk must carry calls, not sit down as an "invalid configuration".
    let fake = FakeProvider::new();
    let toml = format!(
        "[[trunk]]\nname = \"ipauth\"\nhost = \"{}\"\nregister = false\noptions_interval_secs = 0\n\n{}",
        fake.addr(),
        national_route(&["ipauth"])
    );
    let boxd = Daemon::start_with(DaemonConfig::loopback().with_toml(&toml));
    let t = trunk(&boxd, "ipauth");
    eprintln!("IP-authenticated trunk without username: {t}");
    assert!(is_up(&t), "an IP-authenticated trunk is usable: {t}");
}

#[test]
fn trunk_since_is_a_real_time() {
    // A trunk that never changed health still says since when it is in its state.
    let started = now_ms();
    let fake = FakeProvider::new();
    let boxd = box_with_fake(&fake, false);
    let t = trunk(&boxd, "fake");
    eprintln!("trunk right after start: {t}");
    let since = t["since"].as_u64().unwrap_or(0);
    assert!(
        since + 60_000 >= started && since <= now_ms(),
        "since must be a time of this run (ms since the epoch), not {since}: {t}"
    );
}

#[test]
fn garbage_answers_to_register_leave_the_trunk_unregistered_and_the_box_alive() {
    let fake = FakeProvider::new();
    let boxd = box_with_fake(&fake, false);
    let garbage: [&[u8]; 6] = [
        b"\x00\xff\xfe garbage \x01\x02",
        b"SIP/2.0 200 OK\r\n",
        b"SIP/2.0 200\r\nVia: \r\nCSeq: banana\r\n\r\n",
        b"SIP/2.0 99999999999999999999 OK\r\nContent-Length: 999999999\r\n\r\n",
        b"\r\n\r\n",
        b"SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest\r\nContent-Length: 0\r\n\r\n",
    ];
    let mut n = 0;
    let registers = fake.serve(Duration::from_secs(4), |req| {
        if request_method(req) != Some("REGISTER") {
            return None;
        }
        n += 1;
        let mut out = garbage[n % garbage.len()].to_vec();
        // Also a response that is right in every header but its Call-ID.
        if n % 3 == 0 {
            out = response(
                &req.replace("Call-ID: ", "Call-ID: x"),
                200,
                "OK",
                Some("t"),
                "",
            );
        }
        Some(out)
    });
    eprintln!("garbage provider: {registers} REGISTERs in 4 s");
    assert!(registers >= 1, "the box tried to register");
    assert_alive(&boxd, "garbage");
    let t = trunk(&boxd, "fake");
    eprintln!("trunk after garbage: {t}");
    assert_eq!(t["registered"], Value::Bool(false), "{t}");
    assert!(is_down(&t), "{t}");
}

#[test]
fn a_200_without_to_tag_still_registers() {
    let fake = FakeProvider::new();
    let boxd = box_with_fake(&fake, false);
    let registers = fake.serve(Duration::from_secs(2), |req| {
        (request_method(req) == Some("REGISTER")).then(|| {
            let contact = header_value(req, "Contact").unwrap_or_default();
            response(
                req,
                200,
                "OK",
                None,
                &format!("Contact: {contact};expires=60\r\n"),
            )
        })
    });
    assert!(registers >= 1, "the box tried to register");
    let (t, _) = wait_trunk(&boxd, "fake", "registered", WAIT, |t| {
        t["registered"] == Value::Bool(true)
    });
    eprintln!("trunk after a tag-less 200: {t}");
    assert!(is_up(&t), "{t}");
    assert_alive(&boxd, "no To-tag");
}

#[test]
fn a_challenge_loop_puts_the_trunk_down() {
    let fake = FakeProvider::new();
    let boxd = box_with_fake(&fake, false);
    let mut nonce = 0u32;
    let registers = fake.serve(Duration::from_secs(4), |req| {
        (request_method(req) == Some("REGISTER")).then(|| {
            nonce += 1;
            let challenge = format!(
                "WWW-Authenticate: Digest realm=\"fake\", nonce=\"n{nonce:08x}\", algorithm=MD5, qop=\"auth\"\r\n"
            );
            response(req, 401, "Unauthorized", Some("c"), &challenge)
        })
    });
    eprintln!("challenge-loop provider: {registers} REGISTERs in 4 s");
    let (t, _) = wait_trunk(&boxd, "fake", "down for a challenge loop", WAIT, |t| {
        is_down(t) && json_str(t, "reason").is_some_and(|r| r.contains("challenge"))
    });
    eprintln!("trunk after the challenge loop: {t}");
    assert_eq!(t["registered"], Value::Bool(false), "{t}");
    assert!(
        registers <= 12,
        "the box gives up after a few challenges (retry 1 s with back-off), sent {registers}"
    );
    assert_alive(&boxd, "challenge loop");
}

// ---------------------------------------------------------------------------------------
// 8. Trunks over TLS
// ---------------------------------------------------------------------------------------

/// A test CA (PEM) and a certificate for `provider.test` and 127.0.0.2 it issued
/// (cert PEM, key PEM).
fn provider_pki(ca_name: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params =
        CertificateParams::new(vec!["provider.test".to_owned()]).expect("server params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(PRIMARY_IP)));
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// A provider serving TLS on 127.0.0.2 with the certificate of `pki`; returns it and its
/// TLS address. The files live in `dir`.
fn start_tls_provider(pki: &(String, String, String), dir: &Path) -> (Daemon, SocketAddr) {
    let cert = dir.join("provider.pem");
    let key = dir.join("provider.key");
    std::fs::write(&cert, &pki.1).expect("write cert");
    std::fs::write(&key, &pki.2).expect("write key");
    let tls_addr = SocketAddr::new(IpAddr::V4(PRIMARY_IP), free_port());
    let provider = start_provider(
        PRIMARY_IP,
        &format!(
            "[tls]\nlisten = [\"{tls_addr}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    (provider, tls_addr)
}

/// The box with one TLS trunk to `tls_addr` (checked against name provider.test), trusting
/// the CA in `ca_file` when given.
fn start_tls_box(tls_addr: SocketAddr, ca_file: Option<&Path>) -> Daemon {
    let ca = ca_file
        .map(|p| format!("[tls]\nca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    let toml = format!(
        "{}{}{ca}",
        trunk_toml(
            "secure",
            tls_addr,
            "transport = \"tls\"\ntls_name = \"provider.test\"\n"
        ),
        national_route(&["secure"])
    );
    let boxd = Daemon::start_with(DaemonConfig::loopback().with_toml(&toml));
    boxd.add_extension(EXT_A.0, EXT_A.1);
    boxd
}

#[test]
fn trunk_over_tls_with_a_real_chain_registers_and_carries_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = provider_pki("Provider Test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.0).expect("write CA");
    let (provider, tls_addr) = start_tls_provider(&pki, dir.path());
    let mut far = phone_at(&provider, FAR.0, FAR.1);
    let boxd = start_tls_box(tls_addr, Some(&ca_file));
    let status = wait_up(&boxd, "secure");
    eprintln!("TLS trunk up and registered: {status}");
    let reg = provider.wait_registered(TRUNK_USER, WAIT);
    assert_eq!(
        json_str(&reg, "transport")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("tls"),
        "the box registered over TLS: {reg}"
    );

    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();
    let (a_rtp, _a_rtcp) = rtp_pair();
    let (f_rtp, _f_rtcp) = rtp_pair_on(PRIMARY_IP);
    let (mut a_dialog, _f, incoming, setup) = call_out(
        &boxd,
        &mut a,
        &mut far,
        &sdp_body(local(&a_rtp), &[PCMU]),
        &sdp_body(local(&f_rtp), &[PCMU]),
        WAIT,
    );
    eprintln!("outbound call over the TLS trunk set up in {setup:?}");
    assert_eq!(
        user_of(&header_value(&incoming, "From").unwrap_or_default()),
        TRUNK_USER
    );
    hang_up(&mut a, &mut a_dialog, &mut far);
    let cdrs = boxd.wait_cdrs(1, WAIT);
    assert_eq!(json_str(&cdrs[0], "disposition"), Some("answered"));
}

#[test]
fn trunk_over_tls_refuses_a_certificate_it_cannot_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = provider_pki("Untrusted CA");
    let (_provider, tls_addr) = start_tls_provider(&pki, dir.path());
    // The box trusts only the public roots: the provider's private CA is unknown.
    let boxd = start_tls_box(tls_addr, None);
    let (status, took) = wait_trunk(
        &boxd,
        "secure",
        "down for its certificate",
        DOWN_WAIT,
        |t| {
            is_down(t)
                && json_str(t, "reason")
                    .is_some_and(|r| r.to_ascii_lowercase().contains("certificate"))
        },
    );
    eprintln!("bad certificate reported in {took:?}: {status}");
    assert_eq!(status["registered"], Value::Bool(false), "{status}");
    assert!(
        options_ok(boxd.sip_addr(), Transport::Udp),
        "the box keeps serving"
    );
}

// ---------------------------------------------------------------------------------------
// 9. A trunk's address is not a master key (issue 14)
// ---------------------------------------------------------------------------------------

/// Final answers (status, the response) per Call-ID starting with `prefix` that reach
/// `sock` within `wait`, until `want` Call-IDs have one; provisional answers,
/// retransmissions and answers to other calls are skipped.
fn finals(
    sock: &UdpSocket,
    prefix: &str,
    want: usize,
    wait: Duration,
) -> std::collections::BTreeMap<String, (u16, String)> {
    let deadline = Instant::now() + wait;
    let mut out = std::collections::BTreeMap::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        for (_, bytes) in recv_datagrams(sock, 1, left) {
            let msg = String::from_utf8_lossy(&bytes).into_owned();
            let Some(status) = status_of(&bytes).filter(|s| *s >= 200) else {
                continue;
            };
            let call_id = header_value(&msg, "Call-ID").unwrap_or_default();
            if call_id.starts_with(prefix) {
                out.entry(call_id).or_insert((status, msg));
            }
        }
    }
    out
}

#[test]
fn spoofed_udp_invite_from_a_tls_trunks_address_rings_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = provider_pki("Provider Test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.0).expect("write CA");
    let (provider, tls_addr) = start_tls_provider(&pki, dir.path());
    let mut far = phone_at(&provider, FAR.0, FAR.1);
    let toml = format!(
        "{}{}[tls]\nca = \"{}\"\n\n[inbound]\ndids = {{ \"{TRUNK_USER}\" = \"ext:{}\" }}\n",
        trunk_toml(
            "secure",
            tls_addr,
            "transport = \"tls\"\ntls_name = \"provider.test\"\n"
        ),
        national_route(&["secure"]),
        ca_file.display(),
        EXT_A.0
    );
    let boxd = Daemon::start_with(DaemonConfig::loopback().with_toml(&toml));
    boxd.add_extension(EXT_A.0, EXT_A.1);
    wait_up(&boxd, "secure");
    provider.wait_registered(TRUNK_USER, WAIT);
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();

    // A forger sends UDP from the provider's address (from its TLS port number when that
    // is free over UDP) for the box's DID: an ordinary source, challenged; nothing rings.
    let spoof = UdpSocket::bind((PRIMARY_IP, tls_addr.port()))
        .or_else(|_| UdpSocket::bind((PRIMARY_IP, 0)))
        .expect("bind the forger");
    let (f_rtp, _f_rtcp) = rtp_pair_on(PRIMARY_IP);
    let invite = provider_invite(
        boxd.sip_addr(),
        local(&spoof),
        TRUNK_USER,
        "spoofed-tls-trunk",
        &sdp_body(local(&f_rtp), &[PCMU]),
    );
    spoof
        .send_to(invite.as_bytes(), boxd.sip_addr())
        .expect("send the forged INVITE");
    let got = finals(&spoof, "spoofed", 1, WAIT);
    let status = got.values().next().map(|(s, _)| *s);
    eprintln!("forged UDP INVITE from the TLS trunk's address: {status:?}");
    assert_eq!(
        status,
        Some(407),
        "a UDP INVITE from a TLS trunk's address must be challenged like anyone's: {got:?}\nbox log:\n{}",
        boxd.log_text()
    );
    assert!(
        a.await_request("INVITE", Duration::from_secs(1)).is_none(),
        "the forged INVITE rang ext {}",
        EXT_A.0
    );
    assert!(boxd.cdrs().is_empty(), "{:?}", boxd.cdrs());

    // The provider's own calls over its TLS connection still ring the DID.
    let (c_rtp, _c_rtcp) = rtp_pair_on(PRIMARY_IP);
    let (a_rtp, _a_rtcp) = rtp_pair();
    let call = far.invite(TRUNK_USER, &sdp_body(local(&c_rtp), &[PCMU]));
    let incoming = a.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "the provider's call over TLS did not ring ext {}:\nbox log:\n{}\nprovider log:\n{}",
            EXT_A.0,
            boxd.log_text(),
            provider.log_text()
        )
    });
    let sdp = sdp_body(local(&a_rtp), &[PCMU]);
    answer_then_caller_hangs_up(&mut far, &call, &mut a, &incoming, &sdp);
    let cdrs = boxd.wait_cdrs(1, WAIT);
    assert_eq!(json_str(&cdrs[0], "disposition"), Some("answered"));
}

#[test]
fn a_trunks_inbound_calls_ring_only_its_dids_and_are_capped_per_second() {
    let fake = FakeProvider::new();
    let toml = format!(
        "[[trunk]]\nname = \"ipauth\"\nhost = \"{}\"\nregister = false\noptions_interval_secs = 0\ninbound_calls_per_second = 5\n\n[inbound]\ndids = {{ \"4930100\" = \"ext:{}\" }}\n",
        fake.addr(),
        EXT_A.0
    );
    let boxd = Daemon::start_with(DaemonConfig::loopback().with_toml(&toml));
    boxd.add_extension(EXT_A.0, EXT_A.1);
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();
    let send = |did: &str, call_id: &str| {
        let invite = provider_invite(boxd.sip_addr(), fake.addr(), did, call_id, "");
        fake.sock
            .send_to(invite.as_bytes(), boxd.sip_addr())
            .expect("send INVITE");
    };

    // Not one of its DIDs (an extension's own number, an unknown DID): 404, nothing rings.
    send(EXT_A.0, "not-a-did-1");
    send("4930999", "not-a-did-2");
    let got = finals(&fake.sock, "not-a-did", 2, WAIT);
    let statuses: Vec<u16> = got.values().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [404, 404], "{got:?}");
    assert!(
        a.await_request("INVITE", Duration::from_millis(500))
            .is_none(),
        "an INVITE from the trunk for a number that is not its DID rang ext {}",
        EXT_A.0
    );

    // A burst of 20 within milliseconds: 5 (one second's worth) reach the dialplan, the
    // rest get 503 with Retry-After.
    thread::sleep(Duration::from_millis(1_100));
    for i in 0..20 {
        send("4930999", &format!("burst-{i}"));
    }
    let got = finals(&fake.sock, "burst", 20, WAIT);
    let count = |code: u16| got.values().filter(|(s, _)| *s == code).count();
    eprintln!(
        "burst of 20 inbound INVITEs at a cap of 5/s: {} x 503, {} x 404",
        count(503),
        count(404)
    );
    assert_eq!(got.len(), 20, "every INVITE is answered: {got:?}");
    assert!(count(503) >= 13, "{got:?}");
    assert!((5..=7).contains(&count(404)), "{got:?}");
    assert_eq!(count(503) + count(404), 20, "{got:?}");
    for (status, resp) in got.values() {
        if *status == 503 {
            assert_eq!(
                header_value(resp, "Retry-After").as_deref(),
                Some("1"),
                "{resp}"
            );
        }
    }
    let status = trunk(&boxd, "ipauth");
    assert_eq!(
        status["inbound_refused"].as_u64(),
        Some(u64::try_from(count(503)).expect("small")),
        "{status}"
    );
    let alerts = boxd.ctl_json(&["fw", "alerts"]).to_string();
    assert!(
        alerts.contains("over its cap of 5/s"),
        "one alert for the refused calls: {alerts}"
    );
    assert!(a
        .await_request("INVITE", Duration::from_millis(200))
        .is_none());

    // A second later the trunk's calls for its DID ring again.
    thread::sleep(Duration::from_millis(1_100));
    send("4930100", "real-did");
    assert!(
        a.await_request("INVITE", WAIT).is_some(),
        "the trunk's call for its DID did not ring ext {}:\n{}",
        EXT_A.0,
        boxd.log_text()
    );
}

// ---------------------------------------------------------------------------------------
// 10. Follow-me: the extension's phones, then a mobile through the trunk (issue 20)
// ---------------------------------------------------------------------------------------

/// 100 calls 101; 101's phone rings until the box cancels it (its follow-me time), and
/// answers the CANCEL. Returns 100's INVITE and how long 101's phone rang.
fn ring_101_until_cancelled(
    boxd: &Daemon,
    a: &mut SipPhone,
    b: &mut SipPhone,
) -> (Duration, OutgoingInvite) {
    let (a_rtp, _a_rtcp) = rtp_pair();
    let inv = a.invite(EXT_B.0, &sdp_body(local(&a_rtp), &[PCMU]));
    let b_inv = b
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("101 did not ring:\n{}", boxd.log_text()));
    let rang = ring_until_cancelled(boxd, b, &b_inv, "101's phone");
    (rang, inv)
}

/// `phone` rings for `invite` (180) until the box cancels it, and answers the CANCEL (200,
/// then 487). Returns how long it rang.
fn ring_until_cancelled(boxd: &Daemon, phone: &mut SipPhone, invite: &str, what: &str) -> Duration {
    phone.reply(invite, 180, Some("follow-me"), "");
    let started = Instant::now();
    let cancel = phone
        .await_request("CANCEL", Duration::from_secs(8))
        .unwrap_or_else(|| panic!("{what} was never cancelled:\n{}", boxd.log_text()));
    let rang = started.elapsed();
    phone.reply(&cancel, 200, None, "");
    phone.reply(invite, 487, Some("follow-me"), "");
    rang
}

/// A box (with `extra` configuration) whose trunk goes to a provider, and its phones 100
/// and 101 registered.
fn box_with_phones(provider: &Daemon, extra: &str) -> (Daemon, SipPhone, SipPhone) {
    let boxd = start_box(&[("primary", provider.sip_addr())], extra);
    wait_up(&boxd, "primary");
    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();
    let mut b = SipPhone::new(&boxd, EXT_B.0, EXT_B.1);
    b.register();
    (boxd, a, b)
}

/// Asserts that `what` rang about the 2 s of a follow-me step.
fn assert_rang_two_seconds(took: Duration, what: &str) {
    assert!(
        (Duration::from_millis(1_500)..Duration::from_secs(4)).contains(&took),
        "{what} rang {took:?}, expected about 2 s"
    );
}

/// The INVITE that reaches `mobile`, a phone at the provider, through the trunk.
fn await_mobile_invite(boxd: &Daemon, mobile: &mut SipPhone, what: &str) -> String {
    mobile.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "{what} got no INVITE through the trunk:\n{}",
            boxd.log_text()
        )
    })
}

#[test]
fn follow_me_rings_the_phones_then_the_mobile_through_the_trunk_under_the_policy() {
    let provider = start_provider(PRIMARY_IP, "");
    let mut far = phone_at(&provider, FAR.0, FAR.1);
    let international =
        "[[route]]\nname = \"international\"\npatterns = [\"00X.\"]\ntrunks = [\"primary\"]\n";
    let (boxd, mut a, mut b) = box_with_phones(&provider, international);

    // 101's phones for 2 s, then its mobile (the far party at the provider).
    boxd.ctl_ok(&[
        "ext",
        "forward",
        EXT_B.0,
        "--no-answer",
        FAR.0,
        "--no-answer-secs",
        "2",
    ]);
    let (rang, inv) = ring_101_until_cancelled(&boxd, &mut a, &mut b);
    assert_rang_two_seconds(rang, "101's phone");
    let incoming = await_mobile_invite(&boxd, &mut far, "the mobile");
    let (f_rtp, _f_rtcp) = rtp_pair_on(PRIMARY_IP);
    let sdp = sdp_body(local(&f_rtp), &[PCMU]);
    answer_then_caller_hangs_up(&mut a, &inv, &mut far, &incoming, &sdp);
    let cdrs = boxd.wait_cdrs(1, WAIT);
    assert_eq!(
        json_str(&cdrs[0], "trunk"),
        Some("primary"),
        "{:?}",
        cdrs[0]
    );

    // An international mobile: the toll-fraud policy (international off by default) stops
    // the outside leg as it would stop 101 dialling it; the caller gets 480, nothing leaves.
    boxd.ctl_ok(&[
        "ext",
        "forward",
        EXT_B.0,
        "--no-answer",
        "00447700900123",
        "--no-answer-secs",
        "1",
    ]);
    let (_, inv) = ring_101_until_cancelled(&boxd, &mut a, &mut b);
    match a.await_answer(&inv, WAIT) {
        Err(Some(resp)) => assert_eq!(status_of(resp.as_bytes()), Some(480), "{resp}"),
        other => panic!("the refused follow-me call ended with {other:?}"),
    }
    assert!(
        far.await_request("INVITE", Duration::from_millis(500))
            .is_none(),
        "nothing reaches the provider"
    );
    assert!(
        boxd.log_text()
            .contains("forwarding refused by the toll-fraud policy"),
        "{}",
        boxd.log_text()
    );
}

#[test]
fn follow_me_tries_its_list_in_turn_the_silent_first_number_then_the_second_answers() {
    let provider = start_provider(PRIMARY_IP, "");
    provider.add_extension(FAR2.0, FAR2.1);
    let mut far = phone_at(&provider, FAR.0, FAR.1);
    let mut far2 = phone_at(&provider, FAR2.0, FAR2.1);
    let (boxd, mut a, mut b) = box_with_phones(&provider, "");

    // A list is checked when set: at most 4 numbers, none twice.
    let list = format!("{},{}", FAR.0, FAR2.0);
    for bad in ["0301,0302,0303,0304,0305", "0301,0302,0301"] {
        let out = boxd.ctl(&["ext", "forward", EXT_B.0, "--no-answer", bad]);
        assert_ne!(out.code, Some(0), "{bad} was accepted: {}", out.stdout);
        assert!(out.stderr.contains("no-answer"), "{}", out.stderr);
    }
    boxd.ctl_ok(&[
        "ext",
        "forward",
        EXT_B.0,
        "--no-answer",
        &list,
        "--no-answer-secs",
        "2",
    ]);
    let shown = boxd.ctl_json(&["ext", "show", EXT_B.0]);
    let fwd = &shown["forwarding"];
    assert_eq!(json_str(fwd, "no_answer"), Some(FAR.0), "{shown}");
    assert_eq!(
        fwd["no_answer_then"],
        serde_json::json!([FAR2.0]),
        "{shown}"
    );
    let text = boxd.ctl_ok(&["ext", "show", EXT_B.0]);
    assert!(
        text.contains(&format!("{}, then {} (after 2 s, each)", FAR.0, FAR2.0)),
        "{text}"
    );

    // 101's phones for 2 s, then the first number for its own 2 s: it rings and stays
    // silent, so the box cancels it.
    let (rang, inv) = ring_101_until_cancelled(&boxd, &mut a, &mut b);
    assert_rang_two_seconds(rang, "101's phone");
    let first = await_mobile_invite(&boxd, &mut far, "the first number");
    let first_at = Instant::now();
    let silent = ring_until_cancelled(&boxd, &mut far, &first, "the first number");
    assert_rang_two_seconds(silent, "the first number (its own time)");

    // The second number rings next and answers: the caller is bridged through the box's
    // relay and hears it.
    let second = await_mobile_invite(&boxd, &mut far2, "the second number");
    let after_first = first_at.elapsed();
    assert!(
        after_first >= Duration::from_millis(1_500),
        "the second number rang {after_first:?} after the first: not after the first's turn"
    );
    let (a_rtp, _a_rtcp) = rtp_pair();
    let (f_rtp, _f_rtcp) = rtp_pair_on(PRIMARY_IP);
    let sdp = sdp_body(local(&f_rtp), &[PCMU]);
    let mut a_dialog = answer_call(&mut a, &inv, &mut far2, &second, &sdp);
    let (a_to_f, f_to_a) =
        assert_audio_end_to_end(&boxd, &a_rtp, &a_dialog.remote_sdp, &f_rtp, &second);
    eprintln!(
        "follow-me: phones {rang:?}, first number {silent:?}; RTP A->mobile {a_to_f}/60, mobile->A {f_to_a}/60"
    );
    hang_up(&mut a, &mut a_dialog, &mut far2);
    let cdrs = boxd.wait_cdrs(1, WAIT);
    let cdr = &cdrs[0];
    let fields = ["caller", "disposition", "trunk"].map(|k| json_str(cdr, k));
    assert_eq!(
        fields,
        [Some(EXT_A.0), Some("answered"), Some("primary")],
        "{cdr}"
    );
}
