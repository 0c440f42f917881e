//! A trunk named by its provider's domain, resolved through a real DNS server (dnsmasq)
//! by RFC 3263: NAPTR (pointing at a non-default SRV name) → SRV (two targets, different
//! priorities) → A. The higher-priority
//! target is dead (nothing listens there); the second is a real `outpostd` acting as the
//! provider. The box registers with the second and its calls go out there; then the
//! records change (dnsmasq restarted with a new SRV target, TTL 0, the box's
//! `[dns] min_ttl_secs = 2`) and the trunk follows to the new provider after re-resolution.
//!
//! dnsmasq listens on its own loopback address and port (127.0.0.9), the providers on
//! 127.0.0.2-4 (Linux routes all of 127/8 to `lo`), the box on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use outpost_tests::{
    eventually, free_port, json_str, sdp_body, status_of, Daemon, DaemonConfig, Dialog, SipPhone,
};

const TRUNK_USER: &str = "4930100";
const TRUNK_PASS: &str = "trunk-secret-4930100";
const FAR: (&str, &str) = ("0301234567", "far-secret-0301");
const EXT_A: (&str, &str) = ("100", "phone-secret-100");
const DEAD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const SECOND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const NEW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const DNS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const DOMAIN: &str = "provider.test";
const WAIT: Duration = Duration::from_secs(5);
/// The dead target's REGISTER gives up after the trunk's silence timeout (1 s), then the
/// second registers with its challenge: generous for a loaded CI machine.
const UP_WAIT: Duration = Duration::from_secs(20);
/// Re-resolution after at most min_ttl_secs (2 s), then a REGISTER with challenge.
const FOLLOW_WAIT: Duration = Duration::from_secs(20);

/// dnsmasq serving `provider.test` with the SRV targets `(name, ip, port, priority)`;
/// killed on drop.
struct Dns {
    child: Child,
    port: u16,
}

impl Dns {
    fn start(port: u16, targets: &[(&str, Ipv4Addr, u16, u16)]) -> Dns {
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--group=root",
            "--log-queries",
            "--log-facility=-",
            "--local-ttl=0",
        ]);
        cmd.arg(format!("--listen-address={DNS_IP}"));
        cmd.arg(format!("--port={port}"));
        // RFC 3263 §4.1: the NAPTR names the SRV name for UDP. It is not the default
        // (`_sip._udp.provider.test` has no records), so only a resolver that follows the
        // NAPTR finds the servers; a TCP record is there to be passed over.
        cmd.arg(format!(
            "--naptr-record={DOMAIN},5,10,s,SIP+D2T,,_sip._tcp.tcp.{DOMAIN}"
        ));
        cmd.arg(format!(
            "--naptr-record={DOMAIN},10,10,s,SIP+D2U,,_sip._udp.servers.{DOMAIN}"
        ));
        for (name, ip, p, prio) in targets {
            cmd.arg(format!(
                "--srv-host=_sip._udp.servers.{DOMAIN},{name}.{DOMAIN},{p},{prio},50"
            ));
            cmd.arg(format!("--host-record={name}.{DOMAIN},{ip}"));
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .expect("dnsmasq runs (apt-get install dnsmasq-base)");
        let dns = Dns { child, port };
        // Ready when it answers: any UDP reply to a query.
        let ready = eventually(WAIT, || dns.answers().then_some(()));
        assert!(ready.is_some(), "dnsmasq did not start on {DNS_IP}:{port}");
        dns
    }

    /// Sends an A query for the domain and waits briefly for any answer.
    fn answers(&self) -> bool {
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in DOMAIN.split('.') {
            q.push(u8::try_from(label.len()).expect("a short label"));
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        if sock.send_to(&q, (DNS_IP, self.port)).is_err() {
            return false;
        }
        let mut buf = [0u8; 512];
        matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provider daemon on `ip` with the box's account and the far party.
fn start_provider(ip: Ipv4Addr) -> Daemon {
    let daemon = Daemon::start_with(DaemonConfig::on(vec![SocketAddr::new(
        IpAddr::V4(ip),
        free_port(),
    )]));
    daemon.add_extension(TRUNK_USER, TRUNK_PASS);
    daemon.add_extension(FAR.0, FAR.1);
    daemon
}

/// The far party registered at `provider`, its socket on the provider's IP.
fn far_at(provider: &Daemon) -> SipPhone {
    let sock = UdpSocket::bind(SocketAddr::new(provider.sip_addr().ip(), 0)).expect("bind");
    let mut phone = SipPhone::on_socket(sock, provider.sip_addr(), FAR.0, FAR.1);
    phone.register();
    phone
}

fn trunk(boxd: &Daemon) -> Value {
    named(boxd, "prov")
}

fn named(boxd: &Daemon, name: &str) -> Value {
    match boxd.ctl_json(&["trunks"]) {
        Value::Array(items) => items
            .into_iter()
            .find(|t| json_str(t, "name") == Some(name))
            .unwrap_or_else(|| panic!("no trunk {name}")),
        other => panic!("trunks --json is not an array: {other}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn current(t: &Value) -> Option<SocketAddr> {
    json_str(t, "current").and_then(|s| s.parse().ok())
}

fn targets(t: &Value) -> Vec<SocketAddr> {
    t["targets"]
        .as_array()
        .map(|v| v.iter().filter_map(|a| a.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Waits until the trunk is up and registered at `at`; returns how long it took.
fn wait_registered_at(boxd: &Daemon, at: SocketAddr, wait: Duration) -> Duration {
    let start = Instant::now();
    let done = eventually(wait, || {
        let t = trunk(boxd);
        (json_str(&t, "health") == Some("up")
            && t["registered"] == Value::Bool(true)
            && current(&t) == Some(at))
        .then_some(())
    });
    assert!(
        done.is_some(),
        "trunk not up at {at} within {wait:?}: {}\nbox log:\n{}",
        trunk(boxd),
        boxd.log_text()
    );
    start.elapsed()
}

/// Phone A on the box calls the far party, who answers at `far`; then A hangs up.
fn call_out(boxd: &Daemon, a: &mut SipPhone, far: &mut SipPhone) {
    let rtp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind rtp");
    let sdp_a = sdp_body(rtp.local_addr().expect("addr"), &[0]);
    let far_rtp = UdpSocket::bind((far.sip_addr().ip(), 0)).expect("bind far rtp");
    let sdp_far = sdp_body(far_rtp.local_addr().expect("addr"), &[0]);
    let invite = a.invite(FAR.0, &sdp_a);
    let incoming = far.await_request("INVITE", WAIT).unwrap_or_else(|| {
        panic!(
            "the far party got no INVITE; A received:\n{}\nbox log:\n{}",
            a.transcript(),
            boxd.log_text()
        )
    });
    let _far_dialog = far.answer(&incoming, &sdp_far);
    let mut dialog: Dialog = a.await_answer(&invite, WAIT).unwrap_or_else(|resp| {
        panic!(
            "the call was not answered: {resp:?}\nbox log:\n{}",
            boxd.log_text()
        )
    });
    let cseq = a.send_bye(&mut dialog);
    far.answer_bye(WAIT)
        .unwrap_or_else(|| panic!("no BYE at the far party:\n{}", far.transcript()));
    let ok = a
        .await_final(&dialog.call_id, cseq, "BYE", WAIT)
        .unwrap_or_else(|| panic!("no answer to the BYE:\n{}", a.transcript()));
    assert_eq!(status_of(ok.as_bytes()), Some(200), "{ok}");
}

#[test]
fn a_trunk_named_by_domain_fails_over_to_the_live_srv_target_and_follows_new_records() {
    assert!(
        Path::new("/usr/sbin/dnsmasq").exists(),
        "dnsmasq is required (tests/run-all installs dnsmasq-base)"
    );
    let second = start_provider(SECOND_IP);
    let mut far2 = far_at(&second);
    // Nothing listens at the dead target.
    let dead = SocketAddr::new(IpAddr::V4(DEAD_IP), free_port());
    let dns_port = free_port();
    let mut dns = Dns::start(
        dns_port,
        &[
            ("p1", DEAD_IP, dead.port(), 10),
            ("p2", SECOND_IP, second.sip_addr().port(), 20),
        ],
    );

    let toml = format!(
        "[dns]\nservers = [\"{DNS_IP}:{dns_port}\"]\nmin_ttl_secs = 2\n\
         [[trunk]]\nname = \"prov\"\nhost = \"{DOMAIN}\"\nusername = \"{TRUNK_USER}\"\npassword = \"{TRUNK_PASS}\"\n\
         caller_id = \"{TRUNK_USER}\"\noptions_interval_secs = 1\nsilence_timeout_ms = 1000\nexpires_secs = 60\nretry_secs = 1\n\
         [[trunk]]\nname = \"ghost\"\nhost = \"ghost.{DOMAIN}\"\nregister = false\noptions_interval_secs = 0\n\
         [[route]]\nname = \"national\"\npatterns = [\"0[1-9]X.\"]\ntrunks = [\"prov\"]\n"
    );
    let started_ms = now_ms();
    let boxd = Daemon::start_with(DaemonConfig::loopback().with_toml(&toml));
    boxd.add_extension(EXT_A.0, EXT_A.1);

    // A name with no records at all: the trunk is there, down, with no address, and says
    // since when (a real time); the box runs.
    let ghost = named(&boxd, "ghost");
    assert_eq!(json_str(&ghost, "health"), Some("down"), "{ghost}");
    assert!(
        targets(&ghost).is_empty() && current(&ghost).is_none(),
        "{ghost}"
    );
    let since = ghost["since"].as_u64().unwrap_or(0);
    assert!(
        since + 60_000 >= started_ms,
        "since is a time of this run: {ghost}"
    );

    // SRV order: the dead target (priority 10) first, then the live one.
    let took = wait_registered_at(&boxd, second.sip_addr(), UP_WAIT);
    eprintln!("registered at the second SRV target {took:?} after start (first one dead)");
    let t = trunk(&boxd);
    assert_eq!(
        targets(&t),
        vec![dead, second.sip_addr()],
        "both SRV targets, by priority: {t}"
    );
    let out = boxd.ctl_ok(&["trunks"]);
    assert!(
        out.contains(&format!("*{}", second.sip_addr())) && out.contains(&dead.to_string()),
        "trunks shows the addresses and the one in use:\n{out}"
    );
    assert!(
        !second.registrations_of(TRUNK_USER).is_empty(),
        "the provider has the box's registration"
    );

    let mut a = SipPhone::new(&boxd, EXT_A.0, EXT_A.1);
    a.register();
    call_out(&boxd, &mut a, &mut far2);
    eprintln!("outbound call went out through the second target");

    // The provider moves: new records, the old target gone.
    let newp = start_provider(NEW_IP);
    let mut far3 = far_at(&newp);
    drop(dns);
    dns = Dns::start(dns_port, &[("p3", NEW_IP, newp.sip_addr().port(), 10)]);
    let took = wait_registered_at(&boxd, newp.sip_addr(), FOLLOW_WAIT);
    eprintln!("followed the changed SRV records to the new target in {took:?}");
    assert_eq!(targets(&trunk(&boxd)), vec![newp.sip_addr()]);
    assert!(!newp.registrations_of(TRUNK_USER).is_empty());
    call_out(&boxd, &mut a, &mut far3);
    eprintln!("outbound call went out through the new target");

    // DNS gone altogether: the last good answer stays in use.
    drop(dns);
    let gone = Instant::now();
    let failed = eventually(Duration::from_secs(30), || {
        boxd.log_text()
            .lines()
            .any(|l| {
                l.contains("trunk host lookup failed") && l.contains(&format!("host={DOMAIN} "))
            })
            .then_some(())
    });
    assert!(
        failed.is_some(),
        "no failed lookup reported:\n{}",
        boxd.log_text()
    );
    eprintln!(
        "DNS server gone: the failed lookup was reported after {:?}",
        gone.elapsed()
    );
    let t = trunk(&boxd);
    assert_eq!(current(&t), Some(newp.sip_addr()), "kept: {t}");
    assert_eq!(targets(&t), vec![newp.sip_addr()], "kept: {t}");
    assert_eq!(json_str(&t, "health"), Some("up"), "{t}");
}
