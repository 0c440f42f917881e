//! The web admin page (issue 19) in a real browser: Debian's chromium, headless, over
//! WebDriver, against the real daemon in a network namespace with kernel enforcement.
//!
//! The box (the firewall lab's appliance namespace) has the lab's bridge, where the phone
//! namespace (SIPp phones, inside the management networks) and the attacker namespace
//! (outside them) live, and a veth link to the test's own namespace, where chromium runs as
//! the office's browser. What it checks, in one session as an admin would go: the login
//! page; a wrong CSRF-less POST refused; adding an extension; a SIPp phone registering with
//! it appears on the dashboard by itself; a SIPp call is seen live, then in the call
//! records; a scanner from the attacker namespace is banned, seen and unbanned; a
//! configuration change with a mistake shows the error at its line, a good one is applied
//! on trial, counted down and confirmed; the page refused to the attacker's namespace (the
//! kernel's management zone); every page's screenshot (desktop and phone width) is not
//! blank; ten wrong passwords ban the browser's own address in the kernel.
//! REQUIRES root, `ip`, `nft`, `sipp`, `chromium`, `chromedriver`, `curl`; never skipped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use outpost_tests::browser::{curl_in, https, Browser};
use outpost_tests::{
    eventually, json_str, require_root, run_with_timeout, sip_request, udp_recv, Daemon, FwLab,
    Sipp, SippProcess, Transport,
};
use serde_json::{json, Value};

const WEB_PORT: u16 = 8443;
const ADMIN_PASSWORD: &str = "office-manager-42";
const PHONE_A: (&str, &str) = ("201", "desk-phone-201");
const PHONE_B: (&str, &str) = ("202", "desk-phone-202");
/// Upper bound of a wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(15);

/// The veth between the test's namespace and the box; deleted on drop.
struct HostLink {
    name: String,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = run_with_timeout(
            Command::new("ip").args(["link", "del", &self.name]),
            Duration::from_secs(10),
        );
    }
}

/// Field order: the daemon stops before the link and the namespaces go.
struct Site {
    daemon: Daemon,
    _link: HostLink,
    lab: FwLab,
    /// The box's address on the browser's link.
    box_ip: Ipv4Addr,
    /// The browser's address.
    host_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = run_with_timeout(Command::new("ip").args(args), Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "ip {args:?}: {out:?}");
}

fn site() -> Site {
    require_root("the web page test");
    let lab = FwLab::new();
    let n = lab.subnet();
    let box_ip = Ipv4Addr::new(10, 209, n, 1);
    let host_ip = Ipv4Addr::new(10, 209, n, 2);
    let link = HostLink {
        name: format!("owb{}", std::process::id() % 100_000),
    };
    ip(&[
        "link",
        "add",
        &link.name,
        "type",
        "veth",
        "peer",
        "name",
        "ehost",
        "netns",
        lab.appliance.name(),
    ]);
    ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &link.name]);
    ip(&["link", "set", &link.name, "up"]);
    lab.appliance
        .ip(&["addr", "add", &format!("{box_ip}/24"), "dev", "ehost"]);
    lab.appliance.ip(&["link", "set", "ehost", "up"]);
    // The phones and the browser are the office; the attacker is not.
    let toml = format!(
        "[web]\nlisten = [\"0.0.0.0:{WEB_PORT}\"]\n\n\
         [management]\nnetworks = [\"{}/32\", \"10.209.{n}.0/24\", \"127.0.0.0/8\", \"::1/128\"]\n",
        lab.phone_ip()
    );
    let daemon = Daemon::start_in(&lab.appliance, lab.daemon_config().with_toml(&toml));
    let installed = eventually(WAIT, || lab.appliance.outpost_set("ban4").map(|_| ()));
    assert!(
        installed.is_some(),
        "the kernel table was not installed:\n{}",
        daemon.log_text()
    );
    let set = daemon.admin(&json!({"cmd": "admin", "admin": "passwd", "password": ADMIN_PASSWORD}));
    assert_eq!(set["reply"], "done", "{set}");
    Site {
        daemon,
        _link: link,
        lab,
        box_ip,
        host_ip,
    }
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("https://{}:{WEB_PORT}{path}", self.box_ip)
    }

    fn phone_sipp(&self, scenario: &str) -> Sipp {
        Sipp::new(scenario, &self.daemon).in_netns(&self.lab.phone, self.lab.phone_ip().into())
    }

    fn bans(&self) -> Vec<Value> {
        let reply = self.daemon.admin(&json!({"cmd": "fw", "fw": "bans"}));
        reply["data"]["bans"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn ban_of(&self, addr: IpAddr) -> Option<Value> {
        let addr = addr.to_string();
        self.bans()
            .into_iter()
            .find(|b| b["addr"].as_str() == Some(&addr))
    }
}

/// Logs in with `password` through the form.
fn log_in(b: &Browser, s: &Site, password: &str) {
    b.goto(&s.url("/login"));
    b.fill("Admin password", password);
    b.click_text("Log in");
}

/// A session cookie from a login made with a raw HTTPS request.
fn raw_session(s: &Site) -> String {
    let reply = https(
        "POST",
        &s.url("/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(&format!("password={ADMIN_PASSWORD}")),
    )
    .expect("a login answer");
    assert_eq!(reply.status, 303, "{reply:?}");
    let cookie = reply.header("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap_or_default().to_owned()
}

fn callee(s: &Site) -> SippProcess {
    let mut process = s
        .phone_sipp("callee.xml")
        .account(PHONE_B.0, PHONE_B.1)
        .ooc("uas_answer.xml")
        .spawn();
    let deadline = Instant::now() + WAIT;
    while s.daemon.registrations_of(PHONE_B.0).is_empty() {
        if !process.is_running() || Instant::now() >= deadline {
            panic!("callee did not register:\n{}", process.wait().dump());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

#[test]
fn an_admin_runs_the_office_from_the_browser() {
    let s = site();
    let b = Browser::start("web");

    // Not logged in: every page leads to the login form.
    b.goto(&s.url("/firewall"));
    b.wait_for_text("Admin password", WAIT);
    assert!(b.current_url().ends_with("/login"), "{}", b.current_url());
    b.screenshot("login");

    // The headers a browser relies on.
    let page = https("GET", &s.url("/login"), &[], None).expect("the login page");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));

    // A state-changing POST without the session's CSRF token is refused and changes nothing.
    let cookie = raw_session(&s);
    let forged = https(
        "POST",
        &s.url("/extensions"),
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some("ext=299&password=forged-password-1"),
    )
    .expect("an answer");
    assert_eq!(forged.status, 403, "{forged:?}");
    let wrong = https(
        "POST",
        &s.url("/extensions"),
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some("csrf=00&ext=299&password=forged-password-1"),
    )
    .expect("an answer");
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let exts = s.daemon.admin(&json!({"cmd": "ext_list"}));
    assert_eq!(
        exts["data"],
        json!([]),
        "a forged POST created something: {exts}"
    );

    // Log in.
    log_in(&b, &s, ADMIN_PASSWORD);
    b.wait_for_text("Registered phones", WAIT);
    b.screenshot("dashboard-empty");

    // Add the two extensions through the form.
    for (ext, password) in [PHONE_A, PHONE_B] {
        b.goto(&s.url("/extensions"));
        b.fill("Number", ext);
        b.fill("SIP password (8–128 characters)", password);
        b.click_text("Add extension");
        b.wait_for_text(&format!("extension {ext} created"), WAIT);
    }
    b.wait_for_text("Call forwarding", WAIT);
    b.fill("Display name (empty: none)", "Front desk");
    b.click_text("Save name");
    b.wait_for_text("is now called \"Front desk\"", WAIT);
    b.fill("When busy to", PHONE_A.0);
    b.click_text("Save forwarding");
    b.wait_for_text(&format!("extension {}:", PHONE_B.0), WAIT);
    let detail = s
        .daemon
        .admin(&json!({"cmd": "ext_show", "ext": PHONE_B.0}));
    assert_eq!(detail["data"]["name"], "Front desk", "{detail}");
    assert_eq!(detail["data"]["forwarding"]["busy"], PHONE_A.0, "{detail}");
    b.screenshot("extension");
    let listed = s.daemon.admin(&json!({"cmd": "ext_list"}));
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");

    // The dashboard shows a phone that registers, without a reload.
    b.goto(&s.url("/"));
    b.wait_for_text("No phone is registered.", WAIT);
    let callee = callee(&s);
    b.wait_for_text(&format!("{}:", s.lab.phone_ip()), WAIT);
    let text = b.page_text();
    assert!(text.contains(PHONE_B.0), "{text}");
    b.screenshot("dashboard-registered");

    // A call: live on the dashboard, then in the call records.
    let caller = s
        .phone_sipp("uac_call.xml")
        .account(PHONE_A.0, PHONE_A.1)
        .service(PHONE_B.0)
        .hold_ms(9_000)
        .spawn();
    b.wait_for_text("answered", WAIT);
    let live = b.page_text();
    assert!(
        live.contains("PCMU") || live.contains("PCMA"),
        "no codec shown:\n{live}"
    );
    b.screenshot("dashboard-call");
    caller.wait().assert_success("the caller");
    callee.wait().assert_success("the callee");
    s.daemon.wait_cdrs(1, WAIT);
    b.goto(&s.url(&format!("/calls?ext={}", PHONE_A.0)));
    b.wait_for_text("1 record.", WAIT);
    let calls = b.page_text();
    assert!(
        calls.contains("answered") && calls.contains(PHONE_B.0),
        "{calls}"
    );
    b.screenshot("calls");
    let csv = https(
        "GET",
        &s.url("/calls/export?format=csv"),
        &[("cookie", &cookie)],
        None,
    )
    .expect("the CSV");
    assert_eq!(csv.status, 200);
    assert_eq!(csv.body.lines().count(), 2, "{}", csv.body);
    assert!(csv.body.contains(",answered,200,"), "{}", csv.body);

    // A scanner in the attacker's namespace is banned; the admin sees it and unbans it.
    let attacker: IpAddr = s.lab.attacker_ip().into();
    let sock = s.lab.attacker_socket(attacker);
    let target = s.lab.sip_addr();
    let local = sock.local_addr().expect("local address");
    let probe = sip_request(
        "OPTIONS",
        &format!("sip:{}", target.ip()),
        Transport::Udp,
        local,
        "web-scan@attacker",
        "User-Agent: friendly-scanner\r\n",
    );
    let _ = sock.send_to(probe.as_bytes(), target);
    let _ = udp_recv(&sock, Duration::from_millis(300));
    eventually(WAIT, || s.ban_of(attacker)).expect("the scanner is banned");
    b.goto(&s.url("/firewall"));
    b.wait_for_text(&attacker.to_string(), WAIT);
    b.screenshot("firewall-ban");
    b.click_text(&format!("Unban {attacker}"));
    b.wait_for_text(&format!("{attacker}"), WAIT);
    assert!(
        eventually(WAIT, || s.ban_of(attacker).is_none().then_some(())).is_some(),
        "still banned after Unban: {:?}",
        s.bans()
    );
    assert!(
        !b.page_text().contains(&format!("Unban {attacker}")),
        "{}",
        b.page_text()
    );

    // The page is refused to the attacker's namespace (outside the management networks),
    // in the kernel; the office browser still gets it.
    let before = s.lab.appliance.outpost_counter("mgmt_drop").unwrap_or(0);
    let stranger = curl_in(
        &s.lab.attacker,
        &format!("https://{}:{WEB_PORT}/login", s.lab.appliance_ip()),
        Duration::from_secs(3),
    );
    assert!(
        stranger.status.is_none(),
        "the attacker got an answer: {stranger:?}"
    );
    let after = eventually(WAIT, || {
        s.lab
            .appliance
            .outpost_counter("mgmt_drop")
            .filter(|c| *c > before)
    });
    assert!(
        after.is_some(),
        "the kernel did not count the attacker's SYN"
    );
    let office = curl_in(
        &s.lab.phone,
        &format!("https://{}:{WEB_PORT}/login", s.lab.appliance_ip()),
        Duration::from_secs(5),
    );
    assert_eq!(office.status, Some(200), "{office:?}");

    // The configuration: a mistake is shown at its line, a good change goes on trial and
    // is confirmed.
    b.goto(&s.url("/config"));
    b.wait_for_text("Revisions", WAIT);
    let running = s
        .daemon
        .admin(&json!({"cmd": "config", "config": "show", "rev": null}));
    let text = running["data"]["text"]
        .as_str()
        .expect("the running text")
        .to_owned();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("ring_timeout_secs"))
        .expect("the harness sets ring_timeout_secs")
        + 1;
    let bad = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("ring_timeout_secs") {
                "ring_timeout_secs = \"soon\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    b.fill("Configuration (TOML, as in docs/configuration.md)", &bad);
    b.click_text("Apply");
    b.wait_for_text(&format!("Line {line}:"), WAIT);
    assert!(
        b.page_source()
            .contains("<li class=\"error\"><code>ring_timeout_secs = \"soon\""),
        "the wrong line is not marked"
    );
    b.screenshot("config-error");
    let good = bad.replace("ring_timeout_secs = \"soon\"", "ring_timeout_secs = 33");
    b.fill("Configuration (TOML, as in docs/configuration.md)", &good);
    b.click_text("Apply");
    b.wait_for_text("is on trial", WAIT);
    b.wait_for_text("s left to confirm", WAIT);
    b.screenshot("config-trial");
    b.click_text("Confirm");
    // The trial page also says "Running: revision": wait for the page after the confirm.
    let confirmed = eventually(WAIT, || {
        let text = b.page_text();
        (text.contains("Running: revision") && !text.contains("is on trial")).then_some(())
    });
    assert!(confirmed.is_some(), "{}", b.page_text());
    let revs = s.daemon.admin(&json!({"cmd": "config", "config": "list"}));
    let newest = revs["data"]
        .as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(json_str(&newest, "state"), Some("applied"), "{revs}");
    let now_running = s
        .daemon
        .admin(&json!({"cmd": "config", "config": "show", "rev": null}));
    assert!(
        now_running["data"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("ring_timeout_secs = 33"),
        "{now_running}"
    );

    // Backups: make one, verify it, download it (streamed in pieces).
    let set = s.daemon.admin(&json!({"cmd": "backup", "backup": "passphrase_set", "passphrase": "a long backup passphrase"}));
    assert_eq!(set["reply"], "done", "{set}");
    b.goto(&s.url("/backups"));
    b.click_text("Make a backup now");
    b.wait_for_text("made (", WAIT);
    b.click_text("Verify");
    b.wait_for_text("is complete: made", WAIT);
    let source = b.page_source();
    let name = source
        .split("href=\"/backups/file/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a download link")
        .to_owned();
    let file = https(
        "GET",
        &s.url(&format!("/backups/file/{name}")),
        &[("cookie", &cookie)],
        None,
    )
    .expect("the backup");
    assert_eq!(file.status, 200, "{file:?}");
    assert!(
        file.body.starts_with("age-encryption.org/v1"),
        "not an age file"
    );
    let listed = s.daemon.admin(&json!({"cmd": "backup", "backup": "list"}));
    let size = listed["data"]["backups"][0]["size"]
        .as_u64()
        .expect("its size");
    assert_eq!(
        file.header("content-length")
            .and_then(|l| l.parse::<u64>().ok()),
        Some(size),
        "{listed}"
    );
    let outside = https(
        "GET",
        &s.url("/backups/file/..%2Foutpost.redb"),
        &[("cookie", &cookie)],
        None,
    )
    .expect("an answer");
    assert_eq!(outside.status, 404, "{outside:?}");

    // Every page renders something, at desktop and at phone width.
    for (name, path) in [
        ("dashboard", "/"),
        ("extensions", "/extensions"),
        ("calls-all", "/calls"),
        ("voicemail", "/voicemail"),
        ("firewall", "/firewall"),
        ("config", "/config"),
        ("backups", "/backups"),
        ("updates", "/updates"),
        ("system", "/system"),
    ] {
        b.goto(&s.url(path));
        b.wait_for_text("Log out", WAIT);
        b.screenshot(name);
        // Every control is labelled (for screen readers and for clicking the label).
        let unlabelled = b.eval(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea'))\
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))\
             .map(e => e.name || e.id);",
        );
        assert_eq!(unlabelled, json!([]), "unlabelled controls on {path}");
        // Keyboard: the first Tab reaches the skip link, and every button can be focused.
        let skip = b.eval("return document.querySelector('a.skip') !== null;");
        assert_eq!(skip, json!(true), "no skip link on {path}");
    }
    b.phone();
    assert!(
        b.inner_width() <= 400,
        "not at phone width: {}",
        b.inner_width()
    );
    for (name, path) in [
        ("phone-dashboard", "/"),
        ("phone-extensions", "/extensions"),
    ] {
        b.goto(&s.url(path));
        b.wait_for_text("Log out", WAIT);
        b.screenshot(name);
        let scroll = b.scroll_width();
        assert!(scroll <= 400, "{path} needs {scroll} px at phone width");
    }

    // Ten wrong passwords: the browser's own address is banned in the kernel.
    b.click_text("Log out");
    b.wait_for_text("Admin password", WAIT);
    for i in 0..9 {
        log_in(&b, &s, &format!("wrong-password-{i}"));
        b.wait_for_text("Wrong password.", WAIT);
    }
    // The tenth from the same address, outside the browser: its answer may never come
    // (the ban can drop it on the way back).
    let _ = https(
        "POST",
        &s.url("/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Some("password=wrong-password-9"),
    );
    let host: IpAddr = s.host_ip.into();
    let ban = eventually(WAIT, || s.ban_of(host)).unwrap_or_else(|| {
        panic!(
            "{host} not banned after ten wrong passwords: {:?}\n{}",
            s.bans(),
            s.daemon.log_text()
        )
    });
    assert!(
        ban.to_string().contains("web"),
        "the ban does not name the web page: {ban}"
    );
    let refused = run_with_timeout(
        Command::new("curl").args(["-k", "-sS", "--max-time", "3", &s.url("/login")]),
        Duration::from_secs(10),
    );
    assert_ne!(
        refused.code,
        Some(0),
        "a banned browser still reaches the page"
    );
    let _ = SocketAddr::from((s.box_ip, WEB_PORT));
}
