//! Media anchoring in the B2BUA: SDP rewritten towards the relay on both legs, relay
//! commands in step with the signalling, transcoding chosen when the legs share no codec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use pbx_core::endpoint::{Event, MediaSettings};
use pbx_core::media::sdp::Sdp;
use pbx_core::media::session::{Codec, MediaCommand, MediaEvent};
use pbx_core::sip::Method;
use support::*;

const A_ADDR: &str = "192.168.1.10:5060";
const B_ADDR: &str = "192.168.1.20:5060";
const RELAY_IP: &str = "10.0.0.1";

fn sim() -> Sim {
    let mut cfg = config();
    cfg.media = Some(MediaSettings {
        addrs: vec![RELAY_IP.parse().unwrap()],
        port_first: 30000,
        port_last: 30007,
    });
    Sim::with_config(cfg)
}

fn phones(sim: &mut Sim) -> (Phone, Phone) {
    let mut a = Phone::new("100", A_ADDR);
    let mut b = Phone::new("200", B_ADDR);
    register(sim, &mut a, 600);
    register(sim, &mut b, 600);
    sim.events.clear();
    (a, b)
}

fn media_commands(sim: &mut Sim) -> Vec<MediaCommand> {
    let out = sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Media(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    sim.events.retain(|e| !matches!(e, Event::Media(_)));
    out
}

fn rtp_of(body: &[u8]) -> std::net::SocketAddr {
    Sdp::parse(body)
        .expect("valid SDP")
        .remote_rtp()
        .expect("audio")
}

const PCMA_ONLY: &str = "v=0\r\no=b 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\na=sendrecv\r\n";

#[test]
fn both_legs_see_the_relay_and_the_relay_learns_both_phones() {
    let mut sim = sim();
    let (mut a, b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    let _ = sim.responses(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    let to_b = rtp_of(&inv.body);
    assert_eq!(to_b.ip().to_string(), RELAY_IP, "B is offered the relay");
    let sdp_b = String::from_utf8(inv.body.clone()).unwrap();
    assert!(
        sdp_b.contains("m=audio") && sdp_b.contains(" RTP/AVP 0 8"),
        "PCMA (8) added so the relay can transcode: {sdp_b}"
    );
    assert!(
        media_commands(&mut sim).is_empty(),
        "nothing to relay before an answer"
    );

    sim.send(
        b.addr,
        &response(
            &inv,
            200,
            Some("bt"),
            &[format!("Contact: {}", b.contact())],
            SDP_ANSWER,
        ),
    );
    let ok = sim.responses(a.addr);
    let ok = ok.iter().find(|r| r.status == 200).expect("200 to A");
    let to_a = rtp_of(&ok.body);
    assert_eq!(
        to_a.ip().to_string(),
        RELAY_IP,
        "A is answered with the relay"
    );
    assert_ne!(to_a.port(), to_b.port(), "each leg has its own relay port");
    let cmds = media_commands(&mut sim);
    assert_eq!(cmds.len(), 1);
    let MediaCommand::Open { a: la, b: lb, .. } = &cmds[0] else {
        panic!("expected Open, got {cmds:?}");
    };
    assert_eq!(la.local_port, to_a.port());
    assert_eq!(lb.local_port, to_b.port());
    assert_eq!(la.remote, Some("192.168.1.10:4000".parse().unwrap()));
    assert_eq!(lb.remote, Some("192.168.1.20:5000".parse().unwrap()));
    assert_eq!((la.codec, lb.codec), (Codec::Pcmu, Codec::Pcmu));
    assert!(la.allowed_ips.contains(&"192.168.1.10".parse().unwrap()));
    let calls = sim.ep.calls();
    assert_eq!(calls[0].codecs, Some((Codec::Pcmu, Codec::Pcmu)));

    // Hang up: the relay is told to close, and the ports go back to the pool.
    let _ = leg;
    let session = calls[0].media_session.unwrap();
    sim.ep
        .handle_media_event(sim.now, MediaEvent::Timeout { session });
    sim.pump();
    let byes_b = sim.requests(b.addr);
    assert!(
        byes_b.iter().any(|r| r.method == Method::Bye),
        "media timeout hangs up B"
    );
    let byes_a = sim.requests(a.addr);
    assert!(byes_a.iter().any(|r| r.method == Method::Bye), "and A");
    let cmds = media_commands(&mut sim);
    assert!(cmds.iter().any(|c| matches!(c, MediaCommand::Close { .. })));
    let cdr = sim.cdrs().pop().unwrap();
    assert_eq!(cdr.disposition, pbx_core::cdr::Disposition::MediaTimeout);
}

#[test]
fn legs_without_a_common_codec_are_transcoded() {
    let mut sim = sim();
    let (mut a, b) = phones(&mut sim);
    let _leg = invite(&mut sim, &mut a, "200", SDP_OFFER); // PCMU only
    let _ = sim.responses(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(
        b.addr,
        &response(
            &inv,
            200,
            Some("bt"),
            &[format!("Contact: {}", b.contact())],
            PCMA_ONLY,
        ),
    );
    let ok = sim.responses(a.addr);
    let ok = ok.iter().find(|r| r.status == 200).unwrap();
    let body = String::from_utf8(ok.body.clone()).unwrap();
    assert!(
        body.contains("m=audio") && !body.contains(" 8\r\n"),
        "A gets its own PCMU: {body}"
    );
    let cmds = media_commands(&mut sim);
    let MediaCommand::Open { a: la, b: lb, .. } = &cmds[0] else {
        panic!("{cmds:?}");
    };
    assert_eq!((la.codec, lb.codec), (Codec::Pcmu, Codec::Pcma));
    assert_eq!((la.pt, lb.pt), (0, 8));
}

#[test]
fn ports_run_out_and_come_back() {
    // 30000..=30007 holds four pairs: two calls.
    let mut sim = sim();
    let (mut a, b) = phones(&mut sim);
    let mut first = Vec::new();
    for _ in 0..2 {
        first.push(invite(&mut sim, &mut a, "200", SDP_OFFER));
        let _ = sim.requests(b.addr);
        let _ = sim.responses(a.addr);
    }
    let _third = invite(&mut sim, &mut a, "200", SDP_OFFER);
    let st = sim.statuses(a.addr);
    assert!(st.contains(&503), "no ports left: {st:?}");
    assert_eq!(sim.ep.calls().len(), 2);
}

const SDP_HOLD: &str = "v=0\r\no=a 1 2 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n";
const SDP_RESUME: &str = "v=0\r\no=a 1 3 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";
const SDP_HELD_ANSWER: &str = "v=0\r\no=b 1 2 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=recvonly\r\n";

#[test]
fn the_held_party_hears_music_until_the_call_is_resumed() {
    let mut sim = sim();
    let (mut a, mut b) = phones(&mut sim);
    let leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    let _ = sim.responses(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(
        b.addr,
        &response(
            &inv,
            200,
            Some("bt"),
            &[format!("Contact: {}", b.contact())],
            SDP_ANSWER,
        ),
    );
    let ok = sim
        .responses(a.addr)
        .into_iter()
        .find(|r| r.status == 200)
        .unwrap();
    let _ = sim.requests(b.addr); // ACK
    media_commands(&mut sim);
    let contact = match ok.headers.contact.first() {
        Some(pbx_core::sip::Contact::Addr(na)) => na.uri.to_string(),
        other => panic!("{other:?}"),
    };
    let to = ok.headers.to.to_string();
    let in_a = |a: &mut Phone, method: &str, cseq: u32, body: &str| {
        in_dialog(
            method,
            &contact,
            &a.via(),
            &leg.from,
            &to,
            &leg.call_id,
            cseq,
            body,
        )
    };
    let ack = in_a(&mut a, "ACK", 2, "");
    sim.send(a.addr, &ack);

    // A holds: B's phone gets the re-INVITE and answers recvonly; B hears music.
    let hold = in_a(&mut a, "INVITE", 3, SDP_HOLD);
    sim.send(a.addr, &hold);
    let re = sim.requests(b.addr).remove(0);
    assert!(String::from_utf8_lossy(&re.body).contains("a=sendonly"));
    sim.send(
        b.addr,
        &response(&re, 200, Some("bt"), &[], SDP_HELD_ANSWER),
    );
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter().any(|c| matches!(c, MediaCommand::Play { leg: pbx_core::media::session::Leg::B, clips, repeat: true, .. } if clips == &vec!["moh".to_string()])),
        "music to B: {cmds:?}"
    );
    let _ = sim.responses(a.addr);
    let ack = in_a(&mut a, "ACK", 3, "");
    sim.send(a.addr, &ack);
    let _ = sim.requests(b.addr);

    // A resumes: the music stops.
    let resume = in_a(&mut a, "INVITE", 4, SDP_RESUME);
    sim.send(a.addr, &resume);
    let re = sim.requests(b.addr).remove(0);
    sim.send(b.addr, &response(&re, 200, Some("bt"), &[], SDP_ANSWER));
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            MediaCommand::StopPlay {
                leg: pbx_core::media::session::Leg::B,
                ..
            }
        )),
        "music stops: {cmds:?}"
    );
    assert!(!cmds.iter().any(|c| matches!(c, MediaCommand::Play { .. })));
    let _ = &mut b;
}

fn vm_sim() -> Sim {
    let mut cfg = config();
    cfg.media = Some(MediaSettings {
        addrs: vec![RELAY_IP.parse().unwrap()],
        port_first: 30000,
        port_last: 30007,
    });
    cfg.voicemail = Some(pbx_core::endpoint::VoicemailSettings {
        dir: "/data/voicemail".into(),
        max_ms: 60_000,
        access_number: "*97".into(),
    });
    Sim::with_config(cfg)
}

#[test]
fn an_unanswered_call_leaves_a_message_and_the_mailbox_lights_up() {
    use pbx_core::media::session::Leg;
    let mut sim = vm_sim();
    let (mut a, mut b) = phones(&mut sim);

    // B subscribes to its message summary (RFC 3842).
    let via = b.via();
    let from = format!("<{}>;tag=mwi1", b.aor());
    let to = format!("<{}>", b.aor());
    let (aor, contact) = (b.aor(), b.contact());
    let sub = |cseq: u32, extra: Vec<String>, via: &str| {
        let mut h = vec![
            "Event: message-summary".to_string(),
            "Expires: 3600".to_string(),
            format!("Contact: {contact}"),
        ];
        h.extend(extra);
        request("SUBSCRIBE", &aor, via, &from, &to, "mwi-call", cseq, &h, "")
    };
    sim.send(b.addr, &sub(1, vec![], &via));
    let ch = sim.responses(b.addr).remove(0);
    assert_eq!(ch.status, 407);
    let auth = format!(
        "Proxy-Authorization: {}",
        b.authorize(&ch, "SUBSCRIBE", &b.aor(), "MD5")
    );
    let via = b.via();
    sim.send(b.addr, &sub(2, vec![auth], &via));
    let got = sim.take(b.addr);
    assert!(
        got.iter()
            .any(|m| matches!(m, pbx_core::sip::Message::Response(r) if r.status == 200)),
        "{got:?}"
    );
    let notify: Vec<pbx_core::sip::Request> = got
        .into_iter()
        .filter_map(|m| match m {
            pbx_core::sip::Message::Request(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(notify.len(), 1);
    assert_eq!(notify[0].method, Method::Notify);
    let body = String::from_utf8_lossy(&notify[0].body).to_string();
    assert!(body.contains("Messages-Waiting: no"), "{body}");
    sim.send(b.addr, &response(&notify[0], 200, None, &[], ""));

    // A calls B; nobody answers; the ring timeout sends A to voicemail.
    let _leg = invite(&mut sim, &mut a, "200", SDP_OFFER);
    let _ = sim.responses(a.addr);
    let inv = sim.requests(b.addr).remove(0);
    sim.send(b.addr, &response(&inv, 180, Some("bt"), &[], ""));
    let _ = sim.responses(a.addr);
    media_commands(&mut sim);
    sim.advance(RING_MS + 10);
    let ok = sim
        .responses(a.addr)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("voicemail answers A");
    assert_eq!(rtp_of(&ok.body).ip().to_string(), RELAY_IP);
    let cancel = sim.requests(b.addr);
    assert!(
        cancel.iter().any(|r| r.method == Method::Cancel),
        "B stops ringing"
    );
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, MediaCommand::Open { b, .. } if b.is_absent())),
        "{cmds:?}"
    );
    let session = cmds
        .iter()
        .find_map(|c| match c {
            MediaCommand::Play {
                session,
                leg: Leg::A,
                clips,
                ..
            } if clips.contains(&"please-leave-message".to_string()) => Some(*session),
            _ => None,
        })
        .expect("greeting played");

    // Greeting done → recording; # ends it; goodbye; the PBX hangs up.
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session,
            leg: Leg::A,
        },
    );
    sim.pump();
    let cmds = media_commands(&mut sim);
    let path = cmds
        .iter()
        .find_map(|c| match c {
            MediaCommand::Record {
                path, leg: Leg::A, ..
            } => Some(path.clone()),
            _ => None,
        })
        .expect("recording starts after the greeting");
    assert!(path.starts_with("/data/voicemail/200"), "{path:?}");
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::Dtmf {
            session,
            leg: Leg::A,
            digit: '#',
            duration_ms: 100,
        },
    );
    sim.pump();
    let cmds = media_commands(&mut sim);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, MediaCommand::StopRecord { .. })));
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::RecordingDone {
            session,
            leg: Leg::A,
            path: path.clone(),
            duration_ms: 4200,
        },
    );
    sim.pump();
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::VoicemailStored { mailbox, caller, duration_ms: 4200, .. } if mailbox == "200" && caller == "100"
    )));
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session,
            leg: Leg::A,
        },
    );
    sim.pump();
    let bye = sim.requests(a.addr);
    assert!(
        bye.iter().any(|r| r.method == Method::Bye),
        "PBX hangs up after goodbye"
    );
    let cdr = sim.cdrs().pop().unwrap();
    assert_eq!(cdr.disposition, pbx_core::cdr::Disposition::Voicemail);

    // The index reports one new message: B's phone is told.
    sim.ep.set_mailbox(
        sim.now,
        "200",
        vec![pbx_core::endpoint::MailboxMessage {
            id: 1,
            path: path.clone(),
            new: true,
        }],
    );
    sim.pump();
    let notify = sim.requests(b.addr);
    let n = notify
        .iter()
        .find(|r| r.method == Method::Notify)
        .expect("NOTIFY");
    let body = String::from_utf8_lossy(&n.body).to_string();
    assert!(
        body.contains("Messages-Waiting: yes") && body.contains("Voice-Message: 1/0"),
        "{body}"
    );
    assert_eq!(n.headers.call_id, "mwi-call");
    let _ = &mut b;
}

#[test]
fn the_mailbox_owner_hears_messages_after_the_pin_and_deletes_one() {
    use pbx_core::endpoint::{pin_hash, MailboxMessage};
    use pbx_core::media::session::Leg;
    let mut sim = vm_sim();
    let (_a, mut b) = phones(&mut sim);
    sim.ep.set_pin("200", Some(pin_hash("200", "4711")));
    let msgs = vec![
        MailboxMessage {
            id: 7,
            path: "/data/voicemail/200/m7.wav".into(),
            new: true,
        },
        MailboxMessage {
            id: 8,
            path: "/data/voicemail/200/m8.wav".into(),
            new: false,
        },
    ];
    sim.ep.set_mailbox(sim.now, "200", msgs);
    let _leg = invite(&mut sim, &mut b, "*97", SDP_OFFER);
    let ok = sim
        .responses(b.addr)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("answered");
    assert_eq!(rtp_of(&ok.body).ip().to_string(), RELAY_IP);
    let plays = |sim: &mut Sim| -> Vec<Vec<String>> {
        media_commands(sim)
            .into_iter()
            .filter_map(|c| match c {
                MediaCommand::Play {
                    clips, leg: Leg::A, ..
                } => Some(clips),
                _ => None,
            })
            .collect()
    };
    let first = plays(&mut sim);
    assert_eq!(first, vec![vec!["enter-pin".to_string()]]);
    let session = sim.ep.calls()[0].media_session.unwrap();
    let dtmf = |sim: &mut Sim, d: char| {
        sim.ep.handle_media_event(
            sim.now,
            MediaEvent::Dtmf {
                session,
                leg: Leg::A,
                digit: d,
                duration_ms: 80,
            },
        );
        sim.pump();
    };
    // A wrong PIN is refused.
    for d in ['1', '2', '#'] {
        dtmf(&mut sim, d);
    }
    assert_eq!(
        plays(&mut sim),
        vec![vec!["invalid".to_string(), "enter-pin".to_string()]]
    );
    for d in ['4', '7', '1', '1', '#'] {
        dtmf(&mut sim, d);
    }
    let p = plays(&mut sim);
    assert_eq!(
        p[0],
        [
            "you-have",
            "1",
            "message",
            "/data/voicemail/200/m7.wav",
            "next-message-menu"
        ]
        .map(String::from)
        .to_vec()
    );
    // 7 deletes the new message and plays the saved one.
    dtmf(&mut sim, '7');
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::VoicemailDeleted { id: 7 })));
    let p = plays(&mut sim);
    assert_eq!(p[0][0], "deleted");
    assert_eq!(p[0][1], "/data/voicemail/200/m8.wav");
    // # keeps it (heard) and ends: goodbye, then the PBX hangs up.
    dtmf(&mut sim, '#');
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::VoicemailHeard { id: 8 })));
    assert_eq!(plays(&mut sim), vec![vec!["goodbye".to_string()]]);
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session,
            leg: Leg::A,
        },
    );
    sim.pump();
    assert!(sim.requests(b.addr).iter().any(|r| r.method == Method::Bye));
}

fn ivr_sim() -> Sim {
    let mut cfg = config();
    cfg.media = Some(MediaSettings {
        addrs: vec![RELAY_IP.parse().unwrap()],
        port_first: 30000,
        port_last: 30007,
    });
    cfg.ivr = vec![pbx_core::endpoint::IvrMenu {
        number: "500".into(),
        greeting: "main-menu".into(),
        options: [('1', "200".to_string())].into_iter().collect(),
        timeout_ms: 5_000,
        retries: 1,
    }];
    Sim::with_config(cfg)
}

#[test]
fn the_auto_attendant_sends_digit_one_to_the_extension_and_bridges_the_call() {
    use pbx_core::media::session::Leg;
    let mut sim = ivr_sim();
    let (mut a, b) = phones(&mut sim);
    let _leg = invite(&mut sim, &mut a, "500", SDP_OFFER);
    let ok = sim
        .responses(a.addr)
        .into_iter()
        .find(|r| r.status == 200)
        .expect("menu answers");
    let relay_a = rtp_of(&ok.body);
    let cmds = media_commands(&mut sim);
    assert!(cmds.iter().any(
        |c| matches!(c, MediaCommand::Play { clips, .. } if clips == &vec!["main-menu".to_string()])
    ));
    let session = sim.ep.calls()[0].media_session.unwrap();
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session,
            leg: Leg::A,
        },
    );
    sim.pump();
    // An invalid digit replays the menu.
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::Dtmf {
            session,
            leg: Leg::A,
            digit: '9',
            duration_ms: 80,
        },
    );
    sim.pump();
    let cmds = media_commands(&mut sim);
    assert!(cmds
        .iter()
        .any(|c| matches!(c, MediaCommand::Play { clips, .. } if clips[0] == "invalid")));
    // 1 → extension 200 rings, with an offer on leg B's relay port.
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::Dtmf {
            session,
            leg: Leg::A,
            digit: '1',
            duration_ms: 80,
        },
    );
    sim.pump();
    let inv = sim.requests(b.addr);
    assert_eq!(inv.len(), 1, "{inv:?}");
    let inv = inv[0].clone();
    assert_eq!(inv.method, Method::Invite);
    let relay_b = rtp_of(&inv.body);
    assert_eq!(relay_b.ip().to_string(), RELAY_IP);
    assert_ne!(relay_b.port(), relay_a.port());
    sim.send(b.addr, &response(&inv, 180, Some("bt"), &[], ""));
    assert!(
        sim.responses(a.addr).is_empty(),
        "A is already answered: no 180"
    );
    sim.send(
        b.addr,
        &response(
            &inv,
            200,
            Some("bt"),
            &[format!("Contact: {}", b.contact())],
            SDP_ANSWER,
        ),
    );
    let ack = sim.requests(b.addr);
    assert!(ack.iter().any(|r| r.method == Method::Ack));
    assert!(sim.responses(a.addr).is_empty(), "no second 200 to A");
    let cmds = media_commands(&mut sim);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, MediaCommand::StopPlay { leg: Leg::A, .. })),
        "{cmds:?}"
    );
    let bridged = cmds.iter().any(|c| {
        matches!(c, MediaCommand::Update { a, b, .. }
        if !b.is_absent() && a.local_port == relay_a.port() && b.local_port == relay_b.port())
    });
    assert!(bridged, "relay bridges both legs: {cmds:?}");
    let calls = sim.ep.calls();
    assert_eq!(calls[0].callee, "200");
}

#[test]
fn the_auto_attendant_hangs_up_when_nobody_chooses() {
    use pbx_core::media::session::Leg;
    let mut sim = ivr_sim();
    let (mut a, _b) = phones(&mut sim);
    let _leg = invite(&mut sim, &mut a, "500", SDP_OFFER);
    let _ = sim.responses(a.addr);
    let session = sim.ep.calls()[0].media_session.unwrap();
    for _ in 0..2 {
        sim.ep.handle_media_event(
            sim.now,
            MediaEvent::PlayDone {
                session,
                leg: Leg::A,
            },
        );
        sim.pump();
        sim.advance(5_100);
    }
    let cmds = media_commands(&mut sim);
    assert!(cmds.iter().any(|c| matches!(c, MediaCommand::Play { clips, .. } if clips == &vec!["goodbye".to_string()])), "{cmds:?}");
    sim.ep.handle_media_event(
        sim.now,
        MediaEvent::PlayDone {
            session,
            leg: Leg::A,
        },
    );
    sim.pump();
    assert!(sim.requests(a.addr).iter().any(|r| r.method == Method::Bye));
}
