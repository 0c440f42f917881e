//! The firmware image booted under qemu-system-aarch64 (issue 8): `outpost-image build`
//! makes the shared test image ([`TestImage::shared`]: the appliance configuration plus two
//! `[demo]` extensions whose generated passwords the daemon prints on the serial console,
//! MD5 offered first for SIPp, a small relay port range, and an admin SSH key), qemu boots
//! it once with two user-mode NICs and host port forwards, and the host then, in one boot:
//! - talks SIP to the guest (OPTIONS, a SIPp REGISTER);
//! - logs in over SSH with the baked key (`status`, `fw status`), sees root refused, and
//!   reads from the console what `/proc` says outpostd and dropbear run as (uid,
//!   capability sets);
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
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::qemu::{
    call_through, copy_disk, demo_password, write_data_file, Boot, Guest, TestImage, BOOT_TIMEOUT,
    GUEST_NTP_PORT, NIC2_HOST,
};
use outpost_tests::servers::Chrony;
use outpost_tests::{
    digest_authorization, eventually, free_port, header_value, options_status, register_request,
    run_with_timeout, scenario, status_of, udp_recv, Transport,
};

/// Packets the attacker sends while banned; the kernel must count every one.
const BANNED_BURST: u64 = 50;

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
    let status = guest.ssh_json(key, "fw status");
    find_key(&status, "banned_packets").and_then(Value::as_u64)
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
        bans = guest.ssh_json(key, "fw bans");
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
    let shared = TestImage::shared();
    let (image, key) = (&shared.dir, &shared.admin_key);
    let manifest = shared.manifest();
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
        "util-linux",
        "libcap-ng0",
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

    // One boot: SIP, SSH and the relay range through the first NIC, SIP through the second;
    // a board without a battery clock (it starts in 1970) and an NTP server on the host.
    let ntp = Chrony::start(Some(GUEST_NTP_PORT));
    let boot = Boot::snapshot(image)
        .with_second_nic(vec![("udp", 5060)])
        .with_relay_forwards()
        .with_rtc("1970-01-01T00:00:00");
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
    let status = guest.wait_ssh(key);
    let ssh_login = ssh_started.elapsed();
    let row = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    assert_eq!(row("version"), Some(version.clone()), "{status}");
    assert_eq!(row("extensions").as_deref(), Some("2"), "{status}");

    // The clock: rc.sysinit moved it from 1970 to the image's build time before anything
    // started, then outpostd's NTP client stepped it to the server's (this machine's) time
    // before the call core opened.
    assert!(
        console.contains("rc.sysinit: the clock read 1970-01-01T00:00")
            && console.contains("set forward to 2023-11-14T22:13:20Z (build time or last saved)"),
        "no clock floor on the console:\n{console}"
    );
    let clock = row("clock").unwrap_or_default();
    assert!(
        clock.starts_with(&format!(
            "synchronised (10.0.2.2:{GUEST_NTP_PORT}, stratum 3"
        )),
        "{status}\nchronyd:\n{}",
        ntp.log()
    );
    let time = guest.ssh_json(key, "status")["time"].clone();
    assert_eq!(time["sets_clock"], true, "{time}");
    assert_eq!(time["correction"], "step", "{time}");
    let host_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("ms");
    let synced_at = time["last_sync_ms"].as_u64().expect("last_sync_ms");
    // Stamped by the guest's own clock after the step: the host's time, give or take the
    // minutes the boot took.
    assert!(
        host_ms.abs_diff(synced_at) < 10 * 60 * 1000,
        "the guest's clock says {synced_at}, the host's {host_ms}: {time}"
    );
    assert!(
        console.contains("time synchronised") && console.contains("clock stepped"),
        "{console}"
    );
    // Least privilege as the kernel sees it (files/privileges prints /proc/<pid>/status of
    // each on the console): outpostd is user outpost with exactly CAP_NET_ADMIN,
    // CAP_NET_BIND_SERVICE, CAP_SYS_BOOT and CAP_SYS_TIME (0x2401400); dropbear is the admin
    // with CAP_NET_BIND_SERVICE (0x400) alone; neither can gain more.
    let privileges = guest.wait_for("privileges: dropbear", Duration::from_secs(90));
    let proc_status = |name: &str| {
        let line = privileges
            .lines()
            .find_map(|l| {
                l.split_once(&format!("privileges: {name} pid "))
                    .map(|(_, r)| r)
            })
            .unwrap_or_else(|| panic!("no privileges line for {name}:\n{privileges}"))
            .to_owned();
        move |field: &str| {
            line.split_once(&format!("{field}: "))
                .map(|(_, rest)| {
                    rest.split(|c: char| c.is_ascii_alphabetic())
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_else(|| panic!("no {field} in {line}"))
        }
    };
    let daemon = proc_status("outpostd");
    assert_eq!(daemon("Uid"), "100 100 100 100", "outpostd's uids");
    assert_eq!(daemon("Gid"), "100 100 100 100", "outpostd's gids");
    assert_eq!(daemon("Groups"), "100", "outpostd's groups");
    for set in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(daemon(set), "0000000002401400", "outpostd's {set}");
    }
    assert_eq!(daemon("NoNewPrivs"), "1");
    let dropbear = proc_status("dropbear");
    assert_eq!(dropbear("Uid"), "1000 1000 1000 1000", "dropbear's uids");
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(dropbear(set), "0000000000000400", "dropbear's {set}");
    }
    assert_eq!(dropbear("NoNewPrivs"), "1");
    // Root never logs in over SSH (one try: the guest's firewall counts it).
    let root = run_with_timeout(
        &mut guest.ssh_command_as("root", key, "status"),
        Duration::from_secs(30),
    );
    assert_eq!(root.code, Some(255), "root over SSH: {root:?}");
    assert!(root.stderr.contains("Permission denied"), "{root:?}");
    let fw = guest.ssh_ok(key, "fw status", None);
    assert!(
        fw.lines()
            .any(|l| l.starts_with("mode") && l.contains("enforcing")),
        "`fw status` over SSH: {fw}"
    );

    // A call with media through the guest's relay.
    let call = call_through(
        &guest,
        ("100", &demo_password(&console, "100")),
        ("101", &demo_password(&console, "101")),
    );

    // An attack through the second NIC, banned inside the guest.
    let attack = attack_through_the_second_nic(&guest, key);

    let build = match shared.built_in {
        Some(took) => format!("build {:.1} s", took.as_secs_f64()),
        None => "build reused".to_owned(),
    };
    eprintln!(
        "image: {build}, boot to first SIP answer {:.1} s, disk {} MiB, root filesystem {} KiB",
        boot_to_sip.as_secs_f64(),
        manifest["artifacts"]["disk.img"]["bytes"]
            .as_u64()
            .unwrap_or(0)
            >> 20,
        manifest["artifacts"]["root.squashfs"]["bytes"]
            .as_u64()
            .unwrap_or(0)
            >> 10,
    );
    eprintln!(
        "image: ssh login with the baked key after {:.1} s (outpostd {version})",
        ssh_login.as_secs_f64()
    );
    for (way, rtp) in [("100 -> 101", call.a_to_b), ("101 -> 100", call.b_to_a)] {
        eprintln!(
            "image: RTP {way} through the relay: flowing from packet {} ({} ms after the \
             answer), then {} of {} packets",
            rtp.first,
            u32::from(rtp.first) * 20,
            rtp.heard,
            rtp.sent
        );
    }
    // Nothing failed along the way (the firewall's set updates included).
    let console = guest.console();
    let errors: Vec<&str> = console.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "errors on the console:\n{}",
        errors.join("\n")
    );
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

/// The front panel's "keep this address" choice, saved by the daemon's own code
/// (`netconf::NetworkFile`, the format the panel writes), is what the real boot script
/// (`network-up`) brings the box up with: one format, end to end.
#[test]
fn a_static_address_saved_from_the_panel_is_what_the_box_boots_with() {
    let shared = TestImage::shared();
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("disk.img");
    copy_disk(&shared.dir.join("disk.img"), &disk);
    // The address qemu's user network forwards to, kept as a static one with two DNS
    // servers (the list form).
    let setting = board::panel::NetworkSetting::Static {
        address: "10.0.2.15/24".to_owned(),
        gateway: "10.0.2.2".to_owned(),
        dns: vec!["10.0.2.3".to_owned(), "192.0.2.53".to_owned()],
    };
    let text = firmware::netconf::NetworkFile::from_setting(&setting).to_text();
    assert!(text.contains("dns = ["), "the list form: {text}");
    write_data_file(&disk, "outpost/network.toml", &text);

    let boot = Boot::snapshot(&shared.dir).persistent(&disk);
    let mut guest = Guest::boot(&boot);
    let console = guest.wait_for(" ready listen=", BOOT_TIMEOUT);
    assert!(
        console.contains("network-up: eth0 10.0.2.15/24 (static)")
            && !console.contains("network-up: eth0 10.0.2.15/24 (DHCP)")
            && console.contains("address 10.0.2.15"),
        "the saved static address was not used:\n{console}"
    );
    // The static address is up: SIP answers through the forward to it.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let answer = (1..=30).find_map(|n| options(&sock, guest.sip_port(), n, Duration::from_secs(1)));
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("SIP/2.0 200")),
        "no SIP answer on the static address: {answer:?}\n{}",
        guest.console()
    );
}
