//! Paging against the real daemon, with raw SIP phones and real audio: 100 dials the paging
//! number `*80` (members 101, 102, 103); Outpost answers at once; 101 and 102 get an INVITE
//! with the auto-answer headers and a `sendonly` offer, answer `recvonly`, and each hears
//! 100's 440 Hz tone; what 101 sends (1300 Hz) is heard by nobody; 103, on a call with 104,
//! is not paged; 100's BYE ends both paged phones' calls. Every wait is bounded.

use std::thread;
use std::time::Duration;

use outpost_tests::{
    body_of, header_values, recv_ulaw, send_ulaw_tone, tone_amplitude, AudioPhone as Phone, Daemon,
    DaemonConfig,
};

const WAIT: Duration = Duration::from_secs(5);
const CALLER_TONE: f64 = 440.0;
/// Not 1000 Hz: that is the beep the caller hears when answered.
const MEMBER_TONE: f64 = 1300.0;
/// 2 s of tone.
const FRAMES: u16 = 100;

/// The middle half of `x` (the tone's steady part inside the receive window).
fn middle(x: &[f64]) -> &[f64] {
    &x[x.len() / 4..x.len() * 3 / 4]
}

#[test]
fn a_page_is_auto_answered_by_free_members_who_hear_the_caller_and_nobody_hears_them() {
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(
        "[[paging]]\nnumber = \"*80\"\nmembers = [\"101\", \"102\", \"103\", \"105\"]\n",
    ));
    let mut caller = Phone::new(&daemon, "100");
    let mut m1 = Phone::new(&daemon, "101");
    let mut m2 = Phone::new(&daemon, "102");
    let mut busy = Phone::new(&daemon, "103");
    let mut other = Phone::new(&daemon, "104");
    let mut ringer = Phone::new(&daemon, "105");

    // 103 is on a call with 104.
    let inv = busy.sip.invite("104", &busy.sdp());
    let other_sdp = other.sdp();
    let _ = other.answer(&daemon, &other_sdp);
    busy.sip.await_answer(&inv, WAIT).expect("103 talks to 104");

    // 100 pages: answered by Outpost at once.
    let (mut page, relay_caller) = caller.call(&daemon, "*80");

    // 101 and 102 are paged: auto-answer headers, a one-way offer; they answer recvonly.
    let mut paged = Vec::new();
    for m in [&mut m1, &mut m2] {
        let sdp = m.sdp().replace("a=sendrecv", "a=recvonly");
        let (invite, dialog, relay) = m.answer(&daemon, &sdp);
        let call_info = header_values(&invite, "Call-Info").join(",");
        let alert_info = header_values(&invite, "Alert-Info").join(",");
        assert!(call_info.contains("answer-after=0"), "{invite}");
        assert!(alert_info.contains("info=alert-autoanswer"), "{invite}");
        assert!(body_of(&invite).contains("a=sendonly"), "{invite}");
        assert!(!body_of(&invite).contains("a=sendrecv"), "{invite}");
        paged.push((dialog, relay));
    }
    // 105 does not auto-answer: it rings.
    let ringing = ringer
        .sip
        .await_request("INVITE", WAIT)
        .expect("105 is paged");
    ringer.sip.reply(&ringing, 180, Some("ring-105"), "");
    // 103 is busy: not paged.
    assert!(
        busy.sip
            .await_request("INVITE", Duration::from_secs(1))
            .is_none(),
        "a busy member was paged"
    );

    // 100 talks (440 Hz) and 101 talks too (1000 Hz): all three listen meanwhile.
    let relay_m1 = paged[0].1;
    let heard = thread::scope(|s| {
        let listeners: Vec<_> = [&caller.rtp, &m1.rtp, &m2.rtp]
            .into_iter()
            .map(|sock| s.spawn(move || recv_ulaw(sock, Duration::from_millis(2_500))))
            .collect();
        s.spawn(|| send_ulaw_tone(&m1.rtp, relay_m1, MEMBER_TONE, FRAMES, 0x0101));
        send_ulaw_tone(&caller.rtp, relay_caller, CALLER_TONE, FRAMES, 0x0100);
        listeners
            .into_iter()
            .map(|l| l.join().expect("listener"))
            .collect::<Vec<_>>()
    });
    let amp = |x: &[f64], hz| tone_amplitude(middle(x), hz, 8000.0);
    let [(at_caller, n0), (at_m1, n1), (at_m2, n2)] = &heard[..] else {
        panic!("three listeners");
    };
    for (who, x, n) in [("101", at_m1, n1), ("102", at_m2, n2)] {
        let (tone, own) = (amp(x, CALLER_TONE), amp(x, MEMBER_TONE));
        println!("{who}: {n} packets; {CALLER_TONE} Hz {tone:.3}, {MEMBER_TONE} Hz {own:.4}");
        assert!(*n >= 100, "{who} got {n} packets");
        assert!(tone > 0.3, "{who} does not hear the caller: {tone}");
        assert!(own < 0.02, "{who} hears 101: {own}");
    }
    // The talker gets no mix: at most the end of its beep (25 packets).
    let back = amp(at_caller, MEMBER_TONE);
    println!("100: {n0} packets; {MEMBER_TONE} Hz {back:.4}");
    assert!(*n0 <= 25, "the caller gets a stream: {n0} packets");
    assert!(back < 0.02, "the caller hears 101: {back}");

    // 100 hangs up: both paged phones get a BYE, the ringing one a CANCEL.
    let cseq = caller.sip.send_bye(&mut page);
    for m in [&mut m1, &mut m2] {
        assert!(
            m.sip.answer_bye(WAIT).is_some(),
            "{} not hung up:\n{}",
            m.sip.ext(),
            daemon.log_text()
        );
    }
    assert!(caller
        .sip
        .await_final(&page.call_id, cseq, "BYE", WAIT)
        .is_some());
    assert!(
        ringer.sip.await_request("CANCEL", WAIT).is_some(),
        "the ringing phone is not cancelled:\n{}",
        daemon.log_text()
    );
    // The records: the page itself, and one per paged phone (put there by the page).
    let cdrs = daemon.wait_cdrs(4, WAIT);
    let mut legs: Vec<(String, String, String)> = cdrs
        .iter()
        .filter(|c| c["caller"] == "100")
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or("-").to_owned();
            (text("callee"), text("disposition"), text("transferred_by"))
        })
        .collect();
    legs.sort();
    let want = |callee: &str, disposition: &str, by: &str| {
        (callee.to_owned(), disposition.to_owned(), by.to_owned())
    };
    assert_eq!(
        legs,
        vec![
            want("*80", "answered", "-"),
            want("101", "answered", "page:*80"),
            want("102", "answered", "page:*80"),
            want("105", "cancelled", "page:*80"),
        ],
        "{cdrs:?}"
    );
}

#[test]
fn a_paged_phone_leaves_alone_and_the_page_ends_when_no_phone_is_left() {
    let daemon = Daemon::start_with(
        DaemonConfig::loopback()
            .with_toml("[[paging]]\nnumber = \"*81\"\nmembers = [\"201\", \"202\"]\n"),
    );
    let mut caller = Phone::new(&daemon, "200");
    let mut listener = Phone::new(&daemon, "201");
    let mut ringer = Phone::new(&daemon, "202");
    let (_page, _) = caller.call(&daemon, "*81");
    let sdp = listener.sdp().replace("a=sendrecv", "a=recvonly");
    let (_, mut dialog, _) = listener.answer(&daemon, &sdp);
    let ringing = ringer
        .sip
        .await_request("INVITE", WAIT)
        .expect("202 is paged");
    ringer.sip.reply(&ringing, 180, Some("ring-202"), "");

    // 201 hangs up: the page goes on while 202 still rings.
    let cseq = listener.sip.send_bye(&mut dialog);
    assert!(listener
        .sip
        .await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .is_some());
    assert!(
        caller.sip.answer_bye(Duration::from_millis(500)).is_none(),
        "the caller was hung up while a phone was still paged"
    );
    // 202 refuses: no phone is left, so the caller is hung up.
    ringer.sip.reply(&ringing, 486, Some("ring-202"), "");
    assert!(
        caller.sip.answer_bye(WAIT).is_some(),
        "the page did not end:\n{}",
        daemon.log_text()
    );
}

/// A phone that does not auto-answer rings `ring_secs` (here 2 s) and is cancelled; the
/// page goes on with the phone that answered. A page nobody answers ends after it.
#[test]
fn a_paged_phone_that_does_not_answer_by_itself_is_cancelled_after_the_ring_time() {
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(
        "[[paging]]\nnumber = \"*82\"\nmembers = [\"301\", \"302\"]\nring_secs = 2\n\
         [[paging]]\nnumber = \"*83\"\nmembers = [\"302\"]\nring_secs = 2\n",
    ));
    let mut caller = Phone::new(&daemon, "300");
    let mut listener = Phone::new(&daemon, "301");
    let mut ringer = Phone::new(&daemon, "302");
    let (_page, _) = caller.call(&daemon, "*82");
    let sdp = listener.sdp().replace("a=sendrecv", "a=recvonly");
    let (_, _dialog, _) = listener.answer(&daemon, &sdp);
    let ringing = ringer
        .sip
        .await_request("INVITE", WAIT)
        .expect("302 is paged");
    let rang = std::time::Instant::now();
    ringer.sip.reply(&ringing, 180, Some("ring-302"), "");
    let cancel = ringer
        .sip
        .await_request("CANCEL", WAIT)
        .unwrap_or_else(|| panic!("302 rings on:\n{}", daemon.log_text()));
    let after = rang.elapsed();
    assert!(
        after >= Duration::from_millis(1_700) && after <= Duration::from_millis(3_500),
        "cancelled after {after:?}, not the 2 s ring time"
    );
    ringer.sip.reply(&cancel, 200, None, "");
    ringer.sip.reply(&ringing, 487, Some("ring-302"), "");
    // The page goes on with 301.
    assert!(
        caller.sip.answer_bye(Duration::from_millis(800)).is_none(),
        "the page ended with a phone still listening"
    );
    assert!(
        listener
            .sip
            .await_request("BYE", Duration::from_millis(200))
            .is_none(),
        "the listening phone was hung up"
    );

    // *83: its only member does not answer; the caller is hung up after the ring time.
    let (_page, _) = caller.call(&daemon, "*83");
    let ringing = ringer
        .sip
        .await_request("INVITE", WAIT)
        .expect("302 is paged again");
    ringer.sip.reply(&ringing, 180, Some("ring-302b"), "");
    let cancel = ringer
        .sip
        .await_request("CANCEL", WAIT)
        .expect("302 cancelled");
    ringer.sip.reply(&cancel, 200, None, "");
    ringer.sip.reply(&ringing, 487, Some("ring-302b"), "");
    assert!(
        caller.sip.answer_bye(WAIT).is_some(),
        "a page nobody answered did not end:\n{}",
        daemon.log_text()
    );
    let cdrs = daemon.wait_cdrs(3, WAIT);
    let unanswered = cdrs
        .iter()
        .filter(|c| c["callee"] == "302" && c["transferred_by"] == "page:*83")
        .map(|c| c["disposition"].clone())
        .collect::<Vec<_>>();
    assert_eq!(unanswered, vec!["no_answer"], "{cdrs:?}");
}
