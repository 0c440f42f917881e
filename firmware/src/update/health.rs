//! The health check of a trial boot: is the new firmware doing its job?
//!
//! All of these must hold before the deadline: outpostd answers `status` on its admin socket
//! (it replies only after its store opened and its transports listen), its store file exists
//! in the data directory it reports, and the SIP port answers an OPTIONS with any SIP
//! response. The first check still failing at the deadline is the reason of the rollback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::admin::proto::{Command, Reply, StatusInfo, PROTOCOL_VERSION};
use crate::admin::Client;

/// Pause between attempts.
const RETRY: Duration = Duration::from_millis(500);
/// Longest wait for one admin reply or one SIP response.
const ATTEMPT: Duration = Duration::from_secs(3);
/// The SIP address probed when the daemon reports none usable.
pub const DEFAULT_SIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060);

/// What the health check talks to.
#[derive(Debug, Clone)]
pub struct Probe {
    /// outpostd's admin socket.
    pub admin_socket: PathBuf,
    /// The SIP address to send OPTIONS to; `None`: derived from the daemon's UDP listen
    /// address (loopback for a wildcard), else [`DEFAULT_SIP`].
    pub sip: Option<SocketAddr>,
}

/// Runs the checks until all pass (returns how long that took) or `timeout` ends (returns
/// the reason, naming the check that failed).
pub fn probe(p: &Probe, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    let secs = timeout.as_secs();
    let status = wait_for(deadline, |left| admin_status(&p.admin_socket, left)).map_err(|e| {
        format!(
            "outpostd did not answer on its admin socket {} within {secs} s ({e})",
            p.admin_socket.display()
        )
    })?;
    let store = Path::new(&status.data_dir).join(crate::store::DB_FILE);
    wait_for(deadline, |_| {
        if store.is_file() {
            Ok(())
        } else {
            Err("missing".to_owned())
        }
    })
    .map_err(|_| {
        format!(
            "outpostd's store {} did not exist within {secs} s",
            store.display()
        )
    })?;
    let sip = p.sip.unwrap_or_else(|| sip_target(&status.listen));
    wait_for(deadline, |left| sip_options(sip, left))
        .map_err(|e| format!("SIP on {sip} did not answer an OPTIONS within {secs} s ({e})"))?;
    Ok(started.elapsed())
}

/// Calls `attempt` with the time left until it succeeds or the deadline passes (the last
/// error is returned).
fn wait_for<T>(
    deadline: Instant,
    mut attempt: impl FnMut(Duration) -> Result<T, String>,
) -> Result<T, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match attempt(left.clamp(Duration::from_millis(100), ATTEMPT)) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err);
        }
        std::thread::sleep(RETRY.min(left));
    }
}

fn admin_status(socket: &Path, wait: Duration) -> Result<StatusInfo, String> {
    let mut client = Client::connect(socket, wait).map_err(|e| e.to_string())?;
    match client
        .request(&Command::Status)
        .map_err(|e| e.to_string())?
    {
        Reply::Status(info) if info.protocol_compatible() => Ok(info),
        Reply::Status(info) => Err(format!(
            "the daemon speaks admin protocol version {}, this client version {PROTOCOL_VERSION}",
            info.protocol_version
        )),
        Reply::Error { message } => Err(message),
        _ => Err("unexpected reply".to_owned()),
    }
}

/// Where to send OPTIONS: the first UDP listen address (`udp:ADDR`), loopback for a
/// wildcard, IPv4 first.
fn sip_target(listen: &[String]) -> SocketAddr {
    let mut addrs: Vec<SocketAddr> = listen
        .iter()
        .filter_map(|l| l.strip_prefix("udp:")?.parse().ok())
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .first()
        .map(|a| match a.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), a.port())
            }
            _ => *a,
        })
        .unwrap_or(DEFAULT_SIP)
}

/// Sends one OPTIONS and waits up to `wait` for any SIP response from `to`.
fn sip_options(to: SocketAddr, wait: Duration) -> Result<(), String> {
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(to).map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let tag: u64 = rand::thread_rng().gen();
    let host = match to.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let local_host = match local.ip() {
        IpAddr::V6(_) => format!("[::1]:{}", local.port()),
        IpAddr::V4(_) => format!("127.0.0.1:{}", local.port()),
    };
    let msg = format!(
        "OPTIONS sip:{host}:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local_host};branch=z9hG4bK{tag:x};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:health@{host}>;tag={tag:x}\r\n\
         To: <sip:{host}:{port}>\r\n\
         Call-ID: {tag:x}@outpost-health\r\n\
         CSeq: 1 OPTIONS\r\n\
         User-Agent: outpost-health\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        port = to.port()
    );
    sock.send(msg.as_bytes()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer".to_owned());
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"SIP/2.0 ") => return Ok(()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("no answer".to_owned())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake outpostd: answers `status` on `socket` (data dir `data`) forever.
    pub(crate) fn fake_daemon(socket: &Path, data: &Path) {
        let listener = UnixListener::bind(socket).unwrap();
        let data = data.display().to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut line = String::new();
                let _ = BufReader::new(conn.try_clone().unwrap()).read_line(&mut line);
                // From JSON, so fields added later with serde defaults need no change here.
                let info: StatusInfo = serde_json::from_value(serde_json::json!({
                    "version": "0.2.0", "uptime_secs": 1, "listen": ["udp:0.0.0.0:5060"],
                    "extensions": 0, "registrations": 0, "active_calls": 0, "cdrs": 0,
                    "data_dir": data, "realm": "outpost"
                }))
                .unwrap();
                let reply = Reply::Status(info);
                let mut text = serde_json::to_string(&reply).unwrap();
                text.push('\n');
                let _ = conn.write_all(text.as_bytes());
            }
        });
    }

    /// A fake SIP UDP port: answers 200 to everything.
    pub(crate) fn fake_sip() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if buf[..n].starts_with(b"OPTIONS ") {
                    let _ = sock.send_to(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", from);
                }
            }
        });
        addr
    }

    #[test]
    fn passes_when_daemon_store_and_sip_answer() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        fake_daemon(&socket, dir.path());
        std::fs::write(dir.path().join(crate::store::DB_FILE), b"db").unwrap();
        let p = Probe {
            admin_socket: socket,
            sip: Some(fake_sip()),
        };
        let took = probe(&p, Duration::from_secs(10)).unwrap();
        assert!(took < Duration::from_secs(10));
    }

    #[test]
    fn names_the_check_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let p = Probe {
            admin_socket: dir.path().join("none.sock"),
            sip: Some(fake_sip()),
        };
        let why = probe(&p, Duration::from_secs(1)).unwrap_err();
        assert!(
            why.starts_with("outpostd did not answer on its admin socket"),
            "{why}"
        );
        assert!(why.contains("within 1 s"), "{why}");
        // The daemon answers but there is no store file.
        let socket = dir.path().join("admin.sock");
        fake_daemon(&socket, dir.path());
        let p = Probe {
            admin_socket: socket,
            sip: Some(fake_sip()),
        };
        let why = probe(&p, Duration::from_secs(1)).unwrap_err();
        assert!(
            why.contains("store") && why.contains("outpost.redb"),
            "{why}"
        );
        // The store exists but nothing answers SIP.
        std::fs::write(dir.path().join(crate::store::DB_FILE), b"db").unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = Probe {
            sip: Some(silent.local_addr().unwrap()),
            ..p
        };
        let why = probe(&p, Duration::from_secs(1)).unwrap_err();
        assert!(why.starts_with("SIP on 127.0.0.1:"), "{why}");
    }

    #[test]
    fn sip_target_prefers_ipv4_and_maps_wildcards_to_loopback() {
        let l = |v: &[&str]| sip_target(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(l(&[]), DEFAULT_SIP);
        assert_eq!(
            l(&["tcp:10.0.0.1:5070", "udp:[::]:5062", "udp:0.0.0.0:5061"]),
            "127.0.0.1:5061".parse().unwrap()
        );
        assert_eq!(l(&["udp:[::]:5062"]), "[::1]:5062".parse().unwrap());
        assert_eq!(
            l(&["udp:10.0.2.15:5060"]),
            "10.0.2.15:5060".parse().unwrap()
        );
    }
}
