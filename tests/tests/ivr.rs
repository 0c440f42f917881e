//! The auto attendant and the voicemail access number end to end: raw-UDP phones 100 and
//! 200 talk to outpostd, which answers number 500 with a menu (`[[ivr]]`) and `*97` with
//! the caller's mailbox. Digits are RFC 4733 telephone-events; the prompts are the real
//! spoken ones, generated once per test process by `scripts/make-prompts`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    body_of, eventually, generated_prompts, header_value, json_str, parse_rtp, recv_datagrams,
    request_method, rtp_packet, rtp_pair, sdp_audio, sdp_body, status_of, uri_in, Daemon,
    DaemonConfig, Dialog, RtpView, SdpAudio, SipPhone,
};

const PHONE_A: (&str, &str) = ("100", "ivr-caller-secret-100");
const PHONE_B: (&str, &str) = ("200", "ivr-callee-secret-200");
/// The auto attendant's number.
const MENU: &str = "500";
/// The voicemail access number (the daemon's default).
const ACCESS: &str = "*97";
/// Upper bound of every SIP and RTP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// A played sequence has ended when no packet came for this long.
const PROMPT_GAP: Duration = Duration::from_millis(400);
/// Upper bound of one played sequence (the longest here is about 9 s of audio).
const PROMPT_LIMIT: Duration = Duration::from_secs(15);
/// How long a socket listens before concluding that nothing more comes.
const QUIET: Duration = Duration::from_millis(300);
/// One RTP frame of G.711: 20 ms, 160 samples.
const FRAME: Duration = Duration::from_millis(20);
const FRAME_BYTES: usize = 160;
/// µ-law silence, the padding of a prompt's last frame.
const ULAW_SILENCE: u8 = 0xff;
const PCMU: u8 = 0;
const TELEPHONE_EVENT: u8 = 101;

// ---------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------

/// The spoken prompts, generated once per test process (see the harness).
fn prompts_dir() -> &'static Path {
    generated_prompts(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// The µ-law samples of a generated prompt.
fn prompt(name: &str) -> Vec<u8> {
    let path = prompts_dir().join(format!("{name}.ul"));
    let audio =
        std::fs::read(&path).unwrap_or_else(|e| panic!("prompt {} missing: {e}", path.display()));
    assert!(
        audio.len() > 2 * FRAME_BYTES,
        "prompt {} is too short",
        path.display()
    );
    audio
}

/// What the relay sends for one playlist: the clips back to back, the last frame padded
/// with silence.
fn played(names: &[&str]) -> Vec<u8> {
    let mut audio: Vec<u8> = names.iter().flat_map(|n| prompt(n)).collect();
    let frames = audio.len().div_ceil(FRAME_BYTES);
    audio.resize(frames * FRAME_BYTES, ULAW_SILENCE);
    audio
}

/// A loopback daemon with the generated prompts and menu 500: digit 1 reaches 200.
fn menu_config(timeout_secs: u32, retries: u32) -> DaemonConfig {
    let mut config = DaemonConfig::loopback();
    config.prompts_dir = Some(prompts_dir().to_path_buf());
    config.with_toml(&format!(
        "[[ivr]]\nnumber = \"{MENU}\"\ngreeting = \"main-menu\"\noptions = {{ \"1\" = \"{}\" }}\ntimeout_secs = {timeout_secs}\nretries = {retries}\n",
        PHONE_B.0
    ))
}

/// A daemon with extensions 100 and 200 and a phone for each (neither registered yet).
fn start(config: DaemonConfig) -> (Daemon, SipPhone, SipPhone) {
    let daemon = Daemon::start_with(config);
    daemon.add_extension(PHONE_A.0, PHONE_A.1);
    daemon.add_extension(PHONE_B.0, PHONE_B.1);
    let a = SipPhone::new(&daemon, PHONE_A.0, PHONE_A.1);
    let b = SipPhone::new(&daemon, PHONE_B.0, PHONE_B.1);
    (daemon, a, b)
}

fn local(sock: &UdpSocket) -> SocketAddr {
    sock.local_addr().expect("socket has a local address")
}

// ---------------------------------------------------------------------------------------
// A phone's media: RTP out (speech and digits), prompts in
// ---------------------------------------------------------------------------------------

/// One phone's RTP stream towards the relay.
struct Media {
    sock: UdpSocket,
    _rtcp: UdpSocket,
    /// Where the phone sends RTP (the relay port its SDP peer named).
    relay: SocketAddr,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Media {
    /// Fresh RTP/RTCP sockets; `relay` is filled in once the peer's SDP is known.
    fn new(ssrc: u32) -> Self {
        let (sock, rtcp) = rtp_pair();
        Media {
            sock,
            _rtcp: rtcp,
            relay: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            ssrc,
            seq: 0,
            ts: 0,
        }
    }

    /// Our SDP: PCMU and telephone-event 101.
    fn sdp(&self) -> String {
        sdp_body(local(&self.sock), &[PCMU, TELEPHONE_EVENT])
    }

    fn send(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) {
        self.seq = self.seq.wrapping_add(1);
        let mut packet = rtp_packet(pt, self.seq, ts, self.ssrc, payload);
        if marker {
            packet[1] |= 0x80;
        }
        self.sock
            .send_to(&packet, self.relay)
            .expect("send RTP to the relay");
    }

    /// Sends `frames` PCMU packets of [`voice`], `pacing` apart; returns their payloads.
    fn talk(&mut self, frames: u16, pacing: Duration) -> Vec<Vec<u8>> {
        let start = Instant::now();
        (0..frames)
            .map(|i| {
                let body = voice(self.ssrc, i);
                let ts = self.ts;
                self.send(PCMU, false, ts, &body);
                self.ts = self.ts.wrapping_add(160);
                let next = start + pacing * (u32::from(i) + 1);
                thread::sleep(next.saturating_duration_since(Instant::now()));
                body
            })
            .collect()
    }

    /// Presses each key of `keys` (RFC 4733): two packets while the key is down (marker on
    /// the first), then the end packet three times, all with the event's timestamp.
    fn press(&mut self, keys: &str) {
        for key in keys.chars() {
            let event = match key {
                '0'..='9' => u8::try_from(key as u32 - '0' as u32).expect("a digit"),
                '*' => 10,
                '#' => 11,
                other => panic!("no DTMF event for {other:?}"),
            };
            let ts = self.ts;
            let steps: [(bool, u16); 5] = [
                (false, 160),
                (false, 320),
                (true, 480),
                (true, 480),
                (true, 480),
            ];
            for (i, (end, duration)) in steps.into_iter().enumerate() {
                let mut payload = [event, 10, 0, 0];
                if end {
                    payload[1] |= 0x80;
                }
                payload[2..].copy_from_slice(&duration.to_be_bytes());
                self.send(TELEPHONE_EVENT, i == 0, ts, &payload);
                thread::sleep(FRAME);
            }
            // The next event starts later, as after 60 ms of silence.
            self.ts = self.ts.wrapping_add(480 + 480);
            thread::sleep(3 * FRAME);
        }
    }
}

/// 160 bytes of "speech" that differ for every frame and every phone, and never look like
/// a prompt (no µ-law silence, all byte values spread over the frame).
fn voice(ssrc: u32, i: u16) -> Vec<u8> {
    let salt = ssrc.to_le_bytes()[0];
    (0..160u16)
        .map(|k| {
            let v = k
                .wrapping_mul(73)
                .wrapping_add(i.wrapping_mul(29))
                .wrapping_add(u16::from(salt));
            // Avoid 0xff and 0x7f (µ-law silence).
            (v.to_le_bytes()[0] % 0x7e).wrapping_add(1)
        })
        .collect()
}

/// One packet the relay sent, with its source.
struct Heard {
    src: SocketAddr,
    packet: RtpView,
}

/// The packets of one played sequence: from the first (within `first`) until none came
/// for [`PROMPT_GAP`], [`PROMPT_LIMIT`] at most.
fn receive_prompt(sock: &UdpSocket, first: Duration) -> Vec<Heard> {
    let deadline = Instant::now() + PROMPT_LIMIT;
    let mut heard: Vec<Heard> = Vec::new();
    loop {
        let wait = if heard.is_empty() { first } else { PROMPT_GAP };
        let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        let Some((src, bytes)) = recv_datagrams(sock, 1, wait).pop() else {
            return heard;
        };
        heard.push(Heard {
            src,
            packet: parse_rtp(&bytes)
                .unwrap_or_else(|| panic!("non-RTP datagram from {src}: {bytes:02x?}")),
        });
    }
}

/// Exactly `n` packets within `wait` (fewer if they do not come).
fn receive_n(sock: &UdpSocket, n: usize, wait: Duration) -> Vec<Heard> {
    recv_datagrams(sock, n, wait)
        .into_iter()
        .map(|(src, bytes)| Heard {
            src,
            packet: parse_rtp(&bytes)
                .unwrap_or_else(|| panic!("non-RTP datagram from {src}: {bytes:02x?}")),
        })
        .collect()
}

/// The audio of played packets, checked to be PCMU 20 ms frames from `relay`.
fn audio_of(what: &str, heard: &[Heard], relay: SocketAddr) -> Vec<u8> {
    let mut audio = Vec::with_capacity(heard.len() * FRAME_BYTES);
    for (i, h) in heard.iter().enumerate() {
        assert_eq!(h.src, relay, "{what}: packet {i} must come from the relay");
        assert_eq!(h.packet.pt, PCMU, "{what}: payload type of packet {i}");
        assert_eq!(
            h.packet.payload.len(),
            FRAME_BYTES,
            "{what}: packet {i} holds 20 ms"
        );
        audio.extend_from_slice(&h.packet.payload);
    }
    audio
}

/// Asserts that `audio` is exactly `expected` (a playlist, see [`played`]).
fn assert_audio(what: &str, audio: &[u8], expected: &[u8], log: &str) {
    if audio == expected {
        return;
    }
    let first_diff = audio
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(audio.len().min(expected.len()));
    panic!(
        "{what}: heard {} bytes ({} frames), expected {} bytes ({} frames); first difference in frame {}\nlog:\n{log}",
        audio.len(),
        audio.len() / FRAME_BYTES,
        expected.len(),
        expected.len() / FRAME_BYTES,
        first_diff / FRAME_BYTES
    );
}

/// The offset of the frame-aligned start of `clip` within `audio`.
fn clip_start(audio: &[u8], clip: &[u8]) -> Option<usize> {
    let head = &clip[..FRAME_BYTES];
    (0..audio.len() / FRAME_BYTES)
        .map(|i| i * FRAME_BYTES)
        .find(|&at| audio.get(at..at + FRAME_BYTES) == Some(head))
}

/// How many of `frames` occur in `audio` (at any offset: a played file need not start on
/// a frame boundary of the playlist).
fn frames_found(audio: &[u8], frames: &[Vec<u8>]) -> usize {
    frames
        .iter()
        .filter(|f| audio.windows(f.len()).any(|w| w == f.as_slice()))
        .count()
}

// ---------------------------------------------------------------------------------------
// Signalling
// ---------------------------------------------------------------------------------------

/// `phone` calls `number` and Outpost answers itself: a 200 OK whose SDP points at the
/// relay (127.0.0.1, a port of the relay's block) with PCMU and telephone-event.
fn call_answered_by_outpost(
    daemon: &Daemon,
    phone: &mut SipPhone,
    number: &str,
    ssrc: u32,
) -> (Dialog, Media) {
    let mut media = Media::new(ssrc);
    let invite = phone.invite(number, &media.sdp());
    let dialog = phone.await_answer(&invite, WAIT).unwrap_or_else(|resp| {
        panic!(
            "the call to {number} was not answered: {resp:?}\nthe phone received:\n{}\nlog:\n{}",
            phone.transcript(),
            daemon.log_text()
        )
    });
    let sdp: SdpAudio = sdp_audio(&dialog.remote_sdp)
        .unwrap_or_else(|| panic!("Outpost's 200 OK has no audio SDP:\n{}", dialog.remote_sdp));
    let (first, last) = daemon.media_ports();
    assert_eq!(
        sdp.addr,
        Ipv4Addr::LOCALHOST,
        "the 200 OK must point at the relay:\n{}",
        dialog.remote_sdp
    );
    assert!(
        (first..=last).contains(&sdp.port),
        "the 200 OK names port {}, outside the relay block {first}-{last}:\n{}",
        sdp.port,
        dialog.remote_sdp
    );
    assert_eq!(sdp.formats.first(), Some(&PCMU), "{}", dialog.remote_sdp);
    assert!(
        sdp.formats.contains(&TELEPHONE_EVENT),
        "the phone offered telephone-event, so digits must be negotiated:\n{}",
        dialog.remote_sdp
    );
    media.relay = sdp.rtp_addr();
    (dialog, media)
}

/// Waits for Outpost's BYE in `dialog` and answers it 200.
fn await_bye_from_outpost(daemon: &Daemon, phone: &mut SipPhone, dialog: &Dialog, what: &str) {
    let call_id = dialog.call_id.clone();
    let bye = phone
        .recv_matching(WAIT, |m| {
            request_method(m) == Some("BYE")
                && header_value(m, "Call-ID").as_deref() == Some(call_id.as_str())
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: Outpost sent no BYE; the phone received:\n{}\nlog:\n{}",
                phone.transcript(),
                daemon.log_text()
            )
        });
    phone.reply(&bye, 200, None, "");
}

/// Waits until no call is in progress.
fn assert_no_calls(daemon: &Daemon) {
    eventually(WAIT, || daemon.calls().is_empty().then_some(())).unwrap_or_else(|| {
        panic!(
            "calls still in progress: {:?}\nlog:\n{}",
            daemon.calls(),
            daemon.log_text()
        )
    });
}

/// `vm list --json` as an array.
fn vm_list(daemon: &Daemon) -> Vec<Value> {
    match daemon.ctl_json(&["vm", "list"]) {
        Value::Array(items) => items,
        other => panic!("vm list --json did not print an array: {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn a_menu_digit_transfers_the_caller_to_the_extension_with_ringback() {
    let greeting = prompt("main-menu");
    let transfer = played(&["transfer"]);
    let ringback = prompt("ringback");
    let (daemon, mut a, mut b) = start(menu_config(8, 2));
    b.register();
    a.register();

    // The menu answers and plays its greeting.
    let (mut a_dialog, mut a_media) = call_answered_by_outpost(&daemon, &mut a, MENU, 0xA1A1);
    let heard = receive_n(&a_media.sock, 20, WAIT);
    assert_eq!(
        heard.len(),
        20,
        "the greeting: {} packets within {WAIT:?}\nlog:\n{}",
        heard.len(),
        daemon.log_text()
    );
    let audio = audio_of("greeting", &heard, a_media.relay);
    assert_audio(
        "the first 400 ms of the greeting",
        &audio,
        &greeting[..audio.len()],
        &daemon.log_text(),
    );

    // 1 rings 200 with a new call whose SDP points at another relay port.
    a_media.press("1");
    let incoming = b.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "200 got no INVITE after digit 1; 200 received:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    assert_ne!(
        header_value(&incoming, "Call-ID").as_deref(),
        Some(a_dialog.call_id.as_str()),
        "the transfer is a new call:\n{incoming}"
    );
    let from = header_value(&incoming, "From").unwrap_or_default();
    assert!(
        uri_in(&from).starts_with(&format!("sip:{}@", PHONE_A.0)),
        "the transfer must come from {}:\n{incoming}",
        PHONE_A.0
    );
    let relay_b = sdp_audio(body_of(&incoming))
        .unwrap_or_else(|| panic!("200's INVITE has no audio SDP:\n{incoming}"));
    let (first, last) = daemon.media_ports();
    assert_eq!(
        relay_b.addr,
        Ipv4Addr::LOCALHOST,
        "200's INVITE must point at the relay:\n{incoming}"
    );
    assert!(
        (first..=last).contains(&relay_b.port),
        "200's INVITE names port {}, outside the relay block {first}-{last}:\n{incoming}",
        relay_b.port
    );
    assert_ne!(
        relay_b.port,
        a_media.relay.port(),
        "each leg has its own relay port:\n{incoming}"
    );
    let tag = "ivr-ring-200";
    b.reply(&incoming, 180, Some(tag), "");

    // Meanwhile the caller hears "transfer" (replacing the greeting), then ringback.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut heard = Vec::new();
    let mut ringback_at = None;
    while ringback_at.is_none() && Instant::now() < deadline {
        heard.extend(receive_n(&a_media.sock, 25, WAIT));
        let audio = audio_of("transfer and ringback", &heard, a_media.relay);
        ringback_at = clip_start(&audio, &transfer).and_then(|t| {
            let after = t + transfer.len();
            (audio.len() >= after + 10 * FRAME_BYTES).then_some((t, after))
        });
    }
    let audio = audio_of("transfer and ringback", &heard, a_media.relay);
    let (t, after) = ringback_at.unwrap_or_else(|| {
        panic!(
            "the caller did not hear the transfer prompt and ringback ({} frames heard)\nlog:\n{}",
            audio.len() / FRAME_BYTES,
            daemon.log_text()
        )
    });
    let before = 20 * FRAME_BYTES;
    assert_audio(
        "the greeting until the digit",
        &audio[..t],
        &greeting[before..before + t],
        &daemon.log_text(),
    );
    assert_audio(
        "the transfer announcement",
        &audio[t..after],
        &transfer,
        &daemon.log_text(),
    );
    assert_audio(
        "ringback after the announcement",
        &audio[after..after + 10 * FRAME_BYTES],
        &ringback[..10 * FRAME_BYTES],
        &daemon.log_text(),
    );

    // 200 answers: Outpost ACKs and bridges the two (no re-INVITE to the caller).
    let mut b_media = Media::new(0xB2B2);
    b_media.relay = relay_b.rtp_addr();
    let ok = b.reply(&incoming, 200, Some(tag), &b_media.sdp());
    let b_dialog = Dialog {
        call_id: header_value(&incoming, "Call-ID").unwrap_or_default(),
        local_party: header_value(&ok, "To").unwrap_or_default(),
        remote_party: from,
        remote_target: header_value(&incoming, "Contact")
            .map(|c| uri_in(&c))
            .unwrap_or_default(),
        cseq: 0,
        remote_sdp: body_of(&incoming).to_owned(),
        answer_sent: Some(ok),
    };
    b.await_ack(&b_dialog, WAIT).unwrap_or_else(|| {
        panic!(
            "200 got no ACK; 200 received:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    // Ringback stops.
    let deadline = Instant::now() + WAIT;
    while !recv_datagrams(&a_media.sock, 1, QUIET).is_empty() {
        assert!(
            Instant::now() < deadline,
            "ringback still playing {WAIT:?} after the answer\nlog:\n{}",
            daemon.log_text()
        );
    }

    // Audio both ways, byte for byte.
    let said = a_media.talk(20, Duration::from_millis(2));
    let got = receive_n(&b_media.sock, 20, WAIT);
    let payloads: Vec<Vec<u8>> = got.iter().map(|h| h.packet.payload.clone()).collect();
    assert_eq!(
        payloads.len(),
        20,
        "100's audio at 200\nlog:\n{}",
        daemon.log_text()
    );
    assert_eq!(payloads, said, "100's audio at 200, byte for byte");
    assert!(
        got.iter()
            .all(|h| h.src == relay_b.rtp_addr() && h.packet.pt == PCMU),
        "100's audio must reach 200 from 200's relay port as PCMU"
    );
    let said = b_media.talk(20, Duration::from_millis(2));
    let got = receive_n(&a_media.sock, 20, WAIT);
    let payloads: Vec<Vec<u8>> = got.iter().map(|h| h.packet.payload.clone()).collect();
    assert_eq!(
        payloads.len(),
        20,
        "200's audio at 100\nlog:\n{}",
        daemon.log_text()
    );
    assert_eq!(payloads, said, "200's audio at 100, byte for byte");
    assert!(
        got.iter()
            .all(|h| h.src == a_media.relay && h.packet.pt == PCMU),
        "200's audio must reach 100 from 100's relay port as PCMU"
    );
    assert!(
        a.recv_matching(QUIET, |m| request_method(m) == Some("INVITE"))
            .is_none(),
        "the caller must not be re-INVITEd:\n{}",
        a.transcript()
    );

    let calls = daemon.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(json_str(&calls[0], "caller"), Some(PHONE_A.0), "{calls:?}");
    assert_eq!(json_str(&calls[0], "callee"), Some(PHONE_B.0), "{calls:?}");
    assert_eq!(json_str(&calls[0], "state"), Some("answered"), "{calls:?}");

    // 100 hangs up: 200 gets the BYE.
    let cseq = a.send_bye(&mut a_dialog);
    let bye = b.answer_bye(WAIT).unwrap_or_else(|| {
        panic!(
            "200 got no BYE; 200 received:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    assert_eq!(
        header_value(&bye, "Call-ID").as_deref(),
        Some(b_dialog.call_id.as_str()),
        "{bye}"
    );
    let ok = a
        .await_final(&a_dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to 100's BYE:\n{}", a.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    // Two linked records: the caller with the menu (the digit that put it through), then
    // with 200, who answered.
    let cdrs = daemon.wait_cdrs(2, WAIT);
    assert_eq!(cdrs.len(), 2, "{cdrs:#?}");
    let (menu, talk) = (&cdrs[1], &cdrs[0]);
    assert_eq!(json_str(menu, "caller"), Some(PHONE_A.0), "{menu}");
    assert_eq!(json_str(menu, "callee"), Some(MENU), "{menu}");
    assert_eq!(json_str(menu, "disposition"), Some("transferred"), "{menu}");
    assert_eq!(json_str(talk, "caller"), Some(PHONE_A.0), "{talk}");
    assert_eq!(json_str(talk, "callee"), Some(PHONE_B.0), "{talk}");
    assert_eq!(json_str(talk, "disposition"), Some("answered"), "{talk}");
    for c in [menu, talk] {
        assert_eq!(json_str(c, "menu"), Some(MENU), "{c}");
        assert_eq!(json_str(c, "menu_digit"), Some("1"), "{c}");
        assert_eq!(json_str(c, "linked_id"), json_str(menu, "call_id"), "{c}");
    }
    let by = format!("menu:{MENU}");
    assert_eq!(
        json_str(talk, "transferred_by"),
        Some(by.as_str()),
        "{talk}"
    );
    assert_no_calls(&daemon);
}

#[test]
fn an_invalid_digit_replays_the_menu_and_silence_ends_the_call() {
    let greeting = prompt("main-menu");
    let (daemon, mut a, _b) = start(menu_config(1, 1));
    a.register();

    let (dialog, mut media) = call_answered_by_outpost(&daemon, &mut a, MENU, 0xA3A3);
    let heard = receive_n(&media.sock, 10, WAIT);
    assert_eq!(heard.len(), 10, "the greeting\nlog:\n{}", daemon.log_text());

    // 9 is no option: "invalid", then the greeting again, from the start.
    media.press("9");
    let rest = receive_prompt(&media.sock, WAIT);
    let audio = audio_of("invalid and greeting", &rest, media.relay);
    let expected = played(&["invalid", "main-menu"]);
    let t = clip_start(&audio, &expected).unwrap_or_else(|| {
        panic!(
            "no \"invalid\" prompt after digit 9 ({} frames heard)\nlog:\n{}",
            audio.len() / FRAME_BYTES,
            daemon.log_text()
        )
    });
    let before = 10 * FRAME_BYTES;
    assert_audio(
        "the greeting until the digit",
        &audio[..t],
        &greeting[before..before + t],
        &daemon.log_text(),
    );
    assert_audio(
        "invalid, then the greeting",
        &audio[t..],
        &expected,
        &daemon.log_text(),
    );

    // No digit within 1 s, and no retry left: goodbye, then Outpost hangs up.
    let quiet_since = Instant::now();
    let bye_prompt = receive_prompt(&media.sock, WAIT);
    let silence = quiet_since.elapsed();
    let audio = audio_of("goodbye", &bye_prompt, media.relay);
    assert_audio("goodbye", &audio, &played(&["goodbye"]), &daemon.log_text());
    assert!(
        silence >= Duration::from_millis(800),
        "goodbye came {silence:?} after the menu ended, before the 1 s timeout"
    );
    await_bye_from_outpost(&daemon, &mut a, &dialog, "after goodbye");
    assert_no_calls(&daemon);
}

#[test]
fn a_mailbox_owner_hears_a_message_after_the_pin_and_deletes_it() {
    let mut config = DaemonConfig::loopback();
    config.prompts_dir = Some(prompts_dir().to_path_buf());
    config.voicemail_max_secs = Some(30);
    let (daemon, mut a, mut b) = start(config);
    a.register();

    // 100 leaves 200 (not registered) a 2 s message, ended with #.
    let (a_dialog, mut a_media) = call_answered_by_outpost(&daemon, &mut a, PHONE_B.0, 0xA5A5);
    let greeting = receive_prompt(&a_media.sock, WAIT);
    assert!(
        greeting.len() >= 50,
        "the voicemail greeting: {} packets\nlog:\n{}",
        greeting.len(),
        daemon.log_text()
    );
    let said = a_media.talk(100, FRAME);
    a_media.press("#");
    let goodbye = receive_prompt(&a_media.sock, WAIT);
    assert_audio(
        "goodbye after the message",
        &audio_of("goodbye", &goodbye, a_media.relay),
        &played(&["goodbye"]),
        &daemon.log_text(),
    );
    await_bye_from_outpost(&daemon, &mut a, &a_dialog, "after the message");
    let list = eventually(WAIT, || {
        let list = vm_list(&daemon);
        (!list.is_empty()).then_some(list)
    })
    .unwrap_or_else(|| panic!("no voicemail message\nlog:\n{}", daemon.log_text()));
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(json_str(&list[0], "mailbox"), Some(PHONE_B.0), "{list:?}");
    let path = PathBuf::from(json_str(&list[0], "path").unwrap_or_default());
    assert!(
        path.is_file(),
        "{} does not exist: {list:?}",
        path.display()
    );

    daemon.ctl_ok(&["vm", "pin", PHONE_B.0, "4711"]);
    b.register();
    let (b_dialog, mut b_media) = call_answered_by_outpost(&daemon, &mut b, ACCESS, 0xB6B6);
    let mut before_pin = Vec::new();
    let ask = audio_of(
        "enter-pin",
        &receive_prompt(&b_media.sock, WAIT),
        b_media.relay,
    );
    assert_audio(
        "the PIN prompt",
        &ask,
        &played(&["enter-pin"]),
        &daemon.log_text(),
    );
    before_pin.extend_from_slice(&ask);

    // A wrong PIN: "invalid", asked again, no message played.
    b_media.press("12#");
    let again = audio_of(
        "after a wrong PIN",
        &receive_prompt(&b_media.sock, WAIT),
        b_media.relay,
    );
    assert_audio(
        "after a wrong PIN",
        &again,
        &played(&["invalid", "enter-pin"]),
        &daemon.log_text(),
    );
    before_pin.extend_from_slice(&again);
    assert_eq!(
        frames_found(&before_pin, &said),
        0,
        "the message was played before the right PIN"
    );

    // The right PIN: "you have 1 message", the message, the menu.
    b_media.press("4711#");
    let messages = audio_of(
        "the mailbox",
        &receive_prompt(&b_media.sock, WAIT),
        b_media.relay,
    );
    let intro = played(&["you-have", "1", "message"]);
    let intro_len = intro.len() - FRAME_BYTES;
    assert!(
        messages.len() > intro_len,
        "the mailbox: {} frames heard\nlog:\n{}",
        messages.len() / FRAME_BYTES,
        daemon.log_text()
    );
    assert_audio(
        "you have 1 message",
        &messages[..intro_len],
        &intro[..intro_len],
        &daemon.log_text(),
    );
    let found = frames_found(&messages, &said);
    assert!(
        found >= 50,
        "only {found} of the {} frames 100 said were played back ({} frames heard)\nlog:\n{}",
        said.len(),
        messages.len() / FRAME_BYTES,
        daemon.log_text()
    );
    let menu = prompt("next-message-menu");
    let tail = &menu[menu.len() - 2 * FRAME_BYTES..menu.len() - FRAME_BYTES];
    assert!(
        messages.windows(FRAME_BYTES).any(|w| w == tail),
        "the message must be followed by the next-message menu"
    );

    // 7 deletes it; that was the last one: goodbye, Outpost hangs up.
    b_media.press("7");
    let end = audio_of(
        "after 7",
        &receive_prompt(&b_media.sock, WAIT),
        b_media.relay,
    );
    assert_audio(
        "deleted, goodbye",
        &end,
        &played(&["deleted", "goodbye"]),
        &daemon.log_text(),
    );
    await_bye_from_outpost(&daemon, &mut b, &b_dialog, "after the last message");
    eventually(WAIT, || vm_list(&daemon).is_empty().then_some(())).unwrap_or_else(|| {
        panic!(
            "the message is still listed: {:?}\nlog:\n{}",
            vm_list(&daemon),
            daemon.log_text()
        )
    });
    assert!(!path.exists(), "{} still exists", path.display());
    assert_no_calls(&daemon);
}
