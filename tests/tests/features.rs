//! Ring groups, call forwarding, blind transfer and call pickup end to end: raw-UDP phones
//! 100 (the caller), 101, 102 and 103 talk to the real outpostd; where a feature moves a
//! call to another phone, RTP is checked through the relay in both directions.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use outpost_tests::{
    body_of, header_value, json_str, parse_rtp, recv_datagrams, request_method, rtp_packet,
    rtp_pair, sdp_audio, sdp_body, status_of, Daemon, DaemonConfig, Dialog, SdpAudio, SipPhone,
};

const EXTS: [(&str, &str); 4] = [
    ("100", "feat-secret-100"),
    ("101", "feat-secret-101"),
    ("102", "feat-secret-102"),
    ("103", "feat-secret-103"),
];
/// Upper bound of every SIP and RTP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// How long a phone listens before concluding that nothing comes.
const QUIET: Duration = Duration::from_millis(300);
const PCMU: u8 = 0;

// ---------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------

/// A phone with its RTP socket.
struct Station {
    sip: SipPhone,
    rtp: UdpSocket,
    /// Keeps the RTCP port (RTP port + 1) ours.
    _rtcp: UdpSocket,
}

impl Station {
    fn sdp(&self) -> String {
        sdp_body(local(&self.rtp), &[PCMU])
    }
}

fn local(sock: &UdpSocket) -> SocketAddr {
    sock.local_addr().expect("socket has a local address")
}

/// A daemon (with `toml` appended to its configuration) and registered phones for
/// 100..=103.
fn start(toml: &str) -> (Daemon, Vec<Station>) {
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(toml));
    let mut phones = Vec::new();
    for (ext, password) in EXTS {
        daemon.add_extension(ext, password);
        let mut sip = SipPhone::new(&daemon, ext, password);
        sip.register();
        let (rtp, rtcp) = rtp_pair();
        phones.push(Station {
            sip,
            rtp,
            _rtcp: rtcp,
        });
    }
    (daemon, phones)
}

/// The next INVITE `p` gets (any dialog), or a panic with what it got.
fn await_invite(daemon: &Daemon, p: &mut SipPhone, who: &str) -> String {
    p.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "{who} got no INVITE; it received:\n{}\nlog:\n{}",
            p.transcript(),
            daemon.log_text()
        )
    })
}

/// Asserts that `p` gets no INVITE within [`QUIET`].
fn assert_no_invite(p: &mut SipPhone, who: &str) {
    if let Some(inv) = p.await_request("INVITE", QUIET) {
        panic!("{who} must not ring:\n{inv}");
    }
}

/// `p` answers `invite` with 180 Ringing.
fn ring(p: &SipPhone, invite: &str) {
    p.reply(invite, 180, Some("ringing-tag"), "");
}

/// `p` gets the CANCEL of `invite`, answers it 200 and the INVITE 487.
fn expect_cancel(daemon: &Daemon, p: &mut SipPhone, invite: &str, who: &str) {
    let call_id = header_value(invite, "Call-ID").unwrap_or_default();
    let cancel = p
        .recv_matching(WAIT, |m| {
            request_method(m) == Some("CANCEL")
                && header_value(m, "Call-ID").as_deref() == Some(call_id.as_str())
        })
        .unwrap_or_else(|| {
            panic!(
                "{who} got no CANCEL; it received:\n{}\nlog:\n{}",
                p.transcript(),
                daemon.log_text()
            )
        });
    p.reply(&cancel, 200, None, "");
    p.reply(invite, 487, Some("ringing-tag"), "");
}

/// The caller's final answer must be a 2xx: returns the dialog (ACKed).
fn caller_answered(
    daemon: &Daemon,
    a: &mut SipPhone,
    inv: &outpost_tests::OutgoingInvite,
) -> Dialog {
    a.await_answer(inv, WAIT).unwrap_or_else(|resp| {
        panic!(
            "the caller's call was not answered: {resp:?}\nA received:\n{}\nlog:\n{}",
            a.transcript(),
            daemon.log_text()
        )
    })
}

/// Callee `p` answers `invite` with its SDP and gets the ACK.
fn callee_answers(daemon: &Daemon, p: &mut Station, invite: &str, who: &str) -> Dialog {
    let sdp = p.sdp();
    let dialog = p.sip.answer(invite, &sdp);
    p.sip.await_ack(&dialog, WAIT).unwrap_or_else(|| {
        panic!(
            "{who} got no ACK; it received:\n{}\nlog:\n{}",
            p.sip.transcript(),
            daemon.log_text()
        )
    });
    dialog
}

/// `from` hangs up `dialog`; `to` gets the BYE in dialog `to_call_id` and answers it.
fn hang_up(from: &mut SipPhone, dialog: &mut Dialog, to: &mut SipPhone, to_call_id: &str) {
    let cseq = from.send_bye(dialog);
    let bye = to
        .answer_bye(WAIT)
        .unwrap_or_else(|| panic!("no BYE; received:\n{}", to.transcript()));
    assert_eq!(
        header_value(&bye, "Call-ID").as_deref(),
        Some(to_call_id),
        "{bye}"
    );
    let ok = from
        .await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to the BYE:\n{}", from.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
}

/// The next NOTIFY of the REFER subscription in dialog `call_id` that `p` gets, answered
/// 200.
fn refer_notify(daemon: &Daemon, p: &mut SipPhone, call_id: &str) -> String {
    let notify = p
        .recv_matching(WAIT, |m| {
            request_method(m) == Some("NOTIFY")
                && header_value(m, "Call-ID").as_deref() == Some(call_id)
        })
        .unwrap_or_else(|| {
            panic!(
                "no NOTIFY:\n{}\nlog:\n{}",
                p.transcript(),
                daemon.log_text()
            )
        });
    p.reply(&notify, 200, None, "");
    notify
}

/// `notify` is a REFER NOTIFY carrying `sipfrag`; the subscription ends with it when
/// `last`.
fn assert_refer_notify(notify: &str, sipfrag: &str, last: bool) {
    assert_eq!(
        header_value(notify, "Event").as_deref(),
        Some("refer"),
        "{notify}"
    );
    let state = header_value(notify, "Subscription-State").unwrap_or_default();
    assert_eq!(state.starts_with("terminated"), last, "{notify}");
    assert!(last || state.starts_with("active"), "{notify}");
    assert!(body_of(notify).starts_with(sipfrag), "{notify}");
}

/// Asserts that `p` gets no BYE within [`QUIET`].
fn assert_no_bye(p: &mut SipPhone, who: &str) {
    if let Some(bye) = p.recv_matching(QUIET, |m| request_method(m) == Some("BYE")) {
        panic!("{who} must not be hung up:\n{bye}");
    }
}

fn relay_of(daemon: &Daemon, body: &str, what: &str) -> SdpAudio {
    let sdp = sdp_audio(body).unwrap_or_else(|| panic!("{what} has no audio SDP:\n{body}"));
    let (first, last) = daemon.media_ports();
    assert!(
        sdp.addr.is_loopback() && (first..=last).contains(&sdp.port),
        "{what} must point at the relay ({first}-{last}):\n{body}"
    );
    sdp
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// An in-dialog request from `p` in `dialog` (CSeq advanced) with extra header lines.
fn in_dialog(p: &SipPhone, ext: &str, dialog: &mut Dialog, method: &str, headers: &str) -> String {
    dialog.cseq += 1;
    let local = p.sip_addr();
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKfeat{pid}x{n};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{ext}@{local}>\r\n{headers}Content-Length: 0\r\n\r\n",
        uri = dialog.remote_target,
        pid = std::process::id(),
        n = SEQ.fetch_add(1, Ordering::SeqCst),
        from = dialog.local_party,
        to = dialog.remote_party,
        call_id = dialog.call_id,
        cseq = dialog.cseq,
    )
}

// ---------------------------------------------------------------------------------------
// RTP
// ---------------------------------------------------------------------------------------

/// 160 bytes of G.711 marked with `mark` and `seq` (never µ-law silence 0xff).
fn payload(mark: u8, seq: u16) -> Vec<u8> {
    let s = seq.to_be_bytes();
    (0..160u8)
        .map(|i| match i {
            0 => mark,
            1 => s[0],
            2 => s[1],
            _ => i.wrapping_mul(7) & 0x7f,
        })
        .collect()
}

/// Sends `count` packets from `sock` to `to`; returns their payloads.
fn send_stream(sock: &UdpSocket, to: SocketAddr, mark: u8, count: u16) -> Vec<Vec<u8>> {
    (0..count)
        .map(|seq| {
            let body = payload(mark, seq);
            let packet = rtp_packet(PCMU, seq, u32::from(seq) * 160, u32::from(mark), &body);
            sock.send_to(&packet, to).expect("send RTP");
            thread::sleep(Duration::from_millis(2));
            body
        })
        .collect()
}

/// Checks that the packets `sent` arrive at `sock`, all from `relay`, in order. Other
/// datagrams (ringback or music from the relay) are skipped.
fn assert_receives(sock: &UdpSocket, relay: SocketAddr, sent: &[Vec<u8>], what: &str) {
    let mark = sent[0][0];
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        for (src, bytes) in recv_datagrams(sock, 1, left) {
            let Some(rtp) = parse_rtp(&bytes) else {
                continue;
            };
            if rtp.payload.first() == Some(&mark) && rtp.payload.len() == 160 {
                assert_eq!(src, relay, "{what}: packets come from the relay port");
                got.push(rtp.payload);
            }
        }
    }
    assert_eq!(
        got.len(),
        sent.len(),
        "{what}: every packet relayed on loopback"
    );
    assert_eq!(got, sent, "{what}: payloads in order, byte for byte");
}

// ---------------------------------------------------------------------------------------
// Ring groups
// ---------------------------------------------------------------------------------------

#[test]
fn simultaneous_group_rings_all_members_and_the_first_answer_wins() {
    let (daemon, mut p) = start(
        "[[ring_group]]\nnumber = \"600\"\nmembers = [\"101\", \"102\"]\nstrategy = \"simultaneous\"\ntimeout_secs = 20\n",
    );
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("600", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102");
    ring(&p[1].sip, &b_inv);
    ring(&p[2].sip, &c_inv);
    let mut c_dialog = callee_answers(&daemon, &mut p[2], &c_inv, "102");
    let mut a_dialog = caller_answered(&daemon, &mut p[0].sip, &inv);
    expect_cancel(&daemon, &mut p[1].sip, &b_inv, "101 (lost the race)");

    // A and the winner talk through the relay.
    let relay_a = relay_of(&daemon, &a_dialog.remote_sdp, "A's 200 OK");
    let relay_c = relay_of(&daemon, body_of(&c_inv), "102's INVITE");
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa1, 20);
    assert_receives(&p[2].rtp, relay_c.rtp_addr(), &sent, "A to 102");
    let sent = send_stream(&p[2].rtp, relay_c.rtp_addr(), 0xc1, 20);
    assert_receives(&p[0].rtp, relay_a.rtp_addr(), &sent, "102 to A");

    let c_call_id = c_dialog.call_id.clone();
    let (a_part, c_part) = p.split_at_mut(2);
    hang_up(
        &mut a_part[0].sip,
        &mut a_dialog,
        &mut c_part[0].sip,
        &c_call_id,
    );
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("answered"),
        "{cdrs:?}"
    );
    let _ = &mut c_dialog;
}

#[test]
fn in_order_group_rings_the_next_member_after_the_member_timeout() {
    let (daemon, mut p) = start(
        "[[ring_group]]\nnumber = \"600\"\nmembers = [\"101\", \"102\"]\nstrategy = \"in_order\"\nmember_timeout_secs = 1\ntimeout_secs = 15\n",
    );
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("600", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    let rang = Instant::now();
    ring(&p[1].sip, &b_inv);
    assert_no_invite(&mut p[2].sip, "102 while 101 has its turn");
    expect_cancel(&daemon, &mut p[1].sip, &b_inv, "101 after its second");
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102");
    let waited = rang.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "member 2 rang {waited:?} after member 1 (member timeout 1 s)"
    );
    ring(&p[2].sip, &c_inv);
    callee_answers(&daemon, &mut p[2], &c_inv, "102");
    let a_dialog = caller_answered(&daemon, &mut p[0].sip, &inv);
    relay_of(&daemon, &a_dialog.remote_sdp, "A's 200 OK");
    let calls = daemon.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
}

// ---------------------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------------------

#[test]
fn forwarding_on_busy_rings_the_target() {
    let (daemon, mut p) = start("");
    daemon.ctl_ok(&["ext", "forward", "101", "--busy", "102"]);
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("101", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    assert_no_invite(&mut p[2].sip, "102 before 101 is busy");
    p[1].sip.reply(&b_inv, 486, Some("busy-tag"), "");
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102 (forwarded on busy)");
    ring(&p[2].sip, &c_inv);
    callee_answers(&daemon, &mut p[2], &c_inv, "102");
    let a_dialog = caller_answered(&daemon, &mut p[0].sip, &inv);
    let relay_a = relay_of(&daemon, &a_dialog.remote_sdp, "A's 200 OK");
    let relay_c = relay_of(&daemon, body_of(&c_inv), "102's INVITE");
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa2, 10);
    assert_receives(&p[2].rtp, relay_c.rtp_addr(), &sent, "A to 102");
}

#[test]
fn forwarding_on_no_answer_cancels_the_phone_and_rings_the_target() {
    let (daemon, mut p) = start("");
    daemon.ctl_ok(&[
        "ext",
        "forward",
        "101",
        "--no-answer",
        "102",
        "--no-answer-secs",
        "1",
    ]);
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("101", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    let rang = Instant::now();
    ring(&p[1].sip, &b_inv);
    expect_cancel(&daemon, &mut p[1].sip, &b_inv, "101 (no answer)");
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102 (forwarded on no answer)");
    assert!(
        rang.elapsed() >= Duration::from_millis(800),
        "forwarded {:?} after ringing began (no-answer time 1 s)",
        rang.elapsed()
    );
    ring(&p[2].sip, &c_inv);
    callee_answers(&daemon, &mut p[2], &c_inv, "102");
    caller_answered(&daemon, &mut p[0].sip, &inv);

    // --off switches forwarding off again.
    daemon.ctl_ok(&["ext", "forward", "101", "--off"]);
    let inv = p[0].sip.invite("101", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    p[1].sip.reply(&b_inv, 486, Some("busy-tag"), "");
    let resp = p[0].sip.await_answer(&inv, WAIT).err().flatten();
    assert_eq!(
        resp.as_deref().and_then(|r| status_of(r.as_bytes())),
        Some(486),
        "without forwarding the busy reaches the caller: {resp:?}"
    );
}

#[test]
fn forwarding_survives_a_restart() {
    let (mut daemon, mut p) = start("");
    daemon.ctl_ok(&["ext", "forward", "101", "--always", "102"]);
    // A follow-me list is kept whole, in its order.
    let list = ["0301234567", "01701234567", "0401234567"];
    daemon.ctl_ok(&["ext", "forward", "102", "--no-answer", &list.join(",")]);
    daemon.stop();
    daemon.restart();
    let shown = daemon.ctl_json(&["ext", "show", "102"]);
    let fwd = &shown["forwarding"];
    assert_eq!(fwd["no_answer"], list[0], "{shown}");
    assert_eq!(
        fwd["no_answer_then"],
        serde_json::json!(list[1..]),
        "{shown}"
    );
    // The phones re-register after the reboot (bindings may or may not have survived).
    for s in p.iter_mut() {
        s.sip.register();
    }
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("101", &offer);
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102 (forwarded always)");
    assert_no_invite(&mut p[1].sip, "101 (forwarded always)");
    ring(&p[2].sip, &c_inv);
    callee_answers(&daemon, &mut p[2], &c_inv, "102");
    caller_answered(&daemon, &mut p[0].sip, &inv);
}

// ---------------------------------------------------------------------------------------
// Blind transfer
// ---------------------------------------------------------------------------------------

#[test]
fn blind_transfer_by_the_callee_moves_the_caller_to_the_target_with_audio() {
    let (daemon, mut p) = start("");
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("101", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    ring(&p[1].sip, &b_inv);
    let mut b_dialog = callee_answers(&daemon, &mut p[1], &b_inv, "101");
    let mut a_dialog = caller_answered(&daemon, &mut p[0].sip, &inv);
    let relay_a = relay_of(&daemon, &a_dialog.remote_sdp, "A's 200 OK");
    let relay_b = relay_of(&daemon, body_of(&b_inv), "B's INVITE");
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa3, 10);
    assert_receives(
        &p[1].rtp,
        relay_b.rtp_addr(),
        &sent,
        "A to B before the transfer",
    );

    // B: REFER to 102.
    let refer = in_dialog(
        &p[1].sip,
        "101",
        &mut b_dialog,
        "REFER",
        "Refer-To: <sip:102@127.0.0.1>\r\nReferred-By: <sip:101@127.0.0.1>\r\n",
    );
    p[1].sip.send(&refer);
    let accepted = p[1]
        .sip
        .await_final(&b_dialog.call_id, b_dialog.cseq, "REFER", WAIT)
        .unwrap_or_else(|| panic!("no answer to the REFER:\n{}", p[1].sip.transcript()));
    assert_eq!(status_of(accepted.as_bytes()), Some(202), "{accepted}");
    let b_call_id = b_dialog.call_id.clone();
    // B hears the target's real progress (RFC 3515): Trying, Ringing, then OK, and stays
    // in its dialog until C has answered.
    let trying = refer_notify(&daemon, &mut p[1].sip, &b_call_id);
    assert_refer_notify(&trying, "SIP/2.0 100 Trying", false);

    // C rings with an offer at the relay (B's side of the same session) and answers.
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102 (transfer target)");
    let relay_c = relay_of(&daemon, body_of(&c_inv), "C's INVITE");
    ring(&p[2].sip, &c_inv);
    let ringing = refer_notify(&daemon, &mut p[1].sip, &b_call_id);
    assert_refer_notify(&ringing, "SIP/2.0 180 Ringing", false);
    assert_no_bye(&mut p[1].sip, "B, while the target rings");
    let mut c_dialog = callee_answers(&daemon, &mut p[2], &c_inv, "102");
    let ok = refer_notify(&daemon, &mut p[1].sip, &b_call_id);
    assert_refer_notify(&ok, "SIP/2.0 200 OK", true);
    let bye = p[1]
        .sip
        .answer_bye(WAIT)
        .unwrap_or_else(|| panic!("B is not hung up:\n{}", p[1].sip.transcript()));
    assert_eq!(
        header_value(&bye, "Call-ID").as_deref(),
        Some(b_call_id.as_str())
    );

    // A's SDP is never touched: same relay address; A hears C and C hears A.
    assert!(
        p[0].sip.await_request("INVITE", QUIET).is_none(),
        "A must not be re-INVITEd:\n{}",
        p[0].sip.transcript()
    );
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa4, 20);
    assert_receives(
        &p[2].rtp,
        relay_c.rtp_addr(),
        &sent,
        "A to C after the transfer",
    );
    let sent = send_stream(&p[2].rtp, relay_c.rtp_addr(), 0xc4, 20);
    assert_receives(
        &p[0].rtp,
        relay_a.rtp_addr(),
        &sent,
        "C to A after the transfer",
    );
    let got = recv_datagrams(&p[1].rtp, 1, QUIET);
    assert!(got.is_empty(), "B is out of the call: {got:02x?}");

    // A hangs up: C gets the BYE.
    let c_call_id = c_dialog.call_id.clone();
    let (a_part, c_part) = p.split_at_mut(2);
    hang_up(
        &mut a_part[0].sip,
        &mut a_dialog,
        &mut c_part[0].sip,
        &c_call_id,
    );
    let _ = &mut c_dialog;
    let calls = daemon.calls();
    assert!(calls.is_empty(), "{calls:?}");

    // The records: one per leg, linked. A talked with B until B transferred the call, then
    // with C from C's answer on; each leg has its own talk time.
    let cdrs = daemon.wait_cdrs(2, WAIT);
    assert_eq!(cdrs.len(), 2, "{cdrs:#?}");
    let (first, second) = (&cdrs[1], &cdrs[0]);
    let field = |c: &serde_json::Value, k: &str| json_str(c, k).map(str::to_owned);
    let num =
        |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
    assert_eq!(field(first, "caller").as_deref(), Some("100"), "{first}");
    assert_eq!(field(first, "callee").as_deref(), Some("101"), "{first}");
    assert_eq!(
        field(first, "disposition").as_deref(),
        Some("transferred"),
        "{first}"
    );
    assert_eq!(field(second, "caller").as_deref(), Some("100"), "{second}");
    assert_eq!(field(second, "callee").as_deref(), Some("102"), "{second}");
    assert_eq!(
        field(second, "disposition").as_deref(),
        Some("answered"),
        "{second}"
    );
    assert_eq!(
        field(second, "transferred_by").as_deref(),
        Some("101"),
        "{second}"
    );
    assert_eq!(
        field(first, "linked_id"),
        field(first, "call_id"),
        "{first}"
    );
    assert_eq!(
        field(second, "linked_id"),
        field(first, "linked_id"),
        "{cdrs:#?}"
    );
    assert!(
        num(first, "answer") <= num(first, "end") && num(first, "end") <= num(second, "start"),
        "B's leg ends when C's begins: {cdrs:#?}"
    );
    assert!(
        num(second, "answer") >= num(second, "start")
            && num(second, "end") >= num(second, "answer"),
        "C's talk time starts at C's answer: {second}"
    );
}

/// A talks to B through the relay (100 calls 101, 101 answers, audio checked): the
/// dialogs and each side's relay address.
fn a_talks_to_b(daemon: &Daemon, p: &mut [Station]) -> (Dialog, Dialog, SdpAudio, SdpAudio) {
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("101", &offer);
    let b_inv = await_invite(daemon, &mut p[1].sip, "101");
    ring(&p[1].sip, &b_inv);
    let b_dialog = callee_answers(daemon, &mut p[1], &b_inv, "101");
    let a_dialog = caller_answered(daemon, &mut p[0].sip, &inv);
    let relay_a = relay_of(daemon, &a_dialog.remote_sdp, "A's 200 OK");
    let relay_b = relay_of(daemon, body_of(&b_inv), "B's INVITE");
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa1, 10);
    assert_receives(&p[1].rtp, relay_b.rtp_addr(), &sent, "A to B");
    (a_dialog, b_dialog, relay_a, relay_b)
}

/// `p` (extension `ext`) blind-transfers `dialog` to `target`: the REFER is accepted (202)
/// and `100 Trying` follows.
fn blind_refer(daemon: &Daemon, p: &mut SipPhone, ext: &str, dialog: &mut Dialog, target: &str) {
    let refer = in_dialog(
        p,
        ext,
        dialog,
        "REFER",
        &format!("Refer-To: <sip:{target}@127.0.0.1>\r\nReferred-By: <sip:{ext}@127.0.0.1>\r\n"),
    );
    p.send(&refer);
    let accepted = p
        .await_final(&dialog.call_id, dialog.cseq, "REFER", WAIT)
        .unwrap_or_else(|| panic!("no answer to the REFER:\n{}", p.transcript()));
    assert_eq!(status_of(accepted.as_bytes()), Some(202), "{accepted}");
    let trying = refer_notify(daemon, p, &dialog.call_id.clone());
    assert_refer_notify(&trying, "SIP/2.0 100 Trying", false);
}

#[test]
fn a_blind_transfer_the_target_refuses_comes_back_to_the_referrer_with_the_reason() {
    let (daemon, mut p) = start("");
    let (mut a_dialog, mut b_dialog, relay_a, relay_b) = a_talks_to_b(&daemon, &mut p);
    blind_refer(&daemon, &mut p[1].sip, "101", &mut b_dialog, "102");
    // C is busy: B learns why, and is not hung up.
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102 (transfer target)");
    p[2].sip.reply(&c_inv, 486, Some("busy-tag"), "");
    let busy = refer_notify(&daemon, &mut p[1].sip, &b_dialog.call_id.clone());
    assert_refer_notify(&busy, "SIP/2.0 486 Busy Here", true);
    assert_no_bye(&mut p[1].sip, "B, whose transfer failed");
    // The call is back with B: audio both ways on the same relay addresses.
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa2, 20);
    assert_receives(
        &p[1].rtp,
        relay_b.rtp_addr(),
        &sent,
        "A to B after the failed transfer",
    );
    let sent = send_stream(&p[1].rtp, relay_b.rtp_addr(), 0xb2, 20);
    assert_receives(
        &p[0].rtp,
        relay_a.rtp_addr(),
        &sent,
        "B to A after the failed transfer",
    );
    assert!(
        daemon
            .calls()
            .iter()
            .any(|c| json_str(c, "state") == Some("answered")),
        "{:?}",
        daemon.calls()
    );
    // B hangs up: A gets the BYE.
    let a_call_id = a_dialog.call_id.clone();
    let (a_part, b_part) = p.split_at_mut(1);
    hang_up(
        &mut b_part[0].sip,
        &mut b_dialog,
        &mut a_part[0].sip,
        &a_call_id,
    );
    let _ = &mut a_dialog;
    // The records: A with B until the REFER, the attempt on 102 (busy, by 101), A with B
    // again.
    let cdrs = daemon.wait_cdrs(3, WAIT);
    let summary: Vec<(Option<&str>, Option<&str>, Option<&str>)> = cdrs
        .iter()
        .rev()
        .map(|c| {
            (
                json_str(c, "callee"),
                json_str(c, "disposition"),
                json_str(c, "transferred_by"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("101"), Some("transferred"), None),
            (Some("102"), Some("busy"), Some("101")),
            (Some("101"), Some("answered"), None),
        ],
        "{cdrs:#?}"
    );
}

#[test]
fn a_caller_who_transfers_and_hangs_up_at_once_still_puts_the_callee_through() {
    let (daemon, mut p) = start("");
    let (mut a_dialog, _b_dialog, _relay_a, relay_b) = a_talks_to_b(&daemon, &mut p);
    // A (the caller) transfers B to 102 and hangs up without waiting.
    blind_refer(&daemon, &mut p[0].sip, "100", &mut a_dialog, "102");
    let cseq = p[0].sip.send_bye(&mut a_dialog);
    let ok = p[0]
        .sip
        .await_final(&a_dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to A's BYE:\n{}", p[0].sip.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    // C rings and answers: B and C talk.
    let c_inv = await_invite(&daemon, &mut p[2].sip, "102 (transfer target)");
    let relay_c = relay_of(&daemon, body_of(&c_inv), "C's INVITE");
    ring(&p[2].sip, &c_inv);
    let _c_dialog = callee_answers(&daemon, &mut p[2], &c_inv, "102");
    let sent = send_stream(&p[2].rtp, relay_c.rtp_addr(), 0xc5, 20);
    assert_receives(
        &p[1].rtp,
        relay_b.rtp_addr(),
        &sent,
        "C to B after the transfer",
    );
    let sent = send_stream(&p[1].rtp, relay_b.rtp_addr(), 0xb5, 20);
    assert_receives(
        &p[2].rtp,
        relay_c.rtp_addr(),
        &sent,
        "B to C after the transfer",
    );
    // A, gone, is told nothing more.
    let more = p[0].sip.recv_matching(QUIET, |m| {
        request_method(m).is_some()
            && header_value(m, "Call-ID").as_deref() == Some(a_dialog.call_id.as_str())
    });
    assert!(more.is_none(), "A left the call: {more:?}");
}

// ---------------------------------------------------------------------------------------
// Park
// ---------------------------------------------------------------------------------------

/// `p` (extension `ext`) parks `dialog`'s other party by a transfer to `target` (the park
/// code or an orbit): 202, `100 Trying`, `200 OK`, then its BYE.
fn park(daemon: &Daemon, p: &mut SipPhone, ext: &str, dialog: &mut Dialog, target: &str) {
    blind_refer(daemon, p, ext, dialog, target);
    let ok = refer_notify(daemon, p, &dialog.call_id.clone());
    assert_refer_notify(&ok, "SIP/2.0 200 OK", true);
    let bye = p
        .answer_bye(WAIT)
        .unwrap_or_else(|| panic!("{ext} is not hung up after parking:\n{}", p.transcript()));
    assert_eq!(
        header_value(&bye, "Call-ID").as_deref(),
        Some(dialog.call_id.as_str())
    );
}

/// The next NOTIFY of the subscription `lamp` whose body satisfies `want` (earlier ones
/// skipped), within [`WAIT`].
fn lamp_notify(p: &mut SipPhone, lamp: &mut Dialog, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let notify = p
            .await_notify(&lamp.call_id, 0, left)
            .unwrap_or_else(|| panic!("the lamp did not change:\n{}", p.transcript()));
        if want(body_of(&notify)) {
            return notify;
        }
    }
}

/// The state `outpostctl calls` shows for the only live call.
fn only_call_state(daemon: &Daemon) -> String {
    let calls = daemon.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    json_str(&calls[0], "state").unwrap_or_default().to_string()
}

/// `p` dials `orbit` and is answered: its dialog and relay address.
fn take_parked(daemon: &Daemon, p: &mut Station, orbit: &str) -> (Dialog, SdpAudio) {
    let offer = p.sdp();
    let inv = p.sip.invite(orbit, &offer);
    let dialog = caller_answered(daemon, &mut p.sip, &inv);
    let relay = relay_of(daemon, &dialog.remote_sdp, "the orbit's 200 OK");
    (dialog, relay)
}

#[test]
fn a_parked_call_waits_with_music_and_any_extension_takes_it_by_its_orbit() {
    let (daemon, mut p) = start("");
    // 103's park key watches orbit 701 (the dialog event package): dark for now.
    let mut lamp = p[3]
        .sip
        .subscribe("701", "dialog", "application/dialog-info+xml", WAIT)
        .unwrap_or_else(|r| panic!("the orbit cannot be watched: {r}"));
    let dark = p[3]
        .sip
        .await_notify(&lamp.call_id, 0, WAIT)
        .expect("the orbit's first NOTIFY");
    assert!(!body_of(&dark).contains("<dialog "), "{dark}");
    let (mut a_dialog, mut b_dialog, relay_a, _relay_b) = a_talks_to_b(&daemon, &mut p);
    // B holds A first, as a phone's park key does.
    let held = format!("{}a=sendonly\r\n", p[1].sdp());
    let cseq = p[1].sip.reinvite(&mut b_dialog, &held);
    let a_call_id = a_dialog.call_id.clone();
    let hold = p[0]
        .sip
        .recv_matching(WAIT, |m| {
            request_method(m) == Some("INVITE")
                && header_value(m, "Call-ID").as_deref() == Some(a_call_id.as_str())
        })
        .unwrap_or_else(|| panic!("A is not held:\n{}", p[0].sip.transcript()));
    p[0].sip
        .reply(&hold, 200, None, &format!("{}a=recvonly\r\n", p[0].sdp()));
    let ok = p[1]
        .sip
        .await_final(&b_dialog.call_id, cseq, "INVITE", WAIT);
    assert!(
        ok.is_some(),
        "no answer to B's hold:\n{}",
        p[1].sip.transcript()
    );
    p[1].sip.ack_2xx(&b_dialog, cseq);
    // B parks A with the park code: A waits in the first orbit, hearing music.
    park(&daemon, &mut p[1].sip, "101", &mut b_dialog, "*70");
    assert_eq!(only_call_state(&daemon), "parked on 701");
    // The orbit's lamp lights, showing who waits there.
    let lit = lamp_notify(&mut p[3].sip, &mut lamp, |b| b.contains("<dialog "));
    assert!(
        lit.contains("<state>confirmed</state>") && lit.contains("sip:100@"),
        "{lit}"
    );
    let music = recv_datagrams(&p[0].rtp, 25, WAIT);
    assert!(
        music.len() >= 25 && music.iter().all(|(from, _)| *from == relay_a.rtp_addr()),
        "A hears music from the relay while parked: {} packets",
        music.len()
    );
    // An empty orbit has nothing to take.
    let offer = p[3].sdp();
    let inv = p[3].sip.invite("702", &offer);
    let resp = p[3].sip.await_answer(&inv, WAIT).err().flatten();
    assert!(
        resp.as_deref()
            .is_some_and(|r| status_of(r.as_bytes()) == Some(404)),
        "702 is empty: {resp:?}"
    );
    // C dials 701: A and C talk through the same relay session (A's address unchanged).
    let (mut c_dialog, relay_c) = take_parked(&daemon, &mut p[2], "701");
    // A, held by B, is taken off hold towards C.
    let resume = p[0]
        .sip
        .recv_matching(WAIT, |m| {
            request_method(m) == Some("INVITE")
                && header_value(m, "Call-ID").as_deref() == Some(a_call_id.as_str())
        })
        .unwrap_or_else(|| panic!("A is not resumed:\n{}", p[0].sip.transcript()));
    assert!(
        !["a=sendonly", "a=recvonly", "a=inactive"]
            .iter()
            .any(|d| body_of(&resume).contains(d)),
        "{resume}"
    );
    p[0].sip.reply(&resume, 200, None, &p[0].sdp());
    assert_eq!(only_call_state(&daemon), "answered");
    // The orbit is empty again: its lamp goes dark.
    lamp_notify(&mut p[3].sip, &mut lamp, |b| !b.contains("<dialog "));
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa6, 20);
    assert_receives(
        &p[2].rtp,
        relay_c.rtp_addr(),
        &sent,
        "A to C after the retrieval",
    );
    let sent = send_stream(&p[2].rtp, relay_c.rtp_addr(), 0xc6, 20);
    assert_receives(
        &p[0].rtp,
        relay_a.rtp_addr(),
        &sent,
        "C to A after the retrieval",
    );
    // C hangs up: A gets the BYE. The records follow the call through the orbit.
    let (a_part, c_part) = p.split_at_mut(2);
    hang_up(
        &mut c_part[0].sip,
        &mut c_dialog,
        &mut a_part[0].sip,
        &a_call_id,
    );
    let _ = &mut a_dialog;
    let cdrs = daemon.wait_cdrs(3, WAIT);
    type Leg<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let legs: Vec<Leg> = cdrs
        .iter()
        .rev()
        .filter(|c| json_str(c, "caller") == Some("100"))
        .map(|c| {
            (
                json_str(c, "callee"),
                json_str(c, "disposition"),
                json_str(c, "transferred_by"),
                json_str(c, "linked_id"),
            )
        })
        .collect();
    let linked = legs.first().and_then(|l| l.3);
    assert_eq!(
        legs,
        [
            (Some("101"), Some("transferred"), None, linked),
            (Some("701"), Some("transferred"), Some("101"), linked),
            (Some("102"), Some("answered"), Some("park:701"), linked),
        ],
        "{cdrs:#?}"
    );
}

#[test]
fn a_callee_parked_by_its_caller_is_taken_and_a_full_lot_refuses_the_next() {
    let (daemon, mut p) = start("[features]\npark_slots = 1\n");
    let (mut a_dialog, _b_dialog, _relay_a, relay_b) = a_talks_to_b(&daemon, &mut p);
    // A (the caller) parks B straight into orbit 701.
    park(&daemon, &mut p[0].sip, "100", &mut a_dialog, "701");
    assert_eq!(only_call_state(&daemon), "parked on 701");
    // The only orbit is taken: 102 cannot park its own call with 103 there.
    let offer = p[2].sdp();
    let inv = p[2].sip.invite("103", &offer);
    let d_inv = await_invite(&daemon, &mut p[3].sip, "103");
    let mut d_dialog_c = {
        let st = &mut p[3];
        callee_answers(&daemon, st, &d_inv, "103")
    };
    let mut c_dialog = caller_answered(&daemon, &mut p[2].sip, &inv);
    let refer = in_dialog(
        &p[2].sip,
        "102",
        &mut c_dialog,
        "REFER",
        "Refer-To: <sip:*70@127.0.0.1>\r\n",
    );
    p[2].sip.send(&refer);
    let full = p[2]
        .sip
        .await_final(&c_dialog.call_id, c_dialog.cseq, "REFER", WAIT)
        .unwrap_or_else(|| panic!("no answer to the REFER:\n{}", p[2].sip.transcript()));
    assert_eq!(status_of(full.as_bytes()), Some(486), "{full}");
    let d_call_id = d_dialog_c.call_id.clone();
    let (c_part, d_part) = p.split_at_mut(3);
    hang_up(
        &mut c_part[2].sip,
        &mut c_dialog,
        &mut d_part[0].sip,
        &d_call_id,
    );
    let _ = &mut d_dialog_c;
    // 102 takes B from 701: it becomes B's other side; B and 102 talk.
    let (_c2, relay_c) = take_parked(&daemon, &mut p[2], "701");
    let sent = send_stream(&p[1].rtp, relay_b.rtp_addr(), 0xb7, 20);
    assert_receives(
        &p[2].rtp,
        relay_c.rtp_addr(),
        &sent,
        "B to C after the retrieval",
    );
    let sent = send_stream(&p[2].rtp, relay_c.rtp_addr(), 0xc7, 20);
    assert_receives(
        &p[1].rtp,
        relay_b.rtp_addr(),
        &sent,
        "C to B after the retrieval",
    );
}

#[test]
fn a_parked_call_nobody_takes_rings_the_parker_back() {
    let (daemon, mut p) = start("[features]\npark_timeout_secs = 10\n");
    let (_a_dialog, mut b_dialog, relay_a, _relay_b) = a_talks_to_b(&daemon, &mut p);
    park(&daemon, &mut p[1].sip, "101", &mut b_dialog, "*70");
    // Nobody takes it: after 10 s B's phone rings again, and answering brings A back.
    let again = p[1]
        .sip
        .await_request("INVITE", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the parker was not rung back:\n{}", daemon.log_text()));
    let relay_b2 = relay_of(&daemon, body_of(&again), "the ring-back INVITE");
    ring(&p[1].sip, &again);
    let _b2 = callee_answers(&daemon, &mut p[1], &again, "101 (ring-back)");
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa8, 20);
    assert_receives(
        &p[1].rtp,
        relay_b2.rtp_addr(),
        &sent,
        "A to B after the ring-back",
    );
    assert_eq!(only_call_state(&daemon), "answered");
}

// ---------------------------------------------------------------------------------------
// Pickup
// ---------------------------------------------------------------------------------------

#[test]
fn pickup_answers_the_ringing_call_with_audio_both_ways() {
    let (daemon, mut p) = start("");
    let offer = p[0].sdp();
    let inv = p[0].sip.invite("101", &offer);
    let b_inv = await_invite(&daemon, &mut p[1].sip, "101");
    ring(&p[1].sip, &b_inv);
    // Let the 180 reach A.
    assert!(p[0]
        .sip
        .recv_matching(WAIT, |m| status_of(m.as_bytes()) == Some(180))
        .is_some());

    let picker_offer = p[2].sdp();
    let pick = p[2].sip.invite("*8", &picker_offer);
    let mut p_dialog = caller_answered(&daemon, &mut p[2].sip, &pick);
    let a_dialog = caller_answered(&daemon, &mut p[0].sip, &inv);
    expect_cancel(&daemon, &mut p[1].sip, &b_inv, "101 (picked up)");
    let relay_a = relay_of(&daemon, &a_dialog.remote_sdp, "A's 200 OK");
    let relay_p = relay_of(&daemon, &p_dialog.remote_sdp, "the picker's 200 OK");
    let sent = send_stream(&p[0].rtp, relay_a.rtp_addr(), 0xa5, 20);
    assert_receives(&p[2].rtp, relay_p.rtp_addr(), &sent, "A to the picker");
    let sent = send_stream(&p[2].rtp, relay_p.rtp_addr(), 0xc5, 20);
    assert_receives(&p[0].rtp, relay_a.rtp_addr(), &sent, "the picker to A");

    // Nothing else rings now: *8 finds nothing.
    let offer = p[3].sdp();
    let again = p[3].sip.invite("*8", &offer);
    let resp = p[3].sip.await_answer(&again, WAIT).err().flatten();
    assert_eq!(
        resp.as_deref().and_then(|r| status_of(r.as_bytes())),
        Some(480),
        "{resp:?}"
    );

    // The picker hangs up: A gets the BYE.
    let a_call_id = a_dialog.call_id.clone();
    let (a_part, rest) = p.split_at_mut(1);
    hang_up(
        &mut rest[1].sip,
        &mut p_dialog,
        &mut a_part[0].sip,
        &a_call_id,
    );
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert!(
        cdrs.iter()
            .any(|c| json_str(c, "disposition") == Some("answered")
                && json_str(c, "caller") == Some("100")),
        "{cdrs:?}"
    );
}
