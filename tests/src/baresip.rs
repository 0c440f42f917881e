//! A headless baresip (Debian 12's `baresip-core`) registered as one extension, driven
//! over its `ctrl_tcp` module: netstring-framed JSON commands
//! (`{"command":"dial","params":"101","token":"…"}`) answered by `{"response":true,"ok":…,
//! "token":"…"}`, and events (`{"event":true,"type":"CALL_ESTABLISHED",…}`) on the same
//! connection. The microphone is a tone file (`aufile`), `sndfile` dumps what the phone
//! decoded into its directory, `aubridge` stands in for the sound card. Used by the
//! softphone and busy-lamp tests.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::{free_port, json_str, Daemon, Transport};

/// Upper bound of every wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(5);
/// G.711 (what the relay anchors and the phones offer) is 8 kHz mono.
pub const RATE: u32 = 8000;

/// What a phone has beyond the plain softphone: more application modules (e.g.
/// `contact.so`, `presence.so`) and address-book lines (e.g. `<sip:201@host>;presence=p2p`).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Application modules (`module_app`) loaded after the standard ones.
    pub modules: Vec<String>,
    /// Lines of the `contacts` file.
    pub contacts: Vec<String>,
}

/// A headless baresip registered as one extension, with its ctrl_tcp connection.
#[derive(Debug)]
pub struct Baresip {
    /// The extension it registers as.
    pub ext: String,
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
    pub fn start(daemon: &Daemon, account: (&str, &str), transport: Transport, hz: f64) -> Self {
        Self::start_with(daemon, account, transport, hz, &Extras::default())
    }

    /// Like [`Baresip::start`], with `extras`.
    pub fn start_with(
        daemon: &Daemon,
        (ext, password): (&str, &str),
        transport: Transport,
        hz: f64,
        extras: &Extras,
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
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n{extra_modules}",
            tone = tone.display(),
            dir = dir.path().display(),
            extra_modules = extras
                .modules
                .iter()
                .map(|m| format!("module_app {m}\n"))
                .collect::<String>(),
        );
        let contacts: String = extras.contacts.iter().map(|c| format!("{c}\n")).collect();
        fs::write(dir.path().join("contacts"), contacts).expect("write baresip contacts");
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
    pub fn command(&mut self, command: &str, params: &str) -> Value {
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
    pub fn wait_event(&mut self, kind: &str, daemon: &Daemon) -> Value {
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
    pub fn quit(&mut self) {
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

    /// Its directory (config, log, sndfile dumps).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
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

/// A mono 16-bit 8 kHz WAV file of a `hz` sine at half of full scale, `secs` long.
pub fn tone_wav(hz: f64, secs: u32) -> Vec<u8> {
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
