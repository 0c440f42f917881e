//! Desk-phone auto-provisioning (issue 20): the real daemon in the firewall lab's appliance
//! namespace with kernel enforcement, `[provision] listen` on plain HTTP and `[web]` on
//! HTTPS. One phone of each vendor is added with `outpostctl phone add`; from the phone
//! namespace (the office, inside the management networks) a real HTTP client fetches each
//! file as that vendor's phone does (its User-Agent and path, HTTP Basic with the phone's
//! provisioning credentials), and each file is parsed back with a real parser for its
//! format (roxmltree for XML, a strict `key = value` / `Key :Value` reader) and checked field
//! by field; the served SIP password registers the extension. Then: no credentials → 401
//! with a Basic challenge, a wrong password → 401, an unknown MAC → 404 with an empty body,
//! `/provision/` → 404 (no listing); the attacker's IPv6 address (outside the management
//! networks) is dropped by the kernel; ten wrong passwords from the attacker's IPv4 address
//! (inside them) ban it, while the office phone fetching correctly twenty times is never
//! banned; a phone whose extension was deleted, or that was deleted, gets nothing.
//! A box that provisioned a phone is backed up and a new box (its data directory wiped)
//! restored from the backup: the phone fetches its file there with the same provisioning
//! credentials, gets the same SIP password and registers with it.
//! REQUIRES root, `ip`, `nft`; never skipped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use outpost_tests::browser::{https, HttpsReply};
use outpost_tests::{eventually, in_netns, require_root, Daemon, FwLab, Netns, SipPhone};
use serde_json::{json, Value};

const PROV_PORT: u16 = 8088;
/// What each vendor's phone says it is.
const YEALINK_UA: &str = "Yealink SIP-T46U 108.86.0.20 80:5e:c0:00:00:01";
const SNOM_UA: &str = "Mozilla/4.0 (compatible; snomD785-SIP 10.1.73.16)";
const POLY_UA: &str = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5039";
const WEB_PORT: u16 = 8443;
/// Upper bound of a wait that is expected to succeed.
const WAIT: Duration = Duration::from_secs(15);

struct Site {
    daemon: Daemon,
    lab: FwLab,
}

fn site() -> Site {
    site_with("utc_offset_minutes = 60", "")
}

/// [`site`] with `time` as the time zone line of `[provision]` and `extra` TOML sections.
fn site_with(time: &str, extra: &str) -> Site {
    require_root("the provisioning test");
    let lab = FwLab::new();
    // The office phone and the attacker's first IPv4 address are inside the management
    // networks (the guesser must reach the listener to be counted); IPv6 is outside.
    let toml = format!(
        "[web]\nlisten = [\"0.0.0.0:{WEB_PORT}\"]\n\n\
         [provision]\nlisten = [\"0.0.0.0:{PROV_PORT}\", \"[::]:{PROV_PORT}\"]\n{time}\n\n\
         [management]\nnetworks = [\"{}/32\", \"{}/32\", \"127.0.0.0/8\", \"::1/128\"]\n{extra}",
        lab.phone_ip(),
        lab.attacker_ip(),
    );
    let daemon = Daemon::start_in(&lab.appliance, lab.daemon_config().with_toml(&toml));
    let installed = eventually(WAIT, || lab.appliance.outpost_set("ban4").map(|_| ()));
    assert!(
        installed.is_some(),
        "the kernel table was not installed:\n{}",
        daemon.log_text()
    );
    Site { daemon, lab }
}

/// A GET from inside `ns` with `user_agent` and optional Basic credentials.
fn get_in(ns: &Netns, url: &str, user_agent: &str, auth: Option<(&str, &str)>) -> HttpsReply {
    let url = url.to_owned();
    let ua = user_agent.to_owned();
    let auth = auth.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    in_netns(ns.name(), move || {
        let mut headers = vec![("user-agent", ua.as_str())];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        https("GET", &url, &headers, None).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Whether a TCP connection from `ns` to `to` completes within `wait`.
fn connects(ns: &Netns, to: SocketAddr, wait: Duration) -> bool {
    in_netns(ns.name(), move || {
        std::net::TcpStream::connect_timeout(&to, wait).is_ok()
    })
}

/// Strict `key<sep>value` lines: every line is a comment (`#`), a module marker (`<`) or
/// exactly one pair whose key appears once.
fn pairs(body: &str, sep: char) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.starts_with('<') {
            continue;
        }
        let (k, v) = line
            .split_once(sep)
            .unwrap_or_else(|| panic!("not a pair: {line:?}"));
        let old = out.insert(k.trim().to_owned(), v.trim().to_owned());
        assert!(old.is_none(), "{k} twice");
    }
    out
}

/// The text of element `name` (anywhere in `doc`).
fn text_of<'a>(doc: &'a roxmltree::Document<'_>, name: &str) -> &'a str {
    let found: Vec<_> = doc.descendants().filter(|n| n.has_tag_name(name)).collect();
    assert_eq!(found.len(), 1, "<{name}> once");
    found[0].text().unwrap_or("")
}

/// The attribute `attr` of the only element carrying it.
fn attr_of<'a>(doc: &'a roxmltree::Document<'_>, attr: &str) -> &'a str {
    let found: Vec<_> = doc
        .descendants()
        .filter_map(|n| n.attribute(attr))
        .collect();
    assert_eq!(found.len(), 1, "{attr} once");
    found[0]
}

struct Added {
    user: String,
    password: String,
}

/// Extensions named "Desk <ext>".
fn add_desks(s: &Site, exts: &[&str]) {
    for ext in exts {
        let r = s.daemon.admin(&json!({"cmd": "ext_add", "ext": ext,
            "name": format!("Desk {ext}"), "password": format!("initial-{ext}-pw")}));
        assert_eq!(r["reply"], "done", "{r}");
    }
}

fn add_phone(s: &Site, mac: &str, model: &str, ext: &str) -> Added {
    let reply = s
        .daemon
        .ctl_json(&["phone", "add", mac, model, ext, "--keys", "102,103"]);
    Added {
        user: reply["username"].as_str().expect("a user name").to_owned(),
        password: reply["password"].as_str().expect("a password").to_owned(),
    }
}

impl Site {
    /// [`Site::office`] with `phone`'s credentials, which must be answered `200`: the body.
    fn fetched(&self, file: &str, user_agent: &str, phone: &Added) -> String {
        let r = self.office(file, user_agent, Some(phone));
        assert_eq!(r.status, 200, "{file}: {r:?}");
        r.body
    }

    /// The status of a REGISTER (digest) of `ext` with `password` from the office phone.
    fn register(&self, ext: &str, password: &str) -> Option<u16> {
        let mut phone = SipPhone::on_socket(
            self.lab.phone_socket(self.lab.phone_ip().into()),
            self.lab.sip_addr(),
            ext,
            password,
        );
        phone.register_status(Duration::from_secs(5))
    }

    /// A GET of `/provision/<file>` on the plain-HTTP listener from the office phone's
    /// namespace, with `phone`'s credentials when given.
    fn office(&self, file: &str, user_agent: &str, phone: Option<&Added>) -> HttpsReply {
        let url = format!(
            "http://{}:{PROV_PORT}/provision/{file}",
            self.lab.appliance_ip()
        );
        get_in(
            &self.lab.phone,
            &url,
            user_agent,
            phone.map(|p| (p.user.as_str(), p.password.as_str())),
        )
    }
}

fn bans(s: &Site) -> Vec<Value> {
    let reply = s.daemon.admin(&json!({"cmd": "fw", "fw": "bans"}));
    reply["data"]["bans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn banned(s: &Site, addr: IpAddr) -> Option<Value> {
    let addr = addr.to_string();
    bans(s)
        .into_iter()
        .find(|b| b["addr"].as_str() == Some(&addr))
}

#[test]
fn each_vendor_fetches_its_file_strangers_and_guessers_get_nothing() {
    let s = site();
    let box_ip = s.lab.appliance_ip();
    let sip_port = s.lab.sip_addr().port().to_string();
    let base = format!("http://{box_ip}:{PROV_PORT}/provision");
    add_desks(&s, &["101", "102", "103", "104", "105", "106"]);
    let yealink = add_phone(&s, "80:5E:C0:00:00:01", "T46U", "101");
    let grandstream = add_phone(&s, "000b82000002", "GXP2170", "102");
    let snom = add_phone(&s, "00-04-13-00-00-03", "D785", "103");
    let poly = add_phone(&s, "0004.f200.0004", "VVX450", "104");
    let fanvil = add_phone(&s, "0c383e000005", "X4U", "105");
    let listed = s.daemon.ctl_json(&["phone", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(5), "{listed}");
    // Bad input is refused before anything is stored.
    for args in [
        vec!["phone", "add", "80:5e:c0:00:00", "T46U", "106"],
        vec!["phone", "add", "805ec0000009", "CP8841", "106"],
        vec!["phone", "add", "805ec0000009", "T46U", "999"],
    ] {
        let out = s.daemon.ctl(&args);
        assert_ne!(out.code, Some(0), "{args:?}: {out:?}");
    }

    // Yealink: <mac>.cfg, key = value.
    let ua = "Yealink SIP-T46U 108.86.0.20 80:5e:c0:00:00:01";
    let r = s.office("805ec0000001.cfg", ua, Some(&yealink));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("#!version:1.0.0.1\n"), "{}", r.body);
    let kv = pairs(&r.body, '=');
    let sip_password = kv["account.1.password"].clone();
    assert_eq!(sip_password.len(), 24);
    assert_ne!(sip_password, yealink.password);
    for (k, v) in [
        ("account.1.enable", "1"),
        ("account.1.user_name", "101"),
        ("account.1.auth_name", "101"),
        ("account.1.display_name", "Desk 101"),
        ("account.1.sip_server.1.address", &box_ip.to_string()),
        ("account.1.sip_server.1.port", &sip_port),
        ("account.1.sip_server.1.transport_type", "0"),
        ("voice_mail.number.1", "*97"),
        ("local_time.time_zone", "+1"),
        ("linekey.1.type", "15"),
        ("linekey.2.type", "16"),
        ("linekey.2.value", "102"),
        ("linekey.3.value", "103"),
    ] {
        assert_eq!(kv.get(k).map(String::as_str), Some(v), "yealink {k}");
    }
    // The served password is the extension's now: a phone registers with it.
    assert_eq!(s.register("101", &sip_password), Some(200));

    // Grandstream: cfg<mac>.xml, P-values.
    let r = s.office(
        "cfg000b82000002.xml",
        "Grandstream Model HW GXP2170 SW 1.0.11.3 DevId 000b82000002",
        Some(&grandstream),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let doc = roxmltree::Document::parse(&r.body).expect("Grandstream XML");
    assert_eq!(doc.root_element().tag_name().name(), "gs_provision");
    assert_eq!(text_of(&doc, "mac"), "000b82000002");
    let server = format!("{box_ip}:{sip_port}");
    for (k, v) in [
        ("P271", "1"),
        ("P35", "102"),
        ("P36", "102"),
        ("P3", "Desk 102"),
        ("P47", server.as_str()),
        ("P130", "0"),
        ("P33", "*97"),
        ("P64", "UTC-1"),
        ("P323", "1"),
        ("P303", "102"),
        ("P324", "1"),
        ("P306", "103"),
    ] {
        assert_eq!(text_of(&doc, k), v, "grandstream {k}");
    }
    assert_eq!(text_of(&doc, "P34").len(), 24);

    // Snom: snom<model>-<MAC>.htm, settings XML.
    let r = s.office(
        "snomD785-000413000003.htm",
        "Mozilla/4.0 (compatible; snomD785-SIP 10.1.73.16)",
        Some(&snom),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let doc = roxmltree::Document::parse(&r.body).expect("Snom XML");
    assert_eq!(doc.root_element().tag_name().name(), "settings");
    for (k, v) in [
        ("user_name", "103"),
        ("user_pname", "103"),
        ("user_realname", "Desk 103"),
        ("user_host", &format!("{box_ip}:{sip_port};transport=udp")),
        ("user_mailbox", "*97"),
        ("utc_offset", "3600"),
    ] {
        assert_eq!(text_of(&doc, k), v, "snom {k}");
    }
    assert_eq!(text_of(&doc, "user_pass").len(), 24);
    let keys: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("fkey"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(
        keys,
        [
            "line".to_owned(),
            format!("blf <sip:102@{box_ip}>"),
            format!("blf <sip:103@{box_ip}>")
        ]
    );
    // Its other path gives the same file.
    let again = s.office(
        "000413000003.xml",
        "Mozilla/4.0 (compatible; snomD785-SIP 10.1.73.16)",
        Some(&snom),
    );
    assert_eq!(again.body, r.body);

    // Poly: the master file <mac>.cfg names the phone's file.
    let ua = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5039";
    let r = s.office("0004f2000004.cfg", ua, Some(&poly));
    assert_eq!(r.status, 200, "{r:?}");
    let doc = roxmltree::Document::parse(&r.body).expect("Poly master XML");
    assert_eq!(doc.root_element().tag_name().name(), "APPLICATION");
    let named = attr_of(&doc, "CONFIG_FILES").to_owned();
    assert_eq!(named, "0004f2000004-outpost.cfg");
    let r = s.office(&named, ua, Some(&poly));
    assert_eq!(r.status, 200, "{r:?}");
    let doc = roxmltree::Document::parse(&r.body).expect("Poly XML");
    assert_eq!(doc.root_element().tag_name().name(), "polycomConfig");
    for (k, v) in [
        ("reg.1.address", "104"),
        ("reg.1.auth.userId", "104"),
        ("reg.1.displayName", "Desk 104"),
        ("reg.1.server.1.address", &box_ip.to_string()),
        ("reg.1.server.1.port", &sip_port),
        ("reg.1.server.1.transport", "UDPOnly"),
        ("msg.mwi.1.callBack", "*97"),
        ("tcpIpApp.sntp.gmtOffset", "3600"),
        ("attendant.resourceList.1.address", "102"),
        ("attendant.resourceList.2.address", "103"),
    ] {
        assert_eq!(attr_of(&doc, k), v, "poly {k}");
    }
    assert_eq!(attr_of(&doc, "reg.1.auth.password").len(), 24);

    // Fanvil: <mac>.cfg, Key :Value in modules.
    let r = s.office(
        "0c383e000005.cfg",
        "Fanvil X4U 2.12.1 0c383e000005",
        Some(&fanvil),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("<<VOIP CONFIG FILE>>"), "{}", r.body);
    assert!(r.body.ends_with("<<END OF FILE>>\n"), "{}", r.body);
    let kv = pairs(&r.body, ':');
    for (k, v) in [
        ("SIP1 Phone Number", "105"),
        ("SIP1 Register User", "105"),
        ("SIP1 Display Name", "Desk 105"),
        ("SIP1 Register Addr", &box_ip.to_string()),
        ("SIP1 Register Port", &sip_port),
        ("SIP1 Enable Reg", "1"),
        ("SIP1 MWI Num", "*97"),
        ("Time Zone", "+1"),
        ("Fkey1 Value", "102@1/ba"),
        ("Fkey2 Value", "103@1/ba"),
    ] {
        assert_eq!(kv.get(k).map(String::as_str), Some(v), "fanvil {k}");
    }
    assert_eq!(kv["SIP1 Register Pswd"].len(), 24);

    // The same file over the web page's HTTPS, outside its login.
    let r = get_in(
        &s.lab.phone,
        &format!("https://{box_ip}:{WEB_PORT}/provision/805ec0000001.cfg"),
        "Yealink SIP-T46U 108.86.0.20 80:5e:c0:00:00:01",
        Some((&yealink.user, &yealink.password)),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(pairs(&r.body, '=')["account.1.password"], sip_password);

    // A common file: served to a known phone's credentials, with no secret in it.
    let r = s.office("000000000000.cfg", ua, Some(&poly));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.body.contains("password"), "{}", r.body);

    // Refusals: no credentials (a challenge, not counted), a wrong password, an unknown
    // MAC, the directory itself.
    let ua = "Yealink SIP-T46U 108.86.0.20 80:5e:c0:00:00:01";
    let r = s.office("805ec0000001.cfg", ua, None);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic realm=")),
        "{r:?}"
    );
    assert!(r.body.is_empty());
    let r = get_in(
        &s.lab.phone,
        &format!("{base}/805ec0000001.cfg"),
        ua,
        Some((&yealink.user, "not-the-password")),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.body.contains(&sip_password));
    for path in ["805ec00000ff.cfg", "", "../outpost.redb", "index.html"] {
        let r = s.office(path, ua, Some(&yealink));
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(r.body.is_empty(), "{path}: {r:?}");
    }
    // The office phone fetching correctly is never banned.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = s.office("805ec0000001.cfg", ua, Some(&yealink));
        assert_eq!(r.status, 200, "{r:?}");
    }
    println!(
        "20 authenticated fetches over plain HTTP: {:.1} ms each (a new connection each)",
        started.elapsed().as_secs_f64() * 1000.0 / 20.0
    );
    let listed = s.daemon.ctl_json(&["phone", "list"]);
    let fetched = listed
        .as_array()
        .and_then(|v| v.iter().find(|p| p["mac"] == "805ec0000001"))
        .map(|p| p["fetched_ms"].clone());
    assert!(
        fetched.as_ref().is_some_and(Value::is_u64),
        "fetch not recorded: {listed}"
    );

    // Outside the management networks: the kernel drops the connection.
    let outside = SocketAddr::from((s.lab.appliance_ip6(), PROV_PORT));
    assert!(
        !connects(&s.lab.attacker, outside, Duration::from_millis(800)),
        "the listener answered outside the management networks"
    );
    // A guesser inside them: ten wrong passwords ban it.
    let attacker = IpAddr::V4(s.lab.attacker_ip());
    let wrong_passwords = |ns: &Netns, n: usize| {
        for i in 0..n {
            let r = get_in(
                ns,
                &format!("{base}/805ec0000001.cfg"),
                ua,
                Some(("805ec0000001", &format!("wrong-{i}"))),
            );
            assert_eq!(r.status, 401, "{r:?}");
        }
    };
    wrong_passwords(&s.lab.attacker, 10);
    let ban = eventually(WAIT, || banned(&s, attacker));
    assert!(ban.is_some(), "the guesser was not banned: {:?}", bans(&s));
    let ban = ban.unwrap_or_default();
    assert_eq!(ban["rule"], "auth_failures", "{ban}");
    let to = SocketAddr::from((box_ip, PROV_PORT));
    let dropped = eventually(WAIT, || {
        (!connects(&s.lab.attacker, to, Duration::from_millis(800))).then_some(())
    });
    assert!(dropped.is_some(), "the banned guesser still connects");
    assert!(
        banned(&s, IpAddr::V4(s.lab.phone_ip())).is_none(),
        "the office phone was banned: {:?}",
        bans(&s)
    );

    // The office phone (it registered above) polling with stale credentials, as a phone
    // would after its entry was added again: refused every time, never banned (a ban would
    // take its SIP with it), one alert says so.
    wrong_passwords(&s.lab.phone, 15);
    let r = s.office("805ec0000001.cfg", ua, Some(&yealink));
    assert_eq!(
        r.status, 200,
        "the phone was shut out after stale fetches: {r:?}"
    );
    assert!(
        banned(&s, IpAddr::V4(s.lab.phone_ip())).is_none(),
        "a phone fetching with stale credentials was banned: {:?}",
        bans(&s)
    );
    let alerts = s.daemon.ctl_json(&["fw", "alerts"]).to_string();
    assert_eq!(
        alerts.matches("wrong phone password").count(),
        1,
        "one alert for the stale fetches: {alerts}"
    );
    assert_eq!(s.register("101", &sip_password), Some(200));

    // `ext passwd` changes what the phone is served.
    let out = s
        .daemon
        .ctl_ok(&["ext", "passwd", "101", "--password", "changed-by-admin-1"]);
    assert!(out.contains("provisioned phone"), "{out}");
    let r = s.office("805ec0000001.cfg", ua, Some(&yealink));
    assert_eq!(
        pairs(&r.body, '=')["account.1.password"],
        "changed-by-admin-1"
    );

    // A phone whose extension was deleted gets nothing.
    s.daemon.ctl_ok(&["ext", "del", "105"]);
    let r = s.office(
        "0c383e000005.cfg",
        "Fanvil X4U 2.12.1 0c383e000005",
        Some(&fanvil),
    );
    assert_eq!(r.status, 404, "{r:?}");

    // phone del: the phone gets nothing any more.
    s.daemon.ctl_ok(&["phone", "del", "80:5e:c0:00:00:01"]);
    let r = s.office("805ec0000001.cfg", ua, Some(&yealink));
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn a_box_restored_from_a_backup_serves_its_phones_with_the_same_credentials() {
    // The backups of box A are encrypted to an X25519 key the office keeps.
    let office = tempfile::tempdir().expect("temp dir");
    let identity = age::x25519::Identity::generate();
    let identity_file = office.path().join("identity.txt");
    {
        use age::secrecy::ExposeSecret as _;
        std::fs::write(
            &identity_file,
            format!("{}\n", identity.to_string().expose_secret()),
        )
        .expect("write the identity");
    }
    let mut s = site_with(
        "utc_offset_minutes = 60",
        &format!("\n[backup]\nrecipient = \"{}\"\n", identity.to_public()),
    );
    let r = s.daemon.admin(&json!({"cmd": "ext_add", "ext": "101",
        "name": "Reception", "password": "initial-101-pw"}));
    assert_eq!(r["reply"], "done", "{r}");
    let yealink = add_phone(&s, "80:5E:C0:00:00:01", "T46U", "101");
    let ua = YEALINK_UA;
    let file = "805ec0000001.cfg";
    let on_a = pairs(&s.fetched(file, ua, &yealink), '=');
    let sip_password = on_a["account.1.password"].clone();
    let listed_a = s.daemon.ctl_json(&["phone", "list"]);

    // Box A's backup, kept off the box, and the line of A's signing key.
    let made = s.daemon.ctl_json(&["backup", "now"]);
    let name = made["name"].as_str().expect("backup name");
    let backup = office.path().join(name);
    std::fs::copy(s.daemon.data_dir().join("backups").join(name), &backup)
        .expect("copy the backup");
    let signer = s.daemon.ctl_ok(&["backup", "key", "--signing"]);
    let signer: Vec<&str> = signer.split_whitespace().take(2).collect();
    let signer = signer.join(" ");

    // Box B: the same image and boot configuration, nothing else. The phone gets nothing.
    s.daemon.stop();
    std::fs::remove_dir_all(s.daemon.data_dir()).expect("wipe the data directory");
    s.daemon.restart();
    assert_eq!(s.daemon.ctl_json(&["phone", "list"]), json!([]));
    let r = eventually(WAIT, || {
        let r = s.office(file, ua, Some(&yealink));
        (r.status == 404).then_some(r)
    });
    assert!(r.is_some(), "a new box knows no phone");

    let backup = backup.to_str().expect("utf-8");
    let id = identity_file.to_str().expect("utf-8");
    let verified = s.daemon.ctl_json(&[
        "backup",
        "verify",
        backup,
        "--identity",
        id,
        "--signer",
        &signer,
    ]);
    assert_eq!(verified["phones"], 1, "{verified}");
    let staged = s.daemon.ctl_ok(&[
        "backup",
        "restore",
        "--no-wait",
        backup,
        "--identity",
        id,
        "--signer",
        &signer,
    ]);
    assert!(staged.contains("1 desk phones"), "{staged}");
    // outpostd exits to apply the restore; init starts it again.
    let stopped = eventually(WAIT, || {
        (s.daemon.ctl(&["status"]).code != Some(0)).then_some(())
    });
    assert!(stopped.is_some(), "outpostd did not stop to restore");
    s.daemon.stop();
    s.daemon.restart();

    // On B: the same phone, fetching with the same credentials, gets the same account.
    assert_eq!(s.daemon.ctl_json(&["phone", "list"]), listed_a);
    let r = eventually(WAIT, || {
        let r = s.office(file, ua, Some(&yealink));
        (r.status == 200).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "the restored box does not serve the phone:\n{}",
            s.daemon.log_text()
        )
    });
    let on_b = pairs(&r.body, '=');
    for k in [
        "account.1.user_name",
        "account.1.auth_name",
        "account.1.password",
        "account.1.display_name",
        "linekey.2.value",
        "linekey.3.value",
    ] {
        assert_eq!(on_b.get(k), on_a.get(k), "{k}");
    }
    let wrong = get_in(
        &s.lab.phone,
        &format!(
            "http://{}:{PROV_PORT}/provision/{file}",
            s.lab.appliance_ip()
        ),
        ua,
        Some((&yealink.user, "not-the-password")),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    // And the phone registers on B with the password in its file.
    assert_eq!(s.register("101", &sip_password), Some(200));
}

#[test]
fn a_named_time_zone_gives_yealink_and_poly_its_daylight_saving_rule() {
    let s = site_with("time_zone = \"Europe/Berlin\"", "");
    add_desks(&s, &["101", "103", "104"]);
    let yealink = add_phone(&s, "80:5E:C0:00:00:01", "T46U", "101");
    let snom = add_phone(&s, "00-04-13-00-00-03", "D785", "103");
    let poly = add_phone(&s, "0004.f200.0004", "VVX450", "104");

    // Yealink: DST by week, month/week (5 = last)/day (7 = Sunday)/hour, 60 minutes.
    let kv = pairs(&s.fetched("805ec0000001.cfg", YEALINK_UA, &yealink), '=');
    for (k, v) in [
        ("local_time.time_zone", "+1"),
        ("local_time.summer_time", "1"),
        ("local_time.dst_time_type", "1"),
        ("local_time.start_time", "3/5/7/2"),
        ("local_time.end_time", "10/5/7/3"),
        ("local_time.offset_time", "60"),
    ] {
        assert_eq!(kv.get(k).map(String::as_str), Some(v), "yealink {k}");
    }

    // Poly: the last Sunday of March at 2, of October at 3 (dayOfWeek 1 = Sunday).
    let body = s.fetched("0004f2000004-outpost.cfg", POLY_UA, &poly);
    let doc = roxmltree::Document::parse(&body).expect("Poly XML");
    assert_eq!(attr_of(&doc, "tcpIpApp.sntp.gmtOffset"), "3600");
    for (k, v) in [
        ("enable", "1"),
        ("fixedDayEnable", "0"),
        ("start.month", "3"),
        ("start.dayOfWeek", "1"),
        ("start.dayOfWeek.lastInMonth", "1"),
        ("start.time", "2"),
        ("stop.month", "10"),
        ("stop.dayOfWeek", "1"),
        ("stop.dayOfWeek.lastInMonth", "1"),
        ("stop.time", "3"),
    ] {
        let key = format!("tcpIpApp.sntp.daylightSavings.{k}");
        assert_eq!(attr_of(&doc, &key), v, "poly {k}");
    }

    // Snom: no daylight-saving key confirmed from its documentation: the standard offset.
    let body = s.fetched("snomD785-000413000003.htm", SNOM_UA, &snom);
    let doc = roxmltree::Document::parse(&body).expect("Snom XML");
    assert_eq!(text_of(&doc, "utc_offset"), "3600");
    assert!(!body.contains("dst"), "{body}");
}
