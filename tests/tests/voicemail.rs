//! Voicemail, message-waiting indication and music on hold end to end: raw-UDP phones 100
//! (the caller) and 200 call each other through outpostd. A call that 200 does not take
//! (offline, no answer within the ring timeout, busy) is answered by Outpost, which plays
//! the greeting (real spoken prompts, generated once per run by `scripts/make-prompts`),
//! records the caller until `#` or hang-up and lights 200's message lamp (RFC 3842
//! NOTIFY). A phone that holds a call makes the relay play music to the other one.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    body_of, cseq_of, generated_prompts, header_value, json_str, parse_rtp, recv_datagrams,
    request_method, rtp_packet, rtp_pair, sdp_audio, sdp_body, status_of, Daemon, DaemonConfig,
    Dialog, OutgoingInvite, RtpView, SdpAudio, SipPhone,
};

const PHONE_A: (&str, &str) = ("100", "vm-caller-secret-100");
const PHONE_B: (&str, &str) = ("200", "vm-callee-secret-200");
/// Upper bound of every SIP and RTP wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// A prompt has ended when no packet came for this long.
const PROMPT_GAP: Duration = Duration::from_millis(400);
/// Upper bound of one played sequence (the greeting is about 7 s of audio).
const PROMPT_LIMIT: Duration = Duration::from_secs(15);
/// One RTP frame of G.711: 20 ms, 160 samples.
const FRAME: Duration = Duration::from_millis(20);
const FRAME_BYTES: usize = 160;
/// µ-law silence, the padding of a prompt's last frame.
const ULAW_SILENCE: u8 = 0xff;
const PCMU: u8 = 0;
const TELEPHONE_EVENT: u8 = 101;
/// RFC 4733 event code of `#`.
const EVENT_POUND: u8 = 11;

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
    assert!(!audio.is_empty(), "prompt {} is empty", path.display());
    audio
}

/// What the relay sends for a sequence of prompts: the clips back to back, the last frame
/// padded with silence.
fn played(names: &[&str]) -> Vec<u8> {
    let mut audio: Vec<u8> = names.iter().flat_map(|n| prompt(n)).collect();
    let frames = audio.len().div_ceil(FRAME_BYTES);
    audio.resize(frames * FRAME_BYTES, ULAW_SILENCE);
    audio
}

/// A loopback daemon with the generated prompts and a 30 s message limit.
fn vm_config() -> DaemonConfig {
    let mut config = DaemonConfig::loopback();
    config.prompts_dir = Some(prompts_dir().to_path_buf());
    config.voicemail_max_secs = Some(30);
    config
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
// Caller side: the PBX's answer, the prompts it plays, the audio and DTMF the caller sends
// ---------------------------------------------------------------------------------------

/// A's call, answered by Outpost itself.
struct Deposit {
    dialog: Dialog,
    rtp: UdpSocket,
    /// Where A sends RTP (the relay, as Outpost's 200 OK names it).
    relay: SocketAddr,
}

/// A calls 200 offering PCMU and telephone-event.
fn call_b(a: &mut SipPhone) -> (OutgoingInvite, UdpSocket) {
    let (rtp, _rtcp) = rtp_pair();
    let invite = a.invite(PHONE_B.0, &sdp_body(local(&rtp), &[PCMU, TELEPHONE_EVENT]));
    (invite, rtp)
}

/// A's INVITE must be answered 200 by Outpost, with SDP pointing at the relay.
fn answered_by_outpost(
    daemon: &Daemon,
    a: &mut SipPhone,
    invite: &OutgoingInvite,
    rtp: UdpSocket,
) -> Deposit {
    let dialog = a.await_answer(invite, WAIT).unwrap_or_else(|resp| {
        panic!(
            "A's call was not answered (voicemail expected): {resp:?}\nA received:\n{}\nlog:\n{}",
            a.transcript(),
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
    assert_eq!(
        sdp.formats.first(),
        Some(&PCMU),
        "A offered PCMU first:\n{}",
        dialog.remote_sdp
    );
    assert!(
        sdp.formats.contains(&TELEPHONE_EVENT),
        "A offered telephone-event, so # can end the message:\n{}",
        dialog.remote_sdp
    );
    Deposit {
        dialog,
        rtp,
        relay: sdp.rtp_addr(),
    }
}

/// One packet the relay played, with its arrival time.
struct Heard {
    src: SocketAddr,
    packet: RtpView,
    at: Instant,
}

/// The packets of one played sequence: from the first (within [`WAIT`]) until none came for
/// [`PROMPT_GAP`], [`PROMPT_LIMIT`] at most.
fn receive_prompt(sock: &UdpSocket) -> Vec<Heard> {
    let deadline = Instant::now() + PROMPT_LIMIT;
    let mut heard: Vec<Heard> = Vec::new();
    loop {
        let wait = if heard.is_empty() { WAIT } else { PROMPT_GAP };
        let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        let Some((src, bytes)) = recv_datagrams(sock, 1, wait).pop() else {
            return heard;
        };
        let packet = parse_rtp(&bytes)
            .unwrap_or_else(|| panic!("non-RTP datagram from {src}: {bytes:02x?}"));
        heard.push(Heard {
            src,
            packet,
            at: Instant::now(),
        });
    }
}

/// Checks a played sequence: PCMU packets from `relay` with consecutive sequence numbers,
/// sent in real time (20 ms apart, not in a burst), whose payloads are exactly `expected`.
fn assert_played(what: &str, heard: &[Heard], relay: SocketAddr, expected: &[u8], log: &str) {
    assert!(
        !heard.is_empty(),
        "{what}: no RTP came from the relay\nlog:\n{log}"
    );
    for (i, h) in heard.iter().enumerate() {
        assert_eq!(
            h.src, relay,
            "{what}: packet {i} must come from the relay port"
        );
        assert_eq!(h.packet.pt, PCMU, "{what}: payload type of packet {i}");
        assert_eq!(
            h.packet.payload.len(),
            FRAME_BYTES,
            "{what}: packet {i} holds 20 ms"
        );
        if i > 0 {
            assert_eq!(
                h.packet.seq,
                heard[i - 1].packet.seq.wrapping_add(1),
                "{what}: sequence numbers of packets {} and {i}",
                i - 1
            );
            assert_eq!(
                h.packet.ssrc, heard[0].packet.ssrc,
                "{what}: one SSRC throughout"
            );
        }
    }
    let frames = expected.len() / FRAME_BYTES;
    assert_eq!(
        heard.len(),
        frames,
        "{what}: {} packets for {} ms of prompts",
        heard.len(),
        frames * 20
    );
    for (i, (h, want)) in heard.iter().zip(expected.chunks(FRAME_BYTES)).enumerate() {
        assert!(
            h.packet.payload == want,
            "{what}: frame {i} of {frames} differs from the prompt audio"
        );
    }
    let span = heard[heard.len() - 1].at.duration_since(heard[0].at);
    let nominal = FRAME * u32::try_from(frames - 1).expect("few frames");
    assert!(
        span >= nominal * 8 / 10,
        "{what}: {frames} frames arrived within {span:?}, not paced at 20 ms ({nominal:?})"
    );
}

/// 160 non-silent µ-law bytes (0x10..0x6f, loud) that differ from packet to packet.
fn voice(seq: u16) -> Vec<u8> {
    (0..160u32)
        .map(|i| {
            let v = 0x10 + (i * 7 + u32::from(seq) * 5 + u32::from(seq >> 3)) % 0x60;
            u8::try_from(v).expect("below 0x70")
        })
        .collect()
}

/// A talks for `frames` × 20 ms in real time (PCMU, seq 1.., timestamps 160 apart from 0);
/// returns the payloads in order.
fn talk(sock: &UdpSocket, to: SocketAddr, frames: u16, ssrc: u32) -> Vec<Vec<u8>> {
    talk_numbered(sock, to, frames, (ssrc, 1, 0))
}

/// [`talk`] with the stream's first sequence number and timestamp.
fn talk_numbered(
    sock: &UdpSocket,
    to: SocketAddr,
    frames: u16,
    (ssrc, seq0, ts0): (u32, u16, u32),
) -> Vec<Vec<u8>> {
    let start = Instant::now();
    (0..frames)
        .map(|i| {
            let seq = seq0.wrapping_add(i);
            let body = voice(seq);
            let ts = ts0.wrapping_add(u32::from(i) * 160);
            let packet = rtp_packet(PCMU, seq, ts, ssrc, &body);
            sock.send_to(&packet, to).expect("send RTP");
            let next = start + FRAME * (u32::from(i) + 1);
            thread::sleep(next.saturating_duration_since(Instant::now()));
            body
        })
        .collect()
}

/// A presses `#` (RFC 4733): three packets while the key is down, then the end packet
/// three times, all with the event's timestamp; seq numbers follow `after_seq`.
fn press_pound(sock: &UdpSocket, to: SocketAddr, after_seq: u16, ts: u32, ssrc: u32) {
    let steps: [(bool, u16); 6] = [
        (false, 160),
        (false, 320),
        (false, 480),
        (true, 640),
        (true, 640),
        (true, 640),
    ];
    for (i, (end, duration)) in steps.into_iter().enumerate() {
        let mut event = [EVENT_POUND, 10, 0, 0];
        if end {
            event[1] |= 0x80;
        }
        event[2..].copy_from_slice(&duration.to_be_bytes());
        let seq = after_seq.wrapping_add(u16::try_from(i).expect("six steps") + 1);
        let mut packet = rtp_packet(TELEPHONE_EVENT, seq, ts, ssrc, &event);
        if i == 0 {
            packet[1] |= 0x80; // marker: the event starts
        }
        sock.send_to(&packet, to).expect("send telephone-event");
        thread::sleep(FRAME);
    }
}

/// A hangs up (BYE) and gets its 200.
fn hang_up(daemon: &Daemon, a: &mut SipPhone, dialog: &mut Dialog) {
    let cseq = a.send_bye(dialog);
    let ok = a
        .await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| {
            panic!(
                "no answer to A's BYE:\n{}\nlog:\n{}",
                a.transcript(),
                daemon.log_text()
            )
        });
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
}

// ---------------------------------------------------------------------------------------
// Mailbox side: vm list, the WAV file, NOTIFY bodies
// ---------------------------------------------------------------------------------------

/// `vm list [args] --json` as an array.
fn vm_list(daemon: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["vm", "list"];
    full.extend_from_slice(args);
    match daemon.ctl_json(&full) {
        Value::Array(items) => items,
        other => panic!("vm list --json did not print an array: {other}"),
    }
}

/// Waits until the voicemail index holds `n` messages; returns them.
fn wait_messages(daemon: &Daemon, n: usize) -> Vec<Value> {
    outpost_tests::eventually(WAIT, || {
        let list = vm_list(daemon, &[]);
        (list.len() >= n).then_some(list)
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {n} voicemail messages after {WAIT:?}: {:?}\nlog:\n{}",
            vm_list(daemon, &[]),
            daemon.log_text()
        )
    })
}

/// Checks one listed message: mailbox 200, caller 100, new, a length within `ms`, a WAV
/// file under `<data_dir>/voicemail/200/`. Returns the message's path.
fn assert_message(daemon: &Daemon, msg: &Value, ms: std::ops::RangeInclusive<u64>) -> PathBuf {
    assert_eq!(json_str(msg, "mailbox"), Some(PHONE_B.0), "{msg}");
    assert_eq!(json_str(msg, "caller"), Some(PHONE_A.0), "{msg}");
    assert_eq!(msg["new"].as_bool(), Some(true), "{msg}");
    assert!(msg["id"].as_u64().is_some(), "{msg}");
    assert!(msg["at"].as_u64().is_some_and(|at| at > 0), "{msg}");
    let duration = msg["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        ms.contains(&duration),
        "message length {duration} ms, expected {ms:?}: {msg}"
    );
    let path = PathBuf::from(json_str(msg, "path").unwrap_or_default());
    let mailbox_dir = daemon.data_dir().join("voicemail").join(PHONE_B.0);
    assert!(
        path.starts_with(&mailbox_dir),
        "message stored at {}, expected under {}",
        path.display(),
        mailbox_dir.display()
    );
    assert!(path.is_file(), "{} does not exist: {msg}", path.display());
    path
}

/// `vm_audio` (the web page's player) returns the stored file byte for byte, whole and in
/// pieces, and leaves the message new.
fn assert_audio_api(daemon: &Daemon, msg: &Value, path: &Path) {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("data is not base64 ({e}): {v}"))
    };
    let on_disk = std::fs::read(path).expect("read the message file");
    let id = msg["id"].as_u64().expect("id");
    let whole = daemon.admin(&serde_json::json!({"cmd": "vm_audio", "id": id}));
    assert_eq!(whole["reply"], "vm_audio", "{whole}");
    let data = &whole["data"];
    assert_eq!(json_str(data, "content_type"), Some("audio/wav"), "{data}");
    assert_eq!(json_str(data, "mailbox"), Some(PHONE_B.0), "{data}");
    assert_eq!(data["duration_ms"], msg["duration_ms"], "{data}");
    assert_eq!(data["size"].as_u64(), Some(on_disk.len() as u64), "{data}");
    assert_eq!(b64(data), on_disk, "vm_audio returns the file as stored");
    let mut pieces = Vec::new();
    loop {
        let r = daemon.admin(&serde_json::json!(
            {"cmd": "vm_audio", "id": id, "offset": pieces.len(), "len": 10_000}
        ));
        let piece = b64(&r["data"]);
        if piece.is_empty() {
            break;
        }
        pieces.extend(piece);
    }
    assert_eq!(pieces, on_disk, "the pieces reassemble the file");
    let missing = daemon.admin(&serde_json::json!({"cmd": "vm_audio", "id": id + 1000}));
    assert_eq!(missing["reply"], "error", "{missing}");
    assert_eq!(
        vm_list(daemon, &[PHONE_B.0])[0]["new"].as_bool(),
        Some(true),
        "reading the audio does not mark the message heard"
    );
}

/// The fields of a WAV file the tests check.
#[derive(Debug)]
struct Wav {
    format: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    data: Vec<u8>,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a RIFF/WAVE file: its `fmt ` and `data` chunks.
fn parse_wav(bytes: &[u8]) -> Result<Wav, String> {
    if bytes.get(..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err("no RIFF/WAVE header".to_owned());
    }
    let riff_len = le32(bytes, 4).ok_or("truncated header")?;
    if usize::try_from(riff_len).ok() != Some(bytes.len() - 8) {
        return Err(format!(
            "RIFF length {riff_len} for a file of {} bytes",
            bytes.len()
        ));
    }
    let mut at = 12;
    let mut fmt = None;
    let mut data = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = usize::try_from(le32(bytes, at + 4).ok_or("truncated chunk")?)
            .map_err(|_| "huge chunk")?;
        let body = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| format!("chunk {id:?} runs past the end"))?;
        match id {
            b"fmt " => fmt = Some(body),
            b"data" => data = Some(body.to_vec()),
            _ => {}
        }
        at += 8 + len + len % 2;
    }
    let fmt = fmt.ok_or("no fmt chunk")?;
    Ok(Wav {
        format: le16(fmt, 0).ok_or("short fmt")?,
        channels: le16(fmt, 2).ok_or("short fmt")?,
        rate: le32(fmt, 4).ok_or("short fmt")?,
        bits: le16(fmt, 14).ok_or("short fmt")?,
        data: data.ok_or("no data chunk")?,
    })
}

/// The message file is 8 kHz mono µ-law and its samples are what A said, packet after
/// packet (allowing for a packet or two lost at the edges).
fn assert_recording(path: &Path, said: &[Vec<u8>]) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let wav = parse_wav(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (wav.format, wav.channels, wav.rate, wav.bits),
        (7, 1, 8000, 8),
        "{}: format 7 (µ-law), mono, 8000 Hz, 8 bits expected: {:?}",
        path.display(),
        (wav.format, wav.channels, wav.rate, wav.bits)
    );
    let head = wav.data.get(..FRAME_BYTES).unwrap_or_default();
    let first = said
        .iter()
        .take(10)
        .position(|p| p.as_slice() == head)
        .unwrap_or_else(|| {
            panic!(
                "{}: the recording does not start with one of A's first packets: {:02x?}",
                path.display(),
                &head[..head.len().min(32)]
            )
        });
    let matching = said[first..]
        .iter()
        .enumerate()
        .filter(|(i, p)| wav.data.get(i * FRAME_BYTES..(i + 1) * FRAME_BYTES) == Some(p))
        .count();
    assert!(
        matching * 10 >= said.len() * 9,
        "{}: only {matching} of A's {} packets are in the recording ({} bytes)",
        path.display(),
        said.len(),
        wav.data.len()
    );
}

/// Checks a message-summary NOTIFY: headers and the waiting flag and counts of its body.
fn assert_summary(notify: &str, waiting: &str, counts: &str) {
    assert_eq!(
        header_value(notify, "Event").as_deref(),
        Some("message-summary"),
        "{notify}"
    );
    assert_eq!(
        header_value(notify, "Content-Type").as_deref(),
        Some("application/simple-message-summary"),
        "{notify}"
    );
    let body = body_of(notify);
    let field = |name: &str| {
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    assert_eq!(
        field("Messages-Waiting").as_deref(),
        Some(waiting),
        "{notify}"
    );
    let voice = field("Voice-Message").unwrap_or_default();
    assert!(
        voice.starts_with(counts),
        "Voice-Message {voice:?}, expected {counts}:\n{notify}"
    );
}

/// A phone's subscription to its mailbox and the CSeq of the last NOTIFY it got.
struct Lamp {
    sub: Dialog,
    last_cseq: u32,
}

impl Lamp {
    /// `phone` subscribes to its mailbox.
    fn subscribe(phone: &mut SipPhone) -> Self {
        Lamp {
            sub: phone.subscribe_mwi(WAIT),
            last_cseq: 0,
        }
    }

    /// The phone's next (not retransmitted) NOTIFY, which must come.
    fn next_notify(&mut self, daemon: &Daemon, phone: &mut SipPhone, what: &str) -> String {
        let notify = phone
            .await_notify(&self.sub.call_id, self.last_cseq, WAIT)
            .unwrap_or_else(|| {
                panic!(
                    "no NOTIFY ({what}); the phone received:\n{}\nlog:\n{}",
                    phone.transcript(),
                    daemon.log_text()
                )
            });
        self.last_cseq = cseq_of(&notify).map_or(0, |(n, _)| n);
        notify
    }
}

/// The CDR of the only call: disposition "voicemail", answered, 100 → 200.
fn assert_voicemail_cdr(daemon: &Daemon) {
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("voicemail"),
        "{cdrs:?}"
    );
    assert_eq!(json_str(&cdrs[0], "caller"), Some(PHONE_A.0), "{cdrs:?}");
    assert_eq!(json_str(&cdrs[0], "callee"), Some(PHONE_B.0), "{cdrs:?}");
    assert!(!cdrs[0]["answer"].is_null(), "{cdrs:?}");
}

/// The next request `method` of the dialog `call_id` at `phone`.
fn await_in_call(
    daemon: &Daemon,
    phone: &mut SipPhone,
    method: &str,
    call_id: &str,
    what: &str,
) -> String {
    phone
        .recv_matching(WAIT, |m| {
            request_method(m) == Some(method)
                && header_value(m, "Call-ID").as_deref() == Some(call_id)
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: no {method}; the phone received:\n{}\nlog:\n{}",
                phone.transcript(),
                daemon.log_text()
            )
        })
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn a_call_to_an_offline_extension_leaves_a_message_ended_with_pound() {
    let greeting = played(&["unavailable", "please-leave-message", "beep"]);
    let goodbye = played(&["goodbye"]);
    let (daemon, mut a, _b) = start(vm_config());
    a.register();

    let (invite, rtp) = call_b(&mut a);
    let call = answered_by_outpost(&daemon, &mut a, &invite, rtp);
    let heard = receive_prompt(&call.rtp);
    assert!(
        heard.len() >= 50,
        "at least 1 s of greeting expected, got {} packets",
        heard.len()
    );
    assert_played(
        "greeting",
        &heard,
        call.relay,
        &greeting,
        &daemon.log_text(),
    );

    // 3 s of speech, then #.
    let said = talk(&call.rtp, call.relay, 150, 0xA1A1);
    press_pound(&call.rtp, call.relay, 150, 150 * 160, 0xA1A1);
    let heard = receive_prompt(&call.rtp);
    assert_played("goodbye", &heard, call.relay, &goodbye, &daemon.log_text());
    let bye = a.answer_bye(WAIT).unwrap_or_else(|| {
        panic!(
            "Outpost did not hang up after goodbye; A received:\n{}\nlog:\n{}",
            a.transcript(),
            daemon.log_text()
        )
    });
    assert_eq!(
        header_value(&bye, "Call-ID").as_deref(),
        Some(call.dialog.call_id.as_str()),
        "{bye}"
    );

    let list = wait_messages(&daemon, 1);
    assert_eq!(list.len(), 1, "{list:?}");
    let path = assert_message(&daemon, &list[0], 2_500..=3_800);
    assert_recording(&path, &said);
    assert_audio_api(&daemon, &list[0], &path);
    assert_eq!(vm_list(&daemon, &[PHONE_B.0]).len(), 1, "vm list 200");
    assert!(
        vm_list(&daemon, &[PHONE_A.0]).is_empty(),
        "mailbox 100 holds nothing"
    );
    assert_voicemail_cdr(&daemon);
    assert!(daemon.calls().is_empty(), "no call left");
}

#[test]
fn an_unanswered_call_goes_to_voicemail_and_lights_the_message_lamp() {
    let mut config = vm_config();
    config.ring_timeout_secs = 2;
    let (daemon, mut a, mut b) = start(config);
    b.register();
    let mut lamp = Lamp::subscribe(&mut b);
    let notify = lamp.next_notify(&daemon, &mut b, "initial state");
    assert_summary(&notify, "no", "0/0");
    a.register();

    let (invite, rtp) = call_b(&mut a);
    let incoming = b.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "B got no INVITE; B received:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    let tag = "ring200";
    b.reply(&incoming, 180, Some(tag), "");
    let ringing_since = Instant::now();
    let b_call_id = header_value(&incoming, "Call-ID").unwrap_or_default();
    let cancel = await_in_call(&daemon, &mut b, "CANCEL", &b_call_id, "ring timeout");
    let rang = ringing_since.elapsed();
    assert!(
        (Duration::from_millis(1_500)..=Duration::from_millis(4_500)).contains(&rang),
        "CANCEL {rang:?} after ringing began, with a 2 s ring timeout"
    );
    b.reply(&cancel, 200, Some(tag), "");
    b.reply(&incoming, 487, Some(tag), "");
    let ack = await_in_call(&daemon, &mut b, "ACK", &b_call_id, "487 to the INVITE");
    assert_eq!(
        cseq_of(&ack).map(|(n, _)| n),
        cseq_of(&incoming).map(|(n, _)| n),
        "{ack}"
    );

    let mut call = answered_by_outpost(&daemon, &mut a, &invite, rtp);
    let heard = receive_prompt(&call.rtp);
    assert_played(
        "greeting",
        &heard,
        call.relay,
        &played(&["unavailable", "please-leave-message", "beep"]),
        &daemon.log_text(),
    );
    // 2 s of speech, then A hangs up without #.
    let said = talk(&call.rtp, call.relay, 100, 0xA2A2);
    hang_up(&daemon, &mut a, &mut call.dialog);

    let list = wait_messages(&daemon, 1);
    assert_eq!(list.len(), 1, "{list:?}");
    let path = assert_message(&daemon, &list[0], 1_500..=2_800);
    assert_recording(&path, &said);
    let notify = lamp.next_notify(&daemon, &mut b, "after the new message");
    assert_summary(&notify, "yes", "1/0");
    assert_voicemail_cdr(&daemon);
}

#[test]
fn a_busy_callee_sends_the_caller_to_voicemail() {
    let (daemon, mut a, mut b) = start(vm_config());
    b.register();
    a.register();

    let (invite, rtp) = call_b(&mut a);
    let incoming = b.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "B got no INVITE; B received:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    b.reply(&incoming, 486, Some("busy200"), "");
    let b_call_id = header_value(&incoming, "Call-ID").unwrap_or_default();
    await_in_call(&daemon, &mut b, "ACK", &b_call_id, "486 to the INVITE");

    let mut call = answered_by_outpost(&daemon, &mut a, &invite, rtp);
    let heard = receive_prompt(&call.rtp);
    assert_played(
        "busy greeting",
        &heard,
        call.relay,
        &played(&["busy", "please-leave-message", "beep"]),
        &daemon.log_text(),
    );
    let said = talk(&call.rtp, call.relay, 50, 0xA3A3);
    hang_up(&daemon, &mut a, &mut call.dialog);

    let list = wait_messages(&daemon, 1);
    let path = assert_message(&daemon, &list[0], 700..=1_500);
    assert_recording(&path, &said);
    assert_voicemail_cdr(&daemon);
}

#[test]
fn deleting_a_message_after_a_restart_removes_its_file_and_turns_the_lamp_off() {
    let (mut daemon, mut a, mut b) = start(vm_config());
    // 200 watches its mailbox without a registered phone: calls go straight to voicemail.
    let mut lamp = Lamp::subscribe(&mut b);
    let first = lamp.next_notify(&daemon, &mut b, "initial state");
    assert_summary(&first, "no", "0/0");
    a.register();

    let (invite, rtp) = call_b(&mut a);
    let call = answered_by_outpost(&daemon, &mut a, &invite, rtp);
    let heard = receive_prompt(&call.rtp);
    assert!(
        heard.len() >= 50,
        "greeting: {} packets from the relay",
        heard.len()
    );
    let said = talk(&call.rtp, call.relay, 50, 0xA4A4);
    press_pound(&call.rtp, call.relay, 50, 50 * 160, 0xA4A4);
    a.answer_bye(WAIT).unwrap_or_else(|| {
        panic!(
            "Outpost did not hang up after #; A received:\n{}\nlog:\n{}",
            a.transcript(),
            daemon.log_text()
        )
    });
    assert_summary(
        &lamp.next_notify(&daemon, &mut b, "after the new message"),
        "yes",
        "1/0",
    );

    let list = wait_messages(&daemon, 1);
    let path = assert_message(&daemon, &list[0], 700..=1_500);
    assert_recording(&path, &said);
    let id = list[0]["id"].as_u64().expect("checked").to_string();
    // The subscription survives a restart: the next change is NOTIFYed in the same dialog
    // (same Call-ID and tag, a higher CSeq) without the phone subscribing again.
    daemon.stop();
    daemon.restart();
    daemon.ctl_ok(&["vm", "del", &id]);
    assert!(
        vm_list(&daemon, &[]).is_empty(),
        "message {id} still listed"
    );
    assert!(!path.exists(), "{} still exists", path.display());
    let after = lamp.next_notify(&daemon, &mut b, "after the restart and vm del");
    assert_summary(&after, "no", "0/0");
    assert_eq!(
        header_value(&after, "From"),
        header_value(&first, "From"),
        "the NOTIFY after the restart is in the subscription's dialog (our tag)"
    );
    let again = daemon.ctl(&["vm", "del", &id]);
    assert_eq!(
        again.code,
        Some(1),
        "deleting message {id} twice must be refused: {again:?}"
    );
}

/// The SDP a phone sends for `rtp` with direction `direction` and origin version `version`.
fn sdp_with(rtp: SocketAddr, direction: &str, version: u32) -> String {
    sdp_body(rtp, &[PCMU, TELEPHONE_EVENT])
        .replace("o=- 4242 1 ", &format!("o=- 4242 {version} "))
        .replace("a=sendrecv", &format!("a={direction}"))
}

/// Every datagram arriving on `sock` until none came for `gap` ([`WAIT`] at most in all).
fn drain(sock: &UdpSocket, gap: Duration) -> Option<usize> {
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    while Instant::now() < deadline {
        if recv_datagrams(sock, 1, gap).is_empty() {
            return Some(n);
        }
        n += 1;
    }
    None
}

/// A sends a re-INVITE with `direction`; B must get it (pointing at the relay, with the
/// same direction) and answers with `answer_direction`; the 200 reaches A, A's ACK reaches
/// B.
#[allow(clippy::too_many_arguments)]
fn reinvite(
    daemon: &Daemon,
    a: &mut SipPhone,
    a_dialog: &mut Dialog,
    a_media: SocketAddr,
    b: &mut SipPhone,
    b_dialog: &Dialog,
    b_media: SocketAddr,
    (direction, answer_direction, version): (&str, &str, u32),
) {
    let cseq = a.reinvite(a_dialog, &sdp_with(a_media, direction, version));
    let incoming = await_in_call(
        daemon,
        b,
        "INVITE",
        &b_dialog.call_id,
        &format!("re-INVITE {direction}"),
    );
    let offer = sdp_audio(body_of(&incoming))
        .unwrap_or_else(|| panic!("B's re-INVITE has no audio SDP:\n{incoming}"));
    assert_eq!(
        offer.addr,
        Ipv4Addr::LOCALHOST,
        "the re-INVITE must point at the relay:\n{incoming}"
    );
    assert!(
        offer.attributes.iter().any(|a| a == direction)
            || (direction == "sendrecv"
                && !offer
                    .attributes
                    .iter()
                    .any(|a| ["sendonly", "recvonly", "inactive"].contains(&a.as_str()))),
        "B's re-INVITE must keep the direction {direction}:\n{incoming}"
    );
    b.reply(
        &incoming,
        200,
        None,
        &sdp_with(b_media, answer_direction, version),
    );
    let ok = a
        .await_final(&a_dialog.call_id, cseq, "INVITE", WAIT)
        .unwrap_or_else(|| {
            panic!(
                "no answer to A's re-INVITE ({direction}); A received:\n{}\nlog:\n{}",
                a.transcript(),
                daemon.log_text()
            )
        });
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    a.ack_2xx(a_dialog, cseq);
    await_in_call(
        daemon,
        b,
        "ACK",
        &b_dialog.call_id,
        &format!("ACK of the re-INVITE {direction}"),
    );
}

/// A call from A to B, answered by B: each phone's RTP socket, its dialog and the relay
/// address it sends to.
struct Bridged {
    a_rtp: UdpSocket,
    b_rtp: UdpSocket,
    a_media: SocketAddr,
    b_media: SocketAddr,
    a_dialog: Dialog,
    b_dialog: Dialog,
    relay_a: SocketAddr,
    relay_b: SocketAddr,
    /// The RTCP sockets, held so that their ports stay taken.
    _rtcp: (UdpSocket, UdpSocket),
}

impl Bridged {
    /// A re-INVITEs B with `(direction, answer_direction, version)`, see [`reinvite`].
    fn redirect(
        &mut self,
        daemon: &Daemon,
        a: &mut SipPhone,
        b: &mut SipPhone,
        directions: (&str, &str, u32),
    ) {
        reinvite(
            daemon,
            a,
            &mut self.a_dialog,
            self.a_media,
            b,
            &self.b_dialog,
            self.b_media,
            directions,
        );
    }
}

/// A (registered) calls B (registered), who answers; both offer PCMU and telephone-event.
fn bridged_call(daemon: &Daemon, a: &mut SipPhone, b: &mut SipPhone) -> Bridged {
    let (a_rtp, a_rtcp) = rtp_pair();
    let (b_rtp, b_rtcp) = rtp_pair();
    let (a_media, b_media) = (local(&a_rtp), local(&b_rtp));

    let invite = a.invite(PHONE_B.0, &sdp_body(a_media, &[PCMU, TELEPHONE_EVENT]));
    let incoming = b.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "B got no INVITE; B received:\n{}\nlog:\n{}",
            b.transcript(),
            daemon.log_text()
        )
    });
    let relay_b = sdp_audio(body_of(&incoming))
        .unwrap_or_else(|| panic!("B's INVITE has no audio SDP:\n{incoming}"))
        .rtp_addr();
    let b_dialog = b.answer(&incoming, &sdp_body(b_media, &[PCMU, TELEPHONE_EVENT]));
    let a_dialog = a.await_answer(&invite, WAIT).unwrap_or_else(|resp| {
        panic!(
            "A's call was not answered: {resp:?}\nlog:\n{}",
            daemon.log_text()
        )
    });
    b.await_ack(&b_dialog, WAIT)
        .unwrap_or_else(|| panic!("B got no ACK; B received:\n{}", b.transcript()));
    let relay_a = sdp_audio(&a_dialog.remote_sdp)
        .unwrap_or_else(|| panic!("A's 200 OK has no audio SDP:\n{}", a_dialog.remote_sdp))
        .rtp_addr();

    Bridged {
        a_rtp,
        b_rtp,
        a_media,
        b_media,
        a_dialog,
        b_dialog,
        relay_a,
        relay_b,
        _rtcp: (a_rtcp, b_rtcp),
    }
}

#[test]
fn the_held_party_hears_music_until_the_call_is_resumed() {
    let moh = prompt("moh");
    let (daemon, mut a, mut b) = start(vm_config());
    a.register();
    b.register();
    let Bridged {
        a_rtp,
        b_rtp,
        a_media,
        b_media,
        mut a_dialog,
        b_dialog,
        relay_a,
        relay_b,
        _rtcp,
    } = bridged_call(&daemon, &mut a, &mut b);

    // The call works: A's audio reaches B.
    let said = talk(&a_rtp, relay_a, 5, 0xA5A5);
    let got = recv_datagrams(&b_rtp, 5, WAIT);
    let payloads: Vec<Vec<u8>> = got
        .iter()
        .filter_map(|(_, bytes)| parse_rtp(bytes).map(|p| p.payload))
        .collect();
    assert_eq!(payloads, said, "A's audio before the hold");

    // A holds: B hears music though A sends nothing.
    reinvite(
        &daemon,
        &mut a,
        &mut a_dialog,
        a_media,
        &mut b,
        &b_dialog,
        b_media,
        ("sendonly", "recvonly", 2),
    );
    let music = recv_datagrams(&b_rtp, 1_000, Duration::from_secs(1));
    // `outpostctl calls` says so (it said `answered`).
    let calls = daemon.ctl_json(&["calls"]);
    assert_eq!(calls[0]["state"], "on hold", "{calls}");
    assert!(
        music.len() >= 25,
        "B received {} packets in 1 s of hold, music expected\nlog:\n{}",
        music.len(),
        daemon.log_text()
    );
    let mut heard = Vec::new();
    for (i, (src, bytes)) in music.iter().enumerate() {
        let packet =
            parse_rtp(bytes).unwrap_or_else(|| panic!("non-RTP datagram from {src}: {bytes:02x?}"));
        assert_eq!(
            *src, relay_b,
            "music packet {i} must come from B's relay port"
        );
        assert_eq!(packet.pt, PCMU, "music packet {i}");
        heard.extend_from_slice(&packet.payload);
    }
    assert!(
        moh.starts_with(&heard),
        "B must hear the moh prompt from its start ({} bytes heard)",
        heard.len()
    );

    // A resumes: the music stops and A's audio reaches B again.
    reinvite(
        &daemon,
        &mut a,
        &mut a_dialog,
        a_media,
        &mut b,
        &b_dialog,
        b_media,
        ("sendrecv", "sendrecv", 3),
    );
    assert!(
        drain(&b_rtp, Duration::from_millis(300)).is_some(),
        "music still playing to B {WAIT:?} after the resume\nlog:\n{}",
        daemon.log_text()
    );
    let calls = daemon.ctl_json(&["calls"]);
    assert_eq!(calls[0]["state"], "answered", "{calls}");
    let said = talk(&a_rtp, relay_a, 10, 0xA5A5);
    let got = recv_datagrams(&b_rtp, 10, WAIT);
    let payloads: Vec<Vec<u8>> = got
        .iter()
        .map(|(src, bytes)| {
            assert_eq!(*src, relay_b, "after the resume");
            parse_rtp(bytes).map(|p| p.payload).unwrap_or_default()
        })
        .collect();
    assert_eq!(
        payloads, said,
        "A's audio after the resume, and nothing else"
    );

    let cseq = a.send_bye(&mut a_dialog);
    b.answer_bye(WAIT)
        .unwrap_or_else(|| panic!("B got no BYE; B received:\n{}", b.transcript()));
    let ok = a
        .await_final(&a_dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to A's BYE:\n{}", a.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(
        json_str(&cdrs[0], "disposition"),
        Some("answered"),
        "{cdrs:?}"
    );
}

/// Every RTP packet arriving on `sock` until `stop` is set (at most 30 s), with its arrival
/// time: a background "phone" that listens while the test drives the signalling.
fn listen(
    sock: &UdpSocket,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(Instant, SocketAddr, RtpView)>> {
    let sock = sock.try_clone().expect("clone the RTP socket");
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for (src, bytes) in recv_datagrams(&sock, 1, Duration::from_millis(50)) {
                if let Some(packet) = parse_rtp(&bytes) {
                    got.push((Instant::now(), src, packet));
                }
            }
        }
        got
    })
}

/// Found with real phones (issue 20): music on hold came as a new SSRC whose timestamp
/// jumped back, and phones dropped it. What B hears across A's audio, the music while A
/// holds, and A's audio again (A's phone restarting its stream on resume, as many do) must be
/// one RTP stream: one SSRC, the sequence number +1 per packet, the timestamp advancing with
/// the wall clock and never back.
#[test]
fn the_held_party_hears_one_continuous_stream_across_the_music() {
    let moh = prompt("moh");
    let (daemon, mut a, mut b) = start(vm_config());
    a.register();
    b.register();
    let mut call = bridged_call(&daemon, &mut a, &mut b);
    let (relay_a, relay_b) = (call.relay_a, call.relay_b);
    let stop = Arc::new(AtomicBool::new(false));
    let listener = listen(&call.b_rtp, Arc::clone(&stop));

    let before = talk_numbered(&call.a_rtp, relay_a, 25, (0xA5A5, 1000, 50_000));
    call.redirect(&daemon, &mut a, &mut b, ("sendonly", "recvonly", 2));
    thread::sleep(Duration::from_millis(1200));
    call.redirect(&daemon, &mut a, &mut b, ("sendrecv", "sendrecv", 3));
    thread::sleep(Duration::from_millis(300));
    // A new SSRC whose numbering would run backwards from the music's.
    let after = talk_numbered(&call.a_rtp, relay_a, 25, (0x5A5A, 7, 4_000_000_000));
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let heard = listener.join().expect("listener thread");

    // What B heard: A's 25 packets, music, A's 25 packets, in that order.
    let payloads: Vec<&[u8]> = heard.iter().map(|(_, _, p)| &p.payload[..]).collect();
    assert!(
        payloads.len() >= 25 + 40 + 25,
        "B heard {} packets, expected A, about 1.2 s of music, A\nlog:\n{}",
        payloads.len(),
        daemon.log_text()
    );
    let (first, rest) = payloads.split_at(25);
    let (music, last) = rest.split_at(rest.len() - 25);
    let owned = |p: &[&[u8]]| p.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
    assert_eq!(owned(first), before, "A's audio before the hold");
    assert_eq!(owned(last), after, "A's audio after the resume");
    let music: Vec<u8> = music.concat();
    assert!(
        moh.starts_with(&music),
        "B must hear the moh prompt between ({} bytes)",
        music.len()
    );

    let describe = || {
        heard
            .iter()
            .map(|(_, _, p)| format!("{:08x}/{}/{}", p.ssrc, p.seq, p.ts))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (i, pair) in heard.windows(2).enumerate() {
        let [(t1, src1, p1), (t2, src2, p2)] = pair else {
            unreachable!("windows of two")
        };
        assert_eq!((*src1, *src2), (relay_b, relay_b), "from B's relay port");
        assert_eq!(p1.ssrc, p2.ssrc, "packet {i}: one SSRC\n{}", describe());
        assert_eq!(
            p2.seq,
            p1.seq.wrapping_add(1),
            "packet {i}: sequence +1\n{}",
            describe()
        );
        #[allow(clippy::cast_possible_wrap)]
        let step = p2.ts.wrapping_sub(p1.ts) as i32;
        assert!(
            step >= 160,
            "packet {i}: the timestamp must advance at least a frame, not {step}\n{}",
            describe()
        );
        // Across a switch (the music starting or stopping, with a pause), the timestamp
        // covers the pause as the wall clock does.
        let wall_ms = i64::try_from(t2.duration_since(*t1).as_millis()).expect("short");
        if wall_ms > 100 {
            let ts_ms = i64::from(step / 8);
            assert!(
                (ts_ms - wall_ms).abs() <= 60,
                "packet {i}: {wall_ms} ms of pause but the timestamp advanced {ts_ms} ms\n{}",
                describe()
            );
        }
    }
    // Over the whole call, the timestamp ran with the wall clock.
    let (t_first, _, p_first) = &heard[0];
    let (t_last, _, p_last) = &heard[heard.len() - 1];
    let wall_ms = i64::try_from(t_last.duration_since(*t_first).as_millis()).expect("short");
    let ts_ms = i64::from(p_last.ts.wrapping_sub(p_first.ts) / 8);
    assert!(
        (ts_ms - wall_ms).abs() <= 100,
        "{wall_ms} ms of call, {ts_ms} ms of timestamps\n{}",
        describe()
    );

    let cseq = a.send_bye(&mut call.a_dialog);
    b.answer_bye(WAIT)
        .unwrap_or_else(|| panic!("B got no BYE; B received:\n{}", b.transcript()));
    assert!(a
        .await_final(&call.a_dialog.call_id, cseq, "BYE", WAIT)
        .is_some_and(|ok| status_of(ok.as_bytes()) == Some(200)));
}
