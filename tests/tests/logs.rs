//! Logs end to end: remote syslog to a real collector (Debian's rsyslog, receiving RFC 5424
//! over UDP, TCP and TLS inside the appliance namespace of a `FwLab`), with a scanner's ban
//! as structured data; and the persistent log on /data read with `outpostctl log`.
//!
//! The collector test REQUIRES root, `ip` and `rsyslogd` with its gtls driver
//! (`tests/run-all` installs `rsyslog` and `rsyslog-gnutls`): without them it fails saying
//! so, it never skips. Every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use outpost_tests::servers::{Pki, Validity};
use outpost_tests::{
    bin, eventually, require_root, sip_request, Daemon, DaemonConfig, FwLab, Netns, Transport,
};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// The collector's ports inside the appliance namespace (private to it).
const UDP_PORT: u16 = 5514;
const TCP_PORT: u16 = 5515;
const TLS_PORT: u16 = 6514;
/// Facilities the daemon is configured with, one per collector, so a line's PRI shows
/// which collector configuration it went through.
const LOCAL3: u32 = 19;
const LOCAL4: u32 = 20;
const LOCAL5: u32 = 21;
/// How long a message may take to reach the collector's file.
const ARRIVAL: Duration = Duration::from_secs(10);

/// rsyslogd in a namespace, writing what each input receives to its own file in RFC 5424
/// form (`RSYSLOG_SyslogProtocol23Format`). Killed on drop.
struct Rsyslog {
    child: Child,
    dir: PathBuf,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rsyslog {
    fn start(ns: &Netns, dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} is missing: install rsyslog and rsyslog-gnutls (tests/run-all does)"
        );
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let out = |name: &str| dir.join(format!("{name}.log")).display().to_string();
        let conf = format!(
            r#"global(workDirectory="{work}"
       DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{UDP_PORT}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{TCP_PORT}" ruleset="tcp")
input(type="imtcp" address="127.0.0.1" port="{TLS_PORT}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
ruleset(name="udp") {{ action(type="omfile" file="{udp}" template="RSYSLOG_SyslogProtocol23Format") }}
ruleset(name="tcp") {{ action(type="omfile" file="{tcp}" template="RSYSLOG_SyslogProtocol23Format") }}
ruleset(name="tls") {{ action(type="omfile" file="{tls}" template="RSYSLOG_SyslogProtocol23Format") }}
"#,
            work = work.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            udp = out("udp"),
            tcp = out("tcp"),
            tls = out("tls"),
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).expect("rsyslog.conf");
        let stderr = std::fs::File::create(dir.join("rsyslogd.out")).expect("rsyslogd.out");
        let child = ns
            .command(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone"))
            .stderr(stderr)
            .spawn()
            .expect("spawn rsyslogd");
        let rs = Rsyslog {
            child,
            dir: dir.to_path_buf(),
        };
        let listening = eventually(Duration::from_secs(10), || {
            let out = ns.command("ss").arg("-lntu").output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            [UDP_PORT, TCP_PORT, TLS_PORT]
                .iter()
                .all(|p| text.contains(&format!("127.0.0.1:{p} ")))
                .then_some(())
        });
        assert!(
            listening.is_some(),
            "rsyslogd does not listen within 10 s: {}",
            std::fs::read_to_string(dir.join("rsyslogd.out")).unwrap_or_default()
        );
        rs
    }

    /// The messages received on `input` so far, parsed.
    fn messages(&self, input: &str) -> Vec<Message> {
        std::fs::read_to_string(self.dir.join(format!("{input}.log")))
            .unwrap_or_default()
            .lines()
            .map(|l| Message::parse(l).unwrap_or_else(|| panic!("not RFC 5424: {l:?}")))
            .collect()
    }

    /// Waits until a message on `input` satisfies `want`; returns it.
    fn wait(&self, input: &str, what: &str, want: impl Fn(&Message) -> bool) -> Message {
        eventually(ARRIVAL, || {
            self.messages(input).into_iter().find(|m| want(m))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {what} on {input} within {ARRIVAL:?}; received:\n{}\nrsyslogd:\n{}",
                std::fs::read_to_string(self.dir.join(format!("{input}.log"))).unwrap_or_default(),
                std::fs::read_to_string(self.dir.join("rsyslogd.out")).unwrap_or_default()
            )
        })
    }
}

/// One RFC 5424 message as the collector wrote it.
#[derive(Debug, Clone)]
struct Message {
    pri: u32,
    version: String,
    timestamp: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    /// SD-ID → parameters.
    sd: BTreeMap<String, BTreeMap<String, String>>,
    msg: String,
}

impl Message {
    fn parse(line: &str) -> Option<Message> {
        let rest = line.strip_prefix('<')?;
        let (pri, rest) = rest.split_once('>')?;
        let mut fields = rest.splitn(7, ' ');
        let version = fields.next()?.to_owned();
        let timestamp = fields.next()?.to_owned();
        let hostname = fields.next()?.to_owned();
        let app = fields.next()?.to_owned();
        let procid = fields.next()?.to_owned();
        let msgid = fields.next()?.to_owned();
        let rest = fields.next().unwrap_or("");
        let (sd, msg) = parse_sd(rest)?;
        Some(Message {
            pri: pri.parse().ok()?,
            version,
            timestamp,
            hostname,
            app,
            procid,
            msgid,
            sd,
            msg: msg.to_owned(),
        })
    }

    fn severity(&self) -> u32 {
        self.pri % 8
    }

    fn facility(&self) -> u32 {
        self.pri / 8
    }
}

type Sd = BTreeMap<String, BTreeMap<String, String>>;

/// STRUCTURED-DATA (`-` or `[id k="v" ...]...`, values unescaped) and the MSG after it.
fn parse_sd(s: &str) -> Option<(Sd, &str)> {
    let mut sd = BTreeMap::new();
    if let Some(msg) = s.strip_prefix('-') {
        return Some((sd, msg.strip_prefix(' ').unwrap_or(msg)));
    }
    let bytes: Vec<char> = s.chars().collect();
    let mut i = 0;
    while bytes.get(i) == Some(&'[') {
        i += 1;
        let start = i;
        while !matches!(bytes.get(i), Some(' ' | ']') | None) {
            i += 1;
        }
        let id: String = bytes[start..i].iter().collect();
        let mut params = BTreeMap::new();
        while bytes.get(i) == Some(&' ') {
            i += 1;
            let start = i;
            while bytes.get(i) != Some(&'=') {
                bytes.get(i)?;
                i += 1;
            }
            let name: String = bytes[start..i].iter().collect();
            i += 1;
            if bytes.get(i) != Some(&'"') {
                return None;
            }
            i += 1;
            let mut value = String::new();
            loop {
                match bytes.get(i)? {
                    '\\' if matches!(bytes.get(i + 1), Some('"' | '\\' | ']')) => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    '"' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
            params.insert(name, value);
        }
        if bytes.get(i) != Some(&']') {
            return None;
        }
        i += 1;
        sd.insert(id, params);
    }
    let consumed: usize = bytes[..i].iter().map(|c| c.len_utf8()).sum();
    let msg = &s[consumed..];
    Some((sd, msg.strip_prefix(' ').unwrap_or(msg)))
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

/// RFC 3339 UTC with milliseconds, as the daemon writes it (via `date`, independent of the
/// daemon's code).
fn rfc3339_ms(ms: u64) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}.{:03}", ms / 1000, ms % 1000),
            "+%Y-%m-%dT%H:%M:%S.%3NZ",
        ])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn rsyslog_receives_the_daemons_lines_and_a_ban_over_udp_tcp_and_tls() {
    require_root("the syslog collector test");
    let lab = FwLab::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::new("Syslog test");
    let server = pki.server(dir.path(), "collector", &["127.0.0.1"], Validity::Current);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.root_pem()).expect("ca.pem");
    // gnutls wants the CA of the server's own chain too.
    let rsyslog = Rsyslog::start(&lab.appliance, dir.path(), &ca, &server.chain, &server.key);

    let before = now_ms();
    let toml = format!(
        "[[log.remote]]\naddress = \"127.0.0.1:{UDP_PORT}\"\ntransport = \"udp\"\nfacility = \"local3\"\n\n\
         [[log.remote]]\naddress = \"127.0.0.1:{TCP_PORT}\"\ntransport = \"tcp\"\nfacility = \"local4\"\nlevel = \"warn\"\n\n\
         [[log.remote]]\naddress = \"127.0.0.1:{TLS_PORT}\"\ntransport = \"tls\"\nfacility = \"local5\"\nca = \"{}\"\n",
        ca.display()
    );
    let mut daemon = Daemon::start_in(&lab.appliance, lab.daemon_config().with_toml(&toml));
    let status = daemon.ctl_json(&["status"]);
    let hostname = status["hostname"].as_str().expect("hostname").to_owned();
    let pid = daemon.pid().expect("pid").to_string();

    // The daemon's own lines: header fields as RFC 5424 wants them.
    let started = rsyslog.wait("udp", "start-up line", |m| {
        m.msg.contains("configuration:") && m.app == "outpostd"
    });
    assert_eq!(started.version, "1");
    assert_eq!(started.pri, LOCAL3 * 8 + 6, "local3.info: {started:?}");
    assert_eq!(started.hostname, hostname);
    assert_eq!(started.procid, pid);
    assert!(started.sd.is_empty(), "{started:?}");
    assert_eq!(started.timestamp.len(), "2026-12-06T19:19:12.345Z".len());
    assert!(started.timestamp.ends_with('Z'), "{started:?}");
    assert!(
        started.timestamp >= rfc3339_ms(before - 1000)
            && started.timestamp <= rfc3339_ms(now_ms() + 1000),
        "{} not between the start and now",
        started.timestamp
    );
    let tls_started = rsyslog.wait("tls", "start-up line over TLS", |m| {
        m.msg.contains("configuration:")
    });
    assert_eq!(tls_started.pri, LOCAL5 * 8 + 6);
    assert_eq!(tls_started.hostname, hostname);

    // A scanner's OPTIONS from the attacker: banned, and the ban and its alert go out as
    // structured data.
    let attacker: IpAddr = lab.attacker_ip().into();
    let sock = lab.attacker_socket(attacker);
    let local: SocketAddr = sock.local_addr().expect("local");
    let options = sip_request(
        "OPTIONS",
        &format!("sip:{}", lab.appliance_ip()),
        Transport::Udp,
        local,
        &format!("logs{}@x", std::process::id()),
        "User-Agent: friendly-scanner\r\n",
    );
    sock.send_to(options.as_bytes(), lab.sip_addr())
        .expect("send");
    for (input, facility) in [("udp", LOCAL3), ("tcp", LOCAL4), ("tls", LOCAL5)] {
        let ban = rsyslog.wait(input, "ban", |m| m.sd.contains_key("ban@32473"));
        assert_eq!(ban.msgid, "ban");
        assert_eq!(ban.facility(), facility);
        assert_eq!(ban.severity(), 4, "warning: {ban:?}");
        assert_eq!(ban.hostname, hostname);
        assert_eq!(ban.procid, pid);
        let p = &ban.sd["ban@32473"];
        assert_eq!(
            p.get("src").map(String::as_str),
            Some(attacker.to_string().as_str()),
            "{ban:?}"
        );
        assert_eq!(
            p.get("rule").map(String::as_str),
            Some("scanner"),
            "{ban:?}"
        );
        let secs: u64 = p.get("secs").and_then(|s| s.parse().ok()).expect("secs");
        assert!(secs > 0, "{ban:?}");
        assert!(p.get("reason").is_some_and(|r| !r.is_empty()), "{ban:?}");
        let alert = rsyslog.wait(input, "alert", |m| m.sd.contains_key("alert@32473"));
        assert_eq!(alert.msgid, "alert");
        assert_eq!(
            alert.sd["alert@32473"].get("src").map(String::as_str),
            Some(attacker.to_string().as_str()),
            "{alert:?}"
        );
    }

    // The admin lifts the ban: an info event, so the warn-level TCP collector does not get
    // it while the others do.
    daemon.ctl_ok(&["fw", "unban", &attacker.to_string()]);
    for input in ["udp", "tls"] {
        let unban = rsyslog.wait(input, "unban", |m| m.sd.contains_key("unban@32473"));
        assert_eq!(unban.severity(), 6);
        assert_eq!(
            unban.sd["unban@32473"].get("src").map(String::as_str),
            Some(attacker.to_string().as_str())
        );
    }
    let tcp = rsyslog.messages("tcp");
    assert!(
        tcp.iter().all(|m| m.severity() <= 4),
        "level = warn lets only warnings and errors through: {tcp:?}"
    );

    // The status shows each collector up, with what it sent and nothing dropped.
    let status = daemon.ctl_json(&["status"]);
    let collectors = status["log"]["collectors"].as_array().expect("collectors");
    assert_eq!(collectors.len(), 3, "{status}");
    for c in collectors {
        assert_eq!(c["connected"], Value::Bool(true), "{c}");
        assert!(c["sent"].as_u64().unwrap_or(0) > 0, "{c}");
        assert_eq!(c["dropped"].as_u64(), Some(0), "{c}");
    }
    let metrics = daemon.ctl(&["metrics"]).stdout;
    assert!(
        metrics.contains("outpost_log_remote_sent_total "),
        "{metrics}"
    );

    // A clean stop sends the last line too.
    daemon.stop();
    rsyslog.wait("tls", "the stop line", |m| {
        m.msg.contains("outpostd stopped")
    });
}

/// Sends `n` status requests on one admin connection (each is one `admin command` line).
fn many_status_requests(socket: &Path, n: usize) {
    let stream = UnixStream::connect(socket).expect("admin socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines();
        for _ in 0..n {
            lines.next().expect("a reply").expect("read");
        }
    });
    for _ in 0..n {
        writer.write_all(b"{\"cmd\":\"status\"}\n").expect("write");
    }
    reader.join().expect("reader");
}

#[test]
fn the_persistent_log_survives_a_restart_keeps_its_cap_and_follows() {
    let mut daemon =
        Daemon::start_with(DaemonConfig::loopback().with_toml("[log]\nfile_kib = 64\nfiles = 3\n"));
    let log_dir = daemon.data_dir().join("log");
    let status = daemon.ctl_json(&["status"]);
    assert_eq!(
        status["log"]["file"].as_str(),
        Some(log_dir.join("outpostd.log").display().to_string().as_str())
    );
    let since = rfc3339_ms(now_ms() - 60_000);
    daemon.stop();
    daemon.restart();

    // Lines from before the restart, in order, with the last one of the old process.
    let out = daemon.ctl_ok(&["log", "--since", &since]);
    let lines: Vec<&str> = out.lines().collect();
    let stopped = lines
        .iter()
        .position(|l| l.contains("outpostd stopped"))
        .unwrap_or_else(|| panic!("no line of the first run's stop:\n{out}"));
    let restarted = lines
        .iter()
        .rposition(|l| l.contains("configuration:"))
        .expect("the new start");
    assert!(stopped < restarted, "{out}");
    assert!(lines[0].starts_with(&since[..10]), "{}", lines[0]);
    // A time after every line: nothing.
    let later = rfc3339_ms(now_ms() + 3_600_000);
    assert_eq!(daemon.ctl_ok(&["log", "--since", &later]), "");
    // --level warn has no INFO lines; --lines bounds the count.
    let warn = daemon.ctl_ok(&["log", "--level", "warn"]);
    assert!(warn.lines().all(|l| !l.contains(" INFO ")), "{warn}");
    assert_eq!(daemon.ctl_ok(&["log", "--lines", "3"]).lines().count(), 3);
    let bad = daemon.ctl(&["log", "--since", "yesterday"]);
    assert_ne!(bad.code, Some(0), "{}", bad.stderr);

    // --follow shows a line written after it started.
    let mut follow = Command::new(bin("outpostctl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["log", "--follow", "--lines", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("outpostctl log --follow");
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Its first line: the newest one so far.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("follow's first line");
    std::thread::sleep(Duration::from_millis(700));
    daemon.ctl_ok(&["fw", "unban", "192.0.2.77"]);
    let seen = eventually(Duration::from_secs(10), || {
        rx.try_iter()
            .find(|l| l.contains("192.0.2.77 unbanned by the admin"))
    });
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.is_some(), "--follow did not show the new line");

    // Rotation: some 4,000 lines (over 300 KiB) into a log capped at 3 × 64 KiB.
    many_status_requests(daemon.socket(), 4_000);
    let sizes = eventually(Duration::from_secs(10), || {
        let files: Vec<(String, u64)> = std::fs::read_dir(&log_dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        (files.len() == 3).then_some(files)
    })
    .expect("three log files");
    let mut names: Vec<&str> = sizes.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["outpostd.log", "outpostd.log.1", "outpostd.log.2"]);
    for (name, size) in &sizes {
        assert!(*size <= 64 * 1024, "{name} is {size} bytes");
    }
    let rotated = sizes
        .iter()
        .find(|(n, _)| n == "outpostd.log.2")
        .map_or(0, |(_, s)| *s);
    assert!(
        rotated > 60 * 1024,
        "a rotated file is nearly full: {rotated}"
    );
    // The newest lines are still served, and `--since` without `--lines` shows every line
    // the files still hold (a few more may be written meanwhile).
    let tail = daemon.ctl_ok(&["log", "--lines", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let all = daemon.ctl_ok(&["log", "--since", &since]);
    let kept: usize = sizes
        .iter()
        .map(|(name, _)| {
            std::fs::read_to_string(log_dir.join(name)).map_or(0, |t| t.lines().count())
        })
        .sum();
    assert!(
        all.lines().count() + 50 >= kept,
        "{} lines shown of {kept} kept",
        all.lines().count()
    );
}
