//! Blocklist feeds, `fw import` and `fw export` end to end, as root, with real nftables:
//! `outpostd` runs in the "appliance" namespace of a `FwLab`; a feed file in the test's
//! temp directory lists the attacker's addresses; the tests read the kernel's ban sets and
//! counters and send SIP from the attacker's namespace.
//!
//! These tests REQUIRE root, `ip` and `nft`: without them they fail saying so, they never
//! skip. Each test has its own namespaces and /24, and every wait is bounded.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

use outpost_tests::{
    eventually, in_netns, json_str, options_status_on, require_root, Daemon, FwLab,
};

/// Feeds are re-read this often in these tests.
const REFRESH_SECS: u64 = 2;
/// A change to a feed must reach the kernel within one refresh plus this margin.
const FEED_WAIT: Duration = Duration::from_secs(REFRESH_SECS + 3);
/// How long an expected answer may take.
const ANSWER: Duration = Duration::from_secs(1);
/// How long we listen to be sure nothing comes back.
const SILENCE: Duration = Duration::from_millis(400);

/// A running appliance with its lab and a directory for feed files. Field order matters:
/// the daemon stops (and prints its log when the test failed) before the namespaces go.
struct Site {
    daemon: Daemon,
    lab: FwLab,
    files: tempfile::TempDir,
}

/// Builds a lab, starts outpostd in the appliance namespace with the TOML `fw_toml` makes
/// for the lab appended (`{feed}` in it is replaced by the path of `feed.txt` in the
/// site's directory, created with what `feed` makes) and waits until the kernel table is
/// installed.
fn site(fw_toml: impl FnOnce(&FwLab) -> String, feed: impl FnOnce(&FwLab) -> String) -> Site {
    require_root("the firewall feed tests");
    let lab = FwLab::new();
    let files = tempfile::Builder::new()
        .prefix("outpost-feedtest-")
        .tempdir()
        .expect("create a temp dir");
    let path = files.path().join("feed.txt");
    write_atomically(&path, &feed(&lab));
    let toml = fw_toml(&lab).replace("{feed}", &path.display().to_string());
    let daemon = Daemon::start_in(&lab.appliance, lab.daemon_config().with_toml(&toml));
    let installed = eventually(Duration::from_secs(5), || {
        lab.appliance.outpost_set("ban4").map(|_| ())
    });
    assert!(
        installed.is_some(),
        "outpostd did not install table inet outpost within 5 s; nft list ruleset:\n{}\nlog:\n{}",
        lab.appliance.nft(&["list", "ruleset"]).stdout,
        daemon.log_text()
    );
    Site { daemon, lab, files }
}

/// `[[firewall.feeds]]` for `{feed}` with the test's short refresh.
fn feed_toml() -> String {
    format!(
        "[[firewall.feeds]]\nsource = \"{{feed}}\"\nrefresh_secs = {REFRESH_SECS}\nban_secs = 600\n"
    )
}

/// Replaces `path` in one rename, so the daemon never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the feed");
    std::fs::rename(&tmp, path).expect("move the feed into place");
}

impl Site {
    fn feed_path(&self) -> PathBuf {
        self.files.path().join("feed.txt")
    }

    /// The attacker's addresses (10.201.N.3 to .6).
    fn attacker(&self, i: usize) -> IpAddr {
        self.lab.attacker_ips()[i].into()
    }

    /// 10.201.N.host, an address of the lab's /24 that no namespace holds.
    fn lab_ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 201, self.lab.subnet(), host))
    }

    /// The addresses in the kernel's ban set of `ip`'s family.
    fn kernel_set(&self, v4: bool) -> Vec<IpAddr> {
        let set = if v4 { "ban4" } else { "ban6" };
        self.lab
            .appliance
            .outpost_set(set)
            .unwrap_or_default()
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    }

    fn in_kernel(&self, ip: IpAddr) -> bool {
        self.kernel_set(ip.is_ipv4()).contains(&ip)
    }

    /// Waits up to `wait` until `ip` is (`true`) or is not (`false`) in the kernel's ban
    /// set; returns how long it took, or panics with the table and the log.
    fn wait_kernel(&self, ip: IpAddr, banned: bool, wait: Duration) -> Duration {
        let start = Instant::now();
        if eventually(wait, || (self.in_kernel(ip) == banned).then_some(())).is_none() {
            panic!(
                "{ip} {} the kernel's ban set within {wait:?}; nft list table:\n{}\nfw status: {}\nlog:\n{}",
                if banned { "not in" } else { "still in" },
                self.lab
                    .appliance
                    .nft(&["list", "table", "inet", "outpost"])
                    .stdout,
                self.fw_status(),
                self.daemon.log_text()
            );
        }
        start.elapsed()
    }

    /// `fw bans --json`: the ban entries.
    fn bans(&self) -> Vec<Value> {
        let v = self.daemon.ctl_json(&["fw", "bans"]);
        v.get("bans")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("fw bans --json without a `bans` list: {v}"))
    }

    /// The rule of `ip`'s ban, if banned.
    fn ban_rule(&self, ip: IpAddr) -> Option<String> {
        self.bans()
            .into_iter()
            .find(|b| json_str(b, "addr").and_then(|a| a.parse().ok()) == Some(ip))
            .and_then(|b| json_str(&b, "rule").map(str::to_owned))
    }

    fn fw_status(&self) -> Value {
        self.daemon.ctl_json(&["fw", "status"])
    }

    /// `fw status --json`'s first feed.
    fn feed_health(&self) -> Value {
        let st = self.fw_status();
        st.get("feeds")
            .and_then(|f| f.get(0))
            .cloned()
            .unwrap_or_else(|| panic!("fw status --json without feeds: {st}"))
    }

    /// Packets the kernel dropped because their source is banned.
    fn banned_packets(&self) -> u64 {
        self.lab
            .appliance
            .outpost_counter("banned")
            .expect("counter `banned` in table inet outpost")
    }

    /// A socket of the attacker at `src`.
    fn attacker_socket(&self, src: IpAddr) -> UdpSocket {
        self.lab.attacker_socket(src)
    }

    /// Status of an OPTIONS from `src` (one of the attacker's addresses), if answered.
    fn options_from(&self, src: IpAddr, wait: Duration) -> Option<u16> {
        let target = if src.is_ipv4() {
            self.lab.sip_addr()
        } else {
            self.lab.sip_addr6()
        };
        options_status_on(&self.attacker_socket(src), target, wait)
    }
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

#[test]
fn a_feed_bans_in_the_kernel_within_its_refresh_and_lifts_when_the_entry_leaves() {
    let site = site(
        |_| feed_toml(),
        |_| "# our blocklist, empty for now\n".to_owned(),
    );
    let attacker = site.attacker(0);
    assert_eq!(
        site.options_from(attacker, ANSWER),
        Some(200),
        "before it is listed the attacker's address is answered"
    );

    write_atomically(
        &site.feed_path(),
        &format!("# our blocklist\n{attacker}   # seen scanning elsewhere\n"),
    );
    let took = site.wait_kernel(attacker, true, FEED_WAIT);
    println!("feed listing -> in the kernel ban set after {took:?} (refresh {REFRESH_SECS} s)");
    assert_eq!(site.ban_rule(attacker).as_deref(), Some("feed"));

    let before = site.banned_packets();
    let sock = site.attacker_socket(attacker);
    for _ in 0..10 {
        assert_eq!(
            options_status_on(&sock, site.lab.sip_addr(), Duration::from_millis(50)),
            None,
            "a source listed by the feed got an answer"
        );
    }
    assert_eq!(site.options_from(attacker, SILENCE), None);
    let after = site.banned_packets();
    assert!(
        after >= before + 11,
        "the kernel's `banned` counter rose by {} for 11 packets from the listed source",
        after - before
    );

    write_atomically(&site.feed_path(), "# our blocklist, it left\n");
    let took = site.wait_kernel(attacker, false, FEED_WAIT);
    println!("entry removed from the feed -> out of the kernel ban set after {took:?}");
    assert_eq!(site.ban_rule(attacker), None, "lifted in user space too");
    assert_eq!(
        site.options_from(attacker, ANSWER),
        Some(200),
        "an address that left the feed is answered again"
    );
}

#[test]
fn allow_listed_and_malformed_feed_entries_are_skipped_and_counted() {
    // The attacker's second address is allow-listed.
    let site = site(
        |lab| {
            format!(
                "{}\n[firewall.detect]\nallow = [\"{}/32\"]\n",
                feed_toml(),
                lab.attacker_ips()[1]
            )
        },
        |lab| {
            let [a, allowed, _, _] = lab.attacker_ips();
            let net = Ipv4Addr::new(10, 201, lab.subnet(), 6);
            format!(
                "# lab blocklist\n{a}        # the attacker\n{allowed}  # allow-listed: never banned\n\
                 {net}/31 ; .6 and .7\nnot-an-address\n300.1.2.3\n10.0.0.0/8\n\n"
            )
        },
    );
    let (attacker, allowed) = (site.attacker(0), site.attacker(1));
    site.wait_kernel(attacker, true, FEED_WAIT);
    for ip in [site.lab_ip(6), site.lab_ip(7)] {
        site.wait_kernel(ip, true, FEED_WAIT);
    }
    assert!(
        !site.in_kernel(allowed),
        "an allow-listed address was banned"
    );
    assert_eq!(site.ban_rule(allowed), None);
    assert_eq!(
        site.options_from(allowed, ANSWER),
        Some(200),
        "the allow-listed address listed by the feed is still answered"
    );
    assert_eq!(site.options_from(attacker, SILENCE), None);
    assert!(
        site.kernel_set(true).len() <= 3,
        "only .3, .6 and .7 are banned: {:?}",
        site.kernel_set(true)
    );

    let h = site.feed_health();
    assert_eq!(u64_of(&h, "entries"), 4, "{h}");
    assert_eq!(u64_of(&h, "ignored"), 1, "{h}");
    assert_eq!(u64_of(&h, "invalid"), 2, "{h}");
    assert_eq!(u64_of(&h, "too_wide"), 1, "{h}");
    assert_eq!(u64_of(&h, "failures"), 0, "{h}");
    assert!(u64_of(&h, "last_refresh") > 0, "{h}");
    let human = site.daemon.ctl_ok(&["fw", "status"]);
    assert!(human.contains("FEED"), "{human}");
    assert!(human.contains("feed.txt"), "{human}");
    let log = site.daemon.log_text();
    assert!(
        log.contains("not-an-address") && log.contains("feed.txt"),
        "skipped entries are logged with the feed's name:\n{log}"
    );

    // A feed that cannot be used changes nothing: its bans stay, the failure is reported.
    write_atomically(&site.feed_path(), &"#".repeat(2 * 1024 * 1024));
    let failed = eventually(FEED_WAIT, || {
        let h = site.feed_health();
        (u64_of(&h, "failures") > 0).then_some(h)
    })
    .unwrap_or_else(|| panic!("an oversized feed was not reported: {}", site.feed_health()));
    let error = json_str(&failed, "last_error")
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("1 MiB"), "{failed}");
    assert!(site.in_kernel(attacker), "a broken feed lifted the bans");
}

#[test]
fn an_export_imported_by_a_second_site_bans_the_same_addresses() {
    let a = site(|_| String::new(), |_| String::new());
    let v4 = a.attacker(0);
    let v6: IpAddr = a.lab.attacker_ip6().into();
    // The attacker scans over IPv4 and IPv6: banned by the scanner rule.
    for src in [v4, v6] {
        let target = if src.is_ipv4() {
            a.lab.sip_addr()
        } else {
            a.lab.sip_addr6()
        };
        let sock = a.attacker_socket(src);
        sock.connect(target).expect("connect");
        let local = sock.local_addr().expect("local addr");
        let msg = outpost_tests::sip_request(
            "OPTIONS",
            "sip:outpost",
            outpost_tests::Transport::Udp,
            local,
            &format!("feedtest-{}-{src}", std::process::id()),
            "User-Agent: friendly-scanner\r\n",
        );
        let _ = sock.send(msg.as_bytes());
        a.wait_kernel(src, true, Duration::from_secs(3));
    }
    // And the admin imports one address by hand.
    let list = a.files.path().join("manual.txt");
    write_atomically(&list, "198.51.100.77\n");
    let out = a
        .daemon
        .ctl_ok(&["fw", "import", list.to_str().expect("utf-8 path")]);
    assert!(out.contains("1 addresses banned"), "{out}");
    let manual: IpAddr = "198.51.100.77".parse().expect("an address");
    a.wait_kernel(manual, true, Duration::from_secs(3));

    let json_path = a.files.path().join("export.json");
    let lines_path = a.files.path().join("export.txt");
    a.daemon
        .ctl_ok(&["fw", "export", "--out", json_path.to_str().expect("utf-8")]);
    a.daemon.ctl_ok(&[
        "fw",
        "export",
        "--format",
        "lines",
        "--out",
        lines_path.to_str().expect("utf-8"),
    ]);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("the export was written"))
            .expect("the export is JSON");
    assert!(u64_of(&doc, "generated") > 0, "{doc}");
    let bans = doc["bans"].as_array().expect("a bans list");
    let exported: Vec<IpAddr> = bans
        .iter()
        .filter_map(|b| json_str(b, "addr")?.parse().ok())
        .collect();
    for ip in [v4, v6, manual] {
        assert!(exported.contains(&ip), "{ip} not exported: {doc}");
    }
    for b in bans {
        assert!(
            u64_of(b, "until") > 0
                && json_str(b, "rule").is_some()
                && json_str(b, "reason").is_some(),
            "{b}"
        );
    }
    let stdout = a.daemon.ctl_ok(&["fw", "export"]);
    let again: Value = serde_json::from_str(&stdout).expect("stdout export is JSON");
    assert_eq!(again["bans"].as_array().map(Vec::len), Some(3));

    // A second site reads the lines export as its feed and imports the JSON one.
    let lines = std::fs::read_to_string(&lines_path).expect("the lines export");
    let mut b = site(|_| feed_toml(), |_| lines.clone());
    for ip in [v4, v6, manual] {
        b.wait_kernel(ip, true, FEED_WAIT);
        assert_eq!(b.ban_rule(ip).as_deref(), Some("feed"), "{ip}");
    }
    let out = b.daemon.ctl_ok(&[
        "fw",
        "import",
        json_path.to_str().expect("utf-8"),
        "--ban-secs",
        "7200",
    ]);
    assert!(out.contains("3 addresses banned for 7200 s"), "{out}");
    for ip in [v4, v6, manual] {
        assert_eq!(b.ban_rule(ip).as_deref(), Some("manual"), "{ip}");
        assert!(b.in_kernel(ip), "{ip}");
    }
    // Imported bans are ours: stored, so after a restart they are back as they were (the
    // feed, whose bans are shorter, leaves them alone).
    b.daemon.stop();
    b.daemon.restart();
    for ip in [v4, v6, manual] {
        b.wait_kernel(ip, true, Duration::from_secs(5));
        assert_eq!(b.ban_rule(ip).as_deref(), Some("manual"), "{ip}");
    }
}

/// A feed server on the office LAN (the lab's phone namespace): HTTPS with a certificate
/// for its address from a private CA; it answers every GET with the status and body the
/// test sets. Accepts until the process ends (the namespace goes with the test).
struct FeedServer {
    url: String,
    ca_pem: String,
    answer: Arc<Mutex<(u16, String)>>,
    gets: Arc<AtomicUsize>,
}

impl FeedServer {
    fn start(lab: &FwLab) -> FeedServer {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "office feed CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(lab.phone_ip())));
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
        let config = Arc::new(config);
        let bind = SocketAddr::new(IpAddr::V4(lab.phone_ip()), 0);
        let listener = in_netns(lab.phone.name(), move || {
            TcpListener::bind(bind).expect("bind the feed server")
        });
        let port = listener.local_addr().expect("local addr").port();
        let answer = Arc::new(Mutex::new((200, String::new())));
        let gets = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (answer.clone(), gets.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(tls) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut stream = rustls::StreamOwned::new(tls, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if !head.starts_with(b"GET ") {
                    continue; // a client that refused our certificate, or no request
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let (status, body) = served.lock().expect("answer lock").clone();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
                let _ = stream.flush();
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
        });
        FeedServer {
            url: format!("https://{}:{port}", lab.phone_ip()),
            ca_pem,
            answer,
            gets,
        }
    }

    fn set(&self, status: u16, body: &str) {
        *self.answer.lock().expect("answer lock") = (status, body.to_owned());
    }
}

#[test]
fn an_https_feed_bans_keeps_its_bans_through_a_failed_fetch_and_trusts_only_its_ca() {
    require_root("the firewall feed tests");
    let lab = FwLab::new();
    let server = FeedServer::start(&lab);
    server.set(200, "# nothing yet\n");
    let files = tempfile::tempdir().expect("temp dir");
    let ca = files.path().join("feed-ca.pem");
    std::fs::write(&ca, &server.ca_pem).expect("write the CA");
    // The second feed is the same server without its CA: the Mozilla roots do not vouch
    // for it, so it must never be read.
    let toml = format!(
        "[[firewall.feeds]]\nsource = \"{url}/drop.txt\"\nca = \"{ca}\"\nrefresh_secs = {REFRESH_SECS}\nban_secs = 600\n\
         [[firewall.feeds]]\nsource = \"{url}/other.txt\"\nrefresh_secs = {REFRESH_SECS}\nban_secs = 600\n",
        url = server.url,
        ca = ca.display()
    );
    let daemon = Daemon::start_in(&lab.appliance, lab.daemon_config().with_toml(&toml));
    let site = Site { daemon, lab, files };
    let attacker = site.attacker(0);
    assert_eq!(
        site.options_from(attacker, ANSWER),
        Some(200),
        "before it is listed the attacker's address is answered"
    );

    server.set(200, &format!("{attacker}  # seen scanning elsewhere\n"));
    let took = site.wait_kernel(attacker, true, FEED_WAIT);
    println!(
        "HTTPS feed listing -> in the kernel ban set after {took:?} (refresh {REFRESH_SECS} s)"
    );
    assert_eq!(site.ban_rule(attacker).as_deref(), Some("feed"));
    assert_eq!(site.options_from(attacker, SILENCE), None);

    // The server fails: the failure is reported and the bans of the last good read stay.
    server.set(503, "");
    let failed = eventually(FEED_WAIT, || {
        let h = site.feed_health();
        json_str(&h, "last_error").is_some().then_some(h)
    })
    .unwrap_or_else(|| panic!("a failed fetch was not reported: {}", site.feed_health()));
    let error = json_str(&failed, "last_error").unwrap_or_default();
    assert!(error.contains("503"), "{failed}");
    assert!(site.in_kernel(attacker), "a failed fetch lifted the bans");

    // The feed server without the configured CA is never trusted.
    let st = site.fw_status();
    let other = st
        .get("feeds")
        .and_then(|f| f.get(1))
        .cloned()
        .unwrap_or_else(|| panic!("fw status without the second feed: {st}"));
    let error = json_str(&other, "last_error").unwrap_or_default();
    assert!(
        error.contains("certificate") && u64_of(&other, "entries") == 0,
        "the feed whose server the box cannot verify: {other}"
    );

    // Back, no longer listing the attacker: the ban is lifted.
    server.set(200, "# clean\n");
    let took = site.wait_kernel(attacker, false, FEED_WAIT);
    println!("entry gone from the HTTPS feed -> out of the kernel ban set after {took:?}");
    assert_eq!(
        site.options_from(attacker, ANSWER),
        Some(200),
        "an address that left the feed is answered again"
    );
    assert!(
        server.gets.load(Ordering::SeqCst) >= 3,
        "the feed was fetched at each refresh"
    );
}
