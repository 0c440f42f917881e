//! The firmware image booted under qemu-system-aarch64 (issue 8): `outpost-image build`
//! makes a test image (the appliance configuration plus two `[demo]` extensions whose
//! generated passwords the daemon prints on the serial console, MD5 offered first for SIPp,
//! a small relay port range, and an admin SSH key), qemu boots it once with two user-mode
//! NICs and host port forwards, and the host then, in one boot:
//! - talks SIP to the guest (OPTIONS, a SIPp REGISTER);
//! - logs in over SSH with the baked key (`status`, `fw status`);
//! - makes a call between two raw-UDP phones with RTP both ways through the guest's relay;
//! - attacks the guest's SIP port through the second NIC (a password-guessing burst from
//!   10.0.3.2) and sees, over SSH through the first NIC, the attacker banned in the guest's
//!   kernel while SIP through the first NIC still works.
//!
//! With user-mode networking everything the host sends through a NIC's forwards comes from
//! that network's host address (10.0.2.2 for the first, 10.0.3.2 for the second): banning
//! the attacker on the first NIC would also cut SSH, hence the second NIC. Every wait is
//! bounded and qemu is killed when the test ends.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::qemu::{ssh_keypair, Boot, Guest, ImageSpec, BOOT_TIMEOUT, NIC2_HOST};
use outpost_tests::{
    body_of, digest_authorization, eventually, free_port, header_value, options_status, parse_rtp,
    register_request, rtp_packet, run_with_timeout, scenario, sdp_audio, sdp_body, status_of,
    udp_recv, SipPhone, Transport,
};

/// The relay range of the test image: small, so that every port can be forwarded.
const RELAY_FIRST: u16 = 10_000;
/// Last port of the relay range (four even/odd pairs: two calls).
const RELAY_LAST: u16 = 10_007;
/// The guest's address on its first NIC (qemu's user-mode DHCP hands out .15).
const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Longest one SSH command may take (key exchange on an emulated CPU is slow).
const SSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Logins tried before the key must work (fewer than the firewall's 10 failures).
const SSH_TRIES: u32 = 6;
/// RTP packets each phone sends (20 ms apart).
const RTP_PACKETS: u16 = 250;
/// Media must flow within this many packets: the guest opens the relay ports in its kernel
/// with an `nft` run, which takes a while on an emulated CPU.
const RTP_START_WITHIN: u16 = 150;
/// Marker at the start of every test RTP payload, followed by the sender and the number.
const RTP_MARK: &[u8; 10] = b"outpost-rt";
/// Packets the attacker sends while banned; the kernel must count every one.
const BANNED_BURST: u64 = 50;

/// Builds the test image into target/image-test with the admin key `ssh_pub` baked in;
/// returns its directory and the build time.
fn build_image(ssh_pub: &Path) -> (PathBuf, Duration) {
    let mut spec = ImageSpec::new(
        "image-test",
        &format!(
            "[demo]\nextensions = [\"100\", \"101\"]\n\n\
             [auth]\nalgorithms = [\"MD5\", \"SHA-256\"]\n\n\
             [media]\nport_first = {RELAY_FIRST}\nport_last = {RELAY_LAST}\n"
        ),
    );
    spec.args = vec!["--ssh-key".to_owned(), ssh_pub.display().to_string()];
    let took = spec.build();
    (spec.out, took)
}

/// An OPTIONS request from `local`; the first line of the answer, if one came in `wait`.
fn options(sock: &UdpSocket, target_port: u16, n: u32, wait: Duration) -> Option<String> {
    let local = sock.local_addr().expect("local address");
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{target_port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-image-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=image{n}\r\n\
         To: <sip:127.0.0.1:{target_port}>\r\n\
         Call-ID: image-options-{n}@127.0.0.1\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), ("127.0.0.1", target_port))
        .expect("send OPTIONS");
    sock.set_read_timeout(Some(wait)).expect("set timeout");
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .map(str::to_owned)
}

/// The password the daemon printed on the console for demo extension `ext`.
fn demo_password(console: &str, ext: &str) -> String {
    let needle = format!("demo extension {ext}: password ");
    console
        .lines()
        .find_map(|l| l.split(needle.as_str()).nth(1))
        .map(|p| p.trim().to_owned())
        .unwrap_or_else(|| panic!("no password of demo extension {ext} on the console"))
}

/// Runs `command` over SSH and asserts it succeeds; returns its standard output.
fn ssh_ok(guest: &Guest, key: &Path, command: &str) -> String {
    let out = guest.ssh(key, command, None, SSH_TIMEOUT);
    assert!(
        out.code == Some(0),
        "ssh admin@guest {command:?} failed: {out:?}\n--- console ---\n{}",
        guest.console()
    );
    out.stdout
}

/// Runs `command --json` over SSH and parses its output.
fn ssh_json(guest: &Guest, key: &Path, command: &str) -> Value {
    let stdout = ssh_ok(guest, key, &format!("{command} --json"));
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("`{command} --json` printed invalid JSON ({e}):\n{stdout}"))
}

/// The first value of `key` anywhere in `v` (depth first).
fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => o
            .get(key)
            .or_else(|| o.values().find_map(|inner| find_key(inner, key))),
        Value::Array(items) => items.iter().find_map(|inner| find_key(inner, key)),
        _ => None,
    }
}

/// The `fw bans --json` entry of `ip` (its address under `addr`, `address`, `ip` or
/// `source`, with or without a prefix length).
fn ban_of(bans: &Value, ip: IpAddr) -> Option<Value> {
    let list = match bans {
        Value::Array(items) => items.as_slice(),
        Value::Object(o) => o.get("bans").and_then(Value::as_array)?.as_slice(),
        _ => return None,
    };
    list.iter()
        .find(|entry| {
            ["addr", "address", "ip", "source"].iter().any(|k| {
                entry[*k]
                    .as_str()
                    .and_then(|s| s.split('/').next())
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    == Some(ip)
            })
        })
        .cloned()
}

/// The guest kernel's count of packets dropped because their source is banned
/// (`fw status`: kernel.counters.banned_packets; `None` until the daemon has read them).
fn kernel_banned_packets(guest: &Guest, key: &Path) -> Option<u64> {
    let status = ssh_json(guest, key, "fw status");
    find_key(&status, "banned_packets").and_then(Value::as_u64)
}

/// What one phone received from the other.
#[derive(Debug, Default)]
struct Heard {
    /// Numbers (in the payload) of the packets received, each once.
    numbers: std::collections::BTreeSet<u16>,
}

impl Heard {
    /// Reads every datagram waiting on `sock`; counts the RTP ones from `sender`.
    fn drain(&mut self, sock: &UdpSocket, sender: u8) {
        let mut buf = [0u8; 2048];
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            let Some(p) = parse_rtp(&buf[..len]) else {
                continue;
            };
            let ours = p.pt == 0 && p.payload.len() == 160 && p.payload.starts_with(RTP_MARK);
            if ours && p.payload[10] == sender {
                self.numbers
                    .insert(u16::from_be_bytes([p.payload[11], p.payload[12]]));
            }
        }
    }

    /// The first number heard and how many of those sent from it on were heard.
    fn figures(&self) -> Option<(u16, usize, usize)> {
        let first = *self.numbers.first()?;
        Some((first, self.numbers.len(), usize::from(RTP_PACKETS - first)))
    }
}

/// Figures of the call made through the guest.
struct CallFigures {
    setup: Duration,
    /// (first number heard, packets heard, packets sent from the first on), each way.
    a_to_b: (u16, usize, usize),
    b_to_a: (u16, usize, usize),
}

/// Extension 100 calls 101, both phones on the host behind the first NIC; each phone sends
/// RTP to the host port forwarded to the relay port its SDP names, and must receive what
/// the other sent. Then 100 hangs up.
fn call_through_the_guest(guest: &Guest, console: &str) -> CallFigures {
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port()));
    let phone = |ext: &str| {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a phone's socket");
        SipPhone::on_socket(sock, server, ext, &demo_password(console, ext))
    };
    let mut a = phone("100");
    let mut b = phone("101");
    a.register();
    b.register();

    let rtp_a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind RTP of 100");
    let rtp_b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind RTP of 101");
    let offer = sdp_body(rtp_a.local_addr().expect("RTP address"), &[0]);
    let started = Instant::now();
    let inv = a.invite("101", &offer);
    let invite = b
        .await_request("INVITE", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("101 got no INVITE; received:\n{}", b.transcript()));
    let to_b = sdp_audio(body_of(&invite)).expect("the INVITE to 101 has audio SDP");
    let dialog_b = b.answer(
        &invite,
        &sdp_body(rtp_b.local_addr().expect("RTP address"), &[0]),
    );
    let mut dialog_a = a
        .await_answer(&inv, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("100's call was not answered: {e:?}\n{}", a.transcript()));
    let setup = started.elapsed();
    b.await_ack(&dialog_b, Duration::from_secs(10))
        .expect("101 gets the ACK of its 200 OK");
    let to_a = sdp_audio(&dialog_a.remote_sdp).expect("the 200 OK to 100 has audio SDP");

    // The guest's SDP names its own address and relay ports, which the host reaches only
    // through the forwards.
    for (who, sdp) in [("100", &to_a), ("101", &to_b)] {
        assert_eq!(sdp.addr, IpAddr::V4(GUEST_ADDR), "SDP to {who}: {sdp:?}");
        assert!(
            (RELAY_FIRST..=RELAY_LAST).contains(&sdp.port),
            "SDP to {who} names port {} outside the relay range",
            sdp.port
        );
    }
    let relay_of_a = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.port("udp", to_a.port)));
    let relay_of_b = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.port("udp", to_b.port)));

    // Both phones talk at once; each counts the packets carrying the other's payload. The
    // relay latches onto the source it sees (10.0.2.2 and the phone's port, through slirp),
    // so its packets come back to the phone's own socket.
    let payload = |who: u8, n: u16| {
        let mut p = vec![0xffu8; 160];
        p[..10].copy_from_slice(RTP_MARK);
        p[10] = who;
        p[11..13].copy_from_slice(&n.to_be_bytes());
        p
    };
    for s in [&rtp_a, &rtp_b] {
        s.set_nonblocking(true).expect("non-blocking RTP socket");
    }
    let (mut heard_by_b, mut heard_by_a) = (Heard::default(), Heard::default());
    for n in 0..RTP_PACKETS {
        let ts = u32::from(n) * 160;
        let _ = rtp_a.send_to(&rtp_packet(0, n, ts, 0xA1, &payload(b'A', n)), relay_of_a);
        let _ = rtp_b.send_to(&rtp_packet(0, n, ts, 0xB1, &payload(b'B', n)), relay_of_b);
        thread::sleep(Duration::from_millis(20));
        heard_by_b.drain(&rtp_b, b'A');
        heard_by_a.drain(&rtp_a, b'B');
    }
    let tail = Instant::now() + Duration::from_secs(1);
    while Instant::now() < tail {
        thread::sleep(Duration::from_millis(50));
        heard_by_b.drain(&rtp_b, b'A');
        heard_by_a.drain(&rtp_a, b'B');
    }
    // Once media flows, nearly every packet gets through both ways.
    let mut figures = Vec::new();
    for (way, heard) in [("100 -> 101", &heard_by_b), ("101 -> 100", &heard_by_a)] {
        let got = heard.figures();
        let ok = got
            .is_some_and(|(first, count, sent)| first < RTP_START_WITHIN && count * 10 >= sent * 9);
        assert!(
            ok,
            "RTP {way} through the guest: (first packet number heard, heard, sent since) = \
             {got:?} of {RTP_PACKETS}\n--- console ---\n{}",
            guest.console()
        );
        figures.push(got.expect("checked above"));
    }

    let cseq = a.send_bye(&mut dialog_a);
    b.answer_bye(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("101 got no BYE; received:\n{}", b.transcript()));
    let bye_ok = a
        .await_final(&dialog_a.call_id, cseq, "BYE", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no answer to 100's BYE; received:\n{}", a.transcript()));
    assert_eq!(status_of(bye_ok.as_bytes()), Some(200), "{bye_ok}");
    CallFigures {
        setup,
        a_to_b: figures[0],
        b_to_a: figures[1],
    }
}

/// A raw REGISTER sender on the host, through the guest's second NIC.
struct Guesser {
    sock: UdpSocket,
    target: SocketAddr,
    local: SocketAddr,
    call_id: String,
    cseq: u32,
}

impl Guesser {
    fn new(target: SocketAddr) -> Self {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the attacker");
        sock.connect(target).expect("connect the attacker");
        let local = sock.local_addr().expect("attacker address");
        Guesser {
            sock,
            target,
            local,
            call_id: format!("guess{}@attacker", std::process::id()),
            cseq: 1,
        }
    }

    /// A REGISTER for 100, with a wrong answer to `challenge` when given.
    fn register(&mut self, challenge: Option<&str>) -> String {
        let first = register_request(
            self.target,
            Transport::Udp,
            self.local,
            "100",
            &self.call_id,
        );
        let n = self.cseq;
        self.cseq += 1;
        let msg = first
            .replace("CSeq: 1 REGISTER", &format!("CSeq: {n} REGISTER"))
            .replace(";branch=z9hG4bK", &format!(";branch=z9hG4bKg{n}x"));
        match challenge {
            None => msg,
            Some(c) => {
                let auth =
                    digest_authorization(c, "REGISTER", "sip:127.0.0.1", "100", &format!("{n}"));
                msg.replace(
                    "Content-Length: 0\r\n",
                    &format!("Authorization: {auth}\r\nContent-Length: 0\r\n"),
                )
            }
        }
    }

    fn send(&self, msg: &str) {
        // A refused send (ICMP unreachable) is not this test's concern.
        let _ = self.sock.send(msg.as_bytes());
    }
}

/// Figures of the attack through the second NIC.
struct AttackFigures {
    banned_after: Duration,
    rule: String,
    kernel_drops: u64,
}

/// A password-guessing burst at the guest's SIP port through the second NIC; over SSH
/// through the first NIC: the attacker is listed by `fw bans`, the guest's kernel counts
/// its further packets as dropped, it gets no SIP answer while the first NIC still does.
fn attack_through_the_second_nic(guest: &Guest, key: &Path) -> AttackFigures {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, guest.port2("udp", 5060)));
    let mut guesser = Guesser::new(target);
    let first = guesser.register(None);
    guesser.send(&first);
    let challenge = udp_recv(&guesser.sock, Duration::from_secs(10))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| {
            panic!(
                "no answer to a REGISTER through the second NIC\n--- console ---\n{}",
                guest.console()
            )
        });
    assert_eq!(status_of(challenge.as_bytes()), Some(401), "{challenge}");
    let challenge = header_value(&challenge, "WWW-Authenticate").expect("401 has a challenge");

    // The burst: wrong passwords as fast as a guessing tool sends them.
    let started = Instant::now();
    for _ in 0..40 {
        let guess = guesser.register(Some(&challenge));
        guesser.send(&guess);
        thread::sleep(Duration::from_millis(20));
    }
    let attacker = IpAddr::V4(NIC2_HOST);
    let mut bans = Value::Null;
    let ban = eventually(Duration::from_secs(90), || {
        bans = ssh_json(guest, key, "fw bans");
        ban_of(&bans, attacker)
    })
    .unwrap_or_else(|| {
        panic!(
            "{attacker} is not listed by `fw bans` after a guessing burst: {bans}\n--- console ---\n{}",
            guest.console()
        )
    });
    let banned_after = started.elapsed();
    let rule = ban["rule"].as_str().unwrap_or("?").to_owned();

    // The attacker keeps sending: the guest's kernel drops and counts every packet.
    let before = eventually(Duration::from_secs(60), || {
        kernel_banned_packets(guest, key)
    })
    .expect("`fw status --json` shows the kernel's banned_packets counter");
    for _ in 0..BANNED_BURST {
        let guess = guesser.register(Some(&challenge));
        guesser.send(&guess);
        thread::sleep(Duration::from_millis(20));
    }
    let mut after = before;
    let counted = eventually(Duration::from_secs(60), || {
        after = kernel_banned_packets(guest, key).unwrap_or(after);
        (after >= before + BANNED_BURST).then_some(after)
    });
    assert!(
        counted.is_some(),
        "the guest kernel's banned counter rose by {} for {BANNED_BURST} packets from the banned \
         source",
        after - before
    );

    // SIP through the second NIC gets nothing; through the first it still gets 200.
    let nic2 = options_status(target, Transport::Udp);
    assert_eq!(
        nic2, None,
        "the banned source got an answer through the second NIC"
    );
    let nic1 = options_status(
        SocketAddr::from((Ipv4Addr::LOCALHOST, guest.sip_port())),
        Transport::Udp,
    );
    assert_eq!(
        nic1,
        Some(200),
        "OPTIONS through the first NIC after the ban"
    );
    AttackFigures {
        banned_after,
        rule,
        kernel_drops: after - before,
    }
}

#[test]
fn the_image_boots_under_qemu_loads_the_firewall_and_answers_sip() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, _public) = ssh_keypair(keys.path(), "admin@image-test");
    let (image, build_time) = build_image(&key.with_extension("pub"));
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(image.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    for artifact in ["disk.img", "vmlinuz", "initramfs.cpio.gz", "root.squashfs"] {
        let sha = manifest["artifacts"][artifact]["sha256"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(sha.len(), 64, "manifest lacks the checksum of {artifact}");
    }
    let debs: Vec<&str> = manifest["debian_packages"]
        .as_array()
        .expect("package list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for pkg in [
        "busybox-static",
        "nftables",
        "dropbear-bin",
        "libnftables1",
        "libc6",
    ] {
        assert!(
            debs.contains(&pkg),
            "{pkg} missing from the manifest: {debs:?}"
        );
    }
    // The partition table is valid for sgdisk and names the four partitions.
    let table = run_with_timeout(
        Command::new("sgdisk")
            .arg("--print")
            .arg(image.join("disk.img")),
        Duration::from_secs(30),
    );
    for part in [
        "outpost-boot",
        "outpost-root-a",
        "outpost-root-b",
        "outpost-data",
    ] {
        assert!(
            table.stdout.contains(part),
            "sgdisk shows no {part}:\n{}",
            table.stdout
        );
    }
    assert!(!table.stdout.contains("Problem"), "{}", table.stdout);

    // One boot: SIP, SSH and the relay range through the first NIC, SIP through the second.
    let mut boot = Boot::snapshot(&image).with_second_nic(vec![("udp", 5060)]);
    boot.forwards
        .extend((RELAY_FIRST..=RELAY_LAST).map(|p| ("udp", p)));
    let mut guest = Guest::boot(&boot);
    let console = guest.wait_for(" ready listen=", BOOT_TIMEOUT);
    assert!(
        console.contains("outpost-initramfs: booting slot a"),
        "{console}"
    );
    // Every NIC is up; the first one's address is the box's.
    for line in [
        "network-up: eth0 10.0.2.15/24 (DHCP)",
        "network-up: eth1 10.0.3.15/24 (DHCP)",
        "address 10.0.2.15",
    ] {
        assert!(
            console.contains(line),
            "no {line:?} on the console:\n{console}"
        );
    }

    // Boot to first SIP answer, through the host port forward.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut answer = None;
    for n in 1..=30 {
        answer = options(&sock, guest.sip_port(), n, Duration::from_secs(1));
        if answer.is_some() {
            break;
        }
    }
    let boot_to_sip = guest.started.elapsed();
    let answer = answer.expect("no answer to OPTIONS through the guest");
    assert!(answer.starts_with("SIP/2.0 200"), "OPTIONS got {answer}");

    // The firewall table went into the guest's kernel, and the first boot printed the
    // console admin password once.
    let console = guest.wait_for("nftables table installed", Duration::from_secs(30));
    assert!(
        console.contains("firewall: kernel enforcement on"),
        "{console}"
    );
    let console = guest.wait_for("admin password: ", Duration::from_secs(60));
    assert!(
        !console.contains("ERROR"),
        "errors on the console:\n{console}"
    );

    // REGISTER with digest authentication (SIPp) as the demo extension.
    let password = demo_password(&console, "100");
    let dir = tempfile::tempdir().expect("tempdir");
    let local_port = free_port();
    let sipp = run_with_timeout(
        Command::new("sipp")
            .current_dir(dir.path())
            .arg(format!("127.0.0.1:{}", guest.sip_port()))
            .arg("-sf")
            .arg(scenario("register.xml"))
            .args(["-t", "u1", "-i", "127.0.0.1", "-p"])
            .arg(local_port.to_string())
            .args(["-m", "1", "-nostdin", "-timeout_error", "-timeout", "30s"])
            .args(["-au", "100", "-ap", &password])
            .args(["-key", "user", "100", "-key", "expires", "300"])
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .stdin(Stdio::null()),
        Duration::from_secs(60),
    );
    let errors = fs::read_to_string(dir.path().join("errors.log")).unwrap_or_default();
    assert!(
        sipp.code == Some(0),
        "SIPp REGISTER through the guest failed: {}\n{errors}\n--- console ---\n{}",
        sipp.stdout,
        guest.console()
    );

    // SSH with the key baked into the image (imported into the store on the first boot).
    let version = console
        .lines()
        .find(|l| l.contains(" ready listen="))
        .and_then(|l| l.split("outpostd ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the daemon's version on the ready line")
        .to_owned();
    // The guest's firewall counts every refused login of 10.0.2.2 (10 ban it, and with it
    // the whole host): a few tries, seconds apart, while the first boot imports the key.
    let ssh_started = Instant::now();
    let mut last = None;
    let mut status = None;
    for _ in 0..SSH_TRIES {
        let out = guest.ssh(&key, "status", None, SSH_TIMEOUT);
        if out.code == Some(0) {
            status = Some(out.stdout);
            break;
        }
        last = Some(out);
        thread::sleep(Duration::from_secs(5));
    }
    let status = status.unwrap_or_else(|| {
        panic!(
            "`ssh admin@guest status` with the baked key never worked: {last:?}\n--- console ---\n{}",
            guest.console()
        )
    });
    let ssh_login = ssh_started.elapsed();
    let row = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    assert_eq!(row("version"), Some(version.clone()), "{status}");
    assert_eq!(row("extensions").as_deref(), Some("2"), "{status}");
    let fw = ssh_ok(&guest, &key, "fw status");
    assert!(
        fw.lines()
            .any(|l| l.starts_with("mode") && l.contains("enforcing")),
        "`fw status` over SSH: {fw}"
    );

    // A call with media through the guest's relay.
    let call = call_through_the_guest(&guest, &console);

    // An attack through the second NIC, banned inside the guest.
    let attack = attack_through_the_second_nic(&guest, &key);

    eprintln!(
        "image: build {:.1} s, boot to first SIP answer {:.1} s, disk {} MiB, root filesystem {} KiB",
        build_time.as_secs_f64(),
        boot_to_sip.as_secs_f64(),
        manifest["artifacts"]["disk.img"]["bytes"].as_u64().unwrap_or(0) >> 20,
        manifest["artifacts"]["root.squashfs"]["bytes"].as_u64().unwrap_or(0) >> 10,
    );
    eprintln!(
        "image: ssh login with the baked key after {:.1} s (outpostd {version})",
        ssh_login.as_secs_f64()
    );
    for (way, (first, heard, sent)) in [("100 -> 101", call.a_to_b), ("101 -> 100", call.b_to_a)] {
        eprintln!(
            "image: RTP {way} through the relay: flowing from packet {first} ({} ms after the \
             answer), then {heard} of {sent} packets",
            u32::from(first) * 20
        );
    }
    eprintln!(
        "image: call 100 -> 101 set up in {} ms",
        call.setup.as_millis()
    );
    eprintln!(
        "image: guessing burst from {NIC2_HOST} banned (rule {}) and listed {:.1} s after it \
         began; the guest kernel dropped {} of {BANNED_BURST} further packets",
        attack.rule,
        attack.banned_after.as_secs_f64(),
        attack.kernel_drops
    );
}
