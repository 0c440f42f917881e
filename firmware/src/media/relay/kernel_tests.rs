//! The kernel fast path on a real kernel: three network namespaces (phone A, the box, phone
//! B) joined by veth pairs, the relay started inside the box's namespace and driven with
//! the commands the daemon sends: latching, forwarding by the kernel, strangers, routing
//! closed, counters, media timeout, take-back for music on hold, a NAT rebinding, call end;
//! music after the kernel carried a call continuing the stream the phone heard.
//! Needs root (as every test run does) and nft.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use pbx_core::media::rtp::{RtpPacket, RtpRepr};
use pbx_core::media::session::{Codec, Leg, LegMedia, MediaCommand, MediaEvent, SessionId};
use tokio::sync::mpsc as tokio_mpsc;

use super::{start_with_options, FastPathState, Relay, RelayConfig, RelayOptions};
use crate::media::prompts::PromptStore;
use crate::media::stream::KERNEL_SEQ_SLACK;

const BOX_A: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const PHONE_A: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// A stranger on phone A's network (not one of the leg's allowed addresses).
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
const BOX_B: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
const PHONE_B: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
const FIRST: u16 = 21_000;
const MEDIA_TIMEOUT: Duration = Duration::from_secs(3);
/// One RTP packet: 12-byte header and a 20 ms G.711 frame.
const PAYLOAD: usize = 160;

/// The three namespaces; deleted on drop.
struct Lab {
    a: String,
    bx: String,
    b: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            a: format!("fp{tag}a{pid}"),
            bx: format!("fp{tag}x{pid}"),
            b: format!("fp{tag}b{pid}"),
        };
        for ns in [&lab.a, &lab.bx, &lab.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        for (phone, phone_ip, box_ip, side) in
            [(&lab.a, PHONE_A, BOX_A, "a"), (&lab.b, PHONE_B, BOX_B, "b")]
        {
            sh(&[
                "ip",
                "-n",
                phone,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &format!("to{side}"),
                "netns",
                &lab.bx,
            ]);
            let (p, bx) = (format!("{phone_ip}/24"), format!("{box_ip}/24"));
            sh(&["ip", "-n", phone, "addr", "add", &p, "dev", "eth0"]);
            sh(&["ip", "-n", phone, "link", "set", "eth0", "up"]);
            if side == "a" {
                sh(&[
                    "ip",
                    "-n",
                    phone,
                    "addr",
                    "add",
                    &format!("{STRANGER}/24"),
                    "dev",
                    "eth0",
                ]);
            }
            sh(&[
                "ip",
                "-n",
                phone,
                "route",
                "add",
                "default",
                "via",
                &box_ip.to_string(),
            ]);
            sh(&[
                "ip",
                "-n",
                &lab.bx,
                "addr",
                "add",
                &bx,
                "dev",
                &format!("to{side}"),
            ]);
            sh(&[
                "ip",
                "-n",
                &lab.bx,
                "link",
                "set",
                &format!("to{side}"),
                "up",
            ]);
        }
        lab
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it makes stay in `ns`).
    fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).expect("namespace");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread")
    }

    fn socket(ns: &str, addr: SocketAddr) -> UdpSocket {
        let s = Lab::inside(ns, move || UdpSocket::bind(addr).expect("bind"));
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        s
    }

    /// `nft` in the box's namespace; stdout.
    fn nft(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.bx, "nft"])
            .args(args)
            .output()
            .expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Elements of the fast path's key map.
    fn keys(&self) -> usize {
        let (ok, out) = self.nft(&["-j", "list", "map", "ip", "outpost_rtp", "slot"]);
        assert!(ok, "the fast-path table exists");
        out.matches("\"concat\"").count()
    }

    fn ip_forward(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.bx,
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ])
            .output()
            .expect("runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.bx, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn leg(port: u16, phone: SocketAddr) -> LegMedia {
    LegMedia {
        local_port: port,
        remote: Some(phone),
        allowed_ips: vec![phone.ip()],
        codec: Codec::Pcmu,
        pt: 0,
        dtmf_pt: None,
        srtp: None,
    }
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + PAYLOAD];
    RtpRepr {
        marker: false,
        payload_type: 0,
        sequence_number: seq,
        timestamp: u32::from(seq) * 160,
        ssrc: 0x1234,
    }
    .emit(&mut buf, &[0x55; PAYLOAD])
    .expect("fits");
    buf
}

/// Sends `n` packets from `from` to `to`, paced so no socket buffer overflows.
fn send(from: &UdpSocket, to: SocketAddr, n: u16) {
    for seq in 0..n {
        from.send_to(&rtp(seq), to).expect("send");
        if seq % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Datagrams `s` receives until it is quiet (or for at most two seconds: music on hold
/// never is), with where they came from.
fn receive(s: &UdpSocket) -> Vec<SocketAddr> {
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        match s.recv_from(&mut buf) {
            Ok((_, src)) => got.push(src),
            Err(_) => break,
        }
    }
    got
}

/// `s` receives exactly `n` datagrams, every one from `from`.
fn heard(s: &UdpSocket, from: SocketAddr, n: usize) {
    let got = receive(s);
    let wrong = got.iter().filter(|&&a| a != from).count();
    assert_eq!(
        (got.len(), wrong),
        (n, 0),
        "datagrams (and from elsewhere than {from})"
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn events(rx: &mut tokio_mpsc::Receiver<MediaEvent>) -> Vec<MediaEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn directions(relay: &Relay) -> usize {
    match relay.fast_path() {
        FastPathState::On { directions } => directions,
        other => panic!("fast path not on: {other:?}"),
    }
}

fn open(relay: &Relay, session: SessionId, a_port: u16, a: SocketAddr, b: SocketAddr) {
    relay.command(MediaCommand::Open {
        session,
        a: leg(a_port, a),
        b: leg(a_port + 2, b),
    });
}

/// A relay with the fast path on, inside the lab's box.
fn fast_relay(lab: &Lab) -> Relay {
    Lab::inside(&lab.bx, || {
        start_with_options(
            RelayConfig {
                addrs: vec![IpAddr::V4(BOX_A), IpAddr::V4(BOX_B)],
                port_first: FIRST,
                port_last: FIRST + 9,
                media_timeout: MEDIA_TIMEOUT,
            },
            PromptStore::builtin(),
            RelayOptions {
                kernel_fast_path: true,
                ..RelayOptions::default()
            },
        )
        .expect("relay starts")
    })
}

/// The RTP headers `s` receives until it is quiet (two seconds at most).
fn receive_headers(s: &UdpSocket) -> Vec<RtpRepr> {
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let Ok((n, _)) = s.recv_from(&mut buf) else {
            break;
        };
        if let Ok(view) = RtpPacket::new_checked(&buf[..n]) {
            got.push(RtpRepr::parse(&view));
        }
    }
    got
}

#[test]
fn music_after_the_kernel_carried_the_call_continues_the_stream_past_what_it_forwarded() {
    let lab = Lab::new("m");
    let relay = fast_relay(&lab);
    let (a_addr, b_addr) = (
        SocketAddr::from((PHONE_A, 4000)),
        SocketAddr::from((PHONE_B, 5000)),
    );
    let phone_a = Lab::socket(&lab.a, a_addr);
    let phone_b = Lab::socket(&lab.b, b_addr);
    let (box_a, box_b) = (
        SocketAddr::from((BOX_A, FIRST)),
        SocketAddr::from((BOX_B, FIRST + 2)),
    );
    open(&relay, 1, FIRST, a_addr, b_addr);
    std::thread::sleep(Duration::from_millis(50));
    // A's phone: 20 ms packets, its timestamp on the wall clock, as a phone sends.
    let t0 = Instant::now();
    let mut seq: u16 = 60_000;
    let mut a_says = |n: u16| {
        for _ in 0..n {
            let ms = u32::try_from(t0.elapsed().as_millis()).expect("short test");
            let mut buf = rtp(seq);
            let ts = 7_000_000 + ms * 8;
            buf[4..8].copy_from_slice(&ts.to_be_bytes());
            phone_a.send_to(&buf, box_a).expect("send");
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    send(&phone_b, box_b, 5);
    a_says(5);
    wait_for("both directions in the kernel", || lab.keys() == 2);
    a_says(100);
    let forwarded = receive_headers(&phone_b);
    let last = *forwarded.last().expect("B heard A");
    assert_eq!(forwarded.len(), 105, "B heard A's 105 packets");
    let stopped = Instant::now();
    // At once (the kernel's last counts are not read yet): music on hold to B.
    relay.command(MediaCommand::Play {
        session: 1,
        leg: Leg::B,
        clips: vec!["moh".into()],
        repeat: true,
    });
    let music = receive_headers(&phone_b);
    assert!(music.len() > 20, "music: {}", music.len());
    let first = music[0];
    assert_eq!(first.ssrc, last.ssrc, "the SSRC B was hearing");
    let ahead = first.sequence_number.wrapping_sub(last.sequence_number);
    assert!(
        (1..=1 + KERNEL_SEQ_SLACK).contains(&ahead),
        "sequence {} after {}: ahead by {ahead}",
        first.sequence_number,
        last.sequence_number
    );
    #[allow(clippy::cast_possible_wrap)]
    let ts_ahead = first.timestamp.wrapping_sub(last.timestamp) as i32;
    let wall = i32::try_from(stopped.elapsed().as_millis() * 8).expect("short");
    assert!(
        ts_ahead > 0 && ts_ahead < wall + 8 * 500,
        "timestamp {} after {}: ahead by {ts_ahead}",
        first.timestamp,
        last.timestamp
    );
    for pair in music.windows(2) {
        assert_eq!(pair[1].ssrc, first.ssrc);
        assert_eq!(
            pair[1].sequence_number,
            pair[0].sequence_number.wrapping_add(1)
        );
    }
    assert_eq!(lab.keys(), 0, "the call stays in user space");
}

#[test]
fn a_latched_plain_call_is_forwarded_by_the_kernel_and_taken_back_for_a_prompt() {
    let lab = Lab::new("k");
    let mut relay = fast_relay(&lab);
    let mut rx = relay.events().expect("events");
    assert_eq!(
        lab.ip_forward(),
        "1",
        "forwarding on while the fast path runs"
    );
    let (a_addr, b_addr) = (
        SocketAddr::from((PHONE_A, 4000)),
        SocketAddr::from((PHONE_B, 5000)),
    );
    let phone_a = Lab::socket(&lab.a, a_addr);
    let phone_b = Lab::socket(&lab.b, b_addr);
    let stranger = Lab::socket(&lab.a, SocketAddr::from((STRANGER, 4000)));
    let (box_a, box_b) = (
        SocketAddr::from((BOX_A, FIRST)),
        SocketAddr::from((BOX_B, FIRST + 2)),
    );

    // Before latching, the relay (user space) forwards and latches both legs. (Until B
    // latches, the relay sends to B's SDP address from its first IPv4 address: B first.)
    open(&relay, 1, FIRST, a_addr, b_addr);
    std::thread::sleep(Duration::from_millis(50));
    send(&phone_b, box_b, 5);
    heard(&phone_a, box_a, 5);
    send(&phone_a, box_a, 5);
    heard(&phone_b, box_b, 5);
    wait_for("both directions in the kernel", || lab.keys() == 2);

    // Through the kernel: both phones hear each other from the box's ports, and the relay
    // reads nothing. (Its counters are published every second: let them catch up first.)
    std::thread::sleep(Duration::from_millis(1_200));
    let before = relay.counters().packets_received;
    assert_eq!(before, 10, "the relay read the packets that latched");
    // (In rounds the receivers' socket buffers hold.)
    for _ in 0..4 {
        send(&phone_a, box_a, 75);
        send(&phone_b, box_b, 50);
        heard(&phone_b, box_b, 75);
        heard(&phone_a, box_a, 50);
    }
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(
        relay.counters().packets_received,
        before,
        "no packet reached the relay"
    );

    // A stranger to the same port reaches the relay and is dropped there.
    send(&stranger, box_a, 7);
    assert!(
        receive(&phone_b).is_empty(),
        "the stranger is not forwarded"
    );
    // Nor does the box route anything else: A straight to B's address.
    send(&phone_a, b_addr, 5);
    assert!(receive(&phone_b).is_empty(), "the box is no router");

    // The legs' counters: user space's and the kernel's, as sent.
    let rtp_bytes = (12 + PAYLOAD) as u64;
    wait_for("kernel counts in the stats", || {
        relay
            .stats(1)
            .is_some_and(|(a, b)| a.packets_in == 305 && b.packets_in == 205 && a.dropped == 7)
    });
    let (a, b) = relay.stats(1).expect("stats");
    assert_eq!(
        (a.bytes_in, a.packets_out, a.bytes_out),
        (305 * rtp_bytes, 205, 205 * rtp_bytes)
    );
    assert_eq!(
        (b.bytes_in, b.packets_out, b.bytes_out),
        (205 * rtp_bytes, 305, 305 * rtp_bytes)
    );
    assert_eq!(directions(&relay), 2);

    // Media kept flowing through the kernel for longer than the media timeout: no timeout.
    let end = Instant::now() + MEDIA_TIMEOUT + Duration::from_secs(1);
    let mut a_sent = 305;
    while Instant::now() < end {
        send(&phone_a, box_a, 1);
        a_sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = receive(&phone_b);
    assert!(
        !events(&mut rx)
            .iter()
            .any(|e| matches!(e, MediaEvent::Timeout { .. })),
        "media through the kernel keeps the call alive"
    );

    // A NAT rebinding: phone A's source port changes after a second of silence. Its packets
    // no longer match, reach the relay, which re-latches and replaces the call's elements.
    // (The kernel's counts, read every second, make the old source heard until the read
    // after its last packet: the silence starts there.)
    std::thread::sleep(Duration::from_millis(2_400));
    let moved = SocketAddr::from((PHONE_A, 4002));
    let phone_a2 = Lab::socket(&lab.a, moved);
    send(&phone_a2, box_a, 5);
    heard(&phone_b, box_b, 5);
    wait_for("the new source in the kernel", || {
        lab.keys() == 2
            && lab
                .nft(&["list", "map", "ip", "outpost_rtp", "slot"])
                .1
                .contains("10.77.1.2 . 4002 . 21000")
    });
    send(&phone_a2, box_a, 50);
    heard(&phone_b, box_b, 50);
    send(&phone_b, box_b, 5);
    heard(&phone_a2, box_a, 5);
    a_sent += 55;

    // Music on hold to B: the call goes back to user space; B hears the prompt, A still
    // hears B.
    relay.command(MediaCommand::Play {
        session: 1,
        leg: Leg::B,
        clips: vec!["moh".into()],
        repeat: true,
    });
    wait_for("the call taken back", || lab.keys() == 0);
    let before = relay.counters().packets_received;
    send(&phone_b, box_b, 20);
    heard(&phone_a2, box_a, 20);
    let music = receive(&phone_b);
    assert!(
        music.len() > 20 && music.iter().all(|&a| a == box_b),
        "B hears the music from the box: {}",
        music.len()
    );
    std::thread::sleep(Duration::from_millis(1_200));
    assert!(
        relay.counters().packets_received >= before + 20,
        "through the relay"
    );
    relay.command(MediaCommand::StopPlay {
        session: 1,
        leg: Leg::B,
    });
    let _ = receive(&phone_b);
    // B's stream was renumbered to continue the music (one SSRC, see `media::stream`): the
    // kernel cannot add offsets, so the call stays in user space, A's audio reaching B.
    send(&phone_a2, box_a, 5);
    heard(&phone_b, box_b, 5);
    a_sent += 5;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.keys(), 0, "a renumbered call stays in user space");

    // Call end: every element goes, and the final stats carry the kernel's counts (read
    // just before the elements went).
    send(&phone_b, box_b, 10);
    let _ = receive(&phone_a);
    let _ = events(&mut rx);
    relay.command(MediaCommand::Close { session: 1 });
    wait_for("no element left", || lab.keys() == 0);
    let mut fin = None;
    wait_for("the final stats", || {
        fin = events(&mut rx).into_iter().find_map(|e| match e {
            MediaEvent::Stats { session: 1, a, b } => Some((a, b)),
            _ => None,
        });
        fin.is_some()
    });
    let (a, b) = fin.expect("stats");
    assert_eq!(
        (a.packets_in, a.packets_out),
        (a_sent, 240),
        "A's final counters"
    );
    assert_eq!(b.packets_in, 240, "B's final counters");
    // B's output also counts the music frames the relay played to it.
    assert!(b.packets_out >= a_sent + music.len() as u64, "{b:?}");
    for map in ["daddr", "dport", "saddr", "sport"] {
        let (_, out) = lab.nft(&["-j", "list", "map", "ip", "outpost_rtp", map]);
        assert!(!out.contains("\"elem\""), "{map} is empty: {out}");
    }

    // Silence past the media timeout while in the kernel ends the call.
    open(&relay, 2, FIRST + 4, a_addr, b_addr);
    std::thread::sleep(Duration::from_millis(50));
    send(&phone_b, SocketAddr::from((BOX_B, FIRST + 6)), 3);
    send(&phone_a, SocketAddr::from((BOX_A, FIRST + 4)), 3);
    wait_for("call 2 in the kernel", || lab.keys() == 2);
    let _ = events(&mut rx);
    let silent = Instant::now();
    wait_for("the media timeout", || {
        events(&mut rx)
            .iter()
            .any(|e| matches!(e, MediaEvent::Timeout { session: 2 }))
    });
    assert!(silent.elapsed() >= MEDIA_TIMEOUT - Duration::from_millis(500));

    // The relay's end removes the table and turns forwarding off again.
    relay.shutdown();
    assert!(
        !lab.nft(&["list", "table", "ip", "outpost_rtp"]).0,
        "table removed"
    );
    assert_eq!(lab.ip_forward(), "0");
}
