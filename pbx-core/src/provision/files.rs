//! The per-phone configuration files, each in its vendor's own format: one SIP account
//! (server, port, transport, credentials, display name), the voicemail number, the time
//! zone as an offset from UTC (with its daylight-saving rule where the vendor's file has
//! keys for one: Yealink and Poly), a line key and BLF keys. Nothing firmware-specific (no
//! firmware URL, no codec or tone tables): the phone keeps its own defaults for the rest.
//!
//! Every value comes from validated input (extension numbers, display names, generated
//! passwords); [`text`] still drops control characters, so no value can start a line or
//! key of its own, and XML values are escaped.

use std::fmt::Write as _;

use super::mac::{Mac, PhoneFile};
use super::tz::{Change, Dst};
use super::vendor::Vendor;

/// SIP transport the phone registers over (lower case in the files: `udp`, `tcp`, `tls`).
pub use crate::sip::Transport;

/// What a phone's file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The phone.
    pub mac: Mac,
    /// Its model, as stored.
    pub model: String,
    /// The extension it registers as (user and authentication name).
    pub ext: String,
    /// The name on its screen (the extension's display name, else the extension).
    pub display_name: String,
    /// The SIP password.
    pub password: String,
    /// The box's address as the phone reached it.
    pub server: String,
    /// The SIP port for `transport`.
    pub port: u16,
    /// The transport.
    pub transport: Transport,
    /// The number that reaches voicemail.
    pub voicemail: String,
    /// Minutes east of UTC (standard time).
    pub utc_offset_minutes: i32,
    /// Daylight saving time.
    pub daylight: Daylight,
    /// Extensions a BLF key watches, in key order after the line key.
    pub blf: Vec<String>,
}

/// What a phone is told about daylight saving time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daylight {
    /// Nothing: the phone keeps its own setting (a fixed `utc_offset_minutes`).
    LeftToPhone,
    /// The zone has none: off.
    Never,
    /// The zone's rule.
    Rule(Dst),
}

/// A generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its text.
    pub body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";
const XML: &str = "application/xml; charset=utf-8";

/// The file `file` of the phone `p` of `vendor`; `None` when that vendor does not use such
/// a file (e.g. `cfg<mac>.xml` for a Yealink).
pub fn phone_file(vendor: Vendor, file: PhoneFile, p: &Profile) -> Option<File> {
    let (content_type, body) = match (vendor, file) {
        (Vendor::Yealink, PhoneFile::MacCfg) => (TEXT, yealink(p)),
        (Vendor::Fanvil, PhoneFile::MacCfg) => (TEXT, fanvil(p)),
        (Vendor::Poly, PhoneFile::MacCfg) => (XML, poly_master(&format!("{}-outpost.cfg", p.mac))),
        (Vendor::Poly, PhoneFile::PolyPhone) => (XML, poly(p)),
        (Vendor::Grandstream, PhoneFile::Grandstream) => (XML, grandstream(p)),
        (Vendor::Snom, PhoneFile::Snom) => (XML, snom(p)),
        _ => return None,
    };
    Some(File { content_type, body })
}

/// The file a vendor's phones ask for without their MAC: no account, no secret.
pub fn common_file(vendor: Vendor) -> File {
    match vendor {
        Vendor::Yealink => File {
            content_type: TEXT,
            body: "#!version:1.0.0.1\n## Outpost: each phone's settings are in <mac>.cfg\n"
                .to_owned(),
        },
        Vendor::Poly => File {
            content_type: XML,
            body: poly_master("[PHONE_MAC_ADDRESS]-outpost.cfg"),
        },
        Vendor::Grandstream => File {
            content_type: XML,
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gs_provision version=\"1\">\n  <config version=\"1\">\n  </config>\n</gs_provision>\n".to_owned(),
        },
        Vendor::Snom => File {
            content_type: XML,
            body: "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<settings>\n  <phone-settings e=\"2\">\n  </phone-settings>\n</settings>\n".to_owned(),
        },
        Vendor::Fanvil => File {
            content_type: TEXT,
            body: "<<VOIP CONFIG FILE>>Version:2.0000000000\n<<END OF FILE>>\n".to_owned(),
        },
    }
}

/// `s` without control characters (a value never spans lines).
pub fn text(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// `s` with control characters dropped and XML's five special characters escaped.
pub fn xml(s: &str) -> String {
    crate::sip::xml_escape(s)
}

/// `+1`, `+5:30`, `-3:30`, `0`: hours east of UTC (Yealink, Fanvil).
fn offset_hours(minutes: i32) -> String {
    if minutes == 0 {
        return "0".to_owned();
    }
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    if m.is_multiple_of(60) {
        format!("{sign}{}", m / 60)
    } else {
        format!("{sign}{}:{:02}", m / 60, m % 60)
    }
}

/// A POSIX TZ string for a fixed offset (the sign is west-positive): `UTC-1` is one hour
/// east of UTC (Grandstream).
fn posix_tz(minutes: i32) -> String {
    let hours = offset_hours(-minutes);
    if hours == "0" {
        "UTC0".to_owned()
    } else {
        format!("UTC{hours}")
    }
}

fn yealink(p: &Profile) -> String {
    let transport = match p.transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    };
    let mut s = String::from("#!version:1.0.0.1\n");
    let _ = writeln!(
        s,
        "## Outpost: phone {} ({}), extension {}",
        p.mac,
        text(&p.model),
        text(&p.ext)
    );
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(s, "{k} = {}", text(v));
    };
    kv("account.1.enable", "1");
    kv("account.1.label", &p.ext);
    kv("account.1.display_name", &p.display_name);
    kv("account.1.auth_name", &p.ext);
    kv("account.1.user_name", &p.ext);
    kv("account.1.password", &p.password);
    kv("account.1.sip_server.1.address", &p.server);
    kv("account.1.sip_server.1.port", &p.port.to_string());
    kv(
        "account.1.sip_server.1.transport_type",
        &transport.to_string(),
    );
    kv("account.1.subscribe_mwi", "1");
    kv("voice_mail.number.1", &p.voicemail);
    kv("local_time.time_zone", &offset_hours(p.utc_offset_minutes));
    match p.daylight {
        Daylight::LeftToPhone => {}
        Daylight::Never => kv("local_time.summer_time", "0"),
        Daylight::Rule(dst) => {
            // By week: month/week of month (5 = last)/day of week (1 = Monday ... 7 =
            // Sunday)/hour.
            let when = |c: Change| {
                let day = if c.weekday == 0 { 7 } else { c.weekday };
                format!("{}/{}/{day}/{}", c.month, c.week, c.hour)
            };
            kv("local_time.summer_time", "1");
            kv("local_time.dst_time_type", "1");
            kv("local_time.start_time", &when(dst.start));
            kv("local_time.end_time", &when(dst.end));
            kv("local_time.offset_time", &dst.save_minutes.to_string());
        }
    }
    kv("linekey.1.type", "15");
    kv("linekey.1.line", "1");
    kv("linekey.1.label", &p.ext);
    for (i, ext) in p.blf.iter().enumerate() {
        let n = i + 2;
        kv(&format!("linekey.{n}.type"), "16");
        kv(&format!("linekey.{n}.line"), "1");
        kv(&format!("linekey.{n}.value"), ext);
        kv(&format!("linekey.{n}.label"), ext);
    }
    s
}

fn fanvil(p: &Profile) -> String {
    let transport = match p.transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 3,
    };
    let mut s = String::from("<<VOIP CONFIG FILE>>Version:2.0000000000\n");
    let kv = |s: &mut String, k: &str, v: &str| {
        let _ = writeln!(s, "{k:<24}:{}", text(v));
    };
    s.push_str("<GLOBAL CONFIG MODULE>\n");
    kv(&mut s, "Time Zone", &offset_hours(p.utc_offset_minutes));
    s.push_str("<SIP CONFIG MODULE>\n");
    kv(&mut s, "SIP1 Phone Number", &p.ext);
    kv(&mut s, "SIP1 Display Name", &p.display_name);
    kv(&mut s, "SIP1 Register Addr", &p.server);
    kv(&mut s, "SIP1 Register Port", &p.port.to_string());
    kv(&mut s, "SIP1 Register User", &p.ext);
    kv(&mut s, "SIP1 Register Pswd", &p.password);
    kv(&mut s, "SIP1 Enable Reg", "1");
    kv(&mut s, "SIP1 Transport", &transport.to_string());
    kv(&mut s, "SIP1 MWI Num", &p.voicemail);
    s.push_str("<DSS CONFIG MODULE>\n");
    for (i, ext) in p.blf.iter().enumerate() {
        let n = i + 1;
        kv(&mut s, &format!("Fkey{n} Type"), "1");
        kv(&mut s, &format!("Fkey{n} Value"), &format!("{ext}@1/ba"));
        kv(&mut s, &format!("Fkey{n} Title"), ext);
    }
    s.push_str("<<END OF FILE>>\n");
    s
}

fn grandstream(p: &Profile) -> String {
    let transport = match p.transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    };
    let mut s =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gs_provision version=\"1\">\n");
    let _ = writeln!(s, "  <mac>{}</mac>\n  <config version=\"1\">", p.mac);
    let mut pv = |n: u32, v: &str| {
        let _ = writeln!(s, "    <P{n}>{}</P{n}>", xml(v));
    };
    pv(271, "1");
    pv(270, &p.ext);
    pv(47, &format!("{}:{}", p.server, p.port));
    pv(35, &p.ext);
    pv(36, &p.ext);
    pv(34, &p.password);
    pv(3, &p.display_name);
    pv(130, &transport.to_string());
    pv(33, &p.voicemail);
    pv(64, &posix_tz(p.utc_offset_minutes));
    for (i, ext) in p.blf.iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX).min(6);
        // MPK i+1: mode (1 = BLF), account (0 = the first), name, value.
        pv(323 + i, "1");
        pv(301 + 3 * i, "0");
        pv(302 + 3 * i, ext);
        pv(303 + 3 * i, ext);
    }
    s.push_str("  </config>\n</gs_provision>\n");
    s
}

fn snom(p: &Profile) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<settings>\n  <phone-settings e=\"2\">\n",
    );
    let mut set = |k: &str, idx: bool, v: &str| {
        let idx = if idx { " idx=\"1\"" } else { "" };
        let _ = writeln!(s, "    <{k}{idx} perm=\"\">{}</{k}>", xml(v));
    };
    set("user_active", true, "on");
    set("user_realname", true, &p.display_name);
    set("user_name", true, &p.ext);
    set("user_pname", true, &p.ext);
    set("user_pass", true, &p.password);
    set(
        "user_host",
        true,
        &format!(
            "{}:{};transport={}",
            p.server,
            p.port,
            p.transport.as_str().to_ascii_lowercase()
        ),
    );
    set("user_mailbox", true, &p.voicemail);
    set(
        "utc_offset",
        false,
        &(i64::from(p.utc_offset_minutes) * 60).to_string(),
    );
    s.push_str("  </phone-settings>\n  <functionKeys e=\"2\">\n");
    let _ = writeln!(s, "    <fkey idx=\"0\" context=\"1\" perm=\"\">line</fkey>");
    for (i, ext) in p.blf.iter().enumerate() {
        let _ = writeln!(
            s,
            "    <fkey idx=\"{}\" context=\"1\" perm=\"\">{}</fkey>",
            i + 1,
            xml(&format!("blf <sip:{ext}@{}>", p.server))
        );
    }
    s.push_str("  </functionKeys>\n</settings>\n");
    s
}

fn poly_master(config_files: &str) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"yes\"?>\n<APPLICATION APP_FILE_PATH=\"\" CONFIG_FILES=\"{}\" MISC_FILES=\"\" LOG_FILE_DIRECTORY=\"\" OVERRIDES_DIRECTORY=\"\" CONTACTS_DIRECTORY=\"\" LICENSE_DIRECTORY=\"\"/>\n",
        xml(config_files)
    )
}

fn poly(p: &Profile) -> String {
    let transport = match p.transport {
        Transport::Udp => "UDPOnly",
        Transport::Tcp => "TCPOnly",
        Transport::Tls => "TLS",
    };
    let attrs = |pairs: &[(String, String)]| {
        pairs
            .iter()
            .map(|(k, v)| format!(" {k}=\"{}\"", xml(v)))
            .collect::<String>()
    };
    let s = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let reg = [
        s("reg.1.address", &p.ext),
        s("reg.1.label", &p.ext),
        s("reg.1.displayName", &p.display_name),
        s("reg.1.auth.userId", &p.ext),
        s("reg.1.auth.password", &p.password),
        s("reg.1.server.1.address", &p.server),
        s("reg.1.server.1.port", &p.port.to_string()),
        s("reg.1.server.1.transport", transport),
    ];
    let msg = [
        s("msg.mwi.1.subscribe", &p.ext),
        s("msg.mwi.1.callBackMode", "contact"),
        s("msg.mwi.1.callBack", &p.voicemail),
    ];
    let mut time = vec![s(
        "tcpIpApp.sntp.gmtOffset",
        &(i64::from(p.utc_offset_minutes) * 60).to_string(),
    )];
    let dst = "tcpIpApp.sntp.daylightSavings";
    match p.daylight {
        Daylight::LeftToPhone => {}
        // Poly's rule has no amount: it moves the clock by one hour.
        Daylight::Rule(rule) if rule.save_minutes != 60 => {}
        Daylight::Never => time.push(s(&format!("{dst}.enable"), "0")),
        Daylight::Rule(rule) => {
            time.push(s(&format!("{dst}.enable"), "1"));
            time.push(s(&format!("{dst}.fixedDayEnable"), "0"));
            for (which, c) in [("start", rule.start), ("stop", rule.end)] {
                // `date` 1, 8, 15, 22: the first to fourth such weekday; the last is
                // `lastInMonth` (then `date` is ignored). `dayOfWeek` 1 = Sunday.
                let date = 1 + 7 * (c.week.min(4) - 1);
                let last = if c.week == 5 { "1" } else { "0" };
                for (k, v) in [
                    ("month", c.month.to_string()),
                    ("date", date.to_string()),
                    ("time", c.hour.to_string()),
                    ("dayOfWeek", (c.weekday + 1).to_string()),
                    ("dayOfWeek.lastInMonth", last.to_owned()),
                ] {
                    time.push(s(&format!("{dst}.{which}.{k}"), &v));
                }
            }
        }
    }
    let mut blf = Vec::new();
    for (i, ext) in p.blf.iter().enumerate() {
        let n = i + 1;
        blf.push(s(&format!("attendant.resourceList.{n}.address"), ext));
        blf.push(s(&format!("attendant.resourceList.{n}.label"), ext));
        blf.push(s(&format!("attendant.resourceList.{n}.type"), "normal"));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<polycomConfig>\n  <reg{}/>\n  <msg{}/>\n  <tcpIpApp{}/>\n  <attendant{}/>\n</polycomConfig>\n",
        attrs(&reg),
        attrs(&msg),
        attrs(&time),
        attrs(&blf)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            mac: "80:5e:c0:12:34:56".parse().unwrap(),
            model: "T46U".into(),
            ext: "101".into(),
            display_name: "Alice & <Bob>\r\nx = 1".into(),
            password: "s3cret-pw".into(),
            server: "10.0.0.1".into(),
            port: 5060,
            transport: Transport::Tcp,
            voicemail: "*97".into(),
            utc_offset_minutes: 330,
            daylight: Daylight::LeftToPhone,
            blf: vec!["102".into(), "103".into()],
        }
    }

    #[test]
    fn a_zone_s_daylight_rule_goes_where_the_vendor_has_keys_for_it() {
        // New York: the second Sunday of March to the first of November, at 2.
        let zone = super::super::TimeZone::parse("America/New_York").unwrap();
        let mut p = profile();
        p.utc_offset_minutes = zone.offset_minutes;
        p.daylight = Daylight::Rule(zone.dst.unwrap());
        let f = phone_file(Vendor::Yealink, PhoneFile::MacCfg, &p).unwrap();
        let kv = pairs(&f.body, '=');
        assert_eq!(get(&kv, "local_time.time_zone"), "-5");
        assert_eq!(get(&kv, "local_time.start_time"), "3/2/7/2");
        assert_eq!(get(&kv, "local_time.end_time"), "11/1/7/2");
        assert_eq!(get(&kv, "local_time.offset_time"), "60");
        let f = phone_file(Vendor::Poly, PhoneFile::PolyPhone, &p).unwrap();
        let attr = |k: &str| {
            let needle = format!(" {k}=\"");
            let at = f.body.find(&needle).unwrap_or_else(|| panic!("{k}")) + needle.len();
            f.body[at..].split('"').next().unwrap().to_owned()
        };
        let dst = "tcpIpApp.sntp.daylightSavings";
        for (k, v) in [
            ("enable", "1"),
            ("start.month", "3"),
            ("start.date", "8"),
            ("start.dayOfWeek.lastInMonth", "0"),
            ("stop.month", "11"),
            ("stop.date", "1"),
            ("stop.time", "2"),
        ] {
            assert_eq!(attr(&format!("{dst}.{k}")), v, "{k}");
        }
        // A saving Poly's rule cannot say (30 minutes): left to the phone.
        let half = super::super::TimeZone::parse("AAA-10:30BBB-11,M10.1.0,M4.1.0/2").unwrap();
        p.daylight = Daylight::Rule(half.dst.unwrap());
        let f = phone_file(Vendor::Poly, PhoneFile::PolyPhone, &p).unwrap();
        assert!(!f.body.contains(dst), "{}", f.body);
        // A zone without: off. Left to the phone: nothing said.
        p.daylight = Daylight::Never;
        let f = phone_file(Vendor::Yealink, PhoneFile::MacCfg, &p).unwrap();
        assert_eq!(get(&pairs(&f.body, '='), "local_time.summer_time"), "0");
        p.daylight = Daylight::LeftToPhone;
        let f = phone_file(Vendor::Yealink, PhoneFile::MacCfg, &p).unwrap();
        assert!(!f.body.contains("summer_time"));
        let f = phone_file(Vendor::Poly, PhoneFile::PolyPhone, &p).unwrap();
        assert!(!f.body.contains("daylightSavings"));
    }

    /// `key = value` lines (and `Key :Value` for Fanvil): every line is a comment, a
    /// module marker or exactly one pair.
    fn pairs(body: &str, sep: char) -> Vec<(String, String)> {
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('<'))
            .map(|l| {
                let (k, v) = l.split_once(sep).unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect()
    }

    fn get<'a>(pairs: &'a [(String, String)], k: &str) -> &'a str {
        let found: Vec<_> = pairs.iter().filter(|(kk, _)| kk == k).collect();
        assert_eq!(found.len(), 1, "{k} once");
        &found[0].1
    }

    #[test]
    fn yealink_and_fanvil_pairs_hold_each_field_and_no_injected_line() {
        let p = profile();
        let f = phone_file(Vendor::Yealink, PhoneFile::MacCfg, &p).unwrap();
        assert!(f.body.starts_with("#!version:1.0.0.1\n"));
        let kv = pairs(&f.body, '=');
        assert_eq!(get(&kv, "account.1.user_name"), "101");
        assert_eq!(get(&kv, "account.1.password"), "s3cret-pw");
        assert_eq!(get(&kv, "account.1.display_name"), "Alice & <Bob>x = 1");
        assert_eq!(get(&kv, "account.1.sip_server.1.transport_type"), "1");
        assert_eq!(get(&kv, "local_time.time_zone"), "+5:30");
        assert_eq!(get(&kv, "linekey.3.value"), "103");
        assert_eq!(get(&kv, "linekey.3.type"), "16");
        assert!(kv.iter().all(|(k, _)| k != "x"));
        let f = phone_file(Vendor::Fanvil, PhoneFile::MacCfg, &p).unwrap();
        let kv = pairs(&f.body, ':');
        assert_eq!(get(&kv, "SIP1 Register Pswd"), "s3cret-pw");
        assert_eq!(get(&kv, "Fkey2 Value"), "103@1/ba");
        assert_eq!(get(&kv, "Time Zone"), "+5:30");
        assert!(f.body.ends_with("<<END OF FILE>>\n"));
    }

    #[test]
    fn offsets_and_wrong_files() {
        assert_eq!(offset_hours(0), "0");
        assert_eq!(offset_hours(60), "+1");
        assert_eq!(offset_hours(-210), "-3:30");
        assert_eq!(posix_tz(60), "UTC-1");
        assert_eq!(posix_tz(-300), "UTC+5");
        assert_eq!(posix_tz(0), "UTC0");
        let p = profile();
        assert!(phone_file(Vendor::Yealink, PhoneFile::Grandstream, &p).is_none());
        assert!(phone_file(Vendor::Snom, PhoneFile::MacCfg, &p).is_none());
        assert!(phone_file(Vendor::Grandstream, PhoneFile::PolyPhone, &p).is_none());
        for v in Vendor::ALL {
            assert!(!common_file(v).body.contains("s3cret"));
        }
        let xml_files = [
            phone_file(Vendor::Grandstream, PhoneFile::Grandstream, &p).unwrap(),
            phone_file(Vendor::Snom, PhoneFile::Snom, &p).unwrap(),
            phone_file(Vendor::Poly, PhoneFile::PolyPhone, &p).unwrap(),
        ];
        for f in xml_files {
            assert!(f.body.contains("Alice &amp; &lt;Bob&gt;x"), "{}", f.body);
            assert!(!f.body.contains('\r'));
        }
    }
}
