//! A real softphone against the real daemon: two headless baresip 1.0 instances (Debian
//! 12's `baresip-core`, the softphone the README names) register with outpostd in its
//! default configuration, 100 calls 101, 101 answers, and each side's microphone (a WAV
//! file: 440 Hz at 100, 1 kHz at 101) must reach the other through Outpost's RTP relay.
//!
//! baresip is driven over its `ctrl_tcp` module: netstring-framed JSON, commands
//! `{"command":"dial","params":"101","token":"…"}` answered by `{"response":true,"ok":…,
//! "token":"…"}`, and events (`{"event":true,"type":"CALL_ESTABLISHED",…}`) on the same
//! connection. Audio: the `aufile` module plays the tone as the microphone, `sndfile` dumps
//! what each phone decoded to `dump-*-dec.wav`, and `aubridge` stands in for the sound card
//! (the test machine has none).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use outpost_tests::{eventually, free_port, json_str, tone_amplitude, Daemon, Transport};

const PHONE_100: (&str, &str) = ("100", "baresip-secret-100");
const PHONE_101: (&str, &str) = ("101", "baresip-secret-101");
/// The tone each phone plays as its microphone.
const TONE_100_HZ: f64 = 440.0;
const TONE_101_HZ: f64 = 1000.0;
/// G.711 (what the relay anchors and the phones offer here) is 8 kHz mono.
const RATE: u32 = 8000;
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

    let heard_by_100 = p100.received_audio();
    let heard_by_101 = p101.received_audio();
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

/// A headless baresip registered as one extension, with its ctrl_tcp connection.
#[derive(Debug)]
struct Baresip {
    ext: String,
    child: Child,
    dir: TempDir,
    ctrl: TcpStream,
    /// Bytes read from ctrl_tcp that do not form a whole netstring yet.
    pending: Vec<u8>,
    /// Every event received so far, in order.
    events: Vec<Value>,
    next_token: u32,
}

impl Baresip {
    /// Writes the config, accounts and tone files and starts baresip; waits until its
    /// ctrl_tcp socket accepts.
    fn start(
        daemon: &Daemon,
        (ext, password): (&str, &str),
        transport: Transport,
        hz: f64,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("outpost-baresip-{ext}-"))
            .tempdir()
            .expect("create baresip dir");
        let tone = dir.path().join("microphone.wav");
        fs::write(&tone, tone_wav(hz, 10)).expect("write the tone");
        let ctrl_port = free_port();
        // RTP ports among Linux's ephemeral ones: below 32768 lie the test harness's
        // relay blocks (10000-20000) and SIP ports (20000-32000) of parallel tests.
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:0\n\
             call_max_calls 2\n\
             rtp_ports 40000-60000\n\
             audio_source aufile,{tone}\n\
             audio_player aubridge,speaker{ext}\n\
             audio_alert aubridge,speaker{ext}\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module aubridge.so\n\
             module sndfile.so\n\
             snd_path {dir}\n\
             module_tmp account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n",
            tone = tone.display(),
            dir = dir.path().display(),
        );
        fs::write(dir.path().join("config"), config).expect("write baresip config");
        let server = daemon.sip_addr();
        let transport = match transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        let account = format!(
            "<sip:{ext}@{server};transport={transport}>;auth_pass={password};answermode=auto;audio_codecs=PCMU;regint=600\n"
        );
        fs::write(dir.path().join("accounts"), account).expect("write baresip accounts");

        let log = fs::File::create(dir.path().join("baresip.log")).expect("create baresip log");
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run baresip ({e}): install Debian's baresip-core (tests/run-all does)"
                )
            });
        let ctrl_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ctrl_port));
        let ctrl = match wait_for_ctrl(ctrl_addr) {
            Ok(ctrl) => ctrl,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(dir.path().join("baresip.log")).unwrap_or_default();
                panic!("baresip {ext}: no ctrl_tcp on {ctrl_addr} ({e}):\n{log}");
            }
        };
        ctrl.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set read timeout");
        Self {
            ext: ext.to_owned(),
            child,
            dir,
            ctrl,
            pending: Vec::new(),
            events: Vec::new(),
            next_token: 0,
        }
    }

    /// Sends a ctrl_tcp command and waits for its response; panics unless it is ok.
    fn command(&mut self, command: &str, params: &str) -> Value {
        self.next_token += 1;
        let token = format!("t{}", self.next_token);
        let body = json!({"command": command, "params": params, "token": token}).to_string();
        let frame = format!("{}:{body},", body.len());
        self.ctrl
            .write_all(frame.as_bytes())
            .unwrap_or_else(|e| panic!("baresip {}: ctrl_tcp write: {e}", self.ext));
        let deadline = Instant::now() + WAIT;
        loop {
            for msg in self.read_messages(deadline) {
                if msg["response"] == json!(true) && json_str(&msg, "token") == Some(&token) {
                    assert_eq!(
                        msg["ok"],
                        json!(true),
                        "baresip {}: {command} {params:?} failed: {msg}\n{}",
                        self.ext,
                        self.log()
                    );
                    return msg;
                }
                if msg["event"] == json!(true) {
                    self.events.push(msg);
                }
            }
            assert!(
                Instant::now() < deadline,
                "baresip {}: no response to {command} within {WAIT:?}\n{}",
                self.ext,
                self.log()
            );
        }
    }

    /// Waits for an event of `kind` (received now or before); returns it.
    fn wait_event(&mut self, kind: &str, daemon: &Daemon) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| json_str(e, "type") == Some(kind))
            {
                return self.events.remove(pos);
            }
            if Instant::now() >= deadline {
                panic!(
                    "baresip {}: no {kind} within {WAIT:?}; events: {:?}\nbaresip log:\n{}\ndaemon log:\n{}",
                    self.ext,
                    self.events,
                    self.log(),
                    daemon.log_text()
                );
            }
            let messages = self.read_messages(deadline);
            self.events
                .extend(messages.into_iter().filter(|m| m["event"] == json!(true)));
        }
    }

    /// The whole netstrings that arrive within one read timeout (100 ms), parsed.
    fn read_messages(&mut self, deadline: Instant) -> Vec<Value> {
        let mut buf = [0u8; 16 * 1024];
        if Instant::now() < deadline {
            match self.ctrl.read(&mut buf) {
                Ok(0) => panic!("baresip {}: ctrl_tcp closed\n{}", self.ext, self.log()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("baresip {}: ctrl_tcp read: {e}", self.ext),
            }
        }
        let mut messages = Vec::new();
        while let Some((body, used)) = netstring(&self.pending) {
            let msg: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!(
                    "baresip {}: ctrl_tcp sent invalid JSON ({e}): {}",
                    self.ext,
                    String::from_utf8_lossy(body)
                )
            });
            messages.push(msg);
            self.pending.drain(..used);
        }
        messages
    }

    /// `quit` over ctrl_tcp (baresip un-REGISTERs and closes its recordings), then waits
    /// for the process to end; kills it if it has not within `WAIT`.
    fn quit(&mut self) {
        self.command("quit", "");
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!(
            "baresip {} still running {WAIT:?} after quit\n{}",
            self.ext,
            self.log()
        );
    }

    /// What the phone decoded from the call (its `sndfile` dump), as 16-bit samples.
    fn received_audio(&self) -> Vec<i16> {
        let path = self.dump("-dec.wav");
        let bytes =
            fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let (rate, channels, samples) =
            parse_pcm16_wav(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((rate, channels), (RATE, 1), "{}", path.display());
        samples
    }

    /// The one sndfile dump whose name ends with `suffix`.
    fn dump(&self, suffix: &str) -> PathBuf {
        let found: Vec<PathBuf> = fs::read_dir(self.dir.path())
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
            self.ext,
            self.dir.path().display(),
            self.log()
        );
        found.into_iter().next().expect("one dump")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Connects to baresip's ctrl_tcp once it listens (bounded by `WAIT`).
fn wait_for_ctrl(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The first whole netstring (`LEN:BODY,`) in `buf`: its body and the bytes it used.
fn netstring(buf: &[u8]) -> Option<(&[u8], usize)> {
    let colon = buf.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&buf[..colon]).ok()?.parse().ok()?;
    let end = colon + 1 + len;
    (buf.get(end) == Some(&b',')).then(|| (&buf[colon + 1..end], end + 1))
}

// ---------------------------------------------------------------------------------------
// Audio: the microphone file and the analysis of what was heard
// ---------------------------------------------------------------------------------------

/// A mono 16-bit 8 kHz WAV file of a `hz` sine at half of full scale, `secs` long.
fn tone_wav(hz: f64, secs: u32) -> Vec<u8> {
    let n = usize::try_from(RATE * secs).expect("a short file");
    let mut data = Vec::with_capacity(n * 2);
    for i in 0..n {
        let t = i as f64 / f64::from(RATE);
        // |value| <= 16384: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let v = (16384.0 * (2.0 * std::f64::consts::PI * hz * t).sin()).round() as i16;
        data.extend_from_slice(&v.to_le_bytes());
    }
    let data_len = u32::try_from(data.len()).expect("a short file");
    let mut wav = Vec::with_capacity(44 + data.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(&data);
    wav
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
