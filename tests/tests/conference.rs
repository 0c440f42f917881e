//! The ad-hoc conference against the real daemon, with raw SIP phones and real audio
//! (G.711 tones, each party's own frequency, measured with Goertzel's filter).
//!
//! 100 talks to 101 (held) and to 102, then dials the conference number `*3`: Outpost
//! answers it as the focus, hangs up 100's two old dialogs, takes 101 off hold, and mixes
//! the three in the relay: each hears the two others and not itself. 100's RFC 4579 REFER
//! naming a call that joined is told done. When 101 leaves, 100 and 102 still hear each
//! other; when 102 leaves, 100, the last one, is hung up. A second test builds the
//! conference the RFC 4579 way (the focus first, then a REFER with Replaces for a call the
//! phone answered) and checks what is refused. Every wait is bounded.

use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use outpost_tests::{
    body_of, header_value, recv_datagrams, recv_ulaw, request_method, sdp_audio, send_ulaw_tone,
    status_of, tone_amplitude, AudioPhone as Phone, Daemon, DaemonConfig, Dialog,
};

const WAIT: Duration = Duration::from_secs(5);
/// Frames of tone each party sends per measurement (1.6 s).
const FRAMES: u16 = 80;

/// The Contact of the 200 that answered `p`'s INVITE with Call-ID `call_id`.
fn answer_contact(p: &Phone, call_id: &str) -> String {
    p.sip
        .transcript()
        .split("\n-----\n")
        .filter(|m| {
            status_of(m.as_bytes()) == Some(200)
                && header_value(m, "Call-ID").as_deref() == Some(call_id)
        })
        .find_map(|m| header_value(m, "Contact"))
        .unwrap_or_default()
}

/// The next request `method` `p` gets in the dialog with Call-ID `call_id`.
fn request_in(p: &mut Phone, method: &str, call_id: &str) -> Option<String> {
    p.sip.recv_matching(WAIT, |m| {
        request_method(m) == Some(method) && header_value(m, "Call-ID").as_deref() == Some(call_id)
    })
}

/// Waits for the BYE `p` gets in dialog `call_id` and answers it.
fn hung_up(p: &mut Phone, daemon: &Daemon, call_id: &str, why: &str) {
    let bye = request_in(p, "BYE", call_id)
        .unwrap_or_else(|| panic!("{}: no BYE ({why}):\n{}", p.sip.ext(), daemon.log_text()));
    p.sip.reply(&bye, 200, None, "");
}

/// Holds the other party of `dialog` (`who` is that party's phone): re-INVITE sendonly,
/// the party answers recvonly.
fn hold(holder: &mut Phone, dialog: &mut Dialog, who: &mut Phone) {
    let held = holder.sdp().replace("a=sendrecv", "a=sendonly");
    let cseq = holder.sip.reinvite(dialog, &held);
    let hold = who
        .sip
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("not held:\n{}", who.sip.transcript()));
    let recvonly = who.sdp().replace("a=sendrecv", "a=recvonly");
    who.sip.reply(&hold, 200, None, &recvonly);
    holder
        .sip
        .await_final(&dialog.call_id, cseq, "INVITE", WAIT)
        .expect("the hold answered");
    holder.sip.ack_2xx(dialog, cseq);
}

/// Each phone sends its tone to its relay address while every phone listens; returns what
/// each heard, as the amplitude of each tone (in `tones` order) in the middle of its audio.
fn measure(parties: &[(&Phone, SocketAddr, f64)]) -> Vec<Vec<f64>> {
    // What the mix sent before (silence) waits in the sockets: not part of this.
    for (p, _, _) in parties {
        let _ = recv_datagrams(&p.rtp, 100_000, Duration::from_millis(30));
    }
    let heard = thread::scope(|s| {
        let listeners: Vec<_> = parties
            .iter()
            .map(|(p, _, _)| s.spawn(move || recv_ulaw(&p.rtp, Duration::from_millis(2_000))))
            .collect();
        thread::sleep(Duration::from_millis(50));
        let senders: Vec<_> = parties
            .iter()
            .enumerate()
            .map(|(i, &(p, relay, hz))| {
                let ssrc = 0x0c00 + u32::try_from(i).unwrap_or(0);
                s.spawn(move || send_ulaw_tone(&p.rtp, relay, hz, FRAMES, ssrc))
            })
            .collect();
        for t in senders {
            t.join().expect("sender");
        }
        listeners
            .into_iter()
            .map(|l| l.join().expect("listener"))
            .collect::<Vec<_>>()
    });
    heard
        .iter()
        .map(|(x, _)| {
            let steady = &x[x.len() / 4..x.len() * 3 / 4];
            parties
                .iter()
                .map(|&(_, _, hz)| tone_amplitude(steady, hz, 8000.0))
                .collect()
        })
        .collect()
}

/// Asserts that party `i` of `names` hears every other party's tone and not its own.
fn assert_each_hears_the_others(names: &[&str], heard: &[Vec<f64>]) {
    for (i, amps) in heard.iter().enumerate() {
        println!("{} hears {:?}", names[i], amps);
        for (j, amp) in amps.iter().enumerate() {
            if i == j {
                assert!(*amp < 0.02, "{} hears itself: {amps:?}", names[i]);
            } else {
                assert!(
                    *amp > 0.15,
                    "{} does not hear {}: {amps:?}",
                    names[i],
                    names[j]
                );
            }
        }
    }
}

fn call_states(daemon: &Daemon) -> Vec<String> {
    daemon
        .calls()
        .iter()
        .filter_map(|c| c["state"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_phone_joins_its_two_calls_into_a_conference_where_each_hears_the_two_others() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    let mut host = Phone::new(&daemon, "100");
    let mut b = Phone::new(&daemon, "101");
    let mut c = Phone::new(&daemon, "102");

    // 100 calls 101 and holds it, then calls 102.
    let inv = host.sip.invite("101", &host.sdp());
    let sdp = b.sdp();
    let (_, mut b_dialog, b_relay) = b.answer(&daemon, &sdp);
    let mut to_b = host.sip.await_answer(&inv, WAIT).expect("101 answers");
    hold(&mut host, &mut to_b, &mut b);
    let inv = host.sip.invite("102", &host.sdp());
    let sdp = c.sdp();
    let (_, mut c_dialog, c_relay) = c.answer(&daemon, &sdp);
    let to_c = host.sip.await_answer(&inv, WAIT).expect("102 answers");

    // 100 dials the conference number: answered by the focus.
    let (mut conf, conf_relay) = host.call(&daemon, "*3");
    let contact = answer_contact(&host, &conf.call_id);
    assert!(
        contact.contains("isfocus"),
        "the focus's Contact: {contact:?}"
    );
    // Its two old dialogs are hung up; 101 is taken off hold.
    hung_up(
        &mut host,
        &daemon,
        &to_b.call_id,
        "its dialog with 101 joined",
    );
    hung_up(
        &mut host,
        &daemon,
        &to_c.call_id,
        "its dialog with 102 joined",
    );
    let resume = request_in(&mut b, "INVITE", &b_dialog.call_id)
        .unwrap_or_else(|| panic!("101 is not taken off hold:\n{}", daemon.log_text()));
    assert!(
        !["a=sendonly", "a=recvonly", "a=inactive"]
            .iter()
            .any(|d| body_of(&resume).contains(d)),
        "{resume}"
    );
    b.sip.reply(&resume, 200, None, &b.sdp());
    let c_call_id = c_dialog.call_id.clone();
    let reinvite = c.sip.recv_matching(Duration::from_millis(500), |m| {
        request_method(m) == Some("INVITE")
            && header_value(m, "Call-ID").as_deref() == Some(c_call_id.as_str())
    });
    assert!(reinvite.is_none(), "102 was not held: no re-INVITE for it");
    // The phone follows RFC 4579: it REFERs the focus to its call with 101, which joined.
    let replaces = to_b.call_id.replace('@', "%40");
    let cseq = host.sip.send_in_dialog(
        &mut conf,
        "REFER",
        &format!("Refer-To: <sip:101@127.0.0.1?Replaces={replaces}>\r\n"),
    );
    let accepted = host
        .sip
        .await_final(&conf.call_id, cseq, "REFER", WAIT)
        .expect("the REFER answered");
    assert_eq!(status_of(accepted.as_bytes()), Some(202), "{accepted}");
    let notify = request_in(&mut host, "NOTIFY", &conf.call_id).expect("the REFER's NOTIFY");
    host.sip.reply(&notify, 200, None, "");
    assert!(body_of(&notify).starts_with("SIP/2.0 200"), "{notify}");
    let states = call_states(&daemon);
    assert_eq!(
        states,
        vec!["in conference (3 parties)"; 3],
        "outpostctl calls"
    );

    // Everyone talks at once: each hears the two others, not itself.
    let heard = measure(&[
        (&host, conf_relay, 440.0),
        (&b, b_relay, 700.0),
        (&c, c_relay, 1300.0),
    ]);
    assert_each_hears_the_others(&["100", "101", "102"], &heard);

    // 102's phone refreshes its session (a re-INVITE, as session timers do), then holds:
    // Outpost answers as the other end, on the same relay address, the direction mirrored.
    for (sdp, want) in [
        (c.sdp(), "a=sendrecv"),
        (c.sdp().replace("a=sendrecv", "a=sendonly"), "a=recvonly"),
        (c.sdp(), "a=sendrecv"),
    ] {
        let cseq = c.sip.reinvite(&mut c_dialog, &sdp);
        let ok = c
            .sip
            .await_final(&c_dialog.call_id, cseq, "INVITE", WAIT)
            .expect("102's re-INVITE answered");
        assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
        assert!(body_of(&ok).contains(want), "{want}: {ok}");
        let relay = sdp_audio(body_of(&ok)).expect("SDP").rtp_addr();
        assert_eq!(relay, c_relay, "102's relay address moved");
        c.sip.ack_2xx(&c_dialog, cseq);
    }

    // 101 leaves: 100 and 102 go on.
    let cseq = b.sip.send_in_dialog(&mut b_dialog, "BYE", "");
    b.sip
        .await_final(&b_dialog.call_id, cseq, "BYE", WAIT)
        .expect("101's BYE answered");
    let heard = measure(&[(&host, conf_relay, 440.0), (&c, c_relay, 1300.0)]);
    assert_each_hears_the_others(&["100", "102"], &heard);
    assert_eq!(call_states(&daemon), vec!["in conference (2 parties)"; 2]);

    // 102 leaves: 100, the last one, is hung up.
    let cseq = c.sip.send_in_dialog(&mut c_dialog, "BYE", "");
    c.sip
        .await_final(&c_dialog.call_id, cseq, "BYE", WAIT)
        .expect("102's BYE answered");
    hung_up(
        &mut host,
        &daemon,
        &conf.call_id,
        "the last party of the conference",
    );
    assert!(
        call_states(&daemon).is_empty(),
        "{:?}",
        call_states(&daemon)
    );

    // The records: each talk before, then each party in the conference, put there by 100.
    let cdrs = daemon.wait_cdrs(5, WAIT);
    let joined: Vec<_> = cdrs
        .iter()
        .filter(|r| r["callee"] == "*3" && r["transferred_by"] == "100")
        .map(|r| r["caller"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        joined.contains(&"101".to_owned()) && joined.contains(&"102".to_owned()),
        "{cdrs:?}"
    );
}

#[test]
fn a_refer_with_replaces_brings_an_answered_call_into_the_focus_and_nothing_else_gets_in() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    let mut host = Phone::new(&daemon, "100");
    let mut b = Phone::new(&daemon, "101");
    let mut c = Phone::new(&daemon, "102");
    let mut d = Phone::new(&daemon, "103");

    // The focus first: 100 alone in it.
    let (mut conf, conf_relay) = host.call(&daemon, "*3");
    // 101 calls 100, which answers (100 is the callee of this call).
    let inv = b.sip.invite("100", &b.sdp());
    let sdp = host.sdp();
    let (_, from_b, _) = host.answer(&daemon, &sdp);
    let b_dialog = b.sip.await_answer(&inv, WAIT).expect("100 answers");
    let b_relay = sdp_audio(&b_dialog.remote_sdp).expect("SDP").rtp_addr();
    // 102 talks to 103: not 100's call.
    let inv = c.sip.invite("103", &c.sdp());
    let sdp = d.sdp();
    let _ = d.answer(&daemon, &sdp);
    let c_dialog = c.sip.await_answer(&inv, WAIT).expect("103 answers");

    let mut refer = |host: &mut Phone, refer_to: &str| -> u16 {
        let cseq =
            host.sip
                .send_in_dialog(&mut conf, "REFER", &format!("Refer-To: {refer_to}\r\n"));
        let resp = host
            .sip
            .await_final(&conf.call_id, cseq, "REFER", WAIT)
            .expect("the REFER answered");
        status_of(resp.as_bytes()).unwrap_or(0)
    };
    // Calling a number in, or another phone's call: refused; nonsense: 400.
    assert_eq!(refer(&mut host, "<sip:104@127.0.0.1>"), 403);
    for junk in [
        "",
        "<>",
        "garbage",
        "<sip:@?Replaces=>",
        "<sip:1@x?Replaces=%ZZ%00>",
    ] {
        let status = refer(&mut host, junk);
        assert!(
            (400..500).contains(&status) && status != 481,
            "Refer-To {junk:?}: {status}"
        );
    }
    let other = c_dialog.call_id.replace('@', "%40");
    assert_eq!(
        refer(&mut host, &format!("<sip:103@127.0.0.1?Replaces={other}>")),
        403
    );
    // Its own call with 101: joins.
    let replaces = from_b.call_id.replace('@', "%40");
    assert_eq!(
        refer(
            &mut host,
            &format!("<sip:101@127.0.0.1?Replaces={replaces}>")
        ),
        202
    );
    hung_up(
        &mut host,
        &daemon,
        &from_b.call_id,
        "its dialog with 101 joined",
    );
    let notify = request_in(&mut host, "NOTIFY", &conf.call_id).expect("the REFER's NOTIFY");
    host.sip.reply(&notify, 200, None, "");
    assert!(body_of(&notify).starts_with("SIP/2.0 200"), "{notify}");
    let heard = measure(&[(&host, conf_relay, 440.0), (&b, b_relay, 700.0)]);
    assert_each_hears_the_others(&["100", "101"], &heard);
    // A party's own REFER (its transfer key) inside the conference: refused.
    let mut b_dialog = b_dialog;
    let cseq = b
        .sip
        .send_in_dialog(&mut b_dialog, "REFER", "Refer-To: <sip:103@127.0.0.1>\r\n");
    let resp = b
        .sip
        .await_final(&b_dialog.call_id, cseq, "REFER", WAIT)
        .expect("101's REFER answered");
    assert_eq!(status_of(resp.as_bytes()), Some(403), "{resp}");
    // 100 leaves its own conference: 101, alone, is hung up.
    let cseq = host.sip.send_in_dialog(&mut conf, "BYE", "");
    host.sip
        .await_final(&conf.call_id, cseq, "BYE", WAIT)
        .expect("100's BYE answered");
    hung_up(
        &mut b,
        &daemon,
        &b_dialog.call_id,
        "the last party of the conference",
    );
    // 102 and 103 were never touched.
    assert_eq!(call_states(&daemon), vec!["answered"]);
}

/// A call the mixer cannot take (G.722 both ways, relayed untouched) stays as it is when its
/// phone makes a conference: only the G.711 call joins.
#[test]
fn a_call_that_is_not_g711_stays_out_of_the_conference() {
    let daemon = Daemon::start_with(DaemonConfig::loopback());
    let mut host = Phone::new(&daemon, "100");
    let mut b = Phone::new(&daemon, "101");
    let mut c = Phone::new(&daemon, "102");
    let g722 = |p: &Phone| outpost_tests::sdp_body(p.rtp.local_addr().expect("local"), &[9]);
    let inv = host.sip.invite("101", &g722(&host));
    let sdp = g722(&b);
    let (_, _b_dialog, _) = b.answer(&daemon, &sdp);
    let to_b = host.sip.await_answer(&inv, WAIT).expect("101 answers");
    let inv = host.sip.invite("102", &host.sdp());
    let sdp = c.sdp();
    let _ = c.answer(&daemon, &sdp);
    let to_c = host.sip.await_answer(&inv, WAIT).expect("102 answers");
    let (_conf, _) = host.call(&daemon, "*3");
    hung_up(&mut host, &daemon, &to_c.call_id, "its G.711 call joined");
    let to_b_id = to_b.call_id.clone();
    let bye = host.sip.recv_matching(Duration::from_millis(500), |m| {
        request_method(m) == Some("BYE") && header_value(m, "Call-ID").as_deref() == Some(&to_b_id)
    });
    assert!(bye.is_none(), "the G.722 call was hung up: {bye:?}");
    let mut states = call_states(&daemon);
    states.sort();
    assert_eq!(
        states,
        vec![
            "answered",
            "in conference (2 parties)",
            "in conference (2 parties)"
        ],
        "{:?}",
        daemon.calls()
    );
}
