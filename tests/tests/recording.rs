//! Call recording on demand against the real daemon: two phones (raw SIP and RTP) talk,
//! each sending its own tone (G.711 µ-law: 440 Hz from 100, 1000 Hz from 101); the
//! extension that opted in dials `*1` (RFC 4733 DTMF) or presses its record key (INFO
//! `Record: on`); after the call, `outpostctl rec list` shows the recording and `rec get`
//! downloads a WAV file in which both tones are heard. An extension that did not opt in
//! records nothing. Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::{Duration, Instant};

use pbx_core::media::g711;
use serde_json::{json, Value};

use outpost_tests::browser::https;
use outpost_tests::webform::WebSession;
use outpost_tests::{
    body_of, eventually, free_port, json_str, registered_with_rtp, rtp_packet, sdp_audio, sdp_body,
    status_of, tone_amplitude, Daemon, DaemonConfig, Dialog, SipPhone,
};

const A: (&str, &str) = ("100", "rec-secret-100");
const ADMIN_PASSWORD: &str = "office-manager-42";
const B: (&str, &str) = ("101", "rec-secret-101");
const WAIT: Duration = Duration::from_secs(5);
const FRAME: Duration = Duration::from_millis(20);
const PCMU: u8 = 0;
const TELEPHONE_EVENT: u8 = 101;
const RATE: f64 = 8000.0;
const TONE_A: f64 = 440.0;
const TONE_B: f64 = 1000.0;

/// A phone: its SIP side and its RTP socket, its stream's SSRC and next sequence/time.
struct Phone {
    sip: SipPhone,
    rtp: UdpSocket,
    _rtcp: UdpSocket,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Phone {
    fn new(daemon: &Daemon, (ext, password): (&str, &str), ssrc: u32) -> Phone {
        let (sip, rtp, rtcp) = registered_with_rtp(daemon, ext, password);
        Phone {
            sip,
            rtp,
            _rtcp: rtcp,
            ssrc,
            seq: 1,
            ts: 0,
        }
    }

    fn sdp(&self) -> String {
        sdp_body(
            self.rtp.local_addr().expect("local"),
            &[PCMU, TELEPHONE_EVENT],
        )
    }

    /// Sends `frames` × 20 ms of a `hz` tone (-6 dBFS) in real time.
    fn tone(&mut self, to: SocketAddr, hz: f64, frames: u32) {
        let start = Instant::now();
        for i in 0..frames {
            let payload: Vec<u8> = (0..160u32)
                .map(|n| {
                    let t = f64::from(self.ts + n) / RATE;
                    let v = 0.5 * (2.0 * std::f64::consts::PI * hz * t).sin();
                    #[allow(clippy::cast_possible_truncation)]
                    g711::linear_to_ulaw((v * 32767.0) as i16)
                })
                .collect();
            let packet = rtp_packet(PCMU, self.seq, self.ts, self.ssrc, &payload);
            self.rtp.send_to(&packet, to).expect("send RTP");
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            thread::sleep((start + FRAME * (i + 1)).saturating_duration_since(Instant::now()));
        }
    }

    /// Presses the keys of `digits` (RFC 4733, each 60 ms down, the end packet thrice).
    fn dial(&mut self, to: SocketAddr, digits: &str) {
        for d in digits.chars() {
            let code = match d {
                '*' => 10,
                '#' => 11,
                d => u8::try_from(d.to_digit(10).expect("a digit")).expect("0-9"),
            };
            for (i, (end, duration)) in [
                (false, 160u16),
                (false, 320),
                (true, 480),
                (true, 480),
                (true, 480),
            ]
            .into_iter()
            .enumerate()
            {
                let mut event = [code, 10, 0, 0];
                if end {
                    event[1] |= 0x80;
                }
                event[2..].copy_from_slice(&duration.to_be_bytes());
                let mut packet = rtp_packet(TELEPHONE_EVENT, self.seq, self.ts, self.ssrc, &event);
                if i == 0 {
                    packet[1] |= 0x80;
                }
                self.rtp.send_to(&packet, to).expect("send telephone-event");
                self.seq = self.seq.wrapping_add(1);
                thread::sleep(FRAME);
            }
            self.ts = self.ts.wrapping_add(480 + 160);
        }
    }
}

/// `a` calls `b`, `b` answers: the dialogs and the relay addresses each must send to.
fn call(daemon: &Daemon, a: &mut Phone, b: &mut Phone) -> (Dialog, Dialog, SocketAddr, SocketAddr) {
    let offer = a.sdp();
    let inv = a.sip.invite(&b.sip_ext(), &offer);
    let invite = b
        .sip
        .await_request("INVITE", WAIT)
        .unwrap_or_else(|| panic!("no INVITE:\n{}", daemon.log_text()));
    let b_dialog = b.sip.answer(&invite, &b.sdp());
    b.sip.await_ack(&b_dialog, WAIT).expect("B gets the ACK");
    let a_dialog = a
        .sip
        .await_answer(&inv, WAIT)
        .unwrap_or_else(|r| panic!("not answered: {r:?}\n{}", daemon.log_text()));
    let relay_a = sdp_audio(&a_dialog.remote_sdp)
        .expect("A's answer has SDP")
        .rtp_addr();
    let relay_b = sdp_audio(body_of(&invite))
        .expect("B's offer has SDP")
        .rtp_addr();
    (a_dialog, b_dialog, relay_a, relay_b)
}

impl Phone {
    fn sip_ext(&self) -> String {
        self.sip.ext().to_string()
    }
}

/// Both phones send their tones for `frames` × 20 ms at once (B on a thread).
fn talk(a: &mut Phone, relay_a: SocketAddr, b: &mut Phone, relay_b: SocketAddr, frames: u32) {
    thread::scope(|s| {
        s.spawn(|| b.tone(relay_b, TONE_B, frames));
        a.tone(relay_a, TONE_A, frames);
    });
}

/// `from` hangs up; `to` answers the BYE.
fn hang_up(from: &mut Phone, dialog: &mut Dialog, to: &mut Phone) {
    let cseq = from.sip.send_bye(dialog);
    to.sip
        .answer_bye(WAIT)
        .expect("the other side gets the BYE");
    let ok = from.sip.await_final(&dialog.call_id, cseq, "BYE", WAIT);
    assert!(ok.is_some(), "no answer to the BYE");
}

fn recordings(daemon: &Daemon) -> Vec<Value> {
    daemon
        .ctl_json(&["rec", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The µ-law samples of a WAV file (its `data` chunk).
fn wav_samples(bytes: &[u8]) -> Vec<f64> {
    let at = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk");
    bytes[at + 8..]
        .iter()
        .map(|&u| f64::from(g711::ulaw_to_linear(u)) / 32768.0)
        .collect()
}

/// Amplitude of the `hz` component of `x`, sampled at [`RATE`].
fn amplitude(x: &[f64], hz: f64) -> f64 {
    tone_amplitude(x, hz, RATE)
}

/// INFO with `Record: on|off` from `p` in `dialog`: its final status.
fn record_key(p: &mut Phone, dialog: &mut Dialog, on: bool) -> Option<u16> {
    let state = if on { "on" } else { "off" };
    let cseq = p
        .sip
        .send_in_dialog(dialog, "INFO", &format!("Record: {state}\r\n"));
    let resp = p.sip.await_final(&dialog.call_id, cseq, "INFO", WAIT)?;
    status_of(resp.as_bytes())
}

#[test]
fn an_opted_in_extension_records_a_call_on_demand_and_both_parties_are_in_it() {
    let web_port = free_port();
    let daemon = Daemon::start_with(DaemonConfig::loopback().with_toml(&format!(
        "[recording]\nextensions = [\"100\"]\n[web]\nlisten = [\"127.0.0.1:{web_port}\"]\n"
    )));
    let set = daemon.admin(&json!({"cmd": "admin", "admin": "passwd", "password": ADMIN_PASSWORD}));
    assert_eq!(set["reply"], "done", "{set}");
    daemon.add_extension(A.0, A.1);
    daemon.add_extension(B.0, B.1);
    let mut a = Phone::new(&daemon, A, 0x0a0a_0001);
    let mut b = Phone::new(&daemon, B, 0x0b0b_0001);

    // 100 calls 101; they talk, then 100 dials *1 and they talk on: the recording.
    let (mut a_dialog, _b_dialog, relay_a, relay_b) = call(&daemon, &mut a, &mut b);
    talk(&mut a, relay_a, &mut b, relay_b, 20);
    a.dial(relay_a, "*1");
    talk(&mut a, relay_a, &mut b, relay_b, 150);
    hang_up(&mut a, &mut a_dialog, &mut b);
    let list = eventually(WAIT * 2, || {
        let l = recordings(&daemon);
        (!l.is_empty()).then_some(l)
    })
    .unwrap_or_else(|| panic!("no recording listed:\n{}", daemon.log_text()));
    assert_eq!(list.len(), 1, "{list:?}");
    let rec = &list[0];
    assert_eq!(
        (
            json_str(rec, "caller"),
            json_str(rec, "callee"),
            json_str(rec, "by")
        ),
        (Some("100"), Some("101"), Some("100")),
        "{rec}"
    );
    let ms = rec["duration_ms"].as_u64().unwrap_or(0);
    assert!((2_500..=4_500).contains(&ms), "{rec}");
    let id = rec["id"].as_u64().expect("an id").to_string();

    // Downloaded: a file only its owner reads, with both parties' tones in it.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("call.wav");
    let out = daemon.ctl(&["rec", "get", &id, file.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mode = std::fs::metadata(&file)
        .expect("written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let x = wav_samples(&std::fs::read(&file).expect("read"));
    let middle = &x[x.len() / 4..x.len() * 3 / 4];
    let (amp_a, amp_b, amp_none) = (
        amplitude(middle, TONE_A),
        amplitude(middle, TONE_B),
        amplitude(middle, 2_700.0),
    );
    println!(
        "recording {id}: {ms} ms; amplitude {TONE_A} Hz {amp_a:.3}, {TONE_B} Hz {amp_b:.3}, 2700 Hz {amp_none:.4}"
    );
    assert!(amp_a > 0.3 && amp_b > 0.3, "both tones: {amp_a} {amp_b}");
    assert!(amp_none < 0.02, "nothing else: {amp_none}");

    // 101 calls 100: 101 did not opt in, its *1 and record key do nothing; 100's record key
    // (INFO) records.
    let (mut b_dialog, mut a_dialog, relay_b, relay_a) = call(&daemon, &mut b, &mut a);
    b.dial(relay_b, "*1");
    assert_eq!(record_key(&mut b, &mut b_dialog, true), Some(403));
    talk(&mut a, relay_a, &mut b, relay_b, 10);
    assert_eq!(record_key(&mut a, &mut a_dialog, true), Some(200));
    talk(&mut a, relay_a, &mut b, relay_b, 25);
    assert_eq!(record_key(&mut a, &mut a_dialog, false), Some(200));
    hang_up(&mut b, &mut b_dialog, &mut a);
    let list = eventually(WAIT * 2, || {
        let l = recordings(&daemon);
        (l.len() == 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("the second recording is missing:\n{}", daemon.log_text()));
    assert_eq!(
        (json_str(&list[0], "caller"), json_str(&list[0], "by")),
        (Some("101"), Some("100")),
        "{list:?}"
    );
    // The web page lists both, plays one (the same file), and deletes one.
    let web = WebSession::log_in(&format!("https://127.0.0.1:{web_port}"), ADMIN_PASSWORD);
    let page = web.get("/voicemail");
    assert!(
        page.contains(&format!("/recordings/{id}/audio")) && page.matches("<audio").count() == 2,
        "{page}"
    );
    let served = https(
        "GET",
        &format!("{}/recordings/{id}/audio", web.base),
        &[("cookie", &web.cookie)],
        None,
    )
    .expect("the recording over HTTPS");
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("audio/wav"));
    let size = std::fs::metadata(&file)
        .expect("downloaded")
        .len()
        .to_string();
    assert_eq!(
        served.header("content-length"),
        Some(size.as_str()),
        "{:?}",
        served.header("content-length")
    );
    let other = list[0]["id"].as_u64().expect("an id");
    let csrf = web.csrf("/voicemail");
    assert_eq!(
        web.post_form(
            &format!("/recordings/{other}/delete"),
            &format!("csrf={csrf}")
        ),
        303
    );
    assert_eq!(recordings(&daemon).len(), 1);
    // Deleted with outpostctl: gone from the list and from the disk.
    let out = daemon.ctl(&["rec", "del", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(recordings(&daemon).is_empty());
    let left: Vec<_> = std::fs::read_dir(daemon.data_dir().join("recordings"))
        .expect("the recordings directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "nothing left: {left:?}");
}
