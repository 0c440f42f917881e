//! A real softphone against the real daemon: two headless baresip 1.0 instances (Debian
//! 12's `baresip-core`, the softphone the README names) register with outpostd in its
//! default configuration, 100 calls 101, 101 answers, and each side's microphone (a WAV
//! file: 440 Hz at 100, 1 kHz at 101) must reach the other through Outpost's RTP relay.
//!
//! baresip is driven over its `ctrl_tcp` module ([`outpost_tests::baresip`]). Audio: the
//! `aufile` module plays the tone as the microphone, `sndfile` dumps what each phone decoded
//! to `dump-*-dec.wav`, and `aubridge` stands in for the sound card (the test machine has
//! none).
//!
//! Three phones: 101 blind-transfers 100 to 102 with its transfer key, and parks 100 with
//! a transfer to `*70` for 102 to take from orbit 701; 100 and 102 must hear each other.
//! And two baresip phones in a conference made by a third phone (`*3`): each hears the
//! two others.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use outpost_tests::baresip::{Baresip, RATE};
use outpost_tests::{
    eventually, json_str, recv_ulaw, send_ulaw_tone, tone_amplitude, AudioPhone, Daemon, Transport,
};

const PHONE_100: (&str, &str) = ("100", "baresip-secret-100");
const PHONE_101: (&str, &str) = ("101", "baresip-secret-101");
/// The tone each phone plays as its microphone.
const TONE_100_HZ: f64 = 440.0;
const TONE_101_HZ: f64 = 1000.0;
/// Upper bound of every wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// Audio exchanged before hanging up, as counted by the relay (50 packets a second).
const PACKETS_EACH_WAY: u64 = 100;
/// Each recording must hold at least this much of the other side's tone.
const MIN_TONE_SECS: f64 = 1.0;

#[test]
fn two_baresip_phones_register_call_and_hear_each_other_over_udp() {
    call_and_check_audio(Transport::Udp);
}

#[test]
fn a_baresip_phone_on_tcp_calls_one_on_udp_and_both_hear_each_other() {
    call_and_check_audio(Transport::Tcp);
}

/// Phone 100 on `transport_100`, phone 101 on UDP: register, call, tones both ways,
/// hang-up, CDR, un-REGISTER at exit.
fn call_and_check_audio(transport_100: Transport) {
    let daemon = Daemon::start();
    daemon.add_extension(PHONE_100.0, PHONE_100.1);
    daemon.add_extension(PHONE_101.0, PHONE_101.1);
    let mut p100 = Baresip::start(&daemon, PHONE_100, transport_100, TONE_100_HZ);
    let mut p101 = Baresip::start(&daemon, PHONE_101, Transport::Udp, TONE_101_HZ);

    // Registration, with the daemon's default digest.
    for (phone, transport) in [(&p100, transport_100), (&p101, Transport::Udp)] {
        let reg = eventually(WAIT, || daemon.registrations_of(&phone.ext).into_iter().next())
            .unwrap_or_else(|| {
                panic!(
                    "baresip {} did not register within {WAIT:?}; reg list: {:?}\nbaresip log:\n{}\ndaemon log:\n{}",
                    phone.ext,
                    daemon.registrations(),
                    phone.log(),
                    daemon.log_text()
                )
            });
        let expected = match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        };
        assert_eq!(json_str(&reg, "transport"), Some(expected), "{reg}");
        assert!(
            json_str(&reg, "user_agent").is_some_and(|ua| ua.starts_with("baresip")),
            "{reg}"
        );
    }

    // 100 dials 101 as a user would; 101 answers on its own (answermode=auto).
    p100.command("dial", PHONE_101.0);
    p100.wait_event("CALL_ESTABLISHED", &daemon);
    p101.wait_event("CALL_ESTABLISHED", &daemon);

    // Audio both ways through the relay: its counters, on both legs.
    let media = eventually(WAIT, || {
        let calls = daemon.calls();
        let media = calls.first()?.get("media")?.clone();
        ["a", "b"]
            .iter()
            .all(|leg| {
                counter(&media, leg, "packets_in") >= PACKETS_EACH_WAY
                    && counter(&media, leg, "packets_out") >= PACKETS_EACH_WAY
            })
            .then_some(media)
    })
    .unwrap_or_else(|| {
        panic!(
            "the relay never counted {PACKETS_EACH_WAY} packets each way; calls: {:?}\n100:\n{}\n101:\n{}",
            daemon.calls(),
            p100.log(),
            p101.log()
        )
    });
    assert_eq!(json_str(&media, "codec_a"), Some("PCMU"), "{media}");
    assert_eq!(json_str(&media, "codec_b"), Some("PCMU"), "{media}");

    p100.command("hangup", "");
    p100.wait_event("CALL_CLOSED", &daemon);
    p101.wait_event("CALL_CLOSED", &daemon);
    let cdrs = daemon.wait_cdrs(1, WAIT);
    assert_eq!(cdrs.len(), 1, "{cdrs:?}");
    let cdr = &cdrs[0];
    assert_eq!(json_str(cdr, "disposition"), Some("answered"), "{cdr}");
    assert_eq!(json_str(cdr, "caller"), Some(PHONE_100.0), "{cdr}");
    assert_eq!(json_str(cdr, "callee"), Some(PHONE_101.0), "{cdr}");
    assert!(cdr["answer"].as_u64().is_some(), "{cdr}");

    // Quitting closes the recordings and un-REGISTERs.
    p100.quit();
    p101.quit();
    let left = eventually(WAIT, || {
        let regs = daemon.registrations();
        regs.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "bindings left after both phones quit: {:?}",
        daemon.registrations()
    );

    let heard_by_100 = received_audio(&p100);
    let heard_by_101 = received_audio(&p101);
    let at_100 = ToneCheck::of(&heard_by_100, TONE_101_HZ, TONE_100_HZ);
    let at_101 = ToneCheck::of(&heard_by_101, TONE_100_HZ, TONE_101_HZ);
    eprintln!("baresip 100 ({transport_100:?}) heard: {at_100}");
    eprintln!("baresip 101 (Udp) heard: {at_101}");
    at_100.assert_heard("100");
    at_101.assert_heard("101");
}

fn counter(media: &Value, leg: &str, name: &str) -> u64 {
    media[leg][name].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// One baresip process with its own configuration directory
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// Audio: the microphone file and the analysis of what was heard
// ---------------------------------------------------------------------------------------

/// What the phone decoded from the call (its `sndfile` dump), as 16-bit samples.
const PHONE_102: (&str, &str) = ("102", "baresip-secret-102");
const TONE_102_HZ: f64 = 700.0;

/// A daemon and three baresip phones registered (100, 101, 102); 100 has called 101 and
/// both see the call established.
fn three_phones_100_calling_101() -> (Daemon, [Baresip; 3]) {
    let daemon = Daemon::start();
    for (ext, pw) in [PHONE_100, PHONE_101, PHONE_102] {
        daemon.add_extension(ext, pw);
    }
    let mut phones = [
        Baresip::start(&daemon, PHONE_100, Transport::Udp, TONE_100_HZ),
        Baresip::start(&daemon, PHONE_101, Transport::Udp, TONE_101_HZ),
        Baresip::start(&daemon, PHONE_102, Transport::Udp, TONE_102_HZ),
    ];
    for phone in &phones {
        let ext = phone.ext.clone();
        eventually(WAIT, || daemon.registrations_of(&ext).into_iter().next())
            .unwrap_or_else(|| panic!("baresip {ext} did not register:\n{}", phone.log()));
    }
    phones[0].command("dial", PHONE_101.0);
    phones[0].wait_event("CALL_ESTABLISHED", &daemon);
    phones[1].wait_event("CALL_ESTABLISHED", &daemon);
    (daemon, phones)
}

/// 102 heard 100's tone; 100 heard 102's in its last two seconds (after 101's).
fn assert_100_and_102_heard_each_other(p100: &Baresip, p102: &Baresip) {
    let at_102 = ToneCheck::of(&received_audio(p102), TONE_100_HZ, TONE_102_HZ);
    eprintln!("baresip 102 heard: {at_102}");
    at_102.assert_heard("102");
    let heard_by_100 = received_audio(p100);
    let tail = &heard_by_100[heard_by_100.len().saturating_sub(2 * RATE as usize)..];
    let at_100 = ToneCheck::of(tail, TONE_102_HZ, TONE_100_HZ);
    eprintln!("baresip 100 heard at the end: {at_100}");
    at_100.assert_heard("100");
}

/// A real phone's transfer key (baresip's `transfer`, a blind REFER) against the box:
/// 101 answers 100 and transfers it to 102; baresip follows the REFER's NOTIFYs (Trying,
/// Ringing, OK) and leaves; 100 and 102 then hear each other's tones through the relay.
#[test]
fn a_baresip_phone_blind_transfers_its_caller_and_the_two_others_hear_each_other() {
    let (daemon, [mut p100, mut p101, mut p102]) = three_phones_100_calling_101();
    std::thread::sleep(Duration::from_secs(1));
    // 101 presses its transfer key: blind transfer to 102.
    p101.command("transfer", PHONE_102.0);
    p102.wait_event("CALL_ESTABLISHED", &daemon);
    p101.wait_event("CALL_CLOSED", &daemon);
    let answered = eventually(WAIT, || {
        let calls = daemon.calls();
        let c = calls.first()?;
        (json_str(c, "callee") == Some(PHONE_102.0) && json_str(c, "state") == Some("answered"))
            .then(|| c.clone())
    });
    assert!(answered.is_some(), "{:?}", daemon.calls());
    std::thread::sleep(Duration::from_secs(3));
    p100.command("hangup", "");
    p100.wait_event("CALL_CLOSED", &daemon);
    p102.wait_event("CALL_CLOSED", &daemon);
    // The records: 100 with 101 until the transfer, then 100 with 102 (by 101).
    let cdrs = daemon.wait_cdrs(2, WAIT);
    let legs: Vec<(Option<&str>, Option<&str>)> = cdrs
        .iter()
        .rev()
        .map(|c| (json_str(c, "callee"), json_str(c, "disposition")))
        .collect();
    assert_eq!(
        legs,
        [
            (Some("101"), Some("transferred")),
            (Some("102"), Some("answered"))
        ],
        "{cdrs:#?}"
    );
    for p in [&mut p100, &mut p101, &mut p102] {
        p.quit();
    }
    // 102 heard 100; 100 heard 101, then 102 for seconds.
    assert_100_and_102_heard_each_other(&p100, &p102);
}

/// Park with a real phone: 101 transfers its caller to the park code `*70`; 100 waits in
/// orbit 701 hearing music; 102 dials 701 and the two hear each other.
#[test]
fn a_baresip_phone_parks_its_caller_and_another_takes_it_from_the_orbit() {
    let (daemon, [mut p100, mut p101, mut p102]) = three_phones_100_calling_101();
    p101.command("transfer", "*70");
    p101.wait_event("CALL_CLOSED", &daemon);
    let parked = eventually(WAIT, || {
        let calls = daemon.calls();
        (calls.len() == 1 && json_str(&calls[0], "state") == Some("parked on 701")).then_some(())
    });
    assert!(parked.is_some(), "{:?}", daemon.calls());
    std::thread::sleep(Duration::from_secs(1));
    p102.command("dial", "701");
    p102.wait_event("CALL_ESTABLISHED", &daemon);
    std::thread::sleep(Duration::from_secs(3));
    p102.command("hangup", "");
    p102.wait_event("CALL_CLOSED", &daemon);
    p100.wait_event("CALL_CLOSED", &daemon);
    for p in [&mut p100, &mut p101, &mut p102] {
        p.quit();
    }
    assert_100_and_102_heard_each_other(&p100, &p102);
}

/// Real phones in a conference: a raw phone (100) calls baresip 101, then baresip 102 (two
/// calls at once, as a phone's second line), and dials `*3`. Outpost mixes the three: 100
/// hears both baresip tones and not its own; each baresip phone's recording ends with
/// 100's tone and the other phone's, not its own. (Holding a party first is checked with
/// raw phones in `conference.rs`: this harness's baresip stops decoding into its dump at
/// any re-INVITE that restarts its audio player, a held and resumed plain call included.)
#[test]
fn two_baresip_phones_in_a_conference_hear_each_other_and_the_phone_that_made_it() {
    const TONE_HOST_HZ: f64 = 440.0;
    let daemon = Daemon::start();
    for (ext, pw) in [PHONE_101, PHONE_102] {
        daemon.add_extension(ext, pw);
    }
    let mut p101 = Baresip::start(&daemon, PHONE_101, Transport::Udp, TONE_101_HZ);
    let mut p102 = Baresip::start(&daemon, PHONE_102, Transport::Udp, TONE_102_HZ);
    for phone in [&p101, &p102] {
        let ext = phone.ext.clone();
        eventually(WAIT, || daemon.registrations_of(&ext).into_iter().next())
            .unwrap_or_else(|| panic!("baresip {ext} did not register:\n{}", phone.log()));
    }
    let mut host = AudioPhone::new(&daemon, "100");
    let inv = host.sip.invite(PHONE_101.0, &host.sdp());
    host.sip.await_answer(&inv, WAIT).expect("101 answers");
    p101.wait_event("CALL_ESTABLISHED", &daemon);
    let inv = host.sip.invite(PHONE_102.0, &host.sdp());
    host.sip.await_answer(&inv, WAIT).expect("102 answers");
    p102.wait_event("CALL_ESTABLISHED", &daemon);
    let (_conf, relay) = host.call(&daemon, "*3");
    let joined = eventually(WAIT, || {
        let calls = daemon.calls();
        (calls.len() == 3
            && calls
                .iter()
                .all(|c| json_str(c, "state") == Some("in conference (3 parties)")))
        .then_some(())
    });
    assert!(joined.is_some(), "{:?}", daemon.calls());
    // 100 talks for 3 s and listens meanwhile.
    let heard = std::thread::scope(|s| {
        let listener = s.spawn(|| recv_ulaw(&host.rtp, Duration::from_millis(3_000)));
        send_ulaw_tone(&host.rtp, relay, TONE_HOST_HZ, 150, 0x0100);
        listener.join().expect("listener").0
    });
    let steady = &heard[heard.len() / 3..];
    let at_host = [TONE_101_HZ, TONE_102_HZ, TONE_HOST_HZ].map(|hz| amplitude(steady, hz));
    eprintln!("100 heard 1000 Hz, 700 Hz, its own 440 Hz: {at_host:.3?}");
    assert!(at_host[0] > 0.15 && at_host[1] > 0.15, "{at_host:?}");
    assert!(at_host[2] < 0.02, "100 hears itself: {at_host:?}");
    for p in [&mut p101, &mut p102] {
        p.command("hangup", "");
        p.wait_event("CALL_CLOSED", &daemon);
    }
    for p in [&mut p101, &mut p102] {
        p.quit();
    }
    // Each baresip phone's last 1.5 s before its hang-up (100 stopped talking then, so
    // the window ends 0.3 s earlier): 100's tone and the other's, not its own.
    for (p, own, other) in [
        (&p101, TONE_101_HZ, TONE_102_HZ),
        (&p102, TONE_102_HZ, TONE_101_HZ),
    ] {
        let x: Vec<f64> = received_audio(p)
            .iter()
            .map(|&v| f64::from(v) / 32768.0)
            .collect();
        let end = x.len().saturating_sub(3 * RATE as usize / 10);
        let tail = &x[end.saturating_sub(3 * RATE as usize / 2)..end];
        let amps = [TONE_HOST_HZ, other, own].map(|hz| amplitude(tail, hz));
        eprintln!(
            "baresip {} heard 440 Hz, {other} Hz, its own {own} Hz: {amps:.3?}",
            p.ext
        );
        assert!(
            amps[1] > 0.15,
            "{} does not hear the other phone: {amps:?}",
            p.ext
        );
        assert!(amps[2] < 0.02, "{} hears itself: {amps:?}", p.ext);
    }
}

fn received_audio(phone: &Baresip) -> Vec<i16> {
    let path = dump(phone, "-dec.wav");
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (rate, channels, samples) =
        parse_pcm16_wav(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!((rate, channels), (RATE, 1), "{}", path.display());
    samples
}

/// The one sndfile dump whose name ends with `suffix`.
fn dump(phone: &Baresip, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(phone.dir())
        .expect("read baresip dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dump-") && n.ends_with(suffix))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "baresip {}: expected one *{suffix} dump in {}, found {found:?}\n{}",
        phone.ext,
        phone.dir().display(),
        phone.log()
    );
    found.into_iter().next().expect("one dump")
}

/// Rate, channels and samples of a 16-bit PCM WAV file.
fn parse_pcm16_wav(bytes: &[u8]) -> Result<(u32, u16, Vec<i16>), String> {
    if bytes.get(..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err("no RIFF/WAVE header".to_owned());
    }
    let le16 = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let le32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 12;
    let mut format = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = usize::try_from(le32(at + 4).ok_or("truncated chunk")?).map_err(|_| "huge")?;
        let body = at + 8;
        match id {
            b"fmt " => {
                let (tag, channels) = (
                    le16(body).ok_or("short fmt")?,
                    le16(body + 2).ok_or("short fmt")?,
                );
                let (rate, bits) = (
                    le32(body + 4).ok_or("short fmt")?,
                    le16(body + 14).ok_or("short fmt")?,
                );
                if tag != 1 || bits != 16 {
                    return Err(format!("format {tag}, {bits} bits: not 16-bit PCM"));
                }
                format = Some((rate, channels));
            }
            b"data" => {
                let (rate, channels) = format.ok_or("data before fmt")?;
                let data = bytes
                    .get(body..body + len)
                    .ok_or("data chunk runs past the end")?;
                let samples = data
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]]))
                    .collect();
                return Ok((rate, channels, samples));
            }
            _ => {}
        }
        at = body + len + len % 2;
    }
    Err("no data chunk".to_owned())
}

/// How much of a tone a recording holds, measured in 50 ms frames (an exact number of
/// periods of both test tones) with the Goertzel algorithm.
#[derive(Debug)]
struct ToneCheck {
    expected_hz: f64,
    /// The strongest frequency of the whole recording (10 Hz steps, 100..3900 Hz).
    dominant_hz: f64,
    /// Frames in which the expected tone carries at least 90 % of the energy at a
    /// level a listener hears (above -20 dBFS).
    tone_secs: f64,
    /// Mean amplitude of the expected tone over those frames, in dBFS.
    level_dbfs: f64,
    /// The phone's own tone coming back, over the whole recording, in dBFS.
    own_tone_dbfs: f64,
    recording_secs: f64,
}

const FRAME: usize = 400;

impl ToneCheck {
    fn of(samples: &[i16], expected_hz: f64, own_hz: f64) -> Self {
        let x: Vec<f64> = samples.iter().map(|&s| f64::from(s) / 32768.0).collect();
        let dominant_hz = (10..=390)
            .map(|step| f64::from(step) * 10.0)
            .map(|hz| (hz, amplitude(&x, hz)))
            .fold(
                (0.0, -1.0),
                |best, cur| if cur.1 > best.1 { cur } else { best },
            )
            .0;
        let mut tone_frames = 0usize;
        let mut level_sum = 0.0;
        for frame in x.chunks_exact(FRAME) {
            let a = amplitude(frame, expected_hz);
            let energy: f64 = frame.iter().map(|v| v * v).sum();
            let tone_energy = a * a / 2.0 * frame.len() as f64;
            if a >= 0.1 && tone_energy >= 0.9 * energy {
                tone_frames += 1;
                level_sum += a;
            }
        }
        let frame_secs = FRAME as f64 / f64::from(RATE);
        Self {
            expected_hz,
            dominant_hz,
            tone_secs: tone_frames as f64 * frame_secs,
            level_dbfs: if tone_frames == 0 {
                f64::NEG_INFINITY
            } else {
                dbfs(level_sum / tone_frames as f64)
            },
            own_tone_dbfs: dbfs(amplitude(&x, own_hz)),
            recording_secs: x.len() as f64 / f64::from(RATE),
        }
    }

    fn assert_heard(&self, ext: &str) {
        assert!(
            (self.dominant_hz - self.expected_hz).abs() <= 10.0,
            "{ext} did not hear the other side's {} Hz tone: {self}",
            self.expected_hz
        );
        assert!(
            self.tone_secs >= MIN_TONE_SECS,
            "{ext} heard under {MIN_TONE_SECS} s of the other side's tone: {self}"
        );
        // Sent at -6 dBFS; G.711 keeps the level.
        assert!(
            (-9.0..=-3.0).contains(&self.level_dbfs),
            "{ext} heard the tone at the wrong level: {self}"
        );
        assert!(
            self.own_tone_dbfs < -40.0,
            "{ext} hears its own tone back: {self}"
        );
    }
}

impl std::fmt::Display for ToneCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s recorded, dominant {:.0} Hz, {:.2} s of {:.0} Hz at {:.1} dBFS, own tone {:.1} dBFS",
            self.recording_secs,
            self.dominant_hz,
            self.tone_secs,
            self.expected_hz,
            self.level_dbfs,
            self.own_tone_dbfs
        )
    }
}

/// Amplitude of the `hz` component of `x`, sampled at [`RATE`].
fn amplitude(x: &[f64], hz: f64) -> f64 {
    tone_amplitude(x, hz, f64::from(RATE))
}

fn dbfs(amplitude: f64) -> f64 {
    20.0 * amplitude.max(1e-9).log10()
}
